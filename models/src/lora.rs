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
