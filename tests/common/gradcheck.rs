//! Central finite differences against analytic vector-Jacobian products.
//!
//! For a function `f: R^n -> R^m` and a random cotangent `dy`, the scalar `L(x) = <f(x), dy>`
//! (accumulated in `f64`) has gradient `vjp(x, dy)`. Each component is checked against
//! `(L(x + h·e_i) − L(x − h·e_i)) / (x_i⁺ − x_i⁻)`, where `x_i^±` are the perturbed values as
//! stored in `f32`. A component passes if `|num − ana| <= atol + rtol·|num|`.
//!
//! Error budget with `h = 1e-2` and inputs of order 1: truncation `O(h²·f''')` ≈ 1e-4 relative,
//! covered by [`Tol::DEFAULT`] (atol 2e-3, rtol 1e-2), which still catches a wrong factor, a
//! missing term or a transposed index.
//!
//! **Rounding noise is bounded, not tolerated by luck.** `L` is summed in `f64`, but `f`'s
//! outputs are `f32`, so `L` carries rounding noise `η` that the difference quotient amplifies to
//! `η/h`. [`noise_level`] measures `η` at the point being checked (the scatter of `L` around a
//! straight line over a few steps much finer than `h`, where `L` is linear but its rounding is
//! not), and each component's allowance grows by [`NOISE_MARGIN`]`·η/h`. A deep network, whose
//! loss is noisier than one kernel's output, thus gets the allowance its own noise needs, and a
//! quiet one keeps the tight tolerance.

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

pub use cnnkit::gradcheck::{NOISE_MARGIN, noise_level};

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
    let mut l_at = |xp: &mut Vec<f32>, i: usize, v: f32| {
        let keep = xp[i];
        xp[i] = v;
        f(xp, &mut y);
        xp[i] = keep;
        dot(&y, dy)
    };
    // The noise of L at this point, from a few components (it is a property of f and dy here,
    // much the same for every component).
    let eta = if x.is_empty() {
        0.0
    } else {
        [0, x.len() / 2, x.len() - 1]
            .iter()
            .map(|&i| noise_level(|v| l_at(&mut xp, i, v), x[i], H))
            .fold(0.0, f64::max)
    };
    for i in 0..x.len() {
        let (plus, minus) = (x[i] + H, x[i] - H);
        let lp = l_at(&mut xp, i, plus);
        let lm = l_at(&mut xp, i, minus);
        let step = plus as f64 - minus as f64;
        let num = (lp - lm) / step;
        let a = ana[i] as f64;
        let noise = NOISE_MARGIN * eta / (step / 2.0);
        let ok = (num - a).abs() <= tol.atol + tol.rtol * num.abs() + noise;
        if !ok {
            return Err(TestCaseError::fail(format!(
                "gradient[{i}] of {}: analytic {a}, finite difference {num} (x = {}, noise \
                 allowance {noise:.2e})",
                x.len(),
                x[i]
            )));
        }
    }
    Ok(())
}
