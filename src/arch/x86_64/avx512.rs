//! AVX-512F: 512-bit registers (sixteen floats), an 8x32 register tile (16 accumulators, two B
//! registers and one broadcast). Chosen by measuring the candidates (`shapes` below; the
//! README's Kernels section has the figures): 8x32 and 6x64 were fastest on the packed GEMM, and
//! 8x32 pads the 32-, 64- and 128-channel layers of CNNs least.

#![allow(unsafe_code)]

use crate::arch::isa::Isa;
use crate::arch::kernel::Vector;
use crate::arch::kernel::instantiate::micro_kernels;
use crate::arch::x86_64::avx2::{Avx2, transpose8_ymm};
use std::arch::x86_64::*;

/// The AVX-512 micro-kernels; a value exists only on CPUs with AVX-512F (and AVX2 and FMA).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The token, if this CPU has AVX-512F.
    pub(crate) fn new() -> Option<Self> {
        (Isa::detected() >= Isa::Avx512).then_some(Avx512(()))
    }
}

/// One `zmm` register.
#[derive(Clone, Copy)]
pub(crate) struct Zmm(__m512);

// SAFETY: `N` is the 512-bit register's width in floats; each method is the one intrinsic that
// performs its operation (unaligned loads and stores of exactly `N` floats, IEEE f32 arithmetic,
// `mul_add` a single fused multiply-add), and the transposes and pool helpers touch only the
// addresses their contracts name.
unsafe impl Vector for Zmm {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512F (the caller's contract).
        Zmm(unsafe { _mm512_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX-512F (the caller's contract).
        Zmm(unsafe { _mm512_set1_ps(v) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: p[..16] readable and AVX-512F (the caller's contract).
        Zmm(unsafe { _mm512_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: p[..16] writable and AVX-512F (the caller's contract).
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: AVX-512F (the caller's contract).
        Zmm(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: AVX-512F (the caller's contract).
        Zmm(unsafe { _mm512_add_ps(self.0, b.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        // SAFETY: AVX-512F (the caller's contract).
        Zmm(unsafe { _mm512_mul_ps(self.0, b.0) })
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: AVX-512F implies AVX; the rows are the caller's contract.
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
        at: *mut f32,
    ) {
        // SAFETY: AVX-512F; the masked loads read r0[..2·lanes] and r1[..2·lanes] only (masked
        // lanes are not accessed), the masked stores write y[..lanes] and, when they are not
        // null, idx[..lanes] and at[..lanes] only (the caller's contract).
        unsafe {
            let (m, [lo, hi]) = masks(lanes);
            // Candidates 0 and 1 of each window (the even and odd elements of the row).
            let split = |r: *const f32| {
                let a = _mm512_maskz_loadu_ps(lo, r);
                let b = _mm512_maskz_loadu_ps(hi, r.add(16));
                (
                    _mm512_permutex2var_ps(a, table(EVEN, 0), b),
                    _mm512_permutex2var_ps(a, table(EVEN, 1), b),
                )
            };
            let ((c0, c1), (c2, c3)) = (split(r0), split(r1));
            let map = |c: __m512| match affine {
                Some([a, b]) => _mm512_fmadd_ps(c, _mm512_set1_ps(a), _mm512_set1_ps(b)),
                None => c,
            };
            // Starting from the first candidate is the scalar loop's first step from −∞ (which
            // takes it unless it is −∞ itself, leaving −∞ at offset 0 either way).
            let (mut best, mut off, mut read) = (map(c0), _mm512_setzero_si512(), c0);
            for (c, o) in [(c1, 1), (c2, in_w), (c3, in_w + 1)] {
                let v = map(c);
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                best = _mm512_mask_mov_ps(best, take, v);
                read = _mm512_mask_mov_ps(read, take, c);
                off = _mm512_mask_mov_epi32(off, take, _mm512_set1_epi32(o as i32));
            }
            let first = _mm512_add_epi32(_mm512_set1_epi32(first as i32), table(EVEN, 0));
            _mm512_mask_storeu_ps(y, m, best);
            if !idx.is_null() {
                _mm512_mask_storeu_epi32(idx as *mut i32, m, _mm512_add_epi32(first, off));
            }
            if !at.is_null() {
                _mm512_mask_storeu_ps(at, m, read);
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
        // SAFETY: AVX-512F; the masked loads read dy[..lanes] and idx[..lanes] only, the masked
        // stores write dx0[..2·lanes] and dx1[..2·lanes] only (the caller's contract).
        unsafe {
            let (m, [lo, hi]) = masks(lanes);
            let d = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dy), _mm512_setzero_ps());
            let a = _mm512_maskz_loadu_epi32(m, idx as *const i32);
            let at = _mm512_add_epi32(_mm512_set1_epi32(first as i32), table(EVEN, 0));
            let hit = |o: u32| {
                _mm512_cmpeq_epi32_mask(a, _mm512_add_epi32(at, _mm512_set1_epi32(o as i32)))
            };
            let h = [hit(0), hit(1), hit(in_w), hit(in_w + 1)];
            // Interleave the even and odd columns' values back into two rows.
            let row = |e: __mmask16, o: __mmask16, dst: *mut f32| {
                let (e, o) = (_mm512_maskz_mov_ps(e, d), _mm512_maskz_mov_ps(o, d));
                _mm512_mask_storeu_ps(dst, lo, _mm512_permutex2var_ps(e, table(INTERLEAVE, 0), o));
                _mm512_mask_storeu_ps(
                    dst.add(16),
                    hi,
                    _mm512_permutex2var_ps(e, table(INTERLEAVE, 8), o),
                );
            };
            row(h[0], h[1], dx0);
            row(h[2], h[3], dx1);
            (h[0] | h[1] | h[2] | h[3]) & m == m
        }
    }
}

/// The mask of the first `lanes` (1..=16) lanes, and of the first `2·lanes` lanes of a pair of
/// registers.
#[inline(always)]
fn masks(lanes: usize) -> (__mmask16, [__mmask16; 2]) {
    let bits = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    (
        bits(lanes),
        [bits(2 * lanes), bits((2 * lanes).saturating_sub(16))],
    )
}

/// Lane `l` = `2l`: the even elements of a pair of registers (plus 1: the odd ones), for
/// `_mm512_permutex2var_ps`.
const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];

/// Lanes `2j, 2j + 1` = `j` of the first and of the second register (`j < 8`): the interleave of
/// the low halves of two registers (plus 8: of the high halves), for `_mm512_permutex2var_ps`.
const INTERLEAVE: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];

/// `t[l] + s` in every lane `l`.
#[inline(always)]
unsafe fn table(t: [i32; 16], s: i32) -> __m512i {
    // SAFETY: AVX-512F (the caller's); the load reads the sixteen elements of `t`.
    unsafe {
        _mm512_add_epi32(
            _mm512_loadu_si512(t.as_ptr() as *const __m512i),
            _mm512_set1_epi32(s),
        )
    }
}

micro_kernels!(
    Avx512,
    Isa::Avx512,
    Zmm,
    "avx512f,avx2,fma",
    mr = 8,
    nv = 2,
    narrow = Avx2 => |_| Avx2::new().expect("every AVX-512 CPU has AVX2 and FMA")
);
