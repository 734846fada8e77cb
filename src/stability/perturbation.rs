//! The worst-case perturbation search of Antun et al. (see the [module documentation](super)),
//! with Gaussian noise of the same norm beside it.

use super::pixels::{PixelModel, argmax, check_in_range, in_eval, norm};
use crate::data::normalization::Normalization;
use crate::error::{Error, Result};
use crate::model::Sequential;
use crate::rng::Rng;

/// Settings of [`worst_case_perturbation`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerturbationSearch {
    /// `λ`, the price of the perturbation's size (0: only the range bounds it).
    pub lambda: f32,
    /// Gradient-ascent step size (default 1e-3: the ascent grows the perturbation geometrically
    /// from a tiny random start, so that the records go from invisible to class-changing; a step
    /// of 0.01 saturates a normalised classifier's perturbation within ten iterations).
    pub step: f32,
    /// Momentum (heavy ball): `v ← μ·v + step·∇Q`, `r ← r + v`. In `[0, 1)`.
    pub momentum: f32,
    /// Ascent iterations.
    pub iterations: usize,
    /// Record the perturbation every this many iterations (and after the last).
    pub record_every: usize,
    /// The valid input range: `x + r` is clipped to it (pixels in `[0, 1]` by default).
    pub range: (f32, f32),
    /// Seed of the random start (a tiny Gaussian `r₀`, so the ascent leaves `r = 0`, where the
    /// gradient vanishes) and of the random baseline.
    pub seed: u64,
    /// How the model's input is made from `x` (`None`: `x` is the input). With a normalisation,
    /// `x`, `r` and `range` are in pixel units.
    pub normalization: Option<Normalization>,
}

impl Default for PerturbationSearch {
    fn default() -> Self {
        PerturbationSearch {
            lambda: 0.1,
            step: 1e-3,
            momentum: 0.9,
            iterations: 100,
            record_every: 5,
            range: (0.0, 1.0),
            seed: 0,
            normalization: None,
        }
    }
}

/// One recorded perturbation of [`worst_case_perturbation`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerturbationStep {
    /// Ascent iterations done.
    pub iteration: usize,
    /// `‖r‖ / ‖x‖` (infinite for an all-zero `x` with `r ≠ 0`).
    pub size: f32,
    /// `‖f(x + r) − f(x)‖ / ‖f(x)‖`.
    pub output_change: f32,
    /// `‖r‖` itself (`size` is infinite for an all-zero `x`).
    pub norm: f32,
    /// Whether the predicted class (arg-max of the output) changed; `None` for an output of one
    /// value.
    pub class_changed: Option<bool>,
    /// `‖f(x + e) − f(x)‖ / ‖f(x)‖` for a random perturbation `e` of a Gaussian direction whose
    /// norm *after* clipping to the range is `‖r‖` (see `noise_size`).
    pub noise_output_change: f32,
    /// `‖e‖ / ‖x‖` of that noise as applied (after clipping): `size`, unless the range leaves no
    /// room for that much noise in its direction, when it is the most there is.
    pub noise_size: f32,
    /// Whether that noise changed the predicted class.
    pub noise_class_changed: Option<bool>,
    /// The perturbation `r` itself (the shape of `x`).
    pub perturbation: Vec<f32>,
}

impl PerturbationSearch {
    fn validate(&self) -> Result<()> {
        const OP: &str = "worst_case_perturbation";
        let bad = |arg: &'static str, why: String| Err(Error::invalid(OP, arg, why));
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad(
                "lambda",
                format!("{} (must be finite and >= 0)", self.lambda),
            );
        }
        if !(self.step.is_finite() && self.step > 0.0) {
            return bad("step", format!("{} (must be finite and > 0)", self.step));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", format!("{} (must be in [0, 1))", self.momentum));
        }
        if self.iterations == 0 || self.record_every == 0 {
            return bad(
                "iterations",
                "iterations and record_every must be at least 1".into(),
            );
        }
        let (lo, hi) = self.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(
                "range",
                format!("({lo}, {hi}) (must be finite, low < high)"),
            );
        }
        // The −λ·r term alone is a heavy-ball iteration on `½λ‖r‖²`, which converges only for
        // step·λ < 2(1 + μ); beyond that the ascent oscillates with growing amplitude and the
        // penalty meant to keep r small drives it to the range's bounds instead.
        let limit = 2.0 * (1.0 + self.momentum as f64);
        if self.step as f64 * self.lambda as f64 >= limit {
            return bad(
                "lambda",
                format!(
                    "step·lambda = {}·{} must be below 2·(1 + momentum) = {limit}, or the ascent diverges",
                    self.step, self.lambda
                ),
            );
        }
        Ok(())
    }
}

/// The worst-case perturbation search (see the [module docs](crate::stability)) for one input `x` (one
/// sample of `model`'s input shape). The model runs in evaluation mode (restored afterwards), so
/// dropout and batch statistics do not move the target.
///
/// # Errors
/// [`Error::InvalidArg`] for settings out of range, an `x` that is not one sample, or an `x` with
/// NaN or values outside `range`; errors of the model's passes.
pub fn worst_case_perturbation(
    model: &mut Sequential,
    x: &[f32],
    s: &PerturbationSearch,
) -> Result<Vec<PerturbationStep>> {
    const OP: &str = "worst_case_perturbation";
    s.validate()?;
    let [c, h, w] = model.input_shape();
    if x.len() != c * h * w {
        return Err(Error::invalid(
            OP,
            "x",
            format!(
                "{} values; one sample of {c}x{h}x{w} has {}",
                x.len(),
                c * h * w
            ),
        ));
    }
    check_in_range(OP, x, s.range)?;
    in_eval(model, |m| {
        let mut pm = PixelModel::new(OP, m, s.normalization.as_ref())?;
        search(&mut pm, x, s)
    })
}

fn search(
    model: &mut PixelModel<'_>,
    x: &[f32],
    s: &PerturbationSearch,
) -> Result<Vec<PerturbationStep>> {
    let (lo, hi) = s.range;
    let fx = model.forward(x, 1)?.to_vec();
    let (nx, nfx) = (norm(x), norm(&fx).max(f64::MIN_POSITIVE));
    let class = (fx.len() > 1).then(|| argmax(&fx));
    let mut rng = Rng::new(s.seed);
    // A tiny Gaussian start, 1e-4 of the image's RMS value — or of the range's span for an image
    // (nearly) all zero, which would otherwise start at r = 0, where the gradient vanishes.
    let rms = nx / (x.len() as f64).sqrt();
    let start = 1e-4 * rms.max(1e-3 * (hi - lo) as f64);
    // r is kept so that x + r is in range: r = clip(x + r) − x after every step.
    let mut r: Vec<f32> = x
        .iter()
        .map(|&v| ((v as f64 + start * rng.normal()) as f32).clamp(lo, hi) - v)
        .collect();
    let mut vel = vec![0.0f32; x.len()];
    let (mut xr, mut diff, mut grad) = (
        vec![0.0f32; x.len()],
        vec![0.0f32; fx.len()],
        vec![0.0f32; x.len()],
    );
    let mut out = Vec::new();
    for it in 1..=s.iterations {
        for ((a, &b), &d) in xr.iter_mut().zip(x).zip(&r) {
            *a = b + d;
        }
        let f = model.forward(&xr, 1)?;
        for ((d, &a), &b) in diff.iter_mut().zip(f).zip(&fx) {
            *d = a - b;
        }
        model.input_gradient(&xr, &diff, &mut grad)?;
        for (((v, ri), &g), &xi) in vel.iter_mut().zip(r.iter_mut()).zip(&grad).zip(x) {
            *v = s.momentum * *v + s.step * (g - s.lambda * *ri);
            *ri = (xi + *ri + *v).clamp(lo, hi) - xi;
        }
        if it % s.record_every == 0 || it == s.iterations {
            out.push(record(model, x, &fx, nx, nfx, class, &r, it, &mut rng, s)?);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn record(
    model: &mut PixelModel<'_>,
    x: &[f32],
    fx: &[f32],
    nx: f64,
    nfx: f64,
    class: Option<usize>,
    r: &[f32],
    iteration: usize,
    rng: &mut Rng,
    s: &PerturbationSearch,
) -> Result<PerturbationStep> {
    let (lo, hi) = s.range;
    let nr = norm(r);
    let change = |model: &mut PixelModel<'_>, pert: &[f32]| -> Result<(f32, Option<bool>)> {
        let xp: Vec<f32> = x.iter().zip(pert).map(|(&a, &b)| a + b).collect();
        let f = model.forward(&xp, 1)?;
        let d: Vec<f32> = f.iter().zip(fx).map(|(&a, &b)| a - b).collect();
        Ok(((norm(&d) / nfx) as f32, class.map(|c| argmax(f) != c)))
    };
    let (output_change, class_changed) = change(model, r)?;
    // A Gaussian direction u, scaled by t so that the clipped noise clip(x + t·u) − x has norm
    // ‖r‖: that norm grows with t (each coordinate's clipped step does), so bisection finds t.
    let u: Vec<f64> = (0..x.len()).map(|_| rng.normal()).collect();
    let clipped = |t: f64| -> Vec<f32> {
        x.iter()
            .zip(&u)
            .map(|(&xi, &ui)| ((xi as f64 + t * ui) as f32).clamp(lo, hi) - xi)
            .collect()
    };
    let nu = u
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    // Beyond this every coordinate that can move has reached its bound.
    let t_max = 2.0
        * (hi - lo) as f64
        * u.iter()
            .fold(0.0f64, |m, v| m.max(1.0 / v.abs().max(1e-12)));
    let (mut a, mut b) = (0.0f64, (nr / nu).min(t_max));
    while norm(&clipped(b)) < nr && b < t_max {
        a = b;
        b = (2.0 * b).min(t_max);
    }
    for _ in 0..60 {
        let mid = 0.5 * (a + b);
        if norm(&clipped(mid)) < nr {
            a = mid;
        } else {
            b = mid;
        }
    }
    let noise = clipped(b);
    let (noise_output_change, noise_class_changed) = change(model, &noise)?;
    let relative = |v: f64| {
        if nx > 0.0 {
            (v / nx) as f32
        } else if v > 0.0 {
            f32::INFINITY
        } else {
            0.0
        }
    };
    Ok(PerturbationStep {
        iteration,
        size: relative(nr),
        norm: nr as f32,
        output_change,
        class_changed,
        noise_output_change,
        noise_class_changed,
        noise_size: relative(norm(&noise)),
        perturbation: r.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::spec::LayerSpec;

    /// For a linear map `f(x) = W·x` the answer is known: `Q` grows along `W`'s top right singular
    /// vector when `σ₁² > λ`, and there the output changes by `σ₁·‖r‖`, more than random noise of
    /// the same norm changes it (on average `‖W‖_F/√n·‖r‖`).
    #[test]
    fn a_linear_model_is_pushed_along_its_top_singular_vector() {
        let specs = LayerSpec::parse_list("flatten,dense(2)").unwrap();
        let mut m = Sequential::new([1, 1, 4], &specs, 0).unwrap();
        // W = diag-like [[3, 0, 0, 0], [0, 0.5, 0, 0]], b = 0: σ₁ = 3 along e₀.
        let p = m.params_mut();
        p.fill(0.0);
        p[0] = 3.0;
        p[5] = 0.5;
        let x = [0.5f32, 0.5, 0.5, 0.5];
        let s = PerturbationSearch {
            lambda: 1.0,
            step: 0.02,
            momentum: 0.5,
            iterations: 45,
            record_every: 15,
            range: (-1000.0, 1000.0),
            seed: 1,
            normalization: None,
        };
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        assert_eq!(
            steps.iter().map(|s| s.iteration).collect::<Vec<_>>(),
            [15, 30, 45]
        );
        // Growing perturbations.
        assert!(steps.windows(2).all(|w| w[1].size > w[0].size));
        let last = steps.last().unwrap();
        // Along e₀: almost all of r is in its first component.
        let r = &last.perturbation;
        assert!(r[0].abs() > 0.99 * norm(r) as f32, "r = {r:?}");
        // Output change = σ₁·‖r‖/‖f(x)‖, with ‖f(x)‖ = ‖(1.5, 0.25)‖.
        let want = 3.0 * norm(r) / (1.5f64.powi(2) + 0.25f64.powi(2)).sqrt();
        assert!((last.output_change as f64 - want).abs() < 1e-3 * want);
        assert!(last.output_change > last.noise_output_change);
    }

    /// With `λ` above `σ₁²` the penalty wins and the perturbation shrinks back towards zero.
    #[test]
    fn a_large_lambda_keeps_the_perturbation_small() {
        let specs = LayerSpec::parse_list("flatten,dense(2)").unwrap();
        let mut m = Sequential::new([1, 1, 4], &specs, 0).unwrap();
        let x = [0.5f32; 4];
        let sigma_sq: f32 = m.params()[..8].iter().map(|v| v * v).sum(); // ≥ σ₁²
        let s = PerturbationSearch {
            lambda: 2.0 * sigma_sq + 1.0,
            step: 0.01,
            iterations: 50,
            ..PerturbationSearch::default()
        };
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        // The random start is 1e-4·‖x‖: the penalty shrinks it by orders of magnitude...
        assert!(
            steps.last().unwrap().size < 1e-5,
            "{:?}",
            steps.last().unwrap().size
        );
        // ...where without it the same ascent grows it.
        let grow = PerturbationSearch { lambda: 0.0, ..s };
        let steps = worst_case_perturbation(&mut m, &x, &grow).unwrap();
        assert!(
            steps.last().unwrap().size > 2e-4,
            "{:?}",
            steps.last().unwrap().size
        );
    }

    /// The baseline noise has exactly the perturbation's norm as applied, after clipping to the
    /// range — on an image whose pixels sit at the range's bounds, where clipping a scaled
    /// Gaussian removes about half of it (the noise used to keep only what clipping left).
    #[test]
    fn the_noise_baseline_has_the_reported_norm_after_clipping() {
        let specs = LayerSpec::parse_list("conv(2,3,p=1),relu,flatten,dense(3)").unwrap();
        let mut m = Sequential::new([1, 6, 6], &specs, 3).unwrap();
        let x: Vec<f32> = (0..36)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.0 })
            .collect();
        let s = PerturbationSearch {
            lambda: 0.0,
            step: 2.0,
            iterations: 30,
            ..PerturbationSearch::default()
        };
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        assert!(steps.last().unwrap().size > 1e-4, "{:?}", steps.last());
        for st in &steps {
            assert!(
                (st.noise_size - st.size).abs() <= 1e-4 * st.size,
                "noise {} against r {}",
                st.noise_size,
                st.size
            );
        }
    }

    /// An all-black image: the search used to start at r = 0 (a start scaled by ‖x‖), where the
    /// gradient vanishes, and never moved. Now it grows, and its size relative to ‖x‖ = 0 is
    /// infinite (the absolute norm is reported beside it).
    #[test]
    fn an_all_zero_image_is_searched_too() {
        let specs = LayerSpec::parse_list("flatten,dense(3)").unwrap();
        let mut m = Sequential::new([1, 4, 4], &specs, 5).unwrap();
        let x = vec![0.0f32; 16];
        let s = PerturbationSearch {
            lambda: 0.0,
            step: 0.5,
            iterations: 40,
            record_every: 10,
            ..PerturbationSearch::default()
        };
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        let (first, last) = (&steps[0], steps.last().unwrap());
        assert!(
            first.norm > 0.0 && last.norm > 100.0 * first.norm,
            "{first:?} {last:?}"
        );
        assert!(last.output_change > 0.0);
        assert_eq!(last.size, f32::INFINITY);
    }

    /// With step·λ at or above 2(1 + μ) the −λr term alone makes the ascent diverge (it used to
    /// run, oscillate to the range's bounds and change the class): refused, naming `lambda`.
    #[test]
    fn a_step_and_lambda_that_diverge_are_refused() {
        let specs = LayerSpec::parse_list("flatten,dense(3)").unwrap();
        let mut m = Sequential::new([1, 2, 2], &specs, 0).unwrap();
        let x = [0.5f32; 4];
        let s = PerturbationSearch {
            lambda: 40.0,
            step: 0.1,
            momentum: 0.9,
            ..PerturbationSearch::default()
        };
        let e = worst_case_perturbation(&mut m, &x, &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lambda") && e.contains("diverges"), "{e}");
        let fine = PerturbationSearch { lambda: 30.0, ..s };
        assert!(worst_case_perturbation(&mut m, &x, &fine).is_ok());
    }

    #[test]
    fn the_range_is_kept_and_bad_settings_are_refused() {
        let specs = LayerSpec::parse_list("conv(2,3,p=1),relu,flatten,dense(3)").unwrap();
        let mut m = Sequential::new([1, 5, 5], &specs, 3).unwrap();
        let x: Vec<f32> = (0..25).map(|i| (i % 5) as f32 / 4.0).collect();
        let s = PerturbationSearch {
            lambda: 0.0,
            step: 0.5,
            iterations: 30,
            ..PerturbationSearch::default()
        };
        m.train();
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        assert!(m.is_training(), "the mode is restored");
        for st in &steps {
            assert!(
                st.perturbation
                    .iter()
                    .zip(&x)
                    .all(|(r, x)| (0.0..=1.0).contains(&(x + r)))
            );
            assert!(st.class_changed.is_some());
        }
        for bad in [
            PerturbationSearch {
                lambda: -1.0,
                ..s.clone()
            },
            PerturbationSearch {
                step: 0.0,
                ..s.clone()
            },
            PerturbationSearch {
                momentum: 1.0,
                ..s.clone()
            },
            PerturbationSearch {
                iterations: 0,
                ..s.clone()
            },
            PerturbationSearch {
                range: (1.0, 0.0),
                ..s.clone()
            },
        ] {
            assert!(
                worst_case_perturbation(&mut m, &x, &bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(worst_case_perturbation(&mut m, &x[..24], &s).is_err());
        let mut nan = x.clone();
        nan[3] = f32::NAN;
        assert!(worst_case_perturbation(&mut m, &nan, &s).is_err());
    }
}
