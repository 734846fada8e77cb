//! `cnnkit train`.

use crate::output::{Progress, warn};
use crate::pipeline::{self, Pipeline};
use crate::{TrainArgs, report};
use anyhow::{Context, Result, bail};
use clap::Parser;
use cnnkit::image::ImageOptions;
use cnnkit::optim::OptimizerKind;
use cnnkit::{
    Control, Event, GraphBuilder, LayerSpec, Shape3, TrainConfig, Trainer, evaluate_scores,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static STOP: AtomicBool = AtomicBool::new(false);

/// Metadata key of the command line a resumable checkpoint continues.
const ARGS_KEY: &str = "cnnkit.cli.args";
/// Metadata key of the training-set size, checked on resume.
const DATA_LEN_KEY: &str = "cnnkit.data.len";

#[derive(Parser)]
struct TrainOnly {
    #[command(flatten)]
    a: TrainArgs,
}

/// The named architectures for `classes` outputs and images of shape `input` (the presets, the
/// zoo), a layer list or graph as text, or a file holding one.
pub fn architecture(arch: &str, classes: usize, input: Shape3) -> Result<GraphBuilder> {
    let text = match arch {
        "resnet" => LayerSpec::list_to_string(&LayerSpec::resnet(input, classes)),
        "mlp" => format!("flatten,dense(128),relu,dense({classes})"),
        "cnn" => format!("conv(32,3,p=1),relu,maxpool(2),flatten,dense({classes})"),
        "lenet" => format!(
            "conv(6,5,p=2),relu,maxpool(2),conv(16,5,p=2),relu,maxpool(2),flatten,dense(120),relu,dense(84),relu,dense({classes})"
        ),
        "vgg" => format!(
            "conv(32,3,p=1),bn,relu,conv(32,3,p=1),bn,relu,maxpool(2),conv(64,3,p=1),bn,relu,conv(64,3,p=1),bn,relu,maxpool(2),\
             flatten,dense(128),relu,dropout(0.5),dense({classes})"
        ),
        zoo if cnnkit::zoo::MODELS.iter().any(|(n, _)| *n == zoo) => {
            return cnnkit::zoo::build(zoo, input, classes)
                .with_context(|| format!("--arch {arch}"));
        }
        spec if spec.contains('(') || spec.contains(',') => spec.to_string(),
        file if Path::new(file).is_file() => {
            let meta = std::fs::metadata(file).with_context(|| format!("--arch {file}"))?;
            if meta.len() > 1 << 20 {
                bail!(
                    "--arch {file}: {} bytes is too large for an architecture (1 MiB at most)",
                    meta.len()
                );
            }
            std::fs::read_to_string(file).with_context(|| format!("--arch {file}"))?
        }
        other => bail!(
            "--arch {other}: not a preset (mlp, cnn, lenet, vgg, resnet), a zoo model ({}), a file, or a layer list or graph such as \"conv(32,3,p=1),relu,flatten,dense(10)\"",
            cnnkit::zoo::MODELS.map(|(n, _)| n).join(", ")
        ),
    };
    GraphBuilder::parse_with_limit(input, &text, 1 << 30).with_context(|| format!("--arch {arch}"))
}

fn optimizer(a: &TrainArgs) -> Result<OptimizerKind> {
    let mut k: OptimizerKind = a
        .optimizer
        .parse()
        .with_context(|| format!("--optimizer {}", a.optimizer))?;
    if let Some(lr) = a.lr {
        k.set_lr(lr);
    }
    if let Some(m) = a.momentum {
        if !matches!(k, OptimizerKind::Sgd(_) | OptimizerKind::RmsProp(_)) {
            bail!("--momentum applies to sgd and rmsprop, not {}", k.name());
        }
        k.set_momentum(m);
    }
    if let Some(wd) = a.weight_decay {
        k.set_weight_decay(wd);
    }
    // Validate now, with the option names in the message.
    cnnkit::optim::Optimizer::new(k, 0).with_context(|| {
        format!(
            "--optimizer {} with --lr/--momentum/--weight-decay",
            a.optimizer
        )
    })?;
    Ok(k)
}

/// `sensitivity=S` or `specificity=S` for a two-class model with validation data.
fn parse_operating_point(
    s: &str,
    classes: usize,
    has_val: bool,
) -> Result<(cnnkit::metrics::OperatingPoint, String)> {
    use cnnkit::metrics::OperatingPoint;
    if classes != 2 {
        bail!("--threshold-for needs two classes, the data has {classes}");
    }
    if !has_val {
        bail!("--threshold-for chooses the threshold on validation data: add --val-split");
    }
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("--threshold-for {s}: use sensitivity=S or specificity=S"))?;
    let v: f64 = v
        .parse()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .with_context(|| format!("--threshold-for {s}: the target must be in [0, 1]"))?;
    let p = match k {
        "sensitivity" | "sens" => OperatingPoint::Sensitivity(v),
        "specificity" | "spec" => OperatingPoint::Specificity(v),
        _ => bail!("--threshold-for {s}: use sensitivity=S or specificity=S"),
    };
    Ok((p, format!("{k}={v}")))
}

/// Metadata key of a hash of the training images and labels, checked on resume.
const DATA_HASH_KEY: &str = "cnnkit.data.hash";

/// The options `--resume` takes: how and where the run goes on, not what it computes.
const RUN_CONTROL: [&str; 6] = [
    "--resume",
    "--threads",
    "--out",
    "--distributed",
    "--stop-after",
    "--memory-budget",
];

/// Whether `out` names something other than a regular file or a folder: a device, a pipe, a
/// socket (`/dev/null`, a FIFO). Such an output is written through, and the files that go
/// beside a model (reports, the resume checkpoint) cannot go beside it.
fn is_stream(out: &Path) -> bool {
    std::fs::metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// `OUT.resume.safetensors` beside `OUT`; for an `OUT` that is a device or a pipe, in the
/// current folder.
pub fn resume_path(out: &Path) -> PathBuf {
    let name = out
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let file = format!("{name}.resume.safetensors");
    if is_stream(out) {
        PathBuf::from(file)
    } else {
        out.with_file_name(file)
    }
}

/// The option name of a command-line word (`--out` for `--out=x`), `None` for a value.
fn option_name(word: &str) -> Option<&str> {
    word.starts_with("--")
        .then(|| word.split_once('=').map_or(word, |(n, _)| n))
}

/// The command line to store for a later `--resume`: everything but the run-control options,
/// with `--data` and `--out` made absolute so the run resumes from any folder.
fn stored_command_line(raw: &[String]) -> Result<String> {
    let absolute = |v: &str| -> String {
        std::path::absolute(v).map_or(v.to_string(), |p| p.display().to_string())
    };
    let mut keep = Vec::new();
    let mut it = raw.iter();
    while let Some(word) = it.next() {
        match (option_name(word), word.split_once('=')) {
            (Some("--threads" | "--stop-after" | "--resume" | "--memory-budget"), None) => {
                it.next();
            }
            (Some("--threads" | "--stop-after" | "--resume" | "--memory-budget"), Some(_)) => {}
            // How many processes train is run control: resume at any count.
            (Some("--distributed"), _) => {}
            (Some(o @ ("--data" | "--out")), Some((_, v))) => {
                keep.push(format!("{o}={}", absolute(v)));
            }
            (Some(o @ ("--data" | "--out")), None) => {
                keep.push(o.to_string());
                if let Some(v) = it.next() {
                    keep.push(absolute(v));
                }
            }
            _ => keep.push(word.clone()),
        }
    }
    Ok(serde_json::to_string(&keep)?)
}

/// Refuses options given with `--resume` that it would not apply: the run continues with the
/// options stored in its checkpoint.
fn check_resume_options(raw: &[String]) -> Result<()> {
    let mut others: Vec<&str> = raw
        .iter()
        .filter_map(|w| option_name(w))
        .filter(|o| !RUN_CONTROL.contains(o))
        .collect();
    others.dedup();
    if !others.is_empty() {
        bail!(
            "--resume continues the interrupted run with the options stored in its checkpoint; {} cannot be changed (only {} can be given with --resume): start a new run to change them",
            others.join(", "),
            RUN_CONTROL[1..]
                .iter()
                .filter(|o| **o != "--stop-after")
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Fails unless `out` can be written: checked before the first step, so a long run never ends
/// in a save that cannot happen. Where the file system can tell, the folder must have room for
/// `bytes` (the model and its resume checkpoint).
fn check_writable(out: &Path, bytes: u64) -> Result<()> {
    let shown = out.display();
    if out.as_os_str().to_string_lossy().ends_with('/') || out.is_dir() {
        bail!(
            "--out {shown}: is a folder, not a file name (such as {}/model.safetensors)",
            out.to_string_lossy().trim_end_matches('/')
        );
    }
    if is_stream(out) {
        return Ok(());
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("--out {shown}: the folder {} does not exist", dir.display());
    }
    let probe = dir.join(format!(".cnnkit-write-probe-{}", std::process::id()));
    let made = std::fs::File::create(&probe)
        .with_context(|| format!("--out {shown}: cannot write in {}", dir.display()));
    let room = made.and_then(|f| reserve(&f, bytes));
    let _ = std::fs::remove_file(&probe);
    room.with_context(|| {
        format!(
            "--out {shown}: no room for the model and its resume checkpoint (about {:.1} MB) in {}",
            bytes as f64 / 1e6,
            dir.display()
        )
    })
}

/// Reserves `bytes` of disk for `f` (Linux: `posix_fallocate`); a file system that cannot
/// reserve ahead is not an error.
#[cfg(target_os = "linux")]
fn reserve(f: &std::fs::File, bytes: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(bytes).unwrap_or(libc::off_t::MAX);
    // SAFETY: `f` is an open file for the duration of the call; posix_fallocate only reads its
    // arguments.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    match r {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e).into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_: &std::fs::File, _: u64) -> Result<()> {
    Ok(())
}

/// Saves with `save` to `path`; if that fails, tries once more, then saves a rescue file
/// `cnnkit-rescue-PID-NAME` in the system's temporary folder, the current folder or the home
/// folder, the first that takes it, so the weights of a long run are never lost. Returns where
/// the file went and the error of the first attempt if it was not `path`.
fn save_or_rescue(
    path: &Path,
    save: impl Fn(&Path) -> cnnkit::Result<()>,
) -> (Option<PathBuf>, Option<cnnkit::Error>) {
    let first = match save(path) {
        Ok(()) => return (Some(path.to_path_buf()), None),
        Err(e) => e,
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    if save(path).is_ok() {
        return (Some(path.to_path_buf()), None);
    }
    let name = path.file_name().map_or("model.safetensors".into(), |n| {
        n.to_string_lossy().into_owned()
    });
    let rescue = format!("cnnkit-rescue-{}-{name}", std::process::id());
    let places = [
        Some(std::env::temp_dir()),
        std::env::current_dir().ok(),
        std::env::var_os("HOME").map(PathBuf::from),
    ];
    for dir in places.into_iter().flatten() {
        let p = dir.join(&rescue);
        if save(&p).is_ok() {
            return (Some(p), Some(first));
        }
    }
    (None, Some(first))
}

/// A hash of a data set's images (their bits) and labels.
fn data_hash(ds: &cnnkit::data::Dataset) -> u64 {
    let words = ds
        .images()
        .chunks(2)
        .map(|c| c.iter().fold(0u64, |a, v| (a << 32) | v.to_bits() as u64))
        .chain(ds.labels().iter().map(|&l| l as u64));
    crate::distributed::hash_words(words)
}

/// Everything a run needs before its first step, checked.
struct Prepared {
    a: TrainArgs,
    trainer: Trainer,
    train: cnnkit::data::Dataset,
    val: Option<cnnkit::data::Dataset>,
    test: Option<cnnkit::data::Dataset>,
    pipe: Pipeline,
    stored_args: String,
    data_hash: u64,
    threshold_for: Option<(cnnkit::metrics::OperatingPoint, String)>,
    resumed: bool,
}

impl Prepared {
    /// What the processes of a distributed job compare before training.
    fn record(&self) -> crate::distributed::Record {
        use crate::distributed::hash_str;
        let (model, cfg, progress) = (
            self.trainer.model(),
            self.trainer.config(),
            self.trainer.progress(),
        );
        [
            0,
            model.params().len() as u64,
            hash_str(&model.summary()),
            self.train.classes().len() as u64,
            self.train.len() as u64,
            self.data_hash,
            cfg.epochs as u64,
            cfg.batch_size as u64,
            cfg.seed,
            hash_str(&options_compared(&self.stored_args)),
            hash_str(&format!("{} {}", progress.epoch, progress.step)),
        ]
    }
}

/// The stored command line without `--data` and `--out`: the processes of a job may read
/// copies of the data from different places (the data's hash compares the contents), and only
/// process 0 writes.
fn options_compared(stored_args: &str) -> String {
    let words: Vec<String> = serde_json::from_str(stored_args).unwrap_or_default();
    let mut keep = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match (option_name(w), w.contains('=')) {
            (Some("--data" | "--out"), false) => {
                it.next();
            }
            (Some("--data" | "--out"), true) => {}
            _ => keep.push(w.as_str()),
        }
    }
    keep.join("\u{1f}")
}

pub fn run(args: TrainArgs, raw: Vec<String>) -> Result<ExitCode> {
    let started = Instant::now();
    // MPI starts first: from here on, a process that fails tells the others instead of leaving
    // them waiting.
    let mpi = if args.distributed {
        Some(crate::distributed::start()?)
    } else {
        crate::distributed::refuse_unasked()?;
        None
    };
    // Process 0 alone prints, shows progress and writes files.
    let leader = mpi.as_ref().is_none_or(|m| m.rank() == 0);
    let workers = mpi.as_ref().map(|m| m.size());
    let prepared = crate::thread_pool(args.threads).and_then(|pool| {
        let p = crate::install(pool.as_ref(), || prepare(args, &raw, leader, workers))?;
        Ok((pool, p))
    });
    if let Some(m) = &mpi {
        let mut failed: crate::distributed::Record = Default::default();
        failed[0] = 1;
        let rec = prepared.as_ref().map_or(failed, |(_, p)| p.record());
        use crate::distributed::Verdict;
        let verdict = m.agree(&rec);
        match &verdict {
            Verdict::Proceed => {}
            Verdict::ReportOwn => {
                let e = prepared
                    .as_ref()
                    .err()
                    .map_or_else(|| "failed".to_string(), crate::one_line);
                warn(format_args!(
                    "error: process {} of {}: {e}",
                    m.rank(),
                    m.size()
                ));
            }
            Verdict::Report(msg) => warn(format_args!("error: {msg}")),
            Verdict::Quiet => {}
        }
        if verdict != Verdict::Proceed {
            // The launcher ends the job when the first process exits with an error: the
            // message must be out before any process exits.
            m.any(true);
            return Ok(ExitCode::FAILURE);
        }
    }
    let (pool, p) = prepared?;
    crate::install(pool.as_ref(), || train(p, mpi.as_ref(), leader, started))
}

/// Everything before the first step: the options (from the checkpoint on `--resume`), the data,
/// the model and the trainer, each checked.
fn prepare(
    args: TrainArgs,
    raw: &[String],
    leader: bool,
    workers: Option<usize>,
) -> Result<Prepared> {
    // On resume, the interrupted run's options (all but the run-control ones) come from its
    // checkpoint.
    let (a, resumed) = match &args.resume {
        Some(path) => {
            check_resume_options(raw)?;
            let (t, meta) =
                Trainer::load(path).with_context(|| format!("--resume {}", path.display()))?;
            let stored: Vec<String> = serde_json::from_str(
                meta.get(ARGS_KEY)
                    .context("the checkpoint has no command line to resume")?,
            )
            .context("malformed command line in the checkpoint")?;
            let mut a = TrainOnly::try_parse_from(
                std::iter::once("train".to_string()).chain(stored.iter().cloned()),
            )
            .context("the checkpoint's command line no longer parses")?
            .a;
            a.threads = args.threads;
            a.stop_after = args.stop_after;
            a.distributed = args.distributed;
            // A new --out (say, the first location went away) overrides the stored one.
            if raw.iter().any(|r| option_name(r) == Some("--out")) {
                a.out = args.out.clone();
            }
            (a, Some((t, meta)))
        }
        None => (args, None),
    };
    let stored_args = match &resumed {
        Some((_, meta)) => meta[ARGS_KEY].clone(),
        None => stored_command_line(raw)?,
    };
    if !(a.out.as_os_str().to_string_lossy().ends_with('/') || a.out.is_dir()) {
        let rp = resume_path(&a.out);
        if resumed.is_none() && leader && rp.is_file() {
            bail!(
                "{} holds an interrupted run of --out {}: continue it with `cnnkit train --resume {}`, or delete it to start afresh",
                rp.display(),
                a.out.display(),
                rp.display()
            );
        }
    }
    if !(a.val_split.is_finite() && (0.0..1.0).contains(&a.val_split)) {
        bail!(
            "--val-split {}: must be a fraction in [0, 1), such as 0.1",
            a.val_split
        );
    }
    if let Some(n) = workers
        && !a.batch_size.is_multiple_of(n)
    {
        bail!(
            "--distributed: the global batch of {} (--batch-size) does not split over {n} workers",
            a.batch_size
        );
    }
    let opts = ImageOptions {
        size: a.size,
        grayscale: a.grayscale,
        clahe: a.clahe,
        equalize: a.equalize,
        ..Default::default()
    };
    let given = a.size.is_some() || a.grayscale || a.clahe.is_some() || a.equalize;
    let loaded = pipeline::load(a.data.as_deref(), &opts, given)?;
    let (mut train, mut val) = (loaded.train, None);
    if a.val_split > 0.0 {
        let (t, v) = train.split(a.val_split, a.seed).context("--val-split")?;
        if v.is_empty() || t.is_empty() {
            bail!(
                "--val-split {} leaves an empty training or validation set",
                a.val_split
            );
        }
        (train, val) = (t, Some(v));
    }
    let data_hash = data_hash(&train);
    let mut test = loaded.test;
    let (mean, mut std) = train.channel_stats();
    std.iter_mut()
        .filter(|s| s.is_nan() || **s <= 0.0)
        .for_each(|s| *s = 1.0);
    for ds in std::iter::once(&mut train)
        .chain(val.as_mut())
        .chain(test.as_mut())
    {
        ds.normalize(&mean, &std)?;
    }
    let shape: Shape3 = train.shape();
    let pipe = Pipeline {
        source: loaded.source.to_string(),
        data: a.data.as_ref().map(|p| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string()
        }),
        classes: train.classes().to_vec(),
        channels: shape[0],
        size: [shape[1], shape[2]],
        clahe: a.clahe,
        equalize: a.equalize,
        mean: mean.clone(),
        std: std.clone(),
        threshold: None,
    };
    let mean_std = (mean, std);
    let threshold_for = a
        .threshold_for
        .as_deref()
        .map(|s| parse_operating_point(s, train.classes().len(), val.is_some()))
        .transpose()?;
    if let (Some(_), Some(v)) = (&threshold_for, &val)
        && v.class_counts().contains(&0)
    {
        bail!(
            "--threshold-for: the validation set ({} images of --val-split {}) needs images of both classes; it has {:?}: use a larger --val-split",
            v.len(),
            a.val_split,
            v.class_counts()
        );
    }
    let resumed_flag = resumed.is_some();
    let trainer = match resumed {
        Some((t, meta)) => {
            let n: usize = meta
                .get(DATA_LEN_KEY)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n != train.len() {
                bail!(
                    "the training data changed since the checkpoint ({n} images then, {} now)",
                    train.len()
                );
            }
            // Checkpoints written before the hash was stored have only the length to compare.
            if let Some(h) = meta.get(DATA_HASH_KEY)
                && *h != format!("{data_hash:016x}")
            {
                bail!(
                    "the training data changed since the checkpoint: the same {n} images, but other pixels or labels; resume on the data it was trained on"
                );
            }
            t
        }
        None => new_trainer(&a, &train, shape, &mean_std)?,
    };
    let plateau = a.schedule.trim().starts_with("plateau");
    if a.val_split == 0.0 && (a.keep_best || a.early_stopping.is_some() || plateau) {
        let which = [
            (a.keep_best, "--keep-best"),
            (a.early_stopping.is_some(), "--early-stopping"),
            (plateau, "--schedule plateau"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" and ");
        let verb = if which.contains(" and ") {
            "choose"
        } else {
            "chooses"
        };
        bail!(
            "{which} {verb} by validation results: add --val-split (such as --val-split 0.1); choosing on the test set would bias the test accuracy it reports"
        );
    }
    if leader {
        // The model, and the resume checkpoint with up to three optimizer buffers per parameter.
        let params = trainer.model().params().len() as u64;
        check_writable(&a.out, params * 4 * 5 + (64 << 10))?;
    }
    Ok(Prepared {
        a,
        trainer,
        train,
        val,
        test,
        pipe,
        stored_args,
        data_hash,
        threshold_for,
        resumed: resumed_flag,
    })
}

/// The trainer of a new run.
fn new_trainer(
    a: &TrainArgs,
    train: &cnnkit::data::Dataset,
    shape: Shape3,
    mean_std: &(Vec<f32>, Vec<f32>),
) -> Result<Trainer> {
    let model = if crate::commands::is_onnx(Path::new(&a.init)) {
        // Fine-tuning: the file's architecture and weights, for the data's image shape.
        let mut m = crate::commands::read_onnx(Path::new(&a.init), Some(shape))
            .with_context(|| format!("--init {}", a.init))?
            .model;
        m.train();
        if m.output_len() != train.classes().len() {
            bail!(
                "--init {}: the model has {} outputs, the data {} classes",
                a.init,
                m.output_len(),
                train.classes().len()
            );
        }
        Ok(m)
    } else {
        let init = a.init.parse().context("--init")?;
        architecture(&a.arch, train.classes().len(), shape)
            .and_then(|g| Ok(g.build_with_init(init, a.seed)?))
    };
    let model = model.map_err(|e| {
        // A layer written wrong (`noise(-1)`, `conv(0,3)`) is not a question of image size.
        let written_wrong = format!("{e:#}").contains("LayerSpec::parse");
        let why = if written_wrong {
            format!("--arch {}: a layer is not valid", a.arch)
        } else {
            format!(
                "--arch {} does not fit {}x{}x{} images (use --size or another architecture)",
                a.arch, shape[0], shape[1], shape[2]
            )
        };
        e.context(why)
    })?;
    if model.output_len() != train.classes().len() {
        bail!(
            "--arch ends with {} outputs, but the data has {} classes",
            model.output_len(),
            train.classes().len()
        );
    }
    if !(0.0..=1.0).contains(&a.label_smoothing) {
        bail!("--label-smoothing must be in [0, 1]");
    }
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        schedule: a.schedule.parse().context("--schedule")?,
        label_smoothing: a.label_smoothing,
        eval_batch_size: 256,
        adversarial: a
            .adversarial
            .as_deref()
            .map(|s| crate::stability::adversarial_training(s, mean_std))
            .transpose()
            .context("--adversarial")?,
        class_weights: match a.class_weights.as_deref() {
            None => None,
            Some("balanced") => Some(cnnkit::data::balanced_class_weights(
                train.labels(),
                train.classes().len(),
            )),
            Some(w) => Some(
                w.split(',')
                    .map(|v| v.trim().parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .with_context(|| format!("--class-weights {w}: not numbers"))?,
            ),
        },
        sampler: match a.sampler.as_str() {
            "shuffle" => cnnkit::Sampler::Shuffle,
            "balanced" => cnnkit::Sampler::Balanced,
            other => bail!("--sampler {other}: use shuffle or balanced"),
        },
        monitor: a.monitor.parse().context("--monitor")?,
        keep_best: a.keep_best,
        early_stopping: a.early_stopping,
        augment: match a.augment.as_deref() {
            None => None,
            Some(s) => {
                let aug: cnnkit::augment::Augment =
                    s.parse().with_context(|| format!("--augment {s}"))?;
                Some(cnnkit::augment::Augment {
                    seed: a.seed,
                    normalization: Some(
                        cnnkit::stability::Normalization::new(
                            mean_std.0.clone(),
                            mean_std.1.clone(),
                        )
                        .context("--augment")?,
                    ),
                    ..aug
                })
            }
        },
        ..TrainConfig::default()
    };
    Trainer::new(model, optimizer(a)?, cfg)
        .context("--batch-size, --class-weights, --sampler, --early-stopping or --augment")
}

/// How a run that has started ends.
enum Ending {
    /// Every epoch ran (or early stopping ended it).
    Finished,
    /// Ctrl-C, a signal or `--stop-after`: a resume checkpoint is due.
    Interrupted,
    /// Training failed on every process alike (a non-finite loss).
    Failed(anyhow::Error),
}

fn train(
    mut p: Prepared,
    mpi: Option<&crate::distributed::Mpi>,
    leader: bool,
    started: Instant,
) -> Result<ExitCode> {
    let out = Progress::default();
    macro_rules! say {
        ($($t:tt)*) => {
            if leader {
                out.line(format_args!($($t)*));
            }
        };
    }
    if p.resumed {
        say!(
            "resuming at epoch {}, step {}",
            p.trainer.progress().epoch + 1,
            p.trainer.progress().step
        );
    }
    if let Some(m) = mpi {
        if let Err(e) = p.trainer.set_gradient_sync(m.sync()) {
            warn(format_args!(
                "error: process {}: --distributed: {e}",
                m.rank()
            ));
            m.abort(1);
        }
        say!(
            "distributed: {} processes, {} images of each global batch of {} per process",
            m.size(),
            p.trainer.config().batch_size / m.size(),
            p.trainer.config().batch_size
        );
    }
    let [c, h, w] = p.train.shape();
    say!(
        "data: {} ({} training images{}{}, {c}x{h}x{w}, {} classes)",
        p.a.data
            .as_ref()
            .map_or("embedded digits".to_string(), |p| p.display().to_string()),
        p.train.len(),
        p.val
            .as_ref()
            .map_or(String::new(), |v| format!(", {} validation", v.len())),
        p.test
            .as_ref()
            .map_or(String::new(), |t| format!(", {} test", t.len())),
        p.train.classes().len()
    );
    say!(
        "optimizer: {}, {} epochs of batches of {}",
        p.trainer.optimizer().kind(),
        p.trainer.config().epochs,
        p.trainer.config().batch_size
    );
    if leader {
        out.text(format_args!("{}", p.trainer.model().summary()));
    }

    // Ctrl-C, and SIGTERM / SIGHUP (what `timeout` and batch schedulers send): stop after the
    // current step and save a resumable checkpoint.
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    // Reported each epoch; without a validation split, the test set is only reported, never
    // used to choose (keep-best, early stopping and the plateau schedule need --val-split).
    let eval_set = p.val.as_ref().or(p.test.as_ref());
    let eval_name = if p.val.is_some() { "val" } else { "test" };
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} loss {msg}")
        .map(|s| s.progress_chars("=> "));
    let mut bar: Option<ProgressBar> = None;
    let mut steps_done = 0usize;
    let epochs = p.trainer.config().epochs;
    let from = (p.trainer.progress().epoch, p.trainer.progress().step);
    let result = p.trainer.fit(&p.train, eval_set, &mut |e| {
        match e {
            Event::Step {
                epoch,
                step,
                steps,
                loss,
            } => {
                let b = bar.get_or_insert_with(|| {
                    let b = if leader {
                        ProgressBar::new(*steps as u64)
                    } else {
                        ProgressBar::hidden()
                    }
                    .with_prefix(format!("epoch {}/{epochs}", epoch + 1));
                    if let Ok(s) = &style {
                        b.set_style(s.clone());
                    }
                    b
                });
                b.set_position(*step as u64);
                b.set_message(format!("{loss:.4}"));
                steps_done += 1;
            }
            Event::Epoch(r) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let v = r.val.as_ref().map_or(String::new(), |m| {
                    format!(
                        "  {eval_name} loss {:.4} acc {:.2}%",
                        m.loss,
                        100.0 * m.accuracy
                    )
                });
                say!(
                    "epoch {:>3}/{epochs}  loss {:.4} acc {:.2}%{v}  ({:.2} s)",
                    r.epoch,
                    r.train_loss,
                    100.0 * r.train_accuracy,
                    r.seconds
                );
            }
            // Events added later are not shown.
            _ => {}
        }
        let mut stop =
            STOP.load(Ordering::SeqCst) || p.a.stop_after.is_some_and(|n| steps_done >= n);
        if let Some(m) = mpi {
            // Every process stops after the same step, or the next sum would wait forever.
            stop = m.any(stop);
        }
        if stop {
            Control::Stop
        } else {
            Control::Continue
        }
    });
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let advanced = (p.trainer.progress().epoch, p.trainer.progress().step) != from;
    let ending = match result {
        Ok(()) if p.trainer.finished() => Ending::Finished,
        Ok(()) => Ending::Interrupted,
        // Refused before the first step (the data does not fit the model): nothing to keep.
        Err(e) if mpi.is_none() && !advanced && p.trainer.best().is_none() => return Err(e.into()),
        // The loss is summed over the processes first, so every process fails at the same step.
        Err(e @ cnnkit::Error::NonFinite { .. }) => Ending::Failed(e.into()),
        Err(e) => {
            // One process's own failure: the others would wait for it at the next sum.
            let e = anyhow::Error::from(e);
            if let Some(m) = mpi {
                if leader && advanced {
                    rescue_checkpoint(
                        &p.trainer,
                        &p.a.out,
                        &p.pipe,
                        &p.stored_args,
                        &p.train,
                        p.data_hash,
                    );
                }
                warn(format_args!(
                    "error: process {}: {}",
                    m.rank(),
                    crate::one_line(&e)
                ));
                m.abort(1);
            }
            Ending::Failed(e)
        }
    };
    // Process 0 writes; the others wait for it, so the launcher cannot end the job before the
    // files are complete, and every process exits with process 0's outcome.
    let outcome = if leader {
        finish(
            &mut p.trainer,
            ending,
            &p.a,
            p.pipe,
            &p.stored_args,
            (&p.train, p.val.as_ref(), p.test.as_ref()),
            p.data_hash,
            p.threshold_for,
            &out,
        )
    } else {
        Ok(match ending {
            Ending::Finished => ExitCode::SUCCESS,
            Ending::Interrupted => ExitCode::from(130),
            Ending::Failed(_) => ExitCode::FAILURE,
        })
    };
    if leader {
        if let Some((e, lines)) = out.lost() {
            warn(format_args!(
                "note: standard output failed after {lines} writes ({e}); training went on{}",
                if matches!(outcome, Ok(ref c) if *c == ExitCode::SUCCESS) {
                    format!(": the model is saved in {}", p.a.out.display())
                } else {
                    String::new()
                }
            ));
        }
        if matches!(outcome, Ok(ref c) if *c == ExitCode::SUCCESS) {
            say!("trained in {:.1} s", started.elapsed().as_secs_f64());
        }
    }
    if let Some(m) = mpi {
        // Process 0 says why before any process exits (the launcher ends the job then).
        let outcome = match outcome {
            Err(e) => {
                warn(format_args!("error: {}", crate::one_line(&e)));
                Ok(ExitCode::FAILURE)
            }
            ok => ok,
        };
        let leader_failed =
            m.any(leader && matches!(outcome, Ok(ref c) if *c == ExitCode::FAILURE));
        if leader_failed && !leader {
            return Ok(ExitCode::FAILURE);
        }
        return outcome;
    }
    outcome
}

/// Saves the resume checkpoint of a run that cannot go on, with a rescue file if `OUT`'s folder
/// fails; says where on standard error. Returns where it went.
fn rescue_checkpoint(
    trainer: &Trainer,
    out: &Path,
    pipe: &Pipeline,
    stored_args: &str,
    train: &cnnkit::data::Dataset,
    data_hash: u64,
) -> Option<PathBuf> {
    let mut meta = BTreeMap::new();
    meta.insert(pipeline::KEY.to_string(), pipe.to_json());
    meta.insert(ARGS_KEY.to_string(), stored_args.to_string());
    meta.insert(DATA_LEN_KEY.to_string(), train.len().to_string());
    meta.insert(DATA_HASH_KEY.to_string(), format!("{data_hash:016x}"));
    let rp = resume_path(out);
    let (saved, err) = save_or_rescue(&rp, |p| trainer.save(p, &meta));
    match (&saved, err) {
        (Some(s), Some(e)) => warn(format_args!(
            "error: saving the resumable checkpoint to {} failed ({e}); saved it to {} instead",
            rp.display(),
            s.display()
        )),
        (None, e) => warn(format_args!(
            "error: the resumable checkpoint could not be saved anywhere ({}): this run's progress is lost",
            e.map_or(String::new(), |e| e.to_string())
        )),
        (Some(_), None) => {}
    }
    saved
}

/// Process 0's end of a run: the resume checkpoint of an interrupted run, the model and the
/// reports of a finished one, and what there is of a failed one.
#[allow(clippy::too_many_arguments)]
fn finish(
    trainer: &mut Trainer,
    ending: Ending,
    a: &TrainArgs,
    mut pipe: Pipeline,
    stored_args: &str,
    (train, val, test): (
        &cnnkit::data::Dataset,
        Option<&cnnkit::data::Dataset>,
        Option<&cnnkit::data::Dataset>,
    ),
    data_hash: u64,
    threshold_for: Option<(cnnkit::metrics::OperatingPoint, String)>,
    out: &Progress,
) -> Result<ExitCode> {
    macro_rules! say {
        ($($t:tt)*) => {
            out.line(format_args!($($t)*))
        };
    }
    let eval_name = if val.is_some() { "val" } else { "test" };
    let mut meta = BTreeMap::new();
    meta.insert(pipeline::KEY.to_string(), pipe.to_json());
    match ending {
        Ending::Finished => {}
        Ending::Interrupted => {
            let Some(saved) =
                rescue_checkpoint(trainer, &a.out, &pipe, stored_args, train, data_hash)
            else {
                bail!("interrupted, and the resumable checkpoint could not be saved");
            };
            warn(format_args!(
                "interrupted after epoch {}, step {}: saved {}\ncontinue with: cnnkit train --resume {}",
                trainer.progress().epoch + 1,
                trainer.progress().step,
                saved.display(),
                saved.display()
            ));
            return Ok(ExitCode::from(130));
        }
        Ending::Failed(e) => {
            let at = format!(
                "epoch {}, step {}",
                trainer.progress().epoch + 1,
                trainer.progress().step
            );
            // The best epoch held in memory is a finished model; without one, the state before
            // the failing step is kept to resume from.
            if let Some(epoch) = trainer.restore_best()? {
                let model = trainer.model();
                let (saved, _) = save_or_rescue(&a.out, |p| model.save(p, &meta));
                if let Some(s) = saved {
                    bail!(
                        "{} in {at}; saved the model of the best epoch so far ({epoch}) to {}",
                        crate::one_line(&e),
                        s.display()
                    );
                }
            }
            let saved = rescue_checkpoint(trainer, &a.out, &pipe, stored_args, train, data_hash);
            let e = crate::one_line(&e);
            return Err(match saved {
                Some(s) => anyhow::anyhow!(
                    "{e} in {at}; the state before that step is saved in {} (continue with: cnnkit train --resume {})",
                    s.display(),
                    s.display()
                ),
                None => anyhow::anyhow!("{e} in {at}"),
            });
        }
    }
    if let Some(epoch) = trainer.restore_best()? {
        let (_, value) = trainer.best().unwrap_or((epoch, f64::NAN));
        say!(
            "kept epoch {epoch} of {} (best {eval_name} {} {value:.4}{})",
            trainer.history().len(),
            trainer.config().monitor,
            if trainer.stopped_early() {
                ", stopped early"
            } else {
                ""
            }
        );
    } else if trainer.stopped_early() {
        say!("stopped early after epoch {}", trainer.history().len());
    }
    let mut threshold_error = None;
    if let (Some((target, text)), Some(v)) = (threshold_for, val) {
        let (_, scores) = cnnkit::evaluate_scores(trainer.model_mut(), v, 256)?;
        match cnnkit::metrics::decision_threshold(v.labels(), &scores, target) {
            Some(t) => {
                say!(
                    "threshold {:.4} on P({}) for {text}: validation sensitivity {:.4}, specificity {:.4}",
                    t.threshold,
                    pipe.classes[1],
                    t.sensitivity,
                    t.specificity
                );
                pipe.threshold = Some((t.threshold, text));
                meta.insert(pipeline::KEY.to_string(), pipe.to_json());
            }
            None => threshold_error = Some(text),
        }
    }
    let final_set = test.or(val);
    // Metrics and, for the decision threshold's rates, the positive-class scores: one pass.
    let (final_metrics, final_scores) = match final_set {
        Some(ds) => {
            let (m, scores) = evaluate_scores(trainer.model_mut(), ds, 256)?;
            (Some(m), scores)
        }
        None => (None, Vec::new()),
    };
    if let Some(m) = &final_metrics {
        let name = if test.is_some() { "test" } else { "validation" };
        let n = final_set.map_or(0, |d| d.len());
        say!(
            "\n{name} accuracy: {:.2}% ({} of {n})",
            100.0 * m.accuracy,
            (m.accuracy * n as f64).round() as usize
        );
        out.text(format_args!("{}", m.report(&pipe.classes)));
        say!("confusion matrix (rows: true class, columns: predicted):");
        out.text(format_args!("{}", m.confusion_table(&pipe.classes)));
        if let (Some((t, why)), Some(ds)) = (&pipe.threshold, final_set)
            && let Some(r) = cnnkit::metrics::rates_at(ds.labels(), &final_scores, *t)
        {
            say!(
                "at the threshold {t:.4} ({why}): {name} sensitivity {:.4}, specificity {:.4}",
                r.sensitivity,
                r.specificity
            );
        }
    }
    let model = trainer.model();
    let (saved, err) = save_or_rescue(&a.out, |p| model.save(p, &meta));
    let saved = match (saved, err) {
        (Some(p), None) => p,
        (Some(p), Some(e)) => bail!(
            "saving the model to {} failed ({e}); saved it to {} instead",
            a.out.display(),
            p.display()
        ),
        (None, e) => bail!(
            "saving the model to {}: {}; no other folder took it either",
            a.out.display(),
            e.map_or(String::new(), |e| e.to_string())
        ),
    };
    let rp = resume_path(&a.out);
    if rp.exists() && !is_stream(&rp) {
        let _ = std::fs::remove_file(&rp);
    }
    if let Some(text) = threshold_error {
        bail!(
            "--threshold-for {text}: no threshold reaches it on the validation set; the model is saved in {} without a threshold",
            saved.display()
        );
    }
    if is_stream(&a.out) {
        say!(
            "\nwrote the model to {} (no report files: it is not a file in a folder)",
            a.out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let files = report::write(
        &a.out,
        trainer.history(),
        final_metrics.as_ref(),
        &pipe.classes,
        eval_name,
    )
    .with_context(|| format!("the model is saved in {}, but a report", saved.display()))?;
    say!(
        "\nsaved the model to {} (report: {})",
        saved.display(),
        files.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
