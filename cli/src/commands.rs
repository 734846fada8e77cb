//! `cnnkit eval`, `cnnkit predict` and `cnnkit preprocess`.

use crate::output::{Outputs, outln};
use crate::pipeline::{self, Pipeline};
use crate::{EvalArgs, PredictArgs, PreprocessArgs};
use anyhow::{Context, Result, bail};
use cnnkit::data::normalize_images;
use cnnkit::image::load_image;
use cnnkit::preprocess::{self, Filter, Gray};
use cnnkit::{Sequential, Shape3, evaluate_scores, predict as predict_probs};
use std::path::{Path, PathBuf};

/// Loads a model saved by `cnnkit train` and its pipeline; or, given `--arch`, a state dict
/// saved elsewhere, for inputs of `input` with classes `classes` and no normalisation.
pub fn load_model(
    path: &Path,
    arch: Option<&str>,
    input: impl FnOnce() -> Result<(Shape3, Vec<String>, String)>,
) -> Result<(Sequential, Pipeline)> {
    if is_onnx(path) {
        if arch.is_some() {
            bail!(
                "{}: an ONNX file holds its architecture; --arch is not used with it",
                path.display()
            );
        }
        return load_onnx(path, input);
    }
    if let Some(arch) = arch {
        let (shape, classes, source) = input()?;
        let classes_n = classes.len().max(1);
        let graph = crate::train::architecture(arch, classes_n, shape)?;
        let mut model = Sequential::load_with_graph(path, graph)
            .with_context(|| format!("{} with --arch {arch}", path.display()))?;
        model.eval();
        return Ok((model, Pipeline::plain(source, classes, shape)));
    }
    let (model, meta) = Sequential::load(path).map_err(|e| match e {
        cnnkit::Error::File { reason, .. } if reason.contains(cnnkit::checkpoint::ARCH_KEY) => {
            anyhow::anyhow!(
                "{}: no architecture in the file (saved outside cnnkit?): give it with --arch, such as --arch \"conv(32,3,p=1),relu,flatten,dense(10)\"",
                path.display()
            )
        }
        e => e.into(),
    })?;
    let pipe = Pipeline::from_json(meta.get(pipeline::KEY).with_context(|| {
        format!(
            "{}: no {} metadata (not saved by cnnkit train): give the architecture with --arch",
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

/// Whether `path` names an ONNX file (by its extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Reads an ONNX model for inputs of shape `shape` (`None`: the file's own), saying which
/// file and what is wrong when it cannot be read.
pub fn read_onnx(path: &Path, shape: Option<Shape3>) -> Result<cnnkit::onnx::Imported> {
    let options = cnnkit::onnx::ImportOptions {
        input: shape,
        ..Default::default()
    };
    Ok(cnnkit::onnx::read(path, &options)?)
}

/// An ONNX model and its pipeline: the one `cnnkit export` recorded in it, or (a model from
/// elsewhere) images as the data gives them, or as the model's input, without normalisation.
fn load_onnx(
    path: &Path,
    input: impl FnOnce() -> Result<(Shape3, Vec<String>, String)>,
) -> Result<(Sequential, Pipeline)> {
    let mut input = Some(input);
    let mut given = None;
    let im = match read_onnx(path, None) {
        Ok(im) => im,
        // Symbolic height and width: the data (or --size) says what they are.
        Err(e) if format!("{e:#}").contains("symbolic") => {
            let asked = input.take().map_or_else(|| bail!("no input"), |f| f());
            let g = asked.with_context(|| format!("{e:#}"))?;
            let shape = g.0;
            given = Some(g);
            read_onnx(path, Some(shape))?
        }
        Err(e) => return Err(e),
    };
    let model = im.model;
    if let Some(json) = im.metadata.get(pipeline::KEY) {
        let pipe = Pipeline::from_json(json).with_context(|| path.display().to_string())?;
        if pipe.classes.len() != model.output_len() {
            bail!(
                "{}: {} class names for {} outputs",
                path.display(),
                pipe.classes.len(),
                model.output_len()
            );
        }
        return Ok((model, pipe));
    }
    let asked = match given {
        Some(g) => Ok(g),
        None => input.take().map_or_else(|| bail!("no input"), |f| f()),
    };
    let (classes, source) = match asked {
        Ok((_, classes, source)) => (classes, source),
        // No data given (predict): numbered classes, images resized to the model's input.
        Err(_) => (Vec::new(), "folder".to_string()),
    };
    let pipe = Pipeline::plain(source, classes, model.input_shape());
    Ok((model, pipe))
}

/// `cnnkit export`: a model as ONNX, its pipeline (normalisation, class names, preprocessing)
/// recorded as metadata.
pub fn export(a: &crate::ExportArgs) -> Result<()> {
    let (model, pipe) = model_for_images(&a.model, &a.foreign)?;
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(pipeline::KEY.to_string(), pipe.to_json());
    metadata.insert(
        "classes".to_string(),
        serde_json::to_string(&pipe.classes).context("class names")?,
    );
    metadata.insert(
        "input_normalization".to_string(),
        serde_json::json!({"mean": pipe.mean, "std": pipe.std}).to_string(),
    );
    let options = cnnkit::onnx::ExportOptions {
        metadata,
        ..Default::default()
    };
    cnnkit::onnx::save(&model, &a.onnx, &options)
        .with_context(|| format!("{} to ONNX", a.model.display()))?;
    let [c, h, w] = model.input_shape();
    outln!(
        "wrote {} (input {c}x{h}x{w} named input, {} outputs named output, normalisation and {} class names in its metadata)",
        a.onnx.display(),
        model.output_len(),
        pipe.classes.len()
    )?;
    Ok(())
}

/// A model and the data to test it on (as `eval` finds it: `--data`, or the data the model was
/// trained on), checked against each other; the images are pixels, not yet normalised.
pub fn model_and_test_data(
    model: &Path,
    data: Option<&PathBuf>,
    foreign: &crate::ForeignModel,
) -> Result<(Sequential, Pipeline, cnnkit::data::Dataset)> {
    // With --arch, the data says what the inputs and classes are.
    let mut early = None;
    let (model, pipe) = load_model(model, foreign.arch.as_deref(), || {
        let Some(data) = data else {
            bail!("--arch needs --data: the images to evaluate on");
        };
        let opts = foreign.image_options();
        let given = opts.size.is_some() || opts.grayscale;
        let loaded = pipeline::load(Some(data), &opts, given)?;
        let ds = loaded.test.unwrap_or(loaded.train);
        let r = (ds.shape(), ds.classes().to_vec(), loaded.source.to_string());
        early = Some(ds);
        Ok(r)
    })?;
    let ds = match early {
        Some(ds) => ds,
        None => {
            let data = match (data, pipe.source.as_str(), &pipe.data) {
                (Some(p), _, _) => Some(p.clone()),
                (None, "digits", _) => None,
                (None, source, Some(p)) if Path::new(p).is_dir() => {
                    outln!("data: {p} (the {source} data the model was trained on)")?;
                    Some(PathBuf::from(p))
                }
                (None, source, Some(p)) => bail!(
                    "--data is needed: the model was trained on the {source} data in {p}, which is not there any more"
                ),
                (None, source, None) => bail!(
                    "--data is needed: the model was trained on {source} data whose location it does not record"
                ),
            };
            let loaded = pipeline::load(data.as_deref(), &pipe.image_options(), false)?;
            loaded.test.unwrap_or(loaded.train)
        }
    };
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
    Ok((model, pipe, ds))
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let (mut model, pipe, mut ds) = model_and_test_data(&a.model, a.data.as_ref(), &a.foreign)?;
    ds.normalize(&pipe.mean, &pipe.std)?;
    let (m, scores) = evaluate_scores(&mut model, &ds, 256)?;
    outln!(
        "{} images: accuracy {:.2}%, loss {:.4}",
        ds.len(),
        100.0 * m.accuracy,
        m.loss
    )?;
    crate::output::text(format_args!("{}", m.report(&pipe.classes)))?;
    outln!("confusion matrix (rows: true class, columns: predicted):")?;
    crate::output::text(format_args!("{}", m.confusion_table(&pipe.classes)))?;
    // The decision rule `predict` applies, on this data.
    let rates = pipe
        .threshold
        .as_ref()
        .and_then(|(t, why)| Some((cnnkit::metrics::rates_at(ds.labels(), &scores, *t)?, why)));
    if let Some((r, why)) = rates {
        outln!(
            "at the stored threshold {:.4} ({why}): sensitivity {:.4}, specificity {:.4}",
            r.threshold,
            r.sensitivity,
            r.specificity
        )?;
    }
    Ok(())
}

/// A model for classifying image files: saved by `cnnkit train`, or a state dict with `--arch`
/// and `--size` (numbered classes).
pub fn model_for_images(
    path: &Path,
    foreign: &crate::ForeignModel,
) -> Result<(Sequential, Pipeline)> {
    let (model, pipe) = load_model(path, foreign.arch.as_deref(), || {
        let Some([h, w]) = foreign.size else {
            bail!("--arch needs --size HxW: the model's input size");
        };
        let c = foreign.image_options().channels();
        Ok(([c, h, w], Vec::new(), "folder".to_string()))
    })?;
    let pipe = if pipe.classes.is_empty() {
        Pipeline {
            classes: (0..model.output_len()).map(|i| i.to_string()).collect(),
            ..pipe
        }
    } else {
        pipe
    };
    Ok((model, pipe))
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    let (mut model, pipe) = model_for_images(&a.model, &a.foreign)?;
    let opts = pipe.image_options();
    let classes = pipe.classes.len();
    let threshold = match (a.threshold, &pipe.threshold) {
        (Some(t), _) if !(0.0..=1.0).contains(&t) => bail!("--threshold {t}: must be in [0, 1]"),
        (Some(t), _) => Some((t, "--threshold".to_string())),
        (None, Some((t, why))) => Some((*t, why.clone())),
        (None, None) => None,
    };
    if threshold.is_some() && classes != 2 {
        bail!("a decision threshold needs a two-class model, this one has {classes} classes");
    }
    let mut paths = Vec::new();
    for p in &a.images {
        if p.is_dir() {
            paths.extend(cnnkit::image::images_under(p)?);
        } else {
            paths.push(p.clone());
        }
    }
    if let Some(csv) = &a.csv {
        let mut outputs = Outputs::default();
        outputs.input(&a.model);
        paths.iter().for_each(|p| outputs.input(p));
        outputs.plan(csv, "--csv")?;
    }
    if let Some((t, why)) = &threshold {
        outln!(
            "decision: {} when P({}) >= {t:.4} ({why})",
            pipe.classes[1],
            pipe.classes[1]
        )?;
    }
    let mut csv = String::from("path,predicted");
    for c in &pipe.classes {
        csv.push_str(&format!(",p_{}", csv_field(c)));
    }
    csv.push('\n');
    let k = a.top_k.unwrap_or(classes).clamp(1, classes.max(1));
    for path in &paths {
        let (mut x, shape) = load_image(path, &opts)?;
        normalize_images(shape, &mut x, &pipe.mean, &pipe.std)?;
        let p = predict_probs(&mut model, &x, 1)?;
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&i, &j| p[j].total_cmp(&p[i]).then(i.cmp(&j)));
        let predicted = match &threshold {
            Some((t, _)) => usize::from(p[1] >= *t),
            None => order[0],
        };
        let top: Vec<String> = order[..k.min(order.len())]
            .iter()
            .map(|&i| format!("{}={:.4}", pipe.classes[i], p[i]))
            .collect();
        outln!(
            "{}: {} ({:.2}%)  [{}]",
            path.display(),
            pipe.classes[predicted],
            100.0 * p[predicted],
            top.join(" ")
        )?;
        csv.push_str(&format!(
            "{},{}",
            csv_field(&path.display().to_string()),
            csv_field(&pipe.classes[predicted])
        ));
        for v in &p {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    if let Some(out) = &a.csv {
        cnnkit::checkpoint::write_atomic(out, csv.as_bytes())
            .with_context(|| format!("--csv {}", out.display()))?;
        outln!("wrote {} ({} images)", out.display(), paths.len())?;
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One image through the grey pipeline; 16-bit inputs stay 16-bit (CLAHE and resize), 8-bit ones
/// get every step.
fn enhance(input: &Path, output: &Path, a: &PreprocessArgs) -> Result<()> {
    // A pipe or device would block the open, or never end.
    if !std::fs::metadata(input).is_ok_and(|m| m.is_file()) {
        bail!(
            "{}: not a regular file (a pipe, device or socket): give an image file",
            input.display()
        );
    }
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
        return write_image(output, image::DynamicImage::ImageLuma16(buf));
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
    write_image(output, image::DynamicImage::ImageLuma8(buf))
}

/// Encodes `img` in the format `output`'s extension names (PNG when it names none) and writes it
/// atomically, creating its folder.
fn write_image(output: &Path, img: image::DynamicImage) -> Result<()> {
    let format = image::ImageFormat::from_path(output).unwrap_or(image::ImageFormat::Png);
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .with_context(|| format!("{}: cannot encode the image", output.display()))?;
    if let Some(d) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)
            .with_context(|| format!("{}: cannot create the folder", d.display()))?;
    }
    cnnkit::checkpoint::write_atomic(output, bytes.get_ref())
        .with_context(|| format!("{}: cannot write the image", output.display()))
}

pub fn preprocess(a: &PreprocessArgs) -> Result<()> {
    if !a.input.exists() {
        if crate::parse_clahe(&a.input.to_string_lossy()).is_ok() {
            bail!(
                "{}: no such file; to give CLAHE a setting, write --clahe={}",
                a.input.display(),
                a.input.display()
            );
        }
        bail!("{}: no such file or directory", a.input.display());
    }
    if a.input.is_dir() {
        // Writing inside the input folder would add the output as a new class folder.
        let normal = crate::output::normal;
        let (input, output) = (normal(&a.input), normal(&a.output));
        if output.starts_with(&input) {
            bail!(
                "{}: the output folder is inside the input folder {}; choose one outside it",
                a.output.display(),
                a.input.display()
            );
        }
    }
    if !(a.contrast.is_finite() && a.brightness.is_finite()) {
        bail!("--contrast and --brightness must be finite numbers");
    }
    let mut outputs = Outputs::default();
    if a.input.is_dir() {
        let files = cnnkit::image::images_under(&a.input)?;
        if files.is_empty() {
            bail!(
                "{}: no .png, .jpg or .jpeg images in this folder",
                a.input.display()
            );
        }
        files.iter().for_each(|f| outputs.input(f));
        // Every output is planned before the first is written: `x.png` and `x.jpg` would both
        // become `x.png`.
        let mut plan = Vec::with_capacity(files.len());
        for f in &files {
            let rel = f.strip_prefix(&a.input).unwrap_or(f);
            let out = a.output.join(rel).with_extension("png");
            outputs.plan(&out, &f.display().to_string())?;
            plan.push((f, out));
        }
        for (f, out) in &plan {
            enhance(f, out, a)?;
        }
        outln!("wrote {} images to {}", files.len(), a.output.display())?;
    } else {
        outputs.input(&a.input);
        outputs.plan(&a.output, "the output")?;
        enhance(&a.input, &a.output, a)?;
        outln!("wrote {}", a.output.display())?;
    }
    Ok(())
}
