//! Llama-family decoder (SmolLM2): RMSNorm → GQA attention with RoPE → SwiGLU MLP, pre-norm residual
//! blocks, tied or separate output head. Touvron et al., "LLaMA" (2023); GGUF tensor names as
//! llama.cpp writes them.
//!
//! Gemma 3 is the same skeleton with the switches of [`ArchConfig`]: embeddings scaled by √d, a
//! per-head RMSNorm of q and k, norms after attention and the MLP as well as before, GeGLU, and
//! sliding-window layers (window 512, RoPE base 10,000) between global ones (base 10⁶). Its GGUF
//! norm weights already hold Gemma's (1 + w).
//!
//! This is the reference decoder: every other backend is tested against it, and its ops (see
//! [`super::ops`]) are all recorded by candle so LoRA gradients flow through it.

use candle_core::{DType, Device, Tensor};

use super::cache::KvCache;
use super::linear::{check_dims, Linear, WeightMode};
use super::ops;
use crate::arch::{Arch, ArchConfig};
use crate::error::{Error, Result};
use crate::gguf::{codec, Gguf, TensorInfo};
use crate::lora::LoraAdapter;

/// An RMSNorm weight: ggml-exact custom op for f32 inference, composed ops otherwise.
struct Norm {
    w: Tensor,
    fused: super::fused::RmsNorm,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if super::fused::is_f32(x) {
            Ok(x.contiguous()?.apply_op1(super::fused::RmsNorm { w: self.fused.w.clone(), eps: self.fused.eps })?)
        } else {
            Ok(ops::rms_norm(x, &self.w, self.fused.eps)?)
        }
    }
}

struct Block {
    attn_norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    /// Per-head norms of q and k (Gemma 3), over head_dim.
    qk_norm: Option<(Norm, Norm)>,
    o: Linear,
    /// Norm of the attention output before the residual add (Gemma 3).
    post_attn_norm: Option<Norm>,
    ffn_norm: Norm,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Norm of the MLP output before the residual add (Gemma 3).
    post_ffn_norm: Option<Norm>,
}

/// Positions and visibility of one decoder pass for one kind of layer.
struct Attend {
    rot: ops::Rotary,
    vis: ops::Visibility,
}

/// A decoder pass: global layers' positions and visibility, and the sliding-window layers' where
/// the model has them (Gemma 3).
struct Pass {
    global: Attend,
    local: Option<Attend>,
}

/// Token embedding read row by row from the (quantized) GGUF table.
struct Embedding {
    g: Gguf,
    info: TensorInfo,
    dim: usize,
}

impl Embedding {
    fn lookup(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        let vocab = self.info.dims[1] as usize;
        let mut out = vec![0f32; ids.len() * self.dim];
        for (row, &id) in out.chunks_exact_mut(self.dim).zip(ids) {
            if id as usize >= vocab {
                return Err(Error::Input(format!("token id {id} is outside the vocabulary of {vocab}")));
            }
            codec::dequantize_row(self.info.ty, self.g.tensor_bytes(&self.info), self.dim, id as usize, row)?;
        }
        Ok(Tensor::from_vec(out, (1, ids.len(), self.dim), dev)?)
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// [vocab] of the last position (generation).
    Last,
    /// [t, vocab] of every position (scoring, training).
    All,
}

pub struct Llama {
    cfg: ArchConfig,
    /// dtype of activations: f32 for quantized weights, the dense dtype otherwise.
    dtype: DType,
    embd: Embedding,
    blocks: Vec<Block>,
    out_norm: Norm,
    lm_head: Linear,
    dev: Device,
    adapter: Option<String>,
}

impl Llama {
    /// Loads a llama or gemma3 model. Every tensor's presence and shape is checked, and each
    /// problem names the tensor.
    pub fn load(g: &Gguf, mode: WeightMode, dev: &Device) -> Result<Self> {
        let cfg = ArchConfig::from_gguf(g)?;
        if !matches!(cfg.arch, Arch::Llama | Arch::Gemma3) {
            return Err(Error::UnsupportedArch {
                file: g.name().into(),
                arch: cfg.arch.name().into(),
                supported: "llama, gemma3 (the qwen2 decoder is not built yet)".into(),
            });
        }
        let d = cfg.n_embd;
        let norm_of = |name: &str, d: usize| -> Result<Norm> {
            let info = g.require_tensor(name)?;
            check_dims(g, info, &[d as u64])?;
            let w = g.tensor_f32(name)?;
            let wt = Tensor::from_slice(&w, d, dev)?.to_dtype(mode.activation_dtype())?;
            Ok(Norm { w: wt, fused: super::fused::RmsNorm { w, eps: cfg.rms_eps } })
        };
        let norm = |name: &str| norm_of(name, d);
        let embd_info = g.require_tensor("token_embd.weight")?.clone();
        check_dims(g, &embd_info, &[d as u64, cfg.vocab_size as u64])?;
        if !embd_info.ty.can_dequantize() {
            return Err(Error::Tensor {
                file: g.name().into(),
                tensor: embd_info.name,
                what: format!("type {} cannot be dequantized here", embd_info.ty),
            });
        }
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let lin = |suffix: &str, i_dim: usize, o_dim: usize| {
                Linear::load(g, &format!("blk.{i}.{suffix}.weight"), i_dim, o_dim, mode, dev)
            };
            let head_norm = |n: &str| norm_of(&format!("blk.{i}.{n}.weight"), cfg.head_dim);
            let post = |n: &str| cfg.post_norms.then(|| norm(&format!("blk.{i}.{n}.weight"))).transpose();
            blocks.push(Block {
                attn_norm: norm(&format!("blk.{i}.attn_norm.weight"))?,
                q: lin("attn_q", d, cfg.q_dim())?,
                k: lin("attn_k", d, cfg.kv_dim())?,
                v: lin("attn_v", d, cfg.kv_dim())?,
                qk_norm: if cfg.qk_norm { Some((head_norm("attn_q_norm")?, head_norm("attn_k_norm")?)) } else { None },
                o: lin("attn_output", cfg.q_dim(), d)?,
                post_attn_norm: post("post_attention_norm")?,
                ffn_norm: norm(&format!("blk.{i}.ffn_norm.weight"))?,
                gate: lin("ffn_gate", d, cfg.n_ff)?,
                up: lin("ffn_up", d, cfg.n_ff)?,
                down: lin("ffn_down", cfg.n_ff, d)?,
                post_ffn_norm: post("post_ffw_norm")?,
            });
        }
        let head_name = if cfg.tied_embeddings { "token_embd.weight" } else { "output.weight" };
        // The output head is always quantized-capable; in dense mode it is dense too.
        let lm_head = Linear::load(g, head_name, d, cfg.vocab_size, mode, dev)?;
        Ok(Llama {
            dtype: mode.activation_dtype(),
            out_norm: norm("output_norm.weight")?,
            embd: Embedding { g: g.clone(), info: embd_info, dim: d },
            blocks,
            lm_head,
            dev: dev.clone(),
            adapter: None,
            cfg,
        })
    }

    pub fn config(&self) -> &ArchConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// A KV cache for up to `capacity` positions (at most the model's context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.cfg.n_layer, capacity.min(self.cfg.context_length))
    }

    /// The adapted linear layers: (GGUF tensor name, in, out) for every LoRA target.
    pub fn lora_targets(&self) -> Vec<(String, usize, usize)> {
        self.linears().map(|l| (l.name.clone(), l.in_dim, l.out_dim)).collect()
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.blocks.iter().flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down])
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| [&mut b.q, &mut b.k, &mut b.v, &mut b.o, &mut b.gate, &mut b.up, &mut b.down])
    }

    /// Name of the attached adapter, if any.
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.as_deref()
    }

    /// Attaches an adapter (replacing any other) or, with `None`, removes it. The base weights are
    /// untouched, so adapters swap without reloading. Nothing changes if the adapter does not fit.
    pub fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        let Some(a) = adapter else {
            for l in self.linears_mut() {
                l.lora = None;
            }
            self.adapter = None;
            return Ok(());
        };
        let err = |what: String| Error::Adapter { file: a.name.clone(), what };
        if a.arch != self.cfg.arch.name() {
            return Err(err(format!(
                "was trained for architecture `{}`, the base model is `{}`",
                a.arch,
                self.cfg.arch.name()
            )));
        }
        let targets: std::collections::HashMap<String, (usize, usize)> =
            self.lora_targets().into_iter().map(|(n, i, o)| (n, (i, o))).collect();
        for (name, p) in &a.pairs {
            let Some(&(i, o)) = targets.get(name) else {
                return Err(err(format!("tensor `{name}` is not a LoRA target of this base model")));
            };
            if (p.in_dim, p.out_dim) != (i, o) {
                return Err(err(format!(
                    "tensor `{name}` adapts {} → {}, the base layer is {i} → {o}",
                    p.in_dim, p.out_dim
                )));
            }
        }
        let dev = self.dev.clone();
        let mut branches = Vec::new();
        for l in self.linears() {
            let b = match a.pairs.get(&l.name) {
                None => None,
                Some(p) => Some(super::linear::LoraBranch {
                    a: Tensor::from_vec(p.a.clone(), (p.r, p.in_dim), &dev)?.to_dtype(self.dtype)?,
                    b: Tensor::from_vec(p.b.clone(), (p.out_dim, p.r), &dev)?.to_dtype(self.dtype)?,
                    scale: a.scale(p.r),
                    dropout: None,
                }),
            };
            branches.push(b);
        }
        for (l, b) in self.linears_mut().zip(branches) {
            l.set_lora(b).map_err(|e| match e {
                Error::Adapter { what, .. } => Error::Adapter { file: a.name.clone(), what },
                e => e,
            })?;
        }
        self.adapter = Some(a.name.clone());
        Ok(())
    }

    /// Attaches LoRA branches given as tensors (e.g. trainable `Var`s), keyed by base tensor name;
    /// layers not named lose their branch. Shapes are checked and each problem names the tensor.
    pub fn set_lora_branches(
        &mut self,
        mut branches: std::collections::HashMap<String, super::linear::LoraBranch>,
    ) -> Result<()> {
        let names: std::collections::HashSet<String> = self.lora_targets().into_iter().map(|t| t.0).collect();
        if let Some(stray) = branches.keys().find(|k| !names.contains(*k)) {
            return Err(Error::Adapter {
                file: "<lora branches>".into(),
                what: format!("tensor `{stray}` is not a LoRA target of this base model"),
            });
        }
        for l in self.linears() {
            if let Some(b) = branches.get(&l.name) {
                l.check_lora(b)?;
            }
        }
        for l in self.linears_mut() {
            l.lora = branches.remove(&l.name);
        }
        self.adapter = Some("<lora branches>".into());
        Ok(())
    }

    /// dtype of activations and dense weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `tokens` through the decoder. With a cache, they continue the cached sequence (and are
    /// appended to it); without one, they are a whole sequence on their own.
    pub fn forward(&self, tokens: &[u32], cache: Option<&mut KvCache>, which: Logits) -> Result<Tensor> {
        let h = self.hidden(tokens, cache)?;
        let h = match which {
            Logits::Last => h.narrow(1, tokens.len() - 1, 1)?,
            Logits::All => h,
        };
        let logits = self.lm_head.forward(&h)?;
        Ok(match which {
            Logits::Last => logits.flatten_all()?,
            Logits::All => logits.squeeze(0)?,
        })
    }

    /// Final-norm hidden states [1, t, d].
    pub fn hidden(&self, tokens: &[u32], cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.hidden_of(&mut [(tokens, cache)])
    }

    /// Several independent sequences advanced in one pass, each `(tokens, cache)` continuing its
    /// own cache (a decoding batch): the linear layers run over all their tokens together, so each
    /// weight is read once per step rather than once per sequence; attention stays per sequence.
    /// Each sequence's row of the result is computed exactly as [`Llama::forward`] computes it
    /// alone. → the logits after each sequence's last token, [n, vocab].
    pub fn forward_many(&self, steps: &mut [(&[u32], &mut KvCache)]) -> Result<Tensor> {
        let mut with: Vec<_> = steps.iter_mut().map(|(ids, c)| (*ids, Some(&mut **c))).collect();
        let h = self.hidden_of(&mut with)?.squeeze(0)?;
        let ends: Vec<u32> = steps
            .iter()
            .scan(0u32, |end, (ids, _)| {
                *end += ids.len() as u32;
                Some(*end - 1)
            })
            .collect();
        let h = h.index_select(&Tensor::new(ends.as_slice(), &self.dev)?, 0)?;
        Ok(self.lm_head.forward(&h)?)
    }

    /// Final-norm hidden states [1, Σ t, d] of sequences that each continue their cache, or of
    /// one whole sequence without a cache.
    fn hidden_of(&self, steps: &mut [(&[u32], Option<&mut KvCache>)]) -> Result<Tensor> {
        if steps.is_empty() {
            return Err(Error::Input("no sequences to run".into()));
        }
        let (mut tokens, mut positions) = (Vec::new(), Vec::new());
        for (i, (ids, cache)) in steps.iter().enumerate() {
            let t = ids.len();
            if t == 0 {
                let which = if steps.len() > 1 { format!(" (sequence {i})") } else { String::new() };
                return Err(Error::Input(format!("no tokens to run{which}")));
            }
            let start = cache.as_ref().map_or(0, |c| c.len());
            let limit = cache.as_ref().map_or(self.cfg.context_length, |c| c.capacity());
            if start + t > limit {
                return Err(Error::Input(format!(
                    "{} tokens ({start} cached + {t} new) exceed the context of {limit}",
                    start + t
                )));
            }
            tokens.extend_from_slice(ids);
            positions.extend(start..start + t);
        }
        let attend = |base: f32, window: Option<usize>| -> Result<Attend> {
            let mut parts = Vec::with_capacity(steps.len());
            for (ids, cache) in steps.iter() {
                let (t, start) = (ids.len(), cache.as_ref().map_or(0, |c| c.len()));
                // one new token sees every cached one, unless a window hides the oldest
                let masked = t > 1 || window.is_some_and(|w| start + t > w);
                parts.push((t, masked.then(|| ops::causal_mask(t, start, window, &self.dev)).transpose()?));
            }
            Ok(Attend {
                rot: ops::Rotary::at(base, self.cfg.rope_dim, positions.iter().copied()),
                vis: ops::Visibility::Causal(parts),
            })
        };
        let pass = Pass {
            global: attend(self.cfg.rope_base, None)?,
            local: self.local_layers().map(|(base, w)| attend(base, Some(w))).transpose()?,
        };
        let n = steps.len();
        let mut caches: Vec<&mut KvCache> = steps.iter_mut().filter_map(|(_, c)| c.as_deref_mut()).collect();
        if caches.len() != n && (n > 1 || !caches.is_empty()) {
            return Err(Error::Input("sequences run side by side each need a cache".into()));
        }
        self.run_blocks(&tokens, &mut caches, &pass)
    }

    /// RoPE base and window of the sliding-window layers, if the model has any.
    fn local_layers(&self) -> Option<(f32, usize)> {
        let w = self.cfg.sliding_window?;
        Some((self.cfg.rope_base_local.unwrap_or(self.cfg.rope_base), w))
    }

    /// The decoder over `tokens` with the given positions (rotary tables) and attention visibility.
    /// `caches` holds one cache per sequence of a causal pass, or none (one whole sequence).
    fn run_blocks(&self, tokens: &[u32], caches: &mut [&mut KvCache], pass: &Pass) -> Result<Tensor> {
        let t = tokens.len();
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let dt = self.dtype;
        let mut x = self.embd.lookup(tokens, &self.dev)?.to_dtype(dt)?;
        if cfg.scale_embeddings {
            x = (x * (cfg.n_embd as f64).sqrt())?;
        }
        /// A pass's visibility made ready for a layer kind: its masks, or a packed pass's masks.
        enum Ready {
            Causal(Vec<(usize, Option<ops::CausalMask>)>),
            Packed(usize, Vec<usize>, Vec<ops::CausalMask>),
        }
        let ready = |a: &Attend, window: Option<usize>| -> Result<Ready> {
            Ok(match &a.vis {
                ops::Visibility::Causal(parts) => Ready::Causal(
                    parts
                        .iter()
                        .map(|(t, m)| Ok((*t, m.as_ref().map(|m| m.to_dtype(dt)).transpose()?)))
                        .collect::<Result<_>>()?,
                ),
                ops::Visibility::Packed { prefix, lens } => {
                    Ready::Packed(*prefix, lens.clone(), ops::packed_masks(*prefix, lens, window, dt, &self.dev)?)
                }
            })
        };
        let global = ready(&pass.global, None)?;
        let local = match (&pass.local, self.local_layers()) {
            (Some(a), Some((_, w))) => Some(ready(a, Some(w))?),
            _ => None,
        };
        let scale = 1.0 / (hd as f64).sqrt();
        for (il, b) in self.blocks.iter().enumerate() {
            let (attend, vis) = match (&local, cfg.is_sliding(il)) {
                (Some(l), true) => (pass.local.as_ref().unwrap_or(&pass.global), l),
                _ => (&pass.global, &global),
            };
            let h = b.attn_norm.forward(&x)?;
            let split = |y: Tensor, n: usize| y.reshape((1, t, n, hd));
            let (q, k) = (split(b.q.forward(&h)?, nh)?, split(b.k.forward(&h)?, nkv)?);
            let (q, k) = match &b.qk_norm {
                Some((qn, kn)) => (qn.forward(&q)?, kn.forward(&k)?),
                None => (q, k),
            };
            let heads = |y: Tensor| y.transpose(1, 2)?.contiguous();
            let q = attend.rot.apply(&heads(q)?, cfg.rope_style)?;
            let k = attend.rot.apply(&heads(k)?, cfg.rope_style)?;
            let v = heads(split(b.v.forward(&h)?, nkv)?)?;
            let a = match vis {
                Ready::Packed(prefix, lens, masks) => ops::packed_attention(&q, &k, &v, (*prefix, lens), masks, scale)?,
                Ready::Causal(parts) if caches.is_empty() => ops::attention(&q, &k, &v, parts[0].1.as_ref(), scale)?,
                Ready::Causal(parts) if parts.len() == 1 => {
                    let (k, v) = caches[0].append(il, &k, &v)?;
                    ops::attention(&q, &k, &v, parts[0].1.as_ref(), scale)?
                }
                // a batch: each sequence's rows against its own cache
                Ready::Causal(parts) => {
                    let mut lanes = Vec::with_capacity(parts.len());
                    let mut at = 0;
                    for ((n, mask), c) in parts.iter().zip(caches.iter_mut()) {
                        let rows = |x: &Tensor| x.narrow(2, at, *n)?.contiguous();
                        let (k, v) = c.append(il, &rows(&k)?, &rows(&v)?)?;
                        lanes.push((k, v, *n, mask.as_ref()));
                        at += n;
                    }
                    ops::attention_lanes(&q, &lanes, scale)?
                }
            };
            let a = b.o.forward(&a.transpose(1, 2)?.reshape((1, t, nh * hd))?)?;
            let a = match &b.post_attn_norm {
                Some(n) => n.forward(&a)?,
                None => a,
            };
            x = (x + a)?;
            let h = b.ffn_norm.forward(&x)?;
            let m = ops::gated(&b.gate.forward(&h)?, &b.up.forward(&h)?, cfg.activation)?;
            let m = b.down.forward(&m)?;
            let m = match &b.post_ffn_norm {
                Some(n) => n.forward(&m)?,
                None => m,
            };
            x = (x + m)?;
        }
        if let ops::Visibility::Causal(parts) = &pass.global.vis {
            for (c, (n, _)) in caches.iter_mut().zip(parts) {
                c.advance(*n);
            }
        }
        self.out_norm.forward(&x)
    }

    /// Training loss terms: for each position whose next token is a target (`mask[p + 1]`), the
    /// cross-entropy of the predicted distribution against that token → [N]. Only those rows go
    /// through the vocabulary projection.
    pub fn target_losses(&self, tokens: &[u32], mask: &[bool]) -> Result<Tensor> {
        if mask.len() != tokens.len() {
            return Err(Error::Input(format!("{} tokens but {} mask entries", tokens.len(), mask.len())));
        }
        let rows: Vec<u32> = (0..tokens.len().saturating_sub(1)).filter(|&p| mask[p + 1]).map(|p| p as u32).collect();
        if rows.is_empty() {
            return Err(Error::Input("no target tokens (the loss mask is empty)".into()));
        }
        let targets: Vec<u32> = rows.iter().map(|&p| tokens[p as usize + 1]).collect();
        let h = self.hidden(tokens, None)?.squeeze(0)?;
        let h = h.index_select(&Tensor::new(rows.as_slice(), &self.dev)?, 0)?;
        self.head_losses(&h, targets)
    }

    /// Cross-entropy of the head's predictions from hidden rows h [n, d] against `targets` → [n].
    /// A frozen bf16 or f32 head goes through [`super::fused::HeadLoss`] (logits a chunk at a
    /// time); others through the head's layer and [`super::fused::CrossEntropy`].
    fn head_losses(&self, h: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
        use super::fused::{HeadLoss, HeadWeight};
        use super::linear::BaseWeight;
        let head = match &self.lm_head.base {
            _ if self.lm_head.lora.is_some() || h.dtype() != DType::F32 => None,
            BaseWeight::Bf16(w) => Some(HeadWeight::Bf16(w.clone())),
            BaseWeight::Dense(w) if w.dtype() == DType::F32 => Some(HeadWeight::Dense(w.clone())),
            _ => None,
        };
        if let Some(head) = head {
            let op = HeadLoss::new(head, targets, h.track_op());
            return Ok(h.contiguous()?.apply_op1(op)?);
        }
        let logits = self.lm_head.forward(h)?;
        let targets = Tensor::new(targets.as_slice(), &self.dev)?;
        Ok(logits.contiguous()?.apply_op2(&targets, super::fused::CrossEntropy)?)
    }

    /// [`Self::target_losses`] of several sequences that share their first `prefix` tokens, run
    /// as one packed sequence: the prefix once, then each sequence's rest, which sees the prefix
    /// and itself only (positions restart after the prefix for every rest). The prefix is then
    /// computed once instead of once per sequence, and the losses — concatenated in order — and
    /// their gradients equal the separate runs'. Targets must lie after the prefix.
    pub fn packed_target_losses(&self, seqs: &[(&[u32], &[bool])], prefix: usize) -> Result<Tensor> {
        let Some(&(first, _)) = seqs.first() else {
            return Err(Error::Input("no sequences to pack".into()));
        };
        if prefix == 0 || first.len() < prefix {
            return Err(Error::Input(format!("prefix {prefix} of a {}-token sequence", first.len())));
        }
        let shared = &first[..prefix];
        let mut tokens = shared.to_vec();
        let mut positions: Vec<usize> = (0..prefix).collect();
        let (mut lens, mut rows, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &(ids, mask)) in seqs.iter().enumerate() {
            if mask.len() != ids.len() {
                return Err(Error::Input(format!("{} tokens but {} mask entries", ids.len(), mask.len())));
            }
            if ids.len() <= prefix || ids[..prefix] != *shared {
                return Err(Error::Input(format!("sequence {i} does not continue the shared {prefix}-token prefix")));
            }
            if mask[..=prefix].iter().any(|&m| m) {
                return Err(Error::Input(format!("sequence {i} has a target inside the shared prefix")));
            }
            let offset = tokens.len();
            for p in prefix..ids.len() - 1 {
                if mask[p + 1] {
                    rows.push((offset + p - prefix) as u32);
                    targets.push(ids[p + 1]);
                }
            }
            tokens.extend_from_slice(&ids[prefix..]);
            positions.extend(prefix..ids.len());
            lens.push(ids.len() - prefix);
        }
        if rows.is_empty() {
            return Err(Error::Input("no target tokens (the loss mask is empty)".into()));
        }
        if let Some(&p) = positions.iter().max().filter(|&&p| p >= self.cfg.context_length) {
            return Err(Error::Input(format!("position {p} exceeds the context of {}", self.cfg.context_length)));
        }
        let attend = |base: f32| Attend {
            rot: ops::Rotary::at(base, self.cfg.rope_dim, positions.iter().copied()),
            vis: ops::Visibility::Packed { prefix, lens: lens.clone() },
        };
        let pass =
            Pass { global: attend(self.cfg.rope_base), local: self.local_layers().map(|(base, _)| attend(base)) };
        let h = self.run_blocks(&tokens, &mut [], &pass)?.squeeze(0)?;
        let h = h.index_select(&Tensor::new(rows.as_slice(), &self.dev)?, 0)?;
        self.head_losses(&h, targets)
    }

    /// Logits as an f32 vector (for sampling).
    pub fn logits_vec(logits: &Tensor) -> Result<Vec<f32>> {
        Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    /// Sequences run side by side give, row for row, exactly the logits each gives alone — with
    /// different cached lengths, several new tokens in one sequence and one in another, and (Gemma 3)
    /// sliding-window layers whose window hides the oldest cached keys; with and without an adapter.
    #[test]
    fn sequences_side_by_side_equal_each_alone() {
        for (bytes, ty) in [
            (crate::testing::tiny_llama(GgmlType::Q8_0, 5), "llama q8_0"),
            (crate::testing::tiny_llama(GgmlType::F32, 6), "llama f32"),
            (crate::testing::tiny_gemma3(GgmlType::Q8_0, 7), "gemma3 q8_0"),
        ] {
            let g = Gguf::from_bytes("tiny.gguf", bytes).unwrap();
            let mut m = Llama::load(&g, WeightMode::Quantized, &Device::Cpu).unwrap();
            if ty == "llama q8_0" {
                let adapter = LoraAdapter::random("llama", &m.lora_targets(), 4, 8.0, 0.2, 9);
                m.set_adapter(Some(&adapter)).unwrap();
            }
            let seqs: [(&[u32], &[u32]); 3] = [
                (&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110], &[7]),
                (&[5, 6], &[8, 9, 10]),
                (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], &[14, 15]),
            ];
            let mut alone = Vec::new();
            let mut caches = Vec::new();
            for (past, new) in seqs {
                let mut c = m.new_cache(64);
                m.forward(past, Some(&mut c), Logits::Last).unwrap();
                caches.push(c);
                let mut c = m.new_cache(64);
                m.forward(past, Some(&mut c), Logits::Last).unwrap();
                alone.push(Llama::logits_vec(&m.forward(new, Some(&mut c), Logits::Last).unwrap()).unwrap());
            }
            let mut steps: Vec<(&[u32], &mut KvCache)> = seqs.iter().map(|s| s.1).zip(caches.iter_mut()).collect();
            let together = m.forward_many(&mut steps).unwrap();
            assert_eq!(together.dims2().unwrap(), (3, m.config().vocab_size), "{ty}");
            for (i, row) in alone.iter().enumerate() {
                let got = Llama::logits_vec(&together.get(i).unwrap()).unwrap();
                assert_eq!(&got, row, "{ty}: sequence {i}");
            }
            for ((past, new), c) in seqs.iter().zip(&caches) {
                assert_eq!(c.len(), past.len() + new.len(), "{ty}: each cache advanced by its own tokens");
            }
            let mut none: Vec<(&[u32], &mut KvCache)> = vec![(&[], &mut caches[0])];
            assert!(m.forward_many(&mut none).unwrap_err().to_string().contains("no tokens"));
        }
    }
}
