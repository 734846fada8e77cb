//! Softmax, log-softmax and the losses: values against the f64 reference, stability at extreme
//! logits, gradients against finite differences.

mod common;

use cnnkit::kernels::{
    Accum, bce_with_logits_loss, cross_entropy_loss, l1_loss, log_softmax_backward,
    log_softmax_forward, mse_loss, softmax_backward, softmax_forward,
};
use cnnkit::reference;
use common::gradcheck::{Tol, check_vjp};
use common::strategies::vals;
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

fn softmax(cols: usize, x: &[f32]) -> Vec<f32> {
    let mut y = nans(x.len());
    softmax_forward(cols, x, &mut y).unwrap();
    y
}

fn log_softmax(cols: usize, x: &[f32]) -> Vec<f32> {
    let mut y = nans(x.len());
    log_softmax_forward(cols, x, &mut y).unwrap();
    y
}

/// Rows × cols with values scaled by up to 10 (so rows have a clear maximum sometimes).
fn rows_case() -> impl Strategy<Value = (usize, Vec<f32>, Vec<f32>)> {
    (1..6usize, 1..20usize, 0.1f32..10.0).prop_flat_map(|(rows, cols, scale)| {
        (
            Just(cols),
            vals(rows * cols).prop_map(move |v| v.iter().map(|x| x * scale).collect::<Vec<f32>>()),
            vals(rows * cols),
        )
    })
}

fn labels_case() -> impl Strategy<Value = (usize, Vec<f32>, Vec<u32>, f32)> {
    // Narrow rows (one row per lane, blocks of 8 rows and a partial block) and wide rows.
    (1..20usize, prop_oneof![1..12usize, 30..40usize]).prop_flat_map(|(rows, classes)| {
        (
            Just(classes),
            vals(rows * classes).prop_map(|v| v.iter().map(|x| x * 4.0).collect::<Vec<f32>>()),
            prop::collection::vec(0..classes as u32, rows),
            prop_oneof![Just(0.0f32), 0.0f32..1.0],
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(128)))]

    #[test]
    fn softmax_forward_matches_reference((cols, x, _) in rows_case()) {
        let (y, ly) = par(|| (softmax(cols, &x), log_softmax(cols, &x)));
        assert_close("softmax", &y, &reference::softmax_forward(cols, &x), 1e-6, 1e-5)?;
        assert_close("log_softmax", &ly, &reference::log_softmax_forward(cols, &x), 2e-6, 1e-5)?;
    }

    #[test]
    fn softmax_backward_matches_finite_differences((cols, x, dy) in rows_case()) {
        par(|| check_vjp(
            &x, &dy,
            |x, y| y.copy_from_slice(&softmax(cols, x)),
            |x, dy, dx| softmax_backward(cols, &softmax(cols, x), dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }

    #[test]
    fn log_softmax_backward_matches_finite_differences((cols, x, dy) in rows_case()) {
        par(|| check_vjp(
            &x, &dy,
            |x, y| y.copy_from_slice(&log_softmax(cols, x)),
            |x, dy, dx| log_softmax_backward(cols, &log_softmax(cols, x), dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }

    #[test]
    fn cross_entropy_matches_reference_and_finite_differences((classes, x, labels, eps) in labels_case()) {
        let mut d = nans(x.len());
        let loss = par(|| cross_entropy_loss(classes, &x, &labels, eps, Some(&mut d)).unwrap());
        let want = reference::cross_entropy_loss(classes, &x, &labels, eps as f64);
        prop_assert!((loss as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "loss {} want {}", loss, want);
        prop_assert_eq!(cross_entropy_loss(classes, &x, &labels, eps, None).unwrap().to_bits(), loss.to_bits());
        par(|| check_vjp(
            &x, &[1.0],
            |x, y| y[0] = cross_entropy_loss(classes, x, &labels, eps, None).unwrap(),
            |x, _, dx| { cross_entropy_loss(classes, x, &labels, eps, Some(dx)).unwrap(); },
            Tol { atol: 1e-4, rtol: 1e-2 },
        ))?;
    }

    #[test]
    fn mse_and_bce_match_reference_and_finite_differences(
        (p, t) in (1..70usize).prop_flat_map(|n| (vals(n).prop_map(|v| v.iter().map(|x| x * 5.0).collect::<Vec<f32>>()), vals(n)))
    ) {
        let t01: Vec<f32> = t.iter().map(|v| (v + 1.0) / 2.0).collect();
        let mut d = nans(p.len());
        let mse = par(|| mse_loss(&p, &t, Some(&mut d)).unwrap());
        let want = reference::mse_loss(&p, &t);
        prop_assert!((mse as f64 - want).abs() <= 1e-5 * (1.0 + want), "mse {} want {}", mse, want);
        let bce = par(|| bce_with_logits_loss(&p, &t01, Some(&mut d)).unwrap());
        let want = reference::bce_with_logits_loss(&p, &t01);
        prop_assert!((bce as f64 - want).abs() <= 1e-5 * (1.0 + want), "bce {} want {}", bce, want);
        // L1 against its definition: mean |p − t|, gradient sign(p − t)/n (0 where equal).
        let l1 = par(|| l1_loss(&p, &t, Some(&mut d)).unwrap());
        let want = p.iter().zip(&t).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / p.len() as f64;
        prop_assert!((l1 as f64 - want).abs() <= 1e-5 * (1.0 + want), "l1 {} want {}", l1, want);
        for ((g, a), b) in d.iter().zip(&p).zip(&t) {
            let s = if a > b { 1.0 } else if a < b { -1.0 } else { 0.0 };
            prop_assert_eq!(*g, s / p.len() as f32);
        }
        let tol = Tol { atol: 1e-4, rtol: 1e-2 };
        par(|| check_vjp(&p, &[1.0], |x, y| y[0] = mse_loss(x, &t, None).unwrap(),
            |x, _, dx| { mse_loss(x, &t, Some(dx)).unwrap(); }, tol))?;
        par(|| check_vjp(&p, &[1.0], |x, y| y[0] = bce_with_logits_loss(x, &t01, None).unwrap(),
            |x, _, dx| { bce_with_logits_loss(x, &t01, Some(dx)).unwrap(); }, tol))?;
    }
}

/// Logits of ±1e4 and rows with −inf entries give finite, exact results; −inf has probability
/// 0 (log-probability −inf). A row that is all −inf or contains +inf has no softmax (NaN, as
/// PyTorch).
#[test]
fn softmax_is_stable_at_extreme_logits() {
    let x = [1e4, -1e4, 0.0, f32::NEG_INFINITY, 1.0, 2.0];
    let y = softmax(3, &x);
    assert_eq!(&y[..3], &[1.0, 0.0, 0.0]);
    assert_eq!(y[3], 0.0);
    assert!((y[4] - 0.268_941_43).abs() < 1e-7 && (y[5] - 0.731_058_6).abs() < 1e-7);
    let ly = log_softmax(3, &x);
    assert_eq!(&ly[..3], &[0.0, -20000.0, -10000.0]);
    assert_eq!(ly[3], f32::NEG_INFINITY);
    assert!((ly[4] + 1.313_261_6).abs() < 1e-6);
    for bad in [
        [f32::NEG_INFINITY; 3],
        [f32::INFINITY, 1.0, 2.0],
        [f32::NAN, 1.0, 2.0],
    ] {
        assert!(softmax(3, &bad).iter().all(|v| v.is_nan()));
        assert!(log_softmax(3, &bad).iter().all(|v| v.is_nan()));
    }
    // Cross-entropy at ±1e4: a confident right answer costs 0, a confident wrong one 2e4.
    let mut d = nans(4);
    let l = cross_entropy_loss(2, &[1e4, -1e4, 1e4, -1e4], &[0, 1], 0.0, Some(&mut d)).unwrap();
    assert_eq!(l, 1e4);
    assert_eq!(d, [0.0, 0.0, 0.5, -0.5]);
    // BCE with logits stays finite for large |x|.
    let l = bce_with_logits_loss(&[100.0, -100.0, 100.0], &[1.0, 0.0, 0.0], None).unwrap();
    assert!((l - 100.0 / 3.0).abs() < 1e-4, "{l}");
}

#[test]
fn softmax_rows_cover_lane_boundaries() {
    for cols in [1, 7, 8, 9, 15, 16, 17, 33] {
        let x: Vec<f32> = values(cols as u64, 3 * cols)
            .iter()
            .map(|v| v * 20.0)
            .collect();
        assert_close(
            "softmax",
            &softmax(cols, &x),
            &reference::softmax_forward(cols, &x),
            1e-6,
            1e-5,
        )
        .unwrap();
        assert_close(
            "log_softmax",
            &log_softmax(cols, &x),
            &reference::log_softmax_forward(cols, &x),
            4e-6,
            1e-5,
        )
        .unwrap();
    }
}

#[test]
fn losses_reject_bad_input() {
    assert!(cross_entropy_loss(3, &[0.0; 6], &[0, 3], 0.0, None).is_err());
    assert!(cross_entropy_loss(3, &[0.0; 6], &[0], 0.0, None).is_err());
    assert!(cross_entropy_loss(3, &[], &[], 0.0, None).is_err());
    assert!(cross_entropy_loss(3, &[0.0; 6], &[0, 1], 1.5, None).is_err());
    assert!(cross_entropy_loss(0, &[], &[], 0.0, None).is_err());
    assert!(mse_loss(&[], &[], None).is_err());
    assert!(l1_loss(&[], &[], None).is_err());
    assert!(l1_loss(&[1.0], &[1.0, 2.0], None).is_err());
    let mut d = [9.0f32; 2];
    assert_eq!(
        l1_loss(&[1.0, 3.0], &[1.0, 2.0], Some(&mut d)).unwrap(),
        0.5
    );
    assert_eq!(d, [0.0, 0.5], "sign(0) = 0, as PyTorch");
    assert!(mse_loss(&[1.0], &[1.0, 2.0], None).is_err());
    assert!(bce_with_logits_loss(&[1.0], &[1.0], Some(&mut [0.0; 2])).is_err());
    assert!(softmax_forward(0, &[], &mut []).is_err());
    assert!(softmax_forward(3, &[0.0; 4], &mut [0.0; 4]).is_err());
}

/// Rows of large logits: equal, near-equal (a few units or a few f32 steps apart) and mixed
/// magnitudes around ±1e4 and 2e4, in narrow (row-per-lane) and wide rows.
fn large_logits_case() -> impl Strategy<Value = (usize, Vec<f32>, Vec<u32>, f32)> {
    (1..12usize, prop_oneof![1..17usize, 33..40usize]).prop_flat_map(|(rows, classes)| {
        let logit = prop_oneof![
            Just(2e4f32),
            Just(1e4f32),
            Just(-1e4f32),
            (-3i32..=3).prop_map(|k| 2e4f32 + k as f32 * 0.001_953_125),
            (-3.0f32..3.0).prop_map(|d| 1e4 + d),
            (-3.0f32..3.0).prop_map(|d| -1e4 + d),
        ];
        (
            Just(classes),
            prop::collection::vec(logit, rows * classes),
            prop::collection::vec(0..classes as u32, rows),
            prop_oneof![Just(0.0f32), Just(0.1f32), 0.0f32..1.0],
        )
    })
}

/// Log-softmax of one row in f64, from the f32 inputs.
fn log_softmax_f64(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let ln_sum = row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|&v| (v as f64 - m) - ln_sum).collect()
}

#[test]
fn log_softmax_of_equal_large_logits_is_minus_ln_cols() {
    // Exactly −ln(cols), whatever the magnitude of the (equal) logits.
    for cols in [8usize, 16, 40] {
        for big in [2e4f32, -1e4, 3e7] {
            let want = -(cols as f32).ln();
            for v in log_softmax(cols, &vec![big; 2 * cols]) {
                assert!(
                    (v - want).abs() <= 2.0 * f32::EPSILON * want.abs(),
                    "{cols} x {big}: {v} vs {want}"
                );
            }
            let mut d = nans(2 * cols);
            let loss =
                cross_entropy_loss(cols, &vec![big; 2 * cols], &[0, 1], 0.0, Some(&mut d)).unwrap();
            assert!(
                (loss + want).abs() <= 2.0 * f32::EPSILON * want.abs(),
                "{cols} x {big}: loss {loss}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    /// With logits of 1e4 an f32 step is ~1e-3: rounding `m + ln Σ` before subtracting (the old
    /// formula) missed by up to that much; `(x − m) − ln Σ` stays within a few ulps of the result.
    #[test]
    fn large_logits_log_softmax_and_cross_entropy_match_f64((classes, x, labels, eps) in large_logits_case()) {
        let rows = labels.len();
        let (ly, sy) = par(|| (log_softmax(classes, &x), softmax(classes, &x)));
        let mut dl = nans(x.len());
        let loss = par(|| cross_entropy_loss(classes, &x, &labels, eps, Some(&mut dl))).unwrap();
        let loss_only = par(|| cross_entropy_loss(classes, &x, &labels, eps, None)).unwrap();
        prop_assert_eq!(loss.to_bits(), loss_only.to_bits());
        let mut want_loss = 0.0f64;
        for r in 0..rows {
            let row = &x[r * classes..][..classes];
            let lp = log_softmax_f64(row);
            let label = labels[r] as usize;
            want_loss += -(1.0 - eps as f64) * lp[label] - eps as f64 * lp.iter().sum::<f64>() / classes as f64;
            for (j, &lpj) in lp.iter().enumerate() {
                let at = r * classes + j;
                let tol = 4.0 * f32::EPSILON as f64 * (1.0 + lpj.abs());
                prop_assert!((ly[at] as f64 - lpj).abs() <= tol,
                    "log_softmax[{}] = {}, f64 {}", at, ly[at], lpj);
                let p = lpj.exp();
                prop_assert!((sy[at] as f64 - p).abs() <= 4.0 * f32::EPSILON as f64 * (p + 1e-30),
                    "softmax[{}] = {}, f64 {}", at, sy[at], p);
                let target = (1.0 - eps as f64) * f64::from(u8::from(j == label)) + eps as f64 / classes as f64;
                let g = (p - target) / rows as f64;
                prop_assert!((dl[at] as f64 - g).abs() <= 8.0 * f32::EPSILON as f64 / rows as f64,
                    "dlogits[{}] = {}, f64 {}", at, dl[at], g);
            }
        }
        want_loss /= rows as f64;
        prop_assert!((loss as f64 - want_loss).abs() <= 1e-5 * (1.0 + want_loss.abs()),
            "loss {} vs f64 {}", loss, want_loss);
    }

    /// The gradient of log-softmax at large logits, against the f64 Jacobian-vector product.
    #[test]
    fn large_logits_log_softmax_backward_matches_f64((classes, x, _labels, _eps) in large_logits_case(), seed in 0u64..1000) {
        let y = log_softmax(classes, &x);
        let dy = values(seed, x.len());
        let mut dx = nans(x.len());
        par(|| log_softmax_backward(classes, &y, &dy, &mut dx, Accum::Replace)).unwrap();
        for (r, row) in x.chunks(classes).enumerate() {
            let lp = log_softmax_f64(row);
            let d = &dy[r * classes..][..classes];
            let s: f64 = d.iter().map(|&v| v as f64).sum();
            for j in 0..classes {
                let want = d[j] as f64 - lp[j].exp() * s;
                let got = dx[r * classes + j] as f64;
                prop_assert!((got - want).abs() <= 1e-5 * (1.0 + s.abs()), "dx {} vs f64 {}", got, want);
            }
        }
    }
}
