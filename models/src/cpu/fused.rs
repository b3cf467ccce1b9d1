//! candle custom ops for the CPU decoder's hot paths, with ggml's arithmetic where it matters for
//! agreement with llama.cpp. Each op has a backward pass, so a trainable path through it gets its
//! gradient (candle's own fused ops silently record none).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

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
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let mut sum = 0f64;
            for &v in xr {
                sum += (v * v) as f64;
            }
            let mean = (sum / n as f64) as f32;
            let scale = 1.0 / (mean + self.eps).sqrt();
            for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(&self.w) {
                *o = (v * scale) * w;
            }
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // y = x·r·w, r = (mean(x²)+eps)^-½  ⇒  dx = r·(g·w) − x·r³·mean(x·g·w)
        let w = Tensor::from_slice(&self.w, self.w.len(), x.device())?.to_dtype(x.dtype())?;
        let gw = g.broadcast_mul(&w)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?.recip()?;
        let m = (x * &gw)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * m)?)?)?;
        Ok(Some(dx))
    }
}

/// Whether a tensor can go through the f32 custom ops.
pub fn is_f32(x: &Tensor) -> bool {
    x.dtype() == DType::F32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The custom RMSNorm's forward and backward agree with the composed (autograd) version.
    #[test]
    fn rms_norm_matches_composed_ops_and_their_gradient() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..16).map(|i| 0.5 + i as f32 / 10.0).collect();
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 16), &dev).unwrap()).unwrap();
        let wt = Tensor::from_slice(&w, 16, &dev).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (3, 16), &dev).unwrap();

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
