//! Hard-sample DPO on a tiny random llama: mining keeps only items with mixed verdicts and resumes;
//! DPO raises the chosen-minus-rejected log-ratio margin on its training pairs; reference log-probs
//! are computed once and then read from the run's cache.

use std::cell::Cell;

use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::guard::{Label, Policy};
use vigil_models::testing::{model_for_test, tiny_llama, TempDir};
use vigil_trainer::data::Item;
use vigil_trainer::train::config::TrainConfig;
use vigil_trainer::train::dpo::{self, DpoConfig, DpoPair};
use vigil_trainer::train::run::Trainer;

fn item(id: &str, label: Label, policies: Vec<Policy>) -> Item {
    Item {
        id: id.into(),
        text: format!("content {id}"),
        response: None,
        label,
        policies,
        reasoning: vec![],
        source: "test".into(),
        licence: "MIT".into(),
        kind: "k".into(),
        group: id.into(),
    }
}

const RIGHT_SAFE: &str = "Reasoning:\nStep 1: It is harmless.\n\nClassification: SAFE\nViolated policies: none";
const WRONG_UNSAFE: &str =
    "Reasoning:\nStep 1: It sounds violent.\n\nClassification: UNSAFE\nViolated policies: violence";

#[test]
fn mining_keeps_mixed_items_and_resumes() {
    let tmp = TempDir::new("dpo-mine");
    let items = vec![
        item("mixed", Label::Safe, vec![]),
        item("easy", Label::Safe, vec![]),
        item("hopeless", Label::Safe, vec![]),
    ];
    let calls = Cell::new(0);
    let sample = |it: &Item, j: usize| {
        calls.set(calls.get() + 1);
        Ok(match (it.id.as_str(), j) {
            ("mixed", 0) => RIGHT_SAFE.to_string(),
            ("mixed", _) => WRONG_UNSAFE.to_string(),
            ("easy", _) => RIGHT_SAFE.to_string(),
            _ => "no verdict".to_string(),
        })
    };
    let out = tmp.path().join("pairs.jsonl");
    let t = dpo::mine(&items, 4, dpo::Chosen::Sampled, &out, sample, |_| {}).unwrap();
    assert_eq!((t.hard, t.easy, t.skipped), (1, 2, 0));
    assert_eq!(calls.get(), 12);
    let pairs: Vec<DpoPair> = vigil_trainer::data::read_jsonl(&out).unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(
        (pairs[0].chosen.as_str(), pairs[0].rejected.as_str(), pairs[0].weight),
        (RIGHT_SAFE, WRONG_UNSAFE, 1.2)
    );
    let t = dpo::mine(&items, 4, dpo::Chosen::Sampled, &out, sample, |_| {}).unwrap();
    assert_eq!((t.hard, t.easy, t.skipped), (0, 0, 3));
    assert_eq!(calls.get(), 12, "finished items are not sampled again");
}

#[test]
fn gold_mining_pairs_the_trace_with_each_wrong_greedy_answer() {
    let tmp = TempDir::new("dpo-mine-gold");
    let mut right = item("right", Label::Safe, vec![]);
    let mut wrong = item("wrong", Label::Safe, vec![]);
    let mut policy = item("policy", Label::Unsafe, vec![Policy::Harassment]);
    for it in [&mut right, &mut wrong, &mut policy] {
        it.reasoning = vec![format!("The user writes: \"{}\".", it.text), "Read as meant, it is what it is.".into()];
    }
    let items = vec![right, wrong, policy];
    let sample = |it: &Item, j: usize| {
        assert_eq!(j, 0, "k = 1 asks one answer per item");
        Ok(match it.id.as_str() {
            "right" => RIGHT_SAFE.to_string(),
            "wrong" => WRONG_UNSAFE.to_string(),
            _ => WRONG_UNSAFE.to_string(), // UNSAFE, but the wrong policy
        })
    };
    let out = tmp.path().join("pairs.jsonl");
    assert!(dpo::mine(&items, 1, dpo::Chosen::Sampled, &out, sample, |_| {}).is_err(), "k = 1 needs the gold trace");
    let t = dpo::mine(&items, 1, dpo::Chosen::Gold, &out, sample, |_| {}).unwrap();
    assert_eq!((t.hard, t.easy, t.skipped), (2, 1, 0));
    let pairs: Vec<DpoPair> = vigil_trainer::data::read_jsonl(&out).unwrap();
    assert_eq!(pairs.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["wrong", "policy"]);
    for (p, it) in pairs.iter().zip(&items[1..]) {
        assert_eq!(p.rejected, WRONG_UNSAFE);
        assert_eq!(p.chosen, dpo::gold_answer(it));
        assert!(dpo::is_correct(it, &p.chosen), "the gold answer states the item's verdict: {}", p.chosen);
        assert!(p.chosen.contains("Step 2: Read as meant"), "{}", p.chosen);
        assert_eq!((p.correct, p.k, p.weight), (0, 1, 1.0));
    }
}

#[test]
fn dpo_raises_the_margin_and_caches_the_reference() {
    let tmp = TempDir::new("dpo-train");
    let model = tmp.path().join("tiny.gguf");
    std::fs::write(&model, tiny_llama(GgmlType::Q8_0, 5)).unwrap();
    // an "R-SFT" adapter: the trainer's parameters with non-zero B
    let g = Gguf::open(&model).unwrap();
    let cfg = TrainConfig { model: model.display().to_string(), rank: 4, alpha: 8.0, ..TrainConfig::default() };
    let mut t = Trainer::with_examples(cfg, &g, vec![], vec![], tmp.path()).unwrap();
    for p in t.lora.params.iter_mut().filter(|p| p.name.ends_with("lora_b")) {
        p.value.iter_mut().enumerate().for_each(|(i, v)| *v = 0.01 * ((i % 7) as f32 - 3.0));
    }
    let sft = t.lora.adapter("sft.gguf");
    let pairs: Vec<DpoPair> = (0..6)
        .map(|i| DpoPair {
            id: format!("p{i}"),
            text: format!("message number {i}"),
            response: None,
            chosen: RIGHT_SAFE.into(),
            rejected: WRONG_UNSAFE.into(),
            weight: 1.0,
            correct: 2,
            k: 4,
        })
        .collect();
    let cfg = DpoConfig {
        beta: 0.5,
        lr: 5e-3,
        max_steps: 8,
        pairs_per_step: 3,
        warmup_ratio: 0.0,
        max_len: 4096,
        ..DpoConfig::default()
    };
    let dir = tmp.path().join("dpo");
    let mut d = dpo::Dpo::prepare(cfg.clone(), &model, &sft, &pairs, &dir).unwrap();
    assert_eq!(d.reference_computed, 6);
    let before = d.margins().unwrap();
    assert!(before.iter().all(|m| m.abs() < 1e-3), "the policy starts at the reference: {before:?}");
    let adapter = d.run(|_| {}).unwrap();
    let after = d.margins().unwrap();
    let mean = after.iter().sum::<f64>() / after.len() as f64;
    assert!(mean > 0.5, "DPO must raise the chosen-minus-rejected margin: {after:?}");
    assert!(adapter.is_file());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8);

    // a second run in the same directory reads the cached reference
    let again = dpo::Dpo::prepare(cfg.clone(), &model, &sft, &pairs, &dir).unwrap();
    assert_eq!(again.reference_computed, 0);
    assert_eq!(again.reference, d.reference);
    // … but not one computed on other base weights
    assert_eq!(cfg.base_weights, "bf16");
    let f32_run = DpoConfig { base_weights: "f32".into(), ..cfg };
    assert_eq!(dpo::Dpo::prepare(f32_run, &model, &sft, &pairs, &dir).unwrap().reference_computed, 6);
}

#[test]
fn mining_with_smollm2_records_every_item() {
    let Some(model) = model_for_test("smollm2-135m-instruct") else { return };
    let tmp = TempDir::new("dpo-mine-real");
    // an adapter of the real model: an all-zero-B LoRA (the base model's behaviour)
    let g = Gguf::open(&model).unwrap();
    let cfg = TrainConfig {
        model: model.display().to_string(),
        rank: 2,
        alpha: 4.0,
        targets: vec!["attn_q".into()],
        ..TrainConfig::default()
    };
    let t = Trainer::with_examples(cfg, &g, vec![], vec![], tmp.path()).unwrap();
    let adapter = tmp.path().join("zero.gguf");
    t.lora.adapter("zero.gguf").to_gguf(GgmlType::F32).unwrap().write_file(&adapter).unwrap();
    let data = tmp.path().join("items.jsonl");
    vigil_trainer::data::write_jsonl(&data, &[item("a", Label::Safe, vec![])]).unwrap();
    let out = tmp.path().join("pairs.jsonl");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["dpo", "mine", "-k", "2", "--max-tokens", "32", "-m"])
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--data")
        .arg(&data)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let recorded = std::fs::read_to_string(&out).unwrap_or_default().lines().count()
        + std::fs::read_to_string(dpo::easy_path(&out)).unwrap_or_default().lines().count();
    assert_eq!(recorded, 1, "{stdout}");
}

#[test]
fn dpo_gradient_matches_finite_differences() {
    let tmp = TempDir::new("dpo-fd");
    let model = tmp.path().join("tiny.gguf");
    std::fs::write(&model, tiny_llama(GgmlType::F32, 9)).unwrap();
    let g = Gguf::open(&model).unwrap();
    let cfg = TrainConfig {
        model: model.display().to_string(),
        rank: 2,
        alpha: 4.0,
        targets: vec!["attn_q".into(), "ffn_down".into()],
        ..TrainConfig::default()
    };
    let mut t = Trainer::with_examples(cfg, &g, vec![], vec![], tmp.path()).unwrap();
    for p in t.lora.params.iter_mut() {
        p.value.iter_mut().enumerate().for_each(|(i, v)| *v = 0.05 * ((i % 5) as f32 - 2.0));
    }
    let sft = t.lora.adapter("sft.gguf");
    let pair = DpoPair {
        id: "p".into(),
        text: "hi".into(),
        response: None,
        chosen: RIGHT_SAFE.into(),
        rejected: WRONG_UNSAFE.into(),
        weight: 1.1,
        correct: 1,
        k: 4,
    };
    // dequantized f32 base weights: finite differences need exact products (bf16 rounds the inputs)
    let cfg = DpoConfig { beta: 2.0, alpha: 0.5, max_len: 4096, base_weights: "f32".into(), ..DpoConfig::default() };
    let mut d = dpo::Dpo::prepare(cfg, &model, &sft, &[pair], &tmp.path().join("run")).unwrap();
    // move the policy off the reference so the sigmoid term has a slope of its own
    for p in d.lora.params.iter_mut() {
        p.value.iter_mut().enumerate().for_each(|(i, v)| *v += 0.03 * ((i % 3) as f32 - 1.0));
    }
    d.lora.sync().unwrap();
    let (loss, _) = d.pair_loss(0).unwrap();
    let grads = loss.backward().unwrap();
    for k in 0..d.lora.params.len() {
        let analytic: Vec<f32> =
            grads.get(d.lora.params[k].var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(analytic.iter().any(|x| *x != 0.0), "{} gets no gradient", d.lora.params[k].name);
        let j = analytic.iter().enumerate().max_by(|a, b| a.1.abs().partial_cmp(&b.1.abs()).unwrap()).unwrap().0;
        let eps = 1e-2f32;
        let mut at = |delta: f32| {
            d.lora.params[k].value[j] += delta;
            d.lora.sync().unwrap();
            let l = d.pair_loss(0).unwrap().0.to_scalar::<f32>().unwrap() as f64;
            d.lora.params[k].value[j] -= delta;
            d.lora.sync().unwrap();
            l
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let a = analytic[j] as f64;
        assert!(
            (a - numeric).abs() <= 0.05 * a.abs().max(1e-3),
            "{}[{j}]: analytic {a} vs numeric {numeric}",
            d.lora.params[k].name
        );
    }
}
