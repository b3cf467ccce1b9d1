//! vigil-runtime: the guard engine, natively and in wasm32 (browser, Node).
//!
//! - [`engine::Guard`]: load a base model (+ adapter), classify content, stream reasoning, parse
//!   the verdict;
//! - [`backend`]: the compute backends behind one trait (CPU, GPU);
//! - `web` (wasm32): the wasm-bindgen API that `js/guard.js` and `js/worker.js` wrap.

pub mod backend;
mod clock;
pub mod engine;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use engine::{BackendChoice, ClassifyOptions, Event, Guard, Outcome, StopReason};
