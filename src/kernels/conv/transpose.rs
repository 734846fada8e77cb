//! Transposed convolution (`torch.nn.functional.conv_transpose2d`) as the adjoint of a
//! convolution ([`ConvTranspose2dGeom::conv`]): its forward pass is that convolution's
//! backward-data pass, its input gradient that convolution's forward pass, and its weight
//! gradient that convolution's weight gradient with the roles of input and output gradient
//! swapped. All three run on the convolution paths (direct, depthwise, im2col), so they are as
//! fast and as thread-count independent as those.

use super::backward_data::conv2d_backward_data;
use super::backward_weights::{bias_backward, conv2d_backward_weights};
use super::forward::conv2d_forward;
use super::plan::{
    conv2d_backward_data_scratch_len, conv2d_backward_weights_scratch_len,
    conv2d_forward_scratch_len,
};
use crate::error::{Result, check_len};
use crate::kernels::accum::Accum;
use crate::shape::ConvTranspose2dGeom;
use crate::simd::iter::map_in_place;
use crate::simd::lane::splat;

/// Scratch for [`conv_transpose2d_forward`] (that of the adjoint convolution's backward-data
/// pass).
pub fn conv_transpose2d_forward_scratch_len(g: &ConvTranspose2dGeom) -> usize {
    conv2d_backward_data_scratch_len(g.conv())
}

/// Scratch for [`conv_transpose2d_backward_data`] (the adjoint convolution's forward pass).
pub fn conv_transpose2d_backward_data_scratch_len(g: &ConvTranspose2dGeom) -> usize {
    conv2d_forward_scratch_len(g.conv())
}

/// Scratch for [`conv_transpose2d_backward_weights`].
pub fn conv_transpose2d_backward_weights_scratch_len(g: &ConvTranspose2dGeom) -> usize {
    conv2d_backward_weights_scratch_len(g.conv())
}

/// `y = conv_transpose2d(x, w) (+ b)`.
///
/// - `x`: `[n, c_in, in_h, in_w]`; `w`: `[c_in, c_out/groups, k_h, k_w]`; `b`: `[c_out]`
/// - `y`: `[n, c_out, out_h, out_w]`, overwritten
/// - `ws`: at least [`conv_transpose2d_forward_scratch_len`]
///
/// # Errors
/// [`Error::Length`](crate::error::Error::Length) if a buffer disagrees with `g`.
///
/// # Example
/// ```
/// use cnnkit::kernels::{conv_transpose2d_forward, conv_transpose2d_forward_scratch_len};
/// use cnnkit::{Conv2dParams, ConvTranspose2dGeom, Shape4};
/// // One pixel through a 2x2 kernel at stride 2: the kernel itself, scaled.
/// let p = Conv2dParams { stride: [2, 2], ..Default::default() };
/// let g = ConvTranspose2dGeom::new(Shape4::new(1, 1, 1, 1), 1, [2, 2], p, [0, 0])?;
/// let mut y = [0.0; 4];
/// let mut ws = vec![0.0; conv_transpose2d_forward_scratch_len(&g)];
/// conv_transpose2d_forward(&g, &[3.0], &[1.0, 2.0, 3.0, 4.0], None, &mut y, &mut ws)?;
/// assert_eq!(y, [3.0, 6.0, 9.0, 12.0]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn conv_transpose2d_forward(
    g: &ConvTranspose2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv_transpose2d_forward";
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "w", w, g.w_len())?;
    check_len(OP, "y", y, g.y_len())?;
    let s = g.y_shape();
    if let Some(b) = b {
        check_len(OP, "b", b, s.c)?;
    }
    conv2d_backward_data(g.conv(), w, x, y, Accum::Replace, ws)?;
    if let Some(b) = b {
        let plane = s.plane();
        if plane > 0 {
            for (p, y_p) in y.chunks_exact_mut(plane).enumerate() {
                let bv = splat(b[p % s.c]);
                map_in_place(y_p, |v| v + bv);
            }
        }
    }
    Ok(())
}

/// The input gradient of [`conv_transpose2d_forward`]: `dx` (`[n, c_in, in_h, in_w]`) is
/// overwritten.
///
/// # Errors
/// [`Error::Length`](crate::error::Error::Length) if a buffer disagrees with `g`.
pub fn conv_transpose2d_backward_data(
    g: &ConvTranspose2dGeom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    conv2d_forward(g.conv(), dy, w, None, dx, ws)
}

/// The weight (and bias) gradient of [`conv_transpose2d_forward`], per `accum`.
///
/// # Errors
/// [`Error::Length`](crate::error::Error::Length) if a buffer disagrees with `g`.
pub fn conv_transpose2d_backward_weights(
    g: &ConvTranspose2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv_transpose2d_backward_weights";
    let s = g.y_shape();
    if let Some(db) = &db {
        check_len(OP, "db", db, s.c)?;
    }
    conv2d_backward_weights(g.conv(), dy, x, dw, None, accum, ws)?;
    if let Some(db) = db {
        check_len(OP, "dy", dy, g.y_len())?;
        bias_backward(s.n, s.c, s.plane(), dy, db, accum);
    }
    Ok(())
}
