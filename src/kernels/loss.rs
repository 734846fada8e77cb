//! Losses with mean reduction, each returning the loss and (optionally) its gradient with
//! respect to the logits or predictions, as `loss.backward()` would leave it.
//!
//! The per-row terms are summed in fixed blocks ([`par`]), so the loss is the same for
//! any number of threads. A NaN or infinite input gives a NaN or infinite loss (the training loop
//! turns that into [`Error::NonFinite`]).

use crate::error::{Error, Result, check_len};
use crate::kernels::softmax::{max_and_sum_exp, rows_of};
use crate::par;
use crate::simd;
use crate::simd::lane::{Lane, splat};

/// Softmax cross-entropy with integer labels and mean reduction, as
/// `torch.nn.functional.cross_entropy(logits, labels, label_smoothing=ε)`:
/// `loss = mean_r [ lse_r − (1 − ε)·x[r, y_r] − ε·mean_j x[r, j] ]` with
/// `lse_r = ln Σ_j exp x[r, j]` (computed stably).
///
/// - `logits`: `[rows, classes]`; `labels`: `[rows]`, each `< classes`
/// - `dlogits`: `None`, or `[rows, classes]` receiving
///   `(softmax(x)[r, j] − (1 − ε)·[j = y_r] − ε/classes) / rows` (overwritten)
///
/// # Errors
/// [`Error::InvalidArg`] for `classes == 0`, no rows, a label `>= classes`, or `ε` outside
/// `[0, 1]`; [`Error::Length`] if a buffer disagrees.
///
/// # Example
/// ```
/// use cnnkit::kernels::cross_entropy_loss;
/// // Two equal logits: p = 1/2 for the label, loss = ln 2.
/// let loss = cross_entropy_loss(2, &[3.0, 3.0], &[1], 0.0, None)?;
/// assert!((loss - std::f32::consts::LN_2).abs() < 1e-6);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn cross_entropy_loss(
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    label_smoothing: f32,
    dlogits: Option<&mut [f32]>,
) -> Result<f32> {
    const OP: &str = "cross_entropy_loss";
    let rows = rows_of(OP, classes, logits.len())?;
    check_len(OP, "labels", labels, rows)?;
    if rows == 0 {
        return Err(Error::invalid(
            OP,
            "logits",
            "no rows: the mean of an empty batch",
        ));
    }
    if let Some(bad) = labels.iter().position(|&l| l as usize >= classes) {
        return Err(Error::invalid(
            OP,
            "labels",
            format!(
                "labels[{bad}] = {} but there are {classes} classes",
                labels[bad]
            ),
        ));
    }
    let eps = label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::invalid(
            OP,
            "label_smoothing",
            format!("must be in [0, 1], got {eps}"),
        ));
    }
    let out: &mut [f32] = match dlogits {
        Some(d) => {
            check_len(OP, "dlogits", d, logits.len())?;
            d
        }
        None => &mut [],
    };
    let inv_rows = 1.0 / rows as f32;
    let narrow = classes <= NARROW;
    let total = par::sum_over_rows(
        rows,
        classes,
        logits.len() * 20,
        out,
        #[inline(always)]
        |rr, out| {
            if narrow {
                return ce_narrow(logits, labels, classes, eps, inv_rows, rr, out);
            }
            let mut s = 0.0f64;
            for (k, i) in rr.enumerate() {
                let x = &logits[i * classes..][..classes];
                let label = labels[i] as usize;
                let (m, sum) = max_and_sum_exp(x);
                let ln_sum = sum.ln();
                // lse − (1 − ε)·x_label − ε·mean x, with every term taken relative to m.
                let smooth = if eps > 0.0 {
                    let mv = splat(m);
                    let shifted = simd::sum_map(
                        x,
                        m,
                        #[inline(always)]
                        |v| v - mv,
                    );
                    eps as f64 * (shifted as f64 / classes as f64)
                } else {
                    0.0
                };
                s += ln_sum as f64 + (1.0 - eps) as f64 * (m - x[label]) as f64 - smooth;
                if !out.is_empty() {
                    let d = &mut out[k * classes..][..classes];
                    let inv_sum = 1.0 / sum;
                    let (mv, p_sc, sc, off) = (
                        splat(m),
                        splat(inv_sum),
                        splat(inv_rows),
                        splat(eps / classes as f32),
                    );
                    simd::map(
                        x,
                        d,
                        #[inline(always)]
                        |v| (simd::exp(v - mv) * p_sc - off) * sc,
                    );
                    d[label] -= (1.0 - eps) * inv_rows;
                }
            }
            s
        },
    );
    Ok((total / rows as f64) as f32)
}

/// Cross-entropy with per-class weights, as
/// `torch.nn.functional.cross_entropy(logits, labels, weight=w, label_smoothing=ε)` with mean
/// reduction: with `ℓ_rj = −log softmax(x_r)_j`,
/// `loss = [(1 − ε)·Σ_r w[y_r]·ℓ_{r,y_r} + (ε/C)·Σ_r Σ_j w[j]·ℓ_rj] / Σ_r w[y_r]`
/// (the mean is over the weights of the batch's labels, so a batch of one class has the
/// unweighted loss). `dlogits` receives
/// `[(1 − ε)·w[y_r]·(p_rj − [j = y_r]) + (ε/C)·(W·p_rj − w[j])] / Σ_r w[y_r]` with `W = Σ_j w[j]`.
/// A batch whose labels all have weight 0 gives NaN, as in PyTorch. Rows are summed in order in
/// `f64` (one thread: the rows of a training batch are few).
///
/// # Errors
/// As [`cross_entropy_loss`], and [`Error::InvalidArg`] if `weights` does not have one finite,
/// non-negative value per class.
///
/// # Example
/// ```
/// use cnnkit::kernels::weighted_cross_entropy_loss;
/// // Weight 3 on class 1: its row counts three times in the mean.
/// let logits = [0.0, 1.0, 2.0, 0.0];
/// let l = weighted_cross_entropy_loss(2, &logits, &[0, 1], &[1.0, 3.0], 0.0, None)?;
/// let (l0, l1) = ((1.0f32 + 1.0f32.exp()).ln(), (1.0 + 2.0f32.exp()).ln());
/// assert!((l - (l0 + 3.0 * l1) / 4.0).abs() < 1e-6);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn weighted_cross_entropy_loss(
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    weights: &[f32],
    label_smoothing: f32,
    dlogits: Option<&mut [f32]>,
) -> Result<f32> {
    let norm = class_weight_sum("weighted_cross_entropy_loss", classes, labels, weights)?;
    weighted_ce_with_norm(
        classes,
        logits,
        labels,
        weights,
        label_smoothing,
        norm,
        dlogits,
    )
}

/// `Σ_r w[y_r]`, checking the weights and labels.
pub(crate) fn class_weight_sum(
    op: &'static str,
    classes: usize,
    labels: &[u32],
    weights: &[f32],
) -> Result<f64> {
    check_len(op, "weights", weights, classes)?;
    if let Some(i) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err(Error::invalid(
            op,
            "weights",
            format!(
                "weights[{i}] = {} (must be finite and non-negative)",
                weights[i]
            ),
        ));
    }
    labels
        .iter()
        .map(|&l| {
            weights.get(l as usize).map(|&w| w as f64).ok_or_else(|| {
                Error::invalid(
                    op,
                    "labels",
                    format!("label {l} but there are {classes} classes"),
                )
            })
        })
        .sum()
}

/// [`weighted_cross_entropy_loss`] normalised by `norm` instead of the batch's own weight sum
/// (a worker's part of a global batch: the sum over all workers' labels).
pub(crate) fn weighted_ce_with_norm(
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    weights: &[f32],
    label_smoothing: f32,
    norm: f64,
    dlogits: Option<&mut [f32]>,
) -> Result<f32> {
    const OP: &str = "weighted_cross_entropy_loss";
    let rows = rows_of(OP, classes, logits.len())?;
    check_len(OP, "labels", labels, rows)?;
    class_weight_sum(OP, classes, labels, weights)?;
    let eps = label_smoothing as f64;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::invalid(
            OP,
            "label_smoothing",
            format!("must be in [0, 1], got {eps}"),
        ));
    }
    let mut d: &mut [f32] = match dlogits {
        Some(d) => {
            check_len(OP, "dlogits", d, logits.len())?;
            d
        }
        None => &mut [],
    };
    let w_total: f64 = weights.iter().map(|&w| w as f64).sum();
    let c = classes as f64;
    let mut total = 0.0f64;
    for (r, x) in logits.chunks_exact(classes).enumerate() {
        let y = labels[r] as usize;
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let wy = weights[y] as f64;
        let smooth: f64 = x
            .iter()
            .zip(weights)
            .map(|(&v, &w)| w as f64 * (lse - v as f64))
            .sum();
        total += (1.0 - eps) * wy * (lse - x[y] as f64) + eps / c * smooth;
        if !d.is_empty() {
            let (row, rest) = std::mem::take(&mut d).split_at_mut(classes);
            d = rest;
            for (j, (o, &v)) in row.iter_mut().zip(x).enumerate() {
                let (p, hit) = ((v as f64 - lse).exp(), if j == y { 1.0 } else { 0.0 });
                let g = (1.0 - eps) * wy * (p - hit) + eps / c * (w_total * p - weights[j] as f64);
                *o = (g / norm) as f32;
            }
        }
    }
    Ok((total / norm) as f32)
}

/// Widest rows taken by the row-per-lane path of [`cross_entropy_loss`].
const NARROW: usize = 32;

/// [`cross_entropy_loss`] over rows `rr` with one row per lane, eight rows at a time: for narrow
/// rows (ten classes, say) a row per lane does one vector `exp` per eight elements, where a lane
/// per row would be mostly padding. Every row takes this path whatever the split over threads,
/// so results do not depend on it. Returns the sum of the row losses, in row order.
#[inline(always)]
fn ce_narrow(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    eps: f32,
    inv_rows: f32,
    rr: std::ops::Range<usize>,
    out: &mut [f32],
) -> f64 {
    let mut s = 0.0f64;
    let first = rr.start;
    for i0 in rr.clone().step_by(simd::LANES) {
        let n = simd::LANES.min(rr.end - i0);
        let col = |c: usize| simd::column(logits, i0, n, classes, c);
        let mut m = splat(f32::NEG_INFINITY);
        for c in 0..classes {
            m = simd::max_lanes(m, col(c));
        }
        let (mut e, mut sx) = (splat(0.0), splat(0.0));
        for c in 0..classes {
            let v = col(c);
            e += simd::exp(v - m);
            sx += v - m;
        }
        // Relative to the row maximum m: lse − x_label = ln Σ + (m − x_label), and
        // mean x = m + mean (x − m); p = exp(x − m) / Σ.
        let ln_sum = simd::ln(e);
        let mean_shift = sx * splat(1.0 / classes as f32);
        let (m_a, ln_a, ms_a) = (m.to_array(), ln_sum.to_array(), mean_shift.to_array());
        for r in 0..n {
            let i = i0 + r;
            let label = labels[i] as usize;
            let smooth = if eps > 0.0 {
                eps as f64 * ms_a[r] as f64
            } else {
                0.0
            };
            s += ln_a[r] as f64
                + (1.0 - eps) as f64 * (m_a[r] - logits[i * classes + label]) as f64
                - smooth;
        }
        if !out.is_empty() {
            let (sc, off, inv_sum) = (splat(inv_rows), splat(eps / classes as f32), splat(1.0) / e);
            for c in 0..classes {
                let g = ((simd::exp(col(c) - m) * inv_sum - off) * sc).to_array();
                for (r, &g) in g.iter().enumerate().take(n) {
                    out[(i0 + r - first) * classes + c] = g;
                }
            }
            for r in 0..n {
                let i = i0 + r;
                out[(i - first) * classes + labels[i] as usize] -= (1.0 - eps) * inv_rows;
            }
        }
    }
    s
}

fn pair_check(op: &'static str, a: &[f32], b: &[f32], grad: Option<&[f32]>) -> Result<()> {
    check_len(op, "target", b, a.len())?;
    if a.is_empty() {
        return Err(Error::invalid(
            op,
            "input",
            "empty: the mean of no elements",
        ));
    }
    if let Some(g) = grad {
        check_len(op, "grad", g, a.len())?;
    }
    Ok(())
}

/// `mean loss(pred, target)` over all elements, writing `grad(pred, target)` (already divided by
/// the length) into `dpred` when given: the shape of every element-wise regression loss.
#[inline(always)]
fn mean_pair_loss(
    op: &'static str,
    pred: &[f32],
    target: &[f32],
    dpred: Option<&mut [f32]>,
    grad: impl Fn(Lane, Lane) -> Lane + Sync + Send + Copy,
    loss: impl Fn(Lane, Lane) -> Lane + Sync + Send + Copy,
) -> Result<f32> {
    pair_check(op, pred, target, dpred.as_deref())?;
    let n = pred.len();
    let out: &mut [f32] = dpred.unwrap_or_default();
    let total = par::sum_over_rows(
        n,
        1,
        n * 3,
        out,
        #[inline(always)]
        |r, out| {
            let (p, t) = (&pred[r.clone()], &target[r]);
            if !out.is_empty() {
                simd::zip_map(p, t, out, grad);
            }
            simd::sum_zip(p, t, loss) as f64
        },
    );
    Ok((total / n as f64) as f32)
}

/// Mean squared error, as `torch.nn.functional.mse_loss(pred, target)`:
/// `loss = mean (pred − target)²`; `dpred` receives `2·(pred − target)/len`.
///
/// # Errors
/// [`Error::InvalidArg`] for empty input; [`Error::Length`] if the lengths differ.
pub fn mse_loss(pred: &[f32], target: &[f32], dpred: Option<&mut [f32]>) -> Result<f32> {
    let scale = splat(2.0 / pred.len().max(1) as f32);
    mean_pair_loss(
        "mse_loss",
        pred,
        target,
        dpred,
        #[inline(always)]
        |p, t| (p - t) * scale,
        #[inline(always)]
        |p, t| (p - t) * (p - t),
    )
}

/// Mean absolute error, as `torch.nn.functional.l1_loss(pred, target)`:
/// `loss = mean |pred − target|`; `dpred` receives `sign(pred − target)/len` (0 where they are
/// equal, as PyTorch's gradient).
///
/// # Errors
/// [`Error::InvalidArg`] for empty input; [`Error::Length`] if the lengths differ.
pub fn l1_loss(pred: &[f32], target: &[f32], dpred: Option<&mut [f32]>) -> Result<f32> {
    let n = pred.len().max(1) as f32;
    let (pos, neg, zero) = (splat(1.0 / n), splat(-1.0 / n), splat(0.0));
    mean_pair_loss(
        "l1_loss",
        pred,
        target,
        dpred,
        #[inline(always)]
        |p, t| {
            let d = p - t;
            simd::select(
                simd::gt(d, zero),
                pos,
                simd::select(simd::lt(d, zero), neg, zero),
            )
        },
        #[inline(always)]
        |p, t| (p - t).abs(),
    )
}

/// Binary cross-entropy on logits, as
/// `torch.nn.functional.binary_cross_entropy_with_logits(x, t)`:
/// `loss = mean [ max(x, 0) − x·t + ln(1 + e^(−|x|)) ]` (stable for any finite `|x|`);
/// `dlogits` receives `(σ(x) − t)/len`.
///
/// # Errors
/// [`Error::InvalidArg`] for empty input; [`Error::Length`] if the lengths differ.
pub fn bce_with_logits_loss(
    logits: &[f32],
    target: &[f32],
    dlogits: Option<&mut [f32]>,
) -> Result<f32> {
    const OP: &str = "bce_with_logits_loss";
    pair_check(OP, logits, target, dlogits.as_deref())?;
    let n = logits.len();
    let scale = splat(1.0 / n as f32);
    let out: &mut [f32] = dlogits.unwrap_or_default();
    let total = par::sum_over_rows(
        n,
        1,
        n * 20,
        out,
        #[inline(always)]
        |r, out| {
            let (x, t) = (&logits[r.clone()], &target[r]);
            if !out.is_empty() {
                simd::zip_map(
                    x,
                    t,
                    out,
                    #[inline(always)]
                    |x, t| (simd::sigmoid(x) - t) * scale,
                );
            }
            // Pad the lane tail with (x, t) = (f32::MIN, 0), whose term is exactly 0.
            simd::sum_zip_padded(
                x,
                t,
                (f32::MIN, 0.0),
                #[inline(always)]
                |x, t| {
                    let soft = simd::ln_1p(simd::exp(-x.abs()));
                    x.fast_max(splat(0.0)) - x * t + soft
                },
            ) as f64
        },
    );
    Ok((total / n as f64) as f32)
}
