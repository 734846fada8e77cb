//! The packed GEMM driver (BLIS loop order) over any sources that can pack themselves.
//!
//! `B` is packed a `KC x NC` block at a time into `NR`-column panels, `A` an `MC x KC` block at a
//! time into `MR`-row panels, and the micro-kernel (any [`MicroKernel`]: the tile shape comes
//! from the instruction set) multiplies one `MR x NR` tile of `C` per call.
//! Sources implement [`PackA`] / [`PackB`]: a strided matrix, or (for convolutions) an image read
//! as its im2col matrix without that matrix ever being built.
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
                b.pack_b(kern, pc, kc, jc, nc, &mut bbuf[..kc * nc.div_ceil(nr) * nr]);
                let beta = if pc == 0 { beta } else { 1.0 };
                for ic in (0..m).step_by(mcb) {
                    let mc = mcb.min(m - ic);
                    a.pack_a::<K>(ic, mc, pc, kc, &mut abuf[..kc * mc.div_ceil(mr) * mr]);
                    for jr in (0..nc).step_by(nr) {
                        let bp = &bbuf[(jr / nr) * kc * nr..][..kc * nr];
                        let cols = nr.min(nc - jr);
                        for ir in (0..mc).step_by(mr) {
                            let ap = &abuf[(ir / mr) * kc * mr..][..kc * mr];
                            let rows = mr.min(mc - ir);
                            let at = (ic + ir) * c.rs + jc + jr;
                            if rows == mr && cols == nr && c.rs >= nr {
                                kern.tile(kc, ap, bp, alpha, beta, &mut c.data[at..], c.rs);
                            } else {
                                tilebuf.fill(0.0);
                                if beta != 0.0 {
                                    for i in 0..rows {
                                        tilebuf[i * nr..][..cols]
                                            .copy_from_slice(&c.data[at + i * c.rs..][..cols]);
                                    }
                                }
                                kern.tile(kc, ap, bp, alpha, beta, tilebuf, nr);
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
}
