//! The CPU backend: vigil's candle decoder with a KV cache.

use candle_core::Device;
use vigil_models::cpu::{KvCache, Llama, Logits, WeightMode};
use vigil_models::gguf::Gguf;
use vigil_models::lora::LoraAdapter;
use vigil_models::Result;

use super::Backend;

pub struct CpuBackend {
    model: Llama,
    cache: KvCache,
}

impl CpuBackend {
    /// Loads the decoder; the KV cache holds up to `context` positions (capped by the model's).
    pub fn load(g: &Gguf, context: usize) -> Result<Self> {
        Self::load_mode(g, context, WeightMode::Quantized)
    }

    /// [`CpuBackend::load`] with a choice of weight handling: `Dense(F32)` is the exact-activation
    /// reference the GPU backend is compared with.
    pub fn load_mode(g: &Gguf, context: usize, mode: WeightMode) -> Result<Self> {
        let model = Llama::load(g, mode, &Device::Cpu)?;
        let cache = model.new_cache(context);
        Ok(CpuBackend { model, cache })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn info(&self) -> super::BackendInfo {
        let threads = vigil_models::cpu::team::global().threads();
        super::BackendInfo { device: format!("CPU, {threads} threads"), dispatches_per_token: None, kv_value_bytes: 4 }
    }
    fn context(&self) -> usize {
        self.cache.capacity()
    }
    fn position(&self) -> usize {
        self.cache.len()
    }
    fn truncate(&mut self, n: usize) {
        self.cache.truncate(n);
    }
    fn forward_async<'a>(&'a mut self, tokens: &'a [u32]) -> super::StepFuture<'a, Vec<f32>> {
        let logits =
            self.model.forward(tokens, Some(&mut self.cache), Logits::Last).and_then(|l| Llama::logits_vec(&l));
        Box::pin(std::future::ready(logits))
    }
    fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        self.model.set_adapter(adapter)?;
        self.cache.reset();
        Ok(())
    }
}
