//! The conv2d passes against the naive reference, shared by the test binaries of the AVX2/FMA
//! path (`conv.rs`) and the portable path (`conv_portable.rs`).

use super::strategies::ConvCase;
use super::{assert_close, nans, par};
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
    par(|| {
        let y = forward(g, &c.x, &c.w, Some(&c.b));
        assert_close(
            "y",
            &y,
            &reference::conv2d_forward(g, &c.x, &c.w, Some(&c.b)),
            ATOL,
            RTOL,
        )?;
        let y0 = forward(g, &c.x, &c.w, None);
        assert_close(
            "y (no bias)",
            &y0,
            &reference::conv2d_forward(g, &c.x, &c.w, None),
            ATOL,
            RTOL,
        )?;

        let want_dx = reference::conv2d_backward_data(g, &c.w, &c.dy);
        let mut dx = nans(g.x_len());
        backward_data(g, &c.w, &c.dy, &mut dx, Accum::Replace);
        assert_close("dx", &dx, &want_dx, ATOL, RTOL)?;
        let mut dx = vec![1.0; g.x_len()];
        backward_data(g, &c.w, &c.dy, &mut dx, Accum::Add);
        let want: Vec<f32> = want_dx.iter().map(|v| v + 1.0).collect();
        assert_close("dx (add)", &dx, &want, ATOL, RTOL)?;

        let (want_dw, want_db) = reference::conv2d_backward_weights(g, &c.x, &c.dy);
        let (mut dw, mut db) = (nans(g.w_len()), nans(g.c_out()));
        backward_weights(g, &c.x, &c.dy, &mut dw, &mut db, Accum::Replace);
        assert_close("dw", &dw, &want_dw, 1e-4, RTOL)?;
        assert_close("db", &db, &want_db, 1e-4, RTOL)?;
        let (mut dw, mut db) = (vec![-2.0; g.w_len()], vec![3.0; g.c_out()]);
        backward_weights(g, &c.x, &c.dy, &mut dw, &mut db, Accum::Add);
        let want: Vec<f32> = want_dw.iter().map(|v| v - 2.0).collect();
        assert_close("dw (add)", &dw, &want, 1e-4, RTOL)?;
        let want: Vec<f32> = want_db.iter().map(|v| v + 3.0).collect();
        assert_close("db (add)", &db, &want, 1e-4, RTOL)
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
