//! `nn.ConvTranspose2d`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, ParamKind, shape_error};
use crate::error::Result;
use crate::kernels::conv::transpose::{
    conv_transpose2d_backward_data, conv_transpose2d_backward_data_scratch_len,
    conv_transpose2d_backward_weights, conv_transpose2d_backward_weights_scratch_len,
    conv_transpose2d_forward, conv_transpose2d_forward_scratch_len,
};
use crate::shape::{Conv2dParams, ConvTranspose2dGeom, Shape3, Shape4};

#[derive(Debug)]
pub(crate) struct ConvTranspose2d {
    spec: LayerSpec,
    input: Shape3,
    c_out: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    output_padding: [usize; 2],
    bias: bool,
    out: Shape3,
}

impl ConvTranspose2d {
    pub fn new(spec: &LayerSpec, input: Shape3) -> Result<Self> {
        let LayerSpec::ConvTranspose2d {
            out,
            kernel,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            bias,
        } = *spec
        else {
            unreachable!("ConvTranspose2d::new with {spec:?}")
        };
        let params = Conv2dParams {
            stride,
            padding,
            dilation,
            groups,
        };
        let g = ConvTranspose2dGeom::new(
            Shape4::new(1, input[0], input[1], input[2]),
            out,
            kernel,
            params,
            output_padding,
        )
        .map_err(|e| shape_error(spec, input, e))?;
        let y = g.y_shape();
        Ok(ConvTranspose2d {
            spec: spec.clone(),
            input,
            c_out: out,
            kernel,
            params,
            output_padding,
            bias,
            out: [out, y.h, y.w],
        })
    }

    fn geom(&self, n: usize) -> Result<ConvTranspose2dGeom> {
        let [c, h, w] = self.input;
        ConvTranspose2dGeom::new(
            Shape4::new(n, c, h, w),
            self.c_out,
            self.kernel,
            self.params,
            self.output_padding,
        )
    }

    fn w_len(&self) -> usize {
        self.input[0] * self.c_out / self.params.groups * self.kernel[0] * self.kernel[1]
    }
}

impl Layer for ConvTranspose2d {
    fn spec(&self) -> LayerSpec {
        self.spec.clone()
    }
    fn out_shape(&self) -> Shape3 {
        self.out
    }
    fn params(&self) -> Vec<ParamInfo> {
        // PyTorch's fans for the weight `[c_in, c_out/groups, k_h, k_w]`: dimension 1 feeds
        // one output, dimension 0 is fed by one input.
        let kk = self.kernel[0] * self.kernel[1];
        let fan_in = self.c_out / self.params.groups * kk;
        let mut v = vec![ParamInfo {
            name: "weight",
            shape: vec![
                self.input[0],
                self.c_out / self.params.groups,
                self.kernel[0],
                self.kernel[1],
            ],
            kind: ParamKind::Weight {
                fan_in,
                fan_out: self.input[0] * kk,
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
            conv_transpose2d_forward_scratch_len(&g)
                .max(conv_transpose2d_backward_data_scratch_len(&g))
                .max(conv_transpose2d_backward_weights_scratch_len(&g))
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
        conv_transpose2d_forward(&g, x, w, self.bias.then_some(b), y, ctx.ws)
    }
    fn backward(&mut self, b: Backward<'_>, ctx: &mut Ctx<'_>) -> Result<()> {
        let Backward {
            n,
            params,
            grads,
            x,
            dy,
            dx,
            accum,
            ..
        } = b;
        let g = self.geom(n)?;
        let (dw, db) = grads.split_at_mut(self.w_len());
        let db = self.bias.then_some(db);
        conv_transpose2d_backward_weights(&g, x, dy, dw, db, accum, ctx.ws)?;
        if let Some(dx) = dx {
            conv_transpose2d_backward_data(&g, &params[..self.w_len()], dy, dx, ctx.ws)?;
        }
        Ok(())
    }
}
