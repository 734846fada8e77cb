//! Direct convolution on the micro-kernels of `arch` (AVX2/FMA, AVX-512).
//!
//! im2col copies every input value `k_h · k_w` times before the GEMM reads it; on the shapes of
//! small CNNs that copy costs as much as the multiply. Here the input is copied once, into a
//! *prepared* layout, and the micro-kernels read it directly:
//!
//! - the source channels are zero-padded and split by stride phase (`s_h · s_w` planes per
//!   channel, `plane[i][j] = src[i·s_h + ψ − pad_h][j·s_w + φ − pad_w]`), so every filter tap
//!   becomes a constant offset and sixteen consecutive output pixels read sixteen consecutive
//!   floats, whatever the stride, padding or dilation;
//! - rows have a pitch `pw = out_w + max column shift`: the pixels of a band of output rows are
//!   numbered `r·pw + ow`, so a 16-pixel tile never needs to know where a row ends (the few
//!   columns past `out_w` are computed and dropped).
//!
//! Forward and stride-1 backward-data use `conv_tile` (`MR` output channels × `NR` pixels, one tap
//! per step); backward-weights uses `wgrad_tile` (`MR` taps × `NR` output channels, one pixel per
//! step)
//! over the output gradient transposed to pixel-major. Work is split over images, or, inside an
//! image, over output-channel panels (forward, backward-data) and tap panels (weights), so every
//! output is summed by one thread in a fixed order.

use crate::arch::kernel::{MicroKernel, Taps};
use crate::error::{Error, Result};
use crate::kernels::accum::Accum;
use crate::kernels::activation::{Activation, map_act, split_fused, zip_map_act};
use crate::kernels::planes::Planes;
use crate::par::{self, Items, Parts};
use crate::shape::Conv2dGeom;
use crate::simd::lane::{LANES, splat};
use std::cell::RefCell;

/// Target size (floats) of one band's prepared input plus its output or gradient buffer.
const BAND_BUDGET: usize = 1 << 20;
/// Pixels per weight-gradient step block (the transposed gradient block stays in L2).
const WGRAD_BLOCK: usize = 512;

/// One direct convolution: `src [src_ch][src_h][src_w] → out [out_ch][out_h][out_w]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct {
    src_ch: usize,
    src_h: usize,
    src_w: usize,
    out_ch: usize,
    out_h: usize,
    out_w: usize,
    k: [usize; 2],
    s: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    /// The register tile `(MR, NR)` of the micro-kernels the pass is planned for.
    tile: (usize, usize),
}

/// The register tile of the active micro-kernels (the direct path runs only when there are).
fn active_tile() -> (usize, usize) {
    crate::arch::tile().unwrap_or((1, 1))
}

/// The error when the instruction set changed between planning a pass and running it (through
/// [`crate::arch::limit`] on another thread).
pub(super) fn changed(op: &'static str) -> Error {
    Error::invalid(
        op,
        "instruction set",
        "changed while the convolution ran (arch::limit called concurrently)",
    )
}

/// The prepared layout of one band.
#[derive(Clone, Copy, Debug)]
struct Layout {
    pw: usize,
    plane: usize,
    rows: usize,
    /// Output pixels of the band rounded up to whole tiles.
    npix: usize,
    /// Length of the prepared input (planes plus room for the last tile's reads).
    len: usize,
}

impl Direct {
    /// One group of a forward convolution.
    pub(super) fn forward(g: &Conv2dGeom) -> Self {
        let p = g.params();
        Direct {
            src_ch: g.c_in_g(),
            src_h: g.in_h(),
            src_w: g.in_w(),
            out_ch: g.c_out_g(),
            out_h: g.out_h(),
            out_w: g.out_w(),
            k: [g.k_h(), g.k_w()],
            s: p.stride,
            pad: p.padding,
            dil: p.dilation,
            tile: active_tile(),
        }
    }

    /// One group of a weight-gradient pass: [`Direct::forward`] planned for the tile that
    /// `arch::wgrad_tile` picks for its output channels.
    pub(super) fn for_wgrad(g: &Conv2dGeom) -> Self {
        let d = Direct::forward(g);
        Direct {
            tile: crate::arch::wgrad_tile(d.out_ch).unwrap_or(d.tile),
            ..d
        }
    }

    /// One group of a stride-1 backward-data pass as a forward convolution of the output gradient
    /// with the flipped, transposed kernel; `None` for strides above 1 or padding beyond the
    /// dilated kernel (handled by the im2col path).
    pub(super) fn backward_data(g: &Conv2dGeom) -> Option<Self> {
        let p = g.params();
        if p.stride != [1, 1] {
            return None;
        }
        let mut pad = [0; 2];
        for a in 0..2 {
            let span = p.dilation[a] * ([g.k_h(), g.k_w()][a] - 1);
            pad[a] = span.checked_sub(p.padding[a])?;
        }
        Some(Direct {
            src_ch: g.c_out_g(),
            src_h: g.out_h(),
            src_w: g.out_w(),
            out_ch: g.c_in_g(),
            out_h: g.in_h(),
            out_w: g.in_w(),
            k: [g.k_h(), g.k_w()],
            s: [1, 1],
            pad,
            dil: p.dilation,
            tile: active_tile(),
        })
    }

    fn taps(&self) -> usize {
        self.src_ch * self.k[0] * self.k[1]
    }

    /// Whether every tap offset of every band fits the `u32` offsets the micro-kernels read. A
    /// band never has more rows than the whole output, so the full-height layout bounds them all.
    pub(super) fn offsets_fit(&self) -> bool {
        self.layout(self.out_h).len <= u32::MAX as usize
    }

    /// Largest row and column shift of a tap in the phase planes.
    fn shifts(&self) -> (usize, usize) {
        (
            (self.k[0] - 1) * self.dil[0] / self.s[0],
            (self.k[1] - 1) * self.dil[1] / self.s[1],
        )
    }

    fn layout(&self, rows: usize) -> Layout {
        let (di, dj) = self.shifts();
        let (ph, pw) = (rows + di, self.out_w + dj);
        let plane = ph * pw;
        let nr = self.tile.1;
        let npix = (rows * pw).div_ceil(nr) * nr;
        let planes = self.s[0] * self.s[1] * self.src_ch;
        // The last tile starts at npix − 16 and reads up to the largest tap offset + 16.
        let len = planes * plane + pw + 2 * nr;
        Layout {
            pw,
            plane,
            rows,
            npix,
            len,
        }
    }

    /// Output rows per band: as many as fit the budget with the halo rows, at least one. A band
    /// of `r` rows needs `planes·(r + halo)·pw + per_pixel_out·r·pw` floats (plus a row of
    /// slack), so the scratch stays within `max(BAND_BUDGET, one row's needs)` for any image.
    ///
    /// `per_pixel_out` is rounded up to a multiple of 32 here rather than to the tile: bands are
    /// then the same on every instruction set, and so are the blocks that weight-gradient sums
    /// are cut into (and with them the bits of the result).
    fn band_rows(&self, per_pixel_out: usize) -> usize {
        let per_pixel_out = per_pixel_out.div_ceil(32) * 32;
        let (di, _) = self.shifts();
        let pw = self.layout(1).pw;
        let planes = self.s[0] * self.s[1] * self.src_ch;
        let per_row = (planes + per_pixel_out) * pw;
        (BAND_BUDGET.saturating_sub(planes * di * pw) / per_row.max(1)).clamp(1, self.out_h)
    }

    fn bands(&self, per_pixel_out: usize) -> impl Iterator<Item = (usize, Layout)> + use<> {
        let rows = self.band_rows(per_pixel_out);
        let me = *self;
        (0..self.out_h)
            .step_by(rows)
            .map(move |oh0| (oh0, me.layout(rows.min(me.out_h - oh0))))
    }

    /// Output channels of one group.
    pub(super) fn out_ch(&self) -> usize {
        self.out_ch
    }

    fn out_rows(&self) -> usize {
        self.out_ch.div_ceil(self.tile.0) * self.tile.0
    }

    /// Scratch of one worker for `conv_into`: a band's prepared input and output.
    pub(super) fn slot_len(&self) -> usize {
        let lay = self.layout(self.band_rows(self.out_ch));
        lay.len + self.out_rows() * lay.npix
    }

    /// Scratch for the weight gradient: prepared input, transposed gradient, and the transposed
    /// weight gradient.
    pub(super) fn wgrad_len(&self) -> usize {
        let (mr, nr) = self.tile;
        let co = self.out_ch.div_ceil(nr) * nr;
        let lay = self.layout(self.band_rows(self.out_ch));
        lay.len + lay.npix * co + self.taps().div_ceil(mr) * mr * co
    }

    /// Appends the tap offsets in the prepared layout `lay`, taps in OIHW order `(c, p, q)`.
    fn offsets(&self, lay: &Layout, off: &mut Vec<u32>) {
        for c in 0..self.src_ch {
            for p in 0..self.k[0] {
                for q in 0..self.k[1] {
                    let (rp, rq) = (p * self.dil[0], q * self.dil[1]);
                    let phase = (rp % self.s[0]) * self.s[1] + rq % self.s[1];
                    let at = ((phase * self.src_ch + c) * lay.plane)
                        + (rp / self.s[0]) * lay.pw
                        + rq / self.s[1];
                    // In range: the path is only chosen when `offsets_fit` (the micro-kernel
                    // reads u32 offsets).
                    off.push(u32::try_from(at).expect("tap offset checked by offsets_fit"));
                }
            }
        }
    }

    /// Prepares planes `planes` (indexed `phase · src_ch + c`) of the band starting at output
    /// row `oh0` from `src` (this image's source channels), into `xs` (those planes only).
    fn prepare(
        &self,
        lay: &Layout,
        src: &[f32],
        oh0: usize,
        planes: std::ops::Range<usize>,
        xs: &mut [f32],
    ) {
        let (sh, sw) = (self.s[0], self.s[1]);
        let src_plane = self.src_h * self.src_w;
        for (pi, dst) in planes.zip(xs.chunks_exact_mut(lay.plane)) {
            let (phase, c) = (pi / self.src_ch, pi % self.src_ch);
            let (psi, phi) = (phase / sw, phase % sw);
            if !self.phase_read(psi, phi) {
                // No tap reads this phase (a 1x1 kernel with a stride reads one of its
                // `s_h · s_w`): zeros, without the strided gather.
                dst.fill(0.0);
                continue;
            }
            let src_c = &src[c * src_plane..][..src_plane];
            // Columns j with 0 <= j·sw + φ − pad_w < src_w.
            let jlo = self.pad[1].saturating_sub(phi).div_ceil(sw);
            let jhi = ((self.src_w + self.pad[1]).saturating_sub(phi))
                .div_ceil(sw)
                .min(lay.pw);
            if (sh, sw, self.pad[1]) == (1, 1, 0) && lay.pw == self.src_w {
                // Stride 1, no column padding, rows as wide as the source's (every kernel
                // without column padding): the band's rows inside the source are one contiguous
                // run, copied at once instead of row by row.
                let first = oh0 as isize - self.pad[0] as isize;
                let lo = first.clamp(0, self.src_h as isize) as usize;
                let hi =
                    (first + (dst.len() / lay.pw) as isize).clamp(0, self.src_h as isize) as usize;
                let (skip, n) = ((lo as isize - first) as usize, hi.saturating_sub(lo));
                let (head, rest) = dst.split_at_mut(skip * lay.pw);
                head.fill(0.0);
                let (body, tail) = rest.split_at_mut(n * lay.pw);
                body.copy_from_slice(&src_c[lo * self.src_w..hi * self.src_w]);
                tail.fill(0.0);
                continue;
            }
            for (i, row) in dst.chunks_exact_mut(lay.pw).enumerate() {
                let ih = ((oh0 + i) * sh + psi) as isize - self.pad[0] as isize;
                if ih < 0 || ih >= self.src_h as isize || jlo >= jhi {
                    row.fill(0.0);
                    continue;
                }
                let srow = &src_c[ih as usize * self.src_w..][..self.src_w];
                row[..jlo].fill(0.0);
                row[jhi..].fill(0.0);
                let first = jlo * sw + phi - self.pad[1];
                if sw == 1 {
                    row[jlo..jhi].copy_from_slice(&srow[first..first + (jhi - jlo)]);
                } else {
                    for (k, v) in row[jlo..jhi].iter_mut().enumerate() {
                        *v = srow[first + k * sw];
                    }
                }
            }
        }
    }

    /// Whether some tap reads the stride phase `(ψ, φ)`.
    fn phase_read(&self, psi: usize, phi: usize) -> bool {
        let hits = |a: usize, ph: usize| (0..self.k[a]).any(|p| p * self.dil[a] % self.s[a] == ph);
        hits(0, psi) && hits(1, phi)
    }

    /// Prepares the whole band, in parallel over planes when it is large.
    fn prepare_all(&self, lay: &Layout, src: &[f32], oh0: usize, xs: &mut [f32]) {
        let planes = self.s[0] * self.s[1] * self.src_ch;
        let (body, tail) = xs[..lay.len].split_at_mut(planes * lay.plane);
        tail.fill(0.0);
        let _ = par::for_each(
            planes,
            body.len(),
            Items(body, lay.plane),
            #[inline(always)]
            |r, Items(x, _)| {
                self.prepare(lay, src, oh0, r, x);
                Ok(())
            },
        );
    }
}

/// Per-call state of a direct pass: the packed weights, and each band's start row, layout and
/// tap offsets (the same for every image).
#[derive(Default)]
pub(super) struct Prep {
    packed: Vec<f32>,
    off: Vec<u32>,
    bands: Vec<(usize, Layout)>,
}

thread_local! {
    /// The calling thread's two `Prep`s (a pass that runs two direct passes per image plans
    /// both), reused between calls (nothing allocates after the first).
    static PREP: RefCell<[Prep; 2]> = RefCell::new(Default::default());
}

/// Runs `f` with this thread's `Prep`s, taken out of the thread-local for the duration: a
/// parallel region inside `f` may run another pass on this thread (work stealing), which then
/// finds empty `Prep`s instead of a borrowed cell.
pub(super) fn with_preps<R>(f: impl FnOnce(&mut Prep, &mut Prep) -> R) -> R {
    let mut preps = PREP.with(|c| c.take());
    let [a, b] = &mut preps;
    let r = f(a, b);
    PREP.with(|c| *c.borrow_mut() = preps);
    r
}

/// [`with_preps`] with one `Prep`.
pub(super) fn with_prep<R>(f: impl FnOnce(&mut Prep) -> R) -> R {
    with_preps(|a, _| f(a))
}

impl Prep {
    /// Bands and their tap offsets for `d`, with `per_pixel_out` output floats per pixel.
    pub(super) fn plan_bands(&mut self, d: &Direct, per_pixel_out: usize) {
        self.bands.clear();
        self.off.clear();
        for (oh0, lay) in d.bands(per_pixel_out) {
            self.bands.push((oh0, lay));
            d.offsets(&lay, &mut self.off);
        }
    }

    /// Packs the weights of group `group` and plans the bands for [`conv_into`].
    pub(super) fn plan(&mut self, d: &Direct, weights: Weights<'_>) {
        pack(d, weights, &mut self.packed);
        self.plan_bands(d, d.out_ch);
    }
}

/// Packs `weights` (one group) into `dst` as `d`'s micro-kernels read them.
fn pack(d: &Direct, weights: Weights<'_>, dst: &mut Vec<f32>) {
    let taps = d.taps();
    let (kh, kw) = (d.k[0], d.k[1]);
    match weights {
        Weights::Forward { w, group } => {
            let rows = &w[group * d.out_ch * taps..][..d.out_ch * taps];
            let (mr, out_ch) = (d.tile.0, d.out_ch);
            crate::arch::with_kernel!(
                kern => pack_rows(Some(kern), mr, out_ch, taps, rows, dst);
                else pack_rows(None::<crate::arch::kernel::Never>, mr, out_ch, taps, rows, dst)
            );
        }
        Weights::Flipped { w, group, c_in_g } => pack_weights(
            d.tile.0,
            d.out_ch,
            taps,
            |c, t| {
                let (o, pq) = (t / (kh * kw), t % (kh * kw));
                let (p, q) = (pq / kw, pq % kw);
                w[(((group * d.src_ch + o) * c_in_g + c) * kh + (kh - 1 - p)) * kw + (kw - 1 - q)]
            },
            dst,
        ),
    }
}

/// A forward convolution's weights packed once for the direct path (all groups, for the tile of
/// the instruction set active when they were packed): an inference model packs its fixed
/// weights once instead of on every call (on the deep layers of a network at batch 1 the
/// packing took a third of the time).
#[derive(Clone, Debug)]
pub(crate) struct Prepacked {
    tile: (usize, usize),
    per_group: usize,
    data: Vec<f32>,
}

impl Prepacked {
    /// `w` (OIHW, `groups` groups) packed for `d`.
    pub(super) fn new(d: &Direct, w: &[f32], groups: usize) -> Prepacked {
        let mut data = Vec::new();
        let mut one = Vec::new();
        for group in 0..groups {
            pack(d, Weights::Forward { w, group }, &mut one);
            data.extend_from_slice(&one);
        }
        Prepacked {
            tile: d.tile,
            per_group: one.len(),
            data,
        }
    }

    /// Group `group`'s panels, when they were packed for `d`'s tile.
    pub(super) fn group(&self, d: &Direct, group: usize) -> Option<&[f32]> {
        (self.tile == d.tile)
            .then(|| {
                self.data
                    .get(group * self.per_group..(group + 1) * self.per_group)
            })
            .flatten()
    }
}

/// What the direct pass does to each output value on its way out of the band buffer:
/// `act(value + bias[o] + residual)`.
#[derive(Clone, Copy, Default)]
pub(super) struct Epi<'a> {
    /// `[out_ch]` of this group.
    pub bias: Option<&'a [f32]>,
    /// This group's output channels of this image (the output's layout).
    pub residual: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

/// [`pack_weights`] of OIHW rows (`weight(o, t) = rows[o·taps + t]`): with `kern` and
/// eight-channel panels (the AVX-512 tile), eight taps at a time by register transposes (the
/// strided scalar reads had 14 % of a batch-1 inference of the MNIST-CNN); the same values.
fn pack_rows<K: MicroKernel>(
    kern: Option<K>,
    mr: usize,
    out_ch: usize,
    taps: usize,
    rows: &[f32],
    dst: &mut Vec<f32>,
) {
    let weight = |o: usize, t: usize| rows[o * taps + t];
    let Some(kern) = kern.filter(|_| mr == 8 && K::MR == 8) else {
        return pack_weights(mr, out_ch, taps, weight, dst);
    };
    dst.clear();
    dst.resize(out_ch.div_ceil(8) * taps * 8, 0.0);
    for (p, panel) in dst.chunks_exact_mut(taps * 8).enumerate() {
        let live = out_ch.saturating_sub(p * 8).min(8);
        // Whole blocks (eight live channels, eight taps) in registers, the rest one by one.
        let blocks = if live == 8 { taps / 8 * 8 } else { 0 };
        for t0 in (0..blocks).step_by(8) {
            kern.transpose8(&rows[p * 8 * taps + t0..], taps, &mut panel[t0 * 8..], 8);
        }
        for (t, row) in panel.chunks_exact_mut(8).enumerate().skip(blocks) {
            for (i, v) in row[..live].iter_mut().enumerate() {
                *v = weight(p * 8 + i, t);
            }
        }
    }
}

/// Packs `weight(o, t)` for `o < out_ch` (zero above), taps `t < taps`, as `mr`-channel panels:
/// panel `p` at `[p·taps·mr..]`, `(t, i)` at `t·mr + i`.
fn pack_weights(
    mr: usize,
    out_ch: usize,
    taps: usize,
    weight: impl Fn(usize, usize) -> f32,
    dst: &mut Vec<f32>,
) {
    let panels = out_ch.div_ceil(mr);
    dst.clear();
    dst.resize(panels * taps * mr, 0.0);
    for (p, panel) in dst.chunks_exact_mut(taps * mr).enumerate() {
        // Written in order (`mr` read streams, one per channel): the other way round, every
        // write is `mr` floats from the last, which made this packing 14 % of a batch-1
        // inference of the MNIST-CNN.
        let live = out_ch.saturating_sub(p * mr).min(mr);
        for (t, row) in panel.chunks_exact_mut(mr).enumerate() {
            for (i, v) in row[..live].iter_mut().enumerate() {
                *v = weight(p * mr + i, t);
            }
        }
    }
}

/// Taps per block (a multiple of one channel's `per_ch` taps) whose input rows for one 16-pixel
/// tile fit comfortably in L1 (about 12 KiB: `k_h` rows of ~2 cache lines per channel and phase).
fn tap_block(d: &Direct, per_ch: usize) -> usize {
    // (Independent of the tile width, so that the blocks, and the bits of the sums, are the same
    // on every instruction set.)
    let lines_per_ch = d.s[0] * d.s[1] * d.k[0] * 2;
    let channels = (12 * 1024 / 64 / lines_per_ch.max(1))
        .max(d.src_ch.div_ceil(MAX_BLOCKS))
        .clamp(1, d.src_ch);
    channels * per_ch
}

/// Floats of packed weights a group of panels may hold so that it stays in L2 (256 KiB) beside
/// the band's input while every pixel tile reads it.
const PANEL_GROUP_FLOATS: usize = 1 << 16;

/// Panels per group for `taps` taps of `mr`-channel panels (at least one).
fn panel_group(taps: usize, mr: usize) -> usize {
    (PANEL_GROUP_FLOATS / (taps * mr).max(1)).max(1)
}

/// Most rows of any instruction set's register tile.
const MAX_MR: usize = 32;

/// Most tap blocks per pass (so their tables fit on the stack).
const MAX_BLOCKS: usize = 32;

/// Which weights a direct pass multiplies by.
#[derive(Clone, Copy)]
pub(super) enum Weights<'a> {
    /// Forward: `W[g·co_g + o][t]` (OIHW rows).
    Forward { w: &'a [f32], group: usize },
    /// Backward-data: `W[g·co_g + o][c][k_h − 1 − p][k_w − 1 − q]` for output channel `c` and tap
    /// `(o, p, q)`.
    Flipped {
        w: &'a [f32],
        group: usize,
        c_in_g: usize,
    },
}

/// `out_img` (this group's output channels of one image) = conv(`src` (this group's source
/// channels)) with the weights `prep` was planned for (or `packed`, packed for `d` already),
/// through `epi`, overwritten or added to per `accum`. `ws` holds at least one
/// [`Direct::slot_len`]; with `split`, the work inside the image is shared across the pool (the
/// caller is then not itself inside a parallel split).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_into(
    d: &Direct,
    prep: &Prep,
    packed: Option<&[f32]>,
    epi: Epi<'_>,
    src: &[f32],
    out_img: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
    split: bool,
) -> Result<()> {
    let packed = packed.unwrap_or(&prep.packed);
    crate::arch::with_kernel!(
        kern => conv_into_on(kern, d, prep, packed, epi, src, out_img, accum, ws, split);
        else Err(changed("conv2d"))
    )
}

/// [`conv_into`] on the micro-kernels `kern`.
#[allow(clippy::too_many_arguments)]
fn conv_into_on<K: MicroKernel>(
    kern: K,
    d: &Direct,
    prep: &Prep,
    packed: &[f32],
    epi: Epi<'_>,
    src: &[f32],
    out_img: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
    split: bool,
) -> Result<()> {
    let (mr, nr) = (K::MR, K::NR);
    if d.tile != (mr, nr) {
        return Err(changed("conv2d"));
    }
    let taps = d.taps();
    let out_plane = d.out_h * d.out_w;
    let rows_out = d.out_rows();
    for (bi, &(oh0, lay)) in prep.bands.iter().enumerate() {
        let off = &prep.off[bi * taps..][..taps];
        let (xs, rest) = ws.split_at_mut(lay.len);
        let yp = &mut rest[..rows_out * lay.npix];
        if split {
            d.prepare_all(&lay, src, oh0, xs);
        } else {
            let planes = d.s[0] * d.s[1] * d.src_ch;
            xs[planes * lay.plane..lay.len].fill(0.0);
            d.prepare(&lay, src, oh0, 0..planes, &mut xs[..planes * lay.plane]);
        }
        let xs = &*xs;
        // Tiles: MR output channels × NR pixels, all full (padding rows and pixels exist).
        // For each pixel tile, the taps are taken a block of source channels at a time, so the
        // input the block reads (block · k_h rows of ~16 floats) stays in L1 while every channel
        // panel uses it; the C tiles accumulate across blocks.
        let panels = rows_out / mr;
        let work = 2 * taps * d.out_ch * lay.npix;
        let block = tap_block(d, d.k[0] * d.k[1]);
        // The blocks' offsets and their maxima, once per band (at most MAX_BLOCKS).
        let blocks: [Option<(usize, Taps<'_>)>; MAX_BLOCKS] = std::array::from_fn(|b| {
            let t0 = b * block;
            (t0 < taps).then(|| (t0, Taps::new(&off[t0..(t0 + block).min(taps)])))
        });
        // Panels are taken a group at a time whose weights stay in L2 while every pixel tile
        // reads them: where the weights outweigh the band's input (the deep layers of a network
        // at batch 1), each weight then comes from memory once per band instead of once per
        // pixel tile. Each C tile still sums its tap blocks in the same order (the same bits).
        let group = panel_group(taps, mr);
        let run = |pr: std::ops::Range<usize>, yrows: &mut [f32]| {
            for g0 in pr.clone().step_by(group) {
                let gr = g0..(g0 + group).min(pr.end);
                for j0 in (0..lay.npix).step_by(nr) {
                    for (t0, tb) in blocks.iter().flatten() {
                        for p in gr.clone() {
                            let a = &packed[(p * taps + t0) * mr..];
                            let ytile = &mut yrows[(p - pr.start) * mr * lay.npix + j0..];
                            kern.conv_tile(a, xs, j0, tb, *t0 > 0, ytile, lay.npix);
                        }
                    }
                }
            }
        };
        // Copy the band's valid pixels of channels `cr` (their tiles' rows in `yrows`, from
        // `cr.start`) out through the epilogue (bias, residual, activation), one channel's rows
        // at a time while they are in cache.
        let (at, len) = (oh0 * d.out_w, lay.rows * d.out_w);
        // Rows as long as the output's (no dropped columns: every 1x1 layer) are one run.
        let (rw, pitch) = if lay.pw == d.out_w {
            (len, len)
        } else {
            (d.out_w, lay.pw)
        };
        // Replaced, in rows of a few registers or more: compiled per instruction set, a cheap
        // activation in the pass that adds the bias, any other after it over the band's rows.
        // Added to, or short rows (where the per-instruction-set loops would spend their time on
        // the remainder): the sums row by row, then the activation.
        let fused = accum == Accum::Replace && rw >= super::ROW_LANES * LANES;
        let (in_pass, after) = split_fused(epi.act);
        let copy_fused = |cr: std::ops::Range<usize>, yrows: &[f32], out: &mut [f32]| {
            crate::arch::dispatch(
                #[inline(always)]
                || {
                    for (ci, o) in cr.enumerate() {
                        // Without a bias `v + (-0.0)`, which is `v` exactly.
                        let bv = splat(epi.bias.map_or(-0.0, |b| b[o]));
                        let dst = &mut out[ci * out_plane + at..][..len];
                        let res = epi.residual.map(|r| &r[o * out_plane + at..][..len]);
                        let src = &yrows[ci * lay.npix..];
                        for (r, drow) in dst.chunks_exact_mut(rw).enumerate() {
                            let srow = &src[r * pitch..][..rw];
                            match res.map(|res| &res[r * rw..][..rw]) {
                                None => map_act(
                                    in_pass,
                                    srow,
                                    drow,
                                    #[inline(always)]
                                    |v| v + bv,
                                ),
                                Some(rr) => zip_map_act(
                                    in_pass,
                                    srow,
                                    rr,
                                    drow,
                                    #[inline(always)]
                                    |v, r| (v + bv) + r,
                                ),
                            }
                        }
                        if let Some(a) = after {
                            crate::kernels::activation::activation_in_place(a, dst);
                        }
                    }
                },
            )
        };
        let copy_rows = |cr: std::ops::Range<usize>, yrows: &[f32], out: &mut [f32]| {
            for (ci, o) in cr.enumerate() {
                let b = epi.bias.map_or(-0.0, |b| b[o]);
                let dst = &mut out[ci * out_plane + at..][..len];
                let res = epi.residual.map(|r| &r[o * out_plane + at..][..len]);
                let src = &yrows[ci * lay.npix..];
                for (r, drow) in dst.chunks_exact_mut(rw).enumerate() {
                    let srow = &src[r * pitch..][..rw];
                    let rrow = res.map(|res| &res[r * rw..][..rw]);
                    match (accum, rrow) {
                        (Accum::Replace, None) => {
                            drow.iter_mut().zip(srow).for_each(|(y, v)| *y = v + b)
                        }
                        (Accum::Add, None) => {
                            drow.iter_mut().zip(srow).for_each(|(y, v)| *y += v + b)
                        }
                        (Accum::Replace, Some(rr)) => drow
                            .iter_mut()
                            .zip(srow.iter().zip(rr))
                            .for_each(|(y, (v, r))| *y = (v + b) + r),
                        (Accum::Add, Some(rr)) => drow
                            .iter_mut()
                            .zip(srow.iter().zip(rr))
                            .for_each(|(y, (v, r))| *y += (v + b) + r),
                    }
                }
                if let Some(act) = epi.act {
                    crate::kernels::activation::activation_in_place(act, dst);
                }
            }
        };
        let copy = |cr: std::ops::Range<usize>, yrows: &[f32], out: &mut [f32]| {
            if fused {
                copy_fused(cr, yrows, out)
            } else {
                copy_rows(cr, yrows, out)
            }
        };
        if split {
            // One fork per band: each worker copies out the channels of its own panels, while
            // they are in its cache.
            par::for_each(
                panels,
                work,
                (
                    Items(&mut *yp, mr * lay.npix),
                    Items(&mut *out_img, mr * out_plane),
                ),
                #[inline(always)]
                |pr, (Items(y, _), Items(o, _))| {
                    run(pr.clone(), y);
                    copy(pr.start * mr..(pr.end * mr).min(d.out_ch), y, o);
                    Ok(())
                },
            )?;
        } else {
            run(0..panels, yp);
            copy(0..d.out_ch, yp, out_img);
        }
    }
    Ok(())
}

/// Images per weight-gradient pass are split into this many fixed chunks (when the images are
/// small) whose partial sums are added in chunk order: a split that does not depend on the
/// thread count, so results do not either.
const WGRAD_CHUNKS: usize = 4;

/// Below this many flops per image, a weight-gradient pass splits over images (in
/// [`WGRAD_CHUNKS`] chunks) instead of inside each image, where every image would cost three
/// fork-joins for little work.
const WGRAD_CHUNK_WORK: usize = 1 << 24;

impl Direct {
    /// Partial sums of a weight-gradient pass over `n` images (a function of the geometry only).
    fn wgrad_chunks(&self, n: usize) -> usize {
        let co = self.out_ch.div_ceil(self.tile.1) * self.tile.1;
        let work = 2 * self.taps() * co * self.out_h * self.out_w;
        if work < WGRAD_CHUNK_WORK {
            WGRAD_CHUNKS.min(n).max(1)
        } else {
            1
        }
    }

    /// Scratch of [`wgrad`] over `n` images: per chunk a transposed weight gradient, a band of
    /// the prepared input and of the transposed output gradient, and with `made` an image of the
    /// output gradient (made from [`Planes`] that are not stored).
    pub(super) fn wgrad_scratch(&self, n: usize, made: bool) -> usize {
        self.wgrad_then_scratch(n, made, 0)
    }

    /// [`Direct::wgrad_scratch`] with `extra` floats per chunk for [`Then`].
    pub(super) fn wgrad_then_scratch(&self, n: usize, made: bool, extra: usize) -> usize {
        (self.wgrad_slot(made) + extra) * self.wgrad_chunks(n)
    }

    fn wgrad_slot(&self, made: bool) -> usize {
        self.wgrad_len()
            + if made {
                self.out_ch * self.out_h * self.out_w
            } else {
                0
            }
    }
}

/// After the weight gradient of each image, `then(i, dy_n, out_i, ws, split)` is called with the
/// image's output gradient `dy_n`, its item `out_i` of `out` (cut into the same image ranges as
/// the partial sums), `extra` floats of scratch, and whether the call may split inside the image.
pub(super) struct Then<'a, P> {
    pub out: P,
    pub extra: usize,
    #[allow(clippy::type_complexity)]
    pub then: &'a (dyn Fn(usize, &[f32], P, &mut [f32], bool) -> Result<()> + Sync),
}

/// Parts of `.1` items per chunk (cut by chunks, split by items).
struct Images<P>(P, usize);

impl<P: Parts> Parts for Images<P> {
    fn split(self, chunks: usize) -> (Self, Self) {
        let (a, b) = self.0.split(chunks * self.1);
        (Images(a, self.1), Images(b, self.1))
    }
}

/// Weight gradient of one group over `n` images: `dW (+)= Σ_images dY·Xᵀ` through the prepared
/// input bands, as `WGRAD_CHUNKS` fixed partial sums (small images, in parallel over chunks) or
/// one sum split inside each image (large images). `dy` holds `dy_c` channels per image, of
/// which the group's start at `dy_ch0`; planes that are not stored are made an image at a time.
/// `prep` is replanned; `then` (with [`Direct::wgrad_scratch`] grown by its `extra` per chunk)
/// runs after each image.
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad<P: Parts>(
    d: &Direct,
    prep: &mut Prep,
    then: Option<Then<'_, P>>,
    n: usize,
    x: &[f32],
    x_item: usize,
    x_ch0: usize,
    dy: Planes<'_>,
    dy_c: usize,
    dy_ch0: usize,
    dw_group: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    fn narrow_enough<K: MicroKernel>(_: K, out_ch: usize) -> bool {
        out_ch <= <K::Narrow as MicroKernel>::NR
    }
    // The same pass on the narrow or the full tile (two kernel types, one argument list).
    macro_rules! on {
        ($k:expr) => {
            wgrad_on(
                $k, d, prep, then, n, x, x_item, x_ch0, dy, dy_c, dy_ch0, dw_group, accum, ws,
            )
        };
    }
    crate::arch::with_kernel!(
        kern => if narrow_enough(kern, d.out_ch) { on!(kern.narrow()) } else { on!(kern) };
        else Err(changed("conv2d_backward_weights"))
    )
}

/// [`wgrad`] on the micro-kernels `kern`.
#[allow(clippy::too_many_arguments)]
fn wgrad_on<K: MicroKernel, P: Parts>(
    kern: K,
    d: &Direct,
    prep: &mut Prep,
    then: Option<Then<'_, P>>,
    n: usize,
    x: &[f32],
    x_item: usize,
    x_ch0: usize,
    dy: Planes<'_>,
    dy_c: usize,
    dy_ch0: usize,
    dw_group: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    let (mr, nr) = (K::MR, K::NR);
    if d.tile != (mr, nr) {
        return Err(changed("conv2d_backward_weights"));
    }
    let taps = d.taps();
    let co = d.out_ch.div_ceil(nr) * nr;
    let taps_pad = taps.div_ceil(mr) * mr;
    let (src_plane, out_plane) = (d.src_h * d.src_w, d.out_h * d.out_w);
    let chunks = d.wgrad_chunks(n);
    let made = !matches!(dy, Planes::Dense(_));
    let (then, extra, out) = match then {
        Some(Then { out, extra, then }) => (Some(then), extra, Some(out)),
        None => (None, 0, None),
    };
    let slot = d.wgrad_slot(made) + extra;
    let img = slot - extra - d.wgrad_len();
    prep.plan_bands(d, d.out_ch);
    let prep = &*prep;

    // One image into `dwt` (the transposed gradient, accumulated), with scratch `ws` (the
    // image of `dy` when it is made, `then`'s scratch, then the band), then `then`.
    let split = chunks == 1;
    let image = |i: usize, dwt: &mut [f32], ws: &mut [f32], out: Option<P>| -> Result<()> {
        let x_n = &x[i * x_item + x_ch0 * src_plane..][..d.src_ch * src_plane];
        let (dy_img, ws) = ws.split_at_mut(img);
        let (then_ws, ws) = ws.split_at_mut(extra);
        let dy_n = dy.planes(i * dy_c + dy_ch0, d.out_ch, out_plane, dy_c, dy_img, split)?;
        for (bi, &(oh0, lay)) in prep.bands.iter().enumerate() {
            let off = &prep.off[bi * taps..][..taps];
            let (xs, rest) = ws.split_at_mut(lay.len);
            let dyt = &mut rest[..lay.npix * co];
            d.prepare_all(&lay, x_n, oh0, xs);
            transpose_band(kern, d, &lay, dy_n, oh0, co, dyt);
            let (xs, dyt) = (&*xs, &*dyt);
            let work = 2 * taps * co * lay.npix;
            par::for_each(
                taps_pad / mr,
                work,
                Items(&mut *dwt, mr * co),
                #[inline(always)]
                |tr, Items(c, _)| {
                    let mut xo = [0usize; MAX_MR];
                    for (ti, tp) in tr.enumerate() {
                        let t0 = tp * mr;
                        let ctile = &mut c[ti * mr * co..][..mr * co];
                        for j0 in (0..lay.npix).step_by(WGRAD_BLOCK) {
                            let len = WGRAD_BLOCK.min(lay.npix - j0);
                            for (i, o) in xo[..mr].iter_mut().enumerate() {
                                *o = off[(t0 + i).min(taps - 1)] as usize + j0;
                            }
                            for c0 in (0..co).step_by(nr) {
                                kern.wgrad_tile(
                                    len,
                                    xs,
                                    &xo[..mr],
                                    &dyt[j0 * co + c0..],
                                    co,
                                    &mut ctile[c0..],
                                    co,
                                );
                            }
                        }
                    }
                    Ok(())
                },
            )?;
        }
        match (then, out) {
            (Some(then), Some(out)) => then(i, dy_n, out, then_ws, split),
            _ => Ok(()),
        }
    };
    let dwt_len = taps_pad * co;
    let per = n.div_ceil(chunks);
    // `then`'s outputs, cut into the chunks' image ranges (an item per image).
    par::for_each_group(
        chunks,
        par::groups(chunks, 2 * taps * co * out_plane * n),
        (Items(&mut ws[..chunks * slot], slot), Images(out, per)),
        &mut [],
        0,
        #[inline(always)]
        |r, (Items(slots, _), Images(mut out, _)), _| {
            for (c, s) in r.zip(slots.chunks_exact_mut(slot)) {
                let (dwt, band) = s.split_at_mut(dwt_len);
                dwt.fill(0.0);
                for i in c * per..((c + 1) * per).min(n) {
                    let (one, rest) = out.split(1);
                    out = rest;
                    image(i, dwt, band, one)?;
                }
            }
            Ok(())
        },
    )?;
    // Partial sums in chunk order, then dW[o][t] = dWᵀ[t][o].
    let (first, rest) = ws[..chunks * slot].split_at_mut(slot);
    for s in rest.chunks_exact(slot) {
        for (a, b) in first[..dwt_len].iter_mut().zip(&s[..dwt_len]) {
            *a += b;
        }
    }
    let dwt_all = &first[..dwt_len];
    for (o, row) in dw_group.chunks_exact_mut(taps).enumerate() {
        for (t, v) in row.iter_mut().enumerate() {
            *v = accum.apply(*v, dwt_all[t * co + o]);
        }
    }
    Ok(())
}

/// `dyT[pixel][o]` for one band: the gradient pixel-major, zero past `out_w` and `out_ch`
/// (split by band rows; row `r` covers pixels `r·pw .. (r+1)·pw`).
fn transpose_band<K: MicroKernel>(
    kern: K,
    d: &Direct,
    lay: &Layout,
    dy_n: &[f32],
    oh0: usize,
    co: usize,
    dyt: &mut [f32],
) {
    let out_plane = d.out_h * d.out_w;
    let (body, tail) = dyt.split_at_mut(lay.rows * lay.pw * co);
    tail.fill(0.0);
    let _ = par::for_each(
        lay.rows,
        lay.npix * co,
        Items(body, lay.pw * co),
        #[inline(always)]
        |rr, Items(t, _)| {
            for (k, r) in rr.enumerate() {
                let rows = &mut t[k * lay.pw * co..][..lay.pw * co];
                rows[d.out_w * co..].fill(0.0);
                let at = (oh0 + r) * d.out_w;
                // 8 x 8 blocks: eight channels' runs of eight pixels read, written as eight
                // pixels' runs of eight channels, in registers (channels past `out_ch` are zero;
                // a partial block goes through a zero-padded copy).
                for o0 in (0..co).step_by(8) {
                    let live = d.out_ch.saturating_sub(o0).min(8);
                    for ow0 in (0..d.out_w).step_by(8) {
                        let w = (d.out_w - ow0).min(8);
                        let src = o0 * out_plane + at + ow0;
                        if w == 8 && live == 8 {
                            kern.transpose8(
                                &dy_n[src..],
                                out_plane,
                                &mut rows[ow0 * co + o0..],
                                co,
                            );
                            continue;
                        }
                        let mut blk = [0.0f32; 64];
                        for (i, b) in blk.chunks_exact_mut(8).enumerate().take(live) {
                            b[..w].copy_from_slice(&dy_n[src + i * out_plane..][..w]);
                        }
                        let mut out = [0.0f32; 64];
                        kern.transpose8(&blk, 8, &mut out, 8);
                        for (j, o) in out.chunks_exact(8).enumerate().take(w) {
                            rows[(ow0 + j) * co + o0..][..8].copy_from_slice(o);
                        }
                    }
                }
            }
            Ok(())
        },
    );
}
