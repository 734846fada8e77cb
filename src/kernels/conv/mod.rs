//! 2-D convolution (cross-correlation, as `torch.nn.functional.conv2d`): forward, backward-data
//! and backward-weights (+ bias).
//!
//! Per image `n` and group `g` (`W_g`: the group's `c_out/groups` weight rows, `K_g = c_in/groups *
//! k_h * k_w` columns):
//! - forward: `y_n[g] = W_g · col(x_n)[g] (+ b)`
//! - backward-data: `col(dx_n)[g] = W_gᵀ · dy_n[g]`, then col2im adds the columns into `dx_n`
//! - backward-weights: `dW_g += dy_n[g] · col(x_n)[g]ᵀ`, `db += Σ dy`
//!
//! Three paths compute these products, chosen per layer by `plan`:
//! - **direct** (`direct`): on machines with packed micro-kernels (`arch`: AVX2/FMA, AVX-512), for
//!   strides up to 4, the input is copied once into a zero-padded, stride-phase-split layout and
//!   the micro-kernels read it with one constant offset per tap — im2col without the matrix.
//!   Forward and weight gradients always; the input gradient at stride 1 with at least 4 input
//!   channels per group.
//! - **depthwise** (`depthwise`): one input channel per group, a direct kernel of its own.
//! - **im2col + GEMM** (`im2col`, the portable path and the fallback): the im2col matrix is built
//!   one *tile* of output rows at a time, so a worker's scratch is at most
//!   `max(COL_TILE_ELEMS, c_in * k_h * k_w * out_w)` elements whatever the image size; a 1x1 /
//!   stride-1 / unpadded convolution uses the input itself as its matrix and needs no scratch.
//!
//! Parallelism: with at least as many images as threads, each thread takes a contiguous run of
//! images (forward, backward-data). With fewer images, the work is split inside the image: over
//! output-channel panels (direct), or im2col over tap rows and the GEMM over output channels (or,
//! for backward-data, over tap rows, then col2im over input channels). Backward-weights always
//! splits over output channels (or tap panels), so every weight gradient is summed by one thread
//! in image order: results do not depend on the thread count.
//!
//! Files: `plan` (path, tiles, scratch, thread split, shared checks), `forward`,
//! `backward_data`, `backward_weights`, `backward` (both gradients in one pass), the three
//! paths' kernels, and `transpose` (transposed convolution as the adjoint of a convolution).

mod backward;
mod backward_data;
pub(crate) mod backward_weights;
mod depthwise;
mod direct;
pub(crate) mod forward;
pub(crate) mod im2col;
mod plan;
pub(crate) mod transpose;
mod winograd;

pub(crate) use backward::conv2d_backward_from;
pub use backward_data::conv2d_backward_data;
pub use backward_weights::conv2d_backward_weights;
pub use forward::{Epilogue, conv2d_forward, conv2d_forward_fused};
pub(crate) use forward::{
    Prepacked, conv2d_forward_pooled, conv2d_forward_prepacked, conv2d_prepack,
};
pub(crate) use plan::conv2d_pooled_scratch_len;
pub use plan::{
    COL_TILE_ELEMS, conv2d_backward_data_scratch_len, conv2d_backward_weights_scratch_len,
    conv2d_forward_scratch_len,
};
pub use transpose::{
    conv_transpose2d_backward_data, conv_transpose2d_backward_data_scratch_len,
    conv_transpose2d_backward_weights, conv_transpose2d_backward_weights_scratch_len,
    conv_transpose2d_forward, conv_transpose2d_forward_scratch_len,
};
pub use winograd::{WINOGRAD_ENV, Winograd, set_winograd, winograd};

/// Output rows of at least this many lanes take the forward epilogue (bias, shortcut and a cheap
/// activation) in the pass that writes them, row by row, in the direct and depthwise paths;
/// shorter rows take it as one stretch of lanes over several rows.
const ROW_LANES: usize = 4;
