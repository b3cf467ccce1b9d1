//! The linear layer of every decoder: a frozen base weight (quantized, or dequantized to a dense
//! tensor) plus an optional LoRA branch, y = x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, TensorInfo};

/// How base weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// As stored in the GGUF (Q4_1, Q8_0, …), multiplied by candle's quantized kernels.
    #[default]
    Quantized,
    /// Dequantized to a dense tensor of this dtype (reference runs, finite-difference tests).
    Dense(DType),
    /// Rounded to bf16 and packed in AMX tile order (training: activations stay f32, the frozen
    /// products run in bf16 with f32 sums; [`super::bf16`]).
    Bf16,
}

impl WeightMode {
    /// The dtype activations (and norms) run in.
    pub fn activation_dtype(self) -> DType {
        match self {
            WeightMode::Dense(dt) => dt,
            WeightMode::Quantized | WeightMode::Bf16 => DType::F32,
        }
    }
}

pub enum BaseWeight {
    /// Q4_0 / Q4_1 / Q5_0 / Q8_0 read in place from the GGUF, multiplied with ggml's arithmetic.
    Ggml(std::sync::Arc<super::fused::GgmlWeight>),
    /// Other quantized types, through candle's kernels.
    Quantized(QMatMul),
    /// [out, in]
    Dense(Tensor),
    /// [out, in] in bf16, packed for x·Wᵀ and for dY·W.
    Bf16(std::sync::Arc<super::fused::Bf16Weight>),
}

/// A LoRA branch: A [r, in], B [out, r], scale = α / r, and dropout on its input while training.
#[derive(Clone, Debug)]
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: Option<Dropout>,
}

/// Dropout on a LoRA branch's input: each element kept with probability 1 − p (and scaled by
/// 1/(1 − p)). The mask is a pure function of (`seed`, layer name, element index), so a resumed
/// run draws the same masks; the trainer sets `seed` before each sequence.
#[derive(Clone, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Dropout {
    /// A `seed` value that switches dropout off (evaluation).
    pub const OFF: u64 = u64::MAX;

    fn active(&self) -> bool {
        self.p > 0.0 && self.seed.load(std::sync::atomic::Ordering::Relaxed) != Self::OFF
    }

    /// The mask this layer draws now (`None` when dropout is off): splitmix64 over (seed ⊕
    /// FNV-1a(layer name), element index).
    pub fn spec(&self, layer: &str) -> Option<super::lora::MaskSpec> {
        if !self.active() {
            return None;
        }
        let name = layer.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        Some(super::lora::MaskSpec {
            base: self.seed.load(std::sync::atomic::Ordering::Relaxed) ^ name,
            threshold: (self.p as f64 * u32::MAX as f64) as u32,
            keep: 1.0 / (1.0 - self.p),
        })
    }
}

/// The mask of `spec` over x's elements, as a tensor of x's shape and dtype.
fn mask_tensor(spec: &super::lora::MaskSpec, x: &Tensor) -> candle_core::Result<Tensor> {
    // A training step draws a mask over every LoRA input (~170 M values on SmolLM2 with guard
    // batches): split over the thread team, and vectorised where the CPU multiplies u64 lanes.
    let mut m = vec![0f32; x.elem_count()];
    super::fused::par_chunks(&mut m, |start, out| spec.fill(start, out));
    Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())
}

/// `out[j]` = `keep` or 0 for element `start + j`: splitmix64 over (`base` = seed ⊕ FNV-1a(layer
/// name), index) — cheap, seekable (any chunk alone gives the same values), well mixed.
#[inline(always)]
fn mask_values(out: &mut [f32], start: u64, base: u64, threshold: u32, keep: f32) {
    for (j, o) in out.iter_mut().enumerate() {
        let mut z = base.wrapping_add((start + j as u64).wrapping_mul(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        *o = if ((z ^ (z >> 31)) >> 32) as u32 >= threshold { keep } else { 0.0 };
    }
}

pub(crate) fn fill_mask(out: &mut [f32], start: u64, base: u64, threshold: u32, keep: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")) {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { fill_mask_avx512(out, start, base, threshold, keep) };
        }
    }
    mask_values(out, start, base, threshold, keep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn fill_mask_avx512(out: &mut [f32], start: u64, base: u64, threshold: u32, keep: f32) {
    mask_values(out, start, base, threshold, keep)
}

pub struct Linear {
    /// The GGUF tensor name (`blk.3.attn_q.weight`): how adapters address this layer.
    pub name: String,
    pub in_dim: usize,
    pub out_dim: usize,
    pub base: BaseWeight,
    pub lora: Option<LoraBranch>,
}

/// ggml types candle's quantized matmul accepts.
fn candle_dtype(ty: GgmlType) -> Option<candle_core::quantized::GgmlDType> {
    use candle_core::quantized::GgmlDType as C;
    Some(match ty {
        GgmlType::F32 => C::F32,
        GgmlType::F16 => C::F16,
        GgmlType::BF16 => C::BF16,
        GgmlType::Q4_0 => C::Q4_0,
        GgmlType::Q4_1 => C::Q4_1,
        GgmlType::Q5_0 => C::Q5_0,
        GgmlType::Q5_1 => C::Q5_1,
        GgmlType::Q8_0 => C::Q8_0,
        GgmlType::Q2_K => C::Q2K,
        GgmlType::Q3_K => C::Q3K,
        GgmlType::Q4_K => C::Q4K,
        GgmlType::Q5_K => C::Q5K,
        GgmlType::Q6_K => C::Q6K,
        GgmlType::Q8_K => C::Q8K,
        _ => return None,
    })
}

impl Linear {
    /// Loads `name` from the file, checking it is a 2-D [in, out] matrix (ggml order).
    pub fn load(g: &Gguf, name: &str, in_dim: usize, out_dim: usize, mode: WeightMode, dev: &Device) -> Result<Self> {
        let info = g.require_tensor(name)?;
        check_dims(g, info, &[in_dim as u64, out_dim as u64])?;
        let base = match mode {
            WeightMode::Quantized if super::qmatmul::supported(info.ty) => {
                BaseWeight::Ggml(std::sync::Arc::new(super::fused::GgmlWeight::new(g, info)))
            }
            WeightMode::Quantized => {
                let dt = candle_dtype(info.ty).ok_or_else(|| Error::Tensor {
                    file: g.name().into(),
                    tensor: name.into(),
                    what: format!("type {} is not supported by the CPU decoder", info.ty),
                })?;
                // candle reinterprets the bytes as its block structs, which needs them aligned; a
                // GGUF may place tensors at any offset (`general.alignment` = 1), so copy if needed.
                let bytes = g.tensor_bytes(info);
                let copy;
                let bytes = if (bytes.as_ptr() as usize).is_multiple_of(8) {
                    bytes
                } else {
                    copy = aligned_copy(bytes);
                    &u64s_as_bytes(&copy)[..bytes.len()]
                };
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dt, bytes, vec![out_dim, in_dim], dev)?;
                BaseWeight::Quantized(QMatMul::from_qtensor(q)?)
            }
            WeightMode::Dense(dt) => {
                let v = g.tensor_f32(name)?;
                BaseWeight::Dense(Tensor::from_vec(v, (out_dim, in_dim), dev)?.to_dtype(dt)?)
            }
            WeightMode::Bf16 => {
                let v = g.tensor_f32(name)?;
                BaseWeight::Bf16(std::sync::Arc::new(super::fused::Bf16Weight::new(&v, out_dim, in_dim)))
            }
        };
        Ok(Linear { name: name.to_string(), in_dim, out_dim, base, lora: None })
    }

    /// A layer from a dense [out, in] tensor (tests, tiny models).
    pub fn from_dense(name: impl Into<String>, w: Tensor) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        Ok(Linear { name: name.into(), in_dim, out_dim, base: BaseWeight::Dense(w), lora: None })
    }

    /// A layer over a quantized tensor already in memory.
    pub fn from_qtensor(name: impl Into<String>, q: QTensor) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        Ok(Linear {
            name: name.into(),
            in_dim,
            out_dim,
            base: BaseWeight::Quantized(QMatMul::from_qtensor(q)?),
            lora: None,
        })
    }

    /// x [.., in] → [.., out]
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.fused_op(x)? {
            Some(op) => {
                let l = self.lora.as_ref().expect("fused_op checks the branch");
                x.contiguous()?.apply_op3(&l.a, &l.b, op)
            }
            None => self.composed(x),
        }
    }

    /// The layer from candle's ops and the base's own op: y = base(x) + s·((x⊙m)·Aᵀ)·Bᵀ.
    fn composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.base {
            BaseWeight::Ggml(w) if x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op1(super::fused::QMatMul(w.clone()))?
            }
            BaseWeight::Ggml(w) => x.broadcast_matmul(&w.dense(x.device())?.to_dtype(x.dtype())?.t()?)?,
            // candle's quantized matmul records no gradient: while one flows, multiply by the
            // dequantized weight through the op whose backward gives dX = dY·W
            BaseWeight::Quantized(q) if x.track_op() && matches!(x.dtype(), DType::F32 | DType::F64) => {
                let w = match q {
                    QMatMul::QTensor(t) => t.dequantize(x.device())?,
                    QMatMul::Tensor(w) => w.clone(),
                    QMatMul::TensorF16(w) => w.to_dtype(DType::F32)?,
                };
                x.contiguous()?.apply_op1(super::fused::FrozenMatMul(w.to_dtype(x.dtype())?))?
            }
            BaseWeight::Quantized(q) => q.forward(x)?,
            // a custom op only where a gradient flows: its backward skips the unused weight gradient
            BaseWeight::Dense(w) if x.track_op() && matches!(x.dtype(), DType::F32 | DType::F64) => {
                x.contiguous()?.apply_op1(super::fused::FrozenMatMul(w.clone()))?
            }
            BaseWeight::Dense(w) => x.broadcast_matmul(&w.t()?)?,
            BaseWeight::Bf16(w) if x.dtype() == DType::F32 => {
                x.contiguous()?.apply_op1(super::fused::Bf16MatMul { w: w.clone(), transposed: false })?
            }
            BaseWeight::Bf16(w) => x.broadcast_matmul(&w.dense(x.device())?.to_dtype(x.dtype())?.t()?)?,
        };
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                let x = match l.dropout.as_ref().and_then(|d| d.spec(&self.name)) {
                    Some(spec) => (x * mask_tensor(&spec, x)?)?,
                    None => x.clone(),
                };
                let delta = if x.dtype() == DType::F32 && !(x.track_op() || l.a.track_op() || l.b.track_op()) {
                    // inference: row by row, so that no row depends on the rows beside it
                    x.contiguous()?.apply_op3_no_bwd(&l.a.contiguous()?, &l.b.contiguous()?, &super::lora::LoraDelta)?
                } else {
                    x.broadcast_matmul(&l.a.t()?)?.broadcast_matmul(&l.b.t()?)?
                };
                y + (delta * l.scale)?
            }
        }
    }

    /// The fused op ([`super::lora`]) for a LoRA branch whose A or B is being trained: the layer in
    /// one op, with far fewer temporaries than the composed forward and backward. A branch that
    /// only runs (inference, evaluation) keeps the composed arithmetic that decoding is tested with.
    /// A base kept in candle's quantized types trains on its dequantized values, as the composed
    /// path does wherever a gradient flows (in the first layer too, whose input has none).
    fn fused_op(&self, x: &Tensor) -> candle_core::Result<Option<super::lora::LoraMatMul>> {
        let Some(l) = &self.lora else { return Ok(None) };
        if !(l.a.track_op() || l.b.track_op()) || l.a.dtype() != x.dtype() || l.b.dtype() != x.dtype() {
            return Ok(None);
        }
        use super::lora::Frozen;
        let frozen = match (&self.base, x.dtype()) {
            (BaseWeight::Ggml(w), DType::F32) => Frozen::Ggml(w.clone()),
            (BaseWeight::Bf16(w), DType::F32) => Frozen::Bf16(w.clone()),
            (BaseWeight::Dense(w), DType::F32 | DType::F64) => Frozen::Dense(w.to_dtype(x.dtype())?),
            (BaseWeight::Quantized(q), DType::F32 | DType::F64) => Frozen::Dense(
                match q {
                    QMatMul::QTensor(t) => t.dequantize(x.device())?,
                    QMatMul::Tensor(w) => w.clone(),
                    QMatMul::TensorF16(w) => w.clone(),
                }
                .to_dtype(x.dtype())?,
            ),
            _ => return Ok(None),
        };
        let mask = l.dropout.as_ref().and_then(|d| d.spec(&self.name));
        Ok(Some(super::lora::LoraMatMul { frozen, scale: l.scale, mask }))
    }

    /// Checks that a LoRA branch fits this layer: A [r, in], B [out, r].
    pub fn check_lora(&self, l: &LoraBranch) -> Result<()> {
        let (r, a_in) = l.a.dims2()?;
        let (b_out, b_r) = l.b.dims2()?;
        if a_in != self.in_dim || b_out != self.out_dim || r != b_r || r == 0 {
            return Err(Error::Adapter {
                file: String::new(),
                what: format!(
                    "tensor `{}`: LoRA A is [{r}, {a_in}] and B is [{b_out}, {b_r}], but the layer is {} → {} (A must be [r, {}], B [{}, r])",
                    self.name, self.in_dim, self.out_dim, self.in_dim, self.out_dim
                ),
            });
        }
        Ok(())
    }

    /// Attaches (or replaces) a LoRA branch after checking its shapes against this layer.
    pub fn set_lora(&mut self, branch: Option<LoraBranch>) -> Result<()> {
        if let Some(l) = &branch {
            self.check_lora(l)?;
        }
        self.lora = branch;
        Ok(())
    }
}

/// The bytes copied into 8-byte-aligned storage.
fn aligned_copy(bytes: &[u8]) -> Vec<u64> {
    let mut v = vec![0u64; bytes.len().div_ceil(8)];
    for (w, chunk) in v.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    v
}

fn u64s_as_bytes(v: &[u64]) -> &[u8] {
    // SAFETY: any u64 storage is valid as bytes; the length covers exactly that allocation.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 8) }
}

/// Checks a tensor's ggml dims (innermost first).
pub(crate) fn check_dims(g: &Gguf, info: &TensorInfo, want: &[u64]) -> Result<()> {
    if info.dims != want {
        return Err(Error::Tensor {
            file: g.name().into(),
            tensor: info.name.clone(),
            what: format!("has dims {:?}, the architecture needs {want:?}", info.dims),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A branch being trained runs as one op (cpu::lora): the same values and the same gradients
    /// for x, A and B as the composed layer, on each kind of base (dense f64 and f32, bf16, a Q8_0
    /// tensor of a GGUF), with dropout on and off, and with an input that needs no gradient.
    #[test]
    fn trained_lora_op_matches_the_composed_layer_and_its_gradients() {
        use crate::testing::randn;
        use candle_core::Var;
        let r = 4;
        let tiny = Gguf::from_bytes("tiny.gguf", crate::testing::tiny_llama(GgmlType::Q8_0, 7)).unwrap();
        let name = "blk.0.ffn_up.weight";
        let [k, n] = <[u64; 2]>::try_from(tiny.require_tensor(name).unwrap().dims.clone()).unwrap().map(|d| d as usize);
        for (dt, base, tol) in [
            (DType::F64, "dense", 1e-12),
            (DType::F32, "dense", 2e-5),
            (DType::F32, "bf16", 2e-5),
            (DType::F32, "q8_0", 2e-5),
        ] {
            for (p, x_tracks) in [(0.0, true), (0.3, true), (0.3, false)] {
                let w = randn(&[n, k], 0.2, 1);
                let mut layer = match base {
                    "bf16" => {
                        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        let base =
                            BaseWeight::Bf16(std::sync::Arc::new(super::super::fused::Bf16Weight::new(&v, n, k)));
                        Linear { name: name.into(), in_dim: k, out_dim: n, base, lora: None }
                    }
                    "q8_0" => {
                        Linear::load(&tiny, name, k, n, WeightMode::Quantized, &candle_core::Device::Cpu).unwrap()
                    }
                    _ => Linear::from_dense(name, w.to_dtype(dt).unwrap()).unwrap(),
                };
                if base == "q8_0" {
                    assert!(matches!(layer.base, BaseWeight::Ggml(_)), "Q8_0 runs on ggml's arithmetic");
                }
                let var =
                    |shape: &[usize], seed| Var::from_tensor(&randn(shape, 0.5, seed).to_dtype(dt).unwrap()).unwrap();
                let (x, a, b) = (var(&[2, 7, k], 2), var(&[r, k], 3), var(&[n, r], 4));
                let input = if x_tracks { x.as_tensor().clone() } else { x.as_tensor().detach() };
                let seed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(9));
                let dropout = (p > 0.0).then_some(Dropout { p, seed });
                let branch = LoraBranch { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale: 2.0, dropout };
                layer.set_lora(Some(branch)).unwrap();
                assert!(layer.fused_op(&input).unwrap().is_some(), "a trained branch takes the fused op");
                let probe = randn(&[2, 7, n], 1.0, 5).to_dtype(dt).unwrap();
                let run = |y: Tensor| {
                    let g = (y.clone() * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let grads = [&x, &a, &b].map(|v| g.get(v.as_tensor()).map(|t| t.to_dtype(DType::F64).unwrap()));
                    (y.to_dtype(DType::F64).unwrap(), grads)
                };
                let (y1, g1) = run(layer.forward(&input).unwrap());
                let (y2, g2) = run(layer.composed(&input).unwrap());
                let close = |a: &Tensor, b: &Tensor, what: &str| {
                    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                    assert!(scale > 0.1, "{what}: a zero reference proves nothing");
                    assert!(d <= tol * scale, "{what} ({dt:?}, {base}, dropout {p}): differs by {d} (scale {scale})");
                };
                close(&y1, &y2, "output");
                for (what, (a, b)) in ["dx", "dA", "dB"].iter().zip(g1.iter().zip(&g2)) {
                    match (a, b) {
                        (Some(a), Some(b)) => close(a, b, what),
                        (None, None) => assert!(!x_tracks && *what == "dx", "{what}: no gradient"),
                        _ => panic!("{what} ({base}, x tracks {x_tracks}): a gradient on one path only"),
                    }
                }
            }
        }
    }

    /// The parallel, vectorised mask is the plain per-element formula, whatever the chunking.
    #[test]
    fn dropout_mask_is_the_seekable_stream() {
        let d = Dropout { p: 0.05, seed: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(7)) };
        let n = 3 * (1 << 14) + 123; // three whole chunks and a tail
        let x = Tensor::zeros((n,), DType::F32, &candle_core::Device::Cpu).unwrap();
        let spec = d.spec("blk.0.attn_q.weight").unwrap();
        let got = mask_tensor(&spec, &x).unwrap().to_vec1::<f32>().unwrap();
        let name = "blk.0.attn_q.weight"
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        let threshold = (0.05f32 as f64 * u32::MAX as f64) as u32;
        let keep = 1.0 / (1.0 - 0.05f32);
        let mut want = vec![0f32; n];
        mask_values(&mut want, 0, 7 ^ name, threshold, keep);
        assert_eq!(got, want);
        let mut tail = vec![0f32; 500];
        mask_values(&mut tail, (n - 500) as u64, 7 ^ name, threshold, keep);
        assert_eq!(&got[n - 500..], &tail[..], "a chunk alone gives the stream's values");
        assert!(got.iter().all(|&v| v == 0.0 || v == keep));
        // the stream itself, from an independent (Python) splitmix64: runs and resumes depend on it
        let dropped: Vec<usize> = (0..n).filter(|&i| got[i] == 0.0).collect();
        assert_eq!(dropped.len(), 2471);
        assert_eq!(dropped[..8], [7, 92, 113, 115, 137, 156, 224, 234]);
    }
}
