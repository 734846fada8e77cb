//! Layer normalisation over the last `d` values of each row, forward and backward.
//!
//! The γ/β gradients are column sums, each taken by one thread in a fixed order; row sums are
//! taken in `f32` lanes and combined in `f64`.

use crate::error::{Result, check_len};
use crate::kernels::accum::Accum;
use crate::par::{self, Items};
use crate::simd;
use crate::simd::lane::splat;

/// Layer normalisation over the last `d` elements, as
/// `torch.nn.functional.layer_norm(x, normalized_shape, weight, bias, eps)` where the product of
/// `normalized_shape` is `d`: per row, `y = (x − mean)/sqrt(var + eps)·γ + β` with the biased
/// variance.
///
/// - `x`, `y`: `[rows, d]`; `gamma`, `beta`: `[d]` or `None`
/// - `save_mean`, `save_invstd`: `[rows]`, for [`layer_norm_backward`]
///
/// # Errors
/// [`Error::InvalidArg`](crate::error::Error::InvalidArg) if `d == 0`; [`Error::Length`](crate::error::Error::Length) if a buffer disagrees.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    d: usize,
    eps: f32,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) -> Result<()> {
    const OP: &str = "layer_norm_forward";
    let rows = crate::kernels::softmax::rows_of(OP, d, x.len())?;
    check_len(OP, "y", y, x.len())?;
    ln_affine_check(OP, d, gamma, beta)?;
    check_len(OP, "save_mean", save_mean, rows)?;
    check_len(OP, "save_invstd", save_invstd, rows)?;
    par::for_each(
        rows,
        x.len() * 4,
        (Items(y, d), Items(save_mean, 1), Items(save_invstd, 1)),
        #[inline(always)]
        |r, (Items(y, _), Items(mean, _), Items(inv, _))| {
            for (((i, y_r), mo), io) in r.zip(y.chunks_exact_mut(d)).zip(mean).zip(inv) {
                let x_r = &x[i * d..][..d];
                let mean = (simd::sum(x_r) as f64 / d as f64) as f32;
                let var = simd::sum_sq_dev(x_r, mean) / d as f32;
                let invstd = 1.0 / (var + eps).sqrt();
                (*mo, *io) = (mean, invstd);
                let (mv, iv) = (splat(mean), splat(invstd));
                simd::map(
                    x_r,
                    y_r,
                    #[inline(always)]
                    |v| (v - mv) * iv,
                );
                if let Some(g) = gamma {
                    simd::map_in_place_zip(
                        g,
                        y_r,
                        #[inline(always)]
                        |g, y| y * g,
                    );
                }
                if let Some(b) = beta {
                    simd::map_in_place_zip(
                        b,
                        y_r,
                        #[inline(always)]
                        |b, y| y + b,
                    );
                }
            }
            Ok(())
        },
    )
}

fn ln_affine_check(
    op: &'static str,
    d: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> Result<()> {
    if let Some(g) = gamma {
        check_len(op, "gamma", g, d)?;
    }
    if let Some(b) = beta {
        check_len(op, "beta", b, d)?;
    }
    Ok(())
}

/// Gradient of [`layer_norm_forward`]. Per row, with `x̂ = (x − mean)·invstd` and `g = dy·γ`:
/// `dx = invstd·(g − mean(g) − x̂·mean(g·x̂))`; over rows: `dγ = Σ dy·x̂`, `dβ = Σ dy`.
///
/// Outputs are overwritten or added to according to `accum`.
///
/// # Errors
/// [`Error::Length`](crate::error::Error::Length) if a buffer disagrees.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    d: usize,
    x: &[f32],
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
) -> Result<()> {
    layer_norm_backward_split(
        d,
        x,
        gamma,
        save_mean,
        save_invstd,
        dy,
        (dx, accum),
        dgamma,
        dbeta,
        accum,
    )
}

/// [`layer_norm_backward`] with `dx`'s own [`Accum`] (a layer overwrites its input gradient while
/// it adds to its parameter gradients).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward_split(
    d: usize,
    x: &[f32],
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    (dx, dx_accum): (&mut [f32], Accum),
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
) -> Result<()> {
    const OP: &str = "layer_norm_backward";
    let rows = crate::kernels::softmax::rows_of(OP, d, x.len())?;
    ln_affine_check(OP, d, gamma, None)?;
    check_len(OP, "save_mean", save_mean, rows)?;
    check_len(OP, "save_invstd", save_invstd, rows)?;
    check_len(OP, "dy", dy, x.len())?;
    check_len(OP, "dx", dx, x.len())?;
    par::for_each_row(
        d,
        x.len() * 6,
        dx,
        #[inline(always)]
        |i, dx_r| {
            let (x_r, dy_r) = (&x[i * d..][..d], &dy[i * d..][..d]);
            let (mv, iv) = (splat(save_mean[i]), splat(save_invstd[i]));
            // a = mean(g), b = mean(g·x̂), with g = dy·γ.
            let (sa, sb) = match gamma {
                Some(gm) => (
                    simd::dot(dy_r, gm),
                    weighted_xhat_sum(x_r, dy_r, Some(gm), mv, iv),
                ),
                None => (simd::sum(dy_r), weighted_xhat_sum(x_r, dy_r, None, mv, iv)),
            };
            let (a, b) = (splat(sa / d as f32), splat(sb / d as f32));
            match gamma {
                Some(gm) => {
                    // dx = invstd·(dy·γ − a − x̂·b), lane by lane over (x, dy, γ).
                    simd::zip3_map_acc(
                        x_r,
                        dy_r,
                        gm,
                        dx_r,
                        #[inline(always)]
                        |x, dy, g, old| {
                            let xh = (x - mv) * iv;
                            dx_accum.lanes(old, iv * xh.mul_neg_add(b, dy * g - a))
                        },
                    );
                }
                None => simd::zip_map_acc(
                    x_r,
                    dy_r,
                    dx_r,
                    #[inline(always)]
                    |x, dy, old| {
                        let xh = (x - mv) * iv;
                        dx_accum.lanes(old, iv * xh.mul_neg_add(b, dy - a))
                    },
                ),
            }
        },
    );
    // γ/β gradients: split over columns; each column sums its rows in order.
    if let Some(dg) = dgamma {
        check_len(OP, "dgamma", dg, d)?;
        column_sums(
            d,
            rows,
            dg,
            accum,
            #[inline(always)]
            |i, jr, dst| {
                let (x_r, dy_r) = (&x[i * d..][jr.clone()], &dy[i * d..][jr]);
                let (mv, iv) = (splat(save_mean[i]), splat(save_invstd[i]));
                simd::zip_map_acc(
                    x_r,
                    dy_r,
                    dst,
                    #[inline(always)]
                    |x, dy, acc| ((x - mv) * iv).mul_add(dy, acc),
                );
            },
        )?;
    }
    if let Some(db) = dbeta {
        check_len(OP, "dbeta", db, d)?;
        column_sums(
            d,
            rows,
            db,
            accum,
            #[inline(always)]
            |i, jr, dst| {
                simd::map_in_place_zip(
                    &dy[i * d..][jr],
                    dst,
                    #[inline(always)]
                    |dy, acc| acc + dy,
                )
            },
        )?;
    }
    Ok(())
}

/// `dst[j] (+)= Σ_i term(i, j)` for the `d` columns of a `[rows, d]` layout: split over columns,
/// each column accumulating its rows in order. `add_row(i, cols, dst)` adds row `i`'s terms for
/// columns `cols` into `dst` (those columns' accumulators).
fn column_sums(
    d: usize,
    rows: usize,
    dst: &mut [f32],
    accum: Accum,
    add_row: impl Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync,
) -> Result<()> {
    par::for_each(
        d,
        rows * d * 2,
        Items(dst, 1),
        #[inline(always)]
        |jr, Items(dst, _)| {
            if accum == Accum::Replace {
                dst.fill(0.0);
            }
            for i in 0..rows {
                add_row(i, jr.clone(), dst);
            }
            Ok(())
        },
    )
}

/// `Σ_j dy_j·γ_j·x̂_j` of one row (`γ = 1` when absent).
#[inline(always)]
fn weighted_xhat_sum(
    x: &[f32],
    dy: &[f32],
    gamma: Option<&[f32]>,
    mean: simd::Lane,
    invstd: simd::Lane,
) -> f32 {
    match gamma {
        None => simd::sum_zip(
            x,
            dy,
            #[inline(always)]
            |x, d| (x - mean) * invstd * d,
        ),
        Some(g) => simd::sum_zip3(
            x,
            dy,
            g,
            #[inline(always)]
            |x, d, g| (x - mean) * invstd * d * g,
        ),
    }
}
