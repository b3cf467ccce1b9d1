//! `vigil eval`: run, score, report; `--compare A.json B.json`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use vigil_trainer::eval::{self, metrics, report};

use crate::cli::EvalArgs;

pub fn run(a: EvalArgs) -> Result<()> {
    if let Some(pair) = &a.compare {
        print!("{}", report::compare(&pair[0], &pair[1])?);
        return Ok(());
    }
    if !a.guardreasoner.is_empty() {
        return guardreasoner(&a);
    }
    let data = a.data.as_ref().context("--data is required")?;
    let mut items = eval::read_items(data)?;
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    if items.is_empty() {
        bail!("{} has no items", data.display());
    }
    let format = super::output_format(a.format, &a.model);
    for b in &a.baselines {
        if !["keyword", "base", "none"].contains(&b.as_str()) {
            bail!("unknown baseline `{b}` (keyword, base, none)");
        }
    }
    let mut guard = super::load_guard(&a.model)?;
    let adapter = super::adapter_path(&a.model.adapter, &super::resolve_model(&a.model.model)?)?;
    let backend = guard.backend_name().to_string();
    let run_all = |guard: &mut vigil_runtime::Guard, what: &str| -> Result<Vec<metrics::Record>> {
        let pb = vigil_trainer::progress::items(what, items.len() as u64);
        let r = eval::run_model(guard, &items, format, a.max_tokens, a.lanes, |i| pb.set_position(i as u64));
        pb.finish_and_clear();
        r
    };
    let records = run_all(&mut guard, "eval")?;
    let mut baselines = BTreeMap::new();
    if a.baselines.iter().any(|b| b == "keyword") {
        baselines.insert("keyword rules".to_string(), metrics::compute(&eval::keyword_baseline(&items)));
    }
    if a.baselines.iter().any(|b| b == "base") && adapter.is_some() {
        guard.set_adapter(None)?;
        baselines.insert("base model, zero-shot".to_string(), metrics::compute(&run_all(&mut guard, "base")?));
    }
    let rep = report::Report {
        model: a.model.model.clone(),
        adapter: adapter.map(|p| p.display().to_string()),
        data: data.display().to_string(),
        format: format.name().to_string(),
        backend,
        max_tokens: a.max_tokens,
        metrics: metrics::compute(&records),
        baselines,
        records,
    };
    if let Some(dir) = &a.out {
        report::write(&rep, dir)?;
        eprintln!("vigil: report in {} (report.html, report.md, metrics.json, records.jsonl)", dir.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep.metrics)?);
    } else {
        let m = &rep.metrics;
        println!(
            "{} items: accuracy {:.1} %, F1 {:.1} % (P {:.1}, R {:.1}), FPR {:.1} %, FNR {:.1} %, macro-F1 {:.1} %, exact {:.1} %, parse failures {}",
            m.n,
            100.0 * m.accuracy,
            100.0 * m.binary.f1,
            100.0 * m.binary.precision,
            100.0 * m.binary.recall,
            100.0 * m.binary.fpr,
            100.0 * m.binary.fnr,
            100.0 * m.macro_f1,
            100.0 * m.exact_match,
            m.parse_failures
        );
        for (name, b) in &rep.baselines {
            println!(
                "  {name}: accuracy {:.1} %, F1 {:.1} %, FPR {:.1} %, macro-F1 {:.1} %",
                100.0 * b.accuracy,
                100.0 * b.binary.f1,
                100.0 * b.binary.fpr,
                100.0 * b.macro_f1
            );
        }
    }
    Ok(())
}

/// `vigil probe`.
pub fn probe(a: crate::cli::ProbeArgs) -> Result<()> {
    use candle_core::Device;
    use vigil_models::cpu::{Llama, WeightMode};
    use vigil_models::gguf::Gguf;
    use vigil_models::tokenizer::Tokenizer;
    use vigil_trainer::eval::probe as p;

    let path = super::resolve_model(&a.model)?;
    let g = Gguf::open(&path)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let mut model = Llama::load(&g, WeightMode::Quantized, &Device::Cpu)?;
    if let Some(ad) = super::load_adapter(&a.adapter, &path)? {
        model.set_adapter(Some(&ad))?;
    }
    let pairs = vigil_trainer::data::probes::load(&a.data, a.per_behavior)?;
    let pb = vigil_trainer::progress::items("probe", pairs.len() as u64);
    let scored = p::run(&model, &tok, &pairs, a.max_tokens, |i| pb.set_position(i as u64))?;
    pb.finish_and_clear();
    let table = p::score(&scored);
    let mut md = format!(
        "# vigil probe\n\nModel `{}`, adapter `{}`, pairs `{}`.\n\n{}\n\n| behaviour | pairs | AUC | mean gap (nats/token) | pair accuracy |\n|---|---|---|---|---|\n",
        a.model,
        a.adapter,
        a.data.display(),
        p::DEFINITION
    );
    for (b, s) in &table {
        md.push_str(&format!(
            "| {b} | {} | {:.3} | {:+.4} | {:.1} % |\n",
            s.pairs,
            s.auc,
            s.mean_gap,
            100.0 * s.pair_accuracy
        ));
    }
    let json = serde_json::json!({"model": a.model, "adapter": a.adapter, "data": a.data, "definition": p::DEFINITION, "behaviors": table, "pairs": scored});
    if let Some(dir) = &a.out {
        vigil_trainer::data::write_file(&dir.join("probe.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
        vigil_trainer::data::write_file(&dir.join("probe.md"), md.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json["behaviors"])?);
    } else {
        print!("{md}");
    }
    Ok(())
}

/// `vigil stress`.
pub fn stress(a: crate::cli::StressArgs) -> Result<()> {
    use vigil_models::guard::GuardRequest;
    use vigil_runtime::ClassifyOptions;
    use vigil_trainer::data::jailbreak::StressItem;
    use vigil_trainer::eval::stress as s;

    let mut items: Vec<StressItem> = vigil_trainer::data::read_jsonl(&a.data)?;
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    let m = crate::cli::ModelArgs { model: a.model.clone(), adapter: "none".into(), context: 4096, backend: a.backend };
    let mut guard = super::load_guard(&m)?;
    let opts = ClassifyOptions { max_tokens: a.max_tokens, force_verdict: false, ..ClassifyOptions::default() };
    let mut tables = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    for adapter in &a.adapters {
        let ad = super::load_adapter(adapter, &super::resolve_model(&a.model)?)?;
        guard.set_adapter(ad.as_ref())?;
        let pb = vigil_trainer::progress::items("stress", items.len() as u64);
        let reqs: Vec<GuardRequest> = items.iter().map(|it| GuardRequest::new(it.text.clone())).collect();
        let mut finished = 0;
        let results = guard.classify_batch(&reqs, &opts, a.lanes, |_| {
            finished += 1;
            pb.set_position(finished)
        })?;
        let mut out = Vec::new();
        for (it, o) in items.iter().zip(results) {
            let o = o.with_context(|| format!("stress item {}", it.id))?;
            out.push(s::Outcome {
                id: it.id.clone(),
                category: it.category.clone(),
                condition: it.condition.clone(),
                pred: o.verdict.as_ref().ok().map(|v| v.label),
            });
        }
        pb.finish_and_clear();
        tables.insert(adapter.clone(), s::table(&out, a.resamples));
        outcomes.insert(adapter.clone(), out);
    }
    let cell = |r: Option<&s::Rate>| {
        r.map_or("–".to_string(), |r| {
            format!("{:.0} % [{:.0}, {:.0}] (n {})", 100.0 * r.rate, 100.0 * r.ci_low, 100.0 * r.ci_high, r.n)
        })
    };
    let mut md = format!(
        "# vigil stress\n\nModel `{}`, data `{}`. Flag rate = share classified UNSAFE (unparseable output is not a flag); \
         on `benign` controls it is the false-flag rate. Brackets: bootstrap 95 % interval ({} resamples).\n\n| category |",
        a.model,
        a.data.display(),
        a.resamples
    );
    for ad in &a.adapters {
        md.push_str(&format!(" {ad}: jailbreak flagged | {ad}: benign false flags |"));
    }
    md.push_str(&format!("\n|---|{}\n", "---|---|".repeat(a.adapters.len())));
    let cats: std::collections::BTreeSet<&String> = tables.values().flat_map(|t| t.keys()).collect();
    for c in cats {
        md.push_str(&format!("| {c} |"));
        for ad in &a.adapters {
            let t = tables[ad].get(c);
            md.push_str(&format!(
                " {} | {} |",
                cell(t.and_then(|t| t.get("jailbreak"))),
                cell(t.and_then(|t| t.get("benign")))
            ));
        }
        md.push('\n');
    }
    let json = serde_json::json!({"model": a.model, "data": a.data, "tables": tables, "outcomes": outcomes});
    if let Some(dir) = &a.out {
        vigil_trainer::data::write_file(&dir.join("stress.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
        vigil_trainer::data::write_file(&dir.join("stress.md"), md.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json["tables"])?);
    } else {
        print!("{md}");
    }
    Ok(())
}

/// `vigil eval --guardreasoner FILE…`: their F1 per file and the weighted average.
fn guardreasoner(a: &EvalArgs) -> Result<()> {
    use std::ops::ControlFlow;
    use vigil_models::guard::{GuardRequest, Label};
    use vigil_runtime::ClassifyOptions;
    use vigil_trainer::eval::guardreasoner as gr;

    let task = gr::Task::from_name(&a.task)?;
    if task == gr::Task::Refusal && !a.score_only {
        bail!("vigil does not classify refusals: the refusal task works only with --score-only");
    }
    let mut guard = if a.score_only { None } else { Some(super::load_guard(&a.model)?) };
    let opts = ClassifyOptions { max_tokens: a.max_tokens, force_verdict: false, ..ClassifyOptions::default() };
    let mut per_file = Vec::new();
    for f in &a.guardreasoner {
        let mut rows = gr::read(f, task)?;
        if let Some(n) = a.limit {
            rows.truncate(n);
        }
        let pb = vigil_trainer::progress::items("guardreasoner", rows.len() as u64);
        let mut pairs = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let pred = match &mut guard {
                None => r.predict.as_deref().and_then(|p| gr::their_prediction(p, task)),
                Some(g) => {
                    let response = if task == gr::Task::Response { r.response.clone() } else { None };
                    let o = g.classify(&GuardRequest::new(r.request.clone()).with_response(response), &opts, |_| {
                        ControlFlow::Continue(())
                    })?;
                    o.verdict.ok().map(|v| {
                        if v.label == Label::Unsafe {
                            "harmful".to_string()
                        } else {
                            "unharmful".to_string()
                        }
                    })
                }
            };
            pairs.push((r.gold.clone(), pred));
            pb.set_position(i as u64 + 1);
        }
        pb.finish_and_clear();
        let f1 = gr::f1(&pairs, task);
        println!("{:<60} {:>6} rows  F1 {:6.2}", f.display().to_string(), rows.len(), f1);
        per_file.push((f1, rows.len()));
    }
    println!(
        "{:<60} {:>6} rows  F1 {:6.2} (row-weighted, as GuardReasoner reports)",
        "weighted average",
        per_file.iter().map(|x| x.1).sum::<usize>(),
        gr::weighted(&per_file)
    );
    Ok(())
}
