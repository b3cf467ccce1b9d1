// Shared by kernels that dot quantized weight rows with f32 activations `x` (prepended after
// quant.wgsl).

// Σ_e w[b, e] · x[x_off + e] over the 32 values of block b.
fn block_dot(b: u32, x_off: u32) -> f32 {
    if (QTYPE == 0u) {
        var acc = 0.0;
        for (var e = 0u; e < 32u; e++) {
            acc += bitcast<f32>(qs[b * 32u + e]) * x[x_off + e];
        }
        return acc;
    }
    let dm = block_dm(b);
    if (QTYPE == 8u) {
        var acc = 0.0;
        for (var w = 0u; w < 8u; w++) {
            let q = qs[b * 8u + w];
            for (var i = 0u; i < 4u; i++) {
                let v = f32(bitcast<i32>(q << (24u - 8u * i)) >> 24u);
                acc += v * x[x_off + w * 4u + i];
            }
        }
        return dm.x * acc;
    }
    if (QTYPE == 14u) {
        // Q6_K: signed bytes as Q8_0, each half of the block with its own scale
        var acc = vec2<f32>(0.0, 0.0);
        for (var w = 0u; w < 8u; w++) {
            let q = qs[b * 8u + w];
            var part = 0.0;
            for (var i = 0u; i < 4u; i++) {
                let v = f32(bitcast<i32>(q << (24u - 8u * i)) >> 24u);
                part += v * x[x_off + w * 4u + i];
            }
            if (w < 4u) {
                acc.x += part;
            } else {
                acc.y += part;
            }
        }
        return dm.x * acc.x + dm.y * acc.y;
    }
    var acc = 0.0;
    var sum_x = 0.0;
    for (var w = 0u; w < 4u; w++) {
        let q = qs[b * 4u + w];
        for (var i = 0u; i < 4u; i++) {
            let e = w * 4u + i;
            let xl = x[x_off + e];
            let xh = x[x_off + e + 16u];
            acc += f32((q >> (8u * i)) & 15u) * xl + f32((q >> (8u * i + 4u)) & 15u) * xh;
            sum_x += xl + xh;
        }
    }
    if (QTYPE == 2u) {
        return dm.x * (acc - 8.0 * sum_x);
    }
    return dm.x * acc + dm.y * sum_x;
}

