//! Activation layers: the element-wise activations, `nn.PReLU` and `nn.RReLU`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, ParamKind, grow, shape_error};
use crate::error::Result;
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::kernels::activation::Activation;
use crate::shape::Shape4;
use crate::shape::{Shape3, numel};

#[derive(Debug)]
pub(crate) struct Act {
    act: Activation,
    shape: Shape3,
}

impl Act {
    pub fn new(act: Activation, input: Shape3) -> Result<Self> {
        if let Activation::Softplus { beta, .. } = act
            && beta == 0.0
        {
            return Err(shape_error(
                &LayerSpec::Activation(act),
                input,
                "softplus beta must be non-zero",
            ));
        }
        Ok(Act { act, shape: input })
    }
}

impl Layer for Act {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Activation(self.act)
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
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        kernels::activation_forward(self.act, x, y)
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { x, y, dy, dx, .. } = b;
        match dx {
            Some(dx) => kernels::activation_backward(self.act, x, y, dy, dx, Accum::Replace),
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct PRelu {
    per_channel: bool,
    shape: Shape3,
}

impl PRelu {
    pub fn new(per_channel: bool, input: Shape3) -> Self {
        PRelu {
            per_channel,
            shape: input,
        }
    }
    fn shape4(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.shape[0], self.shape[1], self.shape[2])
    }
}

impl Layer for PRelu {
    fn spec(&self) -> LayerSpec {
        LayerSpec::PRelu {
            per_channel: self.per_channel,
        }
    }
    fn out_shape(&self) -> Shape3 {
        self.shape
    }
    fn params(&self) -> Vec<ParamInfo> {
        let n = if self.per_channel { self.shape[0] } else { 1 };
        vec![ParamInfo {
            name: "weight",
            shape: vec![n],
            kind: ParamKind::Const(0.25),
        }]
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        kernels::prelu_forward(self.shape4(n), x, p, y)
    }
    fn backward(&mut self, b: Backward<'_>, ctx: &mut Ctx<'_>) -> Result<()> {
        let Backward {
            n,
            params: p,
            grads: grad,
            x,
            dy,
            dx,
            accum,
            ..
        } = b;
        // The kernel always writes dx; without a caller buffer it goes to scratch. The input
        // gradient is overwritten; `accum` is for the slope's gradient.
        let len = n * numel(self.shape);
        let dx = match dx {
            Some(dx) => dx,
            None => &mut ctx.ws[..len],
        };
        kernels::prelu_backward_split(self.shape4(n), x, p, dy, (dx, Accum::Replace), grad, accum)
    }
    fn scratch_len(&self, n: usize) -> usize {
        n * numel(self.shape)
    }
}

#[derive(Debug)]
pub(crate) struct RRelu {
    lower: f32,
    upper: f32,
    shape: Shape3,
    noise: Vec<f32>,
    /// Whether the last forward ran in training mode (noise) or evaluation (mean slope).
    trained: bool,
}

impl RRelu {
    pub fn new(lower: f32, upper: f32, input: Shape3) -> Result<Self> {
        if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
            return Err(shape_error(
                &LayerSpec::RRelu { lower, upper },
                input,
                "need finite lower <= upper",
            ));
        }
        Ok(RRelu {
            lower,
            upper,
            shape: input,
            noise: Vec::new(),
            trained: false,
        })
    }
    fn eval_act(&self) -> Activation {
        Activation::LeakyRelu {
            slope: (self.lower + self.upper) / 2.0,
        }
    }
}

impl Layer for RRelu {
    fn spec(&self) -> LayerSpec {
        LayerSpec::RRelu {
            lower: self.lower,
            upper: self.upper,
        }
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
        self.trained = ctx.training;
        if ctx.training {
            let noise = grow("RReLU::forward", &mut self.noise, x.len())?;
            kernels::rrelu_forward_train(self.lower, self.upper, ctx.seed, x, y, noise)
        } else {
            kernels::activation_forward(self.eval_act(), x, y)
        }
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { x, y, dy, dx, .. } = b;
        let Some(dx) = dx else { return Ok(()) };
        if self.trained {
            kernels::rrelu_backward_train(&self.noise[..dy.len()], dy, dx, Accum::Replace)
        } else {
            kernels::activation_backward(self.eval_act(), x, y, dy, dx, Accum::Replace)
        }
    }
}

/// Softmax over the channels at each position of each sample (`nn.Softmax(dim=1)`).
#[derive(Debug)]
pub(crate) struct Softmax {
    shape: Shape3,
}

impl Softmax {
    pub fn new(input: Shape3) -> Self {
        Softmax { shape: input }
    }
}

impl Layer for Softmax {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Softmax
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
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        let [c, h, w] = self.shape;
        kernels::softmax::softmax_channels_forward(c, h * w, x, y)
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { y, dy, dx, .. } = b;
        let [c, h, w] = self.shape;
        match dx {
            Some(dx) => {
                kernels::softmax::softmax_channels_backward(c, h * w, y, dy, dx, Accum::Replace)
            }
            None => Ok(()),
        }
    }
}
