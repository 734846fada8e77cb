//! Class imbalance and model selection against PyTorch: weighted cross-entropy (with label
//! smoothing), ReduceLROnPlateau, balanced sampling and class weights
//! (`tests/fixtures/gen_training_options.py`); keeping the best epoch, early stopping and
//! resuming them.

#[path = "fixtures/training_options_torch.rs"]
mod torch;

use cnnkit::data::{self, Batches};
use cnnkit::kernels::weighted_cross_entropy_loss;
use cnnkit::metrics::{OperatingPoint, decision_threshold, rates_at};
use cnnkit::optim::{LrSchedule, PlateauState, ThresholdMode};
use cnnkit::{Control, Event, LayerSpec, Monitor, Sampler, Sequential, TrainConfig, Trainer};

#[test]
fn weighted_cross_entropy_matches_pytorch() {
    for (k, c) in torch::CE.iter().enumerate() {
        let mut d = vec![f32::NAN; c.logits.len()];
        let l = weighted_cross_entropy_loss(
            c.classes,
            c.logits,
            c.labels,
            c.weights,
            c.eps,
            Some(&mut d),
        )
        .unwrap();
        assert!(
            (l - c.loss).abs() <= 1e-6 * (1.0 + c.loss.abs()),
            "case {k}: loss {l} vs PyTorch {}",
            c.loss
        );
        for (i, (a, b)) in d.iter().zip(c.grad).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "case {k}: grad[{i}] {a} vs PyTorch {b}"
            );
        }
    }
    // Equal weights are the unweighted loss.
    let c = &torch::CE[5];
    let plain =
        cnnkit::kernels::cross_entropy_loss(c.classes, c.logits, c.labels, c.eps, None).unwrap();
    assert!((plain - c.loss).abs() < 1e-6);
}

#[test]
fn weighted_cross_entropy_refuses_bad_weights() {
    let x = [0.0f32, 1.0, 2.0, 3.0];
    for (w, needle) in [
        (&[1.0f32][..], "weights"),
        (&[1.0, -1.0][..], "non-negative"),
        (&[1.0, f32::NAN][..], "finite"),
    ] {
        let e = weighted_cross_entropy_loss(2, &x, &[0, 1], w, 0.0, None).unwrap_err();
        assert!(e.to_string().contains(needle), "{w:?}: {e}");
    }
    // All labels of weight 0: NaN, as PyTorch.
    assert!(
        weighted_cross_entropy_loss(2, &x, &[1, 1], &[1.0, 0.0], 0.0, None)
            .unwrap()
            .is_nan()
    );
}

#[test]
fn plateau_schedule_follows_pytorch() {
    for (k, c) in torch::PLATEAU.iter().enumerate() {
        let sched = LrSchedule::Plateau {
            factor: c.factor,
            patience: c.patience,
            threshold: c.threshold,
            cooldown: c.cooldown,
            min_lr: c.min_lr,
            threshold_mode: ThresholdMode::Rel,
            eps: 1e-8,
        };
        let mut st = PlateauState::new(c.mode_max);
        let mut lr = c.lr0;
        for (e, (&m, &want)) in c.metrics.iter().zip(c.lrs).enumerate() {
            lr = st.step(&sched, m, lr);
            assert!(
                (lr - want).abs() <= 1e-6 * want,
                "case {k}, epoch {e}: lr {lr} vs PyTorch {want}"
            );
        }
    }
    let s: LrSchedule = "plateau".parse().unwrap();
    assert_eq!(
        s,
        LrSchedule::Plateau {
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            threshold_mode: ThresholdMode::Rel,
            eps: 1e-8,
        }
    );
    assert_eq!(s.to_string().parse::<LrSchedule>().unwrap(), s);
    for bad in [
        "plateau:1.5",
        "plateau:0.1:x",
        "plateau:0.1:2:-1",
        "plateau:0.1:2:0.1:0:0:sideways",
        "plateau:0.1:2:0.1:0:0:abs:-1",
    ] {
        assert!(bad.parse::<LrSchedule>().is_err(), "{bad}");
    }
}

#[test]
fn balanced_weights_and_sampler_match_pytorch() {
    let w = data::balanced_class_weights(torch::SAMPLER_LABELS, 3);
    for (a, b) in w.iter().zip(torch::BALANCED_WEIGHTS) {
        assert!((a - b).abs() < 1e-6, "{w:?}");
    }
    // Per-sample weights 1/count: each class drawn with PyTorch's probability (1/3 each).
    let labels = torch::SAMPLER_LABELS;
    let mut count = [0usize; 3];
    labels.iter().for_each(|&l| count[l as usize] += 1);
    let sw: Vec<f64> = labels
        .iter()
        .map(|&l| 1.0 / count[l as usize] as f64)
        .collect();
    let mut b = Batches::weighted(&sw, 8, 1).unwrap();
    let mut drawn = [0usize; 3];
    let mut items = vec![0usize; labels.len()];
    let epochs = 400;
    for _ in 0..epochs {
        for batch in b.epoch() {
            for &i in batch {
                drawn[labels[i] as usize] += 1;
                items[i] += 1;
            }
        }
    }
    let n = (epochs * labels.len()) as f64;
    for (c, &p) in torch::SAMPLER_CLASS_P.iter().enumerate() {
        // Five binomial standard deviations.
        let sd = (n * p * (1.0 - p)).sqrt();
        assert!(
            (drawn[c] as f64 - n * p).abs() <= 5.0 * sd,
            "class {c}: {} draws, expected {}",
            drawn[c],
            n * p
        );
    }
    // Within a class, every sample is drawn (uniformly).
    assert!(items.iter().all(|&k| k > 0));
    assert!(Batches::weighted(&[0.0, 0.0], 2, 0).is_err());
    assert!(Batches::weighted(&[1.0, -1.0], 2, 0).is_err());
}

/// Runs `a.fit` on `ds` until `steps` steps are done, saves it, loads it and lets the loaded
/// trainer finish the run: the trainer a resumed run ends with.
fn stop_save_load_finish(tag: &str, mut a: Trainer, ds: &data::Dataset, steps: usize) -> Trainer {
    let dir = std::env::temp_dir().join(format!("cnnkit-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.safetensors");
    let mut done = 0;
    a.fit(ds, None, &mut |e| {
        if let Event::Step { .. } = e {
            done += 1;
        }
        if done == steps {
            Control::Stop
        } else {
            Control::Continue
        }
    })
    .unwrap();
    a.save(&path, &Default::default()).unwrap();
    let (mut b, _) = Trainer::load(&path).unwrap();
    b.fit(ds, None, &mut |_| Control::Continue).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    b
}

fn digits_model(seed: u64) -> Sequential {
    let specs = LayerSpec::parse_list("conv(4,3,p=1),relu,maxpool(2),flatten,dense(10)").unwrap();
    Sequential::new([1, 8, 8], &specs, seed).unwrap()
}

#[test]
fn balanced_sampler_draws_classes_evenly_and_resumes_exactly() {
    let (train, _) = data::digits().unwrap();
    // A 1:4 imbalanced set: class 1 keeps a quarter of its images.
    let mut idx = Vec::new();
    let mut seen1 = 0;
    for (i, &l) in train.labels().iter().enumerate() {
        if l == 1 {
            seen1 += 1;
            if seen1 % 4 != 0 {
                continue;
            }
        }
        idx.push(i);
    }
    let ds = train.subset(&idx);
    let cfg = TrainConfig {
        epochs: 2,
        sampler: Sampler::Balanced,
        ..Default::default()
    };
    let mut t = Trainer::new(digits_model(0), "adam".parse().unwrap(), cfg.clone()).unwrap();
    t.fit(&ds, None, &mut |_| Control::Continue).unwrap();
    // Stopped after 7 steps, saved, loaded, continued: the same weights.
    let b = stop_save_load_finish(
        "sampler",
        Trainer::new(digits_model(0), "adam".parse().unwrap(), cfg).unwrap(),
        &ds,
        7,
    );
    assert_eq!(b.config().sampler, Sampler::Balanced);
    assert_eq!(b.model().params(), t.model().params());
}

#[test]
fn keep_best_restores_the_best_epoch_and_early_stopping_stops() {
    let (train, test) = data::digits().unwrap();
    // A learning rate that makes the validation loss jump about.
    let cfg = TrainConfig {
        epochs: 12,
        monitor: Monitor::Accuracy,
        keep_best: true,
        early_stopping: Some(3),
        ..Default::default()
    };
    let mut t = Trainer::new(digits_model(1), "sgd(lr=0.5)".parse().unwrap(), cfg).unwrap();
    t.fit(&train, Some(&test), &mut |_| Control::Continue)
        .unwrap();
    let accs: Vec<f64> = t
        .history()
        .iter()
        .map(|r| r.val.as_ref().unwrap().accuracy)
        .collect();
    let (best_epoch, best) = t.best().unwrap();
    // The best is the first maximum of the validation accuracies.
    let max = accs.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(best, max);
    assert_eq!(best_epoch, 1 + accs.iter().position(|&a| a == max).unwrap());
    // Early stopping: stopped exactly `patience` epochs after the best, or ran to the end.
    if t.stopped_early() {
        assert_eq!(accs.len(), best_epoch + 3, "{accs:?}");
        assert!(t.finished());
    } else {
        assert_eq!(accs.len(), 12);
    }
    // Restoring gives the model of that epoch: its accuracy again.
    assert_eq!(t.restore_best().unwrap(), Some(best_epoch));
    let m = cnnkit::evaluate(t.model_mut(), &test, 256).unwrap();
    assert_eq!(m.accuracy, best);
}

#[test]
fn model_selection_state_survives_a_resume() {
    let (train, test) = data::digits().unwrap();
    let cfg = TrainConfig {
        epochs: 5,
        keep_best: true,
        schedule: "plateau:0.5:0".parse().unwrap(),
        ..Default::default()
    };
    let opt = "sgd(lr=0.3)";
    let mut whole = Trainer::new(digits_model(2), opt.parse().unwrap(), cfg.clone()).unwrap();
    whole
        .fit(&train, Some(&test), &mut |_| Control::Continue)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("cnnkit-select-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.safetensors");
    let mut a = Trainer::new(digits_model(2), opt.parse().unwrap(), cfg).unwrap();
    a.fit(&train, Some(&test), &mut |e| match e {
        Event::Epoch(r) if r.epoch == 3 => Control::Stop,
        _ => Control::Continue,
    })
    .unwrap();
    a.save(&path, &Default::default()).unwrap();
    let (mut b, _) = Trainer::load(&path).unwrap();
    b.fit(&train, Some(&test), &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(b.best(), whole.best());
    assert_eq!(b.model().params(), whole.model().params());
    let lrs = |t: &Trainer| t.history().iter().map(|r| r.lr).collect::<Vec<_>>();
    assert_eq!(lrs(&b), lrs(&whole));
    b.restore_best().unwrap();
    whole.restore_best().unwrap();
    assert_eq!(b.model().params(), whole.model().params());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn monitors_that_need_validation_data_say_so() {
    let (train, _) = data::digits().unwrap();
    for monitor in [Monitor::Auc, Monitor::SensitivityAt(0.9)] {
        let cfg = TrainConfig {
            epochs: 1,
            monitor,
            keep_best: true,
            ..Default::default()
        };
        let mut t = Trainer::new(digits_model(0), "adam".parse().unwrap(), cfg).unwrap();
        let e = t.fit(&train, None, &mut |_| Control::Continue).unwrap_err();
        assert!(e.to_string().contains("validation set"), "{e}");
    }
    for bad in ["sens@1.5", "f1", "sens@"] {
        assert!(bad.parse::<Monitor>().is_err(), "{bad}");
    }
    assert_eq!(
        "sens@0.9".parse::<Monitor>().unwrap(),
        Monitor::SensitivityAt(0.9)
    );
    let cfg = TrainConfig {
        class_weights: Some(vec![1.0; 3]),
        ..Default::default()
    };
    let e = Trainer::new(digits_model(0), "adam".parse().unwrap(), cfg).unwrap_err();
    assert!(e.to_string().contains("one finite"), "{e}");
}

fn augmented_cfg() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        augment: Some(
            "flip,rotate=10,crop=0.8,translate=0.1,brightness=0.2,contrast=0.2,noise=0.02"
                .parse()
                .unwrap(),
        ),
        ..Default::default()
    }
}

fn fit_in_pool(threads: usize, cfg: TrainConfig) -> Vec<f32> {
    let (train, _) = data::digits().unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut t = Trainer::new(digits_model(4), "adam".parse().unwrap(), cfg).unwrap();
        t.fit(&train, None, &mut |_| Control::Continue).unwrap();
        t.model().params().to_vec()
    })
}

#[test]
fn augmented_training_is_the_same_for_any_thread_count_and_after_a_resume() {
    let one = fit_in_pool(1, augmented_cfg());
    assert_eq!(one, fit_in_pool(2, augmented_cfg()));
    // Augmentation changes what is trained on.
    let plain = fit_in_pool(
        1,
        TrainConfig {
            augment: None,
            ..augmented_cfg()
        },
    );
    assert_ne!(one, plain);
    // Stopped mid-epoch, saved, loaded, continued: the same weights.
    let (train, _) = data::digits().unwrap();
    let a = Trainer::new(digits_model(4), "adam".parse().unwrap(), augmented_cfg()).unwrap();
    let b = stop_save_load_finish("augment", a, &train, 60);
    assert_eq!(b.config().augment, augmented_cfg().augment);
    assert_eq!(b.model().params(), &one[..]);
}

/// An independent brute force for the decision threshold: every rule `score ≥ t` with `t` a
/// score of the data or +∞, its rates counted directly; the best other rate among those that reach
/// the target.
fn brute_force_best(labels: &[u32], scores: &[f32], target: OperatingPoint) -> Option<f64> {
    let mut cuts: Vec<f32> = scores.to_vec();
    cuts.push(f32::INFINITY);
    let mut best: Option<f64> = None;
    for &t in &cuts {
        let count = |class: u32, positive: bool| {
            let all = labels.iter().filter(|&&l| l == class).count();
            let hit = labels
                .iter()
                .zip(scores)
                .filter(|(l, s)| **l == class && (**s >= t) == positive)
                .count();
            hit as f64 / all as f64
        };
        let (sens, spec) = (count(1, true), count(0, false));
        let (ok, other) = match target {
            OperatingPoint::Sensitivity(s) => (sens >= s, spec),
            OperatingPoint::Specificity(s) => (spec >= s, sens),
            other => panic!("no brute force for {other:?}"),
        };
        if ok && best.is_none_or(|b| other > b) {
            best = Some(other);
        }
    }
    best
}

proptest::proptest! {
    #[test]
    fn decision_threshold_reaches_its_target_with_the_best_other_rate(
        data in proptest::collection::vec((0u32..2, 0u8..12), 2..40),
        target in 0.0f64..=1.0,
        by_sensitivity: bool,
    ) {
        // Scores on a coarse grid, so that ties between the classes occur.
        let labels: Vec<u32> = data.iter().map(|d| d.0).collect();
        let scores: Vec<f32> = data.iter().map(|d| f32::from(d.1) / 11.0).collect();
        let target = if by_sensitivity {
            OperatingPoint::Sensitivity(target)
        } else {
            OperatingPoint::Specificity(target)
        };
        let found = decision_threshold(&labels, &scores, target);
        let both = labels.contains(&0) && labels.contains(&1);
        proptest::prop_assert_eq!(found.is_some(), both);
        let Some(t) = found else { return Ok(()) };
        // The reported rates are those of the rule, counted afresh.
        let r = rates_at(&labels, &scores, t.threshold).unwrap();
        proptest::prop_assert_eq!((r.sensitivity, r.specificity), (t.sensitivity, t.specificity));
        let (reached, other) = match target {
            OperatingPoint::Sensitivity(s) => (t.sensitivity >= s, t.specificity),
            OperatingPoint::Specificity(s) => (t.specificity >= s, t.sensitivity),
            other => panic!("not generated: {other:?}"),
        };
        proptest::prop_assert!(reached);
        proptest::prop_assert_eq!(Some(other), brute_force_best(&labels, &scores, target));
        // Between two samples' scores it sits halfway, never on one (when every sample is
        // positive it is at most the lowest score).
        let lowest = scores.iter().copied().fold(f32::INFINITY, f32::min);
        proptest::prop_assert!(
            t.threshold <= lowest || scores.iter().all(|&s| s != t.threshold)
        );
    }
}

#[test]
fn rates_at_a_threshold_need_both_classes() {
    assert_eq!(rates_at(&[1, 1], &[0.2, 0.8], 0.5), None);
    assert_eq!(rates_at(&[0, 1, 2], &[0.2, f32::NAN, 0.9], 0.5), None);
    let r = rates_at(&[0, 1, 0, 1, 7], &[0.7, 0.7, 0.1, 0.3, 0.9], 0.7).unwrap();
    assert_eq!((r.sensitivity, r.specificity), (0.5, 0.5));
}

/// PyTorch's `threshold_mode='abs'` and `eps`, against its documented rules worked by hand:
/// an improvement is `metric < best − threshold` (`> best + threshold` when maximising), and a
/// reduction smaller than `eps` is not made.
#[test]
fn plateau_schedule_takes_an_absolute_threshold_and_eps() {
    let s: LrSchedule = "plateau:0.5:0:0.5:0:0:abs".parse().unwrap();
    assert_eq!(s.to_string().parse::<LrSchedule>().unwrap(), s);
    // Minimising with patience 0: each epoch that is not 0.5 below the best halves the rate.
    let mut st = PlateauState::new(false);
    let mut lr = 1.0f32;
    let mut rates = vec![];
    for m in [10.0, 9.6, 9.4, 8.8, 8.5] {
        lr = st.step(&s, m, lr);
        rates.push(lr);
    }
    // 10 (best), 9.6 (not below 9.5: halve), 9.4 (below 9.5: best), 8.8 (below 8.9: best),
    // 8.5 (not below 8.3: halve).
    assert_eq!(rates, [1.0, 0.5, 0.5, 0.5, 0.25]);
    // In relative mode the threshold scales with the best value: 9.6 is not below
    // 10·(1 − 0.5) = 5 (halve), 4 is (no change).
    let rel: LrSchedule = "plateau:0.5:0:0.5:0:0:rel".parse().unwrap();
    let mut st = PlateauState::new(false);
    let mut lr = 1.0f32;
    for m in [10.0, 9.6] {
        lr = st.step(&rel, m, lr);
    }
    assert_eq!(lr, 0.5);
    let mut st = PlateauState::new(false);
    let mut lr = 1.0f32;
    for m in [10.0, 4.0] {
        lr = st.step(&rel, m, lr);
    }
    assert_eq!(lr, 1.0, "4 < 10·0.5 is an improvement in relative mode");
    // Maximising, absolute: 0.80, then 0.84 is not above 0.85: halve.
    let mut st = PlateauState::new(true);
    let abs: LrSchedule = "plateau:0.5:0:0.05:0:0:abs".parse().unwrap();
    let mut lr = 1.0f32;
    for m in [0.80, 0.84] {
        lr = st.step(&abs, m, lr);
    }
    assert_eq!(lr, 0.5);
    // eps: a reduction of 0.5 from 1e-3 is 5e-4, below eps = 1e-3: not made.
    let tiny: LrSchedule = "plateau:0.5:0:0.5:0:0:abs:0.001".parse().unwrap();
    let mut st = PlateauState::new(false);
    let mut lr = 1e-3f32;
    for m in [10.0, 10.0] {
        lr = st.step(&tiny, m, lr);
    }
    assert_eq!(lr, 1e-3);
}
