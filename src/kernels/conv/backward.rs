//! Both gradients of a convolution in one pass over the images, where the direct path allows it.

use super::backward_data::{DataPass, conv2d_backward_data_from};
use super::backward_weights::conv2d_backward_weights_from;
use super::plan::{backward_data_slot, direct_backward_data, use_direct_wgrad};
use super::{direct, winograd};
use crate::error::{Result, check_len, check_min_len};
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::par::Items;
use crate::shape::Conv2dGeom;

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
    // Winograd's weight gradient runs as its own pass.
    let wino = winograd::wgrad_choice(g).is_some();
    if matches!(dy, Planes::Dense(_)) || g.groups() != 1 || !use_direct_wgrad(g) || wino {
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
            crate::arch::dispatch(
                #[inline(always)]
                || {
                    for (o, s) in s_n.iter_mut().enumerate() {
                        *s = crate::simd::iter::sum(&dy_n[o * out_plane..][..out_plane]);
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
