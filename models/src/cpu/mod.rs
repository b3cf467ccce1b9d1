//! The candle CPU decoder: the reference implementation every other backend is compared with.
//!
//! - [`llama`]: the llama-family decoder (SmolLM2);
//! - [`linear`]: the linear layer with its optional LoRA branch, and [`lora`]: that layer as one
//!   op while its branch trains;
//! - [`ops`]: decoder ops built from candle's recorded (differentiable) tensor ops;
//! - [`qmatmul`] and [`fused`]: quantized matmul and RMSNorm with ggml's exact arithmetic, as
//!   candle custom ops with backward passes;
//! - [`bf16`]: bf16 products of frozen weights on AMX tiles or AVX512-BF16 (training);
//! - [`cache`]: the KV cache; [`sampling`]: greedy / temperature / top-k / top-p.

pub mod bf16;
pub mod cache;
pub mod fused;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod ops;
pub mod qmatmul;
pub mod sampling;
pub mod team;

pub use cache::KvCache;
pub use linear::{Linear, WeightMode};
pub use llama::{Llama, Logits};
pub use sampling::{Sampler, SamplingParams};
