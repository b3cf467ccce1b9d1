//! Quantized weight matrices on the GPU.
//!
//! GGUF blocks are not 4-byte aligned (Q8_0 is 34 bytes), so at load they are repacked into two
//! aligned streams (see `wgsl/quant.wgsl`): `qs` with the quantized values as u32 words, `scales`
//! with the f16 scale (and Q4_1 min) — the same bytes per block as GGUF, nothing dequantized.
//! Q5_0 blocks (5-bit integers times an f16 scale) become Q8_0 blocks holding the same values
//! exactly. The K-quants' 256-value super-blocks are cut into 32-value blocks with their effective
//! scales in f32 (what ggml's dequantization computes first), again the same values exactly:
//! Q4_K as nibbles with (d·sc, −dmin·m), Q6_K as signed bytes with one scale per 16 values.
//! Other types are dequantized to f32 at load. A tensor larger than one storage binding
//! is split by rows into parts, each dispatched with its row offset.

use half::f16;
use vigil_models::cpu::qmatmul::q5_0_values;
use vigil_models::gguf::{codec, GgmlType};

use crate::context::{Gpu, GpuError, Result};

/// One buffer pair holding rows [row0, row0 + rows).
pub struct QPart {
    pub row0: usize,
    pub rows: usize,
    pub qs: wgpu::Buffer,
    pub scales: wgpu::Buffer,
}

/// A weight matrix W [n, k] (n rows of k values), possibly split into parts.
pub struct QWeight {
    /// ggml id of the stored type: 0 (F32), 2 (Q4_0), 3 (Q4_1), 8 (Q8_0; Q5_0 is stored as Q8_0),
    /// 12 (Q4_K) or 14 (Q6_K), the last two cut into 32-value blocks.
    pub qtype: u32,
    pub n: usize,
    pub k: usize,
    pub parts: Vec<QPart>,
    /// Bytes a full pass over the matrix reads.
    pub bytes: u64,
}

/// Words of one block's values and its scale halves.
fn repack_rows(ty: GgmlType, data: &[u8], rows: usize, k: usize) -> Result<(u32, Vec<u32>, Vec<u32>)> {
    let nb = rows * k / 32;
    match ty {
        GgmlType::Q4_1 => {
            let mut qs = Vec::with_capacity(nb * 4);
            let mut sc = Vec::with_capacity(nb);
            for b in data.chunks_exact(20) {
                sc.push(u32::from_le_bytes(b[0..4].try_into().unwrap()));
                qs.extend(b[4..20].chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())));
            }
            Ok((3, qs, sc))
        }
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            let (ts, words) = if ty == GgmlType::Q4_0 { (18, 4) } else { (34, 8) };
            let mut qs = Vec::with_capacity(nb * words);
            let mut sc = vec![0u32; nb.div_ceil(2)];
            for (i, b) in data.chunks_exact(ts).enumerate() {
                let d = u16::from_le_bytes([b[0], b[1]]) as u32;
                sc[i / 2] |= d << (16 * (i % 2));
                qs.extend(b[2..2 + 4 * words].chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())));
            }
            Ok((ty.id(), qs, sc))
        }
        GgmlType::Q5_0 => {
            let mut q8 = Vec::with_capacity(nb * 34);
            for b in data.chunks_exact(22) {
                q8.extend_from_slice(&b[0..2]);
                q8.extend(q5_0_values(b).map(|v| v as u8));
            }
            repack_rows(GgmlType::Q8_0, &q8, rows, k)
        }
        GgmlType::Q4_K => {
            let mut qs = Vec::with_capacity(nb * 4);
            let mut sc = Vec::with_capacity(nb * 2);
            for b in data.chunks_exact(144) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
                // 32 bytes hold sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles)
                for (j, q) in b[16..144].chunks_exact(32).enumerate() {
                    for (sub, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
                        let (s, m) = codec::scale_min_k4(sub, &b[4..16]);
                        sc.extend([(d * s as f32).to_bits(), (-(dmin * m as f32)).to_bits()]);
                        let v = |e: usize| (q[e] >> shift) & 15;
                        let bytes: Vec<u8> = (0..16).map(|e| v(e) | (v(e + 16) << 4)).collect();
                        qs.extend(bytes.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())));
                    }
                }
            }
            Ok((12, qs, sc))
        }
        GgmlType::Q6_K => {
            let mut qs = Vec::with_capacity(nb * 8);
            let mut sc = Vec::with_capacity(nb * 2);
            for b in data.chunks_exact(210) {
                let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
                // value p of the super-block: half n = p / 128, then 4 groups of 32 (ggml's layout)
                let mut v = [0u8; 256];
                for n in 0..2 {
                    for l in 0..32 {
                        let (lo, hi) = (&ql[64 * n..], qh[32 * n + l]);
                        let q = [
                            (lo[l] & 15) | ((hi & 3) << 4),
                            (lo[l + 32] & 15) | (((hi >> 2) & 3) << 4),
                            (lo[l] >> 4) | (((hi >> 4) & 3) << 4),
                            (lo[l + 32] >> 4) | (((hi >> 6) & 3) << 4),
                        ];
                        for (g, q) in q.into_iter().enumerate() {
                            v[128 * n + 32 * g + l] = (q as i8 - 32) as u8;
                        }
                    }
                }
                qs.extend(v.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())));
                sc.extend(scales.iter().map(|&s| (d * (s as i8) as f32).to_bits()));
            }
            Ok((14, qs, sc))
        }
        other => {
            let mut vals = vec![0f32; rows * k];
            codec::dequantize(other, data, &mut vals).map_err(|e| GpuError::Shape(e.to_string()))?;
            Ok((0, vals.iter().map(|v| v.to_bits()).collect(), vec![0]))
        }
    }
}

impl QWeight {
    /// Uploads W [n, k] stored as `ty` in GGUF layout (`data`: n rows of k values).
    pub fn upload(gpu: &Gpu, label: &str, ty: GgmlType, n: usize, k: usize, data: &[u8]) -> Result<Self> {
        Self::upload_with_limit(gpu, label, ty, n, k, data, gpu.max_binding())
    }

    /// [`QWeight::upload`] with an explicit per-buffer limit (tests force splits with it).
    pub fn upload_with_limit(
        gpu: &Gpu,
        label: &str,
        ty: GgmlType,
        n: usize,
        k: usize,
        data: &[u8],
        limit: u64,
    ) -> Result<Self> {
        if !k.is_multiple_of(32) || n == 0 {
            return Err(GpuError::Shape(format!("{label}: [{n}, {k}] is not a matrix of whole 32-value blocks")));
        }
        let row_bytes =
            ty.byte_size(k as u64).ok_or_else(|| GpuError::Shape(format!("{label}: bad row size")))? as usize;
        if data.len() != n * row_bytes {
            return Err(GpuError::Shape(format!("{label}: {} bytes for {n} rows of {row_bytes}", data.len())));
        }
        // bytes per row once repacked: f32 for types without a kernel
        let packed_row = match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => row_bytes,
            GgmlType::Q5_0 => k / 32 * 34,
            GgmlType::Q4_K => k / 32 * 24,
            GgmlType::Q6_K => k / 32 * 40,
            _ => k * 4,
        } as u64;
        let rows_per_part = ((limit / packed_row.max(1)) as usize).clamp(1, n);
        let mut parts = Vec::new();
        let mut qtype = 0;
        let mut bytes = 0u64;
        let mut row0 = 0;
        while row0 < n {
            let rows = rows_per_part.min(n - row0);
            let (qt, qs, sc) = repack_rows(ty, &data[row0 * row_bytes..(row0 + rows) * row_bytes], rows, k)?;
            qtype = qt;
            bytes += (qs.len() * 4 + sc.len() * 4) as u64;
            parts.push(QPart {
                row0,
                rows,
                qs: gpu.storage(&format!("{label}.qs[{row0}]"), bytemuck::cast_slice(&qs))?,
                scales: gpu.storage(&format!("{label}.scales[{row0}]"), bytemuck::cast_slice(&sc))?,
            });
            row0 += rows;
        }
        Ok(QWeight { qtype, n, k, parts, bytes })
    }
}
