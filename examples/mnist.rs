//! Trains LeNet-5 on MNIST from its IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`
//! and, optionally, the `t10k` pair; `.gz` files with the `gzip` feature).
//!
//! ```text
//! cargo run --release --example mnist -- PATH/TO/MNIST [EPOCHS]
//! ```

use cnnkit::{Control, Event, LayerSpec, Sequential, TrainConfig, Trainer, data, evaluate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: mnist DIR [EPOCHS]   (DIR holds MNIST's IDX files)");
        std::process::exit(2);
    };
    let epochs = args.next().map_or(Ok(5), |e| e.parse())?;
    let (mut train, test) =
        data::load_mnist_dir(std::path::Path::new(&dir), data::IdxLimits::default())?;
    let (mut val, mut test) = match test {
        Some(t) => (None, Some(t)),
        None => {
            // No t10k files: hold out a tenth of the training set.
            let (t, v) = train.split(0.1, 0)?;
            train = t;
            (Some(v), None)
        }
    };
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std)?;
    for ds in val.iter_mut().chain(test.iter_mut()) {
        ds.normalize(&mean, &std)?;
    }
    let specs = LayerSpec::parse_list(
        "conv(6,5,p=2),relu,maxpool(2),conv(16,5,p=2),relu,maxpool(2),flatten,dense(120),relu,dense(84),relu,dense(10)",
    )?;
    let model = Sequential::new(train.shape(), &specs, 0)?;
    let cfg = TrainConfig {
        epochs,
        batch_size: 64,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, "adam".parse()?, cfg)?;
    let eval_set = val.as_ref().or(test.as_ref());
    trainer.fit(&train, eval_set, &mut |event| {
        if let Event::Epoch(r) = event {
            println!(
                "epoch {}: loss {:.4} ({:.1} s)",
                r.epoch, r.train_loss, r.seconds
            );
        }
        Control::Continue
    })?;
    if let Some(t) = &test {
        let m = evaluate(trainer.model_mut(), t, 256)?;
        println!("test accuracy {:.2}%", 100.0 * m.accuracy);
    }
    Ok(())
}
