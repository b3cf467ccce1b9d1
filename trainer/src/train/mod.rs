//! LoRA fine-tuning of a guard model on the CPU (candle, with vigil's trainable ops):
//! data → batches → loss on target tokens → gradients → AdamW → checkpoints → adapter.
//!
//! - [`data`]: JSONL in four schemas → token ids + loss mask in the base model's chat template;
//! - [`config`]: TOML config, presets from the seed notes, `--set` overrides;
//! - [`lora`]: the trainable A/B parameters;
//! - [`optim`]: AdamW (f32 or 8-bit states), schedule, clipping;
//! - [`export`]: PEFT, merged GGUF, Ollama Modelfile;
//! - [`rho`]: the rho-guided hinge over behavioural probe pairs; [`dpo`]: hard-sample mining and DPO;
//! - [`run`]: the loop, eval, metrics, resume; [`checkpoint`]: atomic checkpoints; [`plot`]: the loss curve.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dpo;
pub mod export;
pub mod lora;
pub mod optim;
pub mod plot;
pub mod rho;
pub mod run;
