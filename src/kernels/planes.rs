//! An operand read plane by plane: stored, or made one plane at a time from a batch norm or a
//! max-pool that is never stored whole (the fused layer pairs). Below the kernel families that
//! read it; what it needs to make a plane is in [`super::plane_ops`].

use super::accum::Accum;
use super::plane_ops::{BnDx, unpool_bn_plane, unpool_plane};
use crate::error::Result;

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
        /// ([`pairs`](super::pool::pairs)): the planes are then made by the micro-kernels.
        pairs: Option<usize>,
        /// The batch norm's input at each maximum, recorded by the forward pass (`at_max` of
        /// [`max_pool2d_forward_from`](super::pool::max_pool2d_forward_from)): a batch norm's backward sums over the spread
        /// plane, which is zero elsewhere, are then taken over the pooled positions alone
        /// (the same sums added in another order: not the bits of the separate layers).
        at_max: Option<&'a [f32]>,
    },
    /// A batch norm's input gradient: its backward map ([`BnDx`], after the sums of its
    /// backward pass) of its input `x` and of its output gradient `dy` (itself stored, or
    /// pooled; not another batch norm's). A gradient pooled by 2x2 windows is spread and mapped
    /// in one pass of the micro-kernels in training mode (the same bits as the two steps).
    BnGrad {
        x: &'a [f32],
        dy: &'a Planes<'a>,
        map: BnDx<'a>,
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
                        unpool_bn_plane(&argmax[at.clone()], &d[at], s, in_w, x_p, k)
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
                    crate::simd::lane::splat(scale[p % c]),
                    crate::simd::lane::splat(shift[p % c]),
                );
                crate::simd::iter::map(
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
                unpool_plane(
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
