// y[t, row_offset + row] (+)= Σ_k x[t, k] · W[row, k] — the variant for adapters that run on a
// CPU (lavapipe, SwiftShader): one invocation per output (row, token), a plain loop over the row's
// blocks, no shared memory and no barriers (which are expensive there).
// Dispatch: (ceil(n / 64), tokens, 1); with last_only, tokens = 1.

struct Params {
    n: u32,
    k: u32,
    x_stride: u32,
    y_stride: u32,
    row_offset: u32,
    accumulate: u32,
    last_only: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qs: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    let t_out = gid.y;
    let t_in = select(t_out, step.t - 1u, p.last_only == 1u);
    if (row >= p.n || t_in >= step.t) {
        return;
    }
    let nb = p.k / 32u;
    var acc = 0.0;
    for (var b = 0u; b < nb; b++) {
        acc += block_dot(row * nb + b, t_in * p.x_stride + b * 32u);
    }
    let o = t_out * p.y_stride + p.row_offset + row;
    if (p.accumulate == 1u) {
        y[o] += acc;
    } else {
        y[o] = acc;
    }
}
