// Rotary embedding in place on heads of x: x[t, x_offset + h*hd + …], pairs (2i, 2i+1) (llama
// GGUF) or (i, i + half) (NeoX), by the angles of positions step.pos + t. cos/sin come from tables
// [positions, half] computed on the CPU (the same values the CPU decoder uses).
// Dispatch: (ceil(heads * half / 64), tokens, 1).

struct Params {
    heads: u32,
    hd: u32,
    half: u32,
    neox: u32,
    x_stride: u32,
    x_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;   // [positions, half]
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;   // [positions, half]
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hi = gid.x;
    let t = gid.y;
    if (hi >= p.heads * p.half || t >= step.t) {
        return;
    }
    let h = hi / p.half;
    let i = hi % p.half;
    let pos = step.pos + t;
    let c = cos_t[pos * p.half + i];
    let s = sin_t[pos * p.half + i];
    let base = t * p.x_stride + p.x_offset + h * p.hd;
    var i0 = 2u * i;
    var i1 = 2u * i + 1u;
    if (p.neox == 1u) {
        i0 = i;
        i1 = i + p.half;
    }
    let x0 = x[base + i0];
    let x1 = x[base + i1];
    x[base + i0] = x0 * c - x1 * s;
    x[base + i1] = x0 * s + x1 * c;
}
