//! The bf16 number format (1 sign bit, 8 exponent bits, 7 stored significand bits: the top half
//! of an f32), for [`crate::gemm::Precision::Bf16`] and its references.

/// `x` rounded to the nearest bf16 (ties to even), as an f32: the top 16 bits of the result are
/// the bf16 number, the low 16 are zero. Infinities stay, a NaN stays a (quiet) NaN, a value
/// above the largest bf16 (by half an ulp or more) becomes an infinity — as `vcvtneps2bf16`
/// rounds, except that it also flushes subnormal inputs to zero, and as PyTorch's
/// `tensor.to(torch.bfloat16)` rounds.
///
/// ```
/// use cnnkit::arch::round_bf16;
/// assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0); // a tie: to even
/// assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
/// assert!(round_bf16(f32::NAN).is_nan());
/// ```
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((b | 0x0040_0000) & 0xffff_0000);
    }
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition: the nearest of the two neighbouring bf16 values (the candidates
    /// found by truncation, as f64), ties to the even significand.
    #[test]
    fn rounding_is_to_the_nearest_bf16_ties_to_even() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let bits = if i < 4096 {
                // Every rounding case near one and near the largest finite value.
                [0x3f80_0000u32, 0x7f7f_0000][i as usize & 1] + (i >> 1) * 16 + 0x7ff0
            } else {
                seed as u32
            };
            let x = f32::from_bits(bits);
            if !x.is_finite() {
                continue;
            }
            let lo = f32::from_bits(bits & 0xffff_0000);
            let hi_bits = (bits & 0xffff_0000).wrapping_add(0x1_0000);
            let hi = f32::from_bits(hi_bits);
            // Past the largest bf16 the next candidate is 2^128 (which rounds to infinity).
            let hi_value = if hi.is_infinite() {
                2f64.powi(128)
            } else {
                hi as f64
            };
            let (dl, dh) = (
                (x as f64 - lo as f64).abs(),
                (hi_value.abs() - (x as f64).abs()).abs(),
            );
            let want = if dl < dh || (dl == dh && (bits >> 16) & 1 == 0) {
                lo
            } else {
                hi
            };
            let got = round_bf16(x);
            assert_eq!(got.to_bits(), want.to_bits(), "{x:e} ({bits:#010x})");
        }
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
        // A NaN whose payload sits only in the low bits stays a NaN.
        assert!(round_bf16(f32::from_bits(0x7f80_0001)).is_nan());
    }
}
