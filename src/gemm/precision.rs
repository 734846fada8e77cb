//! The precision of the products: f32, or bf16 operands with f32 sums, as
//! `torch.autocast("cpu", torch.bfloat16)` runs convolutions and linear layers.
//!
//! Under [`Precision::Bf16`] the packed products (dense layers, and the convolution passes the
//! convolution planner sends to im2col + GEMM under it) round both operands to bf16 (round to
//! nearest even) as they pack them and sum the products in f32: on CPUs with AVX512-BF16
//! ([`crate::arch::Isa::Avx512Bf16`]) with `vdpbf16ps`, two products per instruction lane;
//! elsewhere the rounded operands go through the f32 tiles (the same products, summed in
//! another order, and about as slow as f32). Weights, activations, gradients and optimiser state
//! stay f32 in memory (f32 master weights).
//!
//! Where bf16 measured slower than f32, cnnkit keeps f32 (more accurate, never less): a
//! convolution's forward pass always runs in bf16, its input and weight gradients from 128 output
//! channels per group, for 1x1 layers and where the direct path cannot run them; with fewer output
//! channels they stay on the direct f32 path, and Winograd's F(4×4) picks stay Winograd (in f32).
//! Also f32: depthwise convolutions, products of at most two rows (one sample of a dense layer),
//! the portable path (`matrixmultiply`), normalisations, pooling and the losses.

pub use crate::arch::bf16::round_bf16;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// The number format of the operands of products ([`set_precision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands and sums: the default, and what every accuracy test of the crate assumes.
    #[default]
    F32,
    /// bf16 operands (8 significant bits), f32 sums and f32 results, opt-in.
    Bf16,
}

/// The environment variable that gives [`precision`]'s setting before [`set_precision`] is
/// first called: `f32` or `bf16` (any case); another value is ignored (`F32`).
pub const PRECISION_ENV: &str = "CNNKIT_PRECISION";

const UNREAD: u8 = u8::MAX;
/// The setting, or [`UNREAD`] before the first read of [`PRECISION_ENV`].
static MODE: AtomicU8 = AtomicU8::new(UNREAD);

impl std::str::FromStr for Precision {
    type Err = Error;

    /// `f32` or `bf16`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::invalid(
                "precision",
                "setting",
                format!("'{s}' is not one of f32, bf16"),
            )),
        }
    }
}

/// Sets the precision of every later product in this process (as [`crate::arch::limit`] sets
/// the instruction set). A call already running finishes in the precision it started with,
/// or, if its scratch was planned for the other one, returns an error.
///
/// ```
/// use cnnkit::gemm::{Precision, precision, set_precision};
/// set_precision(Precision::Bf16);
/// assert_eq!(precision(), Precision::Bf16);
/// set_precision(Precision::F32);
/// ```
pub fn set_precision(p: Precision) {
    MODE.store(p as u8, Ordering::Relaxed);
}

/// The setting of [`set_precision`] ([`Precision::F32`] unless it or [`PRECISION_ENV`] said
/// otherwise).
#[inline]
pub fn precision() -> Precision {
    let mut m = MODE.load(Ordering::Relaxed);
    if m == UNREAD {
        let env = std::env::var(PRECISION_ENV).ok();
        let p: Precision = env.and_then(|v| v.parse().ok()).unwrap_or_default();
        // A concurrent `set_precision` wins.
        let _ = MODE.compare_exchange(UNREAD, p as u8, Ordering::Relaxed, Ordering::Relaxed);
        m = MODE.load(Ordering::Relaxed);
    }
    if m == Precision::Bf16 as u8 {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// Whether products round their operands to bf16 now.
#[inline]
pub(crate) fn bf16() -> bool {
    precision() == Precision::Bf16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_its_text_form() {
        assert_eq!(" BF16 ".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("fp16".parse::<Precision>().is_err());
    }
}
