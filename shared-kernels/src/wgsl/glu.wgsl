// Gated feed-forward activations, gate and up projections side by side in one buffer:
//   swiglu: out[t, i] = silu(g[t, gate_offset + i]) · g[t, up_offset + i]   (llama, qwen2)
//   geglu:  out[t, i] = gelu(g[t, gate_offset + i]) · g[t, up_offset + i]   (gemma3)
// GELU is the tanh form as ggml computes it: through a table indexed by the input rounded to f16,
// holding f16 results, with x ≤ −10 → 0 and x ≥ 10 → x. Rounding the same way here keeps the
// kernel equal to the CPU decoder's `gelu_ggml`. Dispatch: (ceil(n / 64), tokens, 1).

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

fn round_f16(x: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
}

fn gelu_ggml(x: f32) -> f32 {
    if (x <= -10.0) {
        return 0.0;
    }
    if (x >= 10.0) {
        return x;
    }
    let v = round_f16(x);
    let z = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    return round_f16(0.5 * v * (1.0 + tanh(z)));
}

@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.n || t >= step.t) {
        return;
    }
    let a = g[t * p.stride + p.gate_offset + i];
    let b = g[t * p.stride + p.up_offset + i];
    out[t * p.n + i] = a / (1.0 + exp(-a)) * b;
}

@compute @workgroup_size(64)
fn geglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.n || t >= step.t) {
        return;
    }
    let a = g[t * p.stride + p.gate_offset + i];
    let b = g[t * p.stride + p.up_offset + i];
    out[t * p.n + i] = gelu_ggml(a) * b;
}
