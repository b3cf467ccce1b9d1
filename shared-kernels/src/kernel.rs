//! The kernels: their WGSL sources (one file per family plus shared snippets), binding layouts and
//! a pipeline cache keyed by (kernel, weight type). Kernels with the same binding signature share
//! one explicit bind-group layout, so the decode (matvec) and prefill (matmul) pipelines run on the
//! same bind groups.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::context::{Gpu, GpuError, Result};

/// One compute kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// y = x · Wᵀ, quantized W, decode-sized token counts.
    MatVec,
    /// The same, tiled for prefill.
    MatMul,
    /// The same, one invocation per output: for adapters that run on a CPU.
    MatVecRows,
    /// MatVec reducing with subgroup operations (SUBGROUP feature, subgroup size dividing 32).
    MatVecSubgroup,
    /// Token embeddings from the quantized table.
    Embed,
    RmsNorm,
    /// RMSNorm of each head in place (q/k norms).
    HeadNorm,
    Rope,
    /// Appends keys and values to the cache.
    KvWrite,
    AttnScores,
    AttnSoftmax,
    AttnValues,
    SwiGlu,
    GeGlu,
    /// y = s · x · Wᵀ with f32 W (LoRA halves).
    Dense,
    /// Argmax / top-k sampling.
    Sample,
}

/// What a binding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    Uniform,
    Read,
    ReadWrite,
}

use Binding::{Read as R, ReadWrite as W, Uniform as U};

const STEP: &str = include_str!("wgsl/step.wgsl");
const QUANT: &str = include_str!("wgsl/quant.wgsl");
const QUANT_DOT: &str = include_str!("wgsl/quant_dot.wgsl");

impl Kernel {
    pub const ALL: [Kernel; 16] = [
        Kernel::MatVec,
        Kernel::MatMul,
        Kernel::MatVecRows,
        Kernel::MatVecSubgroup,
        Kernel::Embed,
        Kernel::RmsNorm,
        Kernel::HeadNorm,
        Kernel::Rope,
        Kernel::KvWrite,
        Kernel::AttnScores,
        Kernel::AttnSoftmax,
        Kernel::AttnValues,
        Kernel::SwiGlu,
        Kernel::GeGlu,
        Kernel::Dense,
        Kernel::Sample,
    ];

    /// Whether the kernel reads or writes the KV cache (and comes in an f16-cache variant).
    pub fn uses_kv(self) -> bool {
        matches!(self, Kernel::KvWrite | Kernel::AttnScores | Kernel::AttnSoftmax | Kernel::AttnValues)
    }

    /// The WGSL source of a variant: for quantized kernels `qtype` is the weight type; for KV
    /// kernels 1 (ggml's F16) selects the f16 cache.
    pub fn source_for(self, qtype: u32) -> String {
        let s = self.source();
        if self.uses_kv() && qtype == 1 {
            return format!("enable f16;\n{}", s.replace("alias kv_t = f32;", "alias kv_t = f16;"));
        }
        s
    }

    /// The full WGSL source (f32 variant): shared snippets, then the family's file.
    pub fn source(self) -> String {
        let (snippets, body): (&[&str], &str) = match self {
            Kernel::MatVec => (&[STEP, QUANT, QUANT_DOT], include_str!("wgsl/matvec.wgsl")),
            Kernel::MatMul => (&[STEP, QUANT, QUANT_DOT], include_str!("wgsl/matmul.wgsl")),
            Kernel::MatVecRows => (&[STEP, QUANT, QUANT_DOT], include_str!("wgsl/matvec_rows.wgsl")),
            Kernel::MatVecSubgroup => (&[STEP, QUANT, QUANT_DOT], include_str!("wgsl/matvec_sg.wgsl")),
            Kernel::Embed => (&[STEP, QUANT], include_str!("wgsl/embed.wgsl")),
            Kernel::RmsNorm => (&[STEP], include_str!("wgsl/rmsnorm.wgsl")),
            Kernel::HeadNorm => (&[STEP], include_str!("wgsl/head_norm.wgsl")),
            Kernel::Rope => (&[STEP], include_str!("wgsl/rope.wgsl")),
            Kernel::KvWrite => (&[STEP], include_str!("wgsl/kv_write.wgsl")),
            Kernel::AttnScores | Kernel::AttnSoftmax | Kernel::AttnValues => {
                (&[STEP], include_str!("wgsl/attention.wgsl"))
            }
            Kernel::SwiGlu | Kernel::GeGlu => (&[STEP], include_str!("wgsl/glu.wgsl")),
            Kernel::Dense => (&[STEP], include_str!("wgsl/dense.wgsl")),
            Kernel::Sample => (&[STEP], include_str!("wgsl/sample.wgsl")),
        };
        let mut s = String::new();
        for snippet in snippets {
            s.push_str(snippet);
            s.push('\n');
        }
        s.push_str(body);
        s
    }

    pub fn entry_point(self) -> &'static str {
        match self {
            Kernel::AttnScores => "scores",
            Kernel::AttnSoftmax => "softmax",
            Kernel::AttnValues => "values",
            Kernel::SwiGlu => "swiglu",
            Kernel::GeGlu => "geglu",
            _ => "main",
        }
    }

    /// Whether the kernel reads quantized weights (and takes the QTYPE override).
    pub fn quantized(self) -> bool {
        matches!(self, Kernel::MatVec | Kernel::MatMul | Kernel::MatVecRows | Kernel::MatVecSubgroup | Kernel::Embed)
    }

    /// Binding kinds in binding order (group 0).
    pub fn signature(self) -> &'static [Binding] {
        match self {
            Kernel::MatVec | Kernel::MatMul | Kernel::MatVecRows | Kernel::MatVecSubgroup | Kernel::Embed => {
                &[U, U, R, R, R, W]
            }
            Kernel::RmsNorm | Kernel::Rope | Kernel::Dense => &[U, U, R, R, W],
            Kernel::KvWrite => &[U, U, R, W, W],
            Kernel::AttnScores | Kernel::AttnSoftmax | Kernel::AttnValues => &[U, U, R, R, R, W, W],
            Kernel::SwiGlu | Kernel::GeGlu | Kernel::Sample | Kernel::HeadNorm => &[U, U, R, W],
        }
    }
}

/// A recorded unit of GPU work: pipeline, bindings, workgroup counts.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        if x > 0 && y > 0 && z > 0 {
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// Pipelines and layouts, created once and reused.
pub struct Kernels {
    layouts: Mutex<HashMap<&'static [Binding], wgpu::BindGroupLayout>>,
    pipelines: Mutex<HashMap<(Kernel, u32), wgpu::ComputePipeline>>,
}

impl Default for Kernels {
    fn default() -> Self {
        Self::new()
    }
}

impl Kernels {
    pub fn new() -> Self {
        Kernels { layouts: Mutex::new(HashMap::new()), pipelines: Mutex::new(HashMap::new()) }
    }

    /// The bind-group layout of a signature.
    pub fn layout(&self, gpu: &Gpu, sig: &'static [Binding]) -> wgpu::BindGroupLayout {
        let mut m = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(sig)
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = sig
                    .iter()
                    .enumerate()
                    .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: match b {
                            Binding::Uniform => wgpu::BindingType::Buffer {
                                ty: wgpu::BufferBindingType::Uniform,
                                has_dynamic_offset: false,
                                min_binding_size: None,
                            },
                            Binding::Read | Binding::ReadWrite => wgpu::BindingType::Buffer {
                                ty: wgpu::BufferBindingType::Storage { read_only: *b == Binding::Read },
                                has_dynamic_offset: false,
                                min_binding_size: None,
                            },
                        },
                        count: None,
                    })
                    .collect();
                gpu.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("vigil layout"),
                    entries: &entries,
                })
            })
            .clone()
    }

    /// The pipeline of a kernel for a weight type (ggml id; ignored by unquantized kernels).
    pub fn pipeline(&self, gpu: &Gpu, kernel: Kernel, qtype: u32) -> Result<wgpu::ComputePipeline> {
        let qtype = if kernel.quantized() || kernel.uses_kv() { qtype } else { 0 };
        let supported = if kernel.quantized() {
            matches!(qtype, 0 | 2 | 3 | 8 | 12 | 14)
        } else if kernel.uses_kv() {
            qtype == 0 || (qtype == 1 && gpu.f16)
        } else {
            true
        };
        if !supported {
            return Err(GpuError::Shape(format!("{kernel:?} has no variant for ggml type {qtype} on this adapter")));
        }
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&(kernel, qtype)) {
            return Ok(p.clone());
        }
        let layout = self.layout(gpu, kernel.signature());
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&format!("{kernel:?}")),
            source: wgpu::ShaderSource::Wgsl(kernel.source_for(qtype).into()),
        });
        let pl = gpu.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&format!("{kernel:?}")),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let constants: Vec<(&str, f64)> = if kernel.quantized() { vec![("QTYPE", qtype as f64)] } else { vec![] };
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&format!("{kernel:?}/{qtype}")),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(kernel.entry_point()),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: None,
        });
        if let Some(e) = pollster_block(scope.pop()) {
            return Err(GpuError::Runtime(format!("{kernel:?}: {e}")));
        }
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert((kernel, qtype), pipeline.clone());
        Ok(pipeline)
    }

    /// A dispatch of `kernel` over `buffers` (in binding order, checked against the signature).
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        kernel: Kernel,
        qtype: u32,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let sig = kernel.signature();
        if buffers.len() != sig.len() {
            return Err(GpuError::Shape(format!("{kernel:?} takes {} bindings, got {}", sig.len(), buffers.len())));
        }
        let pipeline = self.pipeline(gpu, kernel, qtype)?;
        Ok(Dispatch { bind_group: self.bind_group(gpu, kernel, buffers), pipeline, workgroups })
    }

    /// A bind group for `kernel` over `buffers` (usable with every kernel of the same signature).
    pub fn bind_group(&self, gpu: &Gpu, kernel: Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let layout = self.layout(gpu, kernel.signature());
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&format!("{kernel:?}")),
            layout: &layout,
            entries: &entries,
        })
    }
}

/// Error scopes resolve immediately on native backends; in the browser they are futures, and
/// pipeline errors are then reported through the device's uncaptured-error handler instead.
fn pollster_block<F: std::future::Future<Output = Option<wgpu::Error>>>(f: F) -> Option<wgpu::Error> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(f)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(f);
        None
    }
}

/// Which quantized-matmul kernels suit an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatKernels {
    /// For steps of a few tokens (decode).
    pub small: Kernel,
    /// For prefill-sized steps.
    pub large: Kernel,
}

impl MatKernels {
    /// Adapters that run on a CPU (lavapipe, SwiftShader) get one invocation per output and no
    /// barriers; GPUs get 32 lanes per row, reduced with subgroup operations where the subgroup
    /// size divides 32, and the tiled matmul for prefill.
    pub fn for_gpu(gpu: &Gpu) -> Self {
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            return MatKernels { small: Kernel::MatVecRows, large: Kernel::MatVecRows };
        }
        let (lo, hi) = (gpu.info.subgroup_min_size, gpu.info.subgroup_max_size);
        let sg_fits = gpu.subgroups && lo == hi && lo > 0 && 32 % lo == 0;
        MatKernels { small: if sg_fits { Kernel::MatVecSubgroup } else { Kernel::MatVec }, large: Kernel::MatMul }
    }

    /// Workgroup counts of `kernel` for n rows and t tokens.
    pub fn grid(kernel: Kernel, n: u32, t: u32) -> [u32; 3] {
        match kernel {
            Kernel::MatMul => [n.div_ceil(32), t.div_ceil(32), 1],
            Kernel::MatVecRows => [n.div_ceil(64), t, 1],
            _ => [n.div_ceil(8), t, 1],
        }
    }
}
