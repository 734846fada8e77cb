//! Reference upsampling, from PyTorch's definitions with source coordinates in `f64`.

use crate::kernels::upsample::UpsampleMode;
use crate::shape::Shape4;

/// Where output `dst` of an axis of `len` inputs and `out` outputs reads: two indices and the
/// second's weight.
fn source(dst: usize, len: usize, out: usize, mode: UpsampleMode) -> (usize, usize, f64) {
    match mode {
        UpsampleMode::Bilinear { align_corners } => {
            let src = if align_corners {
                if out > 1 {
                    dst as f64 * (len - 1) as f64 / (out - 1) as f64
                } else {
                    0.0
                }
            } else {
                ((dst as f64 + 0.5) * len as f64 / out as f64 - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(len - 1);
            (i0, (i0 + 1).min(len - 1), src - i0 as f64)
        }
        _ => {
            let i = (dst * len / out).min(len - 1);
            (i, i, 0.0)
        }
    }
}

/// `x` (`s`) upsampled by `factor`.
pub fn upsample2d_forward(
    s: Shape4,
    factor: [usize; 2],
    mode: UpsampleMode,
    x: &[f32],
) -> Vec<f32> {
    let (oh, ow) = (s.h * factor[0], s.w * factor[1]);
    let mut y = Vec::with_capacity(s.n * s.c * oh * ow);
    for p in x.chunks(s.h * s.w) {
        let at = |i: usize, j: usize| p[i * s.w + j] as f64;
        for r in 0..oh {
            let (h0, h1, lh) = source(r, s.h, oh, mode);
            for c in 0..ow {
                let (w0, w1, lw) = source(c, s.w, ow, mode);
                let top = at(h0, w0) * (1.0 - lw) + at(h0, w1) * lw;
                let bottom = at(h1, w0) * (1.0 - lw) + at(h1, w1) * lw;
                y.push((top * (1.0 - lh) + bottom * lh) as f32);
            }
        }
    }
    y
}
