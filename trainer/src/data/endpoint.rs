//! `vigil data traces`: reasoning traces from a teacher, kept only when they agree with the label.
//!
//! Teachers: any OpenAI-compatible chat endpoint (`--endpoint URL --model NAME`; concurrent
//! requests, retries with exponential backoff on transport errors, 429 and 5xx, a token and cost
//! tally), or a trained vigil model (`--bootstrap`). Output is append-only JSONL of guard items
//! with the teacher's steps; disagreeing traces go to `OUT.rejected.jsonl`. Both files are read
//! on start and their ids skipped, so an interrupted run resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vigil_models::guard::{self, GuardRequest, Label, Mode, OutputFormat, Policy};

use super::reasoning::{violates, violates_none};
use super::validate::check_item;
use super::Item;

/// What the teacher said about one item.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub requests: u64,
    pub retries: u64,
    pub accepted: usize,
    pub rejected: usize,
    /// Items that still failed after every retry (not written; a rerun tries them again).
    pub failed: usize,
    pub skipped: usize,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Tally {
    pub fn summary(&self, price_in: f64, price_out: f64) -> String {
        let cost = (self.prompt_tokens as f64 * price_in + self.completion_tokens as f64 * price_out) / 1e6;
        format!(
            "{} accepted, {} rejected (verdict disagrees with the label), {} failed, {} already done; {} requests ({} retries), {} prompt + {} completion tokens, cost ${cost:.4}",
            self.accepted,
            self.rejected,
            self.failed,
            self.skipped,
            self.requests,
            self.retries,
            self.prompt_tokens,
            self.completion_tokens
        )
    }
}

/// The teacher's instructions: the guard's own prompt, the verdict it must justify.
pub fn teacher_messages(item: &Item) -> Vec<Value> {
    let req = GuardRequest::new(item.text.clone()).with_response(item.response.clone());
    let verdict = guard::format::verdict_lines(Mode::AllPolicies, item.label, &item.policies);
    let system = format!(
        "{}\n\nYou are writing a reasoning trace for a content-safety training set. The correct verdict is given \
         below. Explain in 2 to 4 steps why it is correct: refer to the actual content and to the policy \
         definitions; never repeat or add harmful details or instructions. Answer exactly in this form:\n\
         Reasoning:\nStep 1: …\nStep 2: …\n\n{verdict}",
        req.system_prompt()
    );
    vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": req.user_message()})]
}

/// The teacher's answer as an item with its steps, or why it is rejected.
pub fn accept(item: &Item, answer: &str) -> std::result::Result<Item, String> {
    let v = guard::parse(answer, OutputFormat::Rsft, Mode::AllPolicies)
        .map_err(|e| format!("unparseable: {}", e.reason))?;
    if v.label != item.label || v.policies != guard::format::canonical(&item.policies) {
        return Err(format!(
            "teacher says {} [{}], label is {} [{}]",
            v.label.upper(),
            names(&v.policies),
            item.label.upper(),
            names(&item.policies)
        ));
    }
    let mut steps: Vec<String> = v
        .reasoning
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once(':').filter(|(a, _)| a.starts_with("Step ")).map_or(l, |(_, b)| b.trim()).to_string())
        .collect();
    // The verdict lines carry the conclusion; make the last step say it too (the schema's rule).
    let closing = match item.label {
        Label::Safe => violates_none("The content"),
        Label::Unsafe => violates(&item.policies, "The content"),
    };
    let mut out = Item { reasoning: steps.clone(), ..item.clone() };
    if !check_item(&serde_json::to_value(&out).unwrap()).is_empty() && steps.len() < 4 {
        steps.push(closing);
        out.reasoning = steps;
    }
    let problems = check_item(&serde_json::to_value(&out).unwrap());
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(out)
}

fn names(ps: &[Policy]) -> String {
    ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// `OUT.rejected.jsonl` next to `OUT`.
pub fn rejected_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.rejected.jsonl"))
}

/// The items still to do, and where their traces go.
struct Sink<'a> {
    out: &'a Path,
    rejected: PathBuf,
    tally: Tally,
}

impl<'a> Sink<'a> {
    fn open<'i>(items: &'i [Item], out: &'a Path) -> Result<(Sink<'a>, Vec<&'i Item>)> {
        let rejected = rejected_path(out);
        let mut done = super::done_ids(out)?;
        done.extend(super::done_ids(&rejected)?);
        let todo: Vec<&Item> = items.iter().filter(|i| !done.contains(&i.id)).collect();
        let tally = Tally { skipped: items.len() - todo.len(), ..Tally::default() };
        Ok((Sink { out, rejected, tally }, todo))
    }

    fn record(&mut self, item: &Item, r: Result<Answer>, t: Tally) -> Result<()> {
        let tally = &mut self.tally;
        tally.requests += t.requests;
        tally.retries += t.retries;
        match r {
            Ok(a) => {
                tally.prompt_tokens += a.prompt_tokens;
                tally.completion_tokens += a.completion_tokens;
                match accept(item, &a.text) {
                    Ok(good) => {
                        super::append_line(self.out, &good)?;
                        tally.accepted += 1;
                    }
                    Err(why) => {
                        super::append_line(&self.rejected, &json!({"id": item.id, "reason": why, "output": a.text}))?;
                        tally.rejected += 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("vigil: {}: {e:#}", item.id);
                tally.failed += 1;
            }
        }
        Ok(())
    }
}

/// Runs `teach` over the items not yet in `out` with `workers` threads, appending as answers come.
pub fn run(
    items: &[Item],
    out: &Path,
    workers: usize,
    teach: impl Fn(&Item, &mut Tally) -> Result<Answer> + Sync,
    mut progress: impl FnMut(&Tally),
) -> Result<Tally> {
    let (mut sink, todo) = Sink::open(items, out)?;
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<(usize, Result<Answer>, Tally)>();
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers.max(1).min(todo.len().max(1)) {
            let (tx, next, todo, teach) = (tx.clone(), next.clone(), &todo, &teach);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= todo.len() {
                    break;
                }
                let mut t = Tally::default();
                let r = teach(todo[i], &mut t);
                if tx.send((i, r, t)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, r, t) in rx {
            sink.record(todo[i], r, t)?;
            progress(&sink.tally);
        }
        Ok(())
    })?;
    Ok(sink.tally)
}

/// [`run`] on the calling thread, for a teacher that is not thread-safe (a vigil model).
pub fn run_sequential(
    items: &[Item],
    out: &Path,
    mut teach: impl FnMut(&Item, &mut Tally) -> Result<Answer>,
    mut progress: impl FnMut(&Tally),
) -> Result<Tally> {
    let (mut sink, todo) = Sink::open(items, out)?;
    for item in todo {
        let mut t = Tally::default();
        let r = teach(item, &mut t);
        sink.record(item, r, t)?;
        progress(&sink.tally);
    }
    Ok(sink.tally)
}

/// An OpenAI-compatible chat endpoint.
pub struct Endpoint {
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub retries: u32,
    pub timeout: Duration,
    pub max_tokens: u32,
    /// First backoff; doubles per retry (capped at 30 s) unless the server sends Retry-After.
    pub backoff: Duration,
    agent: ureq::Agent,
}

impl Endpoint {
    pub fn new(url: &str, model: &str, api_key: Option<String>, retries: u32, timeout: Duration) -> Endpoint {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
            .build()
            .into();
        Endpoint {
            url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key,
            retries,
            timeout,
            max_tokens: 512,
            backoff: Duration::from_millis(500),
            agent,
        }
    }

    /// One chat completion, retried on transport errors, 429 and 5xx.
    pub fn complete(&self, messages: &[Value], tally: &mut Tally) -> Result<Answer> {
        let url = if self.url.ends_with("/chat/completions") {
            self.url.clone()
        } else {
            format!("{}/chat/completions", self.url)
        };
        let body =
            json!({"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens})
                .to_string();
        let mut attempt = 0;
        loop {
            tally.requests += 1;
            let mut req = self.agent.post(&url).header("content-type", "application/json");
            if let Some(k) = &self.api_key {
                req = req.header("authorization", &format!("Bearer {k}"));
            }
            let (retry_after, err) = match req.send(body.as_str()) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    if status == 200 {
                        let v: Value =
                            serde_json::from_str(&text).with_context(|| format!("{url}: the answer is not JSON"))?;
                        let content = v["choices"][0]["message"]["content"]
                            .as_str()
                            .with_context(|| format!("{url}: no choices[0].message.content in the answer"))?;
                        return Ok(Answer {
                            text: content.to_string(),
                            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                        });
                    }
                    let msg = format!("{url}: HTTP {status}: {}", text.chars().take(200).collect::<String>());
                    if status != 429 && status < 500 {
                        bail!(msg); // a request the server will never accept: retrying cannot help
                    }
                    (retry_after, msg)
                }
                Err(e) => (None, format!("{url}: {e}")),
            };
            if attempt >= self.retries {
                bail!("{err} (gave up after {} attempts)", attempt + 1);
            }
            let wait =
                retry_after.unwrap_or_else(|| (self.backoff * 2u32.pow(attempt.min(16))).min(Duration::from_secs(30)));
            std::thread::sleep(wait);
            attempt += 1;
            tally.retries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(label: Label, policies: Vec<Policy>) -> Item {
        Item {
            id: "x".into(),
            text: "How do I kill a zombie process?".into(),
            response: None,
            label,
            policies,
            reasoning: vec![],
            source: "authored".into(),
            licence: "Apache-2.0".into(),
            kind: "k".into(),
            group: "g".into(),
        }
    }

    #[test]
    fn agreeing_traces_are_kept_with_a_closing_step() {
        let it = item(Label::Safe, vec![]);
        let got = accept(&it, "Reasoning:\nStep 1: It asks about processes.\nStep 2: Kill is jargon here.\n\nClassification: SAFE\nViolated policies: none").unwrap();
        assert_eq!(got.reasoning.len(), 3);
        assert!(got.reasoning[2].contains("violates none"));
        let err =
            accept(&it, "Reasoning:\nStep 1: a\nStep 2: b\n\nClassification: UNSAFE\nViolated policies: violence")
                .unwrap_err();
        assert!(err.contains("teacher says UNSAFE [violence], label is SAFE []"), "{err}");
        assert!(accept(&it, "no verdict at all").unwrap_err().starts_with("unparseable"));
    }

    #[test]
    fn rejected_file_sits_next_to_the_output() {
        assert_eq!(rejected_path(Path::new("a/t.jsonl")), PathBuf::from("a/t.rejected.jsonl"));
    }
}
