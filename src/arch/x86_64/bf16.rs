//! AVX512-BF16: the GEMM tile of the bf16 precision ([`crate::gemm::Precision::Bf16`]).
//!
//! The packed GEMM packs its panels as for f32 (`MR = 8` rows of A, `NR = 32` columns of B, the
//! AVX-512 tile) and then [`Bf16::pair_rows`] turns each panel, in place, into bf16 *pairs*: the
//! two steps `2p` and `2p + 1` of one row or column, rounded to bf16 (nearest even), share one
//! 32-bit slot. One `vdpbf16ps` then adds both products of 16 pairs to 16 f32 sums, twice the
//! multiply-adds of an f32 `vfmadd` per instruction. Within a pair the instruction adds the odd
//! step's product and then the even one's, each rounded to f32 (the products of two bf16 numbers
//! are exact in f32); subnormal inputs and results are flushed to zero.

#![allow(unsafe_code)]

use crate::arch::isa::Isa;
use crate::arch::kernel::tile_fits;
use std::arch::x86_64::*;

/// The bf16 tile; a value exists only on CPUs with AVX512-BF16 (and AVX-512F, -BW, -VL), and
/// while [`crate::arch::active`] allows [`Isa::Avx512Bf16`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bf16(());

impl Bf16 {
    /// Rows of A per tile (the AVX-512 tile's, so the f32 packing serves both).
    pub(crate) const MR: usize = 8;
    /// Columns of B per tile.
    pub(crate) const NR: usize = 32;

    /// The token, if this CPU has AVX512-BF16 and no [`crate::arch::limit`] excludes it.
    pub(crate) fn new() -> Option<Self> {
        (crate::arch::isa::active() >= Isa::Avx512Bf16).then_some(Bf16(()))
    }

    /// Turns a packed panel of `kc` steps of `w` floats (step `k` at `panel[k·w..][..w]`) into
    /// `ceil(kc / 2)` steps of `w` bf16 pairs, in place: slot `p·w + j` holds step `2p`'s
    /// element `j` rounded to bf16 in its low 16 bits and step `2p + 1`'s in its high 16 bits
    /// (zero past `kc`). The slots past `ceil(kc / 2)·w` are left as they were.
    ///
    /// Panics (a programming error) unless `w` is a multiple of 8 and `panel` holds `kc·w`
    /// floats.
    pub(crate) fn pair_rows(self, panel: &mut [f32], kc: usize, w: usize) {
        assert!(
            w.is_multiple_of(8) && kc.checked_mul(w).is_some_and(|n| n <= panel.len()),
            "bf16 pairs: a panel of {kc} steps of {w} in {} floats",
            panel.len()
        );
        // SAFETY: `self` exists, so the CPU has AVX512-BF16, -BW and -VL. Step `p` reads
        // `panel[2p·w..][..w]` and, when `2p + 1 < kc`, `panel[(2p + 1)·w..][..w]`, all below
        // `kc·w <= panel.len()` (checked above), and writes `panel[p·w..][..w]`: below the
        // reads of every later step (`p·w + w <= 2(p + 1)·w`), and for `p = 0` each 8-float
        // group is read before it is written.
        unsafe { pair_rows_raw(panel.as_mut_ptr(), kc, w) }
    }

    /// One step of pairs from two rows, as [`Bf16::pair_rows`] makes it: `out[j]` holds
    /// `even[j]` rounded to bf16 in its low 16 bits and `odd[j]` (zero without `odd`) in its
    /// high 16 bits, for `j < out.len()`.
    ///
    /// Panics (a programming error) unless `even`, `odd` and `out` have one length, a multiple
    /// of 8.
    pub(crate) fn pair_two(self, even: &[f32], odd: Option<&[f32]>, out: &mut [f32]) {
        let w = out.len();
        assert!(
            w.is_multiple_of(8) && even.len() == w && odd.is_none_or(|o| o.len() == w),
            "bf16 pairs: rows of {} and {:?} into {w}",
            even.len(),
            odd.map(<[f32]>::len)
        );
        // SAFETY: `self` exists, so the CPU has AVX512-BF16, -BW and -VL; every group of 8
        // reads `even[j..j + 8]` (and `odd[j..j + 8]`) and writes `out[j..j + 8]`, `j + 8 <= w`,
        // all three of length `w` (checked above); `out` is a distinct mutable slice.
        unsafe {
            let hi = odd.map_or(std::ptr::null(), <[f32]>::as_ptr);
            pair_raw(even.as_ptr(), hi, out.as_mut_ptr(), w);
        }
    }

    /// `C[i, j] = alpha·Σ_{p<k2} (a[2p][i]·b[2p][j] + a[2p+1][i]·b[2p+1][j]) + beta·C[i, j]` for
    /// `i < MR`, `j < NR`, over the pairs [`Bf16::pair_rows`] made (`a[..k2·MR]`, `b[..k2·NR]`);
    /// row `i` of `C` at `c[i·rs..]`, not read when `beta == 0`.
    ///
    /// Panics (a programming error) if any read or write would leave its slice.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tile(
        self,
        k2: usize,
        a: &[f32],
        b: &[f32],
        alpha: f32,
        beta: f32,
        c: &mut [f32],
        rs: usize,
    ) {
        assert!(
            k2.checked_mul(Self::MR).is_some_and(|n| n <= a.len())
                && k2.checked_mul(Self::NR).is_some_and(|n| n <= b.len()),
            "bf16 GEMM tile: packed panels shorter than k"
        );
        assert!(
            tile_fits(c.len(), Self::MR, Self::NR, rs),
            "C tile out of bounds"
        );
        // SAFETY: `self` exists, so the CPU has AVX512-BF16 and AVX-512F. Reads stay within
        // `a[..k2·MR]` and `b[..k2·NR]`, C accesses within `(MR−1)·rs + NR <= c.len()` (both
        // checked above); the slices come from references, `c` the only mutable one.
        unsafe { tile_raw(k2, a.as_ptr(), b.as_ptr(), alpha, beta, c.as_mut_ptr(), rs) }
    }
}

/// [`Bf16::pair_rows`]'s loop.
///
/// # Safety
/// AVX512-BF16, -BW and -VL; `w % 8 == 0`; `p[..kc·w]` readable and writable.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pair_rows_raw(p: *mut f32, kc: usize, w: usize) {
    // SAFETY: the caller's contract; see `Bf16::pair_rows` for why the in-place order is safe.
    unsafe {
        for s in 0..kc.div_ceil(2) {
            let r0 = p.add(2 * s * w);
            let r1 = if 2 * s + 1 < kc {
                r0.add(w) as *const f32
            } else {
                std::ptr::null()
            };
            pair_raw(r0, r1, p.add(s * w), w);
        }
    }
}

/// `w` pairs: `out[j]` = bf16(`lo[j]`) in the low half and bf16(`hi[j]`) (zero when `hi` is
/// null) in the high half, sixteen at a time, then eight. Each group's inputs are read before
/// its output is written, and `out` runs no further ahead than `lo`.
///
/// # Safety
/// AVX512-BF16, -BW and -VL; `w % 8 == 0`; `lo[..w]` (and `hi[..w]` unless null) readable,
/// `out[..w]` writable; `out` does not overlap `lo` or `hi` except as `out == lo`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pair_raw(lo: *const f32, hi: *const f32, out: *mut f32, w: usize) {
    // Element `2i` of the result takes bf16 `i` (the even step), element `2i + 1` bf16 `16 + i`.
    const IDX16: [i16; 32] = [
        0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12,
        28, 13, 29, 14, 30, 15, 31,
    ];
    // SAFETY: the caller's contract.
    unsafe {
        let idx = _mm512_loadu_si512(IDX16.as_ptr() as *const __m512i);
        let at = |p: *const f32, j: usize| {
            if p.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(p.add(j))
            }
        };
        let mut j = 0;
        while j + 16 <= w {
            let b: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(at(hi, j), at(lo, j)));
            _mm512_storeu_si512(out.add(j) as *mut __m512i, _mm512_permutexvar_epi16(idx, b));
            j += 16;
        }
        if j < w {
            let h = if hi.is_null() { hi } else { hi.add(j) };
            pair8(lo.add(j), h, out.add(j));
        }
    }
}

/// Eight pairs: `out[j]` = bf16(`lo[j]`) in the low half and bf16(`hi[j]`) (zero when `hi` is
/// null) in the high half, for `j < 8`. Both inputs are read before `out` is written.
///
/// # Safety
/// AVX512-BF16, -BW and -VL; `lo[..8]` (and `hi[..8]` unless null) readable, `out[..8]`
/// writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pair8(lo: *const f32, hi: *const f32, out: *mut f32) {
    // Element `2i` of the result takes bf16 `i` (the even step), element `2i + 1` bf16 `8 + i`.
    const IDX: [i16; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];
    // SAFETY: the caller's contract.
    unsafe {
        let idx = _mm256_loadu_si256(IDX.as_ptr() as *const __m256i);
        let l = _mm256_loadu_ps(lo);
        let h = if hi.is_null() {
            _mm256_setzero_ps()
        } else {
            _mm256_loadu_ps(hi)
        };
        let both = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(l)),
            _mm256_castps_pd(h),
        ));
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(both));
        _mm256_storeu_si256(out as *mut __m256i, _mm256_permutexvar_epi16(idx, b));
    }
}

/// [`Bf16::tile`]'s body.
///
/// # Safety
/// AVX512-BF16 and AVX-512F; `a[..k2·8]` and `b[..k2·32]` readable; `c[i·rs + j]` readable and
/// writable for `i < 8`, `j < 32`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn tile_raw(
    k2: usize,
    a: *const f32,
    b: *const f32,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rs: usize,
) {
    const MR: usize = Bf16::MR;
    const NR: usize = Bf16::NR;
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for i in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs + NR - 1) as *const i8);
        }
        for s in 0..k2 {
            let bp = b.add(s * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_ps(bp));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_ps(bp.add(16)));
            let ap = a.add(s * MR) as *const i32;
            for (i, row) in acc.iter_mut().enumerate() {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i)));
                row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
            }
        }
        let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (i, row) in acc.into_iter().enumerate() {
            for (v, r) in row.into_iter().enumerate() {
                let q = c.add(i * rs + v * 16);
                let mut r = _mm512_mul_ps(r, va);
                if beta != 0.0 {
                    r = _mm512_fmadd_ps(_mm512_loadu_ps(q), vb, r);
                }
                _mm512_storeu_ps(q, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bf16;
    use crate::arch::bf16::round_bf16;
    use crate::arch::tests::{c_tile, values};

    /// Exactly what the instruction computes, in scalar f32: per pair, the odd step's product
    /// and then the even one's added to the sum, each rounded once (bf16 products are exact).
    fn reference(k: usize, a: &[f32], b: &[f32], i: usize, j: usize) -> f32 {
        let (mr, nr) = (Bf16::MR, Bf16::NR);
        let at = |p: usize, src: &[f32], w: usize, x: usize| {
            if p < k {
                round_bf16(src[p * w + x])
            } else {
                0.0
            }
        };
        let mut acc = 0.0f32;
        for s in 0..k.div_ceil(2) {
            acc += at(2 * s + 1, a, mr, i) * at(2 * s + 1, b, nr, j);
            acc += at(2 * s, a, mr, i) * at(2 * s, b, nr, j);
        }
        acc
    }

    /// The pairs and the tile against [`reference`], bit for bit: odd and even `k`, across a
    /// packed block, four alpha/beta modes, C rows further apart than the tile (the gap stays).
    #[test]
    fn the_bf16_tile_is_the_pairwise_sum_of_rounded_products() {
        let Some(kern) = Bf16::new() else {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        };
        let (mr, nr) = (Bf16::MR, Bf16::NR);
        for k in [0, 1, 2, 3, 7, 64, 257] {
            let (a0, b0) = (values(11, k * mr), values(12, k * nr));
            let (mut a, mut b) = (a0.clone(), b0.clone());
            kern.pair_rows(&mut a, k, mr);
            kern.pair_rows(&mut b, k, nr);
            for (alpha, beta) in [(1.0, 0.0), (-2.0, 0.0), (1.0, 1.0), (0.5, -1.5)] {
                let rs = nr + 5;
                let mut c = c_tile(13, mr, nr, rs, beta);
                let mut want = c.clone();
                for i in 0..mr {
                    for j in 0..nr {
                        let mut r = reference(k, &a0, &b0, i, j) * alpha;
                        if beta != 0.0 {
                            r = want[i * rs + j].mul_add(beta, r);
                        }
                        want[i * rs + j] = r;
                    }
                }
                kern.tile(k.div_ceil(2), &a, &b, alpha, beta, &mut c, rs);
                crate::arch::tests::same_bits(&format!("bf16 k={k} beta={beta}"), &c, &want);
            }
        }
    }
}
