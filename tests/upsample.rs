//! Upsampling (nearest, bilinear with and without aligned corners): forward against a reference
//! from PyTorch's definitions, backward against finite differences and with accumulation, and
//! both against torch.

mod common;

use cnnkit::kernels::{Accum, UpsampleMode, upsample2d_backward, upsample2d_forward};
use cnnkit::{Shape4, reference};
use common::gradcheck::{Tol, check_vjp};
use common::strategies::vals;
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

fn mode() -> impl Strategy<Value = UpsampleMode> {
    prop_oneof![
        Just(UpsampleMode::Nearest),
        Just(UpsampleMode::Bilinear {
            align_corners: false
        }),
        Just(UpsampleMode::Bilinear {
            align_corners: true
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    #[test]
    fn upsample_matches_reference_and_finite_differences(
        (s, f, m, x, dy) in (1..3usize, 1..3usize, 1..6usize, 1..6usize, 1..4usize, 1..4usize, mode())
            .prop_flat_map(|(n, c, h, w, fh, fw, m)| {
                let s = Shape4::new(n, c, h, w);
                (Just(s), Just([fh, fw]), Just(m), vals(n * c * h * w), vals(n * c * h * fh * w * fw))
            })
    ) {
        let mut y = nans(dy.len());
        par(|| upsample2d_forward(s, f, m, &x, &mut y)).unwrap();
        assert_close("y", &y, &reference::upsample2d_forward(s, f, m, &x), 1e-6, 1e-5)?;
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| upsample2d_forward(s, f, m, x, y).unwrap(),
            |_, dy, dx| upsample2d_backward(s, f, m, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
        let mut once = nans(x.len());
        upsample2d_backward(s, f, m, &dy, &mut once, Accum::Replace).unwrap();
        let old = values(5, x.len());
        let mut added = old.clone();
        upsample2d_backward(s, f, m, &dy, &mut added, Accum::Add).unwrap();
        let want: Vec<f32> = once.iter().zip(&old).map(|(a, b)| a + b).collect();
        assert_close("dx add", &added, &want, 1e-6, 1e-6)?;
    }
}

/// Nearest upsampling repeats each input; a factor of 0 and an empty plane are refused.
#[test]
fn nearest_repeats_and_bad_factors_are_refused() {
    let s = Shape4::new(1, 1, 2, 2);
    let x = [1.0, 2.0, 3.0, 4.0];
    let mut y = nans(8);
    upsample2d_forward(s, [1, 2], UpsampleMode::Nearest, &x, &mut y).unwrap();
    assert_eq!(y, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
    let e = upsample2d_forward(s, [0, 2], UpsampleMode::Nearest, &x, &mut y).unwrap_err();
    assert!(e.to_string().contains("scale_factor"), "{e}");
    let empty = Shape4::new(1, 1, 0, 2);
    assert!(upsample2d_forward(empty, [2, 2], UpsampleMode::Nearest, &[], &mut []).is_err());
}

/// The layer text: `upsample(S[,mode=bilinear][,align_corners=true])`; other modes, and aligned
/// corners without bilinear, are named errors.
#[test]
fn upsample_layer_text() {
    use cnnkit::LayerSpec;
    let s: LayerSpec = "upsample(2x3,mode=bilinear,align_corners=true)"
        .parse()
        .unwrap();
    assert_eq!(
        s.to_string(),
        "upsample(2x3,mode=bilinear,align_corners=true)"
    );
    for (bad, why) in [
        ("upsample(2,mode=bicubic)", "bicubic"),
        ("upsample(2,align_corners=true)", "align_corners"),
        ("upsample(mode=bilinear)", "missing scale"),
    ] {
        let e = bad.parse::<LayerSpec>().unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}
