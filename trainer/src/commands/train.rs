//! `vigil train`: resolve the config, load data and model, run the loop with a progress bar.

use anyhow::{Context, Result};
use vigil_trainer::train::config::TrainConfig;
use vigil_trainer::train::run::{Hooks, Metrics, Trainer};

use crate::cli::{Global, TrainArgs};

pub fn run(args: TrainArgs, _g: &Global) -> Result<()> {
    let mut overrides = Vec::new();
    // absolute paths, so a run resumes from any working directory
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
    if !args.data.is_empty() {
        overrides.push(format!("data={}", list(&args.data)?));
    }
    if !args.eval_data.is_empty() {
        overrides.push(format!("eval_data={}", list(&args.eval_data)?));
    }
    if !args.rho_data.is_empty() {
        overrides.push(format!("rho_data={}", list(&args.rho_data)?));
    }
    if let Some(m) = &args.model {
        overrides.push(format!("model={}", toml::Value::String(m.clone())));
    }
    overrides.extend(args.overrides.iter().cloned());
    let mut cfg = if args.resume && args.config.is_none() && overrides.is_empty() {
        // a resumed run uses the config it saved
        TrainConfig::resolve("default", Some(&args.out.join("config.toml")), &[])?
    } else {
        let preset = args.stage.as_deref().unwrap_or(&args.preset);
        TrainConfig::resolve(preset, args.config.as_deref(), &overrides)?
    };
    // preset probe paths are relative to the working directory: pin them like --data
    if !args.resume {
        let cwd = std::env::current_dir()?;
        cfg.rho_data = cfg.rho_data.iter().map(|p| if p.is_relative() { cwd.join(p) } else { p.clone() }).collect();
    }
    if args.show_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    cfg.model = crate::commands::resolve_model(&cfg.model)?.display().to_string();

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
    let dir = args.out.display();
    match done {
        Some(adapter) => {
            eprintln!(
                "vigil: done. adapter {} · curve {dir}/loss.svg · metrics {dir}/metrics.jsonl",
                adapter.display()
            );
            eprintln!("       classify with: vigil classify --adapter {} \"…\"", adapter.display());
        }
        None => eprintln!("vigil: stopped at step {}; continue with: vigil train --out {dir} --resume", trainer.step),
    }
    Ok(())
}
