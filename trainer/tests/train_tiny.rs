//! The trainer end to end on a tiny random llama (vigil's own GGUF writer): the loss falls, an
//! interrupted and resumed run ends with the same adapter bytes as an uninterrupted one (f32 and
//! 8-bit optimizer states, dropout on), bad data and mismatched resumes are refused with the file
//! and line named, and the exports load back.

use std::path::{Path, PathBuf};

use vigil_models::cpu::{Llama, Logits, WeightMode};
use vigil_models::gguf::{GgmlType, Gguf};
use vigil_models::lora::LoraAdapter;
use vigil_models::testing::{tiny_llama, TempDir};
use vigil_trainer::train::config::TrainConfig;
use vigil_trainer::train::run::{Hooks, Trainer};

fn setup(dir: &Path, lines: &[String]) -> (PathBuf, PathBuf) {
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, tiny_llama(GgmlType::Q8_0, 7)).unwrap();
    let data = dir.join("train.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    (model, data)
}

/// Short chat examples with a learnable pattern: the answer repeats the request's word.
fn lines(n: usize) -> Vec<String> {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    (0..n)
        .map(|i| {
            let w = words[i % words.len()];
            serde_json::json!({"messages": [{"role": "user", "content": format!("say {w} ({i})")},
                                            {"role": "assistant", "content": format!("{w} {w}")}]})
            .to_string()
        })
        .collect()
}

fn config(model: &Path, data: &Path) -> TrainConfig {
    TrainConfig {
        model: model.display().to_string(),
        data: vec![data.to_path_buf()],
        eval_fraction: 0.2,
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        lr: 1e-2,
        batch_size: 2,
        grad_accum: 2,
        max_steps: 6,
        warmup_steps: 1,
        eval_every: 3,
        checkpoint_every: 2,
        max_len: 256,
        ..TrainConfig::default()
    }
}

#[test]
fn training_lowers_the_loss_and_writes_a_usable_adapter() {
    let tmp = TempDir::new("train-loss");
    let (model, data) = setup(tmp.path(), &lines(40));
    let mut cfg = config(&model, &data);
    cfg.max_steps = 25;
    cfg.eval_every = 25;
    let out = tmp.path().join("run");
    let (mut t, report) = Trainer::prepare(cfg, &out, false).unwrap();
    assert!(report.errors.is_empty() && report.train > 20 && report.eval > 0, "{} / {}", report.train, report.eval);
    let before = t.eval_loss().unwrap().unwrap();
    let adapter = t.run(Hooks::default()).unwrap().expect("finished");
    let metrics = t.metrics();
    let after = metrics.last().unwrap().eval_loss.unwrap();
    assert!(after < before * 0.8, "eval loss {before} → {after}");
    let logged = metrics.first().unwrap().eval_loss.unwrap();
    assert!((logged - before).abs() < 1e-9, "step 0 logs the baseline: {logged} vs {before}");
    assert!(metrics.iter().all(|m| m.loss.is_nan() || m.loss.is_finite()));
    for f in ["config.toml", "metrics.jsonl", "loss.svg", "checkpoint.safetensors"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(std::fs::read_to_string(out.join("loss.svg")).unwrap().contains("<svg"));

    // the adapter file loads in the runtime's model and changes what it predicts
    let a = LoraAdapter::from_gguf(&Gguf::open(&adapter).unwrap()).unwrap();
    assert_eq!(a.pairs.len(), 14);
    let g = Gguf::open(&model).unwrap();
    let mut m = Llama::load(&g, WeightMode::Quantized, &candle_core::Device::Cpu).unwrap();
    let ids = [256u32, 72, 101, 108];
    let base = Llama::logits_vec(&m.forward(&ids, None, Logits::Last).unwrap()).unwrap();
    m.set_adapter(Some(&a)).unwrap();
    let tuned = Llama::logits_vec(&m.forward(&ids, None, Logits::Last).unwrap()).unwrap();
    assert!(base.iter().zip(&tuned).any(|(x, y)| (x - y).abs() > 1e-3));
}

/// `init_adapter`: a run continues from a trained adapter's weights (its eval loss at step 0 is
/// the adapter's, not the base's) and refuses an adapter of another rank or set of targets.
#[test]
fn a_run_continues_from_a_trained_adapter() {
    let tmp = TempDir::new("train-init");
    let (model, data) = setup(tmp.path(), &lines(40));
    let mut cfg = config(&model, &data);
    (cfg.max_steps, cfg.eval_every, cfg.dropout) = (12, 12, 0.0);
    let (mut t, _) = Trainer::prepare(cfg.clone(), &tmp.path().join("first"), false).unwrap();
    let base_loss = t.eval_loss().unwrap().unwrap();
    let adapter = t.run(Hooks::default()).unwrap().unwrap();
    let trained_loss = t.metrics().last().unwrap().eval_loss.unwrap();
    assert!(trained_loss < base_loss * 0.9, "{base_loss} → {trained_loss}");

    let mut more = cfg.clone();
    (more.init_adapter, more.lr) = (adapter.display().to_string(), 2e-3);
    let (mut t, _) = Trainer::prepare(more.clone(), &tmp.path().join("second"), false).unwrap();
    let start = t.eval_loss().unwrap().unwrap();
    assert!(
        (start - trained_loss).abs() < 1e-4 * trained_loss,
        "starts at {start}, the adapter's loss is {trained_loss}"
    );
    let continued = t.run(Hooks::default()).unwrap().unwrap();
    assert!(t.metrics().last().unwrap().eval_loss.unwrap() < base_loss);
    assert_ne!(std::fs::read(&continued).unwrap(), std::fs::read(&adapter).unwrap());

    for (key, value) in [("rank", "8"), ("targets", "[\"attn_q\"]"), ("alpha", "4.0")] {
        let mut bad = more.clone();
        match key {
            "rank" => bad.rank = 8,
            "alpha" => bad.alpha = 4.0,
            _ => bad.targets = vec!["attn_q".into()],
        }
        let e = Trainer::prepare(bad, &tmp.path().join(format!("bad-{key}")), false).err().unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("init_adapter") && e.contains("adapter.gguf") && e.contains("rank"), "{key}={value}: {e}");
    }
    let mut missing = more.clone();
    missing.init_adapter = tmp.path().join("nope.gguf").display().to_string();
    let e = format!("{:#}", Trainer::prepare(missing, &tmp.path().join("bad-file"), false).err().unwrap());
    assert!(e.contains("nope.gguf"), "{e}");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_adapter_bytes() {
    for eight_bit in [false, true] {
        let tmp = TempDir::new("train-resume");
        let (model, data) = setup(tmp.path(), &lines(24));
        let mut cfg = config(&model, &data);
        cfg.adam_8bit = eight_bit;

        let whole = tmp.path().join("whole");
        let (mut t, _) = Trainer::prepare(cfg.clone(), &whole, false).unwrap();
        let a = t.run(Hooks::default()).unwrap().unwrap();

        let split = tmp.path().join("split");
        let (mut t, _) = Trainer::prepare(cfg.clone(), &split, false).unwrap();
        // stopped after step 3: the last periodic checkpoint was step 2, and step 3 is saved on stop
        assert!(t.run(Hooks { stop_after: Some(3), ..Default::default() }).unwrap().is_none());
        assert!(!split.join("adapter.gguf").exists());
        drop(t);
        // resumed at its stop, the run trains nothing (an extra step would change the bytes below)
        let saved = std::fs::read(split.join("checkpoint.safetensors")).unwrap();
        let (mut t, _) = Trainer::prepare(cfg.clone(), &split, true).unwrap();
        assert!(t.run(Hooks { stop_after: Some(3), ..Default::default() }).unwrap().is_none());
        assert_eq!(t.step, 3);
        assert_eq!(std::fs::read(split.join("checkpoint.safetensors")).unwrap(), saved);
        assert!(split.join("loss.svg").exists());
        drop(t);
        let (mut t, _) = Trainer::prepare(cfg.clone(), &split, true).unwrap();
        assert_eq!(t.step, 3);
        let b = t.run(Hooks::default()).unwrap().unwrap();

        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "8-bit states: {eight_bit}");
        let (ma, mb) = (
            std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap(),
            std::fs::read_to_string(split.join("metrics.jsonl")).unwrap(),
        );
        let losses = |s: &str| {
            s.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(losses(&ma), losses(&mb), "the same losses, step by step");

        // a fresh run refuses to overwrite; a resume with other settings is refused
        assert!(Trainer::prepare(cfg.clone(), &split, false).err().unwrap().to_string().contains("--resume"));
        let mut other = cfg.clone();
        other.lr = 5e-3;
        assert!(Trainer::prepare(other, &split, true).err().unwrap().to_string().contains("different config or data"));
    }
}

#[test]
fn bad_lines_are_named_and_nothing_is_dropped_silently() {
    let tmp = TempDir::new("train-bad");
    let mut l = lines(6);
    l.insert(2, "{not json".into());
    l.insert(4, r#"{"text": "x", "label": "unsafe", "policies": ["spam"], "reasoning": "r"}"#.into());
    let (model, data) = setup(tmp.path(), &l);
    let cfg = config(&model, &data);
    let e = Trainer::prepare(cfg.clone(), &tmp.path().join("r"), false).err().unwrap().to_string();
    assert!(e.contains("2 invalid training line(s)"), "{e}");
    assert!(e.contains("train.jsonl:3: not valid JSON"), "{e}");
    assert!(e.contains("train.jsonl:5: unknown policy `spam`"), "{e}");
    let mut skip = cfg;
    skip.skip_invalid = true;
    let (_, report) = Trainer::prepare(skip, &tmp.path().join("r2"), false).unwrap();
    assert_eq!(report.errors.len(), 2);
    assert_eq!(report.train + report.eval, 6);
}

/// The CLI end to end: `vigil train` (config file + --set), `--stop-after`, exporting the unfinished
/// run's checkpoint, `--resume`, and every `vigil export` format, each checked by loading it back.
#[test]
fn the_cli_trains_resumes_and_exports() {
    let tmp = TempDir::new("train-cli");
    let (model, data) = setup(tmp.path(), &lines(16));
    let vigil = env!("CARGO_BIN_EXE_vigil");
    let run_in = |cwd: &Path, args: &[&str]| {
        let out =
            std::process::Command::new(vigil).args(args).current_dir(cwd).env("VIGIL_THREADS", "2").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "vigil {args:?} failed:\n{err}");
        err
    };
    let run = |args: &[&str]| run_in(tmp.path(), args);
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        "rank = 4\nalpha = 8.0\nmax_len = 256\nbatch_size = 2\nmax_steps = 4\neval_fraction = 0.25\ndata = [\"train.jsonl\"]\n",
    )
    .unwrap();
    let out = tmp.path().join("run");
    let (m, d, c, o) = (model.to_str().unwrap(), data.to_str().unwrap(), cfg.to_str().unwrap(), out.to_str().unwrap());
    let shown = std::process::Command::new(vigil)
        .args(["train", "--config", c, "--set", "lr=3e-3", "-o", o, "--show-config"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(shown.contains("lr = 0.003") && shown.contains("rank = 4"), "{shown}");
    // paths relative to the working directory (and to the config file) …
    let first = run(&[
        "train",
        "--config",
        "run.toml",
        "-m",
        "tiny.gguf",
        "--set",
        "lr=3e-3",
        "-o",
        "run",
        "--stop-after",
        "2",
    ]);
    assert!(first.contains("stopped at step 2"), "{first}");
    // an unfinished run exports its latest checkpoint
    let mid = tmp.path().join("mid.gguf");
    let said = run(&["export", o, "--dtype", "q8_0", "-o", mid.to_str().unwrap()]);
    assert!(said.contains("exporting its checkpoint of step 2"), "{said}");
    assert_eq!(LoraAdapter::from_gguf(&Gguf::open(&mid).unwrap()).unwrap().pairs.len(), 14);
    // … are saved absolute: the run resumes from elsewhere, with or without its config
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let flags = ["-m", m, "--data", d, "--set", "lr=3e-3", "-o", o, "--resume", "--stop-after", "3"];
    let again = run_in(&elsewhere, &[&["train", "--config", c], &flags[..]].concat());
    assert!(again.contains("resuming at step 2") && again.contains("stopped at step 3"), "{again}");
    let second = run_in(&elsewhere, &["train", "-o", o, "--resume"]);
    assert!(second.contains("resuming at step 3") && second.contains("done."), "{second}");
    let adapter = out.join("adapter.gguf");

    let g = Gguf::open(&model).unwrap();
    for dtype in ["f32", "f16", "q8_0"] {
        let p = tmp.path().join(format!("a-{dtype}.gguf"));
        run(&["export", o, "--format", "gguf", "--dtype", dtype, "-m", m, "-o", p.to_str().unwrap()]);
        let a = LoraAdapter::from_gguf(&Gguf::open(&p).unwrap()).unwrap();
        assert_eq!(a.pairs.len(), 14, "{dtype}");
    }
    let peft = tmp.path().join("peft");
    run(&["export", adapter.to_str().unwrap(), "--format", "peft", "-m", m, "-o", peft.to_str().unwrap()]);
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (conf["peft_type"].as_str(), conf["r"].as_u64(), conf["lora_alpha"].as_f64()),
        (Some("LORA"), Some(4), Some(8.0))
    );
    assert_eq!(conf["target_modules"].as_array().unwrap().len(), 7);
    let bytes = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 28);
    let a = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").unwrap();
    assert_eq!(a.shape(), [4, 128]);
    let b = st.tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").unwrap();
    assert_eq!(b.shape(), [32, 4]);

    // merged: f32 equals base + adapter; q8_0 close to it
    let trained = LoraAdapter::from_gguf(&Gguf::open(&adapter).unwrap()).unwrap();
    let ids = [256u32, 115, 97, 121, 32, 101];
    let mut reference = Llama::load(&g, WeightMode::Dense(candle_core::DType::F32), &candle_core::Device::Cpu).unwrap();
    reference.set_adapter(Some(&trained)).unwrap();
    let want = Llama::logits_vec(&reference.forward(&ids, None, Logits::Last).unwrap()).unwrap();
    for (dtype, tol) in [("f32", 1e-3), ("q8_0", 0.3)] {
        let p = tmp.path().join(format!("merged-{dtype}.gguf"));
        run(&["export", o, "--format", "merged", "--dtype", dtype, "-m", m, "-o", p.to_str().unwrap()]);
        let mg = Gguf::open(&p).unwrap();
        let merged = Llama::load(&mg, WeightMode::Dense(candle_core::DType::F32), &candle_core::Device::Cpu).unwrap();
        let got = Llama::logits_vec(&merged.forward(&ids, None, Logits::Last).unwrap()).unwrap();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < tol, "merged {dtype}: max logit difference {diff}");
    }
    // several adapters: the average of their updates, optionally cut to a rank
    let soup = tmp.path().join("soup.gguf");
    let (a, mid, sp) = (adapter.to_str().unwrap(), mid.to_str().unwrap(), soup.to_str().unwrap());
    let said = run(&["export", a, mid, "--dtype", "f32", "-o", sp]);
    assert!(said.contains("averaged the updates of 2 adapters (rank 8)"), "{said}");
    let mean = LoraAdapter::from_gguf(&Gguf::open(&soup).unwrap()).unwrap();
    assert!(mean.pairs.values().all(|p| p.r == 8) && mean.scale(8) == 1.0);
    let said = run(&["export", a, mid, "--rank", "3", "--dtype", "f32", "-o", sp]);
    assert!(said.contains("cut to rank 3; every layer keeps at least"), "{said}");
    let cut = LoraAdapter::from_gguf(&Gguf::open(&soup).unwrap()).unwrap();
    assert!(cut.pairs.values().all(|p| p.r == 3) && cut.pairs.len() == 14);
    let ollama = tmp.path().join("ollama");
    run(&["export", o, "--format", "ollama", "-m", m, "-o", ollama.to_str().unwrap()]);
    let mf = std::fs::read_to_string(ollama.join("Modelfile")).unwrap();
    assert!(
        mf.contains("FROM ./tiny.gguf")
            && mf.contains("ADAPTER ./adapter.gguf")
            && mf.contains("PARAMETER stop \"<|im_end|>\""),
        "{mf}"
    );
    assert!(ollama.join("tiny.gguf").is_file() && ollama.join("adapter.gguf").is_file());

    // bad input: a base model given as the adapter is refused by name
    let bad = std::process::Command::new(vigil)
        .args(["export", m, "-o", tmp.path().join("x.gguf").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is this a base model?"));
}

/// `share_prefix`: each micro-batch runs as one packed pass over the prefix its sequences share
/// (here a long system prompt); without dropout the trained adapter equals the unpacked run's up
/// to float summation order, and so does the eval loss, computed packed as well.
#[test]
fn packed_micro_batches_train_the_same_adapter() {
    let tmp = TempDir::new("train-packed");
    let system = "You are a careful assistant. Say the word you are asked to say, twice, and nothing else.";
    let lines: Vec<String> = lines(24)
        .iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["messages"].as_array_mut().unwrap().insert(0, serde_json::json!({"role": "system", "content": system}));
            v.to_string()
        })
        .collect();
    let (model, data) = setup(tmp.path(), &lines);
    let run = |share: bool| {
        let mut cfg = config(&model, &data);
        (cfg.dropout, cfg.share_prefix, cfg.checkpoint_every, cfg.eval_every) = (0.0, share, 0, 0);
        let (mut t, _) = Trainer::prepare(cfg, &tmp.path().join(format!("run-{share}")), false).unwrap();
        let path = t.run(Hooks::default()).unwrap().unwrap();
        let eval = t.eval_loss().unwrap().expect("an eval split");
        (LoraAdapter::from_gguf(&Gguf::open(&path).unwrap()).unwrap(), t.packed_passes, eval)
    };
    let (plain, none, plain_eval) = run(false);
    let (packed, passes, packed_eval) = run(true);
    // the eval loss runs packed too (here the two adapters are all but equal, so the losses are)
    assert!((plain_eval - packed_eval).abs() < 1e-4 * plain_eval, "eval loss {plain_eval} vs packed {packed_eval}");
    assert_eq!(none, 0);
    assert_eq!(passes, 6 * 2, "every micro-batch of 2 ran packed");
    let mut worst = 0f32;
    for (name, p) in &plain.pairs {
        let q = &packed.pairs[name];
        for (x, y) in p.a.iter().chain(&p.b).zip(q.a.iter().chain(&q.b)) {
            worst = worst.max((x - y).abs() / (1e-3 + x.abs()));
        }
    }
    assert!(worst < 1e-3, "packed and plain adapters differ by {worst} (relative)");
}

/// Decision emphasis marks the tokens right after a marker up to the line's end, and weighs them
/// in the gradient: weight 1 trains the very adapter of a run without markers, weight 8 another.
#[test]
fn emphasised_tokens_are_marked_and_weighted() {
    use vigil_trainer::train::data::Example;
    let tmp = TempDir::new("train-emphasis");
    let (model, _) = setup(tmp.path(), &[]);
    let tok = vigil_models::tokenizer::Tokenizer::from_gguf(&Gguf::open(&model).unwrap()).unwrap();
    let text = "Step 1: x\nClassification: UNSAFE\nViolated policies: illegal, sexual";
    let ids = tok.encode(text).unwrap();
    let mut mask = vec![true; ids.len()];
    mask[..5].iter_mut().for_each(|m| *m = false);
    let mut ex = Example::new("t".into(), ids.clone(), mask);
    ex.mark_emphasis(&tok, &["Classification:".into(), "policies:".into()], 8);
    let marked: Vec<u32> = ids.iter().zip(&ex.emphasis).filter(|(_, &e)| e).map(|(&i, _)| i).collect();
    // 8 tokens of the byte-level vocabulary after each marker, or fewer where the line ends first
    assert_eq!(tok.decode(&marked), " UNSAFE illegal");
    let w: Vec<f32> = ex.target_weights(3.0).collect();
    assert_eq!(w.len(), ex.targets());
    assert_eq!(w.iter().filter(|&&x| x == 3.0).count(), 15);
    // a marker that never occurs marks nothing
    ex.mark_emphasis(&tok, &["Verdict:".into()], 8);
    assert!(ex.emphasis.is_empty());

    // the lines' answers repeat the request's word: emphasise the second repetition
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, lines(24).join("\n") + "\n").unwrap();
    let run = |name: &str, markers: &[&str], weight: f32| {
        let mut cfg = config(&model, &data);
        (cfg.dropout, cfg.checkpoint_every, cfg.eval_every) = (0.0, 0, 0);
        cfg.emphasis = markers.iter().map(|m| m.to_string()).collect();
        cfg.emphasis_weight = weight;
        let (mut t, _) = Trainer::prepare(cfg, &tmp.path().join(name), false).unwrap();
        let path = t.run(Hooks::default()).unwrap().unwrap();
        std::fs::read(path).unwrap()
    };
    let plain = run("plain", &[], 1.0);
    assert_eq!(run("unit", &[" "], 1.0), plain, "weight 1 is the plain objective");
    assert_ne!(run("heavy", &[" "], 8.0), plain, "weight 8 changes what is learned");
}
