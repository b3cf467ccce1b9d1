//! The training loop: length-bucketed batches, loss on target tokens normalised by the step's
//! total target tokens, gradient clipping, AdamW with warmup and decay, eval loss, metrics JSONL,
//! atomic checkpoints and exact resume.
//!
//! A run directory holds `config.toml` (resolved), `metrics.jsonl`, `loss.svg`,
//! `checkpoint.safetensors` and, at the end, `adapter.gguf` (f32; `vigil export` converts it).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_models::chat::ChatTemplate;
use vigil_models::cpu::Llama;
use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::guard::OutputFormat;
use vigil_models::tokenizer::Tokenizer;

use super::checkpoint;
use super::config::TrainConfig;
use super::data::{self, Example, GuardRendering};
use super::lora::LoraParams;
use super::optim::{self, AdamWConfig, Moments};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub step: u64,
    pub epoch: f64,
    /// NaN (written as null) on the step-0 line, which only carries the baseline eval loss.
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    pub lr: f32,
    pub grad_norm: f32,
    /// Tokens (prompt + target) processed in this step, and per second.
    pub tokens: usize,
    pub tok_per_s: f64,
    pub elapsed_s: f64,
    /// Mean rho hinge over the step's probe pairs (rho-guided runs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hinge: Option<f64>,
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Called after each optimizer step with its metrics and the total number of steps.
pub type OnStep<'a> = &'a mut dyn FnMut(&Metrics, u64);

/// What a caller can watch or stop.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after each optimizer step.
    pub on_step: Option<OnStep<'a>>,
    /// Stop (as if interrupted) after this many optimizer steps in total, leaving a checkpoint;
    /// a run already there trains no further step.
    pub stop_after: Option<u64>,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub dir: PathBuf,
    pub model: Llama,
    pub lora: LoraParams,
    pub moments: Vec<Moments>,
    pub train: Vec<Example>,
    /// Micro-batches run as one packed pass (`share_prefix`) since this process started, and the
    /// prefix tokens that packing did not have to run again.
    pub packed_passes: u64,
    pub packed_saved_tokens: u64,
    pub eval: Vec<Example>,
    /// Probe pairs of rho-guided runs.
    pub rho: Option<super::rho::ProbeSet>,
    pub step: u64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    /// sha256 of the resolved config's training-relevant fields, the base model's tensors and the
    /// encoded data (probe pairs included).
    fingerprint: String,
}

/// What `prepare` reports about the data.
pub struct DataReport {
    pub train: usize,
    pub eval: usize,
    pub errors: Vec<String>,
}

fn load_data(
    cfg: &TrainConfig,
    tok: &Tokenizer,
    template: ChatTemplate,
) -> Result<(Vec<Example>, Vec<Example>, Vec<String>)> {
    let rendering =
        GuardRendering { format: OutputFormat::from_name(&cfg.format).context("format")?, per_policy: cfg.per_policy };
    let mut errors = Vec::new();
    let mut read = |files: &[PathBuf]| -> Result<Vec<Example>> {
        let mut all = Vec::new();
        for f in files {
            let l = data::load(f, tok, template, rendering, cfg.max_len)?;
            errors.extend(l.errors);
            all.extend(l.examples);
        }
        Ok(all)
    };
    if cfg.data.is_empty() {
        bail!("no training data (set `data = [\"file.jsonl\"]` or pass --data)");
    }
    let mut train = read(&cfg.data)?;
    if !cfg.emphasis.is_empty() {
        train.iter_mut().for_each(|ex| ex.mark_emphasis(tok, &cfg.emphasis, cfg.emphasis_tokens));
    }
    let mut eval = read(&cfg.eval_data)?;
    if cfg.eval_data.is_empty() && cfg.eval_fraction > 0.0 {
        let (e, t): (Vec<Example>, Vec<Example>) =
            train.into_iter().partition(|ex| data::is_eval(&ex.ids, cfg.eval_fraction, cfg.seed));
        train = t;
        eval = e;
    }
    Ok((train, eval, errors))
}

/// Below this many shared tokens a micro-batch runs sequence by sequence (packing saves little).
const MIN_SHARED_PREFIX: usize = 16;

/// Eval sequences per packed pass (no graph is kept, so the micro-batch size does not bound it).
const EVAL_PACK: usize = 8;

/// The longest prefix `exs` share that holds no target and leaves each sequence a token after it.
pub(crate) fn shared_prefix(exs: &[&Example]) -> usize {
    let first = &exs[0].ids;
    exs.iter()
        .map(|e| {
            let common = first.iter().zip(&e.ids).take_while(|(a, b)| a == b).count();
            let first_target = e.mask.iter().position(|&m| m).unwrap_or(e.ids.len());
            common.min(first_target.saturating_sub(1)).min(e.ids.len().saturating_sub(1))
        })
        .min()
        .unwrap_or(0)
}

/// The trainable parameters of `cfg.init_adapter` (and the file's bytes, for the fingerprint),
/// refused unless the adapter was made for this architecture with the config's rank, alpha and
/// targets: continuing under other settings would silently rescale or drop its update.
fn init_from_adapter(cfg: &TrainConfig, model: &Llama) -> Result<(LoraParams, Vec<u8>)> {
    let path = Path::new(&cfg.init_adapter);
    let bytes = std::fs::read(path).with_context(|| format!("init_adapter: reading {}", path.display()))?;
    let adapter = vigil_models::lora::LoraAdapter::from_gguf(&Gguf::open(path)?)
        .with_context(|| format!("init_adapter: loading {}", path.display()))?;
    let arch = model.config().arch.name();
    if adapter.arch != arch {
        bail!("init_adapter {}: made for a `{}` model, this base is `{arch}`", path.display(), adapter.arch);
    }
    let lora = LoraParams::from_adapter(model, &adapter)?;
    // the layers a fresh run of this config would train, in model order
    let wanted: Vec<String> = model
        .lora_targets()
        .into_iter()
        .map(|(n, _, _)| n)
        .filter(|n| cfg.targets.iter().any(|t| n.contains(&format!(".{t}."))))
        .collect();
    let has: Vec<&String> = lora.layers.iter().map(|(n, _, _)| n).collect();
    if lora.rank != cfg.rank || lora.alpha != cfg.alpha || has != wanted.iter().collect::<Vec<_>>() {
        bail!(
            "init_adapter {}: rank {}, alpha {} on {} layers, but the config asks for rank {}, alpha {} on {} layers \
             ({}): set rank, alpha and targets to the adapter's",
            path.display(),
            lora.rank,
            lora.alpha,
            has.len(),
            cfg.rank,
            cfg.alpha,
            wanted.len(),
            cfg.targets.join(", ")
        );
    }
    Ok((lora, bytes))
}

impl Trainer {
    /// Loads the model and data and sets up a fresh run in `dir` (or resumes the checkpoint
    /// there when `resume`).
    pub fn prepare(cfg: TrainConfig, dir: &Path, resume: bool) -> Result<(Self, DataReport)> {
        cfg.check()?;
        let model_path = PathBuf::from(&cfg.model);
        let g = Gguf::open(&model_path).with_context(|| format!("loading the base model {}", model_path.display()))?;
        let tok = Tokenizer::from_gguf(&g)?;
        let template = ChatTemplate::detect(&g)?;
        let (train, eval, errors) = load_data(&cfg, &tok, template)?;
        if !errors.is_empty() && !cfg.skip_invalid {
            let shown: Vec<&str> = errors.iter().take(20).map(String::as_str).collect();
            bail!(
                "{} invalid training line(s) (set skip_invalid = true to train without them):\n  {}{}",
                errors.len(),
                shown.join("\n  "),
                if errors.len() > 20 { "\n  …" } else { "" }
            );
        }
        if train.is_empty() {
            bail!("no usable training examples");
        }
        let report = DataReport { train: train.len(), eval: eval.len(), errors };
        let rho = if cfg.uses_rho() {
            let shuffled = cfg.rho_condition == "shuffled-pairs";
            Some(super::rho::ProbeSet::load(&cfg.rho_data, &tok, cfg.max_len, shuffled, cfg.seed)?)
        } else {
            None
        };
        let mut t = Trainer::with_examples(cfg, &g, train, eval, dir)?;
        t.set_probes(rho);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ckpt = dir.join(checkpoint::FILE);
        if resume {
            if !ckpt.exists() {
                bail!("--resume: no checkpoint in {}", dir.display());
            }
            let meta = checkpoint::load(&ckpt, &mut t.lora, &mut t.moments)?;
            if meta.get("fingerprint") != Some(&t.fingerprint) {
                bail!(
                    "--resume: {} was made with a different config or data (fingerprint {} vs {})",
                    ckpt.display(),
                    meta.get("fingerprint").map_or("none", String::as_str),
                    t.fingerprint
                );
            }
            t.step = meta.get("step").and_then(|s| s.parse().ok()).context("checkpoint has no step")?;
            t.truncate_metrics()?;
        } else {
            if ckpt.exists() {
                bail!("{} already holds a run (pass --resume to continue it, or choose another --out)", dir.display());
            }
            let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        }
        vigil_models::fsutil::write_atomic(&dir.join("config.toml"), |f| f.write_all(t.cfg.to_toml().as_bytes()))?;
        Ok((t, report))
    }

    /// A fresh run over examples already encoded (the benchmark's synthetic sequences, tests).
    pub fn with_examples(
        cfg: TrainConfig,
        g: &Gguf,
        train: Vec<Example>,
        eval: Vec<Example>,
        dir: &Path,
    ) -> Result<Self> {
        cfg.check()?;
        let mut model = Llama::load(g, super::config::weight_mode(&cfg.base_weights)?, &Device::Cpu)?;
        let (lora, init_bytes) = if cfg.init_adapter.is_empty() {
            (LoraParams::init(&model, &cfg.targets, cfg.rank, cfg.alpha, cfg.seed)?, Vec::new())
        } else {
            init_from_adapter(&cfg, &model)?
        };
        lora.attach(&mut model, cfg.dropout)?;
        let moments = lora.params.iter().map(|p| Moments::new(p.value.len(), cfg.adam_8bit)).collect();

        let group = cfg.batch_size * cfg.grad_accum;
        let steps_per_epoch = train.len().div_ceil(group) as u64;
        let total_steps = if cfg.max_steps > 0 {
            cfg.max_steps
        } else {
            ((cfg.epochs as f64 * steps_per_epoch as f64).ceil() as u64).max(1)
        };
        let fingerprint = {
            let mut h = Sha256::new();
            let mut c = cfg.clone();
            // cadences do not change the result
            (c.eval_every, c.checkpoint_every, c.log_every) = (0, 0, 0);
            let mut table: toml::Table = toml::from_str(&c.to_toml()).expect("the config serialises");
            // keys added later hash only when set, so older runs still resume
            if !c.share_prefix {
                table.remove("share_prefix");
            }
            if c.emphasis.is_empty() {
                for key in ["emphasis", "emphasis_tokens", "emphasis_weight"] {
                    table.remove(key);
                }
            }
            // the starting adapter counts by content (below), like the data
            table.remove("init_adapter");
            // files count by content, not by path: the same run resumes from any working directory
            for key in ["model", "data", "eval_data", "rho_data"] {
                table.remove(key);
            }
            h.update(toml::to_string_pretty(&table).expect("a TOML table serialises"));
            if !init_bytes.is_empty() {
                h.update(b"init_adapter");
                h.update(Sha256::digest(&init_bytes));
            }
            for t in g.tensors() {
                h.update(format!("{}:{:?}:{:?};", t.name, t.ty, t.dims));
                h.update(g.tensor_bytes(t));
            }
            for ex in train.iter().chain(&eval) {
                for id in &ex.ids {
                    h.update(id.to_le_bytes());
                }
                h.update(ex.mask.iter().map(|&m| m as u8).collect::<Vec<u8>>());
                if !ex.emphasis.is_empty() {
                    h.update(ex.emphasis.iter().map(|&m| m as u8).collect::<Vec<u8>>());
                }
            }
            hex::encode(h.finalize())
        };
        Ok(Trainer {
            cfg,
            dir: dir.to_path_buf(),
            model,
            lora,
            moments,
            train,
            eval,
            rho: None,
            packed_passes: 0,
            packed_saved_tokens: 0,
            step: 0,
            total_steps,
            steps_per_epoch,
            fingerprint,
        })
    }

    /// Probe pairs for the contrastive term; they join the fingerprint (a resume must see the same).
    pub fn set_probes(&mut self, rho: Option<super::rho::ProbeSet>) {
        if let Some(r) = &rho {
            let mut h = Sha256::new();
            h.update(self.fingerprint.as_bytes());
            for (b, pairs) in r.behaviors.iter().zip(&r.pairs) {
                h.update(b.as_bytes());
                for (p, n) in pairs {
                    p.iter().chain(n).for_each(|id| h.update(id.to_le_bytes()));
                    h.update([0xff]);
                }
            }
            self.fingerprint = hex::encode(h.finalize());
        }
        self.rho = rho;
    }

    /// The examples of optimizer step `step`: each epoch shuffles (seeded by epoch), sorts windows
    /// of 8 steps' worth by length (so a step's sequences have similar lengths), then shuffles
    /// the order of the steps.
    pub fn step_examples(&self, step: u64) -> Vec<usize> {
        let epoch = step / self.steps_per_epoch;
        let within = (step % self.steps_per_epoch) as usize;
        let group = self.cfg.batch_size * self.cfg.grad_accum;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch));
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut rng);
        for w in order.chunks_mut(group * 8) {
            w.sort_by_key(|&i| self.train[i].ids.len());
        }
        let mut groups: Vec<&[usize]> = order.chunks(group).collect();
        groups.shuffle(&mut rng);
        groups[within].to_vec()
    }

    fn dropout_seed(&self, step: u64, k: usize) -> u64 {
        self.cfg.seed ^ step.wrapping_mul(0x9e3779b97f4a7c15) ^ (k as u64).wrapping_mul(0xd1b54a32d192ed03)
    }

    /// The passes of a micro-batch (indices into `pool`): with `share_prefix`, sequences that share
    /// a long prefix (at least half of each, e.g. the guard prompt) run together as one packed
    /// pass; any other sequence runs alone — packing a short shared prefix saves little and keeps
    /// every member's activations alive at once.
    fn passes(&self, pool: &[Example], batch: &[usize]) -> Vec<Vec<usize>> {
        if !self.cfg.share_prefix {
            return batch.iter().map(|&i| vec![i]).collect();
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &i in batch {
            let joins = groups.iter().position(|g| {
                let pair = [&pool[g[0]], &pool[i]];
                let shortest = pair.iter().map(|e| e.ids.len()).min().unwrap_or(0);
                let prefix = shared_prefix(&pair);
                prefix >= MIN_SHARED_PREFIX && 2 * prefix >= shortest
            });
            match joins {
                Some(g) => groups[g].push(i),
                None => groups.push(vec![i]),
            }
        }
        groups
    }

    /// The per-target-token losses of `exs` (one pass, [`Self::passes`] decides): packed over
    /// their shared prefix when there are several, else the one sequence's.
    fn losses(&self, exs: &[&Example]) -> Result<candle_core::Tensor> {
        let prefix = shared_prefix(exs);
        if exs.len() > 1 && prefix >= MIN_SHARED_PREFIX {
            let seqs: Vec<(&[u32], &[bool])> = exs.iter().map(|e| (e.ids.as_slice(), e.mask.as_slice())).collect();
            return self.model.packed_target_losses(&seqs, prefix).with_context(|| exs[0].origin.clone());
        }
        let mut parts = Vec::new();
        for e in exs {
            parts.push(self.model.target_losses(&e.ids, &e.mask).with_context(|| e.origin.clone())?);
        }
        Ok(candle_core::Tensor::cat(&parts, 0)?)
    }

    /// One optimizer step: returns (mean SFT loss per target token — NaN without an SFT term —,
    /// gradient norm, tokens, mean rho hinge when the step has a contrastive term).
    pub fn train_step(&mut self) -> Result<(f64, f32, usize, Option<f64>)> {
        let idx = if self.cfg.uses_sft() { self.step_examples(self.step) } else { Vec::new() };
        let total: usize = idx.iter().map(|&i| self.train[i].targets()).sum();
        // what the gradient is normalised by: the step's target weights (its target count when
        // nothing is emphasised)
        let weight = self.cfg.emphasis_weight;
        let total_weight: f64 = idx.iter().flat_map(|&i| self.train[i].target_weights(weight)).map(f64::from).sum();
        let mut grads: Vec<Vec<f32>> = self.lora.params.iter().map(|p| vec![0f32; p.value.len()]).collect();
        let mut loss_sum = 0f64;
        let mut tokens = 0;
        let accumulate = |g: &candle_core::backprop::GradStore,
                          params: &[super::lora::Param],
                          grads: &mut [Vec<f32>]|
         -> Result<()> {
            for (p, acc) in params.iter().zip(grads.iter_mut()) {
                let t = g.get(p.var.as_tensor()).with_context(|| format!("no gradient reached {}", p.name))?;
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            Ok(())
        };
        // one pass per sequence, or per group of a micro-batch packed over its shared prefix
        let passes: Vec<Vec<usize>> =
            idx.chunks(self.cfg.batch_size).flat_map(|batch| self.passes(&self.train, batch)).collect();
        let mut k = 0;
        for pass in passes {
            let exs: Vec<&Example> = pass.iter().map(|&i| &self.train[i]).collect();
            self.lora.dropout_seed.store(self.dropout_seed(self.step, k), std::sync::atomic::Ordering::Relaxed);
            k += pass.len();
            let prefix = shared_prefix(&exs);
            if exs.len() > 1 && prefix >= MIN_SHARED_PREFIX {
                self.packed_passes += 1;
                self.packed_saved_tokens += (prefix * (exs.len() - 1)) as u64;
            }
            let losses = self.losses(&exs)?;
            let sum = losses.sum_all()?;
            // the reported loss stays the plain mean per target token, emphasis or not
            loss_sum += sum.to_scalar::<f32>()? as f64;
            let objective = if exs.iter().any(|e| !e.emphasis.is_empty()) {
                let w: Vec<f32> = exs.iter().flat_map(|e| e.target_weights(weight)).collect();
                losses.mul(&candle_core::Tensor::new(w.as_slice(), losses.device())?)?.sum_all()?
            } else {
                sum
            };
            // normalised by the whole step's target weights, not a mean of per-sequence means
            let g = (objective / total_weight)?.backward()?;
            accumulate(&g, &self.lora.params, &mut grads)?;
            // tokens of the examples (what tok/s compares), not of the packed pass
            tokens += exs.iter().map(|e| e.ids.len()).sum::<usize>();
        }
        // the contrastive term: λ · mean over the step's pairs of the hinge
        let mut hinge = None;
        if let (true, Some(rho)) = (self.cfg.uses_rho(), &self.rho) {
            let picks = rho.pick(self.cfg.seed, self.step, self.cfg.rho_pairs);
            let scale = self.cfg.rho_lambda as f64 / picks.len() as f64;
            let mut sum = 0.0;
            for (j, (b, p)) in picks.into_iter().enumerate() {
                let (pos, neg) = &rho.pairs[b][p];
                self.lora
                    .dropout_seed
                    .store(self.dropout_seed(self.step, idx.len() + j), std::sync::atomic::Ordering::Relaxed);
                let (h, g) = super::rho::hinge(&self.model, pos, neg, self.cfg.rho_margin, scale)?;
                sum += h;
                if let Some(g) = g {
                    accumulate(&g, &self.lora.params, &mut grads)?;
                }
                tokens += pos.len() + neg.len();
            }
            hinge = Some(sum / self.cfg.rho_pairs as f64);
        }
        let norm = optim::clip(&mut grads, self.cfg.max_grad_norm);
        let lr = self.lr();
        let c = AdamWConfig { weight_decay: self.cfg.weight_decay, ..Default::default() };
        for ((p, g), m) in self.lora.params.iter_mut().zip(&grads).zip(self.moments.iter_mut()) {
            optim::adamw_step(&c, lr, self.step + 1, &mut p.value, g, m);
        }
        self.lora.sync()?;
        self.step += 1;
        let loss = if total > 0 { loss_sum / total as f64 } else { f64::NAN };
        Ok((loss, norm, tokens, hinge))
    }

    pub fn warmup_steps(&self) -> u64 {
        if self.cfg.warmup_steps > 0 {
            self.cfg.warmup_steps
        } else {
            (self.cfg.warmup_ratio as f64 * self.total_steps as f64).round() as u64
        }
    }

    /// The learning rate of the current step.
    pub fn lr(&self) -> f32 {
        optim::lr_at(self.step, self.total_steps, self.warmup_steps(), self.cfg.lr, self.cfg.schedule)
    }

    /// Mean loss per target token over the eval split (no dropout; packed like training, with
    /// branches that track no gradient so no graph outlives its pass).
    pub fn eval_loss(&mut self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        self.lora.attach_frozen(&mut self.model)?;
        let result = (|| -> Result<f64> {
            let (mut sum, mut n) = (0f64, 0usize);
            let eval: Vec<usize> = (0..self.eval.len()).collect();
            let size = if self.cfg.share_prefix { self.cfg.batch_size.max(EVAL_PACK) } else { 1 };
            for pass in eval.chunks(size).flat_map(|c| self.passes(&self.eval, c)) {
                let exs: Vec<&Example> = pass.iter().map(|&i| &self.eval[i]).collect();
                sum += self.losses(&exs)?.sum_all()?.to_scalar::<f32>()? as f64;
                n += exs.iter().map(|e| e.targets()).sum::<usize>();
            }
            Ok(sum / n as f64)
        })();
        self.lora.attach(&mut self.model, self.cfg.dropout)?;
        result.map(Some)
    }

    fn checkpoint(&self) -> Result<()> {
        let meta = HashMap::from([
            ("step".to_string(), self.step.to_string()),
            ("fingerprint".to_string(), self.fingerprint.clone()),
            ("format".to_string(), "vigil-train-checkpoint-1".to_string()),
        ]);
        checkpoint::save(&self.dir.join(checkpoint::FILE), &self.lora, &self.moments, meta)
    }

    /// Drops metric lines past the checkpoint's step (written after it, before an interruption).
    fn truncate_metrics(&self) -> Result<()> {
        let path = self.dir.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<Metrics>(l).is_ok_and(|m| m.step <= self.step))
            .map(|l| format!("{l}\n"))
            .collect();
        vigil_models::fsutil::write_atomic(&path, |f| f.write_all(kept.as_bytes()))?;
        Ok(())
    }

    pub fn metrics(&self) -> Vec<Metrics> {
        std::fs::read_to_string(self.dir.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Trains to the end (or `hooks.stop_after`); returns the final adapter path when finished.
    pub fn run(&mut self, mut hooks: Hooks) -> Result<Option<PathBuf>> {
        let start = Instant::now();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("metrics.jsonl"))
            .context("opening metrics.jsonl")?;
        // eval at the start of a fresh run: the baseline the curve falls from
        if self.step == 0 && self.cfg.eval_every > 0 {
            if let Some(e) = self.eval_loss()? {
                let m = Metrics {
                    step: 0,
                    epoch: 0.0,
                    loss: f64::NAN,
                    eval_loss: Some(e),
                    lr: 0.0,
                    grad_norm: 0.0,
                    tokens: 0,
                    tok_per_s: 0.0,
                    elapsed_s: 0.0,
                    hinge: None,
                };
                writeln!(log, "{}", serde_json::to_string(&m)?)?;
            }
        }
        // a run resumed at or past its stop trains nothing: it only redraws the curve to its step
        if hooks.stop_after.is_some_and(|s| self.step >= s) && self.step < self.total_steps {
            super::plot::loss_curve(&self.metrics(), &self.dir.join("loss.svg"))?;
            return Ok(None);
        }
        while self.step < self.total_steps {
            let t0 = Instant::now();
            let lr = self.lr();
            let (loss, grad_norm, tokens, hinge) = self.train_step()?;
            let dt = t0.elapsed().as_secs_f64();
            let eval_loss = if (self.cfg.eval_every > 0 && self.step.is_multiple_of(self.cfg.eval_every))
                || self.step == self.total_steps
            {
                self.eval_loss()?
            } else {
                None
            };
            let m = Metrics {
                step: self.step,
                epoch: self.step as f64 / self.steps_per_epoch as f64,
                loss,
                eval_loss,
                lr,
                grad_norm,
                tokens,
                tok_per_s: tokens as f64 / dt,
                elapsed_s: start.elapsed().as_secs_f64(),
                hinge,
            };
            if self.cfg.log_every > 0 && (self.step.is_multiple_of(self.cfg.log_every) || eval_loss.is_some()) {
                writeln!(log, "{}", serde_json::to_string(&m).unwrap_or_default())?;
            }
            if let Some(f) = hooks.on_step.as_mut() {
                f(&m, self.total_steps);
            }
            let stop = hooks.stop_after.is_some_and(|s| self.step >= s);
            if (self.cfg.checkpoint_every > 0 && self.step.is_multiple_of(self.cfg.checkpoint_every)) || stop {
                log.flush()?;
                self.checkpoint()?;
            }
            if stop && self.step < self.total_steps {
                super::plot::loss_curve(&self.metrics(), &self.dir.join("loss.svg"))?;
                return Ok(None);
            }
        }
        self.checkpoint()?;
        log.flush()?;
        super::plot::loss_curve(&self.metrics(), &self.dir.join("loss.svg"))?;
        let out = self.dir.join("adapter.gguf");
        self.lora.adapter("adapter.gguf").to_gguf(GgmlType::F32)?.write_file(&out)?;
        Ok(Some(out))
    }
}
