//! 2x2 max pooling at stride 2 with the maxima's indices, and its backward pass (optionally
//! fused with batch norm's input gradient).

#![allow(unsafe_code)]
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::shared::{PREFETCH_ROWS, prefetch_rows_ahead};
use crate::arch::kernel::Vector;

/// Max pooling by 2x2 windows at stride 2 of the `in_w`-wide plane `x` into the `out_h x out_w`
/// plane `y`, with each maximum's index in the plane in `idx` ([`Vector::max2x2`], a register
/// of windows at a time along each output row; `affine` and `at` as there).
///
/// # Safety
/// The CPU supports `V`'s instruction set; `2·out_w <= in_w`; `x[..2·out_h·in_w]` readable,
/// `y[..out_h·out_w]` writable, `idx` and `at` null or `[..out_h·out_w]` writable;
/// `2·out_h·in_w <= u32::MAX`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn max_pool2_body<V: Vector>(
    x: *const f32,
    in_w: usize,
    y: *mut f32,
    idx: *mut u32,
    out_h: usize,
    out_w: usize,
    affine: Option<[f32; 2]>,
    at: *mut f32,
) {
    for oh in 0..out_h {
        let mut ow = 0;
        while ow < out_w {
            let lanes = (out_w - ow).min(V::N);
            let (first, o) = (2 * oh * in_w + 2 * ow, oh * out_w + ow);
            // SAFETY: rows 2·oh and 2·oh + 1 from column 2·ow, 2·lanes floats each, end at or
            // below (2·oh + 1)·in_w + 2·out_w <= 2·out_h·in_w; outputs o..o + lanes are in the
            // plane; `first + in_w + 2·lanes` fits in u32 (the caller's contract). A prefetch
            // never faults, wherever it points.
            unsafe {
                prefetch_rows_ahead::<V>(x, first, in_w);
                V::max2x2(
                    x.add(first),
                    x.add(first + in_w),
                    lanes,
                    first as u32,
                    in_w as u32,
                    y.add(o),
                    if idx.is_null() { idx } else { idx.add(o) },
                    affine,
                    if at.is_null() { at } else { at.add(o) },
                )
            };
            ow += lanes;
        }
    }
}

/// The input gradient of [`max_pool2_body`]: the `in_h x in_w` plane `dx` gets `dy[o] + 0` at
/// `idx[o]` and zero elsewhere ([`Vector::unpool2x2`] along each output row, then zeros in the
/// column and row no window covers), mapped by a batch norm's backward map of `x` ([`bn_map`])
/// a row pair at a time with `bn`. Returns whether every index was in its own window.
///
/// # Safety
/// The CPU supports `V`'s instruction set; `2·out_w <= in_w`, `2·out_h <= in_h`;
/// `dy[..out_h·out_w]` and `idx[..out_h·out_w]` readable, `dx[..in_h·in_w]` writable and with
/// `bn`, `x[..in_h·in_w]` readable; `in_h·in_w <= u32::MAX`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn unpool2_body<V: Vector>(
    dy: *const f32,
    idx: *const u32,
    out_w: usize,
    dx: *mut f32,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    bn: Option<(*const f32, [f32; 4])>,
) -> bool {
    let mut ok = true;
    // SAFETY: every write is inside dx[..in_h·in_w] and every read inside the output planes
    // and x[..in_h·in_w], by the bounds named at each step (the caller's contract); a prefetch
    // never faults, wherever it points.
    unsafe {
        for oh in 0..out_h {
            let row = dx.add(2 * oh * in_w);
            let mut ow = 0;
            while ow < out_w {
                let lanes = (out_w - ow).min(V::N);
                let (first, o) = (2 * oh * in_w + 2 * ow, oh * out_w + ow);
                // Outputs read a few rows ahead, asked for.
                let ahead = o + PREFETCH_ROWS / 2 * out_w;
                V::prefetch(dy.wrapping_add(ahead));
                V::prefetch(idx.wrapping_add(ahead) as *const f32);
                if let Some((x, _)) = bn {
                    prefetch_rows_ahead::<V>(x, first, in_w);
                }
                // Rows 2·oh and 2·oh + 1, columns 2·ow .. 2·(ow + lanes) <= in_w.
                ok &= V::unpool2x2(
                    dy.add(o),
                    idx.add(o),
                    lanes,
                    first as u32,
                    in_w as u32,
                    row.add(2 * ow),
                    row.add(in_w + 2 * ow),
                );
                ow += lanes;
            }
            // The odd last column, which no window covers.
            for r in 0..2 {
                for c in 2 * out_w..in_w {
                    *row.add(r * in_w + c) = 0.0;
                }
            }
            if let Some((x, c)) = bn {
                // Rows 2·oh and 2·oh + 1 (below in_h).
                bn_map::<V>(x.add(2 * oh * in_w), row, 2 * in_w, c);
            }
        }
        // The rows below the last window.
        let done = 2 * out_h * in_w;
        for i in done..in_h * in_w {
            *dx.add(i) = 0.0;
        }
        if let Some((x, c)) = bn {
            bn_map::<V>(x.add(done), dx.add(done), in_h * in_w - done, c);
        }
    }
    ok
}

/// `d[i] = k·(d[i] − a − (x[i] − mean)·b)` for `i < len`, with `[k, mean, a, b] = c`: a batch
/// norm's input gradient in training mode, with the operations of `kernels::plane_ops::BnDx` (the
/// differences as sums with the negated operand, the product and its sum rounded once: the same
/// bits).
///
/// # Safety
/// The CPU supports `V`'s instruction set; `x[..len]` readable, `d[..len]` writable.
#[inline(always)]
unsafe fn bn_map<V: Vector>(x: *const f32, d: *mut f32, len: usize, c: [f32; 4]) {
    let [k, mean, a, b] = c;
    // SAFETY: every access is below `len` (the caller's contract).
    unsafe {
        let (kv, nm, na, nb) = (V::splat(k), V::splat(-mean), V::splat(-a), V::splat(-b));
        let mut i = 0;
        while i + V::N <= len {
            let (t, u) = (V::load(x.add(i)).add(nm), V::load(d.add(i)).add(na));
            t.mul_add(nb, u).mul(kv).store(d.add(i));
            i += V::N;
        }
        for i in i..len {
            let (t, u) = (*x.add(i) - mean, *d.add(i) - a);
            *d.add(i) = (-t).mul_add(b, u) * k;
        }
    }
}
