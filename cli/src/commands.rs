//! `cnnkit eval`, `cnnkit predict` and `cnnkit preprocess`.

use crate::pipeline::{self, Pipeline};
use crate::{EvalArgs, PredictArgs, PreprocessArgs};
use anyhow::{Context, Result, bail};
use cnnkit::data::normalize_images;
use cnnkit::image::load_image;
use cnnkit::preprocess::{self, Filter, Gray};
use cnnkit::{Sequential, evaluate, predict as predict_probs};
use std::path::{Path, PathBuf};

/// Loads a model saved by `cnnkit train` and its pipeline.
fn load_model(path: &Path) -> Result<(Sequential, Pipeline)> {
    let (model, meta) = Sequential::load(path)?;
    let pipe = Pipeline::from_json(meta.get(pipeline::KEY).with_context(|| {
        format!(
            "{}: no {} metadata (not saved by cnnkit train)",
            path.display(),
            pipeline::KEY
        )
    })?)
    .with_context(|| path.display().to_string())?;
    if pipe.classes.len() != model.output_len() {
        bail!(
            "{}: {} class names for {} outputs",
            path.display(),
            pipe.classes.len(),
            model.output_len()
        );
    }
    Ok((model, pipe))
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let (mut model, pipe) = load_model(&a.model)?;
    let data = match (&a.data, pipe.source.as_str()) {
        (None, "digits") => None,
        (None, _) => bail!(
            "--data is needed: the model was trained on {} data",
            pipe.source
        ),
        (Some(p), _) => Some(p.as_path()),
    };
    let loaded = pipeline::load(data, &pipe.image_options(), false)?;
    let mut ds = loaded.test.unwrap_or(loaded.train);
    if ds.classes() != pipe.classes.as_slice() {
        bail!(
            "the data's classes {:?} differ from the model's {:?}",
            ds.classes(),
            pipe.classes
        );
    }
    if ds.shape() != model.input_shape() {
        let [c, h, w] = ds.shape();
        bail!(
            "the data's images are {c}x{h}x{w}; the model takes {:?}",
            model.input_shape()
        );
    }
    ds.normalize(&pipe.mean, &pipe.std)?;
    let m = evaluate(&mut model, &ds, 256)?;
    println!(
        "{} images: accuracy {:.2}%, loss {:.4}",
        ds.len(),
        100.0 * m.accuracy,
        m.loss
    );
    print!("{}", m.report(&pipe.classes));
    println!("confusion matrix (rows: true class, columns: predicted):");
    print!("{}", m.confusion_table(&pipe.classes));
    Ok(())
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    let (mut model, pipe) = load_model(&a.model)?;
    let opts = pipe.image_options();
    for path in &a.images {
        let (mut x, shape) = load_image(path, &opts)?;
        normalize_images(shape, &mut x, &pipe.mean, &pipe.std)?;
        let p = predict_probs(&mut model, &x, 1)?;
        let best = p
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > p[b] { i } else { b });
        let probs: Vec<String> = pipe
            .classes
            .iter()
            .zip(&p)
            .map(|(c, v)| format!("{c}={v:.4}"))
            .collect();
        println!(
            "{}: {} ({:.2}%)  [{}]",
            path.display(),
            pipe.classes[best],
            100.0 * p[best],
            probs.join(" ")
        );
    }
    Ok(())
}

fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read the folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            images_under(&p, out)?;
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["png", "jpg", "jpeg"]
                .iter()
                .any(|x| e.eq_ignore_ascii_case(x))
        }) {
            out.push(p);
        }
    }
    Ok(())
}

/// One image through the grey pipeline; 16-bit inputs stay 16-bit (CLAHE and resize), 8-bit ones
/// get every step.
fn enhance(input: &Path, output: &Path, a: &PreprocessArgs) -> Result<()> {
    let img = image::ImageReader::open(input)
        .with_context(|| format!("{}: cannot open", input.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", input.display()))?
        .decode()
        .with_context(|| format!("{}: cannot decode image", input.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let ctx = || input.display().to_string();
    let resize = |g: Gray<f32>| -> Result<Gray<f32>> {
        match a.size {
            Some([oh, ow]) => {
                let f = if ow <= w && oh <= h {
                    Filter::Area
                } else {
                    Filter::Bilinear
                };
                Ok(preprocess::resize(&g, ow, oh, f).with_context(ctx)?)
            }
            None => Ok(g),
        }
    };
    if let image::DynamicImage::ImageLuma16(_) = img {
        if a.equalize || a.contrast != 1.0 || a.brightness != 0.0 {
            bail!(
                "{}: --equalize, --contrast and --brightness work on 8-bit images; this one is 16-bit",
                input.display()
            );
        }
        let mut g = Gray::new(w, h, img.to_luma16().into_raw()).with_context(ctx)?;
        if let Some(c) = &a.clahe {
            g = preprocess::clahe(&g, c).with_context(ctx)?;
        }
        let f = resize(
            Gray::new(w, h, g.into_data().into_iter().map(|v| v as f32).collect())
                .with_context(ctx)?,
        )?;
        let (ow, oh) = (f.width(), f.height());
        let px: Vec<u16> = f
            .data()
            .iter()
            .map(|v| v.round().clamp(0.0, 65535.0) as u16)
            .collect();
        let buf = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(ow as u32, oh as u32, px)
            .context("image size")?;
        return save(output, || buf.save(output));
    }
    let mut g = Gray::new(w, h, img.to_luma8().into_raw()).with_context(ctx)?;
    if let Some(c) = &a.clahe {
        g = preprocess::clahe(&g, c).with_context(ctx)?;
    }
    if a.equalize {
        g = preprocess::equalize_hist(&g);
    }
    if a.contrast != 1.0 || a.brightness != 0.0 {
        g = preprocess::adjust(&g, a.contrast, a.brightness);
    }
    let f = resize(
        Gray::new(w, h, g.into_data().into_iter().map(f32::from).collect()).with_context(ctx)?,
    )?;
    let (ow, oh) = (f.width(), f.height());
    let px: Vec<u8> = f
        .data()
        .iter()
        .map(|v| v.round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    let buf = image::GrayImage::from_raw(ow as u32, oh as u32, px).context("image size")?;
    save(output, || buf.save(output))
}

fn save(output: &Path, f: impl FnOnce() -> image::ImageResult<()>) -> Result<()> {
    if let Some(d) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)
            .with_context(|| format!("{}: cannot create the folder", d.display()))?;
    }
    f().with_context(|| format!("{}: cannot write the image", output.display()))
}

pub fn preprocess(a: &PreprocessArgs) -> Result<()> {
    if !a.input.exists() {
        bail!("{}: no such file or directory", a.input.display());
    }
    if !(a.contrast.is_finite() && a.brightness.is_finite()) {
        bail!("--contrast and --brightness must be finite numbers");
    }
    if a.input.is_dir() {
        let mut files = Vec::new();
        images_under(&a.input, &mut files)?;
        if files.is_empty() {
            bail!(
                "{}: no .png, .jpg or .jpeg images in this folder",
                a.input.display()
            );
        }
        for f in &files {
            let rel = f.strip_prefix(&a.input).unwrap_or(f);
            enhance(f, &a.output.join(rel).with_extension("png"), a)?;
        }
        println!("wrote {} images to {}", files.len(), a.output.display());
    } else {
        enhance(&a.input, &a.output, a)?;
        println!("wrote {}", a.output.display());
    }
    Ok(())
}
