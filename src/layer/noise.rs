//! The layers that act only while training: `nn.Dropout`, torchvision's `StochasticDepth` and
//! additive Gaussian noise; each is the identity in evaluation.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, grow, shape_error};
use crate::error::Result;
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::shape::Shape3;

/// Which elements a [`Dropped`] layer drops together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drop {
    /// Each element on its own (`nn.Dropout`).
    Elements,
    /// Whole samples (torchvision's `StochasticDepth(p, "row")`).
    Samples,
}

/// Dropout and stochastic depth: a seeded mask of `0` and `1/(1 − p)` factors while training
/// (one per element or one per sample), the identity in evaluation.
#[derive(Debug)]
pub(crate) struct Dropped {
    drop: Drop,
    p: f32,
    shape: Shape3,
    mask: Vec<f32>,
    trained: bool,
}

impl Dropped {
    pub fn new(drop: Drop, p: f32, input: Shape3) -> Result<Self> {
        let layer = Dropped {
            drop,
            p,
            shape: input,
            mask: Vec::new(),
            trained: false,
        };
        if !(0.0..=1.0).contains(&p) {
            return Err(shape_error(&layer.spec(), input, "p must be in [0, 1]"));
        }
        Ok(layer)
    }
    fn name(&self) -> &'static str {
        match self.drop {
            Drop::Elements => "dropout",
            Drop::Samples => "stochastic_depth",
        }
    }
}

impl Layer for Dropped {
    fn spec(&self) -> LayerSpec {
        match self.drop {
            Drop::Elements => LayerSpec::Dropout { p: self.p },
            Drop::Samples => LayerSpec::StochasticDepth { p: self.p },
        }
    }
    fn out_shape(&self) -> Shape3 {
        self.shape
    }
    fn forward(
        &mut self,
        n: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        self.trained = ctx.training;
        if !ctx.training {
            return pass_through(self.name(), "y", x, y);
        }
        let (p, seed) = (self.p, ctx.seed);
        match self.drop {
            Drop::Elements => {
                let mask = grow("Dropout::forward", &mut self.mask, x.len())?;
                kernels::dropout_forward_train(p, seed, x, y, mask)
            }
            Drop::Samples => {
                let mask = grow("StochasticDepth::forward", &mut self.mask, n)?;
                kernels::stochastic_depth_forward_train(p, seed, n, x, y, mask)
            }
        }
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { n, dy, dx, .. } = b;
        let Some(dx) = dx else { return Ok(()) };
        if !self.trained {
            return pass_through(self.name(), "dx", dy, dx);
        }
        match self.drop {
            Drop::Elements => {
                kernels::dropout_backward(&self.mask[..dy.len()], dy, dx, Accum::Replace)
            }
            Drop::Samples => {
                kernels::stochastic_depth_backward(&self.mask[..n], dy, dx, Accum::Replace)
            }
        }
    }
}

/// `to = from` (the identity pass of a layer that only acts in training), checking the length.
fn pass_through(op: &'static str, what: &'static str, from: &[f32], to: &mut [f32]) -> Result<()> {
    crate::error::check_len(op, what, to, from.len())?;
    to.copy_from_slice(from);
    Ok(())
}

/// Additive Gaussian noise while training, the identity in evaluation.
#[derive(Debug)]
pub(crate) struct GaussianNoise {
    std: f32,
    shape: Shape3,
}

impl GaussianNoise {
    pub fn new(std: f32, input: Shape3) -> Result<Self> {
        if !(std.is_finite() && std >= 0.0) {
            return Err(shape_error(
                &LayerSpec::GaussianNoise { std },
                input,
                "std must be finite and >= 0",
            ));
        }
        Ok(GaussianNoise { std, shape: input })
    }
}

impl Layer for GaussianNoise {
    fn spec(&self) -> LayerSpec {
        LayerSpec::GaussianNoise { std: self.std }
    }
    fn out_shape(&self) -> Shape3 {
        self.shape
    }
    fn forward(
        &mut self,
        _: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        if ctx.training {
            kernels::gaussian_noise_forward_train(self.std, ctx.seed, x, y)
        } else {
            pass_through("noise", "y", x, y)
        }
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { dy, dx, .. } = b;
        // The noise does not depend on x: dx = dy in both modes.
        let Some(dx) = dx else { return Ok(()) };
        pass_through("noise", "dx", dy, dx)
    }
}
