//! Direct kernels for depthwise convolution (one input channel per group, any channel
//! multiplier `m = c_out / c_in`). An im2col matrix would have `k_h · k_w` rows and one output
//! channel per GEMM: all packing, no reuse. Here each plane is copied once into a zero-padded
//! buffer, and the kernels sweep it eight output pixels at a time:
//! - forward: `y[oh, ow..ow+8] = b + Σ_{p,q} w[p, q] · xpad[oh·s + p·d, ow·s + q·d ..]`;
//! - backward-data: the same sweep over the zero-padded output gradient with the flipped kernel
//!   (stride 1), or a scatter of each output row into the padded input gradient (strided);
//! - backward-weights: one pass over the gradient per plane with `k_h · k_w` lane accumulators.
//!
//! Every plane is processed by one thread; weight gradients are split over output channels and
//! summed over images in order, so results do not depend on the thread count.

use crate::arch::kernel::MAX_LANES;
use crate::error::Result;
use crate::kernels::accum::Accum;
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use crate::simd;
use crate::simd::lane::{LANES, Lane, splat};

/// A zero-padded plane: `rows x cols` with the image at `(pad_h, pad_w)`, plus slack for the
/// widest register's reads past the last row.
#[derive(Clone, Copy)]
struct Padded {
    rows: usize,
    cols: usize,
    pad: [usize; 2],
}

impl Padded {
    fn len(&self) -> usize {
        self.rows * self.cols + 2 * MAX_LANES
    }

    /// Copies the `h x w` plane `src` into `dst` (zero border).
    #[inline(always)]
    fn fill(&self, src: &[f32], h: usize, w: usize, dst: &mut [f32]) {
        let (top, left, cols) = (self.pad[0], self.pad[1], self.cols);
        let body = (top + h) * cols;
        dst[..top * cols].fill(0.0);
        dst[body..].fill(0.0);
        // Rows are short (a library `memmove` call per row cost a fifth of a depthwise pass in
        // perf): copied in lanes, inline (callers run inside `simd::dispatch`).
        for (row, d) in src
            .chunks_exact(w)
            .take(h)
            .zip(dst[top * cols..body].chunks_exact_mut(cols))
        {
            let (l, rest) = d.split_at_mut(left);
            let (mid, r) = rest.split_at_mut(w);
            l.iter_mut().for_each(|v| *v = 0.0);
            simd::map(
                row,
                mid,
                #[inline(always)]
                |v| v,
            );
            r.iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// The padded input layout of a forward (or stride-1 backward-data) sweep.
fn padded(
    in_h: usize,
    in_w: usize,
    pad: [usize; 2],
    out_w: usize,
    s_w: usize,
    span_w: usize,
) -> Padded {
    // Columns: the image plus padding, and enough for the last lane of outputs to read (a whole
    // lane at stride 1; strided gathers read only the valid outputs, so a huge stride does not
    // make the plane huge).
    let reach = if s_w == 1 {
        out_w.div_ceil(LANES) * LANES + span_w
    } else {
        (out_w - 1) * s_w + span_w
    };
    let cols = (in_w + 2 * pad[1]).max(reach);
    Padded {
        rows: in_h + 2 * pad[0],
        cols,
        pad,
    }
}

fn fwd_layout(g: &Conv2dGeom) -> Padded {
    let p = g.params();
    padded(
        g.in_h(),
        g.in_w(),
        p.padding,
        g.out_w(),
        p.stride[1],
        (g.k_w() - 1) * p.dilation[1] + 1,
    )
}

/// The stride-1 backward-data layout: the output gradient padded by `d·(k − 1) − pad`.
fn bwd_layout(g: &Conv2dGeom) -> Option<Padded> {
    let p = g.params();
    if p.stride != [1, 1] {
        return None;
    }
    let pad_h = (p.dilation[0] * (g.k_h() - 1)).checked_sub(p.padding[0])?;
    let pad_w = (p.dilation[1] * (g.k_w() - 1)).checked_sub(p.padding[1])?;
    Some(padded(
        g.out_h(),
        g.out_w(),
        [pad_h, pad_w],
        g.in_w(),
        1,
        (g.k_w() - 1) * p.dilation[1] + 1,
    ))
}

/// Scratch of one worker (a padded plane).
pub(super) fn slot_len(g: &Conv2dGeom) -> usize {
    let f = fwd_layout(g).len();
    bwd_layout(g).map_or(f, |b| f.max(b.len()))
}

/// `out[oh, ·] (+)= Σ_{p,q} w[p·k_w + q] · src[oh·s_h + p·d_h, ··s_w + q·d_w]` for the
/// `out_h x out_w` plane `out` over the padded plane `src`; `flip` reads the kernel rotated by
/// 180°.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn sweep(
    lay: &Padded,
    src: &[f32],
    w: &[f32],
    kh: usize,
    kw: usize,
    s: [usize; 2],
    d: [usize; 2],
    flip: bool,
    out: &mut [f32],
    out_w: usize,
    add: bool,
) {
    let tap = |p: usize, q: usize| {
        if flip {
            w[(kh - 1 - p) * kw + (kw - 1 - q)]
        } else {
            w[p * kw + q]
        }
    };
    if s[1] == 1 {
        let done = crate::arch::with_kernel!(
            kern => {
                for (oh, orow) in out.chunks_exact_mut(out_w).enumerate() {
                    crate::arch::kernel::MicroKernel::depthwise_row(
                        kern,
                        src,
                        lay.cols,
                        oh * s[0],
                        d,
                        w,
                        [kh, kw],
                        flip,
                        orow,
                        add,
                    );
                }
                true
            };
            else false
        );
        if done {
            return;
        }
    }
    for (oh, orow) in out.chunks_exact_mut(out_w).enumerate() {
        let mut ow = 0;
        while ow < out_w {
            // Up to four lanes of outputs at once: independent accumulators hide the FMA
            // latency that a single chain of `k_h · k_w` dependent FMAs would expose.
            let b = Block {
                src,
                cols: lay.cols,
                top: oh * s[0],
                ow,
                s,
                d,
            };
            ow += match (out_w - ow).div_ceil(LANES) {
                1 => b.run::<1>(kh, kw, &tap, orow, add),
                2 => b.run::<2>(kh, kw, &tap, orow, add),
                3 => b.run::<3>(kh, kw, &tap, orow, add),
                _ => b.run::<4>(kh, kw, &tap, orow, add),
            };
        }
    }
}

/// `NB` lanes of one output row of [`sweep`], starting at column `ow`.
struct Block<'a> {
    src: &'a [f32],
    cols: usize,
    top: usize,
    ow: usize,
    s: [usize; 2],
    d: [usize; 2],
}

impl Block<'_> {
    /// Computes and stores the block; returns the number of outputs written.
    #[inline(always)]
    fn run<const NB: usize>(
        &self,
        kh: usize,
        kw: usize,
        tap: &impl Fn(usize, usize) -> f32,
        orow: &mut [f32],
        add: bool,
    ) -> usize {
        let mut acc = [splat(0.0); NB];
        for p in 0..kh {
            let row = &self.src[(self.top + p * self.d[0]) * self.cols..];
            for q in 0..kw {
                let wv = splat(tap(p, q));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let at = (self.ow + j * LANES) * self.s[1] + q * self.d[1];
                    let v = if self.s[1] == 1 {
                        Lane::new(row[at..at + LANES].try_into().expect("a lane"))
                    } else {
                        // Lanes past the row's end repeat the last valid output.
                        let valid = (orow.len() - (self.ow + j * LANES)).min(LANES);
                        Lane::new(std::array::from_fn(|k| {
                            row[at + k.min(valid - 1) * self.s[1]]
                        }))
                    };
                    *acc = v.mul_add(wv, *acc);
                }
            }
        }
        let end = (self.ow + NB * LANES).min(orow.len());
        for (o, v) in orow[self.ow..end]
            .iter_mut()
            .zip(acc.iter().flat_map(|a| a.to_array()))
        {
            *o = if add { *o + v } else { v };
        }
        end - self.ow
    }
}

fn work(g: &Conv2dGeom) -> usize {
    2 * g.k_h() * g.k_w() * g.out_plane() * g.n() * g.c_out()
}

pub(super) fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    let (kh, kw, kk) = (g.k_h(), g.k_w(), g.k_h() * g.k_w());
    let p = g.params();
    let lay = fwd_layout(g);
    let slot = slot_len(g);
    let planes = g.n() * c_out;
    let groups = par::groups(planes, work(g)).min(ws.len() / slot).max(1);
    par::for_each_group(
        planes,
        groups,
        Items(y, out_plane),
        ws,
        slot,
        #[inline(always)]
        |r, Items(y, _), pad| {
            let mut last = usize::MAX;
            for (pi, y_p) in r.zip(y.chunks_exact_mut(out_plane)) {
                let (i, o) = (pi / c_out, pi % c_out);
                let src = i * c_in + o / m;
                if src != last {
                    lay.fill(
                        &x[src * in_plane..][..in_plane],
                        g.in_h(),
                        g.in_w(),
                        &mut pad[..lay.len()],
                    );
                    last = src;
                }
                sweep(
                    &lay,
                    pad,
                    &w[o * kk..][..kk],
                    kh,
                    kw,
                    p.stride,
                    p.dilation,
                    false,
                    y_p,
                    g.out_w(),
                    false,
                );
                if let Some(b) = b {
                    let bv = splat(b[o]);
                    simd::map_in_place(
                        y_p,
                        #[inline(always)]
                        |v| v + bv,
                    );
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
    ws: &mut [f32],
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane, in_w, out_w) = (g.in_plane(), g.out_plane(), g.in_w(), g.out_w());
    let (kh, kw, kk) = (g.k_h(), g.k_w(), g.k_h() * g.k_w());
    let p = g.params();
    let slot = slot_len(g);
    let planes = g.n() * c_in;
    let groups = par::groups(planes, work(g))
        .min(ws.len() / slot.max(1))
        .max(1);
    let blay = bwd_layout(g);
    par::for_each_group(
        planes,
        groups,
        Items(dx, in_plane),
        ws,
        slot,
        #[inline(always)]
        |r, Items(dx, _), pad| {
            for (pi, dx_p) in r.zip(dx.chunks_exact_mut(in_plane)) {
                let (i, c) = (pi / c_in, pi % c_in);
                if accum == Accum::Replace {
                    dx_p.fill(0.0);
                }
                for o in c * m..(c + 1) * m {
                    let dy_p = &dy[(i * c_out + o) * out_plane..][..out_plane];
                    let w_o = &w[o * kk..][..kk];
                    match &blay {
                        // Stride 1: dx = flipped-kernel sweep over the padded gradient.
                        Some(lay) => {
                            lay.fill(dy_p, g.out_h(), out_w, &mut pad[..lay.len()]);
                            sweep(
                                lay,
                                pad,
                                w_o,
                                kh,
                                kw,
                                [1, 1],
                                p.dilation,
                                true,
                                dx_p,
                                in_w,
                                true,
                            );
                        }
                        // Strided: scatter each output row into its taps' input rows.
                        None => scatter(g, dy_p, w_o, dx_p),
                    }
                }
            }
            Ok(())
        },
    )
}

/// Strided backward-data for one plane: `dx[oh·s + p·d − pad, ow·s + q·d − pad] += w[p, q] ·
/// dy[oh, ow]` over the positions inside the image.
fn scatter(g: &Conv2dGeom, dy_p: &[f32], w_o: &[f32], dx_p: &mut [f32]) {
    let p = g.params();
    let (in_h, in_w, out_w) = (g.in_h() as isize, g.in_w() as isize, g.out_w());
    for (oh, row) in dy_p.chunks_exact(out_w).enumerate() {
        for pp in 0..g.k_h() {
            let ih = (oh * p.stride[0] + pp * p.dilation[0]) as isize - p.padding[0] as isize;
            if ih < 0 || ih >= in_h {
                continue;
            }
            let dst = &mut dx_p[ih as usize * in_w as usize..][..in_w as usize];
            for q in 0..g.k_w() {
                let wv = w_o[pp * g.k_w() + q];
                for (ow, &d) in row.iter().enumerate() {
                    let iw =
                        (ow * p.stride[1] + q * p.dilation[1]) as isize - p.padding[1] as isize;
                    if iw >= 0 && iw < in_w {
                        dst[iw as usize] += wv * d;
                    }
                }
            }
        }
    }
}

/// Most taps handled by the lane accumulators of the weight gradient at once.
const MAX_TAPS: usize = 25;

/// For a fixed number of taps `T` and stride 1 along rows: lane `t` of the result is
/// `Σ_{oh, ow} pad[oh·row_step + offs[t] + ow] · dy[oh, ow]`, accumulated in the same order as the
/// general loop in [`backward_weights`] (rows in order, lanes left to right, one fused
/// multiply-add per tap), so both give the same bits. With `T` known the accumulators are
/// registers rather than an indexed array in memory.
#[inline(always)]
fn tap_dots<const T: usize>(
    pad: &[f32],
    dy_p: &[f32],
    out_w: usize,
    row_step: usize,
    offs: &[usize; T],
) -> [Lane; T] {
    let mut acc = [splat(0.0); T];
    for (oh, drow) in dy_p.chunks_exact(out_w).enumerate() {
        let base = oh * row_step;
        let mut ow = 0;
        while ow < out_w {
            let nn = LANES.min(out_w - ow);
            let dv = match drow.get(ow..ow + LANES) {
                Some(d) => Lane::new(d.try_into().expect("a lane")),
                None => {
                    let mut dv = [0.0f32; LANES];
                    dv[..nn].copy_from_slice(&drow[ow..]);
                    Lane::new(dv)
                }
            };
            for t in 0..T {
                let at = base + offs[t] + ow;
                let v = Lane::new(pad[at..at + LANES].try_into().expect("a lane"));
                acc[t] = v.mul_add(dv, acc[t]);
            }
            ow += nn;
        }
    }
    acc
}

pub(super) fn backward_weights(
    g: &Conv2dGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane, out_w) = (g.in_plane(), g.out_plane(), g.out_w());
    let (kw, kk) = (g.k_w(), g.k_h() * g.k_w());
    let p = g.params();
    let lay = fwd_layout(g);
    let slot = slot_len(g);
    let n = g.n();
    let groups = par::groups(c_out, work(g)).min(ws.len() / slot).max(1);
    par::for_each_group(
        c_out,
        groups,
        Items(dw, kk),
        ws,
        slot,
        #[inline(always)]
        |r, Items(dw, _), pad| {
            for (o, dw_o) in r.zip(dw.chunks_exact_mut(kk)) {
                let mut total = [0.0f64; MAX_TAPS];
                for t0 in (0..kk).step_by(MAX_TAPS) {
                    let taps = MAX_TAPS.min(kk - t0);
                    for i in 0..n {
                        lay.fill(
                            &x[(i * c_in + o / m) * in_plane..][..in_plane],
                            g.in_h(),
                            g.in_w(),
                            &mut pad[..lay.len()],
                        );
                        let dy_p = &dy[(i * c_out + o) * out_plane..][..out_plane];
                        if taps == 9 && p.stride[1] == 1 {
                            // Nine taps (3x3, the common case): nine accumulators that stay in
                            // registers.
                            let offs: [usize; 9] = std::array::from_fn(|t| {
                                let (pp, q) = ((t0 + t) / kw, (t0 + t) % kw);
                                pp * p.dilation[0] * lay.cols + q * p.dilation[1]
                            });
                            let acc = tap_dots(
                                &pad[..lay.len()],
                                dy_p,
                                out_w,
                                p.stride[0] * lay.cols,
                                &offs,
                            );
                            for (t, a) in acc.iter().enumerate() {
                                total[t] += a.reduce_add() as f64;
                            }
                            continue;
                        }
                        // One lane accumulator per tap, over the whole plane; the tail of each row is
                        // masked by zero-padding the gradient lane.
                        let mut acc = [splat(0.0); MAX_TAPS];
                        for (oh, drow) in dy_p.chunks_exact(out_w).enumerate() {
                            let mut ow = 0;
                            while ow < out_w {
                                let nn = LANES.min(out_w - ow);
                                let mut dv = [0.0f32; LANES];
                                dv[..nn].copy_from_slice(&drow[ow..ow + nn]);
                                let dv = Lane::new(dv);
                                for (t, a) in acc[..taps].iter_mut().enumerate() {
                                    let (pp, q) = ((t0 + t) / kw, (t0 + t) % kw);
                                    let row =
                                        &pad[(oh * p.stride[0] + pp * p.dilation[0]) * lay.cols..];
                                    let at = ow * p.stride[1] + q * p.dilation[1];
                                    let v = if p.stride[1] == 1 {
                                        Lane::new(row[at..at + LANES].try_into().expect("a lane"))
                                    } else {
                                        // Lanes past `nn` meet a zero gradient.
                                        Lane::new(std::array::from_fn(|k| {
                                            row[at + k.min(nn - 1) * p.stride[1]]
                                        }))
                                    };
                                    *a = v.mul_add(dv, *a);
                                }
                                ow += nn;
                            }
                        }
                        for t in 0..taps {
                            total[t] += acc[t].reduce_add() as f64;
                        }
                    }
                    for t in 0..taps {
                        dw_o[t0 + t] = accum.apply(dw_o[t0 + t], total[t] as f32);
                        total[t] = 0.0;
                    }
                }
            }
            Ok(())
        },
    )
}
