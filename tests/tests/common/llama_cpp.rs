//! llama.cpp as the referee, shared by the test binaries: where `scripts/build-llama-cpp` put it
//! (VIGIL_LLAMA_CPP, default target/llama.cpp/llama_cpp_python-0.3.36), and its greedy tokens with
//! top-1 margins through `tools/llama_lora_tokens.py`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Deserialize;
use vigil_models::testing::{repo_root, strict};

/// Two correct implementations of 8-bit activations disagree by up to ~1 logit (see
/// golden_llama_cpp.rs), so a greedy step may differ only where llama.cpp's top-1 margin is below this.
pub const NEAR_TIE: f64 = 0.5;

#[derive(Deserialize)]
pub struct Run {
    pub ids: Vec<u32>,
    pub margins: Vec<f64>,
}

pub fn llama_cpp_dir() -> Option<PathBuf> {
    let dir = std::env::var("VIGIL_LLAMA_CPP")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/llama.cpp/llama_cpp_python-0.3.36"));
    if dir.join("vendor/llama.cpp/build/bin/libllama.so").exists() {
        return Some(dir);
    }
    let hint = format!("llama.cpp is not built at {} (run scripts/build-llama-cpp)", dir.display());
    if strict() {
        panic!("{hint} (VIGIL_STRICT=1: missing test assets are failures)");
    }
    eprintln!("SKIPPED: {hint}");
    None
}

pub fn llama_tokens_n(
    dir: &PathBuf,
    model: &PathBuf,
    lora: Option<&PathBuf>,
    prompts: &[Vec<u32>],
    n: usize,
) -> Vec<Run> {
    let req = serde_json::json!({"model": model, "lora": lora, "prompts": prompts, "n": n});
    let mut child = Command::new(std::env::var("VIGIL_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(repo_root().join("tools/llama_lora_tokens.py"))
        .env("PYTHONPATH", dir)
        .env("LLAMA_CPP_LIB_PATH", dir.join("vendor/llama.cpp/build/bin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "llama.cpp reference failed: {}", String::from_utf8_lossy(&out.stderr));
    #[derive(Deserialize)]
    struct Out {
        results: Vec<Run>,
    }
    serde_json::from_slice::<Out>(&out.stdout).unwrap().results
}
