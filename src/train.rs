//! The training loop: epochs of seeded mini-batches, cross-entropy, an optimizer with a
//! learning-rate schedule, evaluation, and a callback to watch (or stop) it.

use crate::checkpoint::{self, CheckpointLimits, SafeTensors};
use crate::data::{Batches, Dataset, Pairs, gather};
use crate::distributed::GradientSync;
use crate::error::{Error, Result};
use crate::kernels::accum::Accum;
use crate::kernels::loss::cross_entropy_loss;
use crate::kernels::softmax::softmax_forward;
use crate::layer::spec::LayerSpec;
use crate::metrics::Metrics;
use crate::model::Sequential;
use crate::optim::{LrSchedule, Optimizer, OptimizerKind};
use crate::shape::{Tensor, TensorData};
use std::collections::BTreeMap;

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set (default 30, as the `cnnkit` command).
    pub epochs: usize,
    /// Images per step (default 32).
    pub batch_size: usize,
    /// Seed of the shuffling order (default 0). The model's own seed sets initialisation and
    /// dropout noise.
    pub seed: u64,
    /// Learning-rate schedule over epochs (default constant).
    pub schedule: LrSchedule,
    /// Cross-entropy label smoothing (default 0).
    pub label_smoothing: f32,
    /// Batch size for evaluation (default 256).
    pub eval_batch_size: usize,
    /// Adversarial training (default none): part of every batch is replaced by adversarial
    /// examples of the current model before the step.
    pub adversarial: Option<AdversarialTraining>,
    /// The loss (default cross-entropy against class labels; MSE or L1 for image targets,
    /// [`Trainer::fit_to`]).
    pub loss: Loss,
    /// Per-class weights of the cross-entropy (default none), as
    /// `torch.nn.CrossEntropyLoss(weight=…)`, label smoothing included (see
    /// [`crate::kernels::weighted_cross_entropy_loss`]); [`crate::data::balanced_class_weights`]
    /// gives scikit-learn's "balanced" weights. Validation losses stay unweighted.
    pub class_weights: Option<Vec<f32>>,
    /// How each epoch's samples are drawn (default: every sample once, shuffled).
    pub sampler: Sampler,
    /// The metric that says which epoch is best, for [`TrainConfig::keep_best`],
    /// [`TrainConfig::early_stopping`] and the [plateau schedule](LrSchedule::Plateau)
    /// (default: the validation loss; the training loss or accuracy without a validation set).
    pub monitor: Monitor,
    /// Keep the parameters and buffers of the best epoch by `monitor` (default false):
    /// [`Trainer::best`] says which, [`Trainer::restore_best`] puts them back in the model.
    pub keep_best: bool,
    /// Stop when `monitor` has not improved for this many epochs (default none).
    pub early_stopping: Option<usize>,
    /// Augmentation of the training images in [`Trainer::fit`] (default none): each epoch's
    /// batches are augmented afresh, the same for any thread count and after a resume.
    pub augment: Option<crate::augment::Augment>,
}

/// A metric to select epochs by.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Monitor {
    /// Mean cross-entropy, lower is better (the default).
    #[default]
    Loss,
    /// Accuracy.
    Accuracy,
    /// ROC AUC of the positive-class probability (two classes, validation set needed).
    Auc,
    /// The best sensitivity at a specificity of at least this value (two classes, validation set
    /// needed), from the ROC curve of the positive-class probability.
    SensitivityAt(f32),
}

impl Monitor {
    /// Whether larger is better (all but the loss).
    pub fn maximize(&self) -> bool {
        *self != Monitor::Loss
    }
}

impl std::fmt::Display for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Monitor::Loss => f.write_str("loss"),
            Monitor::Accuracy => f.write_str("accuracy"),
            Monitor::Auc => f.write_str("auc"),
            Monitor::SensitivityAt(s) => write!(f, "sens@{s:?}"),
        }
    }
}

impl std::str::FromStr for Monitor {
    type Err = Error;
    /// `loss`, `accuracy`, `auc` or `sens@SPEC` (sensitivity at specificity ≥ SPEC).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "Monitor",
                "monitor",
                format!("'{s}': use loss, accuracy, auc or sens@SPECIFICITY such as sens@0.9"),
            )
        };
        Ok(match s {
            "loss" => Monitor::Loss,
            "accuracy" | "acc" => Monitor::Accuracy,
            "auc" => Monitor::Auc,
            other => {
                let v: f32 = other
                    .strip_prefix("sens@")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(bad)?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(bad());
                }
                Monitor::SensitivityAt(v)
            }
        })
    }
}

/// The best epoch so far and the model's state then.
#[derive(Clone, Debug)]
struct Best {
    epoch: usize,
    value: f64,
    state: Vec<(String, Tensor)>,
}

/// How a training epoch draws its samples.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Sampler {
    /// Every sample once per epoch, in a new shuffled order (the default, `shuffle=True`).
    #[default]
    Shuffle,
    /// As many draws per epoch as there are samples, with replacement, each class equally
    /// likely: `torch.utils.data.WeightedRandomSampler(weights, len(dataset))` with each
    /// sample's weight `1 / (images of its class)`.
    Balanced,
    /// As many draws per epoch as there are samples, with replacement, a sample of class `c`
    /// with probability proportional to `weights[c]` (`WeightedRandomSampler` with per-class
    /// weights).
    ClassWeighted(Vec<f32>),
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sampler::Shuffle => f.write_str("shuffle"),
            Sampler::Balanced => f.write_str("balanced"),
            Sampler::ClassWeighted(w) => write!(f, "{}", join_floats(w, "/")),
        }
    }
}

impl std::str::FromStr for Sampler {
    type Err = Error;
    /// `shuffle`, `balanced`, or per-class weights `w0/w1/…` (or `w0,w1,…`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shuffle" => Ok(Sampler::Shuffle),
            "balanced" => Ok(Sampler::Balanced),
            w => parse_floats(w).map(Sampler::ClassWeighted).ok_or_else(|| {
                Error::invalid(
                    "Sampler",
                    "sampler",
                    format!("'{s}': use shuffle, balanced or per-class weights such as 1,3"),
                )
            }),
        }
    }
}

/// `v` as `a<sep>b<sep>…` with every float exactly.
pub(crate) fn join_floats(v: &[f32], sep: &str) -> String {
    v.iter()
        .map(|x| format!("{x:?}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Floats separated by `/` or `,` (at least one).
pub(crate) fn parse_floats(s: &str) -> Option<Vec<f32>> {
    let v: Option<Vec<f32>> = s.split(['/', ',']).map(|t| t.trim().parse().ok()).collect();
    v.filter(|v| !v.is_empty())
}

/// One training step of [`Trainer::run_epochs`] on the samples at the given indices: loss and
/// correct predictions.
type StepFn<'a> = dyn FnMut(&mut Trainer, &[usize]) -> Result<(f32, usize)> + 'a;

/// The validation of [`Trainer::run_epochs`] after each epoch: metrics and the monitored value.
type ValFn<'a> = dyn FnMut(&mut Trainer) -> Result<(Option<Metrics>, Option<f64>)> + 'a;

/// What a [`Trainer`] minimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loss {
    /// Cross-entropy against class labels, with the configured label smoothing
    /// (`torch.nn.CrossEntropyLoss`).
    #[default]
    CrossEntropy,
    /// Mean squared error against target images (`torch.nn.MSELoss`).
    Mse,
    /// Mean absolute error against target images (`torch.nn.L1Loss`).
    L1,
}

impl std::str::FromStr for Loss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ce" | "cross_entropy" => Ok(Loss::CrossEntropy),
            "mse" => Ok(Loss::Mse),
            "l1" => Ok(Loss::L1),
            _ => Err(Error::invalid(
                "Loss",
                "loss",
                format!("'{s}': use ce, mse or l1"),
            )),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::CrossEntropy => "ce",
            Loss::Mse => "mse",
            Loss::L1 => "l1",
        })
    }
}

/// Adversarial training (Goodfellow et al. with FGSM; Madry et al. with PGD): before each step,
/// the first `⌈fraction·n⌉` samples of the batch are replaced by their adversarial examples
/// under `attack`, made against the current weights in evaluation mode; the step then trains on
/// the mixed batch. With the attack's [`Normalization`](crate::stability::Normalization), the
/// batch holds normalised inputs (as the datasets the `cnnkit` command trains on) and the budget
/// and range are in pixel units. Each step's attack seed is the attack's seed plus the step's
/// number, so a resumed run repeats the same examples. Such a step allocates (the attack's
/// buffers), unlike a plain one.
#[derive(Clone, Debug, PartialEq)]
pub struct AdversarialTraining {
    /// The attack that makes the examples.
    pub attack: crate::stability::Attack,
    /// Fraction of each batch replaced, in `(0, 1]` (default 0.5).
    pub fraction: f32,
}

impl AdversarialTraining {
    /// Half of each batch replaced by `attack`'s examples.
    pub fn new(attack: crate::stability::Attack) -> Self {
        AdversarialTraining {
            attack,
            fraction: 0.5,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 32,
            seed: 0,
            schedule: LrSchedule::Constant,
            label_smoothing: 0.0,
            eval_batch_size: 256,
            adversarial: None,
            loss: Loss::CrossEntropy,
            class_weights: None,
            sampler: Sampler::Shuffle,
            monitor: Monitor::Loss,
            keep_best: false,
            early_stopping: None,
            augment: None,
        }
    }
}

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f32,
    /// Mean training loss over the epoch's steps (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy over the epoch (with the weights of each step, in training mode).
    pub train_accuracy: f64,
    /// Validation metrics, if a validation set was given.
    pub val: Option<Metrics>,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
}

/// Progress reported to the callback of [`Trainer::fit`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A training step finished.
    Step {
        /// 0-based epoch.
        epoch: usize,
        /// Steps done in this epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// The step's loss.
        loss: f32,
    },
    /// An epoch finished.
    Epoch(&'a EpochReport),
}

/// The callback's answer: go on, or stop after the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop now; [`Trainer::fit`] returns and a later call continues where this one stopped.
    Stop,
}

/// Where training stands, enough to continue it exactly (see [`Trainer::progress`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed in the current epoch.
    pub step: usize,
    /// Shuffling generator at the start of the current epoch.
    pub shuffle_rng: [u64; 4],
    /// Running sums of the current epoch: loss·images, correct predictions, images.
    pub partial: (f64, usize, usize),
}

/// A model, its optimizer and the state of a training run.
///
/// # Example
/// ```
/// use cnnkit::{data, LayerSpec, Sequential, TrainConfig, Trainer, Control};
/// let (train, test) = data::digits()?;
/// let specs = LayerSpec::parse_list("flatten,dense(10)")?;
/// let model = Sequential::new(train.shape(), &specs, 0)?;
/// let cfg = TrainConfig { epochs: 3, ..Default::default() };
/// let mut t = Trainer::new(model, "adam(lr=0.01)".parse()?, cfg)?;
/// t.fit(&train, Some(&test), &mut |_| Control::Continue)?;
/// let acc: Vec<f64> = t.history().iter().map(|r| r.val.as_ref().unwrap().accuracy).collect();
/// assert!(acc.len() == 3 && acc[2] > acc[0]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Trainer {
    model: Sequential,
    optimizer: Optimizer,
    cfg: TrainConfig,
    batches: Option<Batches>,
    progress: Progress,
    history: Vec<EpochReport>,
    xb: Vec<f32>,
    yb: Vec<u32>,
    dlogits: Vec<f32>,
    sync: Option<Box<dyn GradientSync>>,
    best: Option<Best>,
    plateau: crate::optim::PlateauState,
    stopped_early: bool,
    /// One image of scratch for the augmentation.
    aug_buf: Vec<f32>,
}

impl Trainer {
    /// A trainer for `model` with a fresh optimizer.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a zero batch size or an invalid optimizer configuration.
    pub fn new(model: Sequential, optimizer: OptimizerKind, cfg: TrainConfig) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.eval_batch_size == 0 {
            return Err(Error::invalid(
                "Trainer::new",
                "batch_size",
                "must be at least 1",
            ));
        }
        cfg.schedule.validate()?;
        if let Some(a) = &cfg.adversarial
            && !(a.fraction > 0.0 && a.fraction <= 1.0)
        {
            return Err(Error::invalid(
                "Trainer::new",
                "adversarial.fraction",
                format!("{} (must be in (0, 1])", a.fraction),
            ));
        }
        let weights = [
            cfg.class_weights.as_deref(),
            match &cfg.sampler {
                Sampler::ClassWeighted(w) => Some(&w[..]),
                _ => None,
            },
        ];
        for (w, what) in weights.into_iter().zip(["class_weights", "sampler"]) {
            let Some(w) = w else { continue };
            if w.len() != model.output_len()
                || w.iter().any(|v| !(v.is_finite() && *v >= 0.0))
                || !w.iter().any(|&v| v > 0.0)
            {
                return Err(Error::invalid(
                    "Trainer::new",
                    what,
                    format!(
                        "{w:?}: needs one finite, non-negative weight per class ({}), not all zero",
                        model.output_len()
                    ),
                ));
            }
        }
        if let Some(a) = &cfg.augment {
            a.validate()?;
        }
        if cfg.early_stopping == Some(0) {
            return Err(Error::invalid(
                "Trainer::new",
                "early_stopping",
                "the patience must be at least 1 epoch",
            ));
        }
        let optimizer = Optimizer::new(optimizer, model.param_count())?;
        let shuffle_rng = crate::rng::Rng::new(cfg.seed).state();
        let cfg_monitor = cfg.monitor;
        Ok(Trainer {
            model,
            optimizer,
            cfg,
            batches: None,
            progress: Progress {
                epoch: 0,
                step: 0,
                shuffle_rng,
                partial: (0.0, 0, 0),
            },
            history: Vec::new(),
            xb: Vec::new(),
            yb: Vec::new(),
            dlogits: Vec::new(),
            sync: None,
            best: None,
            plateau: crate::optim::PlateauState::new(cfg_monitor.maximize()),
            stopped_early: false,
            aug_buf: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Sequential {
        &self.model
    }
    /// The model, mutably.
    pub fn model_mut(&mut self) -> &mut Sequential {
        &mut self.model
    }
    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }
    /// The optimizer, mutably (to restore its state, or to change the learning rate: the
    /// schedule continues from a rate set here, see [`Optimizer::lr`]).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }
    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    /// Reports of the completed epochs.
    pub fn history(&self) -> &[EpochReport] {
        &self.history
    }
    /// Where training stands.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
    /// Whether training is over: every epoch has run, or early stopping ended it.
    pub fn finished(&self) -> bool {
        self.progress.epoch >= self.cfg.epochs || self.stopped_early
    }
    /// Whether early stopping ended training.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }
    /// The best epoch so far (1-based) by [`TrainConfig::monitor`] and its value, when
    /// [`TrainConfig::keep_best`] or early stopping is on.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best.as_ref().map(|b| (b.epoch, b.value))
    }
    /// Puts the parameters and buffers of the best epoch back in the model (see
    /// [`TrainConfig::keep_best`]) and returns that epoch; `None` (and the model unchanged)
    /// without one.
    ///
    /// # Errors
    /// Only if the kept state no longer fits the model (it always does for the trainer's own).
    pub fn restore_best(&mut self) -> Result<Option<usize>> {
        let Some(b) = &self.best else { return Ok(None) };
        self.model.load_state_dict(&b.state)?;
        Ok(Some(b.epoch))
    }
    /// Gives the model back.
    pub fn into_model(self) -> Sequential {
        self.model
    }

    /// Restores the position of an interrupted run (with [`Trainer::restore_history`], the
    /// model's parameters, buffers and noise generator, and the optimizer state, training then
    /// continues exactly as if it had not stopped).
    pub fn restore_progress(&mut self, p: Progress) {
        self.progress = p;
        self.batches = None;
    }
    /// Restores the reports of completed epochs.
    pub fn restore_history(&mut self, h: Vec<EpochReport>) {
        self.history = h;
    }

    /// One optimisation step on a batch: forward, cross-entropy, backward, optimizer update.
    /// Returns the loss and the number of correct predictions.
    ///
    /// # Errors
    /// [`Error::NonFinite`] if the loss is NaN or infinite (the weights are left as they were
    /// before the step); errors of the model or the loss for bad input.
    ///
    /// With a [gradient hook](Trainer::set_gradient_sync), `x` is this worker's shard of a global
    /// batch made of equal shards; the loss and count returned are the global batch's.
    pub fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<(f32, usize)> {
        let global = labels.len() * self.sync.as_ref().map_or(1, |s| s.size());
        self.step_part(x, labels, global)
    }

    /// [`Trainer::step`] on this worker's `labels.len()` samples of a global batch of `global`.
    fn step_part(&mut self, x: &[f32], labels: &[u32], global: usize) -> Result<(f32, usize)> {
        const OP: &str = "Trainer::step";
        let n = labels.len();
        let classes = self.model.output_len();
        // With class weights the mean is over the global batch's label weights: this worker's
        // sum, all-reduced (every worker takes part, also with an empty shard).
        let norm = match &self.cfg.class_weights {
            Some(w) => {
                let mut local =
                    [crate::kernels::loss::class_weight_sum(OP, classes, labels, w)? as f32];
                if let Some(sync) = self.sync.as_mut() {
                    sync.all_reduce_sum(&mut local)?;
                }
                Some(local[0] as f64)
            }
            None => None,
        };
        // The share of this worker's mean in the global one.
        let share = match norm {
            Some(_) => 1.0,
            None => n as f32 / global.max(1) as f32,
        };
        if n == 0 && self.sync.is_some() {
            // A shard with no samples still takes part in the sums, with a zero gradient.
            self.model.grads_mut().fill(0.0);
            return self.finish_step(OP, share, 0.0, 0);
        }
        let mixed;
        let x = match self.cfg.adversarial.clone() {
            Some(adv) if n > 0 => {
                mixed = self.adversarial_batch(&adv, x, labels)?;
                &mixed[..]
            }
            _ => x,
        };
        self.model.train();
        crate::layer::grow(OP, &mut self.dlogits, n * classes)?;
        let logits = self.model.forward(x, n)?;
        let correct = labels
            .iter()
            .enumerate()
            .filter(|&(i, &l)| argmax(&logits[i * classes..][..classes]) == l as usize)
            .count();
        let d = Some(&mut self.dlogits[..n * classes]);
        let eps = self.cfg.label_smoothing;
        let loss = match (&self.cfg.class_weights, norm) {
            (Some(w), Some(norm)) => crate::kernels::loss::weighted_ce_with_norm(
                classes, logits, labels, w, eps, norm, d,
            )?,
            _ => cross_entropy_loss(classes, logits, labels, eps, d)?,
        };
        if !loss.is_finite() && self.sync.is_none() {
            return Err(Error::NonFinite {
                op: OP,
                what: "training loss",
            });
        }
        if loss.is_finite() {
            self.model
                .backward(x, &self.dlogits[..n * classes], Accum::Replace)?;
        }
        self.finish_step(OP, share, loss, correct)
    }

    /// Combines the workers' gradients, loss and count (with a hook; this worker's gradient and
    /// loss count with weight `share`), then applies the optimizer unless the (global) loss is
    /// not finite.
    fn finish_step(
        &mut self,
        op: &'static str,
        share: f32,
        loss: f32,
        correct: usize,
    ) -> Result<(f32, usize)> {
        let (mut loss, mut correct) = (loss, correct);
        if let Some(sync) = self.sync.as_mut() {
            // The global mean gradient: Σ over workers of share·(local mean).
            let g = self.model.grads_mut();
            g.iter_mut().for_each(|v| *v *= share);
            sync.all_reduce_sum(g)?;
            let mut stats = [loss * share, correct as f32];
            sync.all_reduce_sum(&mut stats)?;
            (loss, correct) = (stats[0], stats[1] as usize);
        }
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                op,
                what: "training loss",
            });
        }
        let (p, g) = self.model.params_and_grads();
        self.optimizer.step(p, g)?;
        Ok((loss, correct))
    }

    /// Makes this trainer one worker of a data-parallel run (see [`crate::distributed`]): from
    /// now on [`Trainer::fit`] / [`Trainer::fit_to`] take this worker's share of every global
    /// batch of `batch_size` and `hook` sums the gradients. Parameters and optimizer state are
    /// broadcast from worker 0 first (so all workers start alike, also on resume).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] if the batch size does not split over the workers; the hook's
    /// errors.
    pub fn set_gradient_sync(&mut self, mut hook: Box<dyn GradientSync>) -> Result<()> {
        let size = hook.size();
        if size == 0 || !self.cfg.batch_size.is_multiple_of(size) {
            return Err(Error::invalid(
                "Trainer::set_gradient_sync",
                "batch_size",
                format!(
                    "the global batch of {} does not split over {size} workers",
                    self.cfg.batch_size
                ),
            ));
        }
        hook.broadcast(self.model.params_mut())?;
        let steps = self.optimizer.steps();
        let mut state: Vec<(&'static str, Vec<f32>)> = self
            .optimizer
            .state()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        for (_, v) in state.iter_mut() {
            hook.broadcast(v)?;
        }
        let buffers: Vec<(&str, &[f32])> = state.iter().map(|(k, v)| (*k, &v[..])).collect();
        self.optimizer.load_state(steps, &buffers)?;
        self.sync = Some(hook);
        Ok(())
    }

    /// `x` with its first `⌈fraction·n⌉` samples replaced by adversarial examples.
    fn adversarial_batch(
        &mut self,
        adv: &AdversarialTraining,
        x: &[f32],
        labels: &[u32],
    ) -> Result<Vec<f32>> {
        const OP: &str = "Trainer::step";
        let n = labels.len();
        let d = crate::shape::numel(self.model.input_shape());
        crate::error::check_len(OP, "x", x, n * d)?;
        let k = ((adv.fraction as f64 * n as f64).ceil() as usize).min(n);
        let plane = d / self.model.input_shape()[0].max(1);
        let steps_done = self.progress.epoch as u64 * 1_000_003 + self.progress.step as u64;
        let attack = crate::stability::Attack {
            seed: adv.attack.seed.wrapping_add(steps_done),
            ..adv.attack.clone()
        };
        let mut out = x.to_vec();
        let head = &mut out[..k * d];
        if let Some(nm) = &attack.normalization {
            nm.to_pixels(plane, &x[..k * d], head);
            // Normalised pixels may leave the range by a rounding error.
            let (lo, hi) = attack.range;
            head.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
        }
        let ex = crate::stability::adversarial_examples(
            &mut self.model,
            head,
            &labels[..k],
            k,
            &attack,
        )?;
        // input + δ/std with δ the perturbation in pixels: an element the attack left alone
        // keeps its exact input value (no round trip through pixels).
        let channels = self.model.input_shape()[0].max(1);
        for (p, ((o, e), xi)) in head
            .chunks_mut(plane.max(1))
            .zip(ex.chunks(plane.max(1)))
            .zip(x.chunks(plane.max(1)))
            .enumerate()
        {
            let s = attack
                .normalization
                .as_ref()
                .map_or(1.0, |nm| nm.std[p % channels]);
            for ((o, &e), &xv) in o.iter_mut().zip(e).zip(xi) {
                let delta = e - *o;
                *o = if delta == 0.0 { xv } else { xv + delta / s };
            }
        }
        Ok(out)
    }

    /// Trains for the remaining epochs of the configuration, evaluating on `val` after each
    /// epoch. `observe` sees every step and epoch; returning [`Control::Stop`] ends the call
    /// after the current step, and calling `fit` again continues from there.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] if the datasets do not fit the model (image shape, class count) or
    /// the training set is empty; [`Error::NonFinite`] if the loss diverges.
    pub fn fit(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        observe: &mut dyn FnMut(&Event<'_>) -> Control,
    ) -> Result<()> {
        const OP: &str = "Trainer::fit";
        for (ds, what) in
            std::iter::once((train, "training set")).chain(val.map(|v| (v, "validation set")))
        {
            if ds.shape() != self.model.input_shape() {
                return Err(Error::invalid(
                    OP,
                    "dataset",
                    format!(
                        "{what} images are {:?}, the model takes {:?}",
                        ds.shape(),
                        self.model.input_shape()
                    ),
                ));
            }
            if ds.classes().len() != self.model.output_len() {
                return Err(Error::invalid(
                    OP,
                    "dataset",
                    format!(
                        "{what} has {} classes, the model outputs {}",
                        ds.classes().len(),
                        self.model.output_len()
                    ),
                ));
            }
        }
        if train.is_empty() {
            return Err(Error::invalid(OP, "dataset", "the training set is empty"));
        }
        let monitor = self.cfg.monitor;
        if matches!(monitor, Monitor::Auc | Monitor::SensitivityAt(_))
            && (val.is_none() || self.model.output_len() != 2)
        {
            return Err(Error::invalid(
                OP,
                "monitor",
                format!("{monitor} needs two classes and a validation set"),
            ));
        }
        let val_batch = self.cfg.eval_batch_size;
        let sample_weights = self.sample_weights(train);
        self.run_epochs(
            OP,
            train.len(),
            sample_weights.as_deref(),
            crate::shape::numel(train.shape()),
            &mut |t, idx| {
                let (global, idx) = (idx.len(), t.my_shard(idx));
                let (mut xb, mut yb) = (std::mem::take(&mut t.xb), std::mem::take(&mut t.yb));
                gather(train, idx, &mut xb, &mut yb);
                // Taken out for the call (no clone: a step allocates nothing).
                if let Some(aug) = t.cfg.augment.take() {
                    let r = aug.apply(
                        train.shape(),
                        &mut xb,
                        idx,
                        t.progress.epoch,
                        &mut t.aug_buf,
                    );
                    t.cfg.augment = Some(aug);
                    r?;
                }
                let r = t.step_part(&xb, &yb, global);
                (t.xb, t.yb) = (xb, yb);
                r
            },
            &mut |t| match val {
                Some(v) => {
                    let (m, scores) = evaluate_scores(&mut t.model, v, val_batch)?;
                    let value = match monitor {
                        Monitor::Loss => m.loss,
                        Monitor::Accuracy => m.accuracy,
                        Monitor::Auc => m.binary.and_then(|b| b.roc_auc).unwrap_or(f64::NAN),
                        Monitor::SensitivityAt(spec) => crate::metrics::sensitivity_at_specificity(
                            v.labels(),
                            &scores,
                            spec as f64,
                        )
                        .unwrap_or(f64::NAN),
                    };
                    Ok((Some(m), Some(value)))
                }
                None => Ok((None, None)),
            },
            observe,
        )
    }

    /// One step towards image targets: forward, the configured [`Loss`] (MSE or L1) against
    /// `target` (the model's output shape per sample), backward, optimizer update. Returns the
    /// loss. (Adversarial training applies to classification steps only.)
    ///
    /// # Errors
    /// [`Error::InvalidArg`] if the configured loss is cross-entropy; [`Error::Length`] if `x` or
    /// `target` is not whole samples; [`Error::NonFinite`] if the loss is NaN or infinite (the
    /// weights are left as they were).
    pub fn step_to(&mut self, x: &[f32], target: &[f32]) -> Result<f32> {
        let d = crate::shape::numel(self.model.input_shape());
        let global = x.len() / d.max(1) * self.sync.as_ref().map_or(1, |s| s.size());
        self.step_to_part(x, target, global)
    }

    /// This worker's share of the global batch `idx` (all of it without a hook).
    fn my_shard<'a>(&self, idx: &'a [usize]) -> &'a [usize] {
        match &self.sync {
            Some(s) => &idx[crate::distributed::shard(idx.len(), s.rank(), s.size())],
            None => idx,
        }
    }

    fn step_to_part(&mut self, x: &[f32], target: &[f32], global: usize) -> Result<f32> {
        const OP: &str = "Trainer::step_to";
        let d = crate::shape::numel(self.model.input_shape());
        let n = x.len() / d.max(1);
        if n == 0 && self.sync.is_some() {
            self.model.grads_mut().fill(0.0);
            return self.finish_step(OP, 0.0, 0.0, 0).map(|r| r.0);
        }
        crate::error::check_len(OP, "x", x, n * d)?;
        crate::error::check_len(OP, "target", target, n * self.model.output_len())?;
        self.model.train();
        crate::layer::grow(OP, &mut self.dlogits, target.len())?;
        let out = self.model.forward(x, n)?;
        let grad = Some(&mut self.dlogits[..target.len()]);
        let loss = match self.cfg.loss {
            Loss::Mse => crate::kernels::loss::mse_loss(out, target, grad)?,
            Loss::L1 => crate::kernels::loss::l1_loss(out, target, grad)?,
            Loss::CrossEntropy => {
                return Err(Error::invalid(
                    OP,
                    "loss",
                    "cross-entropy takes class labels (Trainer::step): set TrainConfig::loss to Mse or L1",
                ));
            }
        };
        if loss.is_finite() {
            self.model
                .backward(x, &self.dlogits[..target.len()], Accum::Replace)?;
        }
        self.finish_step(OP, n as f32 / global.max(1) as f32, loss, 0)
            .map(|r| r.0)
    }

    /// [`Trainer::fit`] for image targets ([`Pairs`]: an image-to-image network, such as one that
    /// undoes a degradation), with the configured [`Loss`] (MSE or L1). Epoch reports carry the
    /// mean training loss; their accuracy is NaN and their validation metrics `None` (measure
    /// a validation set in `observe` with [`reconstruction_loss`]). Stopping and resuming work
    /// as for `fit`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] if the pairs do not fit the model or are empty, or the loss is
    /// cross-entropy; [`Error::NonFinite`] if the loss diverges.
    pub fn fit_to(
        &mut self,
        train: &Pairs,
        observe: &mut dyn FnMut(&Event<'_>) -> Control,
    ) -> Result<()> {
        const OP: &str = "Trainer::fit_to";
        train.check_fits(OP, &self.model)?;
        if train.is_empty() {
            return Err(Error::invalid(OP, "pairs", "no training pairs"));
        }
        let mut xb = Vec::new();
        let mut tb = Vec::new();
        self.run_epochs(
            OP,
            train.len(),
            None,
            train.input_len(),
            &mut |t, idx| {
                let (global, idx) = (idx.len(), t.my_shard(idx));
                train.gather(idx, &mut xb, &mut tb);
                t.step_to_part(&xb, &tb, global).map(|l| (l, 0))
            },
            &mut |_| Ok((None, None)),
            observe,
        )?;
        for r in self.history.iter_mut() {
            r.train_accuracy = f64::NAN;
        }
        Ok(())
    }

    /// Each training sample's weight under the configured sampler (`None`: a permutation).
    fn sample_weights(&self, train: &Dataset) -> Option<Vec<f64>> {
        let class_w: Vec<f64> = match &self.cfg.sampler {
            Sampler::Shuffle => return None,
            Sampler::Balanced => {
                let mut count = vec![0usize; train.classes().len()];
                for &l in train.labels() {
                    count[l as usize] += 1;
                }
                count.iter().map(|&c| 1.0 / c.max(1) as f64).collect()
            }
            Sampler::ClassWeighted(w) => w.iter().map(|&v| v as f64).collect(),
        };
        Some(
            train
                .labels()
                .iter()
                .map(|&l| class_w[l as usize])
                .collect(),
        )
    }

    /// The epochs left: batches of `len` samples of `sample_len` values (shuffled, or drawn with
    /// replacement by `sample_weights`) through `step` (loss, correct predictions), then `val`,
    /// the schedule and the observer after each epoch.
    #[allow(clippy::too_many_arguments)]
    fn run_epochs(
        &mut self,
        op: &'static str,
        len: usize,
        sample_weights: Option<&[f64]>,
        sample_len: usize,
        step: &mut StepFn<'_>,
        val: &mut ValFn<'_>,
        observe: &mut dyn FnMut(&Event<'_>) -> Control,
    ) -> Result<()> {
        // The batch buffer, checked against the memory budget before the first gather.
        let batch_len = crate::error::mul(op, "batch", self.cfg.batch_size.min(len), sample_len)?;
        let have = self.xb.len();
        crate::memory::reserve(
            op,
            "a batch of images",
            &mut self.xb,
            batch_len.saturating_sub(have),
        )?;
        while self.progress.epoch < self.cfg.epochs && !self.stopped_early {
            let started = std::time::Instant::now();
            let epoch = self.progress.epoch;
            // The optimizer holds the rate; the schedule moves it between epochs (below).
            let lr = self.optimizer.lr();
            let mut batches = match self.batches.take() {
                Some(b) => b,
                None => match sample_weights {
                    Some(w) => {
                        Batches::weighted(w, self.cfg.batch_size, self.cfg.seed).map_err(|_| {
                            Error::invalid(op, "sampler", "no class to draw has a positive weight")
                        })?
                    }
                    None => Batches::new(len, self.cfg.batch_size, true, self.cfg.seed)?,
                },
            };
            batches.set_rng_state(self.progress.shuffle_rng);
            let order: Vec<&[usize]> = batches.epoch().collect();
            let steps = order.len();
            let mut stopped = false;
            for idx in order.iter().skip(self.progress.step) {
                let (loss, correct) = step(self, idx)?;
                let p = &mut self.progress.partial;
                p.0 += loss as f64 * idx.len() as f64;
                p.1 += correct;
                p.2 += idx.len();
                self.progress.step += 1;
                if observe(&Event::Step {
                    epoch,
                    step: self.progress.step,
                    steps,
                    loss,
                }) == Control::Stop
                {
                    stopped = true;
                    break;
                }
            }
            drop(order);
            if stopped && self.progress.step < steps {
                self.batches = Some(batches);
                return Ok(());
            }
            let (val_metrics, monitored) = val(self)?;
            let (sum, correct, seen) = self.progress.partial;
            let report = EpochReport {
                epoch: epoch + 1,
                lr,
                train_loss: sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                val: val_metrics,
                seconds: started.elapsed().as_secs_f64(),
            };
            self.progress = Progress {
                epoch: epoch + 1,
                step: 0,
                shuffle_rng: batches.rng_state(),
                partial: (0.0, 0, 0),
            };
            self.batches = Some(batches);
            // The monitored value: from the validation set, else the training loss or accuracy.
            let value = monitored.unwrap_or(match self.cfg.monitor {
                Monitor::Accuracy => report.train_accuracy,
                _ => report.train_loss,
            });
            self.history.push(report);
            let maximize = self.cfg.monitor.maximize();
            let track = self.cfg.keep_best || self.cfg.early_stopping.is_some();
            let improved = match &self.best {
                None => !value.is_nan(),
                Some(b) if maximize => value > b.value,
                Some(b) => value < b.value,
            };
            if track && improved {
                self.best = Some(Best {
                    epoch: epoch + 1,
                    value,
                    state: if self.cfg.keep_best {
                        self.model.state_dict()
                    } else {
                        Vec::new()
                    },
                });
            }
            let next = match self.cfg.schedule {
                LrSchedule::Plateau { .. } => self.plateau.step(&self.cfg.schedule, value, lr),
                _ => self
                    .cfg
                    .schedule
                    .next_lr(lr, self.optimizer.initial_lr(), epoch + 1),
            };
            self.optimizer.set_lr(next);
            if let (Some(patience), Some(b)) = (self.cfg.early_stopping, &self.best) {
                self.stopped_early = epoch + 1 - b.epoch >= patience;
            }
            let stop =
                observe(&Event::Epoch(self.history.last().expect("just pushed"))) == Control::Stop;
            if stop {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || (v[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

/// Class probabilities (softmax of the outputs) of `n` images, in evaluation mode.
///
/// # Errors
/// [`Error::Length`] if `x` does not hold `n` images of the model's input shape.
pub fn predict(model: &mut Sequential, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let was = model.is_training();
    model.eval();
    let out = model.forward(x, n).map(|l| l.to_vec());
    if was {
        model.train();
    }
    let logits = out?;
    let mut probs = vec![0.0; logits.len()];
    softmax_forward(model.output_len(), &logits, &mut probs)?;
    Ok(probs)
}

/// The mean `loss` (MSE or L1, over every output element) of `model` on `pairs`, in evaluation
/// mode (the model's mode is restored afterwards), `batch` pairs at a time.
///
/// # Errors
/// [`Error::InvalidArg`] if the pairs do not fit the model or are empty, the loss is
/// cross-entropy, or `batch` is 0.
pub fn reconstruction_loss(
    model: &mut Sequential,
    pairs: &Pairs,
    loss: Loss,
    batch: usize,
) -> Result<f64> {
    const OP: &str = "reconstruction_loss";
    pairs.check_fits(OP, model)?;
    if pairs.is_empty() || batch == 0 || loss == Loss::CrossEntropy {
        return Err(Error::invalid(
            OP,
            "pairs",
            "needs pairs, a batch of at least 1 and the MSE or L1 loss",
        ));
    }
    let was = model.is_training();
    model.eval();
    let (a, b) = (pairs.input_len(), model.output_len());
    let mut total = 0.0f64;
    let r = (|| {
        for (x, t) in pairs
            .inputs()
            .chunks(batch * a)
            .zip(pairs.targets().chunks(batch * b))
        {
            let out = model.forward(x, x.len() / a)?;
            let l = match loss {
                Loss::Mse => crate::kernels::loss::mse_loss(out, t, None)?,
                _ => crate::kernels::loss::l1_loss(out, t, None)?,
            };
            total += l as f64 * t.len() as f64;
        }
        Ok(total / pairs.targets().len() as f64)
    })();
    if was {
        model.train();
    }
    r
}

/// Loss, accuracy, confusion matrix and per-class metrics of `model` on `ds`, in evaluation mode
/// (the model's mode is restored afterwards).
///
/// # Errors
/// [`Error::InvalidArg`] if the dataset does not fit the model.
pub fn evaluate(model: &mut Sequential, ds: &Dataset, batch: usize) -> Result<Metrics> {
    evaluate_scores(model, ds, batch).map(|r| r.0)
}

/// [`evaluate`], and for two classes the positive-class probability of every image (empty for
/// more classes).
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_scores(
    model: &mut Sequential,
    ds: &Dataset,
    batch: usize,
) -> Result<(Metrics, Vec<f32>)> {
    const OP: &str = "evaluate";
    if ds.shape() != model.input_shape() || ds.classes().len() != model.output_len() {
        return Err(Error::invalid(
            OP,
            "dataset",
            format!(
                "images {:?} with {} classes; the model takes {:?} and outputs {}",
                ds.shape(),
                ds.classes().len(),
                model.input_shape(),
                model.output_len()
            ),
        ));
    }
    let classes = model.output_len();
    let was = model.is_training();
    model.eval();
    let (mut pred, mut scores, mut loss_sum) = (Vec::with_capacity(ds.len()), Vec::new(), 0.0f64);
    let (mut xb, mut yb) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut result = Ok(());
    for chunk in idx.chunks(batch.max(1)) {
        gather(ds, chunk, &mut xb, &mut yb);
        let logits = match model.forward(&xb, chunk.len()) {
            Ok(l) => l,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        loss_sum +=
            cross_entropy_loss(classes, logits, &yb, 0.0, None)? as f64 * chunk.len() as f64;
        for row in logits.chunks_exact(classes) {
            pred.push(argmax(row) as u32);
            if classes == 2 {
                // P(class 1) = σ(z1 − z0).
                scores.push(1.0 / (1.0 + (row[0] - row[1]).exp()));
            }
        }
    }
    if was {
        model.train();
    }
    result?;
    let loss = loss_sum / ds.len().max(1) as f64;
    let m = Metrics::new(
        classes,
        ds.labels(),
        &pred,
        (classes == 2).then_some(&scores[..]),
        loss,
    );
    Ok((m, scores))
}

// ------------------------------------------------------------------------- resumable state

fn hex4(s: [u64; 4]) -> String {
    s.iter()
        .map(|v| format!("{v:016x}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_hex4(s: &str) -> Option<[u64; 4]> {
    let v: Vec<u64> = s
        .split(',')
        .map(|t| u64::from_str_radix(t, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// `key=value;key=value` into a map.
fn fields(s: &str) -> std::collections::HashMap<&str, &str> {
    s.split(';').filter_map(|kv| kv.split_once('=')).collect()
}

fn num<T: std::str::FromStr>(m: &std::collections::HashMap<&str, &str>, k: &str) -> Option<T> {
    m.get(k)?.parse().ok()
}

impl TrainConfig {
    fn to_text(&self) -> String {
        let mut t = format!(
            "epochs={};batch_size={};seed={};schedule={};label_smoothing={:?};eval_batch_size={}",
            self.epochs,
            self.batch_size,
            self.seed,
            self.schedule,
            self.label_smoothing,
            self.eval_batch_size
        );
        if self.loss != Loss::CrossEntropy {
            t.push_str(&format!(";loss={}", self.loss));
        }
        if let Some(w) = &self.class_weights {
            t.push_str(&format!(";class_weights={}", join_floats(w, "/")));
        }
        if self.sampler != Sampler::Shuffle {
            t.push_str(&format!(";sampler={}", self.sampler));
        }
        if self.monitor != Monitor::Loss {
            t.push_str(&format!(";monitor={}", self.monitor));
        }
        if self.keep_best {
            t.push_str(";keep_best=true");
        }
        if let Some(p) = self.early_stopping {
            t.push_str(&format!(";early_stopping={p}"));
        }
        if let Some(a) = &self.augment {
            // `options|seed[|means|stds]`.
            t.push_str(&format!(";augment={a}|{}", a.seed));
            if let Some(n) = &a.normalization {
                t.push_str(&format!(
                    "|{}|{}",
                    join_floats(&n.mean, "/"),
                    join_floats(&n.std, "/")
                ));
            }
        }
        if let Some(a) = &self.adversarial {
            t.push_str(";adversarial=");
            t.push_str(&a.to_text());
        }
        t
    }
    fn from_text(s: &str) -> Option<Self> {
        let m = fields(s);
        Some(TrainConfig {
            epochs: num(&m, "epochs")?,
            batch_size: num(&m, "batch_size")?,
            seed: num(&m, "seed")?,
            schedule: num(&m, "schedule")?,
            label_smoothing: num(&m, "label_smoothing")?,
            eval_batch_size: num(&m, "eval_batch_size")?,
            loss: match m.get("loss") {
                None => Loss::CrossEntropy,
                Some(l) => l.parse().ok()?,
            },
            adversarial: match m.get("adversarial") {
                None => None,
                Some(a) => Some(AdversarialTraining::from_text(a)?),
            },
            class_weights: match m.get("class_weights") {
                None => None,
                Some(w) => Some(parse_floats(w)?),
            },
            sampler: match m.get("sampler") {
                None => Sampler::Shuffle,
                Some(v) => v.parse().ok()?,
            },
            monitor: match m.get("monitor") {
                None => Monitor::Loss,
                Some(v) => v.parse().ok()?,
            },
            keep_best: m.get("keep_best") == Some(&"true"),
            early_stopping: match m.get("early_stopping") {
                None => None,
                Some(v) => Some(v.parse().ok()?),
            },
            augment: match m.get("augment") {
                None => None,
                Some(v) => {
                    let f: Vec<&str> = v.split('|').collect();
                    let mut a: crate::augment::Augment = f.first()?.parse().ok()?;
                    a.seed = f.get(1)?.parse().ok()?;
                    if f.len() == 4 {
                        a.normalization = Some(
                            crate::data::normalization::Normalization::new(
                                parse_floats(f[2])?,
                                parse_floats(f[3])?,
                            )
                            .ok()?,
                        );
                    }
                    Some(a)
                }
            },
        })
    }
}

impl AdversarialTraining {
    /// `kind,norm,eps,steps,step_size,random_start,lo,hi,seed,fraction[,means,stds]` with
    /// `/`-separated per-channel values.
    fn to_text(&self) -> String {
        use crate::stability::{AttackKind, AttackNorm};
        let a = &self.attack;
        let kind = match a.kind {
            AttackKind::Fgsm => "fgsm",
            AttackKind::Pgd => "pgd",
            AttackKind::Noise => "noise",
        };
        let norm = match a.norm {
            AttackNorm::Linf => "linf",
            AttackNorm::L2 => "l2",
        };
        // The last-iterate variant as its own kind: records written before it read as before.
        let kind = match (kind, a.result) {
            ("pgd", crate::stability::PgdResult::Last) => "pgd-last",
            (k, _) => k,
        };
        let mut t = format!(
            "{kind},{norm},{:?},{},{:?},{},{:?},{:?},{},{:?}",
            a.eps,
            a.steps,
            a.step_size,
            a.random_start,
            a.range.0,
            a.range.1,
            a.seed,
            self.fraction
        );
        if let Some(n) = &a.normalization {
            let join = |v: &[f32]| {
                v.iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            t.push_str(&format!(",{},{}", join(&n.mean), join(&n.std)));
        }
        t
    }

    fn from_text(s: &str) -> Option<Self> {
        use crate::data::normalization::Normalization;
        use crate::stability::{Attack, AttackNorm};
        let f: Vec<&str> = s.split(',').collect();
        if f.len() != 10 && f.len() != 12 {
            return None;
        }
        let floats =
            |t: &str| -> Option<Vec<f32>> { t.split('/').map(|v| v.parse().ok()).collect() };
        let normalization = if f.len() == 12 {
            Some(Normalization::new(floats(f[10])?, floats(f[11])?).ok()?)
        } else {
            None
        };
        Some(AdversarialTraining {
            attack: Attack {
                kind: f[0].trim_end_matches("-last").parse().ok()?,
                result: if f[0] == "pgd-last" {
                    crate::stability::PgdResult::Last
                } else {
                    crate::stability::PgdResult::HighestLoss
                },
                norm: match f[1] {
                    "linf" => AttackNorm::Linf,
                    "l2" => AttackNorm::L2,
                    _ => return None,
                },
                eps: f[2].parse().ok()?,
                steps: f[3].parse().ok()?,
                step_size: f[4].parse().ok()?,
                random_start: f[5].parse().ok()?,
                range: (f[6].parse().ok()?, f[7].parse().ok()?),
                seed: f[8].parse().ok()?,
                normalization,
            },
            fraction: f[9].parse().ok()?,
        })
    }
}

fn history_to_text(h: &[EpochReport]) -> String {
    let mut s = String::new();
    for r in h {
        s.push_str(&format!(
            "{};{:?};{:?};{:?};{:?}",
            r.epoch, r.lr, r.train_loss, r.train_accuracy, r.seconds
        ));
        if let Some(v) = &r.val {
            let auc = v
                .binary
                .and_then(|b| b.roc_auc)
                .map_or("none".to_string(), |a| format!("{a:?}"));
            let conf: Vec<String> = v
                .confusion
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            s.push_str(&format!(";{:?};{auc};{}", v.loss, conf.join("|")));
        }
        s.push('\n');
    }
    s
}

fn history_from_text(s: &str) -> Option<Vec<EpochReport>> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            let val = if f.len() == 8 {
                let confusion: Vec<Vec<usize>> = f[7]
                    .split('|')
                    .map(|r| {
                        r.split(' ')
                            .map(|c| c.parse().ok())
                            .collect::<Option<Vec<usize>>>()
                    })
                    .collect::<Option<_>>()?;
                let auc = if f[6] == "none" {
                    None
                } else {
                    Some(f[6].parse().ok()?)
                };
                Some(Metrics::from_confusion(confusion, f[5].parse().ok()?, auc))
            } else if f.len() == 5 {
                None
            } else {
                return None;
            };
            Some(EpochReport {
                epoch: f[0].parse().ok()?,
                lr: f[1].parse().ok()?,
                train_loss: f[2].parse().ok()?,
                train_accuracy: f[3].parse().ok()?,
                seconds: f[4].parse().ok()?,
                val,
            })
        })
        .collect()
}

impl Trainer {
    /// Everything needed to continue this run exactly: the model (parameters, buffers, noise
    /// generator), the optimizer (state and step count), the configuration, the position in the
    /// epoch and the shuffling generator, and the history; plus `extra` metadata.
    pub fn to_safetensors(&self, extra: &BTreeMap<String, String>) -> SafeTensors {
        let mut st = self.model.to_safetensors(extra);
        for (name, _) in st.tensors.iter_mut() {
            *name = format!("model.{name}");
        }
        for (slot, v) in self.optimizer.state() {
            st.tensors.push((
                format!("optim.{slot}"),
                Tensor {
                    shape: vec![v.len()],
                    data: TensorData::F32(v.to_vec()),
                },
            ));
        }
        let p = &self.progress;
        let m = &mut st.metadata;
        m.insert("cnnkit.kind".into(), "training-state".into());
        // The optimizer with its current rate, and the rate it started from.
        m.insert("train.optimizer".into(), self.optimizer.kind().to_string());
        m.insert(
            "train.initial_lr".into(),
            format!("{:?}", self.optimizer.initial_lr()),
        );
        m.insert(
            "train.optimizer_steps".into(),
            self.optimizer.steps().to_string(),
        );
        m.insert("train.config".into(), self.cfg.to_text());
        m.insert(
            "train.progress".into(),
            format!(
                "epoch={};step={};shuffle_rng={};loss_sum={:?};correct={};seen={}",
                p.epoch,
                p.step,
                hex4(p.shuffle_rng).replace(',', ":"),
                p.partial.0,
                p.partial.1,
                p.partial.2
            ),
        );
        m.insert("train.model_rng".into(), hex4(self.model.rng_state()));
        let pl = &self.plateau;
        let mut sel = format!(
            "plateau_best={:?};plateau_bad={};plateau_cooldown={};stopped_early={}",
            pl.best, pl.bad_epochs, pl.cooldown_left, self.stopped_early
        );
        if let Some(b) = &self.best {
            sel.push_str(&format!(";best_epoch={};best_value={:?}", b.epoch, b.value));
            for (name, t) in &b.state {
                st.tensors.push((format!("best.{name}"), t.clone()));
            }
        }
        m.insert("train.selection".into(), sel);
        m.insert("train.history".into(), history_to_text(&self.history));
        st
    }

    /// Saves [`Trainer::to_safetensors`] atomically to `path`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &std::path::Path, extra: &BTreeMap<String, String>) -> Result<()> {
        checkpoint::save(path, &self.to_safetensors(extra))
    }

    /// Restores a trainer saved by [`Trainer::save`]; continuing it with [`Trainer::fit`] on the
    /// same data gives the weights an uninterrupted run would have. Returns the metadata too.
    ///
    /// # Errors
    /// [`Error::File`] naming the file for anything missing, malformed or inconsistent.
    pub fn load(path: &std::path::Path) -> Result<(Trainer, BTreeMap<String, String>)> {
        let st = checkpoint::load(path, CheckpointLimits::default())?;
        let bad = |what: &str| Error::file(path, format!("not a cnnkit training state: {what}"));
        let m = &st.metadata;
        let get = |k: &str| {
            m.get(k)
                .map(String::as_str)
                .ok_or_else(|| bad(&format!("missing {k}")))
        };
        let input = checkpoint::parse_shape(get(checkpoint::INPUT_KEY)?)
            .ok_or_else(|| bad("malformed input shape"))?;
        let specs = LayerSpec::parse_list(get(checkpoint::ARCH_KEY)?)
            .map_err(|e| Error::file_from(path, "", e))?;
        let kind: OptimizerKind = get("train.optimizer")?
            .parse()
            .map_err(|e: Error| Error::file_from(path, "", e))?;
        let cfg = TrainConfig::from_text(get("train.config")?)
            .ok_or_else(|| bad("malformed train.config"))?;
        let pf = fields(get("train.progress")?);
        let progress = (|| {
            Some(Progress {
                epoch: num(&pf, "epoch")?,
                step: num(&pf, "step")?,
                shuffle_rng: parse_hex4(&pf.get("shuffle_rng")?.replace(':', ","))?,
                partial: (
                    num(&pf, "loss_sum")?,
                    num(&pf, "correct")?,
                    num(&pf, "seen")?,
                ),
            })
        })()
        .ok_or_else(|| bad("malformed train.progress"))?;
        let model_rng =
            parse_hex4(get("train.model_rng")?).ok_or_else(|| bad("malformed train.model_rng"))?;
        let steps: u64 = get("train.optimizer_steps")?
            .parse()
            .map_err(|_| bad("malformed train.optimizer_steps"))?;
        let history = history_from_text(get("train.history")?)
            .ok_or_else(|| bad("malformed train.history"))?;
        let mut model_tensors = std::collections::HashMap::new();
        let mut optim = Vec::new();
        let mut best_state = Vec::new();
        for (name, t) in &st.tensors {
            if let Some(n) = name.strip_prefix("best.") {
                best_state.push((n.to_string(), t.clone()));
            } else if let Some(n) = name.strip_prefix("model.") {
                model_tensors.insert(n.to_string(), t.clone());
            } else if let Some(n) = name.strip_prefix("optim.") {
                match &t.data {
                    TensorData::F32(v) => optim.push((n.to_string(), v.clone())),
                    TensorData::I64(_) => return Err(bad(&format!("{name} is not f32"))),
                }
            } else {
                return Err(bad(&format!("unexpected tensor {name}")));
            }
        }
        let mut model =
            Sequential::new(input, &specs, 0).map_err(|e| Error::file_from(path, "", e))?;
        // Written before the names followed PyTorch's module indices (a `gap` counted as one).
        if m.get(checkpoint::NAMES_KEY).map(String::as_str) != Some(checkpoint::NAMES_TORCH) {
            model_tensors = model
                .rename_from_layer_indices(model_tensors)
                .into_iter()
                .collect();
            best_state = model.rename_from_layer_indices(best_state);
        }
        model
            .load_state_dict(&model_tensors)
            .map_err(|e| Error::file_from(path, "", e))?;
        model.set_rng_state(model_rng);
        model.train();
        let mut t =
            Trainer::new(model, kind, cfg.clone()).map_err(|e| Error::file_from(path, "", e))?;
        let view: Vec<(&str, &[f32])> = optim
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        t.optimizer
            .load_state(steps, &view)
            .map_err(|e| Error::file_from(path, "", e))?;
        // Files without train.initial_lr stored the initial rate as the optimizer's rate.
        match m.get("train.initial_lr") {
            Some(v) => {
                let initial: f32 = v.parse().map_err(|_| bad("malformed train.initial_lr"))?;
                t.optimizer.set_initial_lr(initial);
            }
            None => {
                let initial = t.optimizer.lr();
                t.optimizer
                    .set_lr(cfg.schedule.lr_at(initial, progress.epoch));
            }
        }
        // Files written before model selection existed have no train.selection.
        if let Some(sel) = m.get("train.selection") {
            let f = fields(sel);
            let bad_sel = || bad("malformed train.selection");
            t.plateau = crate::optim::PlateauState {
                best: num(&f, "plateau_best").ok_or_else(bad_sel)?,
                bad_epochs: num(&f, "plateau_bad").ok_or_else(bad_sel)?,
                cooldown_left: num(&f, "plateau_cooldown").ok_or_else(bad_sel)?,
                maximize: t.cfg.monitor.maximize(),
            };
            t.stopped_early = num(&f, "stopped_early").ok_or_else(bad_sel)?;
            if let Some(epoch) = num(&f, "best_epoch") {
                if !best_state.is_empty() {
                    // The kept state must fit the model.
                    let mut probe = Sequential::new(input, &specs, 0)
                        .map_err(|e| Error::file_from(path, "", e))?;
                    probe
                        .load_state_dict(&best_state)
                        .map_err(|e| Error::file_from(path, "best state", e))?;
                }
                t.best = Some(Best {
                    epoch,
                    value: num(&f, "best_value").ok_or_else(bad_sel)?,
                    state: best_state,
                });
            }
        }
        t.restore_progress(progress);
        t.restore_history(history);
        Ok((t, st.metadata))
    }
}
