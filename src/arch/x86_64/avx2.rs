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
