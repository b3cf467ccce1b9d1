// Appends this step's keys and values to the cache: k, v [t, kv_dim] (inside a wider row of src)
// → kc, vc [kv_heads, ctx, hd] at positions step.pos + t.
// Dispatch: (ceil(kv_dim / 64), tokens, 1).
// kv_t is the cache's element type: f32, or f16 in the variant built for adapters with SHADER_F16.
alias kv_t = f32;

struct Params {
    kv_dim: u32,
    hd: u32,
    ctx: u32,
    src_stride: u32,
    k_offset: u32,
    v_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<kv_t>;
@group(0) @binding(4) var<storage, read_write> vc: array<kv_t>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let t = gid.y;
    if (j >= p.kv_dim || t >= step.t) {
        return;
    }
    let h = j / p.hd;
    let d = j % p.hd;
    let dst = (h * p.ctx + step.pos + t) * p.hd + d;
    kc[dst] = kv_t(src[t * p.src_stride + p.k_offset + j]);
    vc[dst] = kv_t(src[t * p.src_stride + p.v_offset + j]);
}
