//! Pixels and the model's input. A model trained on normalised images sees
//! `(pixel − mean[c]) / std[c]`; a perturbation budget, a pixel range and a saliency map mean
//! something to a reader only in pixel units. Every function of [`crate::stability`] that takes a
//! [`Normalization`] works on pixels and runs the model on their normalised form, with the chain
//! rule (`∂/∂pixel = ∂/∂input / std[c]`) applied to its input gradients.

use crate::data::normalization::Normalization;
use crate::error::{Error, Result};
use crate::model::Sequential;

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

// ------------------------------------------------------------- shared by the stability tools

/// The Euclidean norm, in f64.
pub(super) fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&a| (a as f64) * (a as f64))
        .sum::<f64>()
        .sqrt()
}

/// An `Err` naming the first value of `x` that is NaN or outside `[lo, hi]`.
pub(super) fn check_in_range(op: &'static str, x: &[f32], (lo, hi): (f32, f32)) -> Result<()> {
    match x.iter().position(|v| !(lo..=hi).contains(v)) {
        Some(i) => Err(Error::invalid(
            op,
            "x",
            format!("x[{i}] = {} is NaN or outside the range [{lo}, {hi}]", x[i]),
        )),
        None => Ok(()),
    }
}

pub(super) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &a) in v.iter().enumerate() {
        if a > v[best] {
            best = i;
        }
    }
    best
}
