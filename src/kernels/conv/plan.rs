//! What a convolution call needs before it computes: the path (direct kernel or im2col + GEMM),
//! the tiles of output rows and the scratch they take, the split of images (or of one image's
//! work) over threads, and the operand checks and im2col sources the passes share.

use super::im2col::im2col;
use super::winograd::Pass;
use super::{depthwise, direct};
use crate::error::{Result, check_len};
use crate::gemm::{MatRef, packed};
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use std::ops::Range;

/// Elements of one im2col tile (1 MiB of `f32`), unless a single output row needs more.
pub const COL_TILE_ELEMS: usize = 1 << 18;

/// Rows of the im2col matrix over all groups: `c_in * k_h * k_w`.
pub(super) fn taps(g: &Conv2dGeom) -> usize {
    g.c_in() * g.k_h() * g.k_w()
}

/// Output rows per im2col tile.
pub(super) fn tile_rows(g: &Conv2dGeom) -> usize {
    if !needs_col(g) {
        return g.out_h();
    }
    (COL_TILE_ELEMS / (taps(g) * g.out_w())).clamp(1, g.out_h())
}

/// The tiles of output rows.
pub(super) fn tiles(g: &Conv2dGeom) -> impl Iterator<Item = Range<usize>> + use<> {
    let (step, out_h) = (tile_rows(g), g.out_h());
    (0..out_h)
        .step_by(step)
        .map(move |s| s..(s + step).min(out_h))
}

pub(super) fn needs_col(g: &Conv2dGeom) -> bool {
    !g.is_pointwise() && !g.is_depthwise()
}

/// Scratch elements of one worker on the im2col path: one im2col tile.
pub(super) fn slot_len(g: &Conv2dGeom) -> usize {
    if needs_col(g) {
        taps(g) * tile_rows(g) * g.out_w()
    } else {
        0
    }
}

/// Whether the direct path can run `g` on cnnkit's micro-kernels (depthwise convolutions have
/// their own kernel).
fn direct_ok(g: &Conv2dGeom) -> bool {
    // The direct path splits the input into stride_h·stride_w phase planes: for large strides
    // (rare, and mostly empty planes) im2col keeps the scratch small.
    packed::enabled()
        && !g.is_depthwise()
        && g.params().stride.iter().all(|&s| s <= MAX_DIRECT_STRIDE)
        && direct::Direct::forward(g).offsets_fit()
}

/// Least output channels per group for which the input and weight gradients multiply in bf16
/// (where the direct path could run them in f32 instead).
const BF16_MIN_OUT: usize = 128;

/// Whether `pass` of `g` multiplies in bf16 ([`mod@crate::gemm::precision`]): on the im2col + GEMM
/// path, whose packed GEMM rounds its operands, while the direct tiles multiply f32. Measured
/// per pass on ResNet-style layers (batch 8, 64–512 channels, 7×7 to 224×224, one and two
/// threads; `docs/perf-log.md`): the forward pass is 1.1–2x faster in bf16 everywhere, and so
/// are both gradients from 128 output channels and of 1x1 layers; with fewer output channels the
/// direct f32 gradients were up to 3x faster on two threads (each thread packs the whole
/// im2col operand for few output channels), so they stay f32, where the direct path runs.
pub(super) fn in_bf16(g: &Conv2dGeom, pass: Pass) -> bool {
    if !crate::gemm::precision::bf16() || !packed::enabled() || g.is_depthwise() {
        return false;
    }
    let wide = g.c_out_g() >= BF16_MIN_OUT || g.is_pointwise();
    match pass {
        Pass::Forward => true,
        Pass::Weights => wide || !direct_ok(g),
        Pass::Data => wide || direct_data(g).is_none(),
    }
}

/// Whether the forward pass takes the direct path (not under bf16: see [`in_bf16`]).
pub(super) fn use_direct(g: &Conv2dGeom) -> bool {
    direct_ok(g) && !in_bf16(g, Pass::Forward)
}

/// Whether the weight gradient takes the direct path (see [`in_bf16`] and [`use_dot_wgrad`]).
pub(super) fn use_direct_wgrad(g: &Conv2dGeom) -> bool {
    direct_ok(g) && !in_bf16(g, Pass::Weights) && !use_dot_wgrad(g)
}

/// Most taps per group (input channels per group × kernel height × width) for which the weight
/// gradient is taken as dot products of rows ([`use_dot_wgrad`]). Measured against the path
/// those layers took before (direct, or Winograd where its table chose it) on ten layers (batch 8–64, 28x28 to 224x224, 1–16 input channels, 3x3 to 7x7; AMD EPYC,
/// Zen 4, one and two threads; `docs/perf-log.md`): with 9–36 taps the dot products took
/// 0.48–0.99 of that time, with 49 and more 1.0–1.6 (on two threads).
pub(super) const DOT_MAX_TAPS: usize = 36;

/// Output pixels per band of the dot-product weight gradient (its im2col rows are made a band at
/// a time: at most `DOT_MAX_TAPS` rows of 8 KiB, in L2 beside the output gradient's rows).
const DOT_BAND_PIXELS: usize = 2048;

/// Whether the weight gradient is taken as dot products of rows of the output gradient and of
/// the im2col matrix (`backward_weights::dot_weights`): for groups of at most [`DOT_MAX_TAPS`]
/// taps (first layers on grey or colour images, small kernels on few channels), where the
/// direct path would pad the taps to its register tile and transpose the whole output gradient
/// for few multiply-adds per value, and an f32 micro-kernel runs; not where Winograd is chosen
/// (by its table, or forced with `set_winograd`).
pub(super) fn use_dot_wgrad(g: &Conv2dGeom) -> bool {
    packed::enabled()
        && crate::arch::tile().is_some()
        && !g.is_depthwise()
        && g.k_g() <= DOT_MAX_TAPS
        && !in_bf16(g, Pass::Weights)
        && super::winograd::wgrad_choice(g).is_none()
}

/// Output rows per band of the dot-product weight gradient.
pub(super) fn dot_band(g: &Conv2dGeom) -> usize {
    (DOT_BAND_PIXELS / g.out_w().max(1)).clamp(1, g.out_h().max(1))
}

/// Scratch of one of `groups` workers of the dot-product weight gradient: its output channels'
/// sums (taps and bias), a band's im2col rows and row of ones (for the bias), and with `made`
/// its output channels' planes of one image.
pub(super) fn dot_slot(g: &Conv2dGeom, groups: usize, made: bool) -> usize {
    let rows = g.c_out().div_ceil(groups.max(1));
    let img = if made { rows * g.out_plane() } else { 0 };
    let lanes = crate::arch::kernel::bodies::tiles::DOT_LANES + 1;
    (g.k_g() + 1) * (rows * lanes + dot_band(g) * g.out_w()) + img
}

/// Largest stride (per axis) taken by the direct path.
pub(super) const MAX_DIRECT_STRIDE: usize = 4;

/// Scratch of one worker for the forward pass on this machine.
pub(super) fn forward_slot(g: &Conv2dGeom) -> usize {
    let wino = super::winograd::winograd_choice(g).map_or(0, |t| super::winograd::slot_len(g, t));
    wino.max(path_slot(g))
}

/// [`forward_slot`] of the direct, depthwise or im2col path.
fn path_slot(g: &Conv2dGeom) -> usize {
    if g.is_depthwise() {
        depthwise::slot_len(g)
    } else if use_direct(g) {
        direct::Direct::forward(g).slot_len()
    } else {
        slot_len(g)
    }
}

/// The direct backward-data pass, where it applies: stride 1, and enough input channels per
/// group to fill the 6-channel panels (with fewer, most of the work would be padding; the im2col
/// path is faster).
pub(super) fn direct_backward_data(g: &Conv2dGeom) -> Option<direct::Direct> {
    direct_data(g).filter(|_| !in_bf16(g, Pass::Data))
}

/// [`direct_backward_data`] in f32.
fn direct_data(g: &Conv2dGeom) -> Option<direct::Direct> {
    direct::Direct::backward_data(g).filter(|d| direct_ok(g) && g.c_in_g() >= 4 && d.offsets_fit())
}

/// Scratch of one worker for the backward-data pass on this machine.
pub(super) fn backward_data_slot(g: &Conv2dGeom) -> usize {
    let wino =
        super::winograd::data_choice(g).map_or(0, |(gd, t)| super::winograd::slot_len(&gd, t));
    wino.max(match direct_backward_data(g) {
        _ if g.is_depthwise() => depthwise::slot_len(g),
        Some(d) => d.slot_len(),
        None => slot_len(g),
    })
}

/// Scratch for [`conv2d_forward`](super::conv2d_forward) that lets every thread of the current rayon pool work: per
/// thread one band of the prepared input and output (direct path, AVX2 or AVX-512 machines) or one
/// im2col tile (elsewhere), or one zero-padded plane for depthwise convolutions; 0 for
/// 1x1/stride-1/unpadded convolutions on the im2col path.
pub fn conv2d_forward_scratch_len(g: &Conv2dGeom) -> usize {
    forward_slot(g) * par::threads()
}

/// Scratch for [`conv2d_backward_data`](super::conv2d_backward_data): as [`conv2d_forward_scratch_len`].
pub fn conv2d_backward_data_scratch_len(g: &Conv2dGeom) -> usize {
    backward_data_slot(g) * par::threads()
}

/// Scratch for [`conv2d_backward_weights`](super::conv2d_backward_weights): shared by all threads (one im2col tile, or on the
/// direct path, per fixed chunk of images, a band of the prepared input and of the transposed
/// output gradient and a partial transposed weight gradient of one group).
pub fn conv2d_backward_weights_scratch_len(g: &Conv2dGeom) -> usize {
    if g.is_depthwise() {
        depthwise::slot_len(g) * par::threads()
    } else {
        backward_weights_len(g, false)
    }
}

/// Scratch of a non-depthwise weight-gradient pass, with room to make (`made`) an image of the
/// output gradient and a plane per thread for the bias gradient.
pub(super) fn backward_weights_len(g: &Conv2dGeom, made: bool) -> usize {
    let img = if made { g.c_out() * g.out_plane() } else { 0 };
    let wino =
        super::winograd::wgrad_choice(g).map_or(0, |t| super::winograd::wgrad_len(g, t) + img);
    let passes = wino.max(if use_dot_wgrad(g) {
        (1..=par::threads())
            .map(|k| k * dot_slot(g, k, made))
            .max()
            .unwrap_or(0)
    } else if use_direct_wgrad(g) {
        direct::Direct::for_wgrad(g).wgrad_scratch(g.n(), made)
    } else {
        slot_len(g) + img
    });
    passes.max(if made {
        g.out_plane() * par::threads()
    } else {
        0
    })
}

/// Scratch for the passes of a non-depthwise convolution whose output goes through a max-pool
/// ([`conv2d_forward_pooled`](super::conv2d_forward_pooled)) or whose output gradient is read through [`Planes`](crate::kernels::planes::Planes) that are not
/// stored ([`conv2d_backward_from`](super::conv2d_backward_from) and the separate passes it falls back to): each pass's
/// scratch plus an image of the convolution's output (or its gradient) per thread, or the
/// merged backward pass's per-chunk scratch and bias sums.
pub(crate) fn conv2d_pooled_scratch_len(g: &Conv2dGeom) -> usize {
    let img = g.c_out() * g.out_plane();
    let merged = if use_direct_wgrad(g) {
        let d = direct::Direct::for_wgrad(g);
        g.n() * g.c_out() + d.wgrad_then_scratch(g.n(), true, backward_data_slot(g))
    } else {
        0
    };
    ((forward_slot(g).max(backward_data_slot(g)) + img) * par::threads())
        .max(backward_weights_len(g, true))
        .max(merged)
}

/// Flops of one pass over one image.
pub(super) fn image_work(g: &Conv2dGeom) -> usize {
    2 * g.w_len() * g.out_plane()
}

/// How many images each worker group takes, or `None` to split inside each image instead.
pub(super) fn image_groups(g: &Conv2dGeom, slot: usize, ws_len: usize) -> Option<usize> {
    let threads = par::threads();
    let groups = par::groups(g.n(), image_work(g).saturating_mul(g.n()));
    let slots = match slot {
        0 => usize::MAX,
        s => ws_len / s,
    };
    // Fewer images than threads, each worth splitting: every image is shared by the whole pool
    // (a batch of one must still use every core).
    if threads == 1 || g.n() >= threads || image_work(g) < par::parallel_threshold() {
        Some(groups.min(slots).max(1))
    } else {
        None
    }
}

/// Runs `image(i, out_i, scratch, split)` for every image `i < n` (`out_i`: item `i` of `out`):
/// `Some(groups)` splits the images over that many worker groups, each with its own `slot` of
/// `ws`; `None` runs them in order, each splitting its own work inside (`split`).
pub(super) fn each_image<P: par::Parts>(
    groups: Option<usize>,
    n: usize,
    out: P,
    ws: &mut [f32],
    slot: usize,
    image: &(impl Fn(usize, P, &mut [f32], bool) -> Result<()> + Sync),
) -> Result<()> {
    let run = |r: Range<usize>, mut out: P, ws: &mut [f32], split: bool| {
        for i in r {
            let (one, rest) = out.split(1);
            image(i, one, ws, split)?;
            out = rest;
        }
        Ok(())
    };
    match groups {
        Some(groups) => par::for_each_group(
            n,
            groups,
            out,
            ws,
            slot,
            #[inline(always)]
            |r, out, ws| run(r, out, ws, false),
        ),
        None => run(0..n, out, &mut ws[..slot], true),
    }
}

/// Checks a forward pass's input, weights and bias against `g`.
pub(super) fn check_operands(
    op: &'static str,
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) -> Result<()> {
    check_len(op, "x", x, g.x_len())?;
    check_len(op, "w", w, g.w_len())?;
    match b {
        Some(b) => check_len(op, "b", b, g.c_out()),
        None => Ok(()),
    }
}

/// Where the im2col matrix of a tile comes from.
pub(super) enum Src<'a> {
    /// An explicit tile: `taps x tile_cols`, row-major.
    Col(&'a [f32]),
    /// The image itself (1x1 / stride 1 / no padding): `c_in x in_plane`.
    Image(&'a [f32]),
}

impl Src<'_> {
    /// The rows `rows` of the im2col matrix restricted to the pixel columns of tile `oh`.
    pub(super) fn view(
        &self,
        g: &Conv2dGeom,
        rows: Range<usize>,
        oh: &Range<usize>,
    ) -> Result<MatRef<'_>> {
        let cols = oh.len() * g.out_w();
        match *self {
            Src::Col(c) => MatRef::new(&c[rows.start * cols..], rows.len(), cols, cols, 1),
            Src::Image(x) => {
                let plane = g.in_plane();
                MatRef::new(
                    &x[rows.start * plane + oh.start * g.out_w()..],
                    rows.len(),
                    cols,
                    plane,
                    1,
                )
            }
        }
    }
}

/// The groups that output channels (or im2col rows, with `per = K_g`) `r` touch, each with the
/// sub-range of `r` inside it.
pub(super) fn group_spans(
    r: &Range<usize>,
    per: usize,
) -> impl Iterator<Item = (usize, Range<usize>)> + use<> {
    let r = r.clone();
    let first = r.start / per.max(1);
    (first..).map_while(move |gi| {
        let s = (gi * per).max(r.start);
        let e = ((gi + 1) * per).min(r.end);
        (s < e).then_some((gi, s..e))
    })
}

/// im2col of one tile with its tap rows split across threads.
pub(super) fn im2col_parallel(
    g: &Conv2dGeom,
    x_n: &[f32],
    oh: Range<usize>,
    col: &mut [f32],
) -> Result<()> {
    let cols = oh.len() * g.out_w();
    par::for_each(
        taps(g),
        col.len(),
        Items(col, cols),
        #[inline(always)]
        |r, Items(c, _)| {
            im2col(g, x_n, r, oh.clone(), c);
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use crate::shape::{Conv2dGeom, Conv2dParams, Shape4};

    /// The direct path reads tap offsets as u32: a layer whose prepared input would need larger
    /// offsets takes the im2col path instead of truncating them.
    #[test]
    fn the_direct_path_needs_tap_offsets_that_fit_u32() {
        let p = Conv2dParams::default().padding(1);
        let huge = Conv2dGeom::new(Shape4::new(1, 1, 70_000, 70_000), 1, [3, 3], p).unwrap();
        assert!(!super::use_direct(&huge));
        let small = Conv2dGeom::new(Shape4::new(1, 1, 64, 64), 1, [3, 3], p).unwrap();
        assert_eq!(super::use_direct(&small), crate::gemm::packed::enabled());
    }

    #[cfg(feature = "rayon")]
    /// A batch smaller than the pool shares each image's work across the pool (batch-1
    /// inference must use every core); a batch at least as large splits over images.
    #[test]
    fn small_batches_split_inside_the_image() {
        let p = Conv2dParams::default().padding(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let one = Conv2dGeom::new(Shape4::new(1, 32, 64, 64), 64, [3, 3], p).unwrap();
            assert_eq!(super::image_groups(&one, 1, usize::MAX), None);
            let two = Conv2dGeom::new(Shape4::new(2, 32, 64, 64), 64, [3, 3], p).unwrap();
            assert_eq!(super::image_groups(&two, 1, usize::MAX), Some(2));
            // Too little work to be worth a fork: the image runs on the calling thread.
            let tiny = Conv2dGeom::new(Shape4::new(1, 1, 4, 4), 1, [3, 3], p).unwrap();
            assert_eq!(super::image_groups(&tiny, 1, usize::MAX), Some(1));
        });
    }
}
