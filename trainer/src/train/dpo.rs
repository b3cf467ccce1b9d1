//! Hard-sample DPO, the third stage (GuardReasoner's HS-DPO):
//! - **mining**: k sampled answers per training item from the R-SFT model; an item is hard when
//!   1 … k−1 of them give the right verdict (label and policy set); the longest right answer is
//!   `chosen`, the longest wrong one `rejected`; weight = (#wrong − #right) rescaled from
//!   [−(k−2), k−2] to [0.8, 1.2]. Append-only and resumable (easy items go to `OUT.easy.jsonl`).
//!   With `Chosen::Gold` the item's own reasoning trace (the R-SFT target) is the right answer: an
//!   item is hard when any of its k answers (k = 1: the greedy one) is wrong, that answer is
//!   `rejected`, and the weight counts the gold trace as one more right answer. It needs a single
//!   generation per item instead of k, so a CPU can mine the model's mistakes in minutes.
//! - **loss** per pair: w · (−log σ(β · ((π_c − ref_c) − (π_r − ref_r))) + α · NLL(chosen)), with
//!   π and ref the answer's log-probability summed over its tokens (end of turn included) under the
//!   policy and the reference, NLL the chosen answer's mean token cross-entropy. The reference is
//!   the R-SFT model itself (its adapter applied, frozen): its log-probs are computed once and
//!   cached in the run directory. The policy starts from the R-SFT adapter.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use vigil_models::chat::{ChatTemplate, Message};
use vigil_models::cpu::Llama;
use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::guard::{self, GuardRequest, Mode, OutputFormat};
use vigil_models::lora::LoraAdapter;
use vigil_models::tokenizer::Tokenizer;

use super::data::Example;
use super::lora::LoraParams;
use super::optim::{self, AdamWConfig, Moments};
use crate::data::Item;

/// One mined preference pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoPair {
    pub id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub chosen: String,
    pub rejected: String,
    pub weight: f32,
    /// Right answers out of `k` samples.
    pub correct: usize,
    pub k: usize,
}

/// Whether an answer states the item's verdict (label and policy set).
pub fn is_correct(item: &Item, answer: &str) -> bool {
    match guard::parse(answer, OutputFormat::Rsft, Mode::AllPolicies) {
        Ok(v) => v.label == item.label && v.policies == guard::format::canonical(&item.policies),
        Err(_) => false,
    }
}

/// (#wrong − #right) rescaled from [−(k−2), k−2] to [0.8, 1.2] (1.0 when k ≤ 2).
pub fn weight(correct: usize, k: usize) -> f32 {
    if k <= 2 {
        return 1.0;
    }
    let x = k as f32 - 2.0 * correct as f32; // #wrong − #right
    let span = k as f32 - 2.0;
    0.8 + 0.4 * (x + span) / (2.0 * span)
}

/// The pair of a hard item: the longest right and the longest wrong answer; `None` when all are
/// right or all wrong.
pub fn hard_pair(item: &Item, answers: &[String]) -> Option<DpoPair> {
    let marks: Vec<bool> = answers.iter().map(|a| is_correct(item, a)).collect();
    let correct = marks.iter().filter(|&&m| m).count();
    if correct == 0 || correct == answers.len() {
        return None;
    }
    let longest = |want: bool| {
        answers
            .iter()
            .zip(&marks)
            .filter(|(_, &m)| m == want)
            .map(|(a, _)| a)
            .max_by_key(|a| a.chars().count())
            .unwrap()
            .clone()
    };
    Some(DpoPair {
        id: item.id.clone(),
        text: item.text.clone(),
        response: item.response.clone(),
        chosen: longest(true),
        rejected: longest(false),
        weight: weight(correct, answers.len()),
        correct,
        k: answers.len(),
    })
}

/// Where a pair's right answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The longest right one of the k sampled answers (GuardReasoner's HS-DPO).
    Sampled,
    /// The item's own reasoning trace, rendered as the guard answer the SFT stage trained on.
    Gold,
}

/// The item's reasoning trace as the all-policies R-SFT answer.
pub fn gold_answer(item: &Item) -> String {
    guard::format::render(OutputFormat::Rsft, Mode::AllPolicies, item.label, &item.policies, &item.reasoning, None)
}

/// The pair of an item the model got wrong at least once: the gold answer against the longest
/// wrong one; `None` when every answer is right.
pub fn gold_pair(item: &Item, answers: &[String]) -> Option<DpoPair> {
    let correct = answers.iter().filter(|a| is_correct(item, a)).count();
    let rejected = answers.iter().filter(|a| !is_correct(item, a)).max_by_key(|a| a.chars().count())?;
    Some(DpoPair {
        id: item.id.clone(),
        text: item.text.clone(),
        response: item.response.clone(),
        chosen: gold_answer(item),
        rejected: rejected.clone(),
        weight: weight(correct + 1, answers.len() + 1),
        correct,
        k: answers.len(),
    })
}

/// `OUT.easy.jsonl` next to `OUT`: items whose k answers were all right or all wrong.
pub fn easy_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    out.with_file_name(format!("{}.easy.jsonl", name.strip_suffix(".jsonl").unwrap_or(&name)))
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct MineTally {
    pub hard: usize,
    pub easy: usize,
    pub skipped: usize,
}

/// Mines the items not yet in `out` / `OUT.easy.jsonl`; `sample(item, j)` gives the j-th answer.
pub fn mine(
    items: &[Item],
    k: usize,
    chosen: Chosen,
    out: &Path,
    mut sample: impl FnMut(&Item, usize) -> Result<String>,
    mut progress: impl FnMut(&MineTally),
) -> Result<MineTally> {
    if k < 2 && chosen == Chosen::Sampled {
        bail!("k = {k}: hard samples need at least two answers per item (or the gold trace as the right one)");
    }
    if k == 0 {
        bail!("k = 0: mining needs at least one answer per item");
    }
    let easy = easy_path(out);
    let mut done = crate::data::done_ids(out)?;
    done.extend(crate::data::done_ids(&easy)?);
    let mut t = MineTally::default();
    for item in items {
        if done.contains(&item.id) {
            t.skipped += 1;
            continue;
        }
        let answers: Vec<String> =
            (0..k).map(|j| sample(item, j)).collect::<Result<_>>().with_context(|| format!("sampling {}", item.id))?;
        let pair = match chosen {
            Chosen::Sampled => hard_pair(item, &answers),
            Chosen::Gold => gold_pair(item, &answers),
        };
        match pair {
            Some(p) => {
                crate::data::append_line(out, &p)?;
                t.hard += 1;
            }
            None => {
                let correct = answers.iter().filter(|a| is_correct(item, a)).count();
                crate::data::append_line(&easy, &serde_json::json!({"id": item.id, "correct": correct, "k": k}))?;
                t.easy += 1;
            }
        }
        progress(&t);
    }
    Ok(t)
}

// ---------- training ----------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f32,
    pub alpha: f32,
    pub lr: f32,
    pub epochs: f32,
    /// Cap on steps (0 = from epochs).
    pub max_steps: u64,
    pub pairs_per_step: usize,
    pub warmup_ratio: f32,
    pub max_grad_norm: f32,
    pub max_len: usize,
    pub seed: u64,
    /// How the frozen base weights are held (as `train`'s `base_weights`): the reference and the
    /// policy both run on them, so the cached reference log-probs are keyed by it too.
    pub base_weights: String,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            beta: 0.01,
            alpha: 2.0,
            lr: 5e-6,
            epochs: 1.0,
            max_steps: 0,
            pairs_per_step: 4,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            max_len: 1024,
            seed: 42,
            base_weights: "bf16".into(),
        }
    }
}

/// A pair as token ids: the guard prompt with the chosen / rejected answer.
pub struct EncodedPair {
    pub id: String,
    pub chosen: Example,
    pub rejected: Example,
    pub weight: f32,
}

pub fn encode(pairs: &[DpoPair], tok: &Tokenizer, template: ChatTemplate, max_len: usize) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .map(|p| {
            let enc = |answer: &str| -> Result<Example> {
                let mut msgs = GuardRequest::new(p.text.clone()).with_response(p.response.clone()).messages();
                msgs.push(Message::assistant(answer.to_string()));
                let e = template.encode(tok, &msgs, false)?;
                if e.ids.len() > max_len {
                    bail!("{} tokens, longer than max_len {max_len}", e.ids.len());
                }
                Ok(Example::new(p.id.clone(), e.ids, e.mask))
            };
            Ok(EncodedPair {
                id: p.id.clone(),
                chosen: enc(&p.chosen).with_context(|| format!("pair {} (chosen)", p.id))?,
                rejected: enc(&p.rejected).with_context(|| format!("pair {} (rejected)", p.id))?,
                weight: p.weight,
            })
        })
        .collect()
}

/// A pair's answer log-probs under `model` as tensors: (summed log-prob of the chosen answer,
/// its mean token CE, summed log-prob of the rejected answer). Both sequences run as one packed
/// pass, so the prompt they share is computed once.
fn pair_logps(model: &Llama, p: &EncodedPair) -> Result<(Tensor, Tensor, Tensor)> {
    let (c, r) = (&p.chosen, &p.rejected);
    let prefix = super::run::shared_prefix(&[c, r]);
    let losses = if prefix > 0 {
        model.packed_target_losses(&[(&c.ids, &c.mask), (&r.ids, &r.mask)], prefix)?
    } else {
        Tensor::cat(&[model.target_losses(&c.ids, &c.mask)?, model.target_losses(&r.ids, &r.mask)?], 0)?
    };
    // one loss per target token, the chosen answer's first
    let n_chosen = c.mask.iter().skip(1).filter(|&&m| m).count();
    let n_rejected = losses.dim(0)? - n_chosen;
    let (lc, lr) = (losses.narrow(0, 0, n_chosen)?, losses.narrow(0, n_chosen, n_rejected)?);
    Ok((lc.sum_all()?.neg()?, lc.mean_all()?, lr.sum_all()?.neg()?))
}

/// −log σ(x), stable for any sign: relu(−x) + log(1 + exp(−|x|)).
fn neg_log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let relu = x.neg()?.relu()?;
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((relu + soft)?)
}

/// One line of the DPO run's `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpoMetrics {
    pub step: u64,
    pub loss: f64,
    /// Mean of β-free log-ratio margins (π_c − ref_c) − (π_r − ref_r) over the step's pairs.
    pub margin: f64,
    /// Share of the step's pairs with a positive margin.
    pub accuracy: f64,
    pub lr: f32,
    pub grad_norm: f32,
}

pub struct Dpo {
    pub cfg: DpoConfig,
    pub dir: PathBuf,
    pub model: Llama,
    pub lora: LoraParams,
    moments: Vec<Moments>,
    pub pairs: Vec<EncodedPair>,
    /// Reference log-probs (chosen, rejected) per pair.
    pub reference: Vec<(f64, f64)>,
    /// How many reference log-probs this process computed (0 when all came from the cache).
    pub reference_computed: usize,
    pub step: u64,
    pub total_steps: u64,
}

const REFERENCE_FILE: &str = "reference.json";

impl Dpo {
    /// Loads the base model, computes (or reads) the reference log-probs with the R-SFT adapter,
    /// then makes that adapter trainable.
    pub fn prepare(
        cfg: DpoConfig,
        base: &Path,
        sft_adapter: &LoraAdapter,
        pairs: &[DpoPair],
        dir: &Path,
    ) -> Result<Self> {
        if pairs.is_empty() {
            bail!("no preference pairs to train on");
        }
        let g = Gguf::open(base).with_context(|| format!("loading the base model {}", base.display()))?;
        let tok = Tokenizer::from_gguf(&g)?;
        let template = ChatTemplate::detect(&g)?;
        let enc = encode(pairs, &tok, template, cfg.max_len)?;
        let mut model = Llama::load(&g, super::config::weight_mode(&cfg.base_weights)?, &Device::Cpu)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        // the R-SFT adapter, trainable from here on
        let lora = LoraParams::from_adapter(&model, sft_adapter)?;
        lora.attach(&mut model, 0.0)?;

        // reference: the R-SFT model before any step, run through the very ops the policy's
        // training passes use (with bf16 base weights, the no-gradient ops round differently
        // enough to shift a margin by ~0.1); cached by base weights, pair id and answer tokens
        let key = |p: &EncodedPair| {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(cfg.base_weights.as_bytes());
            h.update(p.id.as_bytes());
            for id in p.chosen.ids.iter().chain([u32::MAX].iter()).chain(&p.rejected.ids) {
                h.update(id.to_le_bytes());
            }
            hex::encode(&h.finalize()[..12])
        };
        let cache_path = dir.join(REFERENCE_FILE);
        let mut cache: HashMap<String, (f64, f64)> =
            std::fs::read_to_string(&cache_path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        let mut computed = 0;
        for p in &enc {
            if cache.contains_key(&key(p)) {
                continue;
            }
            let (c, _, r) = pair_logps(&model, p)?;
            cache.insert(key(p), (c.to_scalar::<f32>()? as f64, r.to_scalar::<f32>()? as f64));
            computed += 1;
        }
        if computed > 0 {
            crate::data::write_file(&cache_path, serde_json::to_string(&cache)?.as_bytes())?;
        }
        let reference = enc.iter().map(|p| cache[&key(p)]).collect();

        let moments = lora.params.iter().map(|p| Moments::new(p.value.len(), false)).collect();
        let per_epoch = enc.len().div_ceil(cfg.pairs_per_step) as u64;
        let total_steps = if cfg.max_steps > 0 {
            cfg.max_steps
        } else {
            ((cfg.epochs as f64 * per_epoch as f64).ceil() as u64).max(1)
        };
        Ok(Dpo {
            cfg,
            dir: dir.to_path_buf(),
            model,
            lora,
            moments,
            pairs: enc,
            reference,
            reference_computed: computed,
            step: 0,
            total_steps,
        })
    }

    /// The pairs of a step: each epoch a seeded shuffle, cut into steps.
    fn step_pairs(&self, step: u64) -> Vec<usize> {
        let n = self.pairs.len();
        let per_epoch = n.div_ceil(self.cfg.pairs_per_step) as u64;
        let (epoch, within) = (step / per_epoch, (step % per_epoch) as usize);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.cfg.seed.wrapping_add(epoch)));
        order.chunks(self.cfg.pairs_per_step).nth(within).unwrap().to_vec()
    }

    /// Log-ratio margins (π_c − ref_c) − (π_r − ref_r) of every pair under the current policy.
    pub fn margins(&self) -> Result<Vec<f64>> {
        self.pairs
            .iter()
            .zip(&self.reference)
            .map(|(p, (rc, rr))| {
                let (c, _, r) = pair_logps(&self.model, p)?;
                Ok((c.to_scalar::<f32>()? as f64 - rc) - (r.to_scalar::<f32>()? as f64 - rr))
            })
            .collect()
    }

    /// Pair `i`'s weighted loss (a scalar tensor on the LoRA graph) and its log-ratio margin.
    pub fn pair_loss(&self, i: usize) -> Result<(Tensor, f64)> {
        let p = &self.pairs[i];
        let (rc, rr) = self.reference[i];
        let (pc, nll, pr) = pair_logps(&self.model, p)?;
        let margin = ((pc - rc)? - (pr - rr)?)?;
        let m = margin.to_scalar::<f32>()? as f64;
        let dpo = neg_log_sigmoid(&(margin * self.cfg.beta as f64)?)?;
        Ok((((dpo + (nll * self.cfg.alpha as f64)?)? * p.weight as f64)?, m))
    }

    pub fn train_step(&mut self) -> Result<DpoMetrics> {
        let idx = self.step_pairs(self.step);
        let mut grads: Vec<Vec<f32>> = self.lora.params.iter().map(|p| vec![0f32; p.value.len()]).collect();
        let (mut loss_sum, mut margin_sum, mut right) = (0.0, 0.0, 0usize);
        for &i in &idx {
            let (loss, m) = self.pair_loss(i)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            margin_sum += m;
            right += (m > 0.0) as usize;
            let g = (loss / idx.len() as f64)?.backward()?;
            for (param, acc) in self.lora.params.iter().zip(grads.iter_mut()) {
                let t = g.get(param.var.as_tensor()).with_context(|| format!("no gradient reached {}", param.name))?;
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
        }
        let grad_norm = optim::clip(&mut grads, self.cfg.max_grad_norm);
        let warmup = (self.cfg.warmup_ratio as f64 * self.total_steps as f64).round() as u64;
        let lr = optim::lr_at(self.step, self.total_steps, warmup, self.cfg.lr, optim::Decay::Linear);
        let c = AdamWConfig::default();
        for ((p, g), m) in self.lora.params.iter_mut().zip(&grads).zip(self.moments.iter_mut()) {
            optim::adamw_step(&c, lr, self.step + 1, &mut p.value, g, m);
        }
        self.lora.sync()?;
        self.step += 1;
        let n = idx.len() as f64;
        Ok(DpoMetrics {
            step: self.step,
            loss: loss_sum / n,
            margin: margin_sum / n,
            accuracy: right as f64 / n,
            lr,
            grad_norm,
        })
    }

    /// Trains every step, writing `metrics.jsonl` and, at the end, `adapter.gguf`.
    pub fn run(&mut self, mut on_step: impl FnMut(&DpoMetrics)) -> Result<PathBuf> {
        let mut lines = String::new();
        while self.step < self.total_steps {
            let m = self.train_step()?;
            lines.push_str(&serde_json::to_string(&m)?);
            lines.push('\n');
            crate::data::write_file(&self.dir.join("metrics.jsonl"), lines.as_bytes())?;
            on_step(&m);
        }
        let out = self.dir.join("adapter.gguf");
        self.lora.adapter("adapter.gguf").to_gguf(GgmlType::F32)?.write_file(&out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_models::guard::{Label, Policy};

    fn item(label: Label, policies: Vec<Policy>) -> Item {
        Item {
            id: "i".into(),
            text: "t".into(),
            response: None,
            label,
            policies,
            reasoning: vec![],
            source: "s".into(),
            licence: "l".into(),
            kind: "k".into(),
            group: "g".into(),
        }
    }

    #[test]
    fn weights_span_point_eight_to_one_point_two() {
        assert_eq!(weight(1, 4), 1.2); // 3 wrong − 1 right = 2
        assert_eq!(weight(2, 4), 1.0);
        assert_eq!(weight(3, 4), 0.8);
        assert_eq!(weight(1, 2), 1.0);
    }

    #[test]
    fn hard_pairs_take_the_longest_right_and_wrong_answers() {
        let it = item(Label::Unsafe, vec![Policy::Violence]);
        let ans = |steps: &str, verdict: &str| format!("Reasoning:\n{steps}\n\nClassification: {verdict}");
        let answers = vec![
            ans("Step 1: short.", "UNSAFE\nViolated policies: violence"),
            ans("Step 1: a much longer right answer here.", "UNSAFE\nViolated policies: violence"),
            ans("Step 1: wrong.", "SAFE\nViolated policies: none"),
            ans("Step 1: wrong policy, and longer.", "UNSAFE\nViolated policies: illegal"),
        ];
        let p = hard_pair(&it, &answers).unwrap();
        assert_eq!((p.correct, p.k, p.weight), (2, 4, 1.0));
        assert!(p.chosen.contains("much longer right") && p.rejected.contains("wrong policy"));
        assert!(hard_pair(&it, &answers[..2]).is_none(), "all right is easy");
        assert!(hard_pair(&it, &answers[2..]).is_none(), "all wrong is easy");
    }
}
