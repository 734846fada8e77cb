//! The depthwise convolution sweep: one channel's taps over a run of output pixels, a register of
//! pixels at a time. Each tap is an offset into the source: the caller lays a plane out so that
//! every tap reads a contiguous run (see `kernels::conv::depthwise`).

#![allow(unsafe_code)]
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::arch::kernel::{MAX_LANES, Vector};

/// `out[j] (+)= Σ_{t < taps} w[t] · src[offs[t] + j]` for `j < n`, the taps summed in order with
/// one fused multiply-add each, four registers of outputs at a time.
///
/// # Safety
/// The CPU supports `V`'s instruction set; `w[..taps]` and `offs[..taps]` are readable, and so is
/// `src[offs[t]..][..ceil_N(n)]` for every tap; `out[..n]` is writable.
#[inline(always)]
pub(crate) unsafe fn depthwise_body<V: Vector>(
    src: *const f32,
    offs: *const usize,
    w: *const f32,
    taps: usize,
    out: *mut f32,
    n: usize,
    add: bool,
) {
    // Up to four registers of outputs at once (independent accumulators hide the latency of the
    // dependent fused multiply-adds); the last register may be partial.
    let mut ow = 0;
    while ow < n {
        // SAFETY: the caller's contract covers every read and write of the block.
        ow += unsafe {
            match (n - ow).div_ceil(V::N) {
                1 => depthwise_block::<V, 1>(src, offs, w, taps, out, ow, n, add),
                2 => depthwise_block::<V, 2>(src, offs, w, taps, out, ow, n, add),
                3 => depthwise_block::<V, 3>(src, offs, w, taps, out, ow, n, add),
                _ => depthwise_block::<V, 4>(src, offs, w, taps, out, ow, n, add),
            }
        };
    }
}

/// `NB` registers of outputs of [`depthwise_body`] from output `ow`; returns how many outputs it
/// wrote (`NB·N`, or fewer at the end).
///
/// # Safety
/// As [`depthwise_body`], for the outputs `ow..min(ow + NB·N, n)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn depthwise_block<V: Vector, const NB: usize>(
    src: *const f32,
    offs: *const usize,
    w: *const f32,
    taps: usize,
    out: *mut f32,
    ow: usize,
    n: usize,
    add: bool,
) -> usize {
    // SAFETY: every pointer range is the caller's contract.
    unsafe {
        let mut acc = [V::zero(); NB];
        let at = src.add(ow);
        for t in 0..taps {
            let (wv, r) = (V::splat(*w.add(t)), at.add(*offs.add(t)));
            for (i, a) in acc.iter_mut().enumerate() {
                *a = V::load(r.add(V::N * i)).mul_add(wv, *a);
            }
        }
        let end = (ow + NB * V::N).min(n);
        for (i, a) in acc.into_iter().enumerate() {
            let at = ow + V::N * i;
            let o = out.add(at);
            if at + V::N <= end {
                let v = if add { V::load(o).add(a) } else { a };
                v.store(o);
            } else if at < end {
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
