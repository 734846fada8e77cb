//! An image-to-image network and its instabilities, in the setting of Antun et al. (PNAS 2020):
//! a small convolutional network learns to undo random pixel subsampling of the embedded digits,
//! then the worst-case perturbation search looks for small changes of its input that change its
//! reconstruction a lot, beside Gaussian noise of the same size.
//!
//! ```text
//! cargo run --release --example reconstruction [--arch cnn|unet] [OUT.png]
//! ```
//!
//! `--arch cnn` (the default) is four 3x3 convolutions of 32 channels; `--arch unet` a U-Net of
//! width 32 and depth 2 (`cnnkit::zoo::unet`), the kind of network the study audits.
//!
//! Prints the test error against the subsampled input's, the search's table, and writes a strip:
//! top row the network's inputs `y, y + r₁, y + r₂, …`, bottom row its reconstructions.

use cnnkit::stability::{Degradation, PerturbationSearch, worst_case_perturbation};
use cnnkit::{
    Control, LayerSpec, Loss, Sequential, TrainConfig, Trainer, data, reconstruction_loss,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let unet = match args.iter().position(|a| a == "--arch") {
        Some(i) if i + 1 < args.len() => {
            let arch = args.remove(i + 1);
            args.remove(i);
            match arch.as_str() {
                "unet" => true,
                "cnn" => false,
                other => return Err(format!("--arch {other}: cnn or unet").into()),
            }
        }
        Some(_) => return Err("--arch needs a value: cnn or unet".into()),
        None => false,
    };
    let out = args.pop().unwrap_or("reconstruction.png".into());
    let (train, test) = data::digits()?;
    let a = Degradation::Subsample { keep: 0.5, seed: 1 };
    let (tr, te) = (a.pairs(&train)?, a.pairs(&test)?);
    let model = if unet {
        cnnkit::zoo::unet(train.shape(), 1, 32, 2)?.build(0)?
    } else {
        let arch = LayerSpec::parse_list(
            "conv(32,3,p=1),relu,conv(32,3,p=1),relu,conv(32,3,p=1),relu,conv(1,3,p=1)",
        )?;
        Sequential::new(train.shape(), &arch, 0)?
    };
    println!("{} parameters", model.param_count());
    let cfg = TrainConfig {
        epochs: 30,
        loss: Loss::Mse,
        ..Default::default()
    };
    let mut t = Trainer::new(model, "adam(lr=0.002)".parse()?, cfg)?;
    t.fit_to(&tr, &mut |_| Control::Continue)?;
    let baseline = cnnkit::kernels::mse_loss(te.inputs(), te.targets(), None)? as f64;
    let m = t.model_mut();
    let mse = reconstruction_loss(m, &te, Loss::Mse, 256)?;
    println!(
        "test MSE {mse:.5} (the subsampled input: {baseline:.5}; PSNR {:.1} dB vs {:.1} dB)",
        -10.0 * mse.log10(),
        -10.0 * baseline.log10()
    );

    // The search on one test digit's measurement y = A(x): r grows from a tiny random start.
    let y = &te.inputs()[..64];
    let s = PerturbationSearch {
        lambda: 0.05,
        step: 0.005,
        iterations: 80,
        record_every: 10,
        ..Default::default()
    };
    let steps = worst_case_perturbation(m, y, &s)?;
    println!("| iteration | ‖r‖/‖y‖ | ‖f(y+r)−f(y)‖/‖f(y)‖ | same-size noise |");
    println!("|---|---|---|---|");
    for st in &steps {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} |",
            st.iteration, st.size, st.output_change, st.noise_output_change
        );
    }

    // The strip: 8x8 panels magnified 8 times.
    m.eval();
    let mut inputs = vec![y.to_vec()];
    inputs.extend(steps.iter().map(|st| {
        y.iter()
            .zip(&st.perturbation)
            .map(|(a, b)| a + b)
            .collect::<Vec<_>>()
    }));
    let recon: Vec<Vec<f32>> = inputs
        .iter()
        .map(|v| m.forward(v, 1).map(|o| o.to_vec()))
        .collect::<Result<_, _>>()?;
    let (scale, gap, k) = (8usize, 4usize, inputs.len());
    let (pw, width, height) = (
        8 * scale,
        k * 8 * scale + (k - 1) * gap,
        2 * 8 * scale + gap,
    );
    let mut img = image::GrayImage::from_pixel(width as u32, height as u32, image::Luma([255]));
    for (col, (i, r)) in inputs.iter().zip(&recon).enumerate() {
        for (row, panel) in [i, r].into_iter().enumerate() {
            for py in 0..pw {
                for px in 0..pw {
                    let v = panel[(py / scale) * 8 + px / scale].clamp(0.0, 1.0);
                    img.put_pixel(
                        (col * (pw + gap) + px) as u32,
                        (row * (pw + gap) + py) as u32,
                        image::Luma([(v * 255.0).round() as u8]),
                    );
                }
            }
        }
    }
    img.save(&out)?;
    println!("wrote {out} (top: y, y + r₁, …; bottom: the reconstructions)");
    Ok(())
}
