//! `vigil fetch-model [NAME] [--list]`

use anyhow::{Context, Result};
use vigil_models::catalog;

use crate::cli::{FetchModelArgs, Global};

pub fn run(args: FetchModelArgs, _g: &Global) -> Result<()> {
    if args.list {
        for e in catalog::entries() {
            let state = match e.cached() {
                Some(p) => format!("cached at {}", p.display()),
                None => "not fetched".into(),
            };
            let adapter = e.guard_adapter.as_ref().map_or("no guard adapter".to_string(), |a| {
                format!("guard adapter {}{}", a.file, if a.available().is_some() { "" } else { " (not here)" })
            });
            println!(
                "{:<24} {:>7.1} MB  {:<8} {}  ({}; {adapter})",
                e.name,
                e.size as f64 / 1e6,
                e.architecture,
                state,
                e.license
            );
        }
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or(catalog::DEFAULT_MODEL);
    let entry = catalog::find(name).with_context(|| {
        let names: Vec<String> = catalog::entries().into_iter().map(|e| e.name).collect();
        format!("`{name}` is not in the catalogue (known: {})", names.join(", "))
    })?;
    let was_cached = entry.cached().is_some();
    let path = vigil_trainer::fetch::fetch(&entry)?;
    if was_cached {
        eprintln!("vigil: {} is already in the cache", entry.name);
    } else {
        eprintln!("vigil: {} verified (sha256 {})", entry.name, &entry.sha256[..16]);
    }
    println!("{}", path.display());
    if let Some(a) = &entry.guard_adapter {
        let p = vigil_trainer::fetch::install_adapter(a)?;
        eprintln!("vigil: guard adapter {} (sha256 {}) in the cache", a.file, &a.sha256[..16]);
        println!("{}", p.display());
    }
    Ok(())
}
