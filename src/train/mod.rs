//! Training: epochs of seeded mini-batches, a loss, an optimizer with a learning-rate schedule,
//! evaluation, and a callback to watch (or stop) it.
//!
//! - `config`: [`TrainConfig`] and the choices it names.
//! - `trainer`: [`Trainer`], the loop, and what it reports.
//! - `eval`: [`predict`], [`evaluate`], [`evaluate_scores`], [`reconstruction_loss`].
//! - `persist`: a training state saved to and restored from a safetensors file; `record`, the
//!   typed record of its metadata fields; `legacy`, the reader of the earlier format.

mod config;
mod eval;
mod legacy;
mod persist;
mod record;
mod trainer;

pub use config::{AdversarialTraining, Loss, Monitor, Sampler, TrainConfig};
pub use eval::{evaluate, evaluate_scores, predict, reconstruction_loss};
pub use trainer::{Control, EpochReport, Event, Progress, Trainer};
