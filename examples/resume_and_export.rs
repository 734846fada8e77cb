//! Interrupts training, saves the resumable state, continues from it (ending with the weights of
//! an uninterrupted run), and saves the model as safetensors that PyTorch loads into the same
//! `nn.Sequential`.
//!
//! ```text
//! cargo run --release --example resume_and_export
//! ```

use cnnkit::{Control, Event, LayerSpec, Sequential, TrainConfig, Trainer, data};
use std::collections::BTreeMap;

fn trainer(train: &cnnkit::data::Dataset) -> cnnkit::Result<Trainer> {
    let specs = LayerSpec::parse_list("conv(8,3,p=1),bn,relu,maxpool(2),flatten,dense(10)")?;
    let model = Sequential::new(train.shape(), &specs, 0)?;
    let cfg = TrainConfig {
        epochs: 2,
        ..Default::default()
    };
    Trainer::new(model, "sgd(lr=0.05,momentum=0.9)".parse()?, cfg)
}

fn main() -> cnnkit::Result<()> {
    let (mut train, _) = data::digits()?;
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std)?;
    let dir = std::env::temp_dir();

    // An uninterrupted run, for comparison.
    let mut whole = trainer(&train)?;
    whole.fit(&train, None, &mut |_| Control::Continue)?;

    // The same run, stopped after 20 steps and saved.
    let mut first = trainer(&train)?;
    let mut steps = 0;
    first.fit(&train, None, &mut |e| {
        steps += matches!(e, Event::Step { .. }) as usize;
        if steps == 20 {
            Control::Stop
        } else {
            Control::Continue
        }
    })?;
    let resume = dir.join("digits.resume.safetensors");
    first.save(&resume, &BTreeMap::new())?;

    // Later, perhaps in another process: load and continue.
    let (mut second, _) = Trainer::load(&resume)?;
    second.fit(&train, None, &mut |_| Control::Continue)?;
    assert_eq!(second.model().params(), whole.model().params());
    println!("resumed after 20 steps: the same weights as the uninterrupted run");

    // PyTorch reads the state dict under nn.Sequential's names ("0.weight", "1.running_mean", …).
    let out = dir.join("digits.safetensors");
    second.model().save(&out, &BTreeMap::new())?;
    println!("saved {}; in PyTorch:", out.display());
    println!(
        "  m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))"
    );
    println!(
        "  m.load_state_dict(safetensors.torch.load_file('{}'))",
        out.display()
    );
    Ok(())
}
