//! Batch norm, layer norm and dropout: values against the reference, running statistics against
//! PyTorch's update rule, every gradient against finite differences.

mod common;

use cnnkit::kernels::{
    Accum, RunningStats, batch_norm_backward, batch_norm_backward_scratch_len,
    batch_norm_forward_eval, batch_norm_forward_train, dropout_backward, dropout_forward_train,
    gaussian_noise_forward_train, layer_norm_backward, layer_norm_forward,
    stochastic_depth_backward, stochastic_depth_forward_train,
};
use cnnkit::{Shape4, reference};
use common::gradcheck::{Tol, check_vjp};
use common::strategies::vals;
use common::{assert_close, nans, par};
use proptest::prelude::*;

const EPS: f32 = 1e-5;

fn bn_case() -> impl Strategy<Value = (Shape4, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (1..4usize, 1..4usize, 1..4usize, 1..4usize)
        .prop_filter("need n·h·w >= 2", |(n, _, h, w)| n * h * w >= 2)
        .prop_flat_map(|(n, c, h, w)| {
            let s = Shape4::new(n, c, h, w);
            let len = n * c * h * w;
            (
                Just(s),
                // Offset and scale per case: statistics must not depend on a zero mean.
                (vals(len), -3.0f32..3.0, 0.5f32..3.0)
                    .prop_map(|(v, off, sc)| v.iter().map(|x| x * sc + off).collect::<Vec<f32>>()),
                vals(c),
                vals(c),
                vals(len),
            )
        })
}

fn bn_train(s: Shape4, x: &[f32], g: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut y, mut m, mut i) = (nans(x.len()), nans(s.c), nans(s.c));
    batch_norm_forward_train(s, EPS, x, Some(g), Some(b), &mut y, &mut m, &mut i, None).unwrap();
    (y, m, i)
}

#[allow(clippy::type_complexity)]
fn bn_grads(
    s: Shape4,
    training: bool,
    x: &[f32],
    g: &[f32],
    b: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (_, m, i) = if training {
        bn_train(s, x, g, b)
    } else {
        let (mut y, mut m, mut i) = (nans(x.len()), nans(s.c), nans(s.c));
        let (rm, rv) = running();
        batch_norm_forward_eval(
            s,
            EPS,
            x,
            Some(g),
            Some(b),
            &rm[..s.c],
            &rv[..s.c],
            &mut y,
            &mut m,
            &mut i,
        )
        .unwrap();
        (y, m, i)
    };
    let (mut dx, mut dg, mut db) = (nans(x.len()), nans(s.c), nans(s.c));
    let mut ws = vec![0.0; batch_norm_backward_scratch_len(s)];
    batch_norm_backward(
        s,
        training,
        x,
        Some(g),
        &m,
        &i,
        dy,
        &mut dx,
        Some(&mut dg),
        Some(&mut db),
        Accum::Replace,
        &mut ws,
    )
    .unwrap();
    (dx, dg, db)
}

/// Fixed running statistics for evaluation-mode checks.
fn running() -> (Vec<f32>, Vec<f32>) {
    (
        (0..8).map(|c| c as f32 * 0.3 - 1.0).collect(),
        (0..8).map(|c| 0.5 + c as f32 * 0.25).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(128)))]

    #[test]
    fn batch_norm_forward_and_running_stats_match_reference((s, x, g, b, _) in bn_case(), momentum in 0.0f32..1.0) {
        let (mut rm, mut rv) = (vec![0.25; s.c], vec![2.0; s.c]);
        let (mut y, mut m, mut i) = (nans(x.len()), nans(s.c), nans(s.c));
        par(|| batch_norm_forward_train(s, EPS, &x, Some(&g), Some(&b), &mut y, &mut m, &mut i,
            Some(RunningStats { mean: &mut rm, var: &mut rv, factor: momentum })).unwrap());
        let (rmean, rvar) = reference::channel_stats(s, &x);
        let want = reference::batch_norm_apply(s, &x, &rmean, &rvar, EPS as f64, Some(&g), Some(&b));
        assert_close("y", &y, &want, 5e-5, 1e-4)?;
        let count = (s.n * s.h * s.w) as f64;
        for c in 0..s.c {
            // PyTorch: running = (1 − momentum)·running + momentum·stat, unbiased variance.
            let wm = (1.0 - momentum as f64) * 0.25 + momentum as f64 * rmean[c];
            let wv = (1.0 - momentum as f64) * 2.0 + momentum as f64 * rvar[c] * count / (count - 1.0);
            prop_assert!((rm[c] as f64 - wm).abs() < 1e-5, "running mean {} want {}", rm[c], wm);
            prop_assert!((rv[c] as f64 - wv).abs() < 1e-4 * (1.0 + wv), "running var {} want {}", rv[c], wv);
        }
        // Evaluation mode normalises with the running statistics.
        let mut ye = nans(x.len());
        batch_norm_forward_eval(s, EPS, &x, Some(&g), Some(&b), &rm, &rv, &mut ye, &mut m, &mut i).unwrap();
        let (em, ev): (Vec<f64>, Vec<f64>) = (rm.iter().map(|&v| v as f64).collect(), rv.iter().map(|&v| v as f64).collect());
        assert_close("eval y", &ye, &reference::batch_norm_apply(s, &x, &em, &ev, EPS as f64, Some(&g), Some(&b)), 5e-5, 1e-4)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    #[test]
    fn batch_norm_backward_matches_finite_differences((s, x, g, b, dy) in bn_case(), training in any::<bool>()) {
        prop_assume!(s.c <= 8);
        // As for layer norm: every channel's standard deviation above 0.2.
        let (_, var) = reference::channel_stats(s, &x);
        prop_assume!(var.iter().all(|v| v.sqrt() > 0.2));
        let eval_y = |x: &[f32], g: &[f32], b: &[f32], y: &mut [f32]| {
            if training {
                y.copy_from_slice(&bn_train(s, x, g, b).0);
            } else {
                let (rm, rv) = running();
                let (mut m, mut i) = (nans(s.c), nans(s.c));
                batch_norm_forward_eval(s, EPS, x, Some(g), Some(b), &rm[..s.c], &rv[..s.c], y, &mut m, &mut i).unwrap();
            }
        };
        let tol = Tol { atol: 5e-3, rtol: 2e-2 };
        par(|| check_vjp(&x, &dy, |x, y| eval_y(x, &g, &b, y), |x, dy, dx| dx.copy_from_slice(&bn_grads(s, training, x, &g, &b, dy).0), tol))?;
        par(|| check_vjp(&g, &dy, |g, y| eval_y(&x, g, &b, y), |g, dy, dg| dg.copy_from_slice(&bn_grads(s, training, &x, g, &b, dy).1), tol))?;
        par(|| check_vjp(&b, &dy, |b, y| eval_y(&x, &g, b, y), |b, dy, db| db.copy_from_slice(&bn_grads(s, training, &x, &g, b, dy).2), tol))?;
    }

    #[test]
    fn layer_norm_matches_reference_and_finite_differences(
        (d, x, g, b, dy) in (1..4usize, 2..12usize).prop_flat_map(|(rows, d)| {
            (Just(d), vals(rows * d).prop_map(|v| v.iter().map(|x| x * 2.0 + 0.5).collect::<Vec<f32>>()), vals(d), vals(d), vals(rows * d))
        }),
        affine in any::<bool>(),
    ) {
        let rows = x.len() / d;
        // Finite differences of a normalisation are only accurate when the spread of a row is
        // large against h: keep every row's standard deviation above 0.2.
        prop_assume!(x.chunks(d).all(|r| {
            let m = r.iter().sum::<f32>() / d as f32;
            (r.iter().map(|v| (v - m).powi(2)).sum::<f32>() / d as f32).sqrt() > 0.2
        }));
        let (gm, bt) = if affine { (Some(&g[..]), Some(&b[..])) } else { (None, None) };
        let fwd = |x: &[f32], gm: Option<&[f32]>, bt: Option<&[f32]>, y: &mut [f32]| {
            layer_norm_forward(d, EPS, x, gm, bt, y, &mut nans(rows), &mut nans(rows)).unwrap()
        };
        let mut y = nans(x.len());
        par(|| fwd(&x, gm, bt, &mut y));
        assert_close("y", &y, &reference::layer_norm_forward(d, EPS as f64, &x, gm, bt), 5e-5, 1e-4)?;
        let grads = |x: &[f32], g: &[f32], dy: &[f32]| {
            let gm = affine.then_some(g);
            let (mut m, mut i) = (nans(rows), nans(rows));
            layer_norm_forward(d, EPS, x, gm, bt, &mut nans(x.len()), &mut m, &mut i).unwrap();
            let (mut dx, mut dg, mut db) = (nans(x.len()), nans(d), nans(d));
            layer_norm_backward(d, x, gm, &m, &i, dy, &mut dx, Some(&mut dg), Some(&mut db), Accum::Replace).unwrap();
            (dx, dg, db)
        };
        let tol = Tol { atol: 5e-3, rtol: 2e-2 };
        par(|| check_vjp(&x, &dy, |x, y| fwd(x, gm, bt, y), |x, dy, dx| dx.copy_from_slice(&grads(x, &g, dy).0), tol))?;
        if affine {
            par(|| check_vjp(&g, &dy, |g, y| fwd(&x, Some(g), bt, y), |g, dy, dg| dg.copy_from_slice(&grads(&x, g, dy).1), tol))?;
            par(|| check_vjp(&b, &dy, |b, y| fwd(&x, gm, Some(b), y), |_, dy, db| db.copy_from_slice(&grads(&x, &g, dy).2), tol))?;
        }
    }

    #[test]
    fn dropout_backward_matches_finite_differences(
        (x, dy) in (1..50usize).prop_flat_map(|n| (vals(n), vals(n))),
        p in 0.0f32..0.9,
        seed in any::<u64>(),
    ) {
        let mut mask = nans(x.len());
        dropout_forward_train(p, seed, &x, &mut nans(x.len()), &mut mask).unwrap();
        par(|| check_vjp(
            &x, &dy,
            |x, y| dropout_forward_train(p, seed, x, y, &mut nans(x.len())).unwrap(),
            |_, dy, dx| dropout_backward(&mask, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }
}

/// Dropout keeps each element with probability 1 − p and scales it by 1/(1 − p), so the mean is
/// preserved; p = 0 is the identity, p = 1 zeroes everything.
#[test]
fn dropout_rate_scale_and_edges() {
    let n = 200_000;
    let x = vec![1.0f32; n];
    let (mut y, mut mask) = (nans(n), nans(n));
    par(|| dropout_forward_train(0.3, 5, &x, &mut y, &mut mask).unwrap());
    let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
    // sd of the kept fraction: sqrt(0.3·0.7/2e5) ≈ 1e-3; allow 6 sd.
    assert!((kept - 0.7).abs() < 6e-3, "kept {kept}");
    assert!(
        mask.iter()
            .all(|&m| m == 0.0 || (m - 1.0 / 0.7).abs() < 1e-6)
    );
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    assert!((mean - 1.0).abs() < 1e-2);
    dropout_forward_train(0.0, 5, &x, &mut y, &mut mask).unwrap();
    assert!(y.iter().all(|&v| v == 1.0));
    dropout_forward_train(1.0, 5, &x, &mut y, &mut mask).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    assert!(dropout_forward_train(1.5, 5, &x, &mut y, &mut mask).is_err());
    // Same seed, same mask, whatever the thread count.
    let mut m1 = nans(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| dropout_forward_train(0.3, 5, &x, &mut y, &mut m1).unwrap());
    let mut m2 = nans(n);
    par(|| dropout_forward_train(0.3, 5, &x, &mut y, &mut m2).unwrap());
    assert_eq!(m1, m2);
}

/// Stochastic depth drops whole samples with probability p and scales the others by 1/(1 − p)
/// (torchvision's `mode="row"`); p = 0 is the identity, p = 1 zeroes everything; the backward
/// pass is the mask times `dy` (finite differences), with accumulation; the mask depends on the
/// seed alone.
#[test]
fn stochastic_depth_drops_whole_samples() {
    let (n, item) = (20_000, 3);
    let x: Vec<f32> = (0..n * item).map(|i| 1.0 + (i % 7) as f32).collect();
    let (mut y, mut mask) = (nans(x.len()), nans(n));
    par(|| stochastic_depth_forward_train(0.25, 9, n, &x, &mut y, &mut mask).unwrap());
    let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
    // sd of the kept fraction: sqrt(0.25·0.75/2e4) ≈ 3e-3; allow 6 sd.
    assert!((kept - 0.75).abs() < 2e-2, "kept {kept}");
    for s in 0..n {
        let m = mask[s];
        assert!(m == 0.0 || (m - 1.0 / 0.75).abs() < 1e-6);
        for i in 0..item {
            assert_eq!(y[s * item + i], x[s * item + i] * m);
        }
    }
    let mut m1 = nans(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| stochastic_depth_forward_train(0.25, 9, n, &x, &mut y, &mut m1).unwrap());
    assert_eq!(m1, mask);
    stochastic_depth_forward_train(0.0, 9, n, &x, &mut y, &mut mask).unwrap();
    assert_eq!(y, x);
    stochastic_depth_forward_train(1.0, 9, n, &x, &mut y, &mut mask).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    assert!(stochastic_depth_forward_train(-0.1, 9, n, &x, &mut y, &mut mask).is_err());
    assert!(stochastic_depth_forward_train(0.5, 9, n + 1, &x, &mut y, &mut nans(n + 1)).is_err());

    let (n, item) = (6, 4);
    let x = common::values(3, n * item);
    let dy = common::values(4, n * item);
    let mut mask = nans(n);
    stochastic_depth_forward_train(0.5, 2, n, &x, &mut nans(x.len()), &mut mask).unwrap();
    assert!(mask.contains(&0.0) && mask.iter().any(|&m| m != 0.0));
    check_vjp(
        &x,
        &dy,
        |x, y| stochastic_depth_forward_train(0.5, 2, n, x, y, &mut nans(n)).unwrap(),
        |_, dy, dx| stochastic_depth_backward(&mask, dy, dx, Accum::Replace).unwrap(),
        Tol::DEFAULT,
    )
    .unwrap();
    let old = common::values(5, n * item);
    let mut dx = old.clone();
    stochastic_depth_backward(&mask, &dy, &mut dx, Accum::Add).unwrap();
    for i in 0..dx.len() {
        assert_eq!(dx[i], old[i] + dy[i] * mask[i / item]);
    }
}

#[test]
fn batch_norm_rejects_a_single_value_per_channel() {
    let s = Shape4::new(1, 2, 1, 1);
    let e = batch_norm_forward_train(
        s,
        EPS,
        &[1.0, 2.0],
        None,
        None,
        &mut [0.0; 2],
        &mut [0.0; 2],
        &mut [0.0; 2],
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("more than 1 value per channel"),
        "{e}"
    );
}

/// Gaussian noise: `y − x` has mean 0 and standard deviation σ (checked to 6 standard errors over
/// 200 000 draws, and its fourth moment is a normal's 3σ⁴), the same bits for any thread count,
/// σ = 0 is the identity, and a negative or NaN σ is an error.
#[test]
fn gaussian_noise_is_centred_with_the_given_spread_and_thread_independent() {
    let n = 200_000;
    let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = nans(n);
    let sigma = 0.5f64;
    par(|| gaussian_noise_forward_train(sigma as f32, 9, &x, &mut y).unwrap());
    let z: Vec<f64> = y
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b) as f64 / sigma)
        .collect();
    let mean = z.iter().sum::<f64>() / n as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    let m4 = z.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n as f64;
    // Standard errors: mean 1/sqrt(n) ≈ 2.2e-3, variance sqrt(2/n) ≈ 3.2e-3, m4 sqrt(96/n) ≈ 0.022.
    assert!(mean.abs() < 6.0 * 2.3e-3, "mean {mean}");
    assert!((var - 1.0).abs() < 6.0 * 3.2e-3, "variance {var}");
    assert!((m4 - 3.0).abs() < 6.0 * 0.022, "fourth moment {m4}");
    let mut y1 = nans(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| gaussian_noise_forward_train(sigma as f32, 9, &x, &mut y1).unwrap());
    assert_eq!(y1, y);
    let mut y2 = nans(n);
    gaussian_noise_forward_train(sigma as f32, 10, &x, &mut y2).unwrap();
    assert_ne!(y2, y, "another seed gives other noise");
    gaussian_noise_forward_train(0.0, 9, &x, &mut y).unwrap();
    assert_eq!(y, x);
    for bad in [-0.1f32, f32::NAN, f32::INFINITY] {
        let e = gaussian_noise_forward_train(bad, 9, &x, &mut y).unwrap_err();
        assert!(e.to_string().contains("std"), "{e}");
    }
    assert!(gaussian_noise_forward_train(0.1, 9, &x, &mut y[..5]).is_err());
}

/// An input gradient of more than 16 MiB is written with stores that bypass the cache (planes
/// whose start is 16-byte aligned; an odd plane size mixes both kinds): the same values as the
/// gradient accumulated onto zeros, which takes the ordinary stores, on one thread and on the
/// test pool; and the values of the reference formula.
#[test]
fn a_large_batch_norm_gradient_written_past_the_cache_has_the_same_values() {
    let s = Shape4::new(3, 7, 433, 467);
    let len = s.n * s.c * s.h * s.w;
    assert!(len * 4 > 16 << 20);
    let val =
        |seed: u64, i: usize| ((i as u64 * 2654435761 + seed * 97) % 2001) as f32 / 1000.0 - 1.0;
    let x: Vec<f32> = (0..len).map(|i| val(1, i) * 3.0 + 0.5).collect();
    let dy: Vec<f32> = (0..len).map(|i| val(2, i)).collect();
    let (g, b): (Vec<f32>, Vec<f32>) = (0..s.c).map(|c| (0.5 + c as f32, c as f32)).unzip();
    let (_, m, inv) = bn_train(s, &x, &g, &b);
    let mut ws = vec![0.0; batch_norm_backward_scratch_len(s)];
    let mut run = |dx: &mut [f32], accum| {
        batch_norm_backward(
            s,
            true,
            &x,
            Some(&g),
            &m,
            &inv,
            &dy,
            dx,
            None,
            None,
            accum,
            &mut ws,
        )
        .unwrap()
    };
    let mut streamed = nans(len);
    run(&mut streamed, Accum::Replace);
    let mut added = vec![0.0; len];
    run(&mut added, Accum::Add);
    assert!(streamed.iter().zip(&added).all(|(a, b)| a == b), "1 thread");
    let mut pooled = nans(len);
    par(|| run(&mut pooled, Accum::Replace));
    assert!(streamed.iter().zip(&pooled).all(|(a, b)| a == b), "pool");
    // One channel against the formula, in f64.
    let (plane, ch) = (s.h * s.w, 3);
    let at = |i: usize, k: usize| (i * s.c + ch) * plane + k;
    let count = (s.n * plane) as f64;
    let (mut sd, mut sdx) = (0.0f64, 0.0f64);
    for i in 0..s.n {
        for k in 0..plane {
            sd += dy[at(i, k)] as f64;
            sdx += dy[at(i, k)] as f64 * (x[at(i, k)] as f64 - m[ch] as f64);
        }
    }
    let inv64 = inv[ch] as f64;
    for i in 0..s.n {
        for k in (0..plane).step_by(97) {
            let xh = (x[at(i, k)] as f64 - m[ch] as f64) * inv64;
            let want = g[ch] as f64
                * inv64
                * (dy[at(i, k)] as f64 - sd / count - xh * sdx * inv64 / count);
            let got = streamed[at(i, k)] as f64;
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
        }
    }
}
