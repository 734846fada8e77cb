//! Central finite differences against analytic vector-Jacobian products.
//!
//! For a function `f: R^n -> R^m` and a random cotangent `dy`, the scalar `L(x) = <f(x), dy>`
//! (accumulated in `f64`) has gradient `vjp(x, dy)`. Each component is checked against
//! `(L(x + h·e_i) − L(x − h·e_i)) / (x_i⁺ − x_i⁻)`, where `x_i^±` are the perturbed values as
//! stored in `f32`. A component passes if `|num − ana| <= atol + rtol·|num|`.
//!
//! Error budget with `h = 1e-2` and inputs of order 1: truncation `O(h²·f''')` ≈ 1e-4 relative;
//! `f32` rounding of `f` contributes about `1e-7·Σ|f_j·dy_j| / 2h`, i.e. ~5e-4 for a hundred
//! outputs. [`Tol::DEFAULT`] (atol 2e-3, rtol 1e-2) covers both with margin while still catching
//! a wrong factor, a missing term or a transposed index.

use proptest::test_runner::TestCaseError;

/// Perturbation.
pub const H: f32 = 1e-2;

/// Pass criterion `|num − ana| <= atol + rtol·|num|`.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    pub const DEFAULT: Tol = Tol {
        atol: 2e-3,
        rtol: 1e-2,
    };
}

fn dot(y: &[f32], dy: &[f32]) -> f64 {
    y.iter().zip(dy).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Checks `vjp(x, dy, dx)` (which must overwrite `dx`) against finite differences of
/// `f(x, y)` (which must overwrite `y`, of length `dy.len()`).
pub fn check_vjp(
    x: &[f32],
    dy: &[f32],
    f: impl Fn(&[f32], &mut [f32]),
    vjp: impl Fn(&[f32], &[f32], &mut [f32]),
    tol: Tol,
) -> Result<(), TestCaseError> {
    let mut ana = vec![f32::NAN; x.len()];
    vjp(x, dy, &mut ana);
    let mut y = vec![0.0; dy.len()];
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let (plus, minus) = (x[i] + H, x[i] - H);
        xp[i] = plus;
        f(&xp, &mut y);
        let lp = dot(&y, dy);
        xp[i] = minus;
        f(&xp, &mut y);
        let lm = dot(&y, dy);
        xp[i] = x[i];
        let num = (lp - lm) / (plus as f64 - minus as f64);
        let a = ana[i] as f64;
        let ok = (num - a).abs() <= tol.atol + tol.rtol * num.abs();
        if !ok {
            return Err(TestCaseError::fail(format!(
                "gradient[{i}] of {}: analytic {a}, finite difference {num} (x = {})",
                x.len(),
                x[i]
            )));
        }
    }
    Ok(())
}
