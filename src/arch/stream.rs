//! The two pieces of machine code the element-wise maps of `simd` need beyond what the compiler
//! makes of their lane code: stores that bypass the cache (with the fence that orders them), and
//! an empty barrier that keeps the loop vectorizer off loops whose body is already vector code.

/// Whether [`store8`] bypasses the cache for `out` (x86-64, 16-byte aligned); elsewhere it is a
/// plain copy.
#[inline(always)]
pub(crate) fn streams_to(out: &[f32]) -> bool {
    cfg!(target_arch = "x86_64") && (out.as_ptr() as usize).is_multiple_of(16)
}

/// `o = r` with non-temporal stores where [`streams_to`] holds for `o`, else a plain copy. After
/// the last one, [`fence`] orders them before whatever follows.
#[inline(always)]
pub(crate) fn store8(o: &mut [f32; 8], r: &[f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if (o.as_ptr() as usize).is_multiple_of(16) {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        // SAFETY: SSE is part of x86-64; `o` is eight writable floats starting 16-byte aligned,
        // so both four-float halves are 16-byte aligned, and `r` is eight readable floats
        // (`_mm_loadu_ps` needs no alignment).
        unsafe {
            _mm_stream_ps(o.as_mut_ptr(), _mm_loadu_ps(r.as_ptr()));
            _mm_stream_ps(o.as_mut_ptr().add(4), _mm_loadu_ps(r.as_ptr().add(4)));
        }
        return;
    }
    *o = *r;
}

/// Orders the non-temporal stores made so far before any later store (`sfence`; nothing to do
/// where [`store8`] copies).
#[inline(always)]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a fence has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Called once per iteration of a loop whose body is lane code: keeps LLVM's loop vectorizer
/// from re-vectorising it. In the AVX-512 variant of `dispatch` it otherwise widened such loops
/// across lane positions with gathers (`vgatherqps`), which made batch-norm backward half as fast
/// as the AVX2 variant. The empty `asm!` is opaque to the loop vectorizer but touches no memory,
/// registers or flags, so the lane code itself is compiled as before.
#[inline(always)]
pub(crate) fn loop_barrier() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: an empty instruction string with no operands reads and writes nothing; the
    // options say so to the compiler (no memory, no stack, flags preserved).
    unsafe {
        std::arch::asm!("", options(nomem, nostack, preserves_flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Aligned or not, the stores write exactly the eight values.
    #[test]
    fn stores_write_the_values_aligned_or_not() {
        let r: [f32; 8] = std::array::from_fn(|i| i as f32 * 1.5 - 3.0);
        let mut buf = [f32::NAN; 24];
        for start in 0..8 {
            buf.fill(f32::NAN);
            let o: &mut [f32; 8] = (&mut buf[start..start + 8]).try_into().unwrap();
            store8(o, &r);
            fence();
            assert_eq!(&buf[start..start + 8], &r);
            assert!(
                buf[..start]
                    .iter()
                    .chain(&buf[start + 8..])
                    .all(|v| v.is_nan())
            );
        }
        loop_barrier();
    }
}
