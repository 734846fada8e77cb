//! # cnnkit
//!
//! Convolutional neural networks on the CPU, with its own SIMD kernels and no tensor library
//! underneath. Layouts and semantics follow PyTorch: NCHW activations, OIHW convolution weights
//! (`[out, in/groups, kh, kw]`), dense weights `[out, in]`, and the formulas, defaults and edge
//! cases of the matching `torch.nn` pieces.
//!
//! The crate is built in layers:
//! - [`kernels`]: stateless math over `f32` slices (convolution, pooling, activations, softmax,
//!   normalisation, dense, losses), each forward with its backward, on SIMD lanes and the
//!   caller's rayon pool. Buffers and scratch are owned by the caller, so nothing allocates on the
//!   hot path.
//! - [`gemm`]: the matrix-multiply gateway the convolution and dense kernels use.
//! - [`reference`]: naive versions of every kernel, the oracle the tests compare against.
//!
//! ## Quick start
//! ```
//! use cnnkit::kernels::{conv2d_forward, conv2d_forward_scratch_len};
//! use cnnkit::{Conv2dGeom, Conv2dParams, Shape4};
//!
//! // One 4x4 image, one channel; two 3x3 filters with padding 1.
//! let g = Conv2dGeom::new(Shape4::new(1, 1, 4, 4), 2, [3, 3], Conv2dParams::default().padding(1))?;
//! let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
//! let w = vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0,   // identity filter
//!              0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0];  // doubling filter
//! let mut y = vec![0.0; g.y_len()];
//! let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
//! conv2d_forward(&g, &x, &w, None, &mut y, &mut ws)?;
//! assert_eq!(&y[..16], &x[..]);
//! assert_eq!(y[16 + 5], 2.0 * x[5]);
//! # Ok::<(), cnnkit::Error>(())
//! ```
//!
//! ## SIMD and threads
//! The GEMM and convolution micro-kernels are AVX2/FMA code, and the element-wise kernels are
//! compiled twice (AVX2 + FMA, and the build's baseline); both are chosen at run time, so a
//! default build uses AVX2 where the CPU has it, and element-wise results are the same bits on
//! every CPU. Kernels run on the current rayon pool; use
//! `rayon::ThreadPool::install` to choose the thread count. Results do not depend on it.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod checkpoint;
pub mod data;
mod error;
#[allow(unsafe_code)]
pub mod gemm;
#[cfg(feature = "image")]
pub mod image;
mod init;
pub mod kernels;
pub mod layer;
pub mod memory;
pub mod metrics;
mod model;
pub mod optim;
pub mod par;
pub mod preprocess;
pub mod reference;
pub mod rng;
mod shape;
mod simd;
mod train;

pub use error::{Error, MAX_ELEMENTS, Result};
pub use init::Init;
pub use layer::{LayerSpec, Shape3, Tensor, TensorData};
pub use memory::{memory_budget, set_memory_budget};
pub use model::Sequential;
pub use shape::{Conv2dGeom, Conv2dParams, Pool2dGeom, Pool2dParams, Shape4};
pub use train::{Control, EpochReport, Event, Progress, TrainConfig, Trainer, evaluate, predict};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
