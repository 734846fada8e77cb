//! AVX-512F: 512-bit registers (sixteen floats), a 12x32 register tile (24 accumulators, two B
//! registers and one broadcast: 27 of the 32 `zmm` registers; the shape was chosen by measuring
//! the candidates, see the README's Kernels section).

#![allow(unsafe_code)]

use crate::arch::Isa;
use crate::arch::kernel::{Vector, micro_kernels};
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

impl Vector for Zmm {
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
}

micro_kernels!(
    Avx512,
    Isa::Avx512,
    Zmm,
    "avx512f,avx2,fma",
    mr = 12,
    nv = 2
);

#[cfg(test)]
mod shapes {
    //! `cargo test --release --lib avx512_tile_shapes -- --ignored --nocapture`: the GEMM body at
    //! candidate register tiles, in L1 (k = 256), for choosing the shape above.
    use super::*;
    use crate::arch::kernel::gemm_body;

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run<const MR: usize, const NV: usize>(k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        // SAFETY: sizes checked by the caller's allocation (k·MR, k·NR, MR·NR).
        unsafe {
            gemm_body::<Zmm, MR, NV>(k, a.as_ptr(), b.as_ptr(), 1.0, 1.0, c.as_mut_ptr(), NV * 16)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        use crate::arch::x86_64::avx2::Ymm;
        // SAFETY: sizes checked by the caller's allocation (k·6, k·16, 6·16).
        unsafe { gemm_body::<Ymm, 6, 2>(k, a.as_ptr(), b.as_ptr(), 1.0, 1.0, c.as_mut_ptr(), 16) }
    }

    fn measure_avx2() {
        let k = 256;
        let (a, b) = (vec![1e-3f32; k * 6], vec![1e-3f32; k * 16]);
        let mut c = vec![0.0f32; 6 * 16];
        let mut best = 0.0f64;
        for _ in 0..5 {
            let reps = 40_000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                // SAFETY: AVX-512 CPUs have AVX2 and FMA.
                unsafe { run_avx2(k, &a, &b, &mut c) };
            }
            let s = t.elapsed().as_secs_f64();
            best = best.max((reps * k * 6 * 16 * 2) as f64 / s / 1e9);
        }
        println!("avx2 6x16 {best:.1} GFLOP/s");
    }

    fn measure<const MR: usize, const NV: usize>() {
        let k = 256;
        let (a, b) = (vec![1e-3f32; k * MR], vec![1e-3f32; k * NV * 16]);
        let mut c = vec![0.0f32; MR * NV * 16];
        let mut best = 0.0f64;
        for _ in 0..5 {
            let reps = 40_000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                // SAFETY: the test only runs on AVX-512 CPUs (checked by the caller).
                unsafe { run::<MR, NV>(k, &a, &b, &mut c) };
            }
            let s = t.elapsed().as_secs_f64();
            best = best.max((reps * k * MR * NV * 16 * 2) as f64 / s / 1e9);
        }
        println!("{MR:>2}x{:<3} {best:.1} GFLOP/s", NV * 16);
    }

    #[test]
    #[ignore]
    fn avx512_tile_shapes() {
        if Avx512::new().is_none() {
            return;
        }
        measure_avx2();
        measure::<6, 2>();
        measure::<8, 2>();
        measure::<12, 2>();
        measure::<14, 2>();
        measure::<4, 4>();
        measure::<6, 4>();
        measure::<8, 3>();
        measure::<9, 3>();
    }
}
