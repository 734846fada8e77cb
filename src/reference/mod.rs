//! Naive, obviously-correct versions of every kernel: the executable specification.
//!
//! Plain loops straight from the formulas, `f64` accumulation, no tiling, no SIMD, no threads,
//! allocation wherever convenient. Unit tests, integration tests and fuzz targets compare the fast
//! kernels in [`crate::kernels`] against these. They are slow and not meant for production use.

mod conv;
mod elementwise;
mod norm;
mod pool;
mod upsample;

pub use conv::*;
pub use elementwise::*;
pub use norm::*;
pub use pool::*;
pub use upsample::*;

/// `C = A·B` for row-major `A: [m, k]`, `B: [k, n]`.
pub fn matmul(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                .sum();
            c[i * n + j] = s as f32;
        }
    }
    c
}

/// `y = x·Wᵀ + b` for `x: [n, in]`, `W: [out, in]`.
pub fn dense_forward(
    n: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0.0; n * out];
    for i in 0..n {
        for o in 0..out {
            let s: f64 = (0..inp)
                .map(|k| x[i * inp + k] as f64 * w[o * inp + k] as f64)
                .sum();
            y[i * out + o] = (s + b.map_or(0.0, |b| b[o] as f64)) as f32;
        }
    }
    y
}

/// Dense gradients `(dx, dw, db)` given `dy: [n, out]`.
pub fn dense_backward(
    n: usize,
    inp: usize,
    out: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0.0; n * inp];
    let mut dw = vec![0.0; out * inp];
    let mut db = vec![0.0; out];
    for i in 0..n {
        for k in 0..inp {
            let s: f64 = (0..out)
                .map(|o| dy[i * out + o] as f64 * w[o * inp + k] as f64)
                .sum();
            dx[i * inp + k] = s as f32;
        }
    }
    for o in 0..out {
        for k in 0..inp {
            let s: f64 = (0..n)
                .map(|i| dy[i * out + o] as f64 * x[i * inp + k] as f64)
                .sum();
            dw[o * inp + k] = s as f32;
        }
        db[o] = (0..n).map(|i| dy[i * out + o] as f64).sum::<f64>() as f32;
    }
    (dx, dw, db)
}

/// Complementary error function in `f64` (relative error ~1e-13): the Maclaurin series of `erf`
/// below 2.5, a continued fraction above.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf x = 2/√π Σ (−1)^n x^(2n+1) / (n! (2n+1))
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        return 1.0 - sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    if x > 27.0 {
        return 0.0;
    }
    // erfc x = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …))))), evaluated bottom-up.
    let mut f = x;
    for k in (1..=80).rev() {
        f = x + (k as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

#[cfg(test)]
mod tests {
    use crate::simd::math::tests::{check, grid};

    /// The lane `erfc` (exact GELU's) against this `f64` reference.
    #[test]
    fn the_lane_erfc_matches_the_reference() {
        let mut xs = grid(-6.0, 9.2, 40_000);
        xs.extend([0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 15.0]);
        check(crate::simd::math::erfc, super::erfc, &xs, 5e-7, 0.0);
    }
}
