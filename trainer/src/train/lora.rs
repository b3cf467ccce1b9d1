//! The trainable LoRA parameters: A [r, in] and B [out, r] per targeted layer, held as flat f32
//! vectors (what the optimizer and checkpoints use) mirrored into candle `Var`s (what the forward
//! pass and backprop use).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use vigil_models::cpu::linear::{Dropout, LoraBranch};
use vigil_models::cpu::Llama;
use vigil_models::lora::{LoraAdapter, LoraPair};

pub struct Param {
    /// `blk.3.attn_q.weight.lora_a` / `.lora_b`: the GGUF adapter's tensor name.
    pub name: String,
    pub shape: (usize, usize),
    pub value: Vec<f32>,
    pub var: Var,
}

pub struct LoraParams {
    pub rank: usize,
    pub alpha: f32,
    pub arch: String,
    /// (layer name, in, out), in model order.
    pub layers: Vec<(String, usize, usize)>,
    /// A then B for each layer.
    pub params: Vec<Param>,
    pub dropout_seed: Arc<AtomicU64>,
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

impl LoraParams {
    /// PEFT's initialisation: A Kaiming-uniform (bound 1/√in), B zero, so training starts at
    /// the base model. Seeded per layer name.
    pub fn init(model: &Llama, targets: &[String], rank: usize, alpha: f32, seed: u64) -> Result<Self> {
        let layers: Vec<(String, usize, usize)> = model
            .lora_targets()
            .into_iter()
            .filter(|(n, _, _)| targets.iter().any(|t| n.contains(&format!(".{t}."))))
            .collect();
        anyhow::ensure!(!layers.is_empty(), "no layer of this model matches the targets {targets:?}");
        let mut params = Vec::new();
        for (name, i, o) in &layers {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ name_hash(name));
            let bound = 1.0 / (*i as f32).sqrt();
            let a: Vec<f32> = (0..rank * i).map(|_| rng.random_range(-bound..bound)).collect();
            params.push(Param::new(format!("{name}.lora_a"), (rank, *i), a)?);
            params.push(Param::new(format!("{name}.lora_b"), (*o, rank), vec![0.0; o * rank])?);
        }
        let arch = model.config().arch.name().to_string();
        Ok(LoraParams { rank, alpha, arch, layers, params, dropout_seed: Arc::new(AtomicU64::new(0)) })
    }

    /// Trainable parameters starting from a trained adapter (DPO starts from the R-SFT adapter).
    pub fn from_adapter(model: &Llama, adapter: &LoraAdapter) -> Result<Self> {
        let mut layers = Vec::new();
        let mut params = Vec::new();
        let mut rank = 0;
        for (name, i, o) in model.lora_targets() {
            let Some(p) = adapter.pairs.get(&name) else { continue };
            anyhow::ensure!(
                (p.in_dim, p.out_dim) == (i, o),
                "{}: {name} is {}×{} in the adapter but {i}×{o} in the model",
                adapter.name,
                p.in_dim,
                p.out_dim
            );
            anyhow::ensure!(rank == 0 || rank == p.r, "{}: mixed LoRA ranks ({rank} and {})", adapter.name, p.r);
            rank = p.r;
            params.push(Param::new(format!("{name}.lora_a"), (p.r, i), p.a.clone())?);
            params.push(Param::new(format!("{name}.lora_b"), (o, p.r), p.b.clone())?);
            layers.push((name, i, o));
        }
        anyhow::ensure!(!layers.is_empty(), "{}: no layer of the adapter matches this model", adapter.name);
        let alpha = adapter.alpha.unwrap_or(rank as f32);
        let arch = model.config().arch.name().to_string();
        Ok(LoraParams { rank, alpha, arch, layers, params, dropout_seed: Arc::new(AtomicU64::new(0)) })
    }

    /// Attaches the branches (sharing the `Var`s) to the model.
    pub fn attach(&self, model: &mut Llama, dropout: f32) -> Result<()> {
        self.attach_as(model, dropout, false)
    }

    /// Attaches the branches without gradient tracking (still reading the `Var`s' current values)
    /// and without dropout: a forward pass then keeps no graph alive (evaluation).
    pub fn attach_frozen(&self, model: &mut Llama) -> Result<()> {
        self.attach_as(model, 0.0, true)
    }

    fn attach_as(&self, model: &mut Llama, dropout: f32, frozen: bool) -> Result<()> {
        let mut branches = HashMap::new();
        let tensor = |p: &Param| if frozen { p.var.as_tensor().detach() } else { p.var.as_tensor().clone() };
        for (k, (name, _, _)) in self.layers.iter().enumerate() {
            branches.insert(
                name.clone(),
                LoraBranch {
                    a: tensor(&self.params[2 * k]),
                    b: tensor(&self.params[2 * k + 1]),
                    scale: self.alpha as f64 / self.rank as f64,
                    dropout: (dropout > 0.0).then(|| Dropout { p: dropout, seed: self.dropout_seed.clone() }),
                },
            );
        }
        model.set_lora_branches(branches)?;
        Ok(())
    }

    /// Copies the flat values into the `Var`s (after an optimizer step or a resume).
    pub fn sync(&self) -> Result<()> {
        for p in &self.params {
            p.var.set(&Tensor::from_slice(&p.value, p.shape, &Device::Cpu)?)?;
        }
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// The adapter as vigil and llama.cpp read it.
    pub fn adapter(&self, name: &str) -> LoraAdapter {
        let mut pairs = BTreeMap::new();
        for (k, (layer, i, o)) in self.layers.iter().enumerate() {
            pairs.insert(
                layer.clone(),
                LoraPair {
                    r: self.rank,
                    in_dim: *i,
                    out_dim: *o,
                    a: self.params[2 * k].value.clone(),
                    b: self.params[2 * k + 1].value.clone(),
                },
            );
        }
        LoraAdapter { name: name.into(), arch: self.arch.clone(), alpha: Some(self.alpha), pairs }
    }
}

impl Param {
    fn new(name: String, shape: (usize, usize), value: Vec<f32>) -> Result<Self> {
        let var = Var::from_tensor(&Tensor::from_slice(&value, shape, &Device::Cpu)?)?;
        Ok(Param { name, shape, value, var })
    }
}
