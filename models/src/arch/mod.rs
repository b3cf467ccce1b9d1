//! Hyper-parameters per architecture, read from GGUF metadata (`{arch}.*` keys).
//!
//! One [`ArchConfig`] describes every decoder vigil knows; the differences between architectures are
//! fields (RoPE style, norms, activation, sliding window), not separate model types. `llama`
//! (SmolLM2) runs today; `gemma3` and `qwen2` are parsed and validated so their files get precise
//! errors, and run once their decoders land.

use crate::error::{Error, Result};
use crate::gguf::Gguf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Gemma3,
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2 => "qwen2",
        }
    }
    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            "qwen2" => Arch::Qwen2,
            _ => return None,
        })
    }
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Gemma3, Arch::Qwen2];
}

/// How rotary embeddings pair up dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama in GGUF, whose Q/K rows were permuted at conversion.
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX, Gemma, Qwen.
    Neox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) · up.
    Silu,
    /// GeGLU with the tanh approximation of GELU.
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Training context of the model.
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_style: RopeStyle,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers, where it differs (Gemma 3: 10,000).
    pub rope_base_local: Option<f32>,
    pub rope_dim: usize,
    pub activation: Activation,
    /// Sliding window size and which layers use it (Gemma 3: all but every 6th).
    pub sliding_window: Option<usize>,
    pub sliding_pattern: usize,
    /// Embeddings multiplied by √n_embd (Gemma).
    pub scale_embeddings: bool,
    /// Per-head RMSNorm of q and k (Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and feed-forward as well as before (Gemma 3).
    pub post_norms: bool,
    /// Biases on q, k, v (Qwen 2).
    pub qkv_bias: bool,
    /// Output projection shares the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
}

/// Upper bounds that keep a corrupt header from sizing allocations (all far above real models).
const MAX_LAYERS: u64 = 1024;
const MAX_EMBD: u64 = 1 << 16;
const MAX_FF: u64 = 1 << 18;
const MAX_HEADS: u64 = 1024;
const MAX_CTX: u64 = 1 << 24;

impl ArchConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch_name = g.str("general.architecture")?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| Error::UnsupportedArch {
            file: g.name().to_string(),
            arch: arch_name.to_string(),
            supported: Arch::ALL.map(Arch::name).join(", "),
        })?;
        if let Some(t) = g.opt_str("general.type")? {
            if t != "model" {
                return Err(Error::Metadata {
                    file: g.name().into(),
                    key: "general.type".into(),
                    what: format!("`{t}` — this file is not a base model (an adapter goes in --adapter)"),
                });
            }
        }
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_layer = g.usize_max(&k("block_count"), MAX_LAYERS)?;
        let n_embd = g.usize_max(&k("embedding_length"), MAX_EMBD)?;
        let n_ff = g.usize_max(&k("feed_forward_length"), MAX_FF)?;
        let n_head = g.usize_max(&k("attention.head_count"), MAX_HEADS)?;
        let n_head_kv = match g.get(&k("attention.head_count_kv")) {
            Some(_) => g.usize_max(&k("attention.head_count_kv"), MAX_HEADS)?,
            None => n_head,
        };
        let bad = |key: &str, what: String| Error::Metadata { file: g.name().into(), key: k(key), what };
        for (key, v) in [
            ("block_count", n_layer),
            ("embedding_length", n_embd),
            ("feed_forward_length", n_ff),
            ("attention.head_count", n_head),
            ("attention.head_count_kv", n_head_kv),
        ] {
            if v == 0 {
                return Err(bad(key, "must be positive".into()));
            }
        }
        if n_head % n_head_kv != 0 {
            return Err(bad("attention.head_count_kv", format!("{n_head_kv} does not divide head_count {n_head}")));
        }
        let head_dim = match g.opt_u64(&k("attention.key_length"))? {
            Some(d) if d > 0 && d <= MAX_EMBD => d as usize,
            Some(d) => return Err(bad("attention.key_length", format!("{d} is out of range"))),
            None => {
                if n_embd % n_head != 0 {
                    return Err(bad(
                        "attention.head_count",
                        format!("{n_head} does not divide embedding_length {n_embd}"),
                    ));
                }
                n_embd / n_head
            }
        };
        if let Some(v) = g.opt_u64(&k("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(bad(
                    "attention.value_length",
                    format!("{v} differs from key_length {head_dim} (unsupported)"),
                ));
            }
        }
        let rope_dim = match g.opt_u64(&k("rope.dimension_count"))? {
            Some(d) if d as usize <= head_dim && d % 2 == 0 && d > 0 => d as usize,
            Some(d) => {
                return Err(bad(
                    "rope.dimension_count",
                    format!("{d} must be even and at most the head dim {head_dim}"),
                ))
            }
            None => head_dim,
        };
        let vocab_from_tokens = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len());
        let vocab_size = match (g.opt_u64(&k("vocab_size"))?, vocab_from_tokens) {
            (Some(v), _) => v as usize,
            (None, Some(n)) => n,
            (None, None) => return Err(bad("vocab_size", "missing (and no tokenizer.ggml.tokens)".into())),
        };
        let context_length = match g.opt_u64(&k("context_length"))? {
            Some(c) if c > 0 && c <= MAX_CTX => c as usize,
            Some(c) => return Err(bad("context_length", format!("{c} is out of range"))),
            None => 2048,
        };
        let rms_eps = g.opt_f32(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(bad("attention.layer_norm_rms_epsilon", format!("{rms_eps} is out of range")));
        }
        let rope_base = g.opt_f32(&k("rope.freq_base"))?.unwrap_or(10_000.0);
        if !(rope_base > 1.0 && rope_base.is_finite()) {
            return Err(bad("rope.freq_base", format!("{rope_base} is out of range")));
        }
        let sliding_window = match g.opt_u64(&k("attention.sliding_window"))? {
            Some(w) if w > 0 && w <= MAX_CTX => Some(w as usize),
            Some(w) => return Err(bad("attention.sliding_window", format!("{w} is out of range"))),
            None => None,
        };
        let tied_embeddings = g.tensor("output.weight").is_none();

        let mut cfg = ArchConfig {
            arch,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size,
            context_length,
            rms_eps,
            rope_style: RopeStyle::Interleaved,
            rope_base,
            rope_base_local: None,
            rope_dim,
            activation: Activation::Silu,
            sliding_window: None,
            sliding_pattern: 1,
            scale_embeddings: false,
            qk_norm: false,
            post_norms: false,
            qkv_bias: false,
            tied_embeddings,
        };
        match arch {
            Arch::Llama => {}
            Arch::Qwen2 => {
                cfg.rope_style = RopeStyle::Neox;
                cfg.qkv_bias = true;
            }
            Arch::Gemma3 => {
                cfg.rope_style = RopeStyle::Neox;
                cfg.activation = Activation::GeluTanh;
                cfg.scale_embeddings = true;
                cfg.qk_norm = true;
                cfg.post_norms = true;
                cfg.sliding_window = sliding_window;
                cfg.sliding_pattern = 6; // every 6th layer attends globally (llama.cpp: swa pattern 6)
                cfg.rope_base_local = Some(10_000.0);
            }
        }
        Ok(cfg)
    }

    /// True when layer `il` attends only within the sliding window.
    pub fn is_sliding(&self, il: usize) -> bool {
        self.sliding_window.is_some() && !(il + 1).is_multiple_of(self.sliding_pattern)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value};

    fn llama_meta() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::string("llama"));
        w.set("llama.block_count", Value::U32(2));
        w.set("llama.embedding_length", Value::U32(64));
        w.set("llama.feed_forward_length", Value::U32(128));
        w.set("llama.attention.head_count", Value::U32(4));
        w.set("llama.attention.head_count_kv", Value::U32(2));
        w.set("llama.vocab_size", Value::U32(100));
        w
    }

    fn parse(w: &GgufWriter) -> Result<ArchConfig> {
        ArchConfig::from_gguf(&Gguf::from_bytes("cfg.gguf", w.to_bytes()).unwrap())
    }

    #[test]
    fn llama_defaults_and_derived_sizes() {
        let c = parse(&llama_meta()).unwrap();
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim(), c.rope_dim), (16, 64, 32, 16));
        assert_eq!(c.rope_style, RopeStyle::Interleaved);
        assert!(c.tied_embeddings);
        assert!(!c.is_sliding(0));
    }

    #[test]
    fn errors_name_the_key() {
        let mut w = llama_meta();
        w.set("llama.attention.head_count_kv", Value::U32(3));
        let e = parse(&w).unwrap_err().to_string();
        assert!(e.contains("cfg.gguf") && e.contains("llama.attention.head_count_kv"), "{e}");

        let mut w = llama_meta();
        w.set("llama.block_count", Value::U64(1 << 40));
        assert!(parse(&w).unwrap_err().to_string().contains("exceeds the limit"));

        let mut w = llama_meta();
        w.set("general.architecture", Value::string("mamba"));
        let e = parse(&w).unwrap_err().to_string();
        assert!(e.contains("unsupported architecture `mamba`") && e.contains("llama, gemma3, qwen2"), "{e}");

        let mut w = llama_meta();
        w.set("general.type", Value::string("adapter"));
        assert!(parse(&w).unwrap_err().to_string().contains("not a base model"));
    }

    #[test]
    fn gemma3_layers_alternate_sliding_and_global() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::string("gemma3"));
        for (key, v) in [
            ("block_count", 18),
            ("embedding_length", 640),
            ("feed_forward_length", 2048),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 1),
            ("attention.key_length", 256),
            ("attention.value_length", 256),
            ("attention.sliding_window", 512),
            ("vocab_size", 1000),
        ] {
            w.set(format!("gemma3.{key}"), Value::U32(v));
        }
        let c = parse(&w).unwrap();
        assert_eq!(c.head_dim, 256);
        let global: Vec<usize> = (0..18).filter(|&l| !c.is_sliding(l)).collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert_eq!(c.activation, Activation::GeluTanh);
    }
}
