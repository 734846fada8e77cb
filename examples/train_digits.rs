//! Trains a small CNN on the handwritten digits embedded in the crate (no download), evaluates it
//! and saves it: the library side of `cnnkit train` with no options.
//!
//! ```text
//! cargo run --release --example train_digits
//! ```

use cnnkit::{Control, Event, LayerSpec, Sequential, TrainConfig, Trainer, data, evaluate};
use std::collections::BTreeMap;

fn main() -> cnnkit::Result<()> {
    // 8x8 grey images of 10 digits, normalised with the training set's statistics.
    let (mut train, mut test) = data::digits()?;
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std)?;
    test.normalize(&mean, &std)?;

    // torch.nn.Sequential(Conv2d(1, 32, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Linear(512, 10))
    let specs = LayerSpec::parse_list("conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)")?;
    let model = Sequential::new(train.shape(), &specs, 0)?;
    print!("{}", model.summary());

    let cfg = TrainConfig {
        epochs: 10,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, "adam".parse()?, cfg)?;
    trainer.fit(&train, Some(&test), &mut |event| {
        if let Event::Epoch(r) = event {
            let val = r.val.as_ref().map_or(f64::NAN, |m| m.accuracy);
            println!(
                "epoch {:>2}: loss {:.4}, test accuracy {:.2}%",
                r.epoch,
                r.train_loss,
                100.0 * val
            );
        }
        Control::Continue
    })?;

    let m = evaluate(trainer.model_mut(), &test, 256)?;
    println!(
        "test accuracy {:.2}% ({} images)",
        100.0 * m.accuracy,
        test.len()
    );
    let path = std::env::temp_dir().join("digits.safetensors");
    trainer.model().save(&path, &BTreeMap::new())?;
    println!("saved {}", path.display());
    Ok(())
}
