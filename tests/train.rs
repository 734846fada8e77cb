//! The training loop: reaching the accuracy target on the embedded digits, exact resumption,
//! identical results for any thread count, divergence detection, metrics.

mod common;

use cnnkit::data::Pairs;
use cnnkit::metrics::{Metrics, roc_auc};
use cnnkit::optim::OptimizerKind;
use cnnkit::stability::{Attack, AttackNorm, Degradation, Normalization};
use cnnkit::{
    AdversarialTraining, Control, Event, LayerSpec, Loss, Sequential, TrainConfig, Trainer, data,
    evaluate, reconstruction_loss,
};
use common::TempDir;
use std::collections::BTreeMap;

fn digits() -> (data::Dataset, data::Dataset) {
    let (mut train, mut test) = data::digits().unwrap();
    let (m, s) = train.channel_stats();
    train.normalize(&m, &s).unwrap();
    test.normalize(&m, &s).unwrap();
    (train, test)
}

fn trainer(arch: &str, opt: &str, epochs: usize, seed: u64) -> Trainer {
    let model = Sequential::new([1, 8, 8], &LayerSpec::parse_list(arch).unwrap(), seed).unwrap();
    Trainer::new(
        model,
        opt.parse().unwrap(),
        TrainConfig {
            epochs,
            batch_size: 32,
            seed,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The optimizer holds the one learning rate: a rate the caller sets between epochs is the
/// rate the next epoch uses and the schedule continues from (it used to be overwritten by the
/// trainer's own copy of the base rate every epoch).
#[test]
fn a_rate_set_on_the_optimizer_is_used_and_the_schedule_continues_from_it() {
    let (train, _) = digits();
    for (schedule, want) in [
        ("constant", [0.05, 0.5, 0.5, 0.5]),
        ("step:2:0.1", [0.05, 0.5, 0.05, 0.05]),
    ] {
        let mut t = trainer("flatten,dense(10)", "sgd(lr=0.05)", 4, 0);
        let cfg = TrainConfig {
            schedule: schedule.parse().unwrap(),
            ..t.config().clone()
        };
        let model = t.into_model();
        t = Trainer::new(model, "sgd(lr=0.05)".parse().unwrap(), cfg).unwrap();
        let mut first = true;
        let mut stop_after_first = |e: &Event<'_>| match e {
            Event::Epoch(_) if std::mem::take(&mut first) => Control::Stop,
            _ => Control::Continue,
        };
        t.fit(&train, None, &mut stop_after_first).unwrap();
        assert_eq!(t.history().len(), 1);
        t.optimizer_mut().set_lr(0.5);
        t.fit(&train, None, &mut |_| Control::Continue).unwrap();
        let got: Vec<f32> = t.history().iter().map(|r| r.lr).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w, "{schedule}: {got:?} vs {want:?}");
        }
    }
}

/// The default network of `cnnkit train` (one 3x3 convolution, max pooling, one dense layer,
/// Adam, 30 epochs) on the embedded digits reaches at least 98% test accuracy.
#[test]
fn default_cnn_reaches_98_percent_on_the_embedded_digits() {
    let (train, test) = digits();
    let mut t = trainer(
        "conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)",
        "adam",
        30,
        0,
    );
    t.fit(&train, None, &mut |_| Control::Continue).unwrap();
    let m = evaluate(t.model_mut(), &test, 256).unwrap();
    assert!(m.accuracy >= 0.98, "test accuracy {}", m.accuracy);
}

const NOISY: &str =
    "conv(8,3,p=1),bn,rrelu,maxpool(2),flatten,dropout(0.2),dense(16),relu,dense(10)";

fn weights_bits(t: &Trainer) -> Vec<u32> {
    t.model().params().iter().map(|v| v.to_bits()).collect()
}

/// Stopping mid-epoch, saving the training state, loading it and continuing gives bit for bit the
/// weights, batch-norm statistics and history of an uninterrupted run (dropout, RReLU noise,
/// shuffling and the optimizer state included).
#[test]
fn resumed_training_equals_uninterrupted_training() {
    let (train, test) = digits();
    let train = train.subset(&(0..300).collect::<Vec<_>>());
    for opt in [
        "sgd(lr=0.05,momentum=0.9)",
        "adam",
        "rmsprop(centered=true,momentum=0.5)",
    ] {
        let mut full = trainer(NOISY, opt, 3, 7);
        full.fit(&train, Some(&test), &mut |_| Control::Continue)
            .unwrap();
        for stop_at in [5, 10, 13] {
            let mut part = trainer(NOISY, opt, 3, 7);
            let mut steps = 0;
            part.fit(&train, Some(&test), &mut |e| {
                if let Event::Step { .. } = e {
                    steps += 1;
                }
                if steps == stop_at {
                    Control::Stop
                } else {
                    Control::Continue
                }
            })
            .unwrap();
            assert!(!part.finished());
            let dir = TempDir::new("resume");
            let path = dir.0.join("state.safetensors");
            let mut extra = BTreeMap::new();
            extra.insert("note".to_string(), "kept".to_string());
            part.save(&path, &extra).unwrap();
            drop(part);
            let (mut resumed, meta) = Trainer::load(&path).unwrap();
            assert_eq!(meta["note"], "kept");
            resumed
                .fit(&train, Some(&test), &mut |_| Control::Continue)
                .unwrap();
            assert!(resumed.finished());
            assert_eq!(
                weights_bits(&resumed),
                weights_bits(&full),
                "{opt}, stopped after {stop_at} steps"
            );
            assert_eq!(resumed.model().state_dict(), full.model().state_dict());
            let strip = |t: &Trainer| {
                t.history()
                    .iter()
                    .map(|r| (r.epoch, r.train_loss, r.val.as_ref().map(|v| v.accuracy)))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&resumed), strip(&full));
        }
    }
}

/// Training with a fixed seed gives bit-identical weights and checkpoint files on every run and on
/// 1, 2 or 3 threads (3 on a 2-core machine: more workers than cores): the checkpoints' hashes
/// agree, and so do the weights bit for bit.
#[test]
fn training_is_bit_identical_on_1_2_and_3_threads() {
    let (train, _) = digits();
    let train = train.subset(&(0..256).collect::<Vec<_>>());
    cnnkit::par::set_parallel_threshold(0);
    let dir = TempDir::new("threads");
    let run = |threads: usize, tag: &str| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut t = trainer(NOISY, "adamw", 2, 3);
                t.fit(&train, None, &mut |_| Control::Continue).unwrap();
                let path = dir.0.join(format!("{tag}.safetensors"));
                t.model().save(&path, &BTreeMap::new()).unwrap();
                let file = std::fs::read(&path).unwrap();
                (cnnkit::checkpoint::data_hash(&file), weights_bits(&t))
            })
    };
    let one = run(1, "one");
    assert_eq!(one, run(1, "one-again"), "two runs on one thread");
    assert_eq!(one, run(2, "two"), "1 and 2 threads");
    assert_eq!(one, run(3, "three"), "1 and 3 threads");
    // The layers of the mobile and reconstruction networks too.
    let arch = "conv(4,3,p=1),bn,relu6,maxpool(2),convt(4,2,s=2),silu,upsample(2,mode=bilinear),\
                hardswish,conv(4,3,s=2,p=1),adaptive_avgpool(3),stochastic_depth(0.2),flatten,dense(10)";
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut t = trainer(arch, "adam", 1, 4);
                t.fit(&train, None, &mut |_| Control::Continue).unwrap();
                weights_bits(&t)
            })
    };
    let one = run(1);
    assert_eq!(one, run(2), "{arch}: 1 and 2 threads");
    assert_eq!(one, run(3), "{arch}: 1 and 3 threads");
}

/// A diverging run stops with a clear error instead of producing NaN weights.
#[test]
fn non_finite_loss_stops_training() {
    let (train, _) = digits();
    // Weights of 1e38 after one step: the logits overflow to infinity.
    let mut t = trainer("flatten,dense(10)", "sgd(lr=1e38)", 5, 0);
    let before = t.model().params().to_vec();
    let e = t
        .fit(&train, None, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(e.contains("training loss is not finite"), "{e}");
    assert!(t.model().params().iter().all(|v| v.is_finite()));
    assert_ne!(t.model().params(), &before[..]);
}

#[test]
fn datasets_that_do_not_fit_the_model_are_refused() {
    let (train, _) = digits();
    let model = Sequential::new(
        [1, 8, 8],
        &LayerSpec::parse_list("flatten,dense(3)").unwrap(),
        0,
    )
    .unwrap();
    let mut t = Trainer::new(
        model,
        OptimizerKind::by_name("sgd").unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let e = t
        .fit(&train, None, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10 classes, the model outputs 3"), "{e}");
}

/// Metrics against scikit-learn's values for the same predictions (computed with
/// `sklearn.metrics`: confusion_matrix, precision_recall_fscore_support(zero_division=0),
/// roc_auc_score).
#[test]
fn metrics_match_scikit_learn() {
    let labels = [0, 0, 1, 1, 1, 0, 1, 0, 1, 1];
    let pred = [0, 1, 1, 1, 0, 0, 1, 0, 1, 0];
    let scores = [0.1, 0.6, 0.8, 0.7, 0.4, 0.2, 0.9, 0.3, 0.65, 0.4];
    let m = Metrics::new(2, &labels, &pred, Some(&scores), 0.5);
    assert_eq!(m.confusion, vec![vec![3, 1], vec![2, 4]]);
    assert!((m.accuracy - 0.7).abs() < 1e-12);
    // precision [0.6, 0.8], recall [0.75, 0.6667], f1 [0.6667, 0.7273]
    assert!(
        (m.per_class[0].precision - 0.6).abs() < 1e-12
            && (m.per_class[1].precision - 0.8).abs() < 1e-12
    );
    assert!((m.per_class[1].recall - 4.0 / 6.0).abs() < 1e-12);
    assert!((m.per_class[1].f1 - 0.727_272_727_272_727_3).abs() < 1e-12);
    let b = m.binary.unwrap();
    assert!((b.sensitivity - 4.0 / 6.0).abs() < 1e-12 && (b.specificity - 0.75).abs() < 1e-12);
    // roc_auc_score(labels, scores) = 0.9166666666666666 (the tie at 0.4 counts one half).
    assert!((b.roc_auc.unwrap() - 0.916_666_666_666_666_6).abs() < 1e-12);
    assert_eq!(roc_auc(&[1, 1], &[0.2, 0.3]), None);
    // A class never predicted has precision 0, not NaN.
    let m = Metrics::new(3, &[0, 1, 2], &[0, 0, 0], None, 0.0);
    assert_eq!(m.per_class[1].precision, 0.0);
    assert_eq!(Metrics::from_confusion(m.confusion.clone(), 0.0, None), m);
}

fn adversarial_trainer(attack: Attack, fraction: f32, seed: u64) -> Trainer {
    let (mean, std) = data::digits().unwrap().0.channel_stats();
    let attack = Attack {
        normalization: Some(Normalization::new(mean, std).unwrap()),
        ..attack
    };
    let mut t = trainer(NOISY, "adam", 2, seed);
    let cfg = TrainConfig {
        adversarial: Some(AdversarialTraining { attack, fraction }),
        ..t.config().clone()
    };
    t = Trainer::new(t.into_model(), "adam".parse().unwrap(), cfg).unwrap();
    t
}

/// Adversarial training: a budget of 0 is plain training, bit for bit; a real budget changes the
/// run; a run stopped, saved and resumed equals the uninterrupted one (the attack and its seeds
/// are part of the checkpoint); a fraction outside (0, 1] is refused.
#[test]
fn adversarial_training_is_plain_at_eps_0_and_resumes_exactly() {
    let (train, _) = digits();
    let train = train.subset(&(0..200).collect::<Vec<_>>());
    let mut plain = trainer(NOISY, "adam", 2, 3);
    plain.fit(&train, None, &mut |_| Control::Continue).unwrap();
    let pgd = Attack::pgd(AttackNorm::Linf, 0.1, 3);
    let mut zero = adversarial_trainer(pgd.with_eps(0.0), 0.5, 3);
    zero.fit(&train, None, &mut |_| Control::Continue).unwrap();
    assert_eq!(weights_bits(&zero), weights_bits(&plain));
    let mut full = adversarial_trainer(pgd.clone(), 0.5, 3);
    full.fit(&train, None, &mut |_| Control::Continue).unwrap();
    assert_ne!(weights_bits(&full), weights_bits(&plain));
    let mut part = adversarial_trainer(pgd.clone(), 0.5, 3);
    let mut steps = 0;
    part.fit(&train, None, &mut |e| {
        if let Event::Step { .. } = e {
            steps += 1;
        }
        if steps == 9 {
            Control::Stop
        } else {
            Control::Continue
        }
    })
    .unwrap();
    let dir = TempDir::new("adv_resume");
    let path = dir.0.join("state.safetensors");
    part.save(&path, &BTreeMap::new()).unwrap();
    let (mut resumed, _) = Trainer::load(&path).unwrap();
    assert_eq!(resumed.config(), full.config());
    resumed
        .fit(&train, None, &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(weights_bits(&resumed), weights_bits(&full));
    let specs = LayerSpec::parse_list("flatten,dense(10)").unwrap();
    for fraction in [0.0f32, 1.5, f32::NAN] {
        let cfg = TrainConfig {
            adversarial: Some(AdversarialTraining {
                attack: pgd.clone(),
                fraction,
            }),
            ..Default::default()
        };
        let model = Sequential::new([1, 8, 8], &specs, 0).unwrap();
        let e = Trainer::new(model, "adam".parse().unwrap(), cfg).unwrap_err();
        assert!(e.to_string().contains("fraction"), "{e}");
    }
}

/// An image-to-image network trained with MSE to undo random pixel subsampling of the digits
/// reconstructs the held-out digits better than the subsampled input itself does (the baseline
/// a network that learnt nothing useful would not beat); a run stopped and resumed equals the
/// uninterrupted one; L1 trains too; cross-entropy with image targets is refused.
#[test]
fn an_image_to_image_network_learns_to_undo_subsampling() {
    let (train, test) = data::digits().unwrap();
    let a = Degradation::Subsample { keep: 0.5, seed: 1 };
    let (tr, te) = (a.pairs(&train).unwrap(), a.pairs(&test).unwrap());
    let arch =
        LayerSpec::parse_list("conv(16,3,p=1),relu,conv(16,3,p=1),relu,conv(1,3,p=1)").unwrap();
    let new = |loss: Loss, epochs| {
        let model = Sequential::new([1, 8, 8], &arch, 2).unwrap();
        let cfg = TrainConfig {
            epochs,
            batch_size: 32,
            loss,
            ..Default::default()
        };
        Trainer::new(model, "adam(lr=0.003)".parse().unwrap(), cfg).unwrap()
    };
    let mut t = new(Loss::Mse, 6);
    t.fit_to(&tr, &mut |_| Control::Continue).unwrap();
    let baseline = cnnkit::kernels::mse_loss(te.inputs(), te.targets(), None).unwrap() as f64;
    let got = reconstruction_loss(t.model_mut(), &te, Loss::Mse, 64).unwrap();
    assert!(
        got < 0.5 * baseline,
        "test MSE {got} vs the subsampled input's {baseline}"
    );
    let h = t.history();
    assert_eq!(h.len(), 6);
    assert!(h[5].train_loss < h[0].train_loss && h[0].train_accuracy.is_nan());

    let sub = tr.subset(&(0..200).collect::<Vec<_>>());
    let mut full = new(Loss::L1, 2);
    full.fit_to(&sub, &mut |_| Control::Continue).unwrap();
    let mut part = new(Loss::L1, 2);
    let mut steps = 0;
    part.fit_to(&sub, &mut |e| {
        if let Event::Step { .. } = e {
            steps += 1;
        }
        if steps == 5 {
            Control::Stop
        } else {
            Control::Continue
        }
    })
    .unwrap();
    let dir = TempDir::new("pairs_resume");
    let path = dir.0.join("state.safetensors");
    part.save(&path, &BTreeMap::new()).unwrap();
    let (mut resumed, _) = Trainer::load(&path).unwrap();
    assert_eq!(resumed.config().loss, Loss::L1);
    resumed.fit_to(&sub, &mut |_| Control::Continue).unwrap();
    assert_eq!(weights_bits(&resumed), weights_bits(&full));
    assert!(full.history()[1].train_loss < full.history()[0].train_loss);

    let mut ce = new(Loss::CrossEntropy, 1);
    let e = ce.fit_to(&sub, &mut |_| Control::Continue).unwrap_err();
    assert!(e.to_string().contains("loss"), "{e}");
    let wrong = Pairs::new(vec![0.0; 64], vec![0.0; 10], [1, 8, 8], [10, 1, 1]).unwrap();
    assert!(t.fit_to(&wrong, &mut |_| Control::Continue).is_err());
    assert!(Pairs::new(vec![0.0; 64], vec![0.0; 128], [1, 8, 8], [1, 8, 8]).is_err());
}

/// A saved trainer keeps which PGD iterate its adversarial training uses.
#[test]
fn the_pgd_result_survives_a_save() {
    let dir = TempDir::new("pgd_result");
    for result in [
        cnnkit::stability::PgdResult::HighestLoss,
        cnnkit::stability::PgdResult::Last,
    ] {
        let attack = Attack {
            result,
            ..Attack::pgd(AttackNorm::Linf, 0.1, 3)
        };
        let t = adversarial_trainer(attack.clone(), 0.5, 1);
        let path = dir.path().join("t.safetensors");
        t.save(&path, &BTreeMap::new()).unwrap();
        let (back, _) = Trainer::load(&path).unwrap();
        let got = back.config().adversarial.as_ref().unwrap();
        assert_eq!(got.attack.result, result);
        assert_eq!(got.attack.kind, attack.kind);
    }
}

/// The two-class digits of `tests/fixtures/legacy_training_state.safetensors`: the first 120
/// zeros and ones of the training set, split 3:1 with seed 7.
fn legacy_fixture_data() -> (data::Dataset, data::Dataset) {
    let (train, _) = data::digits().unwrap();
    let idx: Vec<usize> = (0..train.len())
        .filter(|&i| train.labels()[i] < 2)
        .take(120)
        .collect();
    let sub = train.subset(&idx);
    let two = data::Dataset::new(
        sub.images().to_vec(),
        sub.labels().to_vec(),
        [1, 8, 8],
        vec!["zero".into(), "one".into()],
    )
    .unwrap();
    two.split(0.25, 7).unwrap()
}

/// The configuration the fixture was trained with.
fn legacy_fixture_config() -> TrainConfig {
    let norm = Normalization::new(vec![0.25], vec![0.5]).unwrap();
    let mut augment: cnnkit::augment::Augment = "flip=0.5,noise=0.01".parse().unwrap();
    augment.seed = 99;
    augment.normalization = Some(norm.clone());
    let mut attack = Attack::pgd(AttackNorm::L2, 0.5, 2);
    attack.result = cnnkit::stability::PgdResult::Last;
    attack.normalization = Some(norm);
    attack.seed = 5;
    // Without a random start, so that the examples do not depend on how the draws are made.
    attack.random_start = false;
    let mut adversarial = AdversarialTraining::new(attack);
    adversarial.fraction = 0.25;
    TrainConfig {
        epochs: 4,
        batch_size: 16,
        seed: 3,
        schedule: "plateau:0.5:1:0.001:0:0:abs:1e-9".parse().unwrap(),
        label_smoothing: 0.05,
        eval_batch_size: 32,
        class_weights: Some(vec![1.0, 1.5]),
        sampler: "balanced".parse().unwrap(),
        monitor: "auc".parse().unwrap(),
        keep_best: true,
        early_stopping: Some(3),
        augment: Some(augment),
        adversarial: Some(adversarial),
        ..Default::default()
    }
}

/// A training state written by cnnkit 0.1.0 before the typed record (at commit 60e7a09, with the
/// settings of `legacy_fixture_config`; its `train.*` entries were
/// `k=v;` text): every setting comes back, and it resumes as a fresh run of the same settings
/// stopped at the same step would. Saved again (in the record), it resumes bit for bit alike.
#[test]
fn a_training_state_of_the_earlier_format_resumes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/legacy_training_state.safetensors");
    let (mut old, meta) = Trainer::load(&path).unwrap();
    assert_eq!(meta.get("note").map(String::as_str), Some("legacy"));
    assert_eq!(old.config(), &legacy_fixture_config());
    // It was stopped after 14 steps: two epochs of 6 and 2 steps into the third.
    assert_eq!((old.progress().epoch, old.progress().step), (2, 2));
    assert_eq!(old.optimizer().steps(), 14);
    assert_eq!(old.history().len(), 2);
    assert!(old.history().iter().all(|r| r.val.is_some()));
    assert_eq!(old.best().map(|b| b.0), Some(2));

    // The same run from the start, stopped at the same step.
    let (a, b) = legacy_fixture_data();
    let arch = LayerSpec::parse_list("conv(4,3,p=1),bn,relu,maxpool(2),gap,dense(2)").unwrap();
    let model = Sequential::new([1, 8, 8], &arch, 2).unwrap();
    let mut fresh = Trainer::new(
        model,
        "adam(lr=0.01)".parse().unwrap(),
        legacy_fixture_config(),
    )
    .unwrap();
    let mut steps = 0;
    fresh
        .fit(&a, Some(&b), &mut |e| {
            if let Event::Step { .. } = e {
                steps += 1;
            }
            if steps == 14 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    // The same place in the run, exactly; the running loss within 0.1 %: the file's sums come
    // from the arithmetic of its commit, and kernels have changed their order of summation since
    // (the first convolution's weight gradient, nine taps, is now taken as dot products).
    let (p, q) = (fresh.progress(), old.progress());
    assert_eq!(
        (p.epoch, p.step, p.shuffle_rng, p.partial.1, p.partial.2),
        (q.epoch, q.step, q.shuffle_rng, q.partial.1, q.partial.2)
    );
    assert!(
        (p.partial.0 - q.partial.0).abs() <= 1e-3 * q.partial.0.abs(),
        "running loss {} against the file's {}",
        p.partial.0,
        q.partial.0
    );
    // The weights within a few Adam steps: the convolution's bias feeds a batch norm, so its
    // gradient is 0 but for rounding, and Adam turns rounding of either sign into whole steps of
    // `lr = 0.01` — with the order of the sums changed since the file was written, the two runs
    // part by up to half a step (measured 0.006).
    let (p, q) = (fresh.model().params(), old.model().params());
    let worst = p
        .iter()
        .zip(q)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        p.len() == q.len() && worst <= 0.05,
        "weights apart by {worst}"
    );

    // Saved in the current format and loaded back, it continues exactly as the old file does.
    let dir = TempDir::new("legacy_state");
    let again = dir.0.join("again.safetensors");
    old.save(&again, &meta).unwrap();
    let (mut new, _) = Trainer::load(&again).unwrap();
    assert_eq!(new.config(), old.config());
    assert_eq!(new.history(), old.history());
    for t in [&mut old, &mut new] {
        t.fit(&a, Some(&b), &mut |_| Control::Continue).unwrap();
    }
    assert_eq!(weights_bits(&new), weights_bits(&old));
    // The history of the last two epochs differs only in their wall-clock seconds.
    let timeless = |t: &Trainer| {
        let mut h = t.history().to_vec();
        h.iter_mut().for_each(|r| r.seconds = 0.0);
        h
    };
    assert_eq!(timeless(&new), timeless(&old));
    assert_eq!(new.history().len(), 4);
    assert_eq!(new.best(), old.best());
}

/// Each field of the training-state record is its own metadata entry: a malformed one is named,
/// and a record of a newer format is refused as such.
#[test]
fn a_malformed_training_state_field_is_named() {
    let dir = TempDir::new("record_fields");
    let path = dir.0.join("t.safetensors");
    let mut t = trainer("flatten,dense(10)", "sgd(lr=0.05)", 2, 0);
    let (train, _) = digits();
    t.fit(&train, None, &mut |_| Control::Continue).unwrap();
    let good = t.to_safetensors(&BTreeMap::new());
    for (key, value, want) in [
        (
            "train.config.epochs",
            "two",
            "malformed train.config.epochs",
        ),
        ("train.history.1.lr", "fast", "malformed train.history.1.lr"),
        (
            "train.progress.shuffle_rng",
            "1,2",
            "malformed train.progress.shuffle_rng",
        ),
        ("train.format", "2", "newer cnnkit"),
    ] {
        let mut st = good.clone();
        st.metadata.insert(key.into(), value.into());
        std::fs::write(&path, cnnkit::checkpoint::to_bytes(&st)).unwrap();
        let e = Trainer::load(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{key}: {e}");
    }
    let mut st = good.clone();
    st.metadata.remove("train.selection.plateau_bad");
    std::fs::write(&path, cnnkit::checkpoint::to_bytes(&st)).unwrap();
    let e = Trainer::load(&path).unwrap_err().to_string();
    assert!(e.contains("missing train.selection.plateau_bad"), "{e}");
}

/// A trainer refuses an adversarial attack it could not run when it is made, not at its first
/// step.
#[test]
fn an_attack_that_cannot_run_is_refused_by_the_trainer() {
    let model = Sequential::new(
        [1, 8, 8],
        &LayerSpec::parse_list("flatten,dense(10)").unwrap(),
        0,
    )
    .unwrap();
    let cfg = TrainConfig {
        adversarial: Some(AdversarialTraining::new(Attack {
            steps: 0,
            ..Attack::pgd(AttackNorm::Linf, 0.1, 3)
        })),
        ..Default::default()
    };
    let e = Trainer::new(model, "adam".parse().unwrap(), cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps"), "{e}");
}

/// A graph: a residual sum, a concatenation, a squeeze-and-excitation gate, batch norm, dropout
/// and a fused convolution + batch norm + ReLU + max-pool, on 8x8 digits.
const GRAPH: &str = "stem = conv(8,3,p=1,bias=false), bn, relu
                     body = conv(8,3,p=1,bias=false), bn, relu, conv(8,3,p=1,bias=false), bn
                     sum = add(stem, body), relu
                     se = adaptive_avgpool(1), conv(4,1), relu, conv(8,1), sigmoid
                     gated = mul(se, sum)
                     both = cat(gated, stem), conv(8,3,p=1), bn, relu, maxpool(2)
                     head = dropout(0.2), gap, dense(10)";

fn graph_trainer(cfg: TrainConfig, seed: u64) -> Trainer {
    let model = cnnkit::Model::from_text([1, 8, 8], GRAPH, seed).unwrap();
    Trainer::new(model, "adam".parse().unwrap(), cfg).unwrap()
}

/// Everything the trainer does with a chain it does with a graph: class weights, augmentation,
/// adversarial training, a schedule and model selection; stopped, saved and resumed it gives the
/// uninterrupted run's weights bit for bit; and the same bits on 1 and 2 threads.
#[test]
fn a_graph_trains_resumes_and_gives_the_same_bits_on_any_thread_count() {
    let (train, test) = digits();
    let train = train.subset(&(0..256).collect::<Vec<_>>());
    let (mean, std) = data::digits().unwrap().0.channel_stats();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 32,
        seed: 5,
        class_weights: Some(vec![1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]),
        augment: Some("flip,rotate=10".parse().unwrap()),
        adversarial: Some(AdversarialTraining {
            attack: Attack {
                normalization: Some(Normalization::new(mean, std).unwrap()),
                ..Attack::pgd(AttackNorm::Linf, 0.05, 2)
            },
            fraction: 0.5,
        }),
        schedule: "cosine:2".parse().unwrap(),
        keep_best: true,
        ..Default::default()
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut t = graph_trainer(cfg.clone(), 3);
                t.fit(&train, Some(&test), &mut |_| Control::Continue)
                    .unwrap();
                weights_bits(&t)
            })
    };
    let full = run(1);
    assert_eq!(full, run(2), "1 and 2 threads");
    let mut part = graph_trainer(cfg.clone(), 3);
    let mut steps = 0;
    part.fit(&train, Some(&test), &mut |e| {
        if let Event::Step { .. } = e {
            steps += 1;
        }
        if steps == 11 {
            Control::Stop
        } else {
            Control::Continue
        }
    })
    .unwrap();
    let dir = TempDir::new("graph_resume");
    let path = dir.0.join("state.safetensors");
    part.save(&path, &BTreeMap::new()).unwrap();
    let (mut resumed, _) = Trainer::load(&path).unwrap();
    assert_eq!(resumed.model().architecture(), part.model().architecture());
    resumed
        .fit(&train, Some(&test), &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(weights_bits(&resumed), full, "resumed and uninterrupted");
    // The model file of a graph loads back into the same graph, with the same outputs.
    let model_path = dir.0.join("model.safetensors");
    resumed.model().save(&model_path, &BTreeMap::new()).unwrap();
    let (mut loaded, _) = Sequential::load(&model_path).unwrap();
    let m = resumed.model_mut();
    m.eval();
    let x = &test.images()[..4 * 64];
    assert_eq!(m.forward(x, 4).unwrap(), loaded.forward(x, 4).unwrap());
    let h = resumed.history();
    assert!(h[1].train_loss < h[0].train_loss, "{h:?}");
    let a = evaluate(&mut loaded, &test, 64).unwrap().accuracy;
    assert_eq!(
        a,
        evaluate(resumed.model_mut(), &test, 64).unwrap().accuracy
    );
}

/// The stability tools run on a graph as on a chain: attacks, the worst-case search, saliency.
#[test]
fn the_stability_tools_run_on_a_graph() {
    use cnnkit::stability::{
        PerturbationSearch, SaliencyMethod, saliency, worst_case_perturbation,
    };
    let (_, test) = data::digits().unwrap();
    let mut m = cnnkit::Model::from_text([1, 8, 8], GRAPH, 1).unwrap();
    m.eval();
    let x = &test.images()[..2 * 64];
    let labels = &test.labels()[..2];
    let attack = Attack::pgd(AttackNorm::L2, 0.5, 3);
    let adv = cnnkit::stability::adversarial_examples(&mut m, x, labels, 2, &attack).unwrap();
    let moved: f32 = adv.iter().zip(x).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
    assert!(moved > 0.0 && moved.sqrt() <= 2.0 * 0.5 + 1e-4);
    let s = PerturbationSearch {
        iterations: 20,
        record_every: 10,
        ..Default::default()
    };
    let steps = worst_case_perturbation(&mut m, &x[..64], &s).unwrap();
    assert!(!steps.is_empty());
    let map = saliency(&mut m, &x[..64], 3, &SaliencyMethod::Gradient, None).unwrap();
    assert_eq!(map.len(), 64);
    assert!(map.iter().any(|&v| v != 0.0));
}

/// A U-Net learns to undo subsampling of the digits (image-to-image training with `fit_to`).
#[test]
fn a_unet_learns_to_undo_subsampling() {
    let (train, test) = data::digits().unwrap();
    let a = Degradation::Subsample { keep: 0.5, seed: 1 };
    let (tr, te) = (a.pairs(&train).unwrap(), a.pairs(&test).unwrap());
    let model = cnnkit::zoo::unet([1, 8, 8], 1, 8, 2)
        .unwrap()
        .build(2)
        .unwrap();
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 32,
        loss: Loss::Mse,
        ..Default::default()
    };
    let mut t = Trainer::new(model, "adam(lr=0.003)".parse().unwrap(), cfg).unwrap();
    t.fit_to(&tr, &mut |_| Control::Continue).unwrap();
    let baseline = cnnkit::kernels::mse_loss(te.inputs(), te.targets(), None).unwrap() as f64;
    let got = reconstruction_loss(t.model_mut(), &te, Loss::Mse, 64).unwrap();
    assert!(
        got < 0.6 * baseline,
        "test MSE {got} vs the subsampled input's {baseline}"
    );
}
