//! Forward operators of inverse problems: what turns an image into what a reconstruction network
//! sees. The instability study (Antun et al., PNAS 2020) perturbs the *image* and lets the
//! operator carry the perturbation to the network — `f(A(x + r))` — because a perturbation of the
//! network's input that no measurement could carry (on pixels a subsampling mask always zeroes)
//! says nothing about the imaging problem. Each operator here is linear and self-adjoint
//! (`⟨Ax, y⟩ = ⟨x, Ay⟩`), so the search's chain rule `∂/∂r = Aᵀ ∂/∂(Ar)` applies it twice.

use crate::error::{Error, Result};
use crate::shape::Shape3;

/// A linear forward operator on one image (`[C, H, W]`, every channel alike).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Operator {
    /// Keeps the pixel positions marked `true` (`H·W` of them, row-major) and zeroes the others:
    /// subsampling, as inpainting and the reconstruction example's degradation.
    Mask {
        /// Which positions are measured.
        keep: Vec<bool>,
    },
    /// Gaussian blur of standard deviation `sigma` pixels: a normalised kernel of radius
    /// `⌈3σ⌉`, zero outside the image (which keeps the operator symmetric).
    Blur {
        /// Standard deviation in pixels (> 0).
        sigma: f32,
    },
    /// MRI-like: the 2-D discrete Fourier transform of each channel, the frequencies marked
    /// `true` kept (`H·W` of them, row-major, frequency `(u, v)` at `u·W + v`), transformed back,
    /// real part: `Re(F⁻¹(M ⊙ F x))` (the zero-filled reconstruction of undersampled k-space).
    Fourier {
        /// Which frequencies are measured.
        keep: Vec<bool>,
    },
}

impl Operator {
    /// The mask of [`Degradation::Subsample`](super::Degradation::Subsample) with the same
    /// `keep` probability and `seed` for `h`x`w` images: the operator that degradation applies.
    pub fn subsample(h: usize, w: usize, keep: f32, seed: u64) -> Operator {
        Operator::Mask {
            keep: (0..h * w)
                .map(|i| crate::rng::uniform_at(seed, i as u64) < keep)
                .collect(),
        }
    }

    /// A k-space mask keeping the `low`x`low` lowest frequencies (centred on 0, both signs) and,
    /// beyond them, each frequency with probability `keep` (seeded), as variable-density
    /// undersampling does.
    pub fn fourier(h: usize, w: usize, low: usize, keep: f32, seed: u64) -> Operator {
        let near = |f: usize, n: usize| f.min(n - f) <= low / 2;
        Operator::Fourier {
            keep: (0..h * w)
                .map(|i| {
                    (near(i / w, h) && near(i % w, w))
                        || crate::rng::uniform_at(seed, i as u64) < keep
                })
                .collect(),
        }
    }

    /// An `Err` when `x` is not one image of `shape` or the operator does not fit it.
    fn check(&self, shape: Shape3, x: &[f32]) -> Result<()> {
        const OP: &str = "Operator::apply";
        let [c, h, w] = shape;
        let plane = h * w;
        if x.len() != c * plane || plane == 0 {
            return Err(Error::invalid(
                OP,
                "x",
                format!("{} values are not one {c}x{h}x{w} image", x.len()),
            ));
        }
        match self {
            Operator::Mask { keep } | Operator::Fourier { keep } if keep.len() != plane => {
                Err(Error::invalid(
                    OP,
                    "keep",
                    format!("a mask of {} positions for {h}x{w} images", keep.len()),
                ))
            }
            Operator::Blur { sigma } if !(sigma.is_finite() && *sigma > 0.0 && *sigma <= 1e3) => {
                Err(Error::invalid(
                    OP,
                    "sigma",
                    format!("{sigma} (must be in (0, 1000])"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `A x` for one image `x` of `shape`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] when `x` is not one image of `shape`, a mask is not `H·W` long, or
    /// `sigma` is not a positive number.
    pub fn apply(&self, shape: Shape3, x: &[f32]) -> Result<Vec<f32>> {
        self.check(shape, x)?;
        let [_, h, w] = shape;
        let plane = h * w;
        let mut y = vec![0.0f32; x.len()];
        match self {
            Operator::Mask { keep } => {
                for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
                    *o = if keep[i % plane] { v } else { 0.0 };
                }
            }
            Operator::Blur { sigma } => {
                let k = gaussian(*sigma);
                let mut tmp = vec![0.0f32; plane];
                for (xs, ys) in x.chunks_exact(plane).zip(y.chunks_exact_mut(plane)) {
                    blur_1d(xs, &mut tmp, &k, h, w, 1, w); // along rows
                    blur_1d(&tmp, ys, &k, w, h, w, 1); // along columns
                }
            }
            Operator::Fourier { keep } => {
                for (xs, ys) in x.chunks_exact(plane).zip(y.chunks_exact_mut(plane)) {
                    masked_fourier(xs, ys, keep, h, w);
                }
            }
        }
        Ok(y)
    }

    /// Noise as a measurement would carry it, from white noise `g` (one image): what the
    /// operator measures of it for a mask or a Fourier mask (noise on the measured pixels or
    /// frequencies only — the rest of the network's input is always zero), `g` itself for a blur
    /// (noise added to the blurred image).
    ///
    /// # Errors
    /// As [`Operator::apply`].
    pub fn measurement_noise(&self, shape: Shape3, g: &[f32]) -> Result<Vec<f32>> {
        match self {
            Operator::Blur { .. } => {
                self.check(shape, g)?;
                Ok(g.to_vec())
            }
            _ => self.apply(shape, g),
        }
    }

    /// `Aᵀ y`: every operator here is self-adjoint, so it is [`Operator::apply`].
    ///
    /// # Errors
    /// As [`Operator::apply`].
    pub fn adjoint(&self, shape: Shape3, y: &[f32]) -> Result<Vec<f32>> {
        self.apply(shape, y)
    }
}

/// A normalised Gaussian kernel of radius `⌈3σ⌉`.
fn gaussian(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * (sigma as f64).powi(2))).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter().map(|v| (v / s) as f32).collect()
}

/// Convolves `lines` lines of `len` values (element `j` of line `l` at `l·line + j·step`) with
/// the symmetric kernel `k`, zero outside.
fn blur_1d(
    x: &[f32],
    y: &mut [f32],
    k: &[f32],
    len: usize,
    lines: usize,
    line: usize,
    step: usize,
) {
    let r = (k.len() / 2) as i64;
    for l in 0..lines {
        for j in 0..len as i64 {
            let mut acc = 0.0f32;
            for (t, &kv) in k.iter().enumerate() {
                let s = j + t as i64 - r;
                if (0..len as i64).contains(&s) {
                    acc += kv * x[l * line + s as usize * step];
                }
            }
            y[l * line + j as usize * step] = acc;
        }
    }
}

/// `Re(F⁻¹(M ⊙ F x))` of one `h`x`w` plane, with separable DFTs in `f64`.
fn masked_fourier(x: &[f32], y: &mut [f32], keep: &[bool], h: usize, w: usize) {
    let twiddles = |n: usize| -> Vec<(f64, f64)> {
        (0..n)
            .map(|k| {
                let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
                (a.cos(), a.sin())
            })
            .collect()
    };
    let (th, tw) = (twiddles(h), twiddles(w));
    // One DFT along a line: out[k] = Σ_j in[j]·e^(∓2πi·jk/n) (`inverse` conjugates).
    let dft = |inp: &[(f64, f64)], out: &mut [(f64, f64)], t: &[(f64, f64)], inverse: bool| {
        let n = inp.len();
        for (k, o) in out.iter_mut().enumerate() {
            let (mut re, mut im) = (0.0, 0.0);
            for (j, &(a, b)) in inp.iter().enumerate() {
                let (c, s) = t[(j * k) % n];
                let s = if inverse { -s } else { s };
                re += a * c - b * s;
                im += a * s + b * c;
            }
            *o = (re, im);
        }
    };
    let mut z: Vec<(f64, f64)> = x.iter().map(|&v| (v as f64, 0.0)).collect();
    let (mut line, mut out) = (Vec::new(), Vec::new());
    // Forward along rows then columns, mask, inverse along columns then rows.
    let pass = |z: &mut [(f64, f64)], inverse: bool, line: &mut Vec<_>, out: &mut Vec<_>| {
        for r in 0..h {
            line.clear();
            line.extend_from_slice(&z[r * w..(r + 1) * w]);
            out.resize(w, (0.0, 0.0));
            dft(line, out, &tw, inverse);
            z[r * w..(r + 1) * w].copy_from_slice(out);
        }
        for c in 0..w {
            line.clear();
            line.extend((0..h).map(|r| z[r * w + c]));
            out.resize(h, (0.0, 0.0));
            dft(line, out, &th, inverse);
            for r in 0..h {
                z[r * w + c] = out[r];
            }
        }
    };
    pass(&mut z, false, &mut line, &mut out);
    for (v, &k) in z.iter_mut().zip(keep) {
        if !k {
            *v = (0.0, 0.0);
        }
    }
    pass(&mut z, true, &mut line, &mut out);
    let scale = 1.0 / (h * w) as f64;
    for (o, &(re, _)) in y.iter_mut().zip(&z) {
        *o = (re * scale) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    fn operators(h: usize, w: usize) -> Vec<Operator> {
        vec![
            Operator::subsample(h, w, 0.5, 3),
            Operator::Blur { sigma: 0.8 },
            Operator::fourier(h, w, 2, 0.3, 5),
        ]
    }

    /// `⟨Ax, y⟩ = ⟨x, Aᵀy⟩` for random `x`, `y`: the search's gradient is right only if it holds.
    #[test]
    fn operators_are_self_adjoint() {
        let shape = [2, 6, 7];
        for a in operators(6, 7) {
            let (x, y) = (random(84, 1), random(84, 2));
            let lhs = dot(&a.apply(shape, &x).unwrap(), &y);
            let rhs = dot(&x, &a.adjoint(shape, &y).unwrap());
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{a:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// The mask is the subsampling degradation's; a full Fourier mask is the identity, an empty
    /// one zero, and keeping only frequency 0 leaves each channel's mean; the blur keeps a
    /// constant image's interior and spreads an impulse into the kernel.
    #[test]
    fn operators_do_what_they_say() {
        let shape = [1, 8, 8];
        let x: Vec<f32> = (0..64).map(|i| (i % 9) as f32 / 8.0).collect();
        let d = crate::stability::degrade::Degradation::Subsample { keep: 0.4, seed: 7 };
        assert_eq!(
            Operator::subsample(8, 8, 0.4, 7).apply(shape, &x).unwrap(),
            d.apply(shape, &x).unwrap()
        );
        let all = Operator::Fourier {
            keep: vec![true; 64],
        }
        .apply(shape, &x)
        .unwrap();
        assert!(all.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
        let none = Operator::Fourier {
            keep: vec![false; 64],
        }
        .apply(shape, &x)
        .unwrap();
        assert!(none.iter().all(|v| v.abs() < 1e-6));
        let mut dc = vec![false; 64];
        dc[0] = true;
        let mean = x.iter().sum::<f32>() / 64.0;
        let m = Operator::Fourier { keep: dc }.apply(shape, &x).unwrap();
        assert!(m.iter().all(|v| (v - mean).abs() < 1e-5), "{m:?}");
        let b = Operator::Blur { sigma: 0.7 }
            .apply(shape, &[0.5; 64])
            .unwrap();
        assert!((b[3 * 8 + 3] - 0.5).abs() < 1e-6 && b[0] < 0.5);
        let mut imp = vec![0.0; 64];
        imp[27] = 1.0;
        let b = Operator::Blur { sigma: 0.7 }.apply(shape, &imp).unwrap();
        let k = gaussian(0.7);
        assert!((b[27] - k[k.len() / 2].powi(2)).abs() < 1e-6);
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn bad_operators_are_errors() {
        let x = vec![0.0; 16];
        for (a, what) in [
            (
                Operator::Mask {
                    keep: vec![true; 5],
                },
                "keep",
            ),
            (
                Operator::Fourier {
                    keep: vec![true; 15],
                },
                "keep",
            ),
            (Operator::Blur { sigma: 0.0 }, "sigma"),
            (Operator::Blur { sigma: f32::NAN }, "sigma"),
        ] {
            let e = a.apply([1, 4, 4], &x).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        assert!(
            Operator::Blur { sigma: 1.0 }
                .apply([1, 4, 4], &x[..15])
                .is_err()
        );
    }
}
