//! What several bodies share: the register-tile rows of the GEMM, convolution and
//! weight-gradient tiles (the fused multiply-add of one step into an `MR x NV` accumulator, and
//! its stores), and the prefetch of the input rows a plane pass reads next.

#![allow(unsafe_code)]
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::arch::kernel::Vector;

/// Runs `step(i)` for `i` in `0..n`, unrolled by 4 to cut loop overhead.
#[inline(always)]
pub(super) fn unrolled_by_4(n: usize, mut step: impl FnMut(usize)) {
    let mut i = 0;
    while i + 4 <= n {
        step(i);
        step(i + 1);
        step(i + 2);
        step(i + 3);
        i += 4;
    }
    while i < n {
        step(i);
        i += 1;
    }
}

/// The accumulator body every tile family shares, written once: each row `i` of the
/// `MR x NV` register tile gains `broadcast(a_i) · b`, where `b` is one step's `NV` registers.
#[inline(always)]
pub(super) unsafe fn fma_rows<V: Vector, const MR: usize, const NV: usize>(
    acc: &mut [[V; NV]; MR],
    a: impl Fn(usize) -> f32,
    b: *const f32,
) {
    // SAFETY: the caller guarantees `b[..NV·N]` readable and the CPU's support.
    let bv: [V; NV] = std::array::from_fn(
        #[inline(always)]
        |v| unsafe { V::load(b.add(v * V::N)) },
    );
    for (i, row) in acc.iter_mut().enumerate() {
        // SAFETY: as above.
        let av = unsafe { V::splat(a(i)) };
        for (r, &bv) in row.iter_mut().zip(&bv) {
            // SAFETY: as above.
            *r = unsafe { av.mul_add(bv, *r) };
        }
    }
}

/// Writes the register tile to `c` (row `i` at `c[i·rs..][..NV·N]`): `alpha·acc + beta·C`
/// (`C` not read when `beta == 0`).
#[inline(always)]
pub(super) unsafe fn store_scaled<V: Vector, const MR: usize, const NV: usize>(
    acc: [[V; NV]; MR],
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rs: usize,
) {
    // SAFETY: the caller guarantees the tile writable (and readable) and the CPU's support.
    unsafe {
        let (va, vb) = (V::splat(alpha), V::splat(beta));
        for (i, row) in acc.into_iter().enumerate() {
            for (v, r) in row.into_iter().enumerate() {
                let p = c.add(i * rs + v * V::N);
                let mut r = r.mul(va);
                if beta != 0.0 {
                    r = V::load(p).mul_add(vb, r);
                }
                r.store(p);
            }
        }
    }
}

/// Writes the register tile to `c` (row `i` at `c[i·rs..][..NV·N]`), added to what is there if
/// `add`.
#[inline(always)]
pub(super) unsafe fn store_rows<V: Vector, const MR: usize, const NV: usize>(
    acc: [[V; NV]; MR],
    c: *mut f32,
    rs: usize,
    add: bool,
) {
    // SAFETY: the caller guarantees the tile writable (and readable) and the CPU's support.
    unsafe {
        for (i, row) in acc.into_iter().enumerate() {
            for (v, r) in row.into_iter().enumerate() {
                let p = c.add(i * rs + v * V::N);
                let r = if add { r.add(V::load(p)) } else { r };
                r.store(p);
            }
        }
    }
}

/// How many input rows ahead of the rows it pools [`max_pool2_body`](super::pool::max_pool2_body) asks for the lines it will
/// read (the plane is usually a convolution's output, just written and larger than the cache).
pub(super) const PREFETCH_ROWS: usize = 8;

/// Asks for the two lines at `first` of the row pair [`PREFETCH_ROWS`] rows below (the 2x2
/// kernels' next reads of an `in_w`-wide plane `x`).
///
/// # Safety
/// The CPU supports `V`'s instruction set (a prefetch never faults, wherever it points).
#[inline(always)]
pub(super) unsafe fn prefetch_rows_ahead<V: Vector>(x: *const f32, first: usize, in_w: usize) {
    for r in [PREFETCH_ROWS * in_w, (PREFETCH_ROWS + 1) * in_w] {
        let p = x.wrapping_add(first + r);
        // SAFETY: the caller's features; prefetches do not access memory.
        unsafe {
            V::prefetch(p);
            V::prefetch(p.wrapping_add(16));
        }
    }
}
