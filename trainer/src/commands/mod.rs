//! One module per verb, each with `run(args, &Global)`; shared model loading lives here.

pub mod bench;
pub mod classify;
pub mod data;
pub mod eval;
pub mod export;
pub mod fetch_model;
pub mod tokens;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vigil_models::catalog;
use vigil_models::gguf::Gguf;
use vigil_models::guard::OutputFormat;
use vigil_models::lora::LoraAdapter;
use vigil_runtime::Guard;

use crate::cli::ModelArgs;

/// A model argument as a file: an existing path, or a catalogue name (fetched when missing).
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if let Some(entry) = catalog::find(arg) {
        if entry.cached().is_none() {
            eprintln!(
                "vigil: fetching {} ({} MB) into {}",
                entry.name,
                entry.size / 1_000_000,
                catalog::cache_dir().display()
            );
        }
        return vigil_trainer::fetch::fetch(&entry);
    }
    let names: Vec<String> = catalog::entries().into_iter().map(|e| e.name).collect();
    if p.extension().is_some_and(|e| e == "gguf") || arg.contains('/') {
        bail!("model file {arg} does not exist");
    }
    bail!("`{arg}` is neither a file nor a catalogued model (known: {})", names.join(", "))
}

/// An adapter argument as a file: a path, `none`, or `default` — the guard adapter shipped for
/// `model` (`models/catalog.toml`), found in the cache (`vigil fetch-model`) or this checkout.
pub fn adapter_path(arg: &str, model: &Path) -> Result<Option<PathBuf>> {
    if arg.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if !arg.eq_ignore_ascii_case("default") {
        return Ok(Some(PathBuf::from(arg)));
    }
    let Some(shipped) = catalog::find_by_file(model).and_then(|e| e.guard_adapter) else {
        return Ok(None);
    };
    match shipped.available() {
        Some(p) => Ok(Some(p)),
        None => bail!(
            "the default guard adapter {} is neither in this checkout nor in the cache ({}): run `vigil fetch-model`, or pass --adapter none",
            shipped.file,
            shipped.cache_path().display()
        ),
    }
}

/// The output format: the one asked for, else the shipped adapter's when `--adapter default`
/// applies it (Gemma's guard is trained on the dual-stream format), else R-SFT. A model that does
/// not resolve is left to the loader to report.
pub fn output_format(asked: Option<crate::cli::FormatArg>, m: &ModelArgs) -> OutputFormat {
    use crate::cli::FormatArg;
    match asked {
        Some(FormatArg::Rsft) => OutputFormat::Rsft,
        Some(FormatArg::Dual) => OutputFormat::DualStream,
        None if m.adapter.eq_ignore_ascii_case("default")
            && resolve_model(&m.model)
                .ok()
                .and_then(|p| catalog::find_by_file(&p))
                .and_then(|e| e.guard_adapter)
                .is_some_and(|a| a.dual_stream()) =>
        {
            OutputFormat::DualStream
        }
        None => OutputFormat::Rsft,
    }
}

/// Reads the adapter `arg` names for `model` (see [`adapter_path`]).
pub fn load_adapter(arg: &str, model: &Path) -> Result<Option<LoraAdapter>> {
    let Some(path) = adapter_path(arg, model)? else {
        if arg.eq_ignore_ascii_case("default") {
            eprintln!("vigil: no guard adapter is shipped for {}; running the bare base model", model.display());
        }
        return Ok(None);
    };
    let g = Gguf::open(&path)?;
    Ok(Some(LoraAdapter::from_gguf(&g).with_context(|| format!("loading the adapter {}", path.display()))?))
}

/// Loads base model and adapter on the chosen backend, printing any fallback notice.
pub fn load_guard(m: &ModelArgs) -> Result<Guard> {
    let path = resolve_model(&m.model)?;
    let choice = match m.backend {
        crate::cli::BackendArg::Auto => vigil_runtime::BackendChoice::Auto,
        crate::cli::BackendArg::Gpu => vigil_runtime::BackendChoice::Gpu,
        crate::cli::BackendArg::Cpu => vigil_runtime::BackendChoice::Cpu,
    };
    let mut guard = Guard::open(&path, choice, m.context).with_context(|| format!("loading {}", path.display()))?;
    for n in guard.notices() {
        eprintln!("vigil: {n}");
    }
    if let Some(a) = load_adapter(&m.adapter, &path)? {
        guard.set_adapter(Some(&a)).with_context(|| format!("applying the adapter to {}", path.display()))?;
    }
    Ok(guard)
}
