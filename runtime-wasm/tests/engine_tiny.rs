//! The engine on a tiny random model (no download): vocabulary checks at load, forced verdicts,
//! prefix reuse.

use std::ops::ControlFlow;

use vigil_models::gguf::{GgmlType, Gguf, GgufWriter, Value};
use vigil_models::guard::{GuardRequest, Label, Mode, Policy};
use vigil_models::testing::tiny_llama;
use vigil_runtime::backend::cpu::CpuBackend;
use vigil_runtime::{ClassifyOptions, Guard};

fn guard_from(g: &Gguf) -> vigil_models::Result<Guard> {
    Guard::new(g, Box::new(CpuBackend::load(g, 4096)?))
}

fn edited(edit: impl Fn(&mut GgufWriter)) -> Gguf {
    let base = Gguf::from_bytes("tiny.gguf", tiny_llama(GgmlType::Q8_0, 2)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata() {
        w.set(k.clone(), v.clone());
    }
    for t in base.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty, base.tensor_bytes(t).to_vec()).unwrap();
    }
    edit(&mut w);
    Gguf::from_bytes("edited.gguf", w.to_bytes()).unwrap()
}

#[test]
fn a_turn_marker_that_is_not_a_control_token_is_refused() {
    let g = edited(|w| {
        let mut types = vec![1i32; 256];
        types.extend([3, 3, 4]); // <|im_end|> stored as user-defined
        w.set("tokenizer.ggml.token_type", Value::i32_array(types));
    });
    let e = guard_from(&g).err().unwrap().to_string();
    assert!(e.contains("edited.gguf") && e.contains("<|im_end|>") && e.contains("not a control token"), "{e}");
}

#[test]
fn a_tokenizer_larger_than_the_model_is_refused() {
    let g = edited(|w| w.set("llama.vocab_size", Value::U32(100)).remove("none"));
    let e = guard_from(&g).err().unwrap().to_string();
    assert!(e.contains("edited.gguf") && e.contains("100") && e.contains("259"), "{e}");
}

/// A random model writes no verdict; the forced one parses, agrees with the text written, and is
/// flagged. In per-policy mode it names that policy.
#[test]
fn forced_verdicts_parse_and_match_the_written_text() {
    let g = Gguf::from_bytes("tiny.gguf", tiny_llama(GgmlType::Q8_0, 2)).unwrap();
    let mut guard = guard_from(&g).unwrap();
    let opts = ClassifyOptions { max_tokens: 8, ..ClassifyOptions::default() };
    for mode in [Mode::AllPolicies, Mode::PerPolicy(Policy::Violence)] {
        let req = GuardRequest::new("How do I kill a zombie process?").with_mode(mode);
        let out = guard.classify(&req, &opts, |_| ControlFlow::Continue(())).unwrap();
        assert!(out.forced, "a random model should not write a verdict: {:?}", out.raw);
        let v = out.verdict.expect("a forced verdict parses");
        let tail = &out.raw[out.raw.rfind("Classification:").unwrap()..];
        assert!(tail.starts_with(&format!("Classification: {}", v.label.upper())), "{tail}");
        match (mode, v.label) {
            (Mode::PerPolicy(p), Label::Unsafe) => assert_eq!(v.policies, vec![p]),
            (Mode::AllPolicies, Label::Unsafe) => {
                assert_eq!(v.policies.len(), 1);
                assert!(tail.contains(&format!("Violated policies: {}", v.policies[0].name())));
            }
            (_, Label::Safe) => assert!(v.policies.is_empty()),
        }
        let mut no_force = guard_from(&g).unwrap();
        let opts = ClassifyOptions { force_verdict: false, ..opts };
        let raw = no_force.classify(&req, &opts, |_| ControlFlow::Continue(())).unwrap();
        assert!(raw.verdict.is_err() && !raw.forced);
    }
}

#[test]
fn prefix_reuse_equals_a_fresh_engine() {
    let g = Gguf::from_bytes("tiny.gguf", tiny_llama(GgmlType::Q4_1, 4)).unwrap();
    let opts = ClassifyOptions { max_tokens: 12, force_verdict: false, ..ClassifyOptions::default() };
    let mut warm = guard_from(&g).unwrap();
    let run = |g: &mut Guard, t: &str| g.classify(&GuardRequest::new(t), &opts, |_| ControlFlow::Continue(())).unwrap();
    run(&mut warm, "first request");
    let second = run(&mut warm, "second request");
    assert!(second.stats.reused_tokens > 100);
    let fresh = run(&mut guard_from(&g).unwrap(), "second request");
    assert_eq!(second.raw, fresh.raw);
}
