//! `nn.LayerNorm([C, H, W])`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, ParamKind, grow, shape_error};
use crate::error::Result;
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::shape::{Shape3, numel};

fn grow_slice(s: &mut [f32], len: usize) -> Result<&mut [f32]> {
    crate::error::check_min_len("BatchNorm2d", "scratch", s, len)?;
    Ok(&mut s[..len])
}

#[derive(Debug)]
pub(crate) struct LayerNorm {
    eps: f32,
    shape: Shape3,
    save_mean: Vec<f32>,
    save_invstd: Vec<f32>,
}

impl LayerNorm {
    pub fn new(eps: f32, input: Shape3) -> Result<Self> {
        if eps.is_nan() || eps < 0.0 {
            return Err(shape_error(
                &LayerSpec::LayerNorm { eps },
                input,
                "eps must be non-negative",
            ));
        }
        Ok(LayerNorm {
            eps,
            shape: input,
            save_mean: Vec::new(),
            save_invstd: Vec::new(),
        })
    }
}

impl Layer for LayerNorm {
    fn spec(&self) -> LayerSpec {
        LayerSpec::LayerNorm { eps: self.eps }
    }
    fn out_shape(&self) -> Shape3 {
        self.shape
    }
    fn params(&self) -> Vec<ParamInfo> {
        // PyTorch's LayerNorm([C, H, W]) stores γ and β with the normalised shape; a flat input
        // [F, 1, 1] corresponds to LayerNorm(F).
        let shape = if self.shape[1] == 1 && self.shape[2] == 1 {
            vec![self.shape[0]]
        } else {
            self.shape.to_vec()
        };
        vec![
            ParamInfo {
                name: "weight",
                shape: shape.clone(),
                kind: ParamKind::Const(1.0),
            },
            ParamInfo {
                name: "bias",
                shape,
                kind: ParamKind::Const(0.0),
            },
        ]
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        let d = numel(self.shape);
        let (gamma, beta) = p.split_at(d);
        grow("LayerNorm::forward", &mut self.save_mean, n)?;
        grow("LayerNorm::forward", &mut self.save_invstd, n)?;
        let (mean, inv) = (&mut self.save_mean[..n], &mut self.save_invstd[..n]);
        kernels::layer_norm_forward(d, self.eps, x, Some(gamma), Some(beta), y, mean, inv)
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
        let d = numel(self.shape);
        let (dgamma, dbeta) = grad.split_at_mut(d);
        let dx = match dx {
            Some(dx) => dx,
            None => grow_slice(ctx.ws, x.len())?,
        };
        // The input gradient is overwritten; `accum` is for the parameter gradients.
        kernels::layer_norm_backward_split(
            d,
            x,
            Some(&p[..d]),
            &self.save_mean[..n],
            &self.save_invstd[..n],
            dy,
            (dx, Accum::Replace),
            Some(dgamma),
            Some(dbeta),
            accum,
        )
    }
    fn scratch_len(&self, n: usize) -> usize {
        n * numel(self.shape)
    }
}
