//! Adaptive average pooling to any output size, as `torch.nn.functional.adaptive_avg_pool2d`.
//!
//! Output row `i` of `out_h` averages input rows `floor(i·h/out_h) .. ceil((i+1)·h/out_h)`, and
//! likewise for columns, so windows differ in size and may overlap when `h` is not a multiple of
//! `out_h` (and an output larger than the input repeats input values). Each window's sum runs in
//! row-major order in `f32` and is divided by its height, then its width, as PyTorch does.

use crate::error::{Error, Result, check_len};
use crate::kernels::accum::{Accum, scatter_planes};
use crate::par::{self, Items};
use crate::shape::Shape4;
use crate::simd;

/// The input range `[start, end)` of output index `i` of `out` along an axis of length `len`.
#[inline]
fn window(i: usize, out: usize, len: usize) -> (usize, usize) {
    let start = i * len / out;
    let end = ((i + 1) * len).div_ceil(out);
    (start, end)
}

fn check(op: &'static str, s: Shape4, out: [usize; 2]) -> Result<(usize, usize)> {
    if s.h == 0 || s.w == 0 {
        return Err(Error::invalid(op, "shape", "empty plane"));
    }
    if out[0] == 0 || out[1] == 0 {
        return Err(Error::invalid(
            op,
            "output_size",
            format!("{}x{}: both sides must be at least 1", out[0], out[1]),
        ));
    }
    let out_plane = crate::error::mul(op, "out_h * out_w", out[0], out[1])?;
    // Index arithmetic `i · len` must not overflow.
    crate::error::mul(op, "out_h * h", out[0], s.h)?;
    crate::error::mul(op, "out_w * w", out[1], s.w)?;
    let planes = crate::error::mul(op, "n * c", s.n, s.c)?;
    Ok((planes, out_plane))
}

/// Adaptive average pooling of `x` (`shape`) to `out = [out_h, out_w]` per plane.
///
/// - `x`: `[n, c, h, w]`; `y`: `[n, c, out_h, out_w]`, overwritten
///
/// # Errors
/// [`Error::InvalidArg`] for an empty plane or an output side of 0; [`Error::Length`] if a
/// buffer disagrees with the shapes.
///
/// # Example
/// ```
/// use cnnkit::kernels::adaptive_avg_pool2d_forward;
/// use cnnkit::Shape4;
/// // One 1x5 row to 3 outputs: windows [0, 2), [1, 4), [3, 5).
/// let x = [1.0, 2.0, 3.0, 4.0, 5.0];
/// let mut y = [0.0; 3];
/// adaptive_avg_pool2d_forward(Shape4::new(1, 1, 1, 5), [1, 3], &x, &mut y)?;
/// assert_eq!(y, [1.5, 3.0, 4.5]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn adaptive_avg_pool2d_forward(
    shape: Shape4,
    out: [usize; 2],
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "adaptive_avg_pool2d_forward";
    let (planes, out_plane) = check(OP, shape, out)?;
    check_len(OP, "x", x, shape.len(OP)?)?;
    check_len(OP, "y", y, planes * out_plane)?;
    let (h, w, plane) = (shape.h, shape.w, shape.plane());
    par::for_each(
        planes,
        x.len(),
        Items(y, out_plane),
        #[inline(always)]
        |r, Items(y, _)| {
            for (p, y_p) in r.zip(y.chunks_exact_mut(out_plane)) {
                let x_p = &x[p * plane..][..plane];
                for oh in 0..out[0] {
                    let (h0, h1) = window(oh, out[0], h);
                    for ow in 0..out[1] {
                        let (w0, w1) = window(ow, out[1], w);
                        // In lanes (a sum element by element was a tenth of EfficientNet-B0's
                        // inference in perf, its squeeze-and-excitation blocks' pools): a
                        // window of whole rows at once, otherwise row by row.
                        let rows = &x_p[h0 * w..h1 * w];
                        let sum = if w1 - w0 == w {
                            simd::sum(rows)
                        } else {
                            let mut sum = 0.0f32;
                            for row in rows.chunks_exact(w) {
                                sum += simd::sum(&row[w0..w1]);
                            }
                            sum
                        };
                        y_p[oh * out[1] + ow] = sum / (h1 - h0) as f32 / (w1 - w0) as f32;
                    }
                }
            }
            Ok(())
        },
    )
}

/// Gradient of [`adaptive_avg_pool2d_forward`]: each output's `dy / (window height) / (window
/// width)` added to every input of its window (overlapping windows add up).
///
/// - `dy`: `[n, c, out_h, out_w]`; `dx`: `[n, c, h, w]`, per `accum`
///
/// # Errors
/// As [`adaptive_avg_pool2d_forward`].
pub fn adaptive_avg_pool2d_backward(
    shape: Shape4,
    out: [usize; 2],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "adaptive_avg_pool2d_backward";
    let (planes, out_plane) = check(OP, shape, out)?;
    check_len(OP, "dy", dy, planes * out_plane)?;
    check_len(OP, "dx", dx, shape.len(OP)?)?;
    let (h, w, plane) = (shape.h, shape.w, shape.plane());
    scatter_planes(
        planes,
        (dy, out_plane),
        (dx, plane),
        accum,
        #[inline(always)]
        |dy_p, dx_p| {
            for oh in 0..out[0] {
                let (h0, h1) = window(oh, out[0], h);
                for ow in 0..out[1] {
                    let (w0, w1) = window(ow, out[1], w);
                    let g = dy_p[oh * out[1] + ow] / (h1 - h0) as f32 / (w1 - w0) as f32;
                    for row in dx_p[h0 * w..h1 * w].chunks_exact_mut(w) {
                        for d in &mut row[w0..w1] {
                            *d += g;
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::window;

    /// PyTorch's start/end indices: `floor(i·len/out)` and `ceil((i+1)·len/out)`; the windows
    /// cover the axis, each at least one long.
    #[test]
    fn windows_cover_the_axis() {
        assert_eq!(window(0, 3, 5), (0, 2));
        assert_eq!(window(1, 3, 5), (1, 4));
        assert_eq!(window(2, 3, 5), (3, 5));
        for len in 1..12 {
            for out in 1..15 {
                assert_eq!(window(0, out, len).0, 0);
                assert_eq!(window(out - 1, out, len).1, len);
                for i in 0..out {
                    let (a, b) = window(i, out, len);
                    assert!(a < b && b <= len, "{i}/{out} of {len}: {a}..{b}");
                }
            }
        }
    }
}
