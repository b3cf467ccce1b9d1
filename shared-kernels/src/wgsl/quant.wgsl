// Shared by the kernels that read quantized weights (prepended to their source).
//
// Weights are repacked at load into two streams per tensor:
//   qs:     the quantized values as u32 words. Q4_0/Q4_1: 4 words per 32-value block, byte j holding
//           element j in its low nibble and element j+16 in its high nibble (GGUF order);
//           Q8_0: 8 words of signed bytes; F32 (QTYPE 0): the f32 bits of each value.
//           Q4_K (32-value blocks cut from its super-blocks): as Q4_0; Q6_K: as Q8_0 (values − 32).
//   scales: Q4_1: one word per block, unpack2x16float → (d, m); Q4_0/Q8_0: one word per two blocks,
//           the block's f16 d in the low (even block) or high (odd block) half. F32: unused.
//           Q4_K: two f32 words per block, d·sc and −dmin·m; Q6_K: two f32 words per block, the
//           scales of its two halves of 16 values.
// QTYPE is the ggml type id: 0 F32, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, 14 Q6_K.
override QTYPE: u32 = 3u;

// (d, m) of block b (Q6_K: the scales of its two halves).
fn block_dm(b: u32) -> vec2<f32> {
    if (QTYPE == 3u) {
        return unpack2x16float(scales[b]);
    }
    if (QTYPE == 12u || QTYPE == 14u) {
        return vec2<f32>(bitcast<f32>(scales[2u * b]), bitcast<f32>(scales[2u * b + 1u]));
    }
    let pair = unpack2x16float(scales[b >> 1u]);
    return vec2<f32>(select(pair.x, pair.y, (b & 1u) == 1u), 0.0);
}

// Element e (0..32) of block b, dequantized.
fn dequant(b: u32, e: u32) -> f32 {
    if (QTYPE == 0u) {
        return bitcast<f32>(qs[b * 32u + e]);
    }
    let dm = block_dm(b);
    if (QTYPE == 8u || QTYPE == 14u) {
        let q = qs[b * 8u + (e >> 2u)];
        let s = select(dm.x, dm.y, QTYPE == 14u && e >= 16u);
        return s * f32(bitcast<i32>(q << (24u - 8u * (e & 3u))) >> 24u);
    }
    let j = e & 15u;
    let byte = (qs[b * 4u + (j >> 2u)] >> (8u * (j & 3u))) & 255u;
    let q = f32(select(byte & 15u, byte >> 4u, e >= 16u));
    if (QTYPE == 2u) {
        return dm.x * (q - 8.0);
    }
    return q * dm.x + dm.y;
}
