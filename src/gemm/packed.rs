//! The packed GEMM driver (BLIS loop order) over any sources that can pack themselves.
//!
//! `B` is packed a `KC x NC` block at a time into `NR`-column panels, `A` an `MC x KC` block at a
//! time into `MR`-row panels, and the micro-kernel multiplies one `MR x NR` tile of `C` per call.
//! Sources implement [`PackA`] / [`PackB`]: a strided matrix, or (for convolutions) an image read
//! as its im2col matrix without that matrix ever being built.
//!
//! Every element of `C` is accumulated over `k` in the same order (blocks of `KC`, in order)
//! whichever rows or columns a call covers, so splitting a product across threads by rows or
//! columns gives bit-identical results.

use crate::arch::x86_64::avx2::{self, MR, NR};
use std::cell::RefCell;

/// Depth of a packed block (the `k` extent per micro-kernel call).
pub(crate) const KC: usize = 256;
/// Rows of `A` packed at a time (a multiple of `MR`; `MC x KC` floats stay in L2).
pub(crate) const MC: usize = 120;
/// Columns of `B` packed at a time (a multiple of `NR`).
pub(crate) const NC: usize = 4080;

/// A left operand that packs `MR`-row panels of itself.
pub(crate) trait PackA: Sync {
    /// Packs rows `r0..r0 + mc` and inner indices `k0..k0 + kc` as `ceil(mc / MR)` panels: panel
    /// `p` at `out[p·kc·MR..]`, element `(k, i)` at `k·MR + i`; rows past `mc` are zero.
    fn pack_a(&self, r0: usize, mc: usize, k0: usize, kc: usize, out: &mut [f32]);
}

/// A right operand that packs `NR`-column panels of itself.
pub(crate) trait PackB: Sync {
    /// Packs inner indices `k0..k0 + kc` and columns `c0..c0 + nc` as `ceil(nc / NR)` panels:
    /// panel `p` at `out[p·kc·NR..]`, element `(k, j)` at `k·NR + j`; columns past `nc` are zero.
    fn pack_b(&self, k0: usize, kc: usize, c0: usize, nc: usize, out: &mut [f32]);
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

/// Whether the packed path runs (AVX2/FMA active, see [`crate::arch::active`]).
pub(crate) fn enabled() -> bool {
    crate::arch::avx2_fma()
}

/// `C = alpha·A·B + beta·C` with `A: m x k`, `B: k x n`, `C: m x n` (`C.rows == m`,
/// `C.cols == n`). With `beta == 0`, `C` is not read. Requires [`enabled`].
pub(crate) fn gemm(k: usize, alpha: f32, a: &impl PackA, b: &impl PackB, beta: f32, c: Out<'_>) {
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
        let mut tilebuf = [0.0f32; MR * NR];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                b.pack_b(pc, kc, jc, nc, &mut bbuf[..kc * nc.div_ceil(NR) * NR]);
                let beta = if pc == 0 { beta } else { 1.0 };
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    a.pack_a(ic, mc, pc, kc, &mut abuf[..kc * mc.div_ceil(MR) * MR]);
                    for jr in (0..nc).step_by(NR) {
                        let bp = &bbuf[(jr / NR) * kc * NR..][..kc * NR];
                        let cols = NR.min(nc - jr);
                        for ir in (0..mc).step_by(MR) {
                            let ap = &abuf[(ir / MR) * kc * MR..][..kc * MR];
                            let rows = MR.min(mc - ir);
                            let at = (ic + ir) * c.rs + jc + jr;
                            if rows == MR && cols == NR && c.rs >= NR {
                                avx2::tile(kc, ap, bp, alpha, beta, &mut c.data[at..], c.rs);
                            } else {
                                avx2::tile(kc, ap, bp, 1.0, 0.0, &mut tilebuf, NR);
                                for i in 0..rows {
                                    let dst = &mut c.data[at + i * c.rs..][..cols];
                                    let src = &tilebuf[i * NR..][..cols];
                                    for (d, s) in dst.iter_mut().zip(src) {
                                        *d = if beta == 0.0 {
                                            alpha * s
                                        } else {
                                            alpha * s + beta * *d
                                        };
                                    }
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
    fn pack_a(&self, r0: usize, mc: usize, k0: usize, kc: usize, out: &mut [f32]) {
        for (p, panel) in out.chunks_exact_mut(kc * MR).enumerate() {
            let live = MR
                .min(mc.saturating_sub(p * MR))
                .min(self.rows.saturating_sub(r0 + p * MR));
            if self.cs == 1 && live == MR {
                // Six contiguous rows: read them in step, write the panel contiguously.
                let row = |i: usize| {
                    let at = (r0 + p * MR + i) * self.rs + k0;
                    &self.data[at..at + kc]
                };
                let rows = [row(0), row(1), row(2), row(3), row(4), row(5)];
                for (k, dst) in panel.chunks_exact_mut(MR).enumerate() {
                    for (d, r) in dst.iter_mut().zip(&rows) {
                        *d = r[k];
                    }
                }
                continue;
            }
            for (k, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = if i < live {
                        self.data[(r0 + p * MR + i) * self.rs + (k0 + k) * self.cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

impl PackB for Strided<'_> {
    fn pack_b(&self, k0: usize, kc: usize, c0: usize, nc: usize, out: &mut [f32]) {
        for (p, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
            let j0 = c0 + p * NR;
            let w = NR.min(c0 + nc - j0);
            for k in 0..kc {
                let dst = &mut panel[k * NR..][..NR];
                let base = (k0 + k) * self.rs + j0 * self.cs;
                if self.cs == 1 && w == NR {
                    // A constant-size copy: two vector moves, no call.
                    let src: &[f32; NR] = self.data[base..base + NR].try_into().expect("NR floats");
                    let dst: &mut [f32; NR] = dst.try_into().expect("NR floats");
                    *dst = *src;
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
