//! Activation memory: where each node's output lives, for training ([`Arena::kept`]) and for
//! inference ([`Arena::new`], [`Model::infer`](super::Model::infer)).
//!
//! Training keeps every activation for the backward pass: each output has a region of its own.
//! Inference needs a node's output only from the step that writes it to the last step that reads
//! it, so outputs share one buffer: each gets a region of it for its lifetime, and regions whose
//! lifetimes do not overlap reuse the same memory (first fit, in step order).
//!
//! For one sample at a time, a channel concatenation's output is its inputs laid end to end, so
//! its inputs can be written straight into their slices of it: the concatenation copies nothing,
//! and a concatenation whose inputs already lie end to end in a larger one (DenseNet's growing
//! feature map, read by each layer of a block) is only a view of that one. Concatenations are
//! placed from the last to the first:
//! - one whose inputs all lie end to end, in its order, is a view of where they are;
//! - otherwise it gets its own region, and each input not yet placed is placed at its slice;
//!   an input placed elsewhere, or the model's input, is copied.
//!
//! A batch cannot do that in NCHW (an input's slice of the output is one piece per sample, and
//! layers write whole tensors), but it can stack: a concatenation's output is then its inputs
//! one after the other, each a whole `[n, c_t, h, w]` tensor, which is the same layout for one
//! sample. Only a reader that knows the order can read it, so training, and inference of a
//! batch, stack the concatenations that only batch norms read (every layer of a DenseNet block,
//! and its transition; [`crate::kernels::batch_norm::Input`]): each dense layer's new features
//! are written straight into the block's output, and each layer's input is a view of its first
//! part — nothing is copied, and training keeps one copy of a block's feature maps instead of
//! one per layer. Every other concatenation of a batch copies its inputs, in NCHW; none is
//! stacked when one of its inputs is a concatenation.
//!
//! A region lives from the first step that writes into it to the last step that reads from it.
//! Every step's inputs must lie outside its output (the plan is checked; should a placement break
//! that, the plan falls back to one without concatenations in place).

use super::graph::{Join, Node, Op, Src};
use super::plan::{Plan, Step};
use crate::layer::Built;
use crate::shape::numel;
use std::ops::Range;

/// Where each node's output lives (offsets and lengths per sample; a batch of `n` scales them).
#[derive(Clone, Debug, Default)]
pub(crate) struct Arena {
    /// Each node's offset, `None` for a node no step writes (its work is fused into another).
    at: Vec<Option<usize>>,
    /// Each node's length per sample.
    len: Vec<usize>,
    /// For a concatenation, whether its step copies input `t` (`false`: already in place).
    pub copy: Vec<Vec<bool>>,
    /// Concatenations whose inputs are all in place: their step does nothing.
    pub view: Vec<bool>,
    /// Length of the whole buffer per sample.
    pub size: usize,
    /// Values the concatenations copy per sample.
    pub copied: usize,
    /// For a stacked concatenation (see the module documentation), its inputs' channel counts;
    /// empty for every other node.
    pub groups: Vec<Vec<usize>>,
}

/// How [`Arena::place`] lays out outputs: for training (every output kept) or inference
/// (regions reused over their lifetimes), and which concatenations it writes in place.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Use {
    train: bool,
    concats: Concats,
}

/// Which concatenations an arena writes in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Concats {
    /// Every one (one sample at a time, where NCHW is the stacked order).
    All,
    /// Those only batch norms read, stacked (see the module documentation).
    Stacked,
    /// None: every concatenation copies its inputs.
    Copied,
}

/// What forward step `step` reads.
pub(crate) fn step_reads(plan: &Plan, step: Step) -> &[Src] {
    match step {
        Step::Node(i) => &plan.reads[i],
        Step::BnPool { bn, .. } => &plan.reads[bn],
        Step::ConvPool { conv, .. } => &plan.reads[conv],
        Step::ConvOut { .. } => &plan.fused_reads[step.top()],
    }
}

impl Arena {
    /// The arena for `plan`'s inference steps over `nodes` (`input_len` values per sample of
    /// the model's input), with every concatenation written in place when `in_place` (for one
    /// sample at a time), else those only batch norms read stacked when `stack`.
    pub(crate) fn new(
        nodes: &[Node],
        plan: &Plan,
        input_len: usize,
        (in_place, stack): (bool, bool),
    ) -> Arena {
        let tries: &[Concats] = match (in_place, stack) {
            (true, true) => &[Concats::All, Concats::Stacked],
            (true, false) => &[Concats::All],
            (false, true) => &[Concats::Stacked],
            (false, false) => &[],
        };
        Arena::first_checked(nodes, plan, input_len, false, tries)
    }

    /// The first of `tries` whose arena passes [`Arena::checked`], else the one that copies.
    fn first_checked(
        nodes: &[Node],
        plan: &Plan,
        input_len: usize,
        train: bool,
        tries: &[Concats],
    ) -> Arena {
        let order = if train { &plan.forward } else { &plan.infer };
        for &concats in tries {
            let a = Arena::place(nodes, plan, input_len, Use { train, concats });
            if a.checked(order, plan) {
                return a;
            }
        }
        let concats = Concats::Copied;
        Arena::place(nodes, plan, input_len, Use { train, concats })
    }

    /// The arena for `plan`'s training steps over `nodes`: every output kept, concatenations read
    /// by batch norms alone stacked when `stack` (else every concatenation copies).
    pub(crate) fn kept(nodes: &[Node], plan: &Plan, input_len: usize, stack: bool) -> Arena {
        let tries: &[Concats] = if stack { &[Concats::Stacked] } else { &[] };
        Arena::first_checked(nodes, plan, input_len, true, tries)
    }

    /// Whether concatenation `c`'s output can be stacked: only batch norms read it (as nodes of
    /// their own) among the steps `order`, and it is not the model's output.
    fn stackable(nodes: &[Node], plan: &Plan, order: &[Step], c: usize) -> bool {
        c + 1 < nodes.len() && order.iter().all(|&step| {
            let reads_c = step_reads(plan, step).contains(&Src::Node(c));
            !reads_c
                || matches!(step, Step::Node(b) if matches!(nodes[b].op, Op::Layer(Built::Bn(_))))
        })
    }

    /// The range of node `j`'s output for a batch of `n`.
    pub(crate) fn range(&self, j: usize, n: usize) -> Option<Range<usize>> {
        let at = self.at.get(j).copied().flatten()?;
        Some(n * at..n * (at + self.len[j]))
    }

    fn place(nodes: &[Node], plan: &Plan, input_len: usize, to: Use) -> Arena {
        let count = nodes.len();
        let len: Vec<usize> = nodes.iter().map(|n| numel(n.shape)).collect();
        let (train, stack) = (to.train, to.concats == Concats::Stacked);
        let order = if train { &plan.forward } else { &plan.infer };
        let steps = order.len();
        // The step that writes each node, and the last step that reads it (the output, and in
        // training every node: past the end).
        let mut made = vec![usize::MAX; count];
        let mut last = vec![0usize; count];
        for (s, &step) in order.iter().enumerate() {
            made[step.top()] = s;
            for src in step_reads(plan, step) {
                if let Src::Node(j) = *src {
                    last[j] = last[j].max(s);
                }
            }
        }
        last[count - 1] = steps;
        if train {
            last.fill(steps);
        }
        let mut groups = vec![Vec::new(); count];
        let src_len = |s: Src| match s {
            Src::Input => input_len,
            Src::Node(j) => len[j],
        };
        // Each node's home: the node owning its region, and its offset there.
        let mut home: Vec<Option<(usize, usize)>> = vec![None; count];
        let mut copy = vec![Vec::new(); count];
        let mut view = vec![false; count];
        let mut copied = 0;
        for c in (0..count).rev() {
            if !matches!(nodes[c].op, Op::Join(Join::Concat)) || made[c] == usize::MAX {
                continue;
            }
            let reads = &plan.reads[c];
            let offsets: Vec<usize> = reads
                .iter()
                .scan(0, |at, &s| {
                    let o = *at;
                    *at += src_len(s);
                    Some(o)
                })
                .collect();
            let in_place = match to.concats {
                Concats::All => true,
                Concats::Stacked => Arena::stackable(nodes, plan, order, c),
                Concats::Copied => false,
            };
            if !in_place {
                copy[c] = vec![true; reads.len()];
                copied += len[c];
                continue;
            }
            if stack {
                // Its inputs' channels (each is `len / (h·w)` of them).
                let plane = nodes[c].shape[1] * nodes[c].shape[2];
                groups[c] = reads.iter().map(|&s| src_len(s) / plane.max(1)).collect();
            }
            // A concatenation read by another is not stacked (only batch norms read those): it
            // is copied in NCHW.
            let placeable = |p: usize| {
                made[p] != usize::MAX && (!stack || !matches!(nodes[p].op, Op::Join(Join::Concat)))
            };
            // Its inputs already end to end, in its order: a view of them.
            let first = match reads[0] {
                Src::Node(p) => home[p],
                Src::Input => None,
            };
            let end_to_end = first.is_some_and(|(r, o)| {
                reads.iter().zip(&offsets).all(|(&s, &off)| match s {
                    Src::Node(p) => placeable(p) && home[p] == Some((r, o + off)),
                    Src::Input => false,
                })
            });
            if home[c].is_none() && end_to_end {
                home[c] = first;
                view[c] = true;
                copy[c] = vec![false; reads.len()];
                continue;
            }
            let (r, base) = *home[c].get_or_insert((c, 0));
            let flags: Vec<bool> = reads
                .iter()
                .zip(&offsets)
                .map(|(&s, &off)| match s {
                    Src::Node(p) if placeable(p) => match home[p] {
                        Some(h) => h != (r, base + off),
                        None => {
                            home[p] = Some((r, base + off));
                            false
                        }
                    },
                    _ => true,
                })
                .collect();
            copied += reads
                .iter()
                .zip(&flags)
                .filter(|&(_, &f)| f)
                .map(|(&s, _)| src_len(s))
                .sum::<usize>();
            view[c] = !flags.contains(&true);
            copy[c] = flags;
        }
        // Every other node written by a step owns its region.
        for j in 0..count {
            if home[j].is_none() && made[j] != usize::MAX {
                home[j] = Some((j, 0));
            }
        }
        // Each region's lifetime: from the first step writing into it to the last reading it.
        let mut life: Vec<Option<(usize, usize)>> = vec![None; count];
        for j in 0..count {
            if let Some((r, _)) = home[j] {
                let (s, e) = life[r].get_or_insert((made[j], last[j]));
                *s = (*s).min(made[j]);
                *e = (*e).max(last[j]);
            }
        }
        // First fit, in order of first write; a region read last at step `e` is free from step
        // `e + 1` (a step reads its inputs while it writes its output).
        let mut roots: Vec<usize> = (0..count).filter(|&r| life[r].is_some()).collect();
        roots.sort_by_key(|&r| life[r].map(|l| l.0));
        let mut offset = vec![0usize; count];
        let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (offset, size, last read)
        let mut size = 0;
        for r in roots {
            let Some((start, end)) = life[r] else {
                continue;
            };
            live.retain(|&(_, _, e)| e >= start);
            live.sort_unstable();
            let mut at = 0;
            for &(o, sz, _) in &live {
                if o >= at + len[r] {
                    break;
                }
                at = at.max(o + sz);
            }
            offset[r] = at;
            live.push((at, len[r], end));
            size = size.max(at + len[r]);
        }
        let at = (0..count)
            .map(|j| home[j].map(|(r, o)| offset[r] + o))
            .collect();
        Arena {
            at,
            len,
            copy,
            view,
            size,
            copied,
            groups,
        }
    }

    /// Whether every one of `steps`'s inputs (those it reads, not those already in place) lie
    /// outside its output.
    fn checked(&self, steps: &[Step], plan: &Plan) -> bool {
        steps.iter().all(|&step| {
            let top = step.top();
            if self.view[top] {
                return true;
            }
            let Some(out) = self.range(top, 1) else {
                return false;
            };
            step_reads(plan, step)
                .iter()
                .enumerate()
                .all(|(t, &s)| match s {
                    Src::Input => true,
                    Src::Node(_) if self.copy[top].get(t) == Some(&false) => true,
                    Src::Node(j) => self
                        .range(j, 1)
                        .is_some_and(|r| r.end <= out.start || r.start >= out.end),
                })
        })
    }
}
