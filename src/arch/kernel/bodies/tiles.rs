//! The three register tiles: GEMM (`C = alpha·A·B + beta·C`), convolution (taps as constant
//! offsets into the prepared input) and weight gradient (taps × output channels).

#![allow(unsafe_code)]
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::shared::{fma_rows, store_rows, store_scaled, unrolled_by_4};
use crate::arch::kernel::Vector;

/// `C[i, j] = alpha·Σ_{p<k} a[p·MR + i]·b[p·NR + j] + beta·C[i, j]` for `i < MR`, `j < NR = NV·N`
/// (row `i` of `C` at `c[i·rs..]`; not read when `beta == 0`).
///
/// # Safety
/// The CPU supports `V`'s instruction set; `a[..k·MR]` and `b[..k·NR]` are readable; `c[i·rs +
/// j]` is readable and writable for `i < MR`, `j < NR`.
#[inline(always)]
pub(crate) unsafe fn gemm_body<V: Vector, const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rs: usize,
) {
    let nr = NV * V::N;
    // SAFETY: the CPU's support is the caller's contract; prefetches are hints.
    let mut acc = [[unsafe { V::zero() }; NV]; MR];
    for i in 0..MR {
        // SAFETY: prefetching is only a hint; the addresses are inside the tile. Start fetching
        // the C tile now: it is read (beta != 0) and written after the loop, and its rows are
        // usually far apart in a large matrix.
        unsafe {
            V::prefetch(c.add(i * rs));
            V::prefetch(c.add(i * rs + nr - 1));
        }
    }
    unrolled_by_4(
        k,
        #[inline(always)]
        |p| {
            // SAFETY: p < k, so a[p·MR..][..MR] and b[p·NR..][..NR] are readable.
            unsafe {
                let ap = a.add(p * MR);
                fma_rows(&mut acc, |i| *ap.add(i), b.add(p * nr));
            }
        },
    );
    // SAFETY: the C tile is the caller's contract.
    unsafe { store_scaled(acc, alpha, beta, c, rs) };
}

/// `C[i, j] = (add ? C[i, j] : 0) + Σ_{t<k} a[t·MR + i] · x[off[t] + j]` for `i < MR`,
/// `j < NR = NV·N` (row `i` of `C` at `c[i·rs..]`).
///
/// # Safety
/// The CPU supports `V`'s instruction set; `off[..k]`, `a[..k·MR]` and `x[off[t]..][..NR]` for
/// every `t < k` are readable; the C tile is readable and writable.
#[inline(always)]
pub(crate) unsafe fn conv_body<V: Vector, const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    x: *const f32,
    off: *const u32,
    add: bool,
    c: *mut f32,
    rs: usize,
) {
    // SAFETY: the CPU's support is the caller's contract.
    let mut acc = [[unsafe { V::zero() }; NV]; MR];
    for i in 0..MR {
        // SAFETY: prefetch hints for addresses inside the C tile.
        unsafe { V::prefetch(c.add(i * rs)) };
    }
    unrolled_by_4(
        k,
        #[inline(always)]
        |t| {
            // SAFETY: t < k: off[t], a[t·MR..][..MR] and x[off[t]..][..NR] are readable.
            unsafe {
                let at = a.add(t * MR);
                fma_rows(&mut acc, |i| *at.add(i), x.add(*off.add(t) as usize));
            }
        },
    );
    // SAFETY: the C tile is the caller's contract.
    unsafe { store_rows(acc, c, rs, add) };
}

/// `C[i, j] += Σ_{s<len} x[xo[i] + s] · b[s·bs + j]` for `i < MR`, `j < NR = NV·N` (row `i` of
/// `C` at `c[i·rs..]`).
///
/// # Safety
/// The CPU supports `V`'s instruction set; `xo[..MR]` is readable, and so are `x[xo[i]..][..len]`
/// for every `i < MR` and `b[s·bs..][..NR]` for every `s < len`; the C tile is readable and
/// writable.
#[inline(always)]
pub(crate) unsafe fn wgrad_body<V: Vector, const MR: usize, const NV: usize>(
    len: usize,
    x: *const f32,
    xo: *const usize,
    b: *const f32,
    bs: usize,
    c: *mut f32,
    rs: usize,
) {
    // SAFETY: xo[..MR] is readable and each x[xo[i]..] in bounds (the caller's contract).
    let xs: [*const f32; MR] = std::array::from_fn(|i| unsafe { x.add(*xo.add(i)) });
    // SAFETY: the CPU's support is the caller's contract.
    let mut acc = [[unsafe { V::zero() }; NV]; MR];
    unrolled_by_4(
        len,
        #[inline(always)]
        |s| {
            // SAFETY: s < len: x_i[s] and b[s·bs..][..NR] are readable.
            unsafe { fma_rows(&mut acc, |i| *xs[i].add(s), b.add(s * bs)) };
        },
    );
    // SAFETY: the C tile is the caller's contract.
    unsafe { store_rows(acc, c, rs, true) };
}
