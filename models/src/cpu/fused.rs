//! candle custom ops for the CPU decoder's hot paths, with ggml's arithmetic where it matters for
//! agreement with llama.cpp. Each op has a backward pass, so a trainable path through it gets its
//! gradient (candle's own fused ops silently record none).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use crate::arch::RopeStyle;

use super::qmatmul;
use crate::gguf::{codec, GgmlType, Gguf, TensorInfo};

/// A frozen quantized weight [n, k] read in place from its GGUF file (no copy).
pub struct GgmlWeight {
    g: Gguf,
    info: TensorInfo,
    pub n: usize,
    pub k: usize,
}

impl GgmlWeight {
    pub fn new(g: &Gguf, info: &TensorInfo) -> Self {
        GgmlWeight { g: g.clone(), n: info.dims[1] as usize, k: info.dims[0] as usize, info: info.clone() }
    }
    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }
    pub fn bytes(&self) -> &[u8] {
        self.g.tensor_bytes(&self.info)
    }
    /// Dequantized [n, k] (for gradients and reference runs).
    pub fn dense(&self, dev: &candle_core::Device) -> Result<Tensor> {
        let mut w = vec![0f32; self.n * self.k];
        codec::dequantize(self.info.ty, self.bytes(), &mut w).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Tensor::from_vec(w, (self.n, self.k), dev)
    }
}

/// x [.., k] · Wᵀ → [.., n] with the ggml-exact quantized kernels. Backward: dX = dY · W.
pub struct QMatMul(pub Arc<GgmlWeight>);

fn f32_input<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<std::borrow::Cow<'a, [f32]>> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: expected an f32 input") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(std::borrow::Cow::Borrowed(&v[a..b])),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// One sequence of a decoding batch for [`attention_lanes`]: its keys and values (a KV cache's view,
/// [1, h_kv, l, d]) and the additive mask [t, l] of its `t` new queries (None: they see every key).
pub struct Lane<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub queries: usize,
    pub mask: Option<&'a Tensor>,
}

/// Inference attention of several sequences side by side, each against its own keys: q [T, h, d]
/// (the sequences' queries one after another, T = Σ queries) → [T, h, d], in one dispatch of the
/// thread team over every (query, head) row. Each row has the arithmetic of [`RowDots`], the scale
/// (`x·scale + 0`, candle's affine), the mask's add, [`SoftmaxLast`] (portable exponentials) and
/// [`WeightedRows`], so its result is bit for bit the one of those ops run sequence by sequence.
/// Query head `hh` reads KV head `hh / (h / h_kv)`.
pub fn attention_lanes(q: &Tensor, lanes: &[Lane], scale: f64) -> Result<Tensor> {
    use candle_core::Storage;
    let (t, h, d) = q.dims3()?;
    if lanes.iter().map(|l| l.queries).sum::<usize>() != t {
        candle_core::bail!("attention-lanes: {t} queries, but the lanes hold a different number");
    }
    // read guards of every input for the dispatch, then plain slices
    let q = q.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let Storage::Cpu(qs) = &*qs else { candle_core::bail!("attention-lanes: CPU tensors only") };
    let qv = f32_input(qs, ql, "attention-lanes")?;
    let mut guards = Vec::with_capacity(lanes.len());
    for lane in lanes {
        let masks = lane.mask.map(|m| m.contiguous()).transpose()?;
        guards.push((lane.k.squeeze(0)?, lane.v.squeeze(0)?, masks));
    }
    struct Keys<'a> {
        k: (&'a [f32], usize),
        v: (&'a [f32], usize),
        l: usize,
        mask: Option<std::borrow::Cow<'a, [f32]>>,
        h_kv: usize,
    }
    let locks: Vec<_> = guards
        .iter()
        .map(|(k, v, m)| (k.storage_and_layout(), v.storage_and_layout(), m.as_ref().map(|m| m.storage_and_layout())))
        .collect();
    let mut keys = Vec::with_capacity(lanes.len());
    for (((ks, kl), (vs, vl), m), lane) in locks.iter().zip(lanes) {
        let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&**ks, &**vs) else {
            candle_core::bail!("attention-lanes: CPU tensors only")
        };
        let ((h_kv, l, dk), (_, lv, dv)) = (dims3(kl, "attention-lanes")?, dims3(vl, "attention-lanes")?);
        if dk != d || dv != d || lv != l || h_kv == 0 || h % h_kv != 0 {
            candle_core::bail!(
                "attention-lanes: keys {:?} and values {:?} do not fit q [{t}, {h}, {d}]",
                kl.dims(),
                vl.dims()
            );
        }
        let mask = match m {
            Some((ms, ml)) => {
                let Storage::Cpu(ms) = &**ms else { candle_core::bail!("attention-lanes: CPU tensors only") };
                if ml.dims() != [lane.queries, l] {
                    candle_core::bail!(
                        "attention-lanes: mask {:?} for {} queries over {l} keys",
                        ml.dims(),
                        lane.queries
                    );
                }
                Some(f32_input(ms, ml, "attention-lanes")?)
            }
            None => None,
        };
        keys.push(Keys {
            k: f32_rows(ks, kl, "attention-lanes")?,
            v: f32_rows(vs, vl, "attention-lanes")?,
            l,
            mask,
            h_kv,
        });
    }
    // row r = (query i, head hh) of the output; which lane holds query i
    let owner: Vec<(usize, usize)> =
        lanes.iter().enumerate().flat_map(|(li, lane)| (0..lane.queries).map(move |i| (li, i))).collect();
    let scale = scale as f32;
    let mut out = vec![0f32; t * h * d];
    par_rows(&mut out, d, &|r, row| {
        let (qi, hh) = (r / h, r % h);
        let (li, i) = owner[qi];
        let key = &keys[li];
        let kvh = hh / (h / key.h_kv);
        let qr = &qv[r * d..(r + 1) * d];
        let (kb, vb) = (&key.k.0[kvh * key.k.1..], &key.v.0[kvh * key.v.1..]);
        let mut scores = vec![0f32; key.l];
        dots_row(qr, kb, &mut scores);
        for s in scores.iter_mut() {
            *s = *s * scale + 0.0;
        }
        if let Some(m) = &key.mask {
            for (s, &a) in scores.iter_mut().zip(&m[i * key.l..(i + 1) * key.l]) {
                *s += a;
            }
        }
        let mut probs = vec![0f32; key.l];
        softmax_row(&scores, &mut probs, exp_portable);
        weighted_row(&probs, vb, row);
    });
    Tensor::from_vec(out, (t, h, d), q.device())
}

/// A rank-3 f32 input whose rows are contiguous and whose batches lie `stride` values apart (a KV
/// cache's view of its filled positions, read in place): the values from the first one, and the
/// batch stride.
fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: expected an f32 input") };
    let (b, n, d) = dims3(l, op)?;
    let (start, st) = (l.start_offset(), l.stride());
    let stride = if l.is_contiguous() {
        n * d
    } else if st[2] == 1 && (n <= 1 || st[1] == d) && (b <= 1 || st[0] >= n * d) {
        st[0]
    } else {
        candle_core::bail!("{op}: rows must be contiguous (strides {st:?})")
    };
    let len = if b * n * d == 0 { 0 } else { (b - 1) * stride + n * d };
    Ok((&v[start..start + len], stride))
}

impl CustomOp1 for QMatMul {
    fn name(&self) -> &'static str {
        "ggml-qmatmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let dims = l.dims();
        if dims.last() != Some(&w.k) {
            candle_core::bail!("{}: input {:?} does not end in {}", self.name(), dims, w.k);
        }
        let x = f32_input(s, l, self.name())?;
        let m = x.len() / w.k;
        let mut y = vec![0f32; m * w.n];
        qmatmul::matmul(w.ty(), w.bytes(), w.n, w.k, &x, m, &mut y);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = w.n;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.0.dense(arg.device())?)?))
    }
}

/// x [.., k] · Wᵀ for a frozen dense weight W [n, k] (f32 or f64). Backward: dX = dY·W only.
/// candle's own matmul backward also forms the weight gradient — a product as costly as the
/// forward pass, and a weight-sized tensor per layer — which a frozen weight never uses.
pub struct FrozenMatMul(pub Tensor);

impl CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.dims2()?;
        let dims = l.dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("{}: input {:?} does not end in {k}", self.name(), dims);
        }
        let m = l.shape().elem_count() / k;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name())
        };
        let dev = candle_core::Device::Cpu;
        let x = match s {
            CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], (m, k), &dev)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[a..b], (m, k), &dev)?,
            _ => candle_core::bail!("{}: expected an f32 or f64 input", self.name()),
        };
        let y = x.matmul(&self.0.to_dtype(x.dtype())?.t()?)?.flatten_all()?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(y.to_vec1()?),
            _ => CpuStorage::F64(y.to_vec1()?),
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = n;
        Ok((out, Shape::from(out_dims)))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.0.to_dtype(x.dtype())?)?))
    }
}

/// A frozen weight W [n, k] in bf16, packed for the forward product and for the input gradient.
pub struct Bf16Weight {
    fwd: super::bf16::PackedBf16,
    bwd: super::bf16::PackedBf16,
}

impl Bf16Weight {
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        Bf16Weight { fwd: super::bf16::PackedBf16::new(w, n, k), bwd: super::bf16::PackedBf16::transposed(w, n, k) }
    }

    /// (n, k)
    pub fn dims(&self) -> (usize, usize) {
        (self.fwd.n, self.fwd.k)
    }

    /// x [m, k] · Wᵀ → [m, n]
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.fwd.matmul(x, m)
    }

    /// g [m, n] · W → [m, k]
    pub fn input_grad(&self, g: &[f32], m: usize) -> Vec<f32> {
        self.bwd.matmul(g, m)
    }

    /// W [n, k] as a dense f32 tensor of its bf16 values.
    pub fn dense(&self, dev: &candle_core::Device) -> Result<Tensor> {
        Tensor::from_vec(self.fwd.to_f32(), (self.fwd.n, self.fwd.k), dev)
    }
}

/// x [.., k] · Wᵀ (or, `transposed`, x [.., n] · W) with x rounded to bf16 and f32 sums, on AMX
/// tiles or AVX512-BF16 where present. Backward: the gradient of the input only, through the other packing.
pub struct Bf16MatMul {
    pub w: std::sync::Arc<Bf16Weight>,
    pub transposed: bool,
}

impl CustomOp1 for Bf16MatMul {
    fn name(&self) -> &'static str {
        "bf16-matmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = if self.transposed { &self.w.bwd } else { &self.w.fwd };
        let dims = l.dims();
        if dims.last() != Some(&p.k) {
            candle_core::bail!("{}: input {:?} does not end in {}", self.name(), dims, p.k);
        }
        let x = f32_input(s, l, self.name())?;
        let y = p.matmul(&x, x.len() / p.k);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = p.n;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Bf16MatMul { w: self.w.clone(), transposed: !self.transposed };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// RMSNorm y = x / sqrt(mean(x²) + eps) · w over the last dim, as ggml computes it (squares summed
/// in f64 in order, scale applied, then the weight). The weight is frozen; backward gives dX.
pub struct RmsNorm {
    pub w: Vec<f32>,
    pub eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "ggml-rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.w.len();
        if l.dims().last() != Some(&n) {
            candle_core::bail!("{}: input {:?} does not end in {n}", self.name(), l.dims());
        }
        let x = f32_input(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, n, &|r, yr| {
            let xr = &x[r * n..(r + 1) * n];
            let scale = rms_scale(xr, self.eps);
            for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(&self.w) {
                *o = (v * scale) * w;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // y = x·r·w, r = (mean(x²)+eps)^-½  ⇒  dx = r·(g·w) − x·r³·mean(x·g·w)
        if x.dtype() == DType::F32 {
            // one pass per row instead of a dozen full-size candle ops (61 norms per SmolLM2 step)
            let op = RmsNormGrad { w: self.w.clone(), eps: self.eps };
            return Ok(Some(x.contiguous()?.apply_op2_no_bwd(&g.contiguous()?, &op)?));
        }
        let w = Tensor::from_slice(&self.w, self.w.len(), x.device())?.to_dtype(x.dtype())?;
        let gw = g.broadcast_mul(&w)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?.recip()?;
        let m = (x * &gw)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * m)?)?)?;
        Ok(Some(dx))
    }
}

/// r = (mean(x²) + eps)^-½ of one row, the squares summed in f64 in order (as ggml does).
fn rms_scale(xr: &[f32], eps: f32) -> f32 {
    let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / xr.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// The RMSNorm input gradient from (x, g), row by row: dx = r·(g·w) − x·r³·mean(x·g·w).
struct RmsNormGrad {
    w: Vec<f32>,
    eps: f32,
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.w.len();
        if l1.dims() != l2.dims() || l1.dims().last() != Some(&n) {
            candle_core::bail!("rms-norm-grad: x {:?} and g {:?} must match and end in {n}", l1.dims(), l2.dims());
        }
        let (x, g) = (f32_input(s1, l1, self.name())?, f32_input(s2, l2, self.name())?);
        let mut d = vec![0f32; x.len()];
        par_rows(&mut d, n, &|r, dr| {
            let (xr, gr) = (&x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
            let scale = rms_scale(xr, self.eps);
            let xgw: f64 = xr.iter().zip(gr).zip(&self.w).map(|((&xv, &gv), &w)| (xv * gv * w) as f64).sum();
            let c = scale * scale * scale * (xgw / n as f64) as f32;
            for (((o, &xv), &gv), &w) in dr.iter_mut().zip(xr).zip(gr).zip(&self.w) {
                *o = scale * (gv * w) - xv * c;
            }
        });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// act(gate) · up, elementwise (the forward of the gated MLP activations), in parallel chunks.
fn gated_fwd(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    act: impl Fn(f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("{op}: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
    }
    let (g, u) = (f32_input(s1, l1, op)?, f32_input(s2, l2, op)?);
    let mut y = vec![0f32; g.len()];
    par_chunks(&mut y, |start, ys| {
        for ((o, &g), &u) in ys.iter_mut().zip(&g[start..]).zip(&u[start..]) {
            *o = act(g) * u;
        }
    });
    Ok((CpuStorage::F32(y), l1.shape().clone()))
}

/// silu(gate) · up, elementwise. Backward: d_gate = g·up·silu'(gate), d_up = g·silu(gate).
pub struct SwiGlu {
    /// [`exp_fast`] instead of [`exp_portable`] (training passes).
    pub fast: bool,
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if self.fast {
            gated_fwd(self.name(), (s1, l1), (s2, l2), |g| g / (1.0 + exp_fast(-g)))
        } else {
            gated_fwd(self.name(), (s1, l1), (s2, l2), |g| g / (1.0 + exp_portable(-g)))
        }
    }
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if gate.dtype() == DType::F32 {
            // both gradients in one pass: [2, n] = (d_gate, d_up)
            let both = gate.contiguous()?.apply_op3(&up.contiguous()?, &grad.contiguous()?, SwiGluGrad)?;
            let d = |i| both.get(i)?.reshape(gate.shape());
            return Ok((Some(d(0)?), Some(d(1)?)));
        }
        let sig = (gate.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (gate * &sig)?;
        // silu'(x) = σ(x)·(1 + x·(1 − σ(x)))
        let dsilu = (&sig * ((gate * (1.0 - &sig)?)? + 1.0)?)?;
        Ok((Some((grad * up)?.mul(&dsilu)?), Some((grad * silu)?)))
    }
}

/// The SwiGLU gradients from (gate, up, g): [2, n] holding g·up·silu'(gate) and g·silu(gate).
struct SwiGluGrad;

impl candle_core::CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() || l1.shape() != l3.shape() {
            candle_core::bail!("swiglu-grad: {:?}, {:?} and {:?} differ", l1.dims(), l2.dims(), l3.dims());
        }
        let (x, u, g) =
            (f32_input(s1, l1, self.name())?, f32_input(s2, l2, self.name())?, f32_input(s3, l3, self.name())?);
        let n = x.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        // zipped slices, not indices: no bounds checks, so the loops vectorise
        par_chunks(dg, |start, dgs| {
            let end = start + dgs.len();
            for (((o, &x), &u), &g) in dgs.iter_mut().zip(&x[start..end]).zip(&u[start..end]).zip(&g[start..end]) {
                let sig = 1.0 / (1.0 + exp_fast(-x));
                *o = g * u * sig * (1.0 + x * (1.0 - sig));
            }
        });
        par_chunks(du, |start, dus| {
            let end = start + dus.len();
            for ((o, &x), &g) in dus.iter_mut().zip(&x[start..end]).zip(&g[start..end]) {
                *o = g * x / (1.0 + exp_fast(-x));
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

/// gelu(gate) · up with the tanh GELU, as ggml's CPU GeGLU computes it: the gate rounded to f16,
/// its GELU (from a table of f16 results) rounded to f16, outside ±10 the limits 0 and x. The f16
/// rounding is what llama.cpp's Gemma runs with; matching it keeps greedy tokens equal.
/// Backward: the exact GELU's derivative, d_gate = g·up·gelu'(gate), d_up = g·gelu(gate).
pub struct GeGlu;

/// tanh-approximated GELU, computed in f64 and rounded once (the same on every platform).
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let k = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())) as f32
}

/// ggml's f16-table GELU of one value.
pub fn gelu_ggml(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        half::f16::from_f32(gelu_tanh(half::f16::from_f32(x).to_f32())).to_f32()
    }
}

impl CustomOp2 for GeGlu {
    fn name(&self) -> &'static str {
        "geglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        gated_fwd(self.name(), (s1, l1), (s2, l2), gelu_ggml)
    }
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // gelu(x) = x·(1 + tanh(z))/2, z = k(x + a·x³); gelu'(x) = (1 + t)/2 + x(1 − t²)·k(1 + 3a·x²)/2
        let (k, a) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
        let x2 = gate.sqr()?;
        let t = ((gate * ((&x2 * a)? + 1.0)?)? * k)?.tanh()?;
        let gelu = ((gate * (&t + 1.0)?)? * 0.5)?;
        let dt = ((gate * (1.0 - t.sqr()?)?)? * ((&x2 * (3.0 * a * k))? + k)?)?;
        let dgelu = (((&t + 1.0)? + dt)? * 0.5)?;
        Ok((Some((grad * up)?.mul(&dgelu)?), Some((grad * gelu)?)))
    }
}

/// Softmax over the last dimension (max-subtracted). Backward: dx = y·(g − Σ g·y).
pub struct SoftmaxLast {
    /// [`exp_fast`] instead of [`exp_portable`]: for training passes, where results need not be
    /// identical across platforms.
    pub fast: bool,
}

/// Softmax of one row, as ggml: exponentials summed in f64, then scaled by the reciprocal.
fn softmax_row(xr: &[f32], yr: &mut [f32], exp: impl Fn(f32) -> f32) {
    let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for (o, &v) in yr.iter_mut().zip(xr) {
        *o = exp(v - m);
    }
    let inv = (1.0 / yr.iter().map(|&e| e as f64).sum::<f64>()) as f32;
    yr.iter_mut().for_each(|o| *o *= inv);
}

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "softmax-last"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = (*l.dims().last().unwrap_or(&1)).max(1);
        let x = f32_input(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, n, &|r, yr| {
            let xr = &x[r * n..(r + 1) * n];
            if self.fast {
                softmax_row(xr, yr, exp_fast)
            } else {
                softmax_row(xr, yr, exp_portable)
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if y.dtype() == DType::F32 {
            return Ok(Some(y.apply_op2(&g.contiguous()?, SoftmaxGrad { scale: 1.0 })?));
        }
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&dot)?)?))
    }
}

/// softmax(scale·x + causal mask) over the last dimension of attention scores x [.., R, L] (f32),
/// for training passes: one pass instead of the scale, the mask's broadcast add and the softmax
/// (and their backward passes). Row r holds query i = r mod `queries` (rows are grouped heads of
/// `queries` each), at position `start` + i among the L = `start` + `queries` keys; it sees the keys
/// up to its own position, the last `window` of them if given. Hidden keys get probability 0 and no
/// exponential; the rest use [`exp_fast`] and sums in 16 lanes (training needs no cross-platform
/// bits). Backward: dx = scale · y ⊙ (g − Σ g·y).
pub struct CausalSoftmax {
    pub scale: f32,
    pub queries: usize,
    pub start: usize,
    pub window: Option<usize>,
}

impl CausalSoftmax {
    /// The visible keys [lo, hi) of query i.
    fn visible(&self, i: usize) -> (usize, usize) {
        let hi = self.start + i + 1;
        (self.window.map_or(0, |w| hi.saturating_sub(w)), hi)
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (rows, n) = match dims {
            [.., _, n] if *n > 0 => (l.shape().elem_count() / n, *n),
            _ => candle_core::bail!("{}: scores {dims:?} need rows and keys", self.name()),
        };
        if self.queries == 0 || n != self.start + self.queries || rows % self.queries != 0 || self.scale <= 0.0 {
            candle_core::bail!(
                "{}: scores {dims:?} do not hold groups of {} queries over {} + {} keys (scale {})",
                self.name(),
                self.queries,
                self.start,
                self.queries,
                self.scale
            );
        }
        let x = f32_input(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, n, &|r, yr| {
            let (lo, hi) = self.visible(r % self.queries);
            let (xr, yr) = (&x[r * n + lo..r * n + hi], &mut yr[lo..hi]);
            let m = self.scale * lanes(xr, f32::NEG_INFINITY, f32::max, f32::max);
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = exp_fast(self.scale * v - m);
            }
            let inv = 1.0 / lanes(yr, 0.0, |a, b| a + b, |a, b| a + b);
            yr.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2(&g.contiguous()?, SoftmaxGrad { scale: self.scale })?))
    }
}

/// `fold` of the values in 16 lanes, then `join` of the lanes (a vectorisable reduction).
fn lanes(x: &[f32], init: f32, fold: impl Fn(f32, f32) -> f32, join: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            acc[l] = fold(acc[l], c[l]);
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        acc[l] = fold(acc[l], v);
    }
    acc.into_iter().reduce(join).unwrap_or(init)
}

/// The softmax input gradient scale · y ⊙ (g − Σ g·y) per row, from the output y of
/// softmax(scale · x) and its gradient g.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("softmax-grad: {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let n = (*l1.dims().last().unwrap_or(&1)).max(1);
        let (y, g) = (f32_input(s1, l1, self.name())?, f32_input(s2, l2, self.name())?);
        let mut d = vec![0f32; y.len()];
        par_rows(&mut d, n, &|r, dr| {
            let (yr, gr) = (&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
            let dot = dot_lanes(yr, gr);
            for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *o = self.scale * yv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// Rotary embedding of x [b, h, t, d] by precomputed angles (cos/sin [t, rope_dim/2]); dims past
/// rope_dim pass through. Backward: the inverse rotation of the gradient.
pub struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub style: RopeStyle,
    /// Rotate by −θ (the backward pass).
    pub inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, h, t, d] = l.dims() else { candle_core::bail!("rope: expected [b, h, t, d], got {:?}", l.dims()) };
        let half = self.cos.len() / t.max(1);
        if self.cos.len() != t * half || 2 * half > d {
            candle_core::bail!("rope: tables of {} values do not fit t = {t}, d = {d}", self.cos.len());
        }
        let x = f32_input(s, l, self.name())?;
        let mut y = x.to_vec();
        let sign = if self.inverse { -1.0 } else { 1.0 };
        for row in 0..b * h * t {
            let pos = row % t;
            let (c, sn) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
            let v = &mut y[row * d..(row + 1) * d];
            for i in 0..half {
                let (i0, i1) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (v[i0], v[i1]);
                let s_ = sign * sn[i];
                v[i0] = x0 * c[i] - x1 * s_;
                v[i1] = x0 * s_ + x1 * c[i];
            }
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let inv = Rope { cos: self.cos.clone(), sin: self.sin.clone(), style: self.style, inverse: !self.inverse };
        Ok(Some(g.contiguous()?.apply_op1(inv)?))
    }
}

/// Whether a tensor can go through the f32 custom ops.
pub fn is_f32(x: &Tensor) -> bool {
    x.dtype() == DType::F32
}

/// e^x computed in f64 and rounded once: the same bits on every platform (glibc, musl and the
/// wasm `libm` give f32 `exp` results that differ in the last place, which is enough to flip a
/// greedy token of a 135M model between the native and the browser runtimes).
#[inline]
pub fn exp_portable(x: f32) -> f32 {
    (x as f64).exp() as f32
}

/// e^x in f32 arithmetic that vectorises: x = n·ln2 + r (Cody–Waite, |r| ≤ ln2/2), e^r by its
/// degree-7 Taylor polynomial, times 2ⁿ built from the exponent bits. Within a few ulp of
/// [`exp_portable`] for x in [−87, 88]; 0 below (−∞ included: masked attention scores must give
/// exact zeros, as tiny values there turn into denormal products that crawl through every later
/// matmul), e^88 above. For training passes only: decoding keeps [`exp_portable`].
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // ln 2 with its low bits cleared: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let zero = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    // round to nearest through the 1.5·2²³ trick (no libm call, so the loop vectorises)
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    let y = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if zero {
        0.0
    } else {
        y
    }
}

/// Rows of `a` [B, M, D] dotted with rows of `b` [B, L, D] → [B, M, L] (attention scores q·kᵀ).
///
/// A fixed summation order on every platform (8 lanes, then a fixed tree), unlike candle's gemm
/// whose kernels differ per CPU (FMA on x86, none in wasm); the lanes still vectorise.
pub struct RowDots;

/// `p` [B, M, L] times `v` [B, L, D] → [B, M, D] (attention-weighted values), summed over L in
/// order for every output element (vectorised across D).
pub struct WeightedRows;

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// out[j] = q · key j (the rows of `keys`, each as long as q), by [`dot_lanes`].
#[inline(always)]
fn dots_body(q: &[f32], keys: &[f32], out: &mut [f32]) {
    let d = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_lanes(q, &keys[j * d..(j + 1) * d]);
    }
}

/// out += Σ_j p[j] · value j (the rows of `values`, each as long as out), in order of j.
#[inline(always)]
fn weighted_body(p: &[f32], values: &[f32], out: &mut [f32]) {
    let d = out.len();
    for (j, &w) in p.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&values[j * d..(j + 1) * d]) {
            *o += w * x;
        }
    }
}

// The attention rows with AVX where the CPU has it: the same lanes and order as the portable
// code (a mul then an add, no FMA), so the same bits, with keys in fours for independent chains.
#[cfg(target_arch = "x86_64")]
fn has_avx() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| is_x86_feature_detected!("avx"))
}

/// [`dots_body`] with 8-lane AVX registers, four keys at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dots_avx(q: &[f32], keys: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = q.len();
    let whole = d / 8 * 8;
    // the 8 lane sums of q · key j, then the key's remainder and the fixed join of dot_lanes
    let finish = |acc: __m256, key: &[f32]| -> f32 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), acc);
        for (l, (x, y)) in q[whole..].iter().zip(&key[whole..d]).enumerate() {
            a[l] += x * y;
        }
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    };
    let n = out.len();
    let qp = q.as_ptr();
    let mut j = 0;
    while j + 4 <= n {
        let k = [&keys[j * d..], &keys[(j + 1) * d..], &keys[(j + 2) * d..], &keys[(j + 3) * d..]];
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c < whole {
            let x = _mm256_loadu_ps(qp.add(c));
            for (a, kk) in acc.iter_mut().zip(&k) {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(x, _mm256_loadu_ps(kk.as_ptr().add(c))));
            }
            c += 8;
        }
        for (i, (a, kk)) in acc.iter().zip(&k).enumerate() {
            out[j + i] = finish(*a, kk);
        }
        j += 4;
    }
    while j < n {
        let kk = &keys[j * d..];
        let mut acc = _mm256_setzero_ps();
        let mut c = 0;
        while c < whole {
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(kk.as_ptr().add(c))));
            c += 8;
        }
        out[j] = finish(acc, kk);
        j += 1;
    }
}

/// [`weighted_body`] with 8-lane AVX registers: blocks of up to 64 outputs stay in registers while
/// the keys go by in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn weighted_avx(p: &[f32], values: &[f32], out: &mut [f32]) {
    let d = out.len();
    let whole = d / 8 * 8;
    let mut c = 0;
    while c + 64 <= whole {
        weighted_block::<8>(p, values, d, c, out);
        c += 64;
    }
    while c < whole {
        weighted_block::<1>(p, values, d, c, out);
        c += 8;
    }
    if whole < d {
        for (j, &w) in p.iter().enumerate() {
            for (o, &x) in out[whole..].iter_mut().zip(&values[j * d + whole..(j + 1) * d]) {
                *o += w * x;
            }
        }
    }
}

/// Outputs c..c + 8·N of [`weighted_avx`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn weighted_block<const N: usize>(p: &[f32], values: &[f32], d: usize, c: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let vp = values.as_ptr().add(c);
    let mut o = [_mm256_setzero_ps(); N];
    for (b, ob) in o.iter_mut().enumerate() {
        *ob = _mm256_loadu_ps(out.as_ptr().add(c + 8 * b));
    }
    for (j, &w) in p.iter().enumerate() {
        let w = _mm256_set1_ps(w);
        let row = vp.add(j * d);
        for (b, ob) in o.iter_mut().enumerate() {
            *ob = _mm256_add_ps(*ob, _mm256_mul_ps(w, _mm256_loadu_ps(row.add(8 * b))));
        }
    }
    for (b, ob) in o.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * b), *ob);
    }
}

fn dots_row(q: &[f32], keys: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx() && keys.len() >= out.len() * q.len() {
        // SAFETY: the CPU has the feature the function is compiled for; every key is in `keys`.
        return unsafe { dots_avx(q, keys, out) };
    }
    dots_body(q, keys, out)
}

fn weighted_row(p: &[f32], values: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx() && values.len() >= p.len() * out.len() {
        // SAFETY: the CPU has the feature the function is compiled for; every value is in `values`.
        return unsafe { weighted_avx(p, values, out) };
    }
    weighted_body(p, values, out)
}

fn dims3(l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [b, m, n] => Ok((b, m, n)),
        ref d => candle_core::bail!("{op}: expected a rank-3 tensor, got {d:?}"),
    }
}

/// An elementwise output filled in parallel chunks by the thread team: `f(start, chunk)`.
pub(crate) fn par_chunks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    const CHUNK: usize = 1 << 14;
    let len = out.len();
    if len <= CHUNK {
        return f(0, out);
    }
    // rows of CHUNK values, the last one shorter
    let (whole, tail) = out.split_at_mut(len / CHUNK * CHUNK);
    par_rows(whole, CHUNK, &|r, chunk| f(r * CHUNK, chunk));
    f(len / CHUNK * CHUNK, tail);
}

/// Output rows of a [B, M, ·] result computed in parallel by the thread team.
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: each task writes only its own row.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let ptr = Out(out.as_mut_ptr());
    super::team::global().run(rows, &|r| {
        let p = ptr;
        let row = unsafe { std::slice::from_raw_parts_mut(p.0.add(r * row_len), row_len) };
        f(r, row);
    });
}

impl CustomOp2 for RowDots {
    fn name(&self) -> &'static str {
        "row-dots"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let ((b, m, d), (b2, n, d2)) = (dims3(l1, self.name())?, dims3(l2, self.name())?);
        if b != b2 || d != d2 {
            candle_core::bail!("row-dots: {:?} · {:?}ᵀ do not match", l1.dims(), l2.dims());
        }
        let (x, (y, sb)) = (f32_input(s1, l1, self.name())?, f32_rows(s2, l2, self.name())?);
        let mut out = vec![0f32; b * m * n];
        par_rows(&mut out, n, &|r, row| dots_row(&x[r * d..(r + 1) * d], &y[r / m.max(1) * sb..], row));
        Ok((CpuStorage::F32(out), Shape::from((b, m, n))))
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.matmul(b)?), Some(g.transpose(1, 2)?.matmul(a)?)))
    }
}

impl CustomOp2 for WeightedRows {
    fn name(&self) -> &'static str {
        "weighted-rows"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let ((b, m, l), (b2, l2n, d)) = (dims3(l1, self.name())?, dims3(l2, self.name())?);
        if b != b2 || l != l2n {
            candle_core::bail!("weighted-rows: {:?} · {:?} do not match", l1.dims(), l2.dims());
        }
        let (p, (v, sb)) = (f32_input(s1, l1, self.name())?, f32_rows(s2, l2, self.name())?);
        let mut out = vec![0f32; b * m * d];
        par_rows(&mut out, d, &|r, row| weighted_row(&p[r * l..(r + 1) * l], &v[r / m.max(1) * sb..], row));
        Ok((CpuStorage::F32(out), Shape::from((b, m, d))))
    }
    fn bwd(&self, p: &Tensor, v: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.matmul(&v.transpose(1, 2)?)?), Some(p.transpose(1, 2)?.matmul(g)?)))
    }
}

/// Cross-entropy of each row of `logits` [N, V] against `targets` [N] (u32 ids) → [N] (−log
/// softmax(row)[target]), f32 or f64. Backward (logits only): (softmax(row) − onehot(target))·g.
/// One pass over the row with the log-sum-exp in f64, so no [N, V] softmax stays in the graph.
pub struct CrossEntropy;

fn log_sum_exp(row: &[f64]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln() + m
}

/// log Σ e^x of an f32 row, the exponentials by [`exp_fast`] and summed in f64.
fn log_sum_exp_f32(row: &[f32]) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut lanes = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (acc, &v) in lanes.iter_mut().zip(c) {
            *acc += exp_fast(v - m) as f64;
        }
    }
    let sum = lanes.iter().sum::<f64>() + rest.iter().map(|&v| exp_fast(v - m) as f64).sum::<f64>();
    sum.ln() + m as f64
}

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout, n: usize, v: usize) -> Result<&'a [u32]> {
    let (CpuStorage::U32(t), Some((ta, tb))) = (s, l.contiguous_offsets()) else {
        candle_core::bail!("cross-entropy: targets must be contiguous u32")
    };
    let t = &t[ta..tb];
    if t.len() != n {
        candle_core::bail!("cross-entropy: {n} rows but {} targets", t.len());
    }
    if let Some(id) = t.iter().find(|&&id| id as usize >= v) {
        candle_core::bail!("cross-entropy: target {id} is outside the vocabulary of {v}");
    }
    Ok(t)
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = targets_of(s2, l2, n, v)?;
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("cross-entropy: logits must be contiguous")
        };
        let out = match s1 {
            CpuStorage::F32(x) => {
                let x = &x[a..b];
                let mut loss = vec![0f32; n];
                par_rows(&mut loss, 1, &|i, out| {
                    let row = &x[i * v..(i + 1) * v];
                    out[0] = (log_sum_exp_f32(row) - row[t[i] as usize] as f64) as f32;
                });
                CpuStorage::F32(loss)
            }
            CpuStorage::F64(x) => CpuStorage::F64(
                x[a..b].chunks_exact(v).zip(t).map(|(row, &id)| log_sum_exp(row) - row[id as usize]).collect(),
            ),
            _ => candle_core::bail!("cross-entropy: expected f32 or f64 logits"),
        };
        Ok((out, Shape::from(n)))
    }
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let t: Vec<u32> = targets.to_vec1()?;
        if logits.dtype() == DType::F32 {
            let x: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            let g: Vec<f32> = g.to_dtype(DType::F32)?.to_vec1()?;
            let mut d = vec![0f32; n * v];
            par_rows(&mut d, v, &|i, out| {
                let row = &x[i * v..(i + 1) * v];
                let lse = log_sum_exp_f32(row) as f32;
                for (o, &r) in out.iter_mut().zip(row) {
                    *o = exp_fast(r - lse) * g[i];
                }
                out[t[i] as usize] -= g[i];
            });
            return Ok((Some(Tensor::from_vec(d, (n, v), logits.device())?), None));
        }
        let x: Vec<f64> = logits.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let g: Vec<f64> = g.to_dtype(DType::F64)?.to_vec1()?;
        let mut d = vec![0f64; n * v];
        for (i, (row, out)) in x.chunks_exact(v).zip(d.chunks_exact_mut(v)).enumerate() {
            let lse = log_sum_exp(row);
            for (o, &r) in out.iter_mut().zip(row) {
                *o = (r - lse).exp() * g[i];
            }
            out[t[i] as usize] -= g[i];
        }
        let d = Tensor::from_vec(d, (n, v), logits.device())?.to_dtype(logits.dtype())?;
        Ok((Some(d), None))
    }
}

/// The output head's weight for [`HeadLoss`]: bf16-packed or dense f32 [vocab, d].
pub enum HeadWeight {
    Bf16(Arc<Bf16Weight>),
    Dense(Tensor),
}

impl HeadWeight {
    /// h [m, d] → logits [m, vocab].
    fn logits(&self, h: &[f32], m: usize, d: usize) -> Result<Vec<f32>> {
        match self {
            HeadWeight::Bf16(w) => Ok(w.fwd.matmul(h, m)),
            HeadWeight::Dense(w) => {
                let h = Tensor::from_slice(h, (m, d), w.device())?;
                h.matmul(&w.t()?)?.flatten_all()?.to_vec1()
            }
        }
    }
    /// dlogits [m, vocab] → dh [m, d] = dlogits · W.
    fn input_grad(&self, dl: Vec<f32>, m: usize, v: usize) -> Result<Vec<f32>> {
        match self {
            HeadWeight::Bf16(w) => Ok(w.bwd.matmul(&dl, m)),
            HeadWeight::Dense(w) => Tensor::from_vec(dl, (m, v), w.device())?.matmul(w)?.flatten_all()?.to_vec1(),
        }
    }
}

/// Cross-entropy of the output head's predictions against `targets`: h [n, d] → [n], the rows of
/// −log softmax(h·Wᵀ)[target], computed a few rows at a time so the [n, vocab] logits (hundreds of
/// MB, fresh pages on every pass) never exist whole. With `with_grad`, the forward also forms
/// d loss / dh = (softmax − one-hot)·W per row while the logits are at hand; the backward scales
/// those rows by the incoming gradient.
pub struct HeadLoss {
    pub head: HeadWeight,
    pub targets: Vec<u32>,
    pub with_grad: bool,
    /// Rows per chunk: ~24 MiB of logits (glibc serves that from its heap, reused, below 32 MiB).
    pub chunk_rows: usize,
    dh: std::sync::Mutex<Vec<f32>>,
}

impl HeadLoss {
    pub fn new(head: HeadWeight, targets: Vec<u32>, with_grad: bool) -> Self {
        let v = match &head {
            HeadWeight::Bf16(w) => w.fwd.n,
            HeadWeight::Dense(w) => w.dims().first().copied().unwrap_or(1),
        };
        let chunk_rows = ((24 << 20) / (4 * v.max(1))).max(1).div_ceil(32) * 32;
        HeadLoss { head, targets, with_grad, chunk_rows, dh: Default::default() }
    }
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-loss"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, d) = l.shape().dims2()?;
        let h = f32_input(s, l, self.name())?;
        let v = match &self.head {
            HeadWeight::Bf16(w) => w.fwd.n,
            HeadWeight::Dense(w) => w.dim(0)?,
        };
        if self.targets.len() != n {
            candle_core::bail!("head-loss: {n} rows but {} targets", self.targets.len());
        }
        if let Some(id) = self.targets.iter().find(|&&id| id as usize >= v) {
            candle_core::bail!("head-loss: target {id} is outside the vocabulary of {v}");
        }
        let rows = self.chunk_rows.max(1);
        let mut loss = vec![0f32; n];
        let mut dh = if self.with_grad { Vec::with_capacity(n * d) } else { Vec::new() };
        for (c, hc) in h.chunks(rows * d).enumerate() {
            let m = hc.len() / d;
            let mut logits = self.head.logits(hc, m, d)?;
            let targets = &self.targets[c * rows..c * rows + m];
            let lse: Vec<f32> = {
                let mut lse = vec![0f32; m];
                par_rows(&mut lse, 1, &|i, o| o[0] = log_sum_exp_f32(&logits[i * v..(i + 1) * v]) as f32);
                lse
            };
            for (i, &t) in targets.iter().enumerate() {
                loss[c * rows + i] = lse[i] - logits[i * v + t as usize];
            }
            if self.with_grad {
                par_rows(&mut logits, v, &|i, row| {
                    row.iter_mut().for_each(|x| *x = exp_fast(*x - lse[i]));
                    row[targets[i] as usize] -= 1.0;
                });
                dh.extend(self.head.input_grad(logits, m, v)?);
            }
        }
        if self.with_grad {
            *self.dh.lock().unwrap_or_else(|p| p.into_inner()) = dh;
        }
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }
    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dh = std::mem::take(&mut *self.dh.lock().unwrap_or_else(|p| p.into_inner()));
        if dh.len() != h.elem_count() {
            candle_core::bail!(
                "head-loss: no input gradient from the forward pass (built without with_grad, or used twice)"
            );
        }
        let dh = Tensor::from_vec(dh, h.shape(), h.device())?;
        Ok(Some(dh.broadcast_mul(&g.to_dtype(DType::F32)?.unsqueeze(1)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward and gradient of a fused op equal those of the composed reference ops.
    fn check(fused: impl Fn(&Tensor) -> Tensor, composed: impl Fn(&Tensor) -> Tensor, shape: &[usize]) {
        let x = Var::from_tensor(&crate::testing::randn(shape, 1.5, 1)).unwrap();
        let probe = crate::testing::randn(shape, 1.0, 2);
        let (f, c) = (fused(&x), composed(&x));
        assert!(max_abs(&f, &c) < 1e-5, "forward differs by {}", max_abs(&f, &c));
        let gf = (f * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (c * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let d = max_abs(gf.get(&x).unwrap(), gc.get(&x).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }

    #[test]
    fn fused_softmax_swiglu_and_rope_match_composed_ops_and_gradients() {
        use crate::cpu::ops;
        for fast in [false, true] {
            check(|x| x.apply_op1(SoftmaxLast { fast }).unwrap(), |x| ops::softmax_composed(x).unwrap(), &[3, 5, 7]);
            // swiglu: gradient to the gate (x) with a fixed up, then to up with a fixed gate; the
            // larger shape runs in parallel chunks with a shorter last one
            for shape in [[4, 6], [3, 20_000]] {
                let other = crate::testing::randn(&shape, 1.0, 3);
                let silu = |x: &Tensor| ops::silu(x).unwrap();
                check(|x| x.apply_op2(&other, SwiGlu { fast }).unwrap(), |x| (silu(x) * &other).unwrap(), &shape);
                check(|x| other.apply_op2(x, SwiGlu { fast }).unwrap(), |x| (silu(&other) * x).unwrap(), &shape);
            }
        }
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            for (d, rd) in [(8, 8), (12, 8)] {
                let (c, s) = ops::rope_tables(10_000.0, rd, 3, 5, &Device::Cpu).unwrap();
                let op = || Rope {
                    cos: ops::to_f32_vec(&c).unwrap(),
                    sin: ops::to_f32_vec(&s).unwrap(),
                    style,
                    inverse: false,
                };
                check(|x| x.apply_op1(op()).unwrap(), |x| ops::rope(x, &c, &s, style).unwrap(), &[2, 3, 5, d]);
            }
        }
    }

    /// The training softmax (scale, causal mask and softmax in one op) gives the composed ops'
    /// probabilities and gradients: grouped rows, a start offset, with and without a window, rows
    /// longer than the 16 lanes.
    #[test]
    fn causal_softmax_matches_scale_mask_and_softmax() {
        use crate::cpu::ops;
        let dev = Device::Cpu;
        for (groups, queries, start, window) in
            [(3, 4, 2, None), (3, 4, 2, Some(3)), (2, 5, 30, None), (1, 6, 0, Some(1))]
        {
            let keys = start + queries;
            let mask = ops::causal_mask(queries, start, window, &dev).unwrap().additive;
            let tiled = mask
                .unsqueeze(0)
                .unwrap()
                .broadcast_as((groups, queries, keys))
                .unwrap()
                .reshape((groups * queries, keys))
                .unwrap();
            let op = || CausalSoftmax { scale: 0.7, queries, start, window };
            check(
                |x| x.apply_op1(op()).unwrap(),
                |x| ops::softmax_composed(&(x * 0.7).unwrap().broadcast_add(&tiled).unwrap()).unwrap(),
                &[2, groups * queries, keys],
            );
        }
        let x = crate::testing::randn(&[2, 7], 1.0, 4);
        let bad = CausalSoftmax { scale: 0.7, queries: 3, start: 4, window: None };
        assert!(x.apply_op1(bad).is_err(), "7 keys are not 4 + 3 rows of 2 × 7");
    }

    /// The AVX attention rows give the portable code's bits (wasm and CPUs without AVX run it):
    /// d of 64 (SmolLM2's heads), 40 (a remainder) and 3; key counts around the blocks of four.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wide_attention_rows_equal_the_baseline_bits() {
        if !has_avx() {
            return;
        }
        for (d, l) in [(64usize, 37usize), (40, 9), (3, 5), (64, 1), (16, 4), (136, 6)] {
            let v = |n: usize, seed| crate::testing::randn(&[n], 1.0, seed).to_vec1::<f32>().unwrap();
            let (q, keys, p) = (v(d, 1), v(d * l, 2), v(l, 3));
            let (mut a, mut b) = (vec![0f32; l], vec![0f32; l]);
            dots_body(&q, &keys, &mut a);
            unsafe { dots_avx(&q, &keys, &mut b) };
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let (mut a, mut b) = (v(d, 4), v(d, 4));
            weighted_body(&p, &keys, &mut a);
            unsafe { weighted_avx(&p, &keys, &mut b) };
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// The vectorisable exponential stays within 4 ulp of the exact one over its whole range.
    #[test]
    fn exp_fast_is_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..=1_750_000 {
            let x = -87.0 + i as f32 * 1e-4;
            let exact = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!((exp_fast(f32::NEG_INFINITY), exp_fast(-87.5)), (0.0, 0.0));
        assert!(exp_fast(f32::NAN).is_nan());
    }

    /// The f32 cross-entropy (fast exponentials, rows in parallel) gives the f64 path's losses and
    /// logit gradients, with a vocabulary large enough to split rows into lanes and a remainder.
    #[test]
    fn f32_cross_entropy_equals_the_f64_one() {
        let (n, v) = (6, 1003);
        let logits = crate::testing::randn(&[n, v], 3.0, 11);
        let targets = Tensor::new(&[0u32, 5, 1002, 77, 500, 5], &Device::Cpu).unwrap();
        let probe = crate::testing::randn(&[n], 1.0, 12);
        let run = |dt: DType| {
            let x = Var::from_tensor(&logits.to_dtype(dt).unwrap()).unwrap();
            let loss = x.as_tensor().apply_op2(&targets, CrossEntropy).unwrap();
            let g = (&loss * probe.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            (f(&loss), f(g.get(&x).unwrap()))
        };
        let ((l32, g32), (l64, g64)) = (run(DType::F32), run(DType::F64));
        assert!(max_abs(&l32, &l64) < 1e-5, "losses differ by {}", max_abs(&l32, &l64));
        assert!(max_abs(&g32, &g64) < 1e-6, "gradients differ by {}", max_abs(&g32, &g64));
    }

    /// The chunked head loss equals the head's logits through the cross-entropy op, in loss and in
    /// the gradient to the hidden rows, for a dense f32 head (to f32 rounding) and a bf16 head.
    #[test]
    fn chunked_head_loss_equals_logits_then_cross_entropy() {
        let (n, d, v) = (70, 48, 301);
        let w = crate::testing::randn(&[v, d], 0.3, 21);
        let h0 = crate::testing::randn(&[n, d], 1.0, 22);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % v as u32).collect();
        let probe = crate::testing::randn(&[n], 1.0, 23);
        let grad_of = |loss: Tensor, h: &Var| {
            let g = (&loss * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            (loss, g.get(h).unwrap().clone())
        };
        let reference = |w: &Tensor| {
            let h = Var::from_tensor(&h0).unwrap();
            let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
            let t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
            grad_of(logits.apply_op2(&t, CrossEntropy).unwrap(), &h)
        };
        let chunked = |head: HeadWeight| {
            let h = Var::from_tensor(&h0).unwrap();
            let mut op = HeadLoss::new(head, targets.clone(), true);
            op.chunk_rows = 32; // three chunks, the last one short
            grad_of(h.as_tensor().apply_op1(op).unwrap(), &h)
        };
        let ((l, g), (lr, gr)) = (chunked(HeadWeight::Dense(w.clone())), reference(&w));
        assert!(max_abs(&l, &lr) < 1e-5 && max_abs(&g, &gr) < 1e-5, "dense: {} {}", max_abs(&l, &lr), max_abs(&g, &gr));
        // bf16: the reference multiplies by the bf16 weights; only the bf16 rounding of h and of
        // the logits' gradient is left between them
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let packed = Arc::new(Bf16Weight::new(&wv, v, d));
        let (lr, gr) = reference(&packed.dense(&Device::Cpu).unwrap());
        let (l, g) = chunked(HeadWeight::Bf16(packed));
        let scale = gr.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_abs(&l, &lr) < 2e-2, "bf16 losses differ by {}", max_abs(&l, &lr));
        assert!(max_abs(&g, &gr) < 2e-2 * scale, "bf16 gradients differ by {} (largest {scale})", max_abs(&g, &gr));
    }

    /// GeGLU: the forward is ggml's f16-table GELU (within f16 rounding of the exact one, exact at
    /// the clamps), the gradient equals the composed ops' (candle's tanh GELU).
    #[test]
    fn geglu_rounds_like_ggml_and_has_the_exact_gradient() {
        for x in [-12.0f32, -10.0, -3.3, -0.5, 0.0, 1e-3, 0.7, 2.5, 9.99, 10.0, 14.0] {
            let (got, exact) = (gelu_ggml(x), gelu_tanh(x));
            assert!((got - exact).abs() <= 2e-3 * exact.abs().max(1e-2), "gelu({x}) = {got}, exact {exact}");
            assert_eq!(got, half::f16::from_f32(got).to_f32(), "gelu({x}) is an f16 value");
        }
        assert_eq!((gelu_ggml(-10.5), gelu_ggml(10.5)), (0.0, 10.5));
        let up = crate::testing::randn(&[4, 6], 1.0, 6);
        let x = Var::from_tensor(&crate::testing::randn(&[4, 6], 2.0, 7)).unwrap();
        let probe = crate::testing::randn(&[4, 6], 1.0, 8);
        let fused = x.apply_op2(&up, GeGlu).unwrap();
        let composed = (x.gelu().unwrap() * &up).unwrap();
        assert!(max_abs(&fused, &composed) < 2e-2, "forward differs by {}", max_abs(&fused, &composed));
        let g1 = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let d = max_abs(g1.get(&x).unwrap(), g2.get(&x).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }

    /// The custom RMSNorm's forward and backward agree with the composed (autograd) version.
    #[test]
    fn rms_norm_matches_composed_ops_and_their_gradient() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..16).map(|i| 0.5 + i as f32 / 10.0).collect();
        let x = Var::from_tensor(&crate::testing::randn(&[3, 16], 2.0, 4)).unwrap();
        let wt = Tensor::from_slice(&w, 16, &dev).unwrap();
        let probe = crate::testing::randn(&[3, 16], 1.0, 5);

        let fused = x.apply_op1(RmsNorm { w: w.clone(), eps: 1e-5 }).unwrap();
        let composed = super::super::ops::rms_norm(&x, &wt, 1e-5).unwrap();
        let diff = (&fused - &composed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "forward differs by {diff}");

        let g1 = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "gradient differs by {diff}");
    }
}
