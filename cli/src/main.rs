//! `cnnkit`: train, evaluate and run convolutional networks on the CPU, and preprocess images.

mod commands;
mod distributed;
mod figure;
mod output;
mod pipeline;
mod report;
mod stability;
mod train;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use cnnkit::TrainConfig;
use cnnkit::preprocess::Clahe;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cnnkit",
    version,
    about = "Train, evaluate and run convolutional networks on the CPU"
)]
struct Cli {
    /// Largest amount of memory any single request (a data set, a batch's activations, an image
    /// being resized) may take, such as 8G or 512M. Default: CNNKIT_MEMORY_BUDGET if set, else
    /// three quarters of the smaller of physical memory and `ulimit -v`.
    #[arg(long, global = true, value_parser = parse_budget, value_name = "SIZE")]
    memory_budget: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a network. With no options: a small CNN on the embedded handwritten digits.
    Train(Box<TrainArgs>),
    /// Evaluate a saved model on a dataset.
    Eval(EvalArgs),
    /// Classify images with a saved model.
    Predict(PredictArgs),
    /// Enhance images (CLAHE, histogram equalisation, brightness/contrast, resize) and write them.
    Preprocess(PreprocessArgs),
    /// Accuracy under adversarial attack at each budget, beside random noise of the same size;
    /// writes CSV and SVG curves beside the model.
    Robustness(stability::RobustnessArgs),
    /// The worst-case perturbation search on one image: a table of growing perturbations and a
    /// PNG strip (input, perturbation magnified, perturbed input, class probabilities).
    Perturb(stability::PerturbArgs),
    /// Saliency maps (gradient, SmoothGrad, integrated gradients) as heat maps over the images.
    Saliency(stability::SaliencyArgs),
    /// Write a model as ONNX (for onnxruntime and other runtimes), its input normalisation and
    /// class names in the file's metadata.
    Export(ExportArgs),
}

/// Options of `cnnkit export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A model saved by `cnnkit train` (or a state dict with --arch and --size).
    pub model: PathBuf,
    /// The ONNX file to write.
    #[arg(long, value_name = "OUT.onnx")]
    pub onnx: PathBuf,
    #[command(flatten)]
    pub foreign: ForeignModel,
}

/// Options of `cnnkit train`.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Training data: an MNIST IDX directory or an image folder (root/<class>/*.png, optionally
    /// root/train and root/test). Default: the embedded digits.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Resize images to HxW (image folders).
    #[arg(long, value_parser = parse_size, value_name = "HxW")]
    pub size: Option<[usize; 2]>,
    /// Use one grey channel instead of RGB (image folders).
    #[arg(long)]
    pub grayscale: bool,
    /// Apply CLAHE before resizing (image folders): `--clahe` for clip limit 2.0 on an 8x8 grid,
    /// or `--clahe CLIP[,GRID]` such as `--clahe 3.0,8x8`.
    #[arg(long, num_args = 0..=1, default_missing_value = "2.0,8x8", value_parser = parse_clahe, value_name = "CLIP[,GRID]")]
    pub clahe: Option<Clahe>,
    /// Apply histogram equalisation before resizing (image folders).
    #[arg(long)]
    pub equalize: bool,
    /// Network: mlp, cnn (default), lenet, vgg, resnet, or a layer list such as
    /// "conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)".
    #[arg(long, default_value = "cnn")]
    pub arch: String,
    /// Passes over the training set (at least 1).
    #[arg(long, default_value_t = TrainConfig::default().epochs, value_parser = parse_epochs)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// sgd, adam, adamw, rmsprop, adagrad or adadelta (PyTorch's defaults), or a full form such
    /// as "adam(lr=0.001,amsgrad=true)".
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Learning rate (default: the optimizer's PyTorch default).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Momentum (sgd, rmsprop).
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f32>,
    /// Weight decay.
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Learning-rate schedule: constant, step:STEP_SIZE:GAMMA, cosine:T_MAX[:ETA_MIN], or
    /// plateau[:FACTOR[:PATIENCE[:THRESHOLD[:COOLDOWN[:MIN_LR[:rel|abs[:EPS]]]]]]]
    /// (ReduceLROnPlateau on --monitor; defaults 0.1, 10, 1e-4, 0, 0, rel, 1e-8).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Weight initialisation: torch, xavier_uniform, xavier_normal, kaiming_uniform,
    /// kaiming_normal; or an ONNX model (MODEL.onnx) to fine-tune, whose architecture and weights
    /// replace --arch.
    #[arg(long, default_value = "torch")]
    pub init: String,
    /// Cross-entropy label smoothing.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub label_smoothing: f32,
    /// Seed of initialisation, shuffling, splits and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: one per core). Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to save the model; the training report goes beside it. A device or pipe is written
    /// through (no report files then).
    #[arg(long, default_value = "model.safetensors")]
    pub out: PathBuf,
    /// Fraction of the training set, in [0, 1), held out for validation after each epoch (needed
    /// by --keep-best, --early-stopping and the plateau schedule).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub val_split: f32,
    /// Continue an interrupted run from its resumable checkpoint (OUT.resume.safetensors), with
    /// the options stored in it: only --threads, --out, --distributed and --memory-budget may be
    /// given too. Refused when the training data changed.
    #[arg(long, value_name = "CHECKPOINT")]
    pub resume: Option<PathBuf>,
    /// Adversarial training: replace part of every batch by adversarial examples of the current
    /// model, `KIND[,eps=E][,norm=linf|l2][,steps=N][,fraction=F]` with KIND fgsm or pgd, such as
    /// "pgd,eps=0.1,steps=7". ε is in pixel units (pixels in [0, 1]); defaults: eps 0.1, linf,
    /// 7 PGD steps of ε/4 from a random start, half of each batch.
    #[arg(long, value_name = "ATTACK")]
    pub adversarial: Option<String>,
    /// Augment the training images on the fly, a list of flip[=P], vflip[=P], rotate=DEGREES,
    /// crop=MIN_AREA, translate=FRACTION, brightness=B, contrast=C, noise=SIGMA (a name alone
    /// takes its default: flip 0.5, rotate 10, crop 0.8, translate 0.1, brightness 0.2,
    /// contrast 0.2, noise 0.02), such as "flip,rotate=10,crop=0.9,contrast=0.2".
    #[arg(long, value_name = "LIST")]
    pub augment: Option<String>,
    /// Class weights of the cross-entropy: "balanced" (n / (classes · count), scikit-learn's) or
    /// one weight per class, such as "1,3".
    #[arg(long, value_name = "balanced|W1,W2,…")]
    pub class_weights: Option<String>,
    /// How an epoch draws its images: shuffle (each once), or balanced (with replacement, every
    /// class equally likely, as a weighted random sampler).
    #[arg(long, default_value = "shuffle", value_name = "shuffle|balanced")]
    pub sampler: String,
    /// The validation metric that picks the best epoch (--keep-best, --early-stopping, the
    /// plateau schedule): loss, accuracy, auc, or sens@SPEC (sensitivity at specificity ≥ SPEC;
    /// auc and sens@ need two classes).
    #[arg(long, default_value = "loss")]
    pub monitor: String,
    /// Save the model of the best epoch by --monitor instead of the last one.
    #[arg(long)]
    pub keep_best: bool,
    /// Stop when --monitor has not improved for this many epochs.
    #[arg(long, value_name = "EPOCHS")]
    pub early_stopping: Option<usize>,
    /// Two classes: choose the decision threshold on the validation data for a target
    /// "sensitivity=0.95" or "specificity=0.9" (class 2 is the positive class); stored in the
    /// model and used by predict and eval.
    #[arg(long, value_name = "sensitivity=S|specificity=S")]
    pub threshold_for: Option<String>,
    /// Train data-parallel over MPI, one worker per process: start with `mpirun -np N cnnkit
    /// train --distributed …` (the command must be built with `--features mpi`). Every process
    /// takes its share of each global batch of --batch-size; process 0 prints and saves.
    #[arg(long)]
    pub distributed: bool,
    /// Stop as Ctrl-C does after this many steps (for testing).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

/// Options of `cnnkit eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model saved by `cnnkit train`, an ONNX file (MODEL.onnx), or a safetensors state dict
    /// saved elsewhere (PyTorch) together with `--arch`.
    pub model: PathBuf,
    /// Test data (as for train); default: the data the model was trained on (the embedded
    /// digits, or the folder recorded in the model).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub foreign: ForeignModel,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `cnnkit predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model saved by `cnnkit train`, or an ONNX file (MODEL.onnx).
    pub model: PathBuf,
    /// Images to classify, or folders of them (searched recursively for .png/.jpg/.jpeg).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub foreign: ForeignModel,
    /// Print the K most probable classes of each image (default: all, most probable first).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Also write one CSV row per image: path, predicted class, then every class's probability.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Two classes: predict the second class when its probability is at least this (default:
    /// the threshold stored by `train --threshold-for`, else the more probable class).
    #[arg(long)]
    pub threshold: Option<f32>,
}

/// How to read a model file without cnnkit metadata (a PyTorch state dict saved with
/// safetensors): its architecture and input. Its inputs are the images' values in [0, 1], not
/// normalised; classes are the data's folders (eval) or numbered (predict).
#[derive(Args, Debug)]
pub struct ForeignModel {
    /// The architecture of a model file without cnnkit metadata (a layer list as for train).
    #[arg(long)]
    pub arch: Option<String>,
    /// Resize images to HxW for a model given with --arch (needed by predict).
    #[arg(long, value_parser = parse_size, value_name = "HxW")]
    pub size: Option<[usize; 2]>,
    /// One grey channel instead of RGB, for a model given with --arch.
    #[arg(long)]
    pub grayscale: bool,
}

impl ForeignModel {
    /// The image options of such a model.
    pub fn image_options(&self) -> cnnkit::image::ImageOptions {
        cnnkit::image::ImageOptions {
            size: self.size,
            grayscale: self.grayscale,
            ..Default::default()
        }
    }
}

/// Options of `cnnkit preprocess`.
#[derive(Args, Debug)]
pub struct PreprocessArgs {
    /// Input image or folder (searched recursively for .png/.jpg/.jpeg).
    pub input: PathBuf,
    /// Output image (PNG) or folder (mirrors the input tree, as PNG).
    pub output: PathBuf,
    /// CLAHE: `--clahe` for clip limit 2.0 on an 8x8 grid, or `--clahe=CLIP[,GRID]` such as
    /// `--clahe=3.0,8x8` (the `=` keeps the setting apart from the file names).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "2.0,8x8", value_parser = parse_clahe, value_name = "CLIP[,GRID]")]
    pub clahe: Option<Clahe>,
    /// Histogram equalisation (8-bit).
    #[arg(long)]
    pub equalize: bool,
    /// Contrast factor: v·CONTRAST + BRIGHTNESS (8-bit).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub contrast: f32,
    /// Brightness offset (8-bit grey levels).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub brightness: f32,
    /// Resize to HxW.
    #[arg(long, value_parser = parse_size, value_name = "HxW")]
    pub size: Option<[usize; 2]>,
}

/// A memory size such as `8G` or `512M`.
fn parse_budget(s: &str) -> Result<usize, String> {
    cnnkit::memory::parse_bytes(s)
        .ok_or_else(|| format!("'{s}' is not a memory size: use bytes or K, M, G, T such as 8G"))
}

/// Epochs: at least one (zero would save an untrained model).
fn parse_epochs(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 epochs would save an untrained model)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number of epochs")),
    }
}

/// `HxW` or `N` (square).
fn parse_size(s: &str) -> Result<[usize; 2], String> {
    let p = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v > 0);
    let v = match s.split_once(['x', 'X']) {
        Some((h, w)) => p(h).zip(p(w)).map(|(h, w)| [h, w]),
        None => p(s).map(|n| [n, n]),
    };
    v.ok_or_else(|| format!("'{s}' is not a size: use HxW such as 224x224"))
}

/// `CLIP[,GRID]` with GRID `N` or `XxY` (tiles across and down).
pub(crate) fn parse_clahe(s: &str) -> Result<Clahe, String> {
    let bad = || format!("'{s}' is not a CLAHE setting: use CLIP[,GRID] such as 2.0,8x8");
    let (clip, grid) = match s.split_once(',') {
        Some((c, g)) => (c, Some(g)),
        None => (s, None),
    };
    let clip_limit: f64 = clip.trim().parse().map_err(|_| bad())?;
    if !(clip_limit.is_finite() && clip_limit >= 0.0) {
        return Err(bad());
    }
    let tiles = match grid {
        Some(g) => {
            let [x, y] = parse_size(g).map_err(|_| bad())?;
            [x, y]
        }
        None => [8, 8],
    };
    Ok(Clahe { clip_limit, tiles })
}

/// The most worker threads `--threads` takes: four per core, and at least 64. Far more only
/// slows every step (and thousands take minutes to start).
pub fn max_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(4)
        .max(64)
}

/// A rayon pool of `threads` workers (`None`: the global pool).
///
/// # Errors
/// For 0 or more than [`max_threads`] threads, or a pool that cannot start.
pub fn thread_pool(threads: Option<usize>) -> Result<Option<rayon::ThreadPool>> {
    match threads {
        None => Ok(None),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) if n > max_threads() => bail!(
            "--threads {n}: at most {} on this machine of {} cores (more threads than that only slow every step)",
            max_threads(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(Some)
            .context("cannot start the thread pool"),
    }
}

/// Runs `f` on `pool` (or on the caller's thread, with the global pool).
pub fn install<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Runs `f` on a rayon pool of `threads` workers (or the global pool).
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    install(thread_pool(threads)?.as_ref(), f)
}

/// The message of `e` and its causes, each cause once: a cause whose text the message already
/// holds (a library error that names its I/O error, wrapped with context that names it again)
/// is not repeated.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let mut c = cause.to_string();
        // "PATH: reason" after a message that already names PATH: keep the reason only.
        if let Some((head, tail)) = c.split_once(": ")
            && !msg.is_empty()
            && msg.contains(head)
        {
            c = tail.to_string();
        }
        if !msg.contains(&c) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&c);
        }
    }
    msg
}

/// Lets a closed output pipe end the process quietly, as it does `cat` or `ls`
/// (`cnnkit predict … | head`), instead of an error for every line. Files are written to a
/// temporary name and renamed, so nothing is left half written.
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: `signal` with SIG_DFL installs no handler of ours; it is called first thing in
    // `main`, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn default_sigpipe() {}

/// The command line as text: a path that is not UTF-8 is refused by name (a training run stores
/// its command line in its checkpoints, as text).
fn utf8_args() -> Result<Vec<String>> {
    std::env::args_os()
        .map(|a| {
            a.into_string().map_err(|a| {
                anyhow::anyhow!(
                    "the argument {} is not UTF-8 text: rename the file or folder (a training run stores its command line, as text, to resume it)",
                    a.to_string_lossy()
                )
            })
        })
        .collect()
}

/// The words after the subcommand: global options (`--memory-budget SIZE`) may stand before
/// it.
fn after_subcommand(args: Vec<String>) -> Vec<String> {
    let mut it = args.into_iter().skip(1);
    while let Some(w) = it.next() {
        if w == "--memory-budget" {
            it.next();
        } else if !w.starts_with('-') {
            break;
        }
    }
    it.collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Training outlives its terminal: a closed pipe (`train | head`) must not kill it before it
    // saves, so writes to it fail instead and the run goes on. Other commands end quietly, as
    // `cat` does.
    if !matches!(cli.cmd, Cmd::Train(_)) {
        default_sigpipe();
    }
    let setup = || -> Result<()> {
        match cli.memory_budget {
            Some(b) => cnnkit::set_memory_budget(b),
            None => {
                cnnkit::memory::budget_from_env()?;
            }
        }
        Ok(())
    };
    if let Err(e) = setup() {
        output::warn(format_args!("error: {}", one_line(&e)));
        return ExitCode::FAILURE;
    }
    let result = match cli.cmd {
        Cmd::Train(a) => utf8_args().and_then(|args| train::run(*a, after_subcommand(args))),
        Cmd::Eval(a) => with_threads(a.threads, || commands::eval(&a)).map(|_| ExitCode::SUCCESS),
        Cmd::Predict(a) => commands::predict(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Export(a) => commands::export(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Preprocess(a) => commands::preprocess(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Robustness(a) => {
            with_threads(a.threads, || stability::robustness(&a)).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Perturb(a) => {
            with_threads(a.threads, || stability::perturb(&a)).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Saliency(a) => {
            with_threads(a.threads, || stability::saliency(&a)).map(|_| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::warn(format_args!("error: {}", one_line(&e)));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::after_subcommand;

    #[test]
    fn the_stored_command_line_starts_after_the_subcommand() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        for line in [
            "cnnkit train --epochs 2",
            "cnnkit --memory-budget 1M train --epochs 2",
            "cnnkit --memory-budget=1M train --epochs 2",
        ] {
            assert_eq!(after_subcommand(words(line)), words("--epochs 2"), "{line}");
        }
    }
}
