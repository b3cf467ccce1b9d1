//! The loss curve of a run as SVG: training loss per step and eval loss where measured.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::run::Metrics;

pub fn loss_curve(metrics: &[Metrics], out: &Path) -> Result<()> {
    let train: Vec<(f64, f64)> =
        metrics.iter().filter(|m| m.loss.is_finite()).map(|m| (m.step as f64, m.loss)).collect();
    let eval: Vec<(f64, f64)> =
        metrics.iter().filter_map(|m| m.eval_loss.filter(|e| e.is_finite()).map(|e| (m.step as f64, e))).collect();
    let all = train.iter().chain(&eval);
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (lo, hi) = if lo.is_finite() { (lo.min(hi) * 0.95, hi * 1.05 + 1e-6) } else { (0.0, 1.0) };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("vigil training: loss per target token", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_x, lo..hi)?;
        chart.configure_mesh().x_desc("optimizer step").y_desc("cross-entropy (nats)").draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))?
            .label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
        root.present()?;
    }
    vigil_models::fsutil::write_atomic(out, |f| std::io::Write::write_all(f, svg.as_bytes()))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
