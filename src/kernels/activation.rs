//! Element-wise activations, forward and backward, on SIMD lanes.
//!
//! Formulas, defaults and special values follow `torch.nn.functional`: NaN propagates through
//! every forward, ReLU keeps the sign of `-0.0`, and the backward passes take the same branch
//! PyTorch takes at the kinks (ReLU's gradient at 0 is 0, LeakyReLU's is the slope, ELU's is
//! `alpha`).

// Lane functions go to the kernels as `#[inline(always)]` closures, never as function items or
// references: the call shim of either need not be inlined into the instruction-set variants of
// `dispatch`, and lane code left outside them runs the x86-64 baseline (a software `fmaf`).
#![allow(clippy::redundant_closure)]

use crate::error::{Error, Result, check_len};
use crate::kernels::accum::Accum;
use crate::par::{self, BLOCK, Items};
use crate::rng::uniform_at;
use crate::shape::Shape4;
use crate::simd;
use crate::simd::lane::{Lane, ge, gt, le, lt, select, splat};
use std::f32::consts::FRAC_1_SQRT_2;

/// `sqrt(2 / pi)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// `1 / sqrt(2 pi)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// The cubic coefficient of the tanh approximation of GELU.
const GELU_KAPPA: f32 = 0.044_715;

/// An element-wise activation with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Activation {
    /// `max(x, 0)` (`x < 0 ? 0 : x`, so NaN and `-0.0` pass through).
    Relu,
    /// `x > 0 ? x : slope·x` (`torch.nn.LeakyReLU(negative_slope)`, default 0.01).
    LeakyRelu {
        /// Slope for `x <= 0`.
        slope: f32,
    },
    /// `x > 0 ? x : alpha·(eˣ − 1)` (`torch.nn.ELU(alpha)`, default 1).
    Elu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// `1 / (1 + e⁻ˣ)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `β·x > threshold ? x : ln(1 + e^(β·x)) / β` (`torch.nn.Softplus`, defaults β = 1,
    /// threshold = 20).
    Softplus {
        /// β (non-zero).
        beta: f32,
        /// Above `β·x > threshold` the function is linear.
        threshold: f32,
    },
    /// Exact GELU: `x·Φ(x) = x/2 · (1 + erf(x/√2))` (`torch.nn.GELU()`).
    Gelu,
    /// GELU's tanh approximation: `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    /// (`torch.nn.GELU(approximate='tanh')`).
    GeluTanh,
    /// `min(max(x, 0), 6)` (`torch.nn.ReLU6`); NaN and `-0.0` pass through. The gradient is 0
    /// for `x <= 0` and `x >= 6` and `dy` otherwise (NaN included), as PyTorch's
    /// `hardtanh_backward`.
    Relu6,
    /// `min(max(x + 3, 0), 6) / 6` (`torch.nn.Hardsigmoid`); the gradient is `dy/6` for
    /// `-3 < x < 3` and 0 elsewhere.
    Hardsigmoid,
    /// `x · min(max(x + 3, 0), 6) / 6` (`torch.nn.Hardswish`, MobileNetV3's activation; `−∞`
    /// gives NaN, as in PyTorch); the gradient is 0 for `x <= -3`, `dy·(x/3 + 1/2)` for
    /// `-3 < x < 3` and `dy` from 3 on (NaN included).
    Hardswish,
    /// `x · σ(x)` (`torch.nn.SiLU`, "swish", EfficientNet's activation).
    Silu,
}

impl Activation {
    /// `torch.nn.LeakyReLU()`'s default slope, 0.01.
    pub const LEAKY_RELU: Activation = Activation::LeakyRelu { slope: 0.01 };
    /// `torch.nn.ELU()`'s default, alpha 1.
    pub const ELU: Activation = Activation::Elu { alpha: 1.0 };
    /// `torch.nn.Softplus()`'s defaults, β = 1, threshold = 20.
    pub const SOFTPLUS: Activation = Activation::Softplus {
        beta: 1.0,
        threshold: 20.0,
    };

    pub(crate) fn validate(self, op: &'static str) -> Result<()> {
        if let Activation::Softplus { beta, .. } = self
            && beta == 0.0
        {
            return Err(Error::invalid(op, "beta", "softplus beta must be non-zero"));
        }
        Ok(())
    }

    /// Relative cost per element (for the serial threshold).
    fn cost(self) -> usize {
        match self {
            Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Relu6
            | Activation::Hardsigmoid
            | Activation::Hardswish => 1,
            _ => 20,
        }
    }
}

// One lane function per activation and direction. The kernels choose one of them *outside*
// their loops, so every activation's pass is its own monomorphic function: the same machine code
// as a branch inside the loop would give after unswitching, and in unoptimised builds (where
// every `#[inline(always)]` lane operation keeps its own stack slots) a stack frame sized for one
// activation instead of for all of them, which fits the 2 MiB of a test or pool thread.

// ReLU and ReLU6 as `0 > x ? 0 : x` (and `6 < y ? 6 : y`): one `max`/`min` instruction each
// with x86's operand order, which passes a NaN in `x` on and keeps `-0.0`, as PyTorch does. (A
// compare and a select made mask-register shuffles in the AVX-512 variant: a fifth of a
// depthwise layer's time in perf.)
#[inline(always)]
fn relu(x: Lane) -> Lane {
    splat(0.0).fast_max(x)
}
#[inline(always)]
fn leaky_relu(slope: f32, x: Lane) -> Lane {
    select(gt(x, splat(0.0)), x, x * splat(slope))
}
#[inline(always)]
fn elu(alpha: f32, x: Lane) -> Lane {
    select(gt(x, splat(0.0)), x, simd::expm1(x) * splat(alpha))
}
#[inline(always)]
fn softplus(beta: f32, threshold: f32, x: Lane) -> Lane {
    let bx = x * splat(beta);
    let soft = simd::ln_1p(simd::exp(bx)) / splat(beta);
    select(gt(bx, splat(threshold)), x, soft)
}
#[inline(always)]
fn gelu(x: Lane) -> Lane {
    x * splat(0.5) * simd::erfc(x * splat(-FRAC_1_SQRT_2))
}
#[inline(always)]
fn gelu_tanh(x: Lane) -> Lane {
    let inner = (x * x * x).mul_add(splat(GELU_KAPPA), x) * splat(SQRT_2_OVER_PI);
    x * splat(0.5) * (splat(1.0) + simd::tanh(inner))
}

#[inline(always)]
fn relu6(x: Lane) -> Lane {
    splat(6.0).fast_min(splat(0.0).fast_max(x))
}
/// `min(max(x + 3, 0), 6)`, NaN kept.
#[inline(always)]
fn clamp_x_plus_3(x: Lane) -> Lane {
    relu6(x + splat(3.0))
}
#[inline(always)]
fn hardsigmoid(x: Lane) -> Lane {
    clamp_x_plus_3(x) / splat(6.0)
}
#[inline(always)]
fn hardswish(x: Lane) -> Lane {
    x * clamp_x_plus_3(x) / splat(6.0)
}
#[inline(always)]
fn silu(x: Lane) -> Lane {
    x * simd::sigmoid(x)
}

// `dL/dx` given `dy = dL/dy` and the operand the gradient needs: `x` for the ReLU family, ELU,
// softplus and GELU, `y = f(x)` for sigmoid and tanh.

#[inline(always)]
fn relu_grad(x: Lane, dy: Lane) -> Lane {
    select(le(x, splat(0.0)), splat(0.0), dy)
}
#[inline(always)]
fn leaky_relu_grad(slope: f32, x: Lane, dy: Lane) -> Lane {
    select(gt(x, splat(0.0)), dy, dy * splat(slope))
}
#[inline(always)]
fn elu_grad(alpha: f32, x: Lane, dy: Lane) -> Lane {
    select(gt(x, splat(0.0)), dy, dy * splat(alpha) * simd::exp(x))
}
#[inline(always)]
fn sigmoid_grad(y: Lane, dy: Lane) -> Lane {
    dy * y * (splat(1.0) - y)
}
#[inline(always)]
fn tanh_grad(y: Lane, dy: Lane) -> Lane {
    dy * y.mul_neg_add(y, splat(1.0))
}
#[inline(always)]
fn softplus_grad(beta: f32, threshold: f32, x: Lane, dy: Lane) -> Lane {
    let bx = x * splat(beta);
    select(gt(bx, splat(threshold)), dy, dy * simd::sigmoid(bx))
}
#[inline(always)]
fn gelu_grad(x: Lane, dy: Lane) -> Lane {
    let cdf = splat(0.5) * simd::erfc(x * splat(-FRAC_1_SQRT_2));
    let pdf = simd::exp(x * x * splat(-0.5)) * splat(INV_SQRT_2PI);
    dy * x.mul_add(pdf, cdf)
}
#[inline(always)]
fn gelu_tanh_grad(x: Lane, dy: Lane) -> Lane {
    let x2 = x * x;
    let inner = (x2 * x).mul_add(splat(GELU_KAPPA), x) * splat(SQRT_2_OVER_PI);
    let t = simd::tanh(inner);
    let left = splat(0.5) * (splat(1.0) + t);
    let right = x
        * splat(0.5)
        * t.mul_neg_add(t, splat(1.0))
        * splat(SQRT_2_OVER_PI)
        * x2.mul_add(splat(3.0 * GELU_KAPPA), splat(1.0));
    dy * (left + right)
}

#[inline(always)]
fn relu6_grad(x: Lane, dy: Lane) -> Lane {
    // PyTorch's `x <= 0 || x >= 6 ? 0 : dy`: a NaN input passes `dy` on.
    let outside = le(x, splat(0.0)) | ge(x, splat(6.0));
    select(outside, splat(0.0), dy)
}
#[inline(always)]
fn hardsigmoid_grad(x: Lane, dy: Lane) -> Lane {
    let inside = gt(x, splat(-3.0)) & lt(x, splat(3.0));
    select(inside, dy * splat(1.0 / 6.0), splat(0.0))
}
#[inline(always)]
fn hardswish_grad(x: Lane, dy: Lane) -> Lane {
    // PyTorch's `x <= -3 ? 0 : x < 3 ? dy·(x/3 + 1/2) : dy` (a NaN input passes `dy` on).
    let middle = dy * (x / splat(3.0) + splat(0.5));
    let upper = select(lt(x, splat(3.0)), middle, dy);
    select(le(x, splat(-3.0)), splat(0.0), upper)
}
#[inline(always)]
fn silu_grad(x: Lane, dy: Lane) -> Lane {
    let s = simd::sigmoid(x);
    dy * s * x.mul_add(splat(1.0) - s, splat(1.0))
}

/// `y = f(x)` over the whole slice, in parallel blocks, for one lane function.
/// Expands `$run!(f)` once per activation, `f` its lane function (one place for the table of
/// functions, read by every pass that applies an activation).
macro_rules! per_activation {
    ($act:expr, $run:ident) => {
        match $act {
            Activation::Relu => $run!(
                #[inline(always)]
                |v| relu(v)
            ),
            Activation::LeakyRelu { slope } => $run!(
                #[inline(always)]
                |v| leaky_relu(slope, v)
            ),
            Activation::Elu { alpha } => $run!(
                #[inline(always)]
                |v| elu(alpha, v)
            ),
            Activation::Sigmoid => $run!(
                #[inline(always)]
                |v| simd::sigmoid(v)
            ),
            Activation::Tanh => $run!(
                #[inline(always)]
                |v| simd::tanh(v)
            ),
            Activation::Softplus { beta, threshold } => $run!(
                #[inline(always)]
                |v| softplus(beta, threshold, v)
            ),
            Activation::Gelu => $run!(
                #[inline(always)]
                |v| gelu(v)
            ),
            Activation::GeluTanh => $run!(
                #[inline(always)]
                |v| gelu_tanh(v)
            ),
            Activation::Relu6 => $run!(
                #[inline(always)]
                |v| relu6(v)
            ),
            Activation::Hardsigmoid => $run!(
                #[inline(always)]
                |v| hardsigmoid(v)
            ),
            Activation::Hardswish => $run!(
                #[inline(always)]
                |v| hardswish(v)
            ),
            Activation::Silu => $run!(
                #[inline(always)]
                |v| silu(v)
            ),
        }
    };
}

fn forward_pass(x: &[f32], y: &mut [f32], cost: usize, f: impl Fn(Lane) -> Lane + Sync) {
    par::for_each_block(
        x.len(),
        cost,
        Items(y, BLOCK),
        #[inline(always)]
        |r, Items(y, _)| {
            simd::map(
                &x[r],
                y,
                #[inline(always)]
                |v| f(v),
            )
        },
    );
}

/// `dx = g(operand, dy)` (overwritten or added to) over the whole slice, in parallel blocks, for
/// one lane function. Only the operand the gradient needs is read, and `dx` only when adding:
/// this pass is bound by memory traffic.
fn backward_pass(
    operand: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
    cost: usize,
    g: impl Fn(Lane, Lane) -> Lane + Sync,
) {
    par::for_each_block(
        operand.len(),
        cost,
        Items(dx, BLOCK),
        #[inline(always)]
        |r, Items(dx, _)| {
            crate::kernels::accum::zip_map_into(
                &operand[r.clone()],
                &dy[r],
                dx,
                accum,
                #[inline(always)]
                |o, d| g(o, d),
            );
        },
    );
}

/// `y = f(x)` element-wise for the activation `act`.
///
/// # Errors
/// [`Error::Length`] if `y.len() != x.len()`; [`Error::InvalidArg`] for softplus with `beta == 0`.
///
/// # Example
/// ```
/// use cnnkit::kernels::{activation_forward, Activation};
/// let x = [-2.0, -0.0, 3.0, f32::NAN];
/// let mut y = [0.0; 4];
/// activation_forward(Activation::Relu, &x, &mut y)?;
/// assert_eq!(&y[..3], &[0.0, -0.0, 3.0]);
/// assert!(y[3].is_nan());
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn activation_forward(act: Activation, x: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "activation_forward";
    act.validate(OP)?;
    check_len(OP, "y", y, x.len())?;
    let c = act.cost();
    macro_rules! run {
        ($f:expr) => {
            forward_pass(x, y, c, $f)
        };
    }
    per_activation!(act, run);
    Ok(())
}

/// `y = max(y, 0)` in place (NaN kept), exactly as [`activation_forward`] with ReLU: for layers
/// that apply a ReLU to their own output.
pub(crate) fn relu_in_place(y: &mut [f32]) {
    let len = y.len();
    par::for_each_block(
        len,
        Activation::Relu.cost(),
        Items(y, BLOCK),
        #[inline(always)]
        |_, Items(y, _)| {
            simd::map_in_place(
                y,
                #[inline(always)]
                |v| relu(v),
            )
        },
    );
}

/// Expands `$run!(g)` with the lane function `g` of an activation that costs about as much as
/// an add (ReLU, ReLU6, LeakyReLU: worth applying in the pass that writes a kernel's output), and
/// `$after!(act)` for the others (applied in a pass of their own, by [`activation_in_place`]).
/// Only these few are inlined into a kernel's pass: with all of them, the pass grew past what
/// the compiler inlines lane helpers into.
macro_rules! fused_activation {
    ($act:expr, $run:ident, $after:ident) => {
        match $act {
            Activation::Relu => $run!(
                #[inline(always)]
                |v| relu(v)
            ),
            Activation::Relu6 => $run!(
                #[inline(always)]
                |v| relu6(v)
            ),
            Activation::LeakyRelu { slope } => $run!(
                #[inline(always)]
                |v| leaky_relu(slope, v)
            ),
            other => $after!(other),
        }
    };
}

/// `act` split into the part [`map_act`] and its kin apply in their own pass (the cheap
/// activations, see `fused_activation!`) and the part to apply after it, over the whole output
/// block at once ([`activation_in_place`]).
pub(crate) fn split_fused(act: Option<Activation>) -> (Option<Activation>, Option<Activation>) {
    match act {
        Some(Activation::Relu | Activation::Relu6 | Activation::LeakyRelu { .. }) | None => {
            (act, None)
        }
        Some(a) => (None, Some(a)),
    }
}

/// `y = act(f(x))` lane by lane (`f(x)` without an activation), on this thread: a kernel's
/// epilogue, the values of `f` followed by [`activation_forward`]; the cheap activations in the
/// same pass (see `fused_activation!`). Callers run inside `arch::dispatch` (the lane functions
/// are inlined here).
#[inline(always)]
pub(crate) fn map_act(act: Option<Activation>, x: &[f32], y: &mut [f32], f: impl Fn(Lane) -> Lane) {
    let Some(act) = act else {
        return simd::map(x, y, f);
    };
    #[inline(always)]
    fn then(x: &[f32], y: &mut [f32], f: impl Fn(Lane) -> Lane, g: impl Fn(Lane) -> Lane) {
        simd::map(
            x,
            y,
            #[inline(always)]
            |v| g(f(v)),
        )
    }
    macro_rules! run {
        ($g:expr) => {
            then(x, y, &f, $g)
        };
    }
    macro_rules! after {
        ($a:expr) => {{
            simd::map(x, y, &f);
            activation_in_place($a, y)
        }};
    }
    fused_activation!(act, run, after)
}

/// `y = act(f(y))` in place, as [`map_act`].
#[inline(always)]
pub(crate) fn map_act_in_place(act: Option<Activation>, y: &mut [f32], f: impl Fn(Lane) -> Lane) {
    let Some(act) = act else {
        return simd::map_in_place(y, f);
    };
    #[inline(always)]
    fn then(y: &mut [f32], f: impl Fn(Lane) -> Lane, g: impl Fn(Lane) -> Lane) {
        simd::map_in_place(
            y,
            #[inline(always)]
            |v| g(f(v)),
        )
    }
    macro_rules! run {
        ($g:expr) => {
            then(y, &f, $g)
        };
    }
    macro_rules! after {
        ($a:expr) => {{
            simd::map_in_place(y, &f);
            activation_in_place($a, y)
        }};
    }
    fused_activation!(act, run, after)
}

/// `y = act(f(a, b))` lane by lane, as [`map_act`].
#[inline(always)]
pub(crate) fn zip_map_act(
    act: Option<Activation>,
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    f: impl Fn(Lane, Lane) -> Lane,
) {
    let Some(act) = act else {
        return simd::zip_map(a, b, y, f);
    };
    #[inline(always)]
    fn then(
        a: &[f32],
        b: &[f32],
        y: &mut [f32],
        f: impl Fn(Lane, Lane) -> Lane,
        g: impl Fn(Lane) -> Lane,
    ) {
        simd::zip_map(
            a,
            b,
            y,
            #[inline(always)]
            |u, v| g(f(u, v)),
        )
    }
    macro_rules! run {
        ($g:expr) => {
            then(a, b, y, &f, $g)
        };
    }
    macro_rules! after {
        ($x:expr) => {{
            simd::zip_map(a, b, y, &f);
            activation_in_place($x, y)
        }};
    }
    fused_activation!(act, run, after)
}

/// `y = act(y)` in place, on this thread, the values of [`activation_forward`]: for a kernel
/// that applies an activation to a block of its own output while it is in cache.
pub(crate) fn activation_in_place(act: Activation, y: &mut [f32]) {
    crate::arch::dispatch(
        #[inline(always)]
        || {
            macro_rules! run {
                ($f:expr) => {
                    simd::map_in_place(y, $f)
                };
            }
            per_activation!(act, run)
        },
    )
}

/// `dx = dy · f'(x)` for the activation `act`, given the forward input `x` and output `y`
/// (sigmoid and tanh read `y`, every other activation reads `x`).
///
/// # Errors
/// [`Error::Length`] if the buffers differ in length; [`Error::InvalidArg`] as for
/// [`activation_forward`].
pub fn activation_backward(
    act: Activation,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "activation_backward";
    act.validate(OP)?;
    check_len(OP, "y", y, x.len())?;
    check_len(OP, "dy", dy, x.len())?;
    check_len(OP, "dx", dx, x.len())?;
    let c = act.cost();
    match act {
        Activation::Sigmoid => backward_pass(
            y,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| sigmoid_grad(o, d),
        ),
        Activation::Tanh => backward_pass(
            y,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| tanh_grad(o, d),
        ),
        Activation::Relu => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| relu_grad(o, d),
        ),
        Activation::LeakyRelu { slope } => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |x, d| leaky_relu_grad(slope, x, d),
        ),
        Activation::Elu { alpha } => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |x, d| elu_grad(alpha, x, d),
        ),
        Activation::Softplus { beta, threshold } => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |x, d| softplus_grad(beta, threshold, x, d),
        ),
        Activation::Gelu => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| gelu_grad(o, d),
        ),
        Activation::GeluTanh => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| gelu_tanh_grad(o, d),
        ),
        Activation::Relu6 => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| relu6_grad(o, d),
        ),
        Activation::Hardsigmoid => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| hardsigmoid_grad(o, d),
        ),
        Activation::Hardswish => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| hardswish_grad(o, d),
        ),
        Activation::Silu => backward_pass(
            x,
            dy,
            dx,
            accum,
            c,
            #[inline(always)]
            |o, d| silu_grad(o, d),
        ),
    }
    Ok(())
}

/// Slopes of PReLU: one shared slope, or one per channel.
fn prelu_check(op: &'static str, s: Shape4, x: &[f32], a: &[f32]) -> Result<usize> {
    let len = s.len(op)?;
    check_len(op, "x", x, len)?;
    if a.len() != 1 && a.len() != s.c {
        return Err(Error::length(op, "a", s.c, a.len()));
    }
    Ok(len)
}

/// PReLU, as `torch.nn.PReLU(num_parameters)`: `y = x > 0 ? x : a[c]·x`, with one learnable slope
/// per channel (`a.len() == c`) or one shared (`a.len() == 1`).
///
/// - `shape`: `[n, c, h, w]` (use `h = w = 1` for a `[n, c]` input)
/// - `x`, `y`: `shape`; `y` is overwritten
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `shape`.
pub fn prelu_forward(shape: Shape4, x: &[f32], a: &[f32], y: &mut [f32]) -> Result<()> {
    const OP: &str = "prelu_forward";
    let len = prelu_check(OP, shape, x, a)?;
    check_len(OP, "y", y, len)?;
    let plane = shape.plane();
    if plane == 0 {
        return Ok(());
    }
    par::for_each(
        shape.n * shape.c,
        len,
        Items(y, plane),
        #[inline(always)]
        |r, Items(y, _)| {
            for (p, y_p) in r.zip(y.chunks_exact_mut(plane)) {
                let av = splat(a[if a.len() == 1 { 0 } else { p % shape.c }]);
                simd::map(
                    &x[p * plane..][..plane],
                    y_p,
                    #[inline(always)]
                    |x| select(gt(x, splat(0.0)), x, x * av),
                );
            }
            Ok(())
        },
    )
}

/// Gradient of [`prelu_forward`]: `dx = x > 0 ? dy : a[c]·dy` and
/// `da[c] = Σ_{n,h,w} (x > 0 ? 0 : x·dy)` (summed over all channels for a shared slope).
///
/// `dx` and `da` are overwritten or added to according to `accum`.
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `shape` or `a`.
pub fn prelu_backward(
    shape: Shape4,
    x: &[f32],
    a: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    da: &mut [f32],
    accum: Accum,
) -> Result<()> {
    prelu_backward_split(shape, x, a, dy, (dx, accum), da, accum)
}

/// [`prelu_backward`] with `dx`'s own [`Accum`] (a layer overwrites its input gradient while it
/// adds to its parameter gradients).
pub(crate) fn prelu_backward_split(
    shape: Shape4,
    x: &[f32],
    a: &[f32],
    dy: &[f32],
    (dx, dx_accum): (&mut [f32], Accum),
    da: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "prelu_backward";
    let len = prelu_check(OP, shape, x, a)?;
    check_len(OP, "dy", dy, len)?;
    check_len(OP, "dx", dx, len)?;
    check_len(OP, "da", da, a.len())?;
    let (plane, c) = (shape.plane(), shape.c);
    if plane == 0 {
        return Ok(());
    }
    par::for_each(
        shape.n * c,
        len,
        Items(dx, plane),
        #[inline(always)]
        |r, Items(dx, _)| {
            for (p, dx_p) in r.zip(dx.chunks_exact_mut(plane)) {
                let av = splat(a[if a.len() == 1 { 0 } else { p % c }]);
                let (x_p, dy_p) = (&x[p * plane..][..plane], &dy[p * plane..][..plane]);
                simd::zip_map_acc(
                    x_p,
                    dy_p,
                    dx_p,
                    #[inline(always)]
                    |x, dy, old| dx_accum.lanes(old, select(gt(x, splat(0.0)), dy, dy * av)),
                );
            }
            Ok(())
        },
    )?;
    // da: per channel, summed over the batch in order (one thread per channel).
    let channel_sum = simd::inlined(
        #[inline(always)]
        |ch: usize| -> f64 {
            let mut s = 0.0;
            for i in 0..shape.n {
                let at = (i * c + ch) * plane;
                let (x_p, dy_p) = (&x[at..][..plane], &dy[at..][..plane]);
                s += simd::sum_zip(
                    x_p,
                    dy_p,
                    #[inline(always)]
                    |x, dy| select(gt(x, splat(0.0)), splat(0.0), x * dy),
                ) as f64;
            }
            s
        },
    );
    if a.len() == 1 {
        let s: f64 = simd::dispatch(
            #[inline(always)]
            || {
                let mut s = 0.0;
                for ch in 0..c {
                    s += channel_sum(ch);
                }
                s
            },
        );
        da[0] = accum.apply(da[0], s as f32);
        return Ok(());
    }
    par::for_each(
        c,
        len,
        Items(da, 1),
        #[inline(always)]
        |r, Items(da, _)| {
            for (ch, d) in r.zip(da.iter_mut()) {
                *d = accum.apply(*d, channel_sum(ch) as f32);
            }
            Ok(())
        },
    )
}

/// RReLU in training mode, as `torch.nn.functional.rrelu(x, lower, upper, training=True)`:
/// each element with `x <= 0` gets its own slope drawn uniformly from `[lower, upper)`;
/// `y = x · noise`, with `noise = 1` where `x > 0`. `noise` is kept for
/// [`rrelu_backward_train`].
///
/// The slope of element `i` depends only on `(seed, i)`, so the result is the same for any number
/// of threads. (PyTorch's defaults are `lower = 1/8`, `upper = 1/3`; in evaluation mode RReLU is
/// [`Activation::LeakyRelu`] with slope `(lower + upper) / 2`.)
///
/// # Errors
/// [`Error::Length`] if the buffers differ in length; [`Error::InvalidArg`] unless
/// `lower <= upper`, both finite.
pub fn rrelu_forward_train(
    lower: f32,
    upper: f32,
    seed: u64,
    x: &[f32],
    y: &mut [f32],
    noise: &mut [f32],
) -> Result<()> {
    const OP: &str = "rrelu_forward_train";
    if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
        return Err(Error::invalid(
            OP,
            "lower/upper",
            format!("need finite lower <= upper, got {lower}, {upper}"),
        ));
    }
    check_len(OP, "y", y, x.len())?;
    check_len(OP, "noise", noise, x.len())?;
    par::for_each_block(
        x.len(),
        4,
        (Items(y, BLOCK), Items(noise, BLOCK)),
        #[inline(always)]
        |r, (Items(y, _), Items(noise, _))| {
            for (((i, &xv), yv), nv) in r.clone().zip(&x[r]).zip(y).zip(noise) {
                let s = if xv <= 0.0 {
                    lower + (upper - lower) * uniform_at(seed, i as u64)
                } else {
                    1.0
                };
                *nv = s;
                *yv = xv * s;
            }
        },
    );
    Ok(())
}

/// Gradient of [`rrelu_forward_train`]: `dx = dy · noise`.
///
/// # Errors
/// [`Error::Length`] if the buffers differ in length.
pub fn rrelu_backward_train(noise: &[f32], dy: &[f32], dx: &mut [f32], accum: Accum) -> Result<()> {
    mask_backward("rrelu_backward_train", noise, dy, dx, accum)
}

/// `dx (+)= dy · mask`: the backward pass of every multiplicative mask (dropout, RReLU).
pub(crate) fn mask_backward(
    op: &'static str,
    mask: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    check_len(op, "dy", dy, mask.len())?;
    check_len(op, "dx", dx, mask.len())?;
    par::for_each_block(
        mask.len(),
        1,
        Items(dx, BLOCK),
        #[inline(always)]
        |r, Items(dx, _)| {
            simd::zip_map_acc(
                &mask[r.clone()],
                &dy[r],
                dx,
                #[inline(always)]
                |m, d, old| accum.lanes(old, m * d),
            );
        },
    );
    Ok(())
}
