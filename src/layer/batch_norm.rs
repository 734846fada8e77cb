//! `nn.BatchNorm2d`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, ParamKind, shape_error};
use crate::error::{Error, Result};
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::kernels::batch_norm::{self, Input, RunningStats};
use crate::shape::Shape4;
use crate::shape::{Shape3, Tensor, TensorData};

#[derive(Debug)]
pub(crate) struct BatchNorm2d {
    eps: f32,
    momentum: Option<f32>,
    shape: Shape3,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    num_batches_tracked: i64,
    save_mean: Vec<f32>,
    save_invstd: Vec<f32>,
    /// The output map `y = x·scale + shift` of the last forward pass, per channel (for a max-pool
    /// that reads the normalised values plane by plane, see [`BatchNorm2d::forward_stats`]).
    scale: Vec<f32>,
    shift: Vec<f32>,
    trained: bool,
    /// The channel groups of the last forward pass's input (empty: NCHW), see
    /// [`kernels::batch_norm::Input`].
    groups: Vec<usize>,
}

impl BatchNorm2d {
    pub fn new(eps: f32, momentum: Option<f32>, input: Shape3) -> Result<Self> {
        let spec = LayerSpec::BatchNorm2d { eps, momentum };
        if eps.is_nan() || eps < 0.0 {
            return Err(shape_error(&spec, input, "eps must be non-negative"));
        }
        if let Some(m) = momentum
            && !(0.0..=1.0).contains(&m)
        {
            return Err(shape_error(&spec, input, "momentum must be in [0, 1]"));
        }
        let c = input[0];
        Ok(BatchNorm2d {
            eps,
            momentum,
            shape: input,
            running_mean: vec![0.0; c],
            running_var: vec![1.0; c],
            num_batches_tracked: 0,
            save_mean: vec![0.0; c],
            save_invstd: vec![0.0; c],
            scale: vec![0.0; c],
            shift: vec![0.0; c],
            trained: false,
            groups: Vec::new(),
        })
    }
    fn shape4(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.shape[0], self.shape[1], self.shape[2])
    }

    /// The running-statistics update of a training-mode forward pass (PyTorch's
    /// `num_batches_tracked` and momentum), and the buffers the statistics go to.
    fn running(&mut self) -> (RunningStats<'_>, &mut [f32], &mut [f32]) {
        self.num_batches_tracked += 1;
        let factor = self
            .momentum
            .unwrap_or(1.0 / self.num_batches_tracked as f32);
        let r = RunningStats {
            mean: &mut self.running_mean,
            var: &mut self.running_var,
            factor,
        };
        (r, &mut self.save_mean, &mut self.save_invstd)
    }

    /// The forward pass without its output: the statistics (and running statistics) of
    /// [`Layer::forward`] and the per-channel output map, which [`BatchNorm2d::affine`] returns
    /// (a max-pool after this layer applies it to each plane as it reads it).
    pub(crate) fn forward_stats(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        training: bool,
    ) -> Result<()> {
        let (c, shape, eps) = (self.shape[0], self.shape4(n), self.eps);
        self.trained = training;
        self.groups.clear();
        if training {
            let (running, mean, inv) = self.running();
            let x = Input::dense(x);
            kernels::batch_norm_train_stats(shape, eps, x, mean, inv, Some(running))?;
        } else {
            const OP: &str = "batch_norm_forward_eval";
            crate::error::check_len(OP, "x", x, shape.len(OP)?)?;
            kernels::batch_norm_eval_stats(
                shape,
                eps,
                &self.running_mean,
                &self.running_var,
                &mut self.save_mean,
                &mut self.save_invstd,
            )?;
        }
        let (gamma, beta) = p.split_at(c);
        kernels::batch_norm_affine(
            &self.save_mean,
            &self.save_invstd,
            Some(gamma),
            Some(beta),
            &mut self.scale,
            &mut self.shift,
        );
        Ok(())
    }

    /// [`Layer::forward`] of an input in either channel order (its groups are kept for the
    /// backward pass).
    pub(crate) fn forward_in(
        &mut self,
        n: usize,
        p: &[f32],
        x: Input<'_>,
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let c = self.shape[0];
        let (gamma, beta) = p.split_at(c);
        self.trained = ctx.training;
        self.groups.clear();
        self.groups.extend_from_slice(x.groups);
        let (shape, eps) = (self.shape4(n), self.eps);
        if ctx.training {
            let (running, mean, inv) = self.running();
            let (g, b) = (Some(gamma), Some(beta));
            batch_norm::forward_train_in(shape, eps, x, g, b, y, mean, inv, Some(running))
        } else {
            batch_norm::forward_eval_in(
                shape,
                eps,
                x,
                Some(gamma),
                Some(beta),
                (&self.running_mean, &self.running_var),
                y,
                &mut self.save_mean,
                &mut self.save_invstd,
            )
        }
    }

    /// `(scale, shift)` per channel of evaluation mode (`y = x·scale + shift`, from the running
    /// statistics and the parameters `p`), as [`BatchNorm2d::forward_stats`] computes them: for
    /// folding into the convolution before this layer.
    pub(crate) fn eval_affine(&self, p: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = self.shape[0];
        crate::error::check_len("BatchNorm2d::eval_affine", "params", p, 2 * c)?;
        let (mut mean, mut invstd) = (vec![0.0; c], vec![0.0; c]);
        kernels::batch_norm_eval_stats(
            self.shape4(1),
            self.eps,
            &self.running_mean,
            &self.running_var,
            &mut mean,
            &mut invstd,
        )?;
        let (gamma, beta) = p.split_at(c);
        let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
        kernels::batch_norm_affine(
            &mean,
            &invstd,
            Some(gamma),
            Some(beta),
            &mut scale,
            &mut shift,
        );
        Ok((scale, shift))
    }

    /// `(scale, shift)` per channel of the last [`BatchNorm2d::forward_stats`].
    pub(crate) fn affine(&self) -> (&[f32], &[f32]) {
        (&self.scale, &self.shift)
    }

    /// Elements of the sums of [`BatchNorm2d::backward_sums`] for a batch of `n`.
    pub(crate) fn sums_len(&self, n: usize) -> usize {
        kernels::batch_norm_backward_scratch_len(self.shape4(n))
    }

    /// The first pass of [`BatchNorm2d::backward_from`]: `dγ`, `dβ` (per `accum`) and the map that
    /// makes its input gradient, for a consumer that makes that gradient itself (plane by plane,
    /// as [`kernels::planes::Planes::BnGrad`]). `sums` holds [`BatchNorm2d::sums_len`] elements, `ws` a
    /// plane per parallel group.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_sums<'a>(
        &'a self,
        n: usize,
        p: &'a [f32],
        grad: &mut [f32],
        x: &[f32],
        dy: kernels::planes::Planes<'_>,
        accum: Accum,
        sums: &'a mut [f32],
        ws: &mut [f32],
    ) -> Result<kernels::plane_ops::BnDx<'a>> {
        let c = self.shape[0];
        let (dgamma, dbeta) = grad.split_at_mut(c);
        kernels::batch_norm::batch_norm_backward_sums(
            self.shape4(n),
            self.trained,
            Input {
                x,
                groups: &self.groups,
            },
            Some(&p[..c]),
            &self.save_mean,
            &self.save_invstd,
            dy,
            Some(dgamma),
            Some(dbeta),
            accum,
            sums,
            ws,
        )
    }

    /// [`Layer::backward`] of a `dy` read through [`kernels::planes::Planes`] (the gradient of the
    /// max-pool after this layer), `dx` left out when nobody needs it; `ws` as
    /// [`kernels::batch_norm_backward_from`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_from(
        &mut self,
        n: usize,
        p: &[f32],
        grad: &mut [f32],
        x: &[f32],
        dy: kernels::planes::Planes<'_>,
        dx: Option<&mut [f32]>,
        accum: Accum,
        ws: &mut [f32],
    ) -> Result<()> {
        let c = self.shape[0];
        let (dgamma, dbeta) = grad.split_at_mut(c);
        kernels::batch_norm_backward_from(
            self.shape4(n),
            self.trained,
            Input {
                x,
                groups: &self.groups,
            },
            Some(&p[..c]),
            &self.save_mean,
            &self.save_invstd,
            dy,
            dx.map(|dx| (dx, Accum::Replace)),
            Some(dgamma),
            Some(dbeta),
            accum,
            ws,
        )
    }
}

fn f32_buffer(layer: &str, name: &str, t: &Tensor, dst: &mut [f32]) -> Result<()> {
    match &t.data {
        TensorData::F32(v) if v.len() == dst.len() && t.shape == [dst.len()] => {
            dst.copy_from_slice(v);
            Ok(())
        }
        _ => Err(Error::invalid(
            "Layer::set_buffer",
            "tensor",
            format!(
                "{layer}.{name} must be f32 of shape [{}], got shape {:?}",
                dst.len(),
                t.shape
            ),
        )),
    }
}

impl Layer for BatchNorm2d {
    fn spec(&self) -> LayerSpec {
        LayerSpec::BatchNorm2d {
            eps: self.eps,
            momentum: self.momentum,
        }
    }
    fn out_shape(&self) -> Shape3 {
        self.shape
    }
    fn params(&self) -> Vec<ParamInfo> {
        let c = self.shape[0];
        vec![
            ParamInfo {
                name: "weight",
                shape: vec![c],
                kind: ParamKind::Const(1.0),
            },
            ParamInfo {
                name: "bias",
                shape: vec![c],
                kind: ParamKind::Const(0.0),
            },
        ]
    }
    fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        let c = self.shape[0];
        vec![
            (
                "running_mean",
                Tensor {
                    shape: vec![c],
                    data: TensorData::F32(self.running_mean.clone()),
                },
            ),
            (
                "running_var",
                Tensor {
                    shape: vec![c],
                    data: TensorData::F32(self.running_var.clone()),
                },
            ),
            (
                "num_batches_tracked",
                Tensor {
                    shape: vec![],
                    data: TensorData::I64(vec![self.num_batches_tracked]),
                },
            ),
        ]
    }
    fn set_buffer(&mut self, name: &str, t: &Tensor) -> Result<()> {
        match name {
            "running_mean" => f32_buffer("BatchNorm2d", name, t, &mut self.running_mean),
            "running_var" => f32_buffer("BatchNorm2d", name, t, &mut self.running_var),
            "num_batches_tracked" => match &t.data {
                TensorData::I64(v) if v.len() == 1 && t.shape.is_empty() => {
                    self.num_batches_tracked = v[0];
                    Ok(())
                }
                _ => Err(Error::invalid(
                    "Layer::set_buffer",
                    "tensor",
                    "num_batches_tracked must be an i64 scalar",
                )),
            },
            _ => Err(Error::invalid(
                "Layer::set_buffer",
                "name",
                format!("BatchNorm2d has no buffer {name}"),
            )),
        }
    }
    fn scratch_len(&self, n: usize) -> usize {
        kernels::batch_norm_backward_scratch_len(self.shape4(n))
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        self.forward_in(n, p, Input::dense(x), y, ctx)
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
        // Without a caller buffer for dx (first layer) the input gradient is not computed.
        let src = kernels::planes::Planes::Dense(dy);
        self.backward_from(n, p, grad, x, src, dx, accum, ctx.ws)
    }
}
