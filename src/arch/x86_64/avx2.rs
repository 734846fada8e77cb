//! AVX2 + FMA: 256-bit registers (eight floats), a 6x16 register tile (twelve accumulators, two
//! B registers and one broadcast: 15 of the 16 `ymm` registers).

#![allow(unsafe_code)]

use crate::arch::Isa;
use crate::arch::kernel::{Vector, micro_kernels};
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

impl Vector for Ymm {
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
