//! Stateful layers: each owns its hyper-parameters, forward caches (max-pool indices, batch-norm
//! statistics, dropout masks) and running buffers, and calls kernels for all arithmetic.
//!
//! Parameters and their gradients live in the model's two flat buffers ([`crate::Sequential`]
//! hands each layer its slice), so an optimizer updates the whole model in one pass and a
//! checkpoint is a list of views into one buffer.

mod activation;
pub(crate) mod batch_norm;
pub(crate) mod conv2d;
mod conv_transpose;
mod dense;
mod layer_norm;
mod noise;
pub(crate) mod pool;
mod residual;
pub(crate) mod spec;
mod upsample;

pub use spec::LayerSpec;

use crate::error::{Error, Result};
use crate::kernels::accum::Accum;

pub use crate::shape::{Shape3, Tensor, TensorData};

/// How a parameter is initialised by default (PyTorch's `reset_parameters`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamKind {
    /// A weight: the model's [`crate::Init`] scheme with these fans (PyTorch's default is
    /// Kaiming-uniform with `a = √5`, i.e. `U(−1/√fan_in, 1/√fan_in)`).
    Weight {
        /// Inputs that feed one output.
        fan_in: usize,
        /// Outputs that one input feeds.
        fan_out: usize,
    },
    /// A bias: `U(−1/√fan_in, 1/√fan_in)`.
    Bias {
        /// Inputs that feed one output.
        fan_in: usize,
    },
    /// A constant (γ = 1, β = 0, PReLU slope 0.25).
    Const(f32),
}

/// One parameter tensor of a layer, in the order it occupies the layer's parameter slice.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Its name in the state dict (`weight`, `bias`, `conv1.weight`, ...), after the layer's
    /// index.
    pub name: &'static str,
    /// Its PyTorch shape.
    pub shape: Vec<usize>,
    /// How it is initialised.
    pub kind: ParamKind,
}

impl ParamInfo {
    /// Elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a layer call may use besides its own buffers.
#[derive(Debug)]
#[non_exhaustive]
pub struct Ctx<'a> {
    /// Training mode (batch statistics, dropout and RReLU noise) or evaluation.
    pub training: bool,
    /// Seed for this call's random masks (forward only; a different one every call).
    pub seed: u64,
    /// Scratch shared by all layers, at least [`Layer::scratch_len`] long; its contents are
    /// undefined on entry and are not kept between calls.
    pub ws: &'a mut [f32],
}

impl<'a> Ctx<'a> {
    /// A context (to call a layer directly, outside a model).
    pub fn new(training: bool, seed: u64, ws: &'a mut [f32]) -> Self {
        Ctx { training, seed, ws }
    }
}

/// The arguments of [`Layer::backward`], for the batch of the layer's last forward call (a layer
/// made of other layers builds one for each of them).
#[derive(Debug)]
pub struct Backward<'a> {
    /// Samples in the batch.
    pub n: usize,
    /// The layer's parameters (its slice of the model's buffer, in [`Layer::params`] order).
    pub params: &'a [f32],
    /// Where the parameter gradients go (same layout), per `accum`.
    pub grads: &'a mut [f32],
    /// The forward call's input, `n` samples.
    pub x: &'a [f32],
    /// The forward call's output.
    pub y: &'a [f32],
    /// The gradient of the loss with respect to `y`.
    pub dy: &'a [f32],
    /// Where the input gradient goes (overwritten), when it is asked for; `None` for the first
    /// layer of a network whose input gradient nobody needs.
    pub dx: Option<&'a mut [f32]>,
    /// Overwrite the parameter gradients ([`Accum::Replace`]) or add to them ([`Accum::Add`]).
    pub accum: Accum,
}

/// A layer of a [`crate::Sequential`] model: cnnkit's own layers implement it, and so can yours
/// (add it with [`crate::Sequential::from_layers`], test it with
/// [`crate::gradcheck::check_layer`]; `examples/custom_layer.rs` is a complete one).
///
/// A layer owns its hyper-parameters, caches and buffers but not its parameters: the model keeps
/// every layer's parameters and gradients in two flat buffers and hands each call the layer's
/// slices, laid out as [`Layer::params`] lists them. Activations are `[n, C, H, W]` (NCHW),
/// row-major. A layer must not allocate per call once its caches have grown for the largest
/// batch (use [`Ctx::ws`] for temporary space), so that a training step allocates nothing.
pub trait Layer: Send + std::fmt::Debug {
    /// Kind and hyper-parameters; your own layer returns [`LayerSpec::custom`] with its name.
    fn spec(&self) -> LayerSpec;
    /// Per-sample output shape `[C, H, W]` (`[F, 1, 1]` for a flat vector).
    fn out_shape(&self) -> Shape3;
    /// Parameter tensors, in slice order (none by default).
    fn params(&self) -> Vec<ParamInfo> {
        Vec::new()
    }
    /// Buffers: state saved in checkpoints but not trained (running statistics).
    fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        Vec::new()
    }
    /// Replaces a buffer (when a state dict is loaded).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for an unknown name or a tensor of the wrong shape.
    fn set_buffer(&mut self, name: &str, _t: &Tensor) -> Result<()> {
        Err(Error::invalid(
            "Layer::set_buffer",
            "name",
            format!("no buffer named {name}"),
        ))
    }
    /// Scratch ([`Ctx::ws`]) needed for a batch of `n` (none by default).
    fn scratch_len(&self, _n: usize) -> usize {
        0
    }
    /// `y = f(x)` for a batch of `n` samples (`y` is to be overwritten).
    ///
    /// # Errors
    /// Errors of the kernels for inputs they refuse; the model checks the lengths first.
    fn forward(
        &mut self,
        n: usize,
        params: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()>;
    /// Parameter gradients (into `b.grads`, per `b.accum`) and, if asked for, the input gradient
    /// (`b.dx`, overwritten), for the batch of the last forward call.
    ///
    /// # Errors
    /// As [`Layer::forward`].
    fn backward(&mut self, b: Backward<'_>, ctx: &mut Ctx<'_>) -> Result<()>;
}

/// Builds cnnkit's layer `spec` for per-sample input shape `input` (to mix with your own in
/// [`crate::Sequential::from_layers`]).
///
/// # Errors
/// [`Error::InvalidArg`] if the layer cannot take the input shape, or for
/// [`LayerSpec::Custom`].
pub fn build(spec: &LayerSpec, input: Shape3) -> Result<Box<dyn Layer>> {
    Ok(match build_typed(spec, input)? {
        Built::Conv(l) => Box::new(l),
        Built::Bn(l) => Box::new(l),
        Built::Pool(l) => Box::new(l),
        Built::Other(l) => l,
    })
}

/// A layer as the model holds it: cnnkit's convolution, batch norm and pooling by their own
/// types (the execution plan fuses them, see `model::plan`), any other layer behind the trait.
#[derive(Debug)]
pub(crate) enum Built {
    /// `conv`.
    Conv(conv2d::Conv2d),
    /// `bn`.
    Bn(batch_norm::BatchNorm2d),
    /// `maxpool`, `avgpool`.
    Pool(pool::Pool),
    /// Everything else, an embedder's own layers included.
    Other(Box<dyn Layer>),
}

impl Built {
    /// The layer behind the trait.
    pub(crate) fn layer(&self) -> &dyn Layer {
        match self {
            Built::Conv(l) => l,
            Built::Bn(l) => l,
            Built::Pool(l) => l,
            Built::Other(l) => l.as_ref(),
        }
    }
    /// The layer behind the trait, mutably.
    pub(crate) fn layer_mut(&mut self) -> &mut dyn Layer {
        match self {
            Built::Conv(l) => l,
            Built::Bn(l) => l,
            Built::Pool(l) => l,
            Built::Other(l) => l.as_mut(),
        }
    }
}

/// As [`build`], keeping the types the execution plan fuses.
pub(crate) fn build_typed(spec: &LayerSpec, input: Shape3) -> Result<Built> {
    Ok(match spec {
        LayerSpec::Conv2d { .. } => Built::Conv(conv2d::Conv2d::new(spec, input)?),
        LayerSpec::MaxPool2d { .. } | LayerSpec::AvgPool2d { .. } => {
            Built::Pool(pool::Pool::new(spec, input)?)
        }
        LayerSpec::BatchNorm2d { eps, momentum } => {
            Built::Bn(batch_norm::BatchNorm2d::new(*eps, *momentum, input)?)
        }
        _ => Built::Other(build_other(spec, input)?),
    })
}

fn build_other(spec: &LayerSpec, input: Shape3) -> Result<Box<dyn Layer>> {
    Ok(match spec {
        LayerSpec::Conv2d { .. } => Box::new(conv2d::Conv2d::new(spec, input)?),
        LayerSpec::ConvTranspose2d { .. } => {
            Box::new(conv_transpose::ConvTranspose2d::new(spec, input)?)
        }
        LayerSpec::Dense { out, bias } => Box::new(dense::Dense::new(*out, *bias, input)?),
        LayerSpec::MaxPool2d { .. } | LayerSpec::AvgPool2d { .. } => {
            Box::new(pool::Pool::new(spec, input)?)
        }
        LayerSpec::GlobalAvgPool => Box::new(pool::GlobalAvgPool::new(input)),
        LayerSpec::Upsample { scale, mode } => {
            Box::new(upsample::Upsample::new(spec, *scale, *mode, input)?)
        }
        LayerSpec::AdaptiveAvgPool2d { out } => {
            Box::new(pool::AdaptiveAvgPool::new(spec, *out, input)?)
        }
        LayerSpec::Flatten => Box::new(pool::Flatten::new(input)),
        LayerSpec::Softmax => Box::new(activation::Softmax::new(input)),
        LayerSpec::BatchNorm2d { eps, momentum } => {
            Box::new(batch_norm::BatchNorm2d::new(*eps, *momentum, input)?)
        }
        LayerSpec::LayerNorm { eps } => Box::new(layer_norm::LayerNorm::new(*eps, input)?),
        LayerSpec::Dropout { p } => {
            Box::new(noise::Dropped::new(noise::Drop::Elements, *p, input)?)
        }
        LayerSpec::StochasticDepth { p } => {
            Box::new(noise::Dropped::new(noise::Drop::Samples, *p, input)?)
        }
        LayerSpec::GaussianNoise { std } => Box::new(noise::GaussianNoise::new(*std, input)?),
        LayerSpec::Activation(a) => Box::new(activation::Act::new(*a, input)?),
        LayerSpec::PRelu { per_channel } => Box::new(activation::PRelu::new(*per_channel, input)),
        LayerSpec::RRelu { lower, upper } => {
            Box::new(activation::RRelu::new(*lower, *upper, input)?)
        }
        LayerSpec::Residual {
            out,
            stride,
            eps,
            momentum,
        } => Box::new(residual::Residual::new(
            *out, *stride, *eps, *momentum, input,
        )?),
        LayerSpec::Custom { name } => {
            return Err(shape_error(
                spec,
                input,
                format!(
                    "'{name}' is not a built-in layer; put your own layers in a model with Sequential::from_layers"
                ),
            ));
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
