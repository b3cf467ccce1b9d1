//! The library side of the `vigil` command: training, guard data, package fetching (and what tests
//! reach without the CLI).

pub mod data;
pub mod eval;
pub mod fetch;
pub mod progress;
pub mod sweep;
pub mod train;
