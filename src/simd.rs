//! The lane type, lane helpers, reductions and vector math: the only module that decides how
//! element-wise code becomes SIMD instructions.
//!
//! Kernels never split a slice into lanes and a tail themselves: they pass a lane closure to
//! [`map`], [`zip_map`] and friends. The tail (fewer than [`LANES`] elements) is copied into one
//! padded lane and goes through the *same* closure, so every element of a slice is computed by one
//! algorithm, bit for bit, whatever its position. (A hand-written scalar twin would be a second
//! implementation of every formula to keep in step and to test.)
//!
//! A [`Lane`] is eight `f32` whose operations are written element by element; the compiler turns
//! them into vector instructions for the target features of the function they end up in. Kernels
//! run their lane code through [`dispatch`] (from [`crate::arch`]), which compiles it once per
//! instruction set — AVX-512 and AVX2 + FMA (fused multiply-add), chosen at run time on CPUs that
//! have them, and the build's baseline (two SSE registers per lane on x86-64). `mul_add` is always
//! a fused multiply-add (in software on a baseline x86-64 CPU, which is slow but exact), so every
//! variant and every build give bit-identical results.

#![allow(unsafe_code)]

use std::ops::{Add, AddAssign, BitAnd, BitOr, Div, Mul, MulAssign, Neg, Not, Sub, SubAssign};

/// Elements per lane.
pub(crate) const LANES: usize = 8;

pub(crate) use crate::arch::{dispatch, inlined};

/// Eight `f32`, operated on element by element. Comparison results ("masks") are lanes whose
/// elements have all bits set (true) or clear (false).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct Lane(pub(crate) [f32; LANES]);

/// Eight `i32`: exponent and index arithmetic.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct Ints(pub(crate) [i32; LANES]);

macro_rules! each {
    ($t:ident, |$i:ident| $e:expr) => {
        $t(std::array::from_fn(
            #[inline(always)]
            |$i| $e,
        ))
    };
}

/// All bits set where `c`.
#[inline(always)]
fn mask_bit(c: bool) -> f32 {
    f32::from_bits((-(c as i32)) as u32)
}

macro_rules! lane_binop {
    ($tr:ident, $f:ident, $tra:ident, $fa:ident, $op:tt) => {
        impl $tr for Lane {
            type Output = Lane;
            #[inline(always)]
            fn $f(self, o: Lane) -> Lane {
                each!(Lane, |i| self.0[i] $op o.0[i])
            }
        }
        impl $tra for Lane {
            #[inline(always)]
            fn $fa(&mut self, o: Lane) {
                *self = *self $op o;
            }
        }
    };
}
lane_binop!(Add, add, AddAssign, add_assign, +);
lane_binop!(Sub, sub, SubAssign, sub_assign, -);
lane_binop!(Mul, mul, MulAssign, mul_assign, *);

impl Div for Lane {
    type Output = Lane;
    #[inline(always)]
    fn div(self, o: Lane) -> Lane {
        each!(Lane, |i| self.0[i] / o.0[i])
    }
}

impl Neg for Lane {
    type Output = Lane;
    #[inline(always)]
    fn neg(self) -> Lane {
        each!(Lane, |i| -self.0[i])
    }
}

impl BitAnd for Lane {
    type Output = Lane;
    #[inline(always)]
    fn bitand(self, o: Lane) -> Lane {
        from_bits(bits(self) & bits(o))
    }
}

impl BitOr for Lane {
    type Output = Lane;
    #[inline(always)]
    fn bitor(self, o: Lane) -> Lane {
        from_bits(bits(self) | bits(o))
    }
}

impl Not for Lane {
    type Output = Lane;
    #[inline(always)]
    fn not(self) -> Lane {
        from_bits(!bits(self))
    }
}

impl Lane {
    /// All elements zero.
    pub(crate) const ZERO: Lane = Lane([0.0; LANES]);

    /// The lane holding `a`.
    #[inline(always)]
    pub(crate) fn new(a: [f32; LANES]) -> Lane {
        Lane(a)
    }

    /// The elements.
    #[inline(always)]
    pub(crate) fn to_array(self) -> [f32; LANES] {
        self.0
    }

    /// `self·b + c`, rounded once.
    #[inline(always)]
    pub(crate) fn mul_add(self, b: Lane, c: Lane) -> Lane {
        each!(Lane, |i| self.0[i].mul_add(b.0[i], c.0[i]))
    }

    /// `c − self·b`, rounded once.
    #[inline(always)]
    pub(crate) fn mul_neg_add(self, b: Lane, c: Lane) -> Lane {
        each!(Lane, |i| (-self.0[i]).mul_add(b.0[i], c.0[i]))
    }

    /// `self > b ? self : b` (so `b` where either is NaN).
    #[inline(always)]
    pub(crate) fn fast_max(self, b: Lane) -> Lane {
        each!(Lane, |i| if self.0[i] > b.0[i] {
            self.0[i]
        } else {
            b.0[i]
        })
    }

    /// `self < b ? self : b` (so `b` where either is NaN).
    #[inline(always)]
    pub(crate) fn fast_min(self, b: Lane) -> Lane {
        each!(Lane, |i| if self.0[i] < b.0[i] {
            self.0[i]
        } else {
            b.0[i]
        })
    }

    /// Element-wise `f32::max`: a NaN element yields the other operand.
    #[inline(always)]
    pub(crate) fn max(self, b: Lane) -> Lane {
        each!(Lane, |i| self.0[i].max(b.0[i]))
    }

    /// `|self|` (clears the sign bit).
    #[inline(always)]
    pub(crate) fn abs(self) -> Lane {
        from_bits(bits(self) & Ints::splat(i32::MAX))
    }

    /// Rounds toward −∞.
    #[inline(always)]
    pub(crate) fn floor(self) -> Lane {
        each!(Lane, |i| self.0[i].floor())
    }

    /// Square root.
    #[inline(always)]
    pub(crate) fn sqrt(self) -> Lane {
        each!(Lane, |i| self.0[i].sqrt())
    }

    /// `self` with its sign flipped where `s` is negative (sign bit set).
    #[inline(always)]
    pub(crate) fn flip_signs(self, s: Lane) -> Lane {
        from_bits(bits(self) ^ (bits(s) & Ints::splat(i32::MIN)))
    }

    /// Sum of the elements, as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
    #[inline(always)]
    pub(crate) fn reduce_add(self) -> f32 {
        let a = self.0;
        let h: [f32; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
        (h[0] + h[2]) + (h[1] + h[3])
    }

    /// `self == b` mask (false for NaN).
    #[inline(always)]
    pub(crate) fn simd_eq(self, b: Lane) -> Lane {
        each!(Lane, |i| mask_bit(self.0[i] == b.0[i]))
    }
    /// `self != b` mask (true for NaN).
    #[inline(always)]
    pub(crate) fn simd_ne(self, b: Lane) -> Lane {
        each!(Lane, |i| mask_bit(self.0[i] != b.0[i]))
    }
    /// `self < b` mask.
    #[inline(always)]
    pub(crate) fn simd_lt(self, b: Lane) -> Lane {
        each!(Lane, |i| mask_bit(self.0[i] < b.0[i]))
    }
    /// `self > b` mask.
    #[inline(always)]
    pub(crate) fn simd_gt(self, b: Lane) -> Lane {
        each!(Lane, |i| mask_bit(self.0[i] > b.0[i]))
    }
    /// `self >= b` mask.
    #[inline(always)]
    pub(crate) fn simd_ge(self, b: Lane) -> Lane {
        each!(Lane, |i| mask_bit(self.0[i] >= b.0[i]))
    }
}

impl Ints {
    #[inline(always)]
    fn splat(v: i32) -> Ints {
        Ints([v; LANES])
    }
    /// Element-wise conversion to `f32`.
    #[inline(always)]
    fn to_f32(self) -> Lane {
        each!(Lane, |i| self.0[i] as f32)
    }
}

macro_rules! ints_binop {
    ($tr:ident, $f:ident, $e:expr) => {
        impl std::ops::$tr for Ints {
            type Output = Ints;
            #[inline(always)]
            fn $f(self, o: Ints) -> Ints {
                each!(Ints, |i| $e(self.0[i], o.0[i]))
            }
        }
    };
}
ints_binop!(Add, add, i32::wrapping_add);
ints_binop!(Sub, sub, i32::wrapping_sub);
ints_binop!(BitAnd, bitand, |a, b| a & b);
ints_binop!(BitOr, bitor, |a, b| a | b);
ints_binop!(BitXor, bitxor, |a, b| a ^ b);

impl std::ops::Not for Ints {
    type Output = Ints;
    #[inline(always)]
    fn not(self) -> Ints {
        each!(Ints, |i| !self.0[i])
    }
}

impl std::ops::Shl<u32> for Ints {
    type Output = Ints;
    #[inline(always)]
    fn shl(self, s: u32) -> Ints {
        each!(Ints, |i| self.0[i] << s)
    }
}

impl std::ops::Shr<u32> for Ints {
    type Output = Ints;
    /// Arithmetic shift.
    #[inline(always)]
    fn shr(self, s: u32) -> Ints {
        each!(Ints, |i| self.0[i] >> s)
    }
}

/// The bit patterns of a lane.
#[inline(always)]
fn bits(a: Lane) -> Ints {
    each!(Ints, |i| a.0[i].to_bits() as i32)
}

/// The lane with bit patterns `a`.
#[inline(always)]
fn from_bits(a: Ints) -> Lane {
    each!(Lane, |i| f32::from_bits(a.0[i] as u32))
}

/// A lane with every element equal to `v`.
#[inline(always)]
pub(crate) fn splat(v: f32) -> Lane {
    Lane([v; LANES])
}

/// Runs `f` on a lane built from a tail of fewer than [`LANES`] elements (padded with `pad`) and
/// returns the lane's elements.
#[inline(always)]
fn tail_lane(tail: &[f32], pad: f32) -> Lane {
    let mut buf = [pad; LANES];
    buf[..tail.len()].copy_from_slice(tail);
    Lane(buf)
}

/// Called once per iteration of the chunk loops below: keeps LLVM's loop vectorizer from
/// re-vectorising a loop whose body is already vector code. In the AVX-512 variant of
/// [`dispatch`] it otherwise widened such loops across lane positions with gathers
/// (`vgatherqps`), which made batch-norm backward half as fast as the AVX2 variant. The empty
/// `asm!` is opaque to the loop vectorizer but touches no memory, registers or flags, so the lane
/// code itself is compiled as before.
///
/// The maps take **two adjacent lanes per iteration**: the AVX-512 variant compiles the pair as
/// one 16-float register (the AVX2 variant as two 8-float ones), which made the exp-based
/// activations 1.7–1.9x faster there. Every element still goes through the same operations, so
/// results stay bit-identical across variants.
#[inline(always)]
fn one_lane_per_iteration() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: an empty instruction string with no operands reads and writes nothing; the
    // options say so to the compiler (no memory, no stack, flags preserved).
    unsafe {
        std::arch::asm!("", options(nomem, nostack, preserves_flags))
    }
}

/// `y[i] = f(x[i])`.
#[inline(always)]
pub(crate) fn map(x: &[f32], y: &mut [f32], f: impl Fn(Lane) -> Lane) {
    debug_assert_eq!(x.len(), y.len());
    let ((xc, xt), (yc, yt)) = (x.as_chunks::<LANES>(), y.as_chunks_mut::<LANES>());
    let ((xp, xr), (yp, yr)) = (xc.as_chunks::<2>(), yc.as_chunks_mut::<2>());
    for (x, y) in xp.iter().zip(yp) {
        one_lane_per_iteration();
        *y = [f(Lane(x[0])).to_array(), f(Lane(x[1])).to_array()];
    }
    for (x, y) in xr.iter().zip(yr) {
        *y = f(Lane(*x)).to_array();
    }
    if !xt.is_empty() {
        let r = f(tail_lane(xt, 0.0)).to_array();
        yt.copy_from_slice(&r[..xt.len()]);
    }
}

/// `y[i] = f(y[i])`.
#[inline(always)]
pub(crate) fn map_in_place(y: &mut [f32], f: impl Fn(Lane) -> Lane) {
    let (yc, yt) = y.as_chunks_mut::<LANES>();
    let (yp, yr) = yc.as_chunks_mut::<2>();
    for y in yp.iter_mut() {
        one_lane_per_iteration();
        *y = [f(Lane(y[0])).to_array(), f(Lane(y[1])).to_array()];
    }
    for y in yr.iter_mut() {
        *y = f(Lane(*y)).to_array();
    }
    if !yt.is_empty() {
        let r = f(tail_lane(yt, 0.0)).to_array();
        let n = yt.len();
        yt.copy_from_slice(&r[..n]);
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub(crate) fn zip_map(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(Lane, Lane) -> Lane) {
    debug_assert!(a.len() == out.len() && b.len() == out.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let ((ap, ar), (bp, br), (op, or)) = (
        ac.as_chunks::<2>(),
        bc.as_chunks::<2>(),
        oc.as_chunks_mut::<2>(),
    );
    for ((a, b), o) in ap.iter().zip(bp).zip(op) {
        one_lane_per_iteration();
        *o = [
            f(Lane(a[0]), Lane(b[0])).to_array(),
            f(Lane(a[1]), Lane(b[1])).to_array(),
        ];
    }
    for ((a, b), o) in ar.iter().zip(br).zip(or) {
        *o = f(Lane(*a), Lane(*b)).to_array();
    }
    if !at.is_empty() {
        let r = f(tail_lane(at, 0.0), tail_lane(bt, 0.0)).to_array();
        ot.copy_from_slice(&r[..at.len()]);
    }
}

/// [`zip_map`] whose stores bypass the cache (non-temporal stores, on x86-64 when `out` is
/// 16-byte aligned): for an output much larger than the cache, which is then written without
/// first being read in. The same values; a fence at the end orders the stores before whatever
/// follows (a fork-join's signal to the thread that reads them).
#[inline(always)]
pub(crate) fn zip_map_stream(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(Lane, Lane) -> Lane,
) {
    #[cfg(target_arch = "x86_64")]
    if (out.as_ptr() as usize).is_multiple_of(16) {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_sfence, _mm_stream_ps};
        debug_assert!(a.len() == out.len() && b.len() == out.len());
        let (ac, at) = a.as_chunks::<LANES>();
        let (bc, bt) = b.as_chunks::<LANES>();
        let (oc, ot) = out.as_chunks_mut::<LANES>();
        for ((a, b), o) in ac.iter().zip(bc).zip(oc) {
            one_lane_per_iteration();
            let r = f(Lane(*a), Lane(*b)).to_array();
            // SAFETY: SSE is part of x86-64; `o` is eight floats of `out` at a multiple of 32
            // bytes from its 16-byte aligned start, so both halves are 16-byte aligned.
            unsafe {
                _mm_stream_ps(o.as_mut_ptr(), _mm_loadu_ps(r.as_ptr()));
                _mm_stream_ps(o.as_mut_ptr().add(4), _mm_loadu_ps(r.as_ptr().add(4)));
            }
        }
        if !at.is_empty() {
            let r = f(tail_lane(at, 0.0), tail_lane(bt, 0.0)).to_array();
            ot.copy_from_slice(&r[..at.len()]);
        }
        // SAFETY: SSE is part of x86-64; a fence has no operands.
        unsafe { _mm_sfence() };
        return;
    }
    zip_map(a, b, out, f)
}

/// `out[i] = f(a[i], b[i], out[i])`: the form of every backward pass that may accumulate into
/// its gradient output.
#[inline(always)]
pub(crate) fn zip_map_acc(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(Lane, Lane, Lane) -> Lane,
) {
    debug_assert!(a.len() == out.len() && b.len() == out.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let ((ap, ar), (bp, br), (op, or)) = (
        ac.as_chunks::<2>(),
        bc.as_chunks::<2>(),
        oc.as_chunks_mut::<2>(),
    );
    for ((a, b), o) in ap.iter().zip(bp).zip(op) {
        one_lane_per_iteration();
        *o = [
            f(Lane(a[0]), Lane(b[0]), Lane(o[0])).to_array(),
            f(Lane(a[1]), Lane(b[1]), Lane(o[1])).to_array(),
        ];
    }
    for ((a, b), o) in ar.iter().zip(br).zip(or) {
        *o = f(Lane(*a), Lane(*b), Lane(*o)).to_array();
    }
    if !at.is_empty() {
        let r = f(tail_lane(at, 0.0), tail_lane(bt, 0.0), tail_lane(ot, 0.0)).to_array();
        let n = at.len();
        ot.copy_from_slice(&r[..n]);
    }
}

/// `out[i] = f(a[i], b[i], c[i], out[i])`.
#[inline(always)]
pub(crate) fn zip3_map_acc(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    out: &mut [f32],
    f: impl Fn(Lane, Lane, Lane, Lane) -> Lane,
) {
    debug_assert!(a.len() == out.len() && b.len() == out.len() && c.len() == out.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (cc, ct) = c.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let ((ap, ar), (bp, br), (cp, cr), (op, or)) = (
        ac.as_chunks::<2>(),
        bc.as_chunks::<2>(),
        cc.as_chunks::<2>(),
        oc.as_chunks_mut::<2>(),
    );
    for (((a, b), c), o) in ap.iter().zip(bp).zip(cp).zip(op) {
        one_lane_per_iteration();
        *o = [
            f(Lane(a[0]), Lane(b[0]), Lane(c[0]), Lane(o[0])).to_array(),
            f(Lane(a[1]), Lane(b[1]), Lane(c[1]), Lane(o[1])).to_array(),
        ];
    }
    for (((a, b), c), o) in ar.iter().zip(br).zip(cr).zip(or) {
        *o = f(Lane(*a), Lane(*b), Lane(*c), Lane(*o)).to_array();
    }
    if !at.is_empty() {
        let r = f(
            tail_lane(at, 0.0),
            tail_lane(bt, 0.0),
            tail_lane(ct, 0.0),
            tail_lane(ot, 0.0),
        )
        .to_array();
        let n = at.len();
        ot.copy_from_slice(&r[..n]);
    }
}

/// A fused in-place update over a gradient `g` and `K` state slices (parameters first): for each
/// lane position, `f(g, &mut [s0, s1, …])` updates the states' lanes in place. The tail is padded
/// with zeros, computed the same way, and only its real elements written back.
#[inline(always)]
pub(crate) fn update<const K: usize>(
    g: &[f32],
    st: [&mut [f32]; K],
    f: impl Fn(Lane, &mut [Lane; K]),
) {
    debug_assert!(st.iter().all(|s| s.len() == g.len()));
    let (gc, gt) = g.as_chunks::<LANES>();
    let mut parts = st.map(|s| s.as_chunks_mut::<LANES>());
    for (j, gv) in gc.iter().enumerate() {
        one_lane_per_iteration();
        let mut lanes: [Lane; K] = std::array::from_fn(|k| Lane(parts[k].0[j]));
        f(Lane(*gv), &mut lanes);
        for (k, l) in lanes.iter().enumerate() {
            parts[k].0[j] = l.to_array();
        }
    }
    if !gt.is_empty() {
        let mut lanes: [Lane; K] = std::array::from_fn(|k| tail_lane(parts[k].1, 0.0));
        f(tail_lane(gt, 0.0), &mut lanes);
        for (k, l) in lanes.iter().enumerate() {
            let t = &mut parts[k].1;
            let len = t.len();
            t.copy_from_slice(&l.to_array()[..len]);
        }
    }
}

/// Folds `x` with `f` into four independent lane accumulators (tail padded with `neutral`), then
/// combines them as `(a0 ∘ a1) ∘ (a2 ∘ a3)`. The order depends only on `x.len()`.
///
/// The accumulators are named variables, not an indexed array: an array indexed by the loop
/// counter would live in memory.
#[inline(always)]
fn fold4(x: &[f32], neutral: f32, f: impl Fn(Lane, Lane) -> Lane) -> Lane {
    let (xc, xt) = x.as_chunks::<LANES>();
    let n = splat(neutral);
    let (mut a0, mut a1, mut a2, mut a3) = (n, n, n, n);
    let (quads, rest) = xc.as_chunks::<4>();
    for q in quads {
        a0 = f(a0, Lane(q[0]));
        a1 = f(a1, Lane(q[1]));
        a2 = f(a2, Lane(q[2]));
        a3 = f(a3, Lane(q[3]));
    }
    if let Some(c) = rest.first() {
        a0 = f(a0, Lane(*c));
    }
    if let Some(c) = rest.get(1) {
        a1 = f(a1, Lane(*c));
    }
    if let Some(c) = rest.get(2) {
        a2 = f(a2, Lane(*c));
    }
    if !xt.is_empty() {
        a3 = f(a3, tail_lane(xt, neutral));
    }
    f(f(a0, a1), f(a2, a3))
}

/// Two-accumulator fold over `chunks` lane positions: `step(acc, j)` folds position `j` into an
/// accumulator (even positions into the first, odd into the second), `tail` folds the padded
/// tail into the second; returns the sum of both accumulators' elements.
#[inline(always)]
fn fold2(
    chunks: usize,
    step: impl Fn(Lane, usize) -> Lane,
    tail: impl FnOnce(Lane) -> Lane,
) -> f32 {
    let (mut a0, mut a1) = (Lane::ZERO, Lane::ZERO);
    let mut j = 0;
    while j + 1 < chunks {
        a0 = step(a0, j);
        a1 = step(a1, j + 1);
        j += 2;
    }
    if j < chunks {
        a0 = step(a0, j);
    }
    (a0 + tail(a1)).reduce_add()
}

/// `Σ x[i]` in `f32`, in an order that depends only on `x.len()`.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    fold4(
        x,
        0.0,
        #[inline(always)]
        |a, b| a + b,
    )
    .reduce_add()
}

/// `Σ (x[i] - m)²`.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    let mv = splat(m);
    let (xc, xt) = x.as_chunks::<LANES>();
    let sq = inlined(
        #[inline(always)]
        |acc: Lane, v: Lane| {
            let d = v - mv;
            d.mul_add(d, acc)
        },
    );
    fold2(
        xc.len(),
        #[inline(always)]
        |acc, j| sq(acc, Lane(xc[j])),
        #[inline(always)]
        |acc| {
            if xt.is_empty() {
                acc
            } else {
                sq(acc, tail_lane(xt, m))
            }
        },
    )
}

/// `Σ a[i] * b[i]`.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    fold2(
        ac.len().min(bc.len()),
        #[inline(always)]
        |acc, j| Lane(ac[j]).mul_add(Lane(bc[j]), acc),
        #[inline(always)]
        |acc| {
            if at.is_empty() {
                acc
            } else {
                tail_lane(at, 0.0).mul_add(tail_lane(bt, 0.0), acc)
            }
        },
    )
}

/// `Σ f(a[i], b[i])` with two lane accumulators; the tail is padded with zeros, so `f(0, 0)` must
/// be 0.
#[inline(always)]
pub(crate) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(Lane, Lane) -> Lane) -> f32 {
    sum_zip_padded(a, b, (0.0, 0.0), f)
}

/// [`sum_zip`] with the tail padded by `pad`; `f(pad.0, pad.1)` must be 0.
#[inline(always)]
pub(crate) fn sum_zip_padded(
    a: &[f32],
    b: &[f32],
    pad: (f32, f32),
    f: impl Fn(Lane, Lane) -> Lane,
) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    fold2(
        ac.len().min(bc.len()),
        #[inline(always)]
        |acc, j| acc + f(Lane(ac[j]), Lane(bc[j])),
        #[inline(always)]
        |acc| {
            if at.is_empty() {
                acc
            } else {
                acc + f(tail_lane(at, pad.0), tail_lane(bt, pad.1))
            }
        },
    )
}

/// `Σ f(a[i], b[i], c[i])`; the tail is padded with zeros, so `f(0, 0, 0)` must be 0.
#[inline(always)]
pub(crate) fn sum_zip3(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(Lane, Lane, Lane) -> Lane,
) -> f32 {
    debug_assert!(a.len() == b.len() && a.len() == c.len());
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let (cc, ct) = c.as_chunks::<LANES>();
    fold2(
        ac.len().min(bc.len()).min(cc.len()),
        #[inline(always)]
        |acc, j| acc + f(Lane(ac[j]), Lane(bc[j]), Lane(cc[j])),
        #[inline(always)]
        |acc| {
            if at.is_empty() {
                acc
            } else {
                acc + f(tail_lane(at, 0.0), tail_lane(bt, 0.0), tail_lane(ct, 0.0))
            }
        },
    )
}

/// `Σ f(x[i])`; the tail is padded with `pad`, and `f(pad)` must be 0.
#[inline(always)]
pub(crate) fn sum_map(x: &[f32], pad: f32, f: impl Fn(Lane) -> Lane) -> f32 {
    let (xc, xt) = x.as_chunks::<LANES>();
    fold2(
        xc.len(),
        #[inline(always)]
        |acc, j| acc + f(Lane(xc[j])),
        #[inline(always)]
        |acc| {
            if xt.is_empty() {
                acc
            } else {
                acc + f(tail_lane(xt, pad))
            }
        },
    )
}

/// `max x[i]` ignoring NaN (`-inf` for an empty slice). Callers that must propagate NaN get it
/// from the arithmetic that follows (`exp(NaN - max)` is NaN).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let m = fold4(
        x,
        f32::NEG_INFINITY,
        #[inline(always)]
        |a, b| a.fast_max(b),
    )
    .to_array();
    m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `y[i] = f(x[i], y[i])`.
#[inline(always)]
pub(crate) fn map_in_place_zip(x: &[f32], y: &mut [f32], f: impl Fn(Lane, Lane) -> Lane) {
    debug_assert_eq!(x.len(), y.len());
    let (xc, xt) = x.as_chunks::<LANES>();
    let (yc, yt) = y.as_chunks_mut::<LANES>();
    let ((xp, xr), (yp, yr)) = (xc.as_chunks::<2>(), yc.as_chunks_mut::<2>());
    for (x, y) in xp.iter().zip(yp) {
        one_lane_per_iteration();
        *y = [
            f(Lane(x[0]), Lane(y[0])).to_array(),
            f(Lane(x[1]), Lane(y[1])).to_array(),
        ];
    }
    for (x, y) in xr.iter().zip(yr) {
        *y = f(Lane(*x), Lane(*y)).to_array();
    }
    if !xt.is_empty() {
        let r = f(tail_lane(xt, 0.0), tail_lane(yt, 0.0)).to_array();
        let n = xt.len();
        yt.copy_from_slice(&r[..n]);
    }
}

/// Lane-wise `if m { a } else { b }` for a comparison mask `m`.
#[inline(always)]
pub(crate) fn select(m: Lane, a: Lane, b: Lane) -> Lane {
    (m & a) | (!m & b)
}

/// Comparison masks (all-ones lanes where true). NaN compares false.
#[inline(always)]
pub(crate) fn lt(a: Lane, b: Lane) -> Lane {
    a.simd_lt(b)
}
/// `a > b` mask.
#[inline(always)]
pub(crate) fn gt(a: Lane, b: Lane) -> Lane {
    a.simd_gt(b)
}
/// `a >= b` mask.
#[inline(always)]
pub(crate) fn ge(a: Lane, b: Lane) -> Lane {
    a.simd_ge(b)
}
/// `a <= b` mask.
#[inline(always)]
pub(crate) fn le(a: Lane, b: Lane) -> Lane {
    b.simd_ge(a)
}
/// NaN mask.
#[inline(always)]
pub(crate) fn is_nan(a: Lane) -> Lane {
    a.simd_ne(a)
}

/// Max pooling of up to eight outputs at once. Lane `l` covers the window whose first element is
/// `x[base + l * step]`, with elements at `offs` from it in row-major order. Returns each lane's
/// maximum and its index into `x`: ties go to the first offset, a NaN wins (the last NaN, as
/// PyTorch). Lanes from `lanes` on repeat lane `lanes - 1` (`1 <= lanes <= 8`).
///
/// Comparisons are lane blends, not branches: on real data their outcome is random, and a
/// mispredicted branch per element costs more than the rest of the loop.
#[inline(always)]
pub(crate) fn window_max(
    x: &[f32],
    base: usize,
    step: usize,
    lanes: usize,
    offs: &[usize],
) -> ([f32; LANES], [i32; LANES]) {
    let starts: [usize; LANES] = std::array::from_fn(|l| base + l.min(lanes - 1) * step);
    let start_idx = Ints(starts.map(|s| s as i32));
    let mut best = splat(f32::NEG_INFINITY);
    let mut idx = start_idx + Ints::splat(offs.first().map_or(0, |&o| o as i32));
    for &off in offs {
        let v = Lane(std::array::from_fn(|l| x[starts[l] + off]));
        let take = gt(v, best) | is_nan(v);
        best = select(take, v, best);
        let take = bits(take);
        idx = (take & (start_idx + Ints::splat(off as i32))) | (!take & idx);
    }
    (best.to_array(), idx.0)
}

/// [`window_max`] for eight 2x2 windows at stride 2 along the row: lane `l`'s window is
/// `r0[2l], r0[2l + 1], r1[2l], r1[2l + 1]` (in that order), where `r0` starts at index `first`
/// of `x` and `r1` one row (`in_w`) below it. The same comparisons in the same order as
/// `window_max(x, first, 2, 8, &[0, 1, in_w, in_w + 1])`, one window at a time with the offsets
/// known at compile time (faster here than the lane blends, whose masks the compiler moves
/// between mask and vector registers).
#[inline(always)]
pub(crate) fn window_max_2x2(
    r0: &[f32; 2 * LANES],
    r1: &[f32; 2 * LANES],
    first: i32,
    in_w: i32,
) -> ([f32; LANES], [i32; LANES]) {
    let mut best = [0.0f32; LANES];
    let mut idx = [0i32; LANES];
    for (l, (p0, p1)) in r0
        .as_chunks::<2>()
        .0
        .iter()
        .zip(r1.as_chunks::<2>().0)
        .enumerate()
    {
        let cands = [(p0[0], 0), (p0[1], 1), (p1[0], in_w), (p1[1], in_w + 1)];
        let (mut b, mut o) = (f32::NEG_INFINITY, 0);
        for (v, off) in cands {
            let take = v > b || v.is_nan();
            b = if take { v } else { b };
            o = if take { off } else { o };
        }
        best[l] = b;
        idx[l] = first + 2 * l as i32 + o;
    }
    (best, idx)
}

/// Lane `r` = `x[(first + min(r, rows − 1))·stride + col]`: one column of up to eight rows of a
/// row-major matrix (rows past `rows` repeat the last one).
#[inline(always)]
pub(crate) fn column(x: &[f32], first: usize, rows: usize, stride: usize, col: usize) -> Lane {
    Lane(std::array::from_fn(|r| {
        x[(first + r.min(rows - 1)) * stride + col]
    }))
}

/// Lane-wise maximum (which of the two a NaN lane yields is unspecified).
#[inline(always)]
pub(crate) fn max_lanes(a: Lane, b: Lane) -> Lane {
    a.fast_max(b)
}

// ----------------------------------------------------------------------------- vector math
//
// Polynomials from Cephes (S. L. Moshier) single-precision routines, evaluated lane-wise; the
// reference kernels in `crate::reference` use `f64` std functions, and the tests compare.
// Published coefficients are kept digit for digit (hence `excessive_precision` is allowed).

/// `2^n` for integer lanes `n` in `[-126, 127]`.
#[inline(always)]
fn pow2i(n: Ints) -> Lane {
    from_bits((n + Ints::splat(127)) << 23)
}

/// `e^x`, relative error ≤ 2 ulp on the normal range; `+inf` above ~88.72, gradual underflow to
/// `0` below ~-87.3 (exactly `0` from about -104), NaN propagates.
#[inline(always)]
pub(crate) fn exp(x: Lane) -> Lane {
    exp_split(x, None)
}

/// `e^(hi + lo)` for a small `lo`, without rounding `hi + lo` to `f32` first.
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn exp_split(x: Lane, lo: Option<Lane>) -> Lane {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2, high part (exact in f32)
    const C2: f32 = -2.121_944_4e-4; // ln 2 - C1
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.fast_max(splat(-104.0)).fast_min(splat(88.8));
    // n = round((hi + lo)·log2 e), r = hi − n·ln 2 + lo keeps |r| <= ln2/2 for the polynomial.
    let xn = match lo {
        Some(lo) => xc + lo,
        None => xc,
    };
    let t = xn.mul_add(splat(LOG2E), splat(MAGIC));
    let n = t - splat(MAGIC);
    let r = n.mul_neg_add(splat(C1), xc);
    let mut r = n.mul_neg_add(splat(C2), r);
    if let Some(lo) = lo {
        r += lo;
    }
    let mut p = splat(1.987_569_1e-4);
    p = p.mul_add(r, splat(1.398_199_9e-3));
    p = p.mul_add(r, splat(8.333_452e-3));
    p = p.mul_add(r, splat(4.166_579_6e-2));
    p = p.mul_add(r, splat(1.666_666_5e-1));
    p = p.mul_add(r, splat(5.000_000_1e-1));
    let p = p.mul_add(r * r, r) + splat(1.0);
    // Integer n sits in the low mantissa bits of t. Scale in two steps so n in [-150, 128]
    // never leaves the normal exponent range of either factor.
    let ni = bits(t) - Ints::splat(0x4B40_0000);
    let n1 = ni >> 1;
    let y = p * pow2i(n1) * pow2i(ni - n1);
    select(is_nan(x), x, y)
}

/// `e^x - 1`, accurate near 0.
#[inline(always)]
pub(crate) fn expm1(x: Lane) -> Lane {
    // Taylor series to x^8/8! on |x| < 0.5 (truncation < 3e-9 relative), exp(x) - 1 elsewhere.
    let mut p = splat(1.0 / 40320.0);
    for c in [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ] {
        p = p.mul_add(x, splat(c));
    }
    let small = p.mul_add(x * x, x);
    let big = exp(x) - splat(1.0);
    select(lt(x.abs(), splat(0.5)), small, big)
}

/// Natural logarithm for `x >= 0` (subnormals included): `ln 0 = -inf`, `ln inf = inf`,
/// negative or NaN input gives NaN.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn ln(x: Lane) -> Lane {
    const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let sub = lt(x, splat(f32::MIN_POSITIVE));
    let xs = select(sub, x * splat(8_388_608.0), x); // 2^23
    let b = bits(xs);
    // Exponent e and mantissa m in [0.5, 1).
    let e = (b >> 23) - Ints::splat(126);
    let m = from_bits((b & Ints::splat(0x007F_FFFF)) | Ints::splat(0x3F00_0000));
    let mut e = e.to_f32() - select(sub, splat(23.0), splat(0.0));
    let small = lt(m, splat(SQRTHF));
    e -= select(small, splat(1.0), splat(0.0));
    let m = select(small, m + m, m) - splat(1.0);
    let z = m * m;
    let mut p = splat(7.037_683_6e-2);
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        p = p.mul_add(m, splat(c));
    }
    let mut y = m * z * p;
    y = e.mul_add(splat(-2.121_944_4e-4), y);
    y = z.mul_neg_add(splat(0.5), y);
    let r = m + y;
    let r = e.mul_add(splat(0.693_359_4), r);
    // Special values.
    let r = select(x.simd_eq(splat(0.0)), splat(f32::NEG_INFINITY), r);
    let r = select(x.simd_eq(splat(f32::INFINITY)), x, r);
    select(lt(x, splat(0.0)) | is_nan(x), splat(f32::NAN), r)
}

/// `ln(1 + u)` for `u >= 0`, accurate for small `u`.
#[inline(always)]
pub(crate) fn ln_1p(u: Lane) -> Lane {
    let w = u + splat(1.0);
    // ln(w) + (u - (w - 1)) / w corrects the rounding of 1 + u.
    let r = ln(w) + (u - (w - splat(1.0))) / w;
    let r = select(w.simd_eq(splat(1.0)), u, r);
    select(w.simd_eq(splat(f32::INFINITY)), w, r)
}

/// Hyperbolic tangent.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn tanh(x: Lane) -> Lane {
    let a = x.abs();
    let z = x * x;
    let mut p = splat(-5.704_988_7e-3);
    for c in [
        2.063_908_9e-2,
        -5.373_971_6e-2,
        1.333_144_2e-1,
        -3.333_328_2e-1,
    ] {
        p = p.mul_add(z, splat(c));
    }
    let small = (p * z).mul_add(x, x);
    let big = splat(1.0) - splat(2.0) / (exp(a + a) + splat(1.0));
    let big = big.flip_signs(x);
    select(lt(a, splat(0.625)), small, big)
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: Lane) -> Lane {
    splat(1.0) / (splat(1.0) + exp(-x))
}

/// Complementary error function (Numerical Recipes' Chebyshev fit `erfcc`, fractional error
/// < 1.2e-7 in exact arithmetic); relative error below 5e-7 in `f32`.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn erfc(x: Lane) -> Lane {
    let z = x.abs();
    let t = splat(1.0) / z.mul_add(splat(0.5), splat(1.0));
    let mut p = splat(0.170_872_77);
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = p.mul_add(t, splat(c));
    }
    // exp(−z² + p) with −z² split as hi + lo: zh keeps 8 fraction bits, so for z < 16 (beyond
    // which erfc underflows) zh² is exact in f32 and only the small lo term is rounded.
    let zh = (z * splat(256.0)).floor() * splat(1.0 / 256.0);
    let hi = -(zh * zh);
    let lo = -((z - zh) * (z + zh));
    let r = t * exp_split(hi, Some(lo + p));
    let r = select(z.simd_eq(splat(f32::INFINITY)), splat(0.0), r);
    select(ge(x, splat(0.0)), r, splat(2.0) - r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks `f` against the `f64` function `g` on `xs` (the value rounded to `f32`).
    pub(crate) fn check(
        f: impl Fn(Lane) -> Lane,
        g: impl Fn(f64) -> f64,
        xs: &[f32],
        rtol: f64,
        atol: f64,
    ) {
        for c in xs.chunks(LANES) {
            let got = f(tail_lane(c, 0.0)).to_array();
            for (i, &x) in c.iter().enumerate() {
                // Compare with the f64 value rounded to f32 (overflow to inf included).
                let want = g(x as f64) as f32 as f64;
                let got = got[i] as f64;
                if want.is_nan() {
                    assert!(got.is_nan(), "x={x}: got {got}, want NaN");
                } else if want.is_infinite() {
                    assert_eq!(got, want, "x={x}");
                } else {
                    assert!(
                        (got - want).abs() <= atol + rtol * want.abs(),
                        "x={x}: got {got}, want {want}"
                    );
                }
            }
        }
    }

    /// `n + 1` evenly spaced values from `lo` to `hi`.
    pub(crate) fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n)
            .map(|i| lo + (hi - lo) * i as f32 / n as f32)
            .collect()
    }

    #[test]
    fn exp_matches_std_over_range_and_specials() {
        let mut xs = grid(-87.0, 88.5, 20_000);
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            89.0,
            -200.0,
        ]);
        check(exp, f64::exp, &xs, 3e-7, 0.0);
        // Gradual underflow: absolute error below the smallest normal.
        check(exp, f64::exp, &grid(-104.0, -87.0, 1000), 0.0, 1.2e-38);
    }

    #[test]
    fn expm1_is_accurate_near_zero() {
        let mut xs = grid(-20.0, 20.0, 20_000);
        xs.extend([1e-30, -1e-30, 1e-7, -3e-5, 0.49, 0.51, -0.5]);
        check(expm1, f64::exp_m1, &xs, 4e-7, 1e-45);
    }

    #[test]
    fn ln_and_ln_1p_match_std() {
        let mut xs: Vec<f32> = grid(-30.0, 30.0, 10_000)
            .into_iter()
            .map(|e| e.exp())
            .collect();
        xs.extend([1e-40, f32::MIN_POSITIVE, f32::MAX, 1.0, 2.0]);
        check(ln, f64::ln, &xs, 2e-7, 1e-7);
        check(
            ln,
            |x| {
                if x == 0.0 {
                    f64::NEG_INFINITY
                } else {
                    f64::NAN
                }
            },
            &[0.0, -1.0, f32::NAN],
            0.0,
            0.0,
        );
        check(ln_1p, f64::ln_1p, &xs, 3e-7, 0.0);
    }

    #[test]
    fn tanh_sigmoid_erfc_match_f64() {
        let mut xs = grid(-12.0, 12.0, 20_000);
        xs.extend([
            1e-20,
            -1e-20,
            0.624,
            0.626,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        check(tanh, f64::tanh, &xs, 3e-7, 1e-45);
        check(sigmoid, |x| 1.0 / (1.0 + (-x).exp()), &xs, 5e-7, 0.0);
    }

    #[test]
    fn reductions_cover_every_tail_length() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 65] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((sum(&x) as f64 - s).abs() < 1e-5);
            assert!((dot(&x, &y) as f64 - d).abs() < 1e-5);
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m);
            let mean = if n > 0 { s / n as f64 } else { 0.0 };
            let v: f64 = x.iter().map(|&a| (a as f64 - mean).powi(2)).sum();
            assert!((sum_sq_dev(&x, mean as f32) as f64 - v).abs() < 1e-5);
        }
    }
}
