//! The worst-case perturbation search of Antun et al. (see the [module documentation](super)),
//! with Gaussian noise of the same norm beside it.

use super::operator::Operator;
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
    /// The forward operator of an inverse problem: the model sees `A(x + r)` for an image `x`
    /// and a perturbation `r` of the image (`None`: the model sees `x + r`). The noise baseline
    /// is then noise in the measurement domain ([`Operator::measurement_noise`]) of the norm of
    /// `A r`.
    pub operator: Option<Operator>,
    /// What the ascent makes large.
    pub objective: Objective,
    /// Where the ascent starts (`None`: a tiny random `r₀`, see `seed`); `x + r₀` must be in
    /// range.
    pub start: Option<Vec<f32>>,
}

/// What [`worst_case_perturbation`] maximises (besides the `−(λ/2)‖r‖²` penalty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Objective {
    /// `½‖f(A(x + r)) − f(A x)‖²`: how far the output moves.
    #[default]
    OutputChange,
    /// `½‖f(A(x + r)) − x‖²`: the reconstruction's error against the true image, the study's
    /// measure (needs an operator and an output of the image's shape).
    ErrorToImage,
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
            operator: None,
            objective: Objective::OutputChange,
            start: None,
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
    /// room for that much noise in its direction, when it is the most there is. With an operator:
    /// `‖e‖ / ‖A x‖` of the measurement noise, which equals `measured_size`.
    pub noise_size: f32,
    /// `‖A r‖ / ‖A x‖`: the perturbation as the network sees it (`size` without an operator).
    pub measured_size: f32,
    /// `‖f(A(x + r)) − x‖ / ‖x‖`, the reconstruction's error against the true image (with an
    /// operator, for an output of the image's shape).
    pub error: Option<f32>,
    /// The same for the noise baseline: `‖f(A x + e) − x‖ / ‖x‖`.
    pub noise_error: Option<f32>,
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
        if self.objective == Objective::ErrorToImage && self.operator.is_none() {
            return bad(
                "objective",
                "the error against the image needs a forward operator (the network's input is \
                 not the image)"
                    .into(),
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
    if let Some(op) = &s.operator {
        op.apply([c, h, w], x)?;
    }
    if s.objective == Objective::ErrorToImage && model.output_len() != x.len() {
        return Err(Error::invalid(
            OP,
            "objective",
            format!(
                "the error against the image needs an output of the image's shape ({c}x{h}x{w}); \
                 the model gives {:?}",
                model.output_shape()
            ),
        ));
    }
    if let Some(r0) = &s.start {
        crate::error::check_len(OP, "start", r0, x.len())?;
        let xr: Vec<f32> = x.iter().zip(r0).map(|(a, b)| a + b).collect();
        check_in_range(OP, &xr, s.range)
            .map_err(|_| Error::invalid(OP, "start", "x + start leaves the range (or is NaN)"))?;
    }
    in_eval(model, |m| {
        let mut pm = PixelModel::new(OP, m, s.normalization.as_ref())?;
        search(&mut pm, x, s)
    })
}

/// What the search keeps of the problem: the operator, `A x`, `f(A x)` and the target.
struct Problem<'a> {
    shape: crate::shape::Shape3,
    op: Option<&'a Operator>,
    x: &'a [f32],
    ax: Vec<f32>,
    fx: Vec<f32>,
}

impl Problem<'_> {
    /// `A v` (`v` itself without an operator).
    fn a(&self, v: &[f32]) -> Result<Vec<f32>> {
        match self.op {
            Some(o) => o.apply(self.shape, v),
            None => Ok(v.to_vec()),
        }
    }
}

fn search(
    model: &mut PixelModel<'_>,
    x: &[f32],
    s: &PerturbationSearch,
) -> Result<Vec<PerturbationStep>> {
    let (lo, hi) = s.range;
    let shape = model.model.input_shape();
    let mut p = Problem {
        shape,
        op: s.operator.as_ref(),
        x,
        ax: Vec::new(),
        fx: Vec::new(),
    };
    p.ax = p.a(x)?;
    p.fx = model.forward(&p.ax, 1)?.to_vec();
    let (nx, nfx) = (norm(x), norm(&p.fx).max(f64::MIN_POSITIVE));
    let class = (p.fx.len() > 1).then(|| argmax(&p.fx));
    let mut rng = Rng::new(s.seed);
    // A tiny Gaussian start, 1e-4 of the image's RMS value — or of the range's span for an image
    // (nearly) all zero, which would otherwise start at r = 0, where the gradient vanishes.
    let rms = nx / (x.len() as f64).sqrt();
    let start = 1e-4 * rms.max(1e-3 * (hi - lo) as f64);
    // r is kept so that x + r is in range: r = clip(x + r) − x after every step.
    let mut r: Vec<f32> = match &s.start {
        Some(r0) => r0.clone(),
        None => x
            .iter()
            .map(|&v| ((v as f64 + start * rng.normal()) as f32).clamp(lo, hi) - v)
            .collect(),
    };
    let target: Vec<f32> = match s.objective {
        Objective::OutputChange => p.fx.clone(),
        Objective::ErrorToImage => x.to_vec(),
    };
    let mut vel = vec![0.0f32; x.len()];
    let (mut xr, mut diff, mut grad) = (
        vec![0.0f32; x.len()],
        vec![0.0f32; p.fx.len()],
        vec![0.0f32; x.len()],
    );
    let mut out = Vec::new();
    for it in 1..=s.iterations {
        for ((a, &b), &d) in xr.iter_mut().zip(x).zip(&r) {
            *a = b + d;
        }
        let y = p.a(&xr)?;
        let f = model.forward(&y, 1)?;
        for ((d, &a), &b) in diff.iter_mut().zip(f).zip(&target) {
            *d = a - b;
        }
        model.input_gradient(&y, &diff, &mut grad)?;
        if let Some(o) = p.op {
            grad = o.adjoint(shape, &grad)?;
        }
        for (((v, ri), &g), &xi) in vel.iter_mut().zip(r.iter_mut()).zip(&grad).zip(x) {
            *v = s.momentum * *v + s.step * (g - s.lambda * *ri);
            *ri = (xi + *ri + *v).clamp(lo, hi) - xi;
        }
        if it % s.record_every == 0 || it == s.iterations {
            out.push(record(model, &p, nx, nfx, class, &r, it, &mut rng, s)?);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn record(
    model: &mut PixelModel<'_>,
    p: &Problem<'_>,
    nx: f64,
    nfx: f64,
    class: Option<usize>,
    r: &[f32],
    iteration: usize,
    rng: &mut Rng,
    s: &PerturbationSearch,
) -> Result<PerturbationStep> {
    let (x, fx) = (p.x, &p.fx[..]);
    let nr = norm(r);
    let relative = |v: f64, of: f64| {
        if of > 0.0 {
            (v / of) as f32
        } else if v > 0.0 {
            f32::INFINITY
        } else {
            0.0
        }
    };
    // The output change, class change and (with an operator, for an image-shaped output) error
    // against the image, for the network input `y`.
    let with_error = p.op.is_some() && fx.len() == x.len();
    let effect =
        |model: &mut PixelModel<'_>, y: &[f32]| -> Result<(f32, Option<bool>, Option<f32>)> {
            let f = model.forward(y, 1)?;
            let d: Vec<f32> = f.iter().zip(fx).map(|(&a, &b)| a - b).collect();
            let error = with_error.then(|| {
                let e: Vec<f32> = f.iter().zip(x).map(|(&a, &b)| a - b).collect();
                relative(norm(&e), nx)
            });
            Ok((
                (norm(&d) / nfx) as f32,
                class.map(|c| argmax(f) != c),
                error,
            ))
        };
    // The perturbation's effect, and that of the baseline noise (its measured size): with an
    // operator, noise in the measurement domain of norm ‖A r‖; without, image noise of norm
    // ‖r‖ after clipping.
    let xr: Vec<f32> = x.iter().zip(r).map(|(&a, &b)| a + b).collect();
    let (output_change, class_changed, error) = effect(model, &p.a(&xr)?)?;
    let (noisy, noise_size, measured_size) = match p.op {
        Some(op) => {
            let ar = p.a(r)?;
            let nar = norm(&ar);
            let g: Vec<f32> = (0..x.len()).map(|_| rng.normal() as f32).collect();
            let mut e = op.measurement_noise(p.shape, &g)?;
            let ne = norm(&e);
            let t = if ne > 0.0 { (nar / ne) as f32 } else { 0.0 };
            e.iter_mut().for_each(|v| *v *= t);
            let nax = norm(&p.ax);
            let ye: Vec<f32> = p.ax.iter().zip(&e).map(|(&a, &b)| a + b).collect();
            (ye, relative(norm(&e), nax), relative(nar, nax))
        }
        None => {
            let noise = clipped_noise(x, nr, rng, s.range);
            let xe: Vec<f32> = x.iter().zip(&noise).map(|(&a, &b)| a + b).collect();
            (xe, relative(norm(&noise), nx), relative(nr, nx))
        }
    };
    let (noise_output_change, noise_class_changed, noise_error) = effect(model, &noisy)?;
    Ok(PerturbationStep {
        iteration,
        size: relative(nr, nx),
        norm: nr as f32,
        output_change,
        class_changed,
        noise_output_change,
        noise_class_changed,
        noise_size,
        measured_size,
        error,
        noise_error,
        perturbation: r.to_vec(),
    })
}

/// Image noise of norm `nr` after clipping `x + e` to `range`: a Gaussian direction `u`, scaled
/// by `t` so that `clip(x + t·u) − x` has norm `nr` (that norm grows with `t`, each coordinate's
/// clipped step does, so bisection finds `t`; where the range leaves no room for that much, the
/// most there is).
fn clipped_noise(x: &[f32], nr: f64, rng: &mut Rng, (lo, hi): (f32, f32)) -> Vec<f32> {
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
    clipped(b)
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
            ..PerturbationSearch::default()
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

    /// With a subsampling operator the search perturbs the image, and the network sees only what
    /// the mask measures: the perturbation ends up (almost) entirely on measured pixels, since
    /// the rest only costs `λ`; the output change is that of `A r`; the measurement noise lies on
    /// measured pixels too and has the norm of `A r`.
    #[test]
    fn a_masked_problem_is_perturbed_where_it_is_measured() {
        let specs = LayerSpec::parse_list("conv(1,3,p=1),flatten,dense(4)").unwrap();
        let mut m = Sequential::new([1, 4, 4], &specs, 3).unwrap();
        let x: Vec<f32> = (0..16)
            .map(|i| 0.3 + 0.4 * ((i * 5) % 7) as f32 / 7.0)
            .collect();
        let op = Operator::subsample(4, 4, 0.5, 2);
        let Operator::Mask { keep } = &op else {
            unreachable!()
        };
        let keep = keep.clone();
        assert!(keep.iter().any(|&k| k) && keep.iter().any(|&k| !k));
        let s = PerturbationSearch {
            lambda: 0.05,
            step: 0.05,
            iterations: 200,
            record_every: 50,
            range: (-100.0, 100.0),
            operator: Some(op.clone()),
            ..PerturbationSearch::default()
        };
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        let last = steps.last().unwrap();
        let r = &last.perturbation;
        let off: f64 = r
            .iter()
            .zip(&keep)
            .filter(|(_, k)| !**k)
            .map(|(v, _)| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(off < 1e-3 * norm(r), "{off} of {} off the mask", norm(r));
        let ax = op.apply([1, 4, 4], &x).unwrap();
        let ar = op.apply([1, 4, 4], r).unwrap();
        assert!((last.measured_size as f64 - norm(&ar) / norm(&ax)).abs() < 1e-5);
        assert!((last.noise_size - last.measured_size).abs() < 1e-4 * last.measured_size);
        // The output change is f's at A(x + r) against A x.
        m.eval();
        let fx = m.forward(&ax, 1).unwrap().to_vec();
        let y: Vec<f32> = ax.iter().zip(&ar).map(|(a, b)| a + b).collect();
        let fy = m.forward(&y, 1).unwrap().to_vec();
        let d: Vec<f32> = fy.iter().zip(&fx).map(|(a, b)| a - b).collect();
        let want = norm(&d) / norm(&fx);
        assert!((last.output_change as f64 - want).abs() < 1e-4 * want);
        assert!(last.output_change > last.noise_output_change);
        // Classifier outputs have no error against the image.
        assert!(last.error.is_none() && last.noise_error.is_none());
    }

    /// The study's objective: the reconstruction's error against the true image. On an identity
    /// network after a mask, `f(A(x + r)) − x = A(x + r) − x`, so the error grows with the
    /// measured part of `r`, and the error at a record is exactly that norm.
    #[test]
    fn the_error_against_the_image_is_the_studys_measure() {
        // A 1x1 convolution of weight 1 and bias 0: the identity on the network's input.
        let specs = LayerSpec::parse_list("conv(1,1)").unwrap();
        let mut m = Sequential::new([1, 4, 4], &specs, 0).unwrap();
        m.params_mut().copy_from_slice(&[1.0, 0.0]);
        let x: Vec<f32> = (0..16).map(|i| 0.2 + 0.05 * i as f32).collect();
        let op = Operator::subsample(4, 4, 0.5, 2);
        let s = PerturbationSearch {
            lambda: 0.1,
            step: 0.05,
            iterations: 60,
            record_every: 20,
            range: (-100.0, 100.0),
            operator: Some(op.clone()),
            objective: Objective::ErrorToImage,
            ..PerturbationSearch::default()
        };
        let steps = worst_case_perturbation(&mut m, &x, &s).unwrap();
        for st in &steps {
            let xr: Vec<f32> = x.iter().zip(&st.perturbation).map(|(a, b)| a + b).collect();
            let y = op.apply([1, 4, 4], &xr).unwrap();
            let e: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a - b).collect();
            let want = norm(&e) / norm(&x);
            let got = st.error.unwrap() as f64;
            assert!((got - want).abs() < 1e-5 * want.max(1.0), "{got} vs {want}");
        }
        assert!(steps.windows(2).all(|w| w[1].error >= w[0].error));
        // Without an operator, or for a classifier, the objective is refused.
        let e = worst_case_perturbation(
            &mut m,
            &x,
            &PerturbationSearch {
                operator: None,
                ..s.clone()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("operator"), "{e}");
        let specs = LayerSpec::parse_list("flatten,dense(3)").unwrap();
        let mut c = Sequential::new([1, 4, 4], &specs, 0).unwrap();
        let e = worst_case_perturbation(&mut c, &x, &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image's shape"), "{e}");
        // A start outside the range, or of the wrong length, is refused.
        let bad = PerturbationSearch {
            start: Some(vec![1000.0; 16]),
            ..s.clone()
        };
        assert!(
            worst_case_perturbation(&mut m, &x, &bad)
                .unwrap_err()
                .to_string()
                .contains("start")
        );
        let bad = PerturbationSearch {
            start: Some(vec![0.0; 3]),
            ..s
        };
        assert!(worst_case_perturbation(&mut m, &x, &bad).is_err());
    }
}
