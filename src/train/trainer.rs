//! The training loop: epochs of seeded mini-batches, the loss, an optimizer with a
//! learning-rate schedule, validation after each epoch, model selection, and a callback to watch
//! (or stop) it.

use super::config::{AdversarialTraining, Loss, Monitor, Sampler, TrainConfig};
use super::eval::{argmax, evaluate_scores};
use crate::data::{Batches, Dataset, Pairs, gather};
use crate::distributed::GradientSync;
use crate::error::{Error, Result};
use crate::kernels::accum::Accum;
use crate::kernels::loss::cross_entropy_loss;
use crate::metrics::Metrics;
use crate::model::Sequential;
use crate::optim::{LrSchedule, Optimizer, OptimizerKind};
use crate::shape::Tensor;

/// One training step of [`Trainer::run_epochs`] on the samples at the given indices: loss and
/// correct predictions.
type StepFn<'a> = dyn FnMut(&mut Trainer, &[usize]) -> Result<(f32, usize)> + 'a;

/// The validation of [`Trainer::run_epochs`] after each epoch: metrics and the monitored value.
type ValFn<'a> = dyn FnMut(&mut Trainer) -> Result<(Option<Metrics>, Option<f64>)> + 'a;

/// The best epoch so far and the model's state then.
#[derive(Clone, Debug)]
pub(super) struct Best {
    pub(super) epoch: usize,
    pub(super) value: f64,
    pub(super) state: Vec<(String, Tensor)>,
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
    pub(super) model: Sequential,
    pub(super) optimizer: Optimizer,
    pub(super) cfg: TrainConfig,
    pub(super) batches: Option<Batches>,
    pub(super) progress: Progress,
    pub(super) history: Vec<EpochReport>,
    pub(super) xb: Vec<f32>,
    pub(super) yb: Vec<u32>,
    pub(super) dlogits: Vec<f32>,
    pub(super) sync: Option<Box<dyn GradientSync>>,
    pub(super) best: Option<Best>,
    pub(super) plateau: crate::optim::PlateauState,
    pub(super) stopped_early: bool,
    /// One image of scratch for the augmentation.
    pub(super) aug_buf: Vec<f32>,
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
        if let Some(a) = &cfg.adversarial {
            if !(a.fraction > 0.0 && a.fraction <= 1.0) {
                return Err(Error::invalid(
                    "Trainer::new",
                    "adversarial.fraction",
                    format!("{} (must be in (0, 1])", a.fraction),
                ));
            }
            // Found now rather than at the first step.
            a.attack.validate()?;
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
        let attack = crate::stability::attack::Attack {
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
        let ex = crate::stability::attack::adversarial_examples(
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
    /// a validation set in `observe` with [`reconstruction_loss`](super::reconstruction_loss)). Stopping and resuming work
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
