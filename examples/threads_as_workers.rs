//! Data-parallel training with workers as threads of one process (`LocalSync`): each worker holds
//! the whole model and takes its share of every global batch; the gradient hook sums their
//! gradients, so each applies the global batch's mean gradient, as one process would. An MPI,
//! NCCL-like or socket engine plugs in through the same `GradientSync` trait.
//!
//! ```text
//! cargo run --release --example threads_as_workers
//! ```

use cnnkit::distributed::LocalSync;
use cnnkit::{Control, LayerSpec, Sequential, TrainConfig, Trainer, data};

fn main() -> cnnkit::Result<()> {
    let (train, _) = data::digits()?;
    let specs = LayerSpec::parse_list("flatten,dense(10)")?;
    let weights = std::thread::scope(|s| {
        let (train, specs) = (&train, &specs);
        let workers: Vec<_> = LocalSync::group(2)?
            .into_iter()
            .map(|worker| {
                s.spawn(move || -> cnnkit::Result<Vec<f32>> {
                    let model = Sequential::new(train.shape(), specs, 0)?;
                    let cfg = TrainConfig {
                        epochs: 1,
                        ..Default::default()
                    };
                    let mut t = Trainer::new(model, "sgd(lr=0.1)".parse()?, cfg)?;
                    t.set_gradient_sync(Box::new(worker))?;
                    t.fit(train, None, &mut |_| Control::Continue)?;
                    Ok(t.model().params().to_vec())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("a worker panicked"))
            .collect::<cnnkit::Result<Vec<_>>>()
    })?;
    assert_eq!(weights[0], weights[1], "every worker holds the same bits");
    println!(
        "2 workers trained one epoch and hold the same {} weights",
        weights[0].len()
    );
    Ok(())
}
