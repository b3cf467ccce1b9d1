//! `vigil export`: a trained adapter as a GGUF adapter (f32/f16/q8_0), PEFT, a merged GGUF model,
//! or an Ollama Modelfile.

use anyhow::{bail, Context, Result};
use vigil_models::chat::ChatTemplate;
use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::lora::LoraAdapter;
use vigil_trainer::train::export;

use crate::cli::{ExportArgs, ExportFormat, Global};

fn dtype(s: &str) -> Result<GgmlType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        "q8_0" => GgmlType::Q8_0,
        "q4_1" => GgmlType::Q4_1,
        "q4_0" => GgmlType::Q4_0,
        other => bail!("--dtype {other}: expected f32, f16, bf16, q8_0, q4_1 or q4_0"),
    })
}

pub fn run(args: ExportArgs, _g: &Global) -> Result<()> {
    let mut adapters = Vec::new();
    for a in &args.adapter {
        let mut adapter = if a.is_dir() && !a.join("adapter.gguf").exists() {
            checkpoint_adapter(a)?
        } else {
            let path = if a.is_dir() { a.join("adapter.gguf") } else { a.clone() };
            LoraAdapter::from_gguf(&Gguf::open(&path)?).with_context(|| format!("loading {}", path.display()))?
        };
        adapter.name = a.display().to_string(); // errors (a mismatch between adapters) name the path given
        adapters.push(adapter);
    }
    let mut adapter = match adapters.len() {
        1 => adapters.remove(0),
        n => {
            let mean = LoraAdapter::average(&adapters)?;
            let r = mean.pairs.values().map(|p| p.r).max().unwrap_or(0);
            eprintln!("vigil: averaged the updates of {n} adapters (rank {r})");
            mean
        }
    };
    if let Some(k) = args.rank {
        let (cut, kept) = adapter.truncate(k)?;
        eprintln!(
            "vigil: cut to rank {k}; every layer keeps at least {:.2} % of its update's squared norm",
            100.0 * kept
        );
        adapter = cut;
    }
    let ty = dtype(&args.dtype)?;
    let base = || -> Result<(std::path::PathBuf, Gguf)> {
        let p = crate::commands::resolve_model(&args.model)?;
        let g = Gguf::open(&p).with_context(|| format!("loading the base model {}", p.display()))?;
        Ok((p, g))
    };
    match args.format {
        ExportFormat::Gguf => {
            adapter.to_gguf(ty)?.write_file(&args.out)?;
        }
        ExportFormat::Peft => {
            let (p, g) = base()?;
            let name = g.opt_str("general.name")?.map(str::to_string).unwrap_or_else(|| p.display().to_string());
            export::peft(&adapter, &g, &name, &args.out)?;
        }
        ExportFormat::Merged => {
            let (_, g) = base()?;
            export::merged(&adapter, &g, ty)?.write_file(&args.out)?;
        }
        ExportFormat::Ollama => {
            let (p, g) = base()?;
            std::fs::create_dir_all(&args.out)?;
            let base_file = p.file_name().context("base model path")?.to_string_lossy().to_string();
            let dst = args.out.join(&base_file);
            if !dst.exists() {
                std::fs::hard_link(&p, &dst).or_else(|_| std::fs::copy(&p, &dst).map(|_| ()))?;
            }
            adapter.to_gguf(ty)?.write_file(args.out.join("adapter.gguf"))?;
            let mf = export::modelfile(&base_file, "adapter.gguf", ChatTemplate::detect(&g)?);
            std::fs::write(args.out.join("Modelfile"), mf)?;
        }
    }
    eprintln!("vigil: wrote {}", args.out.display());
    Ok(())
}

/// The adapter of an unfinished run: the LoRA values of its latest checkpoint, laid out by the
/// run's saved config (model, targets, rank, α). Reads only — a run may be training beside it.
fn checkpoint_adapter(dir: &std::path::Path) -> Result<LoraAdapter> {
    use vigil_models::cpu::{Llama, WeightMode};
    use vigil_trainer::train::{checkpoint, config::TrainConfig, lora::LoraParams, optim::Moments};
    let ckpt = dir.join(checkpoint::FILE);
    if !ckpt.exists() {
        bail!("{}: neither adapter.gguf nor a checkpoint (is it a `vigil train` run directory?)", dir.display());
    }
    let cfg = TrainConfig::resolve("default", Some(&dir.join("config.toml")), &[])?;
    let g = Gguf::open(&crate::commands::resolve_model(&cfg.model)?)?;
    let model = Llama::load(&g, WeightMode::Quantized, &candle_core::Device::Cpu)?;
    let mut lora = LoraParams::init(&model, &cfg.targets, cfg.rank, cfg.alpha, cfg.seed)?;
    let mut moments: Vec<Moments> = lora.params.iter().map(|p| Moments::new(p.value.len(), cfg.adam_8bit)).collect();
    let meta = checkpoint::load(&ckpt, &mut lora, &mut moments)?;
    let step = meta.get("step").map_or("?", String::as_str);
    eprintln!("vigil: {} has no adapter.gguf yet; exporting its checkpoint of step {step}", dir.display());
    Ok(lora.adapter("adapter.gguf"))
}
