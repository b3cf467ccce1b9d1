//! Block codecs: ggml block formats to f32 and back.
//!
//! Dequantization follows ggml's reference formulas (`ggml-quants.c`) exactly, including the order of
//! float operations, so results match ggml and the Python `gguf` package. Quantization implements the
//! reference (non-imatrix) rounding for the 32-element block formats; k-quants are read-only here.

use half::f16;

use super::types::GgmlType;
use crate::error::{Error, Result};

fn codec_err(ty: GgmlType, what: impl Into<String>) -> Error {
    Error::Codec { ty: ty.name().to_string(), what: what.into() }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// f32 → bf16 as ggml rounds it (round to nearest even, NaN kept quiet).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[inline]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Dequantizes `data` (whole blocks of `ty`) into `out`; `out.len()` must equal the element count.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let bs = ty.block_size();
    let ts = ty.type_size();
    if !out.len().is_multiple_of(bs) {
        return Err(codec_err(ty, format!("{} values is not a whole number of {bs}-value blocks", out.len())));
    }
    let n_blocks = out.len() / bs;
    if data.len() != n_blocks * ts {
        return Err(codec_err(ty, format!("{} values need {} bytes, got {}", out.len(), n_blocks * ts, data.len())));
    }
    let blocks = data.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                    y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = (qs[j] & 0x0f) as f32 * d + m;
                    y[j + 16] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
                let qs = &b[6..22];
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((((qs[j] & 0x0f) as u32) | xh0) as i32 - 16) as f32 * d;
                    y[j + 16] = ((((qs[j] >> 4) as u32) | xh1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes(b[4..8].try_into().unwrap());
                let qs = &b[8..24];
                for j in 0..16 {
                    let xh0 = ((qh >> j) << 4) & 0x10;
                    let xh1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (((qs[j] & 0x0f) as u32) | xh0) as f32 * d + m;
                    y[j + 16] = (((qs[j] >> 4) as u32) | xh1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_K => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (k, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * k, scales);
                    let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (b, y) in blocks {
                let ql_all = &b[0..128];
                let qh_all = &b[128..192];
                let sc_all = &b[192..208];
                let d = f16_at(b, 208);
                for n in 0..2 {
                    let ql = &ql_all[64 * n..];
                    let qh = &qh_all[32 * n..];
                    let sc = &sc_all[8 * n..];
                    let y = &mut y[128 * n..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        other => return Err(codec_err(other, "dequantization not implemented")),
    }
    Ok(())
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block (ggml `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Quantizes `x` (a whole number of blocks) into `ty`, with ggml's reference rounding.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let bs = ty.block_size();
    if !x.len().is_multiple_of(bs) {
        return Err(codec_err(ty, format!("{} values is not a whole number of {bs}-value blocks", x.len())));
    }
    let mut out = Vec::with_capacity(x.len() / bs * ty.type_size());
    match ty {
        GgmlType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => x.iter().for_each(|v| out.extend_from_slice(&f32_to_bf16_bits(*v).to_le_bytes())),
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let (levels, bias) = if ty == GgmlType::Q4_0 { (15u8, 8.5f32) } else { (31u8, 16.5f32) };
            for b in x.chunks_exact(32) {
                let max = signed_absmax(b);
                let d = max / -(bias - 0.5);
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + bias) as i8).min(levels as i8) as u8;
                push_nibbles(&mut out, b, q, ty == GgmlType::Q5_0);
            }
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let levels = if ty == GgmlType::Q4_1 { 15u8 } else { 31u8 };
            for b in x.chunks_exact(32) {
                let min = b.iter().copied().fold(f32::MAX, f32::min);
                let max = b.iter().copied().fold(-f32::MAX, f32::max);
                let d = (max - min) / levels as f32;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i8).min(levels as i8) as u8;
                push_nibbles(&mut out, b, q, ty == GgmlType::Q5_1);
            }
        }
        GgmlType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        other => return Err(codec_err(other, "quantization not implemented (read-only format here)")),
    }
    Ok(out)
}

/// The value with the largest magnitude, sign kept (first one on ties, as ggml).
fn signed_absmax(b: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in b {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Packs 32 quantized values as 16 nibble pairs (element j low, j+16 high), preceded for 5-bit
/// formats by the 32 high bits.
fn push_nibbles(out: &mut Vec<u8>, b: &[f32], q: impl Fn(f32) -> u8, five_bit: bool) {
    let qv: Vec<u8> = b.iter().map(|&v| q(v)).collect();
    if five_bit {
        let mut qh = 0u32;
        for j in 0..16 {
            qh |= (((qv[j] & 0x10) >> 4) as u32) << j;
            qh |= (((qv[j + 16] & 0x10) >> 4) as u32) << (j + 16);
        }
        out.extend_from_slice(&qh.to_le_bytes());
    }
    for j in 0..16 {
        out.push((qv[j] & 0x0f) | ((qv[j + 16] & 0x0f) << 4));
    }
}

/// Dequantizes row `row` of a 2-D tensor whose rows have `row_len` elements.
pub fn dequantize_row(ty: GgmlType, data: &[u8], row_len: usize, row: usize, out: &mut [f32]) -> Result<()> {
    let row_bytes = ty
        .byte_size(row_len as u64)
        .ok_or_else(|| codec_err(ty, format!("row length {row_len} is not a whole number of blocks")))?
        as usize;
    let start =
        row.checked_mul(row_bytes).filter(|s| s.checked_add(row_bytes).is_some_and(|e| e <= data.len())).ok_or_else(
            || codec_err(ty, format!("row {row} is outside a tensor of {} rows", data.len() / row_bytes.max(1))),
        )?;
    dequantize(ty, &data[start..start + row_bytes], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, seed: u32) -> Vec<f32> {
        // deterministic, varied signs and magnitudes
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn block_formats_round_trip_within_their_step() {
        let x = ramp(32 * 64, 7);
        for (ty, tol_frac) in [
            (GgmlType::Q4_0, 1.0 / 7.0),
            (GgmlType::Q4_1, 1.0 / 14.0),
            (GgmlType::Q5_0, 1.0 / 15.0),
            (GgmlType::Q5_1, 1.0 / 30.0),
            (GgmlType::Q8_0, 1.0 / 126.0),
        ] {
            let q = quantize(ty, &x).unwrap();
            assert_eq!(q.len(), ty.byte_size(x.len() as u64).unwrap() as usize);
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &q, &mut y).unwrap();
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let range = bx.iter().fold(0f32, |a, v| a.max(v.abs())) * 2.0;
                for (a, b) in bx.iter().zip(by) {
                    assert!((a - b).abs() <= range * tol_frac + 1e-3, "{ty}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn plain_formats_round_trip() {
        let x = ramp(100, 3);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let q = quantize(ty, &x).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &q, &mut y).unwrap();
            let tol = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                _ => 1e-2,
            };
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= tol * a.abs().max(1.0), "{ty}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn zero_blocks_stay_zero_and_sizes_are_checked() {
        let q = quantize(GgmlType::Q4_0, &[0.0; 32]).unwrap();
        let mut y = [1f32; 32];
        dequantize(GgmlType::Q4_0, &q, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
        assert!(dequantize(GgmlType::Q4_0, &q[..17], &mut y).is_err());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 31]).is_err());
        let mut z = [0f32; 256];
        assert!(dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut z).is_err());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is exactly half-way between two bf16 values: ties go to even.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
    }
}
