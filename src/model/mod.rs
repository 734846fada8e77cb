//! [`Sequential`]: a stack of layers with its parameters, gradients, activations and scratch.

mod persist;

use crate::error::{Error, Result, check_len};
use crate::init::{self, Init};
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::layer::batch_norm::BatchNorm2d;
use crate::layer::conv2d::Conv2d;
use crate::layer::pool::Pool;
use crate::layer::spec::LayerSpec;
use crate::layer::{self, Backward, Ctx, Layer, ParamInfo};
use crate::rng::{Rng, mix64};
use crate::shape::{Shape3, Tensor, TensorData, numel};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

/// A feed-forward network: layers applied in order, as `torch.nn.Sequential`.
///
/// All parameters live in one flat buffer ([`Sequential::params`]) and their gradients in another
/// ([`Sequential::grads`]), in layer order and, within a layer, in PyTorch's `state_dict` order
/// (`weight` then `bias`). Activations, caches and scratch are kept between calls and only grow:
/// after the first step with the largest batch, forward and backward allocate nothing.
///
/// # Example
/// ```
/// use cnnkit::{LayerSpec, Sequential};
/// let specs = LayerSpec::parse_list("conv(8,3,p=1),relu,maxpool(2),flatten,dense(10)")?;
/// let mut model = Sequential::new([1, 8, 8], &specs, 42)?;
/// assert_eq!(model.param_count(), 8 * 9 + 8 + 10 * 128 + 10);
/// let x = vec![0.5; 4 * 64];
/// let logits = model.forward(&x, 4)?;
/// assert_eq!(logits.len(), 4 * 10);
/// # Ok::<(), cnnkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Sequential {
    input: Shape3,
    layers: Vec<Box<dyn Layer>>,
    shapes: Vec<Shape3>,
    infos: Vec<Vec<ParamInfo>>,
    ranges: Vec<Range<usize>>,
    params: Vec<f32>,
    grads: Vec<f32>,
    acts: Vec<Vec<f32>>,
    dbuf: [Vec<f32>; 2],
    /// Where [`Sequential::input_gradient`] writes the parameter gradients it is not asked for
    /// (made on its first call).
    spare_grads: Vec<f32>,
    ws: Vec<f32>,
    training: bool,
    rng: Rng,
    /// The batch size and the input's fingerprint ([`fingerprint`]) of the last forward pass,
    /// which a backward pass must be given again.
    last_n: Option<usize>,
    last_x: u64,
    /// Size of the pool whose threads' packing buffers were made (0: none yet).
    warmed: usize,
    /// `skipped[i]`: layer `i` is a ReLU, a batch norm or a convolution whose work a later layer does (see
    /// [`Sequential::set_fusion`]); it has no output buffer of its own.
    skipped: Vec<bool>,
    /// `bn_into[k] = Some(b)`: max-pool `k` reads the output of batch norm `b` plane by plane,
    /// and runs its statistics and backward pass (see [`Sequential::set_fusion`]).
    bn_into: Vec<Option<usize>>,
    /// `conv_into[k] = Some(c)`: max-pool `k` runs convolution `c` image by image and pools
    /// each image's output from scratch (see [`Sequential::set_fusion`]).
    conv_into: Vec<Option<usize>>,
    /// `bn_conv[k] = Some(c)`: max-pool `k` (with `bn_into[k]`) runs the backward pass of
    /// convolution `c`, the batch norm's input, which makes its output gradient an image at a time
    /// (see [`Sequential::set_fusion`]).
    bn_conv: Vec<Option<usize>>,
}

impl Sequential {
    /// Builds the network `specs` for samples of shape `input` (`[C, H, W]`), with PyTorch's
    /// default initialisation drawn from `seed`. Starts in training mode.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the first layer that cannot take its input shape (a kernel
    /// larger than the image, a dense layer on an unflattened input, ...).
    pub fn new(input: Shape3, specs: &[LayerSpec], seed: u64) -> Result<Self> {
        Self::with_init(input, specs, Init::TorchDefault, seed)
    }

    /// As [`Sequential::new`], with weights initialised by `init`.
    pub fn with_init(input: Shape3, specs: &[LayerSpec], init: Init, seed: u64) -> Result<Self> {
        Self::build(input, specs, init, seed, usize::MAX)
    }

    /// As [`Sequential::new`], refusing with an error (before allocating anything) a network of
    /// more than `max_params` parameters: for architectures from untrusted sources, where a short
    /// string can ask for gigabytes.
    ///
    /// # Errors
    /// As [`Sequential::new`], and [`Error::InvalidArg`] naming the limit.
    pub fn new_with_limit(
        input: Shape3,
        specs: &[LayerSpec],
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        Self::build(input, specs, Init::TorchDefault, seed, max_params)
    }

    /// As [`Sequential::with_init`], refusing (before allocating them) more than `max_params`
    /// parameters.
    pub(crate) fn build(
        input: Shape3,
        specs: &[LayerSpec],
        init: Init,
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        const OP: &str = "Sequential::new";
        check_input(input, specs.len())?;
        let mut layers: Vec<Box<dyn Layer>> = Vec::with_capacity(specs.len());
        let (mut shape, mut total) = (input, 0);
        for spec in specs {
            let l = layer::build(spec, shape)?;
            shape = l.out_shape();
            crate::error::mul(OP, "layer output", shape[0], shape[1] * shape[2])?;
            // Refused before the next layer is built (a hostile architecture allocates nothing).
            total = add_params(total, &l.params(), max_params)?;
            layers.push(l);
        }
        Self::assemble(input, layers, init, seed, max_params)
    }

    /// A model of layers already built, among them your own (see [`Layer`]): each must have been
    /// made for the per-sample output shape of the one before it (the first for `input`);
    /// cnnkit's layers are made with [`crate::layer::build`]. Parameters are initialised as by
    /// [`Sequential::new`] from each layer's [`ParamKind`](crate::layer::ParamKind)s. Such a
    /// model trains, evaluates and saves like any other; loading it back needs the same layers
    /// (build them again, then [`Sequential::load_state_dict`]), since only cnnkit's own layers
    /// can be rebuilt from the architecture text.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for an empty input shape, no layers, or an output shape with no
    /// elements.
    ///
    /// # Example
    /// ```
    /// use cnnkit::{layer, LayerSpec, Sequential};
    /// let conv = layer::build(&LayerSpec::conv(4, 3, 1), [1, 8, 8])?;
    /// let flat = layer::build(&LayerSpec::Flatten, conv.out_shape())?;
    /// let dense = layer::build(&LayerSpec::dense(2), flat.out_shape())?;
    /// let m = Sequential::from_layers([1, 8, 8], vec![conv, flat, dense], 0)?;
    /// assert_eq!(m.output_len(), 2);
    /// # Ok::<(), cnnkit::Error>(())
    /// ```
    pub fn from_layers(input: Shape3, layers: Vec<Box<dyn Layer>>, seed: u64) -> Result<Self> {
        const OP: &str = "Sequential::from_layers";
        for (i, l) in layers.iter().enumerate() {
            if l.out_shape().contains(&0) {
                return Err(Error::invalid(
                    OP,
                    "layers",
                    format!("layer {i} ({}) has an empty output shape", l.spec()),
                ));
            }
        }
        Self::assemble(input, layers, Init::TorchDefault, seed, usize::MAX)
    }

    fn assemble(
        input: Shape3,
        layers: Vec<Box<dyn Layer>>,
        init: Init,
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        const OP: &str = "Sequential::new";
        check_input(input, layers.len())?;
        let (mut shapes, mut infos, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
        let mut total = 0usize;
        for l in &layers {
            let info = l.params();
            let end = add_params(total, &info, max_params)?;
            ranges.push(total..end);
            total = end;
            shapes.push(l.out_shape());
            infos.push(info);
        }
        let count = layers.len();
        crate::memory::check_elems::<f32>(
            OP,
            "the parameters and their gradients",
            2 * total as u128,
        )?;
        let mut m = Sequential {
            input,
            layers,
            shapes,
            infos,
            ranges,
            params: crate::memory::vec_of(OP, "parameters", total, 0.0)?,
            grads: crate::memory::vec_of(OP, "gradients", total, 0.0)?,
            acts: vec![Vec::new(); count],
            dbuf: [Vec::new(), Vec::new()],
            spare_grads: Vec::new(),
            ws: Vec::new(),
            training: true,
            rng: Rng::new(seed),
            last_n: None,
            last_x: 0,
            warmed: 0,
            skipped: vec![false; count],
            bn_into: vec![None; count],
            conv_into: vec![None; count],
            bn_conv: vec![None; count],
        };
        m.reinit(init, seed);
        m.set_fusion(true);
        Ok(m)
    }

    /// Re-initialises every parameter with `init` from `seed` (layer by layer, tensor by tensor).
    pub fn reinit(&mut self, init: Init, seed: u64) {
        let mut rng = Rng::new(seed);
        for (info, r) in self.infos.iter().zip(&self.ranges) {
            let mut at = r.start;
            for p in info {
                init::fill(p, init, &mut rng, &mut self.params[at..at + p.len()]);
                at += p.len();
            }
        }
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> Shape3 {
        self.input
    }
    /// Per-sample output shape of every layer, in order.
    pub fn layer_shapes(&self) -> &[Shape3] {
        &self.shapes
    }
    /// Per-sample output shape.
    pub fn output_shape(&self) -> Shape3 {
        *self.shapes.last().expect("at least one layer")
    }
    /// Output values per sample (the number of classes for a classifier).
    pub fn output_len(&self) -> usize {
        numel(self.output_shape())
    }
    /// The layers' specifications.
    pub fn specs(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|l| l.spec()).collect()
    }
    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }
    /// All parameters, flat.
    pub fn params(&self) -> &[f32] {
        &self.params
    }
    /// All parameters, flat and mutable.
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }
    /// All parameter gradients, flat (same layout as [`Sequential::params`]).
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }
    /// Parameters and gradients together, for an optimizer step.
    pub fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.params, &self.grads)
    }
    pub(crate) fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }
    /// Training mode: batch statistics, dropout and RReLU noise (the default).
    pub fn train(&mut self) {
        self.training = true;
    }
    /// Evaluation mode: running statistics, no dropout, RReLU with its mean slope.
    pub fn eval(&mut self) {
        self.training = false;
    }
    /// Fuses (`true`, the default) or separates layers whose work one pass can do:
    /// - a ReLU directly followed by a max-pool runs inside the pool (`maxpool(relu(x)) =
    ///   relu(maxpool(x))`, and the ReLU's backward mask is the pooled output's sign), which saves
    ///   one pass over the larger tensor in each direction;
    /// - a batch norm followed by a max-pool (directly or through such a ReLU) keeps its
    ///   statistics but never stores its output: the pool normalises each plane as it reads it,
    ///   and backward, the batch norm reads the pool's gradient spread over one plane at a time
    ///   (in cache) instead of a whole tensor, which saves about four passes over the larger
    ///   tensor per step; when the batch norm's input is a convolution with one group, the
    ///   convolution's backward pass makes the batch norm's input gradient (its own output
    ///   gradient) an image at a time after the batch norm's sums, instead of reading a whole
    ///   tensor of it;
    /// - a convolution with one group followed by a max-pool (directly or through such a ReLU)
    ///   never stores its output: the pool convolves one image at a time into scratch and pools
    ///   it from there, and backward, the pool's gradient is spread one image at a time for the
    ///   convolution's bias, weight and input gradients.
    ///
    /// Outputs and running statistics are bit-identical either way, and so are the gradients
    /// but for one change of order: a batch norm fused into a max-pool takes its backward sums
    /// (`Σ dy`, `Σ dy·x̂`) over the pooled positions alone — the pool records the batch norm's
    /// input at each maximum as it runs, and the spread gradient is zero elsewhere — so those
    /// sums, and the gradients that follow from them, differ from the separate layers' in the
    /// last bits (by rounding only: tested within `1e-4` of each gradient's largest element).
    /// Fused results are still bit-identical for any thread count. `false` runs every layer as
    /// written, for comparison. A ReLU that is the first layer is not fused.
    /// Changing it discards the last forward pass (a backward pass needs a new one).
    pub fn set_fusion(&mut self, on: bool) {
        // The layers' caches of the last forward pass follow the old plan.
        self.last_n = None;
        let count = self.layers.len();
        for i in 0..count {
            self.skipped[i] = false;
            self.bn_into[i] = None;
            self.conv_into[i] = None;
            self.bn_conv[i] = None;
            if let Some(pool) = downcast::<Pool>(&mut self.layers[i]) {
                pool.absorb_bn(false);
            }
            let relu = self.layers[i].spec() == LayerSpec::RELU;
            if relu && i >= 1 && i + 1 < count {
                self.skipped[i] = self.layers[i + 1].absorb_relu(on) && on;
            }
        }
        if !on {
            return;
        }
        for b in 0..count {
            if downcast::<BatchNorm2d>(&mut self.layers[b]).is_none() {
                continue;
            }
            // The next layer that runs, past a ReLU the pool absorbed.
            let Some(k) = (b + 1..count).find(|&k| !self.skipped[k]) else {
                continue;
            };
            if let Some(pool) = downcast::<Pool>(&mut self.layers[k])
                && pool.is_max()
            {
                pool.absorb_bn(true);
                self.skipped[b] = true;
                self.bn_into[k] = Some(b);
            }
        }
        for c in 0..count {
            if !downcast::<Conv2d>(&mut self.layers[c]).is_some_and(|l| l.fits_pool()) {
                continue;
            }
            let Some(k) = (c + 1..count).find(|&k| !self.skipped[k]) else {
                continue;
            };
            // Directly, or through a ReLU the pool absorbed (not through a batch norm, whose
            // statistics need every image's output first).
            if self.bn_into[k].is_none()
                && downcast::<Pool>(&mut self.layers[k]).is_some_and(|p| p.is_max())
            {
                self.skipped[c] = true;
                self.conv_into[k] = Some(c);
            }
        }
        for k in 0..count {
            let Some(b) = self.bn_into[k] else { continue };
            if let Some(c) = Self::source(&self.skipped, b)
                && downcast::<Conv2d>(&mut self.layers[c]).is_some_and(|l| l.fits_pool())
            {
                self.bn_conv[k] = Some(c);
            }
        }
    }

    /// The layers that currently run inside the next one (see [`Sequential::set_fusion`]).
    pub fn fused_layers(&self) -> Vec<usize> {
        (0..self.skipped.len())
            .filter(|&i| self.skipped[i])
            .collect()
    }

    /// The layer whose output is layer `i`'s input (`None`: the network's input), given which
    /// layers are `skipped`.
    fn source(skipped: &[bool], i: usize) -> Option<usize> {
        (0..i).rev().find(|&j| !skipped[j])
    }

    /// Whether the model is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }
    /// State of the generator that seeds dropout and RReLU noise.
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }
    /// Restores the noise generator (to resume or to repeat a forward pass exactly).
    pub fn set_rng_state(&mut self, s: [u64; 4]) {
        self.rng = Rng::from_state(s);
    }

    /// Grows activations and scratch for a batch of `n` (no-op when they are large enough).
    /// The whole batch's memory is checked against the budget first (activations, the two
    /// gradient buffers, scratch and, as an upper bound of the layers' caches, the activations
    /// once more), so an oversized batch is refused before anything is allocated.
    fn reserve(&mut self, n: usize) -> Result<()> {
        const OP: &str = "Sequential::forward";
        let len = |s: Shape3| crate::error::mul(OP, "batch", n, numel(s));
        let mut widest = len(self.input)?;
        let (mut acts, mut ws) = (0u128, 0usize);
        for (l, &s) in self.layers.iter().zip(&self.shapes) {
            let k = len(s)?;
            acts += k as u128;
            widest = widest.max(k);
            ws = ws.max(l.scratch_len(n));
        }
        for k in 0..self.layers.len() {
            if let Some(c) = self.conv_into[k].or(self.bn_conv[k]) {
                let conv =
                    downcast::<Conv2d>(&mut self.layers[c]).map_or(0, |c| c.pooled_scratch_len(n));
                ws = ws.max(self.layers[k].scratch_len(n) + conv);
            }
        }
        crate::memory::check_elems::<f32>(
            OP,
            "the activations of the batch",
            2 * acts + 2 * widest as u128 + ws as u128,
        )?;
        for ((a, &s), &skip) in self.acts.iter_mut().zip(&self.shapes).zip(&self.skipped) {
            if !skip {
                crate::memory::grow(OP, "activations", a, len(s)?)?;
            }
        }
        for d in &mut self.dbuf {
            crate::memory::grow(OP, "gradients", d, widest)?;
        }
        crate::memory::grow(OP, "scratch", &mut self.ws, ws)?;
        // Every thread of the pool makes its packing buffers on the first call (and again when
        // the pool's size changes): which thread runs which product later depends on
        // scheduling, and none of the steps after the first may allocate.
        if self.warmed != crate::par::threads() {
            crate::par::on_every_thread(crate::gemm::warm_thread);
            self.warmed = crate::par::threads();
        }
        Ok(())
    }

    /// Runs the network on `n` samples `x` (`[n, C, H, W]`) in the current mode and returns the
    /// output (`[n, output_len]`).
    ///
    /// # Errors
    /// [`Error::Length`] if `x` does not hold `n` samples of the input shape.
    pub fn forward(&mut self, x: &[f32], n: usize) -> Result<&[f32]> {
        check_len("Sequential::forward", "x", x, n * numel(self.input))?;
        self.reserve(n)?;
        let call_seed = if self.training {
            self.rng.next_u64()
        } else {
            0
        };
        for i in 0..self.layers.len() {
            if self.skipped[i] {
                continue;
            }
            let src = Self::source(&self.skipped, i);
            let (prev, rest) = self.acts.split_at_mut(i);
            let input: &[f32] = match src {
                None => x,
                Some(j) => &prev[j][..n * numel(self.shapes[j])],
            };
            let out = &mut rest[0][..n * numel(self.shapes[i])];
            let mut ctx = Ctx::new(self.training, mix64(call_seed ^ i as u64), &mut self.ws);
            if let Some(b) = self.bn_into[i] {
                let (head, tail) = self.layers.split_at_mut(i);
                let (bn, pool) = fused_pair::<BatchNorm2d, Pool>(&mut head[b], &mut tail[0])?;
                bn.forward_stats(
                    n,
                    &self.params[self.ranges[b].clone()],
                    input,
                    self.training,
                )?;
                let (scale, shift) = bn.affine();
                let src = Planes::Affine {
                    x: input,
                    scale,
                    shift,
                };
                pool.forward_from(n, src, out, ctx.ws)?;
                continue;
            }
            if let Some(c) = self.conv_into[i] {
                let (head, tail) = self.layers.split_at_mut(i);
                let (conv, pool) = fused_pair::<Conv2d, Pool>(&mut head[c], &mut tail[0])?;
                let p = &self.params[self.ranges[c].clone()];
                pool.forward_conv(n, conv, p, input, out, ctx.ws)?;
                continue;
            }
            self.layers[i].forward(
                n,
                &self.params[self.ranges[i].clone()],
                input,
                out,
                &mut ctx,
            )?;
        }
        self.last_n = Some(n);
        self.last_x = fingerprint(x);
        let last = self.layers.len() - 1;
        Ok(&self.acts[last][..n * self.output_len()])
    }

    /// Back-propagates `dout = dL/d(output)` of the last [`Sequential::forward`] call (which must
    /// have been given the same `x`) into the parameter gradients: overwritten with
    /// [`Accum::Replace`], added to with [`Accum::Add`] (gradient accumulation). The input
    /// gradient is not computed (see [`Sequential::input_gradient`]).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] without a preceding forward pass, or when `x` is not its input;
    /// [`Error::Length`] if `x` or `dout` do not match its batch.
    pub fn backward(&mut self, x: &[f32], dout: &[f32], accum: Accum) -> Result<()> {
        self.backprop("Sequential::backward", x, dout, None, Some(accum))
    }

    /// The gradient with respect to the input, `dx = (∂output/∂x)ᵀ · dout`, for the last
    /// [`Sequential::forward`] call (which must have been given the same `x`: another `x` is an
    /// error, not the gradient at another point) and any upstream
    /// gradient `dout` on its output: a loss gradient, or the gradient of any functional of the
    /// output (for `½‖f(x + r) − f(x)‖²` at `x + r`, `dout = f(x + r) − f(x)`). `dx` (the shape
    /// of `x`) is overwritten.
    ///
    /// The parameter gradients are left exactly as they were with `params = None`, or
    /// overwritten / added to with `Some(accum)` as by [`Sequential::backward`] (one pass for
    /// both, as adversarial training needs). Dropout and RReLU use the masks of that forward pass,
    /// so in training mode the gradient is that of the same random network.
    ///
    /// # Errors
    /// As [`Sequential::backward`]; [`Error::Length`] if `dx` does not match `x`;
    /// [`Error::InvalidArg`] if `x` is not the input of the last forward pass.
    ///
    /// # Example
    /// ```
    /// use cnnkit::{kernels::{cross_entropy_loss, Accum}, LayerSpec, Sequential};
    /// let specs = LayerSpec::parse_list("conv(4,3,p=1),relu,flatten,dense(3)")?;
    /// let mut m = Sequential::new([1, 6, 6], &specs, 0)?;
    /// let x = vec![0.5f32; 2 * 36];
    /// let logits = m.forward(&x, 2)?.to_vec();
    /// let mut dlogits = vec![0.0; logits.len()];
    /// cross_entropy_loss(3, &logits, &[0, 2], 0.0, Some(&mut dlogits))?;
    /// let mut dx = vec![0.0; x.len()];
    /// m.input_gradient(&x, &dlogits, &mut dx, None)?; // dL/dx; parameter gradients untouched
    /// assert!(dx.iter().any(|&v| v != 0.0));
    /// # Ok::<(), cnnkit::Error>(())
    /// ```
    pub fn input_gradient(
        &mut self,
        x: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        params: Option<Accum>,
    ) -> Result<()> {
        const OP: &str = "Sequential::input_gradient";
        check_len(OP, "dx", dx, x.len())?;
        self.backprop(OP, x, dout, Some(dx), params)
    }

    /// The backward pass: parameter gradients into `grads` per `params` (into a spare buffer when
    /// `None`), and the input gradient into `dx_in` when given.
    fn backprop(
        &mut self,
        op: &'static str,
        x: &[f32],
        dout: &[f32],
        mut dx_in: Option<&mut [f32]>,
        params: Option<Accum>,
    ) -> Result<()> {
        let n = self
            .last_n
            .ok_or_else(|| Error::invalid(op, "forward", "no forward pass to differentiate"))?;
        check_len(op, "x", x, n * numel(self.input))?;
        if fingerprint(x) != self.last_x {
            return Err(Error::invalid(
                op,
                "x",
                "it is not the input of the last forward pass (another forward pass ran since, or \
                 x changed): run forward(x) again before differentiating at x",
            ));
        }
        check_len(op, "dout", dout, n * self.output_len())?;
        if params.is_none() && self.spare_grads.len() != self.grads.len() {
            self.spare_grads =
                crate::memory::vec_of(op, "spare parameter gradients", self.grads.len(), 0.0)?;
        }
        let (grads, accum) = match params {
            Some(a) => (&mut self.grads, a),
            None => (&mut self.spare_grads, Accum::Replace),
        };
        let last = self.layers.len() - 1;
        let mut cur = 0; // dbuf[cur] holds dy of layer i (except for the last layer)
        for i in (0..self.layers.len()).rev() {
            // Without an input gradient, a first layer without parameters has nothing to do.
            if i == 0 && dx_in.is_none() && self.ranges[0].is_empty() {
                break;
            }
            if self.skipped[i] || self.bn_conv.contains(&Some(i)) {
                // A later layer returned this layer's input gradient already.
                continue;
            }
            let y_len = n * numel(self.shapes[i]);
            let src = Self::source(&self.skipped, i);
            let (prev, rest) = self.acts.split_at(i);
            let input: &[f32] = match src {
                None => x,
                Some(j) => &prev[j][..n * numel(self.shapes[j])],
            };
            let y = &rest[0][..y_len];
            let [d0, d1] = &mut self.dbuf;
            let (dy_buf, dx_buf) = if cur == 0 { (&*d0, d1) } else { (&*d1, d0) };
            let dy: &[f32] = if i == last { dout } else { &dy_buf[..y_len] };
            let dx = match src {
                Some(_) => Some(&mut dx_buf[..input.len()]),
                None => dx_in.as_deref_mut(),
            };
            let mut ctx = Ctx::new(self.training, 0, &mut self.ws);
            if let (Some(b), Some(c)) = (self.bn_into[i], self.bn_conv[i]) {
                // Pool, batch norm and the convolution before it: the batch norm's sums, then
                // the convolution's backward pass making the batch norm's input gradient (its
                // own output gradient) an image at a time.
                let (head, tail) = self.layers.split_at_mut(i);
                let (head, bn_l) = head.split_at_mut(b);
                let (bn, pool) = fused_pair::<BatchNorm2d, Pool>(&mut bn_l[0], &mut tail[0])?;
                let conv = downcast::<Conv2d>(&mut head[c]).ok_or_else(planned)?;
                let (src, ws) = pool.pooled_grad(n, y, dy, ctx.ws)?;
                let (sums, ws) = ws.split_at_mut(bn.sums_len(n));
                let (rc, rb) = (self.ranges[c].clone(), self.ranges[b].clone());
                let (gc, gb) = grads.split_at_mut(rb.start);
                let pb = &self.params[rb.clone()];
                let map =
                    bn.backward_sums(n, pb, &mut gb[..rb.len()], input, src, accum, sums, ws)?;
                let planes = Planes::BnGrad {
                    x: input,
                    dy: &src,
                    map,
                };
                let conv_src = Self::source(&self.skipped, c);
                let conv_x: &[f32] = match conv_src {
                    None => x,
                    Some(j) => &prev[j][..n * numel(self.shapes[j])],
                };
                let conv_dx = match conv_src {
                    Some(_) => Some(&mut dx_buf[..conv_x.len()]),
                    None => dx_in.as_deref_mut(),
                };
                let pc = &self.params[rc.clone()];
                conv.backward_from(n, pc, &mut gc[rc], conv_x, planes, conv_dx, accum, ws)?;
                cur = 1 - cur;
                continue;
            }
            if let Some(b) = self.bn_into[i] {
                let (head, tail) = self.layers.split_at_mut(i);
                let (bn, pool) = fused_pair::<BatchNorm2d, Pool>(&mut head[b], &mut tail[0])?;
                let (src, ws) = pool.pooled_grad(n, y, dy, ctx.ws)?;
                let r = self.ranges[b].clone();
                bn.backward_from(
                    n,
                    &self.params[r.clone()],
                    &mut grads[r],
                    input,
                    src,
                    dx,
                    accum,
                    ws,
                )?;
                cur = 1 - cur;
                continue;
            }
            if let Some(c) = self.conv_into[i] {
                let (head, tail) = self.layers.split_at_mut(i);
                let (conv, pool) = fused_pair::<Conv2d, Pool>(&mut head[c], &mut tail[0])?;
                let (src, ws) = pool.pooled_grad(n, y, dy, ctx.ws)?;
                let r = self.ranges[c].clone();
                let p = &self.params[r.clone()];
                conv.backward_from(n, p, &mut grads[r], input, src, dx, accum, ws)?;
                cur = 1 - cur;
                continue;
            }
            let r = self.ranges[i].clone();
            let b = Backward {
                n,
                params: &self.params[r.clone()],
                grads: &mut grads[r],
                x: input,
                y,
                dy,
                dx,
                accum,
            };
            self.layers[i].backward(b, &mut ctx)?;
            cur = 1 - cur;
        }
        Ok(())
    }

    /// One line per layer: index, layer, output shape and parameter count, under a header with
    /// the input shape and the total.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let [c, h, w] = self.input;
        let _ = writeln!(s, "input {c}x{h}x{w}, {} parameters", self.param_count());
        let _ = writeln!(
            s,
            "{:>3}  {:<40} {:>14} {:>10}",
            "#", "layer", "output", "params"
        );
        for (i, l) in self.layers.iter().enumerate() {
            let [c, h, w] = self.shapes[i];
            let out = if h == 1 && w == 1 {
                format!("{c}")
            } else {
                format!("{c}x{h}x{w}")
            };
            let _ = writeln!(
                s,
                "{i:>3}  {:<40} {out:>14} {:>10}",
                l.spec().to_string(),
                self.ranges[i].len()
            );
        }
        s
    }

    /// The parameters by name, as PyTorch's `named_parameters()` of the equivalent
    /// `nn.Sequential` (`"0.weight"`, `"1.bias"`, …), each a view into [`Sequential::params`]:
    /// the learnable tensors, without the running statistics (see [`Sequential::named_buffers`]).
    pub fn named_parameters(&self) -> Vec<(String, &[f32])> {
        self.named_slices(&self.params)
    }

    /// The parameter gradients by name, in the order and with the names of
    /// [`Sequential::named_parameters`], each a view into [`Sequential::grads`].
    pub fn named_grads(&self) -> Vec<(String, &[f32])> {
        self.named_slices(&self.grads)
    }

    /// The buffers by name, as PyTorch's `named_buffers()`: batch norms' `running_mean`,
    /// `running_var` and `num_batches_tracked`, the state that is not learned. Together with
    /// [`Sequential::named_parameters`] they make up [`Sequential::state_dict`].
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let idx = self.torch_indices();
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, t) in l.buffers() {
                out.push((format!("{}.{name}", idx[i]), t));
            }
        }
        out
    }

    /// `flat` (the parameters or their gradients) cut into the named parameter tensors.
    fn named_slices<'a>(&self, flat: &'a [f32]) -> Vec<(String, &'a [f32])> {
        let idx = self.torch_indices();
        let mut out = Vec::new();
        for (i, (info, r)) in self.infos.iter().zip(&self.ranges).enumerate() {
            let mut at = r.start;
            for p in info {
                out.push((format!("{}.{}", idx[i], p.name), &flat[at..at + p.len()]));
                at += p.len();
            }
        }
        out
    }

    /// The model's state as PyTorch's `state_dict()` of the equivalent `torch.nn.Sequential`:
    /// `"{index}.{name}"` for every parameter and buffer, in PyTorch's shapes. The index is the
    /// module's in the natural PyTorch spelling, where a `gap` is two modules
    /// (`AdaptiveAvgPool2d(1), Flatten()`).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let idx = self.torch_indices();
        let mut out = Vec::new();
        for (i, (l, (info, r))) in self
            .layers
            .iter()
            .zip(self.infos.iter().zip(&self.ranges))
            .enumerate()
        {
            let mut at = r.start;
            for p in info {
                let data = self.params[at..at + p.len()].to_vec();
                out.push((
                    format!("{}.{}", idx[i], p.name),
                    Tensor {
                        shape: p.shape.clone(),
                        data: TensorData::F32(data),
                    },
                ));
                at += p.len();
            }
            for (name, t) in l.buffers() {
                out.push((format!("{}.{name}", idx[i]), t));
            }
        }
        out
    }

    /// The index of each layer in the equivalent `torch.nn.Sequential`, which names its state:
    /// a `gap` is two modules there (`AdaptiveAvgPool2d(1)`, `Flatten()`), so each layer after
    /// one is a place further on.
    fn torch_indices(&self) -> Vec<usize> {
        let mut extra = 0;
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let at = i + extra;
                if matches!(l.spec(), LayerSpec::GlobalAvgPool) {
                    extra += 1;
                }
                at
            })
            .collect()
    }

    /// Renames the tensors of a state dictionary written before the names followed
    /// `torch.nn.Sequential`'s indices (when `gap` counted as one module): `"{layer}.{name}"`
    /// becomes `"{torch index}.{name}"`. Names that do not start with a layer index are kept.
    pub(crate) fn rename_from_layer_indices(
        &self,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Vec<(String, Tensor)> {
        let idx = self.torch_indices();
        tensors
            .into_iter()
            .map(|(name, t)| {
                let renamed = name.split_once('.').and_then(|(head, rest)| {
                    let i: usize = head.parse().ok()?;
                    Some(format!("{}.{rest}", idx.get(i)?))
                });
                (renamed.unwrap_or(name), t)
            })
            .collect()
    }

    /// Loads a state dictionary: what [`Sequential::state_dict`] returns (the same `Vec`), or a
    /// map by name (PyTorch's `state_dict()` of the equivalent `nn.Sequential`, read from a file).
    /// Every parameter and buffer must be present with its exact shape and type, and no other key
    /// may be present; a batch norm's `num_batches_tracked` may be missing (as in checkpoints
    /// written before PyTorch 0.4.1) and then keeps its value.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the missing, unexpected or mis-shaped tensor; the model is
    /// unchanged on error.
    ///
    /// # Example
    /// ```
    /// use cnnkit::{LayerSpec, Sequential};
    /// let specs = LayerSpec::parse_list("conv(2,3),bn,relu,flatten,dense(2)")?;
    /// let a = Sequential::new([1, 5, 5], &specs, 1)?;
    /// let mut b = Sequential::new([1, 5, 5], &specs, 2)?;
    /// b.load_state_dict(&a.state_dict())?; // the same type both ways
    /// assert_eq!(a.params(), b.params());
    /// # Ok::<(), cnnkit::Error>(())
    /// ```
    pub fn load_state_dict(&mut self, tensors: &(impl StateTensors + ?Sized)) -> Result<()> {
        const OP: &str = "Sequential::load_state_dict";
        let expected = self.state_dict();
        for (name, t) in &expected {
            let Some(got) = tensors.tensor(name) else {
                if name.ends_with(".num_batches_tracked") {
                    continue;
                }
                return Err(Error::invalid(
                    OP,
                    "state",
                    format!("missing tensor {name}"),
                ));
            };
            let same_type = matches!(
                (&got.data, &t.data),
                (TensorData::F32(_), TensorData::F32(_)) | (TensorData::I64(_), TensorData::I64(_))
            );
            let data_len = match &got.data {
                TensorData::F32(v) => v.len(),
                TensorData::I64(v) => v.len(),
            };
            if data_len != got.shape.iter().product::<usize>() {
                return Err(Error::invalid(
                    OP,
                    "state",
                    format!("{name}: {data_len} values for shape {:?}", got.shape),
                ));
            }
            if got.shape != t.shape || !same_type {
                return Err(Error::invalid(
                    OP,
                    "state",
                    format!(
                        "{name}: expected {} of shape {:?}, got {} of shape {:?}",
                        dtype(t),
                        t.shape,
                        dtype(got),
                        got.shape
                    ),
                ));
            }
        }
        if let Some(extra) = tensors
            .names()
            .into_iter()
            .find(|k| !expected.iter().any(|(n, _)| n == k))
        {
            return Err(Error::invalid(
                OP,
                "state",
                format!("unexpected tensor {extra}"),
            ));
        }
        let idx = self.torch_indices();
        for (i, (info, r)) in self.infos.iter().zip(&self.ranges).enumerate() {
            let mut at = r.start;
            for p in info {
                let t = tensors.tensor(&format!("{}.{}", idx[i], p.name));
                if let Some(TensorData::F32(v)) = t.map(|t| &t.data) {
                    self.params[at..at + p.len()].copy_from_slice(v);
                }
                at += p.len();
            }
        }
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (name, _) in l.buffers() {
                if let Some(t) = tensors.tensor(&format!("{}.{name}", idx[i])) {
                    l.set_buffer(name, t)?;
                }
            }
        }
        Ok(())
    }
}

/// Tensors by name, as [`Sequential::load_state_dict`] reads them: the `Vec` (or slice) of
/// `(name, tensor)` pairs that [`Sequential::state_dict`] returns, or a map by name.
pub trait StateTensors {
    /// The tensor called `name`, if there is one.
    fn tensor(&self, name: &str) -> Option<&Tensor>;
    /// Every name.
    fn names(&self) -> Vec<&str>;
}

impl StateTensors for [(String, Tensor)] {
    fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    fn names(&self) -> Vec<&str> {
        self.iter().map(|(n, _)| n.as_str()).collect()
    }
}

impl StateTensors for Vec<(String, Tensor)> {
    fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.as_slice().tensor(name)
    }
    fn names(&self) -> Vec<&str> {
        self.as_slice().names()
    }
}

impl<S: std::hash::BuildHasher> StateTensors for HashMap<String, Tensor, S> {
    fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.get(name)
    }
    fn names(&self) -> Vec<&str> {
        self.keys().map(String::as_str).collect()
    }
}

impl StateTensors for std::collections::BTreeMap<String, Tensor> {
    fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.get(name)
    }
    fn names(&self) -> Vec<&str> {
        self.keys().map(String::as_str).collect()
    }
}

/// Layer `l` as cnnkit's own layer type `T`, if it is one.
fn downcast<T: 'static>(l: &mut Box<dyn Layer>) -> Option<&mut T> {
    l.as_any_mut()?.downcast_mut::<T>()
}

/// The error when the layers of a fusion are not those [`Sequential::set_fusion`] planned for.
fn planned() -> Error {
    Error::invalid("Sequential", "fusion", "planned for other layers")
}

/// The two layers of a fusion that [`Sequential::set_fusion`] planned, as their own types.
fn fused_pair<'a, A: 'static, B: 'static>(
    a: &'a mut Box<dyn Layer>,
    b: &'a mut Box<dyn Layer>,
) -> Result<(&'a mut A, &'a mut B)> {
    Ok((
        downcast::<A>(a).ok_or_else(planned)?,
        downcast::<B>(b).ok_or_else(planned)?,
    ))
}

/// Refuses an empty input shape or an empty network.
fn check_input(input: Shape3, layers: usize) -> Result<()> {
    const OP: &str = "Sequential::new";
    if input.contains(&0) {
        return Err(Error::invalid(
            OP,
            "input",
            format!("empty input shape {input:?}"),
        ));
    }
    if layers == 0 {
        return Err(Error::invalid(OP, "architecture", "no layers"));
    }
    Ok(())
}

/// `total` plus the parameters of `info`, refused above `max_params`.
fn add_params(total: usize, info: &[ParamInfo], max_params: usize) -> Result<usize> {
    const OP: &str = "Sequential::new";
    let total = info
        .iter()
        .try_fold(total, |t, p| t.checked_add(p.len()))
        .ok_or_else(|| Error::too_large(OP, "parameter count"))?;
    if total > max_params {
        return Err(Error::invalid(
            OP,
            "architecture",
            format!("needs more than {max_params} parameters"),
        ));
    }
    Ok(total)
}

fn dtype(t: &Tensor) -> &'static str {
    match t.data {
        TensorData::F32(_) => "f32",
        TensorData::I64(_) => "i64",
    }
}

/// A 64-bit fingerprint of an input's bits, to tell whether a backward pass is given the input
/// of the last forward pass (not a cryptographic hash: a changed input is found, a crafted one
/// need not be).
fn fingerprint(x: &[f32]) -> u64 {
    let mut h = (x.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for c in x.chunks(2) {
        let w = c.iter().fold(0u64, |a, v| (a << 32) | v.to_bits() as u64);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
    }
    h
}
