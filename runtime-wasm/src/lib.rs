//! vigil-runtime: the guard engine, natively and (with the browser issue) in wasm32.
//!
//! - [`engine::Guard`]: load a base model (+ adapter), classify content, stream reasoning, parse
//!   the verdict;
//! - [`backend`]: the compute backends behind one trait (CPU today; GPU with the WGSL issue).

pub mod backend;
mod clock;
pub mod engine;

pub use engine::{BackendChoice, ClassifyOptions, Event, Guard, Outcome, StopReason};
