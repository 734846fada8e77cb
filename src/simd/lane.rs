//! The lane: eight `f32` (and eight `i32`), operated on element by element, with the comparisons
//! and blends that replace branches in lane code.

use std::ops::{Add, AddAssign, BitAnd, BitOr, Div, Mul, MulAssign, Neg, Not, Sub, SubAssign};

/// Elements per lane.
pub(crate) const LANES: usize = 8;

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
    pub(super) fn splat(v: i32) -> Ints {
        Ints([v; LANES])
    }
    /// Element-wise conversion to `f32`.
    #[inline(always)]
    pub(super) fn to_f32(self) -> Lane {
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
pub(super) fn bits(a: Lane) -> Ints {
    each!(Ints, |i| a.0[i].to_bits() as i32)
}

/// The lane with bit patterns `a`.
#[inline(always)]
pub(super) fn from_bits(a: Ints) -> Lane {
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
pub(super) fn tail_lane(tail: &[f32], pad: f32) -> Lane {
    let mut buf = [pad; LANES];
    buf[..tail.len()].copy_from_slice(tail);
    Lane(buf)
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

/// Lane-wise maximum (which of the two a NaN lane yields is unspecified).
#[inline(always)]
pub(crate) fn max_lanes(a: Lane, b: Lane) -> Lane {
    a.fast_max(b)
}
