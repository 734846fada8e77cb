//! Pixels and the model's input. A model trained on normalised images sees
//! `(pixel − mean[c]) / std[c]`; a perturbation budget, a pixel range and a saliency map mean
//! something to a reader only in pixel units. Every function of [`crate::stability`] that takes a
//! [`Normalization`] works on pixels and runs the model on their normalised form, with the chain
//! rule (`∂/∂pixel = ∂/∂input / std[c]`) applied to its input gradients.

use crate::error::{Error, Result};
use crate::model::Sequential;

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
    pub(super) fn check(&self, op: &'static str, channels: usize) -> Result<()> {
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
        crate::simd::dispatch(
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

/// A model seen from pixel space: forward and input gradient on pixels.
pub(super) struct PixelModel<'a> {
    pub model: &'a mut Sequential,
    norm: Option<&'a Normalization>,
    plane: usize,
    input: Vec<f32>,
}

impl<'a> PixelModel<'a> {
    /// # Errors
    /// [`Error::InvalidArg`] if `norm` does not fit the model's input channels.
    pub fn new(
        op: &'static str,
        model: &'a mut Sequential,
        norm: Option<&'a Normalization>,
    ) -> Result<Self> {
        let [c, h, w] = model.input_shape();
        if let Some(n) = norm {
            n.check(op, c)?;
        }
        Ok(PixelModel {
            model,
            norm,
            plane: h * w,
            input: Vec::new(),
        })
    }

    /// Fills `self.input` with the normalised `px` (when there is a normalisation).
    fn normalise(&mut self, px: &[f32]) {
        if let Some(n) = self.norm {
            self.input.resize(px.len(), 0.0);
            n.to_input(self.plane, px, &mut self.input);
        }
    }

    /// The model's output for the `n` samples `px`.
    pub fn forward(&mut self, px: &[f32], n: usize) -> Result<&[f32]> {
        self.normalise(px);
        let x = if self.norm.is_some() { &self.input } else { px };
        self.model.forward(x, n)
    }

    /// `∂(dout · f)/∂pixels` into `grad`, after [`PixelModel::forward`] on the same `px`.
    pub fn input_gradient(&mut self, px: &[f32], dout: &[f32], grad: &mut [f32]) -> Result<()> {
        self.normalise(px);
        let x = if self.norm.is_some() { &self.input } else { px };
        self.model.input_gradient(x, dout, grad, None)?;
        if let Some(n) = self.norm {
            let c = n.std.len();
            for (p, g) in grad.chunks_mut(self.plane.max(1)).enumerate() {
                let s = n.std[p % c];
                g.iter_mut().for_each(|v| *v /= s);
            }
        }
        Ok(())
    }
}

/// Runs `f` on `model` in evaluation mode, restoring its mode afterwards (also on error).
pub(super) fn in_eval<R>(
    model: &mut Sequential,
    f: impl FnOnce(&mut Sequential) -> Result<R>,
) -> Result<R> {
    let was_training = model.is_training();
    model.eval();
    let r = f(model);
    if was_training {
        model.train();
    }
    r
}
