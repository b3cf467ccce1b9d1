// y[t, y_offset + row] (+)= scale · Σ_k x[t, x_offset + k] · W[row, k] with f32 W [n, k] of any k:
// the two halves of a LoRA branch (A: r × in, then B: out × r). Same workgroup shape as matvec.
// Dispatch: (ceil(n / 8), tokens, 1).

struct Params {
    n: u32,
    k: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    scale: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [n, k]
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const ROWS: u32 = 8u;
const LANES: u32 = 32u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = li / LANES;
    let lane = li % LANES;
    let row = wg.x * ROWS + r;
    let t = wg.y;
    var acc = 0.0;
    if (row < p.n && t < step.t) {
        for (var e = lane; e < p.k; e += LANES) {
            acc += w[row * p.k + e] * x[t * p.x_stride + p.x_offset + e];
        }
    }
    part[li] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            part[li] += part[li + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.n && t < step.t) {
        let o = t * p.y_stride + p.y_offset + row;
        let v = p.scale * part[li];
        if (p.accumulate == 1u) {
            y[o] += v;
        } else {
            y[o] = v;
        }
    }
}
