//! `vigil sweep`: the rho-guided ablation grid. Each cell (condition × λ × seed) is trained, then
//! probed (`vigil probe`'s AUCs) and, optionally, stress-tested; finished parts are skipped, a
//! half-trained cell resumes from its checkpoint. The summary gives mean ± sd over seeds per
//! condition × λ × behaviour, Cohen's d against `sft-only`, and a dose-response plot.
//!
//! Cells: `sft-only` runs once per seed (λ does not apply); the other conditions run for every
//! λ > 0 (λ = 0 would be `sft-only` again, or no loss at all for `contrastive-only`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use vigil_models::cpu::{Llama, WeightMode};
use vigil_models::gguf::Gguf;
use vigil_models::guard::GuardRequest;
use vigil_models::lora::LoraAdapter;
use vigil_models::tokenizer::Tokenizer;
use vigil_runtime::{ClassifyOptions, Guard};

use crate::data::jailbreak::StressItem;
use crate::eval::{probe, stress};
use crate::train::config::TrainConfig;
use crate::train::run::{Hooks, Trainer};

#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The resolved training config every cell starts from (data, rho_data, steps…).
    pub base: TrainConfig,
    pub lambdas: Vec<f32>,
    pub seeds: Vec<u64>,
    pub conditions: Vec<String>,
    pub out: PathBuf,
    pub probes: PathBuf,
    pub probes_per_behavior: Option<usize>,
    pub probe_max_tokens: usize,
    /// Stress set and how much of it (`None`: no stress test).
    pub stress: Option<(PathBuf, Option<usize>)>,
    pub stress_max_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub condition: String,
    pub lambda: f32,
    pub seed: u64,
}

impl Cell {
    pub fn dir(&self, out: &Path) -> PathBuf {
        out.join(&self.condition).join(format!("lambda-{}", self.lambda)).join(format!("seed-{}", self.seed))
    }
}

/// The grid's cells, in a fixed order.
pub fn cells(o: &SweepOptions) -> Vec<Cell> {
    let mut out = Vec::new();
    for c in &o.conditions {
        for &seed in &o.seeds {
            if c == "sft-only" {
                out.push(Cell { condition: c.clone(), lambda: 0.0, seed });
            } else {
                for &l in o.lambdas.iter().filter(|l| **l > 0.0) {
                    out.push(Cell { condition: c.clone(), lambda: l, seed });
                }
            }
        }
    }
    out
}

/// Per cell: behaviour → AUC, and the stress flag rates (all categories) when measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: Cell,
    pub auc: BTreeMap<String, f64>,
    pub jailbreak_flag_rate: Option<f64>,
    pub benign_false_flag_rate: Option<f64>,
}

/// What a sweep did, for the caller to print.
#[derive(Debug, Default)]
pub struct Done {
    pub trained: usize,
    pub resumed: usize,
    pub skipped: usize,
}

fn probe_file(
    model_path: &Path,
    adapter: Option<&Path>,
    o: &SweepOptions,
    out: &Path,
) -> Result<BTreeMap<String, f64>> {
    if let Ok(s) = std::fs::read_to_string(out) {
        if let Ok(v) = serde_json::from_str::<BTreeMap<String, probe::BehaviourScore>>(&s) {
            return Ok(v.into_iter().map(|(k, b)| (k, b.auc)).collect());
        }
    }
    let g = Gguf::open(model_path)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let mut model = Llama::load(&g, WeightMode::Quantized, &Device::Cpu)?;
    if let Some(a) = adapter {
        model.set_adapter(Some(&LoraAdapter::from_gguf(&Gguf::open(a)?)?))?;
    }
    let pairs = crate::data::probes::load(&o.probes, o.probes_per_behavior)?;
    let scored = probe::run(&model, &tok, &pairs, o.probe_max_tokens, |_| {})?;
    let table = probe::score(&scored);
    crate::data::write_file(out, serde_json::to_string_pretty(&table)?.as_bytes())?;
    Ok(table.into_iter().map(|(k, b)| (k, b.auc)).collect())
}

fn stress_file(model_path: &Path, adapter: &Path, o: &SweepOptions, out: &Path) -> Result<Option<(f64, f64)>> {
    let Some((data, limit)) = &o.stress else { return Ok(None) };
    if let Ok(s) = std::fs::read_to_string(out) {
        if let Ok(v) = serde_json::from_str::<(f64, f64)>(&s) {
            return Ok(Some(v));
        }
    }
    let mut items: Vec<StressItem> = crate::data::read_jsonl(data)?;
    if let Some(n) = limit {
        items.truncate(*n);
    }
    let mut guard = Guard::open_cpu(model_path, 4096)?;
    guard.set_adapter(Some(&LoraAdapter::from_gguf(&Gguf::open(adapter)?)?))?;
    let opts = ClassifyOptions { max_tokens: o.stress_max_tokens, force_verdict: false, ..ClassifyOptions::default() };
    let reqs: Vec<GuardRequest> = items.iter().map(|it| GuardRequest::new(it.text.clone())).collect();
    let mut outcomes = Vec::new();
    for (it, r) in items.iter().zip(guard.classify_batch(&reqs, &opts, 8, |_| {})?) {
        outcomes.push(stress::Outcome {
            id: it.id.clone(),
            category: it.category.clone(),
            condition: it.condition.clone(),
            pred: r?.verdict.ok().map(|v| v.label),
        });
    }
    let t = stress::table(&outcomes, 200);
    let rate = |cond: &str| t.get("all").and_then(|c| c.get(cond)).map_or(0.0, |r| r.rate);
    let v = (rate("jailbreak"), rate("benign"));
    crate::data::write_file(out, serde_json::to_string(&v)?.as_bytes())?;
    Ok(Some(v))
}

/// Runs (or finishes) every cell; returns the per-cell results and the base model's AUCs.
pub fn run(o: &SweepOptions, mut log: impl FnMut(&str)) -> Result<(Vec<CellResult>, BTreeMap<String, f64>, Done)> {
    let model_path = PathBuf::from(&o.base.model);
    let base_auc =
        probe_file(&model_path, None, o, &o.out.join("base-probe.json")).context("probing the base model")?;
    let mut done = Done::default();
    let mut results = Vec::new();
    for cell in cells(o) {
        let dir = cell.dir(&o.out);
        let adapter = dir.join("adapter.gguf");
        if adapter.is_file() {
            done.skipped += 1;
        } else {
            let cfg = TrainConfig {
                seed: cell.seed,
                rho_lambda: cell.lambda,
                rho_condition: cell.condition.clone(),
                ..o.base.clone()
            };
            let resume = dir.join(crate::train::checkpoint::FILE).is_file();
            log(&format!(
                "{} {} λ={} seed={}",
                if resume { "resuming" } else { "training" },
                cell.condition,
                cell.lambda,
                cell.seed
            ));
            let (mut t, _) = Trainer::prepare(cfg, &dir, resume)?;
            t.run(Hooks::default())?.context("the run stopped early")?;
            if resume {
                done.resumed += 1
            } else {
                done.trained += 1
            }
        }
        let auc = probe_file(&model_path, Some(&adapter), o, &dir.join("probe.json"))?;
        let stress = stress_file(&model_path, &adapter, o, &dir.join("stress.json"))?;
        results.push(CellResult {
            cell,
            auc,
            jailbreak_flag_rate: stress.map(|s| s.0),
            benign_false_flag_rate: stress.map(|s| s.1),
        });
    }
    Ok((results, base_auc, done))
}

pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 { (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, sd)
}

/// Cohen's d of `a` over `b` with the pooled standard deviation (NaN when it is undefined).
pub fn cohens_d(a: &[f64], b: &[f64]) -> f64 {
    let ((ma, sa), (mb, sb)) = (mean_sd(a), mean_sd(b));
    let (na, nb) = (a.len() as f64, b.len() as f64);
    if na + nb <= 2.0 {
        return f64::NAN;
    }
    let pooled = (((na - 1.0) * sa * sa + (nb - 1.0) * sb * sb) / (na + nb - 2.0)).sqrt();
    if pooled == 0.0 {
        f64::NAN
    } else {
        (ma - mb) / pooled
    }
}

type Group<'a> = BTreeMap<(String, String), Vec<&'a CellResult>>;

fn groups(results: &[CellResult]) -> Group<'_> {
    let mut g: Group = BTreeMap::new();
    for r in results {
        g.entry((r.cell.condition.clone(), format!("{}", r.cell.lambda))).or_default().push(r);
    }
    g
}

/// The summary table (Markdown): AUC mean ± sd over seeds, the change from the base model, and
/// Cohen's d against sft-only, per condition × λ × behaviour; stress rates when measured.
pub fn summary(results: &[CellResult], base: &BTreeMap<String, f64>) -> String {
    let behaviours: Vec<&String> = base.keys().collect();
    let g = groups(results);
    let sft: Option<&Vec<&CellResult>> = g.iter().find(|((c, _), _)| c == "sft-only").map(|(_, v)| v);
    let mut t = String::from("| condition | λ | seeds |");
    for b in &behaviours {
        t.push_str(&format!(" {b} AUC | Δ vs base | d vs sft-only |"));
    }
    t.push_str(" jailbreak flagged | benign false flags |\n|---|---|---|");
    t.push_str(&"---|---|---|".repeat(behaviours.len()));
    t.push_str("---|---|\n");
    for ((cond, lambda), rs) in &g {
        t.push_str(&format!("| {cond} | {lambda} | {} |", rs.len()));
        for b in &behaviours {
            let xs: Vec<f64> = rs.iter().filter_map(|r| r.auc.get(*b).copied()).collect();
            let (m, sd) = mean_sd(&xs);
            let d = sft
                .filter(|_| cond != "sft-only")
                .map(|s| cohens_d(&xs, &s.iter().filter_map(|r| r.auc.get(*b).copied()).collect::<Vec<_>>()));
            t.push_str(&format!(
                " {m:.3} ± {sd:.3} | {:+.3} | {} |",
                m - base[*b],
                d.map_or("–".to_string(), |d| if d.is_nan() { "n/a".into() } else { format!("{d:+.2}") })
            ));
        }
        let rate = |f: &dyn Fn(&CellResult) -> Option<f64>| {
            let xs: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
            if xs.is_empty() {
                "–".to_string()
            } else {
                let (m, sd) = mean_sd(&xs);
                format!("{:.0} ± {:.0} %", 100.0 * m, 100.0 * sd)
            }
        };
        t.push_str(&format!(" {} | {} |\n", rate(&|r| r.jailbreak_flag_rate), rate(&|r| r.benign_false_flag_rate)));
    }
    t
}

/// AUC against λ per behaviour for `rho-guided` (λ = 0 is sft-only), mean ± sd over seeds.
pub fn dose_response(results: &[CellResult], base: &BTreeMap<String, f64>, out: &Path) -> Result<()> {
    let g = groups(results);
    // per behaviour: (λ, mean AUC, sd) points
    type Points = Vec<(f64, f64, f64)>;
    let series: Vec<(String, Points)> = base
        .keys()
        .map(|b| {
            let mut pts = Vec::new();
            for ((cond, lambda), rs) in &g {
                if cond == "rho-guided" || cond == "sft-only" {
                    let xs: Vec<f64> = rs.iter().filter_map(|r| r.auc.get(b).copied()).collect();
                    let (m, sd) = mean_sd(&xs);
                    pts.push((lambda.parse::<f64>().unwrap_or(0.0), m, sd));
                }
            }
            pts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            (b.clone(), pts)
        })
        .collect();
    let max_l = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.1, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("rho-guided SFT: probe AUC against λ (mean ± sd over seeds)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(-0.02..max_l * 1.05, 0.0..1.0)?;
        chart.configure_mesh().x_desc("λ").y_desc("AUC").draw()?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            chart.draw_series(pts.iter().map(|p| PathElement::new(vec![(p.0, p.1 - p.2), (p.0, p.1 + p.2)], c)))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
    }
    crate::data::write_file(out, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_by_hand() {
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]);
        assert_eq!((m, sd), (2.0, 1.0));
        assert_eq!(cohens_d(&[2.0, 4.0], &[0.0, 2.0]), 2.0 / 2f64.sqrt());
        assert!(cohens_d(&[1.0], &[1.0]).is_nan());
    }
}
