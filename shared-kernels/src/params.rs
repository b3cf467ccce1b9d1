//! The uniform structs the kernels read, field for field as declared in `src/wgsl/*.wgsl`
//! (u32 and f32 only, padded to 16 bytes).

use bytemuck::{Pod, Zeroable};

/// Per step (step.wgsl): first position, tokens, visible keys, a random number for sampling.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Step {
    pub pos: u32,
    pub t: u32,
    pub l: u32,
    pub rand: f32,
}

/// matvec.wgsl / matmul.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct MatParams {
    pub n: u32,
    pub k: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub row_offset: u32,
    pub accumulate: u32,
    pub last_only: u32,
    pub _pad: u32,
}

/// embed.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct EmbedParams {
    pub d: u32,
    pub vocab: u32,
    pub row0: u32,
    pub rows: u32,
    /// Multiplies every value (Gemma scales embeddings by √d; 1 elsewhere).
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// rmsnorm.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct NormParams {
    pub n: u32,
    pub eps: f32,
    /// 1: add the normed values to the output (a post-norm feeding the residual stream).
    pub accumulate: u32,
    pub _pad: u32,
}

/// head_norm.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct HeadNormParams {
    /// values per head
    pub n: u32,
    pub eps: f32,
    pub heads: u32,
    pub x_stride: u32,
    pub x_offset: u32,
    pub _pad: [u32; 3],
}

/// rope.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct RopeParams {
    pub heads: u32,
    pub hd: u32,
    pub half: u32,
    pub neox: u32,
    pub x_stride: u32,
    pub x_offset: u32,
    pub _pad: [u32; 2],
}

/// kv_write.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct KvParams {
    pub kv_dim: u32,
    pub hd: u32,
    pub ctx: u32,
    pub src_stride: u32,
    pub k_offset: u32,
    pub v_offset: u32,
    pub _pad: [u32; 2],
}

/// attention.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct AttnParams {
    pub heads: u32,
    pub kv_heads: u32,
    pub hd: u32,
    pub ctx: u32,
    pub tmax: u32,
    pub q_stride: u32,
    pub q_offset: u32,
    pub out_stride: u32,
    pub scale: f32,
    pub window: u32,
    pub _pad: [u32; 2],
}

/// glu.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct GluParams {
    pub n: u32,
    pub stride: u32,
    pub gate_offset: u32,
    pub up_offset: u32,
}

/// dense.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct DenseParams {
    pub n: u32,
    pub k: u32,
    pub x_stride: u32,
    pub x_offset: u32,
    pub y_stride: u32,
    pub y_offset: u32,
    pub scale: f32,
    pub accumulate: u32,
}

/// sample.wgsl
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SampleParams {
    pub vocab: u32,
    pub top_k: u32,
    pub temperature: f32,
    pub top_p: f32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniform_structs_are_16_byte_multiples() {
        use super::*;
        for s in [
            std::mem::size_of::<Step>(),
            std::mem::size_of::<MatParams>(),
            std::mem::size_of::<EmbedParams>(),
            std::mem::size_of::<NormParams>(),
            std::mem::size_of::<HeadNormParams>(),
            std::mem::size_of::<RopeParams>(),
            std::mem::size_of::<KvParams>(),
            std::mem::size_of::<AttnParams>(),
            std::mem::size_of::<GluParams>(),
            std::mem::size_of::<DenseParams>(),
            std::mem::size_of::<SampleParams>(),
        ] {
            assert_eq!(s % 16, 0, "{s}");
        }
    }
}
