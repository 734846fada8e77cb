//! Winograd convolution F(m×m, 3×3) for 3×3, stride-1, undilated, one-group convolutions
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into `m×m` tiles, each read from an `α×α` input tile (`α = m + 2`). With the
//! transforms `V = Bᵀ d B` of each input tile `d` (per input channel) and `U = G g Gᵀ` of each
//! filter `g` (per output and input channel), every one of the `α²` transformed positions `ξ`
//! is one matrix product over the channels, `M_ξ = U_ξ · V_ξ` (`[c_out × c_in] · [c_in ×
//! tiles]`), run on the packed GEMM's micro-kernels, and each output tile is `Aᵀ M A`. That is
//! `α²` multiplies per tile and channel pair where the direct path does `9·m²`: 2.25x fewer for
//! F(2×2, 3×3) and 4x fewer for F(4×4, 3×3), against transforms that cost `O(α³)` per tile and
//! channel. The transforms run eight tiles at a time on lanes, in a fixed order and without
//! fused multiply-adds, so every instruction set gives the same bits.
//!
//! In the forward pass (and the input gradient, which runs as one) the tiles' windows reach the
//! lanes through the instruction set's 8 × 8 register transpose: eight tiles of a tile row lie
//! `m` floats apart in each input row, so a transpose whose source rows are `m` apart gives one
//! lane per column of the window, without a gather. The input rows of a stretch of tiles are
//! first copied into a buffer on the stack, zero in the padding. The 1-D transforms are in
//! factored form (`Axis`: the products of the matrices' rows shared, 19 lane operations for
//! `Bᵀ` of F(4×4) where the matrix has 44), and the output transform turns its lanes back into
//! rows with the same transpose, then adds the shortcut and applies the activation to each tile
//! row of a channel while it is in L1.
//!
//! The two gradients run on the same pieces. The input gradient of a 3×3 stride-1 convolution
//! with padding `p ≤ 2` is itself one ([`data_choice`]): `dy` convolved with every filter
//! transposed and turned by 180°, padded by `2 − p`, so it is the forward algorithm on that
//! geometry, its weights transformed from the turned filters. The weight gradient is the
//! adjoint of the forward tile in the weights ([`weight_grad`]): the input transform as above,
//! the output gradient's tiles transformed by `A dY Aᵀ`, one product per position over the
//! tiles of the batch, and `Gᵀ S G` per filter.
//!
//! Numerics: the transforms' coefficients (up to 8 and 1/24 for F(4×4)) widen the range of the
//! intermediate values, so the error grows with the tile. Against the `f64` reference over the
//! test shapes (`tests/winograd.rs`), the largest error relative to the result's magnitude is
//! 4e-7 for F(2×2) and 9e-6 for F(4×4) in the forward pass, 4e-7 and 1e-5 in the input
//! gradient, 7e-7 and 9e-6 in the weight gradient; against the direct path at 64–512 channels
//! (576–4608 terms per sum) the forward pass reaches 1e-6 and 3e-5. The tests bound all three at
//! 1e-5 and 3e-4, and the gradient checks, the PyTorch comparisons of `tests/zoo.rs` and the
//! other suites run with each tile forced (`CNNKIT_WINOGRAD`, `.ci/run`), F(4×4) within ten
//! times the direct path's tolerances. A NaN or infinity in an input tile reaches the whole
//! output tile (the direct path confines it to the outputs whose window holds it).
//!
//! Work is split per image over transformed positions for the products (each a product over
//! every output channel), over output channels for the output transform and over input
//! channels for the input transform: each value is summed by one
//! thread in a fixed order, so the bits do not depend on the thread count. The weight
//! gradient's sums are split by output channel and run in image and block order.

use crate::arch::kernel::MicroKernel;
use crate::error::{Error, Result};
use crate::gemm::{MatMut, MatRef, gemm_serial_f32};
use crate::kernels::accum::Accum;
use crate::kernels::activation::{Activation, activation_in_place};
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use crate::simd::lane::{Lane, splat};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Tiles a transform handles at once (lanes of its arrays).
const L: usize = 8;

/// Target floats of one worker's transformed input and products per block of tiles.
const BLOCK_BUDGET: usize = 1 << 19;

/// Which convolution algorithm 3×3 stride-1 convolutions use ([`set_winograd`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Winograd {
    /// Chosen per layer shape by a cost model measured against the direct path; the default.
    Auto,
    /// Never: the direct (or im2col) path.
    Off,
    /// F(2×2, 3×3) wherever it applies.
    F2,
    /// F(4×4, 3×3) wherever it applies.
    F4,
}

/// The environment variable that gives [`winograd`]'s setting before [`set_winograd`] is first
/// called: `auto`, `off`, `f2` or `f4` (any case), so that a whole test suite or program runs
/// with one tile forced; another value is ignored (`Auto`).
pub const WINOGRAD_ENV: &str = "CNNKIT_WINOGRAD";

/// The setting, or [`UNREAD`] before the first read of [`WINOGRAD_ENV`].
static MODE: AtomicU8 = AtomicU8::new(UNREAD);
const UNREAD: u8 = u8::MAX;

impl std::str::FromStr for Winograd {
    type Err = Error;

    /// `auto`, `off`, `f2` or `f4`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Winograd::Auto),
            "off" => Ok(Winograd::Off),
            "f2" => Ok(Winograd::F2),
            "f4" => Ok(Winograd::F4),
            _ => Err(Error::invalid(
                "winograd",
                "setting",
                format!("'{s}' is not one of auto, off, f2, f4"),
            )),
        }
    }
}

fn code(w: Winograd) -> u8 {
    match w {
        Winograd::Auto => 0,
        Winograd::Off => 1,
        Winograd::F2 => 2,
        Winograd::F4 => 3,
    }
}

/// Sets the algorithm of every later 3×3 stride-1 convolution pass (forward, input gradient and
/// weight gradient) in this process (as [`crate::arch::limit`] sets the instruction set):
/// [`Winograd::Auto`] by default (or as [`WINOGRAD_ENV`] says), `Off` for the direct path's
/// exact sums, `F2`/`F4` to force a tile where it applies (one group, 3×3, stride 1, dilation
/// 1, on an instruction set with micro-kernels; for the input gradient, padding at most 2).
pub fn set_winograd(w: Winograd) {
    MODE.store(code(w), Ordering::Relaxed);
}

/// The setting of [`set_winograd`].
pub fn winograd() -> Winograd {
    let mut m = MODE.load(Ordering::Relaxed);
    if m == UNREAD {
        let env = std::env::var(WINOGRAD_ENV).ok();
        let w = env.and_then(|v| v.parse().ok()).unwrap_or(Winograd::Auto);
        // A concurrent `set_winograd` wins.
        let _ = MODE.compare_exchange(UNREAD, code(w), Ordering::Relaxed, Ordering::Relaxed);
        m = MODE.load(Ordering::Relaxed);
    }
    match m {
        1 => Winograd::Off,
        2 => Winograd::F2,
        3 => Winograd::F4,
        _ => Winograd::Auto,
    }
}

/// One tile size: `m×m` outputs from `α×α` inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tile {
    F2,
    F4,
}

impl Tile {
    pub(super) fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    fn alpha(self) -> usize {
        self.m() + 2
    }
}

// F(2×2, 3×3): interpolation points 0, ±1, ∞. (`BT2` and `BT4` are the matrices the factored
// forms of `Axis::bt` compute; the tests check them against each other.)
#[cfg(test)]
const BT2: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
const G2: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const AT2: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

// F(4×4, 3×3): interpolation points 0, ±1, ±2, ∞.
#[cfg(test)]
const BT4: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const G4: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const AT4: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// Whether `g` has Winograd's shape: one group, 3×3, stride 1, dilation 1.
pub(super) fn fits(g: &Conv2dGeom) -> bool {
    let p = g.params();
    g.groups() == 1
        && [g.k_h(), g.k_w()] == [3, 3]
        && p.stride == [1, 1]
        && p.dilation == [1, 1]
        && crate::gemm::packed::enabled()
}

/// A pass of a convolution: each has its own measured Winograd table, and its own choice of
/// precision (`plan::in_bf16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    Forward,
    Data,
    Weights,
}

/// The tile [`set_winograd`] and the cost model choose for `g`'s forward pass, `None` for the
/// direct path.
///
/// The cost model is a table of where each tile measured faster than the direct path, on an
/// AMD EPYC (Zen 4 class, AVX2 micro-kernels, one thread, batch 1, the weights transformed on
/// every call; `docs/perf-log.md` has the grid): the transforms cost about as much per tile
/// and channel as the products save at 16–32 channels, and the products of a few tiles over
/// many channels run below the GEMM's speed (512 channels lose at every size up to 28×28).
/// F(4×4) from 64 channels (at most 256) on images of at least 56×56 outputs, and from 128
/// channels on 28×28; F(2×2) at 256 channels on 28×28, where F(4×4)'s weight transform (36
/// values per filter, made on every training step) costs more than its products save. With the
/// transforms on register transposes and the epilogue in the output transform, 64 channels on
/// 56×56 measured 1.5x the direct path alone (one thread, the weights transformed on every
/// call), 128 channels on 28×28 1.3x, and ResNet-18's batch-1 inference 1.13x with both.
pub(super) fn winograd_choice(g: &Conv2dGeom) -> Option<Tile> {
    choice(g, Pass::Forward)
}

/// The tile for `g`'s weight gradient ([`weight_grad`]), `None` for the direct path.
///
/// Its table, measured as the forward one but on two threads at batch 1 and 8 (the grid is in
/// `docs/perf-log.md`), reaches further than the forward pass's, because the direct weight
/// gradient runs further below the GEMM's speed on small images: F(4×4) from 64 channels on
/// images of at least 28×28 (1.2–1.6x at 64 channels, 1.5–2.3x at 128), F(2×2) at 128
/// channels on 14×14 (1.1–1.2x) and at 256 channels from 7×7 (1.3–1.8x); none above 256.
pub(super) fn wgrad_choice(g: &Conv2dGeom) -> Option<Tile> {
    choice(g, Pass::Weights)
}

/// [`set_winograd`]'s tile, or the table of `pass`, for `g` (for [`Pass::Data`], the geometry of
/// the backward-data pass as a forward convolution).
fn choice(g: &Conv2dGeom, pass: Pass) -> Option<Tile> {
    if !fits(g) {
        return None;
    }
    match winograd() {
        Winograd::Off => None,
        Winograd::F2 => Some(Tile::F2),
        Winograd::F4 => Some(Tile::F4),
        // Under bf16 only the F(4×4) picks of the tables: they measured faster than the bf16
        // im2col path (weight gradients at 64 and 128 channels on 56×56 and 28×28, the input
        // gradient at 128 channels on 28×28), the F(2×2) picks slower. Winograd itself
        // multiplies f32. The forward pass's picks below 128 channels or 56×56 were measured
        // against the f32 direct path only; under bf16 those layers keep the bf16 path.
        Winograd::Auto if crate::gemm::precision::bf16() => {
            let forward_measured =
                g.c_in().min(g.c_out()) >= 128 && g.out_h() * g.out_w() >= 56 * 56;
            auto(g, pass).filter(|&t| t == Tile::F4 && (pass != Pass::Forward || forward_measured))
        }
        Winograd::Auto => auto(g, pass),
    }
}

/// The measured table of `pass` for `g`.
fn auto(g: &Conv2dGeom, pass: Pass) -> Option<Tile> {
    let (lo, hi) = (g.c_in().min(g.c_out()), g.c_in().max(g.c_out()));
    let pixels = g.out_h() * g.out_w();
    let at_least = |side: usize| pixels >= side * side;
    if hi > 256 {
        return None;
    }
    match pass {
        Pass::Forward if lo >= 64 && at_least(56) => Some(Tile::F4),
        Pass::Forward if lo >= 256 && at_least(28) => Some(Tile::F2),
        Pass::Forward if lo >= 128 && at_least(28) => Some(Tile::F4),
        Pass::Data if lo >= 256 && at_least(28) => Some(Tile::F2),
        Pass::Data if lo >= 128 && at_least(28) => Some(Tile::F4),
        Pass::Data if lo >= 64 && at_least(112) => Some(Tile::F4),
        Pass::Weights if lo >= 256 && at_least(7) => Some(Tile::F2),
        Pass::Weights if lo >= 128 && at_least(28) => Some(Tile::F4),
        Pass::Weights if lo >= 128 && at_least(14) => Some(Tile::F2),
        Pass::Weights if lo >= 64 && at_least(28) => Some(Tile::F4),
        _ => None,
    }
}

/// The backward-data pass of `g` as a forward convolution, and its tile, where Winograd runs it:
/// for a 3×3 stride-1 convolution with padding `p ≤ 2`, `dx` is the convolution of `dy` (its
/// `c_out` channels in, `c_in` out) with each filter transposed and turned by 180°, padded by
/// `2 − p`. Its table (measured as [`wgrad_choice`]'s): F(4×4) from 128 channels on images of
/// at least 28×28 (1.3–2x at batch 8; at batch 1 0.9–1.3x) and from 64 channels on 112×112
/// (1.1–1.5x), F(2×2) at 256 channels from 28×28 (1.1–1.5x).
pub(super) fn data_choice(g: &Conv2dGeom) -> Option<(Conv2dGeom, Tile)> {
    if !fits(g) {
        return None;
    }
    let [ph, pw] = g.params().padding;
    if ph > 2 || pw > 2 {
        return None;
    }
    let p = crate::shape::Conv2dParams {
        padding: [2 - ph, 2 - pw],
        ..Default::default()
    };
    let x = crate::shape::Shape4::new(g.n(), g.c_out(), g.out_h(), g.out_w());
    let gd = Conv2dGeom::new(x, g.c_in(), [3, 3], p).ok()?;
    if (gd.out_h(), gd.out_w()) != (g.in_h(), g.in_w()) {
        return None;
    }
    let t = choice(&gd, Pass::Data)?;
    Some((gd, t))
}

/// Tiles of one image: `(rows, columns)`.
fn tiles(g: &Conv2dGeom, t: Tile) -> (usize, usize) {
    (g.out_h().div_ceil(t.m()), g.out_w().div_ceil(t.m()))
}

/// Tile rows per block: a worker's transformed input and products within the budget.
fn block_rows(g: &Conv2dGeom, t: Tile) -> usize {
    let (th, tw) = tiles(g, t);
    let a2 = t.alpha() * t.alpha();
    let per_row = a2 * (g.c_in() + g.c_out()) * tw;
    (BLOCK_BUDGET / per_row.max(1)).clamp(1, th)
}

/// Scratch of one worker: one block's transformed input and products.
pub(super) fn slot_len(g: &Conv2dGeom, t: Tile) -> usize {
    let (_, tw) = tiles(g, t);
    let a2 = t.alpha() * t.alpha();
    a2 * (g.c_in() + g.c_out()) * stride(tw * block_rows(g, t))
}

/// The distance between two positions' rows of a block's transformed values for `pb` tiles:
/// [`L`] more, so that the last group of lanes is read and written whole (the lanes past `pb`
/// are never used).
fn stride(pb: usize) -> usize {
    pb + L
}

thread_local! {
    /// The calling thread's transformed weights, reused between calls.
    static U: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the transformed weights of `w` for tile `t` (`[α²][c_out][c_in]`), made in the
/// calling thread's buffer (taken out of it for the call, as the direct path's packing). With
/// `flipped`, `g` is a backward-data pass's geometry ([`data_choice`]) and `w` the weights of
/// the convolution it differentiates (`[g.c_in()][g.c_out()][3][3]`): each filter is read
/// transposed and turned by 180°.
pub(super) fn with_weights<R>(
    g: &Conv2dGeom,
    t: Tile,
    w: &[f32],
    flipped: bool,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    let mut u = U.with(|c| c.take());
    transform_weights(g, t, w, flipped, &mut u);
    let r = f(&u);
    U.with(|c| *c.borrow_mut() = u);
    r
}

/// `u[ξ][o][c] = (G · w[o][c] · Gᵀ)[ξ]`, or with `flipped` of `w[c][o]` turned by 180°.
fn transform_weights(g: &Conv2dGeom, t: Tile, w: &[f32], flipped: bool, u: &mut Vec<f32>) {
    let (co, ci) = (g.c_out(), g.c_in());
    let a = t.alpha();
    let n = co * ci;
    u.clear();
    u.resize(a * a * n, 0.0);
    // A block of filters at a time, each position's values of the block written together.
    const BLOCK: usize = 64;
    let mut tmp = [0.0f32; BLOCK * 36];
    for f0 in (0..n).step_by(BLOCK) {
        let nb = (n - f0).min(BLOCK);
        for f in 0..nb {
            let k: [f32; 9] = if flipped {
                let (o, c) = ((f0 + f) / ci, (f0 + f) % ci);
                let mut k: [f32; 9] = w[(c * co + o) * 9..][..9].try_into().expect("3x3 filter");
                k.reverse();
                k
            } else {
                w[(f0 + f) * 9..][..9].try_into().expect("3x3 filter")
            };
            let k = &k;
            let out = &mut tmp[f * a * a..][..a * a];
            match t {
                Tile::F2 => filter_tf(&G2, k, out),
                Tile::F4 => filter_tf(&G4, k, out),
            }
        }
        for xi in 0..a * a {
            for (f, v) in u[xi * n + f0..][..nb].iter_mut().enumerate() {
                *v = tmp[f * a * a + xi];
            }
        }
    }
}

/// `out[ξ] = (G k Gᵀ)[ξ]` for one filter `k` (row-major 3×3).
#[inline(always)]
fn filter_tf<const A: usize>(gm: &[[f32; 3]; A], k: &[f32; 9], out: &mut [f32]) {
    let mut t = [[0.0f32; 3]; A];
    for i in 0..A {
        for j in 0..3 {
            t[i][j] = gm[i][0] * k[j] + gm[i][1] * k[3 + j] + gm[i][2] * k[6 + j];
        }
    }
    for i in 0..A {
        for j in 0..A {
            out[i * A + j] = t[i][0] * gm[j][0] + t[i][1] * gm[j][1] + t[i][2] * gm[j][2];
        }
    }
}

/// What follows a forward pass's sums in [`image`]: `act(conv + bias + residual)` (the direct
/// path's epilogue, for one image).
#[derive(Clone, Copy, Default)]
pub(super) struct Epi<'a> {
    /// Added after the bias (the output's shape).
    pub(super) residual: Option<&'a [f32]>,
    /// Applied last.
    pub(super) act: Option<Activation>,
}

/// Image `x_n`'s output into `y_n` (bias added, then `epi`'s residual, this image's, and
/// activation, as each tile row of a channel is written), or added to `y_n` with `add` (and
/// `epi` unused), with the transformed weights `u`, in blocks of tile rows; `ws` holds one
/// [`slot_len`]; with `split`, each block's work is shared by the pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn image(
    g: &Conv2dGeom,
    t: Tile,
    u: &[f32],
    b: Option<&[f32]>,
    epi: Epi<'_>,
    x_n: &[f32],
    y_n: &mut [f32],
    add: bool,
    ws: &mut [f32],
    split: bool,
) -> Result<()> {
    crate::arch::with_kernel!(
        kern => image_on(kern, g, t, u, b, epi, x_n, y_n, add, ws, split);
        else Err(no_kernels())
    )
}

/// [`image`] with `kern`'s transposes.
#[allow(clippy::too_many_arguments)]
fn image_on<K: MicroKernel>(
    kern: K,
    g: &Conv2dGeom,
    t: Tile,
    u: &[f32],
    b: Option<&[f32]>,
    epi: Epi<'_>,
    x_n: &[f32],
    y_n: &mut [f32],
    add: bool,
    ws: &mut [f32],
    split: bool,
) -> Result<()> {
    let (th, tw) = tiles(g, t);
    let rows = block_rows(g, t);
    let (ci, co, a2) = (g.c_in(), g.c_out(), t.alpha() * t.alpha());
    if ws.len() < slot_len(g, t) || u.len() != a2 * co * ci {
        return Err(Error::invalid(
            "conv2d_forward",
            "winograd",
            "scratch or weights planned for another setting (set_winograd called concurrently)",
        ));
    }
    for r0 in (0..th).step_by(rows) {
        let tr = r0..(r0 + rows).min(th);
        let pb = tr.len() * tw;
        let ps = stride(pb);
        let (v, rest) = ws.split_at_mut(a2 * ci * ps);
        let m = &mut rest[..a2 * co * ps];
        let out_plane = g.out_plane();
        transform_input_on(kern, g, t, x_n, tr.start, tw, v, split)?;
        // Products: M_ξ = U_ξ · V_ξ into M[ξ][o][p], by position: each product has every output
        // channel (a split by channel would leave each thread a few rows of the register tile).
        let v: &[f32] = v;
        let products = |xr: std::ops::Range<usize>, m: &mut [f32]| -> Result<()> {
            for (xi, m_xi) in xr.zip(m.chunks_exact_mut(co * ps)) {
                let a = MatRef::new(&u[xi * co * ci..], co, ci, ci, 1)?;
                let bm = MatRef::new(&v[xi * ps..], ci, pb, a2 * ps, 1)?;
                let c = MatMut::new(m_xi, co, pb, ps, 1)?;
                gemm_serial_f32(1.0, a, bm, 0.0, c, false);
            }
            Ok(())
        };
        if split {
            par::for_each(
                a2,
                2 * a2 * co * ci * pb,
                Items(&mut *m, co * ps),
                #[inline(always)]
                |xr, Items(m, _)| products(xr, m),
            )?;
        } else {
            products(0..a2, m)?;
        }
        // Output transform, by output channel.
        let m: &[f32] = m;
        let output = crate::arch::inlined(
            #[inline(always)]
            |or: std::ops::Range<usize>, y: &mut [f32]| {
                for (o, y_o) in or.zip(y.chunks_exact_mut(out_plane)) {
                    let m_o = &m[o * ps..];
                    let bias = b.map_or(0.0, |b| b[o]);
                    let epi = Epi {
                        residual: epi.residual.map(|r| &r[o * out_plane..][..out_plane]),
                        act: epi.act,
                    };
                    let to = (m_o, co * ps, ps, bias, epi, add, tr.start, tw, y_o);
                    match t {
                        Tile::F2 => output_tf::<K, Axis2, 4, 2>(kern, g, to),
                        Tile::F4 => output_tf::<K, Axis4, 6, 4>(kern, g, to),
                    }
                }
            },
        );
        if split {
            par::for_each(
                co,
                a2 * co * pb * 8,
                Items(&mut *y_n, out_plane),
                #[inline(always)]
                |or, Items(y, _)| {
                    output(or, y);
                    Ok(())
                },
            )?;
        } else {
            crate::arch::dispatch(
                #[inline(always)]
                || output(0..co, y_n),
            );
        }
    }
    Ok(())
}

/// The input transform of a block of tile rows from `r0` of image `x_n` into `v` (`V[c][ξ][p]`),
/// by input channel, shared by the pool with `split`.
fn transform_input(
    g: &Conv2dGeom,
    t: Tile,
    x_n: &[f32],
    r0: usize,
    tw: usize,
    v: &mut [f32],
    split: bool,
) -> Result<()> {
    crate::arch::with_kernel!(
        kern => transform_input_on(kern, g, t, x_n, r0, tw, v, split);
        else Err(no_kernels())
    )
}

/// Winograd runs only where micro-kernels do ([`fits`]); reaching it without them is a setting
/// changed between planning and running.
fn no_kernels() -> Error {
    Error::invalid(
        "conv2d",
        "winograd",
        "no micro-kernels active (the instruction set was limited between planning and running)",
    )
}

/// [`transform_input`] with `kern`'s transposes.
#[allow(clippy::too_many_arguments)]
fn transform_input_on<K: MicroKernel>(
    kern: K,
    g: &Conv2dGeom,
    t: Tile,
    x_n: &[f32],
    r0: usize,
    tw: usize,
    v: &mut [f32],
    split: bool,
) -> Result<()> {
    let (ci, in_plane) = (g.c_in(), g.in_plane());
    let a2 = t.alpha() * t.alpha();
    let ps = v.len() / (a2 * ci);
    let input = crate::arch::inlined(
        #[inline(always)]
        |cr: std::ops::Range<usize>, v: &mut [f32]| {
            for (c, v_c) in cr.zip(v.chunks_exact_mut(a2 * ps)) {
                let x_c = &x_n[c * in_plane..][..in_plane];
                match t {
                    Tile::F2 => input_tf::<K, Axis2, 4, 2>(kern, g, x_c, r0, tw, v_c),
                    Tile::F4 => input_tf::<K, Axis4, 6, 4>(kern, g, x_c, r0, tw, v_c),
                }
            }
        },
    );
    if split {
        par::for_each(
            ci,
            a2 * ci * ps * 8,
            Items(v, a2 * ps),
            #[inline(always)]
            |cr, Items(v, _)| {
                input(cr, v);
                Ok(())
            },
        )
    } else {
        crate::arch::dispatch(
            #[inline(always)]
            || input(0..ci, v),
        );
        Ok(())
    }
}

/// Tiles of a tile row whose input rows are copied at once (a chunk): one copy per row and chunk.
const CHUNK: usize = 8 * L;

/// Floats of one input row of a chunk: its tiles at F(4×4)'s stride and one register more, so
/// that every lane's row of [`MicroKernel::transpose8`] lies inside it.
const CHUNK_W: usize = CHUNK * 4 + 8;

/// `row_buf` = columns `ox..ox + row_buf.len()` of input row `iy` of the plane `x_c` (`h × w`),
/// zero where they lie outside it (the padding). In lanes, without library calls (a `memcpy`
/// or `memset` call per short run costs more than the copy).
#[inline(always)]
fn copy_row(x_c: &[f32], [h, w]: [isize; 2], iy: isize, ox: isize, row_buf: &mut [f32]) {
    let n = row_buf.len() as isize;
    let (lo, hi) = (ox.max(0), (ox + n).min(w));
    let (a, b) = if iy < 0 || iy >= h || lo >= hi {
        (row_buf.len(), row_buf.len())
    } else {
        ((lo - ox) as usize, (hi - ox) as usize)
    };
    for v in &mut row_buf[..a] {
        crate::arch::stream::loop_barrier();
        *v = 0.0;
    }
    if a < b {
        let row = &x_c[(iy * w) as usize..][..w as usize];
        crate::simd::iter::copy(&row[lo as usize..hi as usize], &mut row_buf[a..b]);
    }
    for v in &mut row_buf[b..] {
        crate::arch::stream::loop_barrier();
        *v = 0.0;
    }
}

/// One tile's transforms along one axis, on the lanes of the tile's `α` positions (a value of
/// each of [`L`] tiles per lane): the input transform `Bᵀ d` and the output transform `Aᵀ m`, in
/// factored forms (the products of the matrices' rows shared), the same operations on every
/// instruction set.
trait Axis<const A: usize, const M: usize> {
    fn bt(d: [Lane; A]) -> [Lane; A];
    fn at(m: [Lane; A]) -> [Lane; M];
}

/// F(2×2, 3×3)'s axis.
struct Axis2;
/// F(4×4, 3×3)'s axis.
struct Axis4;

impl Axis<4, 2> for Axis2 {
    /// The rows of `BT2`.
    #[inline(always)]
    fn bt([d0, d1, d2, d3]: [Lane; 4]) -> [Lane; 4] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }
    /// The rows of [`AT2`].
    #[inline(always)]
    fn at([m0, m1, m2, m3]: [Lane; 4]) -> [Lane; 2] {
        [m0 + m1 + m2, m1 - m2 - m3]
    }
}

impl Axis<6, 4> for Axis4 {
    /// The rows of `BT4`: rows 1 and 2 are `(d4 − 4d2) ± (d3 − 4d1)`, rows 3 and 4
    /// `(d4 − d2) ± 2(d3 − d1)`.
    #[inline(always)]
    fn bt([d0, d1, d2, d3, d4, d5]: [Lane; 6]) -> [Lane; 6] {
        let (two, four, five) = (splat(2.0), splat(4.0), splat(5.0));
        let a = d4 - four * d2;
        let b = d3 - four * d1;
        let c = d4 - d2;
        let e = two * (d3 - d1);
        [
            (four * d0 + d4) - five * d2,
            a + b,
            a - b,
            c + e,
            c - e,
            (four * d1 + d5) - five * d3,
        ]
    }
    /// The rows of [`AT4`], on the sums and differences of `m1, m2` and of `m3, m4`.
    #[inline(always)]
    fn at([m0, m1, m2, m3, m4, m5]: [Lane; 6]) -> [Lane; 4] {
        let (s1, d1, s2, d2) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        [
            m0 + s1 + s2,
            d1 + splat(2.0) * d2,
            s1 + splat(4.0) * s2,
            d1 + splat(8.0) * d2 + m5,
        ]
    }
}

/// The lane at `a[at..at + L]`.
#[inline(always)]
fn lane(a: &[f32], at: usize) -> Lane {
    Lane(a[at..][..L].try_into().expect("L lanes"))
}

/// `V = Bᵀ d B` of tile rows from `r0` (all `tw` tiles of each) of one input channel `x_c`,
/// into `v_c[ξ][p]` (`p` counting the block's tiles, positions [`stride`] apart).
///
/// Each tile row is taken a chunk of tiles at a time: the `α` input rows they read are copied
/// into a buffer (zero in the padding); then, [`L`] tiles at a time, one 8 × 8 register
/// transpose per row, its source rows `m` apart, puts column `s` of every tile's window into
/// one lane. The arithmetic runs on lanes (tiles), the same operations on every instruction set.
#[inline(always)]
fn input_tf<K: MicroKernel, X: Axis<A, M>, const A: usize, const M: usize>(
    kern: K,
    g: &Conv2dGeom,
    x_c: &[f32],
    r0: usize,
    tw: usize,
    v_c: &mut [f32],
) {
    let bw = CHUNK * M + 8;
    let ps = v_c.len() / (A * A);
    let pb = ps - L;
    let hw = [g.in_h() as isize, g.in_w() as isize];
    let [pad_h, pad_w] = g.params().padding.map(|p| p as isize);
    let mut buf = [0.0f32; 6 * CHUNK_W];
    // dt[r][s·8 + l]: column s of row r of tile l's window.
    let mut dt = [[0.0f32; 64]; A];
    let zero = splat(0.0);
    for (tr, ty) in (r0..).enumerate().take(pb / tw.max(1)) {
        let oy = (ty * M) as isize - pad_h;
        for c0 in (0..tw).step_by(CHUNK) {
            let ct = (tw - c0).min(CHUNK);
            // The columns the transposes of the chunk's groups read.
            let need = ct.div_ceil(L) * L * M + 8;
            let ox = (c0 * M) as isize - pad_w;
            for r in 0..A {
                copy_row(x_c, hw, oy + r as isize, ox, &mut buf[r * bw..][..need]);
            }
            for g0 in (0..ct).step_by(L) {
                for (r, dt_r) in dt.iter_mut().enumerate() {
                    kern.transpose8(&buf[r * bw + g0 * M..r * bw + need], M, dt_r, 8);
                }
                // t = Bᵀ d by columns (t[s][i]), then V = t B by rows.
                let mut t = [[zero; A]; A];
                for (s, t_s) in t.iter_mut().enumerate() {
                    // One lane operation at a time (vectorised across `s`, this loop became
                    // scatters).
                    crate::arch::stream::loop_barrier();
                    let mut d = [zero; A];
                    for (r, d_r) in d.iter_mut().enumerate() {
                        *d_r = lane(&dt[r], s * 8);
                    }
                    *t_s = X::bt(d);
                }
                let p0 = tr * tw + c0 + g0;
                for i in 0..A {
                    crate::arch::stream::loop_barrier();
                    let mut d = [zero; A];
                    for (s, d_s) in d.iter_mut().enumerate() {
                        *d_s = t[s][i];
                    }
                    for (j, v_ij) in X::bt(d).iter().enumerate() {
                        put_lanes(&mut v_c[(i * A + j) * ps + p0..], &v_ij.0);
                    }
                }
            }
        }
    }
}

/// `dst[..L] = lanes`: one fixed-size copy (a copy of a variable length is a call to `memcpy`,
/// which cost a third of the transforms). The lanes past the block's tiles land in the
/// position's slack ([`stride`]).
#[inline(always)]
fn put_lanes(dst: &mut [f32], lanes: &[f32; L]) {
    let d: &mut [f32; L] = (&mut dst[..L]).try_into().expect("L lanes");
    *d = *lanes;
}

/// What [`output_tf`] takes for one output channel: its products `m_o` (position `ξ`'s tiles at
/// `ξ·xs`), the tiles' stride `ps` ([`stride`]), bias, epilogue (the residual as the channel's
/// plane), whether to add to the output, the block's first tile row, tiles per row, and the
/// output plane.
type ChannelOut<'a> = (
    &'a [f32],
    usize,
    usize,
    f32,
    Epi<'a>,
    bool,
    usize,
    usize,
    &'a mut [f32],
);

/// `Y = Aᵀ M A + bias` of the block's tiles of one output channel (`m_o[ξ·xs + p]`), written into (with `add`, added to) the output plane `y_o` where the tile
/// lies inside it.
///
/// [`L`] tiles of a tile row at a time: the arithmetic on lanes (tiles), then per output row one
/// 8 × 8 register transpose turns the lanes back into each tile's `m` columns, and the row's
/// stretch of `L·m` outputs is written (or added) in one pass. Without `add`, the residual (the
/// channel's plane) and the activation of `epi` follow over each tile row's `m` output rows
/// while they are in L1: `act(conv + bias + residual)`, summed in that order.
#[inline(always)]
fn output_tf<K: MicroKernel, X: Axis<A, M>, const A: usize, const M: usize>(
    kern: K,
    g: &Conv2dGeom,
    (m_o, xs, ps, bias, epi, add, r0, tw, y_o): ChannelOut<'_>,
) {
    let pb = ps - L;
    let (oh, ow) = (g.out_h(), g.out_w());
    // src[j·8 + l]: Y[i][j] of tile l.
    let mut src = [0.0f32; 64];
    let mut cols = [0.0f32; 64];
    let zero = splat(0.0);
    for (tr, ty) in (r0..).enumerate().take(pb / tw.max(1)) {
        for g0 in (0..tw).step_by(L) {
            let live = (tw - g0).min(L);
            let q0 = tr * tw + g0;
            // t = Aᵀ M by columns (t[j][i]), then Y = t A by rows.
            let mut t = [[zero; M]; A];
            for (j, t_j) in t.iter_mut().enumerate() {
                crate::arch::stream::loop_barrier();
                let mut d = [zero; A];
                for (k, d_k) in d.iter_mut().enumerate() {
                    *d_k = lane(m_o, (k * A + j) * xs + q0);
                }
                *t_j = X::at(d);
            }
            let (oy, ox) = (ty * M, g0 * M);
            let n = (live * M).min(ow - ox);
            for i in 0..M.min(oh - oy) {
                crate::arch::stream::loop_barrier();
                let mut d = [zero; A];
                for (j, d_j) in d.iter_mut().enumerate() {
                    *d_j = t[j][i];
                }
                for (j, y_ij) in X::at(d).iter().enumerate() {
                    src[j * 8..][..L].copy_from_slice(&y_ij.0);
                }
                // cols[l·8 + j] = Y[i][j] of tile l, written (added) in place tile by tile.
                kern.transpose8(&src, 8, &mut cols, 8);
                let row = &mut y_o[(oy + i) * ow + ox..][..n];
                for (l, y) in row.chunks_mut(M).enumerate() {
                    let c = &cols[l * 8..][..M];
                    if let Ok(y) = <&mut [f32; M]>::try_from(&mut *y) {
                        // A whole tile: one fixed-size operation.
                        let c: &[f32; M] = c.try_into().expect("M columns");
                        for j in 0..M {
                            y[j] = if add { y[j] + c[j] } else { c[j] + bias };
                        }
                    } else {
                        for (y, &c) in y.iter_mut().zip(c) {
                            *y = if add { *y + c } else { c + bias };
                        }
                    }
                }
            }
        }
        if !add && (epi.residual.is_some() || epi.act.is_some()) {
            let rows = ty * M * ow..((ty + 1) * M).min(oh) * ow;
            let span = &mut y_o[rows.clone()];
            if let Some(r) = epi.residual {
                for (y, &r) in span.iter_mut().zip(&r[rows]) {
                    *y += r;
                }
            }
            if let Some(a) = epi.act {
                activation_in_place(a, span);
            }
        }
    }
}

/// Scratch of [`weight_grad`]: a block's transformed input and output gradient (as
/// [`slot_len`]) and the sums of the products, `α²·c_out·c_in`.
pub(super) fn wgrad_len(g: &Conv2dGeom, t: Tile) -> usize {
    slot_len(g, t) + t.alpha() * t.alpha() * g.c_out() * g.c_in()
}

/// The weight gradient of [`image`]'s convolution over the batch, `dw (+)= ∂L/∂w` per `accum`.
///
/// The forward tile is `Y = Aᵀ[(G w Gᵀ) ⊙ V]A`, bilinear in `w` and `V = Bᵀ d B`, so its adjoint
/// in `w` is `Gᵀ[Z ⊙ V]G` with `Z = A dY Aᵀ` the transformed output gradient of the tile (zero
/// outside the output). Summed over the tiles of every image, each of the `α²` positions is one
/// product over the tiles, `S_ξ += Z_ξ · V_ξᵀ` (`[c_out × tiles] · [tiles × c_in]`), and the
/// gradient of each filter is `Gᵀ S G`. Each sum has one owner thread (split by output
/// channel) and runs in image and block order, so the bits do not depend on the thread count.
///
/// `dy` gives image `i`'s output gradient (made in `img` when it is not stored); `ws` holds
/// [`wgrad_len`].
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad(
    g: &Conv2dGeom,
    t: Tile,
    x: &[f32],
    dy: Planes<'_>,
    img: &mut [f32],
    dw: &mut [f32],
    accum: Accum,
    ws: &mut [f32],
) -> Result<()> {
    let (th, tw) = tiles(g, t);
    let rows = block_rows(g, t);
    let (ci, co, a2) = (g.c_in(), g.c_out(), t.alpha() * t.alpha());
    let (x_item, out_plane) = (ci * g.in_plane(), g.out_plane());
    let made = !matches!(dy, Planes::Dense(_));
    if ws.len() < wgrad_len(g, t) || (made && img.len() < co * out_plane) {
        return Err(Error::invalid(
            "conv2d_backward_weights",
            "winograd",
            "scratch planned for another setting (set_winograd called concurrently)",
        ));
    }
    let (sums, ws) = ws.split_at_mut(a2 * co * ci);
    sums.fill(0.0);
    for (i, x_n) in x.chunks_exact(x_item).enumerate() {
        let dy_n = dy.planes(i * co, co, out_plane, co, img, true)?;
        for r0 in (0..th).step_by(rows) {
            let tr = r0..(r0 + rows).min(th);
            let pb = tr.len() * tw;
            let ps = stride(pb);
            let (v, rest) = ws.split_at_mut(a2 * ci * ps);
            let z = &mut rest[..a2 * co * ps];
            transform_input(g, t, x_n, tr.start, tw, v, true)?;
            // Z[o][ξ][p], by output channel.
            par::for_each(
                co,
                a2 * co * pb * 8,
                Items(&mut *z, a2 * ps),
                #[inline(always)]
                |or, Items(z, _)| {
                    for (o, z_o) in or.zip(z.chunks_exact_mut(a2 * ps)) {
                        let dy_o = &dy_n[o * out_plane..][..out_plane];
                        match t {
                            Tile::F2 => grad_tf(&AT2, g, dy_o, tr.start, tw, z_o),
                            Tile::F4 => grad_tf(&AT4, g, dy_o, tr.start, tw, z_o),
                        }
                    }
                    Ok(())
                },
            )?;
            // S[o][ξ][c] += Z_ξ[o][:] · V_ξ[c][:], by output channel.
            let (v, z): (&[f32], &[f32]) = (v, z);
            par::for_each(
                co,
                2 * a2 * co * ci * pb,
                Items(&mut *sums, a2 * ci),
                #[inline(always)]
                |or, Items(s, _)| {
                    for xi in 0..a2 {
                        let za = &z[or.start * a2 * ps + xi * ps..];
                        let a = MatRef::new(za, or.len(), pb, a2 * ps, 1)?;
                        let b = MatRef::new(&v[xi * ps..], pb, ci, 1, a2 * ps)?;
                        let c = MatMut::new(&mut s[xi * ci..], or.len(), ci, a2 * ci, 1)?;
                        gemm_serial_f32(1.0, a, b, 1.0, c, false);
                    }
                    Ok(())
                },
            )?;
        }
    }
    // dw[o][c] (+)= Gᵀ S[o][:][c] G, by output channel, eight input channels at a time.
    let sums: &[f32] = sums;
    par::for_each(
        co,
        co * ci * a2 * 8,
        Items(dw, ci * 9),
        #[inline(always)]
        |or, Items(dw, _)| {
            for (o, dw_o) in or.zip(dw.chunks_exact_mut(ci * 9)) {
                let s_o = &sums[o * a2 * ci..][..a2 * ci];
                for c0 in (0..ci).step_by(L) {
                    let k = match t {
                        Tile::F2 => filter_grad(&G2, s_o, c0, ci),
                        Tile::F4 => filter_grad(&G4, s_o, c0, ci),
                    };
                    for l in 0..(ci - c0).min(L) {
                        let dw_oc = &mut dw_o[(c0 + l) * 9..][..9];
                        for (d, k_pq) in dw_oc.iter_mut().zip(&k) {
                            *d = accum.apply(*d, k_pq[l]);
                        }
                    }
                }
            }
            Ok(())
        },
    )
}

/// `Z = A dY Aᵀ` of the block's tiles of one output channel's gradient `dy_o` (each `m×m` tile
/// read where it lies inside the output plane, zero outside), into `z_o[ξ][p]`.
#[inline(always)]
fn grad_tf<const A: usize, const M: usize>(
    at: &[[f32; A]; M],
    g: &Conv2dGeom,
    dy_o: &[f32],
    r0: usize,
    tw: usize,
    z_o: &mut [f32],
) {
    let ps = z_o.len() / (A * A);
    let pb = ps - L;
    let (oh, ow) = (g.out_h(), g.out_w());
    for q0 in (0..pb).step_by(L) {
        let live = (pb - q0).min(L);
        let mut d = [[[0.0f32; L]; M]; M];
        for l in 0..live {
            let p = q0 + l;
            let (ty, tx) = (r0 + p / tw, p % tw);
            let (oy, ox) = (ty * M, tx * M);
            for (i, d_i) in d.iter_mut().enumerate().take(oh.saturating_sub(oy).min(M)) {
                let row = &dy_o[(oy + i) * ow + ox..];
                for (j, d_ij) in d_i
                    .iter_mut()
                    .enumerate()
                    .take(ow.saturating_sub(ox).min(M))
                {
                    d_ij[l] = row[j];
                }
            }
        }
        // t = A dY (α×m), then Z = t Aᵀ (α×α), lane by lane.
        let mut t = [[[0.0f32; L]; M]; A];
        for (k, t_k) in t.iter_mut().enumerate() {
            for (i, d_i) in d.iter().enumerate() {
                let c = at[i][k];
                if c != 0.0 {
                    for (t_kj, d_ij) in t_k.iter_mut().zip(d_i) {
                        for l in 0..L {
                            t_kj[l] += c * d_ij[l];
                        }
                    }
                }
            }
        }
        for (k, t_k) in t.iter().enumerate() {
            for xl in 0..A {
                let mut acc = [0.0f32; L];
                for (j, t_kj) in t_k.iter().enumerate() {
                    let c = at[j][xl];
                    if c != 0.0 {
                        for l in 0..L {
                            acc[l] += c * t_kj[l];
                        }
                    }
                }
                put_lanes(&mut z_o[(k * A + xl) * ps + q0..], &acc);
            }
        }
    }
}

/// `Gᵀ S G` (3×3, row-major, `[tap][lane]`) of the sums `s_o[ξ][c]` of input channels `c0..`
/// (up to [`L`], one per lane; `ci` per position).
#[inline(always)]
fn filter_grad<const A: usize>(
    gm: &[[f32; 3]; A],
    s_o: &[f32],
    c0: usize,
    ci: usize,
) -> [[f32; L]; 9] {
    let live = (ci - c0).min(L);
    let mut sv = [[[0.0f32; L]; A]; A];
    for (xi, v) in sv.iter_mut().flatten().enumerate() {
        let src = &s_o[xi * ci + c0..];
        if live == L {
            *v = src[..L].try_into().expect("L lanes");
        } else {
            v[..live].copy_from_slice(&src[..live]);
        }
    }
    let mut t = [[[0.0f32; L]; A]; 3];
    for (p, t_p) in t.iter_mut().enumerate() {
        for (k, g_k) in gm.iter().enumerate() {
            let c = g_k[p];
            if c != 0.0 {
                for (t_pl, s_kl) in t_p.iter_mut().zip(&sv[k]) {
                    for l in 0..L {
                        t_pl[l] += c * s_kl[l];
                    }
                }
            }
        }
    }
    let mut out = [[0.0f32; L]; 9];
    for p in 0..3 {
        for q in 0..3 {
            let acc = &mut out[p * 3 + q];
            for (l, g_l) in gm.iter().enumerate() {
                let c = g_l[q];
                if c != 0.0 {
                    for i in 0..L {
                        acc[i] += c * t[p][l][i];
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ_k mat[i][k]·v[k]` in `f64`, and the sum of the terms' magnitudes.
    fn apply<const R: usize, const C: usize>(mat: &[[f32; C]; R], v: &[f32; C]) -> [(f64, f64); R] {
        std::array::from_fn(|i| {
            let terms = (0..C).map(|k| mat[i][k] as f64 * v[k] as f64);
            (terms.clone().sum(), terms.map(f64::abs).sum())
        })
    }

    /// Lanes of values spread over several magnitudes and both signs.
    fn lanes<const A: usize>(seed: usize) -> [Lane; A] {
        std::array::from_fn(|k| {
            Lane(std::array::from_fn(|l| {
                let i = (seed * 131 + k * 17 + l * 7) % 97;
                (i as f32 - 48.0) * [0.01, 1.0, 300.0][(seed + k + l) % 3]
            }))
        })
    }

    /// Each lane of `got` against the matrix `mat` applied to that lane of `input`.
    fn check<const R: usize, const C: usize>(
        mat: &[[f32; C]; R],
        input: &[Lane; C],
        got: &[Lane; R],
    ) {
        for l in 0..L {
            let v: [f32; C] = std::array::from_fn(|k| input[k].0[l]);
            for (i, (exact, scale)) in apply(mat, &v).into_iter().enumerate() {
                let e = (got[i].0[l] as f64 - exact).abs();
                assert!(
                    e <= 1e-6 * scale.max(1e-30),
                    "row {i}, lane {l}: {} vs {exact}",
                    got[i].0[l]
                );
            }
        }
    }

    #[test]
    fn the_factored_transforms_are_the_matrices() {
        for seed in 0..20 {
            let d4: [Lane; 4] = lanes(seed);
            check(&BT2, &d4, &Axis2::bt(d4));
            check(&AT2, &d4, &Axis2::at(d4));
            let d6: [Lane; 6] = lanes(seed);
            check(&BT4, &d6, &Axis4::bt(d6));
            check(&AT4, &d6, &Axis4::at(d6));
        }
    }
}
