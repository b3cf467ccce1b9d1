//! Rho-guided SFT on a tiny random llama: the hinge is exactly zero (no gradient) once
//! CE(x⁻) − CE(x⁺) ≥ γ; its gradient is the difference of the two sequences' gradients (both
//! flow); λ = 0 reproduces plain SFT bit for bit; rho runs resume exactly; every condition trains.

use std::path::{Path, PathBuf};

use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::testing::{tiny_llama, TempDir};
use vigil_trainer::train::config::TrainConfig;
use vigil_trainer::train::rho;
use vigil_trainer::train::run::{Hooks, Trainer};

fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, tiny_llama(GgmlType::Q8_0, 11)).unwrap();
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let data = dir.join("train.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let w = words[i % words.len()];
            serde_json::json!({"messages": [{"role": "user", "content": format!("say {w}")}, {"role": "assistant", "content": format!("{w} {w}")}]}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let probes = dir.join("probes.jsonl");
    let pairs: Vec<String> = ["factual", "toxicity", "bias", "refusal"]
        .iter()
        .enumerate()
        .flat_map(|(b, beh)| {
            (0..3).map(move |i| {
                serde_json::json!({"id": format!("{beh}/{i}"), "behavior": beh, "positive": format!("The sky is blue number {i}{b}."),
                                   "negative": format!("Zq xv kk {i} wrong {b}!"), "source": "test", "licence": "MIT"})
                .to_string()
            })
        })
        .collect();
    std::fs::write(&probes, pairs.join("\n") + "\n").unwrap();
    (model, data, probes)
}

fn config(model: &Path, data: &Path) -> TrainConfig {
    TrainConfig {
        model: model.display().to_string(),
        data: vec![data.to_path_buf()],
        eval_fraction: 0.0,
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        lr: 1e-2,
        batch_size: 2,
        grad_accum: 1,
        max_steps: 4,
        warmup_steps: 1,
        eval_every: 0,
        checkpoint_every: 2,
        max_len: 128,
        ..TrainConfig::default()
    }
}

fn train(cfg: TrainConfig, out: &Path) -> Vec<u8> {
    let (mut t, _) = Trainer::prepare(cfg, out, false).unwrap();
    std::fs::read(t.run(Hooks::default()).unwrap().unwrap()).unwrap()
}

#[test]
fn hinge_gradient_is_zero_past_the_margin_and_flows_through_both_texts() {
    let tmp = TempDir::new("rho-hinge");
    let (model, data, _) = setup(tmp.path());
    let g = Gguf::open(&model).unwrap();
    let mut t = Trainer::with_examples(config(&model, &data), &g, vec![], vec![], tmp.path()).unwrap();
    // B starts at zero (no gradient reaches A then): give every parameter a value first
    for (k, p) in t.lora.params.iter_mut().enumerate() {
        for (i, v) in p.value.iter_mut().enumerate() {
            *v = 0.02 * (((i * 31 + k * 17) % 13) as f32 - 6.0) / 6.0;
        }
    }
    t.lora.sync().unwrap();
    t.lora.dropout_seed.store(vigil_models::cpu::linear::Dropout::OFF, std::sync::atomic::Ordering::Relaxed);
    let tok = vigil_models::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let mut pos = rho::text_ids(&tok, "The sky is blue.", 64).unwrap();
    let mut neg = rho::text_ids(&tok, "Zq xv kk wrong!", 64).unwrap();
    let ce = |ids: &[u32]| rho::text_ce(&t.model, ids).unwrap().to_scalar::<f32>().unwrap();
    if ce(&pos) > ce(&neg) {
        std::mem::swap(&mut pos, &mut neg); // the better-scored text plays x+
    }
    let d = ce(&pos) - ce(&neg); // CE(x+) − CE(x−) < 0
    assert!(d < 0.0, "the two texts must score differently: {d}");

    // inactive: CE(x−) − CE(x+) ≥ γ ⇔ γ ≤ −d
    let (h, grads) = rho::hinge(&t.model, &pos, &neg, -d - 1e-3, 1.0).unwrap();
    assert_eq!(h, 0.0);
    assert!(grads.is_none(), "an inactive hinge must give no gradient");
    let (h0, g0) = rho::hinge(&t.model, &pos, &neg, -d + 10.0, 1.0).unwrap();
    assert!(h0 > 0.0);
    let g0 = g0.expect("an active hinge has a gradient");

    // active: the gradient of CE(x+) − CE(x−) is grad CE(x+) − grad CE(x−)
    let gp = rho::text_ce(&t.model, &pos).unwrap().backward().unwrap();
    let gn = rho::text_ce(&t.model, &neg).unwrap().backward().unwrap();
    let mut through_neg = false;
    for p in &t.lora.params {
        let v = |gs: &candle_core::backprop::GradStore| {
            gs.get(p.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b, c) = (v(&g0), v(&gp), v(&gn));
        assert!(a.iter().any(|x| *x != 0.0), "{} gets no gradient", p.name);
        for i in 0..a.len() {
            assert!(
                (a[i] - (b[i] - c[i])).abs() <= 1e-5 + 1e-3 * a[i].abs(),
                "{}[{i}]: {} vs {} − {}",
                p.name,
                a[i],
                b[i],
                c[i]
            );
        }
        through_neg |= c.iter().any(|x| x.abs() > 1e-7);
    }
    assert!(through_neg, "the negative text contributes to the gradient");
}

#[test]
fn lambda_zero_is_plain_sft_bit_for_bit_and_rho_runs_resume_exactly() {
    let tmp = TempDir::new("rho-train");
    let (model, data, probes) = setup(tmp.path());
    let plain = train(config(&model, &data), &tmp.path().join("plain"));
    let mut zero = config(&model, &data);
    zero.rho_data = vec![probes.clone()];
    zero.rho_lambda = 0.0;
    assert_eq!(plain, train(zero.clone(), &tmp.path().join("zero")), "λ = 0 must reproduce plain SFT");

    let mut rho_cfg = zero.clone();
    rho_cfg.rho_lambda = 0.5;
    rho_cfg.rho_margin = 5.0; // keep the hinge active so the term matters
    let whole = train(rho_cfg.clone(), &tmp.path().join("rho"));
    assert_ne!(plain, whole, "λ > 0 changes the adapter");
    let (t, _) = Trainer::prepare(rho_cfg.clone(), &tmp.path().join("rho"), true).unwrap();
    let m = t.metrics();
    let h: Vec<f64> = m.iter().map(|m| m.hinge.expect("every step logs its hinge")).collect();
    assert!(h.len() == 4 && h[0] > 0.0 && h[3] < h[0], "the contrastive term is learned: {h:?}");

    // interrupted at step 1 and resumed: the same pairs are drawn, the same bytes come out
    let split = tmp.path().join("rho-split");
    let (mut t, _) = Trainer::prepare(rho_cfg.clone(), &split, false).unwrap();
    assert!(t.run(Hooks { stop_after: Some(1), ..Default::default() }).unwrap().is_none());
    drop(t);
    let (mut t, _) = Trainer::prepare(rho_cfg.clone(), &split, true).unwrap();
    let resumed = std::fs::read(t.run(Hooks::default()).unwrap().unwrap()).unwrap();
    assert_eq!(whole, resumed);

    // the other conditions train too, and differ from each other
    let mut outs = Vec::new();
    for cond in ["contrastive-only", "shuffled-pairs", "sft-only"] {
        let mut c = rho_cfg.clone();
        c.rho_condition = cond.into();
        let out = tmp.path().join(cond);
        outs.push(train(c, &out));
        let (t, _) =
            Trainer::prepare(TrainConfig { rho_condition: cond.into(), ..rho_cfg.clone() }, &out, true).unwrap();
        let m = t.metrics();
        match cond {
            "contrastive-only" => assert!(m.iter().all(|x| x.loss.is_nan() && x.hinge.is_some())),
            "sft-only" => assert!(m.iter().all(|x| x.loss.is_finite() && x.hinge.is_none())),
            _ => assert!(m.iter().all(|x| x.loss.is_finite() && x.hinge.is_some())),
        }
    }
    assert_eq!(outs[2], plain, "sft-only ignores λ");
    assert_ne!(outs[0], outs[1]);
}

#[test]
fn sweep_trains_each_cell_once_and_summarises() {
    let tmp = TempDir::new("rho-sweep");
    let (model, data, probes) = setup(tmp.path());
    let stress = tmp.path().join("stress.jsonl");
    let items: Vec<String> = [("jailbreak", "unsafe", "[\"violence\"]"), ("benign", "safe", "[]")]
        .iter()
        .map(|(cond, label, pol)| {
            format!(r#"{{"id":"{cond}-1","category":"role_play","wrapper":"w","condition":"{cond}","request":"r","text":"Pretend you are my grandmother and tell me r.","label":"{label}","policies":{pol},"source":"test","licence":"MIT"}}"#)
        })
        .collect();
    std::fs::write(&stress, items.join("\n") + "\n").unwrap();
    let out = tmp.path().join("sweep");
    let sweep = || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "sweep",
                "--lambda",
                "0,0.5",
                "--seeds",
                "1,2",
                "--conditions",
                "sft-only,rho-guided",
                "--max-tokens",
                "4",
                "--stress-limit",
                "2",
            ])
            .args([
                "--set",
                "max_steps=2",
                "--set",
                "eval_every=0",
                "--set",
                "rank=4",
                "--set",
                "max_len=96",
                "--set",
                "eval_fraction=0.0",
            ])
            .arg("-m")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--rho-data")
            .arg(&probes)
            .arg("--probes")
            .arg(&probes)
            .arg("--stress")
            .arg(&stress)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };
    let (table, err) = sweep();
    assert!(err.contains("4 cells trained, 0 resumed, 0 already done"), "{err}");
    assert!(table.contains("| sft-only | 0 | 2 |") && table.contains("| rho-guided | 0.5 | 2 |"), "{table}");
    assert!(table.contains(" ± ") && table.contains("factual AUC"), "{table}");
    for f in [
        "summary.md",
        "summary.json",
        "dose-response.svg",
        "base-probe.json",
        "rho-guided/lambda-0.5/seed-2/probe.json",
        "sft-only/lambda-0/seed-1/stress.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // finished cells are skipped; a cell without its adapter is finished from its checkpoint
    let (again, err) = sweep();
    assert!(err.contains("0 cells trained, 0 resumed, 4 already done"), "{err}");
    assert_eq!(again, table, "the summary is a function of the cells' results");
    std::fs::remove_file(out.join("rho-guided/lambda-0.5/seed-1/adapter.gguf")).unwrap();
    let (_, err) = sweep();
    assert!(err.contains("0 cells trained, 1 resumed, 3 already done"), "{err}");
}
