//! Softmax and log-softmax over the last axis, forward and backward.
//!
//! Both subtract the row maximum before exponentiating, so logits of any finite size (±1e4 and
//! beyond) give finite results, and `-inf` logits get probability exactly 0 (log-probability
//! `-inf`). As in PyTorch, a row whose maximum is `+inf` or that is entirely `-inf` has no defined
//! softmax and gives NaN, and a NaN anywhere in a row makes the whole row NaN.

use crate::error::{Error, Result, check_len};
use crate::kernels::accum::Accum;
use crate::par;
use crate::simd;
use crate::simd::lane::splat;

/// Rows of a row-major `[rows, cols]` buffer of length `len`.
pub(crate) fn rows_of(op: &'static str, cols: usize, len: usize) -> Result<usize> {
    if cols == 0 {
        return Err(Error::invalid(op, "cols", "must be at least 1"));
    }
    if !len.is_multiple_of(cols) {
        return Err(Error::length(op, "x", len.div_ceil(cols) * cols, len));
    }
    Ok(len / cols)
}

/// Softmax over rows of length `cols`, as `torch.softmax(x, dim=-1)`:
/// `y[r, j] = exp(x[r, j] − m_r) / Σ_k exp(x[r, k] − m_r)` with `m_r = max_k x[r, k]`.
///
/// # Errors
/// [`Error::InvalidArg`] if `cols == 0`; [`Error::Length`] if `x.len()` is not a multiple of
/// `cols` or `y.len() != x.len()`.
///
/// # Example
/// ```
/// use cnnkit::kernels::softmax_forward;
/// let x = [0.0, 1e4, f32::NEG_INFINITY, 0.0];
/// let mut y = [0.0; 4];
/// softmax_forward(2, &x, &mut y)?;
/// assert_eq!(y, [0.0, 1.0, 0.0, 1.0]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn softmax_forward(cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "softmax_forward";
    rows_of(OP, cols, x.len())?;
    check_len(OP, "y", y, x.len())?;
    par::for_each_row(
        cols,
        x.len() * 20,
        y,
        #[inline(always)]
        |i, y_r| {
            let x_r = &x[i * cols..][..cols];
            let m = splat(simd::max(x_r));
            simd::map(
                x_r,
                y_r,
                #[inline(always)]
                |v| simd::exp(v - m),
            );
            let inv = splat(1.0 / simd::sum(y_r));
            simd::map_in_place(
                y_r,
                #[inline(always)]
                |v| v * inv,
            );
        },
    );
    Ok(())
}

/// Log-softmax over rows of length `cols`, as `torch.log_softmax(x, dim=-1)`:
/// `y[r, j] = (x[r, j] − m_r) − ln Σ_k exp(x[r, k] − m_r)`.
///
/// The shifted value `x − m` is exact near the maximum, and `m + ln Σ` is never rounded to one
/// `f32` first: for large logits that rounding would lose up to half an `f32` step of `m` (about
/// 1e-3 at 2e4).
///
/// # Errors
/// As [`softmax_forward`].
pub fn log_softmax_forward(cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "log_softmax_forward";
    rows_of(OP, cols, x.len())?;
    check_len(OP, "y", y, x.len())?;
    par::for_each_row(
        cols,
        x.len() * 20,
        y,
        #[inline(always)]
        |i, y_r| {
            let x_r = &x[i * cols..][..cols];
            let (m, sum) = max_and_sum_exp(x_r);
            let (m, ln_sum) = (splat(m), splat(sum.ln()));
            simd::map(
                x_r,
                y_r,
                #[inline(always)]
                |v| (v - m) - ln_sum,
            );
        },
    );
    Ok(())
}

/// `(m, Σ exp(x − m))` of one row, `m = max x`: the log-sum-exp is `m + ln Σ`, kept as two
/// terms so callers subtract `m` first (exact near the maximum) and never round their sum.
#[inline(always)]
pub(crate) fn max_and_sum_exp(x: &[f32]) -> (f32, f32) {
    let m = simd::max(x);
    let mv = splat(m);
    let sum = simd::sum_map(
        x,
        f32::NEG_INFINITY,
        #[inline(always)]
        |v| simd::exp(v - mv),
    );
    (m, sum)
}

/// Gradient of [`softmax_forward`] from its output `y`:
/// `dx[r, j] = y[r, j] · (dy[r, j] − Σ_k dy[r, k]·y[r, k])`.
///
/// # Errors
/// As [`softmax_forward`], for `y`, `dy` and `dx`.
pub fn softmax_backward(
    cols: usize,
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "softmax_backward";
    rows_of(OP, cols, y.len())?;
    check_len(OP, "dy", dy, y.len())?;
    check_len(OP, "dx", dx, y.len())?;
    par::for_each_row(
        cols,
        y.len() * 4,
        dx,
        #[inline(always)]
        |i, dx_r| {
            let (y_r, dy_r) = (&y[i * cols..][..cols], &dy[i * cols..][..cols]);
            let s = splat(simd::dot(y_r, dy_r));
            simd::zip_map_acc(
                y_r,
                dy_r,
                dx_r,
                #[inline(always)]
                |y, d, old| accum.lanes(old, y * (d - s)),
            );
        },
    );
    Ok(())
}

/// Gradient of [`log_softmax_forward`] from its output `y`:
/// `dx[r, j] = dy[r, j] − exp(y[r, j]) · Σ_k dy[r, k]`.
///
/// # Errors
/// As [`softmax_forward`], for `y`, `dy` and `dx`.
pub fn log_softmax_backward(
    cols: usize,
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "log_softmax_backward";
    rows_of(OP, cols, y.len())?;
    check_len(OP, "dy", dy, y.len())?;
    check_len(OP, "dx", dx, y.len())?;
    par::for_each_row(
        cols,
        y.len() * 20,
        dx,
        #[inline(always)]
        |i, dx_r| {
            let (y_r, dy_r) = (&y[i * cols..][..cols], &dy[i * cols..][..cols]);
            let s = splat(simd::sum(dy_r));
            simd::zip_map_acc(
                y_r,
                dy_r,
                dx_r,
                #[inline(always)]
                |y, d, old| accum.lanes(old, simd::exp(y).mul_neg_add(s, d)),
            );
        },
    );
    Ok(())
}

/// Softmax over the channels at each position, as `torch.softmax(x, dim=1)` on `[N, C, H·W]`
/// (`hw` positions per channel plane): for each sample and position `p`,
/// `y[c, p] = exp(x[c, p] − m_p) / Σ_k exp(x[k, p] − m_p)`. With `hw == 1` it is
/// [`softmax_forward`] over rows of `c`.
///
/// # Errors
/// [`Error::InvalidArg`] if `c` or `hw` is 0; [`Error::Length`] if `x.len()` is not a multiple
/// of `c·hw` or `y.len() != x.len()`.
pub fn softmax_channels_forward(c: usize, hw: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "softmax_channels_forward";
    if hw == 0 {
        return Err(Error::invalid(OP, "hw", "must be at least 1"));
    }
    if hw == 1 {
        return softmax_forward(c, x, y);
    }
    rows_of(OP, c.saturating_mul(hw), x.len())?;
    check_len(OP, "y", y, x.len())?;
    for (xs, ys) in x.chunks_exact(c * hw).zip(y.chunks_exact_mut(c * hw)) {
        for p in 0..hw {
            // NaN anywhere makes the sum, and so every output at this position, NaN.
            let m = (0..c)
                .map(|k| xs[k * hw + p])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for k in 0..c {
                let e = (xs[k * hw + p] - m).exp();
                ys[k * hw + p] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for k in 0..c {
                ys[k * hw + p] *= inv;
            }
        }
    }
    Ok(())
}

/// Gradient of [`softmax_channels_forward`] from its output `y`: at each position,
/// `dx[c, p] = y[c, p] · (dy[c, p] − Σ_k dy[k, p]·y[k, p])`.
///
/// # Errors
/// As [`softmax_channels_forward`], for `y`, `dy` and `dx`.
pub fn softmax_channels_backward(
    c: usize,
    hw: usize,
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "softmax_channels_backward";
    if hw == 0 {
        return Err(Error::invalid(OP, "hw", "must be at least 1"));
    }
    if hw == 1 {
        return softmax_backward(c, y, dy, dx, accum);
    }
    rows_of(OP, c.saturating_mul(hw), y.len())?;
    check_len(OP, "dy", dy, y.len())?;
    check_len(OP, "dx", dx, y.len())?;
    for ((ys, dys), dxs) in y
        .chunks_exact(c * hw)
        .zip(dy.chunks_exact(c * hw))
        .zip(dx.chunks_exact_mut(c * hw))
    {
        for p in 0..hw {
            let dot: f32 = (0..c).map(|k| dys[k * hw + p] * ys[k * hw + p]).sum();
            for k in 0..c {
                let g = ys[k * hw + p] * (dys[k * hw + p] - dot);
                dxs[k * hw + p] = accum.apply(dxs[k * hw + p], g);
            }
        }
    }
    Ok(())
}
