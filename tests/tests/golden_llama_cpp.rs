//! Golden tests of vigil's CPU decoder on the real SmolLM2-135M-Instruct Q4_1.
//!
//! Referees (fixtures made by the scripts in `tools/`):
//! - llama.cpp (`golden_smollm2.json`, `tools/llama_reference.py`): greedy continuations and logits,
//!   run with an f32 KV cache so its attention is f32 like ours.
//! - an exact float64 forward pass written independently in numpy (`f64_smollm2.json`,
//!   `tools/f64_reference.py`).
//!
//! Why tolerances: SmolLM2's quantized matmuls round every activation to 8 bits. vigil reproduces
//! ggml's quantized dot products and RMSNorm bit for bit, but not its vectorised exp (softmax,
//! SiLU) or compiler-fused RoPE; those ulp-level differences flip a few activation roundings, and
//! this 30-layer model amplifies each flip. Measured here: two numpy emulations of ggml's quantized
//! arithmetic that differ only in whether attention runs in f32 or f64 disagree by up to 0.95 in
//! a logit; vigil vs llama.cpp has measured between 0.7 and 1.05 as vigil's f32 ops changed. Hence `LOGIT_TOL`, and a greedy token may differ only
//! where llama.cpp's own top-1 margin is a near-tie (`NEAR_TIE`; flips observed between 0.01 and 0.27).
//! With dequantized f32 weights nothing is rounded to 8 bits, and vigil must then match the exact
//! float64 pass to f32 precision (`F64_TOL`).

use serde::Deserialize;
use vigil_models::cpu::sampling::argmax;
use vigil_models::cpu::{Llama, Logits, WeightMode};
use vigil_models::gguf::Gguf;
use vigil_models::testing::model_for_test;
use vigil_models::tokenizer::Tokenizer;

/// Largest first-step logit difference to llama.cpp, and largest mean absolute difference.
const LOGIT_TOL: f32 = 1.2;
/// Mean: 0.09–0.35 per prompt before vigil's attention products and exp became platform-independent
/// (so the browser gives the same tokens); 0.39 on one prompt after, with all 48 of its greedy tokens
/// still identical to llama.cpp's.
const LOGIT_MEAN_TOL: f32 = 0.45;
/// A greedy step may disagree with llama.cpp only where llama.cpp's top-1 margin is below this:
/// mean logit differences of 0.1–0.35 (max ~1) between two correct implementations of 8-bit
/// activations can swing a top-2 gap of this size. A real defect (a wrong RoPE, a wrong norm)
/// disagrees at margins of several logits.
const NEAR_TIE: f64 = 0.5;
/// At least three prompts must decode this many greedy tokens identically, free-running.
const MIN_IDENTICAL: usize = 32;
/// Dense f32 decoder vs exact float64 forward pass (logits of magnitude ~20).
const F64_TOL: f32 = 0.02;

#[derive(Deserialize)]
struct Prompt {
    kind: String,
    text: String,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
    top1_margins: Vec<f64>,
    first_logits_top: Vec<(u32, f32)>,
    first_logits_sample: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
struct Golden {
    n_gen: usize,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct F64Case {
    prompt_ids: Vec<u32>,
    decoded_ids: Vec<u32>,
    logits_top: Vec<(u32, f32)>,
    logits_sample: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
struct F64 {
    cases: Vec<F64Case>,
}

fn golden() -> Golden {
    serde_json::from_str(include_str!("../fixtures/golden_smollm2.json")).unwrap()
}

fn load(mode: WeightMode) -> Option<Llama> {
    let path = model_for_test("smollm2")?;
    Some(Llama::load(&Gguf::open(&path).unwrap(), mode, &candle_core::Device::Cpu).unwrap())
}

/// (max |Δ|, mean |Δ|, token of the max) over reference (id, logit) pairs.
fn compare(ours: &[f32], reference: &[(u32, f32)]) -> (f32, f32, u32) {
    let mut worst = (0f32, 0u32);
    let mut total = 0f32;
    for &(id, want) in reference {
        let d = (ours[id as usize] - want).abs();
        total += d;
        if d > worst.0 {
            worst = (d, id);
        }
    }
    (worst.0, total / reference.len() as f32, worst.1)
}

#[test]
fn prompt_ids_match_llama_cpp() {
    let Some(path) = model_for_test("smollm2") else {
        return;
    };
    let tok = Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    for p in golden().prompts {
        let ids = if p.kind == "chatml" { tok.encode_special(&p.text) } else { tok.encode(&p.text) }.unwrap();
        assert_eq!(ids, p.prompt_ids, "{:?}", p.text);
    }
}

/// Every step of every prompt is compared on llama.cpp's own trajectory (teacher forcing): our
/// argmax must equal llama.cpp's token unless llama.cpp's margin there is a near-tie. Before a
/// prompt's first disagreement this is also free-running greedy decoding; at least three prompts
/// must get through `MIN_IDENTICAL` tokens that way. (Which prompts do varies with any f32-level
/// change in the arithmetic, hence 10 prompts for a requirement of 3.)
#[test]
fn greedy_tokens_and_first_logits_match_llama_cpp() {
    let Some(model) = load(WeightMode::Quantized) else {
        return;
    };
    let fx = golden();
    assert!(fx.n_gen >= 32 && fx.prompts.len() >= 3);
    let mut report = Vec::new();
    let mut identical = 0;
    for (pi, p) in fx.prompts.iter().enumerate() {
        let mut cache = model.new_cache(512);
        let mut l = Llama::logits_vec(&model.forward(&p.prompt_ids, Some(&mut cache), Logits::Last).unwrap()).unwrap();

        let reference: Vec<(u32, f32)> = p.first_logits_top.iter().chain(&p.first_logits_sample).copied().collect();
        let (max, mean, worst) = compare(&l, &reference);
        report.push(format!("prompt {pi}: first-step logits max |Δ| {max:.3} (token {worst}), mean |Δ| {mean:.3}"));
        assert!(max <= LOGIT_TOL && mean <= LOGIT_MEAN_TOL, "prompt {pi}: logits differ (max {max}, mean {mean})");

        let mut flips = Vec::new();
        let mut first_flip = None;
        for step in 0..fx.n_gen {
            let (ours, theirs) = (argmax(&l), p.generated[step]);
            if ours != theirs {
                let margin = p.top1_margins[step];
                let msg = format!(
                    "step {step}: vigil {ours} vs llama.cpp {theirs}, llama.cpp top-1 margin {margin:.4}, vigil logits {:.3} vs {:.3}",
                    l[ours as usize], l[theirs as usize]
                );
                assert!(margin < NEAR_TIE, "prompt {pi} {msg}: not a near-tie");
                flips.push(msg);
                first_flip.get_or_insert(step);
            }
            if step + 1 < fx.n_gen {
                l = Llama::logits_vec(&model.forward(&[theirs], Some(&mut cache), Logits::Last).unwrap()).unwrap();
            }
        }
        // Up to the first disagreement, teacher forcing and free-running greedy decoding coincide.
        let prefix = first_flip.unwrap_or(fx.n_gen);
        if prefix >= MIN_IDENTICAL {
            identical += 1;
        }
        if flips.is_empty() {
            report.push(format!("prompt {pi}: all {} greedy tokens identical", fx.n_gen));
        } else {
            report.push(format!(
                "prompt {pi}: first {prefix} tokens identical; near-tie disagreement(s): {}",
                flips.join("; ")
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(identical >= 3, "only {identical} prompts matched llama.cpp on their first {MIN_IDENTICAL} greedy tokens");
}

/// With dequantized weights (no 8-bit activations) the decoder is exact arithmetic in f32: it must
/// match an independent float64 forward pass, for a prefill and for a decode through the KV cache.
#[test]
fn dense_decoder_matches_exact_float64_forward_pass() {
    let Some(model) = load(WeightMode::Dense(candle_core::DType::F32)) else {
        return;
    };
    let fx: F64 = serde_json::from_str(include_str!("../fixtures/f64_smollm2.json")).unwrap();
    for (ci, c) in fx.cases.iter().enumerate() {
        let mut cache = model.new_cache(256);
        let mut logits = model.forward(&c.prompt_ids, Some(&mut cache), Logits::Last).unwrap();
        for &id in &c.decoded_ids {
            logits = model.forward(&[id], Some(&mut cache), Logits::Last).unwrap();
        }
        let l = Llama::logits_vec(&logits).unwrap();
        let reference: Vec<(u32, f32)> = c.logits_top.iter().chain(&c.logits_sample).copied().collect();
        let (max, mean, worst) = compare(&l, &reference);
        eprintln!(
            "case {ci} ({} decoded through the cache): max |Δ| {max:.5} (token {worst}), mean {mean:.5}",
            c.decoded_ids.len()
        );
        assert!(max <= F64_TOL, "case {ci}: dense decoder differs from float64 by {max} at token {worst}");
        assert_eq!(argmax(&l), c.logits_top[0].0);
    }
}
