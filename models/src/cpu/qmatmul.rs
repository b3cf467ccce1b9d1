//! Quantized matrix multiplication for the CPU decoder: W [out, in] in GGUF block layout times
//! activations [m, in] → [m, out], with ggml's x86 arithmetic reproduced bit for bit.
//!
//! Activations are quantized per 32-value block to 8 bits the way ggml's AVX2 `quantize_row_q8_0`
//! / `quantize_row_q8_1` do (scale max|x|/127 stored as f16, multiplier 127/max, round half to
//! even). A block dot product keeps 8 f32 lanes, each the exact integer sum of 4 consecutive
//! products, accumulated with a fused multiply-add of `d_w·d_x`, then summed horizontally in ggml's
//! order. Matching ggml's arithmetic matters because 8-bit activation rounding is discontinuous: a
//! 1-ulp difference anywhere can flip roundings downstream and move SmolLM2's logits by ~0.5.
//!
//! An AVX2+FMA path is chosen at run time; the portable path computes exactly the same values.

use half::f16;

use crate::gguf::GgmlType;

/// Weight formats with a kernel here.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0)
}

/// The 32 values of a Q5_0 block (f16 d, 32 high bits, 16 bytes of nibbles), each minus 16.
#[inline(always)]
pub fn q5_0_values(wb: &[u8]) -> [i8; 32] {
    let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
    let mut q = [0i8; 32];
    for j in 0..16 {
        let hi = |bit: usize| (((qh >> bit) & 1) << 4) as u8;
        q[j] = ((wb[6 + j] & 0x0f) | hi(j)) as i8 - 16;
        q[j + 16] = ((wb[6 + j] >> 4) | hi(j + 16)) as i8 - 16;
    }
    q
}

/// 8-bit activation block (ggml `block_q8_1`; `s = d·Σq` is only used against Q4_1).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// Quantizes one row (length a multiple of 32) as ggml's AVX2 `quantize_row_q8_1` does.
pub fn quantize_row_q8(x: &[f32], out: &mut [Q8Block]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA/F16C are present.
        return unsafe { avx2::quantize_row(x, out) };
    }
    quantize_row_q8_portable(x, out)
}

fn quantize_row_q8_portable(x: &[f32], out: &mut [Q8Block]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        b.d = f16::from_f32(d).to_f32();
        b.s = f16::from_f32(d * sum as f32).to_f32();
    }
}

/// ggml's `hsum_float_8`: (lanes i + i+4), then (0+2, 1+3), then 0+1.
#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let r = [r[0] + r[2], r[1] + r[3]];
    r[0] + r[1]
}

/// Weight bytes of one row of `k` values.
fn row_bytes(ty: GgmlType, k: usize) -> usize {
    k / 32 * ty.type_size()
}

/// One output: dot of a weight row with a quantized activation row (portable path).
fn dot_portable(ty: GgmlType, w: &[u8], x: &[Q8Block]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    let ts = ty.type_size();
    for (wb, xb) in w.chunks_exact(ts).zip(x) {
        let wd = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
        let mut q = [0i32; 32];
        match ty {
            GgmlType::Q4_0 => {
                for j in 0..16 {
                    q[j] = (wb[2 + j] & 0x0f) as i32 - 8;
                    q[j + 16] = (wb[2 + j] >> 4) as i32 - 8;
                }
            }
            GgmlType::Q4_1 => {
                summs += f16::from_le_bytes([wb[2], wb[3]]).to_f32() * xb.s;
                for j in 0..16 {
                    q[j] = (wb[4 + j] & 0x0f) as i32;
                    q[j + 16] = (wb[4 + j] >> 4) as i32;
                }
            }
            GgmlType::Q5_0 => {
                for (a, b) in q.iter_mut().zip(q5_0_values(wb)) {
                    *a = b as i32;
                }
            }
            GgmlType::Q8_0 => {
                for j in 0..32 {
                    q[j] = wb[2 + j] as i8 as i32;
                }
            }
            _ => unreachable!(),
        }
        let d = wd * xb.d;
        for (l, a) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * l..4 * l + 4).map(|e| q[e] * xb.qs[e] as i32).sum();
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(acc) + summs
}

/// wasm SIMD (simd128) rows. Sums in the portable path's order; its `mul_add` (software in wasm,
/// which has no FMA) is done in f64, where d·s is exact, so the result is the fused one except for
/// a double-rounding tie (a ~2⁻²⁹ event per step).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use core::arch::wasm32::*;

    use half::f16;

    use super::{GgmlType, Q8Block};

    /// The 32 values of a weight block as two i8x16 (values 0..16 and 16..32).
    #[inline(always)]
    unsafe fn block(ty: GgmlType, wb: *const u8) -> (v128, v128) {
        match ty {
            GgmlType::Q5_0 => {
                let q = super::q5_0_values(core::slice::from_raw_parts(wb, 22));
                (v128_load(q.as_ptr() as *const v128), v128_load(q.as_ptr().add(16) as *const v128))
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                let b = v128_load(wb.add(off) as *const v128);
                let lo = v128_and(b, u8x16_splat(0x0f));
                let hi = u8x16_shr(b, 4);
                if ty == GgmlType::Q4_0 {
                    (i8x16_sub(lo, i8x16_splat(8)), i8x16_sub(hi, i8x16_splat(8)))
                } else {
                    (lo, hi)
                }
            }
            _ => (v128_load(wb.add(2) as *const v128), v128_load(wb.add(18) as *const v128)),
        }
    }

    /// Integer dot products of 4 consecutive values: lanes 0..4 and 4..8 of the portable path.
    #[inline(always)]
    unsafe fn quads(w: (v128, v128), x: &Q8Block) -> (v128, v128) {
        let x0 = v128_load(x.qs.as_ptr() as *const v128);
        let x1 = v128_load(x.qs.as_ptr().add(16) as *const v128);
        let pairs = |w: v128, x: v128| {
            (
                i32x4_dot_i16x8(i16x8_extend_low_i8x16(w), i16x8_extend_low_i8x16(x)),
                i32x4_dot_i16x8(i16x8_extend_high_i8x16(w), i16x8_extend_high_i8x16(x)),
            )
        };
        let (p0, p1) = pairs(w.0, x0);
        let (p2, p3) = pairs(w.1, x1);
        (
            i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(p0, p1), i32x4_shuffle::<1, 3, 5, 7>(p0, p1)),
            i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(p2, p3), i32x4_shuffle::<1, 3, 5, 7>(p2, p3)),
        )
    }

    /// acc + d·s per lane, rounded once to f32 from exact f64 products.
    #[inline(always)]
    fn fma4(d: f64, s: v128, acc: v128) -> v128 {
        let dd = f64x2_splat(d);
        let lo = f64x2_add(f64x2_mul(dd, f64x2_convert_low_i32x4(s)), f64x2_promote_low_f32x4(acc));
        let s_hi = i32x4_shuffle::<2, 3, 2, 3>(s, s);
        let a_hi = i32x4_shuffle::<2, 3, 2, 3>(acc, acc);
        let hi = f64x2_add(f64x2_mul(dd, f64x2_convert_low_i32x4(s_hi)), f64x2_promote_low_f32x4(a_hi));
        i32x4_shuffle::<0, 1, 4, 5>(f32x4_demote_f64x2_zero(lo), f32x4_demote_f64x2_zero(hi))
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        ty: GgmlType,
        w: &[u8],
        rb: usize,
        xq: &[Q8Block],
        nb: usize,
        m: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        let ts = ty.type_size();
        for j in 0..cols {
            let row = w.as_ptr().add(j * rb);
            let mut acc = [(f32x4_splat(0.0), f32x4_splat(0.0)); 4];
            let mut summs = [0f32; 4];
            for b in 0..nb {
                let wb = row.add(b * ts);
                let wd = f16::from_bits(u16::from_le_bytes([*wb, *wb.add(1)])).to_f32();
                let wm = (ty == GgmlType::Q4_1).then(|| f16::from_bits(u16::from_le_bytes([*wb.add(2), *wb.add(3)])));
                let vals = block(ty, wb);
                for i in 0..m {
                    let xb = &xq[i * nb + b];
                    if let Some(wm) = wm {
                        summs[i] += wm.to_f32() * xb.s;
                    }
                    let d = (wd * xb.d) as f64;
                    let (q03, q47) = quads(vals, xb);
                    acc[i] = (fma4(d, q03, acc[i].0), fma4(d, q47, acc[i].1));
                }
            }
            for i in 0..m {
                // ggml's hsum of 8 lanes: (i + i+4), then (0+2, 1+3), then 0+1
                let r = f32x4_add(acc[i].0, acc[i].1);
                let (r0, r1) = (
                    f32x4_extract_lane::<0>(r) + f32x4_extract_lane::<2>(r),
                    f32x4_extract_lane::<1>(r) + f32x4_extract_lane::<3>(r),
                );
                out[i * cols + j] = (r0 + r1) + summs[i];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The block formats are types ([`Kind`]) and the byte dot product a strategy ([`Lanes`]), so
    //! every (format, strategy, tile shape) is compiled on its own: no branch on the format in the
    //! inner loop, accumulators in registers.
    use super::{hsum8, Q8Block};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn f16_at(b: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((b as *const u16).read_unaligned() as i32)))
    }

    /// 16 bytes of nibbles → 32 bytes: low nibbles (elements 0..16) then high (16..32).
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let v = _mm_loadu_si128(p as *const __m128i);
        let both = _mm256_insertf128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }

    /// A weight block format.
    pub trait Kind {
        /// Bytes per block.
        const TS: usize;
        /// Quantized values are signed (ggml folds the sign into the activation).
        const SIGNED: bool;
        /// The block has a min (Q4_1): y += m·s.
        const MIN: bool;
        /// The 32 quantized values of the block at `p`.
        unsafe fn q(p: *const u8) -> __m256i;
    }
    pub struct Q40;
    pub struct Q41;
    pub struct Q50;
    pub struct Q80;

    /// 4 bytes of bits → 32 bytes, byte i = 0xFF where bit i is set, else 0.
    #[inline(always)]
    unsafe fn bits(p: *const u8) -> __m256i {
        let x = _mm256_set1_epi32((p as *const i32).read_unaligned());
        // byte i takes source byte i / 8 ...
        let spread =
            _mm256_shuffle_epi8(x, _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
        // ... and is all ones exactly when its bit (i % 8) is set
        let others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        _mm256_cmpeq_epi8(others, _mm256_set1_epi8(-1))
    }

    impl Kind for Q50 {
        const TS: usize = 22;
        const SIGNED: bool = true;
        const MIN: bool = false;
        #[inline(always)]
        unsafe fn q(p: *const u8) -> __m256i {
            // nibble | 0xF0 where the high bit is clear = value − 16 as i8 (and nibble where set)
            let high_clear = _mm256_andnot_si256(bits(p.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(nibbles(p.add(6)), high_clear)
        }
    }
    impl Kind for Q40 {
        const TS: usize = 18;
        const SIGNED: bool = true;
        const MIN: bool = false;
        #[inline(always)]
        unsafe fn q(p: *const u8) -> __m256i {
            _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8))
        }
    }
    impl Kind for Q41 {
        const TS: usize = 20;
        const SIGNED: bool = false;
        const MIN: bool = true;
        #[inline(always)]
        unsafe fn q(p: *const u8) -> __m256i {
            nibbles(p.add(4))
        }
    }
    impl Kind for Q80 {
        const TS: usize = 34;
        const SIGNED: bool = true;
        const MIN: bool = false;
        #[inline(always)]
        unsafe fn q(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p.add(2) as *const __m256i)
        }
    }

    /// 8 i32 lanes, lane l = Σ_{e=4l..4l+4} u[e]·s[e] (u unsigned bytes, s signed), as f32. Both
    /// strategies give the same exact integers (no i16 pair here can saturate).
    pub trait Lanes {
        unsafe fn lanes(u: __m256i, s: __m256i) -> __m256;
    }
    pub struct Madd;
    pub struct Vnni;
    impl Lanes for Madd {
        #[inline(always)]
        unsafe fn lanes(u: __m256i, s: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
        }
    }
    impl Lanes for Vnni {
        #[inline(always)]
        unsafe fn lanes(u: __m256i, s: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s))
        }
    }

    /// R weight rows × C activation rows: each weight block is unpacked once and used C times;
    /// every (row, col) keeps its own accumulator in ggml's order, so results equal 1×1 dots.
    #[inline(always)]
    unsafe fn tile_impl<K: Kind, L: Lanes, const R: usize, const C: usize>(
        w: *const u8,
        rb: usize,
        xs: [*const Q8Block; C],
        nb: usize,
        out: &mut [[f32; C]; R],
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut summs = [[0f32; C]; R];
        for i in 0..nb {
            let mut qy = [_mm256_setzero_si256(); C];
            let mut xd = [0f32; C];
            let mut xsum = [0f32; C];
            for c in 0..C {
                let xb = &*xs[c].add(i);
                qy[c] = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                xd[c] = xb.d;
                xsum[c] = xb.s;
            }
            for r in 0..R {
                let wb = w.add(r * rb + i * K::TS);
                let q = K::q(wb);
                let wd = f16_at(wb);
                let (u, m) = if K::SIGNED {
                    (_mm256_sign_epi8(q, q), 0.0)
                } else {
                    (q, if K::MIN { f16_at(wb.add(2)) } else { 0.0 })
                };
                for c in 0..C {
                    let s = if K::SIGNED { _mm256_sign_epi8(qy[c], q) } else { qy[c] };
                    if K::MIN {
                        summs[r][c] += m * xsum[c];
                    }
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd * xd[c]), L::lanes(u, s), acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                let mut a = [0f32; 8];
                _mm256_storeu_ps(a.as_mut_ptr(), acc[r][c]);
                out[r][c] = hsum8(a) + summs[r][c];
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_madd<K: Kind, const R: usize, const C: usize>(
        w: *const u8,
        rb: usize,
        xs: [*const Q8Block; C],
        nb: usize,
        out: &mut [[f32; C]; R],
    ) {
        tile_impl::<K, Madd, R, C>(w, rb, xs, nb, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn tile_vnni<K: Kind, const R: usize, const C: usize>(
        w: *const u8,
        rb: usize,
        xs: [*const Q8Block; C],
        nb: usize,
        out: &mut [[f32; C]; R],
    ) {
        tile_impl::<K, Vnni, R, C>(w, rb, xs, nb, out)
    }

    /// `quantize_row_q8` with 8-wide vectors; identical results (max is exact, rounding is the
    /// same round-half-to-even).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
        let sign = _mm256_set1_ps(-0.0);
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
            let p = xs.as_ptr();
            let v =
                [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
            let mut mx = _mm256_andnot_ps(sign, v[0]);
            for vi in &v[1..] {
                mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), mx);
            let amax = lanes.iter().fold(0f32, |a, &l| a.max(l));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let mut sum = _mm256_setzero_si256();
            let mut q = [0i32; 32];
            for (j, vi) in v.iter().enumerate() {
                let r = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(*vi, id),
                ));
                sum = _mm256_add_epi32(sum, r);
                _mm256_storeu_si256(q.as_mut_ptr().add(8 * j) as *mut __m256i, r);
            }
            let mut sl = [0i32; 8];
            _mm256_storeu_si256(sl.as_mut_ptr() as *mut __m256i, sum);
            // wrapping: non-finite activations (a corrupt model) convert to i32::MIN in every lane
            let total = sl.iter().fold(0i32, |a, &b| a.wrapping_add(b));
            for (o, &qi) in b.qs.iter_mut().zip(&q) {
                *o = qi as i8;
            }
            b.d = half::f16::from_f32(d).to_f32();
            b.s = half::f16::from_f32(d * total as f32).to_f32();
        }
    }
}

/// Which x86 dot-product strategy this CPU runs.
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl"))
}

/// True when the AVX2 kernels can run on this CPU.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// y[m, n] = x[m, k] · Wᵀ where W is `n` rows of `k` values in `ty` blocks.
pub fn matmul(ty: GgmlType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    assert!(
        supported(ty)
            && k.is_multiple_of(32)
            && w.len() == n * row_bytes(ty, k)
            && x.len() == m * k
            && y.len() == m * n
    );
    let nb = k / 32;
    let mut xq = vec![Q8Block::default(); m * nb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(nb)) {
        quantize_row_q8(row, q);
    }
    let rb = row_bytes(ty, k);
    // Weight rows are handed out in chunks; each chunk is streamed once for all m activation rows
    // and its results written straight into its columns of y.
    const CHUNK: usize = 32;
    let y_ptr = SyncPtr(y.as_mut_ptr());
    let task = |t: usize| {
        let (j0, j1) = (t * CHUNK, ((t + 1) * CHUNK).min(n));
        let mut part = [0f32; CHUNK * 4];
        let mut i0 = 0;
        while i0 < m {
            let mm = (m - i0).min(4);
            rows(
                ty,
                &w[j0 * rb..j1 * rb],
                rb,
                &xq[i0 * nb..(i0 + mm) * nb],
                nb,
                mm,
                j1 - j0,
                &mut part[..mm * (j1 - j0)],
            );
            for i in 0..mm {
                let dst = unsafe { std::slice::from_raw_parts_mut(y_ptr.get().add((i0 + i) * n + j0), j1 - j0) };
                dst.copy_from_slice(&part[i * (j1 - j0)..(i + 1) * (j1 - j0)]);
            }
            i0 += mm;
        }
    };
    super::team::global().run(n.div_ceil(CHUNK), &task);
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes only its own columns of y, and `matmul` waits for all of them.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `cols` weight rows against all m activation rows; `out` is [m, cols].
#[allow(clippy::too_many_arguments)]
fn rows(ty: GgmlType, w: &[u8], rb: usize, xq: &[Q8Block], nb: usize, m: usize, cols: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        match ty {
            GgmlType::Q4_0 => rows_x86::<avx2::Q40>(w, rb, xq, nb, m, cols, out),
            GgmlType::Q4_1 => rows_x86::<avx2::Q41>(w, rb, xq, nb, m, cols, out),
            GgmlType::Q5_0 => rows_x86::<avx2::Q50>(w, rb, xq, nb, m, cols, out),
            GgmlType::Q8_0 => rows_x86::<avx2::Q80>(w, rb, xq, nb, m, cols, out),
            _ => unreachable!("checked by supported()"),
        }
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        // SAFETY: simd128 is enabled for this build; the slices hold `cols` rows of `rb` bytes and
        // m·nb activation blocks (checked by `matmul`).
        unsafe { wasm::rows(ty, w, rb, xq, nb, m, cols, out) };
        #[allow(clippy::needless_return)]
        return;
    }
    #[allow(unreachable_code)]
    for j in 0..cols {
        for i in 0..m {
            out[i * cols + j] = dot_portable(ty, &w[j * rb..(j + 1) * rb], &xq[i * nb..(i + 1) * nb]);
        }
    }
}

/// One tile on the best strategy this CPU has.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` points at R rows of `rb` ≥ nb·K::TS bytes and each of `xs`
/// at `nb` activation blocks.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<K: avx2::Kind, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    xs: [*const Q8Block; C],
    nb: usize,
    out: &mut [[f32; C]; R],
) {
    if has_vnni() {
        avx2::tile_vnni::<K, R, C>(w, rb, xs, nb, out)
    } else {
        avx2::tile_madd::<K, R, C>(w, rb, xs, nb, out)
    }
}

#[cfg(target_arch = "x86_64")]
fn rows_x86<K: avx2::Kind>(w: &[u8], rb: usize, xq: &[Q8Block], nb: usize, m: usize, cols: usize, out: &mut [f32]) {
    // What keeps the raw reads in `tile` in bounds:
    assert!(rb >= nb * K::TS && w.len() >= cols * rb && xq.len() >= m * nb && out.len() >= m * cols);
    let x = |i: usize| xq[i * nb..].as_ptr();
    let mut j = 0;
    while j + 4 <= cols {
        let wp = w[j * rb..].as_ptr();
        let mut i = 0;
        while i + 4 <= m {
            let mut o = [[0f32; 4]; 4];
            // SAFETY: CPU features are checked by the caller; bounds are asserted above.
            unsafe { tile::<K, 4, 4>(wp, rb, [x(i), x(i + 1), x(i + 2), x(i + 3)], nb, &mut o) };
            for (r, or) in o.iter().enumerate() {
                for (c, v) in or.iter().enumerate() {
                    out[(i + c) * cols + j + r] = *v;
                }
            }
            i += 4;
        }
        while i < m {
            let mut o = [[0f32; 1]; 4];
            unsafe { tile::<K, 4, 1>(wp, rb, [x(i)], nb, &mut o) };
            for (r, or) in o.iter().enumerate() {
                out[i * cols + j + r] = or[0];
            }
            i += 1;
        }
        j += 4;
    }
    for jj in j..cols {
        for i in 0..m {
            let mut o = [[0f32; 1]; 1];
            unsafe { tile::<K, 1, 1>(w[jj * rb..].as_ptr(), rb, [x(i)], nb, &mut o) };
            out[i * cols + jj] = o[0][0];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::codec;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let v = ((s >> 8) as f32 / 16_777_216.0 - 0.5) * 2.0;
                if i % 97 == 0 {
                    v * 40.0
                } else {
                    v
                } // outliers, like real activations
            })
            .collect()
    }

    #[test]
    fn simd_and_portable_paths_agree_bit_for_bit() {
        if !has_avx2() {
            eprintln!("no AVX2 here: only the portable path is exercised");
            return;
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            let (n, k) = (7, 96);
            let w = codec::quantize(ty, &data(n * k, 1)).unwrap();
            let mut xq = vec![Q8Block::default(); k / 32];
            quantize_row_q8(&data(k, 2), &mut xq);
            for j in 0..n {
                let wr = &w[j * row_bytes(ty, k)..(j + 1) * row_bytes(ty, k)];
                let a = dot_portable(ty, wr, &xq);
                let mut b = [0f32];
                rows(ty, wr, wr.len(), &xq, xq.len(), 1, 1, &mut b);
                let b = b[0];
                assert_eq!(a.to_bits(), b.to_bits(), "{ty} row {j}: {a} vs {b}");
            }
        }
    }

    /// Both x86 strategies (maddubs+madd, and VNNI where the CPU has it) give identical bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn madd_and_vnni_strategies_agree() {
        if !has_avx2() || !has_vnni() {
            eprintln!("no AVX-512 VNNI here: only one strategy exists");
            return;
        }
        let (k, nb) = (128, 4);
        let w = codec::quantize(GgmlType::Q4_1, &data(4 * k, 12)).unwrap();
        let mut xq = vec![Q8Block::default(); 4 * nb];
        for (i, q) in xq.chunks_exact_mut(nb).enumerate() {
            quantize_row_q8(&data(k, 20 + i as u32), q);
        }
        let xs = [0, 1, 2, 3].map(|i| xq[i * nb..].as_ptr());
        let (mut a, mut b) = ([[0f32; 4]; 4], [[0f32; 4]; 4]);
        unsafe {
            avx2::tile_madd::<avx2::Q41, 4, 4>(w.as_ptr(), w.len() / 4, xs, nb, &mut a);
            avx2::tile_vnni::<avx2::Q41, 4, 4>(w.as_ptr(), w.len() / 4, xs, nb, &mut b);
        }
        assert_eq!(a.map(|r| r.map(f32::to_bits)), b.map(|r| r.map(f32::to_bits)));
    }

    /// Regression: infinite activations (from a corrupt model) made the vector quantizer's lane sum
    /// overflow. They now give garbage values, never a panic.
    #[test]
    fn non_finite_activations_do_not_panic() {
        let w = codec::quantize(GgmlType::Q4_1, &data(4 * 64, 1)).unwrap();
        let mut x = data(2 * 64, 2);
        // two infinities in different lanes of one block: each becomes inf·0 = NaN → i32::MIN
        x[0] = f32::INFINITY;
        x[1] = f32::INFINITY;
        x[70] = f32::NAN;
        let mut y = vec![0f32; 2 * 4];
        matmul(GgmlType::Q4_1, &w, 4, 64, &x, 2, &mut y);
    }

    #[test]
    fn vector_and_portable_activation_quantization_agree() {
        let x = data(32 * 50, 9);
        let mut a = vec![Q8Block::default(); 50];
        let mut b = vec![Q8Block::default(); 50];
        quantize_row_q8(&x, &mut a);
        quantize_row_q8_portable(&x, &mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(p.qs == q.qs && p.d.to_bits() == q.d.to_bits() && p.s.to_bits() == q.s.to_bits(), "block {i}");
        }
    }

    /// Every tile shape (4×4, 4×1, tails) gives exactly the portable per-element result.
    #[test]
    fn tiled_matmul_equals_portable_dots_bit_for_bit() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            let (m, n, k) = (9, 13, 64);
            let w = codec::quantize(ty, &data(n * k, 5)).unwrap();
            let x = data(m * k, 6);
            let mut y = vec![0f32; m * n];
            matmul(ty, &w, n, k, &x, m, &mut y);
            let rb = row_bytes(ty, k);
            for i in 0..m {
                let mut xq = vec![Q8Block::default(); k / 32];
                quantize_row_q8(&x[i * k..(i + 1) * k], &mut xq);
                for j in 0..n {
                    let want = dot_portable(ty, &w[j * rb..(j + 1) * rb], &xq);
                    assert_eq!(y[i * n + j].to_bits(), want.to_bits(), "{ty} ({i},{j})");
                }
            }
        }
    }

    /// The kernel computes Σ dequant(x̂)·dequant(W) where x̂ is the 8-bit activation: checked against
    /// that sum done in f64 (the only differences left are f32 rounding).
    #[test]
    fn matmul_equals_the_product_of_dequantized_operands() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
            let (m, n, k) = (3, 37, 128);
            let w = codec::quantize(ty, &data(n * k, 3)).unwrap();
            let mut wf = vec![0f32; n * k];
            codec::dequantize(ty, &w, &mut wf).unwrap();
            let x = data(m * k, 4);
            let mut y = vec![0f32; m * n];
            matmul(ty, &w, n, k, &x, m, &mut y);
            for i in 0..m {
                let mut xq = vec![Q8Block::default(); k / 32];
                quantize_row_q8(&x[i * k..(i + 1) * k], &mut xq);
                for j in 0..n {
                    let mut exact = 0f64;
                    let mut scale = 0f64;
                    for (b, xb) in xq.iter().enumerate() {
                        for e in 0..32 {
                            let wv = wf[j * k + b * 32 + e] as f64;
                            let xv = xb.qs[e] as f64 * xb.d as f64;
                            exact += xv * wv;
                            scale += (xv * wv).abs();
                        }
                        if ty == GgmlType::Q4_1 {
                            // ggml uses the stored s = f16(d·Σq) for the min term m·d·Σq
                            let off = (j * (k / 32) + b) * 20;
                            let wm = f16::from_le_bytes([w[off + 2], w[off + 3]]).to_f32() as f64;
                            let sum_q: i32 = xb.qs.iter().map(|&q| q as i32).sum();
                            exact += wm * (xb.s as f64 - xb.d as f64 * sum_q as f64);
                        }
                    }
                    let got = y[i * n + j] as f64;
                    assert!((got - exact).abs() <= 1e-5 * scale + 1e-4, "{ty} ({i},{j}): {got} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn activation_quantization_rounds_half_to_even() {
        // 127/amax = 1 → values are rounded as they are
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        let mut q = [Q8Block::default()];
        quantize_row_q8(&x, &mut q);
        assert_eq!(&q[0].qs[..4], &[127, 2, -2, 4]);
        assert_eq!(q[0].d, 1.0);
        assert_eq!(q[0].s, 131.0);
    }
}
