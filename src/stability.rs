//! How stable is a trained network at an input? The worst-case perturbation search of Antun et
//! al. ("On instabilities of deep learning in image reconstruction and the potential costs of
//! AI", PNAS 2020), with random perturbations of the same size beside it.
//!
//! Given a model `f` and an input `x`, [`worst_case_perturbation`] looks for `r` that makes
//! `‖f(x + r) − f(x)‖` large while `‖r‖` stays small, by gradient ascent with momentum on
//!
//! ```text
//! Q(r) = ½‖f(x + r) − f(x)‖² − (λ/2)‖r‖²,    ∇Q(r) = J(x + r)ᵀ (f(x + r) − f(x)) − λ r,
//! ```
//!
//! keeping `x + r` in the valid pixel range. It records the perturbations along the way
//! (`r₁, r₂, …`, growing), each with `‖r‖/‖x‖`, `‖f(x + r) − f(x)‖/‖f(x)‖`, whether the predicted
//! class changed, and the same output change for Gaussian noise of the same norm: the gap between
//! the two is the paper's point.
//!
//! ```
//! use cnnkit::stability::{worst_case_perturbation, PerturbationSearch};
//! use cnnkit::{LayerSpec, Sequential};
//! let specs = LayerSpec::parse_list("conv(4,3,p=1),relu,flatten,dense(3)")?;
//! let mut m = Sequential::new([1, 8, 8], &specs, 0)?;
//! let x: Vec<f32> = (0..64).map(|i| (i % 7) as f32 / 7.0).collect();
//! let steps = worst_case_perturbation(&mut m, &x, &PerturbationSearch::default())?;
//! for s in &steps {
//!     assert!(s.output_change >= 0.0 && s.size >= 0.0);
//! }
//! # Ok::<(), cnnkit::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::model::Sequential;
use crate::rng::Rng;

/// Settings of [`worst_case_perturbation`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerturbationSearch {
    /// `λ`, the price of the perturbation's size (0: only the range bounds it).
    pub lambda: f32,
    /// Gradient-ascent step size.
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
}

impl Default for PerturbationSearch {
    fn default() -> Self {
        PerturbationSearch {
            lambda: 0.1,
            step: 0.01,
            momentum: 0.9,
            iterations: 100,
            record_every: 10,
            range: (0.0, 1.0),
            seed: 0,
        }
    }
}

/// One recorded perturbation of [`worst_case_perturbation`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerturbationStep {
    /// Ascent iterations done.
    pub iteration: usize,
    /// `‖r‖ / ‖x‖`.
    pub size: f32,
    /// `‖f(x + r) − f(x)‖ / ‖f(x)‖`.
    pub output_change: f32,
    /// Whether the predicted class (arg-max of the output) changed; `None` for an output of one
    /// value.
    pub class_changed: Option<bool>,
    /// `‖f(x + e) − f(x)‖ / ‖f(x)‖` for Gaussian noise `e` with `‖e‖ = ‖r‖` (clipped to the range
    /// like `r`).
    pub noise_output_change: f32,
    /// Whether that noise changed the predicted class.
    pub noise_class_changed: Option<bool>,
    /// The perturbation `r` itself (the shape of `x`).
    pub perturbation: Vec<f32>,
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&a| (a as f64) * (a as f64))
        .sum::<f64>()
        .sqrt()
}

/// An `Err` naming the first value of `x` that is NaN or outside `[lo, hi]`.
fn check_in_range(op: &'static str, x: &[f32], (lo, hi): (f32, f32)) -> Result<()> {
    match x.iter().position(|v| !(lo..=hi).contains(v)) {
        Some(i) => Err(Error::invalid(
            op,
            "x",
            format!("x[{i}] = {} is NaN or outside the range [{lo}, {hi}]", x[i]),
        )),
        None => Ok(()),
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &a) in v.iter().enumerate() {
        if a > v[best] {
            best = i;
        }
    }
    best
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
        Ok(())
    }
}

/// The worst-case perturbation search (see the [module docs](self)) for one input `x` (one
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
    let was_training = model.is_training();
    model.eval();
    let r = search(model, x, s);
    if was_training {
        model.train();
    }
    r
}

fn search(
    model: &mut Sequential,
    x: &[f32],
    s: &PerturbationSearch,
) -> Result<Vec<PerturbationStep>> {
    let (lo, hi) = s.range;
    let fx = model.forward(x, 1)?.to_vec();
    let (nx, nfx) = (
        norm(x).max(f64::MIN_POSITIVE),
        norm(&fx).max(f64::MIN_POSITIVE),
    );
    let class = (fx.len() > 1).then(|| argmax(&fx));
    let mut rng = Rng::new(s.seed);
    // r is kept so that x + r is in range: r = clip(x + r) − x after every step.
    let mut r: Vec<f32> = x
        .iter()
        .map(|&v| {
            ((v as f64 + 1e-4 * nx / (x.len() as f64).sqrt() * rng.normal()) as f32).clamp(lo, hi)
                - v
        })
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
        model.input_gradient(&xr, &diff, &mut grad, None)?;
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
    model: &mut Sequential,
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
    let change = |model: &mut Sequential, pert: &[f32]| -> Result<(f32, Option<bool>)> {
        let xp: Vec<f32> = x.iter().zip(pert).map(|(&a, &b)| a + b).collect();
        let f = model.forward(&xp, 1)?;
        let d: Vec<f32> = f.iter().zip(fx).map(|(&a, &b)| a - b).collect();
        Ok(((norm(&d) / nfx) as f32, class.map(|c| argmax(f) != c)))
    };
    let (output_change, class_changed) = change(model, r)?;
    // Gaussian noise scaled to ‖r‖, then clipped like r.
    let e: Vec<f64> = (0..x.len()).map(|_| rng.normal()).collect();
    let ne = e
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    let noise: Vec<f32> = x
        .iter()
        .zip(&e)
        .map(|(&xi, &ei)| ((xi as f64 + ei * nr / ne) as f32).clamp(lo, hi) - xi)
        .collect();
    let (noise_output_change, noise_class_changed) = change(model, &noise)?;
    Ok(PerturbationStep {
        iteration,
        size: (nr / nx) as f32,
        output_change,
        class_changed,
        noise_output_change,
        noise_class_changed,
        perturbation: r.to_vec(),
    })
}

// ----------------------------------------------------------------------------- attacks

/// The norm an adversarial perturbation's budget `ε` is measured in (per sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackNorm {
    /// `max |δᵢ| ≤ ε`: steps along the gradient's sign.
    Linf,
    /// `‖δ‖₂ ≤ ε`: steps along the normalised gradient.
    L2,
}

/// An adversarial attack on a classifier: FGSM (`steps == 0`: one step of size `ε` from `x`,
/// Goodfellow et al.) or PGD (`steps` projected steps of size `step_size`, from `x` or from a
/// uniform random point of the `ε`-ball, Madry et al.). Every example stays within `ε` of `x`
/// and inside `range`. PGD returns, per sample, the iterate with the highest loss; with
/// `step_size ≥ ε` and no random start its first iterate is the FGSM example, so its loss is
/// never below FGSM's.
#[derive(Clone, Debug, PartialEq)]
pub struct Attack {
    /// The norm of the budget.
    pub norm: AttackNorm,
    /// The budget `ε` (0 leaves `x` unchanged), in the units of the input the model sees.
    pub eps: f32,
    /// PGD steps; 0 is FGSM.
    pub steps: usize,
    /// PGD step size `α`.
    pub step_size: f32,
    /// PGD starts from a uniform random point of the `ε`-ball.
    pub random_start: bool,
    /// The valid input range; examples are clipped to it.
    pub range: (f32, f32),
    /// Seed of the random start.
    pub seed: u64,
}

impl Attack {
    /// FGSM with budget `eps` in `norm`, pixels in `[0, 1]`.
    pub fn fgsm(norm: AttackNorm, eps: f32) -> Attack {
        Attack {
            norm,
            eps,
            steps: 0,
            step_size: eps,
            random_start: false,
            range: (0.0, 1.0),
            seed: 0,
        }
    }

    /// PGD with budget `eps` in `norm`: `steps` steps of `eps / 4` from a random start, pixels in
    /// `[0, 1]`.
    pub fn pgd(norm: AttackNorm, eps: f32, steps: usize) -> Attack {
        Attack {
            steps,
            step_size: eps / 4.0,
            random_start: true,
            ..Attack::fgsm(norm, eps)
        }
    }

    fn validate(&self) -> Result<()> {
        const OP: &str = "adversarial_examples";
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid(
                OP,
                "eps",
                format!("{} (must be finite and >= 0)", self.eps),
            ));
        }
        // (With ε = 0 nothing moves, whatever the step.)
        if self.steps > 0 && self.eps > 0.0 && !(self.step_size.is_finite() && self.step_size > 0.0)
        {
            return Err(Error::invalid(
                OP,
                "step_size",
                format!("{} (must be finite and > 0)", self.step_size),
            ));
        }
        let (lo, hi) = self.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid(
                OP,
                "range",
                format!("({lo}, {hi}) (must be finite, low < high)"),
            ));
        }
        Ok(())
    }
}

/// Each sample's cross-entropy (in `f64`) of `logits` (`[n, classes]`) against `labels`.
fn sample_losses(classes: usize, logits: &[f32], labels: &[u32], out: &mut [f64]) {
    for ((z, &y), l) in logits.chunks_exact(classes).zip(labels).zip(out) {
        let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        *l = lse - z[y as usize] as f64;
    }
}

/// Adversarial examples for the `n` samples `x` with true classes `labels`, maximising the
/// cross-entropy of the evaluation-mode `model` (restored afterwards) under `attack`.
///
/// ```
/// use cnnkit::stability::{adversarial_examples, Attack, AttackNorm};
/// use cnnkit::{LayerSpec, Sequential};
/// let mut m = Sequential::new([1, 4, 4], &LayerSpec::parse_list("flatten,dense(3)")?, 0)?;
/// let x = vec![0.5f32; 2 * 16];
/// let adv = adversarial_examples(&mut m, &x, &[0, 2], 2, &Attack::fgsm(AttackNorm::Linf, 0.1))?;
/// assert!(adv.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 0.1 + 1e-6));
/// # Ok::<(), cnnkit::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArg`] for settings out of range, labels that are not one per sample or not a
/// class of the model, or an `x` with NaN or values outside `range`; errors of the model's
/// passes (a wrong `x` length).
pub fn adversarial_examples(
    model: &mut Sequential,
    x: &[f32],
    labels: &[u32],
    n: usize,
    attack: &Attack,
) -> Result<Vec<f32>> {
    const OP: &str = "adversarial_examples";
    attack.validate()?;
    if labels.len() != n {
        return Err(Error::invalid(
            OP,
            "labels",
            format!("{} labels for {n} samples", labels.len()),
        ));
    }
    let classes = model.output_len();
    if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::invalid(
            OP,
            "labels",
            format!("label {l} for a model of {classes} classes"),
        ));
    }
    check_in_range(OP, x, attack.range)?;
    crate::error::check_len(OP, "x", x, n * crate::layer::numel(model.input_shape()))?;
    let was_training = model.is_training();
    model.eval();
    let r = attack_eval(model, x, labels, n, attack);
    if was_training {
        model.train();
    }
    r
}

fn attack_eval(
    model: &mut Sequential,
    x: &[f32],
    labels: &[u32],
    n: usize,
    a: &Attack,
) -> Result<Vec<f32>> {
    let classes = model.output_len();
    let d = x.len() / n.max(1);
    let (lo, hi) = a.range;
    let mut adv = x.to_vec();
    if n == 0 || a.eps == 0.0 {
        return Ok(adv);
    }
    // Moves `v` (a sample's perturbation, in place) into the ε-ball.
    let project = |v: &mut [f32]| match a.norm {
        AttackNorm::Linf => v.iter_mut().for_each(|e| *e = e.clamp(-a.eps, a.eps)),
        AttackNorm::L2 => {
            let r = norm(v);
            if r > a.eps as f64 {
                let s = (a.eps as f64 / r) as f32;
                v.iter_mut().for_each(|e| *e *= s);
            }
        }
    };
    // adv = clip(x + project(adv − x)) per sample.
    let settle = |adv: &mut [f32]| {
        for (a_s, x_s) in adv.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let mut delta: Vec<f32> = a_s.iter().zip(x_s).map(|(a, b)| a - b).collect();
            project(&mut delta);
            for ((a, b), e) in a_s.iter_mut().zip(x_s).zip(&delta) {
                *a = (b + e).clamp(lo, hi);
            }
        }
    };
    if a.steps > 0 && a.random_start {
        let mut rng = Rng::new(a.seed);
        for s in adv.chunks_exact_mut(d) {
            match a.norm {
                AttackNorm::Linf => s.iter_mut().for_each(|v| *v += rng.uniform(-a.eps, a.eps)),
                AttackNorm::L2 => {
                    // A uniform point of the d-ball: a Gaussian direction, radius ε·u^(1/d).
                    let dir: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
                    let len = dir.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
                    let radius = a.eps as f64 * (rng.uniform(0.0, 1.0) as f64).powf(1.0 / d as f64);
                    for (v, g) in s.iter_mut().zip(&dir) {
                        *v += (g / len * radius) as f32;
                    }
                }
            }
        }
        settle(&mut adv);
    }
    let (step, iterations) = if a.steps == 0 {
        (a.eps, 1)
    } else {
        (a.step_size, a.steps)
    };
    let mut grad = vec![0.0f32; x.len()];
    let mut dlogits = vec![0.0f32; n * classes];
    let (mut best, mut best_loss, mut loss) =
        (adv.clone(), vec![f64::NEG_INFINITY; n], vec![0.0; n]);
    for it in 0..=iterations {
        let logits = model.forward(&adv, n)?;
        sample_losses(classes, logits, labels, &mut loss);
        // Keep each sample's highest-loss point (PGD's start counts only with a random start).
        if it > 0 || a.random_start {
            for (i, (&l, b)) in loss.iter().zip(best_loss.iter_mut()).enumerate() {
                if l > *b {
                    *b = l;
                    best[i * d..(i + 1) * d].copy_from_slice(&adv[i * d..(i + 1) * d]);
                }
            }
        }
        if it == iterations {
            break;
        }
        crate::kernels::cross_entropy_loss(classes, logits, labels, 0.0, Some(&mut dlogits))?;
        model.input_gradient(&adv, &dlogits, &mut grad, None)?;
        for (a_s, g_s) in adv.chunks_exact_mut(d).zip(grad.chunks_exact(d)) {
            match a.norm {
                AttackNorm::Linf => {
                    for (v, g) in a_s.iter_mut().zip(g_s) {
                        // torch.sign: 0 for 0.
                        let s = if *g > 0.0 {
                            1.0
                        } else if *g < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        *v += step * s;
                    }
                }
                AttackNorm::L2 => {
                    let r = norm(g_s);
                    if r > 0.0 {
                        let s = (step as f64 / r) as f32;
                        a_s.iter_mut().zip(g_s).for_each(|(v, g)| *v += s * g);
                    }
                }
            }
        }
        settle(&mut adv);
    }
    Ok(if a.steps == 0 { adv } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerSpec;

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

    /// A small CNN with pooling and every input in [0, 1], some exactly at the bounds.
    fn cnn_and_batch() -> (Sequential, Vec<f32>, Vec<u32>) {
        let specs =
            LayerSpec::parse_list("conv(4,3,p=1),relu,maxpool(2),flatten,dense(3)").unwrap();
        let m = Sequential::new([1, 6, 6], &specs, 5).unwrap();
        let mut r = Rng::new(9);
        let x: Vec<f32> = (0..4 * 36)
            .map(|i| match i % 9 {
                0 => 0.0,
                1 => 1.0,
                _ => r.uniform(0.0, 1.0),
            })
            .collect();
        (m, x, vec![0, 1, 2, 1])
    }

    fn losses(m: &mut Sequential, x: &[f32], labels: &[u32]) -> Vec<f64> {
        let n = labels.len();
        let logits = m.forward(x, n).unwrap().to_vec();
        let mut l = vec![0.0; n];
        sample_losses(3, &logits, labels, &mut l);
        l
    }

    /// Every example stays within ε of its input in the attack's norm (per sample) and inside the
    /// range, for FGSM and PGD with a random start, in both norms.
    #[test]
    fn attacks_respect_their_budget_and_the_range() {
        let (mut m, x, labels) = cnn_and_batch();
        for (norm, eps) in [(AttackNorm::Linf, 0.1f32), (AttackNorm::L2, 0.8)] {
            for a in [Attack::fgsm(norm, eps), Attack::pgd(norm, eps, 6)] {
                let adv = adversarial_examples(&mut m, &x, &labels, 4, &a).unwrap();
                assert!(adv.iter().all(|v| (0.0..=1.0).contains(v)), "{a:?}: range");
                assert!(adv != x, "{a:?}: nothing moved");
                for (a_s, x_s) in adv.chunks_exact(36).zip(x.chunks_exact(36)) {
                    let d: Vec<f32> = a_s.iter().zip(x_s).map(|(a, b)| a - b).collect();
                    let size = match norm {
                        AttackNorm::Linf => d.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)),
                        AttackNorm::L2 => super::norm(&d),
                    };
                    assert!(size <= eps as f64 * (1.0 + 1e-5), "{a:?}: size {size}");
                }
            }
        }
    }

    /// A budget of 0 returns the input itself.
    #[test]
    fn an_eps_of_zero_changes_nothing() {
        let (mut m, x, labels) = cnn_and_batch();
        for norm in [AttackNorm::Linf, AttackNorm::L2] {
            for a in [Attack::fgsm(norm, 0.0), Attack::pgd(norm, 0.0, 4)] {
                assert_eq!(adversarial_examples(&mut m, &x, &labels, 4, &a).unwrap(), x);
            }
        }
    }

    /// FGSM raises the loss of a linear classifier on every sample: the cross-entropy is convex in
    /// `x`, so `L(x + δ) ≥ L(x) + ∇L·δ`, and every `δᵢ` has the sign of `∇Lᵢ` (or is 0). PGD
    /// started at `x` with steps of `ε` begins at the FGSM example and keeps each sample's best
    /// point, so its loss is at least FGSM's — on the CNN too.
    #[test]
    fn fgsm_raises_the_loss_and_pgd_does_at_least_as_well() {
        let specs = LayerSpec::parse_list("flatten,dense(3)").unwrap();
        let mut lin = Sequential::new([1, 6, 6], &specs, 2).unwrap();
        let (mut cnn, x, labels) = cnn_and_batch();
        let clean = losses(&mut lin, &x, &labels);
        let fgsm = Attack::fgsm(AttackNorm::Linf, 0.05);
        let adv = adversarial_examples(&mut lin, &x, &labels, 4, &fgsm).unwrap();
        for (a, c) in losses(&mut lin, &adv, &labels).iter().zip(&clean) {
            assert!(a > c, "FGSM did not raise the loss: {a} <= {c}");
        }
        for m in [&mut lin, &mut cnn] {
            for norm in [AttackNorm::Linf, AttackNorm::L2] {
                let eps = if norm == AttackNorm::Linf { 0.05 } else { 0.5 };
                let f = Attack::fgsm(norm, eps);
                let p = Attack {
                    steps: 5,
                    step_size: eps,
                    random_start: false,
                    ..f.clone()
                };
                let lf = adversarial_examples(m, &x, &labels, 4, &f).unwrap();
                let lp = adversarial_examples(m, &x, &labels, 4, &p).unwrap();
                let (lf, lp) = (losses(m, &lf, &labels), losses(m, &lp, &labels));
                for (p, f) in lp.iter().zip(&lf) {
                    assert!(p >= f, "{norm:?}: PGD loss {p} below FGSM's {f}");
                }
            }
        }
    }

    #[test]
    fn bad_attack_settings_and_inputs_are_errors() {
        let (mut m, x, labels) = cnn_and_batch();
        let ok = Attack::pgd(AttackNorm::Linf, 0.1, 2);
        let err = |m: &mut Sequential, x: &[f32], l: &[u32], a: &Attack| {
            adversarial_examples(m, x, l, 4, a).unwrap_err().to_string()
        };
        assert!(err(&mut m, &x, &labels[..3], &ok).contains("labels"));
        assert!(err(&mut m, &x, &[0, 1, 2, 3], &ok).contains("label 3"));
        let nan = Attack {
            eps: f32::NAN,
            ..ok.clone()
        };
        assert!(err(&mut m, &x, &labels, &nan).contains("eps"));
        let step = Attack {
            step_size: 0.0,
            ..ok.clone()
        };
        assert!(err(&mut m, &x, &labels, &step).contains("step_size"));
        let range = Attack {
            range: (1.0, 0.0),
            ..ok.clone()
        };
        assert!(err(&mut m, &x, &labels, &range).contains("range"));
        let mut out = x.clone();
        out[5] = 1.5;
        assert!(err(&mut m, &out, &labels, &ok).contains("x[5]"));
        assert!(err(&mut m, &x[..10], &labels, &ok).contains("x"));
        assert!(m.is_training(), "the mode is restored");
    }
}
