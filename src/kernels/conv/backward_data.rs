//! The input gradient: `col(dx_n)[g] = W_gᵀ · dy_n[g]`, then col2im adds the columns into `dx_n`
//! (or the direct kernel's transposed pass).

use super::im2col::col2im_add;
use super::plan::{
    backward_data_slot, direct_backward_data, each_image, group_spans, image_groups, image_work,
    needs_col, taps, tiles,
};
use super::{depthwise, direct, winograd};
use crate::error::{Result, check_len, check_min_len};
use crate::gemm::{MatMut, MatRef, gemm_serial};
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use std::ops::Range;

/// `dst[r - rows.start, :] = beta·dst + Σ_o W[o, r] · dy_n[o, tile]` for im2col rows `r`
/// (for a pointwise convolution the rows are input channels and `dst` is `dx_n`).
#[allow(clippy::too_many_arguments)]
pub(super) fn wt_dy_rows(
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

/// Gradient of [`conv2d_forward`](super::conv2d_forward) with respect to its input: `dx = convᵀ(dy, w)`.
///
/// - `w`: `[c_out, c_in/groups, k_h, k_w]`; `dy`: `[n, c_out, out_h, out_w]`
/// - `dx`: `[n, c_in, in_h, in_w]`, overwritten ([`Accum::Replace`]) or added to ([`Accum::Add`])
/// - `ws`: as for [`conv2d_forward`](super::conv2d_forward) ([`conv2d_backward_data_scratch_len`](super::conv2d_backward_data_scratch_len))
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
/// stored are made an image at a time in the scratch ([`conv2d_pooled_scratch_len`](super::conv2d_pooled_scratch_len)); a
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
    if let Some((gd, t)) = winograd::data_choice(g) {
        let add = accum == Accum::Add;
        return winograd::with_weights(&gd, t, w, true, |u| {
            let image = |i: usize, Items(dx_n, _): Items<'_, f32>, ws: &mut [f32], split| {
                let (img, ws) = ws.split_at_mut(made);
                let dy_n = dy.planes(i * c_out, c_out, out_plane, c_out, img, split)?;
                winograd::image(
                    &gd,
                    t,
                    u,
                    None,
                    winograd::Epi::default(),
                    dy_n,
                    dx_n,
                    add,
                    ws,
                    split,
                )
            };
            each_image(groups, g.n(), Items(&mut *dx, x_item), ws, slot, &image)
        });
    }
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
pub(super) struct DataPass<'a> {
    pub(super) g: &'a Conv2dGeom,
    pub(super) w: &'a [f32],
    pub(super) accum: Accum,
    pub(super) direct: Option<(direct::Direct, &'a direct::Prep)>,
}

impl DataPass<'_> {
    /// `dx_n (+)= convᵀ(dy_n)` per `accum`, with scratch `ws` ([`backward_data_slot`]), split
    /// inside the image with `split`.
    pub(super) fn image(
        &self,
        dy_n: &[f32],
        dx_n: &mut [f32],
        ws: &mut [f32],
        split: bool,
    ) -> Result<()> {
        let (g, w, accum) = (self.g, self.w, self.accum);
        if let Some((d, prep)) = &self.direct {
            let epi = direct::Epi::default();
            return direct::conv_into(d, prep, None, epi, dy_n, dx_n, accum, ws, split);
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
