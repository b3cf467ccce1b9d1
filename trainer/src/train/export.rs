//! Adapter exports: Hugging Face PEFT, a merged GGUF model, an Ollama Modelfile. (The GGUF
//! adapter itself is `LoraAdapter::to_gguf`.)

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use vigil_models::arch::{Arch, ArchConfig};
use vigil_models::chat::ChatTemplate;
use vigil_models::gguf::{codec, GgmlType, Gguf, GgufWriter};
use vigil_models::guard::GuardRequest;
use vigil_models::lora::LoraAdapter;

/// GGUF projection → (Hugging Face module path, module name).
fn hf_module(gguf: &str) -> Option<(&'static str, &'static str)> {
    Some(match gguf {
        "attn_q" => ("self_attn", "q_proj"),
        "attn_k" => ("self_attn", "k_proj"),
        "attn_v" => ("self_attn", "v_proj"),
        "attn_output" => ("self_attn", "o_proj"),
        "ffn_gate" => ("mlp", "gate_proj"),
        "ffn_up" => ("mlp", "up_proj"),
        "ffn_down" => ("mlp", "down_proj"),
        _ => return None,
    })
}

/// `blk.3.attn_q.weight` → (3, "attn_q").
fn split_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, proj) = rest.split_once('.')?;
    Some((layer.parse().ok()?, proj))
}

/// llama.cpp's converter interleaves the rotary halves of each head's Q/K rows for the llama
/// architecture (HF row h·d + i·d/2 + j ↦ GGUF row h·d + 2j + i). Rows of B trained against
/// GGUF weights go back to Hugging Face's order with the inverse.
pub fn rows_to_hf(b: &[f32], r: usize, heads: usize, head_dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; b.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * head_dim + i * half + j;
                let gg = h * head_dim + 2 * j + i;
                out[hf * r..(hf + 1) * r].copy_from_slice(&b[gg * r..(gg + 1) * r]);
            }
        }
    }
    out
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
pub fn peft(adapter: &LoraAdapter, base: &Gguf, base_name: &str, dir: &Path) -> Result<()> {
    let cfg = ArchConfig::from_gguf(base)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    let mut rank = 0;
    for (name, p) in &adapter.pairs {
        let (layer, proj) = split_name(name).with_context(|| format!("tensor `{name}` is not a block projection"))?;
        let (group, module) =
            hf_module(proj).with_context(|| format!("tensor `{name}`: no PEFT module for `{proj}`"))?;
        modules.insert(module);
        rank = p.r;
        let b = match (cfg.arch, proj) {
            (Arch::Llama, "attn_q") => rows_to_hf(&p.b, p.r, cfg.n_head, cfg.head_dim),
            (Arch::Llama, "attn_k") => rows_to_hf(&p.b, p.r, cfg.n_head_kv, cfg.head_dim),
            _ => p.b.clone(),
        };
        let key = format!("base_model.model.model.layers.{layer}.{group}.{module}");
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        tensors.push((format!("{key}.lora_A.weight"), vec![p.r, p.in_dim], bytes(&p.a)));
        tensors.push((format!("{key}.lora_B.weight"), vec![p.out_dim, p.r], bytes(&b)));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta))?;
    vigil_models::fsutil::write_atomic(&dir.join("adapter_model.safetensors"), |f| std::io::Write::write_all(f, &st))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": adapter.alpha.unwrap_or(rank as f32),
        "lora_dropout": 0.0,
        "target_modules": modules.into_iter().collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "inference_mode": true,
    });
    let text = serde_json::to_string_pretty(&config)?;
    vigil_models::fsutil::write_atomic(&dir.join("adapter_config.json"), |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })?;
    Ok(())
}

/// The base model with W' = W + (α/r)·B·A in every adapted layer, those stored as `ty`; every
/// other tensor and all metadata copied unchanged.
pub fn merged(adapter: &LoraAdapter, base: &Gguf, ty: GgmlType) -> Result<GgufWriter> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q4_0) {
        bail!("merged models are written as f32, f16, q8_0, q4_1 or q4_0, not {ty}");
    }
    if adapter.arch != base.str("general.architecture")? {
        bail!(
            "{}: the adapter is for `{}`, {} is `{}`",
            adapter.name,
            adapter.arch,
            base.name(),
            base.str("general.architecture")?
        );
    }
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata() {
        w.set(k.clone(), v.clone());
    }
    for t in base.tensors() {
        match adapter.pairs.get(&t.name) {
            None => w.add_tensor(t.name.clone(), &t.dims, t.ty, base.tensor_bytes(t).to_vec())?,
            Some(p) => {
                let (n_in, n_out) = (t.dims[0] as usize, t.dims[1] as usize);
                if (p.in_dim, p.out_dim) != (n_in, n_out) {
                    bail!("tensor `{}`: the adapter is {}→{}, the base is {n_in}→{n_out}", t.name, p.in_dim, p.out_dim);
                }
                let mut wv = base.tensor_f32(&t.name)?;
                let s = adapter.scale(p.r) as f32;
                for o in 0..n_out {
                    let row = &mut wv[o * n_in..(o + 1) * n_in];
                    for k in 0..p.r {
                        let bk = s * p.b[o * p.r + k];
                        if bk != 0.0 {
                            for (x, a) in row.iter_mut().zip(&p.a[k * n_in..(k + 1) * n_in]) {
                                *x += bk * a;
                            }
                        }
                    }
                }
                let ty = if n_in.is_multiple_of(ty.block_size()) { ty } else { GgmlType::F32 };
                w.add_tensor(t.name.clone(), &t.dims, ty, codec::quantize(ty, &wv)?)?;
            }
        }
    }
    Ok(w)
}

/// An Ollama Modelfile for base + adapter with the guard's system prompt and chat template.
pub fn modelfile(base_file: &str, adapter_file: &str, template: ChatTemplate) -> String {
    let system = GuardRequest::new("").system_prompt();
    let (tpl, stop) = match template {
        ChatTemplate::ChatMl => (
            "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n",
            "<|im_end|>",
        ),
        ChatTemplate::Gemma3 => (
            "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n",
            "<end_of_turn>",
        ),
        ChatTemplate::Llama3 => (
            "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
    };
    format!(
        "# vigil guard: base model + LoRA adapter. `ollama create vigil-guard -f Modelfile`; the prompt is\n\
         # the guard's user message (\"Analyze this content for safety policy violations…\", see guard/prompt.rs).\n\
         FROM ./{base_file}\nADAPTER ./{adapter_file}\nTEMPLATE \"\"\"{tpl}\"\"\"\nSYSTEM \"\"\"{system}\"\"\"\n\
         PARAMETER stop \"{stop}\"\nPARAMETER temperature 0\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_order_inverts_llama_cpps_permutation() {
        // llama.cpp's permute: reshape(heads, 2, d/2, r).swapaxes(1, 2)
        let (heads, hd, r) = (3, 8, 2);
        let hf: Vec<f32> = (0..heads * hd * r).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..hd / 2 {
                for i in 0..2 {
                    let src = h * hd + i * (hd / 2) + j;
                    let dst = h * hd + 2 * j + i;
                    gguf[dst * r..(dst + 1) * r].copy_from_slice(&hf[src * r..(src + 1) * r]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(rows_to_hf(&gguf, r, heads, hd), hf);
    }
}
