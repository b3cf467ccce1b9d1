//! Training data in: JSONL lines in any of four schemas → conversations → token ids and a loss mask
//! (assistant tokens, end-of-turn included) in the base model's chat template.
//!
//! Schemas, detected per line:
//! - OpenAI `{"messages": [{"role": "system"|"user"|"assistant", "content": …}]}`;
//! - ShareGPT `{"conversations": [{"from": "system"|"human"|"gpt", "value": …}]}`;
//! - Alpaca / GuardReasoner `{"instruction", "input"?, "output"}`;
//! - vigil's guard schema `{"text", "response"?, "label": "safe"|"unsafe", "policies": […],
//!   "reasoning"?: "…" | ["step", …], "proof"?}` rendered by the guard protocol (R-SFT or
//!   dual-stream; all policies in one call, or one example per policy).
//!
//! A bad line is reported as `file:line: why`; nothing is dropped silently.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use vigil_models::chat::{ChatTemplate, Message};
use vigil_models::guard::{format, GuardRequest, Label, Mode, OutputFormat, Policy};
use vigil_models::tokenizer::Tokenizer;

/// How guard-schema items become conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRendering {
    pub format: OutputFormat,
    /// One conversation judging all policies, or one per policy (the R-SFT note's sample × policy).
    pub per_policy: bool,
}

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// `file:line` (and the policy, for per-policy renderings).
    pub origin: String,
    pub ids: Vec<u32>,
    /// true where the token is a training target.
    pub mask: Vec<bool>,
    /// true where a target weighs the config's `emphasis_weight` (see [`Example::mark_emphasis`]);
    /// empty when nothing is emphasised.
    pub emphasis: Vec<bool>,
}

impl Example {
    pub fn new(origin: String, ids: Vec<u32>, mask: Vec<bool>) -> Self {
        Example { origin, ids, mask, emphasis: Vec::new() }
    }

    pub fn targets(&self) -> usize {
        // the first token is never predicted
        self.mask.iter().skip(1).filter(|&&m| m).count()
    }

    /// The loss weight of each target, in the order the model's target losses come (position 1 on).
    pub fn target_weights(&self, weight: f32) -> impl Iterator<Item = f32> + '_ {
        (1..self.ids.len()).filter(|&i| self.mask[i]).map(move |i| {
            if self.emphasis.get(i).copied().unwrap_or(false) {
                weight
            } else {
                1.0
            }
        })
    }

    /// Marks for emphasis up to `tokens` targets after each occurrence of a marker in the decoded
    /// sequence: from the token that holds the marker's next byte, stopping before a token with a
    /// newline or a non-target. Matching the decoded bytes, not the marker's own token ids, finds
    /// it however the tokenizer merged it with its neighbours.
    pub fn mark_emphasis(&mut self, tok: &Tokenizer, markers: &[String], tokens: usize) {
        let mut text = Vec::new();
        let mut ends = Vec::with_capacity(self.ids.len());
        for &id in &self.ids {
            text.extend_from_slice(tok.token_bytes(id));
            ends.push(text.len());
        }
        let mut emphasis = vec![false; self.ids.len()];
        for m in markers.iter().map(|m| m.as_bytes()).filter(|m| !m.is_empty()) {
            let mut from = 0;
            while let Some(at) = text[from..].windows(m.len()).position(|w| w == m) {
                let end = from + at + m.len();
                from = from + at + 1;
                // the first token that holds a byte past the marker
                let first = ends.partition_point(|&e| e <= end);
                for i in first..(first + tokens).min(self.ids.len()) {
                    let start = if i == 0 { 0 } else { ends[i - 1] };
                    if !self.mask[i] || text[start..ends[i]].contains(&b'\n') {
                        break;
                    }
                    emphasis[i] = true;
                }
            }
        }
        self.emphasis = if emphasis.contains(&true) { emphasis } else { Vec::new() };
    }
}

/// A data file read and encoded: examples, and the lines that could not be used.
pub struct Loaded {
    pub examples: Vec<Example>,
    pub errors: Vec<String>,
}

/// The conversations of one JSON line (several for per-policy guard renderings).
pub fn conversations(v: &Value, guard: GuardRendering) -> Result<Vec<(String, Vec<Message>)>> {
    let obj = v.as_object().context("a line must be a JSON object")?;
    if let Some(m) = obj.get("messages") {
        return Ok(vec![(String::new(), turns(m, "messages", "role", "content")?)]);
    }
    if let Some(c) = obj.get("conversations") {
        return Ok(vec![(String::new(), turns(c, "conversations", "from", "value")?)]);
    }
    if obj.contains_key("instruction") || obj.contains_key("output") {
        return Ok(vec![(String::new(), alpaca(obj)?)]);
    }
    if obj.contains_key("text") {
        return guard_item(obj, guard);
    }
    bail!("unknown schema: expected `messages`, `conversations`, `instruction`/`output`, or the guard schema (`text`, `label`)")
}

fn str_field<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Result<Option<&'a str>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("`{k}` must be a string, got {other}"),
    }
}

fn message(role: &str, content: &str) -> Result<Message> {
    Ok(match role {
        "system" => Message::system(content),
        "user" | "human" => Message::user(content),
        "assistant" | "gpt" | "model" => Message::assistant(content),
        other => bail!("unknown role `{other}` (system, user/human, assistant/gpt)"),
    })
}

/// A list of turns: OpenAI (`messages`, `role`/`content`) or ShareGPT (`conversations`, `from`/`value`).
fn turns(list: &Value, field: &str, role_key: &str, content_key: &str) -> Result<Vec<Message>> {
    let arr = list.as_array().with_context(|| format!("`{field}` must be an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let role =
                m.get(role_key).and_then(Value::as_str).with_context(|| format!("{field}[{i}] has no `{role_key}`"))?;
            let content = m
                .get(content_key)
                .and_then(Value::as_str)
                .with_context(|| format!("{field}[{i}] has no string `{content_key}`"))?;
            message(role, content).with_context(|| format!("{field}[{i}]"))
        })
        .collect()
}

fn alpaca(o: &serde_json::Map<String, Value>) -> Result<Vec<Message>> {
    let instruction = str_field(o, "instruction")?.context("no `instruction`")?;
    let output = str_field(o, "output")?.context("no `output`")?;
    let mut msgs = Vec::new();
    if let Some(s) = str_field(o, "system")? {
        msgs.push(Message::system(s));
    }
    let user = match str_field(o, "input")? {
        Some(i) if !i.trim().is_empty() => format!("{instruction}\n\n{i}"),
        _ => instruction.to_string(),
    };
    msgs.push(Message::user(user));
    msgs.push(Message::assistant(output));
    Ok(msgs)
}

/// Reasoning steps from a string ("Step 1: …" lines, or plain lines) or an array of strings.
fn steps(v: Option<&Value>) -> Result<Vec<String>> {
    let raw: Vec<String> = match v {
        None | Some(Value::Null) => bail!("no `reasoning` (guard items need a reasoning trace to train on)"),
        Some(Value::String(s)) => s.lines().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).context("`reasoning` array items must be strings"))
            .collect::<Result<_>>()?,
        Some(other) => bail!("`reasoning` must be a string or an array of strings, got {other}"),
    };
    let steps: Vec<String> = raw
        .iter()
        .map(|l| {
            let t = l.trim();
            // drop a leading "Step N:" so the renderer numbers steps itself
            match t.strip_prefix("Step ").and_then(|r| r.split_once(':')) {
                Some((n, rest)) if n.trim().chars().all(|c| c.is_ascii_digit()) => rest.trim().to_string(),
                _ => t.to_string(),
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    if steps.is_empty() {
        bail!("`reasoning` is empty");
    }
    Ok(steps)
}

fn guard_item(o: &serde_json::Map<String, Value>, r: GuardRendering) -> Result<Vec<(String, Vec<Message>)>> {
    let text = str_field(o, "text")?.context("no `text`")?;
    let response = str_field(o, "response")?.map(str::to_string);
    let label = match str_field(o, "label")?.map(str::to_ascii_lowercase).as_deref() {
        Some("safe") => Label::Safe,
        Some("unsafe") => Label::Unsafe,
        Some(other) => bail!("`label` is `{other}`, expected safe or unsafe"),
        None => bail!("no `label`"),
    };
    let policies: Vec<Policy> = match o.get("policies") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                let s = p.as_str().context("`policies` items must be strings")?;
                Policy::from_name(s).with_context(|| format!("unknown policy `{s}`"))
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("`policies` must be an array, got {other}"),
    };
    if label == Label::Unsafe && policies.is_empty() {
        bail!("label is unsafe but `policies` is empty");
    }
    if label == Label::Safe && !policies.is_empty() {
        bail!("label is safe but `policies` lists {policies:?}");
    }
    let steps = steps(o.get("reasoning"))?;
    let proof = str_field(o, "proof")?;
    let modes: Vec<Mode> =
        if r.per_policy { Policy::ALL.into_iter().map(Mode::PerPolicy).collect() } else { vec![Mode::AllPolicies] };
    Ok(modes
        .into_iter()
        .map(|mode| {
            let (lab, pols) = match mode {
                Mode::PerPolicy(p) if policies.contains(&p) => (Label::Unsafe, vec![p]),
                Mode::PerPolicy(_) => (Label::Safe, vec![]),
                Mode::AllPolicies => (label, policies.clone()),
            };
            let req = GuardRequest::new(text).with_response(response.clone()).with_mode(mode).with_format(r.format);
            let mut msgs = req.messages();
            msgs.push(Message::assistant(format::render(r.format, mode, lab, &pols, &steps, proof)));
            let tag = match mode {
                Mode::PerPolicy(p) => format!(" [{}]", p.name()),
                Mode::AllPolicies => String::new(),
            };
            (tag, msgs)
        })
        .collect())
}

/// Reads and encodes a JSONL file. Lines that fail (bad JSON, schema, no assistant turn, longer
/// than `max_len` tokens) are collected as `file:line: why` in `errors`.
pub fn load(
    path: &Path,
    tok: &Tokenizer,
    template: ChatTemplate,
    guard: GuardRendering,
    max_len: usize,
) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let mut examples = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        let result = (|| -> Result<Vec<Example>> {
            let v: Value = serde_json::from_str(line).context("not valid JSON")?;
            let mut out = Vec::new();
            for (tag, msgs) in conversations(&v, guard)? {
                let enc = template.encode(tok, &msgs, false)?;
                let ex = Example::new(format!("{at}{tag}"), enc.ids, enc.mask);
                if ex.targets() == 0 {
                    bail!("no assistant turn to learn from");
                }
                if ex.ids.len() > max_len {
                    bail!("{} tokens, longer than max_len {max_len}", ex.ids.len());
                }
                out.push(ex);
            }
            Ok(out)
        })();
        match result {
            Ok(v) => examples.extend(v),
            Err(e) => errors.push(format!("{at}: {e:#}")),
        }
    }
    Ok(Loaded { examples, errors })
}

/// Whether a line goes to the eval split: a hash of its text, so the split does not depend on
/// file order or on other lines (deterministic, stable when data is appended).
pub fn is_eval(ids: &[u32], fraction: f64, seed: u64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    for id in ids {
        h.update(id.to_le_bytes());
    }
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().unwrap());
    (x as f64 / u64::MAX as f64) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const R: GuardRendering = GuardRendering { format: OutputFormat::Rsft, per_policy: false };

    fn text_of(msgs: &[Message]) -> Vec<(String, String)> {
        msgs.iter().map(|m| (format!("{:?}", m.role), m.content.clone())).collect()
    }

    #[test]
    fn the_four_schemas_give_the_same_conversation() {
        let a = conversations(
            &json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
            R,
        )
        .unwrap();
        let b = conversations(
            &json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}),
            R,
        )
        .unwrap();
        let c = conversations(&json!({"instruction": "hi", "input": "", "output": "yo"}), R).unwrap();
        assert_eq!(text_of(&a[0].1), text_of(&b[0].1));
        assert_eq!(text_of(&a[0].1), text_of(&c[0].1));
        let d = conversations(&json!({"instruction": "Classify", "input": "the text", "output": "SAFE"}), R).unwrap();
        assert_eq!(d[0].1[0].content, "Classify\n\nthe text");
    }

    #[test]
    fn guard_items_render_by_the_protocol() {
        let item = json!({"text": "how do I kill a zombie process", "label": "safe", "policies": [],
                          "reasoning": "Step 1: It asks about Unix processes.\nStep 2: Technical jargon, no harm."});
        let c = conversations(&item, R).unwrap();
        let answer = &c[0].1.last().unwrap().content;
        assert_eq!(
            answer,
            "Reasoning:\nStep 1: It asks about Unix processes.\nStep 2: Technical jargon, no harm.\n\nClassification: SAFE\nViolated policies: none"
        );
        let per = conversations(
            &json!({"text": "x", "label": "unsafe", "policies": ["illegal"], "reasoning": ["a", "b"]}),
            GuardRendering { format: OutputFormat::DualStream, per_policy: true },
        )
        .unwrap();
        assert_eq!(per.len(), 6);
        let illegal = per.iter().find(|(t, _)| t.contains("illegal")).unwrap();
        assert!(illegal.1.last().unwrap().content.ends_with("<answer>\nClassification: UNSAFE\n</answer>"));
        let violence = per.iter().find(|(t, _)| t.contains("violence")).unwrap();
        assert!(violence.1.last().unwrap().content.ends_with("<answer>\nClassification: SAFE\n</answer>"));
    }

    #[test]
    fn bad_items_say_why() {
        for (v, why) in [
            (json!({"text": "x", "label": "maybe", "reasoning": "r"}), "expected safe or unsafe"),
            (json!({"text": "x", "label": "unsafe", "policies": [], "reasoning": "r"}), "policies` is empty"),
            (json!({"text": "x", "label": "unsafe", "policies": ["spam"], "reasoning": "r"}), "unknown policy `spam`"),
            (json!({"text": "x", "label": "safe"}), "no `reasoning`"),
            (json!({"messages": [{"role": "robot", "content": "x"}]}), "unknown role `robot`"),
            (json!({"foo": 1}), "unknown schema"),
        ] {
            let e = format!("{:#}", conversations(&v, R).unwrap_err());
            assert!(e.contains(why), "{e} lacks {why}");
        }
    }

    #[test]
    fn the_split_is_deterministic_and_near_the_fraction() {
        let n = 2000;
        let eval = (0..n).filter(|&i| is_eval(&[i, i * 7, 3], 0.1, 1)).count();
        assert!((150..250).contains(&eval), "{eval}");
        assert_eq!(is_eval(&[5, 6], 0.5, 9), is_eval(&[5, 6], 0.5, 9));
        assert!(!is_eval(&[5, 6], 0.0, 9));
    }
}
