//! The weight and bias gradients: `dW_g += dy_n[g] · col(x_n)[g]ᵀ`, `db += Σ dy`, each output
//! channel summed by one thread in image order.

use super::im2col::im2col;
use super::plan::{
    Src, backward_weights_len, conv2d_backward_weights_scratch_len, dot_band, dot_slot,
    group_spans, im2col_parallel, image_work, needs_col, taps, tiles, use_direct_wgrad,
    use_dot_wgrad,
};
use super::{depthwise, direct, winograd};
use crate::arch::kernel::MicroKernel;
use crate::arch::kernel::bodies::tiles::{DOT_COLS, DOT_LANES, DOT_ROWS};
use crate::error::{Result, check_len, check_min_len};
use crate::gemm::{MatMut, MatRef, gemm_serial};
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;

/// Gradient of [`conv2d_forward`](super::conv2d_forward) with respect to its weights and bias:
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
/// not stored are made an image at a time in the scratch ([`conv2d_pooled_scratch_len`](super::conv2d_pooled_scratch_len)), with
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
    if use_dot_wgrad(g) {
        return dot_weights(g, x, dy, dw, db, accum, ws);
    }
    if let Some(db) = db {
        bias_backward_from(g.n(), c_out, out_plane, dy, db, accum, ws)?;
    }
    let x_item = g.c_in() * g.in_plane();
    if let Some(t) = winograd::wgrad_choice(g) {
        let img = if made { c_out * out_plane } else { 0 };
        let (img, ws) = ws.split_at_mut(img.min(ws.len()));
        return winograd::weight_grad(g, t, x, dy, img, dw, accum, ws);
    }
    if use_direct_wgrad(g) {
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

/// The weight gradient as dot products of rows, for groups with few taps
/// ([`use_dot_wgrad`]): `dW_g[o, t] += Σ_pixels dy_n[o, :] · col(x_n)[t, :]`, both operands read
/// along their rows, so the output gradient is neither transposed nor packed, and no tap is
/// padded to a register tile. The im2col rows are made a band of output rows at a time
/// ([`dot_band`]). The bias gradient is the dot product with a row of ones, in the same pass
/// over the output gradient. Split over output channels: each element is summed by one thread,
/// in image and band order, with the same bits for any thread count.
fn dot_weights(
    g: &Conv2dGeom,
    x: &[f32],
    dy: Planes<'_>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "conv2d_backward_weights";
    let (n, c_out, t) = (g.n(), g.c_out(), g.k_g());
    let (out_w, plane) = (g.out_w(), g.out_plane());
    let made = !matches!(dy, Planes::Dense(_));
    let band = dot_band(g);
    check_min_len(OP, "ws", ws, dot_slot(g, 1, made))?;
    // As many groups as the scratch holds (one always does).
    let most = par::groups(c_out, 2 * n * c_out * t * plane);
    let groups = (1..=most)
        .rev()
        .find(|&k| k * dot_slot(g, k, made) <= ws.len())
        .unwrap_or(1);
    let slot = dot_slot(g, groups, made);
    let bias = db.is_some();
    // Columns of the sums: the taps, then the bias (a row of ones after the im2col rows).
    let cols = t + usize::from(bias);
    let mut none = [0.0f32; 0];
    let db = db.unwrap_or(&mut none);
    par::for_each_group(
        c_out,
        groups,
        (Items(dw, t), Items(db, usize::from(bias))),
        ws,
        slot,
        #[inline(always)]
        |r, (Items(dw, _), Items(db, _)), s| {
            // Each group's channels fit the sums its slot was sized for (the split never gives a
            // group more than its share, rounded up).
            let rows = c_out.div_ceil(groups);
            if r.len() > rows {
                let why = format!("{} channels in a slot for {rows}", r.len());
                return Err(crate::error::Error::invalid(OP, "ws", why));
            }
            let (lane_sums, s) = s.split_at_mut(rows * cols * DOT_LANES);
            let (tails, s) = s.split_at_mut(rows * cols);
            let (lane_sums, tails) = (
                &mut lane_sums[..r.len() * cols * DOT_LANES],
                &mut tails[..r.len() * cols],
            );
            lane_sums.fill(0.0);
            tails.fill(0.0);
            let scratch = s.split_at_mut(cols * band * out_w);
            crate::arch::with_kernel!(
                kern => dot_sums(kern, g, x, &dy, r.clone(), cols, scratch, (&mut *lane_sums, &mut *tails));
                else Err(super::direct::changed(OP))
            )?;
            let rows_of = lane_sums
                .chunks_exact(cols * DOT_LANES)
                .zip(tails.chunks_exact(cols));
            for (o, (lane_row, tail_row)) in rows_of.enumerate() {
                let total = |j: usize| {
                    let l = &lane_row[j * DOT_LANES..][..DOT_LANES];
                    crate::arch::kernel::dot_total(l, tail_row[j])
                };
                for (j, d) in dw[o * t..][..t].iter_mut().enumerate() {
                    *d = accum.apply(*d, total(j));
                }
                if bias {
                    db[o] = accum.apply(db[o], total(t));
                }
            }
            Ok(())
        },
    )
}

/// The running sums of [`dot_weights`] for output channels `r` (of all groups) over every
/// image: `cols` per channel (the group's taps, then the bias when `cols` exceeds them), kept
/// as [`MicroKernel::dot_tile`] keeps them, with `col` for the im2col rows of a band and their
/// row of ones, and `img` for the channels' planes when they are made.
#[allow(clippy::too_many_arguments)]
fn dot_sums<K: MicroKernel>(
    kern: K,
    g: &Conv2dGeom,
    x: &[f32],
    dy: &Planes<'_>,
    r: std::ops::Range<usize>,
    cols: usize,
    (col, img): (&mut [f32], &mut [f32]),
    (lane_sums, tails): (&mut [f32], &mut [f32]),
) -> Result<()> {
    let (n, c_out, c_out_g, t) = (g.n(), g.c_out(), g.c_out_g(), g.k_g());
    let (out_w, plane, band) = (g.out_w(), g.out_plane(), dot_band(g));
    let x_item = g.c_in() * g.in_plane();
    let x_group = g.c_in_g() * g.in_plane();
    for i in 0..n {
        let x_n = &x[i * x_item..][..x_item];
        let dy_n = dy.planes(i * c_out + r.start, r.len(), plane, c_out, img, false)?;
        for (gi, os) in group_spans(&r, c_out_g) {
            let x_g = &x_n[gi * x_group..][..x_group];
            // The group's channels here, from its first one.
            let skip = os.start - r.start;
            let dy_g = &dy_n[skip * plane..];
            for oh0 in (0..g.out_h()).step_by(band) {
                let oh = oh0..(oh0 + band).min(g.out_h());
                let k = oh.len() * out_w;
                let col = &mut col[..cols * k];
                im2col(g, x_g, 0..t, oh, &mut col[..t * k]);
                col[t * k..].fill(1.0);
                let (a, b) = (&dy_g[oh0 * out_w..], &*col);
                for o0 in (0..os.len()).step_by(DOT_ROWS) {
                    let m = DOT_ROWS.min(os.len() - o0);
                    let e = (skip + o0) * cols;
                    for j0 in (0..cols).step_by(DOT_COLS) {
                        let nc = DOT_COLS.min(cols - j0);
                        let sums = (&mut lane_sums[(e + j0) * DOT_LANES..], &mut tails[e + j0..]);
                        let (a, b) = (&a[o0 * plane..], &b[j0 * k..]);
                        kern.dot_tile((m, nc), k, a, plane, b, k, sums, cols);
                    }
                }
            }
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
                    sum += crate::simd::iter::sum(dy.plane(i * c + o, plane, c, s)?) as f64;
                }
                *d = accum.apply(*d, sum as f32);
            }
            Ok(())
        },
    )
}
