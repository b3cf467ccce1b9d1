//! The CPU backend: vigil's candle decoder with a KV cache.

use candle_core::Device;
use vigil_models::cpu::{KvCache, Llama, Logits, WeightMode};
use vigil_models::gguf::Gguf;
use vigil_models::lora::LoraAdapter;
use vigil_models::{Error, Result};

use super::Backend;

pub struct CpuBackend {
    model: Llama,
    cache: KvCache,
    /// KV states of sequences run side by side ([`Backend::forward_lanes`]).
    lanes: Vec<KvCache>,
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
        Ok(CpuBackend { model, cache, lanes: Vec::new() })
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
    fn has_lanes(&self) -> bool {
        true
    }
    fn forward_lanes(&mut self, steps: &[(usize, usize, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let need = steps.iter().map(|s| s.0 + 1).max().unwrap_or(0);
        while self.lanes.len() < need {
            self.lanes.push(self.model.new_cache(self.cache.capacity()));
        }
        let mut free: Vec<Option<&mut KvCache>> = self.lanes.iter_mut().map(Some).collect();
        let mut batch = Vec::with_capacity(steps.len());
        for &(lane, keep, tokens) in steps {
            let cache =
                free[lane].take().ok_or_else(|| Error::Input(format!("lane {lane} is fed twice in one step")))?;
            cache.truncate(keep);
            batch.push((tokens, cache));
        }
        let logits = Llama::logits_vec(&self.model.forward_many(&mut batch)?)?;
        Ok(logits.chunks_exact(logits.len() / steps.len().max(1)).map(<[f32]>::to_vec).collect())
    }
    fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        self.model.set_adapter(adapter)?;
        self.cache.reset();
        self.lanes.iter_mut().for_each(KvCache::reset);
        Ok(())
    }
}
