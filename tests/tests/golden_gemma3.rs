//! Golden test of the Gemma 3 (270M, Q4_K_M mix: Q5_0, Q4_K, Q6_K, Q8_0) decoder against
//! llama.cpp, on the CPU and on the WGSL backend (lavapipe in CI): greedy tokens on plain-text and
//! Gemma-template prompts must equal llama.cpp's, a step differing only where llama.cpp's own top-1
//! margin is a near-tie.

mod common;

use std::sync::Arc;

use common::llama_cpp::{llama_cpp_dir, llama_tokens_n, Run};
use vigil_kernels::context::gpu_for_test;
use vigil_models::chat::{ChatTemplate, Message};
use vigil_models::cpu::sampling::argmax;
use vigil_models::cpu::{Llama, Logits, WeightMode};
use vigil_models::gguf::Gguf;
use vigil_models::testing::model_for_test;
use vigil_models::tokenizer::Tokenizer;
use vigil_runtime::backend::gpu::GpuBackend;
use vigil_runtime::backend::Backend;

/// A greedy step may differ only where llama.cpp's top-1 margin is below this. Wider than
/// SmolLM2's 0.5: Q5_0 and Q8_0 run on vigil's ggml-exact kernels, but the Q4_K / Q6_K products go
/// through candle's. First-step logits against llama.cpp on 3 prompts: mean |Δ| 0.09–0.16, max
/// 0.46–0.83 (with candle's Q5_0 as well: mean 0.16–0.35, max 0.98–1.32, the spread of vigil's
/// dequantized f32 pass). Flips seen at margins 0.07–0.55; a wrong norm or RoPE moves logits by
/// several units and disagrees at large margins.
const NEAR_TIE: f64 = 0.75;
/// Greedy tokens compared per prompt.
const N: usize = 40;
/// Tokens that must agree before any (near-tie) divergence, on at least `MIN_PROMPTS` prompts.
const MIN_IDENTICAL: usize = 32;
const MIN_PROMPTS: usize = 3;

fn greedy(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.new_cache(prompt.len() + n);
    let mut logits = m.forward(prompt, Some(&mut cache), Logits::Last).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let t = argmax(&Llama::logits_vec(&logits).unwrap());
        out.push(t);
        logits = m.forward(&[t], Some(&mut cache), Logits::Last).unwrap();
    }
    out
}

fn greedy_gpu(gb: &mut GpuBackend, prompt: &[u32], n: usize) -> Vec<u32> {
    gb.truncate(0);
    let mut logits = gb.forward(prompt).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let t = argmax(&logits);
        out.push(t);
        logits = gb.forward(&[t]).unwrap();
    }
    out
}

/// Checks one backend's greedy tokens against llama.cpp's.
fn check(backend: &str, prompts: &[Vec<u32>], reference: &[Run], mut greedy: impl FnMut(&[u32]) -> Vec<u32>) {
    let mut identical = 0;
    for (p, r) in prompts.iter().zip(reference) {
        let ours = greedy(p);
        let first_diff = ours.iter().zip(&r.ids).position(|(a, b)| a != b);
        let margin = first_diff.map(|i| r.margins[i]);
        eprintln!(
            "{backend}: prompt of {} tokens: first difference {first_diff:?}, llama.cpp margin there {margin:?}",
            p.len()
        );
        match first_diff {
            None => identical += 1,
            Some(i) => {
                assert!(
                    r.margins[i] < NEAR_TIE,
                    "{backend}, step {i}: vigil {} vs llama.cpp {} where llama.cpp's margin is {:.3}",
                    ours[i],
                    r.ids[i],
                    r.margins[i]
                );
                if i >= MIN_IDENTICAL {
                    identical += 1;
                }
            }
        }
    }
    assert!(identical >= MIN_PROMPTS, "{backend}: only {identical} prompts agree for {MIN_IDENTICAL}+ tokens");
}

#[test]
fn gemma3_greedy_tokens_equal_llama_cpps() {
    let Some(path) = model_for_test("gemma3") else { return };
    let Some(dir) = llama_cpp_dir() else { return };
    let g = Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let bos = tok.bos().unwrap();
    let plain = |s: &str| [vec![bos], tok.encode(s).unwrap()].concat();
    let chat = |s: &str| ChatTemplate::Gemma3.encode(&tok, &[Message::user(s)], true).unwrap().ids;
    let prompts = vec![
        plain("The capital of France is"),
        plain("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
        plain("Once upon a time, in a small village by the sea, there lived"),
        chat("How do I kill a zombie process in Linux?"),
        plain("Water boils at a temperature of"),
        chat("Write a haiku about autumn leaves."),
        plain("The three primary colors are"),
        chat("Is it safe to mix bleach and ammonia when cleaning?"),
    ];
    let reference = llama_tokens_n(&dir, &path, None, &prompts, N);
    let m = Llama::load(&g, WeightMode::Quantized, &candle_core::Device::Cpu).unwrap();
    check("cpu", &prompts, &reference, |p| greedy(&m, p, N));
    drop(m);
    let Some(gpu) = gpu_for_test() else { return };
    let mut gb = GpuBackend::load(Arc::new(gpu), &g, 256).unwrap();
    eprintln!("wgsl: {:.1} MB of weights read per token", gb.weight_bytes() as f64 / 1e6);
    check("wgsl", &prompts, &reference, |p| greedy_gpu(&mut gb, p, N));
}
