//! Optimizers with the update rules, defaults and `eps` placement of `torch.optim`, and
//! learning-rate schedules.
//!
//! Each algorithm is a fused slice step (`sgd_step`, `adam_step`, ...) whose state buffers the
//! caller owns; [`Optimizer`] wraps one of them with its state for a whole model's flat parameter
//! buffer. Updates run on SIMD lanes, split over the parameter buffer by rayon.

mod adadelta;
mod adagrad;
mod adam;
mod rmsprop;
mod sgd;

pub use adadelta::{AdadeltaConfig, adadelta_step};
pub use adagrad::{AdagradConfig, adagrad_step};
pub use adam::{AdamConfig, adam_step};
pub use rmsprop::{RmsPropConfig, rmsprop_step};
pub use sgd::{SgdConfig, sgd_step};

use crate::error::{Error, Result};

fn non_negative(op: &'static str, arg: &'static str, v: f32) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            arg,
            format!("must be finite and non-negative, got {v}"),
        ))
    }
}

fn unit_interval(op: &'static str, arg: &'static str, v: f32) -> Result<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            arg,
            format!("must be in [0, 1), got {v}"),
        ))
    }
}

/// An optimization algorithm and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd(SgdConfig),
    /// `torch.optim.Adam`.
    Adam(AdamConfig),
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW(AdamConfig),
    /// `torch.optim.RMSprop`.
    RmsProp(RmsPropConfig),
    /// `torch.optim.Adagrad`.
    Adagrad(AdagradConfig),
    /// `torch.optim.Adadelta`.
    Adadelta(AdadeltaConfig),
}

impl OptimizerKind {
    /// PyTorch's defaults for the optimizer called `name` (`sgd`, `adam`, `adamw`, `rmsprop`,
    /// `adagrad`, `adadelta`).
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sgd" => OptimizerKind::Sgd(SgdConfig::default()),
            "adam" => OptimizerKind::Adam(AdamConfig::default()),
            "adamw" => OptimizerKind::AdamW(AdamConfig::adamw()),
            "rmsprop" => OptimizerKind::RmsProp(RmsPropConfig::default()),
            "adagrad" => OptimizerKind::Adagrad(AdagradConfig::default()),
            "adadelta" => OptimizerKind::Adadelta(AdadeltaConfig::default()),
            _ => {
                return Err(Error::invalid(
                    "OptimizerKind::by_name",
                    "optimizer",
                    format!(
                        "unknown optimizer '{name}' (sgd, adam, adamw, rmsprop, adagrad, adadelta)"
                    ),
                ));
            }
        })
    }

    /// The name [`OptimizerKind::by_name`] accepts.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd(_) => "sgd",
            OptimizerKind::Adam(_) => "adam",
            OptimizerKind::AdamW(_) => "adamw",
            OptimizerKind::RmsProp(_) => "rmsprop",
            OptimizerKind::Adagrad(_) => "adagrad",
            OptimizerKind::Adadelta(_) => "adadelta",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            OptimizerKind::Sgd(c) => c.lr,
            OptimizerKind::Adam(c) | OptimizerKind::AdamW(c) => c.lr,
            OptimizerKind::RmsProp(c) => c.lr,
            OptimizerKind::Adagrad(c) => c.lr,
            OptimizerKind::Adadelta(c) => c.lr,
        }
    }

    /// Sets the learning rate.
    pub fn set_lr(&mut self, lr: f32) {
        match self {
            OptimizerKind::Sgd(c) => c.lr = lr,
            OptimizerKind::Adam(c) | OptimizerKind::AdamW(c) => c.lr = lr,
            OptimizerKind::RmsProp(c) => c.lr = lr,
            OptimizerKind::Adagrad(c) => c.lr = lr,
            OptimizerKind::Adadelta(c) => c.lr = lr,
        }
    }

    /// Sets the weight decay.
    pub fn set_weight_decay(&mut self, wd: f32) {
        match self {
            OptimizerKind::Sgd(c) => c.weight_decay = wd,
            OptimizerKind::Adam(c) | OptimizerKind::AdamW(c) => c.weight_decay = wd,
            OptimizerKind::RmsProp(c) => c.weight_decay = wd,
            OptimizerKind::Adagrad(c) => c.weight_decay = wd,
            OptimizerKind::Adadelta(c) => c.weight_decay = wd,
        }
    }

    /// Sets the momentum (SGD and RMSprop; ignored by the others, which have none).
    pub fn set_momentum(&mut self, m: f32) {
        match self {
            OptimizerKind::Sgd(c) => c.momentum = m,
            OptimizerKind::RmsProp(c) => c.momentum = m,
            _ => {}
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            OptimizerKind::Sgd(c) => c.validate(),
            OptimizerKind::Adam(c) | OptimizerKind::AdamW(c) => c.validate(),
            OptimizerKind::RmsProp(c) => c.validate(),
            OptimizerKind::Adagrad(c) => c.validate(),
            OptimizerKind::Adadelta(c) => c.validate(),
        }
    }

    /// Names of the per-parameter state buffers, as in PyTorch's optimizer `state`.
    fn slots(&self) -> Vec<&'static str> {
        match self {
            OptimizerKind::Sgd(c) if c.momentum != 0.0 => vec!["momentum_buffer"],
            OptimizerKind::Sgd(_) => vec![],
            OptimizerKind::Adam(c) | OptimizerKind::AdamW(c) if c.amsgrad => {
                vec!["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
            }
            OptimizerKind::Adam(_) | OptimizerKind::AdamW(_) => vec!["exp_avg", "exp_avg_sq"],
            OptimizerKind::RmsProp(c) => {
                let mut v = vec!["square_avg"];
                if c.centered {
                    v.push("grad_avg");
                }
                if c.momentum > 0.0 {
                    v.push("momentum_buffer");
                }
                v
            }
            OptimizerKind::Adagrad(_) => vec!["sum"],
            OptimizerKind::Adadelta(_) => vec!["square_avg", "acc_delta"],
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    /// `name(key=value,...)` with every hyper-parameter, e.g.
    /// `adam(lr=0.001,beta1=0.9,beta2=0.999,eps=1e-8,weight_decay=0.0,amsgrad=false)`; parsed back
    /// by `str::parse`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptimizerKind::Sgd(c) => write!(
                f,
                "sgd(lr={:?},momentum={:?},dampening={:?},weight_decay={:?},nesterov={})",
                c.lr, c.momentum, c.dampening, c.weight_decay, c.nesterov
            ),
            OptimizerKind::Adam(c) | OptimizerKind::AdamW(c) => write!(
                f,
                "{}(lr={:?},beta1={:?},beta2={:?},eps={:?},weight_decay={:?},amsgrad={})",
                self.name(),
                c.lr,
                c.betas.0,
                c.betas.1,
                c.eps,
                c.weight_decay,
                c.amsgrad
            ),
            OptimizerKind::RmsProp(c) => write!(
                f,
                "rmsprop(lr={:?},alpha={:?},eps={:?},weight_decay={:?},momentum={:?},centered={})",
                c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered
            ),
            OptimizerKind::Adagrad(c) => write!(
                f,
                "adagrad(lr={:?},lr_decay={:?},weight_decay={:?},initial_accumulator_value={:?},eps={:?})",
                c.lr, c.lr_decay, c.weight_decay, c.initial_accumulator_value, c.eps
            ),
            OptimizerKind::Adadelta(c) => write!(
                f,
                "adadelta(lr={:?},rho={:?},eps={:?},weight_decay={:?})",
                c.lr, c.rho, c.eps, c.weight_decay
            ),
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;

    /// A name (`adam`: PyTorch's defaults) or the [`Display`](std::fmt::Display) form with any
    /// subset of the hyper-parameters.
    fn from_str(s: &str) -> Result<Self> {
        const OP: &str = "OptimizerKind::from_str";
        let s = s.trim();
        let (name, args) = match s.split_once('(') {
            Some((n, rest)) => (
                n,
                rest.strip_suffix(')').ok_or_else(|| {
                    Error::invalid(OP, "optimizer", format!("missing ')' in {s}"))
                })?,
            ),
            None => (s, ""),
        };
        let mut k = OptimizerKind::by_name(name)?;
        for kv in args.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (key, v) = kv.split_once('=').ok_or_else(|| {
                Error::invalid(OP, "optimizer", format!("'{kv}' is not key=value"))
            })?;
            let num = || {
                v.parse::<f32>().map_err(|_| {
                    Error::invalid(OP, "optimizer", format!("{key} = '{v}' is not a number"))
                })
            };
            let flag = || {
                v.parse::<bool>().map_err(|_| {
                    Error::invalid(
                        OP,
                        "optimizer",
                        format!("{key} = '{v}' is not true or false"),
                    )
                })
            };
            let kname = k.name();
            let unknown =
                || Error::invalid(OP, "optimizer", format!("{kname} has no parameter '{key}'"));
            match (&mut k, key) {
                (_, "lr") => k.set_lr(num()?),
                (_, "weight_decay") => k.set_weight_decay(num()?),
                (OptimizerKind::Sgd(c), "momentum") => c.momentum = num()?,
                (OptimizerKind::Sgd(c), "dampening") => c.dampening = num()?,
                (OptimizerKind::Sgd(c), "nesterov") => c.nesterov = flag()?,
                (OptimizerKind::Adam(c) | OptimizerKind::AdamW(c), "beta1") => c.betas.0 = num()?,
                (OptimizerKind::Adam(c) | OptimizerKind::AdamW(c), "beta2") => c.betas.1 = num()?,
                (OptimizerKind::Adam(c) | OptimizerKind::AdamW(c), "eps") => c.eps = num()?,
                (OptimizerKind::Adam(c) | OptimizerKind::AdamW(c), "amsgrad") => {
                    c.amsgrad = flag()?
                }
                (OptimizerKind::RmsProp(c), "alpha") => c.alpha = num()?,
                (OptimizerKind::RmsProp(c), "eps") => c.eps = num()?,
                (OptimizerKind::RmsProp(c), "momentum") => c.momentum = num()?,
                (OptimizerKind::RmsProp(c), "centered") => c.centered = flag()?,
                (OptimizerKind::Adagrad(c), "lr_decay") => c.lr_decay = num()?,
                (OptimizerKind::Adagrad(c), "initial_accumulator_value") => {
                    c.initial_accumulator_value = num()?
                }
                (OptimizerKind::Adagrad(c), "eps") => c.eps = num()?,
                (OptimizerKind::Adadelta(c), "rho") => c.rho = num()?,
                (OptimizerKind::Adadelta(c), "eps") => c.eps = num()?,
                _ => return Err(unknown()),
            }
        }
        k.validate()?;
        Ok(k)
    }
}

impl std::fmt::Display for LrSchedule {
    /// `constant`, `step:STEP_SIZE:GAMMA` or `cosine:T_MAX:ETA_MIN`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrSchedule::Constant => write!(f, "constant"),
            LrSchedule::Step { step_size, gamma } => write!(f, "step:{step_size}:{gamma:?}"),
            LrSchedule::Cosine { t_max, eta_min } => write!(f, "cosine:{t_max}:{eta_min:?}"),
            LrSchedule::Plateau {
                factor,
                patience,
                threshold,
                cooldown,
                min_lr,
                threshold_mode,
                eps,
            } => write!(
                f,
                "plateau:{factor:?}:{patience}:{threshold:?}:{cooldown}:{min_lr:?}:{threshold_mode}:{eps:?}"
            ),
        }
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "LrSchedule::from_str",
                "schedule",
                format!(
                    "'{s}': use constant, step:STEP_SIZE:GAMMA, cosine:T_MAX[:ETA_MIN] or \
                     plateau[:FACTOR[:PATIENCE[:THRESHOLD[:COOLDOWN[:MIN_LR[:rel|abs[:EPS]]]]]]]"
                ),
            )
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        let sched = match parts.as_slice() {
            ["constant"] => Ok(LrSchedule::Constant),
            ["step", n, g] => Ok(LrSchedule::Step {
                step_size: n.parse().map_err(|_| bad())?,
                gamma: g.parse().map_err(|_| bad())?,
            }),
            ["cosine", t] => Ok(LrSchedule::Cosine {
                t_max: t.parse().map_err(|_| bad())?,
                eta_min: 0.0,
            }),
            ["cosine", t, e] => Ok(LrSchedule::Cosine {
                t_max: t.parse().map_err(|_| bad())?,
                eta_min: e.parse().map_err(|_| bad())?,
            }),
            ["plateau", rest @ ..] if rest.len() <= 7 => {
                let get = |i: usize, default: &'static str| rest.get(i).copied().unwrap_or(default);
                Ok(LrSchedule::Plateau {
                    factor: get(0, "0.1").parse().map_err(|_| bad())?,
                    patience: get(1, "10").parse().map_err(|_| bad())?,
                    threshold: get(2, "1e-4").parse().map_err(|_| bad())?,
                    cooldown: get(3, "0").parse().map_err(|_| bad())?,
                    min_lr: get(4, "0").parse().map_err(|_| bad())?,
                    threshold_mode: match get(5, "rel") {
                        "rel" => ThresholdMode::Rel,
                        "abs" => ThresholdMode::Abs,
                        _ => return Err(bad()),
                    },
                    eps: get(6, "1e-8").parse().map_err(|_| bad())?,
                })
            }
            _ => Err(bad()),
        }?;
        sched.validate()?;
        Ok(sched)
    }
}

/// An optimizer with its state for a flat parameter buffer of fixed length.
///
/// # Example
/// ```
/// use cnnkit::optim::{Optimizer, OptimizerKind, SgdConfig};
/// let mut opt = Optimizer::new(OptimizerKind::Sgd(SgdConfig { lr: 0.1, ..Default::default() }), 2)?;
/// let mut p = [1.0, 2.0];
/// opt.step(&mut p, &[1.0, -1.0])?;
/// assert_eq!(p, [0.9, 2.1]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    initial_lr: f32,
    steps: u64,
    names: Vec<&'static str>,
    state: Vec<Vec<f32>>,
    len: usize,
}

impl Optimizer {
    /// An optimizer for `len` parameters, with zeroed state (Adagrad's sum starts at its
    /// `initial_accumulator_value`).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for an invalid configuration; [`Error::OverBudget`] if the state
    /// would exceed the memory budget.
    pub fn new(kind: OptimizerKind, len: usize) -> Result<Self> {
        kind.validate()?;
        let names = kind.slots();
        let init = match kind {
            OptimizerKind::Adagrad(c) => c.initial_accumulator_value,
            _ => 0.0,
        };
        const OP: &str = "Optimizer::new";
        crate::memory::check_elems::<f32>(
            OP,
            "the optimizer state",
            names.len() as u128 * len as u128,
        )?;
        let state = names
            .iter()
            .map(|_| crate::memory::vec_of(OP, "the optimizer state", len, init))
            .collect::<Result<_>>()?;
        Ok(Optimizer {
            kind,
            initial_lr: kind.lr(),
            steps: 0,
            names,
            state,
            len,
        })
    }

    /// The algorithm and hyper-parameters.
    pub fn kind(&self) -> &OptimizerKind {
        &self.kind
    }
    /// The current learning rate: the one home of the rate. A schedule run by
    /// [`crate::Trainer`] reads it and writes the next epoch's rate here, so a rate set with
    /// [`Optimizer::set_lr`] is the one the next steps use and the schedule continues from.
    pub fn lr(&self) -> f32 {
        self.kind.lr()
    }
    /// Sets the current learning rate.
    pub fn set_lr(&mut self, lr: f32) {
        self.kind.set_lr(lr);
    }
    /// The rate the optimizer was created with (PyTorch's `initial_lr`), which the cosine
    /// schedule anneals from.
    pub fn initial_lr(&self) -> f32 {
        self.initial_lr
    }
    /// Sets [`Optimizer::initial_lr`] (to restore a saved run).
    pub fn set_initial_lr(&mut self, lr: f32) {
        self.initial_lr = lr;
    }
    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Updates `params` from `grads`.
    ///
    /// # Errors
    /// [`Error::Length`] if either length differs from the optimizer's; [`Error::InvalidArg`] for
    /// an invalid learning rate set since construction.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        crate::error::check_len("Optimizer::step", "params", params, self.len)?;
        let t = self.steps + 1;
        let mut st = self.state.iter_mut().map(|v| v.as_mut_slice());
        let mut next = || st.next().unwrap_or_default();
        match &self.kind {
            OptimizerKind::Sgd(c) => sgd_step(c, t == 1, params, grads, next())?,
            OptimizerKind::Adam(c) => {
                adam_step(c, false, t, params, grads, next(), next(), next())?
            }
            OptimizerKind::AdamW(c) => {
                adam_step(c, true, t, params, grads, next(), next(), next())?
            }
            OptimizerKind::RmsProp(c) => {
                let s = next();
                let a = if c.centered {
                    next()
                } else {
                    Default::default()
                };
                let b = if c.momentum > 0.0 {
                    next()
                } else {
                    Default::default()
                };
                rmsprop_step(c, params, grads, s, a, b)?
            }
            OptimizerKind::Adagrad(c) => adagrad_step(c, t, params, grads, next())?,
            OptimizerKind::Adadelta(c) => adadelta_step(c, params, grads, next(), next())?,
        }
        self.steps = t;
        Ok(())
    }

    /// The state buffers by name (PyTorch's names: `momentum_buffer`, `exp_avg`, `exp_avg_sq`,
    /// `max_exp_avg_sq`, `square_avg`, `grad_avg`, `sum`, `acc_delta`), each over the flat
    /// parameter buffer.
    pub fn state(&self) -> Vec<(&'static str, &[f32])> {
        self.names
            .iter()
            .copied()
            .zip(self.state.iter().map(|v| v.as_slice()))
            .collect()
    }

    /// Restores the step count and every state buffer (to resume training exactly).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] if a buffer is missing or has the wrong length; the optimizer is
    /// unchanged on error.
    pub fn load_state(&mut self, steps: u64, buffers: &[(&str, &[f32])]) -> Result<()> {
        const OP: &str = "Optimizer::load_state";
        for name in &self.names {
            match buffers.iter().find(|(n, _)| n == name) {
                Some((_, v)) if v.len() == self.len => {}
                Some((_, v)) => {
                    return Err(Error::invalid(
                        OP,
                        "state",
                        format!("{name} has {} values, expected {}", v.len(), self.len),
                    ));
                }
                None => return Err(Error::invalid(OP, "state", format!("missing {name}"))),
            }
        }
        for (name, dst) in self.names.iter().zip(&mut self.state) {
            if let Some((_, v)) = buffers.iter().find(|(n, _)| n == name) {
                dst.copy_from_slice(v);
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// A learning-rate schedule, stepped once per epoch from the optimizer's base rate.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// `torch.optim.lr_scheduler.StepLR`: `base · gamma^⌊epoch / step_size⌋`.
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// `torch.optim.lr_scheduler.CosineAnnealingLR`:
    /// `eta_min + (base − eta_min)·(1 + cos(π·epoch/t_max))/2`.
    Cosine {
        /// Epochs of one half cosine.
        t_max: usize,
        /// Final rate.
        eta_min: f32,
    },
    /// `torch.optim.lr_scheduler.ReduceLROnPlateau` on the metric the trainer monitors
    /// ([`crate::TrainConfig::monitor`]; minimised for a loss, maximised otherwise): after more
    /// than `patience` epochs without an improvement by `threshold` (relative or absolute, per
    /// `threshold_mode`), the rate is multiplied by `factor` (not below `min_lr`; a change
    /// smaller than `eps` is not made), then `cooldown` epochs pass before bad epochs count
    /// again. See [`PlateauState`].
    Plateau {
        /// Factor of each reduction (PyTorch's default 0.1).
        factor: f32,
        /// Epochs without improvement tolerated (default 10).
        patience: usize,
        /// Relative improvement that counts (default 1e-4).
        threshold: f32,
        /// Epochs after a reduction before bad epochs count again (default 0).
        cooldown: usize,
        /// Lowest rate (default 0).
        min_lr: f32,
        /// Whether `threshold` is relative to the best value or absolute (default relative).
        threshold_mode: ThresholdMode,
        /// The smallest change of the rate that is made (default 1e-8).
        eps: f32,
    },
}

/// How [`LrSchedule::Plateau`] measures an improvement, as PyTorch's `threshold_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ThresholdMode {
    /// Better than `best·(1 − threshold)` when minimising, `best·(1 + threshold)` when
    /// maximising (`'rel'`, PyTorch's default).
    #[default]
    Rel,
    /// Better than `best − threshold` when minimising, `best + threshold` when maximising
    /// (`'abs'`).
    Abs,
}

impl std::fmt::Display for ThresholdMode {
    /// `rel` or `abs`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThresholdMode::Rel => "rel",
            ThresholdMode::Abs => "abs",
        })
    }
}

/// The state of a [`LrSchedule::Plateau`] schedule, as PyTorch's `ReduceLROnPlateau` keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlateauState {
    /// The best metric so far (±∞ before the first epoch).
    pub best: f64,
    /// Epochs since the last improvement (`num_bad_epochs`).
    pub bad_epochs: usize,
    /// Epochs of cooldown left (`cooldown_counter`).
    pub cooldown_left: usize,
    /// Whether the metric is maximised (PyTorch's `mode='max'`), fixed when the state is made.
    pub maximize: bool,
}

impl PlateauState {
    /// The state before the first epoch, for a metric that is minimised or maximised.
    pub fn new(maximize: bool) -> Self {
        PlateauState {
            best: if maximize {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            },
            bad_epochs: 0,
            cooldown_left: 0,
            maximize,
        }
    }

    /// `scheduler.step(metric)`: the rate after an epoch that ended with `metric` and rate `lr`
    /// (unchanged for any schedule but [`LrSchedule::Plateau`]).
    pub fn step(&mut self, schedule: &LrSchedule, metric: f64, lr: f32) -> f32 {
        let LrSchedule::Plateau {
            factor,
            patience,
            threshold,
            cooldown,
            min_lr,
            threshold_mode,
            eps,
        } = *schedule
        else {
            return lr;
        };
        let t = threshold as f64;
        let better = match (self.maximize, threshold_mode) {
            (true, ThresholdMode::Rel) => metric > self.best * (1.0 + t),
            (false, ThresholdMode::Rel) => metric < self.best * (1.0 - t),
            (true, ThresholdMode::Abs) => metric > self.best + t,
            (false, ThresholdMode::Abs) => metric < self.best - t,
        };
        if better {
            self.best = metric;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_epochs = 0;
        }
        if self.bad_epochs > patience {
            self.cooldown_left = cooldown;
            self.bad_epochs = 0;
            let old = lr as f64;
            let new = (old * factor as f64).max(min_lr as f64);
            if old - new > eps as f64 {
                return new as f32;
            }
        }
        lr
    }
}

impl LrSchedule {
    /// Checks the parameters as PyTorch's schedulers do: a step size and a `t_max` of at least 1
    /// (PyTorch divides by both), and finite `gamma` / `eta_min`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the parameter.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "LrSchedule";
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { step_size: 0, .. } => {
                Err(Error::invalid(OP, "step_size", "must be at least 1 epoch"))
            }
            LrSchedule::Step { gamma, .. } if !(gamma.is_finite() && gamma >= 0.0) => {
                Err(Error::invalid(
                    OP,
                    "gamma",
                    format!("must be finite and non-negative, got {gamma}"),
                ))
            }
            LrSchedule::Cosine { t_max: 0, .. } => Err(Error::invalid(
                OP,
                "t_max",
                "must be at least 1 epoch (PyTorch's CosineAnnealingLR divides by it)",
            )),
            LrSchedule::Cosine { eta_min, .. } if !eta_min.is_finite() => Err(Error::invalid(
                OP,
                "eta_min",
                format!("must be finite, got {eta_min}"),
            )),
            LrSchedule::Plateau { factor, .. } if !(0.0..1.0).contains(&factor) => {
                Err(Error::invalid(
                    OP,
                    "factor",
                    format!("must be in [0, 1) (PyTorch refuses factor >= 1), got {factor}"),
                ))
            }
            LrSchedule::Plateau {
                threshold,
                min_lr,
                eps,
                ..
            } if !(threshold.is_finite()
                && threshold >= 0.0
                && min_lr.is_finite()
                && min_lr >= 0.0
                && eps.is_finite()
                && eps >= 0.0) =>
            {
                Err(Error::invalid(
                    OP,
                    "threshold",
                    format!(
                        "threshold {threshold}, min_lr {min_lr} and eps {eps} must be finite and non-negative"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The rate for `epoch` (≥ 1) from the rate `lr` of the epoch before, as PyTorch's
    /// schedulers compute it in `scheduler.step()` (their chainable form): StepLR multiplies
    /// by `gamma` every `step_size` epochs; CosineAnnealingLR follows its recursive formula,
    /// which uses the initial rate `base` only at the restarts. Without intervention this gives
    /// [`LrSchedule::lr_at`] (up to rounding); a rate changed between epochs is continued from.
    pub fn next_lr(&self, lr: f32, base: f32, epoch: usize) -> f32 {
        match *self {
            LrSchedule::Constant | LrSchedule::Plateau { .. } => lr,
            LrSchedule::Step { step_size, gamma } => {
                if epoch > 0 && epoch.is_multiple_of(step_size.max(1)) {
                    lr * gamma
                } else {
                    lr
                }
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let (t, e, lr, base, eta) = (
                    t_max.max(1) as f64,
                    epoch as f64,
                    lr as f64,
                    base as f64,
                    eta_min as f64,
                );
                let pi = std::f64::consts::PI;
                if epoch == 0 {
                    base as f32
                } else if (epoch - 1 + t_max.max(1)).is_multiple_of(2 * t_max.max(1)) {
                    (lr + (base - eta) * (1.0 - (pi / t).cos()) / 2.0) as f32
                } else {
                    ((1.0 + (pi * e / t).cos()) / (1.0 + (pi * (e - 1.0) / t).cos()) * (lr - eta)
                        + eta) as f32
                }
            }
        }
    }

    /// The rate for `epoch` (0-based) given the base rate (the closed form).
    pub fn lr_at(&self, base: f32, epoch: usize) -> f32 {
        match *self {
            // The plateau schedule depends on the metrics, not the epoch.
            LrSchedule::Constant | LrSchedule::Plateau { .. } => base,
            LrSchedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)).min(i32::MAX as usize) as i32)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let phase = std::f64::consts::PI * epoch as f64 / t_max.max(1) as f64;
                (eta_min as f64 + (base - eta_min) as f64 * (1.0 + phase.cos()) / 2.0) as f32
            }
        }
    }
}
