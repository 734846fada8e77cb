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
//! channel. The transforms run eight tiles at a time on lanes of plain `f32` arrays, in a fixed
//! order and without fused multiply-adds, so every instruction set gives the same bits.
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
//! 4e-7 for F(2×2) and 7e-6 for F(4×4) in the forward pass, 4e-7 and 1e-5 in the input
//! gradient, 5e-7 and 4e-6 in the weight gradient; against the direct path at 64–512 channels
//! (576–4608 terms per sum) the forward pass reaches 1e-6 and 3e-5. The tests bound all three at
//! 1e-5 and 3e-4, and the gradient checks, the PyTorch comparisons of `tests/zoo.rs` and the
//! other suites run with each tile forced (`CNNKIT_WINOGRAD`, `.ci/run`), F(4×4) within ten
//! times the direct path's tolerances. A NaN or infinity in an input tile reaches the whole
//! output tile (the direct path confines it to the outputs whose window holds it).
//!
//! Work is split per image over output-channel ranges for the products and the output
//! transform and over input channels for the input transform: each value is summed by one
//! thread in a fixed order, so the bits do not depend on the thread count. The weight
//! gradient's sums are split by output channel and run in image and block order.

use crate::error::{Error, Result};
use crate::gemm::{MatMut, MatRef, gemm_serial_f32};
use crate::kernels::accum::Accum;
use crate::kernels::planes::Planes;
use crate::par::{self, Items};
use crate::shape::Conv2dGeom;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Tiles a transform handles at once (lanes of its arrays).
const L: usize = 8;

/// Target floats of one worker's transformed input and products per block of tiles.
const BLOCK_BUDGET: usize = 1 << 18;

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

// F(2×2, 3×3): interpolation points 0, ±1, ∞.
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
/// F(4×4) from 128 channels (at most 256) on images of at least 56×56 outputs (1.5x at 128–256
/// channels, 1.8x at 128 channels on 112×112); F(2×2) at 256 channels on images of at least
/// 28×28 (1.3x). At 64 channels on 56×56 F(4×4) measured 1.2x alone but 4 % slower inside
/// ResNet-18's inference (its output is not fused with the shortcut and ReLU, and the
/// transforms run cold), so the direct path keeps it.
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
        // multiplies f32.
        Winograd::Auto if crate::gemm::precision::bf16() => {
            auto(g, pass).filter(|&t| t == Tile::F4)
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
        Pass::Forward if lo >= 128 && at_least(56) => Some(Tile::F4),
        Pass::Forward if lo >= 256 && at_least(28) => Some(Tile::F2),
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
    a2 * (g.c_in() + g.c_out()) * tw * block_rows(g, t)
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

/// Image `x_n`'s output into `y_n` (bias added), or added to `y_n` with `add`, with the
/// transformed weights `u`, in blocks of tile rows; `ws` holds one [`slot_len`]; with `split`,
/// each block's work is shared by the pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn image(
    g: &Conv2dGeom,
    t: Tile,
    u: &[f32],
    b: Option<&[f32]>,
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
        let (v, rest) = ws.split_at_mut(a2 * ci * pb);
        let m = &mut rest[..a2 * co * pb];
        let out_plane = g.out_plane();
        transform_input(g, t, x_n, tr.start, tw, v, split)?;
        // Products: M_ξ = U_ξ · V_ξ into M[o][ξ][p], by output channel.
        let v: &[f32] = v;
        let products = |or: std::ops::Range<usize>, m: &mut [f32]| -> Result<()> {
            for xi in 0..a2 {
                let a = MatRef::new(&u[xi * co * ci + or.start * ci..], or.len(), ci, ci, 1)?;
                let bm = MatRef::new(&v[xi * pb..], ci, pb, a2 * pb, 1)?;
                let c = MatMut::new(&mut m[xi * pb..], or.len(), pb, a2 * pb, 1)?;
                gemm_serial_f32(1.0, a, bm, 0.0, c, false);
            }
            Ok(())
        };
        if split {
            par::for_each(
                co,
                2 * a2 * co * ci * pb,
                Items(&mut *m, a2 * pb),
                #[inline(always)]
                |or, Items(m, _)| products(or, m),
            )?;
        } else {
            products(0..co, m)?;
        }
        // Output transform, by output channel.
        let m: &[f32] = m;
        let output = crate::arch::inlined(
            #[inline(always)]
            |or: std::ops::Range<usize>, y: &mut [f32]| {
                for (o, y_o) in or.zip(y.chunks_exact_mut(out_plane)) {
                    let m_o = &m[o * a2 * pb..][..a2 * pb];
                    let bias = b.map_or(0.0, |b| b[o]);
                    match t {
                        Tile::F2 => output_tf(&AT2, g, m_o, bias, add, tr.start, tw, y_o),
                        Tile::F4 => output_tf(&AT4, g, m_o, bias, add, tr.start, tw, y_o),
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
    let (ci, in_plane) = (g.c_in(), g.in_plane());
    let a2 = t.alpha() * t.alpha();
    let pb = v.len() / (a2 * ci);
    let input = crate::arch::inlined(
        #[inline(always)]
        |cr: std::ops::Range<usize>, v: &mut [f32]| {
            for (c, v_c) in cr.zip(v.chunks_exact_mut(a2 * pb)) {
                let x_c = &x_n[c * in_plane..][..in_plane];
                match t {
                    Tile::F2 => input_tf(&BT2, g, x_c, r0, tw, v_c),
                    Tile::F4 => input_tf(&BT4, g, x_c, r0, tw, v_c),
                }
            }
        },
    );
    if split {
        par::for_each(
            ci,
            a2 * ci * pb * 8,
            Items(v, a2 * pb),
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

/// `V = Bᵀ d B` of tile rows from `r0` (all `tw` tiles of each) of one input channel `x_c`,
/// into `v_c[ξ][p]` (`p` counting the block's tiles).
#[inline(always)]
fn input_tf<const A: usize>(
    bt: &[[f32; A]; A],
    g: &Conv2dGeom,
    x_c: &[f32],
    r0: usize,
    tw: usize,
    v_c: &mut [f32],
) {
    let m = A - 2;
    let pb = v_c.len() / (A * A);
    let (h, w) = (g.in_h() as isize, g.in_w() as isize);
    let [pad_h, pad_w] = g.params().padding.map(|p| p as isize);
    for q0 in (0..pb).step_by(L) {
        let live = (pb - q0).min(L);
        let mut d = [[[0.0f32; L]; A]; A];
        for l in 0..live {
            let p = q0 + l;
            let (ty, tx) = (r0 + p / tw, p % tw);
            let (oy, ox) = ((ty * m) as isize - pad_h, (tx * m) as isize - pad_w);
            let inside = ox >= 0 && ox + A as isize <= w;
            for (r, d_r) in d.iter_mut().enumerate() {
                let iy = oy + r as isize;
                if iy < 0 || iy >= h {
                    continue;
                }
                let row = &x_c[(iy * w) as usize..][..w as usize];
                if inside {
                    let src: &[f32; A] = row[ox as usize..][..A].try_into().expect("A values");
                    for (d_rs, &v) in d_r.iter_mut().zip(src) {
                        d_rs[l] = v;
                    }
                    continue;
                }
                for (s, d_rs) in d_r.iter_mut().enumerate() {
                    let ix = ox + s as isize;
                    if ix >= 0 && ix < w {
                        d_rs[l] = row[ix as usize];
                    }
                }
            }
        }
        // t = Bᵀ d, then V = t B (B = Bᵀ transposed), lane by lane.
        let mut t = [[[0.0f32; L]; A]; A];
        for i in 0..A {
            for k in 0..A {
                let c = bt[i][k];
                if c != 0.0 {
                    for j in 0..A {
                        for l in 0..L {
                            t[i][j][l] += c * d[k][j][l];
                        }
                    }
                }
            }
        }
        for i in 0..A {
            for j in 0..A {
                let mut acc = [0.0f32; L];
                for k in 0..A {
                    let c = bt[j][k];
                    if c != 0.0 {
                        for l in 0..L {
                            acc[l] += c * t[i][k][l];
                        }
                    }
                }
                put_lanes(&mut v_c[(i * A + j) * pb + q0..], &acc, live);
            }
        }
    }
}

/// `dst[..live] = lanes[..live]`, as one fixed-size copy when every lane is live (a copy of a
/// variable length is a call to `memcpy`, which cost a third of the transforms).
#[inline(always)]
fn put_lanes(dst: &mut [f32], lanes: &[f32; L], live: usize) {
    if live == L {
        let d: &mut [f32; L] = (&mut dst[..L]).try_into().expect("L lanes");
        *d = *lanes;
    } else {
        dst[..live].copy_from_slice(&lanes[..live]);
    }
}

/// `Y = Aᵀ M A + bias` of the block's tiles of one output channel (`m_o[ξ][p]`), written into
/// (with `add`, added to) the output plane `y_o` where the tile lies inside it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_tf<const A: usize, const M: usize>(
    at: &[[f32; A]; M],
    g: &Conv2dGeom,
    m_o: &[f32],
    bias: f32,
    add: bool,
    r0: usize,
    tw: usize,
    y_o: &mut [f32],
) {
    let pb = m_o.len() / (A * A);
    let (oh, ow) = (g.out_h(), g.out_w());
    for q0 in (0..pb).step_by(L) {
        let live = (pb - q0).min(L);
        let mut mt = [[[0.0f32; L]; A]; A];
        for (xi, v) in mt.iter_mut().flatten().enumerate() {
            let src = &m_o[xi * pb + q0..];
            if live == L {
                *v = src[..L].try_into().expect("L lanes");
            } else {
                v[..live].copy_from_slice(&src[..live]);
            }
        }
        let mut t = [[[0.0f32; L]; A]; M];
        for i in 0..M {
            for k in 0..A {
                let c = at[i][k];
                if c != 0.0 {
                    for j in 0..A {
                        for l in 0..L {
                            t[i][j][l] += c * mt[k][j][l];
                        }
                    }
                }
            }
        }
        let mut yt = [[[0.0f32; L]; M]; M];
        for i in 0..M {
            for j in 0..M {
                let mut acc = [0.0f32; L];
                for k in 0..A {
                    let c = at[j][k];
                    if c != 0.0 {
                        for l in 0..L {
                            acc[l] += c * t[i][k][l];
                        }
                    }
                }
                yt[i][j] = acc;
            }
        }
        for l in 0..live {
            let p = q0 + l;
            let (ty, tx) = (r0 + p / tw, p % tw);
            let (oy, ox) = (ty * M, tx * M);
            for (i, yt_i) in yt.iter().enumerate().take(oh.saturating_sub(oy).min(M)) {
                let row = &mut y_o[(oy + i) * ow + ox..];
                for (j, yt_ij) in yt_i.iter().enumerate().take(ow.saturating_sub(ox).min(M)) {
                    if add {
                        row[j] += yt_ij[l];
                    } else {
                        row[j] = yt_ij[l] + bias;
                    }
                }
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
            let (v, rest) = ws.split_at_mut(a2 * ci * pb);
            let z = &mut rest[..a2 * co * pb];
            transform_input(g, t, x_n, tr.start, tw, v, true)?;
            // Z[o][ξ][p], by output channel.
            par::for_each(
                co,
                a2 * co * pb * 8,
                Items(&mut *z, a2 * pb),
                #[inline(always)]
                |or, Items(z, _)| {
                    for (o, z_o) in or.zip(z.chunks_exact_mut(a2 * pb)) {
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
                        let za = &z[or.start * a2 * pb + xi * pb..];
                        let a = MatRef::new(za, or.len(), pb, a2 * pb, 1)?;
                        let b = MatRef::new(&v[xi * pb..], pb, ci, 1, a2 * pb)?;
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
    let pb = z_o.len() / (A * A);
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
                put_lanes(&mut z_o[(k * A + xl) * pb + q0..], &acc, live);
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
