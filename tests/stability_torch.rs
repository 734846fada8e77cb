//! Input gradients, saliency and attacks against PyTorch: tests/fixtures/gen_stability.py builds
//! the network of a cnnkit checkpoint in PyTorch, loads its weights, and stores its input
//! gradients, FGSM and PGD examples on fixed pixels (through the checkpoint's normalisation),
//! the smallest class-changing perturbations of 40 test digits by the same algorithm, and the
//! measurement-domain worst-case search through a masked Fourier transform.

#[path = "fixtures/stability_torch.rs"]
mod fixture;

use cnnkit::Sequential;
use cnnkit::stability::{
    Attack, AttackKind, AttackNorm, MinimalSearch, MinimalSummary, Normalization, Objective,
    Operator, PerturbationSearch, SaliencyMethod, adversarial_examples, minimal_perturbations,
    saliency, worst_case_perturbation,
};
use fixture::*;

fn model() -> Sequential {
    let (mut m, _) = Sequential::load(std::path::Path::new(
        "tests/fixtures/stability_model.safetensors",
    ))
    .unwrap();
    m.eval();
    m
}

fn norm() -> Normalization {
    Normalization::new(vec![MEAN], vec![STD]).unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale.max(1.0),
            "{what}[{i}]: cnnkit {g}, PyTorch {w}"
        );
    }
}

/// The summed cross-entropy's gradient in pixels, and the gradient map of class 2's logit.
#[test]
fn input_gradients_match_pytorch() {
    let mut m = model();
    let n = LABELS.len();
    let mut input = vec![0.0; X.len()];
    norm().to_input(64, X, &mut input);
    let logits = m.forward(&input, n).unwrap().to_vec();
    // d(Σ CE)/dlogits = softmax − one-hot.
    let mut dlogits = vec![0.0f32; logits.len()];
    for ((z, d), &y) in logits.chunks(10).zip(dlogits.chunks_mut(10)).zip(LABELS) {
        let mx = z.iter().fold(f32::MIN, |a, &b| a.max(b));
        let s: f32 = z.iter().map(|v| (v - mx).exp()).sum();
        for (k, (dv, zv)) in d.iter_mut().zip(z).enumerate() {
            *dv = (zv - mx).exp() / s - (k == y as usize) as u32 as f32;
        }
    }
    let mut g = vec![0.0; X.len()];
    m.input_gradient(&input, &dlogits, &mut g, None).unwrap();
    g.iter_mut().for_each(|v| *v /= STD);
    close("loss gradient", &g, LOSS_GRAD, 1e-5);
    for (i, want) in LOGIT2_GRAD.chunks(64).enumerate() {
        let x = &X[i * 64..][..64];
        let s = saliency(&mut m, x, 2, &SaliencyMethod::Gradient, Some(&norm())).unwrap();
        close("logit gradient", &s, want, 1e-5);
    }
}

/// FGSM and PGD (no random start, L∞ and L2) give PyTorch's examples.
#[test]
fn fgsm_and_pgd_match_pytorch() {
    let mut m = model();
    let n = LABELS.len();
    let with_norm = |a: Attack| Attack {
        normalization: Some(norm()),
        random_start: false,
        ..a
    };
    let fgsm = with_norm(Attack::fgsm(AttackNorm::Linf, 0.1));
    let pgd_linf = with_norm(Attack {
        step_size: 0.025,
        ..Attack::pgd(AttackNorm::Linf, 0.1, 5)
    });
    let pgd_l2 = with_norm(Attack {
        step_size: 0.25,
        ..Attack::pgd(AttackNorm::L2, 1.0, 5)
    });
    assert_eq!(pgd_l2.kind, AttackKind::Pgd);
    for (what, a, want) in [
        ("FGSM", fgsm, FGSM),
        ("PGD L∞", pgd_linf, PGD_LINF),
        ("PGD L2", pgd_l2, PGD_L2),
    ] {
        let adv = adversarial_examples(&mut m, X, LABELS, n, &a).unwrap();
        close(what, &adv, want, 1e-5);
        assert_ne!(adv, X, "{what} moved nothing");
    }
}

/// `PgdResult::Last` returns PGD's last iterate: the same examples as a naive L∞ PGD loop
/// written here (sign step, projection onto the ε-box, clipping to the range), while the
/// default keeps each sample's highest-loss iterate, whose loss is never below the last one's.
#[test]
fn pgd_returns_the_last_iterate_when_asked() {
    use cnnkit::kernels::cross_entropy_loss;
    use cnnkit::stability::PgdResult;
    let mut m = model();
    let n = LABELS.len();
    let (eps, alpha, steps) = (0.1f32, 0.04f32, 6);
    let attack = Attack {
        step_size: alpha,
        random_start: false,
        result: PgdResult::Last,
        ..Attack::pgd(AttackNorm::Linf, eps, steps)
    };
    let last = adversarial_examples(&mut m, X, LABELS, n, &attack).unwrap();
    // The naive loop, on the model's own input (no normalisation).
    m.eval();
    let classes = m.output_len();
    let mut adv = X.to_vec();
    for _ in 0..steps {
        let logits = m.forward(&adv, n).unwrap().to_vec();
        let mut d = vec![0.0; logits.len()];
        cross_entropy_loss(classes, &logits, LABELS, 0.0, Some(&mut d)).unwrap();
        let mut g = vec![0.0; adv.len()];
        m.input_gradient(&adv, &d, &mut g, None).unwrap();
        for ((a, &x), &g) in adv.iter_mut().zip(X).zip(&g) {
            let s = if g > 0.0 {
                1.0
            } else if g < 0.0 {
                -1.0
            } else {
                0.0
            };
            *a = (*a + alpha * s).clamp(x - eps, x + eps).clamp(0.0, 1.0);
        }
    }
    close("PGD last iterate", &last, &adv, 1e-6);
    // The default differs where a later step lowered a sample's loss, and is never weaker.
    let best = adversarial_examples(
        &mut m,
        X,
        LABELS,
        n,
        &Attack {
            result: PgdResult::HighestLoss,
            ..attack.clone()
        },
    )
    .unwrap();
    let loss_of = |m: &mut Sequential, x: &[f32]| -> Vec<f32> {
        let logits = m.forward(x, n).unwrap().to_vec();
        (0..n)
            .map(|i| {
                let mut one = vec![0.0; classes];
                cross_entropy_loss(
                    classes,
                    &logits[i * classes..][..classes],
                    &LABELS[i..i + 1],
                    0.0,
                    Some(&mut one),
                )
                .unwrap()
            })
            .collect()
    };
    let (lb, ll) = (loss_of(&mut m, &best), loss_of(&mut m, &last));
    for (b, l) in lb.iter().zip(&ll) {
        assert!(b >= &(l - 1e-6), "highest-loss {b} below last {l}");
    }
}

/// The smallest perturbation that changes each digit's class, by a PyTorch implementation of
/// the same search: image by image within the bisection's last interval, and the same quartiles.
/// (Two float32 programs may take the other side of one bisection step where PGD lands within
/// rounding of the decision boundary; two such images in 40 are allowed, within four intervals.)
#[test]
fn minimal_perturbations_match_pytorch() {
    let mut m = model();
    let n = DIGITS.len() / 64;
    for (norm_kind, max, want) in [
        (AttackNorm::Linf, 1.0f32, MINIMAL_LINF),
        (AttackNorm::L2, 8.0, MINIMAL_L2),
    ] {
        let search = MinimalSearch {
            steps: MINIMAL_STEPS,
            bisections: MINIMAL_BISECTIONS,
            normalization: Some(norm()),
            ..MinimalSearch::new(norm_kind, max)
        };
        let found = minimal_perturbations(&mut m, DIGITS, n, &search, 16, &mut |_, _| {}).unwrap();
        let interval = max / (1u32 << MINIMAL_BISECTIONS) as f32;
        let mut apart = 0;
        for (i, (r, &w)) in found.iter().zip(want).enumerate() {
            let Some(s) = r.size else {
                assert!(
                    w.is_nan(),
                    "{norm_kind:?}, digit {i}: PyTorch changed it at {w}"
                );
                continue;
            };
            assert!(
                !w.is_nan(),
                "{norm_kind:?}, digit {i}: only cnnkit changed it ({s})"
            );
            assert!(s <= max && r.new_class != Some(r.class));
            if (s - w).abs() > interval {
                apart += 1;
                assert!(
                    (s - w).abs() <= 4.0 * interval,
                    "{norm_kind:?}, digit {i}: cnnkit {s}, PyTorch {w}"
                );
            }
        }
        assert!(apart <= 2, "{norm_kind:?}: {apart} digits apart");
        // Almost every digit changes within the whole range; the quartiles agree.
        let ours = MinimalSummary::of(&found);
        assert!(ours.found >= n - 2, "{ours:?}");
        let own: Vec<f32> = DIGITS
            .chunks(64)
            .map(|x| match norm_kind {
                AttackNorm::Linf => x.iter().fold(0.0f32, |a, v| a.max(v.abs())),
                _ => x.iter().map(|v| v * v).sum::<f32>().sqrt(),
            })
            .collect();
        let median = ours.quartiles[1].unwrap();
        let mut rel: Vec<f32> = want
            .iter()
            .zip(&own)
            .map(|(w, o)| if w.is_nan() { f32::INFINITY } else { w / o })
            .collect();
        rel.sort_by(f32::total_cmp);
        let their_median = rel[n.div_ceil(2) - 1];
        assert!(
            (median - their_median).abs() <= 4.0 * interval,
            "{norm_kind:?}: median ‖r‖/‖x‖ {median} vs PyTorch {their_median}"
        );
    }
}

/// The worst-case search through a forward operator (a masked 2-D Fourier transform) on a small
/// reconstruction network, against PyTorch's ascent with `torch.fft` and autograd (whose gradient
/// through the transform checks cnnkit's adjoint): the same perturbation after 30 steps, for
/// the output's change and for the error against the image.
#[test]
fn the_measurement_domain_search_matches_pytorch() {
    use cnnkit::{Tensor, TensorData};
    let mut m = Sequential::from_text([1, 8, 8], "conv(4,3,p=1),tanh,conv(1,3,p=1)", 0).unwrap();
    let t = |shape: Vec<usize>, v: &[f32]| Tensor {
        shape,
        data: TensorData::F32(v.to_vec()),
    };
    m.load_state_dict(&vec![
        ("0.weight".to_string(), t(vec![4, 1, 3, 3], RECON_W1)),
        ("0.bias".to_string(), t(vec![4], RECON_B1)),
        ("2.weight".to_string(), t(vec![1, 4, 3, 3], RECON_W2)),
        ("2.bias".to_string(), t(vec![1], RECON_B2)),
    ])
    .unwrap();
    let x = &DIGITS[..64];
    let op = Operator::Fourier {
        keep: RECON_KEEP.iter().map(|&k| k == 1.0).collect(),
    };
    for (objective, want) in [
        (Objective::OutputChange, RECON_R_OUTPUT),
        (Objective::ErrorToImage, RECON_R_ERROR),
    ] {
        let s = PerturbationSearch {
            lambda: RECON_LAMBDA,
            step: RECON_STEP,
            momentum: RECON_MOMENTUM,
            iterations: RECON_ITERATIONS,
            record_every: RECON_ITERATIONS,
            operator: Some(op.clone()),
            objective,
            start: Some(RECON_START.to_vec()),
            ..PerturbationSearch::default()
        };
        let steps = worst_case_perturbation(&mut m, x, &s).unwrap();
        let r = &steps.last().unwrap().perturbation;
        // What the ascent moved: r − r₀, against PyTorch's.
        let moved = |v: &[f32]| -> Vec<f64> {
            v.iter()
                .zip(RECON_START)
                .map(|(a, b)| (a - b) as f64)
                .collect()
        };
        let (ours, theirs) = (moved(r), moved(want));
        let size = theirs.iter().map(|v| v * v).sum::<f64>().sqrt();
        let apart = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(size > 1e-3, "{objective:?}: the ascent moved only {size}");
        assert!(
            apart <= 1e-3 * size,
            "{objective:?}: cnnkit and PyTorch moved r {apart} apart (of {size})"
        );
    }
}
