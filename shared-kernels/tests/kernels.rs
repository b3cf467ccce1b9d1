//! Every kernel against a CPU reference, on random data with odd shapes (sizes that are not
//! multiples of the workgroup or tile), on whatever adapter is present (lavapipe in CI). WGSL
//! sources are validated by naga without a GPU.

use rand::{Rng, SeedableRng};
use vigil_kernels::context::gpu_for_test;
use vigil_kernels::params::*;
use vigil_kernels::{Gpu, Kernel, Kernels, QWeight};
use vigil_models::gguf::{codec, GgmlType};

#[test]
fn every_kernel_source_validates_with_naga() {
    // every kernel, plus the f16-cache variant of the KV kernels
    let variants =
        Kernel::ALL.iter().map(|&k| (k, 0)).chain(Kernel::ALL.iter().filter(|k| k.uses_kv()).map(|&k| (k, 1)));
    for (k, qtype) in variants {
        let src = k.source_for(qtype);
        let module =
            naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{k:?}/{qtype}: {}", e.emit_to_string(&src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{k:?}/{qtype}: {e:?}"));
        assert!(module.entry_points.iter().any(|e| e.name == k.entry_point()), "{k:?}");
    }
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn randv(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (r.random::<f32>() - 0.5) * 2.0 * scale).collect()
}

struct Run<'a> {
    gpu: &'a Gpu,
    kernels: Kernels,
}

impl<'a> Run<'a> {
    fn new(gpu: &'a Gpu) -> Self {
        Run { gpu, kernels: Kernels::new() }
    }
    fn buf(&self, v: &[f32]) -> wgpu::Buffer {
        self.gpu.storage("t", bytemuck::cast_slice(v)).unwrap()
    }
    fn step(&self, s: Step) -> wgpu::Buffer {
        self.gpu.uniform("step", &s)
    }
    fn go(&self, ds: &[vigil_kernels::Dispatch]) {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in ds {
                d.record(&mut pass);
            }
        }
        self.gpu.queue.submit([enc.finish()]);
    }
    fn read(&self, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
        self.gpu.read_f32(b, n).unwrap()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: gpu {g} vs cpu {w}");
    }
}

/// W [n, k] in `ty`, the dequantized reference, and the uploaded weight.
fn weight(gpu: &Gpu, ty: GgmlType, n: usize, k: usize, seed: u64, limit: Option<u64>) -> (Vec<f32>, QWeight) {
    let bytes = match ty {
        GgmlType::Q4_K | GgmlType::Q6_K => kquant_bytes(ty, n * k, seed),
        _ => codec::quantize(ty, &randv(&mut rng(seed), n * k, 1.0)).unwrap(),
    };
    let mut deq = vec![0f32; n * k];
    codec::dequantize(ty, &bytes, &mut deq).unwrap();
    let w = match limit {
        Some(l) => QWeight::upload_with_limit(gpu, "w", ty, n, k, &bytes, l).unwrap(),
        None => QWeight::upload(gpu, "w", ty, n, k, &bytes).unwrap(),
    };
    (deq, w)
}

fn matmul_ref(w: &[f32], n: usize, k: usize, x: &[f32], t: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * n];
    for ti in 0..t {
        for r in 0..n {
            y[ti * n + r] = (0..k).map(|e| w[r * k + e] as f64 * x[ti * k + e] as f64).sum::<f64>() as f32;
        }
    }
    y
}

/// matvec and matmul, all weight types, odd shapes, accumulation, row offsets, split weights.
/// Random K-quant blocks (vigil quantizes to neither): random quants, scales and mins, with
/// finite f16 super-block scales.
fn kquant_bytes(ty: GgmlType, values: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let (size, scale_at): (usize, &[usize]) = if ty == GgmlType::Q4_K { (144, &[0, 2]) } else { (210, &[208]) };
    let mut out = Vec::new();
    for _ in 0..values / 256 {
        let mut b: Vec<u8> = (0..size).map(|_| r.random()).collect();
        for &at in scale_at {
            let d = half::f16::from_f32(r.random_range(0.001..0.02));
            b[at..at + 2].copy_from_slice(&d.to_le_bytes());
        }
        out.extend(b);
    }
    out
}

#[test]
fn quantized_matmuls_match_the_cpu() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    for (ty, kernel, n, k, t, limit) in [
        (GgmlType::Q4_1, Kernel::MatVec, 37, 96, 1, None),
        (GgmlType::Q4_1, Kernel::MatVec, 300, 576, 3, None),
        (GgmlType::Q4_0, Kernel::MatVec, 17, 64, 2, None),
        (GgmlType::Q8_0, Kernel::MatVec, 129, 64, 1, Some(40 * 68)),
        (GgmlType::F16, Kernel::MatVec, 9, 32, 1, None),
        (GgmlType::Q5_0, Kernel::MatVec, 45, 96, 2, Some(20 * 102)),
        (GgmlType::Q5_0, Kernel::MatMul, 40, 64, 36, None),
        (GgmlType::Q4_K, Kernel::MatVec, 19, 512, 2, Some(8 * 384)),
        (GgmlType::Q4_K, Kernel::MatMul, 40, 256, 33, None),
        (GgmlType::Q6_K, Kernel::MatVec, 21, 512, 3, Some(8 * 640)),
        (GgmlType::Q6_K, Kernel::MatMul, 35, 256, 40, None),
        (GgmlType::Q6_K, Kernel::MatVecRows, 21, 256, 2, None),
        (GgmlType::Q4_1, Kernel::MatMul, 37, 96, 33, None),
        (GgmlType::Q4_0, Kernel::MatMul, 70, 64, 5, None),
        (GgmlType::Q8_0, Kernel::MatMul, 100, 128, 70, Some(33 * 136)),
        (GgmlType::F32, Kernel::MatMul, 31, 32, 40, None),
    ] {
        let (deq, w) = weight(&gpu, ty, n, k, n as u64 + k as u64, limit);
        if limit.is_some() {
            assert!(w.parts.len() > 1, "{ty}: the limit should split the weight");
        }
        let stored = match ty {
            GgmlType::Q5_0 => Some(8),
            GgmlType::Q4_K => Some(12),
            GgmlType::Q6_K => Some(14),
            _ => None,
        };
        if let Some(id) = stored {
            assert_eq!(w.qtype, id, "{ty} runs on its own kernels, not dequantized to f32");
        }
        let x = randv(&mut rng(7), t * k, 1.0);
        let want = matmul_ref(&deq, n, k, &x, t);
        // y is wider than n: rows land at row_offset 3, and accumulate onto existing values
        let stride = n + 5;
        let base = randv(&mut rng(9), t * stride, 1.0);
        let (xb, yb) = (run.buf(&x), run.buf(&base));
        let step = run.step(Step { pos: 0, t: t as u32, l: t as u32, rand: 0.0 });
        let mut ds = Vec::new();
        for part in &w.parts {
            let p = MatParams {
                n: part.rows as u32,
                k: k as u32,
                x_stride: k as u32,
                y_stride: stride as u32,
                row_offset: 3 + part.row0 as u32,
                accumulate: 1,
                ..Default::default()
            };
            let pb = gpu.uniform("p", &p);
            let wg = vigil_kernels::MatKernels::grid(kernel, part.rows as u32, t as u32);
            ds.push(
                run.kernels
                    .dispatch(&gpu, kernel, w.qtype, &[&pb, &step, &part.qs, &part.scales, &xb, &yb], wg)
                    .unwrap(),
            );
        }
        run.go(&ds);
        let got = run.read(&yb, t * stride);
        let mut expect = base.clone();
        for ti in 0..t {
            for r in 0..n {
                expect[ti * stride + 3 + r] += want[ti * n + r];
            }
        }
        assert_close(&format!("{ty} {kernel:?} n{n} k{k} t{t}"), &got, &expect, 1e-4);
    }
}

#[test]
fn last_only_matvec_reads_the_last_token() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let (n, k, t) = (50, 64, 4);
    let (deq, w) = weight(&gpu, GgmlType::Q8_0, n, k, 3, None);
    let x = randv(&mut rng(4), t * k, 1.0);
    let want = matmul_ref(&deq, n, k, &x[(t - 1) * k..], 1);
    let (xb, yb) = (run.buf(&x), run.buf(&vec![0.0; n]));
    let step = run.step(Step { pos: 0, t: t as u32, l: t as u32, rand: 0.0 });
    let p = gpu.uniform(
        "p",
        &MatParams {
            n: n as u32,
            k: k as u32,
            x_stride: k as u32,
            y_stride: n as u32,
            last_only: 1,
            ..Default::default()
        },
    );
    let part = &w.parts[0];
    run.go(&[run
        .kernels
        .dispatch(
            &gpu,
            Kernel::MatVec,
            w.qtype,
            &[&p, &step, &part.qs, &part.scales, &xb, &yb],
            [(n as u32).div_ceil(8), 1, 1],
        )
        .unwrap()]);
    assert_close("last_only", &run.read(&yb, n), &want, 1e-4);
}

#[test]
fn embedding_rows_match_the_codec() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let (vocab, d) = (300, 96);
    // a table split across three buffers
    let (deq, w) = weight(&gpu, GgmlType::Q8_0, vocab, d, 5, Some(120 * 102));
    assert_eq!(w.parts.len(), 3);
    let ids = [0u32, 299, 17, 17, 5000, 120, 119];
    let idb = gpu.storage("ids", bytemuck::cast_slice(&ids)).unwrap();
    let out = run.buf(&vec![0.0; ids.len() * d]);
    let step = run.step(Step { pos: 0, t: ids.len() as u32, l: 0, rand: 0.0 });
    let mut ds = Vec::new();
    for part in &w.parts {
        let p = EmbedParams {
            d: d as u32,
            vocab: vocab as u32,
            row0: part.row0 as u32,
            rows: part.rows as u32,
            scale: 2.5,
            ..Default::default()
        };
        let p = gpu.uniform("p", &p);
        let bufs = [&p, &step, &part.qs, &part.scales, &idb, &out];
        ds.push(
            run.kernels
                .dispatch(&gpu, Kernel::Embed, w.qtype, &bufs, [(d as u32).div_ceil(64), ids.len() as u32, 1])
                .unwrap(),
        );
    }
    run.go(&ds);
    let want: Vec<f32> =
        ids.iter().flat_map(|&i| deq[(i.min(299) as usize) * d..][..d].iter().map(|v| v * 2.5)).collect();
    assert_close("embed (scaled; out-of-range ids clamp)", &run.read(&out, ids.len() * d), &want, 0.0);
}

#[test]
fn rmsnorm_matches_the_cpu() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    // the last case adds into what the output holds (a post-norm into the residual stream)
    for (n, t, accumulate) in [(576, 3, false), (37, 1, false), (1000, 2, false), (640, 3, true)] {
        let x = randv(&mut rng(n as u64), t * n, 3.0);
        let w = randv(&mut rng(1), n, 1.0);
        let y0 = if accumulate { randv(&mut rng(2), t * n, 1.0) } else { vec![0.0; t * n] };
        let mut want = y0.clone();
        for ti in 0..t {
            let r = &x[ti * n..(ti + 1) * n];
            let ms = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
            let s = 1.0 / (ms + 1e-5).sqrt();
            for i in 0..n {
                want[ti * n + i] += (r[i] as f64 * s * w[i] as f64) as f32;
            }
        }
        let (xb, wb, out) = (run.buf(&x), run.buf(&w), run.buf(&y0));
        let step = run.step(Step { pos: 0, t: t as u32, l: 0, rand: 0.0 });
        let p = gpu.uniform("p", &NormParams { n: n as u32, eps: 1e-5, accumulate: accumulate as u32, _pad: 0 });
        run.go(&[run
            .kernels
            .dispatch(&gpu, Kernel::RmsNorm, 0, &[&p, &step, &wb, &xb, &out], [t as u32, 1, 1])
            .unwrap()]);
        assert_close(&format!("rmsnorm n{n} accumulate {accumulate}"), &run.read(&out, t * n), &want, 1e-5);
    }
}

#[test]
fn head_norm_normalizes_each_head_in_place() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    // 3 tokens of a q|k row: 4 heads of 256 (Gemma 3's head dim) at offset 40 of a 1100-wide row
    let (n, heads, t, stride, offset) = (256, 4, 3, 1100, 40);
    let x = randv(&mut rng(21), t * stride, 3.0);
    let w = randv(&mut rng(22), n, 1.0);
    let mut want = x.clone();
    for ti in 0..t {
        for h in 0..heads {
            let base = ti * stride + offset + h * n;
            let ms = x[base..base + n].iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
            let s = 1.0 / (ms + 1e-6).sqrt();
            for i in 0..n {
                want[base + i] = (x[base + i] as f64 * s * w[i] as f64) as f32;
            }
        }
    }
    let (xb, wb) = (run.buf(&x), run.buf(&w));
    let step = run.step(Step { pos: 0, t: t as u32, l: 0, rand: 0.0 });
    let p = HeadNormParams {
        n: n as u32,
        eps: 1e-6,
        heads: heads as u32,
        x_stride: stride as u32,
        x_offset: offset as u32,
        ..Default::default()
    };
    let p = gpu.uniform("p", &p);
    run.go(&[run
        .kernels
        .dispatch(&gpu, Kernel::HeadNorm, 0, &[&p, &step, &wb, &xb], [t as u32, heads as u32, 1])
        .unwrap()]);
    // values outside the heads stay as they were
    assert_close("head norm", &run.read(&xb, t * stride), &want, 1e-5);
}

#[test]
fn geglu_equals_ggml_gelu_of_the_cpu_decoder() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let (n, t) = (333, 2);
    // gates across GELU's whole range, the ±10 cut-offs included
    let mut g = randv(&mut rng(31), t * 2 * n, 12.0);
    g[0] = 10.0;
    g[1] = -10.0;
    g[2] = 9.99;
    g[3] = 0.0;
    let out = run.buf(&vec![0.0; t * n]);
    let step = run.step(Step { pos: 0, t: t as u32, l: 0, rand: 0.0 });
    let p = gpu.uniform("p", &GluParams { n: n as u32, stride: 2 * n as u32, gate_offset: 0, up_offset: n as u32 });
    let gb = run.buf(&g);
    run.go(&[run
        .kernels
        .dispatch(&gpu, Kernel::GeGlu, 0, &[&p, &step, &gb, &out], [(n as u32).div_ceil(64), t as u32, 1])
        .unwrap()]);
    let got = run.read(&out, t * n);
    let gelu = vigil_models::cpu::fused::gelu_ggml;
    let mut exact = 0;
    for ti in 0..t {
        for i in 0..n {
            let (a, b) = (g[ti * 2 * n + i], g[ti * 2 * n + n + i]);
            let want = gelu(a) * b;
            let v = got[ti * n + i];
            // the f16 table: equal, or one f16 step apart where tanh rounds across a boundary
            assert!((v - want).abs() <= 1e-3 * (1.0 + want.abs()), "geglu({a}) · {b}: gpu {v} vs cpu {want}");
            exact += (v == want) as usize;
        }
    }
    assert!(exact * 10 >= t * n * 9, "only {exact} of {} values equal the CPU's exactly", t * n);
}

#[test]
fn rope_matches_the_cpu_in_both_styles() {
    use vigil_models::arch::RopeStyle;
    use vigil_models::cpu::ops::Rotary;
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let (heads, hd, t, pos, stride, offset) = (3usize, 64usize, 5usize, 11usize, 250usize, 20usize);
    let rot_all = Rotary::new(100_000.0, hd, 0, 64);
    let rot = Rotary::new(100_000.0, hd, pos, t);
    for (style, neox) in [(RopeStyle::Interleaved, 0u32), (RopeStyle::Neox, 1)] {
        let x = randv(&mut rng(2), t * stride, 1.0);
        // CPU: the heads as [1, heads, t, hd]
        let mut heads_x = vec![0f32; heads * t * hd];
        for h in 0..heads {
            for ti in 0..t {
                for d in 0..hd {
                    heads_x[(h * t + ti) * hd + d] = x[ti * stride + offset + h * hd + d];
                }
            }
        }
        let xt = candle_core::Tensor::from_vec(heads_x, (1, heads, t, hd), &candle_core::Device::Cpu).unwrap();
        let y: Vec<f32> = rot.apply(&xt, style).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut want = x.clone();
        for h in 0..heads {
            for ti in 0..t {
                for d in 0..hd {
                    want[ti * stride + offset + h * hd + d] = y[(h * t + ti) * hd + d];
                }
            }
        }
        let (cb, sb, xb) = (run.buf(&rot_all.cos), run.buf(&rot_all.sin), run.buf(&x));
        let step = run.step(Step { pos: pos as u32, t: t as u32, l: (pos + t) as u32, rand: 0.0 });
        let p = gpu.uniform(
            "p",
            &RopeParams {
                heads: heads as u32,
                hd: hd as u32,
                half: (hd / 2) as u32,
                neox,
                x_stride: stride as u32,
                x_offset: offset as u32,
                ..Default::default()
            },
        );
        run.go(&[run
            .kernels
            .dispatch(
                &gpu,
                Kernel::Rope,
                0,
                &[&p, &step, &cb, &sb, &xb],
                [((heads * hd / 2) as u32).div_ceil(64), t as u32, 1],
            )
            .unwrap()]);
        assert_close(&format!("rope {style:?}"), &run.read(&xb, t * stride), &want, 1e-6);
    }
}

/// KV write + the three attention passes against the CPU decoder's attention, with GQA, a cache
/// offset (several tokens at once, causal among themselves) and a sliding window.
#[test]
fn attention_with_cache_and_gqa_matches_the_cpu() {
    use candle_core::{Device, Tensor};
    use vigil_models::cpu::ops;
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let (heads, kvh, hd, ctx, tmax) = (6usize, 2usize, 16usize, 40usize, 8usize);
    // f32 cache, and the f16 cache variant where the adapter has SHADER_F16
    let kv_types: &[u32] = if gpu.f16 { &[0, 1] } else { &[0] };
    let f16_round = |x: f32| half::f16::from_f32(x).to_f32();
    for &kv in kv_types {
        for (pos, t, window) in [(0usize, 7usize, None), (9, 1, None), (12, 5, None), (20, 3, Some(6usize))] {
            let l = pos + t;
            let q_dim = heads * hd;
            let kv_dim = kvh * hd;
            let stride = q_dim + 2 * kv_dim;
            let mut r = rng((pos * 31 + t) as u64);
            // earlier positions already in the cache; this step's k, v in the qkv rows
            let k_prev = randv(&mut r, kvh * ctx * hd, 1.0);
            let v_prev = randv(&mut r, kvh * ctx * hd, 1.0);
            let qkv = randv(&mut r, t * stride, 1.0);
            let cache = |v: &[f32]| -> wgpu::Buffer {
                if kv == 1 {
                    let h: Vec<u16> = v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
                    gpu.storage("kv16", bytemuck::cast_slice(&h)).unwrap()
                } else {
                    run.buf(v)
                }
            };
            let (kcb, vcb, qkvb) = (cache(&k_prev), cache(&v_prev), run.buf(&qkv));
            let sc = run.buf(&vec![0.0; heads * tmax * ctx]);
            let out = run.buf(&vec![0.0; t * q_dim]);
            let step = run.step(Step { pos: pos as u32, t: t as u32, l: l as u32, rand: 0.0 });
            let kvp = gpu.uniform(
                "kv",
                &KvParams {
                    kv_dim: kv_dim as u32,
                    hd: hd as u32,
                    ctx: ctx as u32,
                    src_stride: stride as u32,
                    k_offset: q_dim as u32,
                    v_offset: (q_dim + kv_dim) as u32,
                    ..Default::default()
                },
            );
            let scale = 1.0 / (hd as f32).sqrt();
            let ap = gpu.uniform(
                "attn",
                &AttnParams {
                    heads: heads as u32,
                    kv_heads: kvh as u32,
                    hd: hd as u32,
                    ctx: ctx as u32,
                    tmax: tmax as u32,
                    q_stride: stride as u32,
                    q_offset: 0,
                    out_stride: q_dim as u32,
                    scale,
                    window: window.unwrap_or(0) as u32,
                    ..Default::default()
                },
            );
            let k = &run.kernels;
            let attn = [&ap, &step, &qkvb, &kcb, &vcb, &sc, &out];
            run.go(&[
                k.dispatch(
                    &gpu,
                    Kernel::KvWrite,
                    kv,
                    &[&kvp, &step, &qkvb, &kcb, &vcb],
                    [(kv_dim as u32).div_ceil(64), t as u32, 1],
                )
                .unwrap(),
                k.dispatch(&gpu, Kernel::AttnScores, kv, &attn, [(l as u32).div_ceil(64), t as u32, heads as u32])
                    .unwrap(),
                k.dispatch(&gpu, Kernel::AttnSoftmax, kv, &attn, [t as u32, heads as u32, 1]).unwrap(),
                k.dispatch(&gpu, Kernel::AttnValues, kv, &attn, [((heads * hd) as u32).div_ceil(64), t as u32, 1])
                    .unwrap(),
            ]);
            // CPU: caches with this step's rows written in, then ops::attention
            let mut kc = k_prev.clone();
            let mut vc = v_prev.clone();
            for ti in 0..t {
                for j in 0..kv_dim {
                    let (h, d) = (j / hd, j % hd);
                    kc[(h * ctx + pos + ti) * hd + d] = qkv[ti * stride + q_dim + j];
                    vc[(h * ctx + pos + ti) * hd + d] = qkv[ti * stride + q_dim + kv_dim + j];
                }
            }
            if kv == 1 {
                // the reference sees the cache as the f16 variant stores it
                kc.iter_mut().chain(vc.iter_mut()).for_each(|x| *x = f16_round(*x));
            }
            let dev = Device::Cpu;
            let kt = Tensor::from_vec(kc, (1, kvh, ctx, hd), &dev).unwrap().narrow(2, 0, l).unwrap();
            let vt = Tensor::from_vec(vc, (1, kvh, ctx, hd), &dev).unwrap().narrow(2, 0, l).unwrap();
            let mut qh = vec![0f32; heads * t * hd];
            for h in 0..heads {
                for ti in 0..t {
                    for d in 0..hd {
                        qh[(h * t + ti) * hd + d] = qkv[ti * stride + h * hd + d];
                    }
                }
            }
            let qt = Tensor::from_vec(qh, (1, heads, t, hd), &dev).unwrap();
            let mask = ops::causal_mask(t, pos, window, &dev).unwrap();
            let o: Vec<f32> = ops::attention(&qt, &kt, &vt, Some(&mask), scale as f64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut want = vec![0f32; t * q_dim];
            for h in 0..heads {
                for ti in 0..t {
                    for d in 0..hd {
                        want[ti * q_dim + h * hd + d] = o[(h * t + ti) * hd + d];
                    }
                }
            }
            assert_close(
                &format!("attention kv {kv} pos {pos} t {t} window {window:?}"),
                &run.read(&out, t * q_dim),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn swiglu_and_dense_match_the_cpu() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let (n, t) = (70, 3);
    let g = randv(&mut rng(3), t * 2 * n, 4.0);
    let out = run.buf(&vec![0.0; t * n]);
    let step = run.step(Step { pos: 0, t: t as u32, l: 0, rand: 0.0 });
    let p = gpu.uniform("p", &GluParams { n: n as u32, stride: 2 * n as u32, gate_offset: 0, up_offset: n as u32 });
    let gb = run.buf(&g);
    run.go(&[run
        .kernels
        .dispatch(&gpu, Kernel::SwiGlu, 0, &[&p, &step, &gb, &out], [(n as u32).div_ceil(64), t as u32, 1])
        .unwrap()]);
    let want: Vec<f32> = (0..t)
        .flat_map(|ti| (0..n).map(move |i| (ti, i)))
        .map(|(ti, i)| {
            let (a, b) = (g[ti * 2 * n + i], g[ti * 2 * n + n + i]);
            a / (1.0 + (-a).exp()) * b
        })
        .collect();
    assert_close("swiglu", &run.read(&out, t * n), &want, 1e-5);

    // dense: y[:, 2..2+n] += 0.5 · x[:, 1..1+k] · Wᵀ, k not a multiple of 32 (a LoRA rank)
    let (n, k, t) = (45, 13, 2);
    let w = randv(&mut rng(5), n * k, 1.0);
    let x = randv(&mut rng(6), t * (k + 3), 1.0);
    let y0 = randv(&mut rng(8), t * (n + 4), 1.0);
    let (wb, xb, yb) = (run.buf(&w), run.buf(&x), run.buf(&y0));
    let p = gpu.uniform(
        "p",
        &DenseParams {
            n: n as u32,
            k: k as u32,
            x_stride: (k + 3) as u32,
            x_offset: 1,
            y_stride: (n + 4) as u32,
            y_offset: 2,
            scale: 0.5,
            accumulate: 1,
        },
    );
    run.go(&[run
        .kernels
        .dispatch(&gpu, Kernel::Dense, 0, &[&p, &step, &wb, &xb, &yb], [(n as u32).div_ceil(8), t as u32, 1])
        .unwrap()]);
    let mut want = y0.clone();
    for ti in 0..t {
        for r in 0..n {
            let s: f32 = (0..k).map(|e| w[r * k + e] * x[ti * (k + 3) + 1 + e]).sum();
            want[ti * (n + 4) + 2 + r] += 0.5 * s;
        }
    }
    assert_close("dense", &run.read(&yb, t * (n + 4)), &want, 1e-5);
}

/// Argmax (first maximum on ties) and top-k/temperature/top-p sampling with a given random number,
/// against the same procedure on the CPU.
#[test]
fn sampling_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu_for_test() else { return };
    let run = Run::new(&gpu);
    let vocab = 49_152;
    let mut logits = randv(&mut rng(11), vocab, 5.0);
    logits[777] = 9.0;
    logits[40_000] = 9.0; // tie: the lower index wins
    logits[12] = f32::NAN;
    logits[13] = f32::INFINITY; // not finite: never chosen
    let lb = run.buf(&logits);
    let res = gpu.storage("res", &[0u8; 4]).unwrap();
    let pick = |top_k: u32, temperature: f32, top_p: f32, rand: f32| -> u32 {
        let step = run.step(Step { pos: 0, t: 1, l: 1, rand });
        let p = gpu.uniform("p", &SampleParams { vocab: vocab as u32, top_k, temperature, top_p });
        run.go(&[run.kernels.dispatch(&gpu, Kernel::Sample, 0, &[&p, &step, &lb, &res], [1, 1, 1]).unwrap()]);
        u32::from_le_bytes(gpu.read(&res, 4).unwrap().try_into().unwrap())
    };
    assert_eq!(pick(1, 0.0, 1.0, 0.5), 777);
    assert_eq!(pick(40, 0.0, 1.0, 0.9), 777, "temperature 0 is greedy");
    // CPU reference of the sampling procedure
    let mut order: Vec<usize> = (0..vocab).filter(|&i| logits[i].is_finite()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    for (top_k, temperature, top_p, rand) in
        [(5, 1.0, 1.0, 0.3), (5, 1.0, 1.0, 0.99), (40, 0.7, 0.95, 0.61), (64, 2.0, 0.5, 0.123)]
    {
        let cand = &order[..top_k as usize];
        let probs: Vec<f32> = cand.iter().map(|&i| ((logits[i] - logits[cand[0]]) / temperature).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut kept = probs.len();
        let mut acc = 0.0;
        for (c, p) in probs.iter().enumerate() {
            acc += p / total;
            if acc >= top_p {
                kept = c + 1;
                break;
            }
        }
        let kept_total: f32 = probs[..kept].iter().map(|p| p / total).sum();
        let mut r = rand * kept_total;
        let mut want = cand[kept - 1];
        for c in 0..kept {
            r -= probs[c] / total;
            if r <= 0.0 {
                want = cand[c];
                break;
            }
        }
        assert_eq!(
            pick(top_k, temperature, top_p, rand) as usize,
            want,
            "k {top_k} T {temperature} p {top_p} r {rand}"
        );
    }
}
