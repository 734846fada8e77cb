//! Writes a folder of synthetic chest-X-ray-like grey images in two classes, imbalanced like real
//! sets: `normal` (a body, two darker lung fields, ribs, noise) and `opacity` (the same with a
//! faint hazy patch in one lung), four normal images for each opacity one in `train/`, balanced
//! in `test/`. For trying `cnnkit train` end to end without a download.
//!
//! ```text
//! cargo run --release --example synthetic_xrays -- DIR [SIZE] [TRAIN_MINORITY] [RATIO]
//! ```
//!
//! (defaults: 64 pixels, 100 opacity images, ratio 4: 500 training and 200 test images).

use cnnkit::rng::Rng;
use std::path::Path;

/// One `size`x`size` image with pixels in `[0, 1]`, row-major, drawn from `rng`.
pub fn image(rng: &mut Rng, size: usize, opacity: bool) -> Vec<f32> {
    let s = size as f32;
    let jitter = |rng: &mut Rng, v: f32| v + rng.uniform(-0.04, 0.04) * s;
    let (bx, by) = (jitter(rng, 0.5 * s), jitter(rng, 0.55 * s));
    let (bw, bh) = (jitter(rng, 0.42 * s), jitter(rng, 0.45 * s));
    let lungs = [
        (jitter(rng, 0.33 * s), jitter(rng, 0.48 * s)),
        (jitter(rng, 0.67 * s), jitter(rng, 0.48 * s)),
    ];
    let (lw, lh) = (jitter(rng, 0.13 * s), jitter(rng, 0.27 * s));
    let rib_phase = rng.uniform(0.0, std::f32::consts::TAU);
    let rib_period = rng.uniform(0.09, 0.12) * s;
    // The patch: in a random lung, a Gaussian haze.
    let side = rng.below(2);
    let (px, py) = (
        lungs[side].0 + rng.uniform(-0.5, 0.5) * lw,
        lungs[side].1 + rng.uniform(-0.5, 0.5) * lh,
    );
    let (amp, sigma) = (rng.uniform(0.15, 0.30), rng.uniform(0.06, 0.12) * s);
    let mut img = vec![0.0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let inside = |cx: f32, cy: f32, rx: f32, ry: f32| {
                ((fx - cx) / rx).powi(2) + ((fy - cy) / ry).powi(2)
            };
            let mut v = 0.08;
            if inside(bx, by, bw, bh) <= 1.0 {
                v = 0.72;
            }
            for &(lx, ly) in &lungs {
                let d = inside(lx, ly, lw, lh);
                if d <= 1.0 {
                    // Darker towards the middle of the lung field.
                    v = 0.22 + 0.12 * d;
                }
            }
            v += 0.05 * (std::f32::consts::TAU * fy / rib_period + rib_phase).sin();
            if opacity {
                let r2 = (fx - px).powi(2) + (fy - py).powi(2);
                v += amp * (-r2 / (2.0 * sigma * sigma)).exp();
            }
            v += 0.06 * rng.normal() as f32;
            img[y * size + x] = v.clamp(0.0, 1.0);
        }
    }
    img
}

/// Writes `DIR/{train,test}/{normal,opacity}/*.png`: `minority` opacity and `ratio·minority`
/// normal training images, and a balanced test set of `minority` per class.
pub fn write(
    dir: &Path,
    size: usize,
    minority: usize,
    ratio: usize,
    seed: u64,
) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    for (split, per_class) in [
        ("train", [ratio * minority, minority]),
        ("test", [minority, minority]),
    ] {
        for (class, count) in ["normal", "opacity"].into_iter().zip(per_class) {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d)?;
            for i in 0..count {
                let px = image(&mut rng, size, class == "opacity");
                let bytes: Vec<u8> = px.iter().map(|v| (v * 255.0).round() as u8).collect();
                let img = image::GrayImage::from_raw(size as u32, size as u32, bytes)
                    .expect("size·size bytes");
                img.save(d.join(format!("{i:04}.png")))
                    .map_err(std::io::Error::other)?;
            }
        }
    }
    Ok(())
}

#[allow(dead_code)]
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: synthetic_xrays DIR [SIZE] [TRAIN_MINORITY] [RATIO]");
        std::process::exit(2);
    };
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (size, minority, ratio) = (num(1, 64), num(2, 100), num(3, 4));
    write(Path::new(dir), size, minority, ratio, 7)?;
    println!(
        "wrote {dir}/train ({} normal, {minority} opacity) and {dir}/test ({minority} each), {size}x{size}",
        ratio * minority
    );
    Ok(())
}
