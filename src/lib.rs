//! # cnnkit
//!
//! Convolutional neural networks on the CPU, with its own SIMD kernels and no tensor library
//! underneath. Layouts and semantics follow PyTorch: NCHW activations, OIHW convolution weights
//! (`[out, in/groups, kh, kw]`), dense weights `[out, in]`, and the formulas, defaults and edge
//! cases of the matching `torch.nn` / `torch.optim` pieces.
//!
//! ## Which API for what
//! | you want to | use |
//! |---|---|
//! | build a network from a layer list and run it | [`Sequential`], [`LayerSpec`] |
//! | train it (epochs, batches, schedule, validation, Ctrl-C-safe resumption) | [`Trainer`], [`TrainConfig`], [`evaluate`], [`predict`] |
//! | train with your own loop | [`Sequential::forward`] / [`Sequential::backward`] and an [`optim::Optimizer`] |
//! | load data | [`data`]: embedded digits, MNIST IDX; `image` (feature `image`): PNG/JPEG folders |
//! | enhance X-rays (CLAHE, equalisation, resize) as OpenCV does | [`preprocess`] |
//! | save, load, exchange weights with PyTorch (safetensors) | [`Sequential::save`], [`Sequential::load`], [`checkpoint`] |
//! | call one kernel on your own buffers (no allocation) | [`kernels`], [`gemm`] |
//! | the gradient with respect to the input; how unstable a model is at an input | [`Sequential::input_gradient`], [`stability`] |
//! | check your results against an obviously-correct version | [`reference`](mod@reference) |
//! | bound the memory a request from user input may take | [`memory`] |
//!
//! The crate is built in layers: [`kernels`] (stateless math over `f32` slices, each forward with
//! its backward, on SIMD lanes and the caller's rayon pool; buffers and scratch owned by the
//! caller) on [`gemm`] (the matrix-multiply gateway); layers and [`Sequential`] own parameters,
//! caches and scratch, reused from step to step, so a steady-state training step allocates
//! nothing.
//!
//! ## Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `rayon` | yes | batch-level parallelism on the caller's rayon pool; without it every kernel runs serially |
//! | `image` | no | decoding PNG and JPEG (`cnnkit::image`): image files and `ImageFolder`-style folders |
//! | `gzip` | no | reading gzip-compressed IDX (MNIST) files |
//!
//! ## Training
//! ```
//! use cnnkit::{data, Control, LayerSpec, Sequential, TrainConfig, Trainer};
//! let (train, test) = data::digits()?; // embedded 8x8 digits, no download
//! let specs = LayerSpec::parse_list("conv(8,3,p=1),relu,maxpool(2),flatten,dense(10)")?;
//! let model = Sequential::new(train.shape(), &specs, 0)?;
//! let cfg = TrainConfig { epochs: 2, ..Default::default() };
//! let mut t = Trainer::new(model, "adam".parse()?, cfg)?;
//! t.fit(&train, Some(&test), &mut |_| Control::Continue)?;
//! let acc = t.history()[1].val.as_ref().unwrap().accuracy;
//! assert!(acc > 0.5, "{acc}");
//! # Ok::<(), cnnkit::Error>(())
//! ```
//!
//! ## Checkpoints
//! ```
//! use cnnkit::{LayerSpec, Sequential};
//! use std::collections::BTreeMap;
//! let specs = LayerSpec::parse_list("flatten,dense(3)")?;
//! let mut m = Sequential::new([1, 2, 2], &specs, 7)?;
//! let path = std::env::temp_dir().join(format!("cnnkit-doc-{}.safetensors", std::process::id()));
//! m.save(&path, &BTreeMap::new())?; // atomic: the old file or the new one, never a mixture
//! let (mut back, _meta) = Sequential::load(&path)?;
//! let x = [0.1, 0.2, 0.3, 0.4];
//! assert_eq!(back.forward(&x, 1)?, m.forward(&x, 1)?);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), cnnkit::Error>(())
//! ```
//!
//! ## Preprocessing
//! ```
//! use cnnkit::preprocess::{Clahe, Filter, Gray, clahe, resize};
//! // A dim 16x16 ramp: CLAHE (OpenCV's createCLAHE(2.0, (8, 8))) spreads its contrast.
//! let img = Gray::new(16, 16, (0..256).map(|v| (v / 8) as u8).collect())?;
//! let out = clahe(&img, &Clahe { clip_limit: 2.0, tiles: [8, 8] })?;
//! let span = |g: &Gray<u8>| g.data().iter().max().unwrap() - g.data().iter().min().unwrap();
//! assert!(span(&out) > span(&img));
//! // Resize as cv2.resize(..., INTER_AREA) on a float image.
//! let f = Gray::new(16, 16, out.data().iter().map(|&v| v as f32).collect())?;
//! assert_eq!(resize(&f, 8, 8, Filter::Area)?.data().len(), 64);
//! # Ok::<(), cnnkit::Error>(())
//! ```
//!
//! ## Image folders (feature `image`)
//! ```
//! # #[cfg(feature = "image")] {
//! use cnnkit::image::{ImageOptions, load_image_folder};
//! // root/<class>/*.png, as torchvision's ImageFolder (searched recursively, classes sorted).
//! let root = std::env::temp_dir().join(format!("cnnkit-doc-folder-{}", std::process::id()));
//! for (class, v) in [("normal", 40u8), ("pneumonia", 200)] {
//!     std::fs::create_dir_all(root.join(class)).unwrap();
//!     image::GrayImage::from_pixel(12, 10, image::Luma([v]))
//!         .save(root.join(class).join("0.png"))
//!         .unwrap();
//! }
//! let opts = ImageOptions { size: Some([8, 8]), grayscale: true, ..Default::default() };
//! let ds = load_image_folder(&root, &opts).unwrap();
//! assert_eq!((ds.len(), ds.shape(), ds.classes()), (2, [1, 8, 8], &["normal".to_string(), "pneumonia".to_string()][..]));
//! # std::fs::remove_dir_all(&root).ok();
//! # }
//! ```
//!
//! ## One kernel on your own buffers
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
//! The GEMM and convolution micro-kernels are compiled for AVX-512 and for AVX2 + FMA, and the
//! element-wise kernels for those and for the build's baseline; [`arch`] chooses at run time, so
//! a default build uses the widest instruction set the CPU has. AVX-512 and AVX2 give the same
//! bits, and element-wise results are the same bits on every CPU. Kernels run on the current rayon pool; use
//! `rayon::ThreadPool::install` to choose the thread count. Results do not depend on it.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod distributed;
mod error;
#[allow(unsafe_code)]
pub mod gemm;
pub mod gradcheck;
#[cfg(feature = "image")]
pub mod image;
mod init;
pub mod kernels;
pub mod layer;
pub mod memory;
pub mod metrics;
mod model;
pub mod onnx;
pub mod optim;
pub mod par;
pub mod preprocess;
pub mod reference;
pub mod rng;
mod shape;
mod simd;
pub mod stability;
mod train;
pub mod zoo;

pub use error::{Error, MAX_ELEMENTS, Result};
pub use init::Init;
pub use layer::{Layer, LayerSpec};
pub use memory::{memory_budget, set_memory_budget};
pub use model::{ActivationMemory, GraphBuilder, Join, Model, NodeId, Sequential, StateTensors};
pub use shape::{
    Conv2dGeom, Conv2dParams, ConvTranspose2dGeom, Pool2dGeom, Pool2dParams, Shape3, Shape4,
    Tensor, TensorData,
};
pub use train::{
    AdversarialTraining, Control, EpochReport, Event, Loss, Monitor, Progress, Sampler,
    TrainConfig, Trainer, evaluate, evaluate_scores, predict, reconstruction_loss,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The examples of `ARCHITECTURE.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../ARCHITECTURE.md")]
pub struct ArchitectureDoctests;

/// The examples of `docs/library.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/library.md")]
pub struct LibraryDoctests;

/// The examples of `docs/stability.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/stability.md")]
pub struct StabilityDoctests;
