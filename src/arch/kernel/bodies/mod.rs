//! The micro-kernel bodies, generic over the register type; `micro_kernels!` instantiates them per
//! instruction set.

pub(crate) mod depthwise;
pub(crate) mod pool;
mod shared;
pub(crate) mod tiles;
