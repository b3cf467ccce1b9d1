//! LoRA adapters: the weights, their GGUF-adapter form (what llama.cpp's `--lora` loads), and the
//! checks that an adapter fits its base model.
//!
//! GGUF layout: `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32),
//! and per adapted base tensor `<name>.lora_a` with ggml dims [in, r] and `<name>.lora_b` with
//! [r, out]; y = W·x + (α/r)·B·(A·x); no alpha means scale 1.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, GgufWriter, Value};

/// One adapted layer: A [r, in] and B [out, r], row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    pub r: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// Where it came from (file name), for error messages.
    pub name: String,
    /// `general.architecture` of the base model it was trained for.
    pub arch: String,
    pub alpha: Option<f32>,
    /// Keyed by base tensor name (`blk.0.attn_q.weight`).
    pub pairs: BTreeMap<String, LoraPair>,
}

/// `n` samples of N(0, std²) (Box–Muller), for random weights in tests and initialisation.
pub fn gaussian(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// The projections LoRA can target, by their GGUF tensor suffix.
pub const TARGETS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

impl LoraAdapter {
    fn err(&self, what: impl Into<String>) -> Error {
        Error::Adapter { file: self.name.clone(), what: what.into() }
    }

    /// The scale applied to B·A for a pair of rank `r` (llama.cpp: α/r, or 1 without α).
    pub fn scale(&self, r: usize) -> f64 {
        match self.alpha {
            Some(a) if a != 0.0 => a as f64 / r as f64,
            _ => 1.0,
        }
    }

    /// Reads a GGUF LoRA adapter.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let file = g.name().to_string();
        let err = |what: String| Error::Adapter { file: file.clone(), what };
        match g.opt_str("general.type")? {
            Some("adapter") => {}
            other => {
                return Err(err(format!("general.type is {other:?}, expected \"adapter\" (is this a base model?)")))
            }
        }
        match g.opt_str("adapter.type")? {
            Some("lora") => {}
            other => return Err(err(format!("adapter.type is {other:?}, expected \"lora\""))),
        }
        let arch = g.str("general.architecture")?.to_string();
        let alpha = g.opt_f32("adapter.lora.alpha")?;
        if let Some(a) = alpha.filter(|a| !a.is_finite()) {
            return Err(err(format!("adapter.lora.alpha is {a}")));
        }
        let mut halves: BTreeMap<String, [Option<&crate::gguf::TensorInfo>; 2]> = BTreeMap::new();
        for t in g.tensors() {
            let (base, slot) = if let Some(b) = t.name.strip_suffix(".lora_a") {
                (b, 0)
            } else if let Some(b) = t.name.strip_suffix(".lora_b") {
                (b, 1)
            } else {
                return Err(err(format!("tensor `{}` is neither `.lora_a` nor `.lora_b`", t.name)));
            };
            halves.entry(base.to_string()).or_default()[slot] = Some(t);
        }
        if halves.is_empty() {
            return Err(err("no LoRA tensors".into()));
        }
        let mut pairs = BTreeMap::new();
        for (base, [a, b]) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(err(format!("tensor `{base}` has only one of lora_a / lora_b")));
            };
            if a.dims.len() != 2 || b.dims.len() != 2 {
                return Err(err(format!("`{base}` lora tensors must be 2-D, got {:?} and {:?}", a.dims, b.dims)));
            }
            let (in_dim, r) = (a.dims[0] as usize, a.dims[1] as usize);
            let (rb, out_dim) = (b.dims[0] as usize, b.dims[1] as usize);
            if r != rb {
                return Err(err(format!(
                    "`{base}`: lora_a has rank {r} (dims {:?}) but lora_b has {rb} (dims {:?})",
                    a.dims, b.dims
                )));
            }
            for t in [a, b] {
                if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0) {
                    return Err(err(format!("`{}` has type {}, adapters use f32, f16, bf16 or q8_0", t.name, t.ty)));
                }
            }
            pairs.insert(base, LoraPair { r, in_dim, out_dim, a: g.tensor_f32(&a.name)?, b: g.tensor_f32(&b.name)? });
        }
        Ok(LoraAdapter { name: file, arch, alpha, pairs })
    }

    /// The adapter as a GGUF file llama.cpp loads (`--lora`), tensors stored as `ty`.
    pub fn to_gguf(&self, ty: GgmlType) -> Result<GgufWriter> {
        if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0) {
            return Err(self.err(format!("cannot store adapter tensors as {ty} (f32, f16, bf16, q8_0)")));
        }
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::string(self.arch.clone()));
        w.set("general.type", Value::string("adapter"));
        w.set("adapter.type", Value::string("lora"));
        if let Some(a) = self.alpha {
            w.set("adapter.lora.alpha", Value::F32(a));
        }
        for (base, p) in &self.pairs {
            // q8_0 needs rows of whole blocks; a rank below 32 makes B's rows too short.
            let row_ok = |n: usize| n.is_multiple_of(ty.block_size());
            let ta = if row_ok(p.in_dim) { ty } else { GgmlType::F32 };
            let tb = if row_ok(p.r) { ty } else { GgmlType::F32 };
            w.add_f32(format!("{base}.lora_a"), &[p.in_dim as u64, p.r as u64], ta, &p.a)?;
            w.add_f32(format!("{base}.lora_b"), &[p.r as u64, p.out_dim as u64], tb, &p.b)?;
        }
        Ok(w)
    }

    /// The mean of several adapters' updates, (1/n)·Σ sᵢ·Bᵢ·Aᵢ per layer (a "soup" of runs of one
    /// recipe), as one adapter of rank Σ rᵢ: the A matrices stacked, the B matrices side by side,
    /// each B scaled by sᵢ/n so that the result's scale is 1 (α = its rank). The adapters must be
    /// for one architecture and adapt the same layers with the same shapes.
    pub fn average(adapters: &[LoraAdapter]) -> Result<LoraAdapter> {
        let Some(first) = adapters.first() else {
            return Err(Error::Input("no adapters to average".into()));
        };
        let n = adapters.len() as f32;
        let mut pairs = BTreeMap::new();
        for other in adapters {
            if other.arch != first.arch {
                return Err(other.err(format!("is for `{}`, {} is for `{}`", other.arch, first.name, first.arch)));
            }
            if let Some(name) = other.pairs.keys().find(|k| !first.pairs.contains_key(*k)) {
                return Err(other.err(format!("adapts `{name}`, which {} does not", first.name)));
            }
            if let Some(name) = first.pairs.keys().find(|k| !other.pairs.contains_key(*k)) {
                return Err(other.err(format!("does not adapt `{name}`, which {} does", first.name)));
            }
        }
        for (name, p) in &first.pairs {
            let r: usize = adapters.iter().map(|a| a.pairs[name].r).sum();
            let (mut a, mut b) = (Vec::with_capacity(r * p.in_dim), vec![0f32; p.out_dim * r]);
            let mut col = 0;
            for ad in adapters {
                let q = &ad.pairs[name];
                if (q.in_dim, q.out_dim) != (p.in_dim, p.out_dim) {
                    return Err(ad.err(format!(
                        "`{name}` maps {} → {}, in {} it maps {} → {}",
                        q.in_dim, q.out_dim, first.name, p.in_dim, p.out_dim
                    )));
                }
                a.extend_from_slice(&q.a);
                let s = (ad.scale(q.r) / n as f64) as f32;
                for o in 0..p.out_dim {
                    for (dst, &v) in b[o * r + col..o * r + col + q.r].iter_mut().zip(&q.b[o * q.r..(o + 1) * q.r]) {
                        *dst = s * v;
                    }
                }
                col += q.r;
            }
            pairs.insert(name.clone(), LoraPair { r, in_dim: p.in_dim, out_dim: p.out_dim, a, b });
        }
        let names: Vec<&str> = adapters.iter().map(|a| a.name.as_str()).collect();
        Ok(LoraAdapter { name: format!("mean of {}", names.join(", ")), arch: first.arch.clone(), alpha: None, pairs }
            .with_unit_alpha())
    }

    /// Each layer's update s·B·A cut to its best rank-`k` approximation (truncated SVD: the
    /// smallest error in the Frobenius norm, Eckart–Young), with scale 1. Also returns the share of
    /// the update's squared norm kept, the least over layers (1 when nothing was cut).
    pub fn truncate(&self, k: usize) -> Result<(LoraAdapter, f64)> {
        if k == 0 {
            return Err(self.err("a rank of 0 keeps nothing"));
        }
        let mut pairs = BTreeMap::new();
        let mut least = 1f64;
        for (name, p) in &self.pairs {
            if p.r < k {
                return Err(self.err(format!("`{name}` has rank {}, below the requested {k}", p.r)));
            }
            let (pair, kept) = truncate_pair(p, self.scale(p.r), k);
            least = least.min(kept);
            pairs.insert(name.clone(), pair);
        }
        let cut = LoraAdapter { name: self.name.clone(), arch: self.arch.clone(), alpha: None, pairs };
        Ok((cut.with_unit_alpha(), least))
    }

    /// α = the rank when every layer has the same rank (so α/r = 1), else no α (scale 1 too).
    fn with_unit_alpha(mut self) -> Self {
        let mut ranks = self.pairs.values().map(|p| p.r);
        let r = ranks.next();
        self.alpha = r.filter(|&r| ranks.all(|x| x == r)).map(|r| r as f32);
        self
    }

    /// A random adapter over the given layers (name, in, out): for tests and benchmarks. Both A and
    /// B are non-zero so the adapter changes the output.
    pub fn random(arch: &str, layers: &[(String, usize, usize)], r: usize, alpha: f32, std: f32, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = move |n: usize| gaussian(&mut rng, n, std);
        let pairs = layers
            .iter()
            .map(|(name, i, o)| {
                (name.clone(), LoraPair { r, in_dim: *i, out_dim: *o, a: normal(r * i), b: normal(o * r) })
            })
            .collect();
        LoraAdapter { name: format!("random-r{r}-seed{seed}"), arch: arch.into(), alpha: Some(alpha), pairs }
    }
}

/// Rank-`k` truncation of s·B·A (B [out, r], A [r, in]) in f64: B = Q_b·R_b and Aᵀ = Q_a·R_a
/// (Gram–Schmidt), so s·B·A = Q_b·(s·R_b·R_aᵀ)·Q_aᵀ and only the small r×r core needs an SVD;
/// B' = Q_b·U_k·√Σ_k, A' = √Σ_k·V_kᵀ·Q_aᵀ. Returns the pair and the share of ‖s·B·A‖² kept.
fn truncate_pair(p: &LoraPair, scale: f64, k: usize) -> (LoraPair, f64) {
    let r = p.r;
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    // columns of B are B's rows' entries at one index: transpose so each column is contiguous
    let b_cols = transpose(&wide(&p.b), p.out_dim, r); // [r, out]
    let (qb, rb) = gram_schmidt(&b_cols, r, p.out_dim);
    let (qa, ra) = gram_schmidt(&wide(&p.a), r, p.in_dim); // A's rows are Aᵀ's columns
    let mut core = vec![0f64; r * r]; // s·R_b·R_aᵀ
    for i in 0..r {
        for j in 0..r {
            core[i * r + j] = scale * (0..r).map(|t| rb[i * r + t] * ra[j * r + t]).sum::<f64>();
        }
    }
    let (u, sv, v) = jacobi_svd(&core, r);
    let total: f64 = sv.iter().map(|s| s * s).sum();
    let kept = if total > 0.0 { sv[..k].iter().map(|s| s * s).sum::<f64>() / total } else { 1.0 };
    let (mut a, mut b) = (vec![0f32; k * p.in_dim], vec![0f32; p.out_dim * k]);
    for c in 0..k {
        let root = sv[c].sqrt();
        // B' column c = Q_b·u_c·√σ_c ; A' row c = √σ_c·(Q_a·v_c)ᵀ
        for o in 0..p.out_dim {
            b[o * k + c] = (root * (0..r).map(|t| qb[t * p.out_dim + o] * u[t * r + c]).sum::<f64>()) as f32;
        }
        for i in 0..p.in_dim {
            a[c * p.in_dim + i] = (root * (0..r).map(|t| qa[t * p.in_dim + i] * v[t * r + c]).sum::<f64>()) as f32;
        }
    }
    (LoraPair { r: k, in_dim: p.in_dim, out_dim: p.out_dim, a, b }, kept)
}

fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

/// QR of the matrix whose `r` columns are the rows of `cols` ([r, n]): Q's columns as rows
/// ([r, n], orthonormal or zero where a column depends on the earlier ones) and R [r, r] upper
/// triangular, R[i][j] = q_i·col_j. Modified Gram–Schmidt, each column orthogonalised twice.
fn gram_schmidt(cols: &[f64], r: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut q = cols.to_vec();
    let mut rr = vec![0f64; r * r];
    let scale = cols.iter().fold(0f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
    for j in 0..r {
        for _ in 0..2 {
            for i in 0..j {
                let d: f64 = (0..n).map(|t| q[i * n + t] * q[j * n + t]).sum();
                rr[i * r + j] += d;
                for t in 0..n {
                    q[j * n + t] -= d * q[i * n + t];
                }
            }
        }
        let norm = (0..n).map(|t| q[j * n + t] * q[j * n + t]).sum::<f64>().sqrt();
        if norm > 1e-12 * scale * (n as f64).sqrt() {
            rr[j * r + j] = norm;
            q[j * n..(j + 1) * n].iter_mut().for_each(|x| *x /= norm);
        } else {
            q[j * n..(j + 1) * n].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    (q, rr)
}

/// SVD of a square r×r matrix by one-sided Jacobi rotations: M = U·diag(σ)·Vᵀ with σ descending;
/// U and V row-major [r, r] (column c = the c-th singular vector).
fn jacobi_svd(m: &[f64], r: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut w = m.to_vec(); // columns rotated until orthogonal: W = M·V
    let mut v = vec![0f64; r * r];
    (0..r).for_each(|i| v[i * r + i] = 1.0);
    let col = |w: &[f64], a: usize, b: usize| (0..r).map(|t| w[t * r + a] * w[t * r + b]).sum::<f64>();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..r {
            for q in p + 1..r {
                let (alpha, beta, gamma) = (col(&w, p, p), col(&w, q, q), col(&w, p, q));
                if gamma == 0.0 || gamma.abs() <= 1e-14 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for x in [&mut w, &mut v] {
                    for row in 0..r {
                        let (xp, xq) = (x[row * r + p], x[row * r + q]);
                        x[row * r + p] = c * xp - s * xq;
                        x[row * r + q] = s * xp + c * xq;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..r).map(|c| col(&w, c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]));
    let (mut u, mut vs, mut sv) = (vec![0f64; r * r], vec![0f64; r * r], vec![0f64; r]);
    for (dst, &src) in order.iter().enumerate() {
        sv[dst] = norms[src];
        for row in 0..r {
            u[row * r + dst] = if norms[src] > 0.0 { w[row * r + src] / norms[src] } else { 0.0 };
            vs[row * r + dst] = v[row * r + src];
        }
    }
    (u, sv, vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LoraAdapter {
        let layers = vec![("blk.0.attn_q.weight".to_string(), 64, 64), ("blk.1.ffn_down.weight".to_string(), 128, 64)];
        LoraAdapter::random("llama", &layers, 32, 16.0, 0.1, 1)
    }

    fn reread(w: &GgufWriter) -> Result<LoraAdapter> {
        LoraAdapter::from_gguf(&Gguf::from_bytes("a.gguf", w.to_bytes()).unwrap())
    }

    /// s·B·A of every layer, f64 [out, in].
    fn dense(a: &LoraAdapter) -> BTreeMap<String, Vec<f64>> {
        a.pairs
            .iter()
            .map(|(k, p)| {
                let s = a.scale(p.r);
                let mut d = vec![0f64; p.out_dim * p.in_dim];
                for o in 0..p.out_dim {
                    for i in 0..p.in_dim {
                        d[o * p.in_dim + i] =
                            s * (0..p.r).map(|t| p.b[o * p.r + t] as f64 * p.a[t * p.in_dim + i] as f64).sum::<f64>();
                    }
                }
                (k.clone(), d)
            })
            .collect()
    }

    fn layers() -> Vec<(String, usize, usize)> {
        vec![("blk.0.attn_q.weight".to_string(), 24, 24), ("blk.0.ffn_down.weight".to_string(), 40, 24)]
    }

    #[test]
    fn the_average_of_adapters_is_the_mean_of_their_updates() {
        let x = LoraAdapter::random("llama", &layers(), 4, 8.0, 0.3, 1);
        let mut y = LoraAdapter::random("llama", &layers(), 6, 3.0, 0.3, 2);
        y.alpha = None; // scale 1: each adapter's own scale must be honoured
        let z = LoraAdapter::random("llama", &layers(), 4, 16.0, 0.3, 3);
        let mean = LoraAdapter::average(&[x.clone(), y.clone(), z.clone()]).unwrap();
        assert_eq!(mean.alpha, Some(14.0));
        assert_eq!(mean.scale(14), 1.0);
        let (dx, dy, dz, dm) = (dense(&x), dense(&y), dense(&z), dense(&mean));
        for (k, m) in &dm {
            assert_eq!(mean.pairs[k].r, 14);
            for (i, &v) in m.iter().enumerate() {
                let want = (dx[k][i] + dy[k][i] + dz[k][i]) / 3.0;
                assert!((v - want).abs() < 1e-5 * (1.0 + want.abs()), "{k}[{i}]: {v} vs {want}");
            }
        }
        // it stays an adapter llama.cpp and vigil read: through GGUF and back, the same updates
        let back = LoraAdapter::from_gguf(
            &Gguf::from_bytes("m.gguf", mean.to_gguf(GgmlType::F32).unwrap().to_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(dense(&back), dm);
    }

    #[test]
    fn adapters_that_do_not_match_are_not_averaged() {
        let x = LoraAdapter::random("llama", &layers(), 4, 8.0, 0.3, 1);
        let mut other_arch = x.clone();
        other_arch.arch = "gemma3".into();
        other_arch.name = "g.gguf".into();
        let e = LoraAdapter::average(&[x.clone(), other_arch]).unwrap_err().to_string();
        assert!(e.contains("g.gguf") && e.contains("gemma3"), "{e}");
        let mut fewer = x.clone();
        fewer.name = "fewer.gguf".into();
        fewer.pairs.remove("blk.0.ffn_down.weight");
        let e = LoraAdapter::average(&[x.clone(), fewer]).unwrap_err().to_string();
        assert!(e.contains("fewer.gguf") && e.contains("blk.0.ffn_down.weight"), "{e}");
        let wider = LoraAdapter::random(
            "llama",
            &[layers()[0].clone(), ("blk.0.ffn_down.weight".into(), 48, 24)],
            4,
            8.0,
            0.3,
            5,
        );
        let e = LoraAdapter::average(&[x.clone(), wider]).unwrap_err().to_string();
        assert!(e.contains("`blk.0.ffn_down.weight` maps 48 → 24"), "{e}");
        assert!(LoraAdapter::average(&[]).is_err());
    }

    /// An update built with known singular values: truncation finds them, keeps the top k (the
    /// residual is exactly the dropped ones, the Eckart–Young optimum) and loses nothing when k
    /// covers the rank.
    #[test]
    fn truncation_keeps_the_largest_singular_directions() {
        let (out, inp, r) = (20, 30, 6);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let basis = |n: usize, rng: &mut rand::rngs::StdRng| {
            let (q, _) = gram_schmidt(&gaussian(rng, r * n, 1.0).iter().map(|&x| x as f64).collect::<Vec<_>>(), r, n);
            q // r orthonormal rows of length n
        };
        let (u, v) = (basis(out, &mut rng), basis(inp, &mut rng));
        let sigma = [5.0, 3.0, 2.0, 1.0, 0.5, 0.25];
        // B = U·diag(σ) [out, r], A = Vᵀ [r, in]; stored mixed (B·M, M⁻¹·A with M a shear) so that
        // the factors themselves are not already the singular vectors
        let mut b = vec![0f32; out * r];
        for o in 0..out {
            for c in 0..r {
                b[o * r + c] =
                    (u[c * out + o] * sigma[c] + if c > 0 { u[(c - 1) * out + o] * sigma[c - 1] } else { 0.0 }) as f32;
            }
        }
        let mut a = vec![0f32; r * inp];
        for c in 0..r {
            for i in 0..inp {
                // (M⁻¹·Vᵀ) for M = I + superdiagonal: row c = Σ_{j ≥ c} (−1)^{j−c}·v_j
                a[c * inp + i] =
                    (c..r).map(|j| if (j - c) % 2 == 0 { 1.0 } else { -1.0 } * v[j * inp + i]).sum::<f64>() as f32;
            }
        }
        let mut pairs = BTreeMap::new();
        pairs.insert("blk.0.attn_q.weight".to_string(), LoraPair { r, in_dim: inp, out_dim: out, a, b });
        let ad = LoraAdapter { name: "known.gguf".into(), arch: "llama".into(), alpha: Some(12.0), pairs };
        let full = dense(&ad)["blk.0.attn_q.weight"].clone();
        let total: f64 = sigma.iter().map(|s| 4.0 * s * s).sum(); // scale α/r = 2
        for k in [1, 3, 6] {
            let (cut, kept) = ad.truncate(k).unwrap();
            assert_eq!((cut.pairs["blk.0.attn_q.weight"].r, cut.alpha), (k, Some(k as f32)));
            let got = &dense(&cut)["blk.0.attn_q.weight"];
            let resid: f64 = got.iter().zip(&full).map(|(x, y)| (x - y) * (x - y)).sum();
            let dropped: f64 = sigma[k..].iter().map(|s| 4.0 * s * s).sum();
            assert!((resid - dropped).abs() < 1e-4 * total, "k {k}: residual {resid} vs dropped {dropped}");
            assert!((kept - (1.0 - dropped / total)).abs() < 1e-6, "k {k}: kept {kept}");
        }
        let e = ad.truncate(7).unwrap_err().to_string();
        assert!(e.contains("known.gguf") && e.contains("rank 6, below the requested 7"), "{e}");
        assert!(ad.truncate(0).is_err());
    }

    #[test]
    fn gguf_round_trip_in_every_storage_type() {
        let a = sample();
        for (ty, tol) in [(GgmlType::F32, 0.0), (GgmlType::F16, 1e-3), (GgmlType::BF16, 1e-2), (GgmlType::Q8_0, 2e-2)] {
            let b = reread(&a.to_gguf(ty).unwrap()).unwrap();
            assert_eq!((b.arch.as_str(), b.alpha), ("llama", Some(16.0)));
            assert_eq!(b.pairs.keys().collect::<Vec<_>>(), a.pairs.keys().collect::<Vec<_>>());
            for (k, p) in &a.pairs {
                let q = &b.pairs[k];
                assert_eq!((q.r, q.in_dim, q.out_dim), (p.r, p.in_dim, p.out_dim));
                for (x, y) in p.a.iter().chain(&p.b).zip(q.a.iter().chain(&q.b)) {
                    assert!((x - y).abs() <= tol * x.abs().max(0.3), "{ty} {k}: {x} vs {y}");
                }
            }
            assert_eq!(b.scale(32), 0.5);
        }
    }

    #[test]
    fn malformed_adapters_are_refused_with_the_tensor_named() {
        let a = sample();
        let base = a.to_gguf(GgmlType::F32).unwrap();
        let mut not_adapter = a.to_gguf(GgmlType::F32).unwrap();
        not_adapter.set("general.type", Value::string("model"));
        assert!(reread(&not_adapter).unwrap_err().to_string().contains("is this a base model?"));

        let mut half = GgufWriter::new();
        for (k, v) in [("general.architecture", "llama"), ("general.type", "adapter"), ("adapter.type", "lora")] {
            half.set(k, Value::string(v));
        }
        half.add_f32("blk.0.attn_q.weight.lora_a", &[64, 4], GgmlType::F32, &[0.0; 256]).unwrap();
        assert!(reread(&half)
            .unwrap_err()
            .to_string()
            .contains("`blk.0.attn_q.weight` has only one of lora_a / lora_b"));
        half.add_f32("blk.0.attn_q.weight.lora_b", &[8, 64], GgmlType::F32, &[0.0; 512]).unwrap();
        assert!(reread(&half).unwrap_err().to_string().contains("rank 4"));

        let mut stray = GgufWriter::new();
        for (k, v) in [("general.architecture", "llama"), ("general.type", "adapter"), ("adapter.type", "lora")] {
            stray.set(k, Value::string(v));
        }
        stray.add_f32("blk.0.attn_q.weight", &[4], GgmlType::F32, &[0.0; 4]).unwrap();
        assert!(reread(&stray).unwrap_err().to_string().contains("neither `.lora_a` nor `.lora_b`"));
        assert!(reread(&base).is_ok());
        assert!(a.to_gguf(GgmlType::Q4_1).is_err());
    }
}
