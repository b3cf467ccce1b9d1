//! Decoder ops, every one recorded for backprop (candle's fused `rms_norm`, `softmax_last_dim`,
//! `rope*` and `sdpa` are not), so the same model code serves inference and LoRA training.
//!
//! f32 tensors go through vigil's fused custom ops ([`super::fused`], each with a backward pass);
//! other dtypes through the `*_composed` versions built from candle's basic ops, which are also
//! the reference the fused ops are tested against.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::arch::RopeStyle;

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) · w.
/// Shapes: x [.., n], w [n].
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps as f64)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// Softmax over the last dimension. While a gradient flows (training), with [`super::fused::exp_fast`].
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(super::fused::SoftmaxLast { fast: x.track_op() });
    }
    softmax_composed(x)
}

/// Softmax over the last dimension, max-subtracted for stability, from basic ops.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Rotation angles for positions `[start, start + len)`: cos and sin, [len, rope_dim / 2].
///
/// Angles follow ggml's recurrence (θ₀ = p, θᵢ₊₁ = θᵢ · base^(−2/d) in f32) so positions rotate
/// exactly as llama.cpp rotates them.
pub struct Rotary {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub len: usize,
    pub half: usize,
}

impl Rotary {
    pub fn new(base: f32, rope_dim: usize, start: usize, len: usize) -> Self {
        Self::at(base, rope_dim, start..start + len)
    }

    /// Tables for the given positions, one row per token (a packed sequence restarts them).
    pub fn at(base: f32, rope_dim: usize, positions: impl ExactSizeIterator<Item = usize>) -> Self {
        let (half, len) = (rope_dim / 2, positions.len());
        // sin, cos and pow in f64, rounded once: the same tables on every platform's libm
        let scale = (base as f64).powf(-2.0 / rope_dim as f64) as f32;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in positions {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push((theta as f64).cos() as f32);
                sin.push((theta as f64).sin() as f32);
                theta *= scale;
            }
        }
        Rotary { cos, sin, len, half }
    }

    /// The tables as tensors [len, half].
    pub fn tensors(&self, dev: &Device) -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_slice(&self.cos, (self.len, self.half), dev)?,
            Tensor::from_slice(&self.sin, (self.len, self.half), dev)?,
        ))
    }

    /// Rotates x [b, h, t, d]; dims past rope_dim pass through.
    pub fn apply(&self, x: &Tensor, style: RopeStyle) -> Result<Tensor> {
        if x.dtype() == DType::F32 {
            let op = super::fused::Rope { cos: self.cos.clone(), sin: self.sin.clone(), style, inverse: false };
            return x.contiguous()?.apply_op1(op);
        }
        let (c, s) = self.tensors(x.device())?;
        rope(x, &c.to_dtype(x.dtype())?, &s.to_dtype(x.dtype())?, style)
    }
}

/// Cos/sin tensors for positions `[start, start + len)`, each [len, rope_dim / 2].
pub fn rope_tables(base: f32, rope_dim: usize, start: usize, len: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    Rotary::new(base, rope_dim, start, len).tensors(dev)
}

/// Rotary embedding of x [b, h, t, d] with tables [t, rope_dim/2], from basic ops; dims past
/// rope_dim pass through.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let half = cos.dim(1)?;
    let rd = 2 * half;
    let (xr, pass) = if rd == d { (x.clone(), None) } else { (x.narrow(3, 0, rd)?, Some(x.narrow(3, rd, d - rd)?)) };
    let out = match style {
        RopeStyle::Interleaved => {
            let xr = xr.reshape((b, h, t, half, 2))?;
            let x0 = xr.narrow(4, 0, 1)?;
            let x1 = xr.narrow(4, 1, 1)?;
            let c = cos.reshape((1, 1, t, half, 1))?;
            let s = sin.reshape((1, 1, t, half, 1))?;
            let y0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
            let y1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
            Tensor::cat(&[y0, y1], 4)?.reshape((b, h, t, rd))?
        }
        RopeStyle::Neox => {
            let x0 = xr.narrow(3, 0, half)?;
            let x1 = xr.narrow(3, half, half)?;
            let c = cos.reshape((1, 1, t, half))?;
            let s = sin.reshape((1, 1, t, half))?;
            let y0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
            let y1 = (x1.broadcast_mul(&c)? + x0.broadcast_mul(&s)?)?;
            Tensor::cat(&[y0, y1], 3)?
        }
    };
    match pass {
        None => Ok(out),
        Some(p) => Tensor::cat(&[out, p], 3),
    }
}

/// A causal mask: `t` queries at positions `[start, start + t)` over `start + t` keys, optionally
/// limited to a sliding window; as an additive tensor (0 / −∞, [t, start + t]) and as those
/// positions, from which training's [`super::fused::CausalSoftmax`] applies it without the tensor.
#[derive(Clone)]
pub struct CausalMask {
    pub additive: Tensor,
    pub start: usize,
    pub window: Option<usize>,
}

impl CausalMask {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(CausalMask { additive: self.additive.to_dtype(dt)?, ..self.clone() })
    }
}

/// The [`CausalMask`] of `t` queries from position `start`, within `window` if given.
pub fn causal_mask(t: usize, start: usize, window: Option<usize>, dev: &Device) -> Result<CausalMask> {
    let l = start + t;
    let mut m = vec![0f32; t * l];
    for i in 0..t {
        let q = start + i;
        for (k, v) in m[i * l..(i + 1) * l].iter_mut().enumerate() {
            let visible = k <= q && window.is_none_or(|w| q - k < w);
            if !visible {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    Ok(CausalMask { additive: Tensor::from_vec(m, (t, l), dev)?, start, window })
}

/// Which earlier tokens each query of a decoder pass attends to.
pub enum Visibility {
    /// Independent causal sequences side by side (one, or a decoding batch), each `len` new
    /// tokens after its own cached ones, with its mask (None for one new token, which sees them all).
    Causal(Vec<(usize, Option<CausalMask>)>),
    /// A packed pass: a shared prefix (causal), then segments of `lens` tokens, each seeing the
    /// whole prefix and its own earlier tokens, never another segment.
    Packed { prefix: usize, lens: Vec<usize> },
}

/// The additive masks of a packed pass: the prefix's causal mask, then one per segment
/// ([len, prefix + len]: all of the prefix, causal within the segment), within `window` if given.
pub fn packed_masks(
    prefix: usize,
    lens: &[usize],
    window: Option<usize>,
    dt: DType,
    dev: &Device,
) -> Result<Vec<CausalMask>> {
    std::iter::once(causal_mask(prefix, 0, window, dev))
        .chain(lens.iter().map(|&len| causal_mask(len, prefix, window, dev)))
        .map(|m| m.and_then(|m| m.to_dtype(dt)))
        .collect()
}

/// Attention of a packed pass (q [1, h, t, d], k and v [1, h_kv, t, d]), segment by segment over
/// the prefix's keys and its own, so cost and memory grow with Σ len·(prefix + len) rather than
/// with the square of the packed length. `masks` from [`packed_masks`].
pub fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (prefix, lens): (usize, &[usize]),
    masks: &[CausalMask],
    scale: f64,
) -> Result<Tensor> {
    let (kp, vp) = (k.narrow(2, 0, prefix)?, v.narrow(2, 0, prefix)?);
    let mut outs = vec![attention(&q.narrow(2, 0, prefix)?.contiguous()?, &kp, &vp, Some(&masks[0]), scale)?];
    let mut start = prefix;
    for (&len, mask) in lens.iter().zip(&masks[1..]) {
        let ks = Tensor::cat(&[&kp, &k.narrow(2, start, len)?], 2)?;
        let vs = Tensor::cat(&[&vp, &v.narrow(2, start, len)?], 2)?;
        outs.push(attention(&q.narrow(2, start, len)?.contiguous()?, &ks, &vs, Some(mask), scale)?);
        start += len;
    }
    Tensor::cat(&outs, 2)
}

/// Scaled dot-product attention with grouped KV heads.
/// q [b, h, t, d]; k, v [b, h_kv, l, d]; mask ([t, l]) or None → [b, h, t, d].
/// Query heads are grouped onto their KV head by reshaping (no copies of K/V per head).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&CausalMask>, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let h_kv = k.dim(1)?;
    let rep = h / h_kv;
    let qg = q.reshape((b, h_kv, rep * t, d))?;
    let scores = rows_dot(&qg, k)?; // [b, h_kv, rep*t, l]
    let probs = match mask {
        // training: scale, mask and softmax in one op (its backward too)
        Some(m) if scores.dtype() == DType::F32 && training(&qg, k) => {
            let op = super::fused::CausalSoftmax { scale: scale as f32, queries: t, start: m.start, window: m.window };
            scores.contiguous()?.apply_op1(op)?
        }
        _ => {
            let scores = (scores * scale)?;
            let scores = match mask {
                None => scores,
                Some(m) => {
                    let l = m.additive.dim(1)?;
                    let m = m.additive.unsqueeze(0)?.broadcast_as((rep, t, l))?.reshape((rep * t, l))?;
                    scores.broadcast_add(&m)?
                }
            };
            softmax_last(&scores)?
        }
    };
    weighted_rows(&probs, v)?.reshape((b, h, t, d))
}

/// Attention of several sequences side by side (a decoding batch), each against its own cache:
/// q [1, h, T, d] holds their new queries one after another, `lanes` each one's keys and values
/// [1, h_kv, l, d] and the mask of its `n` queries → [1, h, T, d]. f32 inference runs every row in
/// one [`super::fused::attention_lanes`] dispatch (the same arithmetic as [`attention`] per sequence);
/// otherwise sequence by sequence.
pub fn attention_lanes(
    q: &Tensor,
    lanes: &[(Tensor, Tensor, usize, Option<&CausalMask>)],
    scale: f64,
) -> Result<Tensor> {
    let (_, h, t, d) = q.dims4()?;
    if q.dtype() != DType::F32
        || lanes.iter().any(|(k, v, ..)| k.dtype() != DType::F32 || training(k, v))
        || q.track_op()
    {
        let mut outs = Vec::with_capacity(lanes.len());
        let mut at = 0;
        for (k, v, n, mask) in lanes {
            outs.push(attention(&q.narrow(2, at, *n)?.contiguous()?, k, v, *mask, scale)?);
            at += n;
        }
        return Tensor::cat(&outs, 2);
    }
    let rows = q.squeeze(0)?.transpose(0, 1)?.contiguous()?; // [T, h, d]
    let fused: Vec<super::fused::Lane> = lanes
        .iter()
        .map(|(k, v, n, m)| super::fused::Lane { k, v, queries: *n, mask: m.map(|m| &m.additive) })
        .collect();
    let out = super::fused::attention_lanes(&rows, &fused, scale)?; // [T, h, d]
    out.reshape((1, t, h, d))?.transpose(1, 2)
}

/// Training (a gradient flows) favours candle's batched gemm over a fixed cross-platform order:
/// the attention products were a fifth of a training step in the portable kernels.
fn training(a: &Tensor, b: &Tensor) -> bool {
    a.track_op() || b.track_op()
}

/// a [.., m, d] · b [.., n, d]ᵀ with the same arithmetic on every platform (f32 inference; else
/// candle's).
fn rows_dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() != DType::F32 || a.rank() < 3 || training(a, b) {
        return a.matmul(&b.t()?);
    }
    let (m, n) = (a.dim(D::Minus2)?, b.dim(D::Minus2)?);
    let lead: Vec<usize> = a.dims()[..a.rank() - 2].to_vec();
    let a3 = a.contiguous()?.reshape(((), m, a.dim(D::Minus1)?))?;
    let b3 = rows_in_place(b)?;
    let mut shape = lead;
    shape.extend([m, n]);
    a3.apply_op2(&b3, super::fused::RowDots)?.reshape(shape)
}

/// p [.., m, l] · v [.., l, d] with the same arithmetic on every platform (f32 inference; else
/// candle's).
fn weighted_rows(p: &Tensor, v: &Tensor) -> Result<Tensor> {
    if p.dtype() != DType::F32 || p.rank() < 3 || training(p, v) {
        return p.matmul(v);
    }
    let (m, l, d) = (p.dim(D::Minus2)?, p.dim(D::Minus1)?, v.dim(D::Minus1)?);
    let mut shape: Vec<usize> = p.dims()[..p.rank() - 2].to_vec();
    shape.extend([m, d]);
    let p3 = p.contiguous()?.reshape(((), m, l))?;
    let v3 = rows_in_place(v)?;
    p3.apply_op2(&v3, super::fused::WeightedRows)?.reshape(shape)
}

/// k or v [1, h, l, d] (a KV cache's view, rows contiguous, heads a buffer apart) as [h, l, d]
/// without a copy (RowDots and WeightedRows read the strided heads); anything else made contiguous.
fn rows_in_place(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let st = x.stride();
    let cache_view = x.rank() == 4 && dims[0] == 1 && st[3] == 1 && (dims[2] <= 1 || st[2] == dims[3]);
    if cache_view && (dims[1] <= 1 || st[1] >= dims[2] * dims[3]) {
        return x.squeeze(0);
    }
    let (l, d) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
    x.contiguous()?.reshape(((), l, d))
}

/// SwiGLU / GeGLU gate: act(gate) · up.
pub fn gated(gate: &Tensor, up: &Tensor, act: crate::arch::Activation) -> Result<Tensor> {
    if gate.dtype() == DType::F32 {
        let (gate, up) = (gate.contiguous()?, up.contiguous()?);
        return match act {
            crate::arch::Activation::Silu => {
                gate.apply_op2(&up, super::fused::SwiGlu { fast: gate.track_op() || up.track_op() })
            }
            crate::arch::Activation::GeluTanh => gate.apply_op2(&up, super::fused::GeGlu),
        };
    }
    let g = match act {
        crate::arch::Activation::Silu => silu(gate)?,
        crate::arch::Activation::GeluTanh => gate.gelu()?,
    };
    g * up
}

/// x · sigmoid(x), from recorded ops (candle's `silu` unary is recorded too; this keeps it explicit).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let s = (x.neg()?.exp()? + 1.0)?.recip()?;
    x * s
}

/// f32 copy of a tensor's values (any dtype).
pub fn to_f32_vec(x: &Tensor) -> Result<Vec<f32>> {
    x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn rms_norm_matches_definition() {
        let x = t(&[1.0, 2.0, 3.0, -4.0], &[1, 4]);
        let w = t(&[1.0, 0.5, 2.0, 1.0], &[4]);
        let y = to_f32_vec(&rms_norm(&x, &w, 1e-5).unwrap()).unwrap();
        let r = (30.0f32 / 4.0 + 1e-5).sqrt();
        let want = [1.0 / r, 1.0 / r, 6.0 / r, -4.0 / r];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_handle_neg_inf() {
        let x = t(&[1.0, 2.0, f32::NEG_INFINITY, 1000.0, 1000.0, 1000.0], &[2, 3]);
        let y = to_f32_vec(&softmax_last(&x).unwrap()).unwrap();
        assert!((y[0] + y[1] - 1.0).abs() < 1e-6 && y[2] == 0.0);
        assert!((y[3] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        // one head, two positions, d = 4; position 0 is the identity
        let x = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], &[1, 1, 2, 4]);
        let (c, s) = rope_tables(10_000.0, 4, 0, 2, &Device::Cpu).unwrap();
        let y = to_f32_vec(&rope(&x, &c, &s, RopeStyle::Interleaved).unwrap()).unwrap();
        assert_eq!(&y[..4], &[1.0, 0.0, 0.0, 1.0]);
        // position 1, pair 0 rotates by 1 rad: (1,0) -> (cos1, sin1)
        assert!((y[4] - 1f32.cos()).abs() < 1e-6 && (y[5] - 1f32.sin()).abs() < 1e-6);
        // pair 1 rotates by 1/100 rad: (0,1) -> (-sin, cos)
        assert!((y[6] + 0.01f32.sin()).abs() < 1e-6 && (y[7] - 0.01f32.cos()).abs() < 1e-6);
        // NeoX pairs (i, i + d/2): (x0, x2) = (1, 0) at position 1 -> (cos1, sin1)
        let y = to_f32_vec(&rope(&x, &c, &s, RopeStyle::Neox).unwrap()).unwrap();
        assert!((y[4] - 1f32.cos()).abs() < 1e-6 && (y[6] - 1f32.sin()).abs() < 1e-6);
    }

    /// A packed pass: a 3-token prefix and segments of 2 and 4 tokens; q with 4 heads over 2 KV heads.
    fn packed_fixture() -> (usize, [usize; 2], Tensor, Tensor, Tensor) {
        let (prefix, lens) = (3usize, [2usize, 4]);
        let t = prefix + lens.iter().sum::<usize>();
        let q = crate::testing::randn(&[1, 4, t, 8], 1.0, 7);
        let k = crate::testing::randn(&[1, 2, t, 8], 1.0, 8);
        let v = crate::testing::randn(&[1, 2, t, 8], 1.0, 9);
        (prefix, lens, q, k, v)
    }

    /// Segment-by-segment packed attention equals each sequence's own causal attention.
    #[test]
    fn packed_attention_keeps_segments_apart() {
        let dev = Device::Cpu;
        let (prefix, lens, q, k, v) = packed_fixture();
        let masks = packed_masks(prefix, &lens, None, DType::F32, &dev).unwrap();
        let got = packed_attention(&q, &k, &v, (prefix, &lens), &masks, 0.3).unwrap();
        let mut start = prefix;
        for len in lens {
            // the sequence alone: prefix then this segment
            let own = |x: &Tensor| {
                Tensor::cat(&[x.narrow(2, 0, prefix).unwrap(), x.narrow(2, start, len).unwrap()], 2).unwrap()
            };
            let n = prefix + len;
            let want =
                attention(&own(&q), &own(&k), &own(&v), Some(&causal_mask(n, 0, None, &dev).unwrap()), 0.3).unwrap();
            for (rows, (g0, w0)) in [(prefix, (0, 0)), (len, (start, prefix))] {
                let g = to_f32_vec(&got.narrow(2, g0, rows).unwrap()).unwrap();
                let w = to_f32_vec(&want.narrow(2, w0, rows).unwrap()).unwrap();
                assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-5), "segment at {start}, rows from {g0}");
            }
            start += len;
        }
    }

    /// A training pass (q, k, v carry gradients) masks through the fused causal softmax; its
    /// attention equals the inference arithmetic's, packed or not, with or without a window.
    #[test]
    fn training_attention_equals_inference_attention() {
        let dev = Device::Cpu;
        let (prefix, lens, q, k, v) = packed_fixture();
        let t = q.dim(2).unwrap();
        let var = |x: &Tensor| candle_core::Var::from_tensor(x).unwrap().as_tensor().clone();
        for window in [None, Some(2)] {
            let masks = packed_masks(prefix, &lens, window, DType::F32, &dev).unwrap();
            let want = packed_attention(&q, &k, &v, (prefix, &lens), &masks, 0.3).unwrap();
            let got = packed_attention(&var(&q), &var(&k), &var(&v), (prefix, &lens), &masks, 0.3).unwrap();
            let mask = causal_mask(t, 0, window, &dev).unwrap();
            let want_causal = attention(&q, &k, &v, Some(&mask), 0.3).unwrap();
            let got_causal = attention(&var(&q), &var(&k), &var(&v), Some(&mask), 0.3).unwrap();
            for (g, w) in [(got, want), (got_causal, want_causal)] {
                let (g, w) = (to_f32_vec(&g).unwrap(), to_f32_vec(&w).unwrap());
                assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-5), "window {window:?}");
            }
        }
    }

    #[test]
    fn causal_mask_with_offset_and_window() {
        let m = to_f32_vec(&causal_mask(2, 3, None, &Device::Cpu).unwrap().additive).unwrap();
        let vis: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
        assert_eq!(vis, [true, true, true, true, false, true, true, true, true, true]);
        let m = to_f32_vec(&causal_mask(1, 4, Some(2), &Device::Cpu).unwrap().additive).unwrap();
        let vis: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
        assert_eq!(vis, [false, false, false, true, true]);
    }

    /// K and V read in place from a KV cache's buffer (heads a buffer apart, not contiguous) give
    /// bit for bit the attention of their contiguous copies, and no row of the buffer past the
    /// view is read.
    #[test]
    fn attention_reads_cache_views_in_place() {
        let dev = Device::Cpu;
        let (q, mask) = (crate::testing::randn(&[1, 4, 2, 8], 1.0, 4), causal_mask(2, 3, None, &dev).unwrap());
        let buffer = |seed| {
            let x = crate::testing::randn(&[1, 2, 7, 8], 1.0, seed);
            // positions past the view hold NaN: reading one would poison the result
            let tail = Tensor::full(f32::NAN, (1, 2, 2, 8), &dev).unwrap();
            Tensor::cat(&[x.narrow(2, 0, 5).unwrap(), tail], 2).unwrap()
        };
        let (kb, vb) = (buffer(5), buffer(6));
        let (k, v) = (kb.narrow(2, 0, 5).unwrap(), vb.narrow(2, 0, 5).unwrap());
        assert!(!k.is_contiguous());
        let got = to_f32_vec(&attention(&q, &k, &v, Some(&mask), 0.3).unwrap()).unwrap();
        let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
        let want = to_f32_vec(&attention(&q, &kc, &vc, Some(&mask), 0.3).unwrap()).unwrap();
        assert!(got.iter().all(|x| x.is_finite()));
        assert_eq!(got, want);
        // one query: one position of each head
        let (k1, v1) = (kb.narrow(2, 4, 1).unwrap(), vb.narrow(2, 4, 1).unwrap());
        let q1 = q.narrow(2, 0, 1).unwrap();
        let got = to_f32_vec(&attention(&q1, &k1, &v1, None, 0.3).unwrap()).unwrap();
        let want =
            to_f32_vec(&attention(&q1, &k1.contiguous().unwrap(), &v1.contiguous().unwrap(), None, 0.3).unwrap())
                .unwrap();
        assert_eq!(got, want);
    }

    /// Three sequences side by side (a prompt of 3 tokens with its mask, two decode steps), 4 query
    /// heads over 2 KV heads read from cache-like views: each sequence's rows bit for bit its own
    /// attention.
    #[test]
    fn lanes_attend_each_to_their_own_keys() {
        let dev = Device::Cpu;
        let (ns, ls) = ([3usize, 1, 1], [5usize, 9, 1]);
        let q = crate::testing::randn(&[1, 4, 5, 8], 1.0, 11);
        let masks: Vec<Option<CausalMask>> =
            ns.iter().zip(&ls).map(|(&n, &l)| (n > 1).then(|| causal_mask(n, l - n, None, &dev).unwrap())).collect();
        let kv: Vec<(Tensor, Tensor)> = ls
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let buf = |seed| crate::testing::randn(&[1, 2, 16, 8], 1.0, seed).narrow(2, 0, l).unwrap();
                (buf(20 + i as u64), buf(30 + i as u64))
            })
            .collect();
        let lanes: Vec<_> =
            kv.iter().zip(&ns).zip(&masks).map(|(((k, v), &n), m)| (k.clone(), v.clone(), n, m.as_ref())).collect();
        let got = attention_lanes(&q, &lanes, 0.3).unwrap();
        assert_eq!(got.dims4().unwrap(), (1, 4, 5, 8));
        let mut at = 0;
        for (((k, v), &n), m) in kv.iter().zip(&ns).zip(&masks) {
            let want = attention(&q.narrow(2, at, n).unwrap().contiguous().unwrap(), k, v, m.as_ref(), 0.3).unwrap();
            assert_eq!(
                to_f32_vec(&got.narrow(2, at, n).unwrap()).unwrap(),
                to_f32_vec(&want).unwrap(),
                "rows from {at}"
            );
            at += n;
        }
        // a mismatch is an error, not a panic
        let short = [(kv[0].0.clone(), kv[0].1.clone(), 2, None)];
        assert!(attention_lanes(&q, &short, 0.3).is_err());
    }

    #[test]
    fn grouped_attention_equals_repeated_heads() {
        // 4 query heads over 2 KV heads: heads 0,1 use kv 0; heads 2,3 use kv 1
        let dev = Device::Cpu;
        let q = crate::testing::randn(&[1, 4, 3, 8], 1.0, 1);
        let k = crate::testing::randn(&[1, 2, 3, 8], 1.0, 2);
        let v = crate::testing::randn(&[1, 2, 3, 8], 1.0, 3);
        let mask = causal_mask(3, 0, None, &dev).unwrap();
        let got = attention(&q, &k, &v, Some(&mask), 0.3).unwrap();
        for head in 0..4 {
            let qh = q.narrow(1, head, 1).unwrap();
            let kh = k.narrow(1, head / 2, 1).unwrap();
            let vh = v.narrow(1, head / 2, 1).unwrap();
            let want = attention(&qh, &kh, &vh, Some(&mask), 0.3).unwrap();
            let g = to_f32_vec(&got.narrow(1, head, 1).unwrap()).unwrap();
            let w = to_f32_vec(&want).unwrap();
            for (a, b) in g.iter().zip(&w) {
                assert!((a - b).abs() < 1e-5, "head {head}");
            }
        }
    }
}
