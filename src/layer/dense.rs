//! `nn.Linear`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, ParamKind, shape_error};
use crate::error::Result;
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::kernels::dense::DenseGeom;
use crate::shape::Shape3;

#[derive(Debug)]
pub(crate) struct Dense {
    inp: usize,
    out: usize,
    bias: bool,
}

impl Dense {
    pub fn new(out: usize, bias: bool, input: Shape3) -> Result<Self> {
        let spec = LayerSpec::Dense { out, bias };
        if input[1] != 1 || input[2] != 1 {
            return Err(shape_error(
                &spec,
                input,
                "dense needs a flat input; add flatten or gap before it",
            ));
        }
        DenseGeom::new(1, input[0], out).map_err(|e| shape_error(&spec, input, e))?;
        Ok(Dense {
            inp: input[0],
            out,
            bias,
        })
    }
}

impl Layer for Dense {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Dense {
            out: self.out,
            bias: self.bias,
        }
    }
    fn out_shape(&self) -> Shape3 {
        [self.out, 1, 1]
    }
    fn params(&self) -> Vec<ParamInfo> {
        let mut v = vec![ParamInfo {
            name: "weight",
            shape: vec![self.out, self.inp],
            kind: ParamKind::Weight {
                fan_in: self.inp,
                fan_out: self.out,
            },
        }];
        if self.bias {
            v.push(ParamInfo {
                name: "bias",
                shape: vec![self.out],
                kind: ParamKind::Bias { fan_in: self.inp },
            });
        }
        v
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        let g = DenseGeom::new(n, self.inp, self.out)?;
        let (w, b) = p.split_at(self.out * self.inp);
        kernels::dense_forward(&g, x, w, self.bias.then_some(b), y)
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
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
        let g = DenseGeom::new(n, self.inp, self.out)?;
        let (dw, db) = grad.split_at_mut(self.out * self.inp);
        kernels::dense_backward_weights(&g, x, dy, dw, self.bias.then_some(db), accum)?;
        if let Some(dx) = dx {
            kernels::dense_backward_data(&g, &p[..self.out * self.inp], dy, dx, Accum::Replace)?;
        }
        Ok(())
    }
}
