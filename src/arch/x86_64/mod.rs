//! x86-64 micro-kernels, one file per instruction set.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod bf16;
