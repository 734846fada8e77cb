//! How fragile is a trained classifier? Trains a quick model on the embedded digits, then
//! measures its accuracy under a PGD attack at a few budgets beside random noise of the same size,
//! all in pixel units (the model sees normalised inputs).
//!
//! ```text
//! cargo run --release --example stability
//! ```

use cnnkit::stability::{
    Attack, AttackNorm, Normalization, adversarial_examples, robustness_curve,
};
use cnnkit::{Control, LayerSpec, Sequential, TrainConfig, Trainer, data};

fn main() -> cnnkit::Result<()> {
    let (mut train, test) = data::digits()?;
    let (mean, std) = train.channel_stats();
    train.normalize(&mean, &std)?;
    let specs = LayerSpec::parse_list("conv(16,3,p=1),relu,maxpool(2),flatten,dense(10)")?;
    let model = Sequential::new(train.shape(), &specs, 0)?;
    let cfg = TrainConfig {
        epochs: 5,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, "adam".parse()?, cfg)?;
    trainer.fit(&train, None, &mut |_| Control::Continue)?;
    let mut model = trainer.into_model();

    // The test images stay in pixels; the attack normalises them as training did.
    let (x, labels) = (test.images(), test.labels());
    let attack = Attack {
        normalization: Some(Normalization::new(mean, std)?),
        ..Attack::pgd(AttackNorm::Linf, 0.1, 10)
    };
    let n = labels.len().min(64);
    let d = x.len() / labels.len();
    let adv = adversarial_examples(&mut model, &x[..n * d], &labels[..n], n, &attack)?;
    let moved = adv
        .iter()
        .zip(&x[..n * d])
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("PGD moved no pixel by more than {moved:.3} (ε = 0.1)");
    let curve = robustness_curve(
        &mut model,
        x,
        labels,
        labels.len(),
        &attack,
        &[0.02, 0.05, 0.1],
        64,
        &mut |_, _| {},
    )?;
    println!("clean accuracy {:.3}", curve.clean_accuracy);
    for p in &curve.points {
        println!(
            "ε = {:<5} under PGD {:.3}, under noise of the same size {:.3}",
            p.eps, p.accuracy, p.noise_accuracy
        );
    }
    Ok(())
}
