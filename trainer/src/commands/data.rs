//! `vigil data …`: build, validate, stats, render, traces.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vigil_models::guard::{GuardRequest, OutputFormat};
use vigil_runtime::ClassifyOptions;
use vigil_trainer::data::{self, build, card, endpoint, Item};
use vigil_trainer::train::data::{conversations, GuardRendering};

use crate::cli::{DataCommand, DataRenderArgs, DataTracesArgs, FormatArg};

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Build(a) => {
            let opts = build::BuildOptions { authored: a.authored, out: a.out.clone(), eval_permille: a.eval_permille };
            let built = build::build(&opts)?;
            let pinned = std::fs::read_to_string(a.out.join("SHA256SUMS")).ok();
            build::write(&built, &a.out)?;
            let now = std::fs::read_to_string(a.out.join("SHA256SUMS"))?;
            let stats = card::Stats::of(&built.train, &built.eval);
            print!("{}", stats.table());
            println!(
                "probe pairs {}, jailbreak stress {} (+{} generated); written to {}",
                built.probes.len(),
                built.stress.len(),
                built.stress_generated.len(),
                a.out.display()
            );
            match pinned {
                Some(p) if p == now => println!("identical to the pinned version (SHA256SUMS unchanged)"),
                Some(_) => println!("differs from the pinned version: SHA256SUMS changed (commit it with the data)"),
                None => println!("SHA256SUMS written"),
            }
            Ok(())
        }
        DataCommand::Validate { files } => {
            let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
            let (problems, lines) = data::validate::validate_files(&paths);
            for p in &problems {
                println!("{p}");
            }
            if problems.is_empty() {
                println!("{lines} lines, all valid");
                Ok(())
            } else {
                bail!("{} problems in {lines} lines", problems.len())
            }
        }
        DataCommand::Stats { dir, json } => {
            if !dir.join("train.jsonl").is_file() {
                bail!("{} has no train.jsonl: it is generated, run `vigil data build` first", dir.display());
            }
            let train: Vec<Item> = data::read_jsonl(&dir.join("train.jsonl"))?;
            let eval: Vec<Item> = data::read_jsonl(&dir.join("eval.jsonl"))?;
            let s = card::Stats::of(&train, &eval);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.table());
            }
            Ok(())
        }
        DataCommand::Render(a) => render(a),
        DataCommand::Traces(a) => traces(a),
    }
}

fn render(a: DataRenderArgs) -> Result<()> {
    let format = match a.format {
        FormatArg::Rsft => OutputFormat::Rsft,
        FormatArg::Dual => OutputFormat::DualStream,
    };
    let rendering = GuardRendering { format, per_policy: a.per_policy };
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{}:{}", a.input.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| at.clone())?;
        for (_, msgs) in conversations(&v, rendering).with_context(|| at.clone())? {
            let messages: Vec<serde_json::Value> = msgs
                .iter()
                .map(|m| serde_json::json!({"role": format!("{:?}", m.role).to_lowercase(), "content": m.content}))
                .collect();
            out.push(serde_json::json!({"messages": messages}));
        }
    }
    data::write_jsonl(&a.out, &out)?;
    println!("{} conversations written to {}", out.len(), a.out.display());
    Ok(())
}

fn traces(a: DataTracesArgs) -> Result<()> {
    let mut items: Vec<Item> = data::read_jsonl(&a.input)?;
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    let pb = vigil_trainer::progress::items("traces", items.len() as u64);
    let progress = |t: &endpoint::Tally| {
        pb.set_position((t.accepted + t.rejected + t.failed + t.skipped) as u64);
        pb.set_message(format!(
            "{} kept, {} rejected, {} tokens",
            t.accepted,
            t.rejected,
            t.prompt_tokens + t.completion_tokens
        ));
    };
    let tally = if let Some(adapter) = &a.bootstrap {
        // The trained model uses every core; one item at a time.
        let m = crate::cli::ModelArgs {
            model: a.base.clone(),
            adapter: adapter.clone(),
            context: 4096,
            backend: crate::cli::BackendArg::Cpu,
        };
        let mut g = super::load_guard(&m)?;
        let opts = ClassifyOptions { force_verdict: false, ..ClassifyOptions::default() };
        endpoint::run_sequential(
            &items,
            &a.out,
            |it, t| {
                let req = GuardRequest::new(it.text.clone()).with_response(it.response.clone());
                let o = g.classify(&req, &opts, |_| ControlFlow::Continue(()))?;
                t.requests += 1;
                Ok(endpoint::Answer {
                    text: o.raw,
                    prompt_tokens: o.stats.prompt_tokens as u64,
                    completion_tokens: o.stats.generated_tokens as u64,
                })
            },
            progress,
        )?
    } else {
        let url = a.endpoint.as_deref().context("--endpoint or --bootstrap is required")?;
        let model = a.model.as_deref().context("--model is required with --endpoint")?;
        let key = std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty());
        let mut ep = endpoint::Endpoint::new(url, model, key, a.retries, Duration::from_secs(a.timeout));
        ep.max_tokens = a.max_tokens;
        endpoint::run(&items, &a.out, a.concurrency, |it, t| ep.complete(&endpoint::teacher_messages(it), t), progress)?
    };
    pb.finish_and_clear();
    println!("{}", tally.summary(a.price_in, a.price_out));
    if tally.failed > 0 {
        bail!("{} items failed (not written); run the same command again to retry them", tally.failed);
    }
    Ok(())
}
