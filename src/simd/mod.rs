//! The lane type, lane helpers, reductions and vector math: the only module that decides how
//! element-wise code becomes SIMD instructions. `lane.rs`: [`Lane`] and its operations;
//! `iter.rs`: slices as lanes (maps, updates, reductions, window scans); `math.rs`: `exp`, `ln`,
//! `tanh` and the rest on lanes. The instructions themselves (the non-temporal stores) live in
//! `arch`, so this module holds no `unsafe` code.
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

pub(crate) mod iter;
pub(crate) mod lane;
pub(crate) mod math;

pub(crate) use crate::arch::{dispatch, inlined};
pub(crate) use iter::{
    add_into, column, copy, dot, map, map_in_place, map_in_place_zip, max, sum, sum_map,
    sum_sq_dev, sum_zip, sum_zip_padded, sum_zip3, update, window_max, window_max_2x2, zip_map,
    zip_map_acc, zip_map_stream, zip3_map_acc,
};
pub(crate) use lane::{LANES, Lane, gt, lt, max_lanes, select, splat};
pub(crate) use math::{erfc, exp, expm1, ln, ln_1p, sigmoid, tanh};
