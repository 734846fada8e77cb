//! `nn.MaxPool2d`, `nn.AvgPool2d`, global average pooling and `nn.Flatten`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, grow, shape_error};
use crate::error::Result;
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::shape::Shape3;
use crate::shape::numel;
use crate::shape::{Pool2dGeom, Pool2dParams, Shape4};

#[derive(Debug)]
pub(crate) struct Pool {
    spec: LayerSpec,
    input: Shape3,
    params: Pool2dParams,
    /// `Some(count_include_pad)` for average pooling, `None` for max pooling.
    avg: Option<bool>,
    out: Shape3,
    argmax: Vec<u32>,
    /// The batch norm's input at each maximum, when the pool reads a batch norm's output (for
    /// its backward sums, see [`kernels::planes::Planes::Pooled`]).
    at_max: Vec<f32>,
    /// Max pooling that also does the ReLU before it: `maxpool(relu(x)) = relu(maxpool(x))`,
    /// and the ReLU's backward mask is `maxpool output > 0` at the pooled positions.
    relu: bool,
    /// Max pooling that reads a batch norm's output plane by plane, the batch norm's output
    /// never stored (set by the model, see [`Pool::forward_from`]).
    bn: bool,
}

impl Pool {
    pub fn new(spec: &LayerSpec, input: Shape3) -> Result<Self> {
        let (params, avg) = match *spec {
            LayerSpec::MaxPool2d {
                window,
                stride,
                padding,
            } => (
                Pool2dParams {
                    window,
                    stride,
                    padding,
                },
                None,
            ),
            LayerSpec::AvgPool2d {
                window,
                stride,
                padding,
                count_include_pad,
            } => (
                Pool2dParams {
                    window,
                    stride,
                    padding,
                },
                Some(count_include_pad),
            ),
            _ => unreachable!("Pool::new with {spec:?}"),
        };
        let g = Pool2dGeom::new(Shape4::new(1, input[0], input[1], input[2]), params)
            .map_err(|e| shape_error(spec, input, e))?;
        Ok(Pool {
            spec: spec.clone(),
            input,
            params,
            avg,
            out: [input[0], g.out_h(), g.out_w()],
            argmax: Vec::new(),
            at_max: Vec::new(),
            relu: false,
            bn: false,
        })
    }

    fn geom(&self, n: usize) -> Result<Pool2dGeom> {
        Pool2dGeom::new(
            Shape4::new(n, self.input[0], self.input[1], self.input[2]),
            self.params,
        )
    }

    /// Whether this is a max-pool (which can read a batch norm's output plane by plane).
    pub(crate) fn is_max(&self) -> bool {
        self.avg.is_none()
    }

    /// Takes over (`on`) or gives back the work of a ReLU directly before this max-pool
    /// (`maxpool(relu(x)) = relu(maxpool(x))`): its forward then sees the ReLU's input and its
    /// backward returns the ReLU's input gradient. Average pooling cannot.
    pub(crate) fn absorb_relu(&mut self, on: bool) {
        self.relu = on && self.is_max();
    }

    /// Takes over (`on`) or gives back the output pass of the batch norm before it (and of the
    /// ReLU between them, if it absorbed one): see [`Pool::forward_from`].
    pub(crate) fn absorb_bn(&mut self, on: bool) {
        self.bn = on && self.is_max();
    }

    /// Max pooling of `x` read through `src` (a batch norm's output map of the model's
    /// activation, made one plane at a time in `ws`), with the absorbed ReLU.
    pub(crate) fn forward_from(
        &mut self,
        n: usize,
        src: kernels::planes::Planes<'_>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let g = self.geom(n)?;
        let a = grow("MaxPool2d::forward", &mut self.argmax, g.y_len())?;
        let m = grow("MaxPool2d::forward", &mut self.at_max, g.y_len())?;
        kernels::max_pool2d_forward_from(&g, src, y, Some(a), Some(m), ws)?;
        if self.relu {
            kernels::relu_in_place(y);
        }
        Ok(())
    }

    /// The forward pass of convolution `conv` (parameters `p`, input `x`) and this max-pool with
    /// its absorbed ReLU, image by image: the convolution's output is never stored.
    pub(crate) fn forward_conv(
        &mut self,
        n: usize,
        conv: &super::conv2d::Conv2d,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let g = self.geom(n)?;
        let a = grow("MaxPool2d::forward", &mut self.argmax, g.y_len())?;
        conv.forward_pooled(n, p, x, &g, y, a, ws)?;
        if self.relu {
            kernels::relu_in_place(y);
        }
        Ok(())
    }

    /// The gradient at the pooled positions (`dy`, masked by the absorbed ReLU into `ws` when
    /// there is one) and the indices of the last forward pass, as [`kernels::planes::Planes::Pooled`]
    /// (the max-pool's input gradient, spread plane by plane by its consumer); `ws` keeps what
    /// follows the masked gradient free.
    pub(crate) fn pooled_grad<'a>(
        &'a self,
        n: usize,
        y: &[f32],
        dy: &'a [f32],
        ws: &'a mut [f32],
    ) -> Result<(kernels::planes::Planes<'a>, &'a mut [f32])> {
        let g = self.geom(n)?;
        let argmax = self.argmax.get(..g.y_len()).ok_or_else(|| {
            crate::error::Error::invalid("MaxPool2d::backward", "forward", "no forward pass")
        })?;
        let (dy, rest) = self.relu_masked(y, dy, ws)?;
        let out_plane = g.out_h() * g.out_w();
        Ok((
            kernels::planes::Planes::Pooled {
                dy,
                argmax,
                out_plane,
                pairs: kernels::pool::pairs(&g),
                at_max: self.bn.then(|| self.at_max.get(..g.y_len())).flatten(),
            },
            rest,
        ))
    }

    /// `dy` with the absorbed ReLU's mask applied (into the front of `ws`), or `dy` itself, and
    /// the rest of `ws`.
    fn relu_masked<'a>(
        &self,
        y: &[f32],
        dy: &'a [f32],
        ws: &'a mut [f32],
    ) -> Result<(&'a [f32], &'a mut [f32])> {
        if !self.relu {
            return Ok((dy, ws));
        }
        // The ReLU's mask, on the pooled values: zero where the window's maximum is not
        // positive (ReLU's gradient at 0 is 0).
        crate::error::check_min_len("MaxPool2d::backward", "scratch", ws, dy.len())?;
        let (masked, rest) = ws.split_at_mut(dy.len());
        kernels::activation_backward(kernels::Activation::Relu, y, y, dy, masked, Accum::Replace)?;
        Ok((masked, rest))
    }
}

impl Layer for Pool {
    fn spec(&self) -> LayerSpec {
        self.spec.clone()
    }
    fn out_shape(&self) -> Shape3 {
        self.out
    }
    fn scratch_len(&self, n: usize) -> usize {
        let masked = if self.relu { n * numel(self.out) } else { 0 };
        // A plane per thread for the batch norm's output, then its backward pass's sums.
        let bn = if self.bn {
            let c = self.input[0];
            crate::par::threads() * self.input[1] * self.input[2] + 2 * c + 2 * n * c
        } else {
            0
        };
        masked + bn
    }
    fn forward(
        &mut self,
        n: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        let g = self.geom(n)?;
        match self.avg {
            Some(cip) => kernels::avg_pool2d_forward(&g, cip, x, y),
            None => {
                // The indices are kept in evaluation mode too: input gradients (stability
                // analysis) are taken of the evaluation-mode network.
                let a = grow("MaxPool2d::forward", &mut self.argmax, g.y_len())?;
                kernels::max_pool2d_forward(&g, x, y, Some(a))?;
                if self.relu {
                    kernels::relu_in_place(y);
                }
                Ok(())
            }
        }
    }
    fn backward(&mut self, b: Backward<'_>, ctx: &mut Ctx<'_>) -> Result<()> {
        let Backward { n, y, dy, dx, .. } = b;
        let Some(dx) = dx else { return Ok(()) };
        let g = self.geom(n)?;
        match self.avg {
            Some(cip) => kernels::avg_pool2d_backward(&g, cip, dy, dx, Accum::Replace),
            None => {
                let argmax = self.argmax.get(..g.y_len()).ok_or_else(|| {
                    crate::error::Error::invalid(
                        "MaxPool2d::backward",
                        "forward",
                        "no forward pass",
                    )
                })?;
                let (dy, _) = self.relu_masked(y, dy, ctx.ws)?;
                kernels::max_pool2d_backward(&g, argmax, dy, dx, Accum::Replace)
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct GlobalAvgPool {
    input: Shape3,
}

impl GlobalAvgPool {
    pub fn new(input: Shape3) -> Self {
        GlobalAvgPool { input }
    }
    fn shape(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.input[0], self.input[1], self.input[2])
    }
}

impl Layer for GlobalAvgPool {
    fn spec(&self) -> LayerSpec {
        LayerSpec::GlobalAvgPool
    }
    fn out_shape(&self) -> Shape3 {
        [self.input[0], 1, 1]
    }
    fn forward(
        &mut self,
        n: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        kernels::global_avg_pool_forward(self.shape(n), x, y)
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { n, dy, dx, .. } = b;
        match dx {
            Some(dx) => kernels::global_avg_pool_backward(self.shape(n), dy, dx, Accum::Replace),
            None => Ok(()),
        }
    }
}

/// Adaptive average pooling to a fixed output size.
#[derive(Debug)]
pub(crate) struct AdaptiveAvgPool {
    input: Shape3,
    out: [usize; 2],
}

impl AdaptiveAvgPool {
    pub fn new(spec: &LayerSpec, out: [usize; 2], input: Shape3) -> Result<Self> {
        if input[1] == 0 || input[2] == 0 || out[0] == 0 || out[1] == 0 {
            return Err(super::shape_error(
                spec,
                input,
                "the input plane and the output size must not be empty",
            ));
        }
        Ok(AdaptiveAvgPool { input, out })
    }
    fn shape(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.input[0], self.input[1], self.input[2])
    }
}

impl Layer for AdaptiveAvgPool {
    fn spec(&self) -> LayerSpec {
        LayerSpec::AdaptiveAvgPool2d { out: self.out }
    }
    fn out_shape(&self) -> Shape3 {
        [self.input[0], self.out[0], self.out[1]]
    }
    fn forward(
        &mut self,
        n: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        kernels::adaptive_pool::adaptive_avg_pool2d_forward(self.shape(n), self.out, x, y)
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { n, dy, dx, .. } = b;
        match dx {
            Some(dx) => kernels::adaptive_pool::adaptive_avg_pool2d_backward(
                self.shape(n),
                self.out,
                dy,
                dx,
                Accum::Replace,
            ),
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Flatten {
    input: Shape3,
}

impl Flatten {
    pub fn new(input: Shape3) -> Self {
        Flatten { input }
    }
}

impl Layer for Flatten {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Flatten
    }
    fn out_shape(&self) -> Shape3 {
        [numel(self.input), 1, 1]
    }
    fn forward(
        &mut self,
        _: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        crate::error::check_len("flatten", "y", y, x.len())?;
        y.copy_from_slice(x);
        Ok(())
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { dy, dx, .. } = b;
        if let Some(dx) = dx {
            crate::error::check_len("flatten", "dx", dx, dy.len())?;
            dx.copy_from_slice(dy);
        }
        Ok(())
    }
}
