//! The forward pass: `y_n[g] = W_g · col(x_n)[g] (+ b)`, image by image or split inside an image,
//! optionally max-pooled on the way out.

use super::im2col::im2col;
use super::plan::{
    Src, check_operands, each_image, forward_slot, group_spans, im2col_parallel, image_groups,
    image_work, needs_col, slot_len, taps, tiles, use_direct,
};
use super::{depthwise, direct, winograd};
use crate::error::{Result, check_len, check_min_len};
use crate::gemm::{MatMut, MatRef, gemm_serial};
use crate::kernels::accum::Accum;
use crate::kernels::activation::Activation;
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::{Conv2dGeom, Pool2dGeom};
use std::ops::Range;

/// 2-D cross-correlation, as `torch.nn.functional.conv2d`:
/// `y[n,o,i,j] = b[o] + Σ_{c,p,q} x[n, g·C + c, i·s_h − pad_h + p·d_h, j·s_w − pad_w + q·d_w] · w[o, c, p, q]`
/// where `g = o / (c_out/groups)`, `C = c_in/groups`, and out-of-range input reads are zero.
///
/// - `x`: `[n, c_in, in_h, in_w]` (NCHW); `w`: `[c_out, c_in/groups, k_h, k_w]` (OIHW);
///   `b`: `[c_out]` or `None`
/// - `y`: `[n, c_out, out_h, out_w]`, overwritten, never read
/// - `ws`: scratch of at least one im2col tile; [`conv2d_forward_scratch_len`](super::conv2d_forward_scratch_len) lets every thread
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
        return depthwise::forward(g, x, w, b, (None, None), y, ws);
    }
    forward_images(g, x, w, b, None, Epilogue::default(), Out::Conv(y), ws)
}

/// What a fused forward convolution does to each output value after the bias, while the value
/// is still in cache: `y = act(conv(x) + b + residual)` — the tail of a residual block
/// (convolution, batch norm folded into its weights, the shortcut's sum, ReLU) in one pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to the output (the output's shape): a residual connection.
    pub residual: Option<&'a [f32]>,
    /// Applied last.
    pub act: Option<Activation>,
}

/// [`conv2d_forward`] followed by `epi`, in one pass where the direct path runs (the bias,
/// residual and activation applied to each block of output channels as it leaves the
/// micro-kernels' buffer), as separate passes elsewhere; the values are those of the separate
/// operations (`act(conv(x) + b + residual)`, summed in that order).
///
/// # Errors
/// As [`conv2d_forward`]; [`Error::Length`](crate::Error::Length) if the residual is not the
/// output's length; [`Error::InvalidArg`](crate::Error::InvalidArg) for an activation's invalid
/// parameter.
///
/// # Example
/// ```
/// use cnnkit::kernels::{conv2d_forward_fused, conv2d_forward_scratch_len, Activation, Epilogue};
/// use cnnkit::{Conv2dGeom, Conv2dParams, Shape4};
/// let g = Conv2dGeom::new(Shape4::new(1, 1, 2, 2), 1, [1, 1], Conv2dParams::default())?;
/// let (x, w, shortcut) = ([1.0, -2.0, 3.0, -4.0], [1.0], [0.5; 4]);
/// let mut y = [0.0; 4];
/// let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
/// let epi = Epilogue { residual: Some(&shortcut), act: Some(Activation::Relu) };
/// conv2d_forward_fused(&g, &x, &w, None, epi, &mut y, &mut ws)?;
/// assert_eq!(y, [1.5, 0.0, 3.5, 0.0]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_fused(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    epi: Epilogue<'_>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    conv2d_forward_prepacked(g, x, w, b, None, epi, y, ws)
}

/// [`conv2d_forward_fused`] with `w` also packed already ([`conv2d_prepack`]; used when its tile
/// is the active instruction set's, `w` otherwise).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_forward_prepacked(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    pre: Option<&Prepacked>,
    epi: Epilogue<'_>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_forward";
    check_operands(OP, g, x, w, b)?;
    check_len(OP, "y", y, g.y_len())?;
    if let Some(r) = epi.residual {
        check_len(OP, "residual", r, g.y_len())?;
    }
    if let Some(a) = epi.act {
        a.validate(OP)?;
    }
    check_min_len(OP, "ws", ws, forward_slot(g))?;
    if g.n() == 0 {
        return Ok(());
    }
    if g.is_depthwise() {
        return depthwise::forward(g, x, w, b, (epi.residual, epi.act), y, ws);
    }
    forward_images(g, x, w, b, pre, epi, Out::Conv(y), ws)
}

/// A convolution's fixed weights as its forward path reads them ([`conv2d_prepack`]): packed
/// for the direct path's micro-kernels, or transformed for Winograd's products.
#[derive(Clone, Debug)]
pub(crate) struct Prepacked {
    direct: Option<direct::Prepacked>,
    wino: Option<(winograd::Tile, Vec<f32>)>,
}

/// `w` (OIHW) as the path that runs `g` on this machine reads it (`None` for the other paths:
/// nothing to keep).
pub(crate) fn conv2d_prepack(g: &Conv2dGeom, w: &[f32]) -> Option<Prepacked> {
    if w.len() != g.w_len() {
        return None;
    }
    if let Some(t) = winograd::winograd_choice(g) {
        let u = winograd::with_weights(g, t, w, false, <[f32]>::to_vec);
        return Some(Prepacked {
            direct: None,
            wino: Some((t, u)),
        });
    }
    use_direct(g).then(|| Prepacked {
        direct: Some(direct::Prepacked::new(
            &direct::Direct::forward(g),
            w,
            g.groups(),
        )),
        wino: None,
    })
}

/// `y = act(y + residual)` over the whole output, for the paths without an epilogue of their
/// own.
fn epilogue_pass(epi: Epilogue<'_>, y: &mut [f32]) {
    if let Some(r) = epi.residual {
        let _ = crate::kernels::join::add_forward(r, y, Accum::Add);
    }
    if let Some(a) = epi.act {
        crate::kernels::activation::activation_in_place(a, y);
    }
}

/// [`conv2d_forward`] followed by [`max_pool2d_forward`](crate::kernels::max_pool2d_forward)
/// with indices, without storing the convolution's output: each image is convolved into scratch
/// ([`conv2d_pooled_scratch_len`](super::conv2d_pooled_scratch_len)) and pooled from there, so the values are those of the two
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
        None,
        Epilogue::default(),
        Out::Pooled {
            pool: one,
            y,
            argmax,
        },
        ws,
    )
}

/// Where a forward pass puts each image's output.
pub(super) enum Out<'a> {
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
pub(super) type ImageConv<'a> =
    dyn Fn(usize, &mut [f32], &mut [f32], bool) -> Result<()> + Sync + 'a;

/// The forward pass of a non-depthwise convolution (checked by the caller), image by image.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_images(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    pre: Option<&Prepacked>,
    epi: Epilogue<'_>,
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
    if let Some(t) = winograd::winograd_choice(g) {
        let y_item = g.c_out() * g.out_plane();
        let images = |u: &[f32]| {
            let conv = |i: usize, y_n: &mut [f32], ws: &mut [f32], split: bool| {
                let x_n = &x[i * x_item..][..x_item];
                let residual = epi.residual.map(|r| &r[i * y_item..][..y_item]);
                let epi = winograd::Epi {
                    residual,
                    act: epi.act,
                };
                winograd::image(g, t, u, b, epi, x_n, y_n, false, ws, split)
            };
            run(winograd::slot_len(g, t), &conv, out, ws)
        };
        return match pre.and_then(|p| p.wino.as_ref()) {
            Some((pt, u)) if *pt == t => images(u),
            _ => winograd::with_weights(g, t, w, false, images),
        };
    }
    if use_direct(g) {
        let d = direct::Direct::forward(g);
        let (ci_g, co_g) = (g.c_in_g() * g.in_plane(), g.c_out_g() * g.out_plane());
        let mut out = out;
        let y_item = g.c_out() * g.out_plane();
        return direct::with_prep(|prep| {
            for gi in 0..g.groups() {
                let packed = pre.and_then(|p| p.direct.as_ref()?.group(&d, gi));
                if packed.is_some() {
                    prep.plan_bands(&d, d.out_ch());
                } else {
                    prep.plan(&d, direct::Weights::Forward { w, group: gi });
                }
                let prep = &*prep;
                let bias = b.map(|b| &b[gi * g.c_out_g()..][..g.c_out_g()]);
                let conv = |i: usize, y_n: &mut [f32], ws: &mut [f32], split: bool| {
                    let x_g = &x[i * x_item + gi * ci_g..][..ci_g];
                    let y_g = &mut y_n[gi * co_g..][..co_g];
                    let epi = direct::Epi {
                        bias,
                        residual: epi.residual.map(|r| &r[i * y_item + gi * co_g..][..co_g]),
                        act: epi.act,
                    };
                    direct::conv_into(&d, prep, packed, epi, x_g, y_g, Accum::Replace, ws, split)
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
        let y_item = y_n.len();
        let residual = epi.residual.map(|r| &r[i * y_item..][..y_item]);
        epilogue_pass(Epilogue { residual, ..epi }, y_n);
        Ok(())
    };
    run(slot_len(g), &conv, out, ws)
}

/// `y_rows[o - o.start, tile] = b[o] + W[o, :] · src[group(o)]` for output channels `o`.
pub(super) fn forward_rows(
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
