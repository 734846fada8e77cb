//! conv2d: every pass against the naive reference, every gradient against finite differences.

mod common;

use cnnkit::kernels::{
    Accum, Activation, Epilogue, activation_forward, add_forward,
    conv2d_backward_weights_scratch_len, conv2d_forward, conv2d_forward_fused,
    conv2d_forward_scratch_len,
};
use cnnkit::{Conv2dGeom, Conv2dParams, Shape4, reference};
use common::conv_check::{
    ATOL, RTOL, case, check_against_reference, check_gradients, check_weight_gradient,
};
use common::strategies::{CONV_GRAD, CONV_REF, ConvCase, conv_case, conv_many_pixels};
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    #[test]
    fn conv2d_all_passes_match_reference(c in conv_case(CONV_REF)) {
        check_against_reference(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    /// The input, weight and bias gradients against finite differences of the forward pass.
    #[test]
    fn conv2d_gradients_match_finite_differences(c in conv_case(CONV_GRAD)) {
        check_gradients(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(24)))]

    /// Images past one weight-gradient block (512 output pixels) and one band: every pass
    /// against the reference, and the weight gradient against finite differences.
    #[test]
    fn conv2d_many_pixels_match_reference_and_finite_differences(c in conv_many_pixels()) {
        check_against_reference(&c)?;
        check_weight_gradient(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(128)))]

    /// `conv2d_forward_fused` is the convolution, the sum with the residual and the activation
    /// as three passes, bit for bit, on every path (direct, depthwise, im2col) and for any
    /// thread count.
    #[test]
    fn conv2d_fused_epilogue_is_the_separate_passes(
        c in conv_case(CONV_REF),
        act in 0usize..4,
        with_residual in any::<bool>(),
    ) {
        let act = [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Silu)][act];
        let residual: Vec<f32> = values(17, c.g.y_len());
        let mut ws = vec![0.0; conv2d_forward_scratch_len(&c.g)];
        let mut want = vec![0.0; c.g.y_len()];
        conv2d_forward(&c.g, &c.x, &c.w, Some(&c.b), &mut want, &mut ws).unwrap();
        if with_residual {
            add_forward(&residual, &mut want, Accum::Add).unwrap();
        }
        if let Some(a) = act {
            let pre = want.clone();
            activation_forward(a, &pre, &mut want).unwrap();
        }
        let epi = Epilogue { residual: with_residual.then_some(&residual[..]), act };
        for threads in [1, 2] {
            let mut y = vec![f32::NAN; c.g.y_len()];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| conv2d_forward_fused(&c.g, &c.x, &c.w, Some(&c.b), epi, &mut y, &mut ws))
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&y), bits(&want), "{:?}, {} threads", c.g, threads);
        }
    }
}

/// Split inside the image (two threads, no serial threshold), each worker convolves its own
/// output-channel panels and copies them out through the epilogue itself: bit for bit the three
/// passes, over channel counts that leave a short last panel, several row bands, and shapes with
/// and without padding.
#[test]
fn conv2d_fused_epilogue_split_inside_an_image_is_the_separate_passes() {
    for (x, c_out, k, p) in [
        (
            Shape4::new(1, 16, 40, 36),
            70,
            [1, 1],
            Conv2dParams::default(),
        ),
        (
            Shape4::new(1, 5, 150, 130),
            45,
            [3, 3],
            Conv2dParams::default().padding(1),
        ),
        (
            Shape4::new(2, 8, 31, 29),
            33,
            [3, 3],
            Conv2dParams::default().stride(2),
        ),
    ] {
        let g = Conv2dGeom::new(x, c_out, k, p).unwrap();
        let (x, w, b) = (values(1, g.x_len()), values(2, g.w_len()), values(3, c_out));
        let residual = values(4, g.y_len());
        let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
        let mut want = vec![0.0; g.y_len()];
        conv2d_forward(&g, &x, &w, Some(&b), &mut want, &mut ws).unwrap();
        add_forward(&residual, &mut want, Accum::Add).unwrap();
        let pre = want.clone();
        activation_forward(Activation::Relu6, &pre, &mut want).unwrap();
        let epi = Epilogue {
            residual: Some(&residual),
            act: Some(Activation::Relu6),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut y = nans(g.y_len());
        let threshold = cnnkit::par::parallel_threshold();
        // Results do not depend on the threshold: other tests may run meanwhile.
        cnnkit::par::set_parallel_threshold(0);
        let r = pool.install(|| conv2d_forward_fused(&g, &x, &w, Some(&b), epi, &mut y, &mut ws));
        cnnkit::par::set_parallel_threshold(threshold);
        r.unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&want), "{g:?}");
    }
}

/// Planes large enough that the depthwise kernels sweep them a strip of rows at a time, rows wide
/// enough to take the epilogue straight into the output and rows too short for it, and direct
/// convolutions whose rows are one run (1x1) or rows of their own: bit for bit the separate
/// passes, with and without a bias and a residual, for activations that clamp and that do not,
/// on one and two threads.
#[test]
fn conv2d_fused_epilogue_on_large_planes_is_the_separate_passes() {
    for (x, c_out, k, p) in [
        // Depthwise: three strips of 66-wide rows.
        (
            Shape4::new(1, 6, 70, 66),
            6,
            [3, 3],
            Conv2dParams::default().padding(1).groups(6),
        ),
        // Depthwise: two strips of 20-wide rows (the strip's stretch of lanes).
        (
            Shape4::new(1, 4, 100, 20),
            4,
            [5, 5],
            Conv2dParams::default().padding(2).groups(4),
        ),
        // Depthwise, strided, channel multiplier 2, two images.
        (
            Shape4::new(2, 3, 150, 90),
            6,
            [3, 3],
            Conv2dParams::default().stride(2).padding(1).groups(3),
        ),
        // Direct 1x1: each band's rows one run.
        (
            Shape4::new(1, 8, 33, 17),
            12,
            [1, 1],
            Conv2dParams::default(),
        ),
        // Direct 3x3: 40-wide rows with dropped columns.
        (
            Shape4::new(1, 4, 20, 40),
            10,
            [3, 3],
            Conv2dParams::default().padding(1),
        ),
    ] {
        let g = Conv2dGeom::new(x, c_out, k, p).unwrap();
        let (x, w, b) = (values(1, g.x_len()), values(2, g.w_len()), values(3, c_out));
        let residual = values(4, g.y_len());
        let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
        for act in [
            None,
            Some(Activation::Relu),
            Some(Activation::Relu6),
            Some(Activation::Silu),
            Some(Activation::Gelu),
        ] {
            for (bias, res) in [(true, false), (false, false), (true, true), (false, true)] {
                let bias = bias.then_some(&b[..]);
                let res = res.then_some(&residual[..]);
                let mut want = vec![0.0; g.y_len()];
                conv2d_forward(&g, &x, &w, bias, &mut want, &mut ws).unwrap();
                if let Some(r) = res {
                    add_forward(r, &mut want, Accum::Add).unwrap();
                }
                if let Some(a) = act {
                    let pre = want.clone();
                    activation_forward(a, &pre, &mut want).unwrap();
                }
                let epi = Epilogue { residual: res, act };
                for threads in [1, 2] {
                    let mut y = nans(g.y_len());
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| conv2d_forward_fused(&g, &x, &w, bias, epi, &mut y, &mut ws))
                        .unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&y),
                        bits(&want),
                        "{g:?} {act:?} bias {} residual {} {threads} threads",
                        bias.is_some(),
                        res.is_some()
                    );
                }
            }
        }
    }
}

/// A residual of the wrong length is refused, as is an activation's invalid parameter (softplus
/// with β = 0).
#[test]
fn conv2d_fused_refuses_a_wrong_residual() {
    let g = Conv2dGeom::new(Shape4::new(1, 2, 5, 5), 3, [3, 3], Conv2dParams::default()).unwrap();
    let (x, w) = (values(1, g.x_len()), values(2, g.w_len()));
    let mut y = vec![0.0; g.y_len()];
    let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
    let short = vec![0.0; g.y_len() - 1];
    let epi = Epilogue {
        residual: Some(&short),
        act: None,
    };
    let e = conv2d_forward_fused(&g, &x, &w, None, epi, &mut y, &mut ws).unwrap_err();
    assert!(e.to_string().contains("residual"), "{e}");
    let epi = Epilogue {
        residual: None,
        act: Some(Activation::Softplus {
            beta: 0.0,
            threshold: 20.0,
        }),
    };
    assert!(conv2d_forward_fused(&g, &x, &w, None, epi, &mut y, &mut ws).is_err());
}

/// Every small geometry on a grid (h, w, kernel, stride, padding, dilation per axis), all passes.
#[test]
fn conv2d_exhaustive_small_geometries_match_reference() {
    let mut cases = 0;
    for (h, w) in [(1, 1), (1, 5), (3, 2), (5, 5), (8, 3)] {
        for (kh, kw) in [(1, 1), (1, 3), (2, 2), (3, 1), (3, 3)] {
            for s in [[1, 1], [2, 1], [1, 3], [3, 3]] {
                for p in [[0, 0], [1, 0], [0, 2], [2, 2]] {
                    for d in [[1, 1], [2, 1], [1, 2]] {
                        for (ci, co, groups) in [(2, 3, 1), (4, 2, 2), (3, 3, 3)] {
                            let params = Conv2dParams {
                                stride: s,
                                padding: p,
                                dilation: d,
                                groups,
                            };
                            let Ok(g) =
                                Conv2dGeom::new(Shape4::new(2, ci, h, w), co, [kh, kw], params)
                            else {
                                continue;
                            };
                            let c = ConvCase {
                                g,
                                x: values(1, g.x_len()),
                                w: values(2, g.w_len()),
                                b: values(3, g.c_out()),
                                dy: values(4, g.y_len()),
                            };
                            check_against_reference(&c).unwrap_or_else(|e| panic!("{g:?}: {e}"));
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(cases > 1000, "only {cases} valid geometries");
}

/// An image large enough that im2col runs in several tiles of output rows (and, for one image,
/// the split inside the image), in all three passes.
#[test]
fn conv2d_tiles_large_images() {
    for (n, groups) in [(1, 1), (3, 2)] {
        let g = Conv2dGeom::new(
            Shape4::new(n, 16, 96, 90),
            4,
            [3, 3],
            Conv2dParams {
                stride: [1, 2],
                padding: [1, 2],
                dilation: [1, 1],
                groups,
            },
        )
        .unwrap();
        // 16·9·out_w floats per output row: the 2^18-element tile holds fewer rows than out_h.
        assert!(g.c_in() * 9 * g.out_w() * g.out_h() > cnnkit::kernels::COL_TILE_ELEMS);
        let c = ConvCase {
            g,
            x: values(5, g.x_len()),
            w: values(6, g.w_len()),
            b: values(7, g.c_out()),
            dy: values(8, g.y_len()),
        };
        check_against_reference(&c).unwrap();
    }
}

/// The scratch bound: per worker, one tile of at most max(COL_TILE_ELEMS, c_in·k_h·k_w·out_w)
/// on the im2col path, or one band of at most max(2^20, one output row's needs) plus a row of
/// slack on the direct path; either way far below the image for large images.
#[test]
fn conv2d_scratch_is_bounded_for_large_images() {
    let g = Conv2dGeom::new(
        Shape4::new(1, 3, 4096, 4096),
        8,
        [3, 3],
        Conv2dParams::default().padding(1),
    )
    .unwrap();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (fwd, wgt) = one_thread.install(|| {
        (
            conv2d_forward_scratch_len(&g),
            conv2d_backward_weights_scratch_len(&g),
        )
    });
    // One band: within 2^20 floats, plus a row of slack and rounding to whole 16-pixel tiles
    // and 6-channel panels; the weight pass adds the transposed weight gradient.
    let bound = cnnkit::kernels::COL_TILE_ELEMS.max(1 << 20) + 4098 + 32 + 12 * 16 + 30 * 16;
    assert!(
        fwd <= bound && wgt <= bound,
        "forward {fwd}, weights {wgt}, bound {bound}"
    );
    assert!(fwd * 20 < g.x_len());
}

/// A smaller scratch than the full-parallel length still works (with fewer threads); less than
/// one tile is an error.
#[test]
fn conv2d_accepts_one_tile_of_scratch_and_rejects_less() {
    let g = Conv2dGeom::new(Shape4::new(4, 3, 9, 9), 5, [3, 3], Conv2dParams::default()).unwrap();
    let (x, w) = (values(1, g.x_len()), values(2, g.w_len()));
    let want = reference::conv2d_forward(&g, &x, &w, None);
    par(|| {
        // One worker's share of the full-parallel scratch.
        let tile = conv2d_forward_scratch_len(&g) / cnnkit::par::threads();
        let mut y = nans(g.y_len());
        conv2d_forward(&g, &x, &w, None, &mut y, &mut vec![0.0; tile]).unwrap();
        assert_close("y", &y, &want, ATOL, RTOL).unwrap();
        let err = conv2d_forward(&g, &x, &w, None, &mut y, &mut vec![0.0; tile - 1]).unwrap_err();
        assert!(err.to_string().contains("ws"), "{err}");
    });
}

/// Images large enough (or dilations wide enough) that the direct path splits the output into
/// several row bands, each with its own layout: all three passes against the reference.
#[test]
fn multi_band_convolutions_match_reference() {
    for (x, c_out, k, p) in [
        (
            Shape4::new(1, 3, 150, 130),
            70,
            [3, 3],
            Conv2dParams::default().padding(1),
        ),
        (
            Shape4::new(2, 4, 97, 61),
            40,
            [5, 3],
            Conv2dParams::default().stride(2).padding(2),
        ),
        (
            Shape4::new(1, 30, 8, 8),
            12,
            [3, 3],
            Conv2dParams::default().padding(99).dilation(99),
        ),
    ] {
        let g = Conv2dGeom::new(x, c_out, k, p).unwrap();
        check_against_reference(&case(g)).unwrap();
    }
}

/// Depthwise layers wide enough for the four-lane blocks of the AVX2 sweep, stride 1, 2 and 3
/// (the column phases split in pairs or one by one, either parity of padding), kernels of more
/// taps than one sweep takes (9x9), and the nine-tap weight-gradient path (3x3 and 1x9, row
/// strides above 1, dilation, row tails).
#[test]
fn wide_depthwise_convolutions_match_reference() {
    for (x, c_out, k, p) in [
        (
            Shape4::new(1, 2, 20, 31),
            2,
            [9, 9],
            Conv2dParams::default().stride(3).padding(4).groups(2),
        ),
        (
            Shape4::new(2, 2, 13, 41),
            4,
            [3, 3],
            Conv2dParams {
                stride: [1, 2],
                padding: [1, 0],
                dilation: [1, 1],
                groups: 2,
            },
        ),
        (
            Shape4::new(1, 3, 12, 38),
            3,
            [5, 4],
            Conv2dParams {
                stride: [2, 2],
                padding: [2, 3],
                dilation: [1, 2],
                groups: 3,
            },
        ),
        (
            Shape4::new(2, 3, 17, 29),
            6,
            [3, 3],
            Conv2dParams {
                stride: [2, 1],
                padding: [1, 2],
                dilation: [2, 1],
                groups: 3,
            },
        ),
        (
            Shape4::new(3, 2, 7, 35),
            2,
            [1, 9],
            Conv2dParams::default().padding(2).groups(2),
        ),
        (
            Shape4::new(2, 8, 30, 77),
            8,
            [3, 3],
            Conv2dParams::default().padding(1).groups(8),
        ),
        (
            Shape4::new(1, 4, 9, 70),
            8,
            [3, 5],
            Conv2dParams::default().padding(2).dilation(2).groups(4),
        ),
        (
            Shape4::new(1, 6, 21, 80),
            12,
            [3, 5],
            Conv2dParams::default().stride(2).padding(1).groups(6),
        ),
    ] {
        let g = Conv2dGeom::new(x, c_out, k, p).unwrap();
        check_against_reference(&case(g)).unwrap();
    }
}

/// A stride far larger than the image (found by the layer_spec fuzzer: `conv(16,7,50202)` asked
/// for 20 GB of scratch) needs scratch of the order of the data, and matches the reference.
#[test]
fn huge_strides_need_little_scratch() {
    let dense = Conv2dParams {
        stride: [50202, 3],
        padding: [3, 0],
        ..Conv2dParams::default()
    };
    let depthwise = Conv2dParams {
        stride: [2, 40000],
        padding: [1, 1],
        groups: 3,
        ..Conv2dParams::default()
    };
    for (c_out, k, p) in [(16, [7, 2], dense), (6, [3, 3], depthwise)] {
        let g = Conv2dGeom::new(Shape4::new(2, 3, 8, 9), c_out, k, p).unwrap();
        for len in [
            conv2d_forward_scratch_len(&g),
            conv2d_backward_weights_scratch_len(&g),
            cnnkit::kernels::conv2d_backward_data_scratch_len(&g),
        ] {
            assert!(len < 1 << 16, "{len} floats of scratch");
        }
        check_against_reference(&case(g)).unwrap();
    }
}
