//! conv2d on the portable path (im2col + `matrixmultiply`, baseline depthwise sweeps), which CPUs
//! without AVX2/FMA run: every pass against the naive reference and against finite differences. This binary forces the portable
//! path in every test and never turns it off, so no test here runs the AVX2 kernels.

mod common;

use cnnkit::{Conv2dGeom, Conv2dParams, Shape4};
use common::conv_check::{case, check_against_reference, check_gradients, check_weight_gradient};
use common::strategies::{CONV_GRAD, CONV_REF, conv_case, conv_many_pixels};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    #[test]
    fn portable_conv2d_all_passes_match_reference(c in conv_case(CONV_REF)) {
        cnnkit::arch::limit(Some(cnnkit::arch::Isa::Portable));
        check_against_reference(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(24)))]

    #[test]
    fn portable_conv2d_many_pixels_match_reference(c in conv_many_pixels()) {
        cnnkit::arch::limit(Some(cnnkit::arch::Isa::Portable));
        check_against_reference(&c)?;
        check_weight_gradient(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    #[test]
    fn portable_conv2d_gradients_match_finite_differences(c in conv_case(CONV_GRAD)) {
        cnnkit::arch::limit(Some(cnnkit::arch::Isa::Portable));
        check_gradients(&c)?;
    }
}

/// Depthwise and strided depthwise layers of the size of the benchmark's, and a large image.
#[test]
fn portable_large_convolutions_match_reference() {
    cnnkit::arch::limit(Some(cnnkit::arch::Isa::Portable));
    for (x, c_out, k, p) in [
        (
            Shape4::new(2, 8, 30, 29),
            8,
            [3, 3],
            Conv2dParams::default().padding(1).groups(8),
        ),
        (
            Shape4::new(1, 6, 21, 40),
            12,
            [3, 5],
            Conv2dParams::default().stride(2).padding(1).groups(6),
        ),
        (
            Shape4::new(1, 3, 120, 90),
            20,
            [3, 3],
            Conv2dParams::default().padding(1),
        ),
    ] {
        let g = Conv2dGeom::new(x, c_out, k, p).unwrap();
        check_against_reference(&case(g)).unwrap();
    }
}
