//! Reference convolution: the defining sum, looped directly.

use crate::shape::{Conv2dGeom, ConvTranspose2dGeom};

/// Calls `f(n, o, oh, ow, x_index, w_index)` for every term of the convolution sum whose input
/// position lies inside the image (padding contributes zeros, so it is skipped).
fn for_each_term(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize, usize, usize, usize)) {
    let p = g.params();
    let (ci_g, co_g) = (g.c_in_g(), g.c_out_g());
    for n in 0..g.n() {
        for o in 0..g.c_out() {
            let grp = o / co_g;
            for oh in 0..g.out_h() {
                for ow in 0..g.out_w() {
                    for c in 0..ci_g {
                        for kh in 0..g.k_h() {
                            for kw in 0..g.k_w() {
                                let ih = (oh * p.stride[0] + kh * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let iw = (ow * p.stride[1] + kw * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.in_h() as isize
                                    || iw >= g.in_w() as isize
                                {
                                    continue;
                                }
                                let ch = grp * ci_g + c;
                                let xi = ((n * g.c_in() + ch) * g.in_h() + ih as usize) * g.in_w()
                                    + iw as usize;
                                let wi = ((o * ci_g + c) * g.k_h() + kh) * g.k_w() + kw;
                                f(n, o, oh, ow, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn y_index(g: &Conv2dGeom, n: usize, o: usize, oh: usize, ow: usize) -> usize {
    ((n * g.c_out() + o) * g.out_h() + oh) * g.out_w() + ow
}

/// `y = conv2d(x, w) + b`.
pub fn conv2d_forward(g: &Conv2dGeom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let mut acc = vec![0.0f64; g.y_len()];
    for_each_term(g, |n, o, oh, ow, xi, wi| {
        acc[y_index(g, n, o, oh, ow)] += x[xi] as f64 * w[wi] as f64;
    });
    let plane = g.out_plane();
    acc.iter()
        .enumerate()
        .map(|(i, &v)| (v + b.map_or(0.0, |b| b[(i / plane) % g.c_out()] as f64)) as f32)
        .collect()
}

/// `dx` of the convolution: every term `x[xi]·w[wi]` of `y[...]` sends `dy[...]·w[wi]` to `dx[xi]`.
pub fn conv2d_backward_data(g: &Conv2dGeom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut acc = vec![0.0f64; g.x_len()];
    for_each_term(g, |n, o, oh, ow, xi, wi| {
        acc[xi] += dy[y_index(g, n, o, oh, ow)] as f64 * w[wi] as f64;
    });
    acc.iter().map(|&v| v as f32).collect()
}

/// `(dw, db)` of the convolution.
pub fn conv2d_backward_weights(g: &Conv2dGeom, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dw = vec![0.0f64; g.w_len()];
    for_each_term(g, |n, o, oh, ow, xi, wi| {
        dw[wi] += dy[y_index(g, n, o, oh, ow)] as f64 * x[xi] as f64;
    });
    let plane = g.out_plane();
    let mut db = vec![0.0f64; g.c_out()];
    for (i, &d) in dy.iter().enumerate() {
        db[(i / plane) % g.c_out()] += d as f64;
    }
    (
        dw.iter().map(|&v| v as f32).collect(),
        db.iter().map(|&v| v as f32).collect(),
    )
}

/// The transposed convolution from PyTorch's definition, as a scatter: input `x[n, ci, ih, iw]`
/// adds `x·w[ci, co_g, kh, kw]` to `y[n, co, ih·s − p + kh·d, iw·s − p + kw·d]` for the output
/// channels `co` of `ci`'s group, wherever that lies inside the output; then the bias.
pub fn conv_transpose2d_forward(
    g: &ConvTranspose2dGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let (xs, ys, c) = (g.x_shape(), g.y_shape(), g.conv());
    let p = c.params();
    let (kh_n, kw_n) = (c.k_h(), c.k_w());
    let (ci_g, co_g) = (xs.c / p.groups, ys.c / p.groups);
    let mut y = vec![0.0f64; g.y_len()];
    for n in 0..xs.n {
        for ci in 0..xs.c {
            let group = ci / ci_g;
            for ih in 0..xs.h {
                for iw in 0..xs.w {
                    let v = x[((n * xs.c + ci) * xs.h + ih) * xs.w + iw] as f64;
                    for o in 0..co_g {
                        let co = group * co_g + o;
                        for kh in 0..kh_n {
                            let oh = (ih * p.stride[0] + kh * p.dilation[0]) as isize
                                - p.padding[0] as isize;
                            if oh < 0 || oh >= ys.h as isize {
                                continue;
                            }
                            for kw in 0..kw_n {
                                let ow = (iw * p.stride[1] + kw * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if ow < 0 || ow >= ys.w as isize {
                                    continue;
                                }
                                let wi = ((ci * co_g + o) * kh_n + kh) * kw_n + kw;
                                let yi =
                                    ((n * ys.c + co) * ys.h + oh as usize) * ys.w + ow as usize;
                                y[yi] += v * w[wi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let plane = ys.h * ys.w;
    y.iter()
        .enumerate()
        .map(|(i, &v)| (v + b.map_or(0.0, |b| b[(i / plane) % ys.c] as f64)) as f32)
        .collect()
}
