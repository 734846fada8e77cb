//! The instruction sets: which one this CPU has (detected once), the limit that tests and
//! comparisons put on it, and running code compiled for the chosen one. Every intrinsic of the
//! crate lives below this module (`x86_64/avx2.rs`: the AVX2/FMA micro-kernels); the rest of the
//! crate asks [`active`] and never a CPU feature of its own.
//!
//! **Adding an instruction set**: a variant of [`Isa`] with its detection line in
//! [`Isa::detected`], a file of micro-kernels beside `x86_64/avx2.rs` (or `aarch64/neon.rs`), the
//! arm of `dispatch` that compiles lane code for it, and the kernels' selection on [`active`].
//!
//! Kernels for AVX-512 do not exist yet ([`WIDEST_IMPLEMENTED`]): on an AVX-512 CPU
//! [`Isa::detected`] says so, and [`active`] is AVX2/FMA (which every AVX-512 CPU can run).

#![allow(unsafe_code)]

pub(crate) mod x86_64;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set cnnkit's kernels can be compiled for, ordered from narrowest to widest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// No SIMD beyond the build's baseline: `matrixmultiply` GEMM, materialised im2col, lane code
    /// compiled for the baseline (SSE2 on x86-64).
    Portable,
    /// x86-64 AVX2 with FMA: cnnkit's packed GEMM and direct-convolution micro-kernels, lane code
    /// compiled for 256-bit registers.
    Avx2Fma,
    /// x86-64 AVX-512F (with AVX2 and FMA, which every such CPU has).
    Avx512,
}

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512];

    /// The widest instruction set this CPU supports (detected once).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                if avx2 && is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if avx2 {
                    return Isa::Avx2Fma;
                }
            }
            Isa::Portable
        })
    }

    /// A short name: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = crate::Error;
    /// `portable`, `avx2` or `avx512`.
    fn from_str(s: &str) -> crate::Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim())
            .ok_or_else(|| {
                crate::Error::invalid(
                    "Isa::from_str",
                    "isa",
                    format!("'{s}': use portable, avx2 or avx512"),
                )
            })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The limit set by [`limit`], as an index into [`Isa::ALL`] (`u8::MAX`: none).
static LIMIT: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the instruction set the kernels use at `isa` (`None`: no cap), process-wide: for tests
/// that cover every path on one machine, and for side-by-side comparisons. A cap above what the
/// CPU has changes nothing. GEMM and convolution results differ between instruction sets in the
/// last bits; element-wise results are the same bits on all of them.
pub fn limit(isa: Option<Isa>) {
    let v = isa.map_or(u8::MAX, |i| {
        Isa::ALL.iter().position(|&a| a == i).unwrap_or(0) as u8
    });
    LIMIT.store(v, Ordering::Relaxed);
}

/// The widest instruction set cnnkit has kernels for.
pub const WIDEST_IMPLEMENTED: Isa = Isa::Avx2Fma;

/// The instruction set the kernels use now: the CPU's, capped by [`limit`] and by
/// [`WIDEST_IMPLEMENTED`].
#[inline]
pub fn active() -> Isa {
    let cpu = Isa::detected().min(WIDEST_IMPLEMENTED);
    match Isa::ALL.get(LIMIT.load(Ordering::Relaxed) as usize) {
        Some(&cap) if cap < cpu => cap,
        _ => cpu,
    }
}

/// Whether the AVX2/FMA kernels run (the CPU has them and no limit below them is set).
#[inline]
pub(crate) fn avx2_fma() -> bool {
    active() >= Isa::Avx2Fma
}

/// Runs `f` compiled for AVX2 + FMA when [`active`] allows them, otherwise compiled for the
/// build's baseline.
///
/// Pass an `#[inline(always)]` closure that contains the lane code: only code inlined into the
/// variants is compiled for them. (Lane code reached outside `dispatch` still computes the same
/// results, but on x86-64 its `mul_add` becomes a software call.)
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: `avx2_fma` is true only when the CPU reports AVX2 and FMA
        // (`is_x86_feature_detected!` in `Isa::detected`), the features `with_avx2_fma` is
        // compiled for.
        return unsafe { with_avx2_fma(f) };
    }
    baseline(f)
}

/// The AVX2 + FMA variant of [`dispatch`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The baseline variant of [`dispatch`] (kept out of line so the variants stay separate).
#[inline(never)]
fn baseline<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Returns `f`: lets a named lane closure carry `#[inline(always)]`, so that it is compiled into
/// every variant of [`dispatch`] rather than once, out of line, for the baseline.
#[inline(always)]
pub(crate) fn inlined<F>(f: F) -> F {
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_caps_the_detected_instruction_set() {
        let cpu = Isa::detected().min(WIDEST_IMPLEMENTED);
        for cap in Isa::ALL {
            limit(Some(cap));
            assert_eq!(active(), cap.min(cpu));
        }
        limit(None);
        assert_eq!(active(), cpu);
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        assert!("sse9".parse::<Isa>().is_err());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            cpu >= Isa::Avx2Fma,
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        );
    }
}
