// out[t, i] = x[t, i] / sqrt(mean_i(x[t]²) + eps) · w[i], or out += that when accumulate is 1
// (a post-norm adding into the residual stream). One workgroup per token.
// Dispatch: (tokens, 1, 1).

struct Params {
    n: u32,
    eps: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<f32>;        // [n]
@group(0) @binding(3) var<storage, read> x: array<f32>;        // [t, n]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [t, n]

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    if (t >= step.t) {
        return;
    }
    let base = t * p.n;
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
    for (var i = li; i < p.n; i += 256u) {
        let v = x[base + i] * scale * w[i];
        if (p.accumulate == 1u) {
            out[base + i] += v;
        } else {
            out[base + i] = v;
        }
    }
}
