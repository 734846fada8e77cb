//! The AVX2/FMA micro-kernel: one 6x16 tile of `C` from packed panels of `A` (6 rows) and `B`
//! (16 columns), with twelve 8-lane accumulators held in registers. Selected at run time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of a micro-tile.
pub(crate) const MR: usize = 6;
/// Columns of a micro-tile.
pub(crate) const NR: usize = 16;

/// The accumulator body every 6x16 tile here shares, written once: row `i` of the tile (the
/// accumulator pair `lo_i`, `hi_i`) gains `broadcast(*a_i) · (b0, b1)`, where `b0, b1` are the
/// 16 columns of this step and `a_i` points at row `i`'s factor. `packed` takes the six factors
/// as consecutive floats at one pointer (a packed panel); the list form takes one pointer per
/// row. Must be used inside `unsafe` with the reads in bounds.
#[cfg(target_arch = "x86_64")]
macro_rules! fma_rows {
    (packed $a:expr, $b0:expr, $b1:expr,
     [$l0:ident $h0:ident, $l1:ident $h1:ident, $l2:ident $h2:ident,
      $l3:ident $h3:ident, $l4:ident $h4:ident, $l5:ident $h5:ident]) => {{
        let ap = $a;
        fma_rows!($b0, $b1, [
            ($l0, $h0, ap), ($l1, $h1, ap.add(1)), ($l2, $h2, ap.add(2)),
            ($l3, $h3, ap.add(3)), ($l4, $h4, ap.add(4)), ($l5, $h5, ap.add(5))
        ])
    }};
    ($b0:expr, $b1:expr, [$(($lo:ident, $hi:ident, $a:expr)),* $(,)?]) => {{
        let b0 = _mm256_loadu_ps($b0);
        let b1 = _mm256_loadu_ps($b1);
        $(
            let a = _mm256_broadcast_ss(&*$a);
            $lo = _mm256_fmadd_ps(a, b0, $lo);
            $hi = _mm256_fmadd_ps(a, b1, $hi);
        )*
    }};
}

/// Runs `step!(i)` for `i` in `0..n`, unrolled by 4 to cut loop overhead. Unsafe steps must be
/// wrapped, with their `SAFETY` reason, at the call site.
#[cfg(target_arch = "x86_64")]
macro_rules! unrolled_by_4 {
    ($n:expr, $step:ident) => {{
        let n = $n;
        let mut i = 0;
        while i + 4 <= n {
            $step!(i);
            $step!(i + 1);
            $step!(i + 2);
            $step!(i + 3);
            i += 4;
        }
        while i < n {
            $step!(i);
            i += 1;
        }
    }};
}

/// Whether this CPU has AVX2 and FMA (the safety condition of every kernel here; whether they
/// *run* is [`crate::arch::active`]'s decision).
pub(crate) fn available() -> bool {
    crate::arch::Isa::detected() >= crate::arch::Isa::Avx2Fma
}

/// `C[i, j] = alpha·Σ_p a[p·MR + i]·b[p·NR + j] + beta·C[i, j]` for `i < 6, j < 16`, where row `i`
/// of `C` is `c[i·rs..i·rs + 16]`. With `beta == 0`, `C` is not read.
///
/// Panics (a programming error, not a data error) if the panels are shorter than `k` steps, `C`
/// does not hold the tile, or the CPU lacks AVX2/FMA.
/// Whether a C tile of `MR` rows of `NR` elements, rows `rs` apart (`rs >= NR`, so rows do not
/// overlap), fits in `len` elements; checked arithmetic, so no stride can wrap past the check.
#[inline]
fn c_tile_fits(len: usize, rs: usize) -> bool {
    rs >= NR
        && (MR - 1)
            .checked_mul(rs)
            .and_then(|v| v.checked_add(NR))
            .is_some_and(|end| end <= len)
}

#[inline]
pub(crate) fn tile(
    k: usize,
    a: &[f32],
    b: &[f32],
    alpha: f32,
    beta: f32,
    c: &mut [f32],
    rs: usize,
) {
    assert!(
        available(),
        "AVX2/FMA micro-kernel called without CPU support"
    );
    assert!(
        k.checked_mul(MR).is_some_and(|n| n <= a.len())
            && k.checked_mul(NR).is_some_and(|n| n <= b.len()),
        "packed panels shorter than k"
    );
    assert!(c_tile_fits(c.len(), rs), "C tile out of bounds");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` proved AVX2 and FMA, so the target-feature function may run. Reads
    // stay within `a[..k*MR]` and `b[..k*NR]` (checked above); writes and reads of C touch
    // `c[i*rs + j]` for i < MR, j < NR, all below `(MR-1)*rs + NR <= c.len()` (checked above).
    // The slices come from references, so they are valid, aligned for f32 and non-overlapping
    // (`c` is the only mutable one).
    unsafe {
        kernel(k, a.as_ptr(), b.as_ptr(), alpha, beta, c.as_mut_ptr(), rs);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(
    k: usize,
    a: *const f32,
    b: *const f32,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rs: usize,
) {
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    // Start fetching the C tile now: it is read (beta != 0) and written after the loop, and its
    // rows are usually far apart in a large matrix.
    for i in 0..MR {
        // SAFETY: prefetching is only a hint; the addresses are inside the tile (caller's check).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs + NR - 1) as *const i8);
        }
    }
    let (mut ap, mut bp) = (a, b);
    // One k step: two B vectors, then one broadcast of A at a time (12 accumulators + 2 B + 1 A =
    // 15 of the 16 registers, so nothing spills).
    macro_rules! step {
        ($u:expr) => {
            fma_rows!(
                packed ap.add(MR * $u),
                bp.add(NR * $u),
                bp.add(NR * $u + 8),
                [c00 c01, c10 c11, c20 c21, c30 c31, c40 c41, c50 c51]
            )
        };
    }
    // Unrolled by 4 to cut loop overhead.
    for _ in 0..k / 4 {
        // SAFETY: the caller guarantees k*MR floats at `a` and k*NR at `b`; the pointers advance
        // by what the steps consumed, and each step reads below MR (A) / NR (B) floats past
        // them, so every read is in bounds.
        unsafe {
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            ap = ap.add(4 * MR);
            bp = bp.add(4 * NR);
        }
    }
    for _ in 0..k % 4 {
        // SAFETY: as above; these are the last k % 4 steps.
        unsafe {
            step!(0);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    let va = _mm256_set1_ps(alpha);
    let vb = _mm256_set1_ps(beta);
    let rows = [
        (c00, c01),
        (c10, c11),
        (c20, c21),
        (c30, c31),
        (c40, c41),
        (c50, c51),
    ];
    for (i, (lo, hi)) in rows.into_iter().enumerate() {
        // SAFETY: row i of the tile is c[i*rs .. i*rs + 16], inside the buffer (caller's check).
        unsafe {
            let p = c.add(i * rs);
            let (mut lo, mut hi) = (_mm256_mul_ps(lo, va), _mm256_mul_ps(hi, va));
            if beta != 0.0 {
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(p), vb, lo);
                hi = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), vb, hi);
            }
            _mm256_storeu_ps(p, lo);
            _mm256_storeu_ps(p.add(8), hi);
        }
    }
}

/// Direct-convolution tile: `C[i, j] = (beta ? C[i, j] : 0) + Σ_t a[t·MR + i] · x[base + off[t] + j]`
/// for `i < 6, j < 16`: six output channels (packed weights `a`, one tap per step) times sixteen
/// consecutive output pixels read straight from the prepared input `x` (tap `t` shifted by
/// `off[t]`). Row `i` of `C` is `c[i·rs..i·rs + 16]`. `max_off` must be `max(off)`.
///
/// Panics (a programming error) if any read or write would leave its slice, or without AVX2/FMA.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_tile(
    a: &[f32],
    x: &[f32],
    base: usize,
    taps: &Taps<'_>,
    beta: bool,
    c: &mut [f32],
    rs: usize,
) {
    let k = taps.off.len();
    assert!(
        available(),
        "AVX2/FMA micro-kernel called without CPU support"
    );
    assert!(
        k.checked_mul(MR).is_some_and(|n| n <= a.len()),
        "packed weights shorter than the taps"
    );
    assert!(c_tile_fits(c.len(), rs), "C tile out of bounds");
    if k == 0 {
        if !beta {
            for i in 0..MR {
                c[i * rs..i * rs + NR].fill(0.0);
            }
        }
        return;
    }
    assert!(
        base.checked_add(taps.max)
            .and_then(|v| v.checked_add(NR))
            .is_some_and(|end| end <= x.len()),
        "input read out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2/FMA present (checked). Reads: a[..k*MR] (checked); x[base + off[t] + j] for
    // j < 16, where every off[t] <= taps.max (a `Taps` invariant: its constructor computes the
    // maximum) and base + taps.max + 16 <= x.len() (checked), so `x.as_ptr().add(base)` is in
    // bounds too. Writes/reads of C stay below (MR-1)*rs + NR <= c.len() (checked).
    unsafe {
        conv_kernel(
            k,
            a.as_ptr(),
            x.as_ptr().add(base),
            taps.off.as_ptr(),
            beta,
            c.as_mut_ptr(),
            rs,
        );
    }
}

/// Tap offsets for [`conv_tile`] with their maximum (private fields: the maximum is always
/// right).
pub(crate) struct Taps<'a> {
    off: &'a [u32],
    max: usize,
}

impl<'a> Taps<'a> {
    /// The offsets and their maximum.
    pub(crate) fn new(off: &'a [u32]) -> Self {
        Taps {
            off,
            max: off.iter().copied().max().unwrap_or(0) as usize,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_kernel(
    k: usize,
    a: *const f32,
    x: *const f32,
    off: *const u32,
    beta: bool,
    c: *mut f32,
    rs: usize,
) {
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    for i in 0..MR {
        // SAFETY: prefetch hints for addresses inside the C tile.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs) as *const i8) };
    }
    macro_rules! step {
        ($t:expr) => {{
            let xp = x.add(*off.add($t) as usize);
            fma_rows!(
                packed a.add($t * MR),
                xp,
                xp.add(8),
                [c00 c01, c10 c11, c20 c21, c30 c31, c40 c41, c50 c51]
            )
        }};
    }
    // SAFETY: every step t < k reads off[t] (caller: k entries), x[off[t] .. off[t] + 16] and
    // a[t*MR ..][..MR], all in bounds per the caller's checks.
    unsafe { unrolled_by_4!(k, step) };
    let rows = [
        (c00, c01),
        (c10, c11),
        (c20, c21),
        (c30, c31),
        (c40, c41),
        (c50, c51),
    ];
    // SAFETY: AVX2 present (this function's contract); the C tile is in bounds (caller's check).
    unsafe { store_rows(rows, c, rs, beta) };
}

/// Weight-gradient tile: `C[i, j] += Σ_{s < len} x[xo[i] + s] · b[s·bs + j]` for `i < 6, j < 16`:
/// six filter taps (each a shifted read of the prepared input) times sixteen output channels
/// (rows of the transposed output gradient `b`, one pixel per step).
///
/// Panics (a programming error) if any read or write would leave its slice, or without AVX2/FMA.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn wgrad_tile(
    len: usize,
    x: &[f32],
    xo: [usize; MR],
    b: &[f32],
    bs: usize,
    c: &mut [f32],
    rs: usize,
) {
    assert!(
        available(),
        "AVX2/FMA micro-kernel called without CPU support"
    );
    assert!(c_tile_fits(c.len(), rs), "C tile out of bounds");
    if len == 0 {
        return;
    }
    assert!(
        xo.iter()
            .all(|&o| o.checked_add(len).is_some_and(|end| end <= x.len())),
        "input read out of bounds"
    );
    assert!(
        bs >= NR
            && (len - 1)
                .checked_mul(bs)
                .and_then(|v| v.checked_add(NR))
                .is_some_and(|end| end <= b.len()),
        "gradient read out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2/FMA present (checked). len > 0, so xo[i] + len <= x.len() makes each
    // `add(xo[i])` in bounds and every read x[xo[i] + s], s < len, too; b[s*bs + j] for s < len,
    // j < 16 is below (len-1)*bs + 16 <= b.len() (checked); C accesses stay below
    // (MR-1)*rs + NR <= c.len() (checked).
    unsafe {
        let xs = [0, 1, 2, 3, 4, 5].map(|i| x.as_ptr().add(xo[i]));
        wgrad_kernel(len, xs, b.as_ptr(), bs, c.as_mut_ptr(), rs);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_kernel(
    len: usize,
    x: [*const f32; MR],
    b: *const f32,
    bs: usize,
    c: *mut f32,
    rs: usize,
) {
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let [x0, x1, x2, x3, x4, x5] = x;
    macro_rules! step {
        ($s:expr) => {{
            let bp = b.add($s * bs);
            fma_rows!(
                bp,
                bp.add(8),
                [
                    (c00, c01, x0.add($s)),
                    (c10, c11, x1.add($s)),
                    (c20, c21, x2.add($s)),
                    (c30, c31, x3.add($s)),
                    (c40, c41, x4.add($s)),
                    (c50, c51, x5.add($s)),
                ]
            )
        }};
    }
    // SAFETY: every step s < len reads x_i[s] and b[s*bs ..][..16], in bounds per the caller's
    // checks.
    unsafe { unrolled_by_4!(len, step) };
    let rows = [
        (c00, c01),
        (c10, c11),
        (c20, c21),
        (c30, c31),
        (c40, c41),
        (c50, c51),
    ];
    // SAFETY: AVX2 present (this function's contract); the C tile is in bounds (caller's check).
    unsafe { store_rows(rows, c, rs, true) };
}

/// Writes the accumulated rows of a 6x16 tile to `c` (row `i` at `c[i·rs..][..16]`), added to
/// what is there if `add`.
///
/// # Safety
/// The CPU must support AVX2, and `c[i·rs + j]` must be writable for `i < 6`, `j < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_rows(rows: [(__m256, __m256); MR], c: *mut f32, rs: usize, add: bool) {
    for (i, (mut lo, mut hi)) in rows.into_iter().enumerate() {
        // SAFETY: row i of the tile is c[i*rs .. i*rs + 16], writable (the caller's contract).
        unsafe {
            let p = c.add(i * rs);
            if add {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(p));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(p.add(8)));
            }
            _mm256_storeu_ps(p, lo);
            _mm256_storeu_ps(p.add(8), hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strides and offsets so large that the bound arithmetic would wrap around are refused:
    /// with wrapping arithmetic `(MR-1)·rs + NR` came out small, the check passed, and the
    /// kernel would have written far outside `c`.
    #[test]
    fn bound_checks_do_not_wrap() {
        let rs = usize::MAX / (MR - 1) + 1;
        assert!(!c_tile_fits(64, rs));
        assert!(c_tile_fits((MR - 1) * 19 + NR, 19));
        assert!(!c_tile_fits((MR - 1) * 19 + NR - 1, 19));
        let refused =
            |f: &(dyn Fn() + std::panic::RefUnwindSafe)| std::panic::catch_unwind(f).is_err();
        assert!(refused(&|| {
            let mut c = vec![0.0; 64];
            tile(1, &[0.0; MR], &[0.0; NR], 1.0, 0.0, &mut c, rs);
        }));
        assert!(refused(&|| {
            let mut c = vec![0.0; MR * NR];
            let off = [0u32];
            conv_tile(
                &[0.0; MR],
                &[0.0; 64],
                usize::MAX - 4,
                &Taps::new(&off),
                false,
                &mut c,
                NR,
            );
        }));
        assert!(refused(&|| {
            let mut out = [0.0; 8];
            depthwise_row(
                &[0.0; 64],
                8,
                usize::MAX / 2,
                [1, 1],
                &[0.0; 9],
                [3, 3],
                false,
                &mut out,
                false,
            );
        }));
    }

    #[test]
    fn tile_matches_naive_sums_with_alpha_and_beta() {
        if !available() {
            return;
        }
        for k in [0, 1, 3, 17] {
            let a: Vec<f32> = (0..k * MR).map(|v| (v % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..k * NR).map(|v| (v % 5) as f32 * 0.5).collect();
            let rs = 19;
            let mut c: Vec<f32> = (0..5 * rs + NR).map(|v| v as f32).collect();
            let old = c.clone();
            tile(k, &a, &b, 2.0, -1.0, &mut c, rs);
            for i in 0..MR {
                for j in 0..rs.min(c.len() - i * rs) {
                    let got = c[i * rs + j];
                    if j < NR {
                        let s: f32 = (0..k).map(|p| a[p * MR + i] * b[p * NR + j]).sum();
                        assert_eq!(got, 2.0 * s - old[i * rs + j], "i {i} j {j} k {k}");
                    } else {
                        assert_eq!(got, old[i * rs + j], "outside the tile");
                    }
                }
            }
            // beta = 0 ignores NaN in C.
            let mut c = vec![f32::NAN; 5 * rs + NR];
            tile(k, &a, &b, 1.0, 0.0, &mut c, rs);
            assert!((0..NR).all(|j| c[j].is_finite()));
        }
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release --lib micro_kernel_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn micro_kernel_speed() {
        use super::*;
        let k = 256;
        let a = vec![1.0f32; k * MR];
        let b = vec![1.0f32; k * NR];
        let mut c = vec![0.0f32; MR * NR];
        let t = std::time::Instant::now();
        let reps = 200_000;
        for _ in 0..reps {
            tile(k, &a, &b, 1.0, 1.0, &mut c, NR);
        }
        let s = t.elapsed().as_secs_f64();
        println!("{:.1} GFLOP/s", (reps * k * MR * NR * 2) as f64 / s / 1e9);
    }
}

#[cfg(test)]
mod conv_speed {
    /// `cargo test --release --lib conv_kernel_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn conv_kernel_speed() {
        use super::*;
        let k = 576;
        let a = vec![1.0f32; k * MR];
        let x = vec![1.0f32; 4096];
        let off: Vec<u32> = (0..k as u32).map(|t| (t * 37) % 2048).collect();
        let taps = Taps::new(&off);
        let mut c = vec![0.0f32; MR * NR];
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let reps = 100_000;
            for _ in 0..reps {
                conv_tile(&a, &x, 0, &taps, true, &mut c, NR);
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "conv_tile: {:.1} GFLOP/s",
                (reps * k * MR * NR * 2) as f64 / s / 1e9
            );
            let xo = [0, 100, 200, 300, 400, 500];
            let b = vec![1.0f32; 64 * 512];
            let t = std::time::Instant::now();
            for _ in 0..reps {
                wgrad_tile(512, &x, xo, &b, 64, &mut c, NR);
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "wgrad_tile: {:.1} GFLOP/s",
                (reps * 512 * MR * NR * 2) as f64 / s / 1e9
            );
        }
    }
}

/// One output row of a stride-1 (along the row) depthwise sweep:
/// `out[j] (+)= Σ_{p<kh, q<kw} w(p, q) · src[(top + p·d_h)·cols + j + q·d_w]`, where `w(p, q)` is
/// `w[p·kw + q]`, or the kernel rotated by 180° if `flip`. Reads `src` up to the next multiple
/// of eight outputs past the row's end.
///
/// Panics (a programming error) if `src` does not hold every row read, `w` is shorter than the
/// kernel, or the CPU lacks AVX2/FMA.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_row(
    src: &[f32],
    cols: usize,
    top: usize,
    d: [usize; 2],
    w: &[f32],
    k: [usize; 2],
    flip: bool,
    out: &mut [f32],
    add: bool,
) {
    assert!(
        available(),
        "AVX2/FMA depthwise kernel called without CPU support"
    );
    assert!(
        k[0] > 0 && k[1] > 0 && k[0].checked_mul(k[1]).is_some_and(|n| n <= w.len()),
        "kernel"
    );
    // The last element read: (top + (kh−1)·d_h)·cols + ceil8(out.len()) + (kw−1)·d_w.
    let end = (|| {
        let span = out
            .len()
            .div_ceil(8)
            .checked_mul(8)?
            .checked_add((k[1] - 1).checked_mul(d[1])?)?;
        top.checked_add((k[0] - 1).checked_mul(d[0])?)?
            .checked_mul(cols)?
            .checked_add(span)
    })();
    assert!(
        end.is_some_and(|e| e <= src.len()),
        "depthwise read out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` proved AVX2 and FMA. Every read is
    // `src[(top + p·d_h)·cols + ow + 8·i + q·d_w ..][..8]` with `ow + 8·i + 8 <= ceil8(out.len())`,
    // so it ends at or below `end <= src.len()` (checked above, without overflow);
    // weights are read at `p·kw + q < kh·kw <= w.len()`; writes touch `out[..out.len()]` only.
    unsafe {
        depthwise_row_kernel(
            src.as_ptr(),
            cols,
            top,
            d,
            w.as_ptr(),
            k,
            flip,
            out.as_mut_ptr(),
            out.len(),
            add,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_row_kernel(
    src: *const f32,
    cols: usize,
    top: usize,
    d: [usize; 2],
    w: *const f32,
    k: [usize; 2],
    flip: bool,
    out: *mut f32,
    n: usize,
    add: bool,
) {
    let [kh, kw] = k;
    let tap = |p: usize, q: usize| {
        let i = if flip {
            (kh - 1 - p) * kw + (kw - 1 - q)
        } else {
            p * kw + q
        };
        // SAFETY: i < kh·kw <= w.len() (the caller's check).
        _mm256_set1_ps(unsafe { *w.add(i) })
    };
    // SAFETY: every pointer range is the one `depthwise_row` checked (see its SAFETY comment).
    unsafe {
        let store = |at: usize, v: __m256| {
            let o = out.add(at);
            let v = if add {
                _mm256_add_ps(_mm256_loadu_ps(o), v)
            } else {
                v
            };
            _mm256_storeu_ps(o, v);
        };
        let mut ow = 0;
        while ow + 32 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            for p in 0..kh {
                let row = src.add((top + p * d[0]) * cols + ow);
                for q in 0..kw {
                    let (wv, r) = (tap(p, q), row.add(q * d[1]));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(r.add(8 * i)), wv, *a);
                    }
                }
            }
            for (i, a) in acc.into_iter().enumerate() {
                store(ow + 8 * i, a);
            }
            ow += 32;
        }
        while ow < n {
            let mut a = _mm256_setzero_ps();
            for p in 0..kh {
                let row = src.add((top + p * d[0]) * cols + ow);
                for q in 0..kw {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(q * d[1])), tap(p, q), a);
                }
            }
            let m = (n - ow).min(8);
            if m == 8 {
                store(ow, a);
            } else {
                let mut t = [0.0f32; 8];
                _mm256_storeu_ps(t.as_mut_ptr(), a);
                for (i, &v) in t.iter().enumerate().take(m) {
                    let o = out.add(ow + i);
                    *o = if add { *o + v } else { v };
                }
            }
            ow += 8;
        }
    }
}
