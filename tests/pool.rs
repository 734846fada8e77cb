//! Pooling: forward against the reference (ties and NaN included), backward against finite
//! differences over overlapping windows.

mod common;

use cnnkit::kernels::{
    Accum, adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, avg_pool2d_backward,
    avg_pool2d_forward, global_avg_pool_backward, global_avg_pool_forward, max_pool2d_backward,
    max_pool2d_forward,
};
use cnnkit::{Pool2dGeom, Pool2dParams, Shape4, reference};
use common::gradcheck::{Tol, check_vjp};
use common::strategies::{distinct, pool_geom, vals};
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

fn max_fwd(g: &Pool2dGeom, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let mut y = nans(g.y_len());
    let mut a = vec![u32::MAX; g.y_len()];
    max_pool2d_forward(g, x, &mut y, Some(&mut a)).unwrap();
    let mut y2 = nans(g.y_len());
    max_pool2d_forward(g, x, &mut y2, None).unwrap();
    assert_eq!(
        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        y2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "inference and training forward differ"
    );
    (y, a)
}

fn avg_fwd(g: &Pool2dGeom, cip: bool, x: &[f32]) -> Vec<f32> {
    let mut y = nans(g.y_len());
    avg_pool2d_forward(g, cip, x, &mut y).unwrap();
    y
}

/// Inputs with many ties (values from {−1, 0, 1}) and occasional NaN.
fn tie_values(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![10 => (-1i32..=1).prop_map(|v| v as f32), 1 => Just(f32::NAN), 1 => Just(f32::NEG_INFINITY)],
        len,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    #[test]
    fn max_pool_forward_matches_reference_including_ties_and_nan(
        (g, x) in pool_geom(21).prop_flat_map(|g| (Just(g), tie_values(g.x_len())))
    ) {
        let (y, a) = par(|| max_fwd(&g, &x));
        let (ry, ra) = reference::max_pool2d_forward(&g, &x);
        assert_close("y", &y, &ry, 0.0, 0.0)?;
        prop_assert_eq!(a, ra);
    }

    /// The 2x2 / stride-2 layer of most CNNs has its own path over eight windows at a time:
    /// rows wide enough for it (and a tail), padding or not, ±0 and ties, bit for bit.
    #[test]
    fn max_pool_2x2_path_matches_reference_bit_for_bit(
        (g, x) in (1usize..3, 1usize..4, 2usize..6, 16usize..41, 0usize..2)
            .prop_flat_map(|(n, c, h, w, p)| {
                let g = Pool2dGeom::new(
                    Shape4::new(n, c, h, w),
                    Pool2dParams::new(2).stride(2).padding(p),
                )
                .unwrap();
                let v = prop_oneof![
                    10 => (-1i32..=1).prop_map(|v| v as f32),
                    2 => Just(-0.0f32),
                    1 => Just(f32::NAN),
                    1 => Just(f32::NEG_INFINITY),
                ];
                (Just(g), prop::collection::vec(v, g.x_len()))
            })
    ) {
        let (y, a) = par(|| max_fwd(&g, &x));
        let (ry, ra) = reference::max_pool2d_forward(&g, &x);
        for (i, (v, r)) in y.iter().zip(&ry).enumerate() {
            prop_assert!(v.to_bits() == r.to_bits() || (v.is_nan() && r.is_nan()), "y[{}]: {} vs {}", i, v, r);
        }
        prop_assert_eq!(&a, &ra);

        // Backward, bit for bit against a plain scatter onto zeros (signed zeros in `dy`: the
        // spread writes `0 + d`), with the forward's indices and with one moved to another
        // window of its plane (which the unpadded 2x2 path must hand to the scatter).
        let dy: Vec<f32> = (0..g.y_len())
            .map(|i| if i % 3 == 0 { -0.0 } else { (i as f32 * 0.37).sin() })
            .collect();
        let plane = g.in_h() * g.in_w();
        let out_plane = g.y_len() / g.planes();
        let mut moved = a.clone();
        if out_plane > 1 {
            moved[out_plane - 1] = a[0];
        }
        for idx in [&a, &moved] {
            let mut want = vec![0.0f32; g.x_len()];
            for (o, (&i, &d)) in idx.iter().zip(&dy).enumerate() {
                want[o / out_plane * plane + i as usize] += d;
            }
            let mut dx = nans(g.x_len());
            par(|| max_pool2d_backward(&g, idx, &dy, &mut dx, Accum::Replace)).unwrap();
            for (i, (v, w)) in dx.iter().zip(&want).enumerate() {
                prop_assert!(v.to_bits() == w.to_bits(), "dx[{}]: {:e} vs {:e}", i, v, w);
            }
        }
    }

    #[test]
    fn avg_pool_forward_matches_reference(
        (g, x, cip) in pool_geom(9).prop_flat_map(|g| (Just(g), vals(g.x_len()), any::<bool>()))
    ) {
        let y = par(|| avg_fwd(&g, cip, &x));
        assert_close("y", &y, &reference::avg_pool2d_forward(&g, cip, &x), 1e-6, 1e-5)?;
    }

    #[test]
    fn pool_backward_matches_reference_with_accumulation(
        (g, x, dy, cip) in pool_geom(9)
            .prop_flat_map(|g| (Just(g), distinct(g.x_len()), vals(g.y_len()), any::<bool>()))
    ) {
        par(|| -> Result<(), TestCaseError> {
            let (_, a) = max_fwd(&g, &x);
            let want = reference::max_pool2d_backward(&g, &x, &dy);
            let mut dx = nans(g.x_len());
            max_pool2d_backward(&g, &a, &dy, &mut dx, Accum::Replace).unwrap();
            assert_close("max dx", &dx, &want, 1e-6, 1e-6)?;
            let old = values(g.x_len() as u64, g.x_len());
            let mut dx = old.clone();
            max_pool2d_backward(&g, &a, &dy, &mut dx, Accum::Add).unwrap();
            assert_close("max dx add", &dx, &want.iter().zip(&old).map(|(v, o)| v + o).collect::<Vec<_>>(), 1e-6, 1e-6)?;
            let want = reference::avg_pool2d_backward(&g, cip, &dy);
            let mut dx = nans(g.x_len());
            avg_pool2d_backward(&g, cip, &dy, &mut dx, Accum::Replace).unwrap();
            assert_close("avg dx", &dx, &want, 1e-6, 1e-5)
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    #[test]
    fn maxpool_backward_matches_finite_differences(
        (g, x, dy) in pool_geom(8).prop_flat_map(|g| (Just(g), distinct(g.x_len()), vals(g.y_len())))
    ) {
        let (_, a) = max_fwd(&g, &x);
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| y.copy_from_slice(&max_fwd(&g, x).0),
            |_, dy, dx| max_pool2d_backward(&g, &a, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }

    #[test]
    fn avgpool_backward_matches_finite_differences(
        (g, x, dy, cip) in pool_geom(8).prop_flat_map(|g| (Just(g), vals(g.x_len()), vals(g.y_len()), any::<bool>()))
    ) {
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| y.copy_from_slice(&avg_fwd(&g, cip, x)),
            |_, dy, dx| avg_pool2d_backward(&g, cip, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }

    #[test]
    fn global_avg_pool_backward_matches_finite_differences(
        (s, x, dy) in (1..3usize, 1..4usize, 1..6usize, 1..6usize)
            .prop_flat_map(|(n, c, h, w)| {
                let s = Shape4::new(n, c, h, w);
                (Just(s), vals(n * c * h * w), vals(n * c))
            })
    ) {
        let mut y = nans(s.n * s.c);
        global_avg_pool_forward(s, &x, &mut y).unwrap();
        assert_close("y", &y, &reference::global_avg_pool_forward(s, &x), 1e-6, 1e-5)?;
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| global_avg_pool_forward(s, x, y).unwrap(),
            |_, dy, dx| global_avg_pool_backward(s, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    /// Any input and output size, smaller or larger than the input (overlapping windows,
    /// repeated inputs): the forward against PyTorch's definition, the backward against finite
    /// differences and with accumulation.
    #[test]
    fn adaptive_avg_pool_matches_reference_and_finite_differences(
        (s, out, x, dy) in (1..3usize, 1..3usize, 1..8usize, 1..8usize, 1..9usize, 1..9usize)
            .prop_flat_map(|(n, c, h, w, oh, ow)| {
                let s = Shape4::new(n, c, h, w);
                (Just(s), Just([oh, ow]), vals(n * c * h * w), vals(n * c * oh * ow))
            })
    ) {
        let mut y = nans(dy.len());
        par(|| adaptive_avg_pool2d_forward(s, out, &x, &mut y)).unwrap();
        assert_close("y", &y, &reference::adaptive_avg_pool2d_forward(s, out, &x), 1e-6, 1e-5)?;
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| adaptive_avg_pool2d_forward(s, out, x, y).unwrap(),
            |_, dy, dx| adaptive_avg_pool2d_backward(s, out, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
        let mut once = nans(x.len());
        adaptive_avg_pool2d_backward(s, out, &dy, &mut once, Accum::Replace).unwrap();
        let old = values(7, x.len());
        let mut added = old.clone();
        adaptive_avg_pool2d_backward(s, out, &dy, &mut added, Accum::Add).unwrap();
        let want: Vec<f32> = once.iter().zip(&old).map(|(a, b)| a + b).collect();
        assert_close("dx add", &added, &want, 1e-6, 1e-6)?;
    }
}

/// Output size 1 is global average pooling; the output size of the input is the identity; an
/// empty output side is refused.
#[test]
fn adaptive_avg_pool_special_sizes() {
    let s = Shape4::new(2, 3, 5, 4);
    let x = values(3, s.n * s.c * 20);
    let (mut a, mut b) = (nans(6), nans(6));
    adaptive_avg_pool2d_forward(s, [1, 1], &x, &mut a).unwrap();
    global_avg_pool_forward(s, &x, &mut b).unwrap();
    assert_close("1x1", &a, &b, 1e-6, 1e-6).unwrap();
    let mut same = nans(x.len());
    adaptive_avg_pool2d_forward(s, [5, 4], &x, &mut same).unwrap();
    assert_eq!(same, x);
    let e = adaptive_avg_pool2d_forward(s, [0, 2], &x, &mut a).unwrap_err();
    assert!(e.to_string().contains("output_size"), "{e}");
}

/// The overlapping 3x3/stride-2/pad-1 case of ResNet stems, where windows share rows and
/// columns: every input gradient is the sum over all windows that selected it.
#[test]
fn overlapping_windows_accumulate_gradients() {
    let g = Pool2dGeom::new(
        Shape4::new(1, 1, 5, 5),
        Pool2dParams::new(3).stride(2).padding(1),
    )
    .unwrap();
    // Windows span rows/columns [2o−1, 2o+1] for o = 0, 1, 2: position (1, 1) lies in the
    // windows o ∈ {0, 1} of both axes, so four windows select it.
    let mut x = vec![0.0f32; 25];
    x[6] = 9.0;
    let (y, a) = max_fwd(&g, &x);
    assert_eq!((g.out_h(), g.out_w()), (3, 3));
    assert_eq!([y[0], y[1], y[3], y[4]], [9.0; 4]);
    let mut dx = nans(25);
    max_pool2d_backward(&g, &a, &[1.0; 9], &mut dx, Accum::Replace).unwrap();
    assert_eq!(dx[6], 4.0);
    assert_eq!(dx.iter().sum::<f32>(), 9.0);
}

/// `count_include_pad` divides by the window clipped to the padded input, not by its full area
/// (PyTorch: avg_pool2d(ones(1,1,3,3), 3, 2, 1) = 4/9 everywhere with the default, 1 without).
#[test]
fn avg_pool_divisors_follow_torch() {
    let g = Pool2dGeom::new(
        Shape4::new(1, 1, 3, 3),
        Pool2dParams::new(3).stride(2).padding(1),
    )
    .unwrap();
    let x = [1.0; 9];
    assert_eq!(avg_fwd(&g, true, &x), vec![4.0 / 9.0; 4]);
    assert_eq!(avg_fwd(&g, false, &x), vec![1.0; 4]);
}

/// 2x2 windows with stride 2 and no padding (the tiled fast path), on sizes that leave the last
/// input row or column outside every window: forward and both gradient modes against the
/// reference, the gradient buffer pre-filled with NaN so an element left unwritten shows.
#[test]
fn avg_pool_tiles_match_reference() {
    for (h, w) in [(4, 6), (7, 9), (2, 3), (9, 18)] {
        let g = Pool2dGeom::new(Shape4::new(2, 3, h, w), Pool2dParams::new(2)).unwrap();
        let x = common::values(h as u64, g.x_len());
        let dy = common::values(w as u64, g.y_len());
        for cip in [true, false] {
            let y = avg_fwd(&g, cip, &x);
            assert_close(
                "y",
                &y,
                &reference::avg_pool2d_forward(&g, cip, &x),
                1e-6,
                1e-6,
            )
            .unwrap();
            let want = reference::avg_pool2d_backward(&g, cip, &dy);
            let mut dx = nans(g.x_len());
            par(|| avg_pool2d_backward(&g, cip, &dy, &mut dx, Accum::Replace)).unwrap();
            assert_close("dx", &dx, &want, 1e-6, 1e-6).unwrap();
            let old = values(g.x_len() as u64 + 1, g.x_len());
            let mut dx = old.clone();
            par(|| avg_pool2d_backward(&g, cip, &dy, &mut dx, Accum::Add)).unwrap();
            let plus: Vec<f32> = want.iter().zip(&old).map(|(v, o)| v + o).collect();
            assert_close("dx add", &dx, &plus, 1e-6, 1e-6).unwrap();
        }
    }
}

/// Windows larger than the lane path takes (more than 64 elements) use the scalar path.
#[test]
fn max_pool_with_a_large_window_matches_reference() {
    let g = Pool2dGeom::new(
        Shape4::new(1, 2, 20, 19),
        Pool2dParams {
            window: [9, 8],
            stride: [2, 1],
            padding: [4, 0],
        },
    )
    .unwrap();
    let x = common::values(5, g.x_len());
    let mut y = nans(g.y_len());
    let mut idx = vec![0; g.y_len()];
    par(|| max_pool2d_forward(&g, &x, &mut y, Some(&mut idx))).unwrap();
    let (want, want_idx) = reference::max_pool2d_forward(&g, &x);
    assert_eq!(y, want);
    assert_eq!(idx, want_idx);
}
