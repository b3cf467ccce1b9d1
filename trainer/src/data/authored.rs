//! The hand-written part of the dataset, in `data/authored/`:
//! - `safe_families.toml`, `unsafe_families.toml`, `train_only_families.toml` (never in eval):
//!   templated families (a template × slot values,
//!   with reasoning steps that use the same slots), expanded deterministically;
//! - `responses.toml`: refusals, harmful-compliance openings (cut before any content) and supportive
//!   replies, for prompt + response items;
//! - `jailbreaks.toml`: jailbreak wrappers by category, forbidden requests and benign controls.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use vigil_models::guard::{Label, Policy};

use super::stable_hash;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub id: String,
    pub kind: String,
    pub label: Label,
    pub policies: Vec<Policy>,
    pub templates: Vec<String>,
    pub steps: Vec<String>,
    pub max: usize,
    #[serde(default)]
    pub slots: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyFile {
    family: Vec<Family>,
}

/// One expanded family member.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub family: String,
    pub kind: String,
    pub text: String,
    pub label: Label,
    pub policies: Vec<Policy>,
    pub steps: Vec<String>,
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&s).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `{name}` placeholders of a template, in order of first use.
fn placeholders(t: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else { break };
        let name = &after[..j];
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_string());
        }
        rest = &after[j + 1..];
    }
    out
}

fn fill(t: &str, values: &BTreeMap<&str, &str>) -> String {
    let mut s = t.to_string();
    for (k, v) in values {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Checks one family and returns its members (at most `max`, chosen by a stable hash).
pub fn expand(f: &Family, file: &Path) -> Result<Vec<Expanded>> {
    let at = || format!("{}: family `{}`", file.display(), f.id);
    if f.templates.is_empty() {
        bail!("{}: no templates", at());
    }
    if !(2..=4).contains(&f.steps.len()) {
        bail!("{}: {} reasoning steps (2–4 expected)", at(), f.steps.len());
    }
    match (f.label, f.policies.is_empty()) {
        (Label::Safe, false) => bail!("{}: a SAFE family lists policies", at()),
        (Label::Unsafe, true) => bail!("{}: an UNSAFE family lists no policies", at()),
        _ => {}
    }
    if f.max == 0 {
        bail!("{}: max is 0", at());
    }
    let step_slots: Vec<String> = f.steps.iter().flat_map(|s| placeholders(s)).collect();
    let mut all = Vec::new();
    for t in &f.templates {
        let names = placeholders(t);
        for n in names.iter().chain(&step_slots) {
            if !f.slots.contains_key(n) {
                bail!("{}: `{{{n}}}` has no slot values", at());
            }
        }
        if let Some(n) = step_slots.iter().find(|n| !names.contains(n)) {
            bail!("{}: the steps use `{{{n}}}` but the template {t:?} does not", at());
        }
        // Cartesian product over the template's slots.
        let mut combos: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new()];
        for n in &names {
            let vals = &f.slots[n];
            if vals.is_empty() {
                bail!("{}: slot `{n}` is empty", at());
            }
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    vals.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(n.as_str(), v.as_str());
                        c
                    })
                })
                .collect();
        }
        for c in combos {
            all.push(Expanded {
                family: f.id.clone(),
                kind: f.kind.clone(),
                text: fill(t, &c),
                label: f.label,
                policies: vigil_models::guard::format::canonical(&f.policies),
                steps: f.steps.iter().map(|s| fill(s, &c)).collect(),
            });
        }
    }
    all.sort_by_key(|e| (stable_hash(&format!("{}\u{0}{}", f.id, e.text)), e.text.clone()));
    all.dedup_by(|a, b| a.text == b.text);
    all.truncate(f.max);
    Ok(all)
}

/// All members of every family in a families file; family ids must be unique.
pub fn families(path: &Path) -> Result<Vec<Expanded>> {
    let file: FamilyFile = read_toml(path)?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for f in &file.family {
        if !seen.insert(f.id.clone()) {
            bail!("{}: family id `{}` is used twice", path.display(), f.id);
        }
        out.extend(expand(f, path)?);
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Responses {
    pub refusals: Vec<String>,
    pub compliances: Vec<String>,
    pub support: Vec<String>,
}

pub fn responses(path: &Path) -> Result<Responses> {
    let r: Responses = read_toml(path)?;
    if r.refusals.is_empty() || r.compliances.is_empty() || r.support.is_empty() {
        bail!("{}: refusals, compliances and support must each have entries", path.display());
    }
    Ok(r)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wrapper {
    pub id: String,
    pub category: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub request: String,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jailbreaks {
    pub wrapper: Vec<Wrapper>,
    pub forbidden: Vec<Request>,
    pub benign: Vec<Request>,
}

/// The jailbreak categories every stress set covers.
pub const JAILBREAK_CATEGORIES: [&str; 10] = [
    "role_play",
    "dan_override",
    "fictional_frame",
    "hypothetical",
    "multi_step",
    "obfuscation",
    "authority",
    "emotional",
    "escalation",
    "past_tense",
];

pub fn jailbreaks(path: &Path) -> Result<Jailbreaks> {
    let j: Jailbreaks = read_toml(path)?;
    for w in &j.wrapper {
        if w.text.matches("{request}").count() != 1 {
            bail!("{}: wrapper `{}` must contain {{request}} exactly once", path.display(), w.id);
        }
        if !JAILBREAK_CATEGORIES.contains(&w.category.as_str()) {
            bail!("{}: wrapper `{}` has unknown category `{}`", path.display(), w.id, w.category);
        }
    }
    if let Some(r) = j.forbidden.iter().find(|r| r.policies.is_empty()) {
        bail!("{}: forbidden request {:?} lists no policies", path.display(), r.request);
    }
    if let Some(r) = j.benign.iter().find(|r| !r.policies.is_empty()) {
        bail!("{}: benign request {:?} lists policies", path.display(), r.request);
    }
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(toml_text: &str) -> Result<Vec<Expanded>> {
        let f: FamilyFile = toml::from_str(toml_text).unwrap();
        expand(&f.family[0], Path::new("t.toml"))
    }

    #[test]
    fn families_expand_over_slots_and_fill_the_steps() {
        let got = family(
            r#"[[family]]
id = "f"
kind = "tech_jargon"
label = "safe"
policies = []
templates = ["How do I {verb} a {thing}?"]
steps = ["It asks how to {verb} a {thing}.", "That is jargon, so no policy is violated."]
max = 3
[family.slots]
verb = ["kill", "stop"]
thing = ["process", "job"]
"#,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        for e in &got {
            let verb = if e.text.contains("kill") { "kill" } else { "stop" };
            assert!(e.steps[0].contains(verb), "{e:?}");
            assert!(!e.text.contains('{') && !e.steps[0].contains('{'));
        }
    }

    #[test]
    fn bad_families_name_the_family() {
        let base = |extra: &str| {
            format!("[[family]]\nid = \"f\"\nkind = \"k\"\n{extra}\nmax = 2\n[family.slots]\nx = [\"a\"]\n")
        };
        let e = family(&base("label = \"safe\"\npolicies = []\ntemplates = [\"{x}\"]\nsteps = [\"{y}\", \"b\"]"))
            .unwrap_err();
        assert!(e.to_string().contains("family `f`") && e.to_string().contains("{y}"), "{e}");
        let e = family(&base("label = \"unsafe\"\npolicies = []\ntemplates = [\"{x}\"]\nsteps = [\"a\", \"b\"]"))
            .unwrap_err();
        assert!(e.to_string().contains("lists no policies"), "{e}");
        let e = family(&base("label = \"safe\"\npolicies = []\ntemplates = [\"{x}\"]\nsteps = [\"a\"]")).unwrap_err();
        assert!(e.to_string().contains("1 reasoning steps"), "{e}");
    }
}
