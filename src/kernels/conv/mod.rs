//! 2-D convolution (cross-correlation, as `torch.nn.functional.conv2d`): forward,
//! backward-data and backward-weights (+ bias), as im2col + GEMM.
//!
//! Per image `n` and group `g` (`W_g`: the group's `c_out/groups` weight rows, `K_g = c_in/groups *
//! k_h * k_w` columns):
//! - forward: `y_n[g] = W_g · col(x_n)[g] (+ b)`
//! - backward-data: `col(dx_n)[g] = W_gᵀ · dy_n[g]`, then col2im adds the columns into `dx_n`
//! - backward-weights: `dW_g += dy_n[g] · col(x_n)[g]ᵀ`, `db += Σ dy`
//!
//! The im2col matrix is built one *tile* of output rows at a time, so the scratch a call needs is
//! bounded: per worker at most `max(COL_TILE_ELEMS, c_in * k_h * k_w * out_w)` elements, whatever
//! the image size. A 1x1 / stride-1 / unpadded convolution uses the input itself as its im2col
//! matrix and needs no scratch; a depthwise convolution (one input channel per group) runs a
//! direct kernel.
//!
//! Parallelism: with at least as many images as threads, each thread takes a contiguous run of
//! images (forward, backward-data). With fewer images, each tile is split inside the image:
//! im2col over tap rows, the GEMM over output channels (or, for backward-data, over tap rows, then
//! col2im over input channels). Backward-weights always splits over output channels, so every
//! weight gradient is summed by one thread in image order: results do not depend on the thread
//! count.

mod depthwise;
mod direct;
pub(crate) mod im2col;

use crate::error::{Result, check_len, check_min_len};
use crate::gemm::{MatMut, MatRef, gemm_serial, packed};
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::{Conv2dGeom, Pool2dGeom};
use im2col::{col2im_add, im2col};
use std::ops::Range;

/// Elements of one im2col tile (1 MiB of `f32`), unless a single output row needs more.
pub const COL_TILE_ELEMS: usize = 1 << 18;

/// Rows of the im2col matrix over all groups: `c_in * k_h * k_w`.
fn taps(g: &Conv2dGeom) -> usize {
    g.c_in() * g.k_h() * g.k_w()
}

/// Output rows per im2col tile.
fn tile_rows(g: &Conv2dGeom) -> usize {
    if !needs_col(g) {
        return g.out_h();
    }
    (COL_TILE_ELEMS / (taps(g) * g.out_w())).clamp(1, g.out_h())
}

/// The tiles of output rows.
fn tiles(g: &Conv2dGeom) -> impl Iterator<Item = Range<usize>> + use<> {
    let (step, out_h) = (tile_rows(g), g.out_h());
    (0..out_h)
        .step_by(step)
        .map(move |s| s..(s + step).min(out_h))
}

fn needs_col(g: &Conv2dGeom) -> bool {
    !g.is_pointwise() && !g.is_depthwise()
}

/// Scratch elements of one worker on the im2col path: one im2col tile.
fn slot_len(g: &Conv2dGeom) -> usize {
    if needs_col(g) {
        taps(g) * tile_rows(g) * g.out_w()
    } else {
        0
    }
}

/// Whether the direct path runs on cnnkit's micro-kernels (depthwise convolutions have their own
/// kernel).
fn use_direct(g: &Conv2dGeom) -> bool {
    // The direct path splits the input into stride_h·stride_w phase planes: for large strides
    // (rare, and mostly empty planes) im2col keeps the scratch small.
    packed::enabled()
        && !g.is_depthwise()
        && g.params().stride.iter().all(|&s| s <= MAX_DIRECT_STRIDE)
        && direct::Direct::forward(g).offsets_fit()
}

/// Largest stride (per axis) taken by the direct path.
const MAX_DIRECT_STRIDE: usize = 4;

/// Scratch of one worker for the forward pass on this machine.
fn forward_slot(g: &Conv2dGeom) -> usize {
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
fn direct_backward_data(g: &Conv2dGeom) -> Option<direct::Direct> {
    direct::Direct::backward_data(g).filter(|d| use_direct(g) && g.c_in_g() >= 4 && d.offsets_fit())
}

/// Scratch of one worker for the backward-data pass on this machine.
fn backward_data_slot(g: &Conv2dGeom) -> usize {
    match direct_backward_data(g) {
        _ if g.is_depthwise() => depthwise::slot_len(g),
        Some(d) => d.slot_len(),
        None => slot_len(g),
    }
}

/// Scratch for [`conv2d_forward`] that lets every thread of the current rayon pool work: per
/// thread one band of the prepared input and output (direct path, AVX2 or AVX-512 machines) or one
/// im2col tile (elsewhere), or one zero-padded plane for depthwise convolutions; 0 for
/// 1x1/stride-1/unpadded convolutions on the im2col path.
pub fn conv2d_forward_scratch_len(g: &Conv2dGeom) -> usize {
    forward_slot(g) * par::threads()
}

/// Scratch for [`conv2d_backward_data`]: as [`conv2d_forward_scratch_len`].
pub fn conv2d_backward_data_scratch_len(g: &Conv2dGeom) -> usize {
    backward_data_slot(g) * par::threads()
}

/// Scratch for [`conv2d_backward_weights`]: shared by all threads (one im2col tile, or on the
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
fn backward_weights_len(g: &Conv2dGeom, made: bool) -> usize {
    let img = if made { g.c_out() * g.out_plane() } else { 0 };
    let passes = if use_direct(g) {
        direct::Direct::for_wgrad(g).wgrad_scratch(g.n(), made)
    } else {
        slot_len(g) + img
    };
    passes.max(if made {
        g.out_plane() * par::threads()
    } else {
        0
    })
}

/// Scratch for the passes of a non-depthwise convolution whose output goes through a max-pool
/// ([`conv2d_forward_pooled`]) or whose output gradient is read through [`Planes`] that are not
/// stored ([`conv2d_backward_from`] and the separate passes it falls back to): each pass's
/// scratch plus an image of the convolution's output (or its gradient) per thread, or the
/// merged backward pass's per-chunk scratch and bias sums.
pub(crate) fn conv2d_pooled_scratch_len(g: &Conv2dGeom) -> usize {
    let img = g.c_out() * g.out_plane();
    let merged = if use_direct(g) {
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
fn image_work(g: &Conv2dGeom) -> usize {
    2 * g.w_len() * g.out_plane()
}

/// How many images each worker group takes, or `None` to split inside each image instead.
fn image_groups(g: &Conv2dGeom, slot: usize, ws_len: usize) -> Option<usize> {
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
fn each_image<P: par::Parts>(
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

/// 2-D cross-correlation, as `torch.nn.functional.conv2d`:
/// `y[n,o,i,j] = b[o] + Σ_{c,p,q} x[n, g·C + c, i·s_h − pad_h + p·d_h, j·s_w − pad_w + q·d_w] · w[o, c, p, q]`
/// where `g = o / (c_out/groups)`, `C = c_in/groups`, and out-of-range input reads are zero.
///
/// - `x`: `[n, c_in, in_h, in_w]` (NCHW); `w`: `[c_out, c_in/groups, k_h, k_w]` (OIHW);
///   `b`: `[c_out]` or `None`
/// - `y`: `[n, c_out, out_h, out_w]`, overwritten, never read
/// - `ws`: scratch of at least one im2col tile; [`conv2d_forward_scratch_len`] lets every thread
///   work (a shorter buffer uses fewer threads)
///
/// # Errors
/// [`Error::Length`](crate::Error::Length) if a buffer disagrees with `g`.
///
/// # Example
/// ```
/// use cnnkit::kernels::{conv2d_forward, conv2d_forward_scratch_len};
/// use cnnkit::{Conv2dGeom, Conv2dParams, Shape4};
/// // A 3x3 image of ones, a 2x2 kernel of ones, padding 1: each output counts the input pixels
/// // its window covers (1, 2 or 4).
/// let g = Conv2dGeom::new(Shape4::new(1, 1, 3, 3), 1, [2, 2], Conv2dParams::default().padding(1))?;
/// let (x, w) = (vec![1.0; 9], vec![1.0; 4]);
/// let mut y = vec![0.0; g.y_len()];
/// let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
/// conv2d_forward(&g, &x, &w, None, &mut y, &mut ws)?;
/// assert_eq!(y, [1., 2., 2., 1., 2., 4., 4., 2., 2., 4., 4., 2., 1., 2., 2., 1.]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn conv2d_forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    check_operands(OP, g, x, w, b)?;
    check_len(OP, "y", y, g.y_len())?;
    check_min_len(OP, "ws", ws, forward_slot(g))?;
    if g.n() == 0 {
        return Ok(());
    }
    if g.is_depthwise() {
        return depthwise::forward(g, x, w, b, y, ws);
    }
    forward_images(g, x, w, b, Out::Conv(y), ws)
}

/// [`conv2d_forward`] followed by [`max_pool2d_forward`](crate::kernels::max_pool2d_forward)
/// with indices, without storing the convolution's output: each image is convolved into scratch
/// ([`conv2d_pooled_scratch_len`]) and pooled from there, so the values are those of the two
/// passes. `pool` is the max-pool of the batch (its input is the convolution's output); the
/// convolution has one group and is not depthwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_forward_pooled(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    pool: &Pool2dGeom,
    y: &mut [f32],
    argmax: &mut [u32],
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    check_operands(OP, g, x, w, b)?;
    if g.groups() != 1 || g.is_depthwise() {
        return Err(crate::error::Error::invalid(
            OP,
            "groups",
            "a pooled output needs one group",
        ));
    }
    if pool.x_shape() != crate::shape::Shape4::new(g.n(), g.c_out(), g.out_h(), g.out_w()) {
        return Err(crate::error::Error::invalid(
            OP,
            "pool",
            "input is not the convolution's output",
        ));
    }
    check_len(OP, "y", y, pool.y_len())?;
    check_len(OP, "argmax", argmax, pool.y_len())?;
    let img = g.c_out() * g.out_plane();
    check_min_len(OP, "ws", ws, forward_slot(g) + img)?;
    if g.n() == 0 {
        return Ok(());
    }
    let (c, h, w_) = (g.c_out(), g.out_h(), g.out_w());
    let one = Pool2dGeom::new(crate::shape::Shape4::new(1, c, h, w_), pool.params())?;
    forward_images(
        g,
        x,
        w,
        b,
        Out::Pooled {
            pool: one,
            y,
            argmax,
        },
        ws,
    )
}

/// Checks a forward pass's input, weights and bias against `g`.
fn check_operands(
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

/// Where a forward pass puts each image's output.
enum Out<'a> {
    /// The convolution's output, `[n, c_out, out_h, out_w]`.
    Conv(&'a mut [f32]),
    /// Only its max-pool by `pool` (a geometry of one image): each image is convolved into
    /// scratch and pooled from there, into `y` with the indices in `argmax`.
    Pooled {
        pool: Pool2dGeom,
        y: &'a mut [f32],
        argmax: &'a mut [u32],
    },
}

impl Out<'_> {
    fn reborrow(&mut self) -> Out<'_> {
        match self {
            Out::Conv(y) => Out::Conv(y),
            Out::Pooled { pool, y, argmax } => Out::Pooled {
                pool: *pool,
                y,
                argmax,
            },
        }
    }
}

/// `conv(i, y_n, ws, split)`: image `i`'s convolution output into `y_n`.
type ImageConv<'a> = dyn Fn(usize, &mut [f32], &mut [f32], bool) -> Result<()> + Sync + 'a;

/// The forward pass of a non-depthwise convolution (checked by the caller), image by image.
fn forward_images(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    out: Out<'_>,
    ws: &mut [f32],
) -> Result<()> {
    let x_item = g.c_in() * g.in_plane();
    // `conv(i, y_n, ws, split)` writes image `i`'s output into `y_n`; `slot` is its scratch.
    let run = |slot: usize, conv: &ImageConv<'_>, out: Out<'_>, ws: &mut [f32]| match out {
        Out::Conv(y) => {
            let groups = image_groups(g, slot, ws.len());
            let y_item = g.c_out() * g.out_plane();
            each_image(
                groups,
                g.n(),
                Items(y, y_item),
                ws,
                slot,
                &|i, Items(y_n, _), ws, split| conv(i, y_n, ws, split),
            )
        }
        Out::Pooled { pool, y, argmax } => {
            let img = g.c_out() * g.out_plane();
            let groups = image_groups(g, img + slot, ws.len());
            let item = pool.y_len();
            each_image(
                groups,
                g.n(),
                (Items(y, item), Items(argmax, item)),
                ws,
                img + slot,
                &|i, (Items(y_i, _), Items(a_i, _)), ws, split| {
                    let (y_n, ws) = ws.split_at_mut(img);
                    conv(i, y_n, ws, split)?;
                    crate::kernels::pool::max_pool2d_forward_from(
                        &pool,
                        Planes::Dense(y_n),
                        y_i,
                        Some(a_i),
                        None,
                        &mut [],
                    )
                },
            )
        }
    };
    if use_direct(g) {
        let d = direct::Direct::forward(g);
        let (ci_g, co_g) = (g.c_in_g() * g.in_plane(), g.c_out_g() * g.out_plane());
        let mut out = out;
        return direct::with_prep(|prep| {
            for gi in 0..g.groups() {
                prep.plan(&d, direct::Weights::Forward { w, group: gi });
                let prep = &*prep;
                let bias = b.map(|b| &b[gi * g.c_out_g()..][..g.c_out_g()]);
                let conv = |i: usize, y_n: &mut [f32], ws: &mut [f32], split: bool| {
                    let x_g = &x[i * x_item + gi * ci_g..][..ci_g];
                    let y_g = &mut y_n[gi * co_g..][..co_g];
                    direct::conv_into(&d, prep, bias, x_g, y_g, Accum::Replace, ws, split)
                };
                let o = out.reborrow();
                run(d.slot_len(), &conv, o, ws)?;
            }
            Ok(())
        });
    }
    let conv = |i: usize, y_n: &mut [f32], col: &mut [f32], split: bool| -> Result<()> {
        let x_n = &x[i * x_item..][..x_item];
        for oh in tiles(g) {
            let src = if needs_col(g) {
                let col = &mut col[..taps(g) * oh.len() * g.out_w()];
                if split {
                    im2col_parallel(g, x_n, oh.clone(), col)?;
                } else {
                    im2col(g, x_n, 0..taps(g), oh.clone(), col);
                }
                Src::Col(col)
            } else {
                Src::Image(x_n)
            };
            if !split {
                forward_rows(g, w, b, &src, 0..g.c_out(), oh, y_n)?;
                continue;
            }
            let work = image_work(g) * oh.len() / g.out_h();
            par::for_each(
                g.c_out(),
                work,
                Items(&mut *y_n, g.out_plane()),
                #[inline(always)]
                |o, Items(y_rows, _)| forward_rows(g, w, b, &src, o, oh.clone(), y_rows),
            )?;
        }
        Ok(())
    };
    run(slot_len(g), &conv, out, ws)
}

/// Where the im2col matrix of a tile comes from.
enum Src<'a> {
    /// An explicit tile: `taps x tile_cols`, row-major.
    Col(&'a [f32]),
    /// The image itself (1x1 / stride 1 / no padding): `c_in x in_plane`.
    Image(&'a [f32]),
}

impl Src<'_> {
    /// The rows `rows` of the im2col matrix restricted to the pixel columns of tile `oh`.
    fn view(&self, g: &Conv2dGeom, rows: Range<usize>, oh: &Range<usize>) -> Result<MatRef<'_>> {
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
fn group_spans(
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
fn im2col_parallel(g: &Conv2dGeom, x_n: &[f32], oh: Range<usize>, col: &mut [f32]) -> Result<()> {
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

/// `y_rows[o - o.start, tile] = b[o] + W[o, :] · src[group(o)]` for output channels `o`.
fn forward_rows(
    g: &Conv2dGeom,
    w: &[f32],
    b: Option<&[f32]>,
    src: &Src<'_>,
    o: Range<usize>,
    oh: Range<usize>,
    y_rows: &mut [f32],
) -> Result<()> {
    let (k_g, plane, out_w) = (g.k_g(), g.out_plane(), g.out_w());
    let (c0, cols) = (oh.start * out_w, oh.len() * out_w);
    for (gi, os) in group_spans(&o, g.c_out_g()) {
        let at = (os.start - o.start) * plane + c0;
        let beta = match b {
            Some(b) => {
                for (k, bo) in b[os.clone()].iter().enumerate() {
                    y_rows[at + k * plane..][..cols].fill(*bo);
                }
                1.0
            }
            None => 0.0,
        };
        let c = MatMut::new(&mut y_rows[at..], os.len(), cols, plane, 1)?;
        let a = MatRef::new(&w[os.start * k_g..], os.len(), k_g, k_g, 1)?;
        let bsrc = src.view(g, gi * k_g..(gi + 1) * k_g, &oh)?;
        gemm_serial(1.0, a, bsrc, beta, c, false);
    }
    Ok(())
}

/// `dst[r - rows.start, :] = beta·dst + Σ_o W[o, r] · dy_n[o, tile]` for im2col rows `r`
/// (for a pointwise convolution the rows are input channels and `dst` is `dx_n`).
#[allow(clippy::too_many_arguments)]
fn wt_dy_rows(
    g: &Conv2dGeom,
    w: &[f32],
    dy_n: &[f32],
    rows: Range<usize>,
    oh: &Range<usize>,
    dst: &mut [f32],
    dst_rs: usize,
    beta: f32,
) -> Result<()> {
    let (k_g, co_g, plane) = (g.k_g(), g.c_out_g(), g.out_plane());
    let (c0, cols) = (oh.start * g.out_w(), oh.len() * g.out_w());
    for (gi, rs) in group_spans(&rows, k_g) {
        let k0 = rs.start - gi * k_g;
        // W_gᵀ restricted to rows rs: element (k, o) at (gi*co_g + o)*K_g + k.
        let a = MatRef::new(&w[gi * co_g * k_g + k0..], rs.len(), co_g, 1, k_g)?;
        let b = MatRef::new(&dy_n[gi * co_g * plane + c0..], co_g, cols, plane, 1)?;
        let c = MatMut::new(
            &mut dst[(rs.start - rows.start) * dst_rs..],
            rs.len(),
            cols,
            dst_rs,
            1,
        )?;
        gemm_serial(1.0, a, b, beta, c, false);
    }
    Ok(())
}

/// Gradient of [`conv2d_forward`] with respect to its input: `dx = convᵀ(dy, w)`.
///
/// - `w`: `[c_out, c_in/groups, k_h, k_w]`; `dy`: `[n, c_out, out_h, out_w]`
/// - `dx`: `[n, c_in, in_h, in_w]`, overwritten ([`Accum::Replace`]) or added to ([`Accum::Add`])
/// - `ws`: as for [`conv2d_forward`] ([`conv2d_backward_data_scratch_len`])
///
/// # Errors
/// [`Error::Length`](crate::Error::Length) if a buffer disagrees with `g`.
pub fn conv2d_backward_data(
    g: &Conv2dGeom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    conv2d_backward_data_from(g, w, Planes::Dense(dy), dx, accum, ws)
}

/// [`conv2d_backward_data`] of an output gradient read through [`Planes`]: planes that are not
/// stored are made an image at a time in the scratch ([`conv2d_pooled_scratch_len`]); a
/// depthwise convolution takes only stored planes.
pub(crate) fn conv2d_backward_data_from(
    g: &Conv2dGeom,
    w: &[f32],
    dy: Planes<'_>,
    dx: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_backward_data";
    check_len(OP, "w", w, g.w_len())?;
    dy.check(OP, "dy", g.n() * g.c_out(), g.out_plane(), g.c_out())?;
    check_len(OP, "dx", dx, g.x_len())?;
    let made = if let Planes::Dense(_) = dy {
        0
    } else {
        g.c_out() * g.out_plane()
    };
    let slot = backward_data_slot(g) + made;
    check_min_len(OP, "ws", ws, slot)?;
    if g.n() == 0 {
        return Ok(());
    }
    let (c_out, out_plane) = (g.c_out(), g.out_plane());
    if g.is_depthwise() {
        let Planes::Dense(dy) = dy else {
            return Err(crate::error::Error::invalid(
                OP,
                "dy",
                "depthwise: stored planes only",
            ));
        };
        return depthwise::backward_data(g, w, dy, dx, accum, ws);
    }
    let x_item = g.c_in() * g.in_plane();
    let groups = image_groups(g, slot, ws.len());
    if let Some(d) = direct_backward_data(g) {
        let (ci_g, co_g) = (g.c_in_g() * g.in_plane(), g.c_out_g());
        return direct::with_prep(|prep| {
            for gi in 0..g.groups() {
                prep.plan(
                    &d,
                    direct::Weights::Flipped {
                        w,
                        group: gi,
                        c_in_g: g.c_in_g(),
                    },
                );
                let pass = DataPass {
                    g,
                    w,
                    accum,
                    direct: Some((d, &*prep)),
                };
                let image = |i: usize, Items(dx_n, _): Items<'_, f32>, ws: &mut [f32], split| {
                    let (img, ws) = ws.split_at_mut(made);
                    let dy_g =
                        dy.planes(i * c_out + gi * co_g, co_g, out_plane, c_out, img, split)?;
                    pass.image(dy_g, &mut dx_n[gi * ci_g..][..ci_g], ws, split)
                };
                each_image(groups, g.n(), Items(&mut *dx, x_item), ws, slot, &image)?;
            }
            Ok(())
        });
    }
    let pass = DataPass {
        g,
        w,
        accum,
        direct: None,
    };
    let image = |i: usize, Items(dx_n, _): Items<'_, f32>, ws: &mut [f32], split: bool| {
        let (img, ws) = ws.split_at_mut(made);
        let dy_n = dy.planes(i * c_out, c_out, out_plane, c_out, img, split)?;
        pass.image(dy_n, dx_n, ws, split)
    };
    each_image(groups, g.n(), Items(dx, x_item), ws, slot, &image)
}

/// The backward-data pass of one image: on the direct path (one group, its flipped weights
/// planned in a `Prep`) or by im2col (the whole image).
struct DataPass<'a> {
    g: &'a Conv2dGeom,
    w: &'a [f32],
    accum: Accum,
    direct: Option<(direct::Direct, &'a direct::Prep)>,
}

impl DataPass<'_> {
    /// `dx_n (+)= convᵀ(dy_n)` per `accum`, with scratch `ws` ([`backward_data_slot`]), split
    /// inside the image with `split`.
    fn image(&self, dy_n: &[f32], dx_n: &mut [f32], ws: &mut [f32], split: bool) -> Result<()> {
        let (g, w, accum) = (self.g, self.w, self.accum);
        if let Some((d, prep)) = &self.direct {
            return direct::conv_into(d, prep, None, dy_n, dx_n, accum, ws, split);
        }
        let (plane, beta, full) = (g.in_plane(), accum.beta(), 0..g.out_h());
        if !needs_col(g) {
            if !split {
                return wt_dy_rows(g, w, dy_n, 0..g.c_in(), &full, dx_n, plane, beta);
            }
            return par::for_each(
                g.c_in(),
                image_work(g),
                Items(dx_n, plane),
                #[inline(always)]
                |c, Items(dx_rows, _)| wt_dy_rows(g, w, dy_n, c, &full, dx_rows, plane, beta),
            );
        }
        if accum == Accum::Replace {
            dx_n.fill(0.0);
        }
        let kk = g.k_h() * g.k_w();
        for oh in tiles(g) {
            let cols = oh.len() * g.out_w();
            let col = &mut ws[..taps(g) * cols];
            if !split {
                wt_dy_rows(g, w, dy_n, 0..taps(g), &oh, col, cols, 0.0)?;
                col2im_add(g, col, 0..taps(g), oh, 0..g.c_in(), dx_n);
                continue;
            }
            let work = image_work(g) * oh.len() / g.out_h();
            par::for_each(
                taps(g),
                work,
                Items(&mut *col, cols),
                #[inline(always)]
                |r, Items(c, _)| wt_dy_rows(g, w, dy_n, r, &oh, c, cols, 0.0),
            )?;
            let col = &*col;
            par::for_each(
                g.c_in(),
                col.len(),
                Items(&mut *dx_n, plane),
                #[inline(always)]
                |c, Items(dx_c, _)| {
                    let rows = c.start * kk..c.end * kk;
                    let src = &col[rows.start * cols..rows.end * cols];
                    col2im_add(g, src, rows, oh.clone(), c, dx_c);
                    Ok(())
                },
            )?;
        }
        Ok(())
    }
}

/// Both gradients of a convolution (as [`conv2d_backward_weights_from`], then with `dx`
/// [`conv2d_backward_data_from`] overwriting it): with one group on the direct path and an output
/// gradient that is not stored, in one pass over the images that makes each image's gradient
/// once for the bias sums, the weights and the input gradient (the same operations in the same
/// order, so the same bits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward_from(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    dy: Planes<'_>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_backward";
    if matches!(dy, Planes::Dense(_)) || g.groups() != 1 || !use_direct(g) {
        conv2d_backward_weights_from(g, x, dy, dw, db, accum, ws)?;
        if let Some(dx) = dx {
            conv2d_backward_data_from(g, w, dy, dx, Accum::Replace, ws)?;
        }
        return Ok(());
    }
    let (n, c_out, out_plane) = (g.n(), g.c_out(), g.out_plane());
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "w", w, g.w_len())?;
    dy.check(OP, "dy", n * c_out, out_plane, c_out)?;
    check_len(OP, "dw", dw, g.w_len())?;
    if let Some(db) = &db {
        check_len(OP, "db", db, c_out)?;
    }
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx, g.x_len())?;
    }
    let d = direct::Direct::for_wgrad(g);
    let sums_len = if db.is_some() { n * c_out } else { 0 };
    let extra = if dx.is_some() {
        backward_data_slot(g)
    } else {
        0
    };
    let need = sums_len + d.wgrad_then_scratch(n, true, extra);
    check_min_len(OP, "ws", ws, need)?;
    let (sums, ws) = ws.split_at_mut(sums_len);
    let x_item = g.c_in() * g.in_plane();
    direct::with_preps(|wprep, dprep| {
        let data = direct_backward_data(g).map(|dd| {
            let c_in_g = g.c_in_g();
            dprep.plan(
                &dd,
                direct::Weights::Flipped {
                    w,
                    group: 0,
                    c_in_g,
                },
            );
            (dd, &*dprep)
        });
        let pass = DataPass {
            g,
            w,
            accum: Accum::Replace,
            direct: data,
        };
        // Per image: its bias sums (one per plane, summed over images below in image order, as
        // `bias_backward` does) and its input gradient.
        let then = |_: usize,
                    dy_n: &[f32],
                    (Items(dx_n, _), Items(s_n, _)): (Items<'_, f32>, Items<'_, f32>),
                    ws: &mut [f32],
                    split: bool| {
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    for (o, s) in s_n.iter_mut().enumerate() {
                        *s = crate::simd::sum(&dy_n[o * out_plane..][..out_plane]);
                    }
                },
            );
            if dx_n.is_empty() {
                return Ok(());
            }
            pass.image(dy_n, dx_n, ws, split)
        };
        let dx_item = if dx.is_some() { x_item } else { 0 };
        let s_item = if db.is_some() { c_out } else { 0 };
        let then = direct::Then {
            out: (
                Items(dx.unwrap_or(&mut []), dx_item),
                Items(&mut *sums, s_item),
            ),
            extra,
            then: &then,
        };
        direct::wgrad(
            &d,
            wprep,
            Some(then),
            n,
            x,
            x_item,
            0,
            dy,
            c_out,
            0,
            dw,
            accum,
            ws,
        )?;
        if let Some(db) = db {
            for (o, v) in db.iter_mut().enumerate() {
                let sum: f64 = (0..n).map(|i| sums[i * c_out + o] as f64).sum();
                *v = accum.apply(*v, sum as f32);
            }
        }
        Ok(())
    })
}

/// Gradient of [`conv2d_forward`] with respect to its weights and bias:
/// `dw[o, c, p, q] = Σ_{n,i,j} dy[n,o,i,j] · x[n, g·C + c, i·s_h − pad_h + p·d_h, j·s_w − pad_w + q·d_w]`,
/// `db[o] = Σ_{n,i,j} dy[n,o,i,j]`.
///
/// - `x`: `[n, c_in, in_h, in_w]`; `dy`: `[n, c_out, out_h, out_w]`
/// - `dw`: `[c_out, c_in/groups, k_h, k_w]`, `db`: `[c_out]` or `None`; overwritten or added to
///   according to `accum`
/// - `ws`: at least [`conv2d_backward_weights_scratch_len`]
///
/// Each gradient element is summed by one thread in image order: the result is the same for any
/// number of threads.
///
/// # Errors
/// [`Error::Length`](crate::Error::Length) if a buffer disagrees with `g`.
pub fn conv2d_backward_weights(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    conv2d_backward_weights_from(g, x, Planes::Dense(dy), dw, db, accum, ws)
}

/// [`conv2d_backward_weights`] of an output gradient read through [`Planes`]: planes that are
/// not stored are made an image at a time in the scratch ([`conv2d_pooled_scratch_len`]), with
/// the same sums in the same order; a depthwise convolution takes only stored planes.
pub(crate) fn conv2d_backward_weights_from(
    g: &Conv2dGeom,
    x: &[f32],
    dy: Planes<'_>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_backward_weights";
    let (c_out, out_plane) = (g.c_out(), g.out_plane());
    check_len(OP, "x", x, g.x_len())?;
    dy.check(OP, "dy", g.n() * c_out, out_plane, c_out)?;
    check_len(OP, "dw", dw, g.w_len())?;
    if let Some(db) = &db {
        check_len(OP, "db", db, c_out)?;
    }
    let made = !matches!(dy, Planes::Dense(_));
    if g.is_depthwise() {
        check_min_len(OP, "ws", ws, conv2d_backward_weights_scratch_len(g))?;
        let Planes::Dense(dy) = dy else {
            return Err(crate::error::Error::invalid(
                OP,
                "dy",
                "depthwise: stored planes only",
            ));
        };
        if let Some(db) = db {
            bias_backward(g.n(), c_out, out_plane, dy, db, accum);
        }
        return depthwise::backward_weights(g, x, dy, dw, accum, ws);
    }
    check_min_len(OP, "ws", ws, backward_weights_len(g, made))?;
    if let Some(db) = db {
        bias_backward_from(g.n(), c_out, out_plane, dy, db, accum, ws)?;
    }
    let x_item = g.c_in() * g.in_plane();
    if use_direct(g) {
        let d = direct::Direct::for_wgrad(g);
        let per_group = g.c_out_g() * g.k_g();
        for (gi, dw_g) in dw.chunks_exact_mut(per_group).enumerate() {
            let (x0, y0) = (gi * g.c_in_g(), gi * g.c_out_g());
            direct::with_prep(|prep| {
                let none = None::<direct::Then<'_, ()>>;
                direct::wgrad(
                    &d,
                    prep,
                    none,
                    g.n(),
                    x,
                    x_item,
                    x0,
                    dy,
                    c_out,
                    y0,
                    dw_g,
                    accum,
                    ws,
                )
            })?;
        }
        return Ok(());
    }
    if accum == Accum::Replace {
        dw.fill(0.0);
    }
    let k_g = g.k_g();
    let (img, ws) = ws.split_at_mut(if made { c_out * out_plane } else { 0 });
    for (i, x_n) in x.chunks_exact(x_item).enumerate() {
        let dy_n = dy.planes(i * c_out, c_out, out_plane, c_out, img, true)?;
        for oh in tiles(g) {
            let src = if needs_col(g) {
                let col = &mut ws[..taps(g) * oh.len() * g.out_w()];
                im2col_parallel(g, x_n, oh.clone(), col)?;
                Src::Col(col)
            } else {
                Src::Image(x_n)
            };
            let (c0, cols) = (oh.start * g.out_w(), oh.len() * g.out_w());
            let work = image_work(g) * oh.len() / g.out_h();
            par::for_each(
                c_out,
                work,
                Items(&mut *dw, k_g),
                #[inline(always)]
                |o, Items(dw_rows, _)| {
                    for (gi, os) in group_spans(&o, g.c_out_g()) {
                        let a = MatRef::new(
                            &dy_n[os.start * out_plane + c0..],
                            os.len(),
                            cols,
                            out_plane,
                            1,
                        )?;
                        let b = src.view(g, gi * k_g..(gi + 1) * k_g, &oh)?.t();
                        let c = MatMut::row_major(
                            &mut dw_rows[(os.start - o.start) * k_g..],
                            os.len(),
                            k_g,
                        )?;
                        gemm_serial(1.0, a, b, 1.0, c, false);
                    }
                    Ok(())
                },
            )?;
        }
    }
    Ok(())
}

/// `db[o] (+)= Σ_{n, pixels} dy[n, o, :]`, split over channels (one thread sums each channel, in
/// image order).
pub(crate) fn bias_backward(
    n: usize,
    c: usize,
    plane: usize,
    dy: &[f32],
    db: &mut [f32],
    accum: Accum,
) {
    // Infallible: stored planes are never made.
    let _ = bias_backward_from(n, c, plane, Planes::Dense(dy), db, accum, &mut []);
}

/// [`bias_backward`] of an output gradient read through [`Planes`] (`ws`: a plane per parallel
/// group when the planes are made; at least one).
pub(crate) fn bias_backward_from(
    n: usize,
    c: usize,
    plane: usize,
    dy: Planes<'_>,
    db: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    let (work, slot) = (n * c * plane, dy.slot(plane));
    par::for_each_group(
        c,
        crate::kernels::accum::groups_in(c, work, ws.len(), slot),
        Items(db, 1),
        ws,
        slot,
        #[inline(always)]
        |r, Items(db, _), s| {
            for (o, d) in r.zip(db.iter_mut()) {
                let mut sum = 0.0f64;
                for i in 0..n {
                    sum += crate::simd::sum(dy.plane(i * c + o, plane, c, s)?) as f64;
                }
                *d = accum.apply(*d, sum as f32);
            }
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
