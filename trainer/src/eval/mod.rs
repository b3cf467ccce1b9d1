//! `vigil eval`: a guard model over labelled items → metrics, error analysis, baselines, reports.
//!
//! - [`metrics`]: accuracy, binary and per-policy P/R/F1, FP/FN rates, exact match, confusion,
//!   parse failures (counted as errors), tag compliance, reasoning length, speed;
//! - [`report`]: Markdown, one self-contained HTML file with plots, and JSON; `--compare`;
//! - [`paired`]: two runs on the same items, item by item (McNemar, paired bootstrap).

pub mod guardreasoner;
pub mod metrics;
pub mod paired;
pub mod probe;
pub mod report;
pub mod stress;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vigil_models::guard::{GuardRequest, Label, OutputFormat, Policy};
use vigil_runtime::{ClassifyOptions, Guard};

use crate::data::sources::keyword_policies;
use metrics::Record;

/// A labelled item to evaluate on.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    pub id: String,
    pub text: String,
    pub response: Option<String>,
    pub label: Label,
    pub policies: Vec<Policy>,
}

/// Reads `{text, response?, label: "safe"|"unsafe", policies: [...], id?}` lines (the guard schema's
/// other fields are ignored). Every bad line is reported, as `file:line: reason`.
pub fn read_items(path: &Path) -> Result<Vec<EvalItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match item(line) {
            Ok(mut it) => {
                if it.id.is_empty() {
                    it.id = format!("line-{}", i + 1);
                }
                items.push(it)
            }
            Err(e) => bad.push(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    if !bad.is_empty() {
        bail!("{} bad lines:\n{}", bad.len(), bad.join("\n"));
    }
    Ok(items)
}

fn item(line: &str) -> Result<EvalItem> {
    let v: Value = serde_json::from_str(line).context("not JSON")?;
    let o = v.as_object().context("not a JSON object")?;
    let text = o.get("text").and_then(Value::as_str).context("no string `text`")?.to_string();
    let response = match o.get("response") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => bail!("`response` is not a string"),
    };
    let label = match o.get("label").and_then(Value::as_str) {
        Some("safe") => Label::Safe,
        Some("unsafe") => Label::Unsafe,
        other => bail!("`label` is {other:?}, expected \"safe\" or \"unsafe\""),
    };
    let mut policies = Vec::new();
    for p in o.get("policies").and_then(Value::as_array).map(|a| a.as_slice()).unwrap_or(&[]) {
        let name = p.as_str().context("a policy is not a string")?;
        policies.push(
            Policy::ALL.into_iter().find(|q| q.name() == name).with_context(|| format!("unknown policy `{name}`"))?,
        );
    }
    if label == Label::Unsafe && policies.is_empty() {
        bail!("label is unsafe but `policies` is empty");
    }
    let id = o.get("id").and_then(Value::as_str).unwrap_or("").to_string();
    Ok(EvalItem { id, text, response, label, policies })
}

/// Whether dual-stream output has `<think>`, `<proof>` and `<answer>`, closed and in order.
pub fn tags_in_order(raw: &str) -> bool {
    let mut at = 0;
    for t in ["<think>", "</think>", "<proof>", "</proof>", "<answer>", "</answer>"] {
        match raw[at..].find(t) {
            Some(i) => at += i + t.len(),
            None => return false,
        }
    }
    true
}

/// Runs the guard over the items (greedy, no forced verdict: format failures count), `lanes`
/// of them side by side (see [`Guard::classify_batch`]; the verdicts do not depend on it).
pub fn run_model(
    guard: &mut Guard,
    items: &[EvalItem],
    format: OutputFormat,
    max_tokens: usize,
    lanes: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Record>> {
    let opts = ClassifyOptions { max_tokens, force_verdict: false, ..ClassifyOptions::default() };
    let reqs: Vec<GuardRequest> = items
        .iter()
        .map(|it| GuardRequest::new(it.text.clone()).with_response(it.response.clone()).with_format(format))
        .collect();
    let mut finished = 0;
    let wall = std::time::Instant::now();
    let outcomes = guard.classify_batch(&reqs, &opts, lanes, |_| {
        finished += 1;
        progress(finished)
    })?;
    let wall = wall.elapsed().as_secs_f64();
    // items that ran side by side overlap in time: scale their latencies into shares of the run's
    // wall time, so that the shares add up to it and tokens / Σ seconds is the run's throughput
    let latency = |o: &vigil_runtime::Outcome| (o.stats.prefill_ms + o.stats.decode_ms) / 1000.0;
    let total: f64 = outcomes.iter().flatten().map(latency).sum();
    let share = if total > 0.0 { wall / total } else { 0.0 };
    let mut out = Vec::with_capacity(items.len());
    for (it, o) in items.iter().zip(outcomes) {
        let o = o.with_context(|| format!("item {}", it.id))?;
        let seconds = latency(&o) * share;
        let (pred, pred_policies, reasoning) = match &o.verdict {
            Ok(v) => (Some(v.label), v.policies.clone(), v.reasoning.clone()),
            Err(_) => (None, vec![], String::new()),
        };
        out.push(Record {
            id: it.id.clone(),
            text: it.text.clone(),
            response: it.response.clone(),
            gold: it.label,
            gold_policies: it.policies.clone(),
            pred,
            pred_policies,
            reasoning,
            tags_ok: (format == OutputFormat::DualStream).then(|| tags_in_order(&o.raw)),
            raw: o.raw,
            generated_tokens: o.stats.generated_tokens,
            seconds,
        });
    }
    Ok(out)
}

/// The keyword baseline: UNSAFE with the policies whose keyword rules fire on the text (and
/// response). It reasons about nothing, which is what the hard negatives are for. (Some source
/// items were labelled with the same rules, which flatters it there.)
pub fn keyword_baseline(items: &[EvalItem]) -> Vec<Record> {
    items
        .iter()
        .map(|it| {
            let text = format!("{} {}", it.text, it.response.as_deref().unwrap_or(""));
            let hits = keyword_policies(&text);
            let mut ps: Vec<Policy> = hits.iter().map(|(p, _)| *p).collect();
            ps.sort();
            Record {
                id: it.id.clone(),
                text: it.text.clone(),
                response: it.response.clone(),
                gold: it.label,
                gold_policies: it.policies.clone(),
                pred: Some(if ps.is_empty() { Label::Safe } else { Label::Unsafe }),
                pred_policies: ps,
                reasoning: hits.iter().map(|(p, w)| format!("\"{w}\" → {p}")).collect::<Vec<_>>().join("; "),
                raw: String::new(),
                tags_ok: None,
                generated_tokens: 0,
                seconds: 0.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_must_be_closed_and_ordered() {
        assert!(super::tags_in_order("<think>a</think>\n<proof>b</proof><answer>c</answer>"));
        assert!(!super::tags_in_order("<think>a</think><answer>c</answer><proof>b</proof>"));
        assert!(!super::tags_in_order("<think>a</think><proof>b</proof><answer>c"));
    }

    #[test]
    fn bad_lines_are_all_named() {
        let dir = vigil_models::testing::TempDir::new("eval-items");
        let f = dir.path().join("e.jsonl");
        std::fs::write(
            &f,
            "{\"text\": \"a\", \"label\": \"safe\"}\n{\"text\": \"b\", \"label\": \"bad\"}\n\n{\"label\": \"safe\"}\n{\"text\": \"c\", \"label\": \"unsafe\", \"policies\": [\"spam\"]}\n",
        )
        .unwrap();
        let e = format!("{:#}", super::read_items(&f).unwrap_err());
        assert!(e.contains("3 bad lines"), "{e}");
        assert!(e.contains("e.jsonl:2: `label` is Some(\"bad\")"), "{e}");
        assert!(e.contains("e.jsonl:4: no string `text`"), "{e}");
        assert!(e.contains("e.jsonl:5: unknown policy `spam`"), "{e}");
    }
}
