//! Checkpoints: the LoRA values, the optimizer moments and the step, in one safetensors file
//! written atomically (temporary file, fsync, rename). Everything else a run needs to continue
//! (data order, dropout masks, learning rate) is a pure function of the config and the step, so
//! resuming reproduces the uninterrupted run bit for bit.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};

use super::lora::LoraParams;
use super::optim::{Moments, State};

pub const FILE: &str = "checkpoint.safetensors";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn state_tensors(prefix: &str, s: &State, out: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
    match s {
        State::F32(v) => out.push((prefix.to_string(), Dtype::F32, vec![v.len()], f32_bytes(v))),
        State::Q8 { codes, scales, .. } => {
            out.push((format!("{prefix}.codes"), Dtype::U8, vec![codes.len()], codes.clone()));
            out.push((format!("{prefix}.scales"), Dtype::F32, vec![scales.len()], f32_bytes(scales)));
        }
    }
}

/// Writes the checkpoint; `meta` carries the step and what the run must match on resume.
pub fn save(path: &Path, lora: &LoraParams, moments: &[Moments], meta: HashMap<String, String>) -> Result<()> {
    let mut tensors = Vec::new();
    for (p, m) in lora.params.iter().zip(moments) {
        tensors.push((p.name.clone(), Dtype::F32, vec![p.shape.0, p.shape.1], f32_bytes(&p.value)));
        state_tensors(&format!("{}.adam_m", p.name), &m.m, &mut tensors);
        state_tensors(&format!("{}.adam_v", p.name), &m.v, &mut tensors);
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta))?;
    vigil_models::fsutil::write_atomic(path, |f| std::io::Write::write_all(f, &bytes))?;
    Ok(())
}

fn read_f32(st: &safetensors::SafeTensors, name: &str, len: usize, file: &Path) -> Result<Vec<f32>> {
    let t = st.tensor(name).with_context(|| format!("{}: no tensor `{name}`", file.display()))?;
    if t.dtype() != Dtype::F32 || t.data().len() != len * 4 {
        bail!("{}: tensor `{name}` is {:?} {:?}, expected {len} f32", file.display(), t.dtype(), t.shape());
    }
    Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

fn read_state(st: &safetensors::SafeTensors, prefix: &str, like: &State, file: &Path) -> Result<State> {
    Ok(match like {
        State::F32(v) => State::F32(read_f32(st, prefix, v.len(), file)?),
        State::Q8 { codes, scales, unsigned } => {
            let name = format!("{prefix}.codes");
            let t = st.tensor(&name).with_context(|| {
                format!("{}: no tensor `{name}` (was the run started with adam_8bit = false?)", file.display())
            })?;
            if t.dtype() != Dtype::U8 || t.data().len() != codes.len() {
                bail!("{}: tensor `{name}` has the wrong type or size", file.display());
            }
            State::Q8 {
                codes: t.data().to_vec(),
                scales: read_f32(st, &format!("{prefix}.scales"), scales.len(), file)?,
                unsigned: *unsigned,
            }
        }
    })
}

/// Reads a checkpoint into `lora` and `moments` (shapes and state kinds must match what the
/// config builds); returns its metadata.
pub fn load(path: &Path, lora: &mut LoraParams, moments: &mut [Moments]) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a checkpoint", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{} is corrupt", path.display()))?;
    for (p, m) in lora.params.iter_mut().zip(moments.iter_mut()) {
        p.value = read_f32(&st, &p.name, p.value.len(), path)?;
        m.m = read_state(&st, &format!("{}.adam_m", p.name), &m.m, path)?;
        m.v = read_state(&st, &format!("{}.adam_v", p.name), &m.v, path)?;
    }
    lora.sync()?;
    Ok(meta)
}
