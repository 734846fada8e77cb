//! AVX-512F: 512-bit registers (sixteen floats), an 8x32 register tile (16 accumulators, two B
//! registers and one broadcast). Chosen by measuring the candidates (`shapes` below; the
//! README's Kernels section has the figures): 8x32 and 6x64 were fastest on the packed GEMM, and
//! 8x32 pads the 32-, 64- and 128-channel layers of CNNs least.

#![allow(unsafe_code)]

use crate::arch::Isa;
use crate::arch::kernel::{Vector, micro_kernels};
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
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: AVX-512F implies AVX; the rows are the caller's contract.
        unsafe { transpose8_ymm(src, ss, dst, ds) }
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

#[cfg(test)]
mod shapes {
    //! `cargo test --release --lib avx512_tile_shapes -- --ignored --nocapture`: the packed GEMM
    //! (1024³, one thread) on candidate register tiles, interleaved rounds, for choosing the shape
    //! above.
    use super::*;
    use crate::arch::kernel::MicroKernel;
    use crate::gemm::packed::{self, Out, Strided};

    macro_rules! candidate {
        ($name:ident, $mr:literal, $nv:literal) => {
            #[derive(Clone, Copy, Debug)]
            struct $name(());
            micro_kernels!(
                $name,
                Isa::Avx512,
                Zmm,
                "avx512f,avx2,fma",
                mr = $mr,
                nv = $nv,
                narrow = $name => |k| k
            );
        };
    }
    candidate!(S12x32, 12, 2);
    candidate!(S8x32, 8, 2);
    candidate!(S14x32, 14, 2);
    candidate!(S24x16, 24, 1);
    candidate!(S16x16, 16, 1);
    candidate!(S6x64, 6, 4);
    candidate!(S8x48, 8, 3);

    fn time<K: MicroKernel>(k: K, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> f64 {
        let src = |d| Strided {
            data: d,
            rs: n,
            cs: 1,
            rows: n,
        };
        let t = std::time::Instant::now();
        let out = Out {
            data: c,
            rs: n,
            rows: n,
            cols: n,
        };
        packed::gemm(k, n, 1.0, &src(a), &src(b), 0.0, out);
        (2 * n * n * n) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    #[test]
    #[ignore]
    fn avx512_tile_shapes() {
        if Avx512::new().is_none() {
            return;
        }
        let n = 1024;
        let (a, b) = (vec![1e-3f32; n * n], vec![1e-3f32; n * n]);
        let mut c = vec![0.0f32; n * n];
        let avx2 = crate::arch::x86_64::avx2::Avx2::new().unwrap();
        let mut runs: Vec<(&str, Vec<f64>)> = vec![];
        for round in 0..7 {
            let r = [
                ("avx2 6x16", time(avx2, n, &a, &b, &mut c)),
                ("12x32", time(S12x32(()), n, &a, &b, &mut c)),
                ("8x32", time(S8x32(()), n, &a, &b, &mut c)),
                ("14x32", time(S14x32(()), n, &a, &b, &mut c)),
                ("24x16", time(S24x16(()), n, &a, &b, &mut c)),
                ("16x16", time(S16x16(()), n, &a, &b, &mut c)),
                ("6x64", time(S6x64(()), n, &a, &b, &mut c)),
                ("8x48", time(S8x48(()), n, &a, &b, &mut c)),
            ];
            if round == 0 {
                runs = r.iter().map(|(s, _)| (*s, vec![])).collect();
            }
            for (i, (_, g)) in r.iter().enumerate() {
                runs[i].1.push(*g);
            }
        }
        for (s, mut g) in runs {
            g.sort_by(f64::total_cmp);
            println!(
                "{s:>10}: median {:.1} GFLOP/s, best {:.1}",
                g[g.len() / 2],
                g[g.len() - 1]
            );
        }
    }
}
