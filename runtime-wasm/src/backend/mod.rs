//! Compute backends behind one trait: the engine drives any of them the same way.
//!
//! - [`cpu::CpuBackend`]: the candle reference decoder (`vigil_models::cpu`);
//! - a GPU backend on the shared WGSL kernels comes with the WGSL issue.

pub mod cpu;
pub mod gpu;

use vigil_models::cpu::sampling::Sampler;
use vigil_models::lora::LoraAdapter;
use vigil_models::Result;

/// A decoder with its own KV state. Positions are implicit: each call continues the sequence.
pub trait Backend {
    /// Short name for reports (`cpu`, `gpu`).
    fn name(&self) -> &'static str;
    /// Most positions the backend holds.
    fn context(&self) -> usize;
    /// Positions currently held.
    fn position(&self) -> usize;
    /// Keeps the first `n` positions (a shared prompt prefix) and forgets the rest.
    fn truncate(&mut self, n: usize);
    /// Feeds `tokens` and returns the logits after the last one.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Feeds `tokens` and samples the next token (a GPU backend samples on the device).
    fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        let logits = self.forward(tokens)?;
        Ok(sampler.sample(&logits))
    }
    /// Attaches or removes a LoRA adapter. Clears the KV state (it depended on the old weights).
    fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()>;
    /// What the backend runs on, for reports.
    fn info(&self) -> BackendInfo {
        BackendInfo { device: self.name().to_string(), dispatches_per_token: None, kv_value_bytes: 4 }
    }
}

/// A backend's description for reports and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    pub device: String,
    /// GPU dispatches recorded per decode step.
    pub dispatches_per_token: Option<usize>,
    /// Bytes per cached key or value element (4: f32, 2: f16).
    pub kv_value_bytes: usize,
}
