//! vigil-kernels: WGSL kernels and the host code that launches them (native wgpu and WebGPU).
//!
//! Not built yet: this crate is filled by the WGSL issue (#3). Until then the runtime's only backend
//! is the candle CPU decoder in `vigil-models`.
