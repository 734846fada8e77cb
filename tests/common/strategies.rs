//! Proptest strategies: valid geometries with every axis independent (h ≠ w, stride_h ≠
//! stride_w, ...), values in `[-1, 1)`, and inputs kept away from kinks.

use cnnkit::{Conv2dGeom, Conv2dParams, Pool2dGeom, Pool2dParams, Shape4};
use proptest::prelude::*;

/// Upper bounds for generated conv geometries.
#[derive(Clone, Copy, Debug)]
pub struct ConvSizes {
    pub n: usize,
    pub c_g: usize,
    pub groups: usize,
    pub hw: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub dil: usize,
}

/// For forward / reference comparisons.
pub const CONV_REF: ConvSizes = ConvSizes {
    n: 3,
    c_g: 4,
    groups: 3,
    hw: 10,
    k: 4,
    stride: 4,
    pad: 3,
    dil: 3,
};

/// For finite differences (fewer elements: two forward calls per input element).
pub const CONV_GRAD: ConvSizes = ConvSizes {
    n: 2,
    c_g: 3,
    groups: 2,
    hw: 6,
    k: 3,
    stride: 3,
    pad: 2,
    dil: 2,
};

/// `groups` groups of `ci` input and `co` output channels each over `[n, ci·groups, h, w]`, or
/// `None` where the window does not fit the padded input.
fn geom(
    n: usize,
    [ci, co, groups]: [usize; 3],
    [h, w]: [usize; 2],
    k: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Option<Conv2dGeom> {
    Conv2dGeom::new(
        Shape4::new(n, ci * groups, h, w),
        co * groups,
        k,
        Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        },
    )
    .ok()
}

/// A general convolution: every parameter independent per axis.
fn conv_general(s: ConvSizes) -> impl Strategy<Value = Conv2dGeom> {
    (
        1..=s.n,
        1..=s.c_g,
        1..=s.c_g,
        1..=s.groups,
        (1..=s.hw, 1..=s.hw),
        (1..=s.k, 1..=s.k),
        (1..=s.stride, 1..=s.stride),
        (0..=s.pad, 0..=s.pad),
        (1..=s.dil, 1..=s.dil),
    )
        .prop_filter_map(
            "window larger than padded input",
            |(n, ci, co, g, (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))| {
                geom(
                    n,
                    [ci, co, g],
                    [h, w],
                    [kh, kw],
                    [sh, sw],
                    [ph, pw],
                    [dh, dw],
                )
            },
        )
}

/// 1x1, stride 1, no padding: the path that skips im2col.
fn conv_pointwise(s: ConvSizes) -> impl Strategy<Value = Conv2dGeom> {
    (
        1..=s.n,
        1..=s.c_g,
        1..=s.c_g,
        1..=s.groups,
        1..=s.hw,
        1..=s.hw,
    )
        .prop_map(|(n, ci, co, g, h, w)| {
            Conv2dGeom::new(
                Shape4::new(n, ci * g, h, w),
                co * g,
                [1, 1],
                Conv2dParams::default().groups(g),
            )
            .unwrap()
        })
}

/// Depthwise: groups = c_in, with a channel multiplier.
fn conv_depthwise(s: ConvSizes) -> impl Strategy<Value = Conv2dGeom> {
    (
        1..=s.n,
        2..=s.c_g + 1,
        1..=2usize,
        (1..=s.hw, 1..=s.hw),
        (1..=s.k, 1..=s.k),
        (1..=s.stride, 1..=s.stride),
        (0..=s.pad, 0..=s.pad),
        (1..=s.dil, 1..=s.dil),
    )
        .prop_filter_map(
            "window larger than padded input",
            |(n, c, m, (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))| {
                geom(n, [1, m, c], [h, w], [kh, kw], [sh, sw], [ph, pw], [dh, dw])
            },
        )
}

/// The direct backward-data pass (AVX2 machines): stride 1, at least 4 input channels per group
/// (fewer take the im2col path), padding within the dilated kernel.
fn conv_direct_backward_data(s: ConvSizes) -> impl Strategy<Value = Conv2dGeom> {
    (
        1..=s.n,
        4..=5usize,
        1..=s.c_g,
        1..=s.groups.min(2),
        (1..=s.hw.min(6), 1..=s.hw.min(6)),
        (1..=s.k, 1..=s.k),
        (0..=s.pad, 0..=s.pad),
        (1..=s.dil, 1..=s.dil),
    )
        .prop_filter_map(
            "window larger than padded input",
            |(n, ci, co, g, (h, w), (kh, kw), (ph, pw), (dh, dw))| {
                let pad = [ph.min(dh * (kh - 1)), pw.min(dw * (kw - 1))];
                geom(n, [ci, co, g], [h, w], [kh, kw], [1, 1], pad, [dh, dw])
            },
        )
}

/// Strides above the direct path's limit of 4 (the im2col path, with its own weight gradient,
/// on every instruction set).
fn conv_wide_stride(s: ConvSizes) -> impl Strategy<Value = Conv2dGeom> {
    (
        1..=s.n,
        1..=s.c_g,
        1..=s.c_g,
        (5..=6usize, 1..=6usize),
        (1..=3usize, 1..=3usize),
        (0..=1usize, 0..=1usize),
        any::<bool>(),
    )
        .prop_filter_map(
            "window larger than padded input",
            |(n, ci, co, (sa, sb), (kh, kw), (ph, pw), swap)| {
                let stride = if swap { [sb, sa] } else { [sa, sb] };
                let hw = [kh + 2 * stride[0] - 1, kw + stride[1] + 2];
                geom(n, [ci, co, 1], hw, [kh, kw], stride, [ph, pw], [1, 1])
            },
        )
}

/// Any convolution geometry: general, pointwise, depthwise, the direct backward-data shape and
/// the wide-stride shape.
pub fn conv_geom(s: ConvSizes) -> impl Strategy<Value = Conv2dGeom> {
    prop_oneof![
        3 => conv_general(s),
        1 => conv_pointwise(s),
        1 => conv_depthwise(s),
        1 => conv_direct_backward_data(s),
        1 => conv_wide_stride(s),
    ]
}

/// Images with more output pixels than one block of the direct weight gradient (512) and than
/// one band of the direct passes, with few channels (large enough to cross those boundaries,
/// small enough for finite differences over the weights).
pub fn conv_many_pixels() -> impl Strategy<Value = ConvCase> {
    (
        1..=2usize,
        1..=2usize,
        1..=3usize,
        (23..=40usize, 23..=40usize),
        (1..=3usize, 1..=3usize),
        (0..=1usize, 0..=1usize),
        1..=2usize,
    )
        .prop_filter_map(
            "window larger than padded input",
            |(n, ci, co, (h, w), (kh, kw), (ph, pw), s)| {
                geom(n, [ci, co, 1], [h, w], [kh, kw], [s, s], [ph, pw], [1, 1])
            },
        )
        .prop_flat_map(case_of)
}

fn case_of(g: Conv2dGeom) -> impl Strategy<Value = ConvCase> {
    (
        vals(g.x_len()),
        vals(g.w_len()),
        vals(g.c_out()),
        vals(g.y_len()),
    )
        .prop_map(move |(x, w, b, dy)| ConvCase { g, x, w, b, dy })
}

/// `len` values in `[-1, 1)`.
pub fn vals(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1.0f32..1.0, len)
}

/// A convolution with input, weights, bias and an output cotangent.
#[derive(Clone, Debug)]
pub struct ConvCase {
    pub g: Conv2dGeom,
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub dy: Vec<f32>,
}

pub fn conv_case(s: ConvSizes) -> impl Strategy<Value = ConvCase> {
    conv_geom(s).prop_flat_map(case_of)
}

/// A pooling geometry: window, stride and padding independent per axis, padding at most half
/// the window.
pub fn pool_geom(max_hw: usize) -> impl Strategy<Value = Pool2dGeom> {
    (
        1..=2usize,
        1..=3usize,
        (1..=max_hw, 1..=max_hw),
        (1..=4usize, 1..=4usize),
        (1..=4usize, 1..=4usize),
        (0..=2usize, 0..=2usize),
    )
        .prop_filter_map(
            "invalid pooling",
            |(n, c, (h, w), (kh, kw), (sh, sw), (ph, pw))| {
                Pool2dGeom::new(
                    Shape4::new(n, c, h, w),
                    Pool2dParams {
                        window: [kh, kw],
                        stride: [sh, sw],
                        padding: [ph, pw],
                    },
                )
                .ok()
            },
        )
}

/// `len` distinct values spaced 0.05 apart (a shuffled ramp), so a perturbation of ±h = ±0.01
/// never changes which element of a window is the maximum.
pub fn distinct(len: usize) -> impl Strategy<Value = Vec<f32>> {
    Just((0..len).collect::<Vec<usize>>())
        .prop_shuffle()
        .prop_map(move |p| {
            p.into_iter()
                .map(|v| (v as f32 - len as f32 / 2.0) * 0.05)
                .collect()
        })
}

/// `len` values in `[-2, 2]` at least `2h = 0.02` (plus margin) away from 0: off the kink of
/// ReLU-type activations.
pub fn off_kink(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec((0.05f32..2.0, any::<bool>()), len).prop_map(|v| {
        v.into_iter()
            .map(|(a, neg)| if neg { -a } else { a })
            .collect()
    })
}
