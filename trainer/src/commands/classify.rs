//! `vigil classify [TEXT|-] [--file JSONL] [--response TEXT] [--json] …`
//!
//! Human output streams the reasoning as it is generated, then the verdict; `--json` prints one
//! object per input: `{"label","policies","reasoning","raw", …}`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::ops::ControlFlow;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vigil_models::cpu::sampling::SamplingParams;
use vigil_models::guard::{GuardRequest, Label, Mode, Policy, Section};
use vigil_runtime::{ClassifyOptions, Event, Guard, Outcome};

use crate::cli::{ClassifyArgs, Global};

/// One input to classify, with where it came from.
struct Input {
    content: String,
    response: Option<String>,
    id: Option<serde_json::Value>,
    origin: String,
}

pub fn run(args: ClassifyArgs, _g: &Global) -> Result<()> {
    let mode =
        match &args.policy {
            None => Mode::AllPolicies,
            Some(p) => Mode::PerPolicy(Policy::from_name(p).with_context(|| {
                format!("unknown policy `{p}` (one of: {})", Policy::ALL.map(|p| p.name()).join(", "))
            })?),
        };
    let opts = ClassifyOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
        },
        stop_at_verdict: !args.no_early_stop,
        force_verdict: !args.no_force_verdict,
    };
    let inputs = read_inputs(&args)?;
    let format = crate::commands::output_format(args.format, &args.model);
    let mut guard = crate::commands::load_guard(&args.model)?;
    if !args.json {
        eprintln!(
            "vigil: {} on {} (adapter: {})",
            guard.model_name(),
            guard.backend_name(),
            guard.adapter().unwrap_or("none")
        );
    }
    let mut failures = 0;
    let stdout = std::io::stdout();
    let mut report = |input: &Input, result: Result<Outcome>| -> Result<()> {
        match result {
            Ok(outcome) => {
                if args.json {
                    let mut o = outcome.to_json();
                    if let Some(id) = &input.id {
                        o["id"] = id.clone();
                    }
                    writeln!(stdout.lock(), "{o}")?;
                } else {
                    print_verdict(&outcome)?;
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("vigil: {}: {e:#}", input.origin);
                if args.json {
                    let mut o = json!({"error": format!("{e:#}"), "input": input.origin});
                    if let Some(id) = &input.id {
                        o["id"] = id.clone();
                    }
                    writeln!(stdout.lock(), "{o}")?;
                }
            }
        }
        Ok(())
    };
    let reqs: Vec<GuardRequest> = inputs
        .iter()
        .map(|input| {
            GuardRequest::new(input.content.clone())
                .with_response(input.response.clone())
                .with_mode(mode)
                .with_format(format)
        })
        .collect();
    if args.json {
        // JSON lines come in input order, a chunk at a time, each chunk decoded side by side
        const CHUNK: usize = 64;
        for (inputs, reqs) in inputs.chunks(CHUNK).zip(reqs.chunks(CHUNK)) {
            for (input, r) in inputs.iter().zip(guard.classify_batch(reqs, &opts, args.lanes, |_| {})?) {
                report(input, r.map_err(Into::into))?;
            }
        }
    } else {
        for (input, req) in inputs.iter().zip(&reqs) {
            report(input, classify_streaming(&mut guard, req, &opts))?;
        }
    }
    if failures > 0 {
        bail!("{failures} input(s) could not be classified");
    }
    Ok(())
}

fn read_inputs(args: &ClassifyArgs) -> Result<Vec<Input>> {
    if let Some(path) = &args.file {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let origin = format!("{}:{}", path.display(), i + 1);
            let line = line.with_context(|| format!("reading {origin}"))?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok((content, response, id)) => out.push(Input { content, response, id, origin }),
                Err(e) => bad.push(format!("{origin}: {e}")),
            }
        }
        if !bad.is_empty() {
            bail!("{} bad line(s), nothing classified:\n  {}", bad.len(), bad.join("\n  "));
        }
        if out.is_empty() {
            bail!("{} holds no inputs", path.display());
        }
        return Ok(out);
    }
    let content = match args.text.as_deref() {
        None => bail!("give the text to classify, `-` for standard input, or --file JSONL"),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
            s
        }
        Some(t) => t.to_string(),
    };
    Ok(vec![Input { content, response: args.response.clone(), id: None, origin: "input".into() }])
}

/// Reads `{"text"|"prompt"|"content": …, "response"?: …, "id"?: …}`.
fn parse_line(line: &str) -> Result<(String, Option<String>, Option<serde_json::Value>), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let text = ["text", "prompt", "content"]
        .iter()
        .find_map(|k| obj.get(*k))
        .ok_or("no `text` (or `prompt` / `content`) field")?
        .as_str()
        .ok_or("`text` is not a string")?
        .to_string();
    let response = match obj.get("response") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`response` is not a string".into()),
    };
    Ok((text, response, obj.get("id").cloned()))
}

/// Streams section text to stdout as it arrives.
fn classify_streaming(guard: &mut Guard, req: &GuardRequest, opts: &ClassifyOptions) -> Result<Outcome> {
    let stdout = std::io::stdout();
    let color = stdout.is_terminal();
    let mut last: Option<Section> = None;
    let mut io_err: Option<std::io::Error> = None;
    let outcome = guard.classify(req, opts, |ev| {
        if let Event::Notice(n) = ev {
            eprintln!("\nvigil: {n}");
            last = None;
            return ControlFlow::Continue(());
        }
        if let Event::Text { section, text } = ev {
            let mut out = stdout.lock();
            let r = (|| -> std::io::Result<()> {
                if last != Some(*section) {
                    let title = match section {
                        Section::Reasoning => "Reasoning",
                        Section::Think => "Think",
                        Section::Proof => "Proof",
                        Section::Answer => "Answer",
                        Section::Verdict | Section::Other => "",
                    };
                    if !title.is_empty() {
                        if color {
                            write!(out, "\n\x1b[1m{title}\x1b[0m\n")?;
                        } else {
                            write!(out, "\n{title}\n")?;
                        }
                    } else if last.is_some() {
                        writeln!(out)?;
                    }
                    last = Some(*section);
                }
                write!(out, "{text}")?;
                out.flush()
            })();
            if let Err(e) = r {
                io_err = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    println!();
    Ok(outcome)
}

fn print_verdict(o: &Outcome) -> Result<()> {
    let color = std::io::stdout().is_terminal();
    let line = match &o.verdict {
        Ok(v) => {
            let policies = if v.policies.is_empty() {
                String::new()
            } else {
                format!(" — {}", v.policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "))
            };
            let (c, label) = match v.label {
                Label::Safe => ("\x1b[1;32m", "SAFE"),
                Label::Unsafe => ("\x1b[1;31m", "UNSAFE"),
            };
            if color {
                format!("{c}Verdict: {label}\x1b[0m{policies}")
            } else {
                format!("Verdict: {label}{policies}")
            }
        }
        Err(e) => format!("Verdict: unparseable ({})", e.reason),
    };
    let line = if o.forced { format!("{line}   (the model wrote no verdict: chosen by likelihood)") } else { line };
    println!("{line}");
    let s = &o.stats;
    eprintln!(
        "vigil: {} prompt tokens ({} reused), {} generated, prefill {:.0} ms, {:.1} tok/s decode, stop: {:?}",
        s.prompt_tokens, s.reused_tokens, s.generated_tokens, s.prefill_ms, s.decode_tok_s, o.stop
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn jsonl_lines_accept_the_documented_keys_and_reject_the_rest() {
        assert_eq!(parse_line(r#"{"text":"a"}"#).unwrap().0, "a");
        assert_eq!(parse_line(r#"{"prompt":"a","response":"b","id":7}"#).unwrap().1.as_deref(), Some("b"));
        assert!(parse_line("{").unwrap_err().contains("not JSON"));
        assert!(parse_line("[1]").unwrap_err().contains("not a JSON object"));
        assert!(parse_line(r#"{"label":"safe"}"#).unwrap_err().contains("no `text`"));
        assert!(parse_line(r#"{"text":3}"#).unwrap_err().contains("not a string"));
    }
}
