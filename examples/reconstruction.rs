//! An image-to-image network and its instabilities, in the setting of Antun et al. (PNAS 2020):
//! a network learns to undo random pixel subsampling of the embedded digits (`A`: half the pixels
//! measured, the rest zero), then the worst-case perturbation search looks for a small change `r`
//! of the *image* that changes the reconstruction `f(A(x + r))` a lot — as the study does, so the
//! perturbation is one a measurement can carry — beside noise of the same norm added to the
//! measurements.
//!
//! ```text
//! cargo run --release --example reconstruction [--arch unet|cnn] [OUT.png]
//! ```
//!
//! `--arch unet` (the default) is a U-Net of width 32 and depth 2 (`cnnkit::zoo::unet`), the kind
//! of network the study audits; `--arch cnn` four 3x3 convolutions of 32 channels.
//!
//! Prints the test error against the subsampled input's, the search's table (the study's
//! objective: the reconstruction's error against the true image), and writes a strip: the
//! perturbed images `x, x + r₁, …`, what the network sees `A(x + r)`, and its reconstructions.

use cnnkit::stability::{
    Degradation, Objective, Operator, PerturbationSearch, worst_case_perturbation,
};
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
                other => return Err(format!("--arch {other}: unet or cnn").into()),
            }
        }
        Some(_) => return Err("--arch needs a value: unet or cnn".into()),
        None => true,
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

    // The search on one test digit x: the network sees A(x + r); r grows from a tiny random
    // start. The measurement operator is the degradation's own mask.
    let [_, h, w] = train.shape();
    let op = Operator::subsample(h, w, 0.5, 1);
    let x = &te.targets()[..h * w];
    let ax = op.apply(train.shape(), x)?;
    m.eval();
    let fx = m.forward(&ax, 1)?.to_vec();
    let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let err0: Vec<f32> = fx.iter().zip(x).map(|(a, b)| a - b).collect();
    println!(
        "digit {}: reconstruction error ‖f(Ax) − x‖/‖x‖ = {:.3} without perturbation",
        test.labels().first().copied().unwrap_or(0),
        norm(&err0) / norm(x)
    );
    let s = PerturbationSearch {
        lambda: 0.05,
        step: 0.001,
        iterations: 120,
        record_every: 15,
        operator: Some(op.clone()),
        objective: Objective::ErrorToImage,
        ..Default::default()
    };
    let steps = worst_case_perturbation(m, x, &s)?;
    println!(
        "| iteration | ‖r‖/‖x‖ | ‖Ar‖/‖Ax‖ | error ‖f(A(x+r))−x‖/‖x‖ | ‖f(A(x+r))−f(Ax)‖/‖f(Ax)‖ | measurement noise of ‖Ar‖: error | noise: output change |"
    );
    println!("|---|---|---|---|---|---|---|");
    for st in &steps {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            st.iteration,
            st.size,
            st.measured_size,
            st.error.unwrap_or(f32::NAN),
            st.output_change,
            st.noise_error.unwrap_or(f32::NAN),
            st.noise_output_change
        );
    }

    // The strip: 8x8 panels magnified 8 times; rows x + r, A(x + r), f(A(x + r)).
    let mut images = vec![x.to_vec()];
    images.extend(steps.iter().map(|st| {
        x.iter()
            .zip(&st.perturbation)
            .map(|(a, b)| a + b)
            .collect::<Vec<_>>()
    }));
    let measured: Vec<Vec<f32>> = images
        .iter()
        .map(|v| op.apply(train.shape(), v))
        .collect::<Result<_, _>>()?;
    let recon: Vec<Vec<f32>> = measured
        .iter()
        .map(|v| m.forward(v, 1).map(|o| o.to_vec()))
        .collect::<Result<_, _>>()?;
    let (scale, gap, k) = (8usize, 4usize, images.len());
    let (pw, width, height) = (
        8 * scale,
        k * 8 * scale + (k - 1) * gap,
        3 * 8 * scale + 2 * gap,
    );
    let mut img = image::GrayImage::from_pixel(width as u32, height as u32, image::Luma([255]));
    for col in 0..k {
        for (row, panel) in [&images[col], &measured[col], &recon[col]]
            .into_iter()
            .enumerate()
        {
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
    println!(
        "wrote {out} (rows: x, x + r₁, …; what the network sees, A(x + r); its reconstructions)"
    );
    Ok(())
}
