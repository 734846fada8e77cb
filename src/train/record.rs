//! The typed record of a training state: everything besides its tensors, one metadata entry
//! per field, named by its path (`train.config.epochs = 4`, `train.history.2.val.loss = …`).
//! Each field is read by its type, and a missing or malformed one is named in the error.

use super::config::{AdversarialTraining, Loss, Monitor, Sampler, TrainConfig};
use super::trainer::{EpochReport, Progress};
use crate::augment::Augment;
use crate::data::normalization::Normalization;
use crate::metrics::Metrics;
use crate::optim::{LrSchedule, OptimizerKind};
use crate::stability::attack::{Attack, AttackKind, AttackNorm, PgdResult};
use std::collections::BTreeMap;

type Meta = BTreeMap<String, String>;

/// The metadata key whose presence marks a file written as a [`Record`], and its version.
pub(super) const FORMAT_KEY: &str = "train.format";
const FORMAT: usize = 1;

/// A value stored as the text of one metadata entry, exactly (floats round-trip).
pub(super) trait Value: Sized {
    fn encode(&self) -> String;
    fn decode(s: &str) -> Option<Self>;
}

macro_rules! value_by_text {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn encode(&self) -> String {
                self.to_string()
            }
            fn decode(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    )*};
}
value_by_text!(
    usize,
    u64,
    bool,
    Loss,
    Sampler,
    Monitor,
    LrSchedule,
    OptimizerKind,
    Augment
);

macro_rules! value_by_debug {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn encode(&self) -> String {
                format!("{self:?}")
            }
            fn decode(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    )*};
}
value_by_debug!(f32, f64);

/// Comma-separated.
impl<T: Value> Value for Vec<T> {
    fn encode(&self) -> String {
        self.iter().map(T::encode).collect::<Vec<_>>().join(",")
    }
    fn decode(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Vec::new());
        }
        s.split(',').map(T::decode).collect()
    }
}

/// A generator state: four hexadecimal words.
impl Value for [u64; 4] {
    fn encode(&self) -> String {
        self.iter()
            .map(|v| format!("{v:016x}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn decode(s: &str) -> Option<Self> {
        let v: Vec<u64> = s
            .split(',')
            .map(|t| u64::from_str_radix(t, 16).ok())
            .collect::<Option<_>>()?;
        v.try_into().ok()
    }
}

impl Value for AttackKind {
    fn encode(&self) -> String {
        match self {
            AttackKind::Fgsm => "fgsm",
            AttackKind::Pgd => "pgd",
            AttackKind::Noise => "noise",
        }
        .into()
    }
    fn decode(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl Value for AttackNorm {
    fn encode(&self) -> String {
        match self {
            AttackNorm::Linf => "linf",
            AttackNorm::L2 => "l2",
        }
        .into()
    }
    fn decode(s: &str) -> Option<Self> {
        match s {
            "linf" => Some(AttackNorm::Linf),
            "l2" => Some(AttackNorm::L2),
            _ => None,
        }
    }
}

impl Value for PgdResult {
    fn encode(&self) -> String {
        match self {
            PgdResult::HighestLoss => "highest-loss",
            PgdResult::Last => "last",
        }
        .into()
    }
    fn decode(s: &str) -> Option<Self> {
        match s {
            "highest-loss" => Some(PgdResult::HighestLoss),
            "last" => Some(PgdResult::Last),
            _ => None,
        }
    }
}

/// Reads typed fields from a metadata map; errors name the key.
pub(super) struct Reader<'a>(pub(super) &'a Meta);

impl Reader<'_> {
    pub(super) fn get<T: Value>(&self, key: &str) -> std::result::Result<T, String> {
        let s = self.0.get(key).ok_or_else(|| format!("missing {key}"))?;
        T::decode(s).ok_or_else(|| format!("malformed {key} ({s:?})"))
    }
    /// `None` when the key is absent.
    pub(super) fn opt<T: Value>(&self, key: &str) -> std::result::Result<Option<T>, String> {
        match self.0.contains_key(key) {
            true => self.get(key).map(Some),
            false => Ok(None),
        }
    }
}

/// Writes typed fields into a metadata map.
struct Writer<'a>(&'a mut Meta);

impl Writer<'_> {
    fn put<T: Value>(&mut self, key: &str, v: &T) {
        self.0.insert(key.to_string(), v.encode());
    }
    /// Nothing when `v` is `None`.
    fn opt<T: Value>(&mut self, key: &str, v: &Option<T>) {
        if let Some(v) = v {
            self.put(key, v);
        }
    }
}

/// The model-selection state of a run.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Selection {
    pub(super) plateau_best: f64,
    pub(super) plateau_bad: usize,
    pub(super) plateau_cooldown: usize,
    pub(super) stopped_early: bool,
    /// The best epoch and its monitored value.
    pub(super) best: Option<(usize, f64)>,
}

/// Everything of a training state besides its tensors.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub(super) optimizer: OptimizerKind,
    /// `None` in files that stored the initial rate as the optimizer's rate.
    pub(super) initial_lr: Option<f32>,
    pub(super) optimizer_steps: u64,
    pub(super) config: TrainConfig,
    pub(super) progress: Progress,
    pub(super) model_rng: [u64; 4],
    /// `None` in files written before model selection existed.
    pub(super) selection: Option<Selection>,
    pub(super) history: Vec<EpochReport>,
}

fn write_normalization(w: &mut Writer<'_>, key: &str, n: &Option<Normalization>) {
    if let Some(n) = n {
        w.put(&format!("{key}.mean"), &n.mean);
        w.put(&format!("{key}.std"), &n.std);
    }
}

fn read_normalization(
    r: &Reader<'_>,
    key: &str,
) -> std::result::Result<Option<Normalization>, String> {
    match r.opt::<Vec<f32>>(&format!("{key}.mean"))? {
        None => Ok(None),
        Some(mean) => {
            let std = r.get(&format!("{key}.std"))?;
            Normalization::new(mean, std)
                .map(Some)
                .map_err(|e| format!("{key}: {e}"))
        }
    }
}

impl Record {
    pub(super) fn write(&self, m: &mut Meta) {
        let mut w = Writer(m);
        w.put(FORMAT_KEY, &FORMAT);
        w.put("train.optimizer", &self.optimizer);
        w.opt("train.initial_lr", &self.initial_lr);
        w.put("train.optimizer_steps", &self.optimizer_steps);
        w.put("train.model_rng", &self.model_rng);

        let c = &self.config;
        let k = |f: &str| format!("train.config.{f}");
        w.put(&k("epochs"), &c.epochs);
        w.put(&k("batch_size"), &c.batch_size);
        w.put(&k("seed"), &c.seed);
        w.put(&k("schedule"), &c.schedule);
        w.put(&k("label_smoothing"), &c.label_smoothing);
        w.put(&k("eval_batch_size"), &c.eval_batch_size);
        w.put(&k("loss"), &c.loss);
        w.opt(&k("class_weights"), &c.class_weights);
        w.put(&k("sampler"), &c.sampler);
        w.put(&k("monitor"), &c.monitor);
        w.put(&k("keep_best"), &c.keep_best);
        w.opt(&k("early_stopping"), &c.early_stopping);
        if let Some(a) = &c.augment {
            w.put(&k("augment"), a);
            w.put(&k("augment.seed"), &a.seed);
            write_normalization(&mut w, &k("augment.normalization"), &a.normalization);
        }
        if let Some(adv) = &c.adversarial {
            let a = &adv.attack;
            let k = |f: &str| format!("train.config.adversarial.{f}");
            w.put(&k("fraction"), &adv.fraction);
            w.put(&k("kind"), &a.kind);
            w.put(&k("norm"), &a.norm);
            w.put(&k("eps"), &a.eps);
            w.put(&k("steps"), &a.steps);
            w.put(&k("step_size"), &a.step_size);
            w.put(&k("random_start"), &a.random_start);
            w.put(&k("range"), &vec![a.range.0, a.range.1]);
            w.put(&k("seed"), &a.seed);
            w.put(&k("result"), &a.result);
            write_normalization(&mut w, &k("normalization"), &a.normalization);
        }

        let p = &self.progress;
        w.put("train.progress.epoch", &p.epoch);
        w.put("train.progress.step", &p.step);
        w.put("train.progress.shuffle_rng", &p.shuffle_rng);
        w.put("train.progress.loss_sum", &p.partial.0);
        w.put("train.progress.correct", &p.partial.1);
        w.put("train.progress.seen", &p.partial.2);

        if let Some(s) = &self.selection {
            w.put("train.selection.plateau_best", &s.plateau_best);
            w.put("train.selection.plateau_bad", &s.plateau_bad);
            w.put("train.selection.plateau_cooldown", &s.plateau_cooldown);
            w.put("train.selection.stopped_early", &s.stopped_early);
            if let Some((epoch, value)) = s.best {
                w.put("train.selection.best_epoch", &epoch);
                w.put("train.selection.best_value", &value);
            }
        }

        w.put("train.history.epochs", &self.history.len());
        for (i, r) in self.history.iter().enumerate() {
            let k = |f: &str| format!("train.history.{i}.{f}");
            w.put(&k("epoch"), &r.epoch);
            w.put(&k("lr"), &r.lr);
            w.put(&k("train_loss"), &r.train_loss);
            w.put(&k("train_accuracy"), &r.train_accuracy);
            w.put(&k("seconds"), &r.seconds);
            if let Some(v) = &r.val {
                w.put(&k("val.loss"), &v.loss);
                w.opt(&k("val.roc_auc"), &v.binary.and_then(|b| b.roc_auc));
                // Row-major, classes × classes.
                let flat: Vec<usize> = v.confusion.iter().flatten().copied().collect();
                w.put(&k("val.confusion"), &flat);
            }
        }
    }

    pub(super) fn read(m: &Meta) -> std::result::Result<Record, String> {
        let r = Reader(m);
        let version: usize = r.get(FORMAT_KEY)?;
        if version != FORMAT {
            return Err(format!(
                "{FORMAT_KEY} is {version}: written by a newer cnnkit (this one reads {FORMAT})"
            ));
        }
        let k = |f: &str| format!("train.config.{f}");
        let augment = match r.opt::<Augment>(&k("augment"))? {
            None => None,
            Some(mut a) => {
                a.seed = r.get(&k("augment.seed"))?;
                a.normalization = read_normalization(&r, &k("augment.normalization"))?;
                Some(a)
            }
        };
        let adversarial = match r.opt::<f32>("train.config.adversarial.fraction")? {
            None => None,
            Some(fraction) => {
                let k = |f: &str| format!("train.config.adversarial.{f}");
                let range: Vec<f32> = r.get(&k("range"))?;
                let &[lo, hi] = range.as_slice() else {
                    return Err(format!("malformed {}: not two numbers", k("range")));
                };
                Some(AdversarialTraining {
                    attack: Attack {
                        kind: r.get(&k("kind"))?,
                        norm: r.get(&k("norm"))?,
                        eps: r.get(&k("eps"))?,
                        steps: r.get(&k("steps"))?,
                        step_size: r.get(&k("step_size"))?,
                        random_start: r.get(&k("random_start"))?,
                        range: (lo, hi),
                        seed: r.get(&k("seed"))?,
                        normalization: read_normalization(&r, &k("normalization"))?,
                        result: r.get(&k("result"))?,
                    },
                    fraction,
                })
            }
        };
        let config = TrainConfig {
            epochs: r.get(&k("epochs"))?,
            batch_size: r.get(&k("batch_size"))?,
            seed: r.get(&k("seed"))?,
            schedule: r.get(&k("schedule"))?,
            label_smoothing: r.get(&k("label_smoothing"))?,
            eval_batch_size: r.get(&k("eval_batch_size"))?,
            adversarial,
            loss: r.get(&k("loss"))?,
            class_weights: r.opt(&k("class_weights"))?,
            sampler: r.get(&k("sampler"))?,
            monitor: r.get(&k("monitor"))?,
            keep_best: r.get(&k("keep_best"))?,
            early_stopping: r.opt(&k("early_stopping"))?,
            augment,
        };
        let progress = Progress {
            epoch: r.get("train.progress.epoch")?,
            step: r.get("train.progress.step")?,
            shuffle_rng: r.get("train.progress.shuffle_rng")?,
            partial: (
                r.get("train.progress.loss_sum")?,
                r.get("train.progress.correct")?,
                r.get("train.progress.seen")?,
            ),
        };
        let selection = Selection {
            plateau_best: r.get("train.selection.plateau_best")?,
            plateau_bad: r.get("train.selection.plateau_bad")?,
            plateau_cooldown: r.get("train.selection.plateau_cooldown")?,
            stopped_early: r.get("train.selection.stopped_early")?,
            best: match r.opt::<usize>("train.selection.best_epoch")? {
                None => None,
                Some(e) => Some((e, r.get("train.selection.best_value")?)),
            },
        };
        let epochs: usize = r.get("train.history.epochs")?;
        if epochs > config.epochs.max(1) {
            return Err(format!(
                "train.history.epochs is {epochs}, more than the {} configured",
                config.epochs
            ));
        }
        let mut history = Vec::with_capacity(epochs);
        for i in 0..epochs {
            let k = |f: &str| format!("train.history.{i}.{f}");
            let val = match r.opt::<f64>(&k("val.loss"))? {
                None => None,
                Some(loss) => {
                    let flat: Vec<usize> = r.get(&k("val.confusion"))?;
                    let n = (flat.len() as f64).sqrt().round() as usize;
                    if n * n != flat.len() || n == 0 {
                        return Err(format!(
                            "malformed {}: {} counts are not a square matrix",
                            k("val.confusion"),
                            flat.len()
                        ));
                    }
                    let confusion = flat.chunks(n).map(<[usize]>::to_vec).collect();
                    Some(Metrics::from_confusion(
                        confusion,
                        loss,
                        r.opt(&k("val.roc_auc"))?,
                    ))
                }
            };
            history.push(EpochReport {
                epoch: r.get(&k("epoch"))?,
                lr: r.get(&k("lr"))?,
                train_loss: r.get(&k("train_loss"))?,
                train_accuracy: r.get(&k("train_accuracy"))?,
                seconds: r.get(&k("seconds"))?,
                val,
            });
        }
        Ok(Record {
            optimizer: r.get("train.optimizer")?,
            initial_lr: Some(r.get("train.initial_lr")?),
            optimizer_steps: r.get("train.optimizer_steps")?,
            config,
            progress,
            model_rng: r.get("train.model_rng")?,
            selection: Some(selection),
            history,
        })
    }
}
