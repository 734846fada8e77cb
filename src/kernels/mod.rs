//! Stateless math over `f32` slices: the building blocks layers call.
//!
//! Every kernel has the form `op(geometry, inputs…, outputs…, [accum], [scratch]) -> Result<()>`.
//! Outputs are overwritten and never read, except gradient outputs, which take an [`Accum`] so a
//! caller can sum gradients over several batches or branches. Kernels validate buffer lengths and
//! return [`Error::Length`](crate::Error::Length) on a mismatch; they allocate nothing, do no I/O,
//! and run on the caller's rayon pool.
//!
//! Layouts follow PyTorch: activations NCHW, convolution weights OIHW, dense weights `[out, in]`.

pub mod accum;
pub mod activation;
pub mod adaptive_pool;
pub mod batch_norm;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod join;
pub mod layer_norm;
pub mod loss;
pub(crate) mod plane_ops;
pub(crate) mod planes;
pub mod pool;
pub mod softmax;
pub mod upsample;

pub use accum::Accum;
pub use activation::*;
pub use adaptive_pool::*;
pub use batch_norm::*;
pub use conv::*;
pub use dense::*;
pub use dropout::*;
pub use join::*;
pub use layer_norm::*;
pub use loss::*;
pub use pool::*;
pub use softmax::*;
pub use upsample::*;

/// The normalisation and dropout kernels under their earlier path, `kernels::norm`.
pub mod norm {
    pub use super::batch_norm::*;
    pub use super::dropout::*;
    pub use super::layer_norm::*;
}
