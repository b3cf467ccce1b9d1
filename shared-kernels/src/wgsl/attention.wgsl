// Causal attention with a KV cache and grouped KV heads, in three passes over a scores buffer
// [heads, tmax, ctx]:
//   scores: s[h, t, j] = q[t, h] · k[h / rep, j] · scale (−∞ after position step.pos + t, or
//           outside the sliding window);            dispatch (ceil(step.l / 64), tokens, heads)
//   softmax over j < step.l, in place;               dispatch (tokens, heads, 1)
//   values: o[t, h] = Σ_j s[h, t, j] · v[h / rep, j]; dispatch (ceil(heads * hd / 64), tokens, 1)
// Entry points share one binding layout. kv_t is the cache's element type: f32, or f16 in the
// variant built for adapters with SHADER_F16 (arithmetic stays f32).
alias kv_t = f32;

struct Params {
    heads: u32,
    kv_heads: u32,
    hd: u32,
    ctx: u32,
    tmax: u32,
    q_stride: u32,
    q_offset: u32,
    out_stride: u32,
    scale: f32,
    window: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;          // [t, q_stride]
@group(0) @binding(3) var<storage, read> kc: array<kv_t>;        // [kv_heads, ctx, hd]
@group(0) @binding(4) var<storage, read> vc: array<kv_t>;        // [kv_heads, ctx, hd]
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;   // [heads, tmax, ctx]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // [t, out_stride]

// −∞ built at run time: as a constant expression it is a shader-creation error in browsers
// (WGSL forbids const-evaluated infinities; naga lets it through, Tint does not).
fn neg_inf() -> f32 {
    var bits = 0xff800000u;
    return bitcast<f32>(bits);
}

@compute @workgroup_size(64)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let t = gid.y;
    let h = gid.z;
    if (j >= step.l || t >= step.t || h >= p.heads) {
        return;
    }
    let qpos = step.pos + t;
    var v = neg_inf();
    let visible = j <= qpos && (p.window == 0u || qpos - j < p.window);
    if (visible) {
        let kvh = h / (p.heads / p.kv_heads);
        let qb = t * p.q_stride + p.q_offset + h * p.hd;
        let kb = (kvh * p.ctx + j) * p.hd;
        var acc = 0.0;
        for (var d = 0u; d < p.hd; d++) {
            acc += q[qb + d] * f32(kc[kb + d]);
        }
        v = acc * p.scale;
    }
    sc[(h * p.tmax + t) * p.ctx + j] = v;
}

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    let h = wg.y;
    if (t >= step.t) {
        return;
    }
    let base = (h * p.tmax + t) * p.ctx;
    var m = neg_inf();
    for (var j = li; j < step.l; j += 256u) {
        m = max(m, sc[base + j]);
    }
    red[li] = m;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (li < k) {
            red[li] = max(red[li], red[li + k]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var s = 0.0;
    for (var j = li; j < step.l; j += 256u) {
        let e = exp(sc[base + j] - mx);
        sc[base + j] = e;
        s += e;
    }
    red[li] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (li < k) {
            red[li] += red[li + k];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var j = li; j < step.l; j += 256u) {
        sc[base + j] *= inv;
    }
}

@compute @workgroup_size(64)
fn values(@builtin(global_invocation_id) gid: vec3<u32>) {
    let hd_i = gid.x;
    let t = gid.y;
    if (hd_i >= p.heads * p.hd || t >= step.t) {
        return;
    }
    let h = hd_i / p.hd;
    let d = hd_i % p.hd;
    let kvh = h / (p.heads / p.kv_heads);
    let sb = (h * p.tmax + t) * p.ctx;
    var acc = 0.0;
    for (var j = 0u; j < step.l; j++) {
        acc += sc[sb + j] * f32(vc[(kvh * p.ctx + j) * p.hd + d]);
    }
    out[t * p.out_stride + h * p.hd + d] = acc;
}
