//! Reference pooling: each window scanned directly, with PyTorch's window arithmetic written out
//! in signed coordinates.

use crate::shape::{Pool2dGeom, Shape4};

/// The window of output `(oh, ow)` in signed input coordinates, before clipping:
/// `[oh·s − p, oh·s − p + k)` per axis, and the divisor PyTorch uses with `count_include_pad`
/// (the window clipped to the padded input `[−p, in + p)`).
fn window(g: &Pool2dGeom, oh: usize, ow: usize) -> ([isize; 2], [isize; 2], usize) {
    let p = g.params();
    let start = [
        (oh * p.stride[0]) as isize - p.padding[0] as isize,
        (ow * p.stride[1]) as isize - p.padding[1] as isize,
    ];
    let ins = [g.in_h() as isize, g.in_w() as isize];
    let mut end = [0isize; 2];
    let mut padded = 1usize;
    for a in 0..2 {
        end[a] = start[a] + p.window[a] as isize;
        let e = end[a].min(ins[a] + p.padding[a] as isize);
        padded *= (e - start[a]) as usize;
    }
    (start, end, padded)
}

/// Calls `f(plane, oh, ow, cells)` with the in-image input indices (within the plane, row-major
/// order) of every window.
fn for_each_window(g: &Pool2dGeom, mut f: impl FnMut(usize, usize, usize, &[usize], usize)) {
    let mut cells = Vec::new();
    for plane in 0..g.planes() {
        for oh in 0..g.out_h() {
            for ow in 0..g.out_w() {
                let (s, e, padded) = window(g, oh, ow);
                cells.clear();
                for ih in s[0]..e[0] {
                    for iw in s[1]..e[1] {
                        if ih >= 0 && iw >= 0 && ih < g.in_h() as isize && iw < g.in_w() as isize {
                            cells.push(ih as usize * g.in_w() + iw as usize);
                        }
                    }
                }
                f(plane, oh, ow, &cells, padded);
            }
        }
    }
}

/// Max pooling: `(y, argmax)`; the first maximum wins, a NaN wins over numbers (the last NaN).
pub fn max_pool2d_forward(g: &Pool2dGeom, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (ip, op) = (g.in_h() * g.in_w(), g.out_h() * g.out_w());
    let mut y = vec![0.0; g.y_len()];
    let mut arg = vec![0u32; g.y_len()];
    for_each_window(g, |plane, oh, ow, cells, _| {
        let mut best = cells[0];
        for &c in cells {
            let (v, b) = (x[plane * ip + c], x[plane * ip + best]);
            if v.is_nan() || (!b.is_nan() && v > b) {
                best = c;
            }
        }
        let o = plane * op + oh * g.out_w() + ow;
        y[o] = x[plane * ip + best];
        arg[o] = best as u32;
    });
    (y, arg)
}

/// Max-pooling gradient, recomputing the argmax from `x`.
pub fn max_pool2d_backward(g: &Pool2dGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (_, arg) = max_pool2d_forward(g, x);
    let (ip, op) = (g.in_h() * g.in_w(), g.out_h() * g.out_w());
    let mut dx = vec![0.0f64; g.x_len()];
    for (o, &a) in arg.iter().enumerate() {
        dx[(o / op) * ip + a as usize] += dy[o] as f64;
    }
    dx.iter().map(|&v| v as f32).collect()
}

/// Average pooling.
pub fn avg_pool2d_forward(g: &Pool2dGeom, count_include_pad: bool, x: &[f32]) -> Vec<f32> {
    let (ip, op) = (g.in_h() * g.in_w(), g.out_h() * g.out_w());
    let mut y = vec![0.0; g.y_len()];
    for_each_window(g, |plane, oh, ow, cells, padded| {
        let s: f64 = cells.iter().map(|&c| x[plane * ip + c] as f64).sum();
        let div = if count_include_pad {
            padded
        } else {
            cells.len()
        };
        y[plane * op + oh * g.out_w() + ow] = (s / div as f64) as f32;
    });
    y
}

/// Average-pooling gradient.
pub fn avg_pool2d_backward(g: &Pool2dGeom, count_include_pad: bool, dy: &[f32]) -> Vec<f32> {
    let (ip, op) = (g.in_h() * g.in_w(), g.out_h() * g.out_w());
    let mut dx = vec![0.0f64; g.x_len()];
    for_each_window(g, |plane, oh, ow, cells, padded| {
        let div = if count_include_pad {
            padded
        } else {
            cells.len()
        };
        let d = dy[plane * op + oh * g.out_w() + ow] as f64 / div as f64;
        for &c in cells {
            dx[plane * ip + c] += d;
        }
    });
    dx.iter().map(|&v| v as f32).collect()
}

/// Global average pooling: `[n, c]`.
pub fn global_avg_pool_forward(s: Shape4, x: &[f32]) -> Vec<f32> {
    let plane = s.h * s.w;
    x.chunks(plane)
        .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
        .collect()
}

/// Adaptive average pooling to `out` per plane, from PyTorch's definition: output `i` averages
/// the inputs `floor(i·len/out) <= j < ceil((i + 1)·len/out)` (real quotients), in `f64`.
pub fn adaptive_avg_pool2d_forward(s: Shape4, out: [usize; 2], x: &[f32]) -> Vec<f32> {
    let range = |i: usize, o: usize, len: usize| {
        let a = (i as f64 * len as f64 / o as f64).floor() as usize;
        let b = ((i + 1) as f64 * len as f64 / o as f64).ceil() as usize;
        a..b
    };
    let mut y = Vec::new();
    for p in x.chunks(s.h * s.w) {
        for oh in 0..out[0] {
            for ow in 0..out[1] {
                let (mut sum, mut count) = (0.0f64, 0usize);
                for ih in range(oh, out[0], s.h) {
                    for iw in range(ow, out[1], s.w) {
                        sum += p[ih * s.w + iw] as f64;
                        count += 1;
                    }
                }
                y.push((sum / count as f64) as f32);
            }
        }
    }
    y
}
