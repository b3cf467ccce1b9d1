// y[t, row_offset + row] (+)= Σ_k x[t, k] · W[row, k] — quantized weights, prefill-sized t.
// Tiles of 32 tokens × 32 rows; each quant block (32 values of k) is staged in shared memory for
// both operands; each of the 256 threads accumulates a 2 × 2 patch.
// Dispatch: (ceil(n / 32), ceil(tokens / 32), 1).

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
@group(0) @binding(4) var<storage, read> x: array<f32>;        // [t, x_stride]
@group(0) @binding(5) var<storage, read_write> y: array<f32>;  // [t, y_stride]

var<workgroup> xs: array<f32, 1024>;  // [32 tokens][32 k]
var<workgroup> ws: array<f32, 1024>;  // [32 rows][32 k]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let r0 = wg.x * 32u;
    let t0 = wg.y * 32u;
    let nb = p.k / 32u;
    var a00 = 0.0;
    var a01 = 0.0;
    var a10 = 0.0;
    var a11 = 0.0;
    for (var b = 0u; b < nb; b++) {
        for (var i = 0u; i < 4u; i++) {
            let idx = li * 4u + i;
            let line = idx / 32u;
            let kk = idx % 32u;
            let tok = t0 + line;
            var xv = 0.0;
            if (tok < step.t) {
                xv = x[tok * p.x_stride + b * 32u + kk];
            }
            xs[idx] = xv;
            let row = r0 + line;
            var wv = 0.0;
            if (row < p.n) {
                wv = dequant(row * nb + b, kk);
            }
            ws[idx] = wv;
        }
        workgroupBarrier();
        let ta = lid.y * 2u;
        let ra = lid.x * 2u;
        for (var kk = 0u; kk < 32u; kk++) {
            let x0 = xs[ta * 32u + kk];
            let x1 = xs[(ta + 1u) * 32u + kk];
            let w0 = ws[ra * 32u + kk];
            let w1 = ws[(ra + 1u) * 32u + kk];
            a00 += x0 * w0;
            a01 += x0 * w1;
            a10 += x1 * w0;
            a11 += x1 * w1;
        }
        workgroupBarrier();
    }
    let t = t0 + lid.y * 2u;
    let r = r0 + lid.x * 2u;
    store(t, r, a00);
    store(t, r + 1u, a01);
    store(t + 1u, r, a10);
    store(t + 1u, r + 1u, a11);
}

fn store(t: u32, r: u32, v: f32) {
    if (t < step.t && r < p.n) {
        let o = t * p.y_stride + p.row_offset + r;
        if (p.accumulate == 1u) {
            y[o] += v;
        } else {
            y[o] = v;
        }
    }
}
