//! The register tiles: GEMM (`C = alpha·A·B + beta·C`), convolution (taps as constant offsets
//! into the prepared input), weight gradient (taps × output channels), and dot products of rows
//! (`C += A·Bᵀ` over long rows, for weight gradients with few taps).

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

/// Most rows of `A` in one [`dot_body`] tile.
pub(crate) const DOT_ROWS: usize = 3;
/// Most rows of `B` in one [`dot_body`] tile.
pub(crate) const DOT_COLS: usize = 4;
/// Floats of one element's lane sums in [`dot_body`]'s `cv` (the widest register's lanes).
pub(crate) const DOT_LANES: usize = 16;

/// Dot products of rows, `Σ_{s<k} a[i·lda + s] · b[j·ldb + s]` for `i < MR`, `j < NC`, added
/// to running sums kept per lane: the products of whole blocks of [`DOT_LANES`] go to element
/// `(i, j)`'s `DOT_LANES` lane sums at `cv[(i·rs + j)·DOT_LANES..]` (product `s` to lane
/// `s mod DOT_LANES`, held in `W` registers of `N = DOT_LANES / W` lanes), the remaining
/// `k mod DOT_LANES` products, one by one, to `ct[i·rs + j]`. Whoever holds the sums adds the
/// lanes up once, after the last call. Each element's operations are the same whatever the tile
/// around it and whatever the register width: the same bits on every instruction set.
///
/// # Safety
/// The CPU supports `V`'s instruction set and `W·N == DOT_LANES`; `a[i·lda..][..k]` for
/// `i < MR` and `b[j·ldb..][..k]` for `j < NC` are readable; `cv[(i·rs + j)·DOT_LANES..]
/// [..DOT_LANES]` and `ct[i·rs + j]` are readable and writable for `i < MR`, `j < NC`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_body<V: Vector, const W: usize, const MR: usize, const NC: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    cv: *mut f32,
    ct: *mut f32,
    rs: usize,
) {
    debug_assert_eq!(W * V::N, DOT_LANES);
    let at = |i: usize, j: usize, w: usize| (i * rs + j) * DOT_LANES + w * V::N;
    let mut acc: [[[V; W]; NC]; MR] = std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            // SAFETY: the lane sums are readable (the caller's contract).
            std::array::from_fn(|w| unsafe { V::load(cv.add(at(i, j, w))) })
        })
    });
    let whole = k / DOT_LANES * DOT_LANES;
    let mut s = 0;
    while s < whole {
        // SAFETY: s + DOT_LANES <= k: a[i·lda + s..][..DOT_LANES] and b[j·ldb + s..][..DOT_LANES]
        // are readable.
        unsafe {
            let av: [[V; W]; MR] = std::array::from_fn(|i| {
                std::array::from_fn(|w| V::load(a.add(i * lda + s + w * V::N)))
            });
            for j in 0..NC {
                for w in 0..W {
                    let bv = V::load(b.add(j * ldb + s + w * V::N));
                    for (acc_i, av_i) in acc.iter_mut().zip(&av) {
                        acc_i[j][w] = av_i[w].mul_add(bv, acc_i[j][w]);
                    }
                }
            }
        }
        s += DOT_LANES;
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (j, acc_ij) in acc_i.iter().enumerate() {
            // SAFETY: the lane sums and the tail sum are writable (the caller's contract); t < k
            // keeps a[i·lda + t] and b[j·ldb + t] in the rows.
            unsafe {
                for (w, v) in acc_ij.iter().enumerate() {
                    v.store(cv.add(at(i, j, w)));
                }
                let mut tail = *ct.add(i * rs + j);
                for t in whole..k {
                    tail = (*a.add(i * lda + t)).mul_add(*b.add(j * ldb + t), tail);
                }
                *ct.add(i * rs + j) = tail;
            }
        }
    }
}

/// [`dot_body`] for `rows <= DOT_ROWS` rows of `A` and `cols <= DOT_COLS` of `B` (nothing for
/// other counts): in one tile with 16-lane registers, in tiles of at most 2 × 2 with 8-lane
/// ones (each element's sums take two registers there, and 16 hold them all).
///
/// # Safety
/// As [`dot_body`] with `MR = rows`, `NC = cols`; `V::N` is 16 or 8.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_any<V: Vector>(
    rows: usize,
    cols: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    cv: *mut f32,
    ct: *mut f32,
    rs: usize,
) {
    macro_rules! tile {
        ($w:literal, $rows:expr, $cols:expr, $a:expr, $b:expr, $cv:expr, $ct:expr;
         $($r:literal, $c:literal);*) => {
            match ($rows, $cols) {
                // SAFETY: the caller's contract for this shape.
                $(($r, $c) => unsafe {
                    dot_body::<V, $w, $r, $c>(k, $a, lda, $b, ldb, $cv, $ct, rs)
                },)*
                _ => {}
            }
        };
    }
    if V::N == DOT_LANES {
        tile!(1, rows, cols, a, b, cv, ct;
              1, 1; 1, 2; 1, 3; 1, 4; 2, 1; 2, 2; 2, 3; 2, 4; 3, 1; 3, 2; 3, 3; 3, 4);
    } else if V::N * 2 == DOT_LANES {
        for i0 in (0..rows).step_by(2) {
            for j0 in (0..cols).step_by(2) {
                let (r, c) = ((rows - i0).min(2), (cols - j0).min(2));
                // SAFETY: a sub-tile of the caller's: rows i0.., columns j0.. of the same sums.
                let (a, b, e) = unsafe { (a.add(i0 * lda), b.add(j0 * ldb), i0 * rs + j0) };
                // SAFETY: as above.
                let (cv, ct) = unsafe { (cv.add(e * DOT_LANES), ct.add(e)) };
                tile!(2, r, c, a, b, cv, ct; 1, 1; 1, 2; 2, 1; 2, 2);
            }
        }
    }
}
