//! The training-time noise layers: dropout and additive Gaussian noise, each decision a function
//! of `(seed, index)` only, so the same for any number of threads.

use crate::error::{Error, Result, check_len};
use crate::kernels::accum::Accum;
use crate::kernels::activation::mask_backward;
use crate::par::{self, BLOCK, Items};
use crate::rng::{normal_at, uniform_at};

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
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            OP,
            "p",
            format!("must be in [0, 1], got {p}"),
        ));
    }
    check_len(OP, "y", y, x.len())?;
    check_len(OP, "mask", mask, x.len())?;
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
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
