//! `vigil train`: resolve the config, load data and model, run the loop with a progress bar.

use anyhow::{Context, Result};
use vigil_trainer::train::config::{absolute, TrainConfig};
use vigil_trainer::train::run::{Hooks, Metrics, Trainer};

use crate::cli::{ConfigArgs, Global, TrainArgs};

/// The config of a new run: preset ← file ← --data/--model/… ← --set; data and probe paths made
/// absolute, so the run resumes from any working directory.
pub fn resolve_config(stage: Option<&str>, c: &ConfigArgs) -> Result<TrainConfig> {
    let mut overrides = Vec::new();
    let list = |files: &[std::path::PathBuf]| -> Result<String> {
        let items: Vec<String> = files
            .iter()
            .map(|f| {
                let abs = std::fs::canonicalize(f).with_context(|| format!("data file {}", f.display()))?;
                Ok(toml::Value::String(abs.display().to_string()).to_string())
            })
            .collect::<Result<_>>()?;
        Ok(format!("[{}]", items.join(", ")))
    };
    for (key, files) in [("data", &c.data), ("eval_data", &c.eval_data), ("rho_data", &c.rho_data)] {
        if !files.is_empty() {
            overrides.push(format!("{key}={}", list(files)?));
        }
    }
    if let Some(m) = &c.model {
        overrides.push(format!("model={}", toml::Value::String(m.clone())));
    }
    overrides.extend(c.overrides.iter().cloned());
    let mut cfg = TrainConfig::resolve(stage.unwrap_or(&c.preset), c.config.as_deref(), &overrides)?;
    // preset probe paths are relative to the working directory
    cfg.rho_data = cfg.rho_data.iter().map(|p| absolute(p)).collect();
    Ok(cfg)
}

pub fn run(args: TrainArgs, _g: &Global) -> Result<()> {
    let c = &args.cfg;
    let untouched = c.config.is_none()
        && c.data.is_empty()
        && c.eval_data.is_empty()
        && c.rho_data.is_empty()
        && c.model.is_none()
        && c.overrides.is_empty();
    let mut cfg = if args.resume && untouched {
        // a resumed run uses the config it saved
        TrainConfig::resolve("default", Some(&args.out.join("config.toml")), &[])?
    } else {
        resolve_config(args.stage.as_deref(), c)?
    };
    if args.show_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    cfg.model = absolute(&crate::commands::resolve_model(&cfg.model)?).display().to_string();

    let (mut trainer, report) = Trainer::prepare(cfg, &args.out, args.resume)?;
    for e in &report.errors {
        eprintln!("vigil: skipped {e}");
    }
    eprintln!(
        "vigil: {} training and {} eval sequences; {} LoRA parameters (r{}, α{}) on {} layers; {} steps of {} sequences{}",
        report.train,
        report.eval,
        trainer.lora.count(),
        trainer.cfg.rank,
        trainer.cfg.alpha,
        trainer.lora.layers.len(),
        trainer.total_steps,
        trainer.cfg.batch_size * trainer.cfg.grad_accum,
        if trainer.step > 0 { format!("; resuming at step {}", trainer.step) } else { String::new() }
    );
    let pb = vigil_trainer::progress::steps("train", trainer.total_steps);
    pb.set_position(trainer.step);
    let mut on_step = |m: &Metrics, _total: u64| {
        pb.set_position(m.step);
        let eval = m.eval_loss.map_or(String::new(), |e| format!(" eval {e:.3}"));
        pb.set_message(format!("loss {:.3}{eval} lr {:.1e} {:.0} tok/s", m.loss, m.lr, m.tok_per_s));
        if pb.is_hidden() {
            eprintln!(
                "step {}/{}: loss {:.4}{eval} lr {:.2e} gnorm {:.3} {:.0} tok/s",
                m.step, _total, m.loss, m.lr, m.grad_norm, m.tok_per_s
            );
        }
    };
    let done = trainer.run(Hooks { on_step: Some(&mut on_step), stop_after: args.stop_after })?;
    pb.finish_and_clear();
    if trainer.cfg.share_prefix {
        eprintln!(
            "vigil: {} micro-batches ran packed over their shared prefix, {} prefix tokens not run again",
            trainer.packed_passes, trainer.packed_saved_tokens
        );
    }
    let dir = args.out.display();
    match done {
        Some(adapter) => {
            eprintln!(
                "vigil: done. adapter {} · curve {dir}/loss.svg · metrics {dir}/metrics.jsonl",
                adapter.display()
            );
            // the CLI's format names: rsft, dual
            let format = if trainer.cfg.format.starts_with("dual") { " --format dual" } else { "" };
            eprintln!(
                "       classify with: vigil classify --model {}{format} --adapter {} \"…\"",
                trainer.cfg.model,
                adapter.display()
            );
        }
        None => eprintln!("vigil: stopped at step {}; continue with: vigil train --out {dir} --resume", trainer.step),
    }
    Ok(())
}

/// `vigil sweep`.
pub fn sweep(args: crate::cli::SweepArgs) -> Result<()> {
    use vigil_trainer::sweep;
    let mut base = resolve_config(None, &args.cfg)?;
    base.model = absolute(&crate::commands::resolve_model(&base.model)?).display().to_string();
    for c in &args.conditions {
        if !vigil_trainer::train::rho::CONDITIONS.contains(&c.as_str()) {
            anyhow::bail!("unknown condition `{c}` ({})", vigil_trainer::train::rho::CONDITIONS.join(", "));
        }
    }
    let o = sweep::SweepOptions {
        base,
        lambdas: args.lambdas.clone(),
        seeds: args.seeds.clone(),
        conditions: args.conditions.clone(),
        out: args.out.clone(),
        probes: args.probes.clone(),
        probes_per_behavior: args.probes_per_behavior,
        probe_max_tokens: 256,
        stress: args.stress.clone().map(|p| (p, args.stress_limit)),
        stress_max_tokens: args.max_tokens,
    };
    let n = sweep::cells(&o).len();
    eprintln!("vigil: sweep of {n} cells into {}", args.out.display());
    let (results, base_auc, done) = sweep::run(&o, |m| eprintln!("vigil: {m}"))?;
    let table = sweep::summary(&results, &base_auc);
    let md = format!(
        "# vigil sweep\n\nBase model AUC per behaviour: {}.\n\n{}\n\nAUC: {}\n\nd: Cohen's d of the seeds' AUCs against sft-only (pooled sd).\n\n![dose-response](dose-response.svg)\n",
        base_auc.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", "),
        table,
        vigil_trainer::eval::probe::DEFINITION
    );
    vigil_trainer::data::write_file(&args.out.join("summary.md"), md.as_bytes())?;
    vigil_trainer::data::write_file(
        &args.out.join("summary.json"),
        serde_json::to_string_pretty(&serde_json::json!({"base": base_auc, "cells": results}))?.as_bytes(),
    )?;
    sweep::dose_response(&results, &base_auc, &args.out.join("dose-response.svg"))?;
    print!("{table}");
    eprintln!(
        "vigil: {} cells trained, {} resumed, {} already done; summary in {}/summary.md",
        done.trained,
        done.resumed,
        done.skipped,
        args.out.display()
    );
    Ok(())
}

/// `vigil dpo mine|train`.
pub fn dpo(c: crate::cli::DpoCommand) -> Result<()> {
    use std::ops::ControlFlow;
    use vigil_models::guard::GuardRequest;
    use vigil_runtime::ClassifyOptions;
    use vigil_trainer::train::dpo;
    match c {
        crate::cli::DpoCommand::Mine(a) => {
            let mut items: Vec<vigil_trainer::data::Item> = vigil_trainer::data::read_jsonl(&a.data)?;
            if let Some(n) = a.limit {
                items.truncate(n);
            }
            let m = crate::cli::ModelArgs {
                model: a.model.clone(),
                adapter: a.adapter.clone(),
                context: 4096,
                backend: crate::cli::BackendArg::Cpu,
            };
            let mut guard = crate::commands::load_guard(&m)?;
            let pb = vigil_trainer::progress::items("mine", items.len() as u64);
            let t = dpo::mine(
                &items,
                a.k,
                if a.gold { dpo::Chosen::Gold } else { dpo::Chosen::Sampled },
                &a.out,
                |it, j| {
                    let mut opts = ClassifyOptions {
                        max_tokens: a.max_tokens,
                        force_verdict: false,
                        ..ClassifyOptions::default()
                    };
                    opts.sampling.temperature = a.temperature;
                    opts.sampling.top_p = a.top_p;
                    opts.sampling.seed = vigil_trainer::data::stable_hash(&format!("{}/{}/{j}", a.seed, it.id));
                    let req = GuardRequest::new(it.text.clone()).with_response(it.response.clone());
                    Ok(guard.classify(&req, &opts, |_| ControlFlow::Continue(()))?.raw)
                },
                |t| pb.set_position((t.hard + t.easy + t.skipped) as u64),
            )?;
            pb.finish_and_clear();
            println!("{} hard pairs, {} easy items, {} already mined → {}", t.hard, t.easy, t.skipped, a.out.display());
            Ok(())
        }
        crate::cli::DpoCommand::Train(a) => {
            let base = crate::commands::resolve_model(&a.model)?;
            let adapter = vigil_models::lora::LoraAdapter::from_gguf(&vigil_models::gguf::Gguf::open(&a.adapter)?)?;
            let pairs: Vec<dpo::DpoPair> = vigil_trainer::data::read_jsonl(&a.pairs)?;
            let cfg = dpo::DpoConfig {
                beta: a.beta,
                alpha: a.alpha,
                lr: a.lr,
                epochs: a.epochs,
                max_steps: a.max_steps,
                pairs_per_step: a.pairs_per_step,
                seed: a.seed,
                base_weights: a.base_weights.clone(),
                ..dpo::DpoConfig::default()
            };
            let started = std::time::Instant::now();
            let mut d = dpo::Dpo::prepare(cfg, &base, &adapter, &pairs, &a.out)?;
            eprintln!(
                "vigil: {} pairs, {} steps; reference log-probs: {} computed, {} cached ({:.1} s with loading)",
                d.pairs.len(),
                d.total_steps,
                d.reference_computed,
                d.pairs.len() - d.reference_computed,
                started.elapsed().as_secs_f64()
            );
            let mut last = std::time::Instant::now();
            let out = d.run(|m| {
                eprintln!(
                    "step {}: loss {:.4} margin {:+.3} accuracy {:.2} lr {:.2e} ({:.1} s)",
                    m.step,
                    m.loss,
                    m.margin,
                    m.accuracy,
                    m.lr,
                    last.elapsed().as_secs_f64()
                );
                last = std::time::Instant::now();
            })?;
            eprintln!("vigil: done. adapter {}", out.display());
            Ok(())
        }
    }
}
