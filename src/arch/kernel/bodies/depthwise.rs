//! The depthwise convolution row: one channel's taps over a row of output pixels, a register of
//! pixels at a time.

#![allow(unsafe_code)]
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::arch::kernel::{MAX_LANES, Vector};

/// `out[j] (+)= Σ_{p<kh, q<kw} w(p, q) · src[(top + p·d_h)·cols + j + q·d_w]` for `j < n`
/// (`w(p, q) = w[p·kw + q]`, or rotated by 180° if `flip`), four registers of outputs at a time.
///
/// # Safety
/// The CPU supports `V`'s instruction set; `w[..kh·kw]` is readable, and so is
/// `src[(top + p·d_h)·cols + q·d_w ..][..ceil_N(n)]` for every tap; `out[..n]` is writable.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn depthwise_body<V: Vector>(
    src: *const f32,
    cols: usize,
    top: usize,
    d: [usize; 2],
    w: *const f32,
    k: [usize; 2],
    flip: bool,
    out: *mut f32,
    n: usize,
    add: bool,
) {
    let [kh, kw] = k;
    let tap = |p: usize, q: usize| {
        let i = if flip {
            (kh - 1 - p) * kw + (kw - 1 - q)
        } else {
            p * kw + q
        };
        // SAFETY: i < kh·kw, readable (the caller's contract).
        unsafe { V::splat(*w.add(i)) }
    };
    // Up to four registers of outputs at once (independent accumulators hide the latency of
    // the `kh·kw` dependent fused multiply-adds); the last register of a row may be partial.
    let mut ow = 0;
    while ow < n {
        // SAFETY: the caller's contract covers every read and write of the block.
        ow += unsafe {
            match (n - ow).div_ceil(V::N) {
                1 => depthwise_block::<V, 1>(src, cols, top, d, &tap, k, out, ow, n, add),
                2 => depthwise_block::<V, 2>(src, cols, top, d, &tap, k, out, ow, n, add),
                3 => depthwise_block::<V, 3>(src, cols, top, d, &tap, k, out, ow, n, add),
                _ => depthwise_block::<V, 4>(src, cols, top, d, &tap, k, out, ow, n, add),
            }
        };
    }
}

/// `NB` registers of outputs of [`depthwise_body`] from column `ow`; returns how many outputs it
/// wrote (`NB·N`, or fewer at the row's end).
///
/// # Safety
/// As [`depthwise_body`], for the outputs `ow..min(ow + NB·N, n)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn depthwise_block<V: Vector, const NB: usize>(
    src: *const f32,
    cols: usize,
    top: usize,
    d: [usize; 2],
    tap: &impl Fn(usize, usize) -> V,
    k: [usize; 2],
    out: *mut f32,
    ow: usize,
    n: usize,
    add: bool,
) -> usize {
    // SAFETY: every pointer range is the caller's contract.
    unsafe {
        let mut acc = [V::zero(); NB];
        for p in 0..k[0] {
            let row = src.add((top + p * d[0]) * cols + ow);
            for q in 0..k[1] {
                let (wv, r) = (tap(p, q), row.add(q * d[1]));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = V::load(r.add(V::N * i)).mul_add(wv, *a);
                }
            }
        }
        let end = (ow + NB * V::N).min(n);
        for (i, a) in acc.into_iter().enumerate() {
            let at = ow + V::N * i;
            let o = out.add(at);
            if at + V::N <= end {
                let v = if add { V::load(o).add(a) } else { a };
                v.store(o);
            } else {
                let mut t = [0.0f32; MAX_LANES];
                a.store(t.as_mut_ptr());
                for (j, &v) in t.iter().enumerate().take(end - at) {
                    let o = o.add(j);
                    *o = if add { *o + v } else { v };
                }
            }
        }
        end - ow
    }
}
