// out[t, i] = silu(g[t, gate_offset + i]) · g[t, up_offset + i]: gate and up projections side by
// side in one buffer. Dispatch: (ceil(n / 64), tokens, 1).

struct Params {
    n: u32,
    stride: u32,
    gate_offset: u32,
    up_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> g: array<f32>;          // [t, stride]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [t, n]

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.n || t >= step.t) {
        return;
    }
    let a = g[t * p.stride + p.gate_offset + i];
    let b = g[t * p.stride + p.up_offset + i];
    out[t * p.n + i] = a / (1.0 + exp(-a)) * b;
}
