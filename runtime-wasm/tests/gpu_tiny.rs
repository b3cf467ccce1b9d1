//! The GPU backend against the CPU decoder with dense f32 weights (the same arithmetic: f32
//! activations, dequantized weights) on a tiny random model: prefill (matvec and tiled matmul
//! sizes, and longer than one chunk), KV-cached decoding, greedy continuations, LoRA, and a failing
//! device reported as an error.

use std::sync::Arc;

use vigil_kernels::context::gpu_for_test;
use vigil_models::cpu::sampling::{Sampler, SamplingParams};
use vigil_models::cpu::WeightMode;
use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::lora::LoraAdapter;
use vigil_models::testing::{tiny_gemma3, tiny_llama};
use vigil_runtime::backend::cpu::CpuBackend;
use vigil_runtime::backend::gpu::{GpuBackend, GpuOptions};
use vigil_runtime::backend::Backend;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The GPU backend with an f32 KV cache (the CPU's arithmetic) and the dense CPU reference.
fn pair(ty: GgmlType) -> Option<(GpuBackend, CpuBackend, Gguf)> {
    let gpu = Arc::new(gpu_for_test()?);
    let g = Gguf::from_bytes("tiny.gguf", tiny_llama(ty, 5)).unwrap();
    let gb = GpuBackend::load_with(gpu, &g, 1024, GpuOptions { kv_f16: false }).unwrap();
    let cb = CpuBackend::load_mode(&g, 1024, WeightMode::Dense(candle_core::DType::F32)).unwrap();
    Some((gb, cb, g))
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % 250) as u32).collect()
}

#[test]
fn logits_match_the_cpu_for_every_step_size() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
        let Some((mut gb, mut cb, _)) = pair(ty) else { return };
        // 5 tokens (matvec), 40 (tiled matmul), then 300 (more than one 128-token chunk)
        for (n, then_decode) in [(5, 3), (40, 2), (300, 1)] {
            gb.truncate(0);
            cb.truncate(0);
            let p = prompt(n);
            let (lg, lc) = (gb.forward(&p).unwrap(), cb.forward(&p).unwrap());
            let d = max_diff(&lg, &lc);
            assert!(d < 2e-3, "{ty} prefill of {n}: logits differ by {d}");
            for i in 0..then_decode {
                let tok = [(i * 13 + 1) as u32];
                let d = max_diff(&gb.forward(&tok).unwrap(), &cb.forward(&tok).unwrap());
                assert!(d < 2e-3, "{ty} decode step {i} after {n}: logits differ by {d}");
            }
            assert_eq!(gb.position(), cb.position());
        }
    }
}

/// The f16 KV cache (the default where the adapter has SHADER_F16) rounds keys and values to 11
/// significant bits; logits stay within `F16_TOL` of the f32 reference and greedy tokens agree.
#[test]
fn the_f16_cache_stays_close_to_the_f32_reference() {
    const F16_TOL: f32 = 2e-2;
    let Some(gpu) = gpu_for_test() else { return };
    if !gpu.f16 {
        eprintln!("SKIP: {} has no SHADER_F16", gpu.describe());
        return;
    }
    let g = Gguf::from_bytes("tiny.gguf", tiny_llama(GgmlType::Q4_1, 5)).unwrap();
    let mut gb = GpuBackend::load(Arc::new(gpu), &g, 1024).unwrap();
    assert!(gb.kv_f16(), "f16 is the default where the adapter has it");
    assert_eq!(gb.kv_bytes(10), 2 * 2 * 32 * 10 * 2);
    let mut cb = CpuBackend::load_mode(&g, 1024, WeightMode::Dense(candle_core::DType::F32)).unwrap();
    let mut worst = 0f32;
    for (n, decode) in [(5, 3), (300, 2)] {
        gb.truncate(0);
        cb.truncate(0);
        let p = prompt(n);
        worst = worst.max(max_diff(&gb.forward(&p).unwrap(), &cb.forward(&p).unwrap()));
        for i in 0..decode {
            let tok = [(i * 13 + 1) as u32];
            worst = worst.max(max_diff(&gb.forward(&tok).unwrap(), &cb.forward(&tok).unwrap()));
        }
    }
    eprintln!("f16 KV: max |Δlogit| {worst:.5}");
    assert!(worst < F16_TOL, "f16 cache: logits differ by {worst}");
    assert!(worst > 0.0, "an f16 cache that rounds nothing is not f16");
    let (mut sg, mut sc) = (Sampler::new(SamplingParams::greedy()), Sampler::new(SamplingParams::greedy()));
    gb.truncate(0);
    cb.truncate(0);
    let p = prompt(12);
    let (mut a, mut b) = (gb.forward_sample(&p, &mut sg).unwrap(), cb.forward_sample(&p, &mut sc).unwrap());
    for step in 0..24 {
        assert_eq!(a, b, "step {step}");
        a = gb.forward_sample(&[a], &mut sg).unwrap();
        b = cb.forward_sample(&[b], &mut sc).unwrap();
    }
}

/// Gemma 3 (tiny): √d-scaled embeddings, per-head q/k norms, post norms added into the residual
/// stream, GeGLU, five sliding-window layers (window 8, local RoPE base) and a global one. Prompts
/// of 5, 40 and 300 tokens all run past the window; decoding goes on past it too; and a LoRA adapter
/// on every projection (the post-normed ones included) matches.
#[test]
fn gemma3_matches_the_cpu_with_windows_norms_and_lora() {
    let Some(gpu) = gpu_for_test() else { return };
    let gpu = Arc::new(gpu);
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
        let g = Gguf::from_bytes("tiny-gemma3.gguf", tiny_gemma3(ty, 7)).unwrap();
        let mut gb = GpuBackend::load_with(gpu.clone(), &g, 1024, GpuOptions { kv_f16: false }).unwrap();
        let mut cb = CpuBackend::load_mode(&g, 1024, WeightMode::Dense(candle_core::DType::F32)).unwrap();
        for (n, then_decode) in [(5, 12), (40, 3), (300, 2)] {
            gb.truncate(0);
            cb.truncate(0);
            let p = prompt(n);
            let d = max_diff(&gb.forward(&p).unwrap(), &cb.forward(&p).unwrap());
            assert!(d < 2e-3, "{ty} prefill of {n}: logits differ by {d}");
            for i in 0..then_decode {
                let tok = [(i * 13 + 1) as u32];
                let d = max_diff(&gb.forward(&tok).unwrap(), &cb.forward(&tok).unwrap());
                assert!(d < 2e-3, "{ty} decode step {i} after {n}: logits differ by {d}");
            }
        }
        if ty == GgmlType::Q8_0 {
            let targets: Vec<(String, usize, usize)> = g
                .tensors()
                .iter()
                .filter(|t| vigil_models::lora::TARGETS.iter().any(|s| t.name.ends_with(&format!("{s}.weight"))))
                .map(|t| (t.name.clone(), t.dims[0] as usize, t.dims[1] as usize))
                .collect();
            assert_eq!(targets.len(), 6 * 7);
            let adapter = LoraAdapter::random("gemma3", &targets, 8, 16.0, 0.1, 9);
            gb.set_adapter(Some(&adapter)).unwrap();
            cb.set_adapter(Some(&adapter)).unwrap();
            let p = prompt(20);
            let d = max_diff(&gb.forward(&p).unwrap(), &cb.forward(&p).unwrap());
            assert!(d < 2e-3, "{ty} with LoRA: logits differ by {d}");
        }
    }
}

#[test]
fn greedy_continuations_are_identical() {
    let Some((mut gb, mut cb, _)) = pair(GgmlType::Q4_1) else { return };
    let mut sg = Sampler::new(SamplingParams::greedy());
    let mut sc = Sampler::new(SamplingParams::greedy());
    let p = prompt(12);
    let (mut a, mut b) = (gb.forward_sample(&p, &mut sg).unwrap(), cb.forward_sample(&p, &mut sc).unwrap());
    for step in 0..24 {
        assert_eq!(a, b, "step {step}");
        a = gb.forward_sample(&[a], &mut sg).unwrap();
        b = cb.forward_sample(&[b], &mut sc).unwrap();
    }
}

/// Top-k / temperature sampling on the GPU draws from the same random stream as the CPU sampler:
/// same seed, same tokens (the model is tiny, so probabilities are far from ties).
#[test]
fn sampled_continuations_follow_the_same_random_stream() {
    let Some((mut gb, mut cb, _)) = pair(GgmlType::Q8_0) else { return };
    let params = SamplingParams { temperature: 0.8, top_p: 0.9, top_k: 20, seed: 3 };
    let (mut sg, mut sc) = (Sampler::new(params), Sampler::new(params));
    let p = prompt(7);
    let (mut a, mut b) = (gb.forward_sample(&p, &mut sg).unwrap(), cb.forward_sample(&p, &mut sc).unwrap());
    for step in 0..16 {
        assert_eq!(a, b, "step {step}");
        a = gb.forward_sample(&[a], &mut sg).unwrap();
        b = cb.forward_sample(&[b], &mut sc).unwrap();
    }
}

#[test]
fn lora_matches_the_cpu_and_swaps_out() {
    let Some((mut gb, mut cb, g)) = pair(GgmlType::Q4_1) else { return };
    let targets: Vec<(String, usize, usize)> =
        ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
            .iter()
            .flat_map(|t| (0..2).map(move |i| format!("blk.{i}.{t}.weight")))
            .map(|n| {
                let t = g.tensor(&n).unwrap();
                (n.clone(), t.dims[0] as usize, t.dims[1] as usize)
            })
            .collect();
    let p = prompt(20);
    let base = gb.forward(&p).unwrap();
    let adapter = LoraAdapter::random("llama", &targets, 8, 16.0, 0.1, 9);
    gb.set_adapter(Some(&adapter)).unwrap();
    cb.set_adapter(Some(&adapter)).unwrap();
    let (lg, lc) = (gb.forward(&p).unwrap(), cb.forward(&p).unwrap());
    assert!(max_diff(&lg, &lc) < 2e-3, "with LoRA: {}", max_diff(&lg, &lc));
    assert!(max_diff(&lg, &base) > 1e-2, "the adapter changed nothing");
    let (tg, tc) = (gb.forward(&[3]).unwrap(), cb.forward(&[3]).unwrap());
    assert!(max_diff(&tg, &tc) < 2e-3, "decode with LoRA");
    gb.set_adapter(None).unwrap();
    assert!(max_diff(&gb.forward(&p).unwrap(), &base) < 1e-5, "removing the adapter restores the base");
    let mut wrong = adapter.clone();
    wrong.arch = "gemma3".into();
    assert!(gb.set_adapter(Some(&wrong)).unwrap_err().to_string().contains("gemma3"));
}

#[test]
fn a_failed_device_is_an_error_not_a_panic() {
    let Some((mut gb, _, _)) = pair(GgmlType::Q8_0) else { return };
    gb.forward(&prompt(4)).unwrap();
    gb.gpu().fail("simulated device loss");
    let e = gb.forward(&[1]).unwrap_err().to_string();
    assert!(e.contains("simulated device loss"), "{e}");
}

/// The engine on the GPU backend: when the device fails mid-use, the request restarts on the CPU
/// backend with a notice, keeping the adapter, and the guard stays on the CPU afterwards.
#[test]
fn the_engine_falls_back_to_the_cpu_when_the_gpu_fails() {
    use std::ops::ControlFlow;
    use vigil_models::guard::GuardRequest;
    use vigil_runtime::{ClassifyOptions, Event, Guard};
    let Some(gpu) = gpu_for_test() else { return };
    let gpu = Arc::new(gpu);
    let g = Gguf::from_bytes("tiny.gguf", tiny_llama(GgmlType::Q4_1, 6)).unwrap();
    let backend = GpuBackend::load(gpu.clone(), &g, 4096).unwrap();
    let mut guard = Guard::new(&g, Box::new(backend)).unwrap();
    assert_eq!(guard.backend_name(), "gpu");
    let targets: Vec<(String, usize, usize)> = (0..2).map(|i| (format!("blk.{i}.attn_q.weight"), 64, 64)).collect();
    guard.set_adapter(Some(&LoraAdapter::random("llama", &targets, 4, 8.0, 0.1, 1))).unwrap();
    let opts = ClassifyOptions { max_tokens: 6, ..ClassifyOptions::default() };
    let req = GuardRequest::new("hello");
    assert!(guard.classify(&req, &opts, |_| ControlFlow::Continue(())).unwrap().verdict.is_ok());
    gpu.fail("simulated device loss");
    let mut notices = Vec::new();
    let out = guard
        .classify(&req, &opts, |ev| {
            if let Event::Notice(n) = ev {
                notices.push(n.to_string());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(out.verdict.is_ok());
    assert_eq!(guard.backend_name(), "cpu");
    assert_eq!(guard.adapter().map(|a| a.starts_with("random")), Some(true));
    assert!(
        notices.len() == 1 && notices[0].contains("simulated device loss") && notices[0].contains("CPU"),
        "{notices:?}"
    );
    assert_eq!(guard.notices().len(), 1);
}
