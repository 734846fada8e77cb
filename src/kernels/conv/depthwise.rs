//! Direct kernels for depthwise convolution (one input channel per group, any channel
//! multiplier `m = c_out / c_in`). An im2col matrix would have `k_h * k_w` rows and one output
//! channel per GEMM: all packing, no reuse. Here each output plane is a sum of `k_h * k_w` shifted,
//! scaled input rows, added with lane-wide multiply-adds (stride 1) or a strided loop.

use super::im2col::valid_range;
use crate::error::Result;
use crate::kernels::Accum;
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use crate::simd;

/// For each tap `(p, q)` of `g`: its index `p * k_w + q`, and its offsets `(off_h, off_w)` such
/// that input row = `oh * s_h + off_h`, input column = `ow * s_w + off_w`.
fn taps(g: &Conv2dGeom) -> impl Iterator<Item = (usize, isize, isize)> + use<> {
    let p = g.params();
    let (kh, kw) = (g.k_h(), g.k_w());
    (0..kh * kw).map(move |t| {
        let (ph, qw) = (t / kw, t % kw);
        (
            t,
            (ph * p.dilation[0]) as isize - p.padding[0] as isize,
            (qw * p.dilation[1]) as isize - p.padding[1] as isize,
        )
    })
}

/// Calls `f(oh, ih, ow_range, iw0)` for every output row `oh` that tap offsets `(off_h, off_w)`
/// connect to an input row `ih`, with the valid output columns and the input column of the first.
#[inline]
fn for_each_row(
    g: &Conv2dGeom,
    off_h: isize,
    off_w: isize,
    mut f: impl FnMut(usize, usize, std::ops::Range<usize>, usize),
) {
    let [s_h, s_w] = g.params().stride;
    let rows = valid_range(g.out_h(), g.in_h(), s_h, off_h);
    let cols = valid_range(g.out_w(), g.in_w(), s_w, off_w);
    if cols.is_empty() {
        return;
    }
    let iw0 = ((cols.start * s_w) as isize + off_w) as usize;
    for oh in rows {
        let ih = ((oh * s_h) as isize + off_h) as usize;
        f(oh, ih, cols.clone(), iw0);
    }
}

pub(super) fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane, in_w, out_w) = (g.in_plane(), g.out_plane(), g.in_w(), g.out_w());
    let kk = g.k_h() * g.k_w();
    let s_w = g.params().stride[1];
    let planes = g.n() * c_out;
    par::for_each(
        planes,
        2 * kk * out_plane * planes,
        Items(y, out_plane),
        &|r, Items(y, _)| {
            for (pi, y_p) in r.zip(y.chunks_exact_mut(out_plane)) {
                let (i, o) = (pi / c_out, pi % c_out);
                let x_p = &x[(i * c_in + o / m) * in_plane..][..in_plane];
                let w_o = &w[o * kk..][..kk];
                y_p.fill(b.map_or(0.0, |b| b[o]));
                for (t, off_h, off_w) in taps(g) {
                    let wv = w_o[t];
                    for_each_row(g, off_h, off_w, |oh, ih, cols, iw0| {
                        let x_row = &x_p[ih * in_w..][..in_w];
                        let y_row = &mut y_p[oh * out_w..][cols.clone()];
                        if s_w == 1 {
                            simd::axpy(wv, &x_row[iw0..][..y_row.len()], y_row);
                        } else {
                            for (k, yv) in y_row.iter_mut().enumerate() {
                                *yv += wv * x_row[iw0 + k * s_w];
                            }
                        }
                    });
                }
            }
            Ok(())
        },
    )
}

pub(super) fn backward_data(
    g: &Conv2dGeom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane, in_w, out_w) = (g.in_plane(), g.out_plane(), g.in_w(), g.out_w());
    let kk = g.k_h() * g.k_w();
    let s_w = g.params().stride[1];
    let planes = g.n() * c_in;
    par::for_each(
        planes,
        2 * kk * m * out_plane * planes,
        Items(dx, in_plane),
        &|r, Items(dx, _)| {
            for (pi, dx_p) in r.zip(dx.chunks_exact_mut(in_plane)) {
                let (i, c) = (pi / c_in, pi % c_in);
                if accum == Accum::Replace {
                    dx_p.fill(0.0);
                }
                for o in c * m..(c + 1) * m {
                    let dy_p = &dy[(i * c_out + o) * out_plane..][..out_plane];
                    let w_o = &w[o * kk..][..kk];
                    for (t, off_h, off_w) in taps(g) {
                        let wv = w_o[t];
                        for_each_row(g, off_h, off_w, |oh, ih, cols, iw0| {
                            let dy_row = &dy_p[oh * out_w..][cols];
                            let dx_row = &mut dx_p[ih * in_w..][..in_w];
                            if s_w == 1 {
                                simd::axpy(wv, dy_row, &mut dx_row[iw0..][..dy_row.len()]);
                            } else {
                                for (k, d) in dy_row.iter().enumerate() {
                                    dx_row[iw0 + k * s_w] += wv * d;
                                }
                            }
                        });
                    }
                }
            }
            Ok(())
        },
    )
}

pub(super) fn backward_weights(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    accum: Accum,
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane, in_w, out_w) = (g.in_plane(), g.out_plane(), g.in_w(), g.out_w());
    let kk = g.k_h() * g.k_w();
    let s_w = g.params().stride[1];
    let n = g.n();
    par::for_each(
        c_out,
        2 * kk * out_plane * n * c_out,
        Items(dw, kk),
        &|r, Items(dw, _)| {
            for (o, dw_o) in r.zip(dw.chunks_exact_mut(kk)) {
                for (t, off_h, off_w) in taps(g) {
                    // Sum over images in order, rows in order: f32 row dots, f64 across rows.
                    let mut s = 0.0f64;
                    for i in 0..n {
                        let x_p = &x[(i * c_in + o / m) * in_plane..][..in_plane];
                        let dy_p = &dy[(i * c_out + o) * out_plane..][..out_plane];
                        for_each_row(g, off_h, off_w, |oh, ih, cols, iw0| {
                            let dy_row = &dy_p[oh * out_w..][cols];
                            let x_row = &x_p[ih * in_w..][..in_w];
                            let d = if s_w == 1 {
                                simd::dot(dy_row, &x_row[iw0..][..dy_row.len()])
                            } else {
                                dy_row
                                    .iter()
                                    .enumerate()
                                    .map(|(k, d)| d * x_row[iw0 + k * s_w])
                                    .sum()
                            };
                            s += d as f64;
                        });
                    }
                    dw_o[t] = accum.apply(dw_o[t], s as f32);
                }
            }
            Ok(())
        },
    )
}
