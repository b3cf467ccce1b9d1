//! The GPU backend: the decoder (llama, gemma3) as a fixed program of WGSL dispatches (vigil-kernels).
//!
//! Everything is created at load — weights uploaded once, activation and KV buffers, bind groups,
//! pipelines. A step writes one 16-byte uniform (position, tokens) and the token ids, records the
//! whole forward pass into one command encoder (~16 dispatches a layer), and reads back one u32: the
//! token chosen on the GPU. Activations are f32 against weights dequantized on the fly, so the
//! reference this backend is tested against is the CPU decoder with dequantized (dense f32) weights.
//!
//! Prompts are prefilled in chunks of up to `TMAX` tokens with the tiled matmul; decode steps use
//! the matvec kernels. Residual adds are fused: the attention-output and down projections
//! accumulate into the residual stream — or, where the architecture norms them first (Gemma's post
//! norms), the norm adds its output into it. A LoRA branch is two dense dispatches after its projection,
//! rebuilt when the adapter changes — the base model is untouched.

use std::collections::HashMap;
use std::sync::Arc;

use vigil_kernels::params::*;
use vigil_kernels::wgpu;
use vigil_kernels::{Dispatch, Gpu, GpuError, Kernel, Kernels, MatKernels, QWeight};
use vigil_models::arch::{Activation, Arch, ArchConfig, RopeStyle};
use vigil_models::cpu::ops::Rotary;
use vigil_models::cpu::sampling::Sampler;
use vigil_models::gguf::Gguf;
use vigil_models::lora::LoraAdapter;
use vigil_models::{Error, Result};

use super::{Backend, StepFuture};

/// Most tokens one step processes (prompts are prefilled in chunks of this size).
pub const TMAX: usize = 128;
/// From this many tokens a step uses the tiled matmul instead of the matvec kernels.
const MATMUL_FROM: usize = 8;

fn gpu_err(e: GpuError) -> Error {
    Error::Device(format!("GPU: {e}"))
}

/// What one step reads back: the chosen token, and the logits when asked for.
struct StepOut {
    token: u32,
    logits: Option<Vec<f32>>,
}

/// How an op's workgroup counts follow the step's token count t and key count l.
#[derive(Clone, Copy, Debug)]
enum Grid {
    /// Quantized rows, by the op's kernel (see `MatKernels::grid`).
    Rows(u32),
    /// Only the last token's rows (the output head).
    LastRows(u32),
    /// Dense rows: [⌈n/8⌉, t, 1].
    Dense(u32),
    /// [x, t, 1]
    PerToken(u32),
    /// [t, 1, 1]
    Tokens,
    /// [⌈l/64⌉, t, heads]
    Keys(u32),
    /// [t, heads, 1]
    TokenHeads(u32),
    One,
}

/// One dispatch of the program.
struct Op {
    kernel: Kernel,
    /// For quantized rows: the kernel and pipeline for prefill-sized steps.
    large: Option<(Kernel, wgpu::ComputePipeline)>,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: Grid,
}

impl Op {
    fn workgroups(&self, t: u32, l: u32) -> ([u32; 3], bool) {
        // only plain row ops switch to the large kernel (the tiled matmul has no last-only mode)
        let large = matches!(self.grid, Grid::Rows(_)) && t as usize >= MATMUL_FROM && self.large.is_some();
        let wg = match self.grid {
            Grid::Rows(n) if large => MatKernels::grid(self.large.as_ref().map_or(self.kernel, |l| l.0), n, t),
            Grid::Rows(n) => MatKernels::grid(self.kernel, n, t),
            Grid::LastRows(n) => MatKernels::grid(self.kernel, n, 1),
            Grid::Dense(n) => [n.div_ceil(8), t, 1],
            Grid::PerToken(x) => [x, t, 1],
            Grid::Tokens => [t, 1, 1],
            Grid::Keys(h) => [l.div_ceil(64), t, h],
            Grid::TokenHeads(h) => [t, h, 1],
            Grid::One => [1, 1, 1],
        };
        (wg, large)
    }
}

/// The buffers one forward pass works in.
struct Scratch {
    step: wgpu::Buffer,
    ids: wgpu::Buffer,
    /// residual stream [TMAX, d]
    x: wgpu::Buffer,
    /// normed [TMAX, d]
    h: wgpu::Buffer,
    /// q | k | v [TMAX, qd + 2 kvd]
    qkv: wgpu::Buffer,
    /// attention output [TMAX, qd]
    att: wgpu::Buffer,
    /// gate | up [TMAX, 2 ff]
    gu: wgpu::Buffer,
    /// silu(gate)·up [TMAX, ff]
    m: wgpu::Buffer,
    /// A·x of a LoRA branch [TMAX, r]
    lora_tmp: wgpu::Buffer,
    logits: wgpu::Buffer,
    result: wgpu::Buffer,
    sample: wgpu::Buffer,
    result_read: wgpu::Buffer,
    logits_read: wgpu::Buffer,
}

/// Where a projection reads and writes: input buffer; output buffer, its row width, the offset of
/// this projection's rows in it; whether it adds to what is there.
#[derive(Clone, Copy)]
struct Site {
    input: &'static str,
    out: &'static str,
    out_width: usize,
    out_offset: usize,
    accumulate: bool,
}

/// Largest LoRA rank the GPU backend takes.
const MAX_RANK: usize = 64;

/// A projection the program computes, where a LoRA branch can attach.
struct LoraSite {
    /// index in the program of the projection's (last) matvec op
    at: usize,
    name: String,
    n_in: usize,
    n_out: usize,
    site: Site,
}

/// Builds the program at load: ops, the buffers they need kept alive, the weights.
struct Builder<'a> {
    gpu: &'a Gpu,
    g: &'a Gguf,
    kernels: Kernels,
    mats: MatKernels,
    s: &'a Scratch,
    program: Vec<Op>,
    keep: Vec<wgpu::Buffer>,
    weights: Vec<QWeight>,
    sites: Vec<LoraSite>,
    weight_bytes: u64,
}

impl Builder<'_> {
    fn uniform<T: bytemuck::Pod>(&mut self, value: &T) -> wgpu::Buffer {
        let b = self.gpu.uniform("params", value);
        self.keep.push(b.clone());
        b
    }

    fn storage(&mut self, label: &str, v: &[f32]) -> Result<wgpu::Buffer> {
        self.gpu.storage(label, bytemuck::cast_slice(v)).map_err(gpu_err)
    }

    /// A norm weight [n] as an f32 buffer.
    fn norm(&mut self, name: &str, n: usize) -> Result<wgpu::Buffer> {
        let v = self.g.tensor_f32(name)?;
        if v.len() != n {
            return Err(Error::Tensor {
                file: self.g.name().into(),
                tensor: name.into(),
                what: format!("{} values, expected {n}", v.len()),
            });
        }
        let b = self.storage(name, &v)?;
        self.keep.push(b.clone());
        Ok(b)
    }

    /// Uploads W [n, k] (GGUF dims [k, n]), checking its shape.
    fn upload(&mut self, name: &str, n: usize, k: usize) -> Result<QWeight> {
        let g = self.g;
        let info = g.require_tensor(name)?;
        if info.dims != [k as u64, n as u64] {
            return Err(Error::Tensor {
                file: g.name().into(),
                tensor: name.into(),
                what: format!("has dims {:?}, the architecture needs [{k}, {n}]", info.dims),
            });
        }
        QWeight::upload(self.gpu, name, info.ty, n, k, g.tensor_bytes(info)).map_err(|e| Error::Tensor {
            file: g.name().into(),
            tensor: name.into(),
            what: e.to_string(),
        })
    }

    /// Appends one op. `Kernel::MatVec` stands for the adapter's quantized-row kernels.
    fn op(&mut self, kernel: Kernel, qtype: u32, bufs: &[&wgpu::Buffer], grid: Grid) -> Result<()> {
        let (gpu, k) = (self.gpu, &self.kernels);
        let (kernel, large) = match kernel {
            Kernel::MatVec => {
                let large = k.pipeline(gpu, self.mats.large, qtype).map_err(gpu_err)?;
                (self.mats.small, Some((self.mats.large, large)))
            }
            other => (other, None),
        };
        let pipeline = k.pipeline(gpu, kernel, qtype).map_err(gpu_err)?;
        let bind_group = k.bind_group(gpu, kernel, bufs);
        self.program.push(Op { kernel, large, pipeline, bind_group, grid });
        Ok(())
    }

    /// One matvec op per part of the weight (parts exist when a tensor exceeds a binding).
    fn matvec(&mut self, w: &QWeight, k: usize, site: Site, last_only: bool) -> Result<()> {
        let s = self.s;
        for part in &w.parts {
            let p = self.uniform(&MatParams {
                n: part.rows as u32,
                k: k as u32,
                x_stride: k as u32,
                y_stride: site.out_width as u32,
                row_offset: (site.out_offset + part.row0) as u32,
                accumulate: site.accumulate as u32,
                last_only: last_only as u32,
                _pad: 0,
            });
            let grid = if last_only { Grid::LastRows(part.rows as u32) } else { Grid::Rows(part.rows as u32) };
            let bufs =
                [&p, &s.step, &part.qs, &part.scales, GpuBackend::buf(s, site.input), GpuBackend::buf(s, site.out)];
            self.op(Kernel::MatVec, w.qtype, &bufs, grid)?;
        }
        Ok(())
    }

    /// A projection y = W·x: the weight, its matvec ops, and a LoRA site after them.
    fn project(&mut self, name: &str, n_in: usize, n_out: usize, site: Site) -> Result<()> {
        let w = self.upload(name, n_out, n_in)?;
        self.matvec(&w, n_in, site, false)?;
        self.weight_bytes += w.bytes;
        self.weights.push(w);
        // a LoRA branch always adds onto what the projection wrote
        let at = self.program.len() - 1;
        self.sites.push(LoraSite { at, name: name.into(), n_in, n_out, site: Site { accumulate: true, ..site } });
        Ok(())
    }
}

pub struct GpuBackend {
    gpu: Arc<Gpu>,
    kernels: Kernels,
    cfg: ArchConfig,
    ctx: usize,
    s: Scratch,
    /// per layer: the ops of the layer, with LoRA slots marked by target name
    program: Vec<Op>,
    /// every projection, to insert LoRA ops after
    lora_sites: Vec<LoraSite>,
    lora_ops: HashMap<usize, Vec<Op>>,
    /// keeps LoRA buffers alive
    lora_buffers: Vec<wgpu::Buffer>,
    pos: usize,
    weight_bytes: u64,
    /// bytes per cached key or value element
    kv_elem: usize,
    _keep: Vec<wgpu::Buffer>,
    _weights: Vec<QWeight>,
}

/// Choices made when the program is built.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Keep the KV cache in f16 (half the cache bytes a step reads; attention math stays f32).
    pub kv_f16: bool,
}

impl GpuOptions {
    /// What suits `gpu`: an f16 cache where the adapter has SHADER_F16.
    pub fn for_gpu(gpu: &Gpu) -> Self {
        GpuOptions { kv_f16: gpu.f16 }
    }
}

impl GpuBackend {
    /// Uploads `g` to `gpu` and builds the program for a context of `context` positions, with the
    /// options that suit the adapter.
    pub fn load(gpu: Arc<Gpu>, g: &Gguf, context: usize) -> Result<Self> {
        let options = GpuOptions::for_gpu(&gpu);
        Self::load_with(gpu, g, context, options)
    }

    /// [`GpuBackend::load`] with explicit options.
    pub fn load_with(gpu: Arc<Gpu>, g: &Gguf, context: usize, options: GpuOptions) -> Result<Self> {
        if options.kv_f16 && !gpu.f16 {
            return Err(Error::Device(format!("{}: an f16 KV cache needs SHADER_F16", gpu.describe())));
        }
        let cfg = ArchConfig::from_gguf(g)?;
        // qwen2's q/k/v biases have no op here yet
        if !matches!(cfg.arch, Arch::Llama | Arch::Gemma3) {
            return Err(Error::UnsupportedArch {
                file: g.name().into(),
                arch: cfg.arch.name().into(),
                supported: "llama, gemma3 (on the GPU backend)".into(),
            });
        }
        let ctx = context.min(cfg.context_length).max(1);
        let (d, qd, kvd, ff, hd) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff, cfg.head_dim);
        let f32s = |label: &str, n: usize| gpu.zeros(label, (n * 4) as u64).map_err(gpu_err);
        // ggml type of the cache: 1 (F16) or 0 (F32); the KV kernels are built for it
        let kv_type = options.kv_f16 as u32;
        let kv_elem = if options.kv_f16 { 2 } else { 4 };
        let kv_layer_bytes = (cfg.n_head_kv * ctx * hd * kv_elem) as u64;
        let read_buf = |label: &str, size: usize| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let s = Scratch {
            step: gpu.uniform("step", &Step::default()),
            ids: f32s("ids", TMAX)?,
            x: f32s("x", TMAX * d)?,
            h: f32s("h", TMAX * d)?,
            qkv: f32s("qkv", TMAX * (qd + 2 * kvd))?,
            att: f32s("att", TMAX * qd)?,
            gu: f32s("gu", TMAX * 2 * ff)?,
            m: f32s("m", TMAX * ff)?,
            lora_tmp: f32s("lora_tmp", TMAX * MAX_RANK)?,
            logits: f32s("logits", cfg.vocab_size)?,
            result: f32s("result", 1)?,
            sample: gpu.uniform(
                "sample",
                &SampleParams { vocab: cfg.vocab_size as u32, top_k: 1, temperature: 0.0, top_p: 1.0 },
            ),
            result_read: read_buf("result_read", 4),
            logits_read: read_buf("logits_read", cfg.vocab_size * 4),
        };
        let mut b = Builder {
            gpu: &gpu,
            g,
            kernels: Kernels::new(),
            mats: MatKernels::for_gpu(&gpu),
            s: &s,
            program: Vec::new(),
            keep: Vec::new(),
            weights: Vec::new(),
            sites: Vec::new(),
            weight_bytes: 0,
        };
        let step = &s.step;
        // rotary tables: the global layers', and the sliding-window layers' where their base differs
        let mut tables = |base: f32| -> Result<(wgpu::Buffer, wgpu::Buffer)> {
            let rot = Rotary::new(base, cfg.rope_dim, 0, ctx);
            let (cos, sin) = (b.storage("rope.cos", &rot.cos)?, b.storage("rope.sin", &rot.sin)?);
            b.keep.extend([cos.clone(), sin.clone()]);
            Ok((cos, sin))
        };
        let global_rope = tables(cfg.rope_base)?;
        let local_rope = match cfg.rope_base_local {
            Some(base) if cfg.sliding_window.is_some() => tables(base)?,
            _ => global_rope.clone(),
        };
        let scores = f32s("scores", cfg.n_head * TMAX * ctx)?;
        let norm_params = b.uniform(&NormParams { n: d as u32, eps: cfg.rms_eps, ..Default::default() });
        let norm_add = b.uniform(&NormParams { n: d as u32, eps: cfg.rms_eps, accumulate: 1, _pad: 0 });
        let embd_scale = if cfg.scale_embeddings { (d as f32).sqrt() } else { 1.0 };

        let embd = b.upload("token_embd.weight", cfg.vocab_size, d)?;
        for part in &embd.parts {
            let ep = b.uniform(&EmbedParams {
                d: d as u32,
                vocab: cfg.vocab_size as u32,
                row0: part.row0 as u32,
                rows: part.rows as u32,
                scale: embd_scale,
                ..Default::default()
            });
            let bufs = [&ep, step, &part.qs, &part.scales, &s.ids, &s.x];
            b.op(Kernel::Embed, embd.qtype, &bufs, Grid::PerToken((d as u32).div_ceil(64)))?;
        }
        let qkv_w = qd + 2 * kvd;
        let site =
            |input, out, out_width, out_offset, accumulate| Site { input, out, out_width, out_offset, accumulate };
        for il in 0..cfg.n_layer {
            let name = |t: &str| format!("blk.{il}.{t}.weight");
            let attn_norm = b.norm(&name("attn_norm"), d)?;
            b.op(Kernel::RmsNorm, 0, &[&norm_params, step, &attn_norm, &s.x, &s.h], Grid::Tokens)?;
            b.project(&name("attn_q"), d, qd, site("h", "qkv", qkv_w, 0, false))?;
            b.project(&name("attn_k"), d, kvd, site("h", "qkv", qkv_w, qd, false))?;
            b.project(&name("attn_v"), d, kvd, site("h", "qkv", qkv_w, qd + kvd, false))?;
            if cfg.qk_norm {
                for (t, heads, offset) in [("attn_q_norm", cfg.n_head, 0), ("attn_k_norm", cfg.n_head_kv, qd)] {
                    let w = b.norm(&name(t), hd)?;
                    let p = b.uniform(&HeadNormParams {
                        n: hd as u32,
                        eps: cfg.rms_eps,
                        heads: heads as u32,
                        x_stride: qkv_w as u32,
                        x_offset: offset as u32,
                        ..Default::default()
                    });
                    b.op(Kernel::HeadNorm, 0, &[&p, step, &w, &s.qkv], Grid::TokenHeads(heads as u32))?;
                }
            }
            let sliding = cfg.is_sliding(il);
            let (cos, sin) = if sliding { &local_rope } else { &global_rope };
            let neox = (cfg.rope_style == RopeStyle::Neox) as u32;
            let half = cfg.rope_dim / 2;
            for (heads, offset) in [(cfg.n_head, 0), (cfg.n_head_kv, qd)] {
                let rp = b.uniform(&RopeParams {
                    heads: heads as u32,
                    hd: hd as u32,
                    half: half as u32,
                    neox,
                    x_stride: qkv_w as u32,
                    x_offset: offset as u32,
                    ..Default::default()
                });
                b.op(
                    Kernel::Rope,
                    0,
                    &[&rp, step, cos, sin, &s.qkv],
                    Grid::PerToken(((heads * half) as u32).div_ceil(64)),
                )?;
            }
            let kc = gpu.zeros("kc", kv_layer_bytes).map_err(gpu_err)?;
            let vc = gpu.zeros("vc", kv_layer_bytes).map_err(gpu_err)?;
            let kvp = b.uniform(&KvParams {
                kv_dim: kvd as u32,
                hd: hd as u32,
                ctx: ctx as u32,
                src_stride: qkv_w as u32,
                k_offset: qd as u32,
                v_offset: (qd + kvd) as u32,
                ..Default::default()
            });
            b.op(Kernel::KvWrite, kv_type, &[&kvp, step, &s.qkv, &kc, &vc], Grid::PerToken((kvd as u32).div_ceil(64)))?;
            let window = if sliding { cfg.sliding_window.unwrap_or(0) } else { 0 };
            let ap = b.uniform(&AttnParams {
                heads: cfg.n_head as u32,
                kv_heads: cfg.n_head_kv as u32,
                hd: hd as u32,
                ctx: ctx as u32,
                tmax: TMAX as u32,
                q_stride: qkv_w as u32,
                q_offset: 0,
                out_stride: qd as u32,
                scale: 1.0 / (hd as f32).sqrt(),
                window: window as u32,
                ..Default::default()
            });
            let attn = [&ap, step, &s.qkv, &kc, &vc, &scores, &s.att];
            b.op(Kernel::AttnScores, kv_type, &attn, Grid::Keys(cfg.n_head as u32))?;
            b.op(Kernel::AttnSoftmax, kv_type, &attn, Grid::TokenHeads(cfg.n_head as u32))?;
            b.op(Kernel::AttnValues, kv_type, &attn, Grid::PerToken(((cfg.n_head * hd) as u32).div_ceil(64)))?;
            b.keep.extend([kc, vc]);
            // residual add fused: the output projection accumulates into x, or writes h and its
            // post norm adds into x
            let residual = |b: &mut Builder, weight: &str, n_in: usize, input: &'static str, post: &str| {
                if cfg.post_norms {
                    b.project(&name(weight), n_in, d, site(input, "h", d, 0, false))?;
                    let w = b.norm(&name(post), d)?;
                    b.op(Kernel::RmsNorm, 0, &[&norm_add, step, &w, &s.h, &s.x], Grid::Tokens)
                } else {
                    b.project(&name(weight), n_in, d, site(input, "x", d, 0, true))
                }
            };
            residual(&mut b, "attn_output", qd, "att", "post_attention_norm")?;
            let ffn_norm = b.norm(&name("ffn_norm"), d)?;
            b.op(Kernel::RmsNorm, 0, &[&norm_params, step, &ffn_norm, &s.x, &s.h], Grid::Tokens)?;
            b.project(&name("ffn_gate"), d, ff, site("h", "gu", 2 * ff, 0, false))?;
            b.project(&name("ffn_up"), d, ff, site("h", "gu", 2 * ff, ff, false))?;
            let gp =
                b.uniform(&GluParams { n: ff as u32, stride: (2 * ff) as u32, gate_offset: 0, up_offset: ff as u32 });
            let glu = match cfg.activation {
                Activation::Silu => Kernel::SwiGlu,
                Activation::GeluTanh => Kernel::GeGlu,
            };
            b.op(glu, 0, &[&gp, step, &s.gu, &s.m], Grid::PerToken((ff as u32).div_ceil(64)))?;
            residual(&mut b, "ffn_down", ff, "m", "post_ffw_norm")?;
        }
        let out_norm = b.norm("output_norm.weight", d)?;
        b.op(Kernel::RmsNorm, 0, &[&norm_params, step, &out_norm, &s.x, &s.h], Grid::Tokens)?;
        // the output head (tied: the embedding table again), for the last token only
        let head = if cfg.tied_embeddings { embd } else { b.upload("output.weight", cfg.vocab_size, d)? };
        b.matvec(&head, d, site("h", "logits", cfg.vocab_size, 0, false), true)?;
        b.weight_bytes += head.bytes;
        b.weights.push(head);
        b.op(Kernel::Sample, 0, &[&s.sample, step, &s.logits, &s.result], Grid::One)?;
        b.keep.push(scores);
        let Builder { kernels, program, keep, weights, sites, weight_bytes, .. } = b;
        Ok(GpuBackend {
            gpu: gpu.clone(),
            kernels,
            cfg,
            ctx,
            s,
            program,
            lora_sites: sites,
            lora_ops: HashMap::new(),
            lora_buffers: Vec::new(),
            pos: 0,
            weight_bytes,
            kv_elem,
            _keep: keep,
            _weights: weights,
        })
    }

    fn buf<'a>(s: &'a Scratch, name: &str) -> &'a wgpu::Buffer {
        match name {
            "h" => &s.h,
            "x" => &s.x,
            "qkv" => &s.qkv,
            "att" => &s.att,
            "gu" => &s.gu,
            "m" => &s.m,
            "logits" => &s.logits,
            other => unreachable!("no buffer {other}"),
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Dispatches one decode step records (the layer program plus any LoRA ops).
    pub fn dispatches_per_step(&self) -> usize {
        self.program.len() + self.lora_ops.values().map(Vec::len).sum::<usize>()
    }

    /// Weight bytes one forward pass reads.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// KV-cache bytes a decode step at `positions` reads (keys and values of every layer).
    pub fn kv_bytes(&self, positions: usize) -> u64 {
        (2 * self.cfg.n_layer * self.cfg.kv_dim() * positions * self.kv_elem) as u64
    }

    /// Whether the KV cache is kept in f16.
    pub fn kv_f16(&self) -> bool {
        self.kv_elem == 2
    }

    /// Records and submits `tokens` (at most TMAX) at the current position; the sample op uses
    /// `sample`. The result is read by [`GpuBackend::read`] after the last chunk.
    fn run(&mut self, tokens: &[u32], sample: SampleParams, rand: f32, want_logits: bool) {
        let t = tokens.len();
        let l = self.pos + t;
        let gpu = &self.gpu;
        gpu.queue.write_buffer(
            &self.s.step,
            0,
            bytemuck::bytes_of(&Step { pos: self.pos as u32, t: t as u32, l: l as u32, rand }),
        );
        gpu.queue.write_buffer(&self.s.ids, 0, bytemuck::cast_slice(tokens));
        gpu.queue.write_buffer(&self.s.sample, 0, bytemuck::bytes_of(&sample));
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            for (i, op) in self.program.iter().enumerate() {
                let (wg, large) = op.workgroups(t as u32, l as u32);
                let pipeline = match (&op.large, large) {
                    (Some((_, p)), true) => p,
                    _ => &op.pipeline,
                };
                Dispatch { pipeline: pipeline.clone(), bind_group: op.bind_group.clone(), workgroups: wg }
                    .record(&mut pass);
                if let Some(extra) = self.lora_ops.get(&i) {
                    for lop in extra {
                        let (wg, _) = lop.workgroups(t as u32, l as u32);
                        Dispatch { pipeline: lop.pipeline.clone(), bind_group: lop.bind_group.clone(), workgroups: wg }
                            .record(&mut pass);
                    }
                }
            }
        }
        enc.copy_buffer_to_buffer(&self.s.result, 0, &self.s.result_read, 0, 4);
        if want_logits {
            enc.copy_buffer_to_buffer(&self.s.logits, 0, &self.s.logits_read, 0, (self.cfg.vocab_size * 4) as u64);
        }
        gpu.queue.submit([enc.finish()]);
        self.pos = l;
    }

    /// Reads back what the last submitted step left: the token id, and the logits if copied.
    async fn read(&self, want_logits: bool) -> Result<StepOut> {
        let gpu = &self.gpu;
        let id = gpu.map_read_async(&self.s.result_read, 4).await.map_err(gpu_err)?;
        let token = u32::from_le_bytes(id.try_into().map_err(|_| Error::Device("GPU: short read".into()))?);
        let logits = if want_logits {
            let b = gpu.map_read_async(&self.s.logits_read, (self.cfg.vocab_size * 4) as u64).await.map_err(gpu_err)?;
            Some(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        } else {
            None
        };
        Ok(StepOut { token, logits })
    }

    /// Feeds a prompt of any length in chunks; returns what the last chunk gives.
    async fn feed(&mut self, tokens: &[u32], sample: SampleParams, rand: f32, want_logits: bool) -> Result<StepOut> {
        if tokens.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        if self.pos + tokens.len() > self.ctx {
            return Err(Error::Input(format!(
                "{} tokens ({} held + {} new) exceed the GPU context of {}",
                self.pos + tokens.len(),
                self.pos,
                tokens.len(),
                self.ctx
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size)));
        }
        let chunks: Vec<&[u32]> = tokens.chunks(TMAX).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.run(c, sample, rand, want_logits && last);
        }
        let out = self.read(want_logits).await?;
        if let Some(f) = self.gpu.failure() {
            return Err(Error::Device(format!("GPU: {f}")));
        }
        Ok(out)
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }
    fn info(&self) -> super::BackendInfo {
        super::BackendInfo {
            device: self.gpu.describe(),
            dispatches_per_token: Some(self.dispatches_per_step()),
            kv_value_bytes: self.kv_elem,
        }
    }
    fn context(&self) -> usize {
        self.ctx
    }
    fn position(&self) -> usize {
        self.pos
    }
    fn truncate(&mut self, n: usize) {
        // the cache rows past n are simply overwritten by the next tokens
        self.pos = self.pos.min(n);
    }
    fn forward_async<'a>(&'a mut self, tokens: &'a [u32]) -> StepFuture<'a, Vec<f32>> {
        let greedy = SampleParams { vocab: self.cfg.vocab_size as u32, top_k: 1, temperature: 0.0, top_p: 1.0 };
        Box::pin(async move {
            self.feed(tokens, greedy, 0.0, true)
                .await?
                .logits
                .ok_or_else(|| Error::Input("GPU: no logits read back".into()))
        })
    }
    fn forward_sample_async<'a>(&'a mut self, tokens: &'a [u32], sampler: &'a mut Sampler) -> StepFuture<'a, u32> {
        let p = sampler.params();
        let greedy = p.temperature <= 0.0 || p.top_k == 1;
        let sample = SampleParams {
            vocab: self.cfg.vocab_size as u32,
            top_k: if greedy {
                1
            } else if p.top_k == 0 {
                64
            } else {
                p.top_k.min(64) as u32
            },
            temperature: if greedy { 0.0 } else { p.temperature },
            top_p: p.top_p,
        };
        let rand = if greedy { 0.0 } else { sampler.uniform() };
        Box::pin(async move { Ok(self.feed(tokens, sample, rand, false).await?.token) })
    }
    fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        let mut ops: HashMap<usize, Vec<Op>> = HashMap::new();
        let mut buffers = Vec::new();
        if let Some(a) = adapter {
            let err = |what: String| Error::Adapter { file: a.name.clone(), what };
            if a.arch != self.cfg.arch.name() {
                return Err(err(format!(
                    "was trained for architecture `{}`, the base model is `{}`",
                    a.arch,
                    self.cfg.arch.name()
                )));
            }
            let sites: HashMap<&str, usize> =
                self.lora_sites.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
            for (name, p) in &a.pairs {
                let Some(&si) = sites.get(name.as_str()) else {
                    return Err(err(format!("tensor `{name}` is not a LoRA target of this base model")));
                };
                let LoraSite { at, n_in, n_out, site, .. } = &self.lora_sites[si];
                if (p.in_dim, p.out_dim) != (*n_in, *n_out) {
                    return Err(err(format!(
                        "tensor `{name}` adapts {} → {}, the base layer is {n_in} → {n_out}",
                        p.in_dim, p.out_dim
                    )));
                }
                if p.r > MAX_RANK {
                    return Err(err(format!(
                        "tensor `{name}` has rank {} (the GPU backend supports up to {MAX_RANK})",
                        p.r
                    )));
                }
                let g = &self.gpu;
                let ab = g.storage("lora.a", bytemuck::cast_slice(&p.a)).map_err(gpu_err)?;
                let bb = g.storage("lora.b", bytemuck::cast_slice(&p.b)).map_err(gpu_err)?;
                let pa = g.uniform(
                    "lora.pa",
                    &DenseParams {
                        n: p.r as u32,
                        k: *n_in as u32,
                        x_stride: *n_in as u32,
                        x_offset: 0,
                        y_stride: p.r as u32,
                        y_offset: 0,
                        scale: 1.0,
                        accumulate: 0,
                    },
                );
                let pb = g.uniform(
                    "lora.pb",
                    &DenseParams {
                        n: *n_out as u32,
                        k: p.r as u32,
                        x_stride: p.r as u32,
                        x_offset: 0,
                        y_stride: site.out_width as u32,
                        y_offset: site.out_offset as u32,
                        scale: a.scale(p.r) as f32,
                        accumulate: site.accumulate as u32,
                    },
                );
                let pipeline = self.kernels.pipeline(g, Kernel::Dense, 0).map_err(gpu_err)?;
                let s = &self.s;
                let first = Op {
                    kernel: Kernel::Dense,
                    large: None,
                    pipeline: pipeline.clone(),
                    bind_group: self.kernels.bind_group(
                        g,
                        Kernel::Dense,
                        &[&pa, &s.step, &ab, Self::buf(s, site.input), &s.lora_tmp],
                    ),
                    grid: Grid::Dense(p.r as u32),
                };
                let second = Op {
                    kernel: Kernel::Dense,
                    large: None,
                    pipeline,
                    bind_group: self.kernels.bind_group(
                        g,
                        Kernel::Dense,
                        &[&pb, &s.step, &bb, &s.lora_tmp, Self::buf(s, site.out)],
                    ),
                    grid: Grid::Dense(*n_out as u32),
                };
                ops.entry(*at).or_default().extend([first, second]);
                buffers.extend([ab, bb, pa, pb]);
            }
        }
        self.lora_ops = ops;
        self.lora_buffers = buffers;
        self.pos = 0;
        Ok(())
    }
}
