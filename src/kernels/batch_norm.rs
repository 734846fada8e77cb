//! Batch normalisation (2-D): training and evaluation forward passes, the backward pass, and the
//! per-channel sums the fused planes use.
//!
//! Statistics are reductions, so they are split over their outputs: each channel's sum is taken
//! by one thread in a fixed order. Plane sums are taken in `f32` lanes and combined in `f64`.

use crate::error::{Error, Result, check_len, check_min_len};
use crate::kernels::accum::Accum;
use crate::kernels::plane_ops::BnDx;
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::Shape4;
use crate::simd;
use crate::simd::lane::splat;

/// Running statistics of a batch norm and the factor of their exponential moving average.
#[derive(Debug)]
pub struct RunningStats<'a> {
    /// `[c]`: updated to `(1 − factor)·mean + factor·batch_mean`.
    pub mean: &'a mut [f32],
    /// `[c]`: updated to `(1 − factor)·var + factor·batch_var·M/(M − 1)` (unbiased).
    pub var: &'a mut [f32],
    /// PyTorch's `momentum` (default 0.1), or `1 / num_batches_tracked` for `momentum=None`.
    pub factor: f32,
}

/// A batch norm's input `[n, c, h, w]` with its channels in one of two orders: each sample's
/// channels together (NCHW), or in groups, each group a whole `[n, c_g, h, w]` tensor after the
/// one before — a channel concatenation whose inputs were written in place
/// ([`Model::activation_memory`](crate::Model::activation_memory)). Both orders hold the same
/// planes, and every sum runs over them in the same order, so the results are the same bits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Input<'a> {
    /// The values.
    pub x: &'a [f32],
    /// The groups' channel counts; empty for NCHW.
    pub groups: &'a [usize],
}

impl<'a> Input<'a> {
    /// An NCHW input.
    pub(crate) fn dense(x: &'a [f32]) -> Self {
        Input { x, groups: &[] }
    }

    /// Refuses groups that do not add up to the channels of `s`.
    fn check(&self, op: &'static str, s: Shape4) -> Result<()> {
        let total = self
            .groups
            .iter()
            .try_fold(0usize, |a, &g| a.checked_add(g));
        if self.groups.is_empty() || total == Some(s.c) {
            return Ok(());
        }
        Err(Error::invalid(
            op,
            "x",
            format!(
                "channel groups {:?} do not add up to {} channels",
                self.groups, s.c
            ),
        ))
    }

    /// Where channel `ch`'s plane of the first sample starts, and the distance from one sample's
    /// plane to the next.
    #[inline]
    fn channel(&self, s: Shape4, ch: usize) -> (usize, usize) {
        let plane = s.plane();
        let mut first = 0;
        for &g in self.groups {
            if ch < first + g {
                return (s.n * first * plane + (ch - first) * plane, g * plane);
            }
            first += g;
        }
        (ch * plane, s.c * plane)
    }

    /// Sample `i`'s plane of channel `ch`.
    #[inline]
    fn plane(&self, s: Shape4, i: usize, ch: usize) -> &'a [f32] {
        let (at, step) = self.channel(s, ch);
        &self.x[at + i * step..][..s.plane()]
    }
}

fn bn_check(
    op: &'static str,
    s: Shape4,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> Result<usize> {
    let len = s.len(op)?;
    check_len(op, "x", x, len)?;
    if let Some(g) = gamma {
        check_len(op, "gamma", g, s.c)?;
    }
    if let Some(b) = beta {
        check_len(op, "beta", b, s.c)?;
    }
    Ok(len)
}

/// Batch normalisation in training mode, as `torch.nn.BatchNorm2d` in `train()`:
/// per channel `c`, with `M = n·h·w` values, `mean_c` and the biased `var_c` of the batch,
/// `y = (x − mean_c) / sqrt(var_c + eps) · γ_c + β_c`.
///
/// - `x`, `y`: `[n, c, h, w]`; `gamma`, `beta`: `[c]` or `None` (no affine transform)
/// - `save_mean`, `save_invstd`: `[c]`, receive `mean_c` and `1/sqrt(var_c + eps)` for
///   [`batch_norm_backward`]
/// - `running`: updated with the unbiased batch variance, as PyTorch
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `shape`; [`Error::InvalidArg`] if `M < 2` (as
/// PyTorch: "expected more than 1 value per channel when training") or `eps` is negative or NaN.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_train(
    shape: Shape4,
    eps: f32,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    running: Option<RunningStats<'_>>,
) -> Result<()> {
    let x = Input::dense(x);
    forward_train_in(
        shape,
        eps,
        x,
        gamma,
        beta,
        y,
        save_mean,
        save_invstd,
        running,
    )
}

/// [`batch_norm_forward_train`] of an [`Input`] in either channel order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_train_in(
    shape: Shape4,
    eps: f32,
    x: Input<'_>,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    running: Option<RunningStats<'_>>,
) -> Result<()> {
    const OP: &str = "batch_norm_forward_train";
    let len = bn_check(OP, shape, x.x, gamma, beta)?;
    check_len(OP, "y", y, len)?;
    batch_norm_train_stats(shape, eps, x, save_mean, save_invstd, running)?;
    normalize(shape, x, save_mean, save_invstd, gamma, beta, y)
}

/// The statistics of [`batch_norm_forward_train`] without its output: `save_mean`,
/// `save_invstd` and the running statistics (for a max-pool that reads the normalised values
/// plane by plane, see [`crate::kernels::planes::Planes`]).
pub(crate) fn batch_norm_train_stats(
    shape: Shape4,
    eps: f32,
    x: Input<'_>,
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    running: Option<RunningStats<'_>>,
) -> Result<()> {
    const OP: &str = "batch_norm_forward_train";
    let len = bn_check(OP, shape, x.x, None, None)?;
    x.check(OP, shape)?;
    check_len(OP, "save_mean", save_mean, shape.c)?;
    check_len(OP, "save_invstd", save_invstd, shape.c)?;
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::invalid(OP, "eps", "must be non-negative"));
    }
    let m = shape.n * shape.plane();
    if m < 2 {
        return Err(Error::invalid(
            OP,
            "x",
            format!("expected more than 1 value per channel when training, got {m}"),
        ));
    }
    if let Some(r) = &running {
        check_len(OP, "running.mean", r.mean, shape.c)?;
        check_len(OP, "running.var", r.var, shape.c)?;
    }
    let c = shape.c;
    // Per channel: mean, then the sum of squared deviations (two passes, robust to large means).
    par::for_each(
        c,
        2 * len,
        (Items(save_mean, 1), Items(save_invstd, 1)),
        #[inline(always)]
        |r, (Items(mean, _), Items(inv, _))| {
            for ((ch, mo), io) in r.zip(mean.iter_mut()).zip(inv.iter_mut()) {
                let at = |i: usize| x.plane(shape, i, ch);
                // Plain loops: an iterator's `fold` would keep the lane code out of line.
                let mut s = 0.0f64;
                for i in 0..shape.n {
                    s += simd::sum(at(i)) as f64;
                }
                let mean = (s / m as f64) as f32;
                let mut ss = 0.0f64;
                for i in 0..shape.n {
                    ss += simd::sum_sq_dev(at(i), mean) as f64;
                }
                *mo = mean;
                // Biased variance for normalisation; stored here until the running update.
                *io = (ss / m as f64) as f32;
            }
            Ok(())
        },
    )?;
    if let Some(r) = running {
        let unbias = m as f32 / (m - 1) as f32;
        for ch in 0..c {
            r.mean[ch] = (1.0 - r.factor) * r.mean[ch] + r.factor * save_mean[ch];
            r.var[ch] = (1.0 - r.factor) * r.var[ch] + r.factor * save_invstd[ch] * unbias;
        }
    }
    for v in save_invstd.iter_mut() {
        *v = 1.0 / (*v + eps).sqrt();
    }
    Ok(())
}

/// Batch normalisation in evaluation mode: as [`batch_norm_forward_train`] with the running
/// statistics in place of the batch's (`running_*` are read, not updated). `save_mean` and
/// `save_invstd` receive `running_mean` and `1/sqrt(running_var + eps)` for
/// [`batch_norm_backward`] with `training = false`.
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `shape`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_eval(
    shape: Shape4,
    eps: f32,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) -> Result<()> {
    let (x, stats) = (Input::dense(x), (running_mean, running_var));
    forward_eval_in(shape, eps, x, gamma, beta, stats, y, save_mean, save_invstd)
}

/// [`batch_norm_forward_eval`] of an [`Input`] in either channel order (`running`: the mean and
/// the variance).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_eval_in(
    shape: Shape4,
    eps: f32,
    x: Input<'_>,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    (running_mean, running_var): (&[f32], &[f32]),
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) -> Result<()> {
    const OP: &str = "batch_norm_forward_eval";
    let len = bn_check(OP, shape, x.x, gamma, beta)?;
    x.check(OP, shape)?;
    check_len(OP, "y", y, len)?;
    batch_norm_eval_stats(
        shape,
        eps,
        running_mean,
        running_var,
        save_mean,
        save_invstd,
    )?;
    normalize(shape, x, save_mean, save_invstd, gamma, beta, y)
}

/// `save_mean` and `save_invstd` of [`batch_norm_forward_eval`], without its output.
pub(crate) fn batch_norm_eval_stats(
    shape: Shape4,
    eps: f32,
    running_mean: &[f32],
    running_var: &[f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) -> Result<()> {
    const OP: &str = "batch_norm_forward_eval";
    check_len(OP, "running_mean", running_mean, shape.c)?;
    check_len(OP, "running_var", running_var, shape.c)?;
    check_len(OP, "save_mean", save_mean, shape.c)?;
    check_len(OP, "save_invstd", save_invstd, shape.c)?;
    save_mean.copy_from_slice(running_mean);
    for (i, v) in save_invstd.iter_mut().zip(running_var) {
        *i = 1.0 / (v + eps).sqrt();
    }
    Ok(())
}

/// Channel `ch`'s output map `y = x·scale + shift`: `scale = invstd·γ`, `shift = β − mean·scale`.
#[inline]
fn affine_of(
    ch: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> (f32, f32) {
    let scale = invstd[ch] * gamma.map_or(1.0, |g| g[ch]);
    (scale, beta.map_or(0.0, |b| b[ch]) - mean[ch] * scale)
}

/// Every channel's `(scale, shift)` of the output map (see [`affine_of`]), for a consumer that
/// applies it plane by plane ([`crate::kernels::planes::Planes::Affine`]) with the bits of [`normalize`].
pub(crate) fn batch_norm_affine(
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    scale: &mut [f32],
    shift: &mut [f32],
) {
    for (ch, (a, b)) in scale.iter_mut().zip(shift.iter_mut()).enumerate() {
        (*a, *b) = affine_of(ch, mean, invstd, gamma, beta);
    }
}

/// `y = (x − mean_c)·invstd_c·γ_c + β_c` per plane.
fn normalize(
    shape: Shape4,
    x: Input<'_>,
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let (c, plane) = (shape.c, shape.plane());
    if plane == 0 {
        return Ok(());
    }
    par::for_each(
        shape.n * c,
        y.len() * 2,
        Items(y, plane),
        #[inline(always)]
        |r, Items(y, _)| {
            for (p, y_p) in r.zip(y.chunks_exact_mut(plane)) {
                let (scale, shift) = affine_of(p % c, mean, invstd, gamma, beta);
                let (a, b) = (splat(scale), splat(shift));
                simd::map(
                    x.plane(shape, p / c, p % c),
                    y_p,
                    #[inline(always)]
                    |v| v.mul_add(a, b),
                );
            }
            Ok(())
        },
    )
}

/// Elements of an input gradient from which [`batch_norm_backward`] writes it with
/// non-temporal stores (16 MiB: larger than a core's share of the last-level cache, so it would
/// be evicted before it is read; the stores then skip reading the lines in first).
const STREAM_FLOATS: usize = 4 << 20;

/// Scratch for [`batch_norm_backward`]: two values per channel and two per plane.
pub fn batch_norm_backward_scratch_len(shape: Shape4) -> usize {
    2 * shape.c + 2 * shape.n * shape.c
}

/// Gradient of batch normalisation, given the forward input `x` and the `save_mean` /
/// `save_invstd` of the forward pass. With `x̂ = (x − mean)·invstd`, per channel over its `M`
/// values:
/// - `dγ = Σ dy·x̂`, `dβ = Σ dy`
/// - training: `dx = γ·invstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M)` (the batch statistics depend on `x`)
/// - evaluation: `dx = γ·invstd·dy`
///
/// `dx`, `dgamma`, `dbeta` are overwritten or added to according to `accum`; `ws` needs
/// [`batch_norm_backward_scratch_len`] elements.
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `shape`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    shape: Shape4,
    training: bool,
    x: &[f32],
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    batch_norm_backward_from(
        shape,
        training,
        Input::dense(x),
        gamma,
        save_mean,
        save_invstd,
        Planes::Dense(dy),
        Some((dx, accum)),
        dgamma,
        dbeta,
        accum,
        ws,
    )
}

/// [`batch_norm_backward`] of a `dy` read through [`Planes`] (a max-pool's gradient spread over
/// its input plane by plane), with `dx` (and its own [`Accum`]: a layer overwrites its input
/// gradient while it adds to its parameter gradients) left out when nobody needs it. `ws` holds
/// [`batch_norm_backward_scratch_len`] elements and then a plane per parallel group (at least one)
/// when `dy` is not [`Planes::Dense`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward_from(
    shape: Shape4,
    training: bool,
    x: Input<'_>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: Planes<'_>,
    mut dx: Option<(&mut [f32], Accum)>,
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "batch_norm_backward";
    let (c, n, plane) = (shape.c, shape.n, shape.plane());
    if let Some((dx, _)) = &dx {
        check_len(OP, "dx", dx, n * c * plane)?;
    }
    let sums_len = batch_norm_backward_scratch_len(shape);
    check_min_len(OP, "ws", ws, sums_len)?;
    let (sums, planes_ws) = ws.split_at_mut(sums_len);
    if let (Planes::Dense(dy), Some((dx, dx_accum))) = (dy, &mut dx) {
        return by_channel(
            shape,
            training,
            x,
            gamma,
            save_mean,
            save_invstd,
            dy,
            (dx, *dx_accum),
            dgamma,
            dbeta,
            accum,
            sums,
        );
    }
    let map = batch_norm_backward_sums(
        shape,
        training,
        x,
        gamma,
        save_mean,
        save_invstd,
        dy,
        dgamma,
        dbeta,
        accum,
        sums,
        planes_ws,
    )?;
    let Some((dx, dx_accum)) = dx else {
        return Ok(());
    };
    if plane == 0 {
        return Ok(());
    }
    let (len, slot) = (n * c * plane, dy.slot(plane));
    // An input gradient far larger than the cache is written past it (see `simd::zip_map_stream`).
    let stream = dx_accum == Accum::Replace && len >= STREAM_FLOATS;
    par::for_each_group(
        n * c,
        super::accum::groups_in(n * c, len * 3, planes_ws.len(), slot),
        Items(dx, plane),
        planes_ws,
        slot,
        #[inline(always)]
        |r, Items(dx, _), s| {
            for (p, dx_p) in r.zip(dx.chunks_exact_mut(plane)) {
                let (x_p, dy_p) = (x.plane(shape, p / c, p % c), dy.plane(p, plane, c, s)?);
                if stream {
                    map.apply_stream(p % c, x_p, dy_p, dx_p);
                } else {
                    map.apply(p % c, x_p, dy_p, dx_p, dx_accum);
                }
            }
            Ok(())
        },
    )
}

/// [`batch_norm_backward_from`] of a stored `dy` into `dx`, channel by channel: each channel's
/// sums and then its input gradient, so that the second read of its planes of `x` and `dy`
/// comes from the cache rather than memory (three passes over memory instead of five). The
/// sums are those of [`batch_norm_backward_sums`], in the same order, so the bits are the
/// same; channels are split over the pool.
#[allow(clippy::too_many_arguments)]
fn by_channel(
    shape: Shape4,
    training: bool,
    x: Input<'_>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    (dx, dx_accum): (&mut [f32], Accum),
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
    sums: &mut [f32],
) -> Result<()> {
    const OP: &str = "batch_norm_backward";
    let len = check_saved(OP, shape, x, gamma, save_mean, save_invstd)?;
    check_len(OP, "dy", dy, len)?;
    let (c, n, plane) = (shape.c, shape.n, shape.plane());
    let (sum_dy, rest) = sums.split_at_mut(c);
    let sum_dy_xhat = &mut rest[..c];
    let stream = dx_accum == Accum::Replace && len >= STREAM_FLOATS;
    par::for_each(
        c,
        5 * len,
        (
            par::ChannelPlanes::new(dx, n, c, plane),
            Items(&mut *sum_dy, 1),
            Items(&mut *sum_dy_xhat, 1),
        ),
        #[inline(always)]
        |r, (mut dx, Items(s_dy, _), Items(s_dyx, _))| {
            for ((ch, s_dy), s_dyx) in r.zip(s_dy.iter_mut()).zip(s_dyx.iter_mut()) {
                let mean = splat(save_mean[ch]);
                let (mut s1, mut s2) = (0.0f64, 0.0f64);
                for i in 0..n {
                    let at = (i * c + ch) * plane;
                    let (a, b) = plane_sums(x.plane(shape, i, ch), &dy[at..][..plane], mean);
                    (s1, s2) = (s1 + a as f64, s2 + b as f64);
                }
                *s_dy = s1 as f32;
                *s_dyx = (s2 * save_invstd[ch] as f64) as f32;
                let one = [*s_dy, *s_dyx];
                let map = BnDx {
                    training,
                    m: (n * plane) as f32,
                    gamma: gamma.map(|g| &g[ch..ch + 1]),
                    save_mean: &save_mean[ch..ch + 1],
                    save_invstd: &save_invstd[ch..ch + 1],
                    sum_dy: &one[..1],
                    sum_dy_xhat: &one[1..],
                };
                for i in 0..n {
                    let at = (i * c + ch) * plane;
                    let (x_p, dy_p) = (x.plane(shape, i, ch), &dy[at..][..plane]);
                    let dx_p = dx.plane_mut(i, ch);
                    if stream {
                        map.apply_stream(0, x_p, dy_p, dx_p);
                    } else {
                        map.apply(0, x_p, dy_p, dx_p, dx_accum);
                    }
                }
            }
            Ok(())
        },
    )?;
    param_grads(sum_dy, sum_dy_xhat, dgamma, dbeta, accum)?;
    Ok(())
}

/// Checks a backward pass's input, scale and saved statistics against `shape`; the input's length.
fn check_saved(
    op: &'static str,
    shape: Shape4,
    x: Input<'_>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
) -> Result<usize> {
    let len = bn_check(op, shape, x.x, gamma, None)?;
    x.check(op, shape)?;
    check_len(op, "save_mean", save_mean, shape.c)?;
    check_len(op, "save_invstd", save_invstd, shape.c)?;
    Ok(len)
}

/// `(Σ dy, Σ dy·(x − mean))` of one plane.
#[inline(always)]
fn plane_sums(x_p: &[f32], dy_p: &[f32], mean: simd::Lane) -> (f32, f32) {
    let centred = simd::sum_zip(
        x_p,
        dy_p,
        #[inline(always)]
        |x, d| (x - mean) * d,
    );
    (simd::sum(dy_p), centred)
}

/// `dγ (+)= Σ dy·x̂`, `dβ (+)= Σ dy` per `accum`, for those asked for.
fn param_grads(
    sum_dy: &[f32],
    sum_dy_xhat: &[f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
) -> Result<()> {
    const OP: &str = "batch_norm_backward";
    for (grad, name, sums) in [(dgamma, "dgamma", sum_dy_xhat), (dbeta, "dbeta", sum_dy)] {
        if let Some(g) = grad {
            check_len(OP, name, g, sums.len())?;
            for (d, s) in g.iter_mut().zip(sums) {
                *d = accum.apply(*d, *s);
            }
        }
    }
    Ok(())
}

/// The first pass of [`batch_norm_backward_from`]: the sums (into `sums`, of
/// [`batch_norm_backward_scratch_len`] elements; `ws` holds a plane per parallel group when `dy`
/// is not [`Planes::Dense`]), `dγ` and `dβ`, and the per-channel map that turns the output
/// gradient into the input gradient.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward_sums<'a>(
    shape: Shape4,
    training: bool,
    x: Input<'_>,
    gamma: Option<&'a [f32]>,
    save_mean: &'a [f32],
    save_invstd: &'a [f32],
    dy: Planes<'_>,
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    accum: Accum,
    sums: &'a mut [f32],
    ws: &mut [f32],
) -> Result<BnDx<'a>> {
    const OP: &str = "batch_norm_backward";
    let len = check_saved(OP, shape, x, gamma, save_mean, save_invstd)?;
    let (c, n, plane) = (shape.c, shape.n, shape.plane());
    dy.check(OP, "dy", n * c, plane, c)?;
    let slot = dy.slot(plane);
    check_len(OP, "sums", sums, batch_norm_backward_scratch_len(shape))?;
    check_min_len(OP, "ws", ws, slot)?;
    let (sums, partial) = sums.split_at_mut(2 * c);
    let (sum_dy, sum_dy_xhat) = sums.split_at_mut(c);
    let (p_dy, p_dy_xc) = partial[..2 * n * c].split_at_mut(n * c);
    // Per-plane sums in memory order (the reads stream through x and dy; every plane is an item
    // of the split), then each channel's planes added in sample order in f64: the same sums in
    // the same order whatever the thread count.
    par::for_each_group(
        n * c,
        super::accum::groups_in(n * c, 2 * len, ws.len(), slot),
        (Items(&mut *p_dy, 1), Items(&mut *p_dy_xc, 1)),
        ws,
        slot,
        #[inline(always)]
        |r, (Items(pd, _), Items(pdx, _)), s| {
            for ((p, a), b) in r.zip(pd.iter_mut()).zip(pdx.iter_mut()) {
                let x_p = x.plane(shape, p / c, p % c);
                let (x_p, dy_p) = match &dy {
                    // Zero but at the maxima: the sums over those.
                    &Planes::Pooled {
                        dy,
                        out_plane,
                        at_max: Some(m),
                        ..
                    } => {
                        let at = p * out_plane..(p + 1) * out_plane;
                        (&m[at.clone()], &dy[at])
                    }
                    dy => (x_p, dy.plane(p, plane, c, s)?),
                };
                let mean = splat(save_mean[p % c]);
                (*a, *b) = plane_sums(x_p, dy_p, mean);
            }
            Ok(())
        },
    )?;
    for ch in 0..c {
        let (s1, s2) = (0..n).fold((0.0f64, 0.0f64), |(s1, s2), i| {
            (
                s1 + p_dy[i * c + ch] as f64,
                s2 + p_dy_xc[i * c + ch] as f64,
            )
        });
        sum_dy[ch] = s1 as f32;
        // Σ dy·x̂ = invstd · Σ dy·(x − mean)
        sum_dy_xhat[ch] = (s2 * save_invstd[ch] as f64) as f32;
    }
    param_grads(sum_dy, sum_dy_xhat, dgamma, dbeta, accum)?;
    Ok(BnDx {
        training,
        m: (n * plane) as f32,
        gamma,
        save_mean,
        save_invstd,
        sum_dy,
        sum_dy_xhat,
    })
}

#[cfg(test)]
mod tests {
    use crate::kernels::planes::Planes;

    /// The channel-by-channel input gradient of a stored `dy` is the two passes' (the sums, then
    /// the map over every plane) bit for bit, in both modes, overwriting and adding, on 1 and 3
    /// threads (channels split between threads at uneven points).
    #[test]
    fn the_channel_by_channel_gradient_is_the_two_passes() {
        use crate::kernels::accum::Accum;
        use crate::shape::Shape4;
        // Work above the default parallel threshold, so that 3 threads split the channels (the
        // threshold is process-wide: this test leaves it alone).
        let shape = Shape4::new(4, 5, 37, 41);
        let (c, plane, len) = (5, 37 * 41, 4 * 5 * 37 * 41);
        assert!(5 * len > crate::par::DEFAULT_PARALLEL_THRESHOLD);
        let at = |seed: u64| -> Vec<f32> {
            (0..len)
                .map(|i| crate::rng::uniform_at(seed, i as u64) * 4.0 - 2.0)
                .collect()
        };
        let (x, dy, start) = (at(1), at(2), at(3));
        let (mean, invstd) = ([0.1f32, -0.3, 0.0, 0.5, 1.0], [1.5f32, 0.7, 2.0, 1.0, 0.3]);
        let gamma = [0.9f32, -1.1, 1.0, 2.0, 0.5];
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for training in [true, false] {
            for accum in [Accum::Replace, Accum::Add] {
                let mut sums = vec![0.0; super::batch_norm_backward_scratch_len(shape)];
                let map = super::batch_norm_backward_sums(
                    shape,
                    training,
                    super::Input::dense(&x),
                    Some(&gamma),
                    &mean,
                    &invstd,
                    Planes::Dense(&dy),
                    None,
                    None,
                    Accum::Replace,
                    &mut sums,
                    &mut [0.0; 1],
                )
                .unwrap();
                let mut want = start.clone();
                for p in 0..4 * c {
                    let r = p * plane..(p + 1) * plane;
                    map.apply(p % c, &x[r.clone()], &dy[r.clone()], &mut want[r], accum);
                }
                let (want_dg, want_db) = (map.sum_dy_xhat.to_vec(), map.sum_dy.to_vec());
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let (mut dx, mut dg, mut db) = (start.clone(), vec![0.0; c], vec![0.0; c]);
                    let mut ws = vec![0.0; super::batch_norm_backward_scratch_len(shape)];
                    let r = pool.install(|| {
                        super::batch_norm_backward(
                            shape,
                            training,
                            &x,
                            Some(&gamma),
                            &mean,
                            &invstd,
                            &dy,
                            &mut dx,
                            Some(&mut dg),
                            Some(&mut db),
                            accum,
                            &mut ws,
                        )
                    });
                    r.unwrap();
                    let what = format!("training {training}, {accum:?}, {threads} threads");
                    assert_eq!(bits(&dx), bits(&want), "dx: {what}");
                    let expect = |s: &[f32]| match accum {
                        Accum::Replace => s.to_vec(),
                        Accum::Add => s.iter().map(|v| 0.0 + v).collect(),
                    };
                    assert_eq!(bits(&dg), bits(&expect(&want_dg)), "dgamma: {what}");
                    assert_eq!(bits(&db), bits(&expect(&want_db)), "dbeta: {what}");
                }
            }
        }
    }

    #[test]
    fn batch_norm_gradients_of_pooled_planes_are_the_two_steps() {
        use crate::shape::Shape4;
        let shape = Shape4::new(2, 3, 7, 11);
        let (plane, out_plane, c) = (7 * 11, 3 * 5, 3);
        let x: Vec<f32> = (0..6 * plane)
            .map(|i| crate::rng::uniform_at(5, i as u64) * 4.0 - 2.0)
            .collect();
        let dy: Vec<f32> = (0..6 * out_plane)
            .map(|i| crate::rng::uniform_at(6, i as u64) - 0.5)
            .collect();
        // Each window's maximum at one of its four positions.
        let argmax: Vec<u32> = (0..6 * out_plane)
            .map(|i| {
                let (oh, ow) = (i % out_plane / 5, i % 5);
                let o = [0, 1, 11, 12][(crate::rng::uniform_at(7, i as u64) * 4.0) as usize % 4];
                (2 * oh * 11 + 2 * ow + o) as u32
            })
            .collect();
        let pooled = Planes::Pooled {
            dy: &dy,
            argmax: &argmax,
            out_plane,
            pairs: Some(11),
            at_max: None,
        };
        let (mean, invstd, gamma) = ([0.1f32, -0.3, 0.0], [1.5f32, 0.7, 2.0], [0.9f32, -1.1, 1.0]);
        for training in [true, false] {
            let mut sums = vec![0.0; super::batch_norm_backward_scratch_len(shape)];
            let mut ws = vec![0.0; plane];
            let map = super::batch_norm_backward_sums(
                shape,
                training,
                super::Input::dense(&x),
                Some(&gamma),
                &mean,
                &invstd,
                pooled,
                None,
                None,
                crate::kernels::accum::Accum::Replace,
                &mut sums,
                &mut ws,
            )
            .unwrap();
            let grad = Planes::BnGrad {
                x: &x,
                dy: &pooled,
                map,
            };
            let (mut fused, mut two) = (vec![f32::NAN; plane], vec![f32::NAN; plane]);
            for p in 0..6 {
                let got = grad.plane(p, plane, c, &mut fused).unwrap();
                pooled.plane(p, plane, c, &mut two).unwrap();
                map.apply_in_place(p % c, &x[p * plane..][..plane], &mut two);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&two), "training {training}, plane {p}");
            }
        }
    }
}
