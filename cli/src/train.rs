//! `cnnkit train`.

use crate::pipeline::{self, Pipeline};
use crate::{TrainArgs, report, with_threads};
use anyhow::{Context, Result, bail};
use clap::Parser;
use cnnkit::image::ImageOptions;
use cnnkit::optim::OptimizerKind;
use cnnkit::{
    Control, Event, LayerSpec, Sequential, Shape3, TrainConfig, Trainer, evaluate_scores,
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

/// The named architectures for `classes` outputs and images of shape `input`, or a layer list.
pub fn architecture(arch: &str, classes: usize, input: Shape3) -> Result<Vec<LayerSpec>> {
    let text = match arch {
        "resnet" => return Ok(LayerSpec::resnet(input, classes)),
        "mlp" => format!("flatten,dense(128),relu,dense({classes})"),
        "cnn" => format!("conv(32,3,p=1),relu,maxpool(2),flatten,dense({classes})"),
        "lenet" => format!(
            "conv(6,5,p=2),relu,maxpool(2),conv(16,5,p=2),relu,maxpool(2),flatten,dense(120),relu,dense(84),relu,dense({classes})"
        ),
        "vgg" => format!(
            "conv(32,3,p=1),bn,relu,conv(32,3,p=1),bn,relu,maxpool(2),conv(64,3,p=1),bn,relu,conv(64,3,p=1),bn,relu,maxpool(2),\
             flatten,dense(128),relu,dropout(0.5),dense({classes})"
        ),
        spec if spec.contains('(') || spec.contains(',') => spec.to_string(),
        other => bail!(
            "--arch {other}: not a preset (mlp, cnn, lenet, vgg, resnet) or a layer list such as \"conv(32,3,p=1),relu,flatten,dense(10)\""
        ),
    };
    LayerSpec::parse_list(&text).with_context(|| format!("--arch {arch}"))
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

/// `OUT.resume.safetensors` beside `OUT`.
pub fn resume_path(out: &Path) -> PathBuf {
    let name = out
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.resume.safetensors"))
}

/// Fails unless a file can be created beside `out`: checked before the first step, so a long
/// run never ends in a save that cannot happen.
fn check_writable(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist",
            out.display(),
            dir.display()
        );
    }
    if out.is_dir() {
        bail!("--out {}: is a folder, not a file name", out.display());
    }
    let probe = dir.join(format!(".cnnkit-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Saves with `save` to `path`; if that fails, tries once more, then saves to a rescue file in
/// the system's temporary folder, so the weights of a long run are never lost. Returns where
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
    let rescue = std::env::temp_dir().join(format!("cnnkit-rescue-{}-{name}", std::process::id()));
    match save(&rescue) {
        Ok(()) => (Some(rescue), Some(first)),
        Err(_) => (None, Some(first)),
    }
}

pub fn run(args: TrainArgs, raw: Vec<String>) -> Result<ExitCode> {
    let threads = args.threads;
    // On resume, the interrupted run's options (all but --threads) come from its checkpoint.
    let (args, resumed) = match &args.resume {
        Some(path) => {
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
            a.threads = threads;
            a.stop_after = args.stop_after;
            a.distributed = args.distributed;
            // A new --out (say, the first location went away) overrides the stored one.
            if raw.iter().any(|r| r == "--out" || r.starts_with("--out=")) {
                a.out = args.out.clone();
            }
            (a, Some((t, meta)))
        }
        None => (args, None),
    };
    // The command line to store for a later --resume: everything but the run-control options.
    let mut keep = Vec::new();
    let mut it = raw.iter();
    let stored_args = match &resumed {
        Some((_, meta)) => meta[ARGS_KEY].clone(),
        None => {
            while let Some(a) = it.next() {
                if a == "--threads" || a == "--stop-after" || a == "--resume" {
                    it.next();
                } else if a == "--distributed" {
                    // How many processes train is run control: resume at any count.
                } else if !(a.starts_with("--threads=")
                    || a.starts_with("--stop-after=")
                    || a.starts_with("--resume="))
                {
                    keep.push(a.clone());
                }
            }
            serde_json::to_string(&keep)?
        }
    };
    check_writable(&args.out)?;
    with_threads(threads, move || train(args, resumed, stored_args))
}

fn train(
    a: TrainArgs,
    resumed: Option<(Trainer, BTreeMap<String, String>)>,
    stored_args: String,
) -> Result<ExitCode> {
    let started = Instant::now();
    let mpi = if a.distributed {
        Some(crate::distributed::start()?)
    } else {
        crate::distributed::refuse_unasked()?;
        None
    };
    // Process 0 alone prints, shows progress and writes files.
    let leader = mpi.as_ref().is_none_or(|m| m.rank() == 0);
    macro_rules! say {
        ($($t:tt)*) => {
            if leader {
                println!($($t)*);
            }
        };
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
    let mut trainer = match resumed {
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
            say!(
                "resuming at epoch {}, step {}",
                t.progress().epoch + 1,
                t.progress().step
            );
            t
        }
        None => {
            let specs = architecture(&a.arch, train.classes().len(), train.shape())?;
            let init = a.init.parse().context("--init")?;
            let model = Sequential::with_init(shape, &specs, init, a.seed).with_context(|| {
                format!(
                    "--arch {} does not fit {}x{}x{} images (use --size or another architecture)",
                    a.arch, shape[0], shape[1], shape[2]
                )
            })?;
            if model.output_len() != train.classes().len() {
                bail!(
                    "--arch ends with {} outputs, but the data has {} classes",
                    model.output_len(),
                    train.classes().len()
                );
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
                    .map(|s| crate::stability::adversarial_training(s, &mean_std))
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
            if !(0.0..=1.0).contains(&a.label_smoothing) {
                bail!("--label-smoothing must be in [0, 1]");
            }
            Trainer::new(model, optimizer(&a)?, cfg).context(
                "--batch-size, --class-weights, --sampler, --early-stopping or --augment",
            )?
        }
    };
    if let Some(m) = &mpi {
        trainer
            .set_gradient_sync(m.sync())
            .context("--distributed (--batch-size is the global batch)")?;
        say!(
            "distributed: {} processes, {} images of each global batch of {} per process",
            m.size(),
            trainer.config().batch_size / m.size(),
            trainer.config().batch_size
        );
    }
    let [c, h, w] = shape;
    say!(
        "data: {} ({} training images{}{}, {c}x{h}x{w}, {} classes)",
        a.data
            .as_ref()
            .map_or("embedded digits".to_string(), |p| p.display().to_string()),
        train.len(),
        val.as_ref()
            .map_or(String::new(), |v| format!(", {} validation", v.len())),
        test.as_ref()
            .map_or(String::new(), |t| format!(", {} test", t.len())),
        train.classes().len()
    );
    say!(
        "optimizer: {}, {} epochs of batches of {}",
        trainer.optimizer().kind(),
        trainer.config().epochs,
        trainer.config().batch_size
    );
    if leader {
        print!("{}", trainer.model().summary());
    }

    // Ctrl-C, and SIGTERM / SIGHUP (what `timeout` and batch schedulers send): stop after the
    // current step and save a resumable checkpoint.
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    let eval_set = val.as_ref().or(test.as_ref());
    let eval_name = if val.is_some() { "val" } else { "test" };
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} loss {msg}")
        .map(|s| s.progress_chars("=> "));
    let mut bar: Option<ProgressBar> = None;
    let mut steps_done = 0usize;
    let epochs = trainer.config().epochs;
    let result = trainer.fit(&train, eval_set, &mut |e| {
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
        }
        let mut stop = STOP.load(Ordering::SeqCst) || a.stop_after.is_some_and(|n| steps_done >= n);
        if let Some(m) = &mpi {
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
    result?;
    let mut meta = BTreeMap::new();
    meta.insert(pipeline::KEY.to_string(), pipe.to_json());
    if !trainer.finished() && !leader {
        return Ok(ExitCode::from(130));
    }
    if !trainer.finished() {
        meta.insert(ARGS_KEY.to_string(), stored_args);
        meta.insert(DATA_LEN_KEY.to_string(), train.len().to_string());
        let rp = resume_path(&a.out);
        let (saved, err) = save_or_rescue(&rp, |p| trainer.save(p, &meta));
        let Some(saved) = saved else {
            bail!(
                "saving the resumable checkpoint {}: {}",
                rp.display(),
                err.map_or(String::new(), |e| e.to_string())
            );
        };
        if let Some(e) = err {
            eprintln!(
                "error: saving the resumable checkpoint to {} failed ({e}); saved it to {} instead",
                rp.display(),
                saved.display()
            );
        }
        eprintln!(
            "interrupted after epoch {}, step {}: saved {}\ncontinue with: cnnkit train --resume {}",
            trainer.progress().epoch + 1,
            trainer.progress().step,
            saved.display(),
            saved.display()
        );
        return Ok(ExitCode::from(130));
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
    let mut pipe = pipe;
    if let (Some((target, text)), Some(v)) = (threshold_for, val.as_ref()) {
        let (_, scores) = cnnkit::evaluate_scores(trainer.model_mut(), v, 256)?;
        let t = cnnkit::metrics::decision_threshold(v.labels(), &scores, target)
            .context("--threshold-for: the validation set needs images of both classes")?;
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
    let final_set = test.as_ref().or(val.as_ref());
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
        if leader {
            print!("{}", m.report(&pipe.classes));
        }
        say!("confusion matrix (rows: true class, columns: predicted):");
        if leader {
            print!("{}", m.confusion_table(&pipe.classes));
        }
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
    if !leader {
        return Ok(ExitCode::SUCCESS);
    }
    let model = trainer.model();
    let (saved, err) = save_or_rescue(&a.out, |p| model.save(p, &meta));
    if let Some(e) = err {
        match saved {
            Some(p) => bail!(
                "saving the model to {} failed ({e}); saved it to {} instead",
                a.out.display(),
                p.display()
            ),
            None => bail!("saving the model to {}: {e}", a.out.display()),
        }
    }
    let files = report::write(
        &a.out,
        trainer.history(),
        final_metrics.as_ref(),
        &pipe.classes,
        eval_name,
    )?;
    let rp = resume_path(&a.out);
    if rp.exists() {
        let _ = std::fs::remove_file(&rp);
    }
    say!(
        "\nsaved the model to {} (report: {})",
        a.out.display(),
        files.join(", ")
    );
    say!("trained in {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
