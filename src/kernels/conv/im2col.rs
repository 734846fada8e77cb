//! im2col and col2im over a tile of output rows.
//!
//! The im2col matrix of one image has one row per kernel tap `r = (c, p, q)` (`c`-major, then
//! `p`, then `q`: the order of an OIHW weight row) and one column per output pixel. A *tile* is a
//! range of output rows `oh0..oh1`, so its matrix is `rows x ((oh1 - oh0) * out_w)`, row-major.

use crate::shape::Conv2dGeom;
use std::ops::Range;

/// Output positions `o` in `0..out` whose input coordinate `o*s + off` lies in `0..input`.
#[inline]
pub(crate) fn valid_range(out: usize, input: usize, s: usize, off: isize) -> Range<usize> {
    // o*s + off >= 0  <=>  o >= ceil(-off / s)
    let lo = if off >= 0 {
        0
    } else {
        ((-off) as usize).div_ceil(s)
    };
    // o*s + off <= input - 1  <=>  o <= floor((input - 1 - off) / s)
    let top = input as isize - 1 - off;
    let hi = if top < 0 {
        0
    } else {
        (top as usize / s + 1).min(out)
    };
    lo.min(hi)..hi
}

/// The offsets of tap `r` of `g`: `(c, ih offset, iw offset)`, where input row = `oh*s_h + off_h`.
#[inline]
pub(crate) fn tap(g: &Conv2dGeom, r: usize) -> (usize, isize, isize) {
    let (kh, kw) = (g.k_h(), g.k_w());
    let p = g.params();
    let c = r / (kh * kw);
    let (ph, qw) = ((r / kw) % kh, r % kw);
    let off_h = (ph * p.dilation[0]) as isize - p.padding[0] as isize;
    let off_w = (qw * p.dilation[1]) as isize - p.padding[1] as isize;
    (c, off_h, off_w)
}

/// Writes rows `rows` (taps, counted over all input channels of `x_img`) of the im2col tile for
/// output rows `oh` into `col` (`rows.len() x oh.len()*out_w`).
pub(crate) fn im2col(
    g: &Conv2dGeom,
    x_img: &[f32],
    rows: Range<usize>,
    oh: Range<usize>,
    col: &mut [f32],
) {
    let (in_h, in_w, out_w) = (g.in_h(), g.in_w(), g.out_w());
    let [s_h, s_w] = g.params().stride;
    let tile = oh.len() * out_w;
    debug_assert_eq!(col.len(), rows.len() * tile);
    let plane = in_h * in_w;
    for (r, dst) in rows.zip(col.chunks_exact_mut(tile.max(1))) {
        let (c, off_h, off_w) = tap(g, r);
        let x_c = &x_img[c * plane..][..plane];
        let ow_ok = valid_range(out_w, in_w, s_w, off_w);
        for (o, dst) in oh.clone().zip(dst.chunks_exact_mut(out_w)) {
            let ih = (o * s_h) as isize + off_h;
            if ih < 0 || ih >= in_h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &x_c[ih as usize * in_w..][..in_w];
            dst[..ow_ok.start].fill(0.0);
            dst[ow_ok.end..].fill(0.0);
            if ow_ok.is_empty() {
                continue;
            }
            let iw0 = (ow_ok.start * s_w) as isize + off_w;
            let dst = &mut dst[ow_ok.clone()];
            if s_w == 1 {
                dst.copy_from_slice(&src[iw0 as usize..][..dst.len()]);
            } else {
                let src = &src[iw0 as usize..];
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = src[k * s_w];
                }
            }
        }
    }
}

/// Adds rows `rows` of the tile `col` (laid out as in [`im2col`]) into the image gradient
/// `dx_img`, which holds the input channels `channels` (so row `r` belongs to channel
/// `r / (k_h*k_w)` and must lie in `channels`).
pub(crate) fn col2im_add(
    g: &Conv2dGeom,
    col: &[f32],
    rows: Range<usize>,
    oh: Range<usize>,
    channels: Range<usize>,
    dx_img: &mut [f32],
) {
    let (in_h, in_w, out_w) = (g.in_h(), g.in_w(), g.out_w());
    let [s_h, s_w] = g.params().stride;
    let tile = oh.len() * out_w;
    debug_assert_eq!(col.len(), rows.len() * tile);
    let plane = in_h * in_w;
    for (r, src) in rows.zip(col.chunks_exact(tile.max(1))) {
        let (c, off_h, off_w) = tap(g, r);
        debug_assert!(channels.contains(&c));
        let dx_c = &mut dx_img[(c - channels.start) * plane..][..plane];
        let ow_ok = valid_range(out_w, in_w, s_w, off_w);
        if ow_ok.is_empty() {
            continue;
        }
        let iw0 = ((ow_ok.start * s_w) as isize + off_w) as usize;
        for (o, src) in oh.clone().zip(src.chunks_exact(out_w)) {
            let ih = (o * s_h) as isize + off_h;
            if ih < 0 || ih >= in_h as isize {
                continue;
            }
            let src = &src[ow_ok.clone()];
            let dst = &mut dx_c[ih as usize * in_w + iw0..];
            if s_w == 1 {
                crate::simd::iter::map_in_place_zip(
                    src,
                    &mut dst[..src.len()],
                    #[inline(always)]
                    |s, d| d + s,
                );
            } else {
                for (k, s) in src.iter().enumerate() {
                    dst[k * s_w] += s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for out in 0..6 {
            for input in 1..6 {
                for s in 1..4 {
                    for off in -5isize..5 {
                        let r = valid_range(out, input, s, off);
                        let want: Vec<usize> = (0..out)
                            .filter(|&o| {
                                let i = (o * s) as isize + off;
                                i >= 0 && i < input as isize
                            })
                            .collect();
                        let got: Vec<usize> = r.collect();
                        assert_eq!(got, want, "out={out} input={input} s={s} off={off}");
                    }
                }
            }
        }
    }
}
