//! Class imbalance, measured: on a 1:4 two-class set of synthetic chest-X-ray-like images
//! (`examples/synthetic_xrays.rs`), class weights and the balanced sampler each raise the
//! minority class's recall on a balanced test set well above the unweighted run's.

#[path = "../examples/synthetic_xrays.rs"]
#[allow(dead_code)]
mod xrays;

use cnnkit::data::{self, Dataset};
use cnnkit::rng::Rng;
use cnnkit::{Control, LayerSpec, Sampler, Sequential, TrainConfig, Trainer, evaluate};

const SIZE: usize = 64;

fn set(rng: &mut Rng, normal: usize, opacity: usize) -> Dataset {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (label, count) in [(0u32, normal), (1, opacity)] {
        for _ in 0..count {
            x.extend(xrays::image(rng, SIZE, label == 1));
            y.push(label);
        }
    }
    Dataset::new(
        x,
        y,
        [1, SIZE, SIZE],
        vec!["normal".into(), "opacity".into()],
    )
    .unwrap()
}

fn minority_recall(cfg: TrainConfig, train: &Dataset, test: &Dataset) -> f64 {
    let specs = LayerSpec::parse_list(
        "conv(8,3,p=1),relu,maxpool(2),conv(16,3,p=1),relu,maxpool(2),conv(32,3,p=1),relu,gap,dense(2)",
    )
    .unwrap();
    let model = Sequential::new([1, SIZE, SIZE], &specs, 1).unwrap();
    let mut t = Trainer::new(model, "adam".parse().unwrap(), cfg).unwrap();
    t.fit(train, None, &mut |_| Control::Continue).unwrap();
    evaluate(t.model_mut(), test, 256).unwrap().per_class[1].recall
}

#[test]
fn class_weights_and_the_balanced_sampler_raise_minority_recall() {
    let mut rng = Rng::new(7);
    let mut train = set(&mut rng, 400, 100);
    let mut test = set(&mut rng, 100, 100);
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std).unwrap();
    test.normalize(&mean, &std).unwrap();
    let base = TrainConfig {
        epochs: 10,
        ..Default::default()
    };
    let plain = minority_recall(base.clone(), &train, &test);
    let weighted = minority_recall(
        TrainConfig {
            class_weights: Some(data::balanced_class_weights(train.labels(), 2)),
            ..base.clone()
        },
        &train,
        &test,
    );
    let sampled = minority_recall(
        TrainConfig {
            sampler: Sampler::Balanced,
            ..base
        },
        &train,
        &test,
    );
    println!(
        "minority recall: unweighted {plain}, class weights {weighted}, balanced sampler {sampled}"
    );
    assert!(
        weighted >= plain + 0.2 && sampled >= plain + 0.2,
        "minority recall: unweighted {plain}, class weights {weighted}, balanced sampler {sampled}"
    );
}
