//! bf16 products for frozen base weights while training: on Intel AMX tiles, or with AVX512-BF16
//! dot products (AMD Zen 4+, Intel Cooper Lake+), where the CPU has them.
//!
//! A frozen weight W [n, k] is rounded to bf16 once and packed in AMX's tile layout: 16 columns
//! × 32 reduction values per 1 KiB tile, the reduction values in adjacent pairs (what `tdpbf16ps`
//! reads). A tile's row of 16 column pairs is also exactly one 512-bit operand of `vdpbf16ps`, so
//! the AVX-512 kernel reads the same packing. A product rounds the activations to bf16 too and
//! accumulates in f32. Training needs two packings of each weight: W for the forward product x·Wᵀ
//! and Wᵀ for the input gradient dY·W.
//!
//! Where neither is present (other CPUs, wasm) the same bf16 values are multiplied in f32 by
//! candle's gemm: the results differ only in summation order.

use crate::gguf::codec::{bf16_bits_to_f32 as from_bf16, f32_to_bf16_bits as to_bf16};

const TILE_ROWS: usize = 16; // pairs of reduction values per tile
const TILE_COLS: usize = 16; // output columns per tile
const TILE_K: usize = 32; // reduction values per tile
const TILE_LEN: usize = TILE_ROWS * TILE_COLS * 2; // u16 values
/// Outputs are computed in blocks of 32 rows × 32 columns (2 × 2 accumulator tiles).
const BLOCK: usize = 32;

/// A matrix M [n, k] in bf16, packed so that x [m, k] · Mᵀ runs on AMX tiles; n and k are padded
/// with zeros to multiples of 32.
pub struct PackedBf16 {
    pub n: usize,
    pub k: usize,
    n_pad: usize,
    k_pad: usize,
    tiles: Vec<u16>,
}

impl PackedBf16 {
    /// Packs `m(i, j)` for i < n, j < k.
    fn pack(n: usize, k: usize, m: impl Fn(usize, usize) -> f32) -> Self {
        let (n_pad, k_pad) = (n.div_ceil(BLOCK) * BLOCK, k.div_ceil(BLOCK) * BLOCK);
        let (n_tiles, k_tiles) = (n_pad / TILE_COLS, k_pad / TILE_K);
        let mut tiles = vec![0u16; n_pad * k_pad];
        for nb in 0..n_tiles {
            for kb in 0..k_tiles {
                let tile = &mut tiles[(nb * k_tiles + kb) * TILE_LEN..][..TILE_LEN];
                for r in 0..TILE_ROWS {
                    for c in 0..TILE_COLS {
                        for e in 0..2 {
                            let (i, j) = (nb * TILE_COLS + c, kb * TILE_K + 2 * r + e);
                            if i < n && j < k {
                                tile[r * TILE_COLS * 2 + c * 2 + e] = to_bf16(m(i, j));
                            }
                        }
                    }
                }
            }
        }
        PackedBf16 { n, k, n_pad, k_pad, tiles }
    }

    /// W [n, k] (row-major), for x·Wᵀ.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "a {n}×{k} matrix");
        Self::pack(n, k, |i, j| w[i * k + j])
    }

    /// Wᵀ of W [n, k] (row-major), for y·W.
    pub fn transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "a {n}×{k} matrix");
        Self::pack(k, n, |i, j| w[j * k + i])
    }

    /// The bf16 value at (i, j), widened.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        debug_assert!(i < self.n_pad && j < self.k_pad);
        let (nb, c, kb, jj) = (i / TILE_COLS, i % TILE_COLS, j / TILE_K, j % TILE_K);
        let tile = (nb * (self.k_pad / TILE_K) + kb) * TILE_LEN;
        from_bf16(self.tiles[tile + (jj / 2) * TILE_COLS * 2 + c * 2 + jj % 2])
    }

    /// The matrix in f32 [n, k] (the portable path, tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for i in 0..self.n {
            out.extend((0..self.k).map(|j| self.get(i, j)));
        }
        out
    }

    /// x [m, k] · Mᵀ → [m, n], x rounded to bf16, sums in f32, on the fastest kernel here.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_on(kernel(), x, m)
    }

    /// The same product on a given kernel (tests compare them); one this CPU lacks runs portably.
    pub fn matmul_on(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "x is {m}×{}", self.k);
        match kernel {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            Kernel::Amx if amx::available() => self.blocked(x, m, |xb, mb, cols, out| {
                // SAFETY: the tile state is granted (available()); see amx::block_row.
                unsafe { amx::block_row(self, xb, mb, cols, out) }
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 if avx512::available() => self.blocked(x, m, |xb, mb, cols, out| {
                // SAFETY: the CPU has AVX512-F and AVX512-BF16 (available()); see avx512::block_row.
                unsafe { avx512::block_row(self, xb, mb, cols, out) }
            }),
            _ => self.matmul_portable(x, m),
        }
    }

    /// Runs a blocked kernel: the activations rounded to bf16 in a zero-padded [m_pad, k_pad]
    /// buffer, output blocks of 32 rows × up to 8·32 columns spread over the thread team, the
    /// padding cut off the [m_pad, n_pad] result. `block` computes the rows `mb`·32.. of the column
    /// blocks `cols` (32 columns each) and must write only there.
    #[cfg(target_arch = "x86_64")]
    fn blocked(
        &self,
        x: &[f32],
        m: usize,
        block: impl Fn(&[u16], usize, std::ops::Range<usize>, &Out) + Sync,
    ) -> Vec<f32> {
        let (k, k_pad, n_pad) = (self.k, self.k_pad, self.n_pad);
        let m_pad = m.div_ceil(BLOCK) * BLOCK;
        let mut xb = vec![0u16; m_pad * k_pad];
        for (row, xr) in xb.chunks_exact_mut(k_pad).zip(x.chunks_exact(k)) {
            for (o, &v) in row.iter_mut().zip(xr) {
                *o = to_bf16(v);
            }
        }
        let mut y = vec![0f32; m_pad * n_pad];
        let (m_blocks, n_blocks) = (m_pad / BLOCK, n_pad / BLOCK);
        let n_groups = n_blocks.div_ceil(8);
        let out = Out(y.as_mut_ptr());
        let task = |t: usize| {
            let (mb, g) = (t / n_groups, t % n_groups);
            block(&xb, mb, g * 8..((g + 1) * 8).min(n_blocks), &out);
        };
        super::team::global().run(m_blocks * n_groups, &task);
        if n_pad == self.n {
            y.truncate(m * self.n);
            return y;
        }
        let mut out = Vec::with_capacity(m * self.n);
        for row in y.chunks_exact(n_pad).take(m) {
            out.extend_from_slice(&row[..self.n]);
        }
        out
    }

    /// The same product through candle's f32 gemm on the bf16 values.
    pub fn matmul_portable(&self, x: &[f32], m: usize) -> Vec<f32> {
        use candle_core::{Device, Tensor};
        let xs: Vec<f32> = x.iter().map(|&v| from_bf16(to_bf16(v))).collect();
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_vec(xs, (m, self.k), &Device::Cpu)?;
            let w = Tensor::from_vec(self.to_f32(), (self.n, self.k), &Device::Cpu)?;
            x.matmul(&w.t()?)?.flatten_all()?.to_vec1()
        };
        run().expect("an f32 matmul of checked shapes")
    }
}

/// How bf16 products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 dot products (`vdpbf16ps`).
    Avx512Bf16,
    /// candle's f32 gemm on the bf16 values.
    Portable,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "AMX tiles",
            Kernel::Avx512Bf16 => "AVX512-BF16",
            Kernel::Portable => "f32 products of bf16 values",
        }
    }
}

/// The fastest kernel on this CPU.
pub fn kernel() -> Kernel {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if amx::available() {
        return Kernel::Amx;
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return Kernel::Avx512Bf16;
    }
    Kernel::Portable
}

/// Raw output pointer shared by a product's tasks, each writing its own blocks.
#[cfg(target_arch = "x86_64")]
struct Out(*mut f32);
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Out {}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use super::{Out, PackedBf16, BLOCK, TILE_COLS, TILE_K, TILE_LEN};

    /// AMX-BF16 is on the CPU and Linux granted this process the tile state (arch_prctl
    /// ARCH_REQ_XCOMP_PERM for XTILEDATA, once per process). `VIGIL_NO_AMX=1` turns it off.
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            if std::env::var_os("VIGIL_NO_AMX").is_some_and(|v| v != "0") {
                return false;
            }
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE (std's detection of them is unstable)
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        })
    }

    /// Palette 1, eight tiles of 16 rows × 64 bytes: 0–3 accumulators, 4–5 activations, 6–7 weights.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64; // bytes per row
                c[48 + t] = 16; // rows
            }
            TileConfig(c)
        }
    }

    /// One task of `PackedBf16::blocked`: rows mb·32.. × the 32-column blocks `cols`.
    ///
    /// SAFETY: the caller has the tile state (`available()`); `xb` is [m_pad, k_pad] and `out`
    /// [m_pad, n_pad] as `blocked` makes them. Tiles are configured before use and released after;
    /// every load reads inside xb / w.tiles (rows of k_pad values, whole packed tiles) and every
    /// store writes a 32×32 block of out that no other task writes.
    #[inline(never)]
    pub(super) unsafe fn block_row(w: &PackedBf16, xb: &[u16], mb: usize, cols: std::ops::Range<usize>, out: &Out) {
        let (k_pad, n_pad) = (w.k_pad, w.n_pad);
        let k_tiles = k_pad / TILE_K;
        let x_stride = k_pad * 2; // bytes per activation row
        let y_stride = n_pad * 4;
        let cfg = TileConfig::new();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let x0 = xb.as_ptr().add(mb * BLOCK * k_pad);
        let x1 = x0.add(16 * k_pad);
        for nb2 in cols {
            let (nb0, nb1) = (2 * nb2, 2 * nb2 + 1);
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for kb in 0..k_tiles {
                let a0 = x0.add(kb * TILE_K);
                let a1 = x1.add(kb * TILE_K);
                let b0 = w.tiles.as_ptr().add((nb0 * k_tiles + kb) * TILE_LEN);
                let b1 = w.tiles.as_ptr().add((nb1 * k_tiles + kb) * TILE_LEN);
                asm!(
                    "tileloadd tmm4, [{a0} + {xs}*1]",
                    "tileloadd tmm5, [{a1} + {xs}*1]",
                    "tileloadd tmm6, [{b0} + {ws}*1]",
                    "tileloadd tmm7, [{b1} + {ws}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                    xs = in(reg) x_stride, ws = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            let y0 = out.0.add(mb * BLOCK * n_pad + nb0 * TILE_COLS);
            let y1 = y0.add(16 * n_pad);
            asm!(
                "tilestored [{y0} + {ys}*1], tmm0",
                "tilestored [{y0b} + {ys}*1], tmm1",
                "tilestored [{y1} + {ys}*1], tmm2",
                "tilestored [{y1b} + {ys}*1], tmm3",
                y0 = in(reg) y0, y0b = in(reg) y0.add(TILE_COLS), y1 = in(reg) y1, y1b = in(reg) y1.add(TILE_COLS),
                ys = in(reg) y_stride,
                options(nostack),
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{Out, PackedBf16, BLOCK, TILE_COLS, TILE_K, TILE_LEN};

    /// Rows per micro-kernel: 8 rows × 32 columns keep 16 accumulators in registers.
    const ROWS: usize = 8;

    /// AVX512-F and AVX512-BF16 are on the CPU. `VIGIL_NO_AVX512BF16=1` turns the kernel off.
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::env::var_os("VIGIL_NO_AVX512BF16").is_none_or(|v| v == "0")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bf16")
        })
    }

    /// One task of `PackedBf16::blocked`: rows mb·32.. × the 32-column blocks `cols`.
    ///
    /// Row r of a packed tile holds, for its 16 columns, the reduction values 2r and 2r+1: one
    /// 512-bit `vdpbf16ps` operand. The tiles of a column tile are consecutive along k, so its
    /// whole panel is k_pad/2 such vectors; an activation pair (x[2p], x[2p+1]) is one 32-bit
    /// value broadcast to all 16 lanes.
    ///
    /// SAFETY: the CPU has AVX512-F and AVX512-BF16; `xb` is [m_pad, k_pad] and `out`
    /// [m_pad, n_pad] as `blocked` makes them (m_pad a multiple of 32), so every read stays inside
    /// xb / w.tiles and every write inside this task's rows and columns of out.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block_row(w: &PackedBf16, xb: &[u16], mb: usize, cols: std::ops::Range<usize>, out: &Out) {
        let (k_pad, n_pad) = (w.k_pad, w.n_pad);
        let (pairs, k_tiles) = (k_pad / 2, k_pad / TILE_K);
        debug_assert!(xb.len() >= (mb + 1) * BLOCK * k_pad && w.tiles.len() == n_pad * k_pad);
        let x = xb.as_ptr() as *const i32; // activation pairs
        for nb2 in cols {
            let (nb0, nb1) = (2 * nb2, 2 * nb2 + 1);
            let b0 = w.tiles.as_ptr().add(nb0 * k_tiles * TILE_LEN);
            let b1 = w.tiles.as_ptr().add(nb1 * k_tiles * TILE_LEN);
            for sub in 0..BLOCK / ROWS {
                let row0 = mb * BLOCK + sub * ROWS;
                let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                for p in 0..pairs {
                    let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(p * 2 * TILE_COLS) as *const _));
                    let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(p * 2 * TILE_COLS) as *const _));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add((row0 + r) * pairs + p)));
                        acc[0] = _mm512_dpbf16_ps(acc[0], a, w0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], a, w1);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let y = out.0.add((row0 + r) * n_pad + nb0 * TILE_COLS);
                    _mm512_storeu_ps(y, acc[0]);
                    _mm512_storeu_ps(y.add(TILE_COLS), acc[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64, n: usize) -> Vec<f32> {
        crate::testing::randn(&[n], 0.5, seed).to_vec1().unwrap()
    }

    #[test]
    fn packing_keeps_every_value_and_its_transpose() {
        let (n, k) = (40, 70); // neither a multiple of 32
        let w = data(1, n * k);
        let p = PackedBf16::new(&w, n, k);
        let t = PackedBf16::transposed(&w, n, k);
        for i in 0..n {
            for j in 0..k {
                let v = from_bf16(to_bf16(w[i * k + j]));
                assert_eq!(p.get(i, j), v);
                assert_eq!(t.get(j, i), v);
            }
        }
    }

    /// Every kernel (those this CPU lacks fall back to the portable one) against f64 sums of the
    /// same bf16 values, over shapes with and without padding, one block and many.
    #[test]
    fn products_equal_the_bf16_values_summed_exactly() {
        eprintln!("fastest kernel here: {:?}", kernel());
        for &(m, n, k) in &[(1, 16, 32), (5, 40, 70), (32, 64, 64), (100, 576, 192), (67, 96, 1536)] {
            let w = data(m as u64 * 7 + n as u64, n * k);
            let x = data(k as u64 + 3, m * k);
            let p = PackedBf16::new(&w, n, k);
            for kernel in [Kernel::Amx, Kernel::Avx512Bf16, Kernel::Portable] {
                let y = p.matmul_on(kernel, &x, m);
                assert_eq!(y.len(), m * n);
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 =
                            (0..k).map(|l| from_bf16(to_bf16(x[i * k + l])) as f64 * p.get(j, l) as f64).sum();
                        let tol = 1e-5 * (k as f64).sqrt() * 4.0;
                        assert!(
                            (y[i * n + j] as f64 - exact).abs() < tol,
                            "{kernel:?} ({m},{n},{k}) [{i},{j}]: {} vs {exact}",
                            y[i * n + j]
                        );
                    }
                }
            }
        }
    }
}
