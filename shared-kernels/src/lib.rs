//! vigil-kernels: the WGSL kernels of vigil's GPU decoder and the host code that launches them —
//! natively through wgpu (Vulkan, Metal, DX12) and in the browser through WebGPU.
//!
//! - [`context::Gpu`]: adapter, device, the adapter's real limits and optional features;
//! - [`kernel::Kernel`]: one enum value per kernel, each built from `src/wgsl/<family>.wgsl`
//!   (plus shared snippets), with a pipeline cache keyed by kernel and weight type;
//! - [`weights::QWeight`]: quantized weights repacked at load into aligned streams, split across
//!   buffers when a tensor exceeds the binding limit;
//! - [`params`]: the uniform structs the kernels read, laid out as in WGSL.
//!
//! Every kernel has an f32 baseline that runs on SwiftShader (no f16) and lavapipe; each is tested
//! against a CPU reference in `tests/kernels.rs`, and every source is validated by naga without a GPU.

pub mod context;
pub mod kernel;
pub mod params;
pub mod weights;

pub use context::{Gpu, GpuError};
pub use kernel::{Dispatch, Kernel, Kernels, MatKernels};
pub use weights::QWeight;
/// The wgpu this crate is built on (so dependents use the same version).
pub use wgpu;
