// out[t, i] = scale · token_embd[ids[t], i], dequantized from the quantized table (quant.wgsl). A table
// split across buffers is one dispatch per part: a part writes the ids in [row0, row0 + rows).
// Ids past the vocabulary read its last row. Dispatch: (ceil(d / 64), tokens, 1).

struct Params {
    d: u32,
    vocab: u32,
    row0: u32,
    rows: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qs: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;      // [t]
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // [t, d]

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.d || t >= step.t) {
        return;
    }
    let id = min(ids[t], p.vocab - 1u);
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return;
    }
    let nb = p.d / 32u;
    out[t * p.d + i] = dequant((id - p.row0) * nb + i / 32u, i % 32u) * p.scale;
}
