//! A LoRA projection being trained, as one candle op: y = x·Wᵀ + s·((x⊙m)·Aᵀ)·Bᵀ with the frozen
//! base W, the trainable A [r, in] and B [out, r], scale s = α/r and the dropout mask m drawn
//! inside the op.
//!
//! Composed from candle's ops, every projection of every layer made about ten full-size
//! temporaries per step: the mask, x⊙m, the branch's output, its scaled copy and the sum going
//! forward; going back, the scaled gradient, the gradient of the mask (which nothing uses), and
//! candle's zero-then-add accumulation for each of them. Here the forward adds the branch into the
//! base product's output and the backward adds it into the base's input gradient; only the small
//! [N, r] products are kept apart. The arithmetic is the composed one's, in another rounding order.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

use super::fused::{par_chunks, Bf16Weight, GgmlWeight};

/// The frozen base weight of a projection, as the op reads it.
#[derive(Clone)]
pub enum Frozen {
    /// Quantized in place, multiplied with ggml's arithmetic (f32 activations).
    Ggml(Arc<GgmlWeight>),
    /// bf16, packed for both products (f32 activations).
    Bf16(Arc<Bf16Weight>),
    /// [out, in] dense, in the activations' dtype (f32, or f64 for finite differences).
    Dense(Tensor),
}

impl Frozen {
    /// (out, in)
    fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Frozen::Ggml(w) => (w.n, w.k),
            Frozen::Bf16(w) => w.dims(),
            Frozen::Dense(w) => w.dims2()?,
        })
    }
}

/// A dropout mask as the op draws it: element i of x is kept (times `keep`) when the splitmix64
/// value of (`base`, i) reaches `threshold` — the stream of [`super::linear::Dropout`], with its
/// seed read once at the forward pass so that the backward pass draws the same mask.
#[derive(Clone, Copy, Debug)]
pub struct MaskSpec {
    pub base: u64,
    pub threshold: u32,
    pub keep: f32,
}

impl MaskSpec {
    /// The mask's values for elements `start..start + out.len()`.
    pub fn fill(&self, start: usize, out: &mut [f32]) {
        super::linear::fill_mask(out, start as u64, self.base, self.threshold, self.keep)
    }
}

/// The fused projection: `x.apply_op3(a, b, LoraMatMul { .. })` with x [.., in] contiguous.
pub struct LoraMatMul {
    pub frozen: Frozen,
    pub scale: f64,
    pub mask: Option<MaskSpec>,
}

/// The activations' element types the op runs in, with the frozen products each supports.
trait Float: WithDType {
    /// x [m, in] · Wᵀ → [m, out]
    fn frozen_forward(f: &Frozen, x: &[Self], m: usize) -> Result<Vec<Self>>;
    /// g [m, out] · W → [m, in]
    fn frozen_input_grad(f: &Frozen, g: &[Self], m: usize) -> Result<Vec<Self>>;
}

impl Float for f32 {
    fn frozen_forward(f: &Frozen, x: &[f32], m: usize) -> Result<Vec<f32>> {
        match f {
            Frozen::Ggml(w) => {
                let mut y = vec![0f32; m * w.n];
                super::qmatmul::matmul(w.ty(), w.bytes(), w.n, w.k, x, m, &mut y);
                Ok(y)
            }
            Frozen::Bf16(w) => Ok(w.forward(x, m)),
            Frozen::Dense(w) => dense_product(w, x, m, false),
        }
    }
    fn frozen_input_grad(f: &Frozen, g: &[f32], m: usize) -> Result<Vec<f32>> {
        match f {
            Frozen::Ggml(w) => dense_product(&w.dense(&candle_core::Device::Cpu)?, g, m, true),
            Frozen::Bf16(w) => Ok(w.input_grad(g, m)),
            Frozen::Dense(w) => dense_product(w, g, m, true),
        }
    }
}

impl Float for f64 {
    fn frozen_forward(f: &Frozen, x: &[f64], m: usize) -> Result<Vec<f64>> {
        match f {
            Frozen::Dense(w) => dense_product(w, x, m, false),
            _ => candle_core::bail!("lora-matmul: an f64 pass needs a dense base weight"),
        }
    }
    fn frozen_input_grad(f: &Frozen, g: &[f64], m: usize) -> Result<Vec<f64>> {
        match f {
            Frozen::Dense(w) => dense_product(w, g, m, true),
            _ => candle_core::bail!("lora-matmul: an f64 pass needs a dense base weight"),
        }
    }
}

/// x [m, ·] times the dense W [out, in]: x·Wᵀ, or (`input_grad`) x·W.
fn dense_product<T: Float>(w: &Tensor, x: &[T], m: usize, input_grad: bool) -> Result<Vec<T>> {
    let (n, k) = w.dims2()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("lora-matmul: the base is not on the CPU")
    };
    let (a, b) = layout.contiguous_offsets().expect("made contiguous above");
    let w = &T::cpu_storage_as_slice(cpu)?[a..b];
    if input_grad {
        let mut y = vec![T::zero(); m * k];
        product(&mut y, false, T::one(), Mat::row_major(x, m, n), Mat::row_major(w, n, k));
        Ok(y)
    } else {
        let mut y = vec![T::zero(); m * n];
        product(&mut y, false, T::one(), Mat::row_major(x, m, k), Mat::row_major(w, n, k).t());
        Ok(y)
    }
}

/// A matrix view for [`product`]: `rows` × `cols` with strides between rows and between columns.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major [rows, cols] matrix.
    fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a [{rows}, {cols}] matrix");
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// dst [m, n] = (dst, if `accumulate`) + scale · lhs · rhs, on gemm (the kernels candle's matmul
/// uses), split over the rayon pool like candle's.
fn product<T: Float>(dst: &mut [T], accumulate: bool, scale: T, lhs: Mat<T>, rhs: Mat<T>) {
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    product_on(par, dst, accumulate, scale, lhs, rhs)
}

/// [`product`] on the given parallelism (which splits rows and columns, never the sum: the
/// values do not depend on it).
fn product_on<T: Float>(par: gemm::Parallelism, dst: &mut [T], accumulate: bool, scale: T, lhs: Mat<T>, rhs: Mat<T>) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(rhs.rows == k && dst.len() == m * n, "[{m}, {k}] · [{}, {n}] into {} values", rhs.rows, dst.len());
    if m == 0 || n == 0 {
        return;
    }
    // the views must stay inside their slices (the strides are ours, but the lengths come from tensors)
    for v in [&lhs, &rhs] {
        let last = (v.rows.max(1) - 1) * v.row_stride + (v.cols.max(1) - 1) * v.col_stride;
        assert!(v.rows == 0 || v.cols == 0 || last < v.data.len(), "a matrix view past its data");
    }
    // SAFETY: every index the strides reach is inside its slice (checked above); dst is m × n row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// x ⊙ m for the elements `x` holds (x starts at element 0 of the masked tensor).
fn masked<T: Float>(x: &[T], spec: &MaskSpec) -> Vec<T> {
    let mut out = x.to_vec();
    for_chunks(&mut out, |start, chunk| {
        let mut m = vec![0f32; chunk.len()];
        spec.fill(start, &mut m);
        chunk.iter_mut().zip(&m).for_each(|(v, &k)| *v *= T::from_f64(k as f64));
    });
    out
}

/// `f(start, chunk)` over `out`, by the thread team where the values are f32.
fn for_chunks<T: Float>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    if T::DTYPE == DType::F32 {
        // SAFETY: T is f32 (checked), so the slice is one of f32.
        let o32 = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len()) };
        par_chunks(o32, |start, c| {
            // SAFETY: the same values, back as T (= f32).
            let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr() as *mut T, c.len()) };
            f(start, c)
        });
    } else {
        f(0, out)
    }
}

fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("lora-matmul: {what} must be contiguous"),
    }
}

/// The three contiguous inputs as f32 or f64 slices (by the first one's dtype), through `f32` or `f64`.
fn by_dtype(
    inputs: [(&CpuStorage, &Layout, &str); 3],
    f32: impl FnOnce([&[f32]; 3]) -> Result<Vec<f32>>,
    f64: impl FnOnce([&[f64]; 3]) -> Result<Vec<f64>>,
) -> Result<CpuStorage> {
    fn slices<'a, T: Float>(inputs: [(&'a CpuStorage, &Layout, &str); 3]) -> Result<[&'a [T]; 3]> {
        let [a, b, c] = inputs.map(|(s, l, what)| slice::<T>(s, l, what));
        Ok([a?, b?, c?])
    }
    Ok(match inputs[0].0 {
        CpuStorage::F32(_) => CpuStorage::F32(f32(slices(inputs)?)?),
        CpuStorage::F64(_) => CpuStorage::F64(f64(slices(inputs)?)?),
        _ => candle_core::bail!("lora-matmul: expected f32 or f64 values"),
    })
}

impl LoraMatMul {
    fn forward<T: Float>(&self, x: &[T], a: &[T], b: &[T], r: usize, k: usize, n: usize) -> Result<Vec<T>> {
        let m = x.len() / k;
        let mut y = T::frozen_forward(&self.frozen, x, m)?;
        if y.len() != m * n {
            candle_core::bail!("lora-matmul: the base gives {} values for {m} rows of {n}", y.len());
        }
        let xd = match &self.mask {
            Some(spec) => Cow::Owned(masked(x, spec)),
            None => Cow::Borrowed(x),
        };
        // h = (x⊙m)·Aᵀ [m, r], then y += s·h·Bᵀ
        let mut h = vec![T::zero(); m * r];
        product(&mut h, false, T::one(), Mat::row_major(&xd, m, k), Mat::row_major(a, r, k).t());
        product(&mut y, true, T::from_f64(self.scale), Mat::row_major(&h, m, r), Mat::row_major(b, n, r).t());
        Ok(y)
    }
}

impl CustomOp3 for LoraMatMul {
    fn name(&self) -> &'static str {
        "lora-matmul"
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
        let ((r, k), (n, r2)) = (l2.shape().dims2()?, l3.shape().dims2()?);
        let dims = l1.dims();
        if dims.last() != Some(&k) || r != r2 || self.frozen.dims()? != (n, k) {
            candle_core::bail!(
                "lora-matmul: x {dims:?}, A {:?}, B {:?} and the base weight {:?} (out, in) do not fit",
                l2.dims(),
                l3.dims(),
                self.frozen.dims()?
            );
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = n;
        let y = by_dtype(
            [(s1, l1, "x"), (s2, l2, "A"), (s3, l3, "B")],
            |[x, a, b]| self.forward(x, a, b, r, k, n),
            |[x, a, b]| self.forward(x, a, b, r, k, n),
        )?;
        Ok((y, Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (k, n) = (a.dim(1)?, b.dim(0)?);
        let x2 = x.reshape(((), k))?;
        let g2 = g.contiguous()?.reshape(((), n))?;
        let xd = match self.mask {
            Some(spec) => x2.apply_op1_no_bwd(&ApplyMask(spec))?,
            None => x2,
        };
        // u = g·B [N, r]: dA, dB and the branch's share of dx all follow from it. A and B are
        // detached so that these gradients hold no graph (nor g, u, x⊙m) alive in the grad store.
        let (a, b) = (&a.detach(), &b.detach());
        let u = g2.matmul(b)?;
        let da = (u.t()?.matmul(&xd)? * self.scale)?;
        let db = (g2.t()?.matmul(&xd.matmul(&a.t()?)?)? * self.scale)?;
        let dx = if x.track_op() {
            let op = InputGrad { frozen: self.frozen.clone(), scale: self.scale, mask: self.mask };
            Some(g2.apply_op3_no_bwd(&u, a, &op)?.reshape(x.shape())?)
        } else {
            None // the first layer's input: nothing upstream trains
        };
        Ok((dx, Some(da), Some(db)))
    }
}

/// A LoRA branch at inference, (x·Aᵀ)·Bᵀ for x [.., in] contiguous, A [r, in], B [out, r]: each
/// row on its own, as candle's matmul computes a single row (the decode step), rows split over the
/// thread team. A row's result then does not depend on the rows beside it — gemm blocks the sum
/// differently for other row counts — so a prompt prefilled after a kept prefix, or decoded beside
/// other sequences, gives what it gives alone, and decoding keeps its arithmetic.
pub struct LoraDelta;

impl CustomOp3 for LoraDelta {
    fn name(&self) -> &'static str {
        "lora-delta"
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
        let ((r, k), (n, r2)) = (l2.shape().dims2()?, l3.shape().dims2()?);
        let dims = l1.dims();
        if dims.last() != Some(&k) || r != r2 {
            candle_core::bail!("lora-delta: x {dims:?}, A {:?} and B {:?} do not fit", l2.dims(), l3.dims());
        }
        let (x, a, b) = (slice::<f32>(s1, l1, "x")?, slice::<f32>(s2, l2, "A")?, slice::<f32>(s3, l3, "B")?);
        let mut out = vec![0f32; x.len() / k.max(1) * n];
        super::fused::par_rows(&mut out, n, &|i, row| {
            let mut h = vec![0f32; r];
            let none = gemm::Parallelism::None;
            product_on(
                none,
                &mut h,
                false,
                1.0,
                Mat::row_major(&x[i * k..(i + 1) * k], 1, k),
                Mat::row_major(a, r, k).t(),
            );
            product_on(none, row, false, 1.0, Mat::row_major(&h, 1, r), Mat::row_major(b, n, r).t());
        });
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// x ⊙ m (the backward pass redraws the forward's mask instead of keeping x ⊙ m alive).
struct ApplyMask(MaskSpec);

impl CustomOp1 for ApplyMask {
    fn name(&self) -> &'static str {
        "lora-dropout"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(masked(slice::<f32>(s, l, "x")?, &self.0)),
            CpuStorage::F64(_) => CpuStorage::F64(masked(slice::<f64>(s, l, "x")?, &self.0)),
            _ => candle_core::bail!("lora-dropout: expected f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }
}

/// dL/dx of the fused projection from (g [N, out], u = g·B [N, r], A [r, in]): the frozen base's
/// g·W plus s·(u·A)⊙m, accumulated into one buffer.
struct InputGrad {
    frozen: Frozen,
    scale: f64,
    mask: Option<MaskSpec>,
}

impl InputGrad {
    fn run<T: Float>(&self, g: &[T], u: &[T], a: &[T], m: usize, r: usize, k: usize) -> Result<Vec<T>> {
        let mut dx = T::frozen_input_grad(&self.frozen, g, m)?;
        if dx.len() != m * k {
            candle_core::bail!("lora-matmul: the base's input gradient has {} values for {m} rows of {k}", dx.len());
        }
        let s = T::from_f64(self.scale);
        match &self.mask {
            None => product(&mut dx, true, s, Mat::row_major(u, m, r), Mat::row_major(a, r, k)),
            Some(spec) => {
                let mut t = vec![T::zero(); m * k];
                product(&mut t, false, s, Mat::row_major(u, m, r), Mat::row_major(a, r, k));
                for_chunks(&mut dx, |start, chunk| {
                    let mut mk = vec![0f32; chunk.len()];
                    spec.fill(start, &mut mk);
                    let t = &t[start..start + chunk.len()];
                    for ((d, &v), &keep) in chunk.iter_mut().zip(t).zip(&mk) {
                        *d += v * T::from_f64(keep as f64);
                    }
                });
            }
        }
        Ok(dx)
    }
}

impl CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "lora-input-grad"
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
        let ((m, _), (m2, r), (r2, k)) = (l1.shape().dims2()?, l2.shape().dims2()?, l3.shape().dims2()?);
        if m != m2 || r != r2 {
            candle_core::bail!("lora-input-grad: g {:?}, u {:?}, A {:?} do not fit", l1.dims(), l2.dims(), l3.dims());
        }
        let dx = by_dtype(
            [(s1, l1, "g"), (s2, l2, "u"), (s3, l3, "A")],
            |[g, u, a]| self.run(g, u, a, m, r, k),
            |[g, u, a]| self.run(g, u, a, m, r, k),
        )?;
        Ok((dx, Shape::from((m, k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inference branch gives each row exactly what candle's matmuls give that row alone (the
    /// decode step's arithmetic), whatever rows come with it; SmolLM2's shapes and a small one.
    #[test]
    fn lora_delta_rows_equal_single_row_matmuls() {
        let dev = candle_core::Device::Cpu;
        for (m, k, r, n) in [(37, 576, 16, 1536), (5, 64, 4, 48)] {
            let x = crate::testing::randn(&[m, k], 1.0, 1);
            let (a, b) = (crate::testing::randn(&[r, k], 0.1, 2), crate::testing::randn(&[n, r], 0.1, 3));
            let got = x.apply_op3_no_bwd(&a, &b, &LoraDelta).unwrap();
            assert_eq!(got.dims(), [m, n]);
            for i in 0..m {
                let row = x.narrow(0, i, 1).unwrap();
                let want = row.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap();
                let (g, w): (Vec<f32>, Vec<f32>) = (
                    got.get(i).unwrap().to_vec1().unwrap(),
                    want.flatten_all().unwrap().to_device(&dev).unwrap().to_vec1().unwrap(),
                );
                assert!(g == w, "[{m}, {k}] row {i} differs from the single-row product");
            }
        }
    }

    /// `product` on plain and transposed views, with and without accumulation, is the plain triple loop.
    #[test]
    fn products_match_the_plain_product() {
        let vals = |n: usize, seed: u64| -> Vec<f64> {
            crate::testing::randn(&[n], 1.0, seed).to_dtype(DType::F64).unwrap().to_vec1().unwrap()
        };
        // (m, k, n): tall and thin like the [N, r] products, wide and short like dA, tiny
        for (m, k, n) in [(300, 64, 16), (16, 300, 600), (7, 5, 3)] {
            let (a, bt, b) = (vals(m * k, 1), vals(n * k, 2), vals(k * n, 3));
            let start = vals(m * n, 4);
            for (transposed, accumulate) in [(false, false), (true, true)] {
                // rhs as a row-major [k, n], or as the transpose of a row-major [n, k]
                let rhs = if transposed { Mat::row_major(&bt, n, k).t() } else { Mat::row_major(&b, k, n) };
                let at = |i: usize, j: usize| if transposed { bt[j * k + i] } else { b[i * n + j] };
                let mut got = if accumulate { start.clone() } else { vec![0.0; m * n] };
                product(&mut got, accumulate, 0.5, Mat::row_major(&a, m, k), rhs);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|l| a[i * k + l] * at(l, j)).sum();
                        let want = if accumulate { start[i * n + j] } else { 0.0 } + 0.5 * dot;
                        let g = got[i * n + j];
                        assert!(
                            (g - want).abs() < 1e-9 * (1.0 + want.abs()),
                            "[{m}, {k}, {n}] ({i}, {j}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
