//! vigil-models: everything about a guard model that is not a compute backend.
//!
//! - [`gguf`]: reading, writing and block codecs of GGUF files;
//! - [`tokenizer`]: tokenizers rebuilt from GGUF metadata (GPT-2 BPE, SentencePiece);
//! - [`arch`]: hyper-parameters per architecture;
//! - [`cpu`]: the candle decoder (the reference every other backend is tested against);
//! - [`lora`]: LoRA adapters;
//! - [`chat`]: chat templates with special-token-safe encoding of user content;
//! - [`guard`]: the guard protocol — policies, prompts, output formats, streaming parser, verdicts.

pub mod arch;
pub mod catalog;
pub mod chat;
pub mod cpu;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod fsutil;
pub mod gguf;
pub mod guard;
pub mod lora;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod tiny;
pub mod tokenizer;

pub use error::{Error, Result};
