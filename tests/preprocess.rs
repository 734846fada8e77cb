//! Preprocessing against OpenCV: outputs computed with OpenCV and committed as fixtures
//! (`tests/fixtures/gen_preprocess.py`).

#[path = "fixtures/preprocess_opencv.rs"]
mod cv;

use cnnkit::preprocess::{Clahe, Filter, Gray, adjust, clahe, equalize_hist, resize};

fn gray<T: Copy>(w: usize, h: usize, d: &[T]) -> Gray<T> {
    Gray::new(w, h, d.to_vec()).unwrap()
}

/// Count and size of differences, for a readable failure.
fn diff<T: Copy + Into<f64>>(got: &[T], want: &[T]) -> (usize, f64) {
    let mut n = 0;
    let mut worst = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = (g.into() - w.into()).abs();
        if d > 0.0 {
            n += 1;
            worst = worst.max(d);
        }
    }
    (n, worst)
}

#[test]
fn equalize_hist_matches_opencv_exactly() {
    for (w, h, input, want) in [
        (37, 23, cv::EQ_A_IN, cv::EQ_A_OUT),
        (29, 17, cv::EQ_B_IN, cv::EQ_B_OUT),
    ] {
        let out = equalize_hist(&gray(w, h, input));
        assert_eq!(diff(out.data(), want), (0, 0.0));
    }
}

#[test]
fn clahe_8bit_matches_opencv_exactly() {
    for (name, (w, h, clip, tiles), input, want) in [
        ("divisible", cv::CL_DIV_P, cv::CL_DIV_IN, cv::CL_DIV_OUT),
        (
            "odd size, 4x3 grid",
            cv::CL_ODD_P,
            cv::CL_ODD_IN,
            cv::CL_ODD_OUT,
        ),
        (
            "no clipping",
            cv::CL_NOCLIP_P,
            cv::CL_NOCLIP_IN,
            cv::CL_NOCLIP_OUT,
        ),
        ("one tile", cv::CL_ONE_P, cv::CL_ONE_IN, cv::CL_ONE_OUT),
        (
            "grid finer than image",
            cv::CL_TINY_P,
            cv::CL_TINY_IN,
            cv::CL_TINY_OUT,
        ),
        (
            "default clip, 2x7 grid",
            cv::CL_HIGHCLIP_P,
            cv::CL_HIGHCLIP_IN,
            cv::CL_HIGHCLIP_OUT,
        ),
    ] {
        let out = clahe(
            &gray(w, h, input),
            &Clahe {
                clip_limit: clip,
                tiles,
            },
        )
        .unwrap();
        assert_eq!(diff(out.data(), want), (0, 0.0), "{name}");
    }
}

#[test]
fn clahe_16bit_matches_opencv_exactly() {
    let out = clahe(
        &gray(40, 30, cv::CL16_IN),
        &Clahe {
            clip_limit: 2.0,
            tiles: [4, 4],
        },
    )
    .unwrap();
    assert_eq!(diff(out.data(), cv::CL16_OUT), (0, 0.0));
}

#[test]
fn brightness_contrast_matches_opencv_add_weighted() {
    let img = gray(13, 11, cv::ADJ_IN);
    for ((a, b), want) in [
        (cv::ADJ_A_P, cv::ADJ_A_OUT),
        (cv::ADJ_B_P, cv::ADJ_B_OUT),
        (cv::ADJ_C_P, cv::ADJ_C_OUT),
    ] {
        assert_eq!(
            diff(adjust(&img, a, b).data(), want),
            (0, 0.0),
            "alpha {a} beta {b}"
        );
    }
}

#[test]
fn resize_matches_opencv_on_float_images() {
    let src = gray(37, 23, cv::RS_IN);
    for (name, (w, h), filter, want) in [
        (
            "linear up",
            cv::RS_LIN_UP_SIZE,
            Filter::Bilinear,
            cv::RS_LIN_UP,
        ),
        (
            "linear down",
            cv::RS_LIN_DOWN_SIZE,
            Filter::Bilinear,
            cv::RS_LIN_DOWN,
        ),
        (
            "area, fractional",
            cv::RS_AREA_FRAC_SIZE,
            Filter::Area,
            cv::RS_AREA_FRAC,
        ),
        (
            "area, one axis kept",
            cv::RS_AREA_MIX_SIZE,
            Filter::Area,
            cv::RS_AREA_MIX,
        ),
    ] {
        let out = resize(&src, w, h, filter).unwrap();
        let (n, worst) = diff(out.data(), want);
        assert!(worst < 2e-6, "{name}: {n} differ, worst {worst}");
    }
    let out = resize(&gray(50, 40, cv::RS2_IN), 25, 20, Filter::Area).unwrap();
    let (n, worst) = diff(out.data(), cv::RS_AREA_INT);
    assert!(
        worst < 1e-3,
        "area, integer factor: {n} differ, worst {worst}"
    );
}

#[test]
fn preprocessing_rejects_bad_parameters() {
    let img = gray(4, 4, &[0u8; 16]);
    assert!(
        clahe(
            &img,
            &Clahe {
                clip_limit: -1.0,
                tiles: [2, 2]
            }
        )
        .is_err()
    );
    assert!(
        clahe(
            &img,
            &Clahe {
                clip_limit: f64::NAN,
                tiles: [2, 2]
            }
        )
        .is_err()
    );
    assert!(
        clahe(
            &img,
            &Clahe {
                clip_limit: 2.0,
                tiles: [0, 2]
            }
        )
        .is_err()
    );
    assert!(Gray::new(0, 4, Vec::<u8>::new()).is_err());
    assert!(Gray::new(3, 4, vec![0u8; 11]).is_err());
    assert!(resize(&gray(2, 2, &[0.0f32; 4]), 0, 3, Filter::Bilinear).is_err());
}
