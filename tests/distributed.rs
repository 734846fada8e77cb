//! Data-parallel training through the gradient hook, with workers as threads (`LocalSync`): the
//! same weights as one process on the same global batches, the same bits on every worker and on
//! every run, and clear errors.

use cnnkit::distributed::{GradientSync, LocalSync};
use cnnkit::{Control, LayerSpec, Sequential, TrainConfig, Trainer, data};

const ARCH: &str = "conv(4,3,p=1),relu,maxpool(2),flatten,dense(16),tanh,dense(10)";

fn trainer(seed: u64, batch: usize) -> Trainer {
    trainer_weighted(seed, batch, None)
}

fn trainer_weighted(seed: u64, batch: usize, class_weights: Option<Vec<f32>>) -> Trainer {
    let model = Sequential::new([1, 8, 8], &LayerSpec::parse_list(ARCH).unwrap(), seed).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: batch,
        class_weights,
        ..Default::default()
    };
    Trainer::new(model, "sgd(lr=0.05,momentum=0.9)".parse().unwrap(), cfg).unwrap()
}

fn train_set() -> data::Dataset {
    let (train, _) = data::digits().unwrap();
    // 250 images in batches of 30: the last batch of each epoch (10 images) splits 5 + 5 over
    // two workers and unevenly (3 + 3 + 4) over three.
    train.subset(&(0..250).collect::<Vec<_>>())
}

/// Trains on `size` workers (threads, one rayon thread each); returns each worker's weights and
/// epoch losses. Worker r > 0 starts from another seed: the broadcast must fix that.
fn run(size: usize, batch: usize) -> Vec<(Vec<f32>, Vec<f64>)> {
    run_weighted(size, batch, None)
}

fn run_weighted(
    size: usize,
    batch: usize,
    class_weights: Option<Vec<f32>>,
) -> Vec<(Vec<f32>, Vec<f64>)> {
    let train = train_set();
    let group = LocalSync::group(size).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = group
            .into_iter()
            .map(|g| {
                let train = &train;
                let w = class_weights.clone();
                s.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .unwrap();
                    pool.install(|| {
                        let mut t = trainer_weighted(3 + g.rank() as u64, batch, w);
                        t.set_gradient_sync(Box::new(g)).unwrap();
                        t.fit(train, None, &mut |_| Control::Continue).unwrap();
                        let losses = t.history().iter().map(|r| r.train_loss).collect();
                        (t.model().params().to_vec(), losses)
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// With class weights the mean runs over the global batch's label weights, not each shard's:
/// workers still train the weights of one process.
#[test]
fn class_weighted_workers_train_the_weights_of_one_process() {
    let w: Vec<f32> = (0..10).map(|c| 0.5 + c as f32 * 0.3).collect();
    let train = train_set();
    let mut single = trainer_weighted(3, 30, Some(w.clone()));
    single
        .fit(&train, None, &mut |_| Control::Continue)
        .unwrap();
    let want = single.model().params();
    let out = run_weighted(3, 30, Some(w));
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in out[0].0.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "weight {i} {a} vs one process {b}"
        );
    }
    let l: Vec<f64> = single.history().iter().map(|r| r.train_loss).collect();
    for (a, b) in out[0].1.iter().zip(&l) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "loss {a} vs {b}");
    }
}

#[test]
fn workers_train_the_weights_of_one_process() {
    let train = train_set();
    let mut single = trainer(3, 30);
    single
        .fit(&train, None, &mut |_| Control::Continue)
        .unwrap();
    let want = single.model().params();
    let want_loss: Vec<f64> = single.history().iter().map(|r| r.train_loss).collect();
    for size in [2, 3] {
        let out = run(size, 30);
        for (w, l) in &out[1..] {
            assert_eq!(
                w, &out[0].0,
                "{size} workers: every worker holds the same bits"
            );
            assert_eq!(l, &out[0].1);
        }
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in out[0].0.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{size} workers: weight {i} {a} vs one process {b}"
            );
        }
        for (a, b) in out[0].1.iter().zip(&want_loss) {
            assert!((a - b).abs() <= 1e-4 * b.abs(), "loss {a} vs {b}");
        }
        // And the same bits again on a second run.
        assert_eq!(run(size, 30)[0].0, out[0].0);
    }
}

#[test]
fn a_batch_that_does_not_split_is_refused() {
    let mut group = LocalSync::group(4).unwrap();
    let g = group.pop().unwrap();
    let mut t = trainer(0, 30);
    let e = t.set_gradient_sync(Box::new(g)).unwrap_err().to_string();
    assert!(e.contains("30") && e.contains("4 workers"), "{e}");
    assert_eq!(group[0].size(), 4);
}
