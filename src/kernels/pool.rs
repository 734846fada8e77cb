//! Max, average and global-average pooling, forward and backward, as `torch.nn.functional`'s
//! `max_pool2d`, `avg_pool2d` and `adaptive_avg_pool2d(x, 1)` (floor mode, dilation 1).
//!
//! Work is split over the `n * c` planes, which are independent.

use crate::error::{Error, Result, check_len, check_min_len};
use crate::kernels::accum::Accum;
use crate::kernels::plane_ops::{bad_index, unpool_plane};
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::{Pool2dGeom, Shape4};
use crate::simd;

/// Largest window (`kh · kw`) taken by the lane path of [`max_pool2d_forward`].
const MAX_LANE_WINDOW: usize = 64;

/// Max pooling, as `torch.nn.functional.max_pool2d(x, window, stride, padding)`:
/// `y[n,c,i,j] = max` of `x[n,c]` over the window at `(i·s_h − pad_h, j·s_w − pad_w)` clipped to
/// the input (padding never wins).
///
/// - `x`: `[n, c, in_h, in_w]`; `y`: `[n, c, out_h, out_w]`, overwritten
/// - `argmax`: `None` (inference) or `[n, c, out_h, out_w]` receiving the index `ih * in_w + iw`
///   of each maximum within its plane, as PyTorch's `return_indices=True`, for
///   [`max_pool2d_backward`]
///
/// Ties go to the first element in row-major order; a NaN in the window wins (the last NaN, as
/// PyTorch), so NaN propagates.
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`.
pub fn max_pool2d_forward(
    g: &Pool2dGeom,
    x: &[f32],
    y: &mut [f32],
    argmax: Option<&mut [u32]>,
) -> Result<()> {
    max_pool2d_forward_from(g, Planes::Dense(x), y, argmax, None, &mut [])
}

/// [`max_pool2d_forward`] of an input read through [`Planes`] (a batch norm's output made plane
/// by plane); `ws` holds a plane per parallel group (at least one). `at_max` (with `argmax`, of
/// its length) receives the stored operand at each maximum: for [`Planes::Affine`], the batch
/// norm's input, whose backward sums then need only the pooled positions (see
/// [`Planes::Pooled`]).
pub(crate) fn max_pool2d_forward_from(
    g: &Pool2dGeom,
    x: Planes<'_>,
    y: &mut [f32],
    argmax: Option<&mut [u32]>,
    at_max: Option<&mut [f32]>,
    ws: &mut [f32],
) -> Result<()> {
    const OP: &str = "max_pool2d_forward";
    let (in_plane, out_plane) = (g.in_h() * g.in_w(), g.out_h() * g.out_w());
    x.check(OP, "x", g.planes(), in_plane, g.c())?;
    check_len(OP, "y", y, g.y_len())?;
    let slot = x.slot(in_plane);
    check_min_len(OP, "ws", ws, slot)?;
    let [kh, kw] = g.params().window;
    let work = g.y_len() * kh * kw;
    let (in_w, out_w) = (g.in_w(), g.out_w());
    let [s_w, p_w] = [g.params().stride[1], g.params().padding[1]];
    // Window offsets from its first element, for the lane path (windows not clipped by padding).
    let mut offs = [0usize; MAX_LANE_WINDOW];
    let lane_path = kh * kw <= MAX_LANE_WINDOW && in_plane <= i32::MAX as usize;
    if lane_path {
        for (o, slot) in offs.iter_mut().enumerate().take(kh * kw) {
            *slot = o / kw * in_w + o % kw;
        }
    }
    let offs = &offs[..if lane_path { kh * kw } else { 0 }];
    // 2x2 windows at stride 2 along the row where the plane kernel does not apply (padding, or
    // no micro-kernels): a lane path with its indices known at compile time.
    let lane_pairs = lane_path && kh == 2 && kw == 2 && s_w == 2;
    // Output columns whose windows lie inside the input.
    let ow_lo = p_w.div_ceil(s_w).min(out_w);
    let ow_hi = ((in_w + p_w).saturating_sub(kw) / s_w + 1).clamp(ow_lo, out_w);
    let plane = simd::inlined(
        #[inline(always)]
        |x_p: &[f32], y_p: &mut [f32], mut a_p: Option<&mut [u32]>| {
            // One output by scalar comparisons (windows clipped by padding).
            let scalar = |ow: usize, h0: usize, h1: usize| {
                let (w0, w1, _) = g.window(1, ow);
                let mut best = f32::NEG_INFINITY;
                let mut idx = h0 * in_w + w0;
                for ih in h0..h1 {
                    let row = &x_p[ih * in_w..][w0..w1];
                    for (k, &v) in row.iter().enumerate() {
                        if v > best || v.is_nan() {
                            best = v;
                            idx = ih * in_w + w0 + k;
                        }
                    }
                }
                (best, idx as u32)
            };
            for oh in 0..g.out_h() {
                let (h0, h1, _) = g.window(0, oh);
                let y_row = &mut y_p[oh * out_w..][..out_w];
                let mut a_row = a_p.as_deref_mut().map(|a| &mut a[oh * out_w..][..out_w]);
                let mut put_scalar = |ows: std::ops::Range<usize>| {
                    for ow in ows {
                        let (v, i) = scalar(ow, h0, h1);
                        y_row[ow] = v;
                        if let Some(a) = a_row.as_deref_mut() {
                            a[ow] = i;
                        }
                    }
                };
                if !lane_path || h1 - h0 != kh {
                    put_scalar(0..out_w);
                    continue;
                }
                put_scalar(0..ow_lo);
                put_scalar(ow_hi..out_w);
                let mut ow = ow_lo;
                while ow < ow_hi {
                    let lanes = (ow_hi - ow).min(simd::LANES);
                    let base = h0 * in_w + ow * s_w - p_w;
                    let (v, i) = if lane_pairs && base + in_w + 2 * simd::LANES <= x_p.len() {
                        // Eight windows from `base` on; past `lanes` they run into the next
                        // rows (still inside the plane) and are dropped.
                        let r0 = x_p[base..][..2 * simd::LANES]
                            .try_into()
                            .expect("16 floats");
                        let r1 = x_p[base + in_w..][..2 * simd::LANES]
                            .try_into()
                            .expect("16 floats");
                        simd::window_max_2x2(r0, r1, base as i32, in_w as i32)
                    } else {
                        simd::window_max(x_p, base, s_w, lanes, offs)
                    };
                    y_row[ow..ow + lanes].copy_from_slice(&v[..lanes]);
                    if let Some(a) = a_row.as_deref_mut() {
                        for (a, &i) in a[ow..ow + lanes].iter_mut().zip(&i) {
                            *a = i as u32;
                        }
                    }
                    ow += lanes;
                }
            }
        },
    );
    let with_argmax = argmax.is_some();
    // The common 2x2 layer: a plane at a time in the micro-kernels.
    let two = pairs(g);
    let a = match argmax {
        Some(a) => {
            check_len(OP, "argmax", a, g.y_len())?;
            a
        }
        None => &mut [],
    };
    let a_per_plane = if with_argmax { out_plane } else { 0 };
    let stored = match (&at_max, x) {
        (None, _) => &[][..],
        (Some(m), Planes::Dense(x) | Planes::Affine { x, .. }) if with_argmax => {
            check_len(OP, "at_max", m, g.y_len())?;
            x
        }
        _ => {
            return Err(Error::invalid(
                OP,
                "at_max",
                "needs argmax and a stored input",
            ));
        }
    };
    let m = at_max.unwrap_or(&mut []);
    let m_per_plane = if m.is_empty() { 0 } else { out_plane };
    let c = g.c();
    par::for_each_group(
        g.planes(),
        super::accum::groups_in(g.planes(), work, ws.len(), slot),
        (
            Items(y, out_plane),
            Items(a, a_per_plane),
            Items(m, m_per_plane),
        ),
        ws,
        slot,
        #[inline(always)]
        |r, (Items(y, _), Items(a, _), Items(m, _)), s| {
            for (k, (p, y_p)) in r.zip(y.chunks_exact_mut(out_plane)).enumerate() {
                let mut a_p = with_argmax.then(|| &mut a[k * out_plane..][..out_plane]);
                let mut m_p = (m_per_plane > 0).then(|| &mut m[k * out_plane..][..out_plane]);
                // 2x2 windows in the micro-kernels read a stored plane, and make a batch norm's
                // output in the registers (the same fused multiply-add as `Planes::plane`).
                let stored_plane = match x {
                    Planes::Dense(x) => Some((&x[p * in_plane..][..in_plane], None)),
                    Planes::Affine { x, scale, shift } => Some((
                        &x[p * in_plane..][..in_plane],
                        Some([scale[p % c], shift[p % c]]),
                    )),
                    _ => None,
                };
                if let (Some(in_w), Some((x_p, affine))) = (two, stored_plane) {
                    let (a, m) = (a_p.as_deref_mut(), m_p.as_deref_mut());
                    if pool_pairs(x_p, in_w, y_p, a, affine, m) {
                        continue;
                    }
                }
                let x_p = x.plane(p, in_plane, c, s)?;
                plane(x_p, y_p, a_p.as_deref_mut());
                if let (Some(a_p), Some(m_p)) = (a_p, m_p) {
                    // The indices were made just above, inside the plane.
                    let xs = &stored[p * in_plane..][..in_plane];
                    for (v, &i) in m_p.iter_mut().zip(a_p.iter()) {
                        *v = xs[i as usize];
                    }
                }
            }
            Ok(())
        },
    )
}

/// Gradient of [`max_pool2d_forward`]: each `dy` element is added to the input position its
/// window's maximum came from (overlapping windows accumulate).
///
/// - `argmax`: from the forward pass; `dy`: `[n, c, out_h, out_w]`
/// - `dx`: `[n, c, in_h, in_w]`, overwritten or added to according to `accum`
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`;
/// [`Error::InvalidArg`] if an index is outside its plane (with
/// [`Accum::Add`] before anything is added; with [`Accum::Replace`], `dx` is then unspecified).
pub fn max_pool2d_backward(
    g: &Pool2dGeom,
    argmax: &[u32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "max_pool2d_backward";
    check_len(OP, "argmax", argmax, g.y_len())?;
    check_len(OP, "dy", dy, g.y_len())?;
    check_len(OP, "dx", dx, g.x_len())?;
    let (in_plane, out_plane) = (g.in_h() * g.in_w(), g.out_h() * g.out_w());
    // Adding to `dx`: every index is checked before anything is added. Replacing it, each
    // plane's indices are checked as it is made (an error leaves `dx` unspecified).
    if accum == Accum::Add && argmax.iter().any(|&a| a as usize >= in_plane) {
        return Err(bad_index());
    }
    let pairs = pairs(g);
    par::for_each(
        g.planes(),
        g.x_len() + g.y_len(),
        Items(dx, in_plane),
        #[inline(always)]
        |r, Items(dx, _)| {
            for (p, dx_p) in r.zip(dx.chunks_exact_mut(in_plane)) {
                let a_p = &argmax[p * out_plane..][..out_plane];
                let dy_p = &dy[p * out_plane..][..out_plane];
                unpool_plane(a_p, dy_p, dx_p, pairs, accum)?;
            }
            Ok(())
        },
    )
}

/// `Some(in_w)` when `g`'s windows are 2x2 at stride 2 without padding (the common pooling
/// layer, which the micro-kernels pool and unpool a plane at a time).
pub(crate) fn pairs(g: &Pool2dGeom) -> Option<usize> {
    let p = g.params();
    (p.window == [2, 2] && p.stride == [2, 2] && p.padding == [0, 0]).then(|| g.in_w())
}

/// [`max_pool2d_forward`] of one plane by 2x2 windows at stride 2 (`pairs`) in the
/// micro-kernels, of `x_p·a + b` with `affine = Some([a, b])`, with the element of `x_p` at each
/// maximum in `m_p`; `false` (nothing written) without them.
#[inline(always)]
fn pool_pairs(
    x_p: &[f32],
    in_w: usize,
    y_p: &mut [f32],
    a_p: Option<&mut [u32]>,
    affine: Option<[f32; 2]>,
    m_p: Option<&mut [f32]>,
) -> bool {
    crate::arch::with_kernel!(
        k => {
            crate::arch::kernel::MicroKernel::max_pool2(k, x_p, in_w, y_p, a_p, affine, m_p);
            true
        };
        else false
    )
}

/// `Some(k)` when the windows are `k`x`k` squares that tile the input without padding or overlap
/// (stride = window): every window is full and its divisor is `k²` whatever `count_include_pad`.
fn tiles(g: &Pool2dGeom) -> Option<usize> {
    let p = g.params();
    let [kh, kw] = p.window;
    (kh == kw && p.stride == p.window && p.padding == [0, 0]).then_some(kh)
}

/// Average pooling over `K`x`K` tiles of one plane: the same sums, in the same order, as the
/// general loop (each row of a window summed, the row sums added in order, then divided; the
/// general loop's outer `sum` starts from `-0.0`, which leaves its first term unchanged), with the
/// window arithmetic known at compile time.
#[inline(always)]
fn avg_tiles_forward<const K: usize>(x_p: &[f32], in_w: usize, y_p: &mut [f32], out_w: usize) {
    let div = (K * K) as f32;
    for (oh, y_row) in y_p.chunks_exact_mut(out_w).enumerate() {
        for kh in 0..K {
            let (tiles, _) = x_p[(oh * K + kh) * in_w..][..out_w * K].as_chunks::<K>();
            for (y, t) in y_row.iter_mut().zip(tiles) {
                let s = t.iter().sum::<f32>();
                *y = if kh == 0 { s } else { *y + s };
            }
        }
        for y in y_row.iter_mut() {
            *y /= div;
        }
    }
}

/// Gradient of [`avg_tiles_forward`]: `dy / K²` added to every element of its tile (the caller
/// has zeroed `dx_p` when overwriting).
#[inline(always)]
fn avg_tiles_backward<const K: usize>(dy_p: &[f32], out_w: usize, dx_p: &mut [f32], in_w: usize) {
    let div = (K * K) as f32;
    for (oh, dy_row) in dy_p.chunks_exact(out_w).enumerate() {
        for kh in 0..K {
            let row = &mut dx_p[(oh * K + kh) * in_w..][..out_w * K];
            let (tiles, _) = row.as_chunks_mut::<K>();
            for (t, &d) in tiles.iter_mut().zip(dy_row) {
                let v = d / div;
                for e in t.iter_mut() {
                    *e += v;
                }
            }
        }
    }
}

/// The divisor of the window at output `(oh, ow)`.
#[inline]
fn divisor(g: &Pool2dGeom, count_include_pad: bool, oh: usize, ow: usize) -> f32 {
    let (h0, h1, eh) = g.window(0, oh);
    let (w0, w1, ew) = g.window(1, ow);
    if count_include_pad {
        (eh * ew) as f32
    } else {
        ((h1 - h0) * (w1 - w0)) as f32
    }
}

/// Average pooling, as `torch.nn.functional.avg_pool2d(x, window, stride, padding,
/// count_include_pad=...)`: the sum over the window clipped to the input, divided by the window
/// area clipped to the padded input (`count_include_pad = true`, PyTorch's default) or by the
/// number of input elements summed (`false`).
///
/// - `x`: `[n, c, in_h, in_w]`; `y`: `[n, c, out_h, out_w]`, overwritten
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`.
pub fn avg_pool2d_forward(
    g: &Pool2dGeom,
    count_include_pad: bool,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "avg_pool2d_forward";
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "y", y, g.y_len())?;
    let (in_plane, out_plane, in_w) = (g.in_h() * g.in_w(), g.out_h() * g.out_w(), g.in_w());
    let [kh, kw] = g.params().window;
    let tiled = tiles(g);
    par::for_each(
        g.planes(),
        g.y_len() * kh * kw,
        Items(y, out_plane),
        #[inline(always)]
        |r, Items(y, _)| {
            for (p, y_p) in r.zip(y.chunks_exact_mut(out_plane)) {
                let x_p = &x[p * in_plane..][..in_plane];
                if tiled == Some(2) {
                    avg_tiles_forward::<2>(x_p, in_w, y_p, g.out_w());
                    continue;
                }
                for oh in 0..g.out_h() {
                    let (h0, h1, _) = g.window(0, oh);
                    for ow in 0..g.out_w() {
                        let (w0, w1, _) = g.window(1, ow);
                        let s: f32 = (h0..h1)
                            .map(|ih| x_p[ih * in_w..][w0..w1].iter().sum::<f32>())
                            .sum();
                        y_p[oh * g.out_w() + ow] = s / divisor(g, count_include_pad, oh, ow);
                    }
                }
            }
            Ok(())
        },
    )
}

/// Gradient of [`avg_pool2d_forward`]: each `dy` element, divided by its window's divisor, is
/// added to every input position of its window.
///
/// - `dy`: `[n, c, out_h, out_w]`; `dx`: `[n, c, in_h, in_w]`, overwritten or added to
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`.
pub fn avg_pool2d_backward(
    g: &Pool2dGeom,
    count_include_pad: bool,
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "avg_pool2d_backward";
    check_len(OP, "dy", dy, g.y_len())?;
    check_len(OP, "dx", dx, g.x_len())?;
    let (in_plane, out_plane, in_w) = (g.in_h() * g.in_w(), g.out_h() * g.out_w(), g.in_w());
    let [kh, kw] = g.params().window;
    let tiled = tiles(g);
    par::for_each(
        g.planes(),
        g.y_len() * kh * kw,
        Items(dx, in_plane),
        #[inline(always)]
        |r, Items(dx, _)| {
            for (p, dx_p) in r.zip(dx.chunks_exact_mut(in_plane)) {
                if accum == Accum::Replace {
                    dx_p.fill(0.0);
                }
                let dy_p = &dy[p * out_plane..][..out_plane];
                if tiled == Some(2) {
                    avg_tiles_backward::<2>(dy_p, g.out_w(), dx_p, in_w);
                    continue;
                }
                for oh in 0..g.out_h() {
                    let (h0, h1, _) = g.window(0, oh);
                    for ow in 0..g.out_w() {
                        let (w0, w1, _) = g.window(1, ow);
                        let v = dy_p[oh * g.out_w() + ow] / divisor(g, count_include_pad, oh, ow);
                        for ih in h0..h1 {
                            for d in &mut dx_p[ih * in_w..][w0..w1] {
                                *d += v;
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    )
}

/// Global average pooling, as `torch.nn.functional.adaptive_avg_pool2d(x, 1)` flattened:
/// `y[n, c] = mean(x[n, c, :, :])`.
///
/// - `x`: `[n, c, h, w]`; `y`: `[n, c]`, overwritten
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `shape`;
/// [`Error::InvalidArg`] for an empty plane.
pub fn global_avg_pool_forward(shape: Shape4, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "global_avg_pool_forward";
    let (plane, planes) = global_dims(OP, shape)?;
    check_len(OP, "x", x, shape.len(OP)?)?;
    check_len(OP, "y", y, planes)?;
    par::for_each(
        planes,
        x.len(),
        Items(y, 1),
        #[inline(always)]
        |r, Items(y, _)| {
            for (p, v) in r.zip(y.iter_mut()) {
                *v = simd::sum(&x[p * plane..][..plane]) / plane as f32;
            }
            Ok(())
        },
    )
}

/// Gradient of [`global_avg_pool_forward`]: `dx[n, c, :, :] = dy[n, c] / (h * w)`.
///
/// # Errors
/// As [`global_avg_pool_forward`].
pub fn global_avg_pool_backward(
    shape: Shape4,
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "global_avg_pool_backward";
    let (plane, planes) = global_dims(OP, shape)?;
    check_len(OP, "dy", dy, planes)?;
    check_len(OP, "dx", dx, shape.len(OP)?)?;
    par::for_each(
        planes,
        dx.len(),
        Items(dx, plane),
        #[inline(always)]
        |r, Items(dx, _)| {
            for (p, dx_p) in r.zip(dx.chunks_exact_mut(plane)) {
                let v = simd::splat(dy[p] / plane as f32);
                simd::map_in_place(
                    dx_p,
                    #[inline(always)]
                    |d| accum.lanes(d, v),
                );
            }
            Ok(())
        },
    )
}

fn global_dims(op: &'static str, s: Shape4) -> Result<(usize, usize)> {
    if s.h == 0 || s.w == 0 {
        return Err(crate::error::Error::invalid(op, "shape", "empty plane"));
    }
    Ok((
        crate::error::mul(op, "h * w", s.h, s.w)?,
        crate::error::mul(op, "n * c", s.n, s.c)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Pool2dParams;

    #[test]
    fn the_stored_input_at_each_maximum_is_recorded_and_needs_the_indices() {
        // One 4x4 plane of a batch norm's input, read through its output map y = −2x + 1:
        // the maxima of y are the minima of x.
        let g = Pool2dGeom::new(Shape4::new(1, 1, 4, 4), Pool2dParams::new(2)).unwrap();
        let x: Vec<f32> = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let (scale, shift) = ([-2.0], [1.0]);
        let src = Planes::Affine {
            x: &x,
            scale: &scale,
            shift: &shift,
        };
        let (mut y, mut a, mut m, mut ws) = ([0.0; 4], [0u32; 4], [0.0; 4], [0.0; 16]);
        max_pool2d_forward_from(&g, src, &mut y, Some(&mut a), Some(&mut m), &mut ws).unwrap();
        assert_eq!(a, [1, 3, 9, 15]);
        assert_eq!(m, [1.0, 1.0, 3.0, 3.0]);
        assert_eq!(y, [-1.0, -1.0, -5.0, -5.0]);
        let e = max_pool2d_forward_from(&g, src, &mut y, None, Some(&mut m), &mut ws);
        assert!(e.unwrap_err().to_string().contains("at_max"));
    }
}
