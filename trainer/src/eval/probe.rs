//! `vigil probe`: behavioural confidence probes, teacher-forced (no generation).
//!
//! Definition (also printed in every probe report): for a text, tokenize it as plain text (no chat
//! template), run the model (with the adapter, if any) over all its tokens, and take the mean
//! log-probability of tokens 2…n given their prefixes: `lp(text) = −mean CE`. For each behaviour:
//! - **AUC**: Mann-Whitney U over all (positive, negative) combinations of the behaviour's pairs,
//!   `P(lp(pos) > lp(neg)) + ½·P(tie)` — 1.0 when every positive text is more likely than every
//!   negative one, 0.5 at chance;
//! - **mean gap**: the mean over pairs of `lp(pos) − lp(neg)` (nats per token).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vigil_models::cpu::Llama;
use vigil_models::tokenizer::Tokenizer;

use crate::data::probes::ProbePair;

pub const DEFINITION: &str = "lp(text) = mean log-probability of each token of the text given the tokens before it (plain text, no chat template, BOS prepended when the tokenizer has one; the adapter applied). AUC = Mann-Whitney P(lp(positive) > lp(negative)) + 0.5 P(tie) over all positive x negative combinations of a behaviour; gap = mean over pairs of lp(positive) - lp(negative), nats per token.";

/// Mean token cross-entropy of `text`: the quantity rho-guided training's hinge compares, on the
/// same tokens (`train::rho`).
pub fn text_ce(model: &Llama, tok: &Tokenizer, text: &str, max_tokens: usize) -> Result<f64> {
    let ids = crate::train::rho::text_ids(tok, text, max_tokens)?;
    Ok(crate::train::rho::text_ce(model, &ids)?.to_scalar::<f32>().context("reading the loss")? as f64)
}

/// Mann-Whitney AUC of `pos` over `neg` (0.5 when either is empty).
pub fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return 0.5;
    }
    let mut wins = 0.0;
    for p in pos {
        for n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviourScore {
    pub pairs: usize,
    pub auc: f64,
    pub mean_gap: f64,
    /// Share of pairs whose positive text is the more likely one.
    pub pair_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairScore {
    pub id: String,
    pub behavior: String,
    pub lp_positive: f64,
    pub lp_negative: f64,
}

pub fn score(pairs: &[PairScore]) -> BTreeMap<String, BehaviourScore> {
    let mut by: BTreeMap<String, Vec<&PairScore>> = BTreeMap::new();
    for p in pairs {
        by.entry(p.behavior.clone()).or_default().push(p);
    }
    by.into_iter()
        .map(|(b, ps)| {
            let pos: Vec<f64> = ps.iter().map(|p| p.lp_positive).collect();
            let neg: Vec<f64> = ps.iter().map(|p| p.lp_negative).collect();
            let gap = ps.iter().map(|p| p.lp_positive - p.lp_negative).sum::<f64>() / ps.len() as f64;
            let acc = ps.iter().filter(|p| p.lp_positive > p.lp_negative).count() as f64 / ps.len() as f64;
            (b, BehaviourScore { pairs: ps.len(), auc: auc(&pos, &neg), mean_gap: gap, pair_accuracy: acc })
        })
        .collect()
}

/// Scores every pair (positive and negative text) under the model.
pub fn run(
    model: &Llama,
    tok: &Tokenizer,
    pairs: &[ProbePair],
    max_tokens: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<PairScore>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let pos =
            -text_ce(model, tok, &p.positive, max_tokens).with_context(|| format!("probe {} (positive)", p.id))?;
        let neg =
            -text_ce(model, tok, &p.negative, max_tokens).with_context(|| format!("probe {} (negative)", p.id))?;
        out.push(PairScore { id: p.id.clone(), behavior: p.behavior.clone(), lp_positive: pos, lp_negative: neg });
        progress(i + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        // 3 > 2, 3 = 3 (a half), 1 < 2, 1 < 3
        assert_eq!(auc(&[3.0, 1.0], &[2.0, 3.0]), (1.0 + 0.5 + 0.0 + 0.0) / 4.0);
        assert_eq!(auc(&[], &[1.0]), 0.5);
        let s = score(&[
            PairScore { id: "a".into(), behavior: "b".into(), lp_positive: -1.0, lp_negative: -2.0 },
            PairScore { id: "c".into(), behavior: "b".into(), lp_positive: -3.0, lp_negative: -2.5 },
        ]);
        let b = &s["b"];
        assert_eq!(b.pairs, 2);
        assert!((b.mean_gap - 0.25).abs() < 1e-12);
        assert_eq!(b.pair_accuracy, 0.5);
        assert_eq!(b.auc, 0.5); // -1 > -2, -1 > -2.5, -3 < both
    }
}
