//! Compute backends behind one trait: the engine drives any of them the same way.
//!
//! - [`cpu::CpuBackend`]: the candle reference decoder (`vigil_models::cpu`);
//! - [`gpu::GpuBackend`]: the decoder on the shared WGSL kernels (wgpu: Vulkan/Metal/DX12, WebGPU).
//!
//! A step is a future because in the browser a GPU result can only be read back once the event
//! loop has run; natively the futures complete at once and the blocking wrappers are used.

pub mod cpu;
pub mod gpu;

use std::future::Future;
use std::pin::Pin;

use vigil_models::cpu::sampling::Sampler;
use vigil_models::lora::LoraAdapter;
use vigil_models::Result;

/// One step of a backend: resolves to its result (at once on the CPU).
pub type StepFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

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
    fn forward_async<'a>(&'a mut self, tokens: &'a [u32]) -> StepFuture<'a, Vec<f32>>;
    /// Feeds `tokens` and samples the next token (a GPU backend samples on the device).
    fn forward_sample_async<'a>(&'a mut self, tokens: &'a [u32], sampler: &'a mut Sampler) -> StepFuture<'a, u32> {
        Box::pin(async move {
            let logits = self.forward_async(tokens).await?;
            Ok(sampler.sample(&logits))
        })
    }
    /// [`Backend::forward_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(tokens))
    }
    /// [`Backend::forward_sample_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        pollster::block_on(self.forward_sample_async(tokens, sampler))
    }
    /// Whether [`Backend::forward_lanes`] runs sequences side by side here.
    fn has_lanes(&self) -> bool {
        false
    }
    /// Runs sequences side by side, each continuing its own KV state (a lane, apart from the main
    /// sequence's): every `(lane, keep, tokens)` keeps the lane's first `keep` positions, feeds
    /// `tokens` and gets the logits after the last one, in order.
    fn forward_lanes(&mut self, steps: &[(usize, usize, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let _ = steps;
        Err(vigil_models::Error::Input(format!("the {} backend runs one sequence at a time", self.name())))
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
