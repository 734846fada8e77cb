//! The training-time noise layers: dropout and additive Gaussian noise, each decision a function
//! of `(seed, index)` only, so the same for any number of threads.

use crate::error::{Error, Result, check_len};
use crate::kernels::accum::Accum;
use crate::kernels::activation::mask_backward;
use crate::par::{self, BLOCK, Items};
use crate::rng::{normal_at, uniform_at};

/// The factor of a kept element, `1/(1 − p)` (0 for `p = 1`, where nothing is kept).
///
/// # Errors
/// [`Error::InvalidArg`] unless `0 <= p <= 1`.
fn kept_scale(op: &'static str, p: f32) -> Result<f32> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            op,
            "p",
            format!("must be in [0, 1], got {p}"),
        ));
    }
    Ok(if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 })
}

/// Dropout in training mode, as `torch.nn.functional.dropout(x, p, training=True)`: each element
/// is zeroed with probability `p`, the others scaled by `1/(1 − p)`. `mask` receives the factor
/// (`0` or `1/(1 − p)`) of each element for [`dropout_backward`]. The decision for element `i`
/// depends only on `(seed, i)`, so it is the same for any number of threads.
///
/// # Errors
/// [`Error::InvalidArg`] unless `0 <= p <= 1`; [`Error::Length`] if the buffers differ in length.
pub fn dropout_forward_train(
    p: f32,
    seed: u64,
    x: &[f32],
    y: &mut [f32],
    mask: &mut [f32],
) -> Result<()> {
    const OP: &str = "dropout_forward_train";
    let scale = kept_scale(OP, p)?;
    check_len(OP, "y", y, x.len())?;
    check_len(OP, "mask", mask, x.len())?;
    par::for_each_block(
        x.len(),
        4,
        (Items(y, BLOCK), Items(mask, BLOCK)),
        #[inline(always)]
        |r, (Items(y, _), Items(mask, _))| {
            for (((i, &xv), yv), mv) in r.clone().zip(&x[r]).zip(y).zip(mask) {
                let keep = uniform_at(seed, i as u64) >= p;
                *mv = if keep { scale } else { 0.0 };
                *yv = xv * *mv;
            }
        },
    );
    Ok(())
}

/// Additive Gaussian noise, the training-mode forward pass of a noise layer: `y = x + σ·zᵢ` with
/// `zᵢ` standard normal. `zᵢ` depends only on `(seed, i)`, so it is the same for any number of
/// threads. The gradient is the identity (`dx = dy`): the noise does not depend on `x`.
///
/// # Errors
/// [`Error::InvalidArg`] unless `σ` is finite and `>= 0`; [`Error::Length`] if the buffers
/// differ in length.
pub fn gaussian_noise_forward_train(std: f32, seed: u64, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "gaussian_noise_forward_train";
    if !(std.is_finite() && std >= 0.0) {
        return Err(Error::invalid(
            OP,
            "std",
            format!("must be finite and >= 0, got {std}"),
        ));
    }
    check_len(OP, "y", y, x.len())?;
    par::for_each_block(
        x.len(),
        16,
        Items(y, BLOCK),
        #[inline(always)]
        |r, Items(y, _)| {
            for ((i, &xv), yv) in r.clone().zip(&x[r]).zip(y) {
                *yv = std.mul_add(normal_at(seed, i as u64), xv);
            }
        },
    );
    Ok(())
}

/// Gradient of [`dropout_forward_train`]: `dx = dy · mask`.
///
/// # Errors
/// [`Error::Length`] if the buffers differ in length.
pub fn dropout_backward(mask: &[f32], dy: &[f32], dx: &mut [f32], accum: Accum) -> Result<()> {
    mask_backward("dropout_backward", mask, dy, dx, accum)
}

/// Stochastic depth in training mode, as `torchvision.ops.stochastic_depth(x, p, mode="row",
/// training=True)`: each of the `n` samples of `x` is zeroed whole with probability `p`, the
/// others scaled by `1/(1 − p)` (`p = 1` zeroes everything, `p = 0` is the identity). `mask`
/// (one factor per sample) receives each sample's factor for [`stochastic_depth_backward`]; the
/// decision for sample `s` depends only on `(seed, s)`.
///
/// # Errors
/// [`Error::InvalidArg`] unless `0 <= p <= 1`; [`Error::Length`] if `x` is not `n` samples of
/// equal length, or `y` or `mask` disagrees.
pub fn stochastic_depth_forward_train(
    p: f32,
    seed: u64,
    n: usize,
    x: &[f32],
    y: &mut [f32],
    mask: &mut [f32],
) -> Result<()> {
    const OP: &str = "stochastic_depth_forward_train";
    let scale = kept_scale(OP, p)?;
    check_len(OP, "y", y, x.len())?;
    check_len(OP, "mask", mask, n)?;
    if n == 0 {
        return check_len(OP, "x", x, 0);
    }
    if !x.len().is_multiple_of(n) {
        return Err(Error::length(OP, "x", n * (x.len() / n + 1), x.len()));
    }
    let item = x.len() / n;
    for (s, m) in mask.iter_mut().enumerate() {
        *m = if uniform_at(seed, s as u64) >= p {
            scale
        } else {
            0.0
        };
    }
    if item == 0 {
        return Ok(());
    }
    par::for_each(
        n,
        x.len(),
        Items(y, item),
        #[inline(always)]
        |r, Items(y, _)| {
            for (s, y_s) in r.zip(y.chunks_exact_mut(item)) {
                let m = mask[s];
                for (v, &xv) in y_s.iter_mut().zip(&x[s * item..][..item]) {
                    *v = xv * m;
                }
            }
            Ok(())
        },
    )
}

/// Gradient of [`stochastic_depth_forward_train`]: `dx = dy · mask[sample]`.
///
/// # Errors
/// [`Error::Length`] if the buffers disagree.
pub fn stochastic_depth_backward(
    mask: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "stochastic_depth_backward";
    check_len(OP, "dx", dx, dy.len())?;
    let n = mask.len();
    if n == 0 {
        return check_len(OP, "dy", dy, 0);
    }
    if !dy.len().is_multiple_of(n) {
        return Err(Error::length(OP, "dy", n * (dy.len() / n + 1), dy.len()));
    }
    let item = dy.len() / n;
    if item == 0 {
        return Ok(());
    }
    par::for_each(
        n,
        dy.len(),
        Items(dx, item),
        #[inline(always)]
        |r, Items(dx, _)| {
            for (s, dx_s) in r.zip(dx.chunks_exact_mut(item)) {
                let m = mask[s];
                for (d, &g) in dx_s.iter_mut().zip(&dy[s * item..][..item]) {
                    *d = match accum {
                        Accum::Replace => g * m,
                        Accum::Add => *d + g * m,
                    };
                }
            }
            Ok(())
        },
    )
}
