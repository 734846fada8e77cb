//! The packed GEMM driver (BLIS loop order) over any sources that can pack themselves.
//!
//! `B` is packed a `KC x NC` block at a time into `NR`-column panels, `A` an `MC x KC` block at a
//! time into `MR`-row panels, and the micro-kernel (any [`MicroKernel`]: the tile shape comes
//! from the instruction set) multiplies one `MR x NR` tile of `C` per call.
//! Sources implement [`PackA`] / [`PackB`]; today the one source is a strided matrix
//! ([`Strided`]). (Convolutions that skip the im2col matrix do not come through here: the direct
//! path in `kernels::conv::direct` drives the instruction set's convolution tile itself.) The
//! packing buffers are per thread and grown once ([`warm`]), so a steady-state product allocates
//! nothing.
//!
//! Every element of `C` is accumulated over `k` in the same order (blocks of `KC`, in order, one
//! fused multiply-add per step) whichever rows or columns a call covers and whichever
//! instruction set runs it, so splitting a product across threads by rows or columns gives
//! bit-identical results, and so do AVX2 and AVX-512.

use crate::arch::kernel::MicroKernel;
use std::cell::RefCell;

/// Depth of a packed block (the `k` extent per micro-kernel call; the same for every instruction
/// set, which keeps their sums in the same blocks).
pub(crate) const KC: usize = 256;
/// Rows of `A` packed at a time, at most (rounded down to a multiple of `MR`; `MC x KC` floats
/// stay in L2).
pub(crate) const MC: usize = 120;
/// Columns of `B` packed at a time, at most (rounded down to a multiple of `NR`).
pub(crate) const NC: usize = 4096;

/// The largest register tile of any instruction set, in floats (the edge-tile buffer).
const MAX_TILE: usize = 32 * 64;

/// A left operand that packs `K::MR`-row panels of itself.
pub(crate) trait PackA: Sync {
    /// Packs rows `r0..r0 + mc` and inner indices `k0..k0 + kc` as `ceil(mc / MR)` panels: panel
    /// `p` at `out[p·kc·MR..]`, element `(k, i)` at `k·MR + i`; rows past `mc` are zero.
    fn pack_a<K: MicroKernel>(&self, r0: usize, mc: usize, k0: usize, kc: usize, out: &mut [f32]);
}

/// A right operand that packs `K::NR`-column panels of itself.
pub(crate) trait PackB: Sync {
    /// Packs inner indices `k0..k0 + kc` and columns `c0..c0 + nc` as `ceil(nc / NR)` panels:
    /// panel `p` at `out[p·kc·NR..]`, element `(k, j)` at `k·NR + j`; columns past `nc` are zero.
    /// (`kern` for the register transposes of a source stored column by column.)
    fn pack_b<K: MicroKernel>(
        &self,
        kern: K,
        k0: usize,
        kc: usize,
        c0: usize,
        nc: usize,
        out: &mut [f32],
    );

    /// [`PackB::pack_b`] into bf16 pairs (each panel as
    /// [`Bf16::pair_rows`](crate::arch::x86_64::bf16::Bf16::pair_rows) leaves it): by default
    /// by converting the packed panels; a source that can does both in one pass.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn pack_b_pairs<K: MicroKernel>(
        &self,
        kern: K,
        t: crate::arch::x86_64::bf16::Bf16,
        k0: usize,
        kc: usize,
        c0: usize,
        nc: usize,
        out: &mut [f32],
    ) {
        self.pack_b(kern, k0, kc, c0, nc, out);
        Narrow::Pairs(t).convert(out, kc, K::NR);
    }
}

/// A row-major destination: row `i` is `data[i·rs..i·rs + cols]`.
pub(crate) struct Out<'a> {
    pub data: &'a mut [f32],
    pub rs: usize,
    pub rows: usize,
    pub cols: usize,
}

thread_local! {
    /// Per-thread packing buffers at their full size (`KC x MC` of A, `KC x NC` of B: 4.2 MB,
    /// zero-filled by the allocator, so pages are touched only as far as a product uses them),
    /// made on a thread's first product or by [`warm`] and reused: which thread of a pool runs
    /// which product depends on scheduling, so a buffer that grew with the product would
    /// allocate at unpredictable times.
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Makes this thread's packing buffers (see `BUFFERS`); no-op once they exist.
fn ensure(bufs: &mut (Vec<f32>, Vec<f32>)) {
    if bufs.0.len() < KC * MC {
        bufs.0 = vec![0.0; KC * MC];
    }
    if bufs.1.len() < KC * NC {
        bufs.1 = vec![0.0; KC * NC];
    }
}

/// Makes the calling thread's packing buffers now, so that no later product allocates on it.
pub(crate) fn warm() {
    BUFFERS.with(|cell| {
        if let Ok(mut b) = cell.try_borrow_mut() {
            ensure(&mut b);
        }
    });
}

/// Whether the packed path runs (some micro-kernels active, see [`crate::arch::active`]).
pub(crate) fn enabled() -> bool {
    crate::arch::micro_kernels()
}

/// `C = alpha·A·B + beta·C` with `A: m x k`, `B: k x n`, `C: m x n` (`C.rows == m`,
/// `C.cols == n`), on the micro-kernels of `kern`. With `beta == 0`, `C` is not read.
pub(crate) fn gemm<K: MicroKernel>(
    kern: K,
    k: usize,
    alpha: f32,
    a: &impl PackA,
    b: &impl PackB,
    beta: f32,
    c: Out<'_>,
) {
    gemm_in(Narrow::of::<K>(), kern, k, alpha, a, b, beta, c)
}

/// [`gemm`] in f32 whatever the precision.
pub(crate) fn gemm_f32<K: MicroKernel>(
    kern: K,
    k: usize,
    alpha: f32,
    a: &impl PackA,
    b: &impl PackB,
    beta: f32,
    c: Out<'_>,
) {
    gemm_in(Narrow::F32, kern, k, alpha, a, b, beta, c)
}

/// [`gemm`] with the panels' format given.
#[allow(clippy::too_many_arguments)]
fn gemm_in<K: MicroKernel>(
    narrow: Narrow,
    kern: K,
    k: usize,
    alpha: f32,
    a: &impl PackA,
    b: &impl PackB,
    beta: f32,
    c: Out<'_>,
) {
    let (mr, nr) = (K::MR, K::NR);
    let (mcb, ncb) = (MC / mr * mr, NC / nr * nr);
    let (m, n) = (c.rows, c.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            let row = &mut c.data[i * c.rs..][..n];
            if beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|v| *v *= beta);
            }
        }
        return;
    }
    BUFFERS.with(|cell| {
        let mut guard = cell.borrow_mut();
        ensure(&mut guard);
        let (abuf, bbuf) = &mut *guard;
        // An edge tile is computed in `tilebuf` (C's live part copied in, the rest zero) by the
        // same kernel with the same alpha and beta, so edges round exactly as full tiles do.
        let mut tilebuf = [0.0f32; MAX_TILE];
        let tilebuf = &mut tilebuf[..mr * nr];
        for jc in (0..n).step_by(ncb) {
            let nc = ncb.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let bpanels = &mut bbuf[..kc * nc.div_ceil(nr) * nr];
                match narrow {
                    #[cfg(target_arch = "x86_64")]
                    Narrow::Pairs(t) => b.pack_b_pairs(kern, t, pc, kc, jc, nc, bpanels),
                    _ => {
                        b.pack_b(kern, pc, kc, jc, nc, bpanels);
                        narrow.convert(bpanels, kc, nr);
                    }
                }
                let beta = if pc == 0 { beta } else { 1.0 };
                for ic in (0..m).step_by(mcb) {
                    let mc = mcb.min(m - ic);
                    let apanels = &mut abuf[..kc * mc.div_ceil(mr) * mr];
                    a.pack_a::<K>(ic, mc, pc, kc, apanels);
                    narrow.convert(apanels, kc, mr);
                    for jr in (0..nc).step_by(nr) {
                        let bp = &bbuf[(jr / nr) * kc * nr..][..kc * nr];
                        let cols = nr.min(nc - jr);
                        for ir in (0..mc).step_by(mr) {
                            let ap = &abuf[(ir / mr) * kc * mr..][..kc * mr];
                            let rows = mr.min(mc - ir);
                            let at = (ic + ir) * c.rs + jc + jr;
                            if rows == mr && cols == nr && c.rs >= nr {
                                narrow.tile(kern, kc, ap, bp, alpha, beta, &mut c.data[at..], c.rs);
                            } else {
                                tilebuf.fill(0.0);
                                if beta != 0.0 {
                                    for i in 0..rows {
                                        tilebuf[i * nr..][..cols]
                                            .copy_from_slice(&c.data[at + i * c.rs..][..cols]);
                                    }
                                }
                                narrow.tile(kern, kc, ap, bp, alpha, beta, tilebuf, nr);
                                for i in 0..rows {
                                    c.data[at + i * c.rs..][..cols]
                                        .copy_from_slice(&tilebuf[i * nr..][..cols]);
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

/// How the packed panels hold their numbers ([`crate::gemm::Precision`]).
#[derive(Clone, Copy, Debug)]
enum Narrow {
    /// f32, as the sources hold them.
    F32,
    /// Rounded to bf16 and kept as f32, for the f32 tiles (bf16 precision on CPUs without
    /// AVX512-BF16).
    Rounded,
    /// Rounded to bf16 and paired for the AVX512-BF16 tile.
    #[cfg(target_arch = "x86_64")]
    Pairs(crate::arch::x86_64::bf16::Bf16),
}

impl Narrow {
    /// The panels' format for a product on `K`'s tiles now.
    fn of<K: MicroKernel>() -> Narrow {
        if !crate::gemm::precision::bf16() {
            return Narrow::F32;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use crate::arch::x86_64::bf16::Bf16;
            if let Some(t) = Bf16::new().filter(|_| (K::MR, K::NR) == (Bf16::MR, Bf16::NR)) {
                return Narrow::Pairs(t);
            }
        }
        Narrow::Rounded
    }

    /// Converts packed panels of `kc` steps of `w` (panel `p` at `panels[p·kc·w..]`) in place.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn convert(self, panels: &mut [f32], kc: usize, w: usize) {
        match self {
            Narrow::F32 => {}
            Narrow::Rounded => panels
                .iter_mut()
                .for_each(|v| *v = crate::arch::bf16::round_bf16(*v)),
            #[cfg(target_arch = "x86_64")]
            Narrow::Pairs(t) => panels
                .chunks_exact_mut(kc * w)
                .for_each(|p| t.pair_rows(p, kc, w)),
        }
    }

    /// One `MR x NR` tile of `kc` steps from the converted panels `a` and `b`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn tile<K: MicroKernel>(
        self,
        kern: K,
        kc: usize,
        a: &[f32],
        b: &[f32],
        alpha: f32,
        beta: f32,
        c: &mut [f32],
        rs: usize,
    ) {
        match self {
            Narrow::F32 | Narrow::Rounded => kern.tile(kc, a, b, alpha, beta, c, rs),
            #[cfg(target_arch = "x86_64")]
            Narrow::Pairs(t) => t.tile(kc.div_ceil(2), a, b, alpha, beta, c, rs),
        }
    }
}

/// A strided matrix as a packing source: element `(i, j)` at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
    pub rows: usize,
}

impl PackA for Strided<'_> {
    fn pack_a<K: MicroKernel>(&self, r0: usize, mc: usize, k0: usize, kc: usize, out: &mut [f32]) {
        // The common tile heights get a loop whose row count is a constant (the rows are read in
        // step and the panel written in order, as fast as a copy); any other height, the same
        // work with a run-time count.
        match K::MR {
            6 => self.pack_rows::<6>(r0, mc, k0, kc, out),
            8 => self.pack_rows::<8>(r0, mc, k0, kc, out),
            12 => self.pack_rows::<12>(r0, mc, k0, kc, out),
            mr => self.pack_rows_any(mr, r0, mc, k0, kc, out),
        }
    }
}

impl Strided<'_> {
    /// Rows of panel `p` that exist (below `mc` and the matrix's height).
    fn live(&self, mr: usize, p: usize, r0: usize, mc: usize) -> usize {
        mr.min(mc.saturating_sub(p * mr))
            .min(self.rows.saturating_sub(r0 + p * mr))
    }

    /// [`PackA::pack_a`] for `MR`-row panels.
    fn pack_rows<const MR: usize>(
        &self,
        r0: usize,
        mc: usize,
        k0: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        for (p, panel) in out.chunks_exact_mut(kc * MR).enumerate() {
            if self.cs == 1 && self.live(MR, p, r0, mc) == MR {
                let rows: [&[f32]; MR] =
                    std::array::from_fn(|i| &self.data[(r0 + p * MR + i) * self.rs + k0..][..kc]);
                for (k, dst) in panel.chunks_exact_mut(MR).enumerate() {
                    for (d, r) in dst.iter_mut().zip(&rows) {
                        *d = r[k];
                    }
                }
            } else {
                self.pack_rows_any(MR, r0 + p * MR, mc.saturating_sub(p * MR), k0, kc, panel);
            }
        }
    }

    /// [`PackA::pack_a`] for `mr`-row panels, element by element.
    fn pack_rows_any(
        &self,
        mr: usize,
        r0: usize,
        mc: usize,
        k0: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        for (p, panel) in out.chunks_exact_mut(kc * mr).enumerate() {
            let live = self.live(mr, p, r0, mc);
            if self.rs == 1 && live == mr {
                // Stored column by column (a transposed gradient): each step's `mr` rows are
                // adjacent.
                let first = r0 + p * mr;
                for (k, dst) in panel.chunks_exact_mut(mr).enumerate() {
                    dst.copy_from_slice(&self.data[first + (k0 + k) * self.cs..][..mr]);
                }
                continue;
            }
            for (k, dst) in panel.chunks_exact_mut(mr).enumerate() {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = if i < live {
                        self.data[(r0 + p * mr + i) * self.rs + (k0 + k) * self.cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

impl PackB for Strided<'_> {
    fn pack_b<K: MicroKernel>(
        &self,
        kern: K,
        k0: usize,
        kc: usize,
        c0: usize,
        nc: usize,
        out: &mut [f32],
    ) {
        let nr = K::NR;
        for (p, panel) in out.chunks_exact_mut(kc * nr).enumerate() {
            let j0 = c0 + p * nr;
            let w = nr.min(c0 + nc - j0);
            // Stored column by column (a dense layer's `Wᵀ`): 8 x 8 blocks transposed in
            // registers, the last `kc % 8` steps element by element below.
            let mut k_done = 0;
            if self.rs == 1 && w == nr && nr % 8 == 0 {
                k_done = kc / 8 * 8;
                for k in (0..k_done).step_by(8) {
                    for j in (0..nr).step_by(8) {
                        let src = (k0 + k) + (j0 + j) * self.cs;
                        kern.transpose8(&self.data[src..], self.cs, &mut panel[k * nr + j..], nr);
                    }
                }
            }
            for k in k_done..kc {
                let dst = &mut panel[k * nr..][..nr];
                let base = (k0 + k) * self.rs + j0 * self.cs;
                if self.cs == 1 && w == nr {
                    // A constant-size copy (a few vector moves, no call).
                    dst.copy_from_slice(&self.data[base..base + nr]);
                    continue;
                }
                if self.cs == 1 {
                    dst[..w].copy_from_slice(&self.data[base..base + w]);
                } else {
                    for (j, d) in dst[..w].iter_mut().enumerate() {
                        *d = self.data[base + j * self.cs];
                    }
                }
                dst[w..].fill(0.0);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn pack_b_pairs<K: MicroKernel>(
        &self,
        kern: K,
        t: crate::arch::x86_64::bf16::Bf16,
        k0: usize,
        kc: usize,
        c0: usize,
        nc: usize,
        out: &mut [f32],
    ) {
        let nr = K::NR;
        for (p, panel) in out.chunks_exact_mut(kc * nr).enumerate() {
            let j0 = c0 + p * nr;
            let w = nr.min(c0 + nc - j0);
            if self.cs != 1 || w != nr || !nr.is_multiple_of(8) {
                // Columns apart, or an edge panel: packed in f32, then paired in place.
                self.pack_b(kern, k0, kc, j0, w, panel);
                t.pair_rows(panel, kc, nr);
                continue;
            }
            // Row-major (the im2col matrix, a dense layer's input): two rows read, one step of
            // pairs written.
            let row = |k: usize| &self.data[(k0 + k) * self.rs + j0..][..nr];
            for s in 0..kc.div_ceil(2) {
                let odd = (2 * s + 1 < kc).then(|| row(2 * s + 1));
                t.pair_two(row(2 * s), odd, &mut panel[s * nr..][..nr]);
            }
        }
    }
}

/// The packed GEMM driving each instruction set's micro-kernel, against a blocked scalar
/// reference (the micro-kernels alone are tested in `arch`).
#[cfg(test)]
mod tests {
    use crate::arch::bf16::round_bf16;
    use crate::arch::kernel::MicroKernel;
    use crate::arch::tests::{KernelTest, c_tile, on_every_kernel, same_bits, values};
    use crate::gemm::packed::{self, Narrow, Out, Strided};

    /// The packed GEMM driver around the tile: every `m` in 0..=2·MR against edge and interior
    /// widths of `n` (and every `n` in 0..=2·NR at a few heights), short and long `k` (257 crosses a
    /// packed block, whose partial sums are added to C), row- and column-major sources.
    #[test]
    fn packed_gemm_matches_the_blocked_reference_bit_for_bit() {
        struct T;
        impl KernelTest for T {
            fn run<K: MicroKernel>(&mut self, kern: K) {
                let (mr, nr) = (K::MR, K::NR);
                let edge_n = [0, 1, nr - 1, nr, nr + 1, 2 * nr - 1, 2 * nr];
                let mut shapes: Vec<(usize, usize)> = (0..=2 * mr)
                    .flat_map(|m| edge_n.iter().map(move |&n| (m, n)))
                    .collect();
                shapes.extend(
                    [1, mr, mr + 1]
                        .iter()
                        .flat_map(|&m| (0..=2 * nr).map(move |n| (m, n))),
                );
                for (si, &(m, n)) in shapes.iter().enumerate() {
                    let ks: &[usize] = if si % 7 == 0 {
                        &[0, 1, 6, 17, 257]
                    } else {
                        &[1, 6, 17]
                    };
                    for &k in ks {
                        for (alpha, beta) in [(1.0f32, 0.0f32), (0.75, 1.5)] {
                            let col_major_a = si % 2 == 1;
                            let col_major_b = si % 3 == 1;
                            let (a, b) = (col_major_a, col_major_b);
                            check_packed(kern, Narrow::F32, m, n, k, alpha, beta, a, b);
                        }
                    }
                }
            }
        }
        on_every_kernel(&mut T);
    }

    /// The bf16 panels: rounded operands on the f32 tiles of every instruction set, and the
    /// AVX512-BF16 pairs where the CPU has them, on edge and interior shapes, odd and even
    /// blocks of `k`, row- and column-major sources.
    #[test]
    fn bf16_panels_match_the_rounded_reference_bit_for_bit() {
        struct T;
        impl KernelTest for T {
            fn run<K: MicroKernel>(&mut self, kern: K) {
                let mut modes = vec![Narrow::Rounded];
                #[cfg(target_arch = "x86_64")]
                {
                    use crate::arch::x86_64::bf16::Bf16;
                    if let Some(t) = Bf16::new().filter(|_| (K::MR, K::NR) == (Bf16::MR, Bf16::NR))
                    {
                        modes.push(Narrow::Pairs(t));
                    }
                }
                let (mr, nr) = (K::MR, K::NR);
                for narrow in modes {
                    for (m, n) in [(1, 1), (mr, nr), (mr + 3, 2 * nr + 5), (2 * mr - 1, nr - 1)] {
                        for k in [1, 2, 7, 256, 261, 515] {
                            for (alpha, beta) in [(1.0f32, 0.0f32), (0.75, 1.5)] {
                                let (a, b) = (k % 2 == 1, m % 2 == 0);
                                check_packed(kern, narrow, m, n, k, alpha, beta, a, b);
                            }
                        }
                    }
                }
            }
        }
        on_every_kernel(&mut T);
    }

    /// `C = alpha·A·B + beta·C` by [`packed::gemm_in`] against a scalar reference that sums each
    /// `KC` block as the panels' format says: f32 products in order; for bf16, of the rounded
    /// operands, in order (`Rounded`) or pair by pair, odd step first (`Pairs`).
    #[allow(clippy::too_many_arguments)]
    fn check_packed<K: MicroKernel>(
        kern: K,
        narrow: Narrow,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        beta: f32,
        col_major_a: bool,
        col_major_b: bool,
    ) {
        let (a, b) = (values(4, m * k), values(5, k * n));
        // B element (p, j): row-major b[p·n + j], or column-major b[j·k + p] (a dense layer's Wᵀ).
        let b_at = |p: usize, j: usize| {
            if col_major_b {
                b[j * k + p]
            } else {
                b[p * n + j]
            }
        };
        // A element (i, p): row-major a[i·k + p], or column-major a[p·m + i].
        let a_at = |i: usize, p: usize| {
            if col_major_a {
                a[p * m + i]
            } else {
                a[i * k + p]
            }
        };
        let rs = n + 2;
        let mut c = c_tile(6, m, n, rs, beta);
        let mut want = c.clone();
        for i in 0..m {
            for j in 0..n {
                let e = &mut want[i * rs + j];
                if k == 0 {
                    *e = if beta == 0.0 { 0.0 } else { *e * beta };
                    continue;
                }
                for p0 in (0..k).step_by(packed::KC) {
                    let mut acc = 0.0f32;
                    let end = (p0 + packed::KC).min(k);
                    match narrow {
                        Narrow::F32 => {
                            for p in p0..end {
                                acc = a_at(i, p).mul_add(b_at(p, j), acc);
                            }
                        }
                        Narrow::Rounded => {
                            for p in p0..end {
                                acc = round_bf16(a_at(i, p)).mul_add(round_bf16(b_at(p, j)), acc);
                            }
                        }
                        #[cfg(target_arch = "x86_64")]
                        Narrow::Pairs(_) => {
                            let prod = |p: usize| {
                                if p < end {
                                    round_bf16(a_at(i, p)) * round_bf16(b_at(p, j))
                                } else {
                                    0.0
                                }
                            };
                            for p in (p0..end).step_by(2) {
                                acc += prod(p + 1);
                                acc += prod(p);
                            }
                        }
                    }
                    let bb = if p0 == 0 { beta } else { 1.0 };
                    let r = acc * alpha;
                    *e = if bb == 0.0 { r } else { e.mul_add(bb, r) };
                }
            }
        }
        let sa = if col_major_a {
            Strided {
                data: &a,
                rs: 1,
                cs: m,
                rows: m,
            }
        } else {
            Strided {
                data: &a,
                rs: k,
                cs: 1,
                rows: m,
            }
        };
        let sb = if col_major_b {
            Strided {
                data: &b,
                rs: 1,
                cs: k,
                rows: k,
            }
        } else {
            Strided {
                data: &b,
                rs: n,
                cs: 1,
                rows: k,
            }
        };
        let out = Out {
            data: &mut c,
            rs,
            rows: m,
            cols: n,
        };
        packed::gemm_in(narrow, kern, k, alpha, &sa, &sb, beta, out);
        same_bits(
            &format!(
                "{} {narrow:?} packed gemm {m}x{n}x{k} alpha={alpha} beta={beta} col_major_a={col_major_a} col_major_b={col_major_b}",
                K::ISA
            ),
            &c,
            &want,
        );
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod shapes {
    //! `cargo test --release --lib avx512_tile_shapes -- --ignored --nocapture`: the packed GEMM
    //! (1024³, one thread) on candidate register tiles, interleaved rounds, for choosing the shape
    //! above.
    use crate::arch::isa::Isa;
    use crate::arch::kernel::MicroKernel;
    use crate::arch::kernel::instantiate::micro_kernels;
    use crate::arch::x86_64::avx512::{Avx512, Zmm};
    use crate::gemm::packed::{self, Out, Strided};

    macro_rules! candidate {
        ($name:ident, $mr:literal, $nv:literal) => {
            #[derive(Clone, Copy, Debug)]
            struct $name(());
            micro_kernels!(
                $name,
                Isa::Avx512,
                Zmm,
                "avx512f,avx2,fma",
                mr = $mr,
                nv = $nv,
                narrow = $name => |k| k
            );
        };
    }
    candidate!(S12x32, 12, 2);
    candidate!(S8x32, 8, 2);
    candidate!(S14x32, 14, 2);
    candidate!(S24x16, 24, 1);
    candidate!(S16x16, 16, 1);
    candidate!(S6x64, 6, 4);
    candidate!(S8x48, 8, 3);

    fn time<K: MicroKernel>(k: K, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> f64 {
        let src = |d| Strided {
            data: d,
            rs: n,
            cs: 1,
            rows: n,
        };
        let t = std::time::Instant::now();
        let out = Out {
            data: c,
            rs: n,
            rows: n,
            cols: n,
        };
        packed::gemm(k, n, 1.0, &src(a), &src(b), 0.0, out);
        (2 * n * n * n) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    #[test]
    #[ignore]
    fn avx512_tile_shapes() {
        if Avx512::new().is_none() {
            return;
        }
        let n = 1024;
        let (a, b) = (vec![1e-3f32; n * n], vec![1e-3f32; n * n]);
        let mut c = vec![0.0f32; n * n];
        let avx2 = crate::arch::x86_64::avx2::Avx2::new().unwrap();
        let mut runs: Vec<(&str, Vec<f64>)> = vec![];
        for round in 0..7 {
            let r = [
                ("avx2 6x16", time(avx2, n, &a, &b, &mut c)),
                ("12x32", time(S12x32(()), n, &a, &b, &mut c)),
                ("8x32", time(S8x32(()), n, &a, &b, &mut c)),
                ("14x32", time(S14x32(()), n, &a, &b, &mut c)),
                ("24x16", time(S24x16(()), n, &a, &b, &mut c)),
                ("16x16", time(S16x16(()), n, &a, &b, &mut c)),
                ("6x64", time(S6x64(()), n, &a, &b, &mut c)),
                ("8x48", time(S8x48(()), n, &a, &b, &mut c)),
            ];
            if round == 0 {
                runs = r.iter().map(|(s, _)| (*s, vec![])).collect();
            }
            for (i, (_, g)) in r.iter().enumerate() {
                runs[i].1.push(*g);
            }
        }
        for (s, mut g) in runs {
            g.sort_by(f64::total_cmp);
            println!(
                "{s:>10}: median {:.1} GFLOP/s, best {:.1}",
                g[g.len() / 2],
                g[g.len() - 1]
            );
        }
    }
}
