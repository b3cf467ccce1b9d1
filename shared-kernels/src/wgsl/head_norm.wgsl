// RMSNorm of each head in place: x[t, x_offset + h·n + i] ← x · 1/sqrt(mean(x²) + eps) · w[i]
// over the n values of head h, one weight vector shared by all heads (Gemma's q/k norms).
// One workgroup per (token, head). Dispatch: (tokens, heads, 1).

struct Params {
    n: u32,
    eps: f32,
    heads: u32,
    x_stride: u32,
    x_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [n]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;    // [t, x_stride]

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    let h = wg.y;
    if (t >= step.t || h >= p.heads) {
        return;
    }
    let base = t * p.x_stride + p.x_offset + h * p.n;
    var s = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        let v = x[base + i];
        s += v * v;
    }
    red[li] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (li < k) {
            red[li] += red[li + k];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.n) + p.eps);
    // every lane has read red[0] before any lane writes x (each lane writes only what it read)
    for (var i = li; i < p.n; i += 256u) {
        x[base + i] = x[base + i] * scale * w[i];
    }
}
