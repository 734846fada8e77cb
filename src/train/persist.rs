//! A training state in one safetensors file.
//!
//! The tensors are the model's (`model.*`), the optimizer's state (`optim.*`) and, with model
//! selection, the best epoch's model (`best.*`). Everything else is a typed
//! `Record` (`record.rs`) of metadata entries. Files written before the record (a few
//! `k=v;` strings) are read by [`super::legacy`].

use super::legacy;
use super::record::{FORMAT_KEY, Record, Selection};
use super::trainer::{Best, Trainer};
use crate::checkpoint::{self, CheckpointLimits, SafeTensors};
use crate::error::{Error, Result};
use crate::model::Sequential;
use crate::optim::PlateauState;
use crate::shape::{Tensor, TensorData};
use std::collections::BTreeMap;

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
        if let Some(b) = &self.best {
            for (name, t) in &b.state {
                st.tensors.push((format!("best.{name}"), t.clone()));
            }
        }
        st.metadata
            .insert("cnnkit.kind".into(), "training-state".into());
        let pl = &self.plateau;
        Record {
            optimizer: *self.optimizer.kind(),
            initial_lr: Some(self.optimizer.initial_lr()),
            optimizer_steps: self.optimizer.steps(),
            config: self.cfg.clone(),
            progress: self.progress.clone(),
            model_rng: self.model.rng_state(),
            selection: Some(Selection {
                plateau_best: pl.best,
                plateau_bad: pl.bad_epochs,
                plateau_cooldown: pl.cooldown_left,
                stopped_early: self.stopped_early,
                best: self.best.as_ref().map(|b| (b.epoch, b.value)),
            }),
            history: self.history.clone(),
        }
        .write(&mut st.metadata);
        st
    }

    /// Saves [`Trainer::to_safetensors`] atomically to `path`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &std::path::Path, extra: &BTreeMap<String, String>) -> Result<()> {
        checkpoint::save(path, &self.to_safetensors(extra))
    }

    /// Restores a trainer saved by [`Trainer::save`] (by this or an earlier version of cnnkit);
    /// continuing it with [`Trainer::fit`] on the same data gives the weights an uninterrupted
    /// run would have. Returns the metadata too.
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
        let arch = get(checkpoint::ARCH_KEY)?;
        let record = if m.contains_key(FORMAT_KEY) {
            Record::read(m)
        } else {
            legacy::read(m)
        }
        .map_err(|e| bad(&e))?;

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
            Sequential::from_text(input, arch, 0).map_err(|e| Error::file_from(path, "", e))?;
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
        model.set_rng_state(record.model_rng);
        model.train();
        let cfg = record.config;
        let mut t = Trainer::new(model, record.optimizer, cfg.clone())
            .map_err(|e| Error::file_from(path, "", e))?;
        let view: Vec<(&str, &[f32])> = optim
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        t.optimizer
            .load_state(record.optimizer_steps, &view)
            .map_err(|e| Error::file_from(path, "", e))?;
        match record.initial_lr {
            Some(initial) => t.optimizer.set_initial_lr(initial),
            None => {
                let initial = t.optimizer.lr();
                t.optimizer
                    .set_lr(cfg.schedule.lr_at(initial, record.progress.epoch));
            }
        }
        if let Some(sel) = record.selection {
            t.plateau = PlateauState {
                best: sel.plateau_best,
                bad_epochs: sel.plateau_bad,
                cooldown_left: sel.plateau_cooldown,
                maximize: t.cfg.monitor.maximize(),
            };
            t.stopped_early = sel.stopped_early;
            if let Some((epoch, value)) = sel.best {
                if !best_state.is_empty() {
                    // The kept state must fit the model.
                    let mut probe = Sequential::from_text(input, arch, 0)
                        .map_err(|e| Error::file_from(path, "", e))?;
                    probe
                        .load_state_dict(&best_state)
                        .map_err(|e| Error::file_from(path, "best state", e))?;
                }
                t.best = Some(Best {
                    epoch,
                    value,
                    state: best_state,
                });
            }
        }
        t.restore_progress(record.progress);
        t.restore_history(record.history);
        Ok((t, st.metadata))
    }
}
