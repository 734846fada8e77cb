//! Accuracy against the perturbation budget: how fast a classifier falls under attack, beside
//! how little random noise of the same size does to it.

use super::attack::{Attack, AttackKind, AttackNorm, adversarial_examples_from};
use super::pixels::{PixelModel, argmax, in_eval};
use crate::error::{Error, Result};
use crate::model::Sequential;
use std::fmt::Write;

/// Accuracy at one budget.
#[derive(Clone, Debug, PartialEq)]
pub struct RobustnessPoint {
    /// The budget `ε` (pixel units when the attack has a normalisation).
    pub eps: f32,
    /// Accuracy on the attack's examples.
    pub accuracy: f64,
    /// Accuracy on random noise of the same norm and size ([`AttackKind::Noise`]).
    pub noise_accuracy: f64,
}

/// [`robustness_curve`]'s result.
#[derive(Clone, Debug, PartialEq)]
pub struct RobustnessCurve {
    /// The attack at its first budget (the others differ only in `ε` and step size).
    pub attack: Attack,
    /// Accuracy on the unperturbed samples.
    pub clean_accuracy: f64,
    /// One point per budget, in the order given.
    pub points: Vec<RobustnessPoint>,
}

/// Accuracy of `model` on the `n` samples `x` (classes `labels`) under `attack` at each budget of
/// `eps` (the attack [`with_eps`](Attack::with_eps)), and under random noise of the same norm
/// and size. Works through the samples `batch` at a time; calls `progress(done, total)` after
/// each batch of each budget. The model runs in evaluation mode (restored afterwards).
///
/// ```
/// use cnnkit::stability::{robustness_curve, Attack, AttackNorm};
/// use cnnkit::{LayerSpec, Sequential};
/// let mut m = Sequential::new([1, 4, 4], &LayerSpec::parse_list("flatten,dense(3)")?, 0)?;
/// let x: Vec<f32> = (0..6 * 16).map(|i| (i % 5) as f32 / 4.0).collect();
/// let labels = [0, 1, 2, 0, 1, 2];
/// let attack = Attack::fgsm(AttackNorm::Linf, 0.1);
/// let c = robustness_curve(&mut m, &x, &labels, 6, &attack, &[0.0, 0.05, 0.1], 4, &mut |_, _| {})?;
/// assert_eq!(c.points[0].accuracy, c.clean_accuracy); // ε = 0 changes nothing
/// # Ok::<(), cnnkit::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArg`] for an empty or invalid budget list, a batch of 0, and as
/// [`adversarial_examples`](super::adversarial_examples).
#[allow(clippy::too_many_arguments)]
pub fn robustness_curve(
    model: &mut Sequential,
    x: &[f32],
    labels: &[u32],
    n: usize,
    attack: &Attack,
    eps: &[f32],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RobustnessCurve> {
    const OP: &str = "robustness_curve";
    if eps.is_empty() {
        return Err(Error::invalid(OP, "eps", "no budgets"));
    }
    if batch == 0 {
        return Err(Error::invalid(OP, "batch", "must be at least 1"));
    }
    if let Some(e) = eps.iter().find(|e| !(e.is_finite() && **e >= 0.0)) {
        return Err(Error::invalid(
            OP,
            "eps",
            format!("{e} (must be finite and >= 0)"),
        ));
    }
    crate::error::check_len(OP, "labels", labels, n)?;
    let d = crate::shape::numel(model.input_shape());
    crate::error::check_len(OP, "x", x, n * d)?;
    let batches = n.div_ceil(batch);
    let with_noise = attack.kind != AttackKind::Noise;
    let total = batches * (1 + eps.len() * (1 + with_noise as usize));
    let mut done = 0;
    let mut tick = |progress: &mut dyn FnMut(usize, usize)| {
        done += 1;
        progress(done, total);
    };
    let correct = |m: &mut Sequential, a: Option<&Attack>, tick: &mut dyn FnMut()| {
        let mut right = 0usize;
        for (b, (xb, lb)) in x.chunks(batch * d).zip(labels.chunks(batch)).enumerate() {
            let k = lb.len();
            let ex;
            let xs = match a {
                Some(a) => {
                    ex = adversarial_examples_from(m, xb, lb, k, a, b * batch)?;
                    &ex[..]
                }
                None => xb,
            };
            right += in_eval(m, |m| {
                let norm = attack.normalization.as_ref();
                let mut pm = PixelModel::new(OP, m, norm)?;
                let out = pm.forward(xs, k)?;
                let classes = out.len() / k.max(1);
                Ok(out
                    .chunks_exact(classes)
                    .zip(lb)
                    .filter(|(z, l)| argmax(z) == **l as usize)
                    .count())
            })?;
            tick();
        }
        Ok::<f64, Error>(right as f64 / n.max(1) as f64)
    };
    let clean_accuracy = correct(model, None, &mut || tick(progress))?;
    let mut points = Vec::with_capacity(eps.len());
    for &e in eps {
        let a = attack.with_eps(e);
        let accuracy = correct(model, Some(&a), &mut || tick(progress))?;
        let noise_accuracy = if with_noise {
            let noise = Attack {
                kind: AttackKind::Noise,
                ..a.clone()
            };
            correct(model, Some(&noise), &mut || tick(progress))?
        } else {
            accuracy
        };
        points.push(RobustnessPoint {
            eps: e,
            accuracy,
            noise_accuracy,
        });
    }
    Ok(RobustnessCurve {
        attack: attack.with_eps(eps[0]),
        clean_accuracy,
        points,
    })
}

impl RobustnessCurve {
    /// `eps,accuracy,noise_accuracy` lines under a header, ε = 0 first (the clean accuracy).
    pub fn to_csv(&self) -> String {
        let mut s = String::from("eps,accuracy,noise_accuracy\n");
        let _ = writeln!(s, "0,{},{}", self.clean_accuracy, self.clean_accuracy);
        for p in self.points.iter().filter(|p| p.eps > 0.0) {
            let _ = writeln!(s, "{},{},{}", p.eps, p.accuracy, p.noise_accuracy);
        }
        s
    }

    /// A line chart of both accuracies against `ε` (self-contained SVG, 640x400).
    pub fn to_svg(&self, title: &str) -> String {
        let (w, h, l, r, t, b) = (640.0, 400.0, 60.0, 20.0, 40.0, 50.0);
        let mut pts = vec![(0.0f64, self.clean_accuracy, self.clean_accuracy)];
        pts.extend(
            self.points
                .iter()
                .filter(|p| p.eps > 0.0)
                .map(|p| (p.eps as f64, p.accuracy, p.noise_accuracy)),
        );
        let emax = pts.iter().fold(0.0f64, |m, p| m.max(p.0)).max(1e-12);
        let px = |e: f64| l + (w - l - r) * e / emax;
        let py = |a: f64| t + (h - t - b) * (1.0 - a);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
            w / 2.0,
            escape(title)
        );
        for i in 0..=5 {
            let a = i as f64 / 5.0;
            let _ = writeln!(
                s,
                "<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
                w - r,
                l - 6.0,
                py(a) + 4.0,
                a * 100.0,
                y = py(a)
            );
            let e = emax * i as f64 / 5.0;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                px(e),
                h - b + 18.0,
                trim(e)
            );
        }
        let norm = match self.attack.norm {
            AttackNorm::Linf => "L∞",
            AttackNorm::L2 => "L2",
        };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ε ({norm}{})</text>\
             <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">accuracy</text>",
            (l + w - r) / 2.0,
            h - 10.0,
            if self.attack.normalization.is_some() {
                ", pixel units"
            } else {
                ""
            },
            (t + h - b) / 2.0,
            (t + h - b) / 2.0
        );
        let kind = format!("{:?}", self.attack.kind).to_uppercase();
        // (name, colour, which accuracy: 1 attacked, 2 noise)
        let series = [(&kind[..], "#c0392b", 1), ("random noise", "#2471a3", 2)];
        for (k, (name, colour, which)) in series.iter().enumerate() {
            if k == 0 && self.attack.kind == AttackKind::Noise {
                continue;
            }
            let path: Vec<String> = pts
                .iter()
                .map(|p| {
                    let a = if *which == 1 { p.1 } else { p.2 };
                    format!("{:.1},{:.1}", px(p.0), py(a))
                })
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
                path.join(" "),
                w - r - 110.0,
                t + 16.0 + 16.0 * k as f64
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// A tick label without trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::normalization::Normalization;
    use crate::layer::spec::LayerSpec;
    use crate::stability::attack::AttackNorm;

    /// A two-class linear model and samples spread on both sides of its boundary.
    fn linear() -> (Sequential, Vec<f32>, Vec<u32>) {
        let specs = LayerSpec::parse_list("flatten,dense(2)").unwrap();
        let m = Sequential::new([1, 2, 4], &specs, 3).unwrap();
        let mut r = crate::rng::Rng::new(4);
        let x: Vec<f32> = (0..40 * 8).map(|_| r.uniform(0.0, 1.0)).collect();
        let labels = (0..40).map(|i| (i % 2) as u32).collect();
        (m, x, labels)
    }

    /// The random start and the noise are drawn per sample: the curve is the same whatever the
    /// batch size (they used to repeat for every batch, so sample k of each batch got the same
    /// draws), and two copies of one image in different batches get different noise.
    #[test]
    fn random_draws_are_per_sample_whatever_the_batch() {
        let (mut m, x, labels) = linear();
        for attack in [
            Attack::noise(AttackNorm::L2, 0.5),
            Attack::pgd(AttackNorm::Linf, 0.2, 3),
        ] {
            let eps = [0.1f32, 0.4];
            let mut at = |batch| {
                robustness_curve(
                    &mut m,
                    &x,
                    &labels,
                    40,
                    &attack,
                    &eps,
                    batch,
                    &mut |_, _| {},
                )
                .unwrap()
            };
            let one = at(40);
            assert_eq!(one, at(1), "{attack:?}");
            assert_eq!(one, at(7), "{attack:?}");
        }
        let noise = Attack::noise(AttackNorm::L2, 0.3);
        let two: Vec<f32> = x[..8].iter().chain(&x[..8]).copied().collect();
        let a = adversarial_examples_from(&mut m, &two[..8], &labels[..1], 1, &noise, 0).unwrap();
        let b = adversarial_examples_from(&mut m, &two[8..], &labels[..1], 1, &noise, 1).unwrap();
        assert_ne!(a, b);
    }

    /// For a linear two-class model FGSM (L∞, no clipping) lowers every sample's margin
    /// `(w_y − w_o)·x + b_y − b_o` by exactly `ε·‖w_y − w_o‖₁/std`, the most any perturbation of
    /// the ball can: so the curve is known in closed form, and noise of the same size never does
    /// worse than the attack. With a normalisation, `ε` is in pixel units.
    #[test]
    fn fgsm_on_a_linear_model_follows_the_margins() {
        let (mut m, x, labels) = linear();
        let p = m.params().to_vec(); // W [2, 8] then b [2]
        let dw: Vec<f32> = (0..8).map(|i| p[8 + i] - p[i]).collect(); // w₁ − w₀
        let db = p[17] - p[16];
        for (norm, std) in [
            (None, 1.0f64),
            (
                Some(Normalization::new(vec![0.5], vec![0.25]).unwrap()),
                0.25,
            ),
        ] {
            let attack = Attack {
                range: (-100.0, 100.0),
                normalization: norm.clone(),
                ..Attack::fgsm(AttackNorm::Linf, 0.1)
            };
            let eps = [0.0f32, 0.02, 0.05, 0.1, 0.3];
            let mut calls = 0;
            let c = robustness_curve(&mut m, &x, &labels, 40, &attack, &eps, 16, &mut |d, t| {
                calls += 1;
                assert!(d <= t);
            })
            .unwrap();
            assert_eq!(calls, 3 * (1 + 2 * eps.len()));
            let l1: f64 = dw.iter().map(|v| v.abs() as f64).sum::<f64>() / std;
            let margin = |s: &[f32], y: u32| {
                let mean = if norm.is_some() { 0.5 } else { 0.0 };
                let z: f64 = s
                    .iter()
                    .zip(&dw)
                    .map(|(&a, &w)| (a as f64 - mean) / std * w as f64)
                    .sum::<f64>()
                    + db as f64;
                if y == 1 { z } else { -z }
            };
            let want = |e: f64| {
                x.chunks_exact(8)
                    .zip(&labels)
                    .filter(|(s, y)| margin(s, **y) - e * l1 > 0.0)
                    .count() as f64
                    / 40.0
            };
            assert_eq!(c.clean_accuracy, want(0.0));
            assert!(c.clean_accuracy > 0.2 && c.clean_accuracy < 1.0);
            for pt in &c.points {
                assert_eq!(pt.accuracy, want(pt.eps as f64), "ε = {}", pt.eps);
                assert!(pt.noise_accuracy >= pt.accuracy);
            }
            assert!(c.points.last().unwrap().accuracy < c.clean_accuracy);
            let csv = c.to_csv();
            assert_eq!(csv.lines().count(), 1 + eps.len());
            assert!(c.to_svg("t").contains("<polyline"));
        }
    }

    #[test]
    fn bad_budgets_are_errors() {
        let (mut m, x, labels) = linear();
        let a = Attack::fgsm(AttackNorm::Linf, 0.1);
        let mut run = |eps: &[f32], batch| {
            robustness_curve(&mut m, &x, &labels, 40, &a, eps, batch, &mut |_, _| {})
                .unwrap_err()
                .to_string()
        };
        assert!(run(&[], 8).contains("eps"));
        assert!(run(&[-0.1], 8).contains("eps"));
        assert!(run(&[0.1], 0).contains("batch"));
    }
}
