//! `cnnkit`: train, evaluate and run convolutional networks on the CPU, and preprocess images.

mod commands;
mod pipeline;
mod report;
mod train;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
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
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a network. With no options: a small CNN on the embedded handwritten digits.
    Train(TrainArgs),
    /// Evaluate a saved model on a dataset.
    Eval(EvalArgs),
    /// Classify images with a saved model.
    Predict(PredictArgs),
    /// Enhance images (CLAHE, histogram equalisation, brightness/contrast, resize) and write them.
    Preprocess(PreprocessArgs),
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
    /// Apply CLAHE before resizing (image folders): clip limit and tile grid, default 2.0,8x8.
    #[arg(long, num_args = 0..=1, default_missing_value = "2.0,8x8", value_parser = parse_clahe, value_name = "CLIP[,GRID]")]
    pub clahe: Option<Clahe>,
    /// Apply histogram equalisation before resizing (image folders).
    #[arg(long)]
    pub equalize: bool,
    /// Network: mlp, cnn (default), lenet, vgg, or a layer list such as
    /// "conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)".
    #[arg(long, default_value = "cnn")]
    pub arch: String,
    /// Passes over the training set.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
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
    /// Learning-rate schedule: constant, step:STEP_SIZE:GAMMA or cosine:T_MAX[:ETA_MIN].
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Weight initialisation: torch, xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal.
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
    /// Where to save the model; the training report goes beside it.
    #[arg(long, default_value = "model.safetensors")]
    pub out: PathBuf,
    /// Fraction of the training set held out for validation after each epoch.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub val_split: f32,
    /// Continue an interrupted run from its resumable checkpoint (OUT.resume.safetensors). The
    /// other options are those of the interrupted run, except --threads.
    #[arg(long, value_name = "CHECKPOINT")]
    pub resume: Option<PathBuf>,
    /// Stop as Ctrl-C does after this many steps (for testing).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

/// Options of `cnnkit eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model saved by `cnnkit train`.
    pub model: PathBuf,
    /// Test data (as for train); default: the data the model was trained on, if embedded.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `cnnkit predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model saved by `cnnkit train`.
    pub model: PathBuf,
    /// Images to classify.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Options of `cnnkit preprocess`.
#[derive(Args, Debug)]
pub struct PreprocessArgs {
    /// Input image or folder (searched recursively for .png/.jpg/.jpeg).
    pub input: PathBuf,
    /// Output image (PNG) or folder (mirrors the input tree, as PNG).
    pub output: PathBuf,
    /// CLAHE with clip limit and tile grid (default 2.0,8x8).
    #[arg(long, num_args = 0..=1, default_missing_value = "2.0,8x8", value_parser = parse_clahe, value_name = "CLIP[,GRID]")]
    pub clahe: Option<Clahe>,
    /// Histogram equalisation (8-bit).
    #[arg(long)]
    pub equalize: bool,
    /// Contrast factor: v·CONTRAST + BRIGHTNESS (8-bit).
    #[arg(long, default_value_t = 1.0)]
    pub contrast: f32,
    /// Brightness offset (8-bit grey levels).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub brightness: f32,
    /// Resize to HxW.
    #[arg(long, value_parser = parse_size, value_name = "HxW")]
    pub size: Option<[usize; 2]>,
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
fn parse_clahe(s: &str) -> Result<Clahe, String> {
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

/// Runs `f` on a rayon pool of `threads` workers (or the global pool).
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .context("cannot start the thread pool")?
            .install(f),
        None => f(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Train(a) => train::run(a, std::env::args().skip(2).collect()),
        Cmd::Eval(a) => with_threads(a.threads, || commands::eval(&a)).map(|_| ExitCode::SUCCESS),
        Cmd::Predict(a) => commands::predict(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Preprocess(a) => commands::preprocess(&a).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
