//! `nn.Conv2d`.

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, ParamKind, shape_error};
use crate::error::Result;
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::shape::Shape3;
use crate::shape::{Conv2dGeom, Conv2dParams, Pool2dGeom, Shape4};

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

    /// Whether the max-pool after this convolution can run it image by image (one group; see
    /// [`crate::Sequential::set_fusion`]).
    pub(crate) fn fits_pool(&self) -> bool {
        self.params.groups == 1
    }

    /// Scratch of [`Conv2d::forward_pooled`] and [`Conv2d::backward_from`].
    pub(crate) fn pooled_scratch_len(&self, n: usize) -> usize {
        self.geom(n)
            .map_or(0, |g| kernels::conv::conv2d_pooled_scratch_len(&g))
    }

    /// The forward pass into max-pool `pool` of its output: `y` and `argmax` are the pool's, the
    /// convolution's output is never stored.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_pooled(
        &self,
        n: usize,
        p: &[f32],
        x: &[f32],
        pool: &Pool2dGeom,
        y: &mut [f32],
        argmax: &mut [u32],
        ws: &mut [f32],
    ) -> Result<()> {
        let g = self.geom(n)?;
        let (w, b) = p.split_at(self.w_len());
        let b = self.bias.then_some(b);
        kernels::conv::conv2d_forward_pooled(&g, x, w, b, pool, y, argmax, ws)
    }

    /// The backward pass with the output gradient read through `dy` (a max-pool's gradient
    /// spread image by image when it is not stored).
    /// The weights and bias of evaluation mode with the batch norm `y·scale + shift` after
    /// this layer folded in: `w'[o] = w[o]·scale[o]`, `b'[o] = b[o]·scale[o] + shift[o]`
    /// (`shift[o]` without a bias). Without a batch norm, a copy.
    pub(crate) fn fold(
        &self,
        p: &[f32],
        bn: Option<(&[f32], &[f32])>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let wl = self.w_len();
        crate::error::check_len(
            "Conv2d::fold",
            "params",
            p,
            wl + if self.bias { self.c_out } else { 0 },
        )?;
        let (w, b) = p.split_at(wl);
        let b = self.bias.then_some(b);
        let Some((scale, shift)) = bn else {
            return Ok((w.to_vec(), b.map(<[f32]>::to_vec)));
        };
        let per = wl / self.c_out;
        let mut fw = w.to_vec();
        for (row, s) in fw.chunks_exact_mut(per).zip(scale) {
            row.iter_mut().for_each(|v| *v *= s);
        }
        let fb = (0..self.c_out)
            .map(|o| b.map_or(shift[o], |b| b[o] * scale[o] + shift[o]))
            .collect();
        Ok((fw, Some(fb)))
    }

    /// `w` packed for this layer's direct forward path (`None` where another path runs).
    pub(crate) fn prepack(&self, w: &[f32]) -> Option<kernels::conv::Prepacked> {
        kernels::conv::conv2d_prepack(&self.geom(1).ok()?, w)
    }

    /// The forward pass with weights `w` and bias `b` (folded), packed as `pre`, through `epi`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_fused(
        &self,
        n: usize,
        w: &[f32],
        b: Option<&[f32]>,
        pre: Option<&kernels::conv::Prepacked>,
        epi: kernels::conv::Epilogue<'_>,
        x: &[f32],
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let g = self.geom(n)?;
        kernels::conv::conv2d_forward_prepacked(&g, x, w, b, pre, epi, y, ws)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_from(
        &self,
        n: usize,
        p: &[f32],
        grad: &mut [f32],
        x: &[f32],
        dy: Planes<'_>,
        dx: Option<&mut [f32]>,
        accum: Accum,
        ws: &mut [f32],
    ) -> Result<()> {
        let g = self.geom(n)?;
        let (dw, db) = grad.split_at_mut(self.w_len());
        let (w, db) = (&p[..self.w_len()], self.bias.then_some(db));
        kernels::conv::conv2d_backward_from(&g, x, w, dy, dw, db, dx, accum, ws)
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
            params,
            grads,
            x,
            dy,
            dx,
            accum,
            ..
        } = b;
        let dy = Planes::Dense(dy);
        self.backward_from(n, params, grads, x, dy, dx, accum, ctx.ws)
    }
}
