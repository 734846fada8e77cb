//! Slices as lanes: maps, in-place updates and reductions that take a lane closure, and the
//! pooling window scans.
//!
//! Every loop hands its closure whole lanes and then the tail (fewer than [`LANES`] elements)
//! copied into one padded lane, so every element goes through the same code. The maps take **two
//! adjacent lanes per iteration**: the AVX-512 variant of `dispatch` compiles the pair as one
//! 16-float register (the AVX2 variant as two 8-float ones), which made the exp-based activations
//! 1.7–1.9x faster there; every element still goes through the same operations, so results stay
//! bit-identical across variants. Each iteration calls [`loop_barrier`], which keeps the loop
//! vectorizer from re-vectorising the lane code.

use super::lane::{Ints, LANES, Lane, bits, gt, is_nan, select, splat, tail_lane};
use crate::arch::inlined;
use crate::arch::stream::{fence, loop_barrier, store8, streams_to};

/// `y[i] = f(x[i])`.
#[inline(always)]
pub(crate) fn map(x: &[f32], y: &mut [f32], f: impl Fn(Lane) -> Lane) {
    debug_assert_eq!(x.len(), y.len());
    let ((xc, xt), (yc, yt)) = (x.as_chunks::<LANES>(), y.as_chunks_mut::<LANES>());
    let ((xp, xr), (yp, yr)) = (xc.as_chunks::<2>(), yc.as_chunks_mut::<2>());
    for (x, y) in xp.iter().zip(yp) {
        loop_barrier();
        *y = [f(Lane(x[0])).to_array(), f(Lane(x[1])).to_array()];
    }
    for (x, y) in xr.iter().zip(yr) {
        *y = f(Lane(*x)).to_array();
    }
    if !xt.is_empty() {
        let r = f(tail_lane(xt, 0.0)).to_array();
        yt.copy_from_slice(&r[..xt.len()]);
    }
}

/// `y = x` for short runs (a plane's rows): in lanes, the last lane overlapping the one before;
/// runs shorter than a lane element by element. A library `memcpy` call per short row costs more
/// than the copy.
#[inline(always)]
pub(crate) fn copy(x: &[f32], y: &mut [f32]) {
    let n = x.len();
    assert_eq!(n, y.len(), "copy lengths");
    if n < LANES {
        for (y, &x) in y.iter_mut().zip(x) {
            // Keeps the loop a loop (LLVM would make it a `memcpy` call).
            loop_barrier();
            *y = x;
        }
        return;
    }
    let (xc, _) = x.as_chunks::<LANES>();
    let (yc, _) = y.as_chunks_mut::<LANES>();
    for (x, y) in xc.iter().zip(yc) {
        loop_barrier();
        *y = *x;
    }
    if !n.is_multiple_of(LANES) {
        let last: [f32; LANES] = x[n - LANES..].try_into().expect("a lane");
        y[n - LANES..].copy_from_slice(&last);
    }
}

/// `y += x` for short runs (a plane's rows): in lanes, the tail element by element (not through
/// a padded lane on the stack, which costs more than a short row's sums).
#[inline(always)]
pub(crate) fn add_into(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "add_into lengths");
    let (xc, xt) = x.as_chunks::<LANES>();
    let (yc, yt) = y.as_chunks_mut::<LANES>();
    for (x, y) in xc.iter().zip(yc) {
        loop_barrier();
        *y = (Lane(*y) + Lane(*x)).to_array();
    }
    for (y, &x) in yt.iter_mut().zip(xt) {
        loop_barrier();
        *y += x;
    }
}

/// `y[i] = f(y[i])`.
#[inline(always)]
pub(crate) fn map_in_place(y: &mut [f32], f: impl Fn(Lane) -> Lane) {
    let (yc, yt) = y.as_chunks_mut::<LANES>();
    let (yp, yr) = yc.as_chunks_mut::<2>();
    for y in yp.iter_mut() {
        loop_barrier();
        *y = [f(Lane(y[0])).to_array(), f(Lane(y[1])).to_array()];
    }
    for y in yr.iter_mut() {
        *y = f(Lane(*y)).to_array();
    }
    if !yt.is_empty() {
        let r = f(tail_lane(yt, 0.0)).to_array();
        let n = yt.len();
        yt.copy_from_slice(&r[..n]);
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub(crate) fn zip_map(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(Lane, Lane) -> Lane) {
    debug_assert!(a.len() == out.len() && b.len() == out.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let ((ap, ar), (bp, br), (op, or)) = (
        ac.as_chunks::<2>(),
        bc.as_chunks::<2>(),
        oc.as_chunks_mut::<2>(),
    );
    for ((a, b), o) in ap.iter().zip(bp).zip(op) {
        loop_barrier();
        *o = [
            f(Lane(a[0]), Lane(b[0])).to_array(),
            f(Lane(a[1]), Lane(b[1])).to_array(),
        ];
    }
    for ((a, b), o) in ar.iter().zip(br).zip(or) {
        *o = f(Lane(*a), Lane(*b)).to_array();
    }
    if !at.is_empty() {
        let r = f(tail_lane(at, 0.0), tail_lane(bt, 0.0)).to_array();
        ot.copy_from_slice(&r[..at.len()]);
    }
}

/// [`zip_map`] whose stores bypass the cache (non-temporal stores, on x86-64 when `out` is
/// 16-byte aligned): for an output much larger than the cache, which is then written without
/// first being read in. The same values; a fence at the end orders the stores before whatever
/// follows (a fork-join's signal to the thread that reads them).
#[inline(always)]
pub(crate) fn zip_map_stream(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(Lane, Lane) -> Lane,
) {
    if streams_to(out) {
        debug_assert!(a.len() == out.len() && b.len() == out.len());
        let (ac, at) = a.as_chunks::<LANES>();
        let (bc, bt) = b.as_chunks::<LANES>();
        let (oc, ot) = out.as_chunks_mut::<LANES>();
        for ((a, b), o) in ac.iter().zip(bc).zip(oc) {
            loop_barrier();
            store8(o, &f(Lane(*a), Lane(*b)).to_array());
        }
        if !at.is_empty() {
            let r = f(tail_lane(at, 0.0), tail_lane(bt, 0.0)).to_array();
            ot.copy_from_slice(&r[..at.len()]);
        }
        fence();
        return;
    }
    zip_map(a, b, out, f)
}

/// `out[i] = f(a[i], b[i], out[i])`: the form of every backward pass that may accumulate into
/// its gradient output.
#[inline(always)]
pub(crate) fn zip_map_acc(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(Lane, Lane, Lane) -> Lane,
) {
    debug_assert!(a.len() == out.len() && b.len() == out.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let ((ap, ar), (bp, br), (op, or)) = (
        ac.as_chunks::<2>(),
        bc.as_chunks::<2>(),
        oc.as_chunks_mut::<2>(),
    );
    for ((a, b), o) in ap.iter().zip(bp).zip(op) {
        loop_barrier();
        *o = [
            f(Lane(a[0]), Lane(b[0]), Lane(o[0])).to_array(),
            f(Lane(a[1]), Lane(b[1]), Lane(o[1])).to_array(),
        ];
    }
    for ((a, b), o) in ar.iter().zip(br).zip(or) {
        *o = f(Lane(*a), Lane(*b), Lane(*o)).to_array();
    }
    if !at.is_empty() {
        let r = f(tail_lane(at, 0.0), tail_lane(bt, 0.0), tail_lane(ot, 0.0)).to_array();
        let n = at.len();
        ot.copy_from_slice(&r[..n]);
    }
}

/// `out[i] = f(a[i], b[i], c[i], out[i])`.
#[inline(always)]
pub(crate) fn zip3_map_acc(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    out: &mut [f32],
    f: impl Fn(Lane, Lane, Lane, Lane) -> Lane,
) {
    debug_assert!(a.len() == out.len() && b.len() == out.len() && c.len() == out.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (cc, ct) = c.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let ((ap, ar), (bp, br), (cp, cr), (op, or)) = (
        ac.as_chunks::<2>(),
        bc.as_chunks::<2>(),
        cc.as_chunks::<2>(),
        oc.as_chunks_mut::<2>(),
    );
    for (((a, b), c), o) in ap.iter().zip(bp).zip(cp).zip(op) {
        loop_barrier();
        *o = [
            f(Lane(a[0]), Lane(b[0]), Lane(c[0]), Lane(o[0])).to_array(),
            f(Lane(a[1]), Lane(b[1]), Lane(c[1]), Lane(o[1])).to_array(),
        ];
    }
    for (((a, b), c), o) in ar.iter().zip(br).zip(cr).zip(or) {
        *o = f(Lane(*a), Lane(*b), Lane(*c), Lane(*o)).to_array();
    }
    if !at.is_empty() {
        let r = f(
            tail_lane(at, 0.0),
            tail_lane(bt, 0.0),
            tail_lane(ct, 0.0),
            tail_lane(ot, 0.0),
        )
        .to_array();
        let n = at.len();
        ot.copy_from_slice(&r[..n]);
    }
}

/// A fused in-place update over a gradient `g` and `K` state slices (parameters first): for each
/// lane position, `f(g, &mut [s0, s1, …])` updates the states' lanes in place. The tail is padded
/// with zeros, computed the same way, and only its real elements written back.
#[inline(always)]
pub(crate) fn update<const K: usize>(
    g: &[f32],
    st: [&mut [f32]; K],
    f: impl Fn(Lane, &mut [Lane; K]),
) {
    debug_assert!(st.iter().all(|s| s.len() == g.len()));
    let (gc, gt) = g.as_chunks::<LANES>();
    let mut parts = st.map(|s| s.as_chunks_mut::<LANES>());
    for (j, gv) in gc.iter().enumerate() {
        loop_barrier();
        let mut lanes: [Lane; K] = std::array::from_fn(|k| Lane(parts[k].0[j]));
        f(Lane(*gv), &mut lanes);
        for (k, l) in lanes.iter().enumerate() {
            parts[k].0[j] = l.to_array();
        }
    }
    if !gt.is_empty() {
        let mut lanes: [Lane; K] = std::array::from_fn(|k| tail_lane(parts[k].1, 0.0));
        f(tail_lane(gt, 0.0), &mut lanes);
        for (k, l) in lanes.iter().enumerate() {
            let t = &mut parts[k].1;
            let len = t.len();
            t.copy_from_slice(&l.to_array()[..len]);
        }
    }
}

/// Folds `x` with `f` into four independent lane accumulators (tail padded with `neutral`), then
/// combines them as `(a0 ∘ a1) ∘ (a2 ∘ a3)`. The order depends only on `x.len()`.
///
/// The accumulators are named variables, not an indexed array: an array indexed by the loop
/// counter would live in memory.
#[inline(always)]
fn fold4(x: &[f32], neutral: f32, f: impl Fn(Lane, Lane) -> Lane) -> Lane {
    let (xc, xt) = x.as_chunks::<LANES>();
    let n = splat(neutral);
    let (mut a0, mut a1, mut a2, mut a3) = (n, n, n, n);
    let (quads, rest) = xc.as_chunks::<4>();
    for q in quads {
        a0 = f(a0, Lane(q[0]));
        a1 = f(a1, Lane(q[1]));
        a2 = f(a2, Lane(q[2]));
        a3 = f(a3, Lane(q[3]));
    }
    if let Some(c) = rest.first() {
        a0 = f(a0, Lane(*c));
    }
    if let Some(c) = rest.get(1) {
        a1 = f(a1, Lane(*c));
    }
    if let Some(c) = rest.get(2) {
        a2 = f(a2, Lane(*c));
    }
    if !xt.is_empty() {
        a3 = f(a3, tail_lane(xt, neutral));
    }
    f(f(a0, a1), f(a2, a3))
}

/// Two-accumulator fold over `chunks` lane positions: `step(acc, j)` folds position `j` into an
/// accumulator (even positions into the first, odd into the second), `tail` folds the padded
/// tail into the second; returns the sum of both accumulators' elements.
#[inline(always)]
fn fold2(
    chunks: usize,
    step: impl Fn(Lane, usize) -> Lane,
    tail: impl FnOnce(Lane) -> Lane,
) -> f32 {
    let (mut a0, mut a1) = (Lane::ZERO, Lane::ZERO);
    let mut j = 0;
    while j + 1 < chunks {
        a0 = step(a0, j);
        a1 = step(a1, j + 1);
        j += 2;
    }
    if j < chunks {
        a0 = step(a0, j);
    }
    (a0 + tail(a1)).reduce_add()
}

/// `Σ x[i]` in `f32`, in an order that depends only on `x.len()`.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    fold4(
        x,
        0.0,
        #[inline(always)]
        |a, b| a + b,
    )
    .reduce_add()
}

/// `Σ (x[i] - m)²`.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    let mv = splat(m);
    let (xc, xt) = x.as_chunks::<LANES>();
    let sq = inlined(
        #[inline(always)]
        |acc: Lane, v: Lane| {
            let d = v - mv;
            d.mul_add(d, acc)
        },
    );
    fold2(
        xc.len(),
        #[inline(always)]
        |acc, j| sq(acc, Lane(xc[j])),
        #[inline(always)]
        |acc| {
            if xt.is_empty() {
                acc
            } else {
                sq(acc, tail_lane(xt, m))
            }
        },
    )
}

/// `Σ a[i] * b[i]`.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    fold2(
        ac.len().min(bc.len()),
        #[inline(always)]
        |acc, j| Lane(ac[j]).mul_add(Lane(bc[j]), acc),
        #[inline(always)]
        |acc| {
            if at.is_empty() {
                acc
            } else {
                tail_lane(at, 0.0).mul_add(tail_lane(bt, 0.0), acc)
            }
        },
    )
}

/// `Σ f(a[i], b[i])` with two lane accumulators; the tail is padded with zeros, so `f(0, 0)` must
/// be 0.
#[inline(always)]
pub(crate) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(Lane, Lane) -> Lane) -> f32 {
    sum_zip_padded(a, b, (0.0, 0.0), f)
}

/// [`sum_zip`] with the tail padded by `pad`; `f(pad.0, pad.1)` must be 0.
#[inline(always)]
pub(crate) fn sum_zip_padded(
    a: &[f32],
    b: &[f32],
    pad: (f32, f32),
    f: impl Fn(Lane, Lane) -> Lane,
) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    fold2(
        ac.len().min(bc.len()),
        #[inline(always)]
        |acc, j| acc + f(Lane(ac[j]), Lane(bc[j])),
        #[inline(always)]
        |acc| {
            if at.is_empty() {
                acc
            } else {
                acc + f(tail_lane(at, pad.0), tail_lane(bt, pad.1))
            }
        },
    )
}

/// `Σ f(a[i], b[i], c[i])`; the tail is padded with zeros, so `f(0, 0, 0)` must be 0.
#[inline(always)]
pub(crate) fn sum_zip3(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(Lane, Lane, Lane) -> Lane,
) -> f32 {
    debug_assert!(a.len() == b.len() && a.len() == c.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (cc, ct) = c.as_chunks::<LANES>();
    fold2(
        ac.len().min(bc.len()).min(cc.len()),
        #[inline(always)]
        |acc, j| acc + f(Lane(ac[j]), Lane(bc[j]), Lane(cc[j])),
        #[inline(always)]
        |acc| {
            if at.is_empty() {
                acc
            } else {
                acc + f(tail_lane(at, 0.0), tail_lane(bt, 0.0), tail_lane(ct, 0.0))
            }
        },
    )
}

/// `Σ f(x[i])`; the tail is padded with `pad`, and `f(pad)` must be 0.
#[inline(always)]
pub(crate) fn sum_map(x: &[f32], pad: f32, f: impl Fn(Lane) -> Lane) -> f32 {
    let (xc, xt) = x.as_chunks::<LANES>();
    fold2(
        xc.len(),
        #[inline(always)]
        |acc, j| acc + f(Lane(xc[j])),
        #[inline(always)]
        |acc| {
            if xt.is_empty() {
                acc
            } else {
                acc + f(tail_lane(xt, pad))
            }
        },
    )
}

/// `max x[i]` ignoring NaN (`-inf` for an empty slice). Callers that must propagate NaN get it
/// from the arithmetic that follows (`exp(NaN - max)` is NaN).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let m = fold4(
        x,
        f32::NEG_INFINITY,
        #[inline(always)]
        |a, b| a.fast_max(b),
    )
    .to_array();
    m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `y[i] = f(x[i], y[i])`.
#[inline(always)]
pub(crate) fn map_in_place_zip(x: &[f32], y: &mut [f32], f: impl Fn(Lane, Lane) -> Lane) {
    debug_assert_eq!(x.len(), y.len());
    let (xc, xt) = x.as_chunks::<LANES>();
    let (yc, yt) = y.as_chunks_mut::<LANES>();
    let ((xp, xr), (yp, yr)) = (xc.as_chunks::<2>(), yc.as_chunks_mut::<2>());
    for (x, y) in xp.iter().zip(yp) {
        loop_barrier();
        *y = [
            f(Lane(x[0]), Lane(y[0])).to_array(),
            f(Lane(x[1]), Lane(y[1])).to_array(),
        ];
    }
    for (x, y) in xr.iter().zip(yr) {
        *y = f(Lane(*x), Lane(*y)).to_array();
    }
    if !xt.is_empty() {
        let r = f(tail_lane(xt, 0.0), tail_lane(yt, 0.0)).to_array();
        let n = xt.len();
        yt.copy_from_slice(&r[..n]);
    }
}

/// Max pooling of up to eight outputs at once. Lane `l` covers the window whose first element is
/// `x[base + l * step]`, with elements at `offs` from it in row-major order. Returns each lane's
/// maximum and its index into `x`: ties go to the first offset, a NaN wins (the last NaN, as
/// PyTorch). Lanes from `lanes` on repeat lane `lanes - 1` (`1 <= lanes <= 8`).
///
/// Comparisons are lane blends, not branches: on real data their outcome is random, and a
/// mispredicted branch per element costs more than the rest of the loop.
#[inline(always)]
pub(crate) fn window_max(
    x: &[f32],
    base: usize,
    step: usize,
    lanes: usize,
    offs: &[usize],
) -> ([f32; LANES], [i32; LANES]) {
    let starts: [usize; LANES] = std::array::from_fn(|l| base + l.min(lanes - 1) * step);
    let start_idx = Ints(starts.map(|s| s as i32));
    let mut best = splat(f32::NEG_INFINITY);
    let mut idx = start_idx + Ints::splat(offs.first().map_or(0, |&o| o as i32));
    for &off in offs {
        let v = Lane(std::array::from_fn(|l| x[starts[l] + off]));
        let take = gt(v, best) | is_nan(v);
        best = select(take, v, best);
        let take = bits(take);
        idx = (take & (start_idx + Ints::splat(off as i32))) | (!take & idx);
    }
    (best.to_array(), idx.0)
}

/// [`window_max`] for eight 2x2 windows at stride 2 along the row: lane `l`'s window is
/// `r0[2l], r0[2l + 1], r1[2l], r1[2l + 1]` (in that order), where `r0` starts at index `first`
/// of `x` and `r1` one row (`in_w`) below it. The same comparisons in the same order as
/// `window_max(x, first, 2, 8, &[0, 1, in_w, in_w + 1])`, one window at a time with the offsets
/// known at compile time (faster here than the lane blends, whose masks the compiler moves
/// between mask and vector registers).
#[inline(always)]
pub(crate) fn window_max_2x2(
    r0: &[f32; 2 * LANES],
    r1: &[f32; 2 * LANES],
    first: i32,
    in_w: i32,
) -> ([f32; LANES], [i32; LANES]) {
    let mut best = [0.0f32; LANES];
    let mut idx = [0i32; LANES];
    for (l, (p0, p1)) in r0
        .as_chunks::<2>()
        .0
        .iter()
        .zip(r1.as_chunks::<2>().0)
        .enumerate()
    {
        let cands = [(p0[0], 0), (p0[1], 1), (p1[0], in_w), (p1[1], in_w + 1)];
        let (mut b, mut o) = (f32::NEG_INFINITY, 0);
        for (v, off) in cands {
            let take = v > b || v.is_nan();
            b = if take { v } else { b };
            o = if take { off } else { o };
        }
        best[l] = b;
        idx[l] = first + 2 * l as i32 + o;
    }
    (best, idx)
}

/// Lane `r` = `x[(first + min(r, rows − 1))·stride + col]`: one column of up to eight rows of a
/// row-major matrix (rows past `rows` repeat the last one).
#[inline(always)]
pub(crate) fn column(x: &[f32], first: usize, rows: usize, stride: usize, col: usize) -> Lane {
    Lane(std::array::from_fn(|r| {
        x[(first + r.min(rows - 1)) * stride + col]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_cover_every_tail_length() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 65] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((sum(&x) as f64 - s).abs() < 1e-5);
            assert!((dot(&x, &y) as f64 - d).abs() < 1e-5);
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m);
            let mean = if n > 0 { s / n as f64 } else { 0.0 };
            let v: f64 = x.iter().map(|&a| (a as f64 - mean).powi(2)).sum();
            assert!((sum_sq_dev(&x, mean as f32) as f64 - v).abs() < 1e-5);
        }
    }
}
