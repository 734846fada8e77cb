//! Per-channel normalisation between pixels and a model's input: data preparation, used by
//! augmentation (which works in pixel units), by training, and by the stability tools (whose
//! budgets and maps mean something only in pixel units).

use crate::error::{Error, Result};

/// Per-channel normalisation between pixels and a model's input, as torchvision's
/// `Normalize(mean, std)`: `input = (pixel − mean[c]) / std[c]` on NCHW data.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    /// Per-channel mean, in pixel units.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, in pixel units (finite and > 0).
    pub std: Vec<f32>,
}

impl Normalization {
    /// The normalisation `(pixel − mean[c]) / std[c]`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] if the lengths differ or are 0, a mean is not finite, or a standard
    /// deviation is not finite and > 0.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        let n = Normalization { mean, std };
        n.check("Normalization::new", n.mean.len())?;
        Ok(n)
    }

    /// `Err` unless there is one valid mean and standard deviation for each of `channels`.
    pub(crate) fn check(&self, op: &'static str, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels || channels == 0 {
            return Err(Error::invalid(
                op,
                "normalization",
                format!(
                    "{} means and {} standard deviations for a {channels}-channel input",
                    self.mean.len(),
                    self.std.len()
                ),
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::invalid(op, "normalization", format!("mean {m}")));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::invalid(
                op,
                "normalization",
                format!("standard deviation {s} (must be finite and > 0)"),
            ));
        }
        Ok(())
    }

    /// Applies `f(value, channel)` to NCHW data with planes of `plane` values.
    #[inline(always)]
    fn each(&self, plane: usize, from: &[f32], to: &mut [f32], f: impl Fn(f32, usize) -> f32) {
        let c = self.mean.len();
        for (p, (a, b)) in from
            .chunks(plane.max(1))
            .zip(to.chunks_mut(plane.max(1)))
            .enumerate()
        {
            for (x, y) in a.iter().zip(b) {
                *y = f(*x, p % c);
            }
        }
    }

    /// `input = (pixel − mean[c]) / std[c]` for NCHW `pixels` with planes of `plane` values.
    pub fn to_input(&self, plane: usize, pixels: &[f32], input: &mut [f32]) {
        self.each(plane, pixels, input, |v, c| {
            (v - self.mean[c]) / self.std[c]
        });
    }

    /// `pixel = input·std[c] + mean[c]`, the inverse of [`Normalization::to_input`].
    pub fn to_pixels(&self, plane: usize, input: &[f32], pixels: &mut [f32]) {
        // Inside `dispatch`, so that `mul_add` is the FMA instruction where the CPU has one
        // rather than the software `fmaf` of the x86-64 baseline (the same bits either way).
        crate::arch::dispatch(
            #[inline(always)]
            || {
                self.each(
                    plane,
                    input,
                    pixels,
                    #[inline(always)]
                    |v, c| v.mul_add(self.std[c], self.mean[c]),
                )
            },
        );
    }
}
