//! Stateless math over `f32` slices: the building blocks layers call.
//!
//! Every kernel has the form `op(geometry, inputs…, outputs…, [accum], [scratch]) -> Result<()>`.
//! Outputs are overwritten and never read, except gradient outputs, which take an [`Accum`] so a
//! caller can sum gradients over several batches or branches. Kernels validate buffer lengths and
//! return [`Error::Length`](crate::Error::Length) on a mismatch; they allocate nothing, do no I/O,
//! and run on the caller's rayon pool.
//!
//! Layouts follow PyTorch: activations NCHW, convolution weights OIHW, dense weights `[out, in]`.

pub mod activation;
pub mod conv;
pub mod dense;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod softmax;

pub use activation::*;
pub use conv::*;
pub use dense::*;
pub use loss::*;
pub use norm::*;
pub use pool::*;
pub use softmax::*;

/// Whether a gradient output is overwritten or added to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accum {
    /// `grad = g` (the output is not read).
    #[default]
    Replace,
    /// `grad += g`.
    Add,
}

impl Accum {
    /// The GEMM `beta` that implements this mode.
    #[inline]
    pub(crate) fn beta(self) -> f32 {
        match self {
            Accum::Replace => 0.0,
            Accum::Add => 1.0,
        }
    }

    /// `g` or `old + g`.
    #[inline]
    pub(crate) fn apply(self, old: f32, g: f32) -> f32 {
        match self {
            Accum::Replace => g,
            Accum::Add => old + g,
        }
    }

    /// Lane version of [`Accum::apply`].
    #[inline(always)]
    pub(crate) fn lanes(self, old: crate::simd::Lane, g: crate::simd::Lane) -> crate::simd::Lane {
        match self {
            Accum::Replace => g,
            Accum::Add => old + g,
        }
    }
}

/// `out (+)= f(a[i], b[i])` lane by lane, per `accum`: `out` is read only when adding to it (a
/// backward pass that overwrites its gradient is bound by memory traffic).
#[inline(always)]
pub(crate) fn zip_map_into(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    accum: Accum,
    f: impl Fn(crate::simd::Lane, crate::simd::Lane) -> crate::simd::Lane,
) {
    match accum {
        Accum::Replace => crate::simd::zip_map(a, b, out, f),
        Accum::Add => crate::simd::zip_map_acc(
            a,
            b,
            out,
            #[inline(always)]
            |a, b, old| old + f(a, b),
        ),
    }
}
