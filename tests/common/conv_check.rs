//! The conv2d passes against the naive reference, shared by the test binaries of the AVX2/FMA
//! path (`conv.rs`) and the portable path (`conv_portable.rs`).

use super::gradcheck::{Tol, check_vjp};
use super::strategies::ConvCase;
use super::{assert_close, nans, par, wino_scale};
use cnnkit::kernels::{
    Accum, conv2d_backward_data, conv2d_backward_data_scratch_len, conv2d_backward_weights,
    conv2d_backward_weights_scratch_len, conv2d_forward, conv2d_forward_scratch_len,
};
use cnnkit::{Conv2dGeom, reference};

use proptest::test_runner::TestCaseError;

/// Absolute/relative tolerance of an f32 kernel sum of at most a few hundred terms of size ≤ 1
/// against the f64 reference.
pub const ATOL: f32 = 2e-5;
pub const RTOL: f32 = 1e-5;

pub fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let mut y = nans(g.y_len());
    let mut ws = vec![0.0; conv2d_forward_scratch_len(g)];
    conv2d_forward(g, x, w, b, &mut y, &mut ws).unwrap();
    y
}

pub fn backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32], dx: &mut [f32], accum: Accum) {
    let mut ws = vec![0.0; conv2d_backward_data_scratch_len(g)];
    conv2d_backward_data(g, w, dy, dx, accum, &mut ws).unwrap();
}

pub fn backward_weights(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    accum: Accum,
) {
    let mut ws = vec![0.0; conv2d_backward_weights_scratch_len(g)];
    conv2d_backward_weights(g, x, dy, dw, Some(db), accum, &mut ws).unwrap();
}

/// All three passes against the reference, with `Replace` into NaN-filled outputs and `Add` onto
/// known values.
pub fn check_against_reference(c: &ConvCase) -> Result<(), TestCaseError> {
    let g = &c.g;
    let (atol, rtol) = (ATOL * wino_scale(), RTOL * wino_scale());
    let atol_w = 1e-4 * wino_scale();
    par(|| {
        let y = forward(g, &c.x, &c.w, Some(&c.b));
        assert_close(
            "y",
            &y,
            &reference::conv2d_forward(g, &c.x, &c.w, Some(&c.b)),
            atol,
            rtol,
        )?;
        let y0 = forward(g, &c.x, &c.w, None);
        assert_close(
            "y (no bias)",
            &y0,
            &reference::conv2d_forward(g, &c.x, &c.w, None),
            atol,
            rtol,
        )?;

        let want_dx = reference::conv2d_backward_data(g, &c.w, &c.dy);
        let mut dx = nans(g.x_len());
        backward_data(g, &c.w, &c.dy, &mut dx, Accum::Replace);
        assert_close("dx", &dx, &want_dx, atol, rtol)?;
        // Accumulation onto random values: reading the old value from the wrong index fails.
        let old = super::values(11, g.x_len());
        let mut dx = old.clone();
        backward_data(g, &c.w, &c.dy, &mut dx, Accum::Add);
        let want: Vec<f32> = want_dx.iter().zip(&old).map(|(v, o)| v + o).collect();
        assert_close("dx (add)", &dx, &want, atol, rtol)?;

        let (want_dw, want_db) = reference::conv2d_backward_weights(g, &c.x, &c.dy);
        let (mut dw, mut db) = (nans(g.w_len()), nans(g.c_out()));
        backward_weights(g, &c.x, &c.dy, &mut dw, &mut db, Accum::Replace);
        assert_close("dw", &dw, &want_dw, atol_w, rtol)?;
        assert_close("db", &db, &want_db, atol_w, rtol)?;
        let (old_w, old_b) = (super::values(12, g.w_len()), super::values(13, g.c_out()));
        let (mut dw, mut db) = (old_w.clone(), old_b.clone());
        backward_weights(g, &c.x, &c.dy, &mut dw, &mut db, Accum::Add);
        let want: Vec<f32> = want_dw.iter().zip(&old_w).map(|(v, o)| v + o).collect();
        assert_close("dw (add)", &dw, &want, atol_w, rtol)?;
        let want: Vec<f32> = want_db.iter().zip(&old_b).map(|(v, o)| v + o).collect();
        assert_close("db (add)", &db, &want, atol_w, rtol)
    })
}

/// The input, weight and bias gradients against finite differences of the forward pass.
pub fn check_gradients(c: &ConvCase) -> Result<(), TestCaseError> {
    let g = c.g;
    par(|| {
        check_vjp(
            &c.x,
            &c.dy,
            |x, y| y.copy_from_slice(&forward(&g, x, &c.w, Some(&c.b))),
            |_, dy, dx| backward_data(&g, &c.w, dy, dx, Accum::Replace),
            Tol::DEFAULT,
        )?;
        check_vjp(
            &c.b,
            &c.dy,
            |b, y| y.copy_from_slice(&forward(&g, &c.x, &c.w, Some(b))),
            |_, dy, db| {
                backward_weights(&g, &c.x, dy, &mut vec![0.0; g.w_len()], db, Accum::Replace)
            },
            Tol::DEFAULT,
        )
    })?;
    check_weight_gradient(c)
}

/// The weight gradient against finite differences of the forward pass.
pub fn check_weight_gradient(c: &ConvCase) -> Result<(), TestCaseError> {
    let g = c.g;
    par(|| {
        check_vjp(
            &c.w,
            &c.dy,
            |w, y| y.copy_from_slice(&forward(&g, &c.x, w, Some(&c.b))),
            |_, dy, dw| {
                backward_weights(&g, &c.x, dy, dw, &mut vec![0.0; g.c_out()], Accum::Replace)
            },
            Tol::DEFAULT,
        )
    })
}

/// A case over `g` with fixed pseudo-random inputs, weights, bias and output gradient.
pub fn case(g: Conv2dGeom) -> ConvCase {
    ConvCase {
        g,
        x: super::values(1, g.x_len()),
        w: super::values(2, g.w_len()),
        b: super::values(3, g.c_out()),
        dy: super::values(4, g.y_len()),
    }
}
