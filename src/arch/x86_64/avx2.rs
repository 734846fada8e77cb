//! AVX2 + FMA: 256-bit registers (eight floats), a 6x16 register tile (twelve accumulators, two
//! B registers and one broadcast: 15 of the 16 `ymm` registers).

#![allow(unsafe_code)]

use crate::arch::isa::Isa;
use crate::arch::kernel::Vector;
use crate::arch::kernel::instantiate::micro_kernels;
use std::arch::x86_64::*;

/// The AVX2/FMA micro-kernels; a value exists only on CPUs with AVX2 and FMA.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The token, if this CPU has AVX2 and FMA.
    pub(crate) fn new() -> Option<Self> {
        (Isa::detected() >= Isa::Avx2Fma).then_some(Avx2(()))
    }
}

/// One `ymm` register.
#[derive(Clone, Copy)]
pub(crate) struct Ymm(__m256);

// SAFETY: `N` is the 256-bit register's width in floats; each method is the one intrinsic that
// performs its operation (unaligned loads and stores of exactly `N` floats, IEEE f32 arithmetic,
// `mul_add` a single fused multiply-add), and the transposes and pool helpers touch only the
// addresses their contracts name.
unsafe impl Vector for Ymm {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX (the caller's contract).
        Ymm(unsafe { _mm256_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX (the caller's contract).
        Ymm(unsafe { _mm256_set1_ps(v) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: p[..8] readable and AVX (the caller's contract).
        Ymm(unsafe { _mm256_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: p[..8] writable and AVX (the caller's contract).
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: FMA (the caller's contract).
        Ymm(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: AVX (the caller's contract).
        Ymm(unsafe { _mm256_add_ps(self.0, b.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        // SAFETY: AVX (the caller's contract).
        Ymm(unsafe { _mm256_mul_ps(self.0, b.0) })
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: as `transpose8_ymm` (the caller's contract).
        unsafe { transpose8_ymm(src, ss, dst, ds) }
    }
    #[inline(always)]
    unsafe fn max2x2(
        r0: *const f32,
        r1: *const f32,
        lanes: usize,
        first: u32,
        in_w: u32,
        y: *mut f32,
        idx: *mut u32,
        affine: Option<[f32; 2]>,
        at_max: *mut f32,
    ) {
        // SAFETY: AVX2; the loads read r0[..2·lanes] and r1[..2·lanes] only (masked loads
        // below a whole register: masked lanes are not accessed), the stores write y[..lanes]
        // and, when they are not null, idx[..lanes] and at_max[..lanes] only (the
        // caller's contract).
        unsafe {
            let [m, lo, hi] = masks(lanes);
            let split = |r: *const f32| {
                let (a, b) = if lanes == 8 {
                    (_mm256_loadu_ps(r), _mm256_loadu_ps(r.add(8)))
                } else {
                    (_mm256_maskload_ps(r, lo), _mm256_maskload_ps(r.add(8), hi))
                };
                // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6], and the odd ones.
                let gather = |s: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(s)))
                };
                (
                    gather(_mm256_shuffle_ps::<0x88>(a, b)),
                    gather(_mm256_shuffle_ps::<0xDD>(a, b)),
                )
            };
            let ((c0, c1), (c2, c3)) = (split(r0), split(r1));
            let map = |c: __m256| match affine {
                Some([a, b]) => _mm256_fmadd_ps(c, _mm256_set1_ps(a), _mm256_set1_ps(b)),
                None => c,
            };
            // As the AVX-512 version: the first candidate is the scalar loop's first step.
            let (mut best, mut off, mut read) = (map(c0), _mm256_setzero_ps(), c0);
            for (c, o) in [(c1, 1), (c2, in_w), (c3, in_w + 1)] {
                let v = map(c);
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                );
                best = _mm256_blendv_ps(best, v, take);
                read = _mm256_blendv_ps(read, c, take);
                let o = _mm256_castsi256_ps(_mm256_set1_epi32(o as i32));
                off = _mm256_blendv_ps(off, o, take);
            }
            let at = _mm256_add_epi32(
                _mm256_set1_epi32(first as i32),
                _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
            );
            let at = _mm256_add_epi32(at, _mm256_castps_si256(off));
            match (lanes == 8, idx.is_null()) {
                (true, true) => _mm256_storeu_ps(y, best),
                (true, false) => {
                    _mm256_storeu_ps(y, best);
                    _mm256_storeu_si256(idx as *mut __m256i, at);
                }
                (false, true) => _mm256_maskstore_ps(y, m, best),
                (false, false) => {
                    _mm256_maskstore_ps(y, m, best);
                    _mm256_maskstore_epi32(idx as *mut i32, m, at);
                }
            }
            match (lanes == 8, at_max.is_null()) {
                (_, true) => {}
                (true, false) => _mm256_storeu_ps(at_max, read),
                (false, false) => _mm256_maskstore_ps(at_max, m, read),
            }
        }
    }
    #[inline(always)]
    unsafe fn unpool2x2(
        dy: *const f32,
        idx: *const u32,
        lanes: usize,
        first: u32,
        in_w: u32,
        dx0: *mut f32,
        dx1: *mut f32,
    ) -> bool {
        // SAFETY: AVX2; the loads read dy[..lanes] and idx[..lanes] only, the stores write
        // dx0[..2·lanes] and dx1[..2·lanes] only (masked below a whole register; the caller's
        // contract).
        unsafe {
            let [m, lo, hi] = masks(lanes);
            let (d, a) = if lanes == 8 {
                (
                    _mm256_loadu_ps(dy),
                    _mm256_loadu_si256(idx as *const __m256i),
                )
            } else {
                (
                    _mm256_maskload_ps(dy, m),
                    _mm256_maskload_epi32(idx as *const i32, m),
                )
            };
            let d = _mm256_add_ps(d, _mm256_setzero_ps());
            let at = _mm256_add_epi32(
                _mm256_set1_epi32(first as i32),
                _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
            );
            let hit = |o: u32| {
                _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                    a,
                    _mm256_add_epi32(at, _mm256_set1_epi32(o as i32)),
                ))
            };
            let h = [hit(0), hit(1), hit(in_w), hit(in_w + 1)];
            let row = |e: __m256, o: __m256, dst: *mut f32| {
                let (e, o) = (_mm256_and_ps(e, d), _mm256_and_ps(o, d));
                // [e0 o0 e1 o1 | e4 o4 e5 o5] and [e2 o2 e3 o3 | e6 o6 e7 o7].
                let (l, h) = (_mm256_unpacklo_ps(e, o), _mm256_unpackhi_ps(e, o));
                let (v0, v1) = (
                    _mm256_permute2f128_ps::<0x20>(l, h),
                    _mm256_permute2f128_ps::<0x31>(l, h),
                );
                if lanes == 8 {
                    _mm256_storeu_ps(dst, v0);
                    _mm256_storeu_ps(dst.add(8), v1);
                } else {
                    _mm256_maskstore_ps(dst, lo, v0);
                    _mm256_maskstore_ps(dst.add(8), hi, v1);
                }
            };
            row(h[0], h[1], dx0);
            row(h[2], h[3], dx1);
            let any = _mm256_or_ps(_mm256_or_ps(h[0], h[1]), _mm256_or_ps(h[2], h[3]));
            let want = _mm256_movemask_ps(_mm256_castsi256_ps(m));
            _mm256_movemask_ps(any) & want == want
        }
    }
}

/// Lane masks (all ones where on) of the first `lanes` (1..=8) lanes, and of the first
/// `2·lanes` lanes of a pair of registers.
#[inline(always)]
unsafe fn masks(lanes: usize) -> [__m256i; 3] {
    // SAFETY: AVX2 (the caller's).
    unsafe {
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let first = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), iota);
        [
            first(lanes),
            first(2 * lanes),
            first((2 * lanes).saturating_sub(8)),
        ]
    }
}

/// [`Vector::transpose8`] on `ymm` registers (also used by the AVX-512 kernels: an 8 x 8 block
/// is eight `ymm` rows): unpack pairs of rows, shuffle pairs of pairs, swap 128-bit halves.
///
/// # Safety
/// AVX; `src[i·ss..][..8]` readable and `dst[j·ds..][..8]` writable for every `i, j < 8`.
#[inline(always)]
pub(crate) unsafe fn transpose8_ymm(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    // SAFETY: every load and store is one of the rows the caller's contract names; AVX is the
    // caller's contract.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        // t[2k] = r[2k][0] r[2k+1][0] r[2k][1] r[2k+1][1] | same for columns 4, 5; t[2k+1] the
        // columns 2, 3 | 6, 7.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // s[4h + c] = column c (| c + 4) of rows 4h .. 4h + 4.
        let s: [__m256; 8] = std::array::from_fn(|i| {
            let (h, c) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
            if c % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        for j in 0..8 {
            let (a, b) = (s[j % 4], s[4 + j % 4]);
            let v = if j < 4 {
                _mm256_permute2f128_ps::<0x20>(a, b)
            } else {
                _mm256_permute2f128_ps::<0x31>(a, b)
            };
            _mm256_storeu_ps(dst.add(j * ds), v);
        }
    }
}

micro_kernels!(
    Avx2,
    Isa::Avx2Fma,
    Ymm,
    "avx2,fma",
    mr = 6,
    nv = 2,
    narrow = Avx2 => |k| k
);
