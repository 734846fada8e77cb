//! The execution plan of a graph: the order of its steps, the fusions matched on node patterns,
//! and the gradient buffers of the backward pass with their lifetimes.
//!
//! Made once per model (and again when fusion is switched): nodes are already in topological
//! order (a node reads only earlier ones), so the forward steps follow it; the backward steps run
//! in reverse. Fusions are steps over several nodes, matched where a node's output has exactly
//! one reader and is not the model's output:
//!
//! | pattern | step | what is saved |
//! |---|---|---|
//! | ReLU → max-pool | the pool does the ReLU (`Pool::absorb_relu`) | one pass each way over the larger tensor |
//! | batch norm [→ ReLU] → max-pool | [`Step::BnPool`] | the batch norm's output is never stored |
//! | convolution → batch norm [→ ReLU] → max-pool | [`Step::BnPool`] with `conv` | the batch norm's input gradient is made an image at a time |
//! | convolution [→ ReLU] → max-pool | [`Step::ConvPool`] | the convolution's output is never stored |
//!
//! A backward step reads its top node's output gradient and writes the gradients of the inputs
//! of its bottom node. The first step (in backward order) to write a node's gradient overwrites
//! it, later ones add to it, so a node read by several others gets the sum in a fixed order —
//! the same bits for any thread count. Gradient buffers are slots of the widest activation, given
//! out as a node's gradient first gets written and taken back after its step has read it: a
//! chain needs two, as it alternates.

use super::graph::{Node, Op, Src};
use crate::kernels::accum::Accum;
use crate::layer::Built;
use crate::layer::spec::LayerSpec;

/// One step of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A node on its own (a layer, with its absorbed ReLU if it is a max-pool, or a join).
    Node(usize),
    /// A batch norm's statistics, its output read plane by plane by the max-pool after it; with
    /// `conv`, the backward pass of the convolution before the batch norm too.
    BnPool {
        bn: usize,
        pool: usize,
        conv: Option<usize>,
    },
    /// A convolution run image by image into the max-pool after it.
    ConvPool { conv: usize, pool: usize },
    /// Inference only: a convolution with the batch norm after it folded into its weights, the
    /// sum with a shortcut after that and an activation last, each optional, applied to the
    /// convolution's output as it is written ([`Plan::infer`]).
    ConvOut {
        conv: usize,
        bn: Option<usize>,
        add: Option<usize>,
        act: Option<usize>,
    },
}

impl Step {
    /// The node whose output the step writes (and whose gradient its backward reads).
    pub(crate) fn top(self) -> usize {
        match self {
            Step::Node(i) => i,
            Step::BnPool { pool, .. } | Step::ConvPool { pool, .. } => pool,
            Step::ConvOut { conv, bn, add, act } => act.or(add).or(bn).unwrap_or(conv),
        }
    }
    /// The node whose inputs' gradients the step's backward writes.
    pub(crate) fn bottom(self) -> usize {
        match self {
            Step::Node(i) => i,
            Step::BnPool { conv: Some(c), .. } => c,
            Step::BnPool { bn, .. } => bn,
            Step::ConvPool { conv, .. } | Step::ConvOut { conv, .. } => conv,
        }
    }
}

/// A backward step: the step and, for each input of its bottom node, whether it overwrites or
/// adds to that input's gradient.
#[derive(Clone, Debug)]
pub(crate) struct BackStep {
    pub step: Step,
    pub accum: Vec<Accum>,
}

/// The plan of a graph (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub forward: Vec<Step>,
    pub backward: Vec<BackStep>,
    /// Nodes whose work a later step does: no output buffer of their own.
    pub skipped: Vec<bool>,
    /// Each node's inputs, past an absorbed ReLU (what its step actually reads).
    pub reads: Vec<Vec<Src>>,
    /// Max-pools that do the ReLU before them.
    pub relu_into: Vec<bool>,
    /// Max-pools that read a batch norm's output plane by plane.
    pub bn_into: Vec<bool>,
    /// The gradient slot of each node's output (`None`: the model's output, whose gradient the
    /// caller gives, or a node no step reads a gradient of).
    pub slot: Vec<Option<usize>>,
    /// Gradient slots needed.
    pub slots: usize,
    /// Whether some layer's input gradient is added to an earlier one (through scratch).
    pub adds_layer_grad: bool,
    /// `trains[j]`: node `j` or a node before it has parameters (its output gradient is needed
    /// for the parameter gradients).
    pub trains: Vec<bool>,
    /// The steps of inference ([`Model::infer`](super::Model::infer) in evaluation mode): those
    /// of `forward` with each convolution's batch norm, shortcut sum and activation taken into a
    /// [`Step::ConvOut`] where the training steps run them as nodes of their own.
    pub infer: Vec<Step>,
    /// What each [`Step::ConvOut`] reads, by its top node: the convolution's input, then the
    /// shortcut.
    pub fused_reads: Vec<Vec<Src>>,
}

impl Plan {
    /// The plan for `nodes` (in topological order), fused or not.
    pub(crate) fn new(nodes: &[Node], fusion: bool) -> Plan {
        let count = nodes.len();
        let last = count - 1;
        let mut readers = vec![0usize; count];
        let mut reader = vec![usize::MAX; count];
        for (i, n) in nodes.iter().enumerate() {
            for s in &n.inputs {
                if let Src::Node(j) = *s {
                    readers[j] += 1;
                    reader[j] = i;
                }
            }
        }
        // The one node reading `j`, when there is exactly one and `j` is not the output.
        let single = |j: usize| (readers[j] == 1 && j != last).then_some(reader[j]);
        let layer = |i: usize| match &nodes[i].op {
            Op::Layer(l) => Some(l),
            Op::Join(_) => None,
        };
        let is_max_pool = |i: usize| matches!(layer(i), Some(Built::Pool(p)) if p.is_max());
        let is_relu = |i: usize| {
            layer(i).is_some_and(|l| matches!(l, Built::Other(o) if o.spec() == LayerSpec::RELU))
        };
        let is_bn = |i: usize| matches!(layer(i), Some(Built::Bn(_)));
        let conv_fits = |i: usize| matches!(layer(i), Some(Built::Conv(c)) if c.fits_pool());

        let mut skipped = vec![false; count];
        let mut relu_into = vec![false; count];
        let mut bn_into: Vec<Option<usize>> = vec![None; count];
        let mut conv_into: Vec<Option<usize>> = vec![None; count];
        let mut bn_conv: Vec<Option<usize>> = vec![None; count];
        if fusion {
            for r in 0..count {
                // A ReLU reading the model's input is not fused.
                if is_relu(r)
                    && nodes[r].inputs[0] != Src::Input
                    && let Some(k) = single(r)
                    && is_max_pool(k)
                {
                    skipped[r] = true;
                    relu_into[k] = true;
                }
            }
            // The max-pool a node's output reaches, directly or through an absorbed ReLU.
            let pool_after = |j: usize, skipped: &[bool]| {
                let k = single(j)?;
                let k = if skipped[k] { single(k)? } else { k };
                is_max_pool(k).then_some(k)
            };
            for b in 0..count {
                if is_bn(b)
                    && let Some(k) = pool_after(b, &skipped)
                {
                    skipped[b] = true;
                    bn_into[k] = Some(b);
                }
            }
            for c in 0..count {
                // Not through a batch norm, whose statistics need every image's output first.
                if conv_fits(c)
                    && let Some(k) = pool_after(c, &skipped)
                    && bn_into[k].is_none()
                {
                    skipped[c] = true;
                    conv_into[k] = Some(c);
                }
            }
            for k in 0..count {
                if let Some(b) = bn_into[k]
                    && let Src::Node(c) = nodes[b].inputs[0]
                    && conv_fits(c)
                    && !skipped[c]
                    && single(c) == Some(b)
                {
                    bn_conv[k] = Some(c);
                }
            }
        }
        // Inputs past absorbed ReLUs.
        let resolve = |mut s: Src| {
            while let Src::Node(j) = s
                && skipped[j]
                && is_relu(j)
            {
                s = nodes[j].inputs[0];
            }
            s
        };
        let reads: Vec<Vec<Src>> = nodes
            .iter()
            .map(|n| n.inputs.iter().map(|&s| resolve(s)).collect())
            .collect();
        let mut forward = Vec::new();
        for j in 0..count {
            if skipped[j] {
                continue;
            }
            forward.push(if let Some(bn) = bn_into[j] {
                Step::BnPool {
                    bn,
                    pool: j,
                    conv: bn_conv[j],
                }
            } else if let Some(conv) = conv_into[j] {
                Step::ConvPool { conv, pool: j }
            } else {
                Step::Node(j)
            });
        }
        let convs_in_bn: Vec<usize> = bn_conv.iter().flatten().copied().collect();
        let steps: Vec<Step> = forward
            .iter()
            .rev()
            .copied()
            .filter(|s| !matches!(s, Step::Node(c) if convs_in_bn.contains(c)))
            .collect();

        // Gradient slots, first-writer flags.
        let mut slot: Vec<Option<usize>> = vec![None; count];
        let (mut free, mut slots) = (Vec::new(), 0usize);
        let mut written = vec![false; count];
        let mut input_written = false;
        let mut backward = Vec::with_capacity(steps.len());
        let mut adds_layer_grad = false;
        for step in steps {
            let b = step.bottom();
            let mut accum = Vec::with_capacity(reads[b].len());
            for &s in &reads[b] {
                let seen = match s {
                    Src::Input => std::mem::replace(&mut input_written, true),
                    Src::Node(k) => {
                        if slot[k].is_none() {
                            slot[k] = Some(free.pop().unwrap_or_else(|| {
                                slots += 1;
                                slots - 1
                            }));
                        }
                        std::mem::replace(&mut written[k], true)
                    }
                };
                accum.push(if seen { Accum::Add } else { Accum::Replace });
                if seen && matches!(nodes[b].op, Op::Layer(_)) {
                    adds_layer_grad = true;
                }
            }
            if let Some(s) = slot[step.top()] {
                free.push(s);
            }
            backward.push(BackStep { step, accum });
        }
        let mut trains = vec![false; count];
        for (i, n) in nodes.iter().enumerate() {
            let own = layer(i).is_some_and(|l| !l.layer().params().is_empty());
            trains[i] = own
                || n.inputs
                    .iter()
                    .any(|s| matches!(*s, Src::Node(j) if trains[j]));
        }
        let (infer, fused_reads) = if fusion {
            inference_steps(nodes, &forward, &reads, &single)
        } else {
            (forward.clone(), vec![Vec::new(); count])
        };
        Plan {
            infer,
            fused_reads,
            forward,
            backward,
            skipped,
            reads,
            relu_into,
            bn_into: bn_into.iter().map(Option::is_some).collect(),
            slot,
            slots,
            adds_layer_grad,
            trains,
        }
    }
}

/// The inference steps over the training plan's `forward` steps: from each convolution that runs
/// as a node of its own, the chain of single readers that are nodes of their own too — a batch
/// norm, then a two-input sum, then an element-wise activation, each optional and in that order
/// (ResNet's `conv, bn, +, relu`; MobileNet's `conv, bn, relu6` and `conv, bn, +`) — becomes one
/// [`Step::ConvOut`] at the chain's last node. Returns the steps and each fused step's reads.
fn inference_steps(
    nodes: &[Node],
    forward: &[Step],
    reads: &[Vec<Src>],
    single: &dyn Fn(usize) -> Option<usize>,
) -> (Vec<Step>, Vec<Vec<Src>>) {
    let count = nodes.len();
    // Nodes that run as a step of their own in training.
    let mut own = vec![false; count];
    for s in forward {
        if let Step::Node(i) = *s {
            own[i] = true;
        }
    }
    let layer = |i: usize| match &nodes[i].op {
        Op::Layer(l) => Some(l),
        Op::Join(_) => None,
    };
    let mut taken = vec![false; count];
    let mut fused: Vec<Option<Step>> = vec![None; count];
    let mut fused_reads = vec![Vec::new(); count];
    for c in 0..count {
        if !own[c] || !matches!(layer(c), Some(Built::Conv(_))) {
            continue;
        }
        let next = |j: usize, taken: &[bool]| single(j).filter(|&k| own[k] && !taken[k]);
        let mut top = c;
        let bn = next(top, &taken).filter(|&k| matches!(layer(k), Some(Built::Bn(_))));
        top = bn.unwrap_or(top);
        let add = next(top, &taken).filter(|&k| {
            matches!(nodes[k].op, Op::Join(super::graph::Join::Add)) && reads[k].len() == 2
        });
        let shortcut = add.map(|k| {
            if reads[k][0] == Src::Node(top) {
                reads[k][1]
            } else {
                reads[k][0]
            }
        });
        top = add.unwrap_or(top);
        let act = next(top, &taken).filter(|&k| {
            matches!(layer(k), Some(Built::Other(o)) if matches!(o.spec(), LayerSpec::Activation(_)))
        });
        top = act.unwrap_or(top);
        if top == c {
            continue;
        }
        for k in [Some(c), bn, add, act].into_iter().flatten() {
            taken[k] = true;
        }
        fused[top] = Some(Step::ConvOut {
            conv: c,
            bn,
            add,
            act,
        });
        fused_reads[top] = std::iter::once(reads[c][0]).chain(shortcut).collect();
    }
    let steps = forward
        .iter()
        .filter_map(|&s| match s {
            Step::Node(i) if fused[i].is_some() => fused[i],
            Step::Node(i) if taken[i] => None,
            s => Some(s),
        })
        .collect();
    (steps, fused_reads)
}
