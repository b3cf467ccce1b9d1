//! Guard data: the labelled item schema and everything `vigil data` does with it.
//!
//! - [`sources`]: the PyPI packages the data comes from (pinned by sha256) and how each source's
//!   categories map onto the six policies;
//! - [`authored`]: the hand-written families in `data/authored/` (hard negatives, thin policies,
//!   responses, jailbreak wrappers), expanded deterministically;
//! - [`reasoning`]: templated reasoning traces that quote the content and cite the definitions;
//! - [`split`]: near-duplicate groups and the train/eval split by group;
//! - [`probes`], [`jailbreak`]: the probe pairs and the jailbreak stress sets;
//! - [`build`]: all of the above → `data/guard/`; [`validate`], [`card`]: checks and the data card;
//! - [`endpoint`]: traces from an OpenAI-compatible endpoint, and the bootstrap from a vigil model.

pub mod authored;
pub mod build;
pub mod card;
pub mod endpoint;
pub mod jailbreak;
pub mod probes;
pub mod reasoning;
pub mod sources;
pub mod split;
pub mod validate;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vigil_models::guard::{Label, Policy};

/// One labelled item of the guard dataset (a JSONL line of `train.jsonl` / `eval.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: String,
    /// The content judged: a user request or message.
    pub text: String,
    /// An assistant response to `text`; when present, the response is what is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub label: Label,
    /// Violated policies (empty when SAFE), canonical order.
    pub policies: Vec<Policy>,
    /// 2–4 reasoning steps that end in the verdict.
    pub reasoning: Vec<String>,
    /// Where the content comes from (`strongreject`, `authored`, …) and under which licence.
    pub source: String,
    pub licence: String,
    /// What sort of item it is: `request`, `hard_negative/metaphor`, `refusal_pair`, …
    pub kind: String,
    /// Near-duplicate group: items of one group always land in the same split.
    pub group: String,
}

/// Reads JSONL, one `T` per non-blank line; the first bad line is an error naming file:line.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: not UTF-8 text", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// Writes JSONL atomically (temporary file, then rename), so a failed build leaves the old file.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    write_file(path, &buf)
}

/// Writes a file atomically, creating its folder.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    vigil_models::fsutil::write_atomic(path, |f| f.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

/// Ids of an append-only JSONL output (resumable jobs skip them); a torn last line (a crash
/// mid-write) is cut off first, so the item it held is done again and appends stay line-aligned.
pub fn done_ids(path: &Path) -> Result<std::collections::HashSet<String>> {
    let Ok(mut bytes) = std::fs::read(path) else { return Ok(Default::default()) };
    if !bytes.is_empty() && bytes.last() != Some(&b'\n') {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(keep);
        std::fs::write(path, &bytes).with_context(|| format!("cutting the torn last line of {}", path.display()))?;
    }
    let mut ids = std::collections::HashSet::new();
    for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        ids.insert(v["id"].as_str().with_context(|| format!("{}:{}: no id", path.display(), i + 1))?.to_string());
    }
    Ok(ids)
}

/// Appends one JSON line (call [`done_ids`] first: it repairs a torn tail).
pub fn append_line(path: &Path, v: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&line).with_context(|| format!("appending to {}", path.display()))?;
    Ok(())
}

/// Stable 64-bit FNV-1a hash (ids, sampling and split decisions must not depend on Rust's hasher).
pub fn stable_hash(s: &str) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
