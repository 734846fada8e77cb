//! Stateful layers: each owns its hyper-parameters, forward caches (max-pool indices, batch-norm
//! statistics, dropout masks) and running buffers, and calls kernels for all arithmetic.
//!
//! Parameters and their gradients live in the model's two flat buffers ([`crate::Sequential`]
//! hands each layer its slice), so an optimizer updates the whole model in one pass and a
//! checkpoint is a list of views into one buffer.

mod activation;
mod conv2d;
mod dense;
mod norm;
mod pool;
mod spec;

pub use spec::LayerSpec;

use crate::error::{Error, Result};
use crate::kernels::Accum;

/// A per-sample shape `[channels, height, width]`; a flat vector of `F` features is `[F, 1, 1]`.
pub type Shape3 = [usize; 3];

/// Elements of a per-sample shape.
pub(crate) fn numel(s: Shape3) -> usize {
    s[0] * s[1] * s[2]
}

/// A named tensor of model state: a parameter or a buffer, with its PyTorch shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: TensorData,
}

/// The element type and values of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// 32-bit floats (parameters, running statistics).
    F32(Vec<f32>),
    /// 64-bit integers (batch norm's `num_batches_tracked`).
    I64(Vec<i64>),
}

/// How a parameter is initialised by default (PyTorch's `reset_parameters`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ParamKind {
    /// A weight: the chosen [`crate::Init`] scheme with these fans.
    Weight { fan_in: usize, fan_out: usize },
    /// A bias: `U(−1/√fan_in, 1/√fan_in)`.
    Bias { fan_in: usize },
    /// A constant (γ = 1, β = 0, PReLU slope 0.25).
    Const(f32),
}

/// One parameter tensor of a layer, in the order it occupies the layer's parameter slice.
#[derive(Clone, Debug)]
pub(crate) struct ParamInfo {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What a layer call may use besides its buffers.
pub(crate) struct Ctx<'a> {
    /// Training mode (batch statistics, dropout and RReLU noise) or evaluation.
    pub training: bool,
    /// Seed for this call's random masks.
    pub seed: u64,
    /// Shared scratch of at least the layer's `scratch_len`.
    pub ws: &'a mut [f32],
}

/// A layer of a [`crate::Sequential`] model.
pub(crate) trait Layer: Send + std::fmt::Debug {
    /// Kind and hyper-parameters.
    fn spec(&self) -> LayerSpec;
    /// Per-sample output shape.
    fn out_shape(&self) -> Shape3;
    /// Parameter tensors, in slice order.
    fn params(&self) -> Vec<ParamInfo> {
        Vec::new()
    }
    /// Buffers (non-trainable state saved in checkpoints).
    fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        Vec::new()
    }
    /// Replaces a buffer.
    fn set_buffer(&mut self, name: &str, _t: &Tensor) -> Result<()> {
        Err(Error::invalid(
            "Layer::set_buffer",
            "name",
            format!("no buffer named {name}"),
        ))
    }
    /// Scratch needed for a batch of `n`.
    fn scratch_len(&self, _n: usize) -> usize {
        0
    }
    /// Takes over (`on`) or gives back the work of a ReLU layer directly before this one: its
    /// forward then sees the ReLU's input and its backward returns the ReLU's input gradient.
    /// Returns whether the layer can (see [`crate::Sequential::set_fusion`]).
    fn absorb_relu(&mut self, _on: bool) -> bool {
        false
    }
    /// `y = f(x)` for a batch of `n`.
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()>;
    /// Parameter gradients (into `g`, per `accum`) and, if asked for, the input gradient
    /// (overwritten), for the batch of the last forward call.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        n: usize,
        p: &[f32],
        g: &mut [f32],
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        accum: Accum,
        ctx: &mut Ctx<'_>,
    ) -> Result<()>;
}

/// Builds the layer `spec` for per-sample input shape `input`.
pub(crate) fn build(spec: &LayerSpec, input: Shape3) -> Result<Box<dyn Layer>> {
    Ok(match spec {
        LayerSpec::Conv2d { .. } => Box::new(conv2d::Conv2d::new(spec, input)?),
        LayerSpec::Dense { out, bias } => Box::new(dense::Dense::new(*out, *bias, input)?),
        LayerSpec::MaxPool2d { .. } | LayerSpec::AvgPool2d { .. } => {
            Box::new(pool::Pool::new(spec, input)?)
        }
        LayerSpec::GlobalAvgPool => Box::new(pool::GlobalAvgPool::new(input)),
        LayerSpec::Flatten => Box::new(pool::Flatten::new(input)),
        LayerSpec::BatchNorm2d { eps, momentum } => {
            Box::new(norm::BatchNorm2d::new(*eps, *momentum, input)?)
        }
        LayerSpec::LayerNorm { eps } => Box::new(norm::LayerNorm::new(*eps, input)?),
        LayerSpec::Dropout { p } => Box::new(norm::Dropout::new(*p, input)?),
        LayerSpec::GaussianNoise { std } => Box::new(norm::GaussianNoise::new(*std, input)?),
        LayerSpec::Activation(a) => Box::new(activation::Act::new(*a, input)?),
        LayerSpec::PRelu { per_channel } => Box::new(activation::PRelu::new(*per_channel, input)),
        LayerSpec::RRelu { lower, upper } => {
            Box::new(activation::RRelu::new(*lower, *upper, input)?)
        }
    })
}

/// `v[..len]`, growing `v` first if it is shorter (allocates only when the batch grows; checked
/// against the memory budget, see [`crate::memory`]).
pub(crate) fn grow<'a, T: Clone + Default>(
    op: &'static str,
    v: &'a mut Vec<T>,
    len: usize,
) -> Result<&'a mut [T]> {
    crate::memory::grow(op, "a layer cache", v, len)
}

/// The error for a layer that cannot take its input shape.
pub(crate) fn shape_error(layer: &LayerSpec, input: Shape3, why: impl std::fmt::Display) -> Error {
    Error::invalid(
        "Sequential::new",
        "architecture",
        format!(
            "{layer} cannot take an input of shape {}x{}x{}: {why}",
            input[0], input[1], input[2]
        ),
    )
}
