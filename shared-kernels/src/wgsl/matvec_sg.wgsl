// matvec with subgroup reductions (adapters with the SUBGROUP feature whose subgroup size divides
// 32): the 32 lanes of a row sum with subgroupAdd, then the row's subgroup partials are combined.
// Same bindings and dispatch as matvec.wgsl: (ceil(n / 8), tokens, 1).

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

const ROWS: u32 = 8u;
const LANES: u32 = 32u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
        @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_size) sg_size: u32) {
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
    let s = subgroupAdd(acc);
    if (sg_lane == 0u) {
        part[li / sg_size] = s;
    }
    workgroupBarrier();
    if (lane == 0u && row < p.n && t_in < step.t) {
        let per_row = LANES / sg_size;
        var total = 0.0;
        for (var i = 0u; i < per_row; i++) {
            total += part[(li / sg_size) + i];
        }
        let o = t_out * p.y_stride + p.row_offset + row;
        if (p.accumulate == 1u) {
            y[o] += total;
        } else {
            y[o] = total;
        }
    }
}
