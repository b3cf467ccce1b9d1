//! Rho-guided SFT: L = L_SFT + λ · mean over the step's probe pairs of max(0, CE(x⁺) − CE(x⁻) + γ),
//! CE(x) = mean token cross-entropy of the text (plain text, BOS first when the tokenizer has one —
//! the same tokens `vigil probe` scores). Pairs are sampled per step, one per behaviour, from a
//! generator seeded by (seed, step), so resumed runs sample the same pairs.
//!
//! Conditions (the seed note's ablation): `sft-only` (λ ignored), `rho-guided`, `contrastive-only`
//! (no SFT term), `shuffled-pairs` (negatives permuted across pairs once, before training).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use vigil_models::cpu::Llama;
use vigil_models::tokenizer::Tokenizer;

use crate::data::probes::ProbePair;

pub const CONDITIONS: [&str; 4] = ["sft-only", "rho-guided", "contrastive-only", "shuffled-pairs"];

/// Token ids of a probe text: BOS (when the tokenizer has one), then the text, at most `max_len`.
pub fn text_ids(tok: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    if let Some(b) = tok.bos() {
        ids.push(b);
    }
    ids.extend(tok.encode(text)?);
    ids.truncate(max_len.max(2));
    if ids.len() < 2 {
        bail!("{text:?} is shorter than two tokens");
    }
    Ok(ids)
}

/// Mean token cross-entropy of a text (every token after the first is a target) → scalar tensor.
pub fn text_ce(model: &Llama, ids: &[u32]) -> Result<candle_core::Tensor> {
    let mask: Vec<bool> = (0..ids.len()).map(|i| i > 0).collect();
    Ok(model.target_losses(ids, &mask)?.mean_all()?)
}

/// A probe pair as token ids: (positive, negative).
pub type IdPair = (Vec<u32>, Vec<u32>);

/// Encoded probe pairs by behaviour.
#[derive(Debug, Clone)]
pub struct ProbeSet {
    pub behaviors: Vec<String>,
    /// Per behaviour: (positive ids, negative ids).
    pub pairs: Vec<Vec<IdPair>>,
}

impl ProbeSet {
    pub fn load(
        files: &[PathBuf],
        tok: &Tokenizer,
        max_len: usize,
        shuffle_negatives: bool,
        seed: u64,
    ) -> Result<Self> {
        let mut by: BTreeMap<String, Vec<IdPair>> = BTreeMap::new();
        for f in files {
            let pairs: Vec<ProbePair> =
                crate::data::read_jsonl(f).with_context(|| format!("probe pairs {}", f.display()))?;
            for p in pairs {
                let pos = text_ids(tok, &p.positive, max_len).with_context(|| format!("{}: {}", f.display(), p.id))?;
                let neg = text_ids(tok, &p.negative, max_len).with_context(|| format!("{}: {}", f.display(), p.id))?;
                by.entry(p.behavior).or_default().push((pos, neg));
            }
        }
        if by.is_empty() {
            bail!("rho_data holds no probe pairs");
        }
        if shuffle_negatives {
            // positives and negatives shuffled across pairs: a permutation of all negatives
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5a5a_5a5a);
            let mut negs: Vec<Vec<u32>> = by.values().flatten().map(|p| p.1.clone()).collect();
            negs.shuffle(&mut rng);
            let mut it = negs.into_iter();
            for v in by.values_mut() {
                for p in v.iter_mut() {
                    p.1 = it.next().unwrap();
                }
            }
        }
        let (behaviors, pairs) = by.into_iter().unzip();
        Ok(ProbeSet { behaviors, pairs })
    }

    /// The step's pairs: `n` behaviours (all, in a shuffled order, repeated if n exceeds them),
    /// one uniformly drawn pair each.
    pub fn pick(&self, seed: u64, step: u64, n: usize) -> Vec<(usize, usize)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ step);
        let mut order: Vec<usize> = (0..self.behaviors.len()).collect();
        order.shuffle(&mut rng);
        (0..n)
            .map(|i| {
                let b = order[i % order.len()];
                (b, rand::Rng::random_range(&mut rng, 0..self.pairs[b].len()))
            })
            .collect()
    }
}

/// One pair's hinge and, when it is active, the gradients of `scale · (CE(x⁺) − CE(x⁻))`.
/// An inactive hinge (CE(x⁻) − CE(x⁺) ≥ γ) contributes exactly nothing: no backward pass at all.
pub fn hinge(model: &Llama, pos: &[u32], neg: &[u32], margin: f32, scale: f64) -> Result<(f64, Option<GradStore>)> {
    let ce_pos = text_ce(model, pos)?;
    let ce_neg = text_ce(model, neg)?;
    let diff = (ce_pos - ce_neg)?;
    let h = diff.to_scalar::<f32>()? as f64 + margin as f64;
    if h <= 0.0 {
        return Ok((0.0, None));
    }
    Ok((h, Some((diff * scale)?.backward()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_one_per_behaviour_and_reproducible() {
        let set = ProbeSet {
            behaviors: vec!["a".into(), "b".into(), "c".into()],
            pairs: vec![vec![(vec![1], vec![2]); 5]; 3],
        };
        let p = set.pick(42, 7, 3);
        let mut bs: Vec<usize> = p.iter().map(|x| x.0).collect();
        bs.sort();
        assert_eq!(bs, vec![0, 1, 2]);
        assert_eq!(p, set.pick(42, 7, 3));
        assert!((0..20).any(|s| set.pick(42, s, 3) != p));
    }
}
