//! The CPU decoder on a tiny random llama model (written by vigil's own GGUF writer):
//! KV-cache equivalence, LoRA equals merged weights, and gradients through every LoRA tensor —
//! non-zero and equal to finite differences (candle's fused ops record no gradient; ours must).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use vigil_models::cpu::linear::LoraBranch;
use vigil_models::cpu::{Llama, Logits, WeightMode};
use vigil_models::gguf::{GgmlType, Gguf, GgufWriter};
use vigil_models::lora::LoraAdapter;
use vigil_models::testing::{self, tiny_llama};

fn model(ty: GgmlType, mode: WeightMode) -> (Gguf, Llama) {
    let g = Gguf::from_bytes("tiny.gguf", tiny_llama(ty, 7)).unwrap();
    let m = Llama::load(&g, mode, &Device::Cpu).unwrap();
    (g, m)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

const TOKENS: [u32; 9] = [72, 101, 108, 108, 111, 32, 119, 111, 114];

#[test]
fn cached_decoding_equals_a_full_pass() {
    for (ty, mode, tol) in [
        (GgmlType::F32, WeightMode::Dense(DType::F32), 1e-4),
        (GgmlType::Q8_0, WeightMode::Quantized, 1e-3),
        (GgmlType::Q4_1, WeightMode::Quantized, 1e-3),
    ] {
        let (_, m) = model(ty, mode);
        let full = m.forward(&TOKENS, None, Logits::All).unwrap();
        let mut cache = m.new_cache(64);
        let first = m.forward(&TOKENS[..4], Some(&mut cache), Logits::All).unwrap();
        assert!(max_diff(&first, &full.narrow(0, 0, 4).unwrap()) < tol, "{ty}: prefill");
        for (i, &t) in TOKENS.iter().enumerate().skip(4) {
            let step = m.forward(&[t], Some(&mut cache), Logits::Last).unwrap();
            let want = full.get(i).unwrap();
            let d = max_diff(&step, &want);
            assert!(d < tol, "{ty}: position {i} differs by {d}");
        }
        assert_eq!(cache.len(), TOKENS.len());
    }
}

fn targets(m: &Llama) -> Vec<(String, usize, usize)> {
    m.lora_targets()
}

/// A model whose weights are W + (α/r)·B·A gives the same logits as W with the LoRA branch.
#[test]
fn lora_branch_equals_merged_weights() {
    let (g, mut m) = model(GgmlType::F32, WeightMode::Dense(DType::F32));
    let adapter = LoraAdapter::random("llama", &targets(&m), 4, 8.0, 0.2, 11);
    m.set_adapter(Some(&adapter)).unwrap();
    let with_lora = m.forward(&TOKENS, None, Logits::All).unwrap();

    // merge into a copy of the file
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k.clone(), v.clone());
    }
    for t in g.tensors() {
        let mut vals = g.tensor_f32(&t.name).unwrap();
        if let Some(p) = adapter.pairs.get(&t.name) {
            let s = adapter.scale(p.r) as f32;
            for o in 0..p.out_dim {
                for i in 0..p.in_dim {
                    let ba: f32 = (0..p.r).map(|k| p.b[o * p.r + k] * p.a[k * p.in_dim + i]).sum();
                    vals[o * p.in_dim + i] += s * ba;
                }
            }
        }
        w.add_f32(t.name.clone(), &t.dims, t.ty, &vals).unwrap();
    }
    let merged_file = Gguf::from_bytes("merged.gguf", w.to_bytes()).unwrap();
    let merged = Llama::load(&merged_file, WeightMode::Dense(DType::F32), &Device::Cpu).unwrap();
    let d = max_diff(&merged.forward(&TOKENS, None, Logits::All).unwrap(), &with_lora);
    assert!(d < 1e-4, "merged differs by {d}");
    m.set_adapter(None).unwrap();
    assert!(max_diff(&m.forward(&TOKENS, None, Logits::All).unwrap(), &with_lora) > 1e-2, "the adapter had no effect");
}

/// (layer name, A, B) of each trainable branch.
type LoraVars = Vec<(String, Var, Var)>;

/// Trainable LoRA variables on all seven projections of both layers.
fn lora_vars(m: &Llama, dt: DType, seed: u64) -> (HashMap<String, LoraBranch>, LoraVars) {
    let adapter = LoraAdapter::random("llama", &targets(m), 2, 4.0, 0.3, seed);
    let mut branches = HashMap::new();
    let mut vars = Vec::new();
    for (name, p) in &adapter.pairs {
        let a = Var::from_tensor(
            &Tensor::from_vec(p.a.clone(), (p.r, p.in_dim), &Device::Cpu).unwrap().to_dtype(dt).unwrap(),
        )
        .unwrap();
        let b = Var::from_tensor(
            &Tensor::from_vec(p.b.clone(), (p.out_dim, p.r), &Device::Cpu).unwrap().to_dtype(dt).unwrap(),
        )
        .unwrap();
        branches.insert(
            name.clone(),
            LoraBranch { a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale: adapter.scale(p.r), dropout: None },
        );
        vars.push((name.clone(), a, b));
    }
    (branches, vars)
}

fn loss(m: &Llama, probe: &Tensor) -> Tensor {
    let logits = m.forward(&TOKENS, None, Logits::All).unwrap();
    (logits * probe).unwrap().sum_all().unwrap()
}

/// Checks every LoRA tensor's gradient in `grads` (from `loss`) is non-zero and equals central
/// finite differences of `loss` at three elements; returns how many elements were checked.
fn check_finite_differences(
    vars: &LoraVars,
    grads: &candle_core::backprop::GradStore,
    loss: impl Fn() -> f64,
) -> usize {
    let eps = 1e-5;
    let mut checked = 0;
    for (name, a, b) in vars {
        for (which, v) in [("A", a), ("B", b)] {
            let g = grads.get(v).unwrap_or_else(|| panic!("{name} {which}: no gradient recorded"));
            let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(gv.iter().any(|x| x.abs() > 1e-10), "{name} {which}: gradient is zero");
            let base: Vec<f64> = v.flatten_all().unwrap().to_vec1().unwrap();
            let set = |w: Vec<f64>| v.set(&Tensor::from_vec(w, v.shape(), &Device::Cpu).unwrap()).unwrap();
            for &idx in &[1, base.len() / 2, base.len() - 1] {
                let at = |delta: f64| {
                    let mut w = base.clone();
                    w[idx] += delta;
                    set(w);
                    loss()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                set(base.clone());
                let an = gv[idx];
                assert!(
                    (fd - an).abs() <= 1e-5 * (1.0 + an.abs().max(fd.abs())),
                    "{name} {which}[{idx}]: analytic {an} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn every_lora_tensor_gets_a_gradient_equal_to_finite_differences() {
    // f64 dense weights: finite differences are then accurate to ~1e-8.
    let (_, mut m) = model(GgmlType::F32, WeightMode::Dense(DType::F64));
    let (branches, vars) = lora_vars(&m, DType::F64, 5);
    m.set_lora_branches(branches).unwrap();
    let probe = testing::randn(&[TOKENS.len(), m.config().vocab_size], 1.0, 3).to_dtype(DType::F64).unwrap();
    let grads = loss(&m, &probe).backward().unwrap();
    assert_eq!(vars.len(), 14, "7 projections × 2 layers");
    let checked = check_finite_differences(&vars, &grads, || loss(&m, &probe).to_scalar::<f64>().unwrap());
    assert_eq!(checked, 14 * 2 * 3);
}

/// The training loss itself — cross-entropy on the masked target tokens (vigil's op, only the
/// target rows through the vocabulary projection), with LoRA dropout on — has the gradient finite
/// differences give, in every LoRA tensor. A fixed dropout seed makes the masks constant, so the
/// loss is a smooth function of the weights.
#[test]
fn the_training_loss_gradient_matches_finite_differences() {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use vigil_models::cpu::linear::Dropout;
    let (_, mut m) = model(GgmlType::F32, WeightMode::Dense(DType::F64));
    let (mut branches, vars) = lora_vars(&m, DType::F64, 11);
    let seed = Arc::new(AtomicU64::new(1234));
    for b in branches.values_mut() {
        b.dropout = Some(Dropout { p: 0.3, seed: seed.clone() });
    }
    m.set_lora_branches(branches).unwrap();
    let mask = [false, false, false, true, true, false, true, true, true];
    let loss = |m: &Llama| m.target_losses(&TOKENS, &mask).unwrap().sum_all().unwrap();
    let l0 = loss(&m);
    assert_eq!(m.target_losses(&TOKENS, &mask).unwrap().dims(), [5], "one term per target token");
    let grads = l0.backward().unwrap();
    let checked = check_finite_differences(&vars, &grads, || loss(&m).to_scalar::<f64>().unwrap());
    assert_eq!(checked, 14 * 2 * 3);
    // the masks really drop inputs: another seed gives another loss
    seed.store(99, std::sync::atomic::Ordering::Relaxed);
    let l1 = loss(&m).to_scalar::<f64>().unwrap();
    assert!((l1 - l0.to_scalar::<f64>().unwrap()).abs() > 1e-9);
    seed.store(Dropout::OFF, std::sync::atomic::Ordering::Relaxed);
}

/// With quantized base weights the gradient flows through vigil's custom ops (quantized matmul,
/// RMSNorm); it reaches every LoRA tensor and points the same way as the dense f32 gradient.
#[test]
fn gradients_flow_through_the_quantized_custom_ops() {
    let probe_shape = [TOKENS.len(), 259];
    let probe = testing::randn(&probe_shape, 1.0, 5);
    let grads_of = |ty: GgmlType, mode: WeightMode| -> HashMap<String, Vec<f32>> {
        let (_, mut m) = model(ty, mode);
        let (branches, vars) = lora_vars(&m, DType::F32, 9);
        m.set_lora_branches(branches).unwrap();
        let g = loss(&m, &probe).backward().unwrap();
        vars.iter()
            .flat_map(|(n, a, b)| {
                [(format!("{n}.A"), a), (format!("{n}.B"), b)].map(|(k, v)| {
                    (
                        k.clone(),
                        g.get(v)
                            .unwrap_or_else(|| panic!("{k}: no gradient"))
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap(),
                    )
                })
            })
            .collect()
    };
    // Q8_0 weights dequantize to the dense tensor the reference uses: only the 8-bit activations
    // differ. They move the small q/k gradients of this 2-layer model most: over 400 probes each
    // tensor's cosine stayed ≥ 0.81 and the whole gradient's ≥ 0.957 (the probe is fixed here).
    // Q8_0 runs through vigil's ggml kernels, Q5_0 through candle's (whose op records no gradient,
    // so training multiplies by the dequantized weight instead).
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
        let q = grads_of(ty, WeightMode::Quantized);
        let d = grads_of(ty, WeightMode::Dense(DType::F32));
        let cosine = |pairs: &mut dyn Iterator<Item = (f32, f32)>| {
            let (mut dot, mut nq, mut nd) = (0f64, 0f64, 0f64);
            for (a, b) in pairs {
                dot += a as f64 * b as f64;
                nq += (a as f64).powi(2);
                nd += (b as f64).powi(2);
            }
            assert!(nq > 0.0 && nd > 0.0, "zero gradient");
            dot / (nq.sqrt() * nd.sqrt())
        };
        for (k, gq) in &q {
            assert!(gq.iter().any(|g| *g != 0.0), "{ty} {k}: zero gradient with quantized weights");
            let c = cosine(&mut gq.iter().copied().zip(d[k].iter().copied()));
            assert!(c > 0.7, "{ty} {k}: quantized and dense gradients disagree (cosine {c})");
        }
        let all = cosine(&mut q.iter().flat_map(|(k, gq)| gq.iter().copied().zip(d[k].iter().copied())));
        assert!(all > 0.95, "{ty}: the quantized and dense gradients disagree (cosine {all})");
    }
}

/// With bf16 base weights (AMX tiles where the CPU has them) the gradient reaches every LoRA tensor
/// and follows the dense f32 one: only bf16 rounding of the frozen weights and of the products'
/// inputs separates them (relative steps of 2⁻⁹, so the logits agree to about a percent).
#[test]
fn gradients_flow_through_the_bf16_products() {
    let probe = testing::randn(&[TOKENS.len(), 259], 1.0, 5);
    let run = |mode: WeightMode| -> (Tensor, HashMap<String, Vec<f32>>) {
        let (_, mut m) = model(GgmlType::F32, mode);
        let (branches, vars) = lora_vars(&m, DType::F32, 9);
        m.set_lora_branches(branches).unwrap();
        let g = loss(&m, &probe).backward().unwrap();
        let grads = vars
            .iter()
            .flat_map(|(n, a, b)| [(format!("{n}.A"), a), (format!("{n}.B"), b)])
            .map(|(k, v)| {
                let gv = g.get(v).unwrap_or_else(|| panic!("{k}: no gradient"));
                (k, gv.flatten_all().unwrap().to_vec1().unwrap())
            })
            .collect();
        (m.forward(&TOKENS, None, Logits::All).unwrap(), grads)
    };
    let ((lb, b), (ld, d)) = (run(WeightMode::Bf16), run(WeightMode::Dense(DType::F32)));
    let scale = ld.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let diff = max_diff(&lb, &ld);
    eprintln!("bf16 kernel: {:?}; logits differ by {diff} of {scale}", vigil_models::cpu::bf16::kernel());
    assert!(diff < 0.03 * scale as f64, "bf16 logits differ by {diff} (largest logit {scale})");
    let cosine = |x: &[f32], y: &[f32]| {
        let dot: f64 = x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum();
        let n = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(x) * n(y))
    };
    let mut worst = 1f64;
    for (k, gb) in &b {
        assert!(gb.iter().any(|g| *g != 0.0), "{k}: zero gradient with bf16 weights");
        worst = worst.min(cosine(gb, &d[k]));
    }
    eprintln!("worst gradient cosine {worst}");
    assert!(worst > 0.98, "bf16 and dense gradients disagree (worst cosine {worst})");
}

/// A file whose tensors sit at odd offsets (`general.alignment` = 1) decodes exactly like the
/// aligned file, through candle's quantized kernels too (F16 weights), without undefined behaviour.
#[test]
fn unaligned_tensors_decode_like_aligned_ones() {
    use vigil_models::gguf::Value;
    let aligned = Gguf::from_bytes("tiny-f16.gguf", tiny_llama(GgmlType::F16, 3)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in aligned.metadata() {
        w.set(k.clone(), v.clone());
    }
    w.set("general.alignment", Value::U32(1));
    w.add_tensor("pad.odd", &[3], GgmlType::I8, vec![1, 2, 3]).unwrap();
    for t in aligned.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty, aligned.tensor_bytes(t).to_vec()).unwrap();
    }
    let odd = Gguf::from_bytes("tiny-odd.gguf", w.to_bytes()).unwrap();
    let info = odd.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((odd.data_offset() + info.offset) % 2, 1, "the test needs a misaligned tensor");
    for mode in [WeightMode::Quantized, WeightMode::Dense(DType::F32)] {
        let a = Llama::load(&aligned, mode, &Device::Cpu).unwrap().forward(&TOKENS, None, Logits::All).unwrap();
        let b = Llama::load(&odd, mode, &Device::Cpu).unwrap().forward(&TOKENS, None, Logits::All).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0, "{mode:?}");
    }
}

/// Sequences that share a prefix, packed into one pass (the prefix once, each rest seeing the
/// prefix and itself), give the separate runs' loss terms and gradients — and the packed loss's
/// gradient matches finite differences in every LoRA tensor.
#[test]
fn packed_sequences_give_the_separate_losses_and_gradients() {
    let (_, mut m) = model(GgmlType::F32, WeightMode::Dense(DType::F64));
    let (branches, vars) = lora_vars(&m, DType::F64, 17);
    m.set_lora_branches(branches).unwrap();
    let a: Vec<u32> = TOKENS.to_vec();
    let b: Vec<u32> = [&TOKENS[..4], &[200, 201, 33, 34, 35, 36]].concat();
    let c: Vec<u32> = [&TOKENS[..4], &[90, 91]].concat();
    let ma = [false, false, false, false, false, true, true, false, true];
    let mb = [false, false, false, false, false, false, true, true, true, true];
    let mc = [false, false, false, false, false, true];
    let seqs: Vec<(&[u32], &[bool])> = vec![(&a, &ma), (&b, &mb), (&c, &mc)];

    let separate = |m: &Llama| {
        Tensor::cat(&seqs.iter().map(|(ids, mask)| m.target_losses(ids, mask).unwrap()).collect::<Vec<_>>(), 0).unwrap()
    };
    let packed = m.packed_target_losses(&seqs, 4).unwrap();
    let want = separate(&m);
    assert_eq!(packed.dims(), want.dims());
    assert!(max_diff(&packed, &want) < 1e-10, "losses differ by {}", max_diff(&packed, &want));

    let gp = packed.sum_all().unwrap().backward().unwrap();
    let gs = want.sum_all().unwrap().backward().unwrap();
    for (name, va, vb) in &vars {
        for (which, v) in [("A", va), ("B", vb)] {
            let (x, y) = (gp.get(v).unwrap(), gs.get(v).unwrap());
            assert!(max_diff(x, y) < 1e-10, "{name}.{which}: gradients differ by {}", max_diff(x, y));
        }
    }
    let checked = check_finite_differences(&vars, &gp, || {
        m.packed_target_losses(&seqs, 4).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    });
    assert_eq!(checked, 14 * 2 * 3);

    // what cannot be packed is an error, not a silent miscount
    let d: Vec<u32> = [&[1u32, 2, 3, 4][..], &TOKENS[4..]].concat();
    let bad: Vec<(&[u32], &[bool])> = vec![(&a, &ma), (&d, &ma)];
    assert!(m.packed_target_losses(&bad, 4).unwrap_err().to_string().contains("shared 4-token prefix"));
    let early = [false, false, false, false, true, false, false, false, false];
    let bad: Vec<(&[u32], &[bool])> = vec![(&a, &early)];
    assert!(m.packed_target_losses(&bad, 4).unwrap_err().to_string().contains("inside the shared prefix"));
}
