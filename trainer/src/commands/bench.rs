//! `vigil bench`: prefill and decode speed of the guard's base model, as medians over repeats,
//! optionally next to llama.cpp's `llama-bench` run on the same file in the same process.
//!
//! Prefill: a `--prompt-tokens` prompt on an empty cache. Decode: `--gen-tokens` greedy steps
//! after a one-token prompt (what llama-bench's `tg` measures). With `--llama-bench`, the two
//! runtimes alternate repeat by repeat.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cli::{BenchArgs, Global};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (prefill tok/s, decode tok/s) from llama-bench's JSON output.
fn llama_bench(bin: &Path, model: &Path, threads: usize, args: &BenchArgs) -> Result<(f64, f64)> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &args.prompt_tokens.to_string(), "-n", &args.gen_tokens.to_string()])
        .args(["-r", "1", "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("llama-bench printed no JSON")?;
    let mut pp = None;
    let mut tg = None;
    for r in v.as_array().context("llama-bench JSON is not an array")? {
        let (np, ng, ts) = (r["n_prompt"].as_u64(), r["n_gen"].as_u64(), r["avg_ts"].as_f64());
        match (np, ng) {
            (Some(p), Some(0)) if p > 0 => pp = ts,
            (Some(0), Some(g)) if g > 0 => tg = ts,
            _ => {}
        }
    }
    Ok((pp.context("no prompt-processing result")?, tg.context("no generation result")?))
}

/// Bytes a decode step reads: every weight of the layers and the output head (a tied head reads
/// the whole embedding table), plus keys and values at `positions` (`kv_value_bytes` each).
fn bytes_per_token(path: &Path, positions: usize, kv_value_bytes: usize) -> Result<(u64, u64)> {
    let g = vigil_models::gguf::Gguf::open(path)?;
    let cfg = vigil_models::arch::ArchConfig::from_gguf(&g)?;
    let mut weights: u64 = g.tensors().iter().filter(|t| t.name.starts_with("blk.")).map(|t| t.n_bytes).sum();
    let head = if cfg.tied_embeddings { "token_embd.weight" } else { "output.weight" };
    weights += g.require_tensor(head)?.n_bytes;
    let kv = (2 * cfg.n_layer * cfg.kv_dim() * positions * kv_value_bytes) as u64;
    Ok((weights, kv))
}

pub fn run(args: BenchArgs, g: &Global) -> Result<()> {
    if args.what == crate::cli::BenchWhat::Train {
        return train(args, g);
    }
    let threads = g.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let path = crate::commands::resolve_model(&args.model.model)?;
    let mut margs = args.model.clone();
    margs.model = path.display().to_string();
    margs.context = margs.context.max(args.prompt_tokens + args.gen_tokens + 8);
    // the anchors are bare base models: an adapter is measured only when named by file
    if margs.adapter.eq_ignore_ascii_case("default") {
        margs.adapter = "none".into();
    }
    let mut guard = crate::commands::load_guard(&margs)?;

    // A fixed prompt: ordinary English text, repeated to length.
    let base = guard.tokenizer().encode(
        "The guard reads a piece of content and reasons step by step about each policy before it gives a verdict. \
         Metaphors such as annihilating the competition are not violence, and killing a zombie process is routine work. ",
    )?;
    let prompt: Vec<u32> = base.iter().copied().cycle().take(args.prompt_tokens).collect();
    let pb = vigil_trainer::progress::items("bench", (args.repeats + 1) as u64);
    guard.run_tokens(&prompt[..16.min(prompt.len())], 4)?; // warm-up: page in the weights
    pb.inc(1);
    // With a llama.cpp build, the two runtimes alternate (one repeat each) so drift on a shared
    // machine lands on both alike; medians are compared.
    let (mut pf, mut dc) = (Vec::new(), Vec::new());
    let (mut lpf, mut ldc) = (Vec::new(), Vec::new());
    for _ in 0..args.repeats.max(1) {
        let (p, _) = guard.run_tokens(&prompt, 0)?;
        let (_, d) = guard.run_tokens(&prompt[..1], args.gen_tokens)?;
        pf.push(args.prompt_tokens as f64 / p.as_secs_f64());
        dc.push(args.gen_tokens as f64 / d.as_secs_f64());
        if let Some(bin) = &args.llama_bench {
            let (lp, ld) = llama_bench(bin, &path, threads, &args)?;
            lpf.push(lp);
            ldc.push(ld);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (prefill, decode) = (median(pf), median(dc));
    let llama = if lpf.is_empty() { None } else { Some((median(lpf), median(ldc))) };
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let info = guard.backend_info();
    // decoding from a 1-token prompt: on average gen/2 positions of KV are read per step
    let (wbytes, kvbytes) = bytes_per_token(&path, 1 + args.gen_tokens / 2, info.kv_value_bytes)?;
    let per_token = wbytes + kvbytes;
    let bound = args.bandwidth_gbs.map(|bw| bw * 1e9 / per_token as f64);
    if args.json {
        let mut o = json!({
            "backend": guard.backend_name(),
            "device": info.device,
            "model": name,
            "threads": threads,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "prefill_tok_s": prefill,
            "decode_tok_s": decode,
            "dispatches_per_token": info.dispatches_per_token,
            "bytes_per_token": per_token,
            "kv_value_bytes": info.kv_value_bytes,
        });
        if let Some(b) = bound {
            o["decode_bound_tok_s"] = json!(b);
            o["fraction_of_bound"] = json!(decode / b);
        }
        if let Some((lp, ld)) = llama {
            o["llama_cpp"] = json!({"prefill_tok_s": lp, "decode_tok_s": ld});
            o["ratio"] = json!({"prefill": prefill / lp, "decode": decode / ld});
        }
        println!("{o}");
    } else {
        println!("{name}, {} backend on {}, median of {}", guard.backend_name(), info.device, args.repeats.max(1));
        println!("{:<10} {:>14} {:>14} {:>8}", "", "vigil tok/s", "llama.cpp", "ratio");
        for (label, ours, theirs) in [
            (format!("pp{}", args.prompt_tokens), prefill, llama.map(|l| l.0)),
            (format!("tg{}", args.gen_tokens), decode, llama.map(|l| l.1)),
        ] {
            match theirs {
                Some(t) => println!("{label:<10} {ours:>14.1} {t:>14.1} {:>7.2}x", ours / t),
                None => println!("{label:<10} {ours:>14.1} {:>14} {:>8}", "-", "-"),
            }
        }
        if let Some(n) = info.dispatches_per_token {
            println!("dispatches per token: {n}");
        }
        print!(
            "bytes read per token: {:.1} MB ({:.1} MB weights + {:.2} MB KV, {})",
            per_token as f64 / 1e6,
            wbytes as f64 / 1e6,
            kvbytes as f64 / 1e6,
            if info.kv_value_bytes == 2 { "f16" } else { "f32" }
        );
        match bound {
            Some(b) => println!("; bandwidth bound {b:.0} tok/s, decode at {:.0}% of it", 100.0 * decode / b),
            None => println!(" (--bandwidth-gbs N prints the bound)"),
        }
    }
    Ok(())
}

/// The PyTorch + PEFT anchor as anchors.md records it (LoRA r16 on q, k, v, o, gate, up, down;
/// seq 256, batch 4, fp32, 2 threads, AdamW), measured on a machine whose CPU has AMX: machines of
/// this kind differ (an AMD Zen 4 one runs the same script at 181–213 tok/s), so `--peft-python`
/// measures it here instead.
const PEFT_TOK_S: f64 = 315.0;
const PEFT_PEAK_GB: f64 = 4.88;

/// The anchor's script, carried in the binary so the benchmark runs from anywhere.
const PEFT_SCRIPT: &str = include_str!("../../../tools/peft_train_anchor.py");

/// The PyTorch + PEFT anchor as `vigil bench train` reports it.
struct Anchor {
    tok_s: f64,
    peak_gb: f64,
    /// "torch 2.15.0, peft 0.21.2, measured here" or "anchors.md, another machine".
    source: String,
}

/// Runs `tools/peft_train_anchor.py` with `python` on the same model and shape; its last line of
/// output is one JSON object.
fn peft_anchor(python: &Path, model: &Path, args: &BenchArgs, threads: usize, dir: &Path) -> Result<Anchor> {
    std::fs::create_dir_all(dir)?;
    let script = dir.join("peft_train_anchor.py");
    std::fs::write(&script, PEFT_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let out = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .args(["--seq", &args.seq.to_string(), "--batch", &args.batch.to_string()])
        .args(["--rank", &args.rank.to_string(), "--steps", &args.steps.max(1).to_string()])
        .args(["--threads", &threads.to_string()])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "the PyTorch + PEFT anchor ({} {}) failed: {}",
            python.display(),
            script.display(),
            err.lines().last().unwrap_or("")
        );
    }
    parse_anchor(&String::from_utf8_lossy(&out.stdout))
}

fn parse_anchor(stdout: &str) -> Result<Anchor> {
    let line =
        stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("the anchor printed no JSON line")?;
    let v: serde_json::Value = serde_json::from_str(line).context("the anchor's JSON line")?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("the anchor's JSON has no number `{k}`: {line}"));
    let ver = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    Ok(Anchor {
        tok_s: num("tok_s")?,
        peak_gb: num("peak_rss_gb")?,
        source: format!("torch {}, peft {}, measured here", ver("torch"), ver("peft")),
    })
}

/// Peak resident memory of this process (Linux: VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Multiply-adds ×2 per trained token of one LoRA step: the forward products and the input
/// gradients of every frozen projection and the head (2 + 2 flops per weight), the LoRA branches
/// (forward, input and weight gradients: 6 per weight), and attention over `seq` positions
/// (q·kᵀ and p·v forward, twice that backward, computed whole as the kernels do).
fn train_flops_per_token(cfg: &vigil_models::arch::ArchConfig, lora_params: usize, seq: usize) -> f64 {
    let (d, q, kv) = (cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim);
    let per_layer = d * q + 2 * d * kv + q * d + 3 * d * cfg.n_ff;
    let frozen = (cfg.n_layer * per_layer + cfg.vocab_size * d) as f64;
    let attention = (cfg.n_layer * 12 * seq * q) as f64;
    4.0 * frozen + 6.0 * lora_params as f64 + attention
}

/// The best rate of the step's product kernel (bf16 weights: vigil's; else candle's f32 matmul)
/// on a projection-shaped product (x [2048, k] · Wᵀ, W [n, k] from the model's feed-forward):
/// what the whole step could reach if it were all matmul at full speed.
fn product_peak_gflops(cfg: &vigil_models::arch::ArchConfig, base_weights: &str) -> Result<f64> {
    use candle_core::Tensor;
    let (m, k, n) = (2048, cfg.n_embd, cfg.n_ff);
    let x = vigil_models::testing::randn(&[m, k], 1.0, 1);
    let w = vigil_models::testing::randn(&[n, k], 0.05, 2);
    let run: Box<dyn Fn() -> Result<Tensor>> = if base_weights == "bf16" {
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let packed = std::sync::Arc::new(vigil_models::cpu::fused::Bf16Weight::new(&wv, n, k));
        Box::new(
            move || Ok(x.apply_op1(vigil_models::cpu::fused::Bf16MatMul { w: packed.clone(), transposed: false })?),
        )
    } else {
        let wt = w.t()?.contiguous()?;
        Box::new(move || Ok(x.matmul(&wt)?))
    };
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t0 = std::time::Instant::now();
        let _ = run()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// `vigil bench train`: optimizer steps of `--batch` sequences of `--seq` tokens (every token a
/// target) on the base model, through the trainer's own step; tokens/s and peak RSS.
fn train(args: BenchArgs, g: &Global) -> Result<()> {
    use vigil_trainer::train::config::TrainConfig;
    use vigil_trainer::train::data::Example;
    use vigil_trainer::train::run::Trainer;
    let threads = g.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let path = crate::commands::resolve_model(&args.model.model)?;
    let gguf = vigil_models::gguf::Gguf::open(&path)?;
    let tok = vigil_models::tokenizer::Tokenizer::from_gguf(&gguf)?;
    let text = tok.encode(
        "The guard reads a piece of content and reasons step by step about each policy before it gives a verdict. ",
    )?;
    let ids: Vec<u32> = text.iter().copied().cycle().take(args.seq).collect();
    let mask = vec![true; ids.len()];
    let ex = Example::new("bench".into(), ids, mask);
    let cfg = TrainConfig {
        model: path.display().to_string(),
        rank: args.rank,
        alpha: 2.0 * args.rank as f32,
        dropout: 0.0,
        batch_size: args.batch,
        grad_accum: 1,
        max_steps: (args.steps + 1) as u64,
        base_weights: args.base_weights.clone(),
        ..TrainConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("vigil-bench-train-{}", std::process::id()));
    let mut t = Trainer::with_examples(cfg, &gguf, vec![ex; args.batch], Vec::new(), &dir)?;
    let pb = vigil_trainer::progress::items("bench train", (args.steps + 1) as u64);
    t.train_step()?; // warm-up
    pb.inc(1);
    let mut speeds = Vec::new();
    for _ in 0..args.steps.max(1) {
        let t0 = std::time::Instant::now();
        let (_, _, tokens, _) = t.train_step()?;
        speeds.push(tokens as f64 / t0.elapsed().as_secs_f64());
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tok_s = median(speeds);
    let peak = peak_rss().map(|b| b as f64 / 1e9);
    let (params, n_layers) = (t.lora.count(), t.lora.layers.len());
    let flops = train_flops_per_token(t.model.config(), params, args.seq);
    let peak_gflops = product_peak_gflops(t.model.config(), &args.base_weights)?;
    drop(t); // the anchor's process gets the memory back
    let anchor = match &args.peft_python {
        Some(py) => {
            let a = peft_anchor(py, &path, &args, threads, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            a?
        }
        None => Anchor { tok_s: PEFT_TOK_S, peak_gb: PEFT_PEAK_GB, source: "anchors.md, another machine".into() },
    };
    let need = 2.0 * anchor.tok_s * flops / 1e9;
    if args.json {
        println!(
            "{}",
            json!({"threads": threads, "base_weights": args.base_weights, "bf16_kernel": vigil_models::cpu::bf16::kernel().name(), "seq": args.seq, "batch": args.batch, "rank": args.rank, "lora_params": params,
                   "tok_s": tok_s, "peak_rss_gb": peak, "peft_tok_s": anchor.tok_s, "peft_peak_gb": anchor.peak_gb,
                   "peft_source": anchor.source, "speed_ratio": tok_s / anchor.tok_s, "memory_ratio": peak.map(|p| p / anchor.peak_gb),
                   "gflop_per_token": flops / 1e9, "gflops": tok_s * flops / 1e9, "product_peak_gflops": peak_gflops,
                   "goal_gflops": need})
        );
    } else {
        println!(
            "LoRA r{} on {} layers ({params} parameters), seq {} × batch {}, base weights {}, {threads} threads, median of {} steps",
            args.rank,
            n_layers,
            args.seq,
            args.batch,
            match args.base_weights.as_str() {
                "quantized" => "quantized (QLoRA)".to_string(),
                "bf16" => format!("bf16 on {} (activations, LoRA and optimizer f32)", vigil_models::cpu::bf16::kernel().name()),
                _ => "dequantized f32 (all arithmetic fp32, as the anchor)".into(),
            },
            args.steps.max(1)
        );
        println!("{:<22} {:>12} {:>14}", "", "tokens/s", "peak RSS GB");
        println!("{:<22} {:>12.1} {:>14}", "vigil", tok_s, peak.map_or("-".into(), |p| format!("{p:.2}")));
        println!(
            "{:<22} {:>12.1} {:>14.2}   ({})",
            "PyTorch+PEFT (anchor)", anchor.tok_s, anchor.peak_gb, anchor.source
        );
        println!(
            "ratio: {:.2}× the speed at {} the memory (goal ≥ 2× at ≤ 0.5×)",
            tok_s / anchor.tok_s,
            peak.map_or("?".into(), |p| format!("{:.2}×", p / anchor.peak_gb))
        );
        println!(
            "work: {:.2} GFLOP per token → vigil {:.0} GFLOP/s, the anchor {:.0}; the goal needs {:.0} GFLOP/s, \
             {:.0} % of what {} reaches on a bare projection-sized product ({:.0} GFLOP/s)",
            flops / 1e9,
            tok_s * flops / 1e9,
            anchor.tok_s * flops / 1e9,
            need,
            100.0 * need / peak_gflops,
            if args.base_weights == "bf16" { "vigil's bf16 kernel" } else { "candle's f32 matmul" },
            peak_gflops
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The anchor's last JSON line is read past the libraries' warnings; a line without the
    /// numbers is an error that shows it.
    #[test]
    fn the_anchor_line_is_read_after_warnings() {
        let out = "UserWarning: something\n{\"tok_s\": 187.9, \"peak_rss_gb\": 4.98, \"torch\": \"2.15.0\", \"peft\": \"0.21.2\"}\n";
        let a = super::parse_anchor(out).unwrap();
        assert_eq!((a.tok_s, a.peak_gb), (187.9, 4.98));
        assert_eq!(a.source, "torch 2.15.0, peft 0.21.2, measured here");
        let e = super::parse_anchor("{\"tok_s\": \"fast\"}").err().unwrap().to_string();
        assert!(e.contains("tok_s") && e.contains("fast"), "{e}");
        assert!(super::parse_anchor("Traceback ...").is_err());
    }

    /// The per-token work counts each frozen projection and the head once: checked against the
    /// weight tensors of a tiny model's GGUF.
    #[test]
    fn training_flops_count_every_frozen_weight() {
        use vigil_models::gguf::{GgmlType, Gguf};
        let g = Gguf::from_bytes("tiny", vigil_models::tiny::tiny_llama(GgmlType::F32, 1)).unwrap();
        let cfg = vigil_models::arch::ArchConfig::from_gguf(&g).unwrap();
        let projections = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
        let elems = |t: &vigil_models::gguf::TensorInfo| t.dims.iter().product::<u64>() as f64;
        let mut frozen: f64 = g
            .tensors()
            .iter()
            .filter(|t| projections.iter().any(|p| t.name.ends_with(&format!("{p}.weight"))))
            .map(elems)
            .sum();
        frozen += elems(g.tensor("output.weight").or(g.tensor("token_embd.weight")).unwrap());
        let (lora, seq) = (1000, 8);
        let attention = (cfg.n_layer * 12 * seq * cfg.n_head * cfg.head_dim) as f64;
        assert_eq!(super::train_flops_per_token(&cfg, lora, seq), 4.0 * frozen + 6.0 * lora as f64 + attention);
    }
}
