//! A training run's settings: a TOML file (every key optional), a preset underneath it, and
//! `--set key=value` overrides on top. The resolved config is saved with the run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::optim::Decay;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Base model GGUF (a path or a catalogue name).
    pub model: String,
    /// Training JSONL files.
    pub data: Vec<PathBuf>,
    /// Separate eval JSONL files; when empty, `eval_fraction` of the training lines (by hash).
    pub eval_data: Vec<PathBuf>,
    pub eval_fraction: f64,
    /// Guard-schema rendering: "rsft" or "dual-stream"; one call for all policies, or per policy.
    pub format: String,
    pub per_policy: bool,
    /// Skip invalid lines (reported) instead of stopping.
    pub skip_invalid: bool,
    pub max_len: usize,
    /// Decision emphasis: up to `emphasis_tokens` target tokens right after any of these markers
    /// (never past the end of the marker's line) weigh `emphasis_weight` in the loss instead of 1.
    /// A guard trace commits to its reading and its verdict in a few such tokens ("Read as meant,
    /// the user wants …", "Classification: …") among many templated ones. Empty: every target weighs 1.
    pub emphasis: Vec<String>,
    pub emphasis_tokens: usize,
    pub emphasis_weight: f32,

    // LoRA
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// GGUF projection names: attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down.
    pub targets: Vec<String>,
    /// Base weights: "f32" (dequantized), "bf16" (rounded to bf16; fastest on CPUs with AMX tiles or AVX512-BF16),
    /// "quantized" (QLoRA: as stored in the GGUF).
    pub base_weights: String,
    /// Start from a trained GGUF LoRA adapter instead of PEFT's initialisation (continued training,
    /// e.g. the shipped guard on more data); its rank, alpha and targets must equal the config's.
    /// Empty: a fresh adapter.
    pub init_adapter: String,

    // optimisation
    pub lr: f32,
    pub epochs: f32,
    /// Cap on optimizer steps (0 = from epochs).
    pub max_steps: u64,
    /// Sequences per micro-batch and micro-batches per optimizer step.
    pub batch_size: usize,
    /// Run each micro-batch as one packed sequence: the tokens its sequences share at the start
    /// (the guard's system prompt and policy list) once, then each sequence's rest. Losses and
    /// gradients equal the separate runs' (dropout masks aside), at a fraction of the tokens:
    /// 2–2.5× the tokens/s on guard data (batch 4). Sequences sharing less than half their
    /// length run alone.
    pub share_prefix: bool,
    pub grad_accum: usize,
    /// Warmup: `warmup_steps`, or this fraction of the total when steps is 0.
    pub warmup_steps: u64,
    pub warmup_ratio: f32,
    pub schedule: Decay,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub adam_8bit: bool,
    pub seed: u64,

    // rho-guided SFT (train/rho.rs): L = L_SFT + λ · mean hinge over probe pairs
    /// Probe-pair JSONL files (`{id, behavior, positive, negative}`).
    pub rho_data: Vec<PathBuf>,
    /// λ; 0 trains plain SFT.
    pub rho_lambda: f32,
    /// γ, the hinge margin.
    pub rho_margin: f32,
    /// Pairs per optimizer step (one per behaviour).
    pub rho_pairs: usize,
    /// sft-only, rho-guided, contrastive-only or shuffled-pairs.
    pub rho_condition: String,

    // bookkeeping
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub log_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: vigil_models::catalog::DEFAULT_MODEL.into(),
            data: Vec::new(),
            eval_data: Vec::new(),
            eval_fraction: 0.05,
            format: "rsft".into(),
            per_policy: false,
            skip_invalid: false,
            max_len: 1024,
            emphasis: Vec::new(),
            emphasis_tokens: 8,
            emphasis_weight: 1.0,
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: vigil_models::lora::TARGETS.iter().map(|s| s.to_string()).collect(),
            base_weights: "f32".into(),
            init_adapter: String::new(),
            lr: 2e-4,
            epochs: 1.0,
            max_steps: 0,
            batch_size: 4,
            share_prefix: true,
            grad_accum: 1,
            warmup_steps: 0,
            warmup_ratio: 0.05,
            schedule: Decay::Linear,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            adam_8bit: false,
            seed: 42,
            rho_data: Vec::new(),
            rho_lambda: 0.0,
            rho_margin: 0.1,
            rho_pairs: 4,
            rho_condition: "rho-guided".into(),
            eval_every: 50,
            checkpoint_every: 50,
            log_every: 1,
        }
    }
}

/// Named starting points from the seed notes.
pub const PRESETS: [(&str, &str); 3] = [
    ("default", ""),
    // R-SFT note: LoRA r16, lr 5e-5, 3 epochs, effective batch 128, max length 2048.
    (
        "rsft",
        "rank = 16\nalpha = 32.0\nlr = 5e-5\nepochs = 3.0\nbatch_size = 8\ngrad_accum = 16\nmax_len = 2048\nformat = \"rsft\"\nper_policy = true\n",
    ),
    // rho-guided note: r8 / α16 on q, k, o; lr 2e-4; 10 % warmup; accumulation 4; max length 256;
    // λ 0.2, γ 0.1, 4 pairs per step from the project's probe pairs (relative to the working directory).
    (
        "rho",
        "rank = 8\nalpha = 16.0\ntargets = [\"attn_q\", \"attn_k\", \"attn_output\"]\nlr = 2e-4\nwarmup_ratio = 0.1\ngrad_accum = 4\nmax_len = 256\nrho_data = [\"data/guard/probes.jsonl\"]\nrho_lambda = 0.2\nrho_margin = 0.1\nrho_pairs = 4\n",
    ),
];

impl TrainConfig {
    /// preset ← file ← overrides (`key=value`, the value in TOML syntax; bare words are strings).
    pub fn resolve(preset: &str, file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let Some((_, base)) = PRESETS.iter().find(|(n, _)| *n == preset) else {
            bail!("unknown preset `{preset}` (known: {})", PRESETS.map(|p| p.0).join(", "));
        };
        let mut table: toml::Table = toml::from_str(base).expect("presets are valid TOML");
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let mut t: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not valid TOML", f.display()))?;
            // relative data paths in a config file are relative to that file; they are stored
            // absolute, so a run's saved config works from any working directory
            let dir = f.parent().unwrap_or(Path::new(""));
            for key in ["data", "eval_data", "rho_data"] {
                if let Some(toml::Value::Array(list)) = t.get_mut(key) {
                    for v in list.iter_mut() {
                        if let toml::Value::String(p) = v {
                            *p = absolute(&dir.join(p.as_str())).display().to_string();
                        }
                    }
                }
            }
            if let Some(toml::Value::String(p)) = t.get_mut("init_adapter") {
                if !p.is_empty() {
                    *p = absolute(&dir.join(p.as_str())).display().to_string();
                }
            }
            table.extend(t);
        }
        for o in overrides {
            let (k, v) = o.split_once('=').with_context(|| format!("--set {o}: expected key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("x = {v}"))
                .map(|mut t| t.remove("x").unwrap())
                .unwrap_or_else(|_| toml::Value::String(v.to_string()));
            table.insert(k.to_string(), value);
        }
        let where_ = file.map_or("the preset and --set".to_string(), |f| f.display().to_string());
        let c: TrainConfig = table.try_into().with_context(|| format!("invalid training config ({where_})"))?;
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(anyhow::anyhow!("invalid training config: {what}"));
        if self.rank == 0 {
            return bad("rank must be ≥ 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be ≥ 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr {} must be positive", self.lr));
        }
        if self.targets.is_empty() {
            return bad("targets is empty".into());
        }
        for t in &self.targets {
            if !vigil_models::lora::TARGETS.contains(&t.as_str()) {
                return bad(format!("unknown target `{t}` (known: {})", vigil_models::lora::TARGETS.join(", ")));
            }
        }
        if vigil_models::guard::OutputFormat::from_name(&self.format).is_none() {
            return bad(format!("format `{}` (rsft or dual-stream)", self.format));
        }
        if let Err(e) = weight_mode(&self.base_weights) {
            return bad(e.to_string());
        }
        if !super::rho::CONDITIONS.contains(&self.rho_condition.as_str()) {
            return bad(format!("rho_condition `{}` ({})", self.rho_condition, super::rho::CONDITIONS.join(", ")));
        }
        if !(self.emphasis_weight > 0.0 && self.emphasis_weight.is_finite()) {
            return bad(format!("emphasis_weight {} must be positive", self.emphasis_weight));
        }
        if self.emphasis.iter().any(|m| m.is_empty()) {
            return bad("an emphasis marker is empty".into());
        }
        let finite_non_negative = |x: f32| x.is_finite() && x >= 0.0;
        if !finite_non_negative(self.rho_lambda) || !finite_non_negative(self.rho_margin) || self.rho_pairs == 0 {
            return bad("rho_lambda and rho_margin must be ≥ 0 and rho_pairs ≥ 1".into());
        }
        if self.uses_rho() && self.rho_data.is_empty() {
            return bad(format!(
                "rho_condition `{}` with λ {} needs probe pairs in rho_data",
                self.rho_condition, self.rho_lambda
            ));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!("eval_fraction {} must be in [0, 1)", self.eval_fraction));
        }
        Ok(())
    }

    /// Whether steps add the contrastive term (λ > 0, and not `sft-only`).
    pub fn uses_rho(&self) -> bool {
        self.rho_lambda > 0.0 && self.rho_condition != "sft-only"
    }

    /// Whether steps include the SFT loss (all conditions but `contrastive-only`).
    pub fn uses_sft(&self) -> bool {
        self.rho_condition != "contrastive-only"
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

/// `p` without `..` and symlinks where it exists, else joined to the working directory.
pub fn absolute(p: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}

/// The base-weight mode a `base_weights` name selects: "f32", "bf16" or "quantized".
pub fn weight_mode(name: &str) -> Result<vigil_models::cpu::WeightMode> {
    use vigil_models::cpu::WeightMode;
    Ok(match name {
        "f32" => WeightMode::Dense(candle_core::DType::F32),
        "bf16" => WeightMode::Bf16,
        "quantized" => WeightMode::Quantized,
        other => bail!("base_weights `{other}` (f32, bf16 or quantized)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_files_and_overrides_stack() {
        let c = TrainConfig::resolve("rho", None, &[]).unwrap();
        assert_eq!((c.rank, c.alpha, c.lr, c.grad_accum, c.max_len), (8, 16.0, 2e-4, 4, 256));
        assert_eq!(c.targets, ["attn_q", "attn_k", "attn_output"]);
        assert_eq!((c.rho_lambda, c.rho_margin, c.rho_pairs), (0.2, 0.1, 4));
        let e = format!("{:#}", TrainConfig::resolve("rho", None, &["rho_data=[]".into()]).unwrap_err());
        assert!(e.contains("needs probe pairs"), "{e}");
        let e = format!("{:#}", TrainConfig::resolve("default", None, &["rho_condition=both".into()]).unwrap_err());
        assert!(e.contains("rho_condition `both`"), "{e}");
        let r = TrainConfig::resolve("rsft", None, &[]).unwrap();
        assert_eq!((r.rank, r.lr, r.epochs, r.batch_size * r.grad_accum, r.max_len), (16, 5e-5, 3.0, 128, 2048));

        let dir = std::env::temp_dir().join(format!("vigil-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("run.toml");
        std::fs::write(&f, "rank = 4\nlr = 1e-3\n").unwrap();
        let c = TrainConfig::resolve("rho", Some(&f), &["lr=3e-3".into(), "format=dual-stream".into()]).unwrap();
        assert_eq!((c.rank, c.lr, c.format.as_str(), c.alpha), (4, 3e-3, "dual-stream", 16.0));
        let round: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(round, c);

        std::fs::write(&f, "data = [\"train.jsonl\", \"/abs/x.jsonl\"]\n").unwrap();
        let c = TrainConfig::resolve("default", Some(&f), &[]).unwrap();
        assert_eq!(c.data, [dir.join("train.jsonl"), PathBuf::from("/abs/x.jsonl")]);
        std::fs::write(&f, "init_adapter = \"guard.gguf\"\n").unwrap();
        let c = TrainConfig::resolve("default", Some(&f), &[]).unwrap();
        assert_eq!(PathBuf::from(c.init_adapter), dir.join("guard.gguf"));

        std::fs::write(&f, "rnak = 4\n").unwrap();
        let e = format!("{:#}", TrainConfig::resolve("default", Some(&f), &[]).unwrap_err());
        assert!(e.contains("run.toml") && e.contains("rnak"), "{e}");
        let e = format!("{:#}", TrainConfig::resolve("default", None, &["targets=[\"attn_x\"]".into()]).unwrap_err());
        assert!(e.contains("unknown target `attn_x`"), "{e}");
        assert!(TrainConfig::resolve("nope", None, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
