//! `nn.MaxPool2d`, `nn.AvgPool2d`, global average pooling and `nn.Flatten`.

use super::{Backward, Ctx, Layer, LayerSpec, Shape3, grow, numel, shape_error};
use crate::error::Result;
use crate::kernels::{self, Accum};
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
    /// Max pooling that also does the ReLU before it: `maxpool(relu(x)) = relu(maxpool(x))`,
    /// and the ReLU's backward mask is `maxpool output > 0` at the pooled positions.
    relu: bool,
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
            relu: false,
        })
    }

    fn geom(&self, n: usize) -> Result<Pool2dGeom> {
        Pool2dGeom::new(
            Shape4::new(n, self.input[0], self.input[1], self.input[2]),
            self.params,
        )
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
        if self.relu { n * numel(self.out) } else { 0 }
    }
    fn absorb_relu(&mut self, on: bool) -> bool {
        self.relu = on && self.avg.is_none();
        self.avg.is_none()
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
                    crate::Error::invalid("MaxPool2d::backward", "forward", "no forward pass")
                })?;
                let dy = if self.relu {
                    // The ReLU's mask, on the pooled values: zero where the window's maximum
                    // is not positive (ReLU's gradient at 0 is 0).
                    let masked = crate::error::check_min_len(
                        "MaxPool2d::backward",
                        "scratch",
                        ctx.ws,
                        dy.len(),
                    )
                    .map(|_| &mut ctx.ws[..dy.len()])?;
                    kernels::activation_backward(
                        kernels::Activation::Relu,
                        y,
                        y,
                        dy,
                        masked,
                        Accum::Replace,
                    )?;
                    &*masked
                } else {
                    dy
                };
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
