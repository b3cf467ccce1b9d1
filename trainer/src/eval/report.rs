//! Evaluation reports: `metrics.json`, `records.jsonl`, `report.md` and `report.html` (one
//! self-contained file with inline SVG plots), and `--compare` of two metrics files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use vigil_models::guard::Policy;

use super::metrics::{errors_by_policy, Metrics, Record};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub adapter: Option<String>,
    pub data: String,
    pub format: String,
    pub backend: String,
    pub max_tokens: usize,
    /// The guard under test.
    pub metrics: Metrics,
    /// The same data through the baselines (keyword rules; the untuned base model, zero-shot).
    pub baselines: BTreeMap<String, Metrics>,
    #[serde(skip)]
    pub records: Vec<Record>,
}

pub const CONVENTIONS: &str = "UNSAFE is the positive class. A parse failure counts as an error (the wrong label, and the wrong decision for every policy), never skipped. Per policy, an item is positive when it is UNSAFE with that policy. Ratios with a zero denominator are 0; macro-F1 averages the policies with support or predictions.";

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn systems(r: &Report) -> Vec<(String, &Metrics)> {
    let mut v = vec![(r.adapter.as_ref().map_or_else(|| "model".to_string(), |a| format!("guard ({a})")), &r.metrics)];
    v.extend(r.baselines.iter().map(|(k, m)| (k.clone(), m)));
    v
}

fn summary_rows(r: &Report) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "system",
        "accuracy %",
        "precision %",
        "recall %",
        "F1 %",
        "FPR %",
        "FNR %",
        "macro-F1 %",
        "micro-F1 %",
        "exact %",
        "parse failures",
        "tok/s",
    ];
    let rows = systems(r)
        .into_iter()
        .map(|(name, m)| {
            vec![
                name,
                pct(m.accuracy),
                pct(m.binary.precision),
                pct(m.binary.recall),
                pct(m.binary.f1),
                pct(m.binary.fpr),
                pct(m.binary.fnr),
                pct(m.macro_f1),
                pct(m.micro_f1),
                pct(m.exact_match),
                format!("{} ({} %)", m.parse_failures, pct(m.parse_failure_rate)),
                format!("{:.1}", m.tokens_per_second),
            ]
        })
        .collect();
    (header, rows)
}

fn policy_rows(r: &Report) -> (Vec<String>, Vec<Vec<String>>) {
    let sys = systems(r);
    let mut header = vec!["policy".to_string(), "support".into(), "precision %".into(), "recall %".into()];
    header.extend(sys.iter().map(|(n, _)| format!("F1 % {n}")));
    let rows = Policy::ALL
        .iter()
        .map(|p| {
            let s = &r.metrics.policies[p.name()];
            let mut row = vec![p.name().to_string(), s.support.to_string(), pct(s.precision), pct(s.recall)];
            row.extend(sys.iter().map(|(_, m)| pct(m.policies[p.name()].f1)));
            row
        })
        .collect();
    (header, rows)
}

fn md_table(t: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(t, "| {} |", header.join(" | "));
    let _ = writeln!(t, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(
            t,
            "| {} |",
            r.iter().map(|c| c.replace('|', "\\|").replace('\n', " ")).collect::<Vec<_>>().join(" | ")
        );
    }
    t.push('\n');
}

fn cut(s: &str, n: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn label_of(r: &Record) -> String {
    match r.pred {
        None => "unparseable".into(),
        Some(l) => {
            let ps: Vec<&str> = r.pred_policies.iter().map(|p| p.name()).collect();
            if ps.is_empty() {
                l.upper().into()
            } else {
                format!("{} [{}]", l.upper(), ps.join(", "))
            }
        }
    }
}

fn gold_of(r: &Record) -> String {
    let ps: Vec<&str> = r.gold_policies.iter().map(|p| p.name()).collect();
    if ps.is_empty() {
        r.gold.upper().into()
    } else {
        format!("{} [{}]", r.gold.upper(), ps.join(", "))
    }
}

pub fn markdown(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# vigil eval\n");
    let _ = writeln!(
        t,
        "Model `{}`, adapter `{}`, data `{}` ({} items), {} output, backend {}, at most {} tokens, greedy.\n",
        r.model,
        r.adapter.as_deref().unwrap_or("none"),
        r.data,
        r.metrics.n,
        r.format,
        r.backend,
        r.max_tokens
    );
    let _ = writeln!(t, "{CONVENTIONS}\n");
    t.push_str("## Summary\n\n");
    let (h, rows) = summary_rows(r);
    md_table(&mut t, &h.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &rows);
    if let Some(c) = r.metrics.tag_compliance {
        let _ = writeln!(t, "Dual-stream tag compliance: {} %.\n", pct(c));
    }
    let _ = writeln!(t, "Mean reasoning length: {:.1} words.\n", r.metrics.mean_reasoning_words);
    t.push_str("## Per policy\n\n");
    let (h, rows) = policy_rows(r);
    md_table(&mut t, &h, &rows);
    t.push_str("## Confusion (rows: gold; columns: prediction)\n\n");
    let c = r.metrics.confusion;
    md_table(
        &mut t,
        &["gold \\ predicted".into(), "SAFE".into(), "UNSAFE".into(), "unparseable".into()],
        &[
            vec!["SAFE".into(), c[0][0].to_string(), c[0][1].to_string(), c[0][2].to_string()],
            vec!["UNSAFE".into(), c[1][0].to_string(), c[1][1].to_string(), c[1][2].to_string()],
        ],
    );
    t.push_str("## Errors\n\nEvery misclassified item, grouped by policy (gold for misses, predicted for false positives) and kind.\n\n");
    for ((policy, kind), rs) in errors_by_policy(&r.records) {
        let _ = writeln!(t, "### {policy} — {} ({})\n", kind.name(), rs.len());
        for x in rs {
            let _ =
                writeln!(t, "- `{}` gold {}, predicted {}: \"{}\"", x.id, gold_of(x), label_of(x), cut(&x.text, 200));
            if let Some(resp) = &x.response {
                let _ = writeln!(t, "  - response: \"{}\"", cut(resp, 160));
            }
            let why = if x.reasoning.is_empty() { cut(&x.raw, 400) } else { cut(&x.reasoning, 400) };
            let _ = writeln!(t, "  - reasoning: {why}");
        }
        t.push('\n');
    }
    t
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html_table(t: &mut String, header: &[String], rows: &[Vec<String>]) {
    t.push_str("<table><tr>");
    for h in header {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr>");
    for r in rows {
        t.push_str("<tr>");
        for c in r {
            let _ = write!(t, "<td>{}</td>", esc(c));
        }
        t.push_str("</tr>");
    }
    t.push_str("</table>\n");
}

/// Per-policy F1, one bar per system.
pub fn f1_chart(r: &Report) -> Result<String> {
    let sys = systems(r);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 380)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("F1 per policy", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..6.0, 0.0..1.0)?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("F1").draw()?;
        for (i, p) in Policy::ALL.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                p.name(),
                (px, py + 8),
                ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
        let w = 0.8 / sys.len() as f64;
        for (k, (name, m)) in sys.iter().enumerate() {
            let c = colors[k % colors.len()];
            chart
                .draw_series(Policy::ALL.iter().enumerate().map(|(i, p)| {
                    let x = i as f64 + 0.1 + k as f64 * w;
                    Rectangle::new([(x, 0.0), (x + w * 0.9, m.policies[p.name()].f1)], c.filled())
                }))?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// The confusion matrix as a heatmap with counts.
pub fn confusion_chart(m: &Metrics) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (460, 300)).into_drawing_area();
        root.fill(&WHITE)?;
        let cols = ["SAFE", "UNSAFE", "unparseable"];
        let rows = ["SAFE", "UNSAFE"];
        let max = m.confusion.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
        let (x0, y0, cw, ch) = (120, 60, 100, 90);
        root.draw(&Text::new("confusion (rows: gold, columns: predicted)", (20, 20), ("sans-serif", 16)))?;
        for (j, c) in cols.iter().enumerate() {
            root.draw(&Text::new(
                *c,
                (x0 + j as i32 * cw + cw / 2, y0 - 8),
                ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))?;
        }
        for (i, rname) in rows.iter().enumerate() {
            root.draw(&Text::new(
                *rname,
                (x0 - 10, y0 + i as i32 * ch + ch / 2),
                ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
            for j in 0..3 {
                let v = m.confusion[i][j];
                let shade = 1.0 - 0.8 * v as f64 / max;
                let color = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
                let (x, y) = (x0 + j as i32 * cw, y0 + i as i32 * ch);
                root.draw(&Rectangle::new([(x, y), (x + cw - 2, y + ch - 2)], color.filled()))?;
                let ink = if shade < 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    v.to_string(),
                    (x + cw / 2, y + ch / 2),
                    ("sans-serif", 18).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center)),
                ))?;
            }
        }
        root.present()?;
    }
    Ok(svg)
}

pub fn html(r: &Report) -> Result<String> {
    let mut t = String::new();
    t.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>vigil eval</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}details{margin:.3em 0}.item{font-size:90%;margin:.5em 0 .5em 1em}.why{color:#555}</style></head><body>\n");
    let _ = writeln!(t, "<h1>vigil eval</h1><p>Model <code>{}</code>, adapter <code>{}</code>, data <code>{}</code> ({} items), {} output, backend {}, at most {} tokens, greedy.</p><p>{}</p>",
        esc(&r.model), esc(r.adapter.as_deref().unwrap_or("none")), esc(&r.data), r.metrics.n, esc(&r.format), esc(&r.backend), r.max_tokens, esc(CONVENTIONS));
    t.push_str("<h2>Summary</h2>");
    let (h, rows) = summary_rows(r);
    html_table(&mut t, &h.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &rows);
    if let Some(c) = r.metrics.tag_compliance {
        let _ = writeln!(t, "<p>Dual-stream tag compliance: {} %.</p>", pct(c));
    }
    let _ = writeln!(t, "<p>Mean reasoning length: {:.1} words.</p>", r.metrics.mean_reasoning_words);
    t.push_str("<h2>Per policy</h2>");
    t.push_str(&f1_chart(r)?);
    let (h, rows) = policy_rows(r);
    html_table(&mut t, &h, &rows);
    t.push_str("<h2>Confusion</h2>");
    t.push_str(&confusion_chart(&r.metrics)?);
    t.push_str("<h2>Errors</h2><p>Every misclassified item, grouped by policy (gold for misses, predicted for false positives) and kind.</p>");
    for ((policy, kind), rs) in errors_by_policy(&r.records) {
        let _ = write!(t, "<details><summary>{} — {} ({})</summary>", esc(&policy), kind.name(), rs.len());
        for x in rs {
            let why = if x.reasoning.is_empty() { &x.raw } else { &x.reasoning };
            let _ = write!(
                t,
                "<div class=\"item\"><code>{}</code> gold {}, predicted {}<br>“{}”{}<div class=\"why\">{}</div></div>",
                esc(&x.id),
                esc(&gold_of(x)),
                esc(&label_of(x)),
                esc(&cut(&x.text, 300)),
                x.response.as_ref().map(|s| format!("<br>response: “{}”", esc(&cut(s, 200)))).unwrap_or_default(),
                esc(&cut(why, 800))
            );
        }
        t.push_str("</details>\n");
    }
    t.push_str("</body></html>\n");
    Ok(t)
}

/// Writes metrics.json, records.jsonl, report.md and report.html into `dir`.
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    crate::data::write_file(&dir.join("metrics.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    crate::data::write_jsonl(&dir.join("records.jsonl"), &r.records)?;
    crate::data::write_file(&dir.join("report.md"), markdown(r).as_bytes())?;
    crate::data::write_file(&dir.join("report.html"), html(r)?.as_bytes())
}

/// `vigil eval --compare A B` (metrics.json files or the report folders holding them): key
/// metrics of two runs and B − A, in points; where `records.jsonl` lies beside both, the paired
/// comparison of their verdicts ([`super::paired`]).
pub fn compare(a_arg: &Path, b_arg: &Path) -> Result<String> {
    let file = |p: &Path| if p.is_dir() { p.join("metrics.json") } else { p.to_path_buf() };
    let (a_file, b_file) = (file(a_arg), file(b_arg));
    let (a_path, b_path) = (a_file.as_path(), b_file.as_path());
    let read = |p: &Path| -> Result<Report> {
        let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&s).with_context(|| format!("{} is not a vigil eval metrics.json", p.display()))
    };
    let (a, b) = (read(a_path)?, read(b_path)?);
    let mut rows: Vec<(String, f64, f64)> = vec![
        ("accuracy".into(), a.metrics.accuracy, b.metrics.accuracy),
        ("precision".into(), a.metrics.binary.precision, b.metrics.binary.precision),
        ("recall".into(), a.metrics.binary.recall, b.metrics.binary.recall),
        ("F1".into(), a.metrics.binary.f1, b.metrics.binary.f1),
        ("FPR".into(), a.metrics.binary.fpr, b.metrics.binary.fpr),
        ("FNR".into(), a.metrics.binary.fnr, b.metrics.binary.fnr),
        ("macro-F1".into(), a.metrics.macro_f1, b.metrics.macro_f1),
        ("micro-F1".into(), a.metrics.micro_f1, b.metrics.micro_f1),
        ("exact match".into(), a.metrics.exact_match, b.metrics.exact_match),
        ("parse failures".into(), a.metrics.parse_failure_rate, b.metrics.parse_failure_rate),
    ];
    for p in Policy::ALL {
        rows.push((format!("F1 {}", p.name()), a.metrics.policies[p.name()].f1, b.metrics.policies[p.name()].f1));
    }
    let mut t =
        format!("A = {} ({} items)\nB = {} ({} items)\n", a_path.display(), a.metrics.n, b_path.display(), b.metrics.n);
    let _ = writeln!(t, "{:<22}{:>9}{:>9}{:>10}", "metric (%)", "A", "B", "B - A");
    for (name, x, y) in rows {
        let _ = writeln!(t, "{:<22}{:>9.1}{:>9.1}{:>+10.1}", name, 100.0 * x, 100.0 * y, 100.0 * (y - x));
    }
    let records = |p: &Path| p.parent().map(|d| d.join("records.jsonl")).filter(|r| r.is_file());
    match (records(a_path), records(b_path)) {
        (Some(ra), Some(rb)) => {
            let (ra, rb): (Vec<Record>, Vec<Record>) = (crate::data::read_jsonl(&ra)?, crate::data::read_jsonl(&rb)?);
            match super::paired::paired(&ra, &rb, 1000, 0x5eed) {
                Ok(p) => t.push_str(&p.text()),
                Err(e) => {
                    let _ = writeln!(t, "no paired comparison: {e}");
                }
            }
        }
        _ => {
            let _ = writeln!(t, "no paired comparison: records.jsonl is not beside both files");
        }
    }
    Ok(t)
}
