//! The instruction sets: which one this CPU has (detected once), the limit that tests and
//! comparisons put on it, and running code compiled for the chosen one. Every intrinsic of the
//! crate lives below this module; the rest of the crate asks [`active`] and never a CPU feature of
//! its own.
//!
//! - `kernel/`: the micro-kernel trait (tile sizes; GEMM tile, convolution tile, weight-gradient
//!   tile, depthwise row, 2x2 pool) with its bounds checks (`mod.rs`), the macro that instantiates
//!   it per instruction set (`instantiate.rs`), and the bodies, written once for any register
//!   type (`bodies/`).
//! - `stream.rs`: the cache-bypassing stores and the empty barrier the element-wise maps of
//!   `simd` use.
//! - `x86_64/avx2.rs`, `x86_64/avx512.rs`: one file per instruction set — its register type, its
//!   kernel token and its tile shape.
//! - Here: [`Isa`], its detection, [`limit`] and [`active`], and the *kernel table*, from which
//!   kernel selection (`with_kernel!`), the element-wise variants of `dispatch` and the
//!   per-instruction-set test harness (`tests.rs`) are expanded.
//!
//! **Adding an instruction set** (NEON on aarch64, say): one new file beside `x86_64/avx2.rs`
//! (`aarch64/neon.rs`: a `kernel::Vector`, a token type, one `micro_kernels!` line), one detection
//! line in [`Isa::detected`] (with its variant of [`Isa`]), and one line in `kernel_table!` —
//! which is also the test line: the harness runs every kernel family on each table entry the CPU
//! supports, and fails when the CPU reports an instruction set it did not run.

#![allow(unsafe_code)]

pub mod bf16;
pub mod isa;
pub(crate) mod kernel;
pub(crate) mod stream;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

pub use bf16::round_bf16;
pub use isa::{Isa, WIDEST_IMPLEMENTED, active, limit};

/// Whether cnnkit's own micro-kernels run (some instruction set beyond the baseline is active):
/// the packed GEMM, direct and depthwise convolution; otherwise `matrixmultiply` and im2col.
#[inline]
pub(crate) fn micro_kernels() -> bool {
    active() > Isa::Portable
}

/// The instruction sets that have micro-kernels, widest first: the [`Isa`] variant, the token
/// type of its kernels (implementing [`kernel::MicroKernel`]), and the target features its code
/// is compiled for (exactly what [`Isa::detected`] checks before reporting it). Kernel selection
/// ([`with_kernel!`]), the element-wise variants ([`dispatch`]) and the per-instruction-set test
/// harness all expand from this one list: `arch::$then!((args) entries…)`.
macro_rules! kernel_table {
    ($($then:ident)::+, ($($args:tt)*)) => {
        $crate::arch::$($then)::+! { ($($args)*)
            #[cfg(target_arch = "x86_64")]
            Avx512 = $crate::arch::x86_64::avx512::Avx512, "avx512f,avx2,fma";
            #[cfg(target_arch = "x86_64")]
            Avx2Fma = $crate::arch::x86_64::avx2::Avx2, "avx2,fma";
        }
    };
}
pub(crate) use kernel_table;

/// Evaluates `$body` with `$k` bound to the token of the active instruction set's micro-kernels
/// (a type implementing [`kernel::MicroKernel`], so `$body` is compiled once per instruction
/// set), or `$portable` when no micro-kernels are active.
macro_rules! with_kernel {
    ($k:ident => $body:expr; else $portable:expr) => {
        $crate::arch::kernel_table!(select_kernel, ($k, $body, $portable))
    };
}
pub(crate) use with_kernel;

/// The expansion of [`with_kernel!`] over the kernel table.
macro_rules! select_kernel {
    (($k:ident, $body:expr, $portable:expr)
     $(#[$m:meta] $isa:ident = $tok:path, $feat:literal;)*) => {
        'select: {
            let isa = $crate::arch::isa::active();
            // Never taken (no value of `Never` exists): type-checks `$body` on every target,
            // also those without micro-kernels, where the arms below are compiled out.
            #[allow(unreachable_code)]
            {
                if let Some($k) = None::<$crate::arch::kernel::Never> {
                    break 'select ($body);
                }
            }
            $(
                #[$m]
                {
                    // The table is widest first: the first entry the active set includes.
                    if isa >= $crate::arch::isa::Isa::$isa {
                        if let Some($k) = <$tok>::new() {
                            break 'select ($body);
                        }
                    }
                }
            )*
            let _ = isa;
            $portable
        }
    };
}
pub(crate) use select_kernel;

/// The register tile `(MR, NR)` of the active micro-kernels (`None` on the portable path).
pub(crate) fn tile() -> Option<(usize, usize)> {
    with_kernel!(k => Some(shape_of(k)); else None)
}

/// The tile shape of a kernel token.
fn shape_of<K: kernel::MicroKernel>(_: K) -> (usize, usize) {
    (K::MR, K::NR)
}

/// The register tile `(MR, NR)` of the active micro-kernels for a weight gradient with
/// `out_ch` output channels: [`kernel::MicroKernel::Narrow`]'s when that is wide enough.
pub(crate) fn wgrad_tile(out_ch: usize) -> Option<(usize, usize)> {
    fn shape<K: kernel::MicroKernel>(_: K, out_ch: usize) -> (usize, usize) {
        if out_ch <= <K::Narrow as kernel::MicroKernel>::NR {
            (
                <K::Narrow as kernel::MicroKernel>::MR,
                <K::Narrow as kernel::MicroKernel>::NR,
            )
        } else {
            (K::MR, K::NR)
        }
    }
    with_kernel!(k => Some(shape(k, out_ch)); else None)
}

/// Runs `f` compiled for the instruction set [`active`] allows (AVX-512, AVX2 + FMA), or for the
/// build's baseline.
///
/// Pass an `#[inline(always)]` closure that contains the lane code: only code inlined into the
/// variants is compiled for them. (Lane code reached outside `dispatch` still computes the same
/// results, but on x86-64 its `mul_add` becomes a software call.)
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    kernel_table!(dispatch_variants, (f));
    baseline(f)
}

/// The expansion of [`dispatch`] over the kernel table: one variant of `f` per entry, compiled
/// for its features.
macro_rules! dispatch_variants {
    (($f:ident) $(#[$m:meta] $isa:ident = $tok:path, $feat:literal;)*) => {
        let isa = active();
        $(
            #[$m]
            {
                // The table is widest first: the first entry the active set includes.
                if isa >= Isa::$isa {
                    #[target_feature(enable = $feat)]
                    unsafe fn variant<R>(f: impl FnOnce() -> R) -> R {
                        f()
                    }
                    // SAFETY: `active` never exceeds `Isa::detected`, which reports this
                    // instruction set (or a wider one, whose CPUs have every narrower set's
                    // features) only when `is_x86_feature_detected!` found every feature the
                    // table lists for it.
                    return unsafe { variant($f) };
                }
            }
        )*
        let _ = isa;
    };
}
pub(crate) use dispatch_variants;

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
mod limit_tests {
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
