//! Gradient checks against finite differences: how cnnkit tests its own layers, for yours.
//!
//! [`check_layer`] puts a layer alone in a model, draws inputs and a random output cotangent
//! `dy`, and compares the layer's backward pass (parameter and input gradients) with the slope
//! of `L = Σ f(x)·dy` (summed in `f64`) as each parameter and input value moves. [`compare`] is
//! the comparison itself, for any scalar function and its claimed gradient (a whole network's
//! loss, say).
//!
//! **How the slope is measured.** Not as one difference quotient but as the linear coefficient of
//! a least-squares cubic through 13 values on `[v − h, v + h]` (`h = 2e-3`): rounding noise
//! averages out and the cubic absorbs curvature. The noise of `L` itself (its `f32` rounding)
//! is measured first ([`noise_level`]), and each value's allowance grows by the bound the fit's
//! weights give for it, so a deep network gets the allowance its own noise needs and a quiet one
//! keeps the tight tolerance. A window whose fit residual is well above the noise holds a kink
//! (ReLU at 0, a max-pool switch). A second window of `h/16` looks near the value: off its cubic,
//! the value sits on a kink and is skipped (and counted); on it, its slope is the value's own
//! when the wide window is off its cubic or disagrees with it (two kinks just either side of the
//! value can leave the wide window's values near a cubic of the wrong slope).
//!
//! # Example
//! ```
//! use cnnkit::{gradcheck, layer, LayerSpec};
//! let conv = layer::build(&LayerSpec::conv(3, 3, 1), [2, 5, 5])?;
//! let report = gradcheck::check_layer(conv, [2, 5, 5], 2, 7)?;
//! assert!(report.passed(), "{report}");
//! assert!(report.checked > 0);
//! # Ok::<(), cnnkit::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::kernels::accum::Accum;
use crate::layer::Layer;
use crate::model::{Model, Sequential};
use crate::rng::Rng;
use crate::shape::{Shape3, numel};
use std::fmt;

/// Pass criterion `|numeric − analytic| <= atol + rtol·|numeric| + noise allowance`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part (default 2e-3).
    pub atol: f64,
    /// Relative part (default 2e-2).
    pub rtol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            atol: 2e-3,
            rtol: 2e-2,
        }
    }
}

/// A gradient value that disagrees with its finite difference.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// What was checked (`params`, `input`, or the caller's label).
    pub what: String,
    /// Index of the value.
    pub index: usize,
    /// The claimed gradient.
    pub analytic: f64,
    /// The fitted slope.
    pub numeric: f64,
    /// The allowed difference at this value.
    pub allowed: f64,
}

/// The outcome of a gradient check.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GradReport {
    /// Values whose gradient was compared.
    pub checked: usize,
    /// Values skipped because they sit on a kink.
    pub skipped: usize,
    /// The values that disagree (empty when the check passed).
    pub mismatches: Vec<Mismatch>,
}

impl GradReport {
    /// Whether every checked value agreed.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
    fn merge(&mut self, other: GradReport) {
        self.checked += other.checked;
        self.skipped += other.skipped;
        self.mismatches.extend(other.mismatches);
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} checked, {} skipped on kinks, {} mismatched",
            self.checked,
            self.skipped,
            self.mismatches.len()
        )?;
        for m in self.mismatches.iter().take(10) {
            write!(
                f,
                "\n  {}[{}]: analytic {:.6e}, finite difference {:.6e} (allowed {:.1e})",
                m.what, m.index, m.analytic, m.numeric, m.allowed
            )?;
        }
        Ok(())
    }
}

/// Margin on the measured noise level (a maximum over nine samples, so it may fall a little
/// short of the largest deviation at the points used).
pub const NOISE_MARGIN: f64 = 2.0;

/// The rounding noise of `l` near `v0`: the largest deviation of `l(v0 + j·δ)`, `j = −4..=4`,
/// from their least-squares line, with `δ = h/64` (fine enough that curvature adds less than
/// `L''·h²/256`, far below the noise of interest).
pub fn noise_level(mut l: impl FnMut(f32) -> f64, v0: f32, h: f32) -> f64 {
    let d = h / 64.0;
    let pts: Vec<(f64, f64)> = (-4..=4)
        .map(|j| {
            let v = v0 + j as f32 * d;
            (v as f64 - v0 as f64, l(v))
        })
        .collect();
    let n = pts.len() as f64;
    let (mx, my) = pts
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = pts.iter().fold((0.0, 0.0), |(a, b), &(x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    pts.iter()
        .map(|&(x, y)| (y - my - slope * (x - mx)).abs())
        .fold(0.0, f64::max)
}

/// A least-squares cubic through `l` at 13 equally spaced points of `[v0 − h, v0 + h]`.
struct Fit {
    /// The cubic's slope at `v0`.
    slope: f64,
    /// The largest distance of a value from the cubic.
    residual: f64,
    /// `Σ|w_j| / h` for the weights `w_j` that give the slope from the values: values each off
    /// by at most η move the slope by at most `noise_gain · η`.
    noise_gain: f64,
}

fn fit_slope(l: &mut impl FnMut(f32) -> f64, v0: f32, h: f32) -> Fit {
    const M: i32 = 6;
    // Points at the stored f32 offsets, scaled to t in [-1, 1].
    let pts: Vec<(f64, f64)> = (-M..=M)
        .map(|j| {
            let v = v0 + j as f32 * (h / M as f32);
            ((v as f64 - v0 as f64) / h as f64, l(v))
        })
        .collect();
    let sum = |f: &dyn Fn(f64, f64) -> f64| pts.iter().map(|&(t, y)| f(t, y)).sum::<f64>();
    let (s0, s2, s4, s6) = (
        pts.len() as f64,
        sum(&|t, _| t * t),
        sum(&|t, _| t.powi(4)),
        sum(&|t, _| t.powi(6)),
    );
    // Odd part (b·t + d·t³) and even part (a + c·t²) separate on a symmetric grid.
    let (ty, t3y, y, t2y) = (
        sum(&|t, y| t * y),
        sum(&|t, y| t.powi(3) * y),
        sum(&|_, y| y),
        sum(&|t, y| t * t * y),
    );
    let det_odd = s2 * s6 - s4 * s4;
    let (b, d) = (
        (s6 * ty - s4 * t3y) / det_odd,
        (s2 * t3y - s4 * ty) / det_odd,
    );
    let det_even = s0 * s4 - s2 * s2;
    let (a, c) = (
        (s4 * y - s2 * t2y) / det_even,
        (s0 * t2y - s2 * y) / det_even,
    );
    let residual = pts
        .iter()
        .map(|&(t, y)| (y - (a + b * t + c * t * t + d * t.powi(3))).abs())
        .fold(0.0, f64::max);
    let gain = pts
        .iter()
        .map(|&(t, _)| ((s6 * t - s4 * t.powi(3)) / det_odd).abs())
        .sum::<f64>();
    Fit {
        slope: b / h as f64,
        residual,
        noise_gain: gain / h as f64,
    }
}

/// The half-width of [`compare`]'s wide window (the narrow one is a sixteenth of it).
const WIDE: f32 = 2e-3;

/// Compares `grad[i]` for every `i` in `idx` with the fitted slope of `eval(i, v)` (the scalar
/// with value `i` set to `v`, everything else at `values`) around `values[i]`; `eval(i,
/// values[i])` must restore value `i`. The noise of the scalar is measured at `noise_at`
/// (a few indices: it is much the same for every value, and the median of the levels measured
/// is taken, so one index on a kink does not inflate it).
pub fn compare(
    what: &str,
    values: &[f32],
    grad: &[f32],
    idx: impl Iterator<Item = usize>,
    noise_at: &[usize],
    tol: Tolerance,
    eval: &mut dyn FnMut(usize, f32) -> f64,
) -> GradReport {
    // The median of the levels measured: a value that sits on a kink measures the kink, not the
    // rounding noise, and the largest level would then excuse every error.
    let mut levels: Vec<f64> = noise_at
        .iter()
        .map(|&i| {
            let e = noise_level(|v| eval(i, v), values[i], WIDE);
            eval(i, values[i]);
            e
        })
        .collect();
    levels.sort_by(f64::total_cmp);
    let eta = levels.get(levels.len() / 2).copied().unwrap_or(0.0);
    let mut r = GradReport::default();
    let clean = |f: &Fit| f.residual <= 4.0 * NOISE_MARGIN * eta + 1e-12;
    let noise = |f: &Fit| NOISE_MARGIN * f.noise_gain * f.residual.max(eta);
    for i in idx {
        // The wide window is the precise one; the narrow one, a sixteenth as wide, sees kinks
        // near the value: two kinks close on either side can leave the wide window's values near
        // a cubic of the wrong slope. A narrow window off its cubic holds a kink (skipped); a
        // wide one that is off its cubic or disagrees with the narrow one holds a kink farther
        // out, and the narrow slope is the value's own.
        let wide = fit_slope(&mut |v| eval(i, v), values[i], WIDE);
        let narrow = fit_slope(&mut |v| eval(i, v), values[i], WIDE / 16.0);
        eval(i, values[i]);
        let agree = |a: &Fit, b: &Fit| {
            (a.slope - b.slope).abs() <= tol.atol + tol.rtol * a.slope.abs() + noise(a) + noise(b)
        };
        let f = match (clean(&wide), clean(&narrow)) {
            (_, false) => {
                r.skipped += 1;
                continue;
            }
            (true, true) if agree(&wide, &narrow) => &wide,
            _ => &narrow,
        };
        let (num, ana) = (f.slope, grad[i] as f64);
        let allowed = tol.atol + tol.rtol * num.abs() + noise(f);
        // A NaN gradient fails too.
        if (num - ana).abs().is_nan() || (num - ana).abs() > allowed {
            r.mismatches.push(Mismatch {
                what: what.to_string(),
                index: i,
                analytic: ana,
                numeric: num,
                allowed,
            });
        }
        r.checked += 1;
    }
    r
}

/// Checks `layer`'s backward pass (every parameter gradient and, on up to 96 evenly spread
/// values, the input gradient) on a batch of `n` samples of shape `input`, in training mode, with
/// inputs, parameters (the layer's default initialisation) and the output cotangent drawn from
/// `seed`. Random layers are checked with the same noise on every evaluation (the model's
/// generator is reset each time).
///
/// # Errors
/// [`Error::InvalidArg`] if `n` is 0 or the layer does not fit in a model (see
/// [`Sequential::from_layers`]); the layer's own errors.
pub fn check_layer(
    layer: Box<dyn Layer>,
    input: Shape3,
    n: usize,
    seed: u64,
) -> Result<GradReport> {
    if n == 0 {
        return Err(Error::invalid("check_layer", "n", "must be at least 1"));
    }
    let mut model = Sequential::from_layers(input, vec![layer], seed)?;
    check_model(&mut model, n, seed)
}

/// Checks a whole model's backward pass as [`check_layer`] checks one layer's: every parameter
/// gradient and, on up to 96 evenly spread values, the input gradient of `L = Σ f(x)·dy` on a
/// batch of `n` samples drawn from `seed`, in training mode (with the same noise on every
/// evaluation). The parameters are the model's own.
///
/// # Errors
/// [`Error::InvalidArg`] if `n` is 0; the model's own errors.
pub fn check_model(model: &mut Model, n: usize, seed: u64) -> Result<GradReport> {
    if n == 0 {
        return Err(Error::invalid("check_model", "n", "must be at least 1"));
    }
    let input = model.input_shape();
    let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut x: Vec<f32> = (0..n * numel(input))
        .map(|_| rng.uniform(-2.0, 2.0))
        .collect();
    let dy: Vec<f32> = (0..n * model.output_len())
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let state = model.rng_state();
    model.train();
    model.forward(&x, n)?;
    let mut dx = vec![0.0; x.len()];
    model.input_gradient(&x, &dy, &mut dx, Some(Accum::Replace))?;
    let grads = model.grads().to_vec();
    let params = model.params().to_vec();
    // L = Σ f(x)·dy in f64, with the same noise every time.
    let loss = |m: &mut Model, x: &[f32]| -> f64 {
        m.set_rng_state(state);
        m.forward(x, n).map_or(f64::NAN, |y| {
            y.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum()
        })
    };
    let ends = |len: usize| [0, len / 2, len.saturating_sub(1)];
    let mut report = GradReport::default();
    if !params.is_empty() {
        report.merge(compare(
            "params",
            &params,
            &grads,
            0..params.len(),
            &ends(params.len()),
            Tolerance::default(),
            &mut |i, v| {
                model.params_mut()[i] = v;
                loss(model, &x)
            },
        ));
    }
    let len = x.len();
    let orig = x.clone();
    report.merge(compare(
        "input",
        &orig,
        &dx,
        (0..len).step_by(len.div_ceil(96)),
        &ends(len),
        Tolerance::default(),
        &mut |i, v| {
            x[i] = v;
            loss(model, &x)
        },
    ));
    Ok(report)
}
