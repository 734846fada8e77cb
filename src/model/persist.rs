//! A model's persistence: [`Sequential`] as safetensors (its state dict and the architecture
//! metadata), through the file format of [`crate::checkpoint`].

use super::Sequential;
use crate::checkpoint::{
    ARCH_KEY, CheckpointLimits, INPUT_KEY, NAMES_KEY, NAMES_TORCH, SafeTensors, load, parse,
    parse_shape, save, shape_string,
};
use crate::error::{Error, Result};
use crate::layer::spec::LayerSpec;
use crate::shape::{Shape3, Tensor, TensorData};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

impl Sequential {
    /// The model as safetensors: its `state_dict` plus the architecture metadata, merged with
    /// `extra` metadata.
    pub fn to_safetensors(&self, extra: &BTreeMap<String, String>) -> SafeTensors {
        let mut metadata = extra.clone();
        metadata.insert("format".into(), "pt".into());
        metadata.insert(ARCH_KEY.into(), self.architecture());
        metadata.insert(INPUT_KEY.into(), shape_string(self.input_shape()));
        metadata.insert(NAMES_KEY.into(), NAMES_TORCH.into());
        metadata.insert("cnnkit.version".into(), env!("CARGO_PKG_VERSION").into());
        SafeTensors {
            tensors: self.state_dict(),
            metadata,
        }
    }

    /// Saves the model to `path` atomically (see the module documentation), with `extra` metadata
    /// (class names, normalisation, ...).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        save(path, &self.to_safetensors(extra))
    }

    /// Loads a model saved by [`Sequential::save`]: rebuilds the architecture from the metadata
    /// and loads every tensor. Returns the model (in evaluation mode) and the metadata.
    ///
    /// # Errors
    /// [`Error::File`] for a corrupt file, missing architecture metadata, or tensors that do not
    /// fit the architecture.
    pub fn load(path: &Path) -> Result<(Sequential, BTreeMap<String, String>)> {
        Self::from_safetensors_meta(path, load(path, CheckpointLimits::default())?)
    }

    /// As [`Sequential::load`], from the bytes of a checkpoint (`name` is used in messages).
    ///
    /// # Errors
    /// As [`Sequential::load`].
    pub fn from_checkpoint_bytes(
        bytes: &[u8],
        name: &Path,
    ) -> Result<(Sequential, BTreeMap<String, String>)> {
        Self::from_safetensors_meta(name, parse(bytes, name, CheckpointLimits::default())?)
    }

    fn from_safetensors_meta(
        path: &Path,
        st: SafeTensors,
    ) -> Result<(Sequential, BTreeMap<String, String>)> {
        let arch = st.metadata.get(ARCH_KEY).ok_or_else(|| {
            Error::file(
                path,
                format!("no {ARCH_KEY} metadata: give the architecture (Sequential::load_with)"),
            )
        })?;
        let input = st
            .metadata
            .get(INPUT_KEY)
            .and_then(|s| parse_shape(s))
            .ok_or_else(|| {
                Error::file(path, format!("missing or malformed {INPUT_KEY} metadata"))
            })?;
        let m = Self::from_safetensors(path, &st, |limit| {
            Sequential::from_text_with_limit(input, arch, 0, limit)
        })?;
        Ok((m, st.metadata))
    }

    /// Loads a safetensors file with a known architecture (for files written elsewhere, such as
    /// `safetensors.torch.save_file(model.state_dict(), path)`).
    ///
    /// # Errors
    /// As [`Sequential::load`].
    pub fn load_with(path: &Path, input: Shape3, specs: &[LayerSpec]) -> Result<Sequential> {
        let st = load(path, CheckpointLimits::default())?;
        Self::from_safetensors(path, &st, |limit| {
            Sequential::build(input, specs, crate::init::Init::TorchDefault, 0, limit)
        })
    }

    /// Loads a safetensors file into the graph `graph` (built from text, the zoo or Rust), as
    /// [`Sequential::load_with`] does for a layer list.
    ///
    /// # Errors
    /// As [`Sequential::load`].
    pub fn load_with_graph(path: &Path, graph: super::graph::GraphBuilder) -> Result<Sequential> {
        let st = load(path, CheckpointLimits::default())?;
        Self::from_safetensors(path, &st, |limit| {
            if graph.param_count() > limit {
                return Err(Error::invalid(
                    "Sequential::load",
                    "architecture",
                    format!("needs more than {limit} parameters"),
                ));
            }
            graph.build(0)
        })
    }

    fn from_safetensors(
        path: &Path,
        st: &SafeTensors,
        build: impl FnOnce(usize) -> Result<Sequential>,
    ) -> Result<Sequential> {
        // Every parameter comes from a tensor of the file, so an architecture asking for much
        // more than the file holds is refused before its parameters are allocated (a hostile
        // architecture string cannot allocate gigabytes). Small mismatches get through to the
        // tensor-by-tensor check, whose message names the tensor.
        let held = st.tensors.iter().fold(0usize, |a, (_, t)| match &t.data {
            TensorData::F32(v) => a.saturating_add(v.len()),
            _ => a,
        });
        let limit = held.max(1 << 24);
        let mut m = build(limit).map_err(|e| Error::file_from(path, "", e))?;
        let tensors = st.tensors.iter().cloned();
        // A file cnnkit wrote before the names followed PyTorch's module indices.
        let map: HashMap<String, Tensor> = if st.metadata.contains_key(ARCH_KEY)
            && st.metadata.get(NAMES_KEY).map(String::as_str) != Some(NAMES_TORCH)
        {
            m.rename_from_layer_indices(tensors).into_iter().collect()
        } else {
            tensors.collect()
        };
        m.load_state_dict(&map)
            .map_err(|e| Error::file_from(path, "", e))?;
        m.eval();
        Ok(m)
    }
}
