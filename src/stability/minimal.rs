//! The smallest perturbation that changes a classifier's decision: for each image, a bisection
//! on the budget `ε` over PGD — at each budget, PGD (no random start, steps of `ε/4`, the
//! highest-loss iterate) tries to move the predicted class away from the clean prediction; a
//! budget where it succeeds bounds the smallest change from above, one where it fails (probably)
//! from below. The result is the norm of the smallest class-changing perturbation actually found,
//! an upper bound of the true minimum (which no first-order search certifies).

use super::attack::{Attack, AttackNorm, attack_eval};
use super::pixels::{PixelModel, argmax, check_in_range, in_eval, norm};
use crate::data::normalization::Normalization;
use crate::error::{Error, Result};
use crate::model::Sequential;

/// Settings of [`minimal_perturbations`].
#[derive(Clone, Debug, PartialEq)]
pub struct MinimalSearch {
    /// The norm the perturbation is measured in.
    pub norm: AttackNorm,
    /// The largest budget tried (pixel units): an image whose class PGD cannot change within it
    /// is reported as not found.
    pub max_eps: f32,
    /// PGD steps at each budget (of `ε/4`).
    pub steps: usize,
    /// Halvings of the budget interval after the first try at `max_eps`.
    pub bisections: usize,
    /// The valid pixel range; perturbed images are clipped to it.
    pub range: (f32, f32),
    /// How the model's input is made from pixels (`None`: pixels are the model's input).
    pub normalization: Option<Normalization>,
}

impl MinimalSearch {
    /// 20 PGD steps at each of 1 + 10 budgets up to `max_eps`, pixels in `[0, 1]`.
    pub fn new(norm: AttackNorm, max_eps: f32) -> MinimalSearch {
        MinimalSearch {
            norm,
            max_eps,
            steps: 20,
            bisections: 10,
            range: (0.0, 1.0),
            normalization: None,
        }
    }

    /// An `Err` naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "MinimalSearch";
        if !(self.max_eps.is_finite() && self.max_eps > 0.0) {
            return Err(Error::invalid(
                OP,
                "max_eps",
                format!("{} (must be finite and > 0)", self.max_eps),
            ));
        }
        if self.steps == 0 || self.steps > 10_000 {
            return Err(Error::invalid(
                OP,
                "steps",
                format!("{} (must be in 1..=10000)", self.steps),
            ));
        }
        if self.bisections > 40 {
            return Err(Error::invalid(
                OP,
                "bisections",
                format!(
                    "{} (at most 40: 2^-40 of the budget is below f32's precision)",
                    self.bisections
                ),
            ));
        }
        let (lo, hi) = self.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid(OP, "range", format!("[{lo}, {hi}]")));
        }
        Ok(())
    }
}

/// The smallest class-changing perturbation found for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct MinimalPerturbation {
    /// The class the model predicts for the image.
    pub class: usize,
    /// `‖r‖` of the smallest perturbation found that changes it (pixel units, in the search's
    /// norm), or `None` when PGD did not change it within `max_eps`.
    pub size: Option<f32>,
    /// `‖r‖/‖x‖` (the same norm; infinite for an all-zero image), `None` as `size`.
    pub relative: Option<f32>,
    /// The class it changes to.
    pub new_class: Option<usize>,
}

/// The median and quartiles of the relative sizes of [`minimal_perturbations`]' results
/// ([`MinimalSummary::of`]), an image not changed within the budget counting as larger than any
/// (so a quartile may be `None`: more than a quarter, half or three quarters of the images were
/// not changed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinimalSummary {
    /// Images whose class was changed.
    pub found: usize,
    /// All images.
    pub total: usize,
    /// The 25 %, 50 % and 75 % quantiles of `‖r‖/‖x‖` (nearest rank).
    pub quartiles: [Option<f32>; 3],
}

impl MinimalSummary {
    /// The summary of `results`.
    pub fn of(results: &[MinimalPerturbation]) -> MinimalSummary {
        let mut v: Vec<f32> = results
            .iter()
            .map(|r| r.relative.unwrap_or(f32::INFINITY))
            .collect();
        v.sort_by(f32::total_cmp);
        let q = |p: f64| -> Option<f32> {
            if v.is_empty() {
                return None;
            }
            // Nearest rank: the smallest value with at least p of the values at or below it.
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            Some(v[rank - 1]).filter(|x| x.is_finite())
        };
        MinimalSummary {
            found: results.iter().filter(|r| r.size.is_some()).count(),
            total: results.len(),
            quartiles: [q(0.25), q(0.5), q(0.75)],
        }
    }
}

/// The smallest perturbation found that changes the predicted class of each of the `n` images
/// `x` (see the module documentation), `batch` images at a time; calls `progress(done, total)`
/// after each batch. The model runs in evaluation mode (restored afterwards).
///
/// ```
/// use cnnkit::stability::{minimal_perturbations, AttackNorm, MinimalSearch};
/// use cnnkit::{LayerSpec, Sequential};
/// let mut m = Sequential::new([1, 4, 4], &LayerSpec::parse_list("flatten,dense(3)")?, 0)?;
/// let x: Vec<f32> = (0..2 * 16).map(|i| (i % 5) as f32 / 4.0).collect();
/// let search = MinimalSearch::new(AttackNorm::L2, 4.0);
/// let found = minimal_perturbations(&mut m, &x, 2, &search, 64, &mut |_, _| {})?;
/// for r in &found {
///     if let Some(size) = r.size {
///         assert!(size <= 4.0 && r.new_class != Some(r.class));
///     }
/// }
/// # Ok::<(), cnnkit::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArg`] for settings out of range ([`MinimalSearch::validate`]), a batch of 0,
/// or an `x` with NaN or values outside the range; errors of the model's passes.
pub fn minimal_perturbations(
    model: &mut Sequential,
    x: &[f32],
    n: usize,
    search: &MinimalSearch,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<MinimalPerturbation>> {
    const OP: &str = "minimal_perturbations";
    search.validate()?;
    if batch == 0 {
        return Err(Error::invalid(OP, "batch", "must be at least 1"));
    }
    let d = crate::shape::numel(model.input_shape());
    crate::error::check_len(OP, "x", x, n * d)?;
    check_in_range(OP, x, search.range)?;
    let attack = Attack {
        random_start: false,
        range: search.range,
        normalization: search.normalization.clone(),
        ..Attack::pgd(search.norm, 1.0, search.steps)
    };
    attack.validate()?;
    let batches = n.div_ceil(batch);
    let total = batches * (2 + search.bisections);
    let mut done = 0;
    in_eval(model, |m| {
        let mut pm = PixelModel::new(OP, m, search.normalization.as_ref())?;
        let mut out = Vec::with_capacity(n);
        for (b, xb) in x.chunks(batch * d).enumerate() {
            let k = xb.len() / d;
            let classes_of = |pm: &mut PixelModel<'_>, xs: &[f32]| -> Result<Vec<usize>> {
                let z = pm.forward(xs, k)?;
                let c = z.len() / k.max(1);
                Ok(z.chunks_exact(c.max(1)).map(argmax).collect())
            };
            let clean = classes_of(&mut pm, xb)?;
            let labels: Vec<u32> = clean.iter().map(|&c| c as u32).collect();
            done += 1;
            progress(done, total);
            let (mut lo, mut hi) = (vec![0.0f32; k], vec![search.max_eps; k]);
            let mut best: Vec<Option<(f32, usize)>> = vec![None; k];
            for round in 0..=search.bisections {
                // The first round tries the whole budget; each later one the middle of the
                // interval of the images changed at the whole budget.
                let eps: Vec<f32> = (0..k)
                    .map(|i| {
                        if round == 0 {
                            hi[i]
                        } else {
                            0.5 * (lo[i] + hi[i])
                        }
                    })
                    .collect();
                let adv = attack_eval(&mut pm, xb, &labels, k, &attack, b * batch, &eps)?;
                let now = classes_of(&mut pm, &adv)?;
                for i in 0..k {
                    if round > 0 && best[i].is_none() {
                        continue;
                    }
                    if now[i] != clean[i] {
                        let r: Vec<f32> = adv[i * d..(i + 1) * d]
                            .iter()
                            .zip(&xb[i * d..(i + 1) * d])
                            .map(|(a, b)| a - b)
                            .collect();
                        let size = size_of(search.norm, &r);
                        if best[i].is_none_or(|(s, _)| size < s) {
                            best[i] = Some((size, now[i]));
                        }
                        hi[i] = eps[i];
                    } else {
                        lo[i] = eps[i];
                    }
                }
                done += 1;
                progress(done, total);
                if best.iter().all(Option::is_none) {
                    done += search.bisections - round;
                    progress(done, total);
                    break;
                }
            }
            for (i, found) in best.into_iter().enumerate() {
                let xs = &xb[i * d..(i + 1) * d];
                let own = size_of(search.norm, xs);
                out.push(MinimalPerturbation {
                    class: clean[i],
                    size: found.map(|f| f.0),
                    relative: found.map(|f| if own > 0.0 { f.0 / own } else { f32::INFINITY }),
                    new_class: found.map(|f| f.1),
                });
            }
        }
        Ok(out)
    })
}

/// `‖r‖` in `norm`.
fn size_of(n: AttackNorm, r: &[f32]) -> f32 {
    match n {
        AttackNorm::Linf => r.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        _ => norm(r) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::spec::LayerSpec;

    /// A two-class linear model `z = W x + b`: the smallest change of its decision at `x` is the
    /// distance to the boundary `(w₀ − w₁)·x + b₀ − b₁ = 0`, `|Δz| / ‖w₀ − w₁‖₂` in L2 and
    /// `|Δz| / ‖w₀ − w₁‖₁` in L∞ (when the range does not get in the way: here it is wide).
    #[test]
    fn a_linear_model_gives_the_distance_to_its_boundary() {
        let mut m = Sequential::new(
            [1, 3, 3],
            &LayerSpec::parse_list("flatten,dense(2)").unwrap(),
            4,
        )
        .unwrap();
        let x: Vec<f32> = (0..3 * 9).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
        let p = m.params().to_vec();
        let (w, b) = p.split_at(18);
        for norm in [AttackNorm::L2, AttackNorm::Linf] {
            let search = MinimalSearch {
                range: (-100.0, 100.0),
                bisections: 16,
                ..MinimalSearch::new(norm, 20.0)
            };
            let found = minimal_perturbations(&mut m, &x, 3, &search, 2, &mut |_, _| {}).unwrap();
            for (i, r) in found.iter().enumerate() {
                let xs = &x[i * 9..(i + 1) * 9];
                let dw: Vec<f64> = (0..9).map(|j| (w[j] - w[9 + j]) as f64).collect();
                let dz: f64 = dw.iter().zip(xs).map(|(a, &v)| a * v as f64).sum::<f64>()
                    + (b[0] - b[1]) as f64;
                let scale = match norm {
                    AttackNorm::L2 => dw.iter().map(|v| v * v).sum::<f64>().sqrt(),
                    _ => dw.iter().map(|v| v.abs()).sum::<f64>(),
                };
                let want = dz.abs() / scale;
                let got = r.size.expect("a linear decision always changes within 20") as f64;
                // Above the distance (a found change), by at most the last interval.
                let slack = 20.0 / 65536.0 + 1e-4 * want;
                assert!(
                    got >= want - 1e-4 * want && got <= want + slack,
                    "{norm:?}, image {i}: found {got}, the boundary is at {want}"
                );
                assert_eq!(r.new_class, Some(1 - r.class));
            }
        }
    }

    #[test]
    fn summaries_count_unchanged_images_as_largest() {
        let r = |v: Option<f32>| MinimalPerturbation {
            class: 0,
            size: v,
            relative: v,
            new_class: v.map(|_| 1),
        };
        let s = MinimalSummary::of(&[r(Some(0.3)), r(None), r(Some(0.1)), r(Some(0.2))]);
        assert_eq!((s.found, s.total), (3, 4));
        assert_eq!(s.quartiles, [Some(0.1), Some(0.2), Some(0.3)]);
        let s = MinimalSummary::of(&[r(None), r(None), r(Some(0.1))]);
        assert_eq!(s.quartiles, [Some(0.1), None, None]);
        assert_eq!(MinimalSummary::of(&[]).quartiles, [None; 3]);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut m = Sequential::new(
            [1, 2, 2],
            &LayerSpec::parse_list("flatten,dense(2)").unwrap(),
            0,
        )
        .unwrap();
        let x = vec![0.5; 4];
        let mut p = |_, _| {};
        for (s, what) in [
            (MinimalSearch::new(AttackNorm::L2, 0.0), "max_eps"),
            (MinimalSearch::new(AttackNorm::L2, f32::NAN), "max_eps"),
            (
                MinimalSearch {
                    steps: 0,
                    ..MinimalSearch::new(AttackNorm::L2, 1.0)
                },
                "steps",
            ),
            (
                MinimalSearch {
                    bisections: 99,
                    ..MinimalSearch::new(AttackNorm::L2, 1.0)
                },
                "bisections",
            ),
        ] {
            let e = minimal_perturbations(&mut m, &x, 1, &s, 1, &mut p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
        let s = MinimalSearch::new(AttackNorm::L2, 1.0);
        let e = minimal_perturbations(&mut m, &[0.5, 2.0, 0.5, 0.5], 1, &s, 1, &mut p).unwrap_err();
        assert!(e.to_string().contains("x[1]"), "{e}");
        assert!(minimal_perturbations(&mut m, &x, 1, &s, 0, &mut p).is_err());
    }
}
