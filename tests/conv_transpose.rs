//! Transposed convolution: forward against a scatter reference from PyTorch's definition, input
//! and weight gradients against finite differences, over stride, padding, output padding,
//! dilation and groups; bad geometries are named errors.

mod common;

use cnnkit::kernels::{
    Accum, conv_transpose2d_backward_data, conv_transpose2d_backward_data_scratch_len,
    conv_transpose2d_backward_weights, conv_transpose2d_backward_weights_scratch_len,
    conv_transpose2d_forward, conv_transpose2d_forward_scratch_len,
};
use cnnkit::{Conv2dParams, ConvTranspose2dGeom, Shape4, reference};
use common::gradcheck::{Tol, check_vjp};
use common::strategies::vals;
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

fn geom() -> impl Strategy<Value = ConvTranspose2dGeom> {
    (
        (1..3usize, 1..3usize, 1..3usize, 1..5usize, 1..5usize),
        (1..4usize, 1..4usize, 1..4usize, 1..4usize),
        (0..3usize, 0..3usize, 1..3usize, 1..3usize),
        (0..3usize, 0..3usize),
    )
        .prop_filter_map(
            "a valid transposed convolution",
            |((n, g, cig, h, w), (cog, kh, kw, s), (ph, pw, dh, dw), (oph, opw))| {
                let p = Conv2dParams {
                    stride: [s, s.max(2) - 1],
                    padding: [ph, pw],
                    dilation: [dh, dw],
                    groups: g,
                };
                let op = [oph.min(p.stride[0] - 1), opw.min(p.stride[1] - 1)];
                ConvTranspose2dGeom::new(Shape4::new(n, g * cig, h, w), g * cog, [kh, kw], p, op)
                    .ok()
            },
        )
}

fn forward(g: &ConvTranspose2dGeom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let mut y = nans(g.y_len());
    let mut ws = vec![0.0; conv_transpose2d_forward_scratch_len(g)];
    conv_transpose2d_forward(g, x, w, b, &mut y, &mut ws).unwrap();
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    #[test]
    fn conv_transpose_matches_reference_and_finite_differences(
        (g, x, w, b, dy) in geom().prop_flat_map(|g| {
            let c_out = g.y_shape().c;
            (Just(g), vals(g.x_len()), vals(g.w_len()), vals(c_out), vals(g.y_len()))
        })
    ) {
        let y = par(|| forward(&g, &x, &w, Some(&b)));
        let want = reference::conv_transpose2d_forward(&g, &x, &w, Some(&b));
        assert_close("y", &y, &want, 1e-5, 1e-4)?;
        // The input gradient.
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| y.copy_from_slice(&forward(&g, x, &w, Some(&b))),
            |_, dy, dx| {
                let mut ws = vec![0.0; conv_transpose2d_backward_data_scratch_len(&g)];
                conv_transpose2d_backward_data(&g, &w, dy, dx, &mut ws).unwrap()
            },
            Tol::DEFAULT,
        ))?;
        // The weight and bias gradients, as one vector.
        let wl = w.len();
        let wb: Vec<f32> = w.iter().chain(&b).copied().collect();
        par(|| check_vjp(
            &wb,
            &dy,
            |wb, y| y.copy_from_slice(&forward(&g, &x, &wb[..wl], Some(&wb[wl..]))),
            |_, dy, dwb| {
                let mut ws = vec![0.0; conv_transpose2d_backward_weights_scratch_len(&g)];
                let (dw, db) = dwb.split_at_mut(wl);
                conv_transpose2d_backward_weights(&g, &x, dy, dw, Some(db), Accum::Replace, &mut ws)
                    .unwrap()
            },
            Tol::DEFAULT,
        ))?;
        // Accumulation adds.
        let mut ws = vec![0.0; conv_transpose2d_backward_weights_scratch_len(&g)];
        let (mut dw, mut db) = (nans(wl), nans(b.len()));
        conv_transpose2d_backward_weights(&g, &x, &dy, &mut dw, Some(&mut db), Accum::Replace, &mut ws).unwrap();
        let (old_w, old_b) = (values(3, wl), values(4, b.len()));
        let (mut dw2, mut db2) = (old_w.clone(), old_b.clone());
        conv_transpose2d_backward_weights(&g, &x, &dy, &mut dw2, Some(&mut db2), Accum::Add, &mut ws).unwrap();
        let sum = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p + q).collect::<Vec<_>>();
        assert_close("dw add", &dw2, &sum(&dw, &old_w), 1e-6, 1e-5)?;
        assert_close("db add", &db2, &sum(&db, &old_b), 1e-6, 1e-5)?;
    }
}

/// The output size formula, and the geometries PyTorch refuses (or cnnkit does not take) as
/// named errors.
#[test]
fn output_sizes_and_bad_geometries() {
    let p = Conv2dParams {
        stride: [2, 3],
        padding: [1, 0],
        dilation: [1, 2],
        groups: 1,
    };
    let g = ConvTranspose2dGeom::new(Shape4::new(1, 2, 4, 5), 3, [3, 2], p, [1, 2]).unwrap();
    // (4 − 1)·2 − 2 + 1·2 + 1 + 1 = 8; (5 − 1)·3 − 0 + 2·1 + 2 + 1 = 17.
    assert_eq!(g.y_shape(), Shape4::new(1, 3, 8, 17));
    let e = ConvTranspose2dGeom::new(Shape4::new(1, 2, 4, 5), 3, [3, 2], p, [2, 0]).unwrap_err();
    assert!(e.to_string().contains("output_padding_h"), "{e}");
    let big_pad = Conv2dParams {
        padding: [5, 0],
        ..Conv2dParams::default()
    };
    let e =
        ConvTranspose2dGeom::new(Shape4::new(1, 1, 2, 2), 1, [2, 2], big_pad, [0, 0]).unwrap_err();
    assert!(e.to_string().contains("padding_h"), "{e}");
    let groups = Conv2dParams {
        groups: 2,
        ..Conv2dParams::default()
    };
    assert!(ConvTranspose2dGeom::new(Shape4::new(1, 2, 2, 2), 3, [1, 1], groups, [0, 0]).is_err());
}
