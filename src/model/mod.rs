//! [`Model`]: a graph of layers and joins with its parameters, gradients, activations, scratch
//! and execution plan; a [`Sequential`] chain is the one-input case of the same type.

mod arena;
pub(crate) mod graph;
mod persist;
pub(crate) mod plan;

pub use graph::{GraphBuilder, Join, NodeId};

use crate::error::{Error, Result, check_len};
use crate::init::{self, Init};
use crate::kernels::accum::Accum;
use crate::kernels::conv::forward::{Epilogue, Prepacked};
use crate::kernels::join;
use crate::kernels::planes::Planes;
use crate::layer::spec::LayerSpec;
use crate::layer::{Backward, Built, Ctx, Layer, ParamInfo};
use crate::rng::{Rng, mix64};
use crate::shape::{Shape3, Tensor, TensorData, numel};
use arena::Arena;
use graph::{Node, Op, Src};
use plan::{Plan, Step};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

/// A network: a directed acyclic graph of layers and joins (sums, channel concatenations,
/// gates), run by an execution plan made once per model; a chain of layers
/// ([`Sequential`], `torch.nn.Sequential`) is the graph whose nodes each read the one before.
///
/// All parameters live in one flat buffer ([`Model::params`]) and their gradients in another
/// ([`Model::grads`]), in node order and, within a node, in PyTorch's `state_dict` order
/// (`weight` then `bias`). Activations, caches and scratch are kept between calls and only grow:
/// after the first step with the largest batch, forward and backward allocate nothing.
/// Build a chain with [`Model::new`], a graph with [`GraphBuilder`] or from text with
/// [`Model::from_text`].
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
pub struct Model {
    input: Shape3,
    nodes: Vec<Node>,
    shapes: Vec<Shape3>,
    infos: Vec<Vec<ParamInfo>>,
    ranges: Vec<Range<usize>>,
    params: Vec<f32>,
    grads: Vec<f32>,
    /// Every output [`Model::forward`] keeps, where [`Model::kept`] places it.
    acts: Vec<f32>,
    /// Where each node's output lives in `acts` (its concatenations stacked, see [`Arena`]).
    kept: Arena,
    /// Whether the concatenations that only batch norms read are stacked (off only to test
    /// that the results are the same bits).
    stack: bool,
    /// The plan's gradient slots.
    dslots: Vec<Vec<f32>>,
    /// A layer's input gradient before it is added to an earlier one.
    dtmp: Vec<f32>,
    /// Where [`Model::input_gradient`] writes the parameter gradients it is not asked for
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
    plan: Plan,
    /// Where [`Model::infer`] keeps each node's output: for a batch, and for one sample with
    /// concatenations in place.
    arenas: [Arena; 2],
    /// The buffer of [`Model::infer`].
    infer_buf: Vec<f32>,
    /// The folded convolutions of [`Model::infer`]'s fused steps, by node; empty until the
    /// first call, and emptied by anything that may change the parameters or the batch norms'
    /// running statistics.
    folded: Vec<Option<Folded>>,
}

/// A chain of layers, `torch.nn.Sequential`: the [`Model`] whose nodes each read the one before
/// (the name cnnkit's models had before graphs; every method is [`Model`]'s).
pub type Sequential = Model;

/// Activation memory of a model for one batch size, in bytes
/// ([`Model::activation_memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationMemory {
    /// The outputs [`Model::forward`] keeps for the backward pass (a concatenation that only
    /// batch norms read, as in a DenseNet block, keeps its inputs in place rather than a copy).
    pub training: usize,
    /// The buffer [`Model::infer`] needs (outputs share it over their lifetimes).
    pub inference: usize,
    /// What [`Model::infer`]'s channel concatenations copy per call (0 for one sample whenever
    /// every input can be written in place, and for a batch when batch norms alone read them).
    pub copied: usize,
}

impl Model {
    /// Builds the chain `specs` for samples of shape `input` (`[C, H, W]`), with PyTorch's
    /// default initialisation drawn from `seed`. Starts in training mode. Its nodes are named by
    /// their index in the equivalent `torch.nn.Sequential` (`"0"`, `"1"`, …).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the first layer that cannot take its input shape (a kernel
    /// larger than the image, a dense layer on an unflattened input, ...).
    pub fn new(input: Shape3, specs: &[LayerSpec], seed: u64) -> Result<Self> {
        Self::with_init(input, specs, Init::TorchDefault, seed)
    }

    /// As [`Model::new`], with weights initialised by `init`.
    pub fn with_init(input: Shape3, specs: &[LayerSpec], init: Init, seed: u64) -> Result<Self> {
        Self::build(input, specs, init, seed, usize::MAX)
    }

    /// As [`Model::new`], refusing with an error (before allocating anything) a network of
    /// more than `max_params` parameters: for architectures from untrusted sources, where a short
    /// string can ask for gigabytes.
    ///
    /// # Errors
    /// As [`Model::new`], and [`Error::InvalidArg`] naming the limit.
    pub fn new_with_limit(
        input: Shape3,
        specs: &[LayerSpec],
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        Self::build(input, specs, Init::TorchDefault, seed, max_params)
    }

    /// The model of an architecture text: a layer list (`conv(8,3,p=1),relu,…`) or a graph (see
    /// [`GraphBuilder::parse`]), as [`Model::architecture`] writes it.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the statement or layer that is wrong.
    pub fn from_text(input: Shape3, text: &str, seed: u64) -> Result<Self> {
        Self::from_text_with_limit(input, text, seed, usize::MAX)
    }

    /// As [`Model::from_text`], refusing more than `max_params` parameters.
    ///
    /// # Errors
    /// As [`Model::from_text`].
    pub fn from_text_with_limit(
        input: Shape3,
        text: &str,
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        GraphBuilder::parse_with_limit(input, text, max_params)?.build(seed)
    }

    /// As [`Model::with_init`], refusing (before allocating them) more than `max_params`
    /// parameters.
    pub(crate) fn build(
        input: Shape3,
        specs: &[LayerSpec],
        init: Init,
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        check_input(input, specs.len())?;
        let mut g = GraphBuilder::with_limit(input, max_params);
        let mut at = g.input();
        for (spec, k) in specs.iter().zip(graph::torch_indices(specs)) {
            at = g.layer(&k.to_string(), spec, at)?;
        }
        g.build_with_init(init, seed)
    }

    /// A chain of layers already built, among them your own (see [`Layer`]): each must have
    /// been made for the per-sample output shape of the one before it (the first for `input`);
    /// cnnkit's layers are made with [`crate::layer::build`]. Parameters are initialised as by
    /// [`Model::new`] from each layer's [`ParamKind`](crate::layer::ParamKind)s. Such a
    /// model trains, evaluates and saves like any other; loading it back needs the same layers
    /// (build them again, then [`Model::load_state_dict`]), since only cnnkit's own layers
    /// can be rebuilt from the architecture text. (In a graph, add your layers with
    /// [`GraphBuilder::custom`].)
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
        check_input(input, layers.len())?;
        let specs: Vec<LayerSpec> = layers.iter().map(|l| l.spec()).collect();
        let mut g = GraphBuilder::new(input);
        let mut at = g.input();
        for (i, (l, k)) in layers
            .into_iter()
            .zip(graph::torch_indices(&specs))
            .enumerate()
        {
            if l.out_shape().contains(&0) {
                return Err(Error::invalid(
                    OP,
                    "layers",
                    format!("layer {i} ({}) has an empty output shape", l.spec()),
                ));
            }
            at = g.custom(&k.to_string(), l, at)?;
        }
        g.build(seed)
    }

    pub(crate) fn assemble(
        input: Shape3,
        nodes: Vec<Node>,
        init: Init,
        seed: u64,
        max_params: usize,
    ) -> Result<Self> {
        const OP: &str = "Sequential::new";
        check_input(input, nodes.len())?;
        let (mut shapes, mut infos, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
        let mut total = 0usize;
        for n in &nodes {
            let info = match &n.op {
                Op::Layer(l) => l.layer().params(),
                Op::Join(_) => Vec::new(),
            };
            let end = add_params(total, &info, max_params)?;
            ranges.push(total..end);
            total = end;
            shapes.push(n.shape);
            infos.push(info);
        }
        crate::memory::check_elems::<f32>(
            OP,
            "the parameters and their gradients",
            2 * total as u128,
        )?;
        let mut m = Model {
            input,
            nodes,
            shapes,
            infos,
            ranges,
            params: crate::memory::vec_of(OP, "parameters", total, 0.0)?,
            grads: crate::memory::vec_of(OP, "gradients", total, 0.0)?,
            acts: Vec::new(),
            kept: Arena::default(),
            stack: true,
            dslots: Vec::new(),
            dtmp: Vec::new(),
            spare_grads: Vec::new(),
            ws: Vec::new(),
            training: true,
            rng: Rng::new(seed),
            last_n: None,
            last_x: 0,
            warmed: 0,
            plan: Plan::default(),
            arenas: Default::default(),
            folded: Vec::new(),
            infer_buf: Vec::new(),
        };
        m.reinit(init, seed);
        m.set_fusion(true);
        Ok(m)
    }

    /// Re-initialises every parameter with `init` from `seed` (node by node, tensor by tensor).
    pub fn reinit(&mut self, init: Init, seed: u64) {
        self.folded.clear();
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
    /// Per-sample output shape of every node, in order.
    pub fn layer_shapes(&self) -> &[Shape3] {
        &self.shapes
    }
    /// Per-sample output shape.
    pub fn output_shape(&self) -> Shape3 {
        *self.shapes.last().expect("at least one node")
    }
    /// Output values per sample (the number of classes for a classifier).
    pub fn output_len(&self) -> usize {
        numel(self.output_shape())
    }
    /// The specifications of the model's layers, in node order (joins left out): for a chain,
    /// its layer list.
    pub fn specs(&self) -> Vec<LayerSpec> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Layer(l) => Some(l.layer().spec()),
                Op::Join(_) => None,
            })
            .collect()
    }
    /// The architecture as text, read back by [`Model::from_text`] into the same graph and
    /// names: a chain's layer list (`conv(8,3,p=1),relu,…`), or one statement per node.
    pub fn architecture(&self) -> String {
        graph::to_text(&self.nodes)
    }
    /// Whether the model is a chain (each node a layer reading the one before it).
    pub fn is_chain(&self) -> bool {
        graph::is_chain(&self.nodes)
    }
    /// The graph's nodes, in order (for the ONNX writer).
    pub(crate) fn graph_nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Every node's name, in order (the prefix of its parameters' state-dict names).
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
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
        self.folded.clear();
        &mut self.params
    }
    /// All parameter gradients, flat (same layout as [`Model::params`]).
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }
    /// Parameters and gradients together, for an optimizer step.
    pub fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        self.folded.clear();
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
    /// Fuses (`true`, the default) or separates nodes whose work one pass can do, wherever a
    /// node's output has one reader and is not the model's output (see `model::plan`):
    /// - a ReLU directly followed by a max-pool runs inside the pool (`maxpool(relu(x)) =
    ///   relu(maxpool(x))`, and the ReLU's backward mask is the pooled output's sign), which saves
    ///   one pass over the larger tensor in each direction;
    /// - a batch norm followed by a max-pool (directly or through such a ReLU) keeps its
    ///   statistics but never stores its output: the pool normalises each plane as it reads it,
    ///   and backward, the batch norm reads the pool's gradient spread over one plane at a time
    ///   (in cache) instead of a whole tensor, which saves about four passes over the larger
    ///   tensor per step; when the batch norm's input is a convolution with one group read by
    ///   nothing else, the convolution's backward pass makes the batch norm's input gradient (its
    ///   own output gradient) an image at a time after the batch norm's sums, instead of reading
    ///   a whole tensor of it;
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
    /// Fused results are still bit-identical for any thread count. `false` runs every node as
    /// written, for comparison. A ReLU that reads the model's input is not fused.
    /// Changing it discards the last forward pass (a backward pass needs a new one).
    pub fn set_fusion(&mut self, on: bool) {
        self.folded.clear();
        // The layers' caches of the last forward pass follow the old plan.
        self.last_n = None;
        let plan = Plan::new(&self.nodes, on);
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Op::Layer(Built::Pool(p)) = &mut n.op {
                p.absorb_relu(plan.relu_into[i]);
                p.absorb_bn(plan.bn_into[i]);
            }
        }
        self.dslots.resize_with(plan.slots, Vec::new);
        let input_len = numel(self.input);
        self.kept = Arena::kept(&self.nodes, &plan, input_len, self.stack);
        self.arenas = [
            Arena::new(&self.nodes, &plan, input_len, (false, self.stack)),
            Arena::new(&self.nodes, &plan, input_len, (true, self.stack)),
        ];
        self.plan = plan;
    }

    /// Whether a channel concatenation that only batch norms read (each layer's input in a
    /// DenseNet block, and the block's output) keeps its inputs where they were written
    /// (`true`, the default) or copies them (`false`, for comparison). In place, a batch's
    /// concatenation holds its inputs one after the other, each a whole `[n, c, h, w]` tensor,
    /// and the batch norms read their channels from there; a block's layers then read views of
    /// one buffer, which its new feature maps are written into, rather than copies that grow
    /// with every layer ([`ActivationMemory::training`]). [`Model::infer`] stacks them for a
    /// batch too ([`ActivationMemory::copied`]). Results are the same bits either way.
    /// Changing it discards the last forward pass (a backward pass needs a new one).
    ///
    /// # Example
    /// ```
    /// use cnnkit::{GraphBuilder, LayerSpec};
    /// let mut g = GraphBuilder::new([2, 8, 8]);
    /// let x = g.input();
    /// let mut feats = vec![g.layer("stem", &LayerSpec::conv(4, 3, 1), x)?];
    /// for i in 0..3 {
    ///     let cat = match &feats[..] {
    ///         [one] => *one,
    ///         all => g.concat(&format!("cat{i}"), all)?,
    ///     };
    ///     let bn = g.layer(&format!("bn{i}"), &LayerSpec::batch_norm(), cat)?;
    ///     feats.push(g.layer(&format!("conv{i}"), &LayerSpec::conv(2, 3, 1), bn)?);
    /// }
    /// let out = g.concat("out", &feats)?;
    /// let bn = g.layer("bn", &LayerSpec::batch_norm(), out)?;
    /// let pool = g.layer("pool", &LayerSpec::GlobalAvgPool, bn)?;
    /// let _ = g.layer("fc", &LayerSpec::dense(3), pool)?;
    /// let mut m = g.build(0)?;
    /// let x = vec![0.25; 4 * 128];
    /// let stacked = (m.forward(&x, 4)?.to_vec(), m.activation_memory(4).training);
    /// m.set_stacking(false);
    /// let copied = (m.forward(&x, 4)?.to_vec(), m.activation_memory(4).training);
    /// assert_eq!(stacked.0, copied.0);
    /// assert!(stacked.1 < copied.1);
    /// # Ok::<(), cnnkit::Error>(())
    /// ```
    pub fn set_stacking(&mut self, on: bool) {
        self.stack = on;
        self.last_n = None;
        let (nodes, plan, input_len) = (&self.nodes, &self.plan, numel(self.input));
        self.kept = Arena::kept(nodes, plan, input_len, on);
        self.arenas[0] = Arena::new(nodes, plan, input_len, (false, on));
    }

    /// The nodes that currently run inside a later step (see [`Model::set_fusion`]).
    pub fn fused_layers(&self) -> Vec<usize> {
        (0..self.plan.skipped.len())
            .filter(|&i| self.plan.skipped[i])
            .collect()
    }

    /// The nodes that [`Model::infer`] runs inside a convolution's step in evaluation mode: a
    /// batch norm folded into the convolution before it, and the shortcut's sum and the
    /// activation after it, applied as the convolution writes its output (values within
    /// rounding of the separate nodes'; none when fusion is off, see [`Model::set_fusion`]).
    pub fn inference_fused(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (self.plan.infer.iter())
            .filter_map(|s| match *s {
                Step::ConvOut { bn, add, act, .. } => Some([bn, add, act]),
                _ => None,
            })
            .flatten()
            .flatten()
            .collect();
        v.sort_unstable();
        v
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
    /// The whole batch's memory is checked against the budget first (activations, the gradient
    /// slots, scratch and, as an upper bound of the layers' caches, the activations once more),
    /// so an oversized batch is refused before anything is allocated.
    fn reserve(&mut self, n: usize) -> Result<()> {
        const OP: &str = "Sequential::forward";
        let len = |s: Shape3| crate::error::mul(OP, "batch", n, numel(s));
        let mut widest = len(self.input)?;
        for &s in &self.shapes {
            widest = widest.max(len(s)?);
        }
        let kept = crate::error::mul(OP, "batch", n, self.kept.size)?;
        let acts = kept as u128;
        let ws = self.scratch_len(n);
        let slots = self.plan.slots + usize::from(self.plan.adds_layer_grad);
        crate::memory::check_elems::<f32>(
            OP,
            "the activations of the batch",
            2 * acts + slots as u128 * widest as u128 + ws as u128,
        )?;
        crate::memory::grow(OP, "activations", &mut self.acts, kept)?;
        for d in &mut self.dslots {
            crate::memory::grow(OP, "gradients", d, widest)?;
        }
        if self.plan.adds_layer_grad {
            crate::memory::grow(OP, "gradients", &mut self.dtmp, widest)?;
        }
        crate::memory::grow(OP, "scratch", &mut self.ws, ws)?;
        self.warm();
        Ok(())
    }

    /// Scratch the forward and backward steps need for a batch of `n`.
    fn scratch_len(&self, n: usize) -> usize {
        let mut ws = 0;
        for node in &self.nodes {
            if let Op::Layer(l) = &node.op {
                ws = ws.max(l.layer().scratch_len(n));
            }
        }
        for step in &self.plan.forward {
            let (conv, pool) = match *step {
                Step::BnPool {
                    conv: Some(c),
                    pool,
                    ..
                } => (c, pool),
                Step::ConvPool { conv, pool } => (conv, pool),
                _ => continue,
            };
            let extra = match &self.nodes[conv].op {
                Op::Layer(Built::Conv(c)) => c.pooled_scratch_len(n),
                _ => 0,
            };
            let pool_ws = match &self.nodes[pool].op {
                Op::Layer(l) => l.layer().scratch_len(n),
                Op::Join(_) => 0,
            };
            ws = ws.max(pool_ws + extra);
        }
        ws
    }

    /// Every thread of the pool makes its packing buffers on the first call (and again when the
    /// pool's size changes): which thread runs which product later depends on scheduling, and
    /// none of the steps after the first may allocate.
    /// Makes [`Model::infer`]'s folded convolutions, unless they are made already: each
    /// [`Step::ConvOut`]'s weights with its batch norm folded in, packed for the direct path.
    fn fold(&mut self) -> Result<()> {
        const OP: &str = "Model::infer";
        if !self.folded.is_empty() {
            return Ok(());
        }
        let convs: Vec<(usize, Option<usize>)> = (self.plan.infer.iter())
            .filter_map(|s| match *s {
                Step::ConvOut { conv, bn, .. } => Some((conv, bn)),
                _ => None,
            })
            .collect();
        // A copy of each weight, and a packed one.
        let floats = convs
            .iter()
            .map(|&(c, _)| self.ranges[c].len())
            .sum::<usize>();
        crate::memory::check_elems::<f32>(OP, "the folded weights", 2 * floats as u128)?;
        let mut folded: Vec<Option<Folded>> = std::iter::repeat_with(|| None)
            .take(self.nodes.len())
            .collect();
        for (conv, bn) in convs {
            let Op::Layer(Built::Conv(c)) = &self.nodes[conv].op else {
                return Err(planned());
            };
            let affine = match bn {
                None => None,
                Some(b) => match &self.nodes[b].op {
                    Op::Layer(Built::Bn(l)) => {
                        Some(l.eval_affine(&self.params[self.ranges[b].clone()])?)
                    }
                    _ => return Err(planned()),
                },
            };
            let affine = affine.as_ref().map(|(s, t)| (&s[..], &t[..]));
            let (w, b) = c.fold(&self.params[self.ranges[conv].clone()], affine)?;
            let packed = c.prepack(&w);
            folded[conv] = Some(Folded { w, b, packed });
        }
        self.folded = folded;
        Ok(())
    }

    fn warm(&mut self) {
        if self.warmed != crate::par::threads() {
            crate::par::on_every_thread(crate::gemm::warm_thread);
            self.warmed = crate::par::threads();
        }
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
            // Training updates the batch norms' running statistics.
            self.folded.clear();
            self.rng.next_u64()
        } else {
            0
        };
        let Model {
            nodes,
            shapes,
            ranges,
            params,
            acts,
            kept,
            ws,
            plan,
            training,
            input,
            ..
        } = self;
        let run = Run {
            shapes,
            ranges,
            params,
            plan,
            input_len: numel(*input),
            training: *training,
            n,
            seed: call_seed,
            folded: &[],
            groups: &kept.groups,
        };
        run_steps(&run, &plan.forward, kept, nodes, x, acts, ws)?;
        self.last_n = Some(n);
        self.last_x = fingerprint(x);
        let last = self.nodes.len() - 1;
        let r = self.kept.range(last, n).ok_or_else(planned)?;
        Ok(&self.acts[r])
    }

    /// The output of [`Model::forward`], bit for bit, without keeping what a backward pass
    /// needs: in evaluation mode each node's output lives only from the step that writes it to
    /// the last step that reads it, in one buffer whose regions are reused (see
    /// [`Model::activation_memory`]), and for a single sample (`n == 1`) a channel
    /// concatenation's inputs are written straight into their slices of its output, so it
    /// copies nothing (DenseNet's growing feature maps, U-Net's skip connections); for a batch,
    /// so are those of a concatenation that only batch norms read (DenseNet's, stacked as in
    /// training, see [`Model::set_stacking`]). In training
    /// mode (batch statistics are an effect a caller may want) it is [`Model::forward`].
    ///
    /// A backward pass after it needs a new forward pass. Nothing is allocated once the buffer
    /// has grown to the largest batch.
    ///
    /// # Errors
    /// As [`Model::forward`].
    ///
    /// # Example
    /// ```
    /// use cnnkit::{GraphBuilder, LayerSpec};
    /// let mut g = GraphBuilder::new([1, 8, 8]);
    /// let x = g.input();
    /// let a = g.layer("a", &LayerSpec::conv(4, 3, 1), x)?;
    /// let b = g.layer("b", &LayerSpec::conv(4, 3, 1), a)?;
    /// let cat = g.concat("cat", &[a, b])?;
    /// let pool = g.layer("pool", &LayerSpec::GlobalAvgPool, cat)?;
    /// let _ = g.layer("fc", &LayerSpec::dense(3), pool)?;
    /// let mut m = g.build(0)?;
    /// m.eval();
    /// let x = vec![0.25; 64];
    /// let y = m.forward(&x, 1)?.to_vec();
    /// assert_eq!(m.infer(&x, 1)?, &y[..]);
    /// assert!(m.activation_memory(1).inference < m.activation_memory(1).training);
    /// assert_eq!(m.activation_memory(1).copied, 0);
    /// # Ok::<(), cnnkit::Error>(())
    /// ```
    pub fn infer(&mut self, x: &[f32], n: usize) -> Result<&[f32]> {
        if self.training {
            return self.forward(x, n);
        }
        const OP: &str = "Model::infer";
        check_len(OP, "x", x, n * numel(self.input))?;
        let which = usize::from(n == 1);
        let size = crate::error::mul(OP, "batch", n, self.arenas[which].size)?;
        let ws_len = self.scratch_len(n);
        crate::memory::check_elems::<f32>(
            OP,
            "the activations of the batch",
            size as u128 + ws_len as u128,
        )?;
        crate::memory::grow(OP, "activations", &mut self.infer_buf, size)?;
        crate::memory::grow(OP, "scratch", &mut self.ws, ws_len)?;
        self.fold()?;
        self.warm();
        // The layers' caches and the activations no longer belong to the last forward pass.
        self.last_n = None;
        let Model {
            nodes,
            shapes,
            ranges,
            params,
            ws,
            plan,
            input,
            arenas,
            infer_buf,
            folded,
            ..
        } = self;
        let arena = &arenas[which];
        let run = Run {
            shapes,
            ranges,
            params,
            plan,
            input_len: numel(*input),
            training: false,
            n,
            seed: 0,
            folded,
            groups: &arena.groups,
        };
        run_steps(&run, &plan.infer, arena, nodes, x, infer_buf, ws)?;
        let last = nodes.len() - 1;
        let r = arenas[which].range(last, n).ok_or_else(planned)?;
        Ok(&self.infer_buf[r])
    }

    /// The memory of the activations for a batch of `n`: what [`Model::forward`] keeps for the
    /// backward pass, what [`Model::infer`] needs, and what its concatenations copy per call.
    pub fn activation_memory(&self, n: usize) -> ActivationMemory {
        let f = std::mem::size_of::<f32>();
        let a = &self.arenas[usize::from(n == 1)];
        ActivationMemory {
            training: self.kept.size.saturating_mul(n).saturating_mul(f),
            inference: a.size.saturating_mul(n).saturating_mul(f),
            copied: a.copied.saturating_mul(n).saturating_mul(f),
        }
    }

    /// Back-propagates `dout = dL/d(output)` of the last [`Model::forward`] call (which must
    /// have been given the same `x`) into the parameter gradients: overwritten with
    /// [`Accum::Replace`], added to with [`Accum::Add`] (gradient accumulation). The input
    /// gradient is not computed (see [`Model::input_gradient`]).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] without a preceding forward pass, or when `x` is not its input;
    /// [`Error::Length`] if `x` or `dout` do not match its batch.
    pub fn backward(&mut self, x: &[f32], dout: &[f32], accum: Accum) -> Result<()> {
        self.backprop("Sequential::backward", x, dout, None, Some(accum))
    }

    /// The gradient with respect to the input, `dx = (∂output/∂x)ᵀ · dout`, for the last
    /// [`Model::forward`] call (which must have been given the same `x`: another `x` is an
    /// error, not the gradient at another point) and any upstream
    /// gradient `dout` on its output: a loss gradient, or the gradient of any functional of the
    /// output (for `½‖f(x + r) − f(x)‖²` at `x + r`, `dout = f(x + r) − f(x)`). `dx` (the shape
    /// of `x`) is overwritten.
    ///
    /// The parameter gradients are left exactly as they were with `params = None`, or
    /// overwritten / added to with `Some(accum)` as by [`Model::backward`] (one pass for
    /// both, as adversarial training needs). Dropout and RReLU use the masks of that forward pass,
    /// so in training mode the gradient is that of the same random network.
    ///
    /// # Errors
    /// As [`Model::backward`]; [`Error::Length`] if `dx` does not match `x`;
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
        let Model {
            input,
            nodes,
            shapes,
            ranges,
            params: weights,
            grads: own_grads,
            spare_grads,
            acts,
            kept,
            dslots,
            dtmp,
            ws,
            plan,
            training,
            ..
        } = self;
        let (grads, accum) = match params {
            Some(a) => (own_grads, a),
            None => (spare_grads, Accum::Replace),
        };
        let want_dx = dx_in.is_some();
        // Whether the gradient of a node's output (or the input) is needed at all.
        let needed = |s: Src| match s {
            Src::Input => want_dx,
            Src::Node(j) => want_dx || plan.trains[j],
        };
        let last = nodes.len() - 1;
        let acts = &*acts;
        let act = |s: Src| -> &[f32] {
            match s {
                Src::Input => x,
                Src::Node(j) => kept
                    .range(j, n)
                    .and_then(|r| acts.get(r))
                    .unwrap_or_default(),
            }
        };
        for bs in &plan.backward {
            let step = bs.step;
            let top = step.top();
            if !needed(Src::Node(top)) {
                continue;
            }
            let y = act(Src::Node(top));
            let dy_buf = match plan.slot[top] {
                Some(s) if top != last => std::mem::take(&mut dslots[s]),
                _ => Vec::new(),
            };
            let dy: &[f32] = if top == last {
                dout
            } else {
                &dy_buf[..y.len()]
            };
            let bottom = step.bottom();
            let mut ctx = Ctx::new(*training, 0, ws);
            if let Op::Join(j) = nodes[bottom].op {
                for (t, &s) in plan.reads[bottom].iter().enumerate() {
                    if !needed(s) {
                        continue;
                    }
                    let a = bs.accum[t];
                    with_grad_dest(s, n, shapes, plan, dslots, &mut dx_in, |dest| {
                        join_backward(
                            j,
                            t,
                            n,
                            &plan.reads[bottom],
                            &act,
                            dy,
                            dest,
                            a,
                            shapes[bottom],
                        )
                    })?;
                }
            } else {
                let target = plan.reads[bottom][0];
                let a = bs.accum[0];
                let len_in = n * numel(match target {
                    Src::Input => *input,
                    Src::Node(k) => shapes[k],
                });
                // The layer overwrites its input gradient: straight into its place for the first
                // writer, through scratch for a later one.
                let mut dest_buf = match (needed(target), target, a) {
                    (true, Src::Node(k), Accum::Replace) => {
                        std::mem::take(&mut dslots[plan.slot[k].ok_or_else(planned)?])
                    }
                    _ => Vec::new(),
                };
                {
                    let dx: Option<&mut [f32]> = match (needed(target), target, a) {
                        (false, ..) => None,
                        (true, _, Accum::Add) => Some(&mut dtmp[..len_in]),
                        (true, Src::Node(_), Accum::Replace) => Some(&mut dest_buf[..len_in]),
                        (true, Src::Input, Accum::Replace) => dx_in.as_deref_mut(),
                    };
                    layer_backward(
                        step, nodes, ranges, weights, grads, accum, n, &act, plan, y, dy, dx,
                        &mut ctx,
                    )?;
                }
                if let Src::Node(k) = target
                    && a == Accum::Replace
                    && needed(target)
                {
                    dslots[plan.slot[k].ok_or_else(planned)?] = dest_buf;
                }
                if needed(target) && a == Accum::Add {
                    let tmp = &dtmp[..len_in];
                    with_grad_dest(target, n, shapes, plan, dslots, &mut dx_in, |dest| {
                        join::pass_backward(tmp, dest, Accum::Add)
                    })?;
                }
            }
            if let Some(s) = plan.slot[top]
                && top != last
            {
                dslots[s] = dy_buf;
            }
        }
        Ok(())
    }

    /// One line per node: index, name, layer (or join and its inputs), output shape and
    /// parameter count, under a header with the input shape and the total.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let [c, h, w] = self.input;
        let _ = writeln!(s, "input {c}x{h}x{w}, {} parameters", self.param_count());
        let chain = self.is_chain();
        let _ = writeln!(
            s,
            "{:>3}  {:<40} {:>14} {:>10}",
            "#",
            if chain { "layer" } else { "node" },
            "output",
            "params"
        );
        let name_of = |src: Src| match src {
            Src::Input => "input".to_string(),
            Src::Node(j) => self.nodes[j].name.clone(),
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let [c, h, w] = self.shapes[i];
            let out = if h == 1 && w == 1 {
                format!("{c}")
            } else {
                format!("{c}x{h}x{w}")
            };
            let what = if chain {
                n.describe(&name_of)
            } else {
                format!("{} = {}", n.name, n.describe(&name_of))
            };
            let _ = writeln!(
                s,
                "{i:>3}  {what:<40} {out:>14} {:>10}",
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
        let idx = self.node_names();
        let mut out = Vec::new();
        for (i, l) in self.layers() {
            for (name, t) in l.buffers() {
                out.push((format!("{}.{name}", idx[i]), t));
            }
        }
        out
    }

    /// `flat` (the parameters or their gradients) cut into the named parameter tensors.
    fn named_slices<'a>(&self, flat: &'a [f32]) -> Vec<(String, &'a [f32])> {
        let idx = self.node_names();
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
        let idx = self.node_names();
        let mut out = Vec::new();
        for (i, (node, (info, r))) in self
            .nodes
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
            if let Op::Layer(l) = &node.op {
                for (name, t) in l.layer().buffers() {
                    out.push((format!("{}.{name}", idx[i]), t));
                }
            }
        }
        out
    }

    /// Each node's layer, by node index (joins left out).
    fn layers(&self) -> impl Iterator<Item = (usize, &dyn Layer)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Layer(l) => Some((i, l.layer())),
                Op::Join(_) => None,
            })
    }

    /// Renames the tensors of a state dictionary written before the names followed
    /// `torch.nn.Sequential`'s indices (when `gap` counted as one module): `"{layer}.{name}"`
    /// becomes `"{torch index}.{name}"`. Names that do not start with a layer index are kept.
    pub(crate) fn rename_from_layer_indices(
        &self,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Vec<(String, Tensor)> {
        let idx = self.node_names();
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
        self.folded.clear();
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
        let idx: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
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
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let Op::Layer(l) = &mut node.op else { continue };
            let l = l.layer_mut();
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

/// The error when the nodes of a step are not those the plan was made for.
fn planned() -> Error {
    Error::invalid("Sequential", "fusion", "planned for other layers")
}

/// Runs `f` on the gradient buffer of `s` (a slot, or the caller's input gradient), `n` samples.
fn with_grad_dest(
    s: Src,
    n: usize,
    shapes: &[Shape3],
    plan: &Plan,
    dslots: &mut [Vec<f32>],
    dx_in: &mut Option<&mut [f32]>,
    f: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<()> {
    match s {
        Src::Input => match dx_in.as_deref_mut() {
            Some(d) => f(d),
            None => Ok(()),
        },
        Src::Node(k) => {
            let slot = plan.slot[k].ok_or_else(planned)?;
            f(&mut dslots[slot][..n * numel(shapes[k])])
        }
    }
}

/// What every forward step of one call shares.
struct Run<'m> {
    shapes: &'m [Shape3],
    ranges: &'m [Range<usize>],
    params: &'m [f32],
    plan: &'m Plan,
    /// Values per sample of the model's input.
    input_len: usize,
    training: bool,
    n: usize,
    /// The call's seed (each node's random masks are drawn from it and the node's index).
    seed: u64,
    /// The convolutions' folded weights, by node (inference; empty otherwise).
    folded: &'m [Option<Folded>],
    /// The channel groups of each stacked concatenation's output ([`Arena::groups`]).
    groups: &'m [Vec<usize>],
}

/// Runs `steps` with every output where `arena` places it in `buf`, `x` the model's input.
fn run_steps(
    run: &Run,
    steps: &[Step],
    arena: &Arena,
    nodes: &mut [Node],
    x: &[f32],
    buf: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    let n = run.n;
    for &step in steps {
        let i = step.top();
        if arena.view[i] {
            continue;
        }
        let o = arena.range(i, n).ok_or_else(planned)?;
        let (left, rest) = buf.split_at_mut(o.start);
        let (out, right) = rest.split_at_mut(o.len());
        // Inputs lie before or after the output (the arena is checked for it).
        let input = |s: Src| -> &[f32] {
            let part = match s {
                Src::Input => return x,
                Src::Node(j) => arena.range(j, n),
            };
            match part {
                Some(r) if r.end <= o.start => left.get(r),
                Some(r) if r.start >= o.end => right.get(r.start - o.end..r.end - o.end),
                _ => None,
            }
            .unwrap_or_default()
        };
        let copy = arena.copy[i].as_slice();
        run_step(run, step, nodes, &input, out, ws, Some(copy))?;
    }
    Ok(())
}

/// A convolution's evaluation-mode weights for [`Model::infer`]: the batch norm after it folded
/// in, and packed for the direct path.
#[derive(Debug)]
struct Folded {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    packed: Option<Prepacked>,
}

/// Forward step `step`: its inputs through `input`, the output of its top node into `out`. A
/// concatenation copies input `t` unless `copy` says it is already in place.
fn run_step<'a>(
    run: &Run,
    step: Step,
    nodes: &mut [Node],
    input: &dyn Fn(Src) -> &'a [f32],
    out: &mut [f32],
    ws: &mut [f32],
    copy: Option<&[bool]>,
) -> Result<()> {
    let (plan, params, ranges, n) = (run.plan, run.params, run.ranges, run.n);
    let i = step.top();
    let (head, tail) = nodes.split_at_mut(i);
    let mut ctx = Ctx::new(run.training, mix64(run.seed ^ i as u64), ws);
    match step {
        Step::BnPool { bn, .. } => {
            let (Op::Layer(Built::Bn(bn_l)), Op::Layer(Built::Pool(pool))) =
                (&mut head[bn].op, &mut tail[0].op)
            else {
                return Err(planned());
            };
            let x_bn = input(plan.reads[bn][0]);
            bn_l.forward_stats(n, &params[ranges[bn].clone()], x_bn, run.training)?;
            let (scale, shift) = bn_l.affine();
            let src = Planes::Affine {
                x: x_bn,
                scale,
                shift,
            };
            pool.forward_from(n, src, out, ctx.ws)
        }
        Step::ConvPool { conv, .. } => {
            let (Op::Layer(Built::Conv(c)), Op::Layer(Built::Pool(pool))) =
                (&head[conv].op, &mut tail[0].op)
            else {
                return Err(planned());
            };
            let p = &params[ranges[conv].clone()];
            pool.forward_conv(n, c, p, input(plan.reads[conv][0]), out, ctx.ws)
        }
        Step::ConvOut { conv, act, .. } => {
            let Op::Layer(Built::Conv(c)) = &head[conv].op else {
                return Err(planned());
            };
            let f = run.folded.get(conv).and_then(Option::as_ref);
            let f = f.ok_or_else(planned)?;
            let act = match (act, &tail[0].op) {
                (None, _) => None,
                (Some(_), Op::Layer(Built::Other(o))) => match o.spec() {
                    LayerSpec::Activation(a) => Some(a),
                    _ => return Err(planned()),
                },
                _ => return Err(planned()),
            };
            let r = &plan.fused_reads[i];
            let epi = Epilogue {
                residual: r.get(1).map(|&s| input(s)),
                act,
            };
            let (w, b, pre) = (&f.w[..], f.b.as_deref(), f.packed.as_ref());
            c.forward_fused(n, w, b, pre, epi, input(r[0]), out, ctx.ws)
        }
        Step::Node(_) => match &mut tail[0].op {
            Op::Layer(Built::Bn(b)) => {
                let p = &params[ranges[i].clone()];
                let from = plan.reads[i][0];
                let groups = match from {
                    Src::Node(j) => run.groups.get(j).map_or(&[][..], Vec::as_slice),
                    Src::Input => &[],
                };
                let x = crate::kernels::batch_norm::Input {
                    x: input(from),
                    groups,
                };
                b.forward_in(n, p, x, out, &mut ctx)
            }
            Op::Layer(l) => {
                let p = &params[ranges[i].clone()];
                l.layer_mut()
                    .forward(n, p, input(plan.reads[i][0]), out, &mut ctx)
            }
            Op::Join(j) => {
                let len = |s: Src| match s {
                    Src::Input => run.input_len,
                    Src::Node(k) => numel(run.shapes[k]),
                };
                let stacked = run.groups.get(i).is_some_and(|g| !g.is_empty());
                let to = (run.shapes[i], stacked);
                join_forward(*j, n, &plan.reads[i], input, &len, out, to, copy)
            }
        },
    }
}

/// The forward pass of join `j` reading `reads` (of `len` values per sample) into `out` (of
/// `shape` per sample, its inputs stacked when `stacked`, see [`Arena`]); a concatenation skips
/// the inputs `copy` marks as already in place.
#[allow(clippy::too_many_arguments)]
fn join_forward<'a>(
    j: Join,
    n: usize,
    reads: &[Src],
    input: &dyn Fn(Src) -> &'a [f32],
    len: &dyn Fn(Src) -> usize,
    out: &mut [f32],
    (shape, stacked): (Shape3, bool),
    copy: Option<&[bool]>,
) -> Result<()> {
    match j {
        Join::Add => {
            for (t, &s) in reads.iter().enumerate() {
                let a = if t == 0 { Accum::Replace } else { Accum::Add };
                join::add_forward(input(s), out, a)?;
            }
        }
        Join::Concat => {
            let per = numel(shape);
            let mut at = 0;
            for (t, &s) in reads.iter().enumerate() {
                let k = len(s);
                if copy.is_none_or(|c| c.get(t) != Some(&false)) {
                    if stacked {
                        let part = input(s);
                        check_len("concat_forward", "input", part, n * k)?;
                        out.get_mut(n * at..n * (at + k))
                            .ok_or_else(planned)?
                            .copy_from_slice(part);
                    } else {
                        join::concat_forward(n, per, at, k, input(s), out)?;
                    }
                }
                at += k;
            }
        }
        Join::Mul => {
            let (a, b) = (input(reads[0]), input(reads[1]));
            if a.len() == b.len() {
                join::mul_forward(a, b, out)?;
            } else {
                let gate_first = a.len() < b.len();
                let (g, m) = if gate_first { (a, b) } else { (b, a) };
                let c = shape[0];
                join::gate_forward(n, c, shape[1] * shape[2], g, m, out)?;
            }
        }
    }
    Ok(())
}

/// The gradient of input `t` of join `j` (output gradient `dy`, `shape` per sample) into `dest`.
#[allow(clippy::too_many_arguments)]
fn join_backward<'a>(
    j: Join,
    t: usize,
    n: usize,
    reads: &[Src],
    act: &dyn Fn(Src) -> &'a [f32],
    dy: &[f32],
    dest: &mut [f32],
    accum: Accum,
    shape: Shape3,
) -> Result<()> {
    match j {
        Join::Add => join::pass_backward(dy, dest, accum),
        Join::Concat => {
            let per = numel(shape);
            let offset: usize = reads[..t].iter().map(|&s| act(s).len() / n.max(1)).sum();
            let len = act(reads[t]).len() / n.max(1);
            join::concat_backward(n, per, offset, len, dy, dest, accum)
        }
        Join::Mul => {
            let (a, b) = (act(reads[0]), act(reads[1]));
            let other = if t == 0 { b } else { a };
            if a.len() == b.len() {
                return join::mul_backward(other, dy, dest, accum);
            }
            let gate_first = a.len() < b.len();
            let (g, m) = if gate_first { (a, b) } else { (b, a) };
            let (c, plane) = (shape[0], shape[1] * shape[2]);
            let is_gate = (t == 0) == gate_first;
            if is_gate {
                join::gate_backward(n, c, plane, g, m, dy, Some((dest, accum)), None)
            } else {
                join::gate_backward(n, c, plane, g, m, dy, None, Some((dest, accum)))
            }
        }
    }
}

/// The backward pass of a layer step (a node, or a fused step) with output gradient `dy`, its
/// input gradient into `dx` when given.
#[allow(clippy::too_many_arguments)]
fn layer_backward<'a>(
    step: Step,
    nodes: &mut [Node],
    ranges: &[Range<usize>],
    weights: &[f32],
    grads: &mut [f32],
    accum: Accum,
    n: usize,
    act: &dyn Fn(Src) -> &'a [f32],
    plan: &Plan,
    y: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    ctx: &mut Ctx<'_>,
) -> Result<()> {
    let top = step.top();
    match step {
        Step::Node(i) => {
            let Op::Layer(l) = &mut nodes[i].op else {
                return Err(planned());
            };
            let r = ranges[i].clone();
            let b = Backward {
                n,
                params: &weights[r.clone()],
                grads: &mut grads[r],
                x: act(plan.reads[i][0]),
                y,
                dy,
                dx,
                accum,
            };
            l.layer_mut().backward(b, ctx)
        }
        Step::BnPool { bn, conv, .. } => {
            let (head, tail) = nodes.split_at_mut(top);
            let (head, bn_l) = head.split_at_mut(bn);
            let (Op::Layer(Built::Bn(bn_l)), Op::Layer(Built::Pool(pool))) =
                (&mut bn_l[0].op, &tail[0].op)
            else {
                return Err(planned());
            };
            let (src, ws) = pool.pooled_grad(n, y, dy, ctx.ws)?;
            let x_bn = act(plan.reads[bn][0]);
            let rb = ranges[bn].clone();
            let Some(c) = conv else {
                return bn_l.backward_from(
                    n,
                    &weights[rb.clone()],
                    &mut grads[rb],
                    x_bn,
                    src,
                    dx,
                    accum,
                    ws,
                );
            };
            // The batch norm's sums, then the convolution's backward pass making the batch
            // norm's input gradient (its own output gradient) an image at a time.
            let Op::Layer(Built::Conv(conv_l)) = &head[c].op else {
                return Err(planned());
            };
            let (sums, ws) = ws.split_at_mut(bn_l.sums_len(n));
            let rc = ranges[c].clone();
            let (gc, gb) = grads.split_at_mut(rb.start);
            let pb = &weights[rb.clone()];
            let map = bn_l.backward_sums(n, pb, &mut gb[..rb.len()], x_bn, src, accum, sums, ws)?;
            let planes = Planes::BnGrad {
                x: x_bn,
                dy: &src,
                map,
            };
            let pc = &weights[rc.clone()];
            let conv_x = act(plan.reads[c][0]);
            conv_l.backward_from(n, pc, &mut gc[rc], conv_x, planes, dx, accum, ws)
        }
        Step::ConvPool { conv, .. } => {
            let (head, tail) = nodes.split_at_mut(top);
            let (Op::Layer(Built::Conv(c)), Op::Layer(Built::Pool(pool))) =
                (&head[conv].op, &tail[0].op)
            else {
                return Err(planned());
            };
            let (src, ws) = pool.pooled_grad(n, y, dy, ctx.ws)?;
            let r = ranges[conv].clone();
            let p = &weights[r.clone()];
            c.backward_from(
                n,
                p,
                &mut grads[r],
                act(plan.reads[conv][0]),
                src,
                dx,
                accum,
                ws,
            )
        }
        // Inference steps have no backward pass.
        Step::ConvOut { .. } => Err(planned()),
    }
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
pub(crate) fn add_params(total: usize, info: &[ParamInfo], max_params: usize) -> Result<usize> {
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
