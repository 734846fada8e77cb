//! Upsampling by integer factors, as `torch.nn.Upsample(scale_factor=(S_h, S_w), mode=…)`:
//! nearest neighbour, and bilinear with `align_corners` false (PyTorch's default) or true.
//!
//! Source coordinates are computed in `f32` as PyTorch computes them: the scale is
//! `in / out` (or `(in − 1) / (out − 1)` with `align_corners`), nearest takes
//! `min(floor(dst · scale), in − 1)`, and bilinear takes `max(scale · (dst + ½) − ½, 0)` (or
//! `scale · dst` with `align_corners`), its integer part and the fraction as the weight of the
//! next row or column (clamped at the last one). The backward passes add each output's
//! gradient into the inputs it read, with the same weights.

use crate::error::{Error, Result, check_len};
use crate::kernels::accum::{Accum, scatter_planes};
use crate::par::{self, Items};
use crate::shape::Shape4;

/// How [`upsample2d_forward`] fills the new pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpsampleMode {
    /// Each output copies the input at `floor(dst / scale)` (`mode='nearest'`).
    Nearest,
    /// Linear in each axis between the two nearest inputs (`mode='bilinear'`).
    Bilinear {
        /// Whether the corner pixels of input and output are aligned (`align_corners=True`:
        /// source = `dst · (in − 1)/(out − 1)`) or their areas are (the default: source =
        /// `(dst + ½)·in/out − ½`).
        align_corners: bool,
    },
}

/// One axis: where output `dst` reads, as the first index, whether there is a second one, and
/// the second's weight.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    next: usize,
    l1: f32,
}

impl Tap {
    /// The two indices (scaled by `stride`) and their weights.
    #[inline]
    fn span(self, stride: usize) -> (usize, usize, f32, f32) {
        (
            self.i0 * stride,
            (self.i0 + self.next) * stride,
            1.0 - self.l1,
            self.l1,
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Axis {
    len: usize,
    out: usize,
    scale: f32,
}

impl Axis {
    fn new(len: usize, factor: usize, mode: UpsampleMode) -> Self {
        let out = len * factor;
        let scale = match mode {
            UpsampleMode::Bilinear {
                align_corners: true,
            } => {
                if out > 1 {
                    ((len - 1) as f64 / (out - 1) as f64) as f32
                } else {
                    0.0
                }
            }
            _ => (len as f64 / out as f64) as f32,
        };
        Axis { len, out, scale }
    }

    #[inline]
    fn nearest(&self, dst: usize) -> usize {
        let i = (dst as f32 * self.scale).floor() as usize;
        i.min(self.len - 1)
    }

    #[inline]
    fn linear(&self, dst: usize, align_corners: bool) -> Tap {
        let src = if align_corners {
            self.scale * dst as f32
        } else {
            (self.scale * (dst as f32 + 0.5) - 0.5).max(0.0)
        };
        let i0 = (src as usize).min(self.len - 1);
        let l1 = (src - i0 as f32).clamp(0.0, 1.0);
        let next = usize::from(i0 < self.len - 1);
        Tap { i0, next, l1 }
    }
}

fn check(op: &'static str, s: Shape4, factor: [usize; 2]) -> Result<(usize, usize)> {
    if factor[0] == 0 || factor[1] == 0 {
        return Err(Error::invalid(
            op,
            "scale_factor",
            format!(
                "{}x{}: both factors must be at least 1",
                factor[0], factor[1]
            ),
        ));
    }
    if s.h == 0 || s.w == 0 {
        return Err(Error::invalid(op, "shape", "empty plane"));
    }
    let oh = crate::error::mul(op, "h * scale_h", s.h, factor[0])?;
    let ow = crate::error::mul(op, "w * scale_w", s.w, factor[1])?;
    let out_plane = crate::error::mul(op, "out_h * out_w", oh, ow)?;
    let planes = crate::error::mul(op, "n * c", s.n, s.c)?;
    crate::error::mul(op, "n * c * out_h * out_w", planes, out_plane)?;
    Ok((planes, out_plane))
}

/// Upsamples `x` (`shape`) by `factor = [S_h, S_w]` into `y` (`[n, c, h·S_h, w·S_w]`,
/// overwritten).
///
/// # Errors
/// [`Error::InvalidArg`] for a factor of 0 or an empty plane; [`Error::Length`] if a buffer
/// disagrees with the shapes.
///
/// # Example
/// ```
/// use cnnkit::kernels::{upsample2d_forward, UpsampleMode};
/// use cnnkit::Shape4;
/// let x = [1.0, 3.0];
/// let mut y = [0.0; 4];
/// let s = Shape4::new(1, 1, 1, 2);
/// upsample2d_forward(s, [1, 2], UpsampleMode::Nearest, &x, &mut y)?;
/// assert_eq!(y, [1.0, 1.0, 3.0, 3.0]);
/// upsample2d_forward(s, [1, 2], UpsampleMode::Bilinear { align_corners: true }, &x, &mut y)?;
/// for (got, want) in y.iter().zip([1.0, 5.0 / 3.0, 7.0 / 3.0, 3.0]) {
///     assert!((got - want).abs() < 1e-6);
/// }
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn upsample2d_forward(
    shape: Shape4,
    factor: [usize; 2],
    mode: UpsampleMode,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "upsample2d_forward";
    let (planes, out_plane) = check(OP, shape, factor)?;
    check_len(OP, "x", x, shape.len(OP)?)?;
    check_len(OP, "y", y, planes * out_plane)?;
    let (ah, aw) = (
        Axis::new(shape.h, factor[0], mode),
        Axis::new(shape.w, factor[1], mode),
    );
    let (w, plane) = (shape.w, shape.plane());
    par::for_each(
        planes,
        y.len(),
        Items(y, out_plane),
        #[inline(always)]
        |r, Items(y, _)| {
            for (p, y_p) in r.zip(y.chunks_exact_mut(out_plane)) {
                let x_p = &x[p * plane..][..plane];
                for (oh, y_row) in y_p.chunks_exact_mut(aw.out).enumerate() {
                    match mode {
                        UpsampleMode::Bilinear { align_corners } => {
                            let (r0, r1, h0l, h1l) = ah.linear(oh, align_corners).span(w);
                            for (ow, v) in y_row.iter_mut().enumerate() {
                                let (c0, c1, w0l, w1l) = aw.linear(ow, align_corners).span(1);
                                let top = x_p[r0 + c0] * w0l + x_p[r0 + c1] * w1l;
                                let bottom = x_p[r1 + c0] * w0l + x_p[r1 + c1] * w1l;
                                *v = top * h0l + bottom * h1l;
                            }
                        }
                        _ => {
                            let row = &x_p[ah.nearest(oh) * w..][..w];
                            for (ow, v) in y_row.iter_mut().enumerate() {
                                *v = row[aw.nearest(ow)];
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    )
}

/// Gradient of [`upsample2d_forward`]: each output gradient added into the inputs it read, with
/// the weights it read them with (`dx` per `accum`).
///
/// # Errors
/// As [`upsample2d_forward`].
pub fn upsample2d_backward(
    shape: Shape4,
    factor: [usize; 2],
    mode: UpsampleMode,
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "upsample2d_backward";
    let (planes, out_plane) = check(OP, shape, factor)?;
    check_len(OP, "dy", dy, planes * out_plane)?;
    check_len(OP, "dx", dx, shape.len(OP)?)?;
    let (ah, aw) = (
        Axis::new(shape.h, factor[0], mode),
        Axis::new(shape.w, factor[1], mode),
    );
    let (w, plane) = (shape.w, shape.plane());
    scatter_planes(
        planes,
        (dy, out_plane),
        (dx, plane),
        accum,
        #[inline(always)]
        |dy_p, dx_p| {
            for (oh, dy_row) in dy_p.chunks_exact(aw.out).enumerate() {
                match mode {
                    UpsampleMode::Bilinear { align_corners } => {
                        let (r0, r1, h0l, h1l) = ah.linear(oh, align_corners).span(w);
                        for (ow, &g) in dy_row.iter().enumerate() {
                            let (c0, c1, w0l, w1l) = aw.linear(ow, align_corners).span(1);
                            dx_p[r0 + c0] += h0l * w0l * g;
                            dx_p[r0 + c1] += h0l * w1l * g;
                            dx_p[r1 + c0] += h1l * w0l * g;
                            dx_p[r1 + c1] += h1l * w1l * g;
                        }
                    }
                    _ => {
                        let row = ah.nearest(oh) * w;
                        for (ow, &g) in dy_row.iter().enumerate() {
                            dx_p[row + aw.nearest(ow)] += g;
                        }
                    }
                }
            }
        },
    )
}
