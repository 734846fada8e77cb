//! Saliency maps: which pixels a class score depends on. Three methods, all built on the input
//! gradient of one class's output (its logit):
//!
//! - **gradient** (Simonyan et al. 2014): `∂f_c/∂x`;
//! - **SmoothGrad** (Smilkov et al. 2017): the mean gradient at `x + N(0, σ²)` over `samples`
//!   noisy copies, which averages away the gradient's pixel-to-pixel jitter;
//! - **integrated gradients** (Sundararajan et al. 2017): `(x − x₀) ⊙ ∫₀¹ ∂f_c/∂x(x₀ + α(x − x₀)) dα`
//!   from a baseline image `x₀`, by the midpoint rule over `steps` points. Its values add up to
//!   `f_c(x) − f_c(x₀)` (completeness), up to the quadrature error.
//!
//! [`signed_overlay`] turns a map into an RGB picture over the input that keeps its sign (red
//! raises the class score, blue lowers it); [`heatmap_overlay`] shows the strength alone.

use super::pixels::{PixelModel, in_eval};
use crate::data::normalization::Normalization;
use crate::error::{Error, Result};
use crate::model::Sequential;
use crate::rng::Rng;
use crate::shape::Shape3;

/// A saliency method: the plain input gradient, SmoothGrad or integrated gradients, each defined
/// on its variant.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SaliencyMethod {
    /// The plain input gradient.
    Gradient,
    /// The mean gradient over `samples` copies of `x` with Gaussian noise of standard deviation
    /// `sigma` (pixel units) added.
    SmoothGrad {
        /// Noisy copies.
        samples: usize,
        /// Noise standard deviation.
        sigma: f32,
        /// Seed of the noise.
        seed: u64,
    },
    /// Integrated gradients from the constant image `baseline`, by the midpoint rule over
    /// `steps` points.
    IntegratedGradients {
        /// Points of the path integral.
        steps: usize,
        /// The baseline's value at every pixel.
        baseline: f32,
    },
}

impl SaliencyMethod {
    /// SmoothGrad with the paper's defaults for pixels in `[0, 1]`: 50 samples, `σ` = 0.15 (15 %
    /// of the pixel range).
    pub fn smoothgrad() -> Self {
        SaliencyMethod::SmoothGrad {
            samples: 50,
            sigma: 0.15,
            seed: 0,
        }
    }

    /// Integrated gradients from a black image, 50 steps.
    pub fn integrated_gradients() -> Self {
        SaliencyMethod::IntegratedGradients {
            steps: 50,
            baseline: 0.0,
        }
    }

    /// `grad`, `smoothgrad` or `ig` with their defaults.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for another name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "grad" | "gradient" => Ok(SaliencyMethod::Gradient),
            "smoothgrad" => Ok(Self::smoothgrad()),
            "ig" | "integrated_gradients" => Ok(Self::integrated_gradients()),
            _ => Err(Error::invalid(
                "SaliencyMethod",
                "method",
                format!("'{s}': use grad, smoothgrad or ig"),
            )),
        }
    }
}

/// Samples per forward/backward pass of SmoothGrad and integrated gradients.
const CHUNK: usize = 16;

/// The saliency map of class `class` at the single sample `x` (the model's input shape, or
/// pixels with a `normalization`): one value per input element, signed. The model runs in
/// evaluation mode (restored afterwards).
///
/// ```
/// use cnnkit::stability::{saliency, SaliencyMethod};
/// use cnnkit::{LayerSpec, Sequential};
/// let mut m = Sequential::new([1, 2, 2], &LayerSpec::parse_list("flatten,dense(2)")?, 0)?;
/// let x = [0.1f32, 0.5, 0.9, 0.3];
/// let g = saliency(&mut m, &x, 1, &SaliencyMethod::Gradient, None)?;
/// assert_eq!(g, m.params()[4..8]); // for a linear model: the class's weight row
/// # Ok::<(), cnnkit::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArg`] for a class the model does not have, an `x` that is not one sample or
/// has NaN, settings out of range, a normalisation that does not fit; errors of the model's passes.
pub fn saliency(
    model: &mut Sequential,
    x: &[f32],
    class: usize,
    method: &SaliencyMethod,
    normalization: Option<&Normalization>,
) -> Result<Vec<f32>> {
    const OP: &str = "saliency";
    let d = crate::shape::numel(model.input_shape());
    crate::error::check_len(OP, "x", x, d)?;
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(OP, "x", format!("x[{i}] = {}", x[i])));
    }
    let classes = model.output_len();
    if class >= classes {
        return Err(Error::invalid(
            OP,
            "class",
            format!("class {class} for a model of {classes} outputs"),
        ));
    }
    let bad = |arg: &'static str, why: &str| Err(Error::invalid(OP, arg, why));
    match *method {
        SaliencyMethod::SmoothGrad { samples, sigma, .. } => {
            if samples == 0 {
                return bad("samples", "must be at least 1");
            }
            if !(sigma.is_finite() && sigma >= 0.0) {
                return bad("sigma", "must be finite and >= 0");
            }
        }
        SaliencyMethod::IntegratedGradients { steps, baseline } => {
            if steps == 0 {
                return bad("steps", "must be at least 1");
            }
            if !baseline.is_finite() {
                return bad("baseline", "must be finite");
            }
        }
        SaliencyMethod::Gradient => {}
    }
    in_eval(model, |m| {
        let mut pm = PixelModel::new(OP, m, normalization)?;
        // The mean gradient of f_c over the points `point(k, buf)`, k < count.
        let mut mean_grad =
            |count: usize, point: &mut dyn FnMut(usize, &mut [f32])| -> Result<Vec<f32>> {
                let mut sum = vec![0.0f64; d];
                let (mut xs, mut grad, mut dout) = (Vec::new(), Vec::new(), Vec::new());
                for start in (0..count).step_by(CHUNK) {
                    let k = CHUNK.min(count - start);
                    xs.resize(k * d, 0.0);
                    grad.resize(k * d, 0.0);
                    for (j, s) in xs.chunks_exact_mut(d).enumerate() {
                        point(start + j, s);
                    }
                    pm.forward(&xs, k)?;
                    dout.clear();
                    dout.resize(k * classes, 0.0);
                    dout.chunks_exact_mut(classes).for_each(|o| o[class] = 1.0);
                    pm.input_gradient(&xs, &dout, &mut grad)?;
                    for g in grad.chunks_exact(d) {
                        sum.iter_mut().zip(g).for_each(|(s, &v)| *s += v as f64);
                    }
                }
                Ok(sum.iter().map(|s| (s / count as f64) as f32).collect())
            };
        match *method {
            SaliencyMethod::Gradient => mean_grad(1, &mut |_, s| s.copy_from_slice(x)),
            SaliencyMethod::SmoothGrad {
                samples,
                sigma,
                seed,
            } => {
                let mut rng = Rng::new(seed);
                mean_grad(samples, &mut |_, s| {
                    for (v, &xi) in s.iter_mut().zip(x) {
                        *v = xi + (sigma as f64 * rng.normal()) as f32;
                    }
                })
            }
            SaliencyMethod::IntegratedGradients { steps, baseline } => {
                let g = mean_grad(steps, &mut |k, s| {
                    let a = (k as f32 + 0.5) / steps as f32;
                    for (v, &xi) in s.iter_mut().zip(x) {
                        *v = a.mul_add(xi - baseline, baseline);
                    }
                })?;
                Ok(g.iter()
                    .zip(x)
                    .map(|(g, &xi)| g * (xi - baseline))
                    .collect())
            }
        }
    })
}

/// An RGB picture (`h·w·3` bytes, row-major) of a saliency map over its input: the input in grey
/// (the mean of its channels, clamped to `[0, 1]`), and over it the map's strength — the largest
/// `|value|` over the channels at each pixel, divided by the map's 99th percentile of those —
/// in a black-red-yellow-white scale, blended in proportion to the strength (a pixel the class
/// does not depend on shows the plain input).
///
/// # Errors
/// [`Error::Length`] if `pixels` or `map` is not one sample of `shape`.
pub fn heatmap_overlay(shape: Shape3, pixels: &[f32], map: &[f32]) -> Result<Vec<u8>> {
    const OP: &str = "heatmap_overlay";
    let [c, h, w] = shape;
    let plane = h * w;
    crate::error::check_len(OP, "pixels", pixels, c * plane)?;
    crate::error::check_len(OP, "map", map, c * plane)?;
    let strength: Vec<f32> = (0..plane)
        .map(|i| (0..c).fold(0.0f32, |m, ch| m.max(map[ch * plane + i].abs())))
        .collect();
    let top = percentile_99(strength.iter().copied());
    let mut out = Vec::with_capacity(plane * 3);
    for (i, &s) in strength.iter().enumerate() {
        let grey = grey_at(pixels, c, plane, i);
        let t = if top > 0.0 && s.is_finite() {
            (s / top).min(1.0)
        } else {
            0.0
        };
        // black → red → yellow → white over t in [0, 1].
        let heat = [
            (3.0 * t).min(1.0),
            (3.0 * t - 1.0).clamp(0.0, 1.0),
            (3.0 * t - 2.0).clamp(0.0, 1.0),
        ];
        let alpha = t.sqrt();
        for hc in heat {
            let v = (1.0 - alpha) * grey + alpha * hc;
            out.push((v * 255.0).round() as u8);
        }
    }
    Ok(out)
}

/// A signed RGB picture (`h·w·3` bytes, row-major) of a saliency map over its input, and the
/// map value that full colour stands for. The input is drawn in grey (the mean of its channels,
/// clamped to `[0, 1]`); over it, each pixel's attribution — the sum of the map over the
/// channels — divided by the 99th percentile of its magnitude (`scale`, returned), clamped to
/// `[-1, 1]`, blends towards red where it is positive (the pixel raises the class score) and
/// blue where it is negative, in proportion to the square root of its magnitude. A pixel with no
/// attribution shows the plain input, so a black pixel is black background either way; the
/// colour bar of `cnnkit saliency`'s figure says so.
///
/// # Errors
/// [`Error::Length`] if `pixels` or `map` is not one sample of `shape`.
pub fn signed_overlay(shape: Shape3, pixels: &[f32], map: &[f32]) -> Result<(Vec<u8>, f32)> {
    const OP: &str = "signed_overlay";
    let [c, h, w] = shape;
    let plane = h * w;
    crate::error::check_len(OP, "pixels", pixels, c * plane)?;
    crate::error::check_len(OP, "map", map, c * plane)?;
    let value: Vec<f32> = (0..plane)
        .map(|i| (0..c).map(|ch| map[ch * plane + i]).sum::<f32>())
        .collect();
    let scale = percentile_99(value.iter().map(|v| v.abs()));
    let mut out = Vec::with_capacity(plane * 3);
    for (i, &v) in value.iter().enumerate() {
        let grey = grey_at(pixels, c, plane, i);
        let t = if scale > 0.0 && v.is_finite() {
            (v / scale).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let toward = if t >= 0.0 {
            SIGNED_POSITIVE
        } else {
            SIGNED_NEGATIVE
        };
        let alpha = t.abs().sqrt();
        for hc in toward {
            let v = (1.0 - alpha) * grey + alpha * hc;
            out.push((v * 255.0).round() as u8);
        }
    }
    Ok((out, scale))
}

/// The 99th percentile (nearest rank from below) of the finite `values`, 0 for none.
fn percentile_99(values: impl Iterator<Item = f32>) -> f32 {
    let mut sorted: Vec<f32> = values.filter(|v| v.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    sorted
        .get((sorted.len().saturating_sub(1) * 99).div_ceil(100))
        .copied()
        .unwrap_or(0.0)
}

/// Pixel `i` of a `c`-channel image of `plane` pixels per channel, in grey: the mean of its
/// channels, clamped to `[0, 1]`.
fn grey_at(pixels: &[f32], c: usize, plane: usize, i: usize) -> f32 {
    ((0..c).map(|ch| pixels[ch * plane + i]).sum::<f32>() / c.max(1) as f32).clamp(0.0, 1.0)
}

/// The colours [`signed_overlay`] blends towards: positive attribution (red) and negative (blue),
/// as RGB in `[0, 1]`.
pub const SIGNED_POSITIVE: [f32; 3] = [0.92, 0.12, 0.08];
/// See [`SIGNED_POSITIVE`].
pub const SIGNED_NEGATIVE: [f32; 3] = [0.10, 0.35, 1.0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::spec::LayerSpec;

    fn smooth_cnn() -> Sequential {
        // Smooth everywhere (tanh, average pooling), so finite differences apply.
        let specs =
            LayerSpec::parse_list("conv(3,3,p=1),tanh,avgpool(2),flatten,dense(4),tanh,dense(3)")
                .unwrap();
        Sequential::new([2, 4, 4], &specs, 11).unwrap()
    }

    fn sample() -> Vec<f32> {
        (0..32).map(|i| ((i * 7) % 11) as f32 / 10.0).collect()
    }

    /// The logit of class `c` at `x`, in pixel space.
    fn logit(m: &mut Sequential, x: &[f32], c: usize, norm: Option<&Normalization>) -> f64 {
        m.eval();
        let mut pm = PixelModel::new("test", m, norm).unwrap();
        pm.forward(x, 1).unwrap()[c] as f64
    }

    /// The signed picture keeps the sign: a positive pixel turns red, a negative one blue, a
    /// zero one shows the image; full colour stands for the 99th percentile of the magnitude.
    #[test]
    fn signed_overlays_keep_the_sign() {
        let pixels = [0.5f32, 0.5, 0.5, 0.0];
        let map = [2.0f32, -2.0, 0.0, 0.0];
        let (rgb, scale) = signed_overlay([1, 2, 2], &pixels, &map).unwrap();
        assert_eq!(scale, 2.0);
        let px = |i: usize| [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]];
        let full = |c: [f32; 3]| c.map(|v| (v * 255.0).round() as u8);
        assert_eq!(px(0), full(SIGNED_POSITIVE));
        assert_eq!(px(1), full(SIGNED_NEGATIVE));
        assert_eq!(px(2), [128, 128, 128]);
        assert_eq!(px(3), [0, 0, 0]);
        assert!(signed_overlay([1, 2, 2], &pixels, &map[..3]).is_err());
        // All zero: no colour anywhere, scale 0.
        let (rgb, scale) = signed_overlay([1, 2, 2], &pixels, &[0.0; 4]).unwrap();
        assert_eq!((scale, rgb[0]), (0.0, 128));
    }

    /// The gradient map is `∂f_c/∂pixel` by central differences, with and without a
    /// normalisation (which divides it by the channel's std).
    #[test]
    fn the_gradient_map_matches_finite_differences_in_pixel_units() {
        let mut m = smooth_cnn();
        let x = sample();
        let norm = Normalization::new(vec![0.4, 0.6], vec![0.2, 0.5]).unwrap();
        for n in [None, Some(&norm)] {
            let g = saliency(&mut m, &x, 2, &SaliencyMethod::Gradient, n).unwrap();
            for i in 0..x.len() {
                let h = 1e-2f32;
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (logit(&mut m, &a, 2, n) - logit(&mut m, &b, 2, n)) / (2.0 * h as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 1e-3 + 1e-2 * fd.abs(),
                    "pixel {i}: map {} vs finite difference {fd}",
                    g[i]
                );
            }
        }
    }

    /// Integrated gradients add up to `f_c(x) − f_c(baseline)` (completeness); on a linear model
    /// every method has its closed form.
    #[test]
    fn integrated_gradients_are_complete_and_linear_models_are_exact() {
        let mut m = smooth_cnn();
        let x = sample();
        let ig = SaliencyMethod::IntegratedGradients {
            steps: 64,
            baseline: 0.1,
        };
        let a = saliency(&mut m, &x, 1, &ig, None).unwrap();
        let total: f64 = a.iter().map(|&v| v as f64).sum();
        let want = logit(&mut m, &x, 1, None) - logit(&mut m, &[0.1; 32], 1, None);
        assert!(
            (total - want).abs() < 1e-3 + 1e-2 * want.abs(),
            "sum {total} vs f(x) − f(x₀) = {want}"
        );
        let specs = LayerSpec::parse_list("flatten,dense(2)").unwrap();
        let mut lin = Sequential::new([1, 2, 2], &specs, 0).unwrap();
        let w = lin.params()[4..8].to_vec();
        let x = [0.1f32, 0.5, 0.9, 0.3];
        let norm = Normalization::new(vec![0.5], vec![0.25]).unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-6);
        let g = saliency(&mut lin, &x, 1, &SaliencyMethod::Gradient, Some(&norm)).unwrap();
        assert!(close(&g, &w.iter().map(|v| v / 0.25).collect::<Vec<_>>()));
        let s = saliency(&mut lin, &x, 1, &SaliencyMethod::smoothgrad(), None).unwrap();
        assert!(
            close(&s, &w),
            "SmoothGrad of a linear model: {s:?} vs {w:?}"
        );
        let i = saliency(
            &mut lin,
            &x,
            1,
            &SaliencyMethod::integrated_gradients(),
            None,
        )
        .unwrap();
        let want: Vec<f32> = x.iter().zip(&w).map(|(x, w)| x * w).collect();
        assert!(close(&i, &want), "{i:?} vs {want:?}");
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut m = smooth_cnn();
        let x = sample();
        let err = |m: &mut Sequential, x: &[f32], c, meth: &SaliencyMethod| {
            saliency(m, x, c, meth, None).unwrap_err().to_string()
        };
        assert!(err(&mut m, &x, 3, &SaliencyMethod::Gradient).contains("class 3"));
        assert!(err(&mut m, &x[..5], 0, &SaliencyMethod::Gradient).contains("x"));
        let mut nan = x.clone();
        nan[2] = f32::NAN;
        assert!(err(&mut m, &nan, 0, &SaliencyMethod::Gradient).contains("x[2]"));
        let zero = SaliencyMethod::SmoothGrad {
            samples: 0,
            sigma: 0.1,
            seed: 0,
        };
        assert!(err(&mut m, &x, 0, &zero).contains("samples"));
        let bad_norm = Normalization {
            mean: vec![0.0],
            std: vec![1.0],
        };
        assert!(saliency(&mut m, &x, 0, &SaliencyMethod::Gradient, Some(&bad_norm)).is_err());
        assert!(SaliencyMethod::parse("lime").is_err());
        assert!(m.is_training(), "the mode is restored");
    }

    /// No attribution shows the plain input in grey; the strongest pixel is white.
    #[test]
    fn the_overlay_shows_the_input_and_the_strongest_pixel() {
        let px = [0.0f32, 0.5, 1.0, 0.25];
        let rgb = heatmap_overlay([1, 2, 2], &px, &[0.0; 4]).unwrap();
        assert_eq!(rgb, [0, 0, 0, 128, 128, 128, 255, 255, 255, 64, 64, 64]);
        let rgb = heatmap_overlay([1, 2, 2], &px, &[0.0, 0.0, 0.0, -3.0]).unwrap();
        assert_eq!(&rgb[9..], [255, 255, 255]);
        assert_eq!(&rgb[..9], [0, 0, 0, 128, 128, 128, 255, 255, 255]);
        assert!(heatmap_overlay([1, 2, 2], &px, &[0.0; 3]).is_err());
    }
}
