//! Known degradations `A` of an image, the inverse problems of Antun et al.'s setting: a network
//! trained to map `A(x)` back to `x` is an image-to-image network whose stability the
//! perturbation search measures.

use crate::data::{Dataset, Pairs};
use crate::error::{Error, Result};
use crate::rng::{normal_at, uniform_at};
use crate::shape::Shape3;

/// A degradation of images.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Degradation {
    /// Random pixel subsampling: a fixed mask (the same for every image and channel, drawn from
    /// `seed`) keeps each pixel position with probability `keep` and zeroes the others.
    Subsample {
        /// Probability of keeping a pixel, in `[0, 1]`.
        keep: f32,
        /// Seed of the mask.
        seed: u64,
    },
    /// Gaussian blur of standard deviation `sigma` pixels (separable, kernel radius `⌈3σ⌉`,
    /// borders replicated), then Gaussian noise of standard deviation `noise` (seeded, per
    /// image element).
    BlurNoise {
        /// Blur standard deviation in pixels (0: no blur).
        sigma: f32,
        /// Noise standard deviation (0: no noise).
        noise: f32,
        /// Seed of the noise.
        seed: u64,
    },
}

impl Degradation {
    fn validate(&self) -> Result<()> {
        const OP: &str = "Degradation";
        match *self {
            Degradation::Subsample { keep, .. } if !(0.0..=1.0).contains(&keep) => Err(
                Error::invalid(OP, "keep", format!("{keep} (must be in [0, 1])")),
            ),
            Degradation::BlurNoise { sigma, noise, .. }
                if !(sigma.is_finite() && sigma >= 0.0 && noise.is_finite() && noise >= 0.0) =>
            {
                Err(Error::invalid(
                    OP,
                    "sigma",
                    format!("blur {sigma}, noise {noise} (must be finite and >= 0)"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `A(x)` for the `x.len() / (c·h·w)` images `x` of `shape`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for settings out of range or an `x` that is not whole images.
    pub fn apply(&self, shape: Shape3, x: &[f32]) -> Result<Vec<f32>> {
        self.validate()?;
        let [_, h, w] = shape;
        let plane = h * w;
        let d = crate::shape::numel(shape);
        if d == 0 || !x.len().is_multiple_of(d) {
            return Err(Error::invalid(
                "Degradation::apply",
                "x",
                format!("{} values are not whole {shape:?} images", x.len()),
            ));
        }
        Ok(match *self {
            Degradation::Subsample { keep, seed } => x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if uniform_at(seed, (i % plane) as u64) < keep {
                        v
                    } else {
                        0.0
                    }
                })
                .collect(),
            Degradation::BlurNoise { sigma, noise, seed } => {
                let mut y = x.to_vec();
                if sigma > 0.0 {
                    let r = (3.0 * sigma).ceil() as isize;
                    let k: Vec<f32> = (-r..=r)
                        .map(|t| (-(t * t) as f32 / (2.0 * sigma * sigma)).exp())
                        .collect();
                    let s: f32 = k.iter().sum();
                    let k: Vec<f32> = k.iter().map(|v| v / s).collect();
                    let mut tmp = vec![0.0f32; plane];
                    for p in y.chunks_exact_mut(plane) {
                        let at = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
                        for yy in 0..h {
                            for xx in 0..w {
                                tmp[yy * w + xx] = k
                                    .iter()
                                    .enumerate()
                                    .map(|(j, kv)| {
                                        kv * p[yy * w + at(xx as isize + j as isize - r, w)]
                                    })
                                    .sum();
                            }
                        }
                        for yy in 0..h {
                            for xx in 0..w {
                                p[yy * w + xx] = k
                                    .iter()
                                    .enumerate()
                                    .map(|(j, kv)| {
                                        kv * tmp[at(yy as isize + j as isize - r, h) * w + xx]
                                    })
                                    .sum();
                            }
                        }
                    }
                }
                if noise > 0.0 {
                    for (i, v) in y.iter_mut().enumerate() {
                        *v += noise * normal_at(seed, i as u64);
                    }
                }
                y
            }
        })
    }

    /// Training pairs `(A(x), x)` from the images of `ds` (labels are ignored).
    ///
    /// # Errors
    /// As [`Degradation::apply`].
    pub fn pairs(&self, ds: &Dataset) -> Result<Pairs> {
        let y = self.apply(ds.shape(), ds.images())?;
        Pairs::new(y, ds.images().to_vec(), ds.shape(), ds.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsampling_keeps_a_fixed_fraction_of_positions() {
        let x = vec![1.0f32; 3 * 20 * 20];
        let y = Degradation::Subsample { keep: 0.3, seed: 4 }
            .apply([1, 20, 20], &x)
            .unwrap();
        let kept = y[..400].iter().filter(|&&v| v == 1.0).count();
        // 400 positions at p = 0.3: sd ≈ 9.2.
        assert!((kept as i32 - 120).abs() < 40, "kept {kept}");
        assert_eq!(y[..400], y[400..800], "the same mask for every image");
        assert!(y.iter().all(|&v| v == 0.0 || v == 1.0));
    }

    /// The blur preserves a constant image and the mean of a centred spot, and spreads the spot;
    /// the noise has the stated spread.
    #[test]
    fn blur_and_noise_do_what_they_say() {
        let blur = Degradation::BlurNoise {
            sigma: 1.0,
            noise: 0.0,
            seed: 0,
        };
        let c = blur.apply([1, 9, 9], &[0.5; 81]).unwrap();
        assert!(c.iter().all(|v| (v - 0.5).abs() < 1e-6));
        let mut spot = vec![0.0f32; 81];
        spot[40] = 1.0;
        let b = blur.apply([1, 9, 9], &spot).unwrap();
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(b[40] < 0.2 && b[41] > 0.05 && (b[41] - b[39]).abs() < 1e-7);
        let noisy = Degradation::BlurNoise {
            sigma: 0.0,
            noise: 0.1,
            seed: 2,
        }
        .apply([1, 100, 100], &[0.0; 10_000])
        .unwrap();
        let sd = (noisy.iter().map(|v| (v * v) as f64).sum::<f64>() / 1e4).sqrt();
        assert!((sd - 0.1).abs() < 0.005, "sd {sd}");
        assert!(
            Degradation::Subsample { keep: 2.0, seed: 0 }
                .apply([1, 2, 2], &[0.0; 4])
                .is_err()
        );
        assert!(blur.apply([1, 2, 2], &[0.0; 5]).is_err());
    }
}
