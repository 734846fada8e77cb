//! Stateless math over `f32` slices: the building blocks layers call.
//!
//! Every kernel has the form `op(geometry, inputs…, outputs…, [accum], [scratch]) -> Result<()>`.
//! Outputs are overwritten and never read, except gradient outputs, which take an [`Accum`] so a
//! caller can sum gradients over several batches or branches. Kernels validate buffer lengths and
//! return [`Error::Length`](crate::Error::Length) on a mismatch; they allocate nothing, do no I/O,
//! and run on the caller's rayon pool.
//!
//! Layouts follow PyTorch: activations NCHW, convolution weights OIHW, dense weights `[out, in]`.

use crate::error::Result;

pub mod activation;
pub mod conv;
pub mod dense;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod softmax;

pub use activation::*;
pub use conv::*;
pub use dense::*;
pub use loss::*;
pub use norm::*;
pub use pool::*;
pub use softmax::*;

/// Whether a gradient output is overwritten or added to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accum {
    /// `grad = g` (the output is not read).
    #[default]
    Replace,
    /// `grad += g`.
    Add,
}

impl Accum {
    /// The GEMM `beta` that implements this mode.
    #[inline]
    pub(crate) fn beta(self) -> f32 {
        match self {
            Accum::Replace => 0.0,
            Accum::Add => 1.0,
        }
    }

    /// `g` or `old + g`.
    #[inline]
    pub(crate) fn apply(self, old: f32, g: f32) -> f32 {
        match self {
            Accum::Replace => g,
            Accum::Add => old + g,
        }
    }

    /// Lane version of [`Accum::apply`].
    #[inline(always)]
    pub(crate) fn lanes(self, old: crate::simd::Lane, g: crate::simd::Lane) -> crate::simd::Lane {
        match self {
            Accum::Replace => g,
            Accum::Add => old + g,
        }
    }
}

/// `out (+)= f(a[i], b[i])` lane by lane, per `accum`: `out` is read only when adding to it (a
/// backward pass that overwrites its gradient is bound by memory traffic).
#[inline(always)]
pub(crate) fn zip_map_into(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    accum: Accum,
    f: impl Fn(crate::simd::Lane, crate::simd::Lane) -> crate::simd::Lane,
) {
    match accum {
        Accum::Replace => crate::simd::zip_map(a, b, out, f),
        Accum::Add => crate::simd::zip_map_acc(
            a,
            b,
            out,
            #[inline(always)]
            |a, b, old| old + f(a, b),
        ),
    }
}

/// Where a kernel that works plane by plane reads plane `p` of an `[n, c, h, w]` operand from:
/// the tensor itself, or a tensor that is never stored whole — a per-channel affine map of `x`
/// (a batch norm's output, read by the max-pool after it) or a max-pool's gradient spread back
/// over its input plane (read by the batch norm before it). Those two are made one plane at a
/// time in the caller's plane-sized scratch, which stays in cache, with the same operations as
/// the separate layers, so the results are the same bits (but for a batch norm's sums over a
/// pooled gradient with `at_max`, see [`Planes::Pooled`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Planes<'a> {
    /// The operand itself.
    Dense(&'a [f32]),
    /// `x[p]·scale[p % c] + shift[p % c]` (one fused multiply-add per element).
    Affine {
        x: &'a [f32],
        scale: &'a [f32],
        shift: &'a [f32],
    },
    /// Zero except `dy[p, j]` added at `argmax[p, j]` (max pooling's backward pass); an index
    /// outside the plane is an error of [`Planes::plane`].
    Pooled {
        dy: &'a [f32],
        argmax: &'a [u32],
        out_plane: usize,
        /// The input width when the windows are 2x2 at stride 2 without padding
        /// ([`pool::pairs`]): the planes are then made by the micro-kernels.
        pairs: Option<usize>,
        /// The batch norm's input at each maximum, recorded by the forward pass (`at_max` of
        /// [`pool::max_pool2d_forward_from`]): a batch norm's backward sums over the spread
        /// plane, which is zero elsewhere, are then taken over the pooled positions alone
        /// (the same sums added in another order: not the bits of the separate layers).
        at_max: Option<&'a [f32]>,
    },
    /// A batch norm's input gradient: its backward map ([`norm::BnDx`], after the sums of its
    /// backward pass) of its input `x` and of its output gradient `dy` (itself stored, or
    /// pooled; not another batch norm's). A gradient pooled by 2x2 windows is spread and mapped
    /// in one pass of the micro-kernels in training mode (the same bits as the two steps).
    BnGrad {
        x: &'a [f32],
        dy: &'a Planes<'a>,
        map: norm::BnDx<'a>,
    },
}

impl<'a> Planes<'a> {
    /// Scratch the operand needs per parallel group for planes of `plane` elements.
    pub(crate) fn slot(&self, plane: usize) -> usize {
        match self {
            Planes::Dense(_) => 0,
            _ => plane,
        }
    }

    /// Checks that the operand (named `what`) holds `planes` planes of `plane` elements over `c`
    /// channels.
    pub(crate) fn check(
        &self,
        op: &'static str,
        what: &'static str,
        planes: usize,
        plane: usize,
        c: usize,
    ) -> Result<()> {
        let len = crate::error::mul(op, "planes", planes, plane)?;
        match *self {
            Planes::Dense(x) => crate::error::check_len(op, what, x, len),
            Planes::Affine { x, scale, shift } => {
                crate::error::check_len(op, what, x, len)?;
                crate::error::check_len(op, "scale", scale, c)?;
                crate::error::check_len(op, "shift", shift, c)
            }
            Planes::Pooled {
                dy,
                argmax,
                out_plane,
                at_max,
                ..
            } => {
                let out = crate::error::mul(op, "planes", planes, out_plane)?;
                crate::error::check_len(op, "dy", dy, out)?;
                if let Some(m) = at_max {
                    crate::error::check_len(op, "at_max", m, out)?;
                }
                crate::error::check_len(op, "argmax", argmax, out)
            }
            Planes::BnGrad { x, dy, .. } => {
                crate::error::check_len(op, what, x, len)?;
                match dy {
                    Planes::BnGrad { .. } => Err(crate::error::Error::invalid(
                        op,
                        what,
                        "a batch norm's gradient of another batch norm's gradient",
                    )),
                    dy => dy.check(op, what, planes, plane, c),
                }
            }
        }
    }

    /// Plane `p` (of `plane` elements, channel `p % c`), made in `scratch` when it is not stored.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArg`] for a pooled gradient whose index is outside the plane.
    #[inline(always)]
    pub(crate) fn plane<'s>(
        &'s self,
        p: usize,
        plane: usize,
        c: usize,
        scratch: &'s mut [f32],
    ) -> Result<&'s [f32]> {
        let Planes::BnGrad { x, dy, map } = *self else {
            return self.base_plane(p, plane, c, scratch);
        };
        let (x_p, s) = (&x[p * plane..][..plane], &mut scratch[..plane]);
        match *dy {
            Planes::Dense(d) => map.apply(p % c, x_p, &d[p * plane..][..plane], s, Accum::Replace),
            _ => {
                // 2x2 windows: spread and mapped in one pass of the micro-kernels.
                let fused = match (*dy, map.training_coefficients(p % c)) {
                    (
                        Planes::Pooled {
                            dy: d,
                            argmax,
                            out_plane,
                            pairs: Some(in_w),
                            ..
                        },
                        Some(k),
                    ) => {
                        let at = p * out_plane..(p + 1) * out_plane;
                        pool::unpool_bn_plane(&argmax[at.clone()], &d[at], s, in_w, x_p, k)
                    }
                    _ => false,
                };
                if !fused {
                    // Made in `s` (the inner operand is not a batch norm's gradient: checked).
                    dy.base_plane(p, plane, c, s)?;
                    map.apply_in_place(p % c, x_p, s);
                }
            }
        }
        Ok(s)
    }

    /// [`Planes::plane`] of the operands that are not a batch norm's gradient.
    #[inline(always)]
    fn base_plane<'s>(
        &'s self,
        p: usize,
        plane: usize,
        c: usize,
        scratch: &'s mut [f32],
    ) -> Result<&'s [f32]> {
        Ok(match *self {
            Planes::Dense(x) => &x[p * plane..][..plane],
            Planes::Affine { x, scale, shift } => {
                let s = &mut scratch[..plane];
                let (a, b) = (
                    crate::simd::splat(scale[p % c]),
                    crate::simd::splat(shift[p % c]),
                );
                crate::simd::map(
                    &x[p * plane..][..plane],
                    s,
                    #[inline(always)]
                    |v| v.mul_add(a, b),
                );
                s
            }
            Planes::Pooled {
                dy,
                argmax,
                out_plane,
                pairs,
                ..
            } => {
                let s = &mut scratch[..plane];
                pool::unpool_plane(
                    &argmax[p * out_plane..][..out_plane],
                    &dy[p * out_plane..][..out_plane],
                    s,
                    pairs,
                    Accum::Replace,
                )?;
                s
            }
            Planes::BnGrad { .. } => {
                return Err(crate::error::Error::invalid(
                    "Planes",
                    "dy",
                    "a batch norm's gradient of another batch norm's gradient",
                ));
            }
        })
    }

    /// Planes `p0 .. p0 + count` (of `plane` elements, channel `p % c`) as one slice: the operand
    /// itself when it is stored, else made into `scratch` (which then holds at least
    /// `count · plane` elements), split over the pool with `split` (the caller is then not
    /// inside a parallel split itself).
    ///
    /// # Errors
    /// As [`Planes::plane`].
    pub(crate) fn planes<'s>(
        &'s self,
        p0: usize,
        count: usize,
        plane: usize,
        c: usize,
        scratch: &'s mut [f32],
        split: bool,
    ) -> Result<&'s [f32]> {
        if let Planes::Dense(x) = *self {
            return Ok(&x[p0 * plane..][..count * plane]);
        }
        let s = &mut scratch[..count * plane];
        let work = if split { 4 * count * plane } else { 0 };
        crate::par::for_each(
            count,
            work,
            crate::par::Items(&mut *s, plane),
            #[inline(always)]
            |r, crate::par::Items(s, _)| {
                for (p, dst) in r.zip(s.chunks_exact_mut(plane.max(1))) {
                    // A plane that is not stored is made in the scratch it is given.
                    self.plane(p0 + p, plane, c, dst)?;
                }
                Ok(())
            },
        )?;
        Ok(s)
    }
}

/// Parallel groups for `items` items of `work` total work, each needing `slot` elements of a
/// scratch of `ws_len`: never more groups than the scratch has slots for.
pub(crate) fn groups_in(items: usize, work: usize, ws_len: usize, slot: usize) -> usize {
    let g = crate::par::groups(items, work);
    ws_len
        .checked_div(slot)
        .map_or(g, |slots| g.min(slots).max(1))
}

#[cfg(test)]
mod tests {
    use super::Planes;

    #[test]
    fn pooled_planes_spread_the_gradient_and_refuse_an_index_outside_the_plane() {
        // Two planes of 4 elements, two pooled values each; overlapping windows add.
        let (dy, argmax) = ([1.0, 2.0, 3.0, 4.0], [3u32, 3, 0, 2]);
        let src = Planes::Pooled {
            dy: &dy,
            argmax: &argmax,
            out_plane: 2,
            pairs: None,
            at_max: None,
        };
        let mut s = [f32::NAN; 4];
        assert_eq!(src.plane(0, 4, 1, &mut s).unwrap(), [0.0, 0.0, 0.0, 3.0]);
        assert_eq!(src.plane(1, 4, 1, &mut s).unwrap(), [3.0, 0.0, 4.0, 0.0]);
        let bad = [0u32, 4];
        let src = Planes::Pooled {
            dy: &dy[..2],
            argmax: &bad,
            out_plane: 2,
            pairs: None,
            at_max: None,
        };
        let e = src.plane(0, 4, 1, &mut s).unwrap_err().to_string();
        assert!(e.contains("argmax"), "{e}");
    }

    /// A batch norm's input gradient over a 2x2 max-pool's gradient (odd width and height: a
    /// column and a row no window covers), made in one pass of the micro-kernels, is the pooled
    /// plane spread and then mapped, bit for bit, in training and in evaluation mode.
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
            let mut sums = vec![0.0; super::norm::batch_norm_backward_scratch_len(shape)];
            let mut ws = vec![0.0; plane];
            let map = super::norm::batch_norm_backward_sums(
                shape,
                training,
                &x,
                Some(&gamma),
                &mean,
                &invstd,
                pooled,
                None,
                None,
                super::Accum::Replace,
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

    #[test]
    fn affine_planes_are_one_fused_multiply_add_per_element_of_their_channel() {
        let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 2.0).collect();
        let (scale, shift) = ([1.5f32, -0.25, 3.0], [0.1f32, 2.0, -1.0]);
        let src = Planes::Affine {
            x: &x,
            scale: &scale,
            shift: &shift,
        };
        let mut s = [0.0; 4];
        for p in 0..3 {
            let want: Vec<f32> = x[p * 4..][..4]
                .iter()
                .map(|v| v.mul_add(scale[p], shift[p]))
                .collect();
            assert_eq!(src.plane(p, 4, 3, &mut s).unwrap(), &want[..]);
        }
    }
}
