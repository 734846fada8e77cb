//! ONNX in and out: a model trained anywhere (`torch.onnx.export`) read into a cnnkit [`Model`]
//! for inference, fine-tuning and the stability audit; any cnnkit model written for onnxruntime
//! or any other ONNX runtime.
//!
//! The reader is cnnkit's own (about 500 lines over the protobuf wire format, in `proto.rs`), not
//! a protobuf crate with the ONNX schema compiled in: a CNN needs seven of ONNX's messages and
//! a few fields of each, a file is untrusted input whose every length and count is checked
//! against [`Limits`] before anything is allocated, and the library's dependencies stay as they
//! were. The module is always built; it adds no dependency.
//!
//! # What is read
//! Opset 13 and later, one float input (`N×C×H×W`, or `N×F`) and one output. Weights are
//! initializers (in the file, or in external-data files inside the model's folder).
//!
//! | ONNX | cnnkit |
//! |---|---|
//! | `Conv`, `ConvTranspose` (2-D, symmetric `pads`, `auto_pad` `NOTSET`/`VALID`) | `conv`, `convt` |
//! | `BatchNormalization` (its statistics become the running buffers; `momentum` m → PyTorch's 1 − m) | `bn` |
//! | `LayerNormalization` over axis 1 (`N×C×H×W`) | `ln` |
//! | `Relu`, `LeakyRelu`, `Elu`, `Sigmoid`, `Tanh`, `Softplus`, `HardSwish`, `HardSigmoid` (α = 1/6, β = ½), `Gelu` | the activations |
//! | `Clip` to \[0, 6\] / \[0, ∞) | `relu6` / `relu` |
//! | `Sigmoid` then `Mul(x, ·)` | `silu` |
//! | `Div(x, √2)`, `Erf`, `Add(1)`, `Mul(x)`, `Mul(½)` (GELU before opset 20) | `gelu` |
//! | `PRelu` (one slope or one per channel) | `prelu` |
//! | `Softmax` over axis 1 | `softmax` |
//! | `MaxPool`, `AveragePool` (`ceil_mode` 0) | `maxpool`, `avgpool` |
//! | `GlobalAveragePool`, `ReduceMean` over axes 2 and 3 | `adaptive_avgpool(1)` |
//! | `Gemm` (a linear layer), `MatMul` with a constant weight (and an `Add` of a bias) | `dense` |
//! | `Flatten` (axis 1), `Reshape` to `N×features` | `flatten` (nothing when already flat) |
//! | `Add`, `Sum`, `Mul` of two tensors, `Concat` on axis 1 | the joins `add`, `mul`, `cat` |
//! | `Resize` by whole factors: nearest (asymmetric, floor), linear (half-pixel or align-corners) | `upsample` |
//! | `Dropout` | `dropout` (the identity in evaluation) |
//! | `Identity`, and on constants `Constant`, `Shape`, `Gather`, `Unsqueeze`, `Squeeze`, `Cast`, `Slice`, `Concat`, arithmetic | folded away |
//!
//! Anything else — an operator, an attribute value, an element type (float16 weights, say) — is an
//! error naming the node, the operator and what is supported; no model is made half right.
//! Nodes that the output does not depend on are skipped.
//!
//! Node names come from the weights' names where they are PyTorch's (`layer1.0.conv1.weight` →
//! node `layer1.0.conv1`, so the state dict keeps torchvision's names), else from the ONNX node's
//! name (`/layer1/layer1.0/relu/Relu` → `layer1.layer1.0.relu.Relu`).
//!
//! # What is written
//! Opset 17 (20 when a model has the tanh-approximated GELU), evaluation mode: batch norm with
//! its running statistics, dropout and noise as identities, a residual block (`res`) as its
//! convolutions, batch norms, sum and ReLUs. The state-dict names are the initializer names, so a
//! round trip cnnkit → ONNX → cnnkit keeps every weight bit for bit. Not expressible, and refused
//! by name: layers of the embedding program, softplus with β ≠ 1, adaptive pooling with uneven
//! windows.
//!
//! # Example
//! ```
//! use cnnkit::onnx::{self, ExportOptions, ImportOptions};
//! use cnnkit::{LayerSpec, Sequential};
//! let specs = LayerSpec::parse_list("conv(4,3,p=1),bn,relu,maxpool(2),flatten,dense(3)")?;
//! let mut model = Sequential::new([1, 8, 8], &specs, 7)?;
//! model.eval();
//! let bytes = onnx::to_bytes(&model, &ExportOptions::default())?;
//! let mut back = onnx::from_bytes(&bytes, &ImportOptions::default())?.model;
//! assert_eq!(back.params(), model.params());
//! let x = vec![0.25; 64];
//! assert_eq!(back.forward(&x, 1)?, model.forward(&x, 1)?);
//! # Ok::<(), cnnkit::Error>(())
//! ```

mod export;
mod import;
mod proto;

pub use proto::Limits;

use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::shape::Shape3;
use std::collections::BTreeMap;
use std::path::Path;

/// How [`read`] and [`from_bytes`] read a model.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The per-sample input shape `[C, H, W]`, for models whose input has symbolic channels,
    /// height or width (fixed dimensions must agree with it). `None`: the model's own.
    pub input: Option<Shape3>,
    /// Bounds on the file (an untrusted one may ask for anything).
    pub limits: Limits,
}

/// A model read from ONNX.
#[derive(Debug)]
pub struct Imported {
    /// The model with the file's weights, in evaluation mode ([`Model::train`] to fine-tune it).
    pub model: Model,
    /// The file's `metadata_props`.
    pub metadata: BTreeMap<String, String>,
    /// The name of the graph's input.
    pub input_name: String,
    /// The name of the graph's output.
    pub output_name: String,
}

/// How [`to_bytes`] and [`save`] write a model.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Written as the file's `metadata_props` (cnnkit's command records the input normalisation
    /// and the class names here).
    pub metadata: BTreeMap<String, String>,
    /// The graph input's name (default `input`).
    pub input_name: String,
    /// The graph output's name (default `output`).
    pub output_name: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            metadata: BTreeMap::new(),
            input_name: "input".into(),
            output_name: "output".into(),
        }
    }
}

/// Reads the ONNX model at `path`; external data is read from files inside its folder only.
///
/// # Errors
/// [`Error::Io`] if a file cannot be read; [`Error::File`] naming the file and what is wrong: a
/// malformed or truncated file, a value over [`Limits`], an unsupported operator, attribute or
/// element type (with the node's name), external data outside the model's folder.
pub fn read(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Imported> {
    let path = path.as_ref();
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > options.limits.max_file_bytes {
        return Err(Error::file(
            path,
            format!(
                "{size} bytes is over the limit of {} bytes",
                options.limits.max_file_bytes
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let dir = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    });
    finish(import::import(&bytes, dir, options.input, &options.limits)).map_err(|e| match e {
        Error::InvalidArg { reason, .. } => Error::file(path, reason),
        e => e,
    })
}

/// Reads an ONNX model from `bytes` (external data is refused: there is no folder).
///
/// # Errors
/// [`Error::InvalidArg`] saying what is wrong, as [`read`].
pub fn from_bytes(bytes: &[u8], options: &ImportOptions) -> Result<Imported> {
    if bytes.len() as u64 > options.limits.max_file_bytes {
        return Err(Error::invalid(
            "onnx",
            "file",
            format!(
                "{} bytes is over the limit of {}",
                bytes.len(),
                options.limits.max_file_bytes
            ),
        ));
    }
    finish(import::import(bytes, None, options.input, &options.limits))
}

fn finish(imported: Result<import::Imported>) -> Result<Imported> {
    let im = imported?;
    let mut model = im.builder.build(0)?;
    model.load_state_dict(&im.tensors)?;
    model.eval();
    Ok(Imported {
        model,
        metadata: im.metadata,
        input_name: im.input_name,
        output_name: im.output_name,
    })
}

/// The ONNX file of `model` (its evaluation-mode computation), as bytes.
///
/// # Errors
/// [`Error::InvalidArg`] naming the node whose layer has no ONNX form (see the module's
/// documentation).
pub fn to_bytes(model: &Model, options: &ExportOptions) -> Result<Vec<u8>> {
    export::export(
        model,
        &options.metadata,
        &options.input_name,
        &options.output_name,
    )
}

/// Writes the ONNX file of `model` to `path`, atomically (a fault leaves the old file or none).
///
/// # Errors
/// As [`to_bytes`]; [`Error::Io`] if the file cannot be written.
pub fn save(model: &Model, path: impl AsRef<Path>, options: &ExportOptions) -> Result<()> {
    write_atomic(path.as_ref(), &to_bytes(model, options)?)
}

impl Model {
    /// Reads the ONNX model at `path` with default options ([`read`]).
    ///
    /// # Errors
    /// As [`read`].
    pub fn from_onnx(path: impl AsRef<Path>) -> Result<Model> {
        read(path, &ImportOptions::default()).map(|m| m.model)
    }

    /// Writes the model as ONNX to `path` with default options ([`save`]).
    ///
    /// # Errors
    /// As [`save`].
    pub fn save_onnx(&self, path: impl AsRef<Path>) -> Result<()> {
        save(self, path, &ExportOptions::default())
    }
}
