//! A residual block: torchvision's `BasicBlock`.
//!
//! ```text
//! y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
//! ```
//!
//! `conv1` is 3x3 with the block's stride, `conv2` 3x3 with stride 1 (both padded by 1, no bias);
//! the shortcut is the identity when the block keeps the shape, else a 1x1 convolution with the
//! stride followed by batch norm (`downsample`). The block is one layer of a
//! [`crate::Sequential`], built from the same convolution and batch-norm layers as the rest, with
//! caches that grow once for the largest batch (no allocation in a steady training step).

use super::batch_norm::BatchNorm2d;
use super::conv2d::Conv2d;
use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer, ParamInfo, grow, shape_error};
use crate::error::{Error, Result};
use crate::kernels;
use crate::kernels::accum::Accum;
use crate::kernels::activation::Activation;
use crate::shape::Shape3;
use crate::shape::Tensor;
use crate::shape::numel;

#[derive(Debug)]
pub(crate) struct Residual {
    out: usize,
    stride: usize,
    /// The batch norms' `eps` and `momentum` (as `bn`'s).
    eps: f32,
    momentum: Option<f32>,
    out_shape: Shape3,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    /// The projection shortcut (1x1 convolution, batch norm), when the shape changes.
    down: Option<(Conv2d, BatchNorm2d)>,
    /// Parameter lengths of conv1, bn1, conv2, bn2 and the projection's two (0 without one).
    lens: [usize; 6],
    /// Forward caches: conv1's output, relu(bn1(·)), conv2's output; the projection's
    /// convolution and batch-norm outputs.
    t1: Vec<f32>,
    r1: Vec<f32>,
    t2: Vec<f32>,
    tp: Vec<f32>,
    sp: Vec<f32>,
    /// Backward buffers: the gradient at the sum, two for the branch, the shortcut's dx.
    ds: Vec<f32>,
    da: Vec<f32>,
    db: Vec<f32>,
    dxs: Vec<f32>,
}

/// State-dict names of the block's tensors, in parameter order (torchvision's `BasicBlock`).
const PARAM_NAMES: [&str; 9] = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "conv2.weight",
    "bn2.weight",
    "bn2.bias",
    "downsample.0.weight",
    "downsample.1.weight",
    "downsample.1.bias",
];
const BUFFER_NAMES: [[&str; 3]; 3] = [
    [
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ],
    [
        "bn2.running_mean",
        "bn2.running_var",
        "bn2.num_batches_tracked",
    ],
    [
        "downsample.1.running_mean",
        "downsample.1.running_var",
        "downsample.1.num_batches_tracked",
    ],
];

fn conv(out: usize, k: usize, stride: usize) -> LayerSpec {
    LayerSpec::Conv2d {
        out,
        kernel: [k, k],
        stride: [stride, stride],
        padding: [k / 2, k / 2],
        dilation: [1, 1],
        groups: 1,
        bias: false,
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

impl Residual {
    pub fn new(
        out: usize,
        stride: usize,
        eps: f32,
        momentum: Option<f32>,
        input: Shape3,
    ) -> Result<Self> {
        let spec = LayerSpec::Residual {
            out,
            stride,
            eps,
            momentum,
        };
        if out == 0 || stride == 0 {
            return Err(shape_error(
                &spec,
                input,
                "channels and stride must be at least 1",
            ));
        }
        let err = |e: Error| shape_error(&spec, input, e);
        let conv1 = Conv2d::new(&conv(out, 3, stride), input).map_err(err)?;
        let mid = conv1.out_shape();
        let conv2 = Conv2d::new(&conv(out, 3, 1), mid).map_err(err)?;
        let down = if stride != 1 || input[0] != out {
            let c = Conv2d::new(&conv(out, 1, stride), input).map_err(err)?;
            let bn = BatchNorm2d::new(eps, momentum, c.out_shape())?;
            Some((c, bn))
        } else {
            None
        };
        let plen = |p: Vec<ParamInfo>| p.iter().map(ParamInfo::len).sum::<usize>();
        let lens = [
            plen(conv1.params()),
            2 * out,
            plen(conv2.params()),
            2 * out,
            down.as_ref().map_or(0, |(c, _)| plen(c.params())),
            down.as_ref().map_or(0, |_| 2 * out),
        ];
        Ok(Residual {
            lens,
            out,
            stride,
            eps,
            momentum,
            out_shape: mid,
            bn1: BatchNorm2d::new(eps, momentum, mid)?,
            bn2: BatchNorm2d::new(eps, momentum, mid)?,
            conv1,
            conv2,
            down,
            t1: Vec::new(),
            r1: Vec::new(),
            t2: Vec::new(),
            tp: Vec::new(),
            sp: Vec::new(),
            ds: Vec::new(),
            da: Vec::new(),
            db: Vec::new(),
            dxs: Vec::new(),
        })
    }

    fn bns_mut(&mut self) -> Vec<&mut BatchNorm2d> {
        let mut v = vec![&mut self.bn1, &mut self.bn2];
        if let Some((_, bn)) = self.down.as_mut() {
            v.push(bn);
        }
        v
    }
}

/// Splits `s` into consecutive pieces of the given lengths.
fn split<T>(mut s: &[T], lens: [usize; 6]) -> [&[T]; 6] {
    lens.map(|l| {
        let (a, b) = s.split_at(l);
        s = b;
        a
    })
}

fn split_mut<T>(mut s: &mut [T], lens: [usize; 6]) -> [&mut [T]; 6] {
    lens.map(|l| {
        let (a, b) = std::mem::take(&mut s).split_at_mut(l);
        s = b;
        a
    })
}

impl Layer for Residual {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Residual {
            out: self.out,
            stride: self.stride,
            eps: self.eps,
            momentum: self.momentum,
        }
    }
    fn out_shape(&self) -> Shape3 {
        self.out_shape
    }
    fn params(&self) -> Vec<ParamInfo> {
        let mut subs = vec![
            self.conv1.params(),
            self.bn1.params(),
            self.conv2.params(),
            self.bn2.params(),
        ];
        if let Some((c, bn)) = &self.down {
            subs.push(c.params());
            subs.push(bn.params());
        }
        subs.into_iter()
            .flatten()
            .zip(PARAM_NAMES)
            .map(|(p, name)| ParamInfo { name, ..p })
            .collect()
    }
    fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        let mut bns = vec![&self.bn1, &self.bn2];
        if let Some((_, bn)) = &self.down {
            bns.push(bn);
        }
        bns.into_iter()
            .zip(BUFFER_NAMES)
            .flat_map(|(bn, names)| {
                bn.buffers()
                    .into_iter()
                    .zip(names)
                    .map(|((_, t), name)| (name, t))
            })
            .collect()
    }
    fn set_buffer(&mut self, name: &str, t: &Tensor) -> Result<()> {
        for (bn, names) in self.bns_mut().into_iter().zip(BUFFER_NAMES) {
            for (inner, full) in ["running_mean", "running_var", "num_batches_tracked"]
                .into_iter()
                .zip(names)
            {
                if name == full {
                    return bn.set_buffer(inner, t);
                }
            }
        }
        Err(Error::invalid(
            "Layer::set_buffer",
            "name",
            format!("a residual block has no buffer {name}"),
        ))
    }
    fn scratch_len(&self, n: usize) -> usize {
        let mut s = [
            self.conv1.scratch_len(n),
            self.bn1.scratch_len(n),
            self.conv2.scratch_len(n),
            self.bn2.scratch_len(n),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if let Some((c, bn)) = &self.down {
            s = s.max(c.scratch_len(n)).max(bn.scratch_len(n));
        }
        s
    }
    fn forward(
        &mut self,
        n: usize,
        p: &[f32],
        x: &[f32],
        y: &mut [f32],
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        const OP: &str = "Residual::forward";
        let len = n * numel(self.out_shape);
        let ps = split(p, self.lens);
        let t1 = grow(OP, &mut self.t1, len)?;
        self.conv1.forward(n, ps[0], x, t1, ctx)?;
        let r1 = grow(OP, &mut self.r1, len)?;
        self.bn1.forward(n, ps[1], t1, r1, ctx)?;
        kernels::relu_in_place(r1);
        let t2 = grow(OP, &mut self.t2, len)?;
        self.conv2.forward(n, ps[2], r1, t2, ctx)?;
        self.bn2.forward(n, ps[3], t2, y, ctx)?;
        match self.down.as_mut() {
            Some((c, bn)) => {
                let tp = grow(OP, &mut self.tp, len)?;
                c.forward(n, ps[4], x, tp, ctx)?;
                let sp = grow(OP, &mut self.sp, len)?;
                bn.forward(n, ps[5], tp, sp, ctx)?;
                add_into(y, sp);
            }
            None => add_into(y, x),
        }
        kernels::relu_in_place(y);
        Ok(())
    }
    fn backward(&mut self, b: Backward<'_>, ctx: &mut Ctx<'_>) -> Result<()> {
        const OP: &str = "Residual::backward";
        let Backward {
            n,
            params,
            grads,
            x,
            y,
            dy,
            mut dx,
            accum,
        } = b;
        let len = n * numel(self.out_shape);
        let ps = split(params, self.lens);
        let [g0, g1, g2, g3, g4, g5] = split_mut(grads, self.lens);
        let relu = Activation::Relu;
        // The gradient at the sum: dy where the output is positive.
        let ds = grow(OP, &mut self.ds, len)?;
        kernels::activation_backward(relu, y, y, dy, ds, Accum::Replace)?;
        let (da, db) = (grow(OP, &mut self.da, len)?, grow(OP, &mut self.db, len)?);
        let (t1, r1, t2) = (&self.t1[..len], &self.r1[..len], &self.t2[..len]);
        // A sub-layer's arguments (none of them reads its output).
        macro_rules! sub {
            ($p:expr, $g:expr, $x:expr, $dy:expr, $dx:expr) => {
                Backward {
                    n,
                    params: $p,
                    grads: $g,
                    x: $x,
                    y: &[],
                    dy: $dy,
                    dx: $dx,
                    accum,
                }
            };
        }
        // The branch: bn2, conv2, the inner ReLU (mask of its output), bn1, conv1.
        self.bn2.backward(sub!(ps[3], g3, t2, ds, Some(da)), ctx)?;
        self.conv2
            .backward(sub!(ps[2], g2, r1, da, Some(db)), ctx)?;
        kernels::activation_backward(relu, r1, r1, db, da, Accum::Replace)?;
        self.bn1.backward(sub!(ps[1], g1, t1, da, Some(db)), ctx)?;
        self.conv1
            .backward(sub!(ps[0], g0, x, db, dx.as_deref_mut()), ctx)?;
        // The shortcut.
        match self.down.as_mut() {
            Some((c, bn)) => {
                let tp = &self.tp[..len];
                bn.backward(sub!(ps[5], g5, tp, ds, Some(da)), ctx)?;
                match dx {
                    Some(dx) => {
                        let dxs = grow(OP, &mut self.dxs, dx.len())?;
                        c.backward(sub!(ps[4], g4, x, da, Some(dxs)), ctx)?;
                        add_into(dx, dxs);
                    }
                    None => c.backward(sub!(ps[4], g4, x, da, None), ctx)?,
                }
            }
            None => {
                if let Some(dx) = dx {
                    add_into(dx, ds);
                }
            }
        }
        Ok(())
    }
}
