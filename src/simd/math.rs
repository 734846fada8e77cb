//! Vector math on lanes: `exp`, `expm1`, `ln`, `ln_1p`, `tanh`, `sigmoid`, `erfc`.
//!
//! Polynomials from Cephes (S. L. Moshier) single-precision routines, evaluated lane-wise; the
//! reference kernels in `crate::reference` use `f64` std functions, and the tests compare.
//! Published coefficients are kept digit for digit (hence `excessive_precision` is allowed).

use super::lane::{Ints, Lane, bits, from_bits, ge, is_nan, lt, select, splat};

/// `2^n` for integer lanes `n` in `[-126, 127]`.
#[inline(always)]
fn pow2i(n: Ints) -> Lane {
    from_bits((n + Ints::splat(127)) << 23)
}

/// `e^x`, relative error ≤ 2 ulp on the normal range; `+inf` above ~88.72, gradual underflow to
/// `0` below ~-87.3 (exactly `0` from about -104), NaN propagates.
#[inline(always)]
pub(crate) fn exp(x: Lane) -> Lane {
    exp_split(x, None)
}

/// `e^(hi + lo)` for a small `lo`, without rounding `hi + lo` to `f32` first.
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn exp_split(x: Lane, lo: Option<Lane>) -> Lane {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2, high part (exact in f32)
    const C2: f32 = -2.121_944_4e-4; // ln 2 - C1
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.fast_max(splat(-104.0)).fast_min(splat(88.8));
    // n = round((hi + lo)·log2 e), r = hi − n·ln 2 + lo keeps |r| <= ln2/2 for the polynomial.
    let xn = match lo {
        Some(lo) => xc + lo,
        None => xc,
    };
    let t = xn.mul_add(splat(LOG2E), splat(MAGIC));
    let n = t - splat(MAGIC);
    let r = n.mul_neg_add(splat(C1), xc);
    let mut r = n.mul_neg_add(splat(C2), r);
    if let Some(lo) = lo {
        r += lo;
    }
    let mut p = splat(1.987_569_1e-4);
    p = p.mul_add(r, splat(1.398_199_9e-3));
    p = p.mul_add(r, splat(8.333_452e-3));
    p = p.mul_add(r, splat(4.166_579_6e-2));
    p = p.mul_add(r, splat(1.666_666_5e-1));
    p = p.mul_add(r, splat(5.000_000_1e-1));
    let p = p.mul_add(r * r, r) + splat(1.0);
    // Integer n sits in the low mantissa bits of t. Scale in two steps so n in [-150, 128]
    // never leaves the normal exponent range of either factor.
    let ni = bits(t) - Ints::splat(0x4B40_0000);
    let n1 = ni >> 1;
    let y = p * pow2i(n1) * pow2i(ni - n1);
    select(is_nan(x), x, y)
}

/// `e^x - 1`, accurate near 0.
#[inline(always)]
pub(crate) fn expm1(x: Lane) -> Lane {
    // Taylor series to x^8/8! on |x| < 0.5 (truncation < 3e-9 relative), exp(x) - 1 elsewhere.
    let mut p = splat(1.0 / 40320.0);
    for c in [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ] {
        p = p.mul_add(x, splat(c));
    }
    let small = p.mul_add(x * x, x);
    let big = exp(x) - splat(1.0);
    select(lt(x.abs(), splat(0.5)), small, big)
}

/// Natural logarithm for `x >= 0` (subnormals included): `ln 0 = -inf`, `ln inf = inf`,
/// negative or NaN input gives NaN.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn ln(x: Lane) -> Lane {
    const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let sub = lt(x, splat(f32::MIN_POSITIVE));
    let xs = select(sub, x * splat(8_388_608.0), x); // 2^23
    let b = bits(xs);
    // Exponent e and mantissa m in [0.5, 1).
    let e = (b >> 23) - Ints::splat(126);
    let m = from_bits((b & Ints::splat(0x007F_FFFF)) | Ints::splat(0x3F00_0000));
    let mut e = e.to_f32() - select(sub, splat(23.0), splat(0.0));
    let small = lt(m, splat(SQRTHF));
    e -= select(small, splat(1.0), splat(0.0));
    let m = select(small, m + m, m) - splat(1.0);
    let z = m * m;
    let mut p = splat(7.037_683_6e-2);
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        p = p.mul_add(m, splat(c));
    }
    let mut y = m * z * p;
    y = e.mul_add(splat(-2.121_944_4e-4), y);
    y = z.mul_neg_add(splat(0.5), y);
    let r = m + y;
    let r = e.mul_add(splat(0.693_359_4), r);
    // Special values.
    let r = select(x.simd_eq(splat(0.0)), splat(f32::NEG_INFINITY), r);
    let r = select(x.simd_eq(splat(f32::INFINITY)), x, r);
    select(lt(x, splat(0.0)) | is_nan(x), splat(f32::NAN), r)
}

/// `ln(1 + u)` for `u >= 0`, accurate for small `u`.
#[inline(always)]
pub(crate) fn ln_1p(u: Lane) -> Lane {
    let w = u + splat(1.0);
    // ln(w) + (u - (w - 1)) / w corrects the rounding of 1 + u.
    let r = ln(w) + (u - (w - splat(1.0))) / w;
    let r = select(w.simd_eq(splat(1.0)), u, r);
    select(w.simd_eq(splat(f32::INFINITY)), w, r)
}

/// Hyperbolic tangent.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn tanh(x: Lane) -> Lane {
    let a = x.abs();
    let z = x * x;
    let mut p = splat(-5.704_988_7e-3);
    for c in [
        2.063_908_9e-2,
        -5.373_971_6e-2,
        1.333_144_2e-1,
        -3.333_328_2e-1,
    ] {
        p = p.mul_add(z, splat(c));
    }
    let small = (p * z).mul_add(x, x);
    let big = splat(1.0) - splat(2.0) / (exp(a + a) + splat(1.0));
    let big = big.flip_signs(x);
    select(lt(a, splat(0.625)), small, big)
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: Lane) -> Lane {
    splat(1.0) / (splat(1.0) + exp(-x))
}

/// Complementary error function (Numerical Recipes' Chebyshev fit `erfcc`, fractional error
/// < 1.2e-7 in exact arithmetic); relative error below 5e-7 in `f32`.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn erfc(x: Lane) -> Lane {
    let z = x.abs();
    let t = splat(1.0) / z.mul_add(splat(0.5), splat(1.0));
    let mut p = splat(0.170_872_77);
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = p.mul_add(t, splat(c));
    }
    // exp(−z² + p) with −z² split as hi + lo: zh keeps 8 fraction bits, so for z < 16 (beyond
    // which erfc underflows) zh² is exact in f32 and only the small lo term is rounded.
    let zh = (z * splat(256.0)).floor() * splat(1.0 / 256.0);
    let hi = -(zh * zh);
    let lo = -((z - zh) * (z + zh));
    let r = t * exp_split(hi, Some(lo + p));
    let r = select(z.simd_eq(splat(f32::INFINITY)), splat(0.0), r);
    select(ge(x, splat(0.0)), r, splat(2.0) - r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::simd::lane::{LANES, tail_lane};

    /// Checks `f` against the `f64` function `g` on `xs` (the value rounded to `f32`).
    pub(crate) fn check(
        f: impl Fn(Lane) -> Lane,
        g: impl Fn(f64) -> f64,
        xs: &[f32],
        rtol: f64,
        atol: f64,
    ) {
        for c in xs.chunks(LANES) {
            let got = f(tail_lane(c, 0.0)).to_array();
            for (i, &x) in c.iter().enumerate() {
                // Compare with the f64 value rounded to f32 (overflow to inf included).
                let want = g(x as f64) as f32 as f64;
                let got = got[i] as f64;
                if want.is_nan() {
                    assert!(got.is_nan(), "x={x}: got {got}, want NaN");
                } else if want.is_infinite() {
                    assert_eq!(got, want, "x={x}");
                } else {
                    assert!(
                        (got - want).abs() <= atol + rtol * want.abs(),
                        "x={x}: got {got}, want {want}"
                    );
                }
            }
        }
    }

    /// `n + 1` evenly spaced values from `lo` to `hi`.
    pub(crate) fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n)
            .map(|i| lo + (hi - lo) * i as f32 / n as f32)
            .collect()
    }

    #[test]
    fn exp_matches_std_over_range_and_specials() {
        let mut xs = grid(-87.0, 88.5, 20_000);
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            89.0,
            -200.0,
        ]);
        check(exp, f64::exp, &xs, 3e-7, 0.0);
        // Gradual underflow: absolute error below the smallest normal.
        check(exp, f64::exp, &grid(-104.0, -87.0, 1000), 0.0, 1.2e-38);
    }

    #[test]
    fn expm1_is_accurate_near_zero() {
        let mut xs = grid(-20.0, 20.0, 20_000);
        xs.extend([1e-30, -1e-30, 1e-7, -3e-5, 0.49, 0.51, -0.5]);
        check(expm1, f64::exp_m1, &xs, 4e-7, 1e-45);
    }

    #[test]
    fn ln_and_ln_1p_match_std() {
        let mut xs: Vec<f32> = grid(-30.0, 30.0, 10_000)
            .into_iter()
            .map(|e| e.exp())
            .collect();
        xs.extend([1e-40, f32::MIN_POSITIVE, f32::MAX, 1.0, 2.0]);
        check(ln, f64::ln, &xs, 2e-7, 1e-7);
        check(
            ln,
            |x| {
                if x == 0.0 {
                    f64::NEG_INFINITY
                } else {
                    f64::NAN
                }
            },
            &[0.0, -1.0, f32::NAN],
            0.0,
            0.0,
        );
        check(ln_1p, f64::ln_1p, &xs, 3e-7, 0.0);
    }

    #[test]
    fn tanh_sigmoid_erfc_match_f64() {
        let mut xs = grid(-12.0, 12.0, 20_000);
        xs.extend([
            1e-20,
            -1e-20,
            0.624,
            0.626,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        check(tanh, f64::tanh, &xs, 3e-7, 1e-45);
        check(sigmoid, |x| 1.0 / (1.0 + (-x).exp()), &xs, 5e-7, 0.0);
    }
}
