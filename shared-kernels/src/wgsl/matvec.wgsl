// y[t, row_offset + row] (+)= Σ_k x[t, k] · W[row, k] — quantized weights, decode-sized t.
// 8 rows per workgroup; the 32 lanes of a row split its blocks, then reduce in shared memory.
// Dispatch: (ceil(n / 8), tokens, 1). With last_only, only token step.t - 1 is computed, into t = 0.

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
@group(0) @binding(2) var<storage, read> qs: array<u32>;       // weight values (quant.wgsl)
@group(0) @binding(3) var<storage, read> scales: array<u32>;   // weight scales (quant.wgsl)
@group(0) @binding(4) var<storage, read> x: array<f32>;        // [t, x_stride]
@group(0) @binding(5) var<storage, read_write> y: array<f32>;  // [t, y_stride]

const ROWS: u32 = 8u;
const LANES: u32 = 32u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = li / LANES;
    let lane = li % LANES;
    let row = wg.x * ROWS + r;
    let t_out = wg.y;
    let t_in = select(t_out, step.t - 1u, p.last_only == 1u);
    let nb = p.k / 32u;
    var acc = 0.0;
    if (row < p.n && t_in < step.t) {
        for (var b = lane; b < nb; b += LANES) {
            acc += block_dot(row * nb + b, t_in * p.x_stride + b * 32u);
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
    if (lane == 0u && row < p.n && t_in < step.t) {
        let o = t_out * p.y_stride + p.row_offset + row;
        if (p.accumulate == 1u) {
            y[o] += part[li];
        } else {
            y[o] = part[li];
        }
    }
}
