//! How to train: the configuration of a [`Trainer`](super::Trainer) and the choices it names
//! (loss, sampler, monitored metric, adversarial training).

use crate::error::{Error, Result};
use crate::optim::LrSchedule;

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
    /// [`Trainer::fit_to`](super::Trainer::fit_to)).
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
    /// [`Trainer::best`](super::Trainer::best) says which, [`Trainer::restore_best`](super::Trainer::restore_best) puts them back in the model.
    pub keep_best: bool,
    /// Stop when `monitor` has not improved for this many epochs (default none).
    pub early_stopping: Option<usize>,
    /// Augmentation of the training images in [`Trainer::fit`](super::Trainer::fit) (default none): each epoch's
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
fn join_floats(v: &[f32], sep: &str) -> String {
    v.iter()
        .map(|x| format!("{x:?}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Floats separated by `/` or `,` (at least one).
pub(super) fn parse_floats(s: &str) -> Option<Vec<f32>> {
    let v: Option<Vec<f32>> = s.split(['/', ',']).map(|t| t.trim().parse().ok()).collect();
    v.filter(|v| !v.is_empty())
}

/// What a [`Trainer`](super::Trainer) minimises.
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
    pub attack: crate::stability::attack::Attack,
    /// Fraction of each batch replaced, in `(0, 1]` (default 0.5).
    pub fraction: f32,
}

impl AdversarialTraining {
    /// Half of each batch replaced by `attack`'s examples.
    pub fn new(attack: crate::stability::attack::Attack) -> Self {
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
