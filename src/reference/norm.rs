//! Reference batch and layer normalisation, from the two-pass mean/variance definitions.

use crate::shape::Shape4;

/// Per-channel `(mean, biased variance)` of an NCHW tensor.
pub fn channel_stats(s: Shape4, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let plane = s.h * s.w;
    let m = (s.n * plane) as f64;
    let values =
        |c: usize| (0..s.n).flat_map(move |n| (0..plane).map(move |i| (n * s.c + c) * plane + i));
    let mean: Vec<f64> = (0..s.c)
        .map(|c| values(c).map(|i| x[i] as f64).sum::<f64>() / m)
        .collect();
    let var: Vec<f64> = (0..s.c)
        .map(|c| {
            values(c)
                .map(|i| (x[i] as f64 - mean[c]).powi(2))
                .sum::<f64>()
                / m
        })
        .collect();
    (mean, var)
}

/// Batch norm with the given per-channel statistics: `(x − mean)/sqrt(var + eps)·γ + β`.
pub fn batch_norm_apply(
    s: Shape4,
    x: &[f32],
    mean: &[f64],
    var: &[f64],
    eps: f64,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> Vec<f32> {
    let plane = s.h * s.w;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / plane) % s.c;
            let xh = (v as f64 - mean[c]) / (var[c] + eps).sqrt();
            (xh * gamma.map_or(1.0, |g| g[c] as f64) + beta.map_or(0.0, |b| b[c] as f64)) as f32
        })
        .collect()
}

/// Layer norm over rows of `d`: `y`.
pub fn layer_norm_forward(
    d: usize,
    eps: f64,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|r| {
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            r.iter().enumerate().map(move |(j, &v)| {
                let xh = (v as f64 - mean) / (var + eps).sqrt();
                (xh * gamma.map_or(1.0, |g| g[j] as f64) + beta.map_or(0.0, |b| b[j] as f64)) as f32
            })
        })
        .collect()
}
