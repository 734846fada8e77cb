//! Direct kernels for depthwise convolution (one input channel per group, any channel
//! multiplier `m = c_out / c_in`). An im2col matrix would have `k_h · k_w` rows and one output
//! channel per GEMM: all packing, no reuse. Here each plane is copied once into a zero-padded
//! buffer split by the stride into phases ([`Phased`]), where every tap of every output reads a
//! contiguous run, and the kernels sweep the plane as one run (the padding columns computed and
//! dropped):
//! - forward: `y = act(b + Σ_{p,q} w[p, q] · xpad[oh·s + p·d, ow·s + q·d] + residual)`, swept a
//!   strip of rows at a time, each strip taken through the bias, residual and activation while
//!   it is in L1 (wide rows straight into the output in one pass);
//! - backward-data: the same sweep over the zero-padded output gradient with the flipped kernel
//!   (stride 1), or a scatter of each output row into the padded input gradient (strided);
//! - backward-weights: one pass over the gradient per plane with `k_h · k_w` lane accumulators.
//!
//! Every plane is processed by one thread; weight gradients are split over output channels and
//! summed over images in order, so results do not depend on the thread count.

use crate::arch::kernel::MAX_LANES;
use crate::error::Result;
use crate::kernels::accum::Accum;
use crate::kernels::activation::{Activation, map_act, map_act_in_place, split_fused, zip_map_act};
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use crate::simd;
use crate::simd::lane::{LANES, Lane, splat};

/// A zero-padded plane split by the stride `s` into `s_h · s_w` phases, one after another: phase
/// `(a, b)` holds the padded rows `a, a + s_h, …` and columns `b, b + s_w, …`, `rows x cols` of
/// them. An output `(oh, ow)`'s tap at `(u, v)` from its window's corner reads phase
/// `(u mod s_h, v mod s_w)` at row `oh + u / s_h`, column `ow + v / s_w`: over the outputs
/// flattened with row pitch `cols`, one contiguous run per tap ([`Phased::offset`]). Slack for the
/// widest register's reads past the end follows.
#[derive(Clone, Copy)]
struct Phased {
    s: [usize; 2],
    rows: usize,
    cols: usize,
    pad: [usize; 2],
    /// The outputs, `[rows, cols]`.
    out: [usize; 2],
}

impl Phased {
    /// The layout for `out` outputs over an `image` (`[h, w]`) padded by `pad`, at stride `s`,
    /// of windows spanning `span` padded rows and columns.
    fn new(
        image: [usize; 2],
        pad: [usize; 2],
        out: [usize; 2],
        s: [usize; 2],
        span: [usize; 2],
    ) -> Self {
        // With one output along an axis its stride is never taken (and a huge one would make as
        // many phases).
        let s = [0, 1].map(|i| if out[i] > 1 { s[i] } else { 1 });
        // Every padded row and column the image or a window reaches; with more than one output
        // the stride is at most that extent, so the phases hold at most twice the plane.
        let extent = |i: usize| {
            let reach = out[i].saturating_sub(1) * s[i] + span[i];
            (image[i] + 2 * pad[i]).max(reach)
        };
        Phased {
            s,
            rows: extent(0).div_ceil(s[0]),
            cols: extent(1).div_ceil(s[1]),
            pad,
            out,
        }
    }

    fn phase_len(&self) -> usize {
        self.rows * self.cols
    }

    fn len(&self) -> usize {
        self.s[0] * self.s[1] * self.phase_len() + MAX_LANES
    }

    /// The outputs as the sweep writes them: `out_h` rows of pitch `cols`, the last one cut at
    /// `out_w`.
    fn run_len(&self) -> usize {
        match self.out {
            [0, _] | [_, 0] => 0,
            [h, w] => (h - 1) * self.cols + w,
        }
    }

    /// Where the tap at padded offset `(u, v)` from output `(0, 0)`'s window corner reads.
    fn offset(&self, u: usize, v: usize) -> usize {
        let phase = (u % self.s[0]) * self.s[1] + v % self.s[1];
        phase * self.phase_len() + (u / self.s[0]) * self.cols + v / self.s[1]
    }

    /// The columns `lo..hi` of column phase `b` that hold the columns of a `w`-wide image:
    /// `left <= cc·s_w + b < left + w`.
    fn image_cols(&self, b: usize, w: usize) -> (usize, usize) {
        let (sw, left) = (self.s[1], self.pad[1]);
        let lo = left.saturating_sub(b).div_ceil(sw).min(self.cols);
        let hi = (left + w)
            .saturating_sub(b)
            .div_ceil(sw)
            .clamp(lo, self.cols);
        (lo, hi)
    }

    /// Zeroes the layout's buffer `dst`: the border and slack stay zero while [`Phased::fill`]
    /// writes image after image.
    fn zero(&self, dst: &mut [f32]) {
        dst[..self.len()].fill(0.0);
    }

    /// Copies the `h x w` plane `src` into `dst` (zeroed by [`Phased::zero`]), split into
    /// phases; writes only the image's places.
    #[inline(always)]
    fn fill(&self, src: &[f32], h: usize, w: usize, dst: &mut [f32]) {
        let [sh, sw] = self.s;
        let [top, left] = self.pad;
        let (cols, pl) = (self.cols, self.phase_len());
        for (a, group) in dst[..sh * sw * pl].chunks_exact_mut(sw * pl).enumerate() {
            for rr in 0..self.rows {
                let r = rr * sh + a;
                if r < top || r >= top + h {
                    continue;
                }
                let row = &src[(r - top) * w..][..w];
                match sw {
                    // Rows are short: copied in lanes, inline (callers run inside
                    // `simd::dispatch`), not by a library call per row.
                    1 => simd::copy(row, &mut group[rr * cols + left..][..w]),
                    // Stride 2: the row's pairs split between the two column phases.
                    2 => {
                        let (even, odd) = group.split_at_mut(pl);
                        let (even, odd) = (
                            &mut even[rr * cols..][..cols],
                            &mut odd[rr * cols..][..cols],
                        );
                        // Image column `j` is padded column `j + left`: phase `(j + left) mod
                        // 2`, column `(j + left) / 2`. From `j0` on, pairs start in the even phase.
                        let j0 = left % 2;
                        if j0 == 1 {
                            odd[left / 2] = row[0];
                        }
                        let base = (j0 + left) / 2;
                        let pairs = row[j0.min(w)..].chunks_exact(2);
                        let (np, rest) = (pairs.len(), pairs.remainder());
                        for ((pr, e), o) in pairs
                            .zip(&mut even[base..base + np])
                            .zip(&mut odd[base..base + np])
                        {
                            *e = pr[0];
                            *o = pr[1];
                        }
                        if let [v] = rest {
                            even[base + np] = *v;
                        }
                    }
                    _ => {
                        for (b, plane) in group.chunks_exact_mut(pl).enumerate() {
                            let (lo, hi) = self.image_cols(b, w);
                            let first = lo * sw + b - left;
                            for (j, v) in plane[rr * cols + lo..][..hi - lo].iter_mut().enumerate()
                            {
                                *v = row[first + j * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Phased {
    /// `dst (+)= ` the `h x w` image's places of the phased plane `src` (the inverse of
    /// [`Phased::fill`]; the border is dropped).
    #[inline(always)]
    fn read_out(&self, src: &[f32], h: usize, w: usize, dst: &mut [f32], accum: Accum) {
        let [sh, sw] = self.s;
        let [top, left] = self.pad;
        let (cols, pl) = (self.cols, self.phase_len());
        for (ih, drow) in dst.chunks_exact_mut(w).take(h).enumerate() {
            let (a, rr) = ((ih + top) % sh, (ih + top) / sh);
            let group = &src[a * sw * pl..][..sw * pl];
            match sw {
                1 => {
                    let srow = &group[rr * cols + left..][..w];
                    match accum {
                        Accum::Replace => simd::copy(srow, drow),
                        Accum::Add => simd::add_into(srow, drow),
                    }
                }
                // Stride 2: the row's pairs from the two column phases (see `fill`).
                2 => {
                    let (even, odd) = (
                        &group[rr * cols..][..cols],
                        &group[pl + rr * cols..][..cols],
                    );
                    let j0 = left % 2;
                    if j0 == 1 {
                        drow[0] = accum.apply(drow[0], odd[left / 2]);
                    }
                    let base = (j0 + left) / 2;
                    let mut pairs = drow[j0.min(w)..].chunks_exact_mut(2);
                    let np = pairs.len();
                    for ((pr, &e), &o) in (&mut pairs)
                        .zip(&even[base..base + np])
                        .zip(&odd[base..base + np])
                    {
                        pr[0] = accum.apply(pr[0], e);
                        pr[1] = accum.apply(pr[1], o);
                    }
                    if let [v] = pairs.into_remainder() {
                        *v = accum.apply(*v, even[base + np]);
                    }
                }
                _ => {
                    for (j, v) in drow.iter_mut().enumerate() {
                        let c = j + left;
                        *v = accum.apply(*v, group[(c % sw) * pl + rr * cols + c / sw]);
                    }
                }
            }
        }
    }
}

/// The forward (and strided backward-weights) layout of `g`'s input planes.
fn fwd_layout(g: &Conv2dGeom) -> Phased {
    let p = g.params();
    Phased::new(
        [g.in_h(), g.in_w()],
        p.padding,
        [g.out_h(), g.out_w()],
        p.stride,
        [
            (g.k_h() - 1) * p.dilation[0] + 1,
            (g.k_w() - 1) * p.dilation[1] + 1,
        ],
    )
}

/// The stride-1 backward-data layout: the output gradient padded by `d·(k − 1) − pad`, swept
/// for the input gradient.
fn bwd_layout(g: &Conv2dGeom) -> Option<Phased> {
    let p = g.params();
    if p.stride != [1, 1] {
        return None;
    }
    let pad_h = (p.dilation[0] * (g.k_h() - 1)).checked_sub(p.padding[0])?;
    let pad_w = (p.dilation[1] * (g.k_w() - 1)).checked_sub(p.padding[1])?;
    Some(Phased::new(
        [g.out_h(), g.out_w()],
        [pad_h, pad_w],
        [g.in_h(), g.in_w()],
        [1, 1],
        [
            (g.k_h() - 1) * p.dilation[0] + 1,
            (g.k_w() - 1) * p.dilation[1] + 1,
        ],
    ))
}

/// Scratch of one layout's worker: the phased plane and the swept run (with a register's slack).
fn lay_slot(l: &Phased) -> usize {
    l.len() + l.out[0] * l.cols + MAX_LANES
}

/// Scratch of one worker (a phased plane and a swept run).
pub(super) fn slot_len(g: &Conv2dGeom) -> usize {
    let f = lay_slot(&fwd_layout(g));
    bwd_layout(g).map_or(f, |b| f.max(lay_slot(&b)))
}

/// Floats of swept output a forward strip holds (8 KiB: with the input rows it reads, it stays in
/// L1 through the epilogue).
const STRIP: usize = 2048;

/// Most taps one sweep takes (their offsets live on the stack); larger kernels are swept in parts
/// of this many taps, each part's sums added to the run.
const SWEEP_TAPS: usize = 64;

/// A kernel's taps over a [`Phased`] layout: `(p, q)` reads at `lay.offset(p·d_h, q·d_w)`, or
/// at the tap rotated by 180° if `flip`. The first [`SWEEP_TAPS`] offsets are computed once (the
/// divisions cost more than a small plane's sweep).
struct Taps {
    lay: Phased,
    k: [usize; 2],
    d: [usize; 2],
    flip: bool,
    first: [usize; SWEEP_TAPS],
}

impl Taps {
    fn new(lay: Phased, k: [usize; 2], d: [usize; 2], flip: bool) -> Self {
        let mut t = Taps {
            lay,
            k,
            d,
            flip,
            first: [0; SWEEP_TAPS],
        };
        let mut first = [0; SWEEP_TAPS];
        t.offsets(0, &mut first);
        t.first = first;
        t
    }

    /// The offsets of taps `t0..t0 + offs.len()` (in the order of the weights, `p·kw + q`).
    fn offsets(&self, t0: usize, offs: &mut [usize]) {
        let [kh, kw] = self.k;
        for (j, o) in offs
            .iter_mut()
            .enumerate()
            .take((kh * kw).saturating_sub(t0))
        {
            let (p, q) = ((t0 + j) / kw, (t0 + j) % kw);
            let (p, q) = if self.flip {
                (kh - 1 - p, kw - 1 - q)
            } else {
                (p, q)
            };
            *o = self.lay.offset(p * self.d[0], q * self.d[1]);
        }
    }

    /// Calls `f(t0, offsets)` for the taps in parts of at most [`SWEEP_TAPS`], in the order of
    /// the weights (`t0`: the part's first tap).
    #[inline(always)]
    fn parts(&self, mut f: impl FnMut(usize, &[usize])) {
        let kk = self.k[0] * self.k[1];
        f(0, &self.first[..SWEEP_TAPS.min(kk)]);
        let mut offs = [0usize; SWEEP_TAPS];
        for t0 in (SWEEP_TAPS..kk).step_by(SWEEP_TAPS) {
            let m = SWEEP_TAPS.min(kk - t0);
            self.offsets(t0, &mut offs[..m]);
            f(t0, &offs[..m]);
        }
    }

    /// Calls `f(t, offset)` for every tap in the order of the weights.
    #[inline(always)]
    fn each(&self, mut f: impl FnMut(usize, usize)) {
        self.parts(
            #[inline(always)]
            |t0, offs| {
                for (j, &o) in offs.iter().enumerate() {
                    f(t0 + j, o);
                }
            },
        );
    }

    /// `run[j] = Σ_t w[t] · src[offs[t] + j]` over the taps in the order of `w`, in parts of
    /// [`SWEEP_TAPS`] taps, each part added to the run.
    #[inline(always)]
    fn sweep(&self, src: &[f32], w: &[f32], run: &mut [f32]) {
        self.parts(
            #[inline(always)]
            |t0, offs| sweep_taps(src, offs, &w[t0..t0 + offs.len()], run, t0 > 0),
        );
    }
}

/// `out[j] (+)= Σ_t w[t] · src[offs[t] + j]`: the micro-kernel's sweep, or the same sums in lanes.
#[inline(always)]
fn sweep_taps(src: &[f32], offs: &[usize], w: &[f32], out: &mut [f32], add: bool) {
    let done = crate::arch::with_kernel!(
        kern => {
            crate::arch::kernel::MicroKernel::depthwise_taps(kern, src, offs, w, out, add);
            true
        };
        else false
    );
    if done {
        return;
    }
    let n = out.len();
    let mut ow = 0;
    while ow < n {
        // Up to four lanes of outputs at once: independent accumulators hide the FMA latency
        // that a single chain of dependent FMAs would expose.
        ow += match (n - ow).div_ceil(LANES) {
            1 => taps_block::<1>(src, offs, w, out, ow, add),
            2 => taps_block::<2>(src, offs, w, out, ow, add),
            3 => taps_block::<3>(src, offs, w, out, ow, add),
            _ => taps_block::<4>(src, offs, w, out, ow, add),
        };
    }
}

/// `NB` lanes of [`sweep_taps`] from output `ow`; returns the number of outputs written.
#[inline(always)]
fn taps_block<const NB: usize>(
    src: &[f32],
    offs: &[usize],
    w: &[f32],
    out: &mut [f32],
    ow: usize,
    add: bool,
) -> usize {
    let mut acc = [splat(0.0); NB];
    for (&o, &wt) in offs.iter().zip(w) {
        let wv = splat(wt);
        for (j, acc) in acc.iter_mut().enumerate() {
            let at = o + ow + j * LANES;
            let v = Lane::new(src[at..at + LANES].try_into().expect("a lane"));
            *acc = v.mul_add(wv, *acc);
        }
    }
    let end = (ow + NB * LANES).min(out.len());
    for (o, v) in out[ow..end]
        .iter_mut()
        .zip(acc.iter().flat_map(|a| a.to_array()))
    {
        *o = if add { *o + v } else { v };
    }
    end - ow
}

fn work(g: &Conv2dGeom) -> usize {
    2 * g.k_h() * g.k_w() * g.out_plane() * g.n() * g.c_out()
}

/// The forward pass with its epilogue: `y = act(conv(x) + b + residual)`, summed in that order.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (residual, act): (Option<&[f32]>, Option<Activation>),
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    let (c_in, c_out, m) = (g.c_in(), g.c_out(), g.c_out_g());
    let (in_plane, out_plane, out_w) = (g.in_plane(), g.out_plane(), g.out_w());
    let kk = g.k_h() * g.k_w();
    let p = g.params();
    let lay = fwd_layout(g);
    let taps = Taps::new(lay, [g.k_h(), g.k_w()], p.dilation, false);
    let slot = slot_len(g);
    let planes = g.n() * c_out;
    let out_h = g.out_h();
    let strip = (STRIP / lay.cols.max(1)).clamp(1, out_h.max(1));
    // The cheap activations in the epilogue's pass, the others over each strip's output after it.
    let (fused, after) = split_fused(act);
    if out_plane == 0 {
        return Ok(());
    }
    let groups = par::groups(planes, work(g)).min(ws.len() / slot).max(1);
    par::for_each_group(
        planes,
        groups,
        Items(y, out_plane),
        ws,
        slot,
        #[inline(always)]
        |r, Items(y, _), ws| {
            let (pad, run) = ws.split_at_mut(lay.len());
            lay.zero(pad);
            let mut last = usize::MAX;
            for (pi, y_p) in r.zip(y.chunks_exact_mut(out_plane)) {
                let (i, o) = (pi / c_out, pi % c_out);
                let src = i * c_in + o / m;
                if src != last {
                    lay.fill(&x[src * in_plane..][..in_plane], g.in_h(), g.in_w(), pad);
                    last = src;
                }
                let bv = b.map(|b| splat(b[o]));
                let res = residual.map(|res| &res[pi * out_plane..][..out_plane]);
                // A strip of output rows at a time, swept and taken through the epilogue
                // (`act((v + b) + residual)`) while it is in L1: swept as one run over the whole
                // plane, a large plane's run left L1 before the bias, the activation and the copy
                // out each passed over it again.
                for r0 in (0..out_h).step_by(strip) {
                    let rows = strip.min(out_h - r0);
                    let run = &mut run[..(rows - 1) * lay.cols + out_w];
                    taps.sweep(&pad[r0 * lay.cols..], &w[o * kk..][..kk], run);
                    let y_s = &mut y_p[r0 * out_w..][..rows * out_w];
                    // `act((v + b) + residual)` in one pass; without a bias `v + (-0.0)`,
                    // which is `v` exactly. Rows of a few registers or more go straight to the
                    // output; short rows (where a row's partial register would cost as much as
                    // the row) are taken as one stretch of lanes over the strip, the dropped
                    // columns too, then copied out.
                    let bv = bv.unwrap_or(splat(-0.0));
                    let add_b = crate::arch::inlined(
                        #[inline(always)]
                        move |v: Lane| v + bv,
                    );
                    match res {
                        None if out_w < super::ROW_LANES * LANES => {
                            map_act_in_place(fused, run, add_b);
                            for (oh, yr) in y_s.chunks_exact_mut(out_w).enumerate() {
                                simd::copy(&run[oh * lay.cols..][..out_w], yr);
                            }
                        }
                        None => {
                            for (oh, yr) in y_s.chunks_exact_mut(out_w).enumerate() {
                                map_act(fused, &run[oh * lay.cols..][..out_w], yr, add_b);
                            }
                        }
                        Some(res) => {
                            for (oh, yr) in y_s.chunks_exact_mut(out_w).enumerate() {
                                zip_map_act(
                                    fused,
                                    &run[oh * lay.cols..][..out_w],
                                    &res[(r0 + oh) * out_w..][..out_w],
                                    yr,
                                    #[inline(always)]
                                    |v, r| (v + bv) + r,
                                );
                            }
                        }
                    }
                    if let Some(a) = after {
                        crate::kernels::activation::activation_in_place(a, y_s);
                    }
                }
            }
            Ok(())
        },
    )
}

/// The input gradient. At stride 1 (and padding within the kernel's reach) the forward sweep of
/// the zero-padded output gradient with the flipped kernel; otherwise the adjoint of the forward
/// sweep: the output gradient's rows laid out as the forward pass's run (the dropped columns
/// zero), each tap's run added into a phased input gradient,
/// `grad[offs[t] + j] += w[t] · dy_run[j]`, taps in order, and the image's places read out of the
/// phases.
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
    let kk = g.k_h() * g.k_w();
    let p = g.params();
    let slot = slot_len(g);
    let planes = g.n() * c_in;
    if in_plane == 0 {
        return Ok(());
    }
    let groups = par::groups(planes, work(g))
        .min(ws.len() / slot.max(1))
        .max(1);
    let kern = [g.k_h(), g.k_w()];
    // The stride-1 sweep, or the adjoint over the forward layout.
    let (lay, flip) = match bwd_layout(g) {
        Some(l) => (l, true),
        None => (fwd_layout(g), false),
    };
    let taps = Taps::new(lay, kern, p.dilation, flip);
    par::for_each_group(
        planes,
        groups,
        Items(dx, in_plane),
        ws,
        slot,
        #[inline(always)]
        |r, Items(dx, _), ws| {
            let (pad, run) = ws.split_at_mut(lay.len());
            let run = &mut run[..lay.out[0] * lay.cols + MAX_LANES];
            if flip {
                // The border stays zero while `fill` writes gradient after gradient.
                lay.zero(pad);
            } else {
                // The run's dropped columns stay zero; the phased gradient is zeroed per plane.
                run.fill(0.0);
            }
            let run_len = lay.run_len();
            for (pi, dx_p) in r.zip(dx.chunks_exact_mut(in_plane)) {
                let (i, c) = (pi / c_in, pi % c_in);
                if !flip {
                    lay.zero(pad);
                }
                for o in c * m..(c + 1) * m {
                    let dy_p = &dy[(i * c_out + o) * out_plane..][..out_plane];
                    let w_o = &w[o * kk..][..kk];
                    if flip {
                        // dx (+)= the flipped-kernel sweep over the padded gradient.
                        let run = &mut run[..run_len];
                        lay.fill(dy_p, g.out_h(), out_w, pad);
                        taps.sweep(pad, w_o, run);
                        let first = o == c * m && accum == Accum::Replace;
                        for (ih, xr) in dx_p.chunks_exact_mut(in_w).enumerate() {
                            let v = &run[ih * lay.cols..][..in_w];
                            if first {
                                simd::copy(v, xr);
                            } else {
                                simd::add_into(v, xr);
                            }
                        }
                        continue;
                    }
                    for (oh, drow) in dy_p.chunks_exact(out_w).enumerate() {
                        simd::copy(drow, &mut run[oh * lay.cols..][..out_w]);
                    }
                    // Whole lanes: the run's slack is zero, the plane's slack takes the sums.
                    let run_len = run_len.next_multiple_of(LANES);
                    let dy_run = &run[..run_len];
                    taps.each(
                        #[inline(always)]
                        |t, off| {
                            let wv = splat(w_o[t]);
                            simd::map_in_place_zip(
                                dy_run,
                                &mut pad[off..][..run_len],
                                #[inline(always)]
                                |d, acc| d.mul_add(wv, acc),
                            );
                        },
                    );
                }
                if !flip {
                    lay.read_out(pad, g.in_h(), in_w, dx_p, accum);
                }
            }
            Ok(())
        },
    )
}

/// Most taps handled by the lane accumulators of the weight gradient at once.
const MAX_TAPS: usize = 25;

/// Lane `t` of the result (for `t < offs.len() <= T`) is
/// `Σ_{oh, ow} pad[oh·row_step + offs[t] + ow] · dy[oh, ow]`: rows in order, lanes left to
/// right, one fused multiply-add per tap, the tail of each row masked by zero-padding the gradient
/// lane. With `T` and the number of taps known (nine, the 3x3 case) the accumulators are registers
/// rather than an indexed array in memory; either way the sums are the same bits.
#[inline(always)]
fn tap_dots<const T: usize>(
    pad: &[f32],
    dy_p: &[f32],
    out_w: usize,
    row_step: usize,
    offs: &[usize],
) -> [Lane; T] {
    let mut acc = [splat(0.0); T];
    let acc_t = &mut acc[..offs.len()];
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
            for (a, &off) in acc_t.iter_mut().zip(offs) {
                let at = base + off + ow;
                let v = Lane::new(pad[at..at + LANES].try_into().expect("a lane"));
                *a = v.mul_add(dv, *a);
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
        |r, Items(dw, _), ws| {
            let pad = &mut ws[..lay.len()];
            lay.zero(pad);
            for (o, dw_o) in r.zip(dw.chunks_exact_mut(kk)) {
                let mut total = [0.0f64; MAX_TAPS];
                for t0 in (0..kk).step_by(MAX_TAPS) {
                    let taps = MAX_TAPS.min(kk - t0);
                    let mut offs = [0usize; MAX_TAPS];
                    for (t, off) in offs[..taps].iter_mut().enumerate() {
                        let (pp, q) = ((t0 + t) / kw, (t0 + t) % kw);
                        *off = lay.offset(pp * p.dilation[0], q * p.dilation[1]);
                    }
                    for i in 0..n {
                        lay.fill(
                            &x[(i * c_in + o / m) * in_plane..][..in_plane],
                            g.in_h(),
                            g.in_w(),
                            pad,
                        );
                        let dy_p = &dy[(i * c_out + o) * out_plane..][..out_plane];
                        let mut acc = [splat(0.0); MAX_TAPS];
                        if taps == 9 {
                            // Nine taps (3x3, the common case): nine accumulators that stay in
                            // registers.
                            let a = tap_dots::<9>(pad, dy_p, out_w, lay.cols, &offs[..9]);
                            acc[..9].copy_from_slice(&a);
                        } else {
                            acc = tap_dots::<MAX_TAPS>(pad, dy_p, out_w, lay.cols, &offs[..taps]);
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
