//! What the machine can do: f32 FMA peak (GFLOP/s, one core and all cores) and memory bandwidth
//! (STREAM-style copy and triad, GB/s), so every result can be stated as a fraction of a limit.

use std::time::Instant;

/// The widest f32 FMA peak of this CPU over `secs` on `threads` threads, and the instruction set
/// that reached it (`"avx512"` or `"avx2"`): 12 independent chains of FMAs per thread (enough to
/// cover the FMA latency on current x86 cores) in the widest registers the CPU has. `None`
/// without AVX2 + FMA.
pub fn fma_gflops(threads: usize, secs: f64) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return fma_gflops_of("avx512", threads, secs).map(|g| (g, "avx512"));
        }
        fma_gflops_of("avx2", threads, secs).map(|g| (g, "avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, secs);
        None
    }
}

/// The f32 FMA peak of one instruction set (`"avx2"` or `"avx512"`), `None` where the CPU lacks
/// it.
pub fn fma_gflops_of(isa: &str, threads: usize, secs: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        // (kernel, floating-point operations per call per iteration)
        let (kernel, flops_per_iter): (fn(usize) -> f32, f64) = match isa {
            "avx2" if avx2 => (
                // SAFETY: AVX2 and FMA support was checked just above.
                |n| unsafe { fma_chains_avx2(n) },
                12.0 * 16.0,
            ),
            "avx512" if avx2 && is_x86_feature_detected!("avx512f") => (
                // SAFETY: AVX-512F support was checked just above.
                |n| unsafe { fma_chains_avx512(n) },
                12.0 * 32.0,
            ),
            _ => return None,
        };
        let iters = 1_000_000usize;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let mut done = 0usize;
                    while t.elapsed().as_secs_f64() < secs {
                        std::hint::black_box(kernel(iters));
                        done += iters;
                    }
                    (done as f64 * flops_per_iter, t.elapsed().as_secs_f64())
                })
            })
            .collect();
        let results: Vec<(f64, f64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let flops: f64 = results.iter().map(|r| r.0).sum();
        let time = results.iter().map(|r| r.1).fold(0.0, f64::max);
        Some(flops / time / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, threads, secs);
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds 8 floats, the width of one unaligned store.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// STREAM-style bandwidth in GB/s with arrays of `bytes` each on `threads` threads: `copy`
/// (b = a, 8 bytes per element counted) and `triad` (a = b + s·c, 12 bytes). Median of 7 runs.
pub fn stream_gbps(threads: usize, bytes: usize) -> (f64, f64) {
    let n = bytes / 4;
    let chunk = n.div_ceil(threads);
    let mut a = vec![1.0f32; n];
    let mut b = vec![2.0f32; n];
    let c = vec![0.5f32; n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    type Kernel = dyn Fn(&mut [f32], &mut [f32], &[f32]) + Sync;
    let mut run = |f: &Kernel| -> f64 {
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            pool.install(|| {
                use rayon::prelude::*;
                a.par_chunks_mut(chunk)
                    .zip(b.par_chunks_mut(chunk))
                    .zip(c.par_chunks(chunk))
                    .for_each(|((a, b), c)| f(a, b, c));
            });
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        times[3]
    };
    let copy = run(&|a, b, _| b.copy_from_slice(a));
    let triad = run(&|a, b, c| {
        for ((a, b), c) in a.iter_mut().zip(b.iter()).zip(c) {
            *a = b + 3.0 * c;
        }
    });
    (8.0 * n as f64 / copy / 1e9, 12.0 * n as f64 / triad / 1e9)
}
