//! Adversarial examples: FGSM, PGD and same-size random noise, in the L∞ and L2 norms, in
//! pixel units.

use super::pixels::{PixelModel, check_in_range, in_eval, norm};
use crate::data::normalization::Normalization;
use crate::error::{Error, Result};
use crate::model::Sequential;
use crate::rng::{Rng, mix64};

/// The norm an adversarial perturbation's budget `ε` is measured in (per sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttackNorm {
    /// `max |δᵢ| ≤ ε`: steps along the gradient's sign.
    Linf,
    /// `‖δ‖₂ ≤ ε`: steps along the normalised gradient.
    L2,
}

/// What an [`Attack`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttackKind {
    /// One step of size `ε` along the loss gradient's sign (L∞) or direction (L2) from `x`
    /// (Goodfellow et al., the fast gradient sign method).
    Fgsm,
    /// `steps` projected gradient steps of size `step_size`, from `x` or from a uniform random
    /// point of the `ε`-ball (Madry et al.).
    Pgd,
    /// The baseline: a random perturbation on the `ε`-sphere, blind to the model — independent
    /// random signs times `ε` (L∞), or a uniformly random direction of length `ε` (L2).
    Noise,
}

impl std::str::FromStr for AttackKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fgsm" => Ok(AttackKind::Fgsm),
            "pgd" => Ok(AttackKind::Pgd),
            "noise" => Ok(AttackKind::Noise),
            _ => Err(Error::invalid(
                "AttackKind",
                "attack",
                format!("'{s}': use fgsm, pgd or noise"),
            )),
        }
    }
}

/// An adversarial attack on a classifier ([`AttackKind`]): FGSM, PGD, or random noise of the
/// same size as the baseline. Every example stays within `ε` of `x` and inside `range`. PGD
/// returns, per sample, the iterate with the highest loss by default ([`PgdResult`]; with
/// `step_size ≥ ε` and no random start its first iterate is the FGSM example, so its loss is
/// never below FGSM's), or its last iterate, as most PyTorch implementations do.
///
/// With a [`Normalization`], `x`, `ε`, `step_size` and `range` are in pixel units: the model sees
/// the normalised examples, and the examples returned are pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Attack {
    /// FGSM, PGD or noise.
    pub kind: AttackKind,
    /// The norm of the budget.
    pub norm: AttackNorm,
    /// The budget `ε` (0 leaves `x` unchanged), in the units of the input the model sees.
    pub eps: f32,
    /// PGD steps.
    pub steps: usize,
    /// PGD step size `α`.
    pub step_size: f32,
    /// PGD starts from a uniform random point of the `ε`-ball.
    pub random_start: bool,
    /// The valid input range; examples are clipped to it.
    pub range: (f32, f32),
    /// Seed of the random start and of the noise.
    pub seed: u64,
    /// How the model's input is made from pixels (`None`: the examples are the model's input).
    pub normalization: Option<Normalization>,
    /// Which PGD iterate is returned (default: each sample's highest-loss one).
    pub result: PgdResult,
}

/// Which iterate of PGD [`adversarial_examples`] returns for each sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PgdResult {
    /// The iterate with the highest loss (the start counts with a random start): never weaker
    /// than any iterate, so robustness is not overstated by a last step that lowered the loss.
    #[default]
    HighestLoss,
    /// The last iterate, as `torchattacks`' and most re-implementations' PGD return it.
    Last,
}

impl Attack {
    /// FGSM with budget `eps` in `norm`, pixels in `[0, 1]`.
    pub fn fgsm(norm: AttackNorm, eps: f32) -> Attack {
        Attack {
            kind: AttackKind::Fgsm,
            norm,
            eps,
            steps: 0,
            step_size: eps,
            random_start: false,
            range: (0.0, 1.0),
            seed: 0,
            normalization: None,
            result: PgdResult::HighestLoss,
        }
    }

    /// Random noise on the `eps`-sphere of `norm` (clipped to the range), the baseline beside an
    /// attack, pixels in `[0, 1]`.
    pub fn noise(norm: AttackNorm, eps: f32) -> Attack {
        Attack {
            kind: AttackKind::Noise,
            ..Attack::fgsm(norm, eps)
        }
    }

    /// `kind` with budget `eps` in `norm` and the defaults of [`Attack::fgsm`], [`Attack::pgd`]
    /// (`steps` steps) or [`Attack::noise`].
    pub fn of_kind(kind: AttackKind, norm: AttackNorm, eps: f32, steps: usize) -> Attack {
        match kind {
            AttackKind::Fgsm => Attack::fgsm(norm, eps),
            AttackKind::Pgd => Attack::pgd(norm, eps, steps),
            AttackKind::Noise => Attack::noise(norm, eps),
        }
    }

    /// The same attack with budget `eps`; PGD's step size keeps its ratio to the budget.
    pub fn with_eps(&self, eps: f32) -> Attack {
        let step_size = if self.eps > 0.0 {
            self.step_size / self.eps * eps
        } else {
            eps / 4.0
        };
        Attack {
            eps,
            step_size,
            ..self.clone()
        }
    }

    /// PGD with budget `eps` in `norm`: `steps` steps of `eps / 4` from a random start, pixels in
    /// `[0, 1]`.
    pub fn pgd(norm: AttackNorm, eps: f32, steps: usize) -> Attack {
        Attack {
            kind: AttackKind::Pgd,
            steps,
            step_size: eps / 4.0,
            random_start: true,
            ..Attack::fgsm(norm, eps)
        }
    }

    /// Checks the settings: a finite `eps >= 0`, at least one step and a positive step size for
    /// PGD, a finite range with `low < high`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "adversarial_examples";
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid(
                OP,
                "eps",
                format!("{} (must be finite and >= 0)", self.eps),
            ));
        }
        // (With ε = 0 nothing moves, whatever the step.)
        let pgd = self.kind == AttackKind::Pgd;
        if pgd && self.steps == 0 {
            return Err(Error::invalid(OP, "steps", "PGD needs at least 1 step"));
        }
        if pgd && self.eps > 0.0 && !(self.step_size.is_finite() && self.step_size > 0.0) {
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
    adversarial_examples_from(model, x, labels, n, attack, 0)
}

/// [`adversarial_examples`] of samples numbered from `first` in a larger set: sample `i`'s random
/// start or noise is drawn from `(seed, first + i)`, so a set attacked in batches gets the draws
/// it would get in one call.
pub(crate) fn adversarial_examples_from(
    model: &mut Sequential,
    x: &[f32],
    labels: &[u32],
    n: usize,
    attack: &Attack,
    first: usize,
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
    crate::error::check_len(OP, "x", x, n * crate::shape::numel(model.input_shape()))?;
    in_eval(model, |m| {
        let mut pm = PixelModel::new(OP, m, attack.normalization.as_ref())?;
        attack_eval(&mut pm, x, labels, n, attack, first, &vec![1.0; n])
    })
}

/// The random generator of sample `index` under `seed`: each sample's random start and noise are
/// its own, whichever batch it comes in.
fn sample_rng(seed: u64, index: usize) -> Rng {
    Rng::new(mix64(seed ^ mix64(index as u64 ^ 0x005E_ED0F_5A4D_91E5)))
}

/// The attack `a` on the `n` samples `x`, sample `i` with budget and step size `a.eps·scale[i]`
/// and `a.step_size·scale[i]` (all 1 for the attack as given).
pub(super) fn attack_eval(
    model: &mut PixelModel<'_>,
    x: &[f32],
    labels: &[u32],
    n: usize,
    a: &Attack,
    first: usize,
    scale: &[f32],
) -> Result<Vec<f32>> {
    let classes = model.model.output_len();
    let d = x.len() / n.max(1);
    let (lo, hi) = a.range;
    let mut adv = x.to_vec();
    if n == 0 || a.eps == 0.0 {
        return Ok(adv);
    }
    let eps_of = |i: usize| a.eps * scale[i];
    // Moves `v` (sample `i`'s perturbation, in place) into its ε-ball.
    let project = |i: usize, v: &mut [f32]| {
        let eps = eps_of(i);
        match a.norm {
            AttackNorm::Linf => v.iter_mut().for_each(|e| *e = e.clamp(-eps, eps)),
            AttackNorm::L2 => {
                let r = norm(v);
                if r > eps as f64 {
                    let s = (eps as f64 / r) as f32;
                    v.iter_mut().for_each(|e| *e *= s);
                }
            }
        }
    };
    // adv = clip(x + project(adv − x)) per sample.
    let settle = |adv: &mut [f32]| {
        for (i, (a_s, x_s)) in adv.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
            let mut delta: Vec<f32> = a_s.iter().zip(x_s).map(|(a, b)| a - b).collect();
            project(i, &mut delta);
            for ((a, b), e) in a_s.iter_mut().zip(x_s).zip(&delta) {
                *a = (b + e).clamp(lo, hi);
            }
        }
    };
    if a.kind == AttackKind::Noise {
        for (i, s) in adv.chunks_exact_mut(d).enumerate() {
            let mut rng = sample_rng(a.seed, first + i);
            let eps = eps_of(i);
            match a.norm {
                AttackNorm::Linf => s
                    .iter_mut()
                    .for_each(|v| *v += if rng.next_u64() >> 63 == 1 { eps } else { -eps }),
                AttackNorm::L2 => {
                    let dir: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
                    let len = dir.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
                    for (v, g) in s.iter_mut().zip(&dir) {
                        *v += (g / len * eps as f64) as f32;
                    }
                }
            }
        }
        settle(&mut adv);
        return Ok(adv);
    }
    let pgd = a.kind == AttackKind::Pgd;
    if pgd && a.random_start {
        for (i, s) in adv.chunks_exact_mut(d).enumerate() {
            let mut rng = sample_rng(a.seed, first + i);
            let eps = eps_of(i);
            match a.norm {
                AttackNorm::Linf => s.iter_mut().for_each(|v| *v += rng.uniform(-eps, eps)),
                AttackNorm::L2 => {
                    // A uniform point of the d-ball: a Gaussian direction, radius ε·u^(1/d).
                    let dir: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
                    let len = dir.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
                    let radius = eps as f64 * (rng.uniform(0.0, 1.0) as f64).powf(1.0 / d as f64);
                    for (v, g) in s.iter_mut().zip(&dir) {
                        *v += (g / len * radius) as f32;
                    }
                }
            }
        }
        settle(&mut adv);
    }
    let (step, iterations) = if pgd {
        (a.step_size, a.steps)
    } else {
        (a.eps, 1)
    };
    let mut grad = vec![0.0f32; x.len()];
    let mut dlogits = vec![0.0f32; n * classes];
    let (mut best, mut best_loss, mut loss) =
        (adv.clone(), vec![f64::NEG_INFINITY; n], vec![0.0; n]);
    for it in 0..=iterations {
        let logits = model.forward(&adv, n)?;
        sample_losses(classes, logits, labels, &mut loss);
        // Keep each sample's highest-loss point (PGD's start counts only with a random start).
        if it > 0 || (pgd && a.random_start) {
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
        crate::kernels::loss::cross_entropy_loss(classes, logits, labels, 0.0, Some(&mut dlogits))?;
        model.input_gradient(&adv, &dlogits, &mut grad)?;
        for (i, (a_s, g_s)) in adv
            .chunks_exact_mut(d)
            .zip(grad.chunks_exact(d))
            .enumerate()
        {
            let step = step * scale[i];
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
    Ok(if pgd && a.result == PgdResult::HighestLoss {
        best
    } else {
        adv
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::spec::LayerSpec;

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
                    kind: AttackKind::Pgd,
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

    /// The noise baseline sits on the ε-sphere: every pixel moved by exactly ε (L∞), or a
    /// perturbation of length exactly ε (L2), away from the range's bounds.
    #[test]
    fn noise_has_exactly_the_budget() {
        let (mut m, _, labels) = cnn_and_batch();
        let x = vec![0.5f32; 4 * 36];
        for (norm, eps) in [(AttackNorm::Linf, 0.1f32), (AttackNorm::L2, 0.8)] {
            let adv =
                adversarial_examples(&mut m, &x, &labels, 4, &Attack::noise(norm, eps)).unwrap();
            for (a_s, x_s) in adv.chunks_exact(36).zip(x.chunks_exact(36)) {
                let d: Vec<f32> = a_s.iter().zip(x_s).map(|(a, b)| a - b).collect();
                match norm {
                    AttackNorm::Linf => assert!(d.iter().all(|v| (v.abs() - eps).abs() < 1e-6)),
                    AttackNorm::L2 => assert!((super::norm(&d) - eps as f64).abs() < 1e-5),
                }
            }
        }
    }

    /// With a normalisation the budget and the range are pixel units: a model that sees
    /// `(p − 0.5)/0.25` is attacked within ε of the pixels and inside the pixel range; the
    /// identity normalisation gives the un-normalised attack's bits.
    #[test]
    fn a_normalised_model_is_attacked_in_pixel_units() {
        let (mut m, x, labels) = cnn_and_batch();
        let norm = Normalization::new(vec![0.5], vec![0.25]).unwrap();
        for a in [
            Attack::fgsm(AttackNorm::Linf, 0.05),
            Attack::pgd(AttackNorm::L2, 0.5, 4),
        ] {
            let na = Attack {
                normalization: Some(norm.clone()),
                ..a.clone()
            };
            let adv = adversarial_examples(&mut m, &x, &labels, 4, &na).unwrap();
            assert!(adv.iter().all(|v| (0.0..=1.0).contains(v)));
            for (a_s, x_s) in adv.chunks_exact(36).zip(x.chunks_exact(36)) {
                let d: Vec<f32> = a_s.iter().zip(x_s).map(|(a, b)| a - b).collect();
                let size = match a.norm {
                    AttackNorm::Linf => d.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)),
                    AttackNorm::L2 => super::norm(&d),
                };
                assert!(size <= a.eps as f64 * (1.0 + 1e-5) && size > 0.0);
            }
            let id = Attack {
                normalization: Some(Normalization::new(vec![0.0], vec![1.0]).unwrap()),
                ..a.clone()
            };
            assert_eq!(
                adversarial_examples(&mut m, &x, &labels, 4, &id).unwrap(),
                adversarial_examples(&mut m, &x, &labels, 4, &a).unwrap()
            );
        }
        let two = Attack {
            normalization: Some(Normalization::new(vec![0.0; 2], vec![1.0; 2]).unwrap()),
            ..Attack::fgsm(AttackNorm::Linf, 0.1)
        };
        let e = adversarial_examples(&mut m, &x, &labels, 4, &two).unwrap_err();
        assert!(e.to_string().contains("1-channel"), "{e}");
        assert!(Normalization::new(vec![0.0], vec![0.0]).is_err());
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
        let no_steps = Attack {
            steps: 0,
            ..ok.clone()
        };
        assert!(err(&mut m, &x, &labels, &no_steps).contains("steps"));
        assert!("cw".parse::<AttackKind>().is_err());
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
