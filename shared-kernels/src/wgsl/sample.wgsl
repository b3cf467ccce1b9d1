// Chooses the next token on the GPU so one u32 is read back per step. k passes each pick the next
// candidate in (logit desc, index asc) order — k = 1 is argmax; the candidates then get
// temperature, a top-p cut, and a draw with step.rand (as the CPU sampler does).
// Dispatch: (1, 1, 1).

struct Params {
    vocab: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> result: array<u32>;

const MAX_K: u32 = 64u;
const NONE: u32 = 0xffffffffu;
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
var<workgroup> cand_v: array<f32, 64>;
var<workgroup> cand_i: array<u32, 64>;

// a comes before b in (value desc, index asc) order
fn before(av: f32, ai: u32, bv_: f32, bi_: u32) -> bool {
    return av > bv_ || (av == bv_ && ai < bi_);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    var k = min(max(p.top_k, 1u), MAX_K);
    if (p.temperature <= 0.0) {
        k = 1u;
    }
    var prev_v = 0.0;
    var prev_i = NONE;
    for (var c = 0u; c < k; c++) {
        var best_v = 0.0;
        var best_i = NONE;
        for (var i = li; i < p.vocab; i += 256u) {
            let v = logits[i];
            // finite values only, strictly after the previous candidate
            let finite = v == v && abs(v) <= 3.4e38;
            let after_prev = prev_i == NONE || before(prev_v, prev_i, v, i);
            if (finite && after_prev && (best_i == NONE || before(v, i, best_v, best_i))) {
                best_v = v;
                best_i = i;
            }
        }
        bv[li] = best_v;
        bi[li] = best_i;
        workgroupBarrier();
        for (var s = 128u; s > 0u; s >>= 1u) {
            if (li < s) {
                let oi = bi[li + s];
                if (oi != NONE && (bi[li] == NONE || before(bv[li + s], oi, bv[li], bi[li]))) {
                    bv[li] = bv[li + s];
                    bi[li] = oi;
                }
            }
            workgroupBarrier();
        }
        prev_v = bv[0];
        prev_i = bi[0];
        if (li == 0u) {
            cand_v[c] = prev_v;
            cand_i[c] = prev_i;
        }
        workgroupBarrier();
    }
    if (li != 0u) {
        return;
    }
    if (cand_i[0] == NONE) {
        result[0] = 0u;
        return;
    }
    if (k == 1u) {
        result[0] = cand_i[0];
        return;
    }
    // probabilities of the candidates, the top-p cut, then the draw
    var probs: array<f32, 64>;
    var total = 0.0;
    var n = 0u;
    for (var c = 0u; c < k; c++) {
        if (cand_i[c] == NONE) {
            break;
        }
        probs[c] = exp((cand_v[c] - cand_v[0]) / p.temperature);
        total += probs[c];
        n = c + 1u;
    }
    var kept = n;
    if (p.top_p < 1.0) {
        var acc = 0.0;
        for (var c = 0u; c < n; c++) {
            acc += probs[c] / total;
            if (acc >= p.top_p) {
                kept = c + 1u;
                break;
            }
        }
    }
    var kept_total = 0.0;
    for (var c = 0u; c < kept; c++) {
        kept_total += probs[c] / total;
    }
    var r = step.rand * kept_total;
    for (var c = 0u; c < kept; c++) {
        r -= probs[c] / total;
        if (r <= 0.0) {
            result[0] = cand_i[c];
            return;
        }
    }
    result[0] = cand_i[kept - 1u];
}
