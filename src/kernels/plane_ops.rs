//! What a fused operand ([`super::planes::Planes`]) needs to make one plane: a batch norm's
//! input-gradient map, and a max-pool's gradient spread back over its input plane. Below the
//! kernel families that use them (batch norm, pooling, convolution) and the operand itself.

use super::accum::{Accum, zip_map_into};
use crate::error::Result;
use crate::simd;
use crate::simd::lane::splat;

/// The map from a batch norm's output gradient to its input gradient, per channel, once the
/// sums of the backward pass are known (see [`batch_norm_backward`](crate::kernels::batch_norm::batch_norm_backward)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BnDx<'a> {
    pub(crate) training: bool,
    /// Values per channel.
    pub(crate) m: f32,
    pub(crate) gamma: Option<&'a [f32]>,
    pub(crate) save_mean: &'a [f32],
    pub(crate) save_invstd: &'a [f32],
    pub(crate) sum_dy: &'a [f32],
    pub(crate) sum_dy_xhat: &'a [f32],
}

impl BnDx<'_> {
    /// `(k, mean, a, b)` of channel `ch`: training, `dx = k·(dy − a − (x − mean)·b)` with
    /// `a = Σdy/M`, `b = invstd·Σ(dy·x̂)/M`; evaluation, `dx = k·dy`; `k = γ·invstd`.
    #[inline(always)]
    fn coefficients(&self, ch: usize) -> [simd::Lane; 4] {
        self.scalars(ch).map(splat)
    }

    /// [`BnDx::coefficients`] of channel `ch`, as scalars.
    #[inline(always)]
    fn scalars(&self, ch: usize) -> [f32; 4] {
        let inv = self.save_invstd[ch];
        let k = inv * self.gamma.map_or(1.0, |g| g[ch]);
        let a = self.sum_dy[ch] / self.m;
        let b = inv * self.sum_dy_xhat[ch] / self.m;
        [k, self.save_mean[ch], a, b]
    }

    /// `[k, mean, a, b]` of channel `ch` in training mode (`dx = k·(dy − a − (x − mean)·b)`, for
    /// a kernel that applies the map itself), `None` in evaluation mode.
    #[inline(always)]
    pub(crate) fn training_coefficients(&self, ch: usize) -> Option<[f32; 4]> {
        self.training.then(|| self.scalars(ch))
    }

    /// One lane of the map with channel coefficients `c`.
    #[inline(always)]
    fn lane(&self, [k, mean, a, b]: [simd::Lane; 4], x: simd::Lane, d: simd::Lane) -> simd::Lane {
        if self.training {
            k * (x - mean).mul_neg_add(b, d - a)
        } else {
            k * d
        }
    }

    /// `dx_p (+)=` the map of plane `(x_p, dy_p)` of channel `ch`, per `accum`.
    #[inline(always)]
    pub(crate) fn apply(
        &self,
        ch: usize,
        x_p: &[f32],
        dy_p: &[f32],
        dx_p: &mut [f32],
        accum: Accum,
    ) {
        let c = self.coefficients(ch);
        zip_map_into(
            x_p,
            dy_p,
            dx_p,
            accum,
            #[inline(always)]
            |x, d| self.lane(c, x, d),
        );
    }

    /// [`BnDx::apply`] with [`Accum::Replace`], stored past the cache
    /// ([`simd::zip_map_stream`]).
    #[inline(always)]
    pub(crate) fn apply_stream(&self, ch: usize, x_p: &[f32], dy_p: &[f32], dx_p: &mut [f32]) {
        let c = self.coefficients(ch);
        simd::zip_map_stream(
            x_p,
            dy_p,
            dx_p,
            #[inline(always)]
            |x, d| self.lane(c, x, d),
        );
    }

    /// `d =` the map of plane `(x_p, d)` of channel `ch`, in place.
    #[inline(always)]
    pub(crate) fn apply_in_place(&self, ch: usize, x_p: &[f32], d: &mut [f32]) {
        let c = self.coefficients(ch);
        simd::zip_map_acc(
            x_p,
            x_p,
            d,
            #[inline(always)]
            |x, _, d| self.lane(c, x, d),
        );
    }
}

/// One plane of [`max_pool2d_backward`](super::pool::max_pool2d_backward): `dy_p[o]` added at `dx_p[a_p[o]]` (to zeros with
/// [`Accum::Replace`]) in `a_p`'s order; with `pairs` (the input width of 2x2 windows at stride 2
/// without padding, [`pairs`](super::pool::pairs)) and `Replace`, written by the micro-kernels in one pass when every
/// index is in its own window (each position then receives one `0 + d`, the same bits).
///
/// # Errors
/// [`Error::InvalidArg`](crate::Error::InvalidArg) if an index is outside the plane.
#[inline(always)]
pub(crate) fn unpool_plane(
    a_p: &[u32],
    dy_p: &[f32],
    dx_p: &mut [f32],
    pairs: Option<usize>,
    accum: Accum,
) -> Result<()> {
    if accum == Accum::Replace {
        if let Some(in_w) = pairs {
            let done = crate::arch::with_kernel!(
                k => crate::arch::kernel::MicroKernel::unpool2(k, dy_p, a_p, dx_p, in_w, None);
                else false
            );
            if done {
                return Ok(());
            }
        }
        dx_p.fill(0.0);
    }
    // One max over the plane's indices (vectorised, no early exit), then the scatter.
    if a_p.iter().fold(0, |m, &a| m.max(a)) as usize >= dx_p.len() && !a_p.is_empty() {
        return Err(bad_index());
    }
    for (&a, &d) in a_p.iter().zip(dy_p) {
        dx_p[a as usize] += d;
    }
    Ok(())
}

/// [`unpool_plane`] of 2x2 windows (`in_w` wide, replacing `dx_p`) followed by a batch norm's
/// input gradient map of `x_p` in training mode with `coefficients`
/// ([`BnDx::training_coefficients`]), in one pass of the micro-kernels (the same
/// bits as the two steps); `false`, with `dx_p` unspecified, without micro-kernels or when an
/// index is outside its window.
#[inline(always)]
pub(crate) fn unpool_bn_plane(
    a_p: &[u32],
    dy_p: &[f32],
    dx_p: &mut [f32],
    in_w: usize,
    x_p: &[f32],
    coefficients: [f32; 4],
) -> bool {
    crate::arch::with_kernel!(
        k => crate::arch::kernel::MicroKernel::unpool2(
            k, dy_p, a_p, dx_p, in_w, Some((x_p, coefficients))
        );
        else false
    )
}

/// The error for a max-pool index outside its input plane.
pub(crate) fn bad_index() -> crate::error::Error {
    crate::error::Error::invalid(
        "max_pool2d_backward",
        "argmax",
        "index outside its input plane",
    )
}
