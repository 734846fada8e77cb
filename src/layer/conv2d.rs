//! `nn.Conv2d`.

use super::{Backward, Ctx, Layer, LayerSpec, ParamInfo, ParamKind, Shape3, shape_error};
use crate::error::Result;
use crate::kernels::{self, Accum};
use crate::shape::{Conv2dGeom, Conv2dParams, Shape4};

#[derive(Debug)]
pub(crate) struct Conv2d {
    spec: LayerSpec,
    input: Shape3,
    c_out: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    bias: bool,
    out: Shape3,
}

impl Conv2d {
    pub fn new(spec: &LayerSpec, input: Shape3) -> Result<Self> {
        let LayerSpec::Conv2d {
            out,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias,
        } = *spec
        else {
            unreachable!("Conv2d::new with {spec:?}")
        };
        let params = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let g = Conv2dGeom::new(
            Shape4::new(1, input[0], input[1], input[2]),
            out,
            kernel,
            params,
        )
        .map_err(|e| shape_error(spec, input, e))?;
        Ok(Conv2d {
            spec: spec.clone(),
            input,
            c_out: out,
            kernel,
            params,
            bias,
            out: [out, g.out_h(), g.out_w()],
        })
    }

    fn geom(&self, n: usize) -> Result<Conv2dGeom> {
        let [c, h, w] = self.input;
        Conv2dGeom::new(
            Shape4::new(n, c, h, w),
            self.c_out,
            self.kernel,
            self.params,
        )
    }

    fn w_len(&self) -> usize {
        self.c_out * self.input[0] / self.params.groups * self.kernel[0] * self.kernel[1]
    }
}

impl Layer for Conv2d {
    fn spec(&self) -> LayerSpec {
        self.spec.clone()
    }
    fn out_shape(&self) -> Shape3 {
        self.out
    }
    fn params(&self) -> Vec<ParamInfo> {
        let (ci_g, kk) = (
            self.input[0] / self.params.groups,
            self.kernel[0] * self.kernel[1],
        );
        let fan_in = ci_g * kk;
        let mut v = vec![ParamInfo {
            name: "weight",
            shape: vec![self.c_out, ci_g, self.kernel[0], self.kernel[1]],
            kind: ParamKind::Weight {
                fan_in,
                fan_out: self.c_out * kk,
            },
        }];
        if self.bias {
            v.push(ParamInfo {
                name: "bias",
                shape: vec![self.c_out],
                kind: ParamKind::Bias { fan_in },
            });
        }
        v
    }
    fn scratch_len(&self, n: usize) -> usize {
        self.geom(n).map_or(0, |g| {
            kernels::conv2d_forward_scratch_len(&g)
                .max(kernels::conv2d_backward_data_scratch_len(&g))
                .max(kernels::conv2d_backward_weights_scratch_len(&g))
        })
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let g = self.geom(n)?;
        let (w, b) = p.split_at(self.w_len());
        kernels::conv2d_forward(&g, x, w, self.bias.then_some(b), y, ctx.ws)
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
        let g = self.geom(n)?;
        let (dw, db) = grad.split_at_mut(self.w_len());
        kernels::conv2d_backward_weights(&g, x, dy, dw, self.bias.then_some(db), accum, ctx.ws)?;
        if let Some(dx) = dx {
            kernels::conv2d_backward_data(&g, &p[..self.w_len()], dy, dx, Accum::Replace, ctx.ws)?;
        }
        Ok(())
    }
}
