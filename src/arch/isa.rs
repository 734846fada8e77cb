//! The instruction sets, the one this CPU has, and the cap [`limit`] puts on the one the kernels
//! use.

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
    /// AVX-512 with the BF16 dot products (`vdpbf16ps`, AVX512-BF16, with AVX512-BW and -VL):
    /// the AVX-512 kernels, and under [`crate::gemm::Precision::Bf16`] a GEMM tile that
    /// multiplies bf16 pairs into f32 sums. In f32 it computes exactly what [`Isa::Avx512`] does.
    Avx512Bf16,
}

impl Isa {
    /// Every instruction set, narrowest first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Avx512Bf16];

    /// The widest instruction set this CPU supports (detected once).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                if avx2 && is_x86_feature_detected!("avx512f") {
                    let bf16 = is_x86_feature_detected!("avx512bf16")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl");
                    return if bf16 { Isa::Avx512Bf16 } else { Isa::Avx512 };
                }
                if avx2 {
                    return Isa::Avx2Fma;
                }
            }
            Isa::Portable
        })
    }

    /// A short name: `portable`, `avx2`, `avx512` or `avx512bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = crate::error::Error;
    /// `portable`, `avx2`, `avx512` or `avx512bf16`.
    fn from_str(s: &str) -> crate::error::Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim())
            .ok_or_else(|| {
                crate::error::Error::invalid(
                    "Isa::from_str",
                    "isa",
                    format!("'{s}': use portable, avx2, avx512 or avx512bf16"),
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
/// CPU has changes nothing. AVX2 and AVX-512 give the same bits everywhere; the portable path's
/// GEMM and convolution results differ from theirs in the last bits (another summation order),
/// its element-wise results do not. A call already running when the cap changes finishes on the
/// kernels it started with, or, if its plan no longer fits them, returns an error.
pub fn limit(isa: Option<Isa>) {
    let v = isa.map_or(u8::MAX, |i| {
        Isa::ALL.iter().position(|&a| a == i).unwrap_or(0) as u8
    });
    LIMIT.store(v, Ordering::Relaxed);
}

/// The widest instruction set cnnkit has kernels for.
pub const WIDEST_IMPLEMENTED: Isa = Isa::Avx512Bf16;

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
