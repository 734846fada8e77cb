//! `cnnkit robustness`, `cnnkit perturb` and `cnnkit saliency`, and `train --adversarial`.

use crate::ForeignModel;
use crate::commands::{model_and_test_data, model_for_images};
use crate::output::{Outputs, outln};
use crate::pipeline::Pipeline;
use anyhow::{Context, Result, bail};
use clap::Args;
use cnnkit::stability::{
    Attack, AttackKind, AttackNorm, MinimalSearch, MinimalSummary, Normalization,
    PerturbationSearch, SaliencyMethod, minimal_perturbations, robustness_curve, signed_overlay,
    worst_case_perturbation,
};
use cnnkit::{AdversarialTraining, Sequential};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Options of `cnnkit robustness`.
#[derive(Args, Debug)]
pub struct RobustnessArgs {
    /// A model saved by `cnnkit train` (or a state dict with --arch).
    pub model: PathBuf,
    /// Test data (as for eval); default: the data the model was trained on.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// fgsm, pgd or noise (random perturbations of the same norm only).
    #[arg(long, default_value = "fgsm")]
    pub attack: String,
    /// Budgets, comma-separated, in pixel units (pixels in [0, 1]).
    #[arg(
        long,
        default_value = "0.01,0.02,0.05,0.1,0.2",
        allow_hyphen_values = true
    )]
    pub eps: String,
    /// linf or l2.
    #[arg(long, default_value = "linf")]
    pub norm: String,
    /// PGD steps (of ε/4, from a random start).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Test at most this many images (the first ones).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Seed of the random starts and of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Instead of accuracy at fixed budgets: the smallest perturbation that changes each image's
    /// predicted class (a bisection on the budget over PGD of --steps steps, up to the whole
    /// pixel range), and its median and quartiles relative to the image's norm.
    #[arg(long)]
    pub minimal: bool,
    /// Halvings of the budget for --minimal.
    #[arg(long, default_value_t = 10)]
    pub bisections: usize,
    #[command(flatten)]
    pub foreign: ForeignModel,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `cnnkit perturb`.
#[derive(Args, Debug)]
pub struct PerturbArgs {
    /// A model saved by `cnnkit train` (or a state dict with --arch and --size).
    pub model: PathBuf,
    /// The image to perturb.
    pub image: PathBuf,
    /// λ, the price of the perturbation's size.
    #[arg(long, default_value_t = PerturbationSearch::default().lambda, allow_hyphen_values = true)]
    pub lambda: f32,
    /// Gradient-ascent step (small: the ascent grows the perturbation geometrically from a tiny
    /// random start, so the records go from invisible to class-changing).
    #[arg(long, default_value_t = PerturbationSearch::default().step, allow_hyphen_values = true)]
    pub step: f32,
    /// Ascent iterations.
    #[arg(long, default_value_t = PerturbationSearch::default().iterations)]
    pub iterations: usize,
    /// Record a perturbation every this many iterations.
    #[arg(long, default_value_t = PerturbationSearch::default().record_every)]
    pub record_every: usize,
    /// The PNG strip to write (default: IMAGE's name with .perturb.png, in the current folder). It
    /// shows the smallest recorded perturbation that changes the class (or the last one); a
    /// labelled figure of it is written beside it, with .svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub foreign: ForeignModel,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `cnnkit saliency`.
#[derive(Args, Debug)]
pub struct SaliencyArgs {
    /// A model saved by `cnnkit train` (or a state dict with --arch and --size).
    pub model: PathBuf,
    /// Images to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// grad, smoothgrad (50 samples, σ 0.15) or ig (integrated gradients from black, 50 steps).
    #[arg(long, default_value = "grad")]
    pub method: String,
    /// The class to explain (a name or number); default: each image's predicted class.
    #[arg(long)]
    pub class: Option<String>,
    /// Folder for the heat maps, written as NAME.METHOD.png.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Magnify the maps this many times (nearest neighbour); default: enough for 128 pixels
    /// along the longer side.
    #[arg(long)]
    pub scale: Option<usize>,
    #[command(flatten)]
    pub foreign: ForeignModel,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_norm(s: &str) -> Result<AttackNorm> {
    match s.to_ascii_lowercase().as_str() {
        "linf" | "inf" => Ok(AttackNorm::Linf),
        "l2" => Ok(AttackNorm::L2),
        _ => bail!("'{s}' is not a norm: use linf or l2"),
    }
}

fn normalization(pipe: &Pipeline) -> Result<Normalization> {
    Ok(Normalization::new(pipe.mean.clone(), pipe.std.clone())?)
}

/// `KIND[,eps=E][,norm=N][,steps=S][,fraction=F]` for a model trained on data normalised with
/// `(mean, std)`.
pub fn adversarial_training(
    spec: &str,
    (mean, std): &(Vec<f32>, Vec<f32>),
) -> Result<AdversarialTraining> {
    let mut parts = spec.split(',').map(str::trim);
    let kind: AttackKind = parts.next().unwrap_or("").parse()?;
    if kind == AttackKind::Noise {
        bail!("'noise' is not an attack to train against: use fgsm or pgd (or a noise(σ) layer)");
    }
    let (mut eps, mut norm, mut steps, mut fraction) = (0.1f32, AttackNorm::Linf, 7usize, 0.5f32);
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            bail!("'{p}' is not KEY=VALUE (eps, norm, steps or fraction)");
        };
        let num = || -> Result<f32> {
            v.parse()
                .ok()
                .filter(|x: &f32| x.is_finite())
                .with_context(|| format!("{k} = '{v}' is not a number"))
        };
        match k {
            "eps" => eps = num()?,
            "norm" => norm = parse_norm(v)?,
            "steps" => steps = v.parse().with_context(|| format!("steps = '{v}'"))?,
            "fraction" => fraction = num()?,
            _ => bail!("unknown setting '{k}': use eps, norm, steps or fraction"),
        }
    }
    if eps <= 0.0 {
        bail!("eps must be > 0");
    }
    if norm == AttackNorm::Linf && eps > 1.0 {
        bail!("eps = {eps} is larger than the whole pixel range [0, 1]");
    }
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("fraction = {fraction} must be in (0, 1]");
    }
    let attack = Attack {
        normalization: Some(Normalization::new(mean.clone(), std.clone())?),
        ..Attack::of_kind(kind, norm, eps, steps)
    };
    if kind == AttackKind::Pgd && steps == 0 {
        bail!("steps must be at least 1 for pgd");
    }
    attack.validate()?;
    Ok(AdversarialTraining { attack, fraction })
}

fn progress_bar(len: usize, prefix: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(prefix.to_string());
    b
}

/// `MODEL` with its extension replaced by `suffix` (`model.safetensors` → `model.SUFFIX`).
fn beside(model: &Path, suffix: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy());
    model.with_file_name(format!("{stem}.{suffix}"))
}

pub fn robustness(a: &RobustnessArgs) -> Result<()> {
    let kind: AttackKind = a.attack.parse().context("--attack")?;
    let norm = parse_norm(&a.norm).context("--norm")?;
    let eps: Vec<f32> = a
        .eps
        .split(',')
        .map(|e| {
            e.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .with_context(|| format!("--eps: '{e}' is not a budget (a number >= 0)"))
        })
        .collect::<Result<_>>()?;
    if a.steps == 0 && kind == AttackKind::Pgd {
        bail!("--steps must be at least 1 for pgd");
    }
    if a.limit == 0 {
        bail!("--limit must be at least 1");
    }
    if a.minimal && a.steps == 0 {
        bail!("--steps must be at least 1 for --minimal");
    }
    if a.minimal && a.bisections > 40 {
        bail!("--bisections: {} (at most 40)", a.bisections);
    }
    let (mut model, pipe, ds) = model_and_test_data(&a.model, a.data.as_ref(), &a.foreign)?;
    // No perturbation in [0, 1]ᵈ is larger than the range (L∞) or its diagonal (L2).
    let most = match norm {
        AttackNorm::L2 => (model.input_shape().iter().product::<usize>() as f32).sqrt(),
        _ => 1.0,
    };
    if a.minimal {
        return minimal(a, norm, most, &mut model, &pipe, &ds);
    }
    if let Some(e) = eps.iter().find(|&&e| e > most) {
        bail!("--eps: {e} is larger than any perturbation of an image in [0, 1] ({most} at most)");
    }
    let n = ds.len().min(a.limit);
    let d = ds.images().len() / ds.len().max(1);
    let (x, labels) = (&ds.images()[..n * d], &ds.labels()[..n]);
    let attack = Attack {
        seed: a.seed,
        normalization: Some(normalization(&pipe)?),
        ..Attack::of_kind(kind, norm, eps.iter().copied().fold(0.0, f32::max), a.steps)
    };
    let bar = progress_bar(0, &format!("{} on {n} images", a.attack));
    let curve = robustness_curve(
        &mut model,
        x,
        labels,
        n,
        &attack,
        &eps,
        64,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let norm_name = if norm == AttackNorm::Linf {
        "L∞"
    } else {
        "L2"
    };
    outln!(
        "{} ({norm_name}, pixel units) on {n} images of {}: clean accuracy {:.2}%",
        a.attack.to_uppercase(),
        a.model.display(),
        100.0 * curve.clean_accuracy
    )?;
    outln!(
        "| ε | accuracy under {} | accuracy under random noise |",
        a.attack
    )?;
    outln!("|---|---|---|")?;
    for p in &curve.points {
        outln!(
            "| {} | {:.2}% | {:.2}% |",
            p.eps,
            100.0 * p.accuracy,
            100.0 * p.noise_accuracy
        )?;
    }
    let tag = format!("robustness-{}-{}", a.attack, a.norm.to_ascii_lowercase());
    let (csv, svg) = (
        beside(&a.model, &format!("{tag}.csv")),
        beside(&a.model, &format!("{tag}.svg")),
    );
    cnnkit::checkpoint::write_atomic(&csv, curve.to_csv().as_bytes())?;
    let title = format!(
        "{}: accuracy under {} ({norm_name}) and random noise",
        a.model
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into()),
        a.attack.to_uppercase()
    );
    cnnkit::checkpoint::write_atomic(&svg, curve.to_svg(&title).as_bytes())?;
    outln!("wrote {} and {}", csv.display(), svg.display())?;
    Ok(())
}

/// `cnnkit robustness --minimal`.
fn minimal(
    a: &RobustnessArgs,
    norm: AttackNorm,
    most: f32,
    model: &mut Sequential,
    pipe: &Pipeline,
    ds: &cnnkit::data::Dataset,
) -> Result<()> {
    let n = ds.len().min(a.limit);
    let d = ds.images().len() / ds.len().max(1);
    let x = &ds.images()[..n * d];
    let search = MinimalSearch {
        steps: a.steps,
        bisections: a.bisections,
        normalization: Some(normalization(pipe)?),
        ..MinimalSearch::new(norm, most)
    };
    let bar = progress_bar(0, &format!("smallest class changes of {n} images"));
    let found = minimal_perturbations(model, x, n, &search, 64, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let s = MinimalSummary::of(&found);
    let norm_name = if norm == AttackNorm::Linf {
        "L∞"
    } else {
        "L2"
    };
    let q = |v: Option<f32>| v.map_or_else(|| "not changed".to_string(), |v| format!("{v:.4}"));
    outln!(
        "smallest change of the predicted class ({norm_name}, PGD of {} steps, {} bisections, \
         budget up to {most}) on {n} images of {}:",
        a.steps,
        a.bisections,
        a.model.display()
    )?;
    outln!(
        "changed {} of {} images; ‖r‖/‖x‖: lower quartile {}, median {}, upper quartile {}",
        s.found,
        s.total,
        q(s.quartiles[0]),
        q(s.quartiles[1]),
        q(s.quartiles[2])
    )?;
    let classes = ds.classes();
    let name = |c: usize| classes.get(c).map_or(c.to_string(), |s| s.to_string());
    let mut csv = String::from("image,class,new_class,size,relative\n");
    for (i, r) in found.iter().enumerate() {
        let opt = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
        csv += &format!(
            "{i},{},{},{},{}\n",
            name(r.class),
            r.new_class.map_or(String::new(), name),
            opt(r.size),
            opt(r.relative)
        );
    }
    let path = beside(
        &a.model,
        &format!("robustness-minimal-{}.csv", a.norm.to_ascii_lowercase()),
    );
    cnnkit::checkpoint::write_atomic(&path, csv.as_bytes())?;
    outln!("wrote {}", path.display())?;
    Ok(())
}

/// Loads `path` as the model's input, in pixels.
fn load_pixels(path: &Path, model: &Sequential, pipe: &Pipeline) -> Result<Vec<f32>> {
    // Loading first: it refuses what is not a regular file (a FIFO would block a reader).
    let (x, shape) = cnnkit::image::load_image(path, &pipe.image_options())?;
    let [_, h, w] = model.input_shape();
    if let Ok((iw, ih)) = image::image_dimensions(path)
        && (iw as usize, ih as usize) != (w, h)
    {
        crate::output::warn(format_args!(
            "note: {} is {iw}x{ih}; resized to {w}x{h}, the model's input",
            path.display()
        ));
    }
    if shape != model.input_shape() {
        bail!(
            "{}: {:?} after loading, the model takes {:?}",
            path.display(),
            shape,
            model.input_shape()
        );
    }
    Ok(x)
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// Writes `rgb` (`w·h·3`) as a PNG, atomically.
fn write_png(path: &Path, w: usize, h: usize, rgb: Vec<u8>) -> Result<()> {
    let png = crate::figure::png_bytes(w, h, rgb)
        .with_context(|| format!("{}: cannot encode", path.display()))?;
    write_encoded(path, &png)
}

/// Writes encoded `bytes` to `path`, atomically, creating its folder (with a note) if missing.
fn write_encoded(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
        crate::output::warn(format_args!("note: created the folder {}", d.display()));
    }
    cnnkit::checkpoint::write_atomic(path, bytes)?;
    Ok(())
}

/// `rgb` (`w·h·3`) magnified `s` times by repeating pixels: the picture and its size.
fn magnify(rgb: &[u8], w: usize, h: usize, s: usize) -> (Vec<u8>, usize, usize) {
    let (bw, bh) = (w * s, h * s);
    let mut out = Vec::with_capacity(bw * bh * 3);
    for y in 0..bh {
        for x in 0..bw {
            let i = ((y / s) * w + x / s) * 3;
            out.extend_from_slice(&rgb[i..i + 3]);
        }
    }
    (out, bw, bh)
}

/// The mean over channels of CHW `v`, per pixel.
fn grey(v: &[f32], c: usize, plane: usize) -> Vec<f32> {
    (0..plane)
        .map(|i| (0..c).map(|ch| v[ch * plane + i]).sum::<f32>() / c as f32)
        .collect()
}

/// The most ascent iterations `perturb` runs (each is a forward and a backward pass).
const MAX_ITERATIONS: usize = 1_000_000;

pub fn perturb(a: &PerturbArgs) -> Result<()> {
    if a.iterations > MAX_ITERATIONS {
        bail!(
            "--iterations {}: at most {MAX_ITERATIONS} (the search grows r geometrically; a \
             larger --step goes further)",
            a.iterations
        );
    }
    if let Some(out) = &a.out
        && out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        bail!(
            "--out {}: name the PNG strip; its figure is written beside it, with .svg",
            out.display()
        );
    }
    let (mut model, pipe) = model_for_images(&a.model, &a.foreign)?;
    let x = load_pixels(&a.image, &model, &pipe)?;
    let s = PerturbationSearch {
        lambda: a.lambda,
        step: a.step,
        iterations: a.iterations,
        record_every: a.record_every,
        normalization: Some(normalization(&pipe)?),
        ..PerturbationSearch::default()
    };
    let bar = progress_bar(1, "searching");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let steps = worst_case_perturbation(&mut model, &x, &s)?;
    bar.finish_and_clear();
    let nm = normalization(&pipe)?;
    let [c, h, w] = model.input_shape();
    let probs = |m: &mut Sequential, px: &[f32]| -> Result<Vec<f32>> {
        let mut input = vec![0.0; px.len()];
        nm.to_input(h * w, px, &mut input);
        m.eval();
        Ok(softmax(m.forward(&input, 1)?))
    };
    let p0 = probs(&mut model, &x)?;
    let c0 = argmax(&p0);
    outln!(
        "{}: predicted {} ({:.2}%)",
        a.image.display(),
        pipe.classes[c0],
        100.0 * p0[c0]
    )?;
    outln!(
        "| iteration | ‖r‖/‖x‖ | ‖f(x+r)−f(x)‖/‖f(x)‖ | class | same-size noise: output change | noise: class |"
    )?;
    outln!("|---|---|---|---|---|---|")?;
    for st in &steps {
        let xr: Vec<f32> = x.iter().zip(&st.perturbation).map(|(a, b)| a + b).collect();
        let p = probs(&mut model, &xr)?;
        let changed = |c: Option<bool>| match c {
            Some(true) => "changed",
            Some(false) => "same",
            None => "-",
        };
        outln!(
            "| {} | {:.4} | {:.4} | {} ({}) | {:.4} | {} |",
            st.iteration,
            st.size,
            st.output_change,
            pipe.classes[argmax(&p)],
            changed(st.class_changed),
            st.noise_output_change,
            changed(st.noise_class_changed)
        )?;
    }
    if let Some(last) = steps.last()
        && last.size < 1e-3
        && last.class_changed != Some(true)
    {
        crate::output::warn(format_args!(
            "note: the search barely moved (‖r‖/‖x‖ = {:.2e} after {} iterations): raise --step \
             or --iterations, or lower --lambda",
            last.size, last.iteration
        ));
    }
    // The strip: input | perturbation (magnified) | perturbed input | probability bars.
    let shown = steps
        .iter()
        .find(|s| s.class_changed == Some(true))
        .or(steps.last())
        .context("no perturbation recorded")?;
    let r = &shown.perturbation;
    let xr: Vec<f32> = x.iter().zip(r).map(|(a, b)| a + b).collect();
    let p1 = probs(&mut model, &xr)?;
    let rmax = r.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let plane = h * w;
    let panels = [
        grey(&x, c, plane),
        grey(
            &r.iter().map(|v| 0.5 + 0.5 * v / rmax).collect::<Vec<_>>(),
            c,
            plane,
        ),
        grey(&xr, c, plane),
    ];
    let scale = (128 / h.max(w)).max(1);
    let (ph, pw, gap) = (h * scale, w * scale, 4);
    let width = 4 * pw + 3 * gap;
    let mut rgb = vec![255u8; width * ph * 3];
    let mut put = |x0: usize, y: usize, x: usize, col: [u8; 3]| {
        let i = (y * width + x0 + x) * 3;
        rgb[i..i + 3].copy_from_slice(&col);
    };
    for (k, panel) in panels.iter().enumerate() {
        let x0 = k * (pw + gap);
        for y in 0..ph {
            for x in 0..pw {
                let v = (panel[(y / scale) * w + x / scale].clamp(0.0, 1.0) * 255.0).round() as u8;
                put(x0, y, x, [v, v, v]);
            }
        }
    }
    // Bars: one pair per class, clean (grey) and perturbed (red), heights = probabilities.
    let x0 = 3 * (pw + gap);
    let k = p0.len().max(1);
    let slot = (pw / k).max(2);
    for (i, (&a0, &a1)) in p0.iter().zip(&p1).enumerate() {
        for (j, (v, col)) in [(a0, [120, 120, 120]), (a1, [200, 40, 40])]
            .into_iter()
            .enumerate()
        {
            let bh = (v * (ph - 1) as f32).round() as usize;
            let bx = i * slot + j * slot / 2;
            for y in ph - bh..ph {
                for x in bx..(bx + (slot / 2).max(1)).min(pw) {
                    put(x0, y, x, col);
                }
            }
        }
    }
    let out = a.out.clone().unwrap_or_else(|| {
        let stem = a
            .image
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy());
        PathBuf::from(format!("{stem}.perturb.png"))
    });
    let svg_path = out.with_extension("svg");
    let mut outputs = Outputs::default();
    outputs.input(&a.model);
    outputs.input(&a.image);
    outputs.plan(&out, "the picture")?;
    outputs.plan(&svg_path, "the figure")?;
    write_png(&out, width, ph, rgb)?;
    // The figure: the same panels with what each shows written over it, class names under the
    // bars.
    let k = 0.5 / rmax;
    let shown_as = if k >= 1.0 {
        format!("perturbation magnified ×{k:.1} around grey")
    } else {
        format!("perturbation scaled ×{k:.2} around grey (shrunk to fit)")
    };
    let panel_png = |v: &[f32]| -> Result<Vec<u8>> {
        let rgb: Vec<u8> = v
            .iter()
            .flat_map(|p| {
                let g = (p.clamp(0.0, 1.0) * 255.0).round() as u8;
                [g, g, g]
            })
            .collect();
        let (big, bw, bh) = magnify(&rgb, w, h, scale);
        crate::figure::png_bytes(bw, bh, big)
    };
    let pngs = [
        panel_png(&panels[0])?,
        panel_png(&panels[1])?,
        panel_png(&panels[2])?,
    ];
    let c1 = argmax(&p1);
    let svg = crate::figure::perturb_svg(
        [&pngs[0], &pngs[1], &pngs[2]],
        pw,
        ph,
        [
            format!("input: {} ({:.0}%)", pipe.classes[c0], 100.0 * p0[c0]),
            format!("r ×{k:.2}, grey = 0"),
            format!("perturbed: {} ({:.0}%)", pipe.classes[c1], 100.0 * p1[c1]),
        ],
        &pipe.classes,
        &p0,
        &p1,
        &[
            format!("middle: the {shown_as}"),
            format!(
                "iteration {}: ‖r‖/‖x‖ = {:.4}, output change {:.4} (noise of that norm: {:.4})",
                shown.iteration, shown.size, shown.output_change, shown.noise_output_change
            ),
        ],
    );
    cnnkit::checkpoint::write_atomic(&svg_path, svg.as_bytes())?;
    outln!(
        "wrote {} and {} (iteration {}: input | {shown_as} | perturbed input, predicted {} | class probabilities: grey clean, red perturbed)",
        out.display(),
        svg_path.display(),
        shown.iteration,
        pipe.classes[c1]
    )?;
    Ok(())
}

/// The map file of each image: `OUT_DIR/STEM.METHOD.png` (and its figure, `.svg`), and for a
/// stem that an earlier image already has (`a/0.png`, `b/0.png`), `STEM-2.METHOD.png`,
/// `STEM-3…`; never one of the inputs.
fn saliency_outputs(a: &SaliencyArgs) -> Result<Vec<PathBuf>> {
    let mut outputs = Outputs::default();
    outputs.input(&a.model);
    a.images.iter().for_each(|p| outputs.input(p));
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut outs = Vec::with_capacity(a.images.len());
    for path in &a.images {
        let stem = path
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let n = seen.entry(stem.clone()).or_insert(0);
        *n += 1;
        let name = match *n {
            1 => format!("{stem}.{}.png", a.method),
            k => format!("{stem}-{k}.{}.png", a.method),
        };
        let out = a.out_dir.join(name);
        outputs.plan(&out, &path.display().to_string())?;
        outputs.plan(&out.with_extension("svg"), &path.display().to_string())?;
        outs.push(out);
    }
    Ok(outs)
}

pub fn saliency(a: &SaliencyArgs) -> Result<()> {
    let method = SaliencyMethod::parse(&a.method).context("--method")?;
    let (mut model, pipe) = model_for_images(&a.model, &a.foreign)?;
    let nm = normalization(&pipe)?;
    let class = a
        .class
        .as_deref()
        .map(|c| {
            pipe.classes
                .iter()
                .position(|n| n == c)
                .or_else(|| c.parse().ok().filter(|&i: &usize| i < pipe.classes.len()))
                .with_context(|| format!("--class {c}: not one of {:?}", pipe.classes))
        })
        .transpose()?;
    let [c, h, w] = model.input_shape();
    let scale = match a.scale {
        Some(0) => bail!("--scale must be at least 1"),
        Some(s) if s.saturating_mul(h.max(w)) > 8192 => {
            bail!("--scale {s}: the map would be over 8192 pixels wide")
        }
        Some(s) => s,
        None => (128 / h.max(w).max(1)).max(1),
    };
    let outs = saliency_outputs(a)?;
    let bar = progress_bar(a.images.len(), &a.method);
    for (path, out) in a.images.iter().zip(&outs) {
        let x = load_pixels(path, &model, &pipe)?;
        let mut input = vec![0.0; x.len()];
        nm.to_input(h * w, &x, &mut input);
        model.eval();
        let p = softmax(model.forward(&input, 1)?);
        let k = class.unwrap_or_else(|| argmax(&p));
        let map = cnnkit::stability::saliency(&mut model, &x, k, &method, Some(&nm))?;
        let (rgb, top) = signed_overlay([c, h, w], &x, &map)?;
        let (big, bw, bh) = magnify(&rgb, w, h, scale);
        // Encoded once: the PNG file and the figure's embedded picture are the same bytes.
        let png = crate::figure::png_bytes(bw, bh, big)?;
        write_encoded(out, &png)?;
        let title = format!(
            "{} saliency of class {} ({:.1}%) for {}",
            a.method,
            pipe.classes[k],
            100.0 * p[k],
            path.file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into())
        );
        let svg = crate::figure::saliency_svg(&title, &png, bw, bh, top, &pipe.classes[k]);
        let svg_path = out.with_extension("svg");
        cnnkit::checkpoint::write_atomic(&svg_path, svg.as_bytes())?;
        bar.suspend(|| {
            outln!(
                "{}: class {} ({:.2}%) → {} (figure with colour bar: {})",
                path.display(),
                pipe.classes[k],
                100.0 * p[k],
                out.display(),
                svg_path.display()
            )
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
