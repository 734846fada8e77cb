//! Training states written before the typed record: `train.config`, `train.progress`,
//! `train.selection` as `key=value;…` text, the adversarial attack and the augmentation as
//! positional lists, and the history as one `;`-separated line per epoch. Only read, never
//! written; kept so that checkpoints of earlier versions still resume.

use super::config::{AdversarialTraining, Loss, Monitor, Sampler, TrainConfig, parse_floats};
use super::record::{Reader, Record, Selection, Value};
use super::trainer::{EpochReport, Progress};
use crate::augment::Augment;
use crate::data::normalization::Normalization;
use crate::metrics::Metrics;
use crate::stability::attack::{Attack, AttackNorm, PgdResult};
use std::collections::{BTreeMap, HashMap};

/// `key=value;key=value` into a map.
fn fields(s: &str) -> HashMap<&str, &str> {
    s.split(';').filter_map(|kv| kv.split_once('=')).collect()
}

fn num<T: std::str::FromStr>(m: &HashMap<&str, &str>, k: &str) -> Option<T> {
    m.get(k)?.parse().ok()
}

fn config(s: &str) -> Option<TrainConfig> {
    let m = fields(s);
    let opt = |k: &str| m.get(k).copied();
    Some(TrainConfig {
        epochs: num(&m, "epochs")?,
        batch_size: num(&m, "batch_size")?,
        seed: num(&m, "seed")?,
        schedule: num(&m, "schedule")?,
        label_smoothing: num(&m, "label_smoothing")?,
        eval_batch_size: num(&m, "eval_batch_size")?,
        loss: match opt("loss") {
            None => Loss::CrossEntropy,
            Some(l) => l.parse().ok()?,
        },
        adversarial: match opt("adversarial") {
            None => None,
            Some(a) => Some(adversarial(a)?),
        },
        class_weights: match opt("class_weights") {
            None => None,
            Some(w) => Some(parse_floats(w)?),
        },
        sampler: match opt("sampler") {
            None => Sampler::Shuffle,
            Some(v) => v.parse().ok()?,
        },
        monitor: match opt("monitor") {
            None => Monitor::Loss,
            Some(v) => v.parse().ok()?,
        },
        keep_best: opt("keep_best") == Some("true"),
        early_stopping: match opt("early_stopping") {
            None => None,
            Some(v) => Some(v.parse().ok()?),
        },
        augment: match opt("augment") {
            None => None,
            // `options|seed[|means|stds]`.
            Some(v) => {
                let f: Vec<&str> = v.split('|').collect();
                let mut a: Augment = f.first()?.parse().ok()?;
                a.seed = f.get(1)?.parse().ok()?;
                if f.len() == 4 {
                    a.normalization =
                        Some(Normalization::new(parse_floats(f[2])?, parse_floats(f[3])?).ok()?);
                }
                Some(a)
            }
        },
    })
}

/// `kind,norm,eps,steps,step_size,random_start,lo,hi,seed,fraction[,means,stds]` with
/// `/`-separated per-channel values; the kind `pgd-last` is PGD returning its last iterate.
fn adversarial(s: &str) -> Option<AdversarialTraining> {
    let f: Vec<&str> = s.split(',').collect();
    if f.len() != 10 && f.len() != 12 {
        return None;
    }
    let normalization = if f.len() == 12 {
        Some(Normalization::new(parse_floats(f[10])?, parse_floats(f[11])?).ok()?)
    } else {
        None
    };
    Some(AdversarialTraining {
        attack: Attack {
            kind: f[0].trim_end_matches("-last").parse().ok()?,
            result: if f[0] == "pgd-last" {
                PgdResult::Last
            } else {
                PgdResult::HighestLoss
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

/// `epoch;lr;train_loss;train_accuracy;seconds[;val_loss;auc|none;confusion rows]` per line.
fn history(s: &str) -> Option<Vec<EpochReport>> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            let val = match f.len() {
                8 => {
                    let confusion: Vec<Vec<usize>> = f[7]
                        .split('|')
                        .map(|r| r.split(' ').map(|c| c.parse().ok()).collect())
                        .collect::<Option<_>>()?;
                    let auc = match f[6] {
                        "none" => None,
                        a => Some(a.parse().ok()?),
                    };
                    Some(Metrics::from_confusion(confusion, f[5].parse().ok()?, auc))
                }
                5 => None,
                _ => return None,
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

/// The record of a training state in the earlier format; errors name the entry.
pub(super) fn read(m: &BTreeMap<String, String>) -> Result<Record, String> {
    let r = Reader(m);
    let text = |k: &str| m.get(k).map(String::as_str).ok_or(format!("missing {k}"));
    let malformed = |k: &str| format!("malformed {k}");
    let config = config(text("train.config")?).ok_or_else(|| malformed("train.config"))?;
    let pf = fields(text("train.progress")?);
    let progress = (|| {
        Some(Progress {
            epoch: num(&pf, "epoch")?,
            step: num(&pf, "step")?,
            shuffle_rng: <[u64; 4]>::decode(&pf.get("shuffle_rng")?.replace(':', ","))?,
            partial: (
                num(&pf, "loss_sum")?,
                num(&pf, "correct")?,
                num(&pf, "seen")?,
            ),
        })
    })()
    .ok_or_else(|| malformed("train.progress"))?;
    // Files written before model selection existed have no train.selection.
    let selection = match m.get("train.selection") {
        None => None,
        Some(sel) => {
            let f = fields(sel);
            let s = (|| {
                Some(Selection {
                    plateau_best: num(&f, "plateau_best")?,
                    plateau_bad: num(&f, "plateau_bad")?,
                    plateau_cooldown: num(&f, "plateau_cooldown")?,
                    stopped_early: num(&f, "stopped_early")?,
                    best: match num(&f, "best_epoch") {
                        None => None,
                        Some(e) => Some((e, num(&f, "best_value")?)),
                    },
                })
            })();
            Some(s.ok_or_else(|| malformed("train.selection"))?)
        }
    };
    Ok(Record {
        optimizer: r.get("train.optimizer")?,
        // Files without train.initial_lr stored the initial rate as the optimizer's rate.
        initial_lr: r.opt("train.initial_lr")?,
        optimizer_steps: r.get("train.optimizer_steps")?,
        model_rng: <[u64; 4]>::decode(text("train.model_rng")?)
            .ok_or_else(|| malformed("train.model_rng"))?,
        history: history(text("train.history")?).ok_or_else(|| malformed("train.history"))?,
        config,
        progress,
        selection,
    })
}
