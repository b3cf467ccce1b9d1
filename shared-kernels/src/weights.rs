//! Quantized weight matrices on the GPU.
//!
//! GGUF blocks are not 4-byte aligned (Q8_0 is 34 bytes), so at load they are repacked into two
//! aligned streams (see `wgsl/quant.wgsl`): `qs` with the quantized values as u32 words, `scales`
//! with the f16 scale (and Q4_1 min) — the same bytes per block as GGUF, nothing dequantized.
//! Q5_0 blocks (5-bit integers times an f16 scale) become Q8_0 blocks holding the same values
//! exactly. Other types without a kernel are dequantized to f32 at load. A tensor larger than one storage binding
//! is split by rows into parts, each dispatched with its row offset.

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
    /// ggml id of the stored type: 0 (F32), 2 (Q4_0), 3 (Q4_1) or 8 (Q8_0; Q5_0 is stored as Q8_0).
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
