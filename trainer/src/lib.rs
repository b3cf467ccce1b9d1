//! The library side of the `vigil` command: training (and what tests reach without the CLI).

pub mod train;
