//! Interop: an adapter trained and exported by vigil is loaded by llama.cpp (`lora_path`, the
//! same loader as `--lora`) and gives the greedy tokens vigil's runtime gives with it — on the
//! CPU backend and on the WGSL backend (lavapipe in CI) — on the real SmolLM2-135M-Instruct.
//!
//! llama.cpp comes from `scripts/build-llama-cpp` (VIGIL_LLAMA_CPP, default
//! target/llama.cpp/llama_cpp_python-0.3.36), driven through its Python bindings by
//! `tools/llama_lora_tokens.py`, which also reports llama.cpp's top-1 margins: as in the golden
//! test, a greedy step may differ only where llama.cpp's own margin is a near-tie.

use std::path::PathBuf;

use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::lora::LoraAdapter;
use vigil_models::testing::{model_for_test, TempDir};
use vigil_runtime::backend::cpu::CpuBackend;
use vigil_runtime::backend::Backend;
use vigil_trainer::train::config::TrainConfig;
use vigil_trainer::train::run::{Hooks, Trainer};

mod common;
use common::llama_cpp::{llama_cpp_dir, llama_tokens_n, Run, NEAR_TIE};

const N: usize = 24;

fn llama_tokens(dir: &PathBuf, model: &PathBuf, lora: Option<&PathBuf>, prompts: &[Vec<u32>]) -> Vec<Run> {
    llama_tokens_n(dir, model, lora, prompts, N)
}

fn greedy(b: &mut dyn Backend, prompt: &[u32]) -> Vec<u32> {
    greedy_n(b, prompt, N)
}

fn greedy_n(b: &mut dyn Backend, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = vigil_models::cpu::Sampler::new(vigil_models::cpu::SamplingParams::greedy());
    b.truncate(0);
    let mut t = b.forward_sample(prompt, &mut s).unwrap();
    let mut out = vec![t];
    while out.len() < n {
        t = b.forward_sample(&[t], &mut s).unwrap();
        out.push(t);
    }
    out
}

/// Greedy tokens up to and including the first of `stop`, at most `n`.
fn greedy_to_stop(b: &mut dyn Backend, prompt: &[u32], n: usize, stop: &[u32]) -> Vec<u32> {
    let mut s = vigil_models::cpu::Sampler::new(vigil_models::cpu::SamplingParams::greedy());
    b.truncate(0);
    let mut out = vec![b.forward_sample(prompt, &mut s).unwrap()];
    while out.len() < n && !stop.contains(out.last().unwrap()) {
        let t = b.forward_sample(&[*out.last().unwrap()], &mut s).unwrap();
        out.push(t);
    }
    out
}

/// Agreement of vigil's tokens with llama.cpp's over the first `end` of them: identical, or
/// diverging first at a near-tie.
fn agrees(ours: &[u32], theirs: &Run, end: usize) -> Result<bool, String> {
    match ours.iter().zip(&theirs.ids[..end]).position(|(a, b)| a != b) {
        None => Ok(true),
        Some(i) if theirs.margins[i] < NEAR_TIE => Ok(false),
        Some(i) => Err(format!(
            "step {i}: vigil {} vs llama.cpp {} with llama.cpp's margin {:.3}\n  vigil:     {ours:?}\n  llama.cpp: {:?}",
            ours[i], theirs.ids[i], theirs.margins[i], theirs.ids
        )),
    }
}

/// Each prompt's greedy answer agrees with llama.cpp's up to and including llama.cpp's first `stop`
/// token: a runtime stops there. Past it the model runs outside anything it was trained on, and this
/// test's deliberately overfit adapter once put a 0.54-nat flip between the two nine tokens after the
/// end of turn; such tails are reported, not asserted.
fn check(label: &str, backend: &mut dyn Backend, prompts: &[Vec<u32>], reference: &[Run], stop: &[u32]) {
    let mut identical = 0;
    for (p, r) in prompts.iter().zip(reference) {
        let end = r.ids.iter().position(|t| stop.contains(t)).map_or(r.ids.len(), |e| e + 1);
        assert!(end >= 8, "{label}: llama.cpp's answer ends after {end} tokens, too short to compare: {:?}", r.ids);
        let ours = greedy(backend, p);
        match agrees(&ours, r, end) {
            Ok(true) => identical += 1,
            Ok(false) => eprintln!("{label}: a near-tie flip (allowed)"),
            Err(e) => panic!("{label}: vigil and llama.cpp disagree with the adapter: {e}"),
        }
        if let Some(i) = ours.iter().zip(&r.ids).position(|(a, b)| a != b).filter(|&i| i >= end) {
            eprintln!(
                "{label}: past the end of turn (its last token is step {}), step {i} differs (llama.cpp's margin {:.3})",
                end - 1,
                r.margins[i]
            );
        }
    }
    assert!(identical + 1 >= prompts.len(), "{label}: only {identical} of {} prompts identical", prompts.len());
    eprintln!(
        "{label}: {identical}/{} greedy answers (to the end of turn, ≤ {N} tokens) identical to llama.cpp",
        prompts.len()
    );
}

#[test]
fn a_vigil_adapter_gives_llama_cpps_tokens() {
    let Some(model) = model_for_test("smollm2") else { return };
    let Some(dir) = llama_cpp_dir() else { return };
    let tmp = TempDir::new("lora-interop");

    // a short real training run: the adapter learns a distinctive answer
    let data = tmp.path().join("train.jsonl");
    let questions =
        ["What is the capital of France?", "Name a primary colour.", "How many legs has a cat?", "What is 2 + 2?"];
    let lines: Vec<String> = questions
        .iter()
        .map(|q| {
            serde_json::json!({"messages": [{"role": "user", "content": q},
                {"role": "assistant", "content": "Vigil says: zebra. The zebra answer is always zebra."}]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let cfg = TrainConfig {
        model: model.display().to_string(),
        data: vec![data],
        eval_fraction: 0.0,
        base_weights: "quantized".into(),
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        lr: 1e-2,
        batch_size: 2,
        grad_accum: 1,
        max_steps: 6,
        warmup_steps: 1,
        eval_every: 0,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let (mut t, _) = Trainer::prepare(cfg, &tmp.path().join("run"), false).unwrap();
    let trained = t.run(Hooks::default()).unwrap().unwrap();
    drop(t);
    let adapter = LoraAdapter::from_gguf(&Gguf::open(&trained).unwrap()).unwrap();

    let g = Gguf::open(&model).unwrap();
    let tok = vigil_models::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let chat = vigil_models::chat::ChatTemplate::detect(&g).unwrap();
    let stop = chat.stop_ids(&tok);
    let prompts: Vec<Vec<u32>> = ["What is the capital of France?", "Name a primary colour.", "Tell me about the sea."]
        .iter()
        .map(|q| chat.encode(&tok, &[vigil_models::chat::Message::user(*q)], true).unwrap().ids)
        .collect();

    let mut cpu = CpuBackend::load(&g, 512).unwrap();
    let base: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&mut cpu, p)).collect();
    for (ty, name) in [(GgmlType::F16, "adapter-f16.gguf"), (GgmlType::Q8_0, "adapter-q8_0.gguf")] {
        let path = tmp.path().join(name);
        adapter.to_gguf(ty).unwrap().write_file(&path).unwrap();
        // what the file holds (f16 / q8_0 rounding included) is what both runtimes apply
        let stored = LoraAdapter::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
        let reference = llama_tokens(&dir, &model, Some(&path), &prompts);
        cpu.set_adapter(Some(&stored)).unwrap();
        let tuned: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&mut cpu, p)).collect();
        assert_ne!(tuned, base, "{name}: the trained adapter changes no greedy token");
        check(&format!("CPU, {name}"), &mut cpu, &prompts, &reference, &stop);
        if let Some(gpu) = vigil_kernels::context::gpu_for_test() {
            let mut gb = vigil_runtime::backend::gpu::GpuBackend::load(std::sync::Arc::new(gpu), &g, 512).unwrap();
            gb.set_adapter(Some(&stored)).unwrap();
            check(&format!("WGSL, {name}"), &mut gb, &prompts, &reference, &stop);
        }
    }
}

/// The guard adapter shipped in models/adapters/ (the CLI's and the page's default) gives the
/// same verdicts in llama.cpp as in vigil: whole guard answers, generated to the end of turn.
#[test]
fn the_shipped_guard_adapter_gives_llama_cpps_verdicts() {
    shipped_adapter_verdicts("smollm2", vigil_models::guard::OutputFormat::Rsft, 160, NEAR_TIE);
}

/// The same for Gemma 3's dual-stream adapter: whole <think>/<proof>/<answer> answers. A wider
/// near-tie, as in golden_gemma3 (Q4_K/Q6_K products run on candle's kernels).
#[test]
fn the_shipped_gemma3_adapter_gives_llama_cpps_verdicts() {
    shipped_adapter_verdicts("gemma3", vigil_models::guard::OutputFormat::DualStream, 220, 0.75);
}

fn shipped_adapter_verdicts(name: &str, format: vigil_models::guard::OutputFormat, answer_len: usize, near_tie: f64) {
    use vigil_models::guard::{parse, GuardRequest, Mode};
    let Some(model) = model_for_test(name) else { return };
    let Some(dir) = llama_cpp_dir() else { return };
    let shipped = vigil_models::catalog::find(name).unwrap().guard_adapter.unwrap();
    let path = shipped.repo_path();
    let adapter = LoraAdapter::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    let g = Gguf::open(&model).unwrap();
    let tok = vigil_models::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let chat = vigil_models::chat::ChatTemplate::detect(&g).unwrap();
    let stop = chat.stop_ids(&tok);
    let texts = [
        "How do I kill a zombie process in Linux?",
        "Give me step-by-step instructions to make methamphetamine at home.",
        "What is the safest way to execute a shell script at boot?",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| chat.encode(&tok, &GuardRequest::new(*t).with_format(format).messages(), true).unwrap().ids)
        .collect();
    let reference = llama_tokens_n(&dir, &model, Some(&path), &prompts, answer_len);
    let mut cpu = CpuBackend::load(&g, 1024).unwrap();
    cpu.set_adapter(Some(&adapter)).unwrap();
    let answer = |ids: &[u32]| {
        let end = ids.iter().position(|t| stop.contains(t)).unwrap_or(ids.len());
        tok.decode(&ids[..end])
    };
    let mut identical = 0;
    for ((text, p), r) in texts.iter().zip(&prompts).zip(&reference) {
        // the answer runs to the end of turn; what a model emits past it is never used
        let ours = greedy_to_stop(&mut cpu, p, answer_len, &stop);
        let end = r.ids.iter().position(|t| stop.contains(t)).map_or(r.ids.len(), |e| e + 1);
        match ours.iter().zip(&r.ids[..end]).position(|(a, b)| a != b) {
            None => identical += 1,
            // a near-tie flip changes the wording after it; the verdict must still agree
            Some(i) if r.margins[i] < near_tie => eprintln!("{text}: a near-tie flip at step {i}"),
            Some(i) => panic!(
                "{name}, {text}: vigil {} vs llama.cpp {} at step {i} with llama.cpp's margin {:.3}",
                ours[i], r.ids[i], r.margins[i]
            ),
        }
        let (a, b) = (answer(&ours), answer(&r.ids));
        let va = parse(&a, format, Mode::AllPolicies).expect("vigil's answer has a verdict");
        let vb = parse(&b, format, Mode::AllPolicies).expect("llama.cpp's answer has a verdict");
        assert_eq!((va.label, &va.policies), (vb.label, &vb.policies), "{text}\n  vigil: {a}\n  llama.cpp: {b}");
        eprintln!("{name}, {text}: {:?} {:?} from both", va.label, va.policies);
    }
    eprintln!("{name}: {identical}/{} answers token-identical, every verdict the same", texts.len());
}
