//! Two runs on the same items, compared item by item: how many verdicts differ, McNemar's exact
//! test on the items exactly one run gets right, and paired bootstrap intervals for B − A.
//!
//! Two adapters' aggregate scores can differ by a few points while their verdicts differ on a
//! fifth of the items; only a paired test says whether the difference outlives that churn.

use std::collections::HashMap;
use std::fmt::Write;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

use super::metrics::{compute, Metrics, Record};

/// The paired comparison of run B against run A.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub n: usize,
    /// Items whose binary verdict (SAFE, UNSAFE or unparsed) differs.
    pub verdicts_differ: usize,
    /// Items A labels right and B wrong, and the other way round (a parse failure is wrong).
    pub only_a_right: usize,
    pub only_b_right: usize,
    /// Two-sided exact McNemar p-value on those two counts.
    pub p_mcnemar: f64,
    /// (metric, B − A, 2.5 % and 97.5 % bootstrap percentiles), as fractions.
    pub deltas: Vec<(&'static str, f64, f64, f64)>,
    pub resamples: usize,
}

/// Two-sided exact McNemar test: with `b` and `c` the discordant counts, twice the probability
/// of a split at least as uneven under Binomial(b + c, ½), at most 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    // log pmf by the ratio of successive binomial coefficients (no overflow for large n)
    let mut log_pmf = n as f64 * 0.5f64.ln();
    let mut tail = 0.0;
    for i in 0..=b.min(c) {
        tail += log_pmf.exp();
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (2.0 * tail).min(1.0)
}

fn right(r: &Record) -> bool {
    r.pred == Some(r.gold)
}

/// The scores the bootstrap follows.
fn scores(m: &Metrics) -> [(&'static str, f64); 4] {
    [("accuracy", m.accuracy), ("F1", m.binary.f1), ("FPR", m.binary.fpr), ("macro-F1", m.macro_f1)]
}

/// Pairs `b`'s records with `a`'s by id. Both runs must hold the same items with the same gold
/// labels; an item missing from either side, or labelled differently, is an error naming it.
pub fn paired(a: &[Record], b: &[Record], resamples: usize, seed: u64) -> Result<Paired> {
    let by_id: HashMap<&str, &Record> = b.iter().map(|r| (r.id.as_str(), r)).collect();
    let a_ids: std::collections::HashSet<&str> = a.iter().map(|r| r.id.as_str()).collect();
    if by_id.len() != b.len() || a_ids.len() != a.len() {
        bail!("run {} lists an item id twice", if a_ids.len() != a.len() { "A" } else { "B" });
    }
    if a.len() != b.len() {
        bail!("run A has {} items and run B {}: a paired comparison needs the same items", a.len(), b.len());
    }
    // Keep only what the metrics read (the texts and outputs are large, and resampling clones).
    let slim = |r: &Record| Record { text: String::new(), raw: String::new(), reasoning: String::new(), ..r.clone() };
    let mut pairs = Vec::with_capacity(a.len());
    for ra in a {
        let Some(rb) = by_id.get(ra.id.as_str()) else {
            bail!("item `{}` is in run A but not in run B", ra.id);
        };
        if ra.gold != rb.gold || ra.gold_policies != rb.gold_policies {
            bail!("item `{}` has different gold labels in the two runs", ra.id);
        }
        pairs.push((slim(ra), slim(rb)));
    }
    let n = pairs.len();
    let verdicts_differ = pairs.iter().filter(|(x, y)| x.pred != y.pred).count();
    let only_a_right = pairs.iter().filter(|(x, y)| right(x) && !right(y)).count();
    let only_b_right = pairs.iter().filter(|(x, y)| !right(x) && right(y)).count();

    let (ra, rb): (Vec<Record>, Vec<Record>) = pairs.iter().cloned().unzip();
    let point: Vec<f64> = scores(&compute(&rb)).iter().zip(scores(&compute(&ra))).map(|(y, x)| y.1 - x.1).collect();
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); point.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if n > 0 {
        for _ in 0..resamples {
            let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            let xa: Vec<Record> = idx.iter().map(|&i| pairs[i].0.clone()).collect();
            let xb: Vec<Record> = idx.iter().map(|&i| pairs[i].1.clone()).collect();
            for (k, (y, x)) in scores(&compute(&xb)).iter().zip(scores(&compute(&xa))).enumerate() {
                draws[k].push(y.1 - x.1);
            }
        }
    }
    let deltas = scores(&compute(&ra))
        .iter()
        .zip(point)
        .zip(draws)
        .map(|((&(name, _), d), mut v)| {
            v.sort_by(f64::total_cmp);
            let q = |p: f64| if v.is_empty() { d } else { v[((p * (v.len() - 1) as f64).round()) as usize] };
            (name, d, q(0.025), q(0.975))
        })
        .collect();
    Ok(Paired {
        n,
        verdicts_differ,
        only_a_right,
        only_b_right,
        p_mcnemar: mcnemar_exact(only_a_right, only_b_right),
        deltas,
        resamples,
    })
}

impl Paired {
    /// The text `vigil eval --compare` prints under its table.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "paired on {} items: verdicts differ on {} ({:.1} %); only A right on {}, only B right on {}; \
             McNemar exact p = {:.3}",
            self.n,
            self.verdicts_differ,
            100.0 * self.verdicts_differ as f64 / self.n.max(1) as f64,
            self.only_a_right,
            self.only_b_right,
            self.p_mcnemar
        );
        let _ = writeln!(t, "B - A (points) with a paired bootstrap 95 % interval ({} resamples):", self.resamples);
        for (name, d, lo, hi) in &self.deltas {
            let _ = writeln!(t, "  {name:<10}{:>+7.1}   [{:+.1}, {:+.1}]", 100.0 * d, 100.0 * lo, 100.0 * hi);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_models::guard::{Label, Policy};

    fn rec(id: &str, gold: Label, pred: Option<Label>) -> Record {
        let pol = |l: Option<Label>| if l == Some(Label::Unsafe) { vec![Policy::Violence] } else { vec![] };
        Record {
            id: id.into(),
            text: "some text".into(),
            response: None,
            gold,
            gold_policies: pol(Some(gold)),
            pred,
            pred_policies: pol(pred),
            reasoning: "a b c".into(),
            raw: "raw".into(),
            tags_ok: None,
            generated_tokens: 3,
            seconds: 0.1,
        }
    }

    #[test]
    fn mcnemar_matches_the_binomial_tail() {
        // b = c: no evidence either way
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 0 of 10: 2 · 2⁻¹⁰
        assert!((mcnemar_exact(0, 10) - 2.0 / 1024.0).abs() < 1e-15);
        // 3 of 10: 2 · (1 + 10 + 45 + 120) / 1024, symmetric in its arguments
        assert!((mcnemar_exact(3, 7) - 352.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 7), mcnemar_exact(7, 3));
        // large counts stay finite: 300 vs 400 of 700 is far in the tail, 345 vs 355 is not
        let p = mcnemar_exact(300, 400);
        assert!(p > 0.0 && p < 1e-3, "{p}");
        assert!(mcnemar_exact(345, 355) > 0.5);
    }

    #[test]
    fn the_same_run_against_itself_differs_nowhere() {
        let (s, u) = (Label::Safe, Label::Unsafe);
        let a: Vec<Record> = (0..20)
            .map(|i| rec(&format!("i{i}"), if i % 2 == 0 { s } else { u }, if i % 3 == 0 { Some(u) } else { Some(s) }))
            .collect();
        let mut b = a.clone();
        b.reverse(); // paired by id, not by position
        let p = paired(&a, &b, 200, 7).unwrap();
        assert_eq!((p.n, p.verdicts_differ, p.only_a_right, p.only_b_right), (20, 0, 0, 0));
        assert_eq!(p.p_mcnemar, 1.0);
        assert!(p.deltas.iter().all(|&(_, d, lo, hi)| d == 0.0 && lo == 0.0 && hi == 0.0), "{:?}", p.deltas);
    }

    #[test]
    fn a_run_that_fixes_false_positives_is_better_by_the_counts_and_the_intervals() {
        let (s, u) = (Label::Safe, Label::Unsafe);
        // 40 SAFE items: A flags 16 of them, B flags 2 (B fixes 14, breaks none); 40 UNSAFE all caught
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..40 {
            a.push(rec(&format!("s{i}"), s, Some(if i < 16 { u } else { s })));
            b.push(rec(&format!("s{i}"), s, Some(if i < 2 { u } else { s })));
            a.push(rec(&format!("u{i}"), u, Some(u)));
            b.push(rec(&format!("u{i}"), u, Some(u)));
        }
        let p = paired(&a, &b, 1000, 3).unwrap();
        assert_eq!((p.verdicts_differ, p.only_a_right, p.only_b_right), (14, 0, 14));
        assert!((p.p_mcnemar - 2.0 / 16384.0).abs() < 1e-12, "{}", p.p_mcnemar);
        let fpr = p.deltas.iter().find(|d| d.0 == "FPR").unwrap();
        assert!((fpr.1 - (-14.0 / 40.0)).abs() < 1e-12, "{fpr:?}");
        // the interval brackets the point and stays below zero
        assert!(fpr.2 <= fpr.1 && fpr.1 <= fpr.3 && fpr.3 < 0.0, "{fpr:?}");
        let acc = p.deltas.iter().find(|d| d.0 == "accuracy").unwrap();
        assert!(acc.1 > 0.0 && acc.2 > 0.0, "{acc:?}");
        assert!(p.text().contains("only A right on 0, only B right on 14"), "{}", p.text());
    }

    #[test]
    fn runs_on_different_items_are_not_paired() {
        let (s, u) = (Label::Safe, Label::Unsafe);
        let a = vec![rec("x", s, Some(s)), rec("y", u, Some(u))];
        let e = paired(&a, &[rec("x", s, Some(s)), rec("z", u, Some(u))], 10, 1).unwrap_err().to_string();
        assert!(e.contains("`y`"), "{e}");
        let e = paired(&a, &a[..1], 10, 1).unwrap_err().to_string();
        assert!(e.contains("2 items") && e.contains("1"), "{e}");
        let e = paired(&a, &[rec("x", s, Some(s)), rec("y", s, Some(u))], 10, 1).unwrap_err().to_string();
        assert!(e.contains("`y`") && e.contains("gold"), "{e}");
        let twice = [rec("x", s, Some(s)), rec("x", s, Some(s))];
        let e = paired(&twice, &a, 10, 1).unwrap_err().to_string();
        assert!(e.contains("run A") && e.contains("twice"), "{e}");
    }
}
