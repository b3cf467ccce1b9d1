//! `vigil data validate`: every problem of every line, as `file:line: reason`.
//!
//! A line must be a guard item (`text`, `label`, `policies`, `reasoning`; `id`, `response`,
//! `source`, `licence`, `kind`, `group` optional) whose policies are known and agree with the label,
//! whose reasoning has 2–4 non-empty steps, and whose last step states the same verdict as the
//! label: SAFE ("violates none of the six policies", "no policy", "does not violate") or UNSAFE
//! naming exactly the labelled policies.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;
use vigil_models::guard::{Label, Policy};

const KNOWN: [&str; 11] =
    ["id", "text", "response", "label", "policies", "reasoning", "source", "licence", "kind", "group", "proof"];

/// Phrases that state a SAFE conclusion.
const NONE_PHRASES: [&str; 8] = [
    "violates none",
    "none of the six",
    "no policy",
    "no policies",
    "does not violate",
    "doesn't violate",
    "not a violation",
    "no violation",
];

/// The verdict a closing step states: SAFE, UNSAFE with the policies it names, or none.
pub fn stated_verdict(step: &str) -> Option<(Label, BTreeSet<Policy>)> {
    let s = step.to_lowercase();
    if NONE_PHRASES.iter().any(|p| s.contains(p)) {
        return Some((Label::Safe, BTreeSet::new()));
    }
    if !(s.contains("violat") || s.contains("unsafe")) {
        return None;
    }
    let named: BTreeSet<Policy> = Policy::ALL
        .into_iter()
        .filter(|p| {
            [p.name().to_string(), p.name().replace('_', " "), p.name().replace('_', "-"), p.title().to_string()]
                .iter()
                .any(|n| s.contains(n.as_str()))
        })
        .collect();
    Some((Label::Unsafe, named))
}

/// Problems of one parsed line (empty when it is valid).
pub fn check_item(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(o) = v.as_object() else { return vec!["a line must be a JSON object".into()] };
    for k in o.keys() {
        if !KNOWN.contains(&k.as_str()) {
            out.push(format!("unknown field `{k}`"));
        }
    }
    match o.get("text").and_then(Value::as_str) {
        None => out.push("no string `text`".into()),
        Some(t) if t.trim().is_empty() => out.push("`text` is empty".into()),
        _ => {}
    }
    if let Some(r) = o.get("response") {
        if !(r.is_null() || r.as_str().is_some_and(|s| !s.trim().is_empty())) {
            out.push("`response` must be a non-empty string when present".into());
        }
    }
    let label = match o.get("label").and_then(Value::as_str) {
        Some("safe") => Some(Label::Safe),
        Some("unsafe") => Some(Label::Unsafe),
        Some(other) => {
            out.push(format!("`label` is `{other}`, expected safe or unsafe"));
            None
        }
        None => {
            out.push("no string `label`".into());
            None
        }
    };
    let mut policies = BTreeSet::new();
    match o.get("policies").and_then(Value::as_array) {
        None => out.push("no `policies` array".into()),
        Some(a) => {
            for p in a {
                match p.as_str() {
                    Some(name) => match Policy::ALL.into_iter().find(|q| q.name() == name) {
                        Some(q) => {
                            policies.insert(q);
                        }
                        None => out.push(format!("unknown policy `{name}` (known: {})", names())),
                    },
                    None => out.push(format!("policy {p} is not a string")),
                }
            }
        }
    }
    match (label, policies.is_empty()) {
        (Some(Label::Unsafe), true) if out.iter().all(|e| !e.starts_with("unknown policy")) => {
            out.push("label is unsafe but `policies` is empty".into())
        }
        (Some(Label::Safe), false) => out.push("label is safe but `policies` is not empty".into()),
        _ => {}
    }
    let steps: Vec<String> = match o.get("reasoning") {
        None | Some(Value::Null) => {
            out.push("no `reasoning`".into());
            return out;
        }
        Some(Value::String(s)) => s
            .lines()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once(':').filter(|(a, _)| a.starts_with("Step ")).map_or(l, |(_, b)| b.trim()).to_string())
            .collect(),
        Some(Value::Array(a)) => a.iter().map(|s| s.as_str().unwrap_or("").to_string()).collect(),
        Some(_) => {
            out.push("`reasoning` must be a string or an array of strings".into());
            return out;
        }
    };
    if !(2..=4).contains(&steps.len()) {
        out.push(format!("{} reasoning steps (2–4 expected)", steps.len()));
    }
    if let Some(i) = steps.iter().position(|s| s.trim().is_empty()) {
        out.push(format!("reasoning step {} is empty or not a string", i + 1));
    }
    if let (Some(label), Some(last)) = (label, steps.last()) {
        match stated_verdict(last) {
            None => out.push("the last reasoning step states no verdict".into()),
            Some((l, _)) if l != label => {
                out.push(format!("the reasoning concludes {} but the label is {}", l.upper(), label.lower()))
            }
            Some((_, named)) if label == Label::Unsafe && named != policies => out.push(format!(
                "the reasoning names policies [{}] but the label lists [{}]",
                named.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
                policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
            )),
            _ => {}
        }
    }
    out
}

fn names() -> String {
    Policy::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// Checks files; returns every problem as `file:line: reason` and the number of lines read.
pub fn validate_files(paths: &[&Path]) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut lines = 0;
    let mut ids: HashMap<String, String> = HashMap::new();
    for path in paths {
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let at = format!("{}:{}", path.display(), i + 1);
            let Ok(line) = std::str::from_utf8(raw) else {
                problems.push(format!("{at}: not UTF-8 text"));
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            lines += 1;
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{at}: not JSON ({e})"));
                    continue;
                }
            };
            for p in check_item(&v) {
                problems.push(format!("{at}: {p}"));
            }
            if let Some(id) = v.get("id").and_then(Value::as_str) {
                if let Some(first) = ids.insert(id.to_string(), at.clone()) {
                    problems.push(format!("{at}: id `{id}` repeats {first}"));
                }
            }
        }
    }
    (problems, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn good_items_pass() {
        let v = json!({"text": "How do I kill a process?", "label": "safe", "policies": [],
                       "reasoning": ["It asks about processes.", "Jargon, so it violates none of the six policies."]});
        assert_eq!(check_item(&v), Vec::<String>::new());
        let v = json!({"text": "x", "label": "unsafe", "policies": ["self_harm", "violence"],
                       "reasoning": "Step 1: It asks for a method.\nStep 2: It violates the self-harm and violence policies."});
        assert_eq!(check_item(&v), Vec::<String>::new());
    }

    #[test]
    fn each_problem_is_named() {
        let cases = [
            (
                json!({"text": "x", "label": "unsafe", "policies": ["spam"], "reasoning": ["a", "violates spam"]}),
                "unknown policy `spam`",
            ),
            (
                json!({"text": "x", "label": "safe", "policies": [], "reasoning": ["It violates no policy."]}),
                "1 reasoning steps",
            ),
            (
                json!({"text": "x", "label": "safe", "policies": [], "reasoning": ["a", "It violates the violence policy."]}),
                "concludes UNSAFE but the label is safe",
            ),
            (
                json!({"text": "x", "label": "unsafe", "policies": ["illegal"], "reasoning": ["a", "It violates the violence policy."]}),
                "names policies [violence] but the label lists [illegal]",
            ),
            (
                json!({"text": "x", "label": "unsafe", "policies": ["illegal"], "reasoning": ["a", "b"]}),
                "states no verdict",
            ),
            (
                json!({"text": "x", "label": "unsafe", "policies": [], "reasoning": ["a", "b violates"]}),
                "policies` is empty",
            ),
            (
                json!({"text": "x", "label": "maybe", "policies": [], "reasoning": ["a", "b"]}),
                "expected safe or unsafe",
            ),
            (
                json!({"text": "x", "label": "safe", "policies": [], "reasoning": ["a", "no policy"], "extra": 1}),
                "unknown field `extra`",
            ),
            (json!({"label": "safe", "policies": [], "reasoning": ["a", "no policy"]}), "no string `text`"),
        ];
        for (v, want) in cases {
            let got = check_item(&v);
            assert!(got.iter().any(|e| e.contains(want)), "{v}: {got:?} lacks {want:?}");
        }
    }
}
