//! The AVX2/FMA micro-kernel: one 6x16 tile of `C` from packed panels of `A` (6 rows) and `B`
//! (16 columns), with twelve 8-lane accumulators held in registers. Selected at run time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of a micro-tile.
pub(crate) const MR: usize = 6;
/// Columns of a micro-tile.
pub(crate) const NR: usize = 16;

/// Whether this CPU has AVX2 and FMA (detected once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C[i, j] = alpha·Σ_p a[p·MR + i]·b[p·NR + j] + beta·C[i, j]` for `i < 6, j < 16`, where row `i`
/// of `C` is `c[i·rs..i·rs + 16]`. With `beta == 0`, `C` is not read.
///
/// Panics (a programming error, not a data error) if the panels are shorter than `k` steps, `C`
/// does not hold the tile, or the CPU lacks AVX2/FMA.
#[inline]
pub(crate) fn tile(
    k: usize,
    a: &[f32],
    b: &[f32],
    alpha: f32,
    beta: f32,
    c: &mut [f32],
    rs: usize,
) {
    assert!(
        available(),
        "AVX2/FMA micro-kernel called without CPU support"
    );
    assert!(
        a.len() >= k * MR && b.len() >= k * NR,
        "packed panels shorter than k"
    );
    assert!(
        rs >= NR && c.len() >= (MR - 1) * rs + NR,
        "C tile out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` proved AVX2 and FMA, so the target-feature function may run. Reads
    // stay within `a[..k*MR]` and `b[..k*NR]` (checked above); writes and reads of C touch
    // `c[i*rs + j]` for i < MR, j < NR, all below `(MR-1)*rs + NR <= c.len()` (checked above).
    // The slices come from references, so they are valid, aligned for f32 and non-overlapping
    // (`c` is the only mutable one).
    unsafe {
        kernel(k, a.as_ptr(), b.as_ptr(), alpha, beta, c.as_mut_ptr(), rs);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(
    k: usize,
    a: *const f32,
    b: *const f32,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rs: usize,
) {
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    // Start fetching the C tile now: it is read (beta != 0) and written after the loop, and its
    // rows are usually far apart in a large matrix.
    for i in 0..MR {
        // SAFETY: prefetching is only a hint; the addresses are inside the tile (caller's check).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs + NR - 1) as *const i8);
        }
    }
    let (mut ap, mut bp) = (a, b);
    // One k step: two B vectors, then one broadcast of A at a time (12 accumulators + 2 B + 1 A =
    // 15 of the 16 registers, so nothing spills).
    macro_rules! step {
        ($u:expr) => {{
            let b0 = _mm256_loadu_ps(bp.add(NR * $u));
            let b1 = _mm256_loadu_ps(bp.add(NR * $u + 8));
            let a = _mm256_broadcast_ss(&*ap.add(MR * $u));
            c00 = _mm256_fmadd_ps(a, b0, c00);
            c01 = _mm256_fmadd_ps(a, b1, c01);
            let a = _mm256_broadcast_ss(&*ap.add(MR * $u + 1));
            c10 = _mm256_fmadd_ps(a, b0, c10);
            c11 = _mm256_fmadd_ps(a, b1, c11);
            let a = _mm256_broadcast_ss(&*ap.add(MR * $u + 2));
            c20 = _mm256_fmadd_ps(a, b0, c20);
            c21 = _mm256_fmadd_ps(a, b1, c21);
            let a = _mm256_broadcast_ss(&*ap.add(MR * $u + 3));
            c30 = _mm256_fmadd_ps(a, b0, c30);
            c31 = _mm256_fmadd_ps(a, b1, c31);
            let a = _mm256_broadcast_ss(&*ap.add(MR * $u + 4));
            c40 = _mm256_fmadd_ps(a, b0, c40);
            c41 = _mm256_fmadd_ps(a, b1, c41);
            let a = _mm256_broadcast_ss(&*ap.add(MR * $u + 5));
            c50 = _mm256_fmadd_ps(a, b0, c50);
            c51 = _mm256_fmadd_ps(a, b1, c51);
        }};
    }
    // Unrolled by 4 to cut loop overhead.
    for _ in 0..k / 4 {
        // SAFETY: the caller guarantees k*MR floats at `a` and k*NR at `b`; the pointers advance
        // by what the steps consumed, and each step reads below MR (A) / NR (B) floats past
        // them, so every read is in bounds.
        unsafe {
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            ap = ap.add(4 * MR);
            bp = bp.add(4 * NR);
        }
    }
    for _ in 0..k % 4 {
        // SAFETY: as above; these are the last k % 4 steps.
        unsafe {
            step!(0);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    let va = _mm256_set1_ps(alpha);
    let vb = _mm256_set1_ps(beta);
    let rows = [
        (c00, c01),
        (c10, c11),
        (c20, c21),
        (c30, c31),
        (c40, c41),
        (c50, c51),
    ];
    for (i, (lo, hi)) in rows.into_iter().enumerate() {
        // SAFETY: row i of the tile is c[i*rs .. i*rs + 16], inside the buffer (caller's check).
        unsafe {
            let p = c.add(i * rs);
            let (mut lo, mut hi) = (_mm256_mul_ps(lo, va), _mm256_mul_ps(hi, va));
            if beta != 0.0 {
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(p), vb, lo);
                hi = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), vb, hi);
            }
            _mm256_storeu_ps(p, lo);
            _mm256_storeu_ps(p.add(8), hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_matches_naive_sums_with_alpha_and_beta() {
        if !available() {
            return;
        }
        for k in [0, 1, 3, 17] {
            let a: Vec<f32> = (0..k * MR).map(|v| (v % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..k * NR).map(|v| (v % 5) as f32 * 0.5).collect();
            let rs = 19;
            let mut c: Vec<f32> = (0..5 * rs + NR).map(|v| v as f32).collect();
            let old = c.clone();
            tile(k, &a, &b, 2.0, -1.0, &mut c, rs);
            for i in 0..MR {
                for j in 0..rs.min(c.len() - i * rs) {
                    let got = c[i * rs + j];
                    if j < NR {
                        let s: f32 = (0..k).map(|p| a[p * MR + i] * b[p * NR + j]).sum();
                        assert_eq!(got, 2.0 * s - old[i * rs + j], "i {i} j {j} k {k}");
                    } else {
                        assert_eq!(got, old[i * rs + j], "outside the tile");
                    }
                }
            }
            // beta = 0 ignores NaN in C.
            let mut c = vec![f32::NAN; 5 * rs + NR];
            tile(k, &a, &b, 1.0, 0.0, &mut c, rs);
            assert!((0..NR).all(|j| c[j].is_finite()));
        }
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release --lib micro_kernel_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn micro_kernel_speed() {
        use super::*;
        let k = 256;
        let a = vec![1.0f32; k * MR];
        let b = vec![1.0f32; k * NR];
        let mut c = vec![0.0f32; MR * NR];
        let t = std::time::Instant::now();
        let reps = 200_000;
        for _ in 0..reps {
            tile(k, &a, &b, 1.0, 1.0, &mut c, NR);
        }
        let s = t.elapsed().as_secs_f64();
        println!("{:.1} GFLOP/s", (reps * k * MR * NR * 2) as f64 / s / 1e9);
    }
}
