//! The micro-kernel families, written once for any vector register type.
//!
//! An instruction set supplies a [`Vector`] (its register type and the seven operations the tile
//! bodies use) and a zero-sized token type, and instantiates the bodies below for its tile shape
//! with [`micro_kernels!`](instantiate::micro_kernels): that gives the token its [`MicroKernel`] implementation. The token can
//! only be made on a CPU that has the instruction set, so holding one is the proof every kernel's
//! safety needs; the bounds of each call are checked by the trait's safe methods here, once for
//! every instruction set.
//!
//! Every body accumulates each output in the same order (over `k`, taps or pixels, one fused
//! multiply-add at a time): results are the same bits on every instruction set, whatever its
//! register width or tile shape, as long as the drivers cut the sums into the same blocks.
//!
//! Here: the [`Vector`] and [`MicroKernel`] traits, the checked safe methods, and [`Never`]. In
//! `instantiate.rs`: [`micro_kernels!`](instantiate::micro_kernels), which compiles the bodies for one instruction set. In
//! `bodies/`: the bodies themselves — `tiles` (GEMM, convolution and weight-gradient tiles, on the
//! helpers of `shared`), `depthwise`, and `pool` (2x2 max-pool and its backward pass).

#![allow(unsafe_code)]
// The bodies, `Vector` and `micro_kernels!` are used by every instruction set's file; on a
// target without one yet (anything but x86-64 today) they are not.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_macros, unused_imports)
)]

use super::isa::Isa;

pub(crate) mod bodies;
pub(crate) mod instantiate;

/// One SIMD register of `N` floats and the operations the tile bodies use. Implementations are
/// `#[inline(always)]` wrappers around one intrinsic each; they are compiled for the instruction
/// set only inside the `#[target_feature]` functions [`micro_kernels!`](instantiate::micro_kernels) makes.
///
/// # Safety
/// An implementation promises what the bodies rely on without checking: `N` is the register's
/// width in floats, `load` and `store` touch exactly `p[..N]`, `transpose8`, `max2x2` and
/// `unpool2x2` touch only the memory their contracts name, and every operation rounds as IEEE
/// `f32` arithmetic does (`mul_add` once), so every instruction set gives the same bits.
pub(crate) unsafe trait Vector: Copy {
    /// Floats per register.
    const N: usize;
    /// All zero.
    ///
    /// # Safety
    /// The CPU must support the instruction set (as for every method here).
    unsafe fn zero() -> Self;
    /// `v` in every element.
    unsafe fn splat(v: f32) -> Self;
    /// `N` floats from `p` (unaligned).
    ///
    /// # Safety
    /// `p[..N]` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// Writes the `N` floats to `p` (unaligned).
    ///
    /// # Safety
    /// `p[..N]` must be writable.
    unsafe fn store(self, p: *mut f32);
    /// `self · b + c`, fused (one rounding).
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `self + b`.
    unsafe fn add(self, b: Self) -> Self;
    /// `self · b`.
    unsafe fn mul(self, b: Self) -> Self;
    /// A hint to bring the line holding `p` into L1 (any address).
    unsafe fn prefetch(p: *const f32);
    /// `dst[j·ds + i] = src[i·ss + j]` for `i, j < 8`: one 8 x 8 block transposed in registers.
    ///
    /// # Safety
    /// The instruction set's features; `src[i·ss..][..8]` readable and `dst[j·ds..][..8]`
    /// writable for every `i, j < 8`.
    unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize);
    /// Max pooling of `lanes <= N` 2x2 windows at stride 2: window `l` is `r0[2l], r0[2l + 1],
    /// r1[2l], r1[2l + 1]` (compared in that order); `y[l]` receives its maximum and, unless
    /// `idx` is null, `idx[l]` receives `first + 2l + o`, where `o` is `0, 1, in_w` or
    /// `in_w + 1`, the offset of the maximum.
    /// Ties go to the earlier candidate; a NaN wins over anything before it (so the last NaN).
    /// With `affine = Some([a, b])` the candidates are `v·a + b` (rounded once) of the values `v`
    /// read, and `y` receives those; unless `at` is null, `at[l]` receives the value read at the
    /// maximum (before the map).
    ///
    /// # Safety
    /// The instruction set's features; `r0[..2·lanes]` and `r1[..2·lanes]` readable (nothing
    /// past them is touched), `y[..lanes]` writable and `idx` and `at` null or `[..lanes]`
    /// writable; `1 <= lanes <= N`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn max2x2(
        r0: *const f32,
        r1: *const f32,
        lanes: usize,
        first: u32,
        in_w: u32,
        y: *mut f32,
        idx: *mut u32,
        affine: Option<[f32; 2]>,
        at: *mut f32,
    );
    /// The gradient of [`Vector::max2x2`] over the same windows: for `l < lanes`,
    /// `dx0[2l + q] = dy[l] + 0` where `idx[l] = first + 2l + q`, `dx1[2l + q] = dy[l] + 0` where
    /// `idx[l] = first + 2l + in_w + q` (`q < 2`), and `0` everywhere else in
    /// `dx0[..2·lanes]` and `dx1[..2·lanes]`. Returns whether every `idx[l]` was one of its
    /// window's four positions (the writes are made either way).
    ///
    /// # Safety
    /// The instruction set's features; `dy[..lanes]` and `idx[..lanes]` readable,
    /// `dx0[..2·lanes]` and `dx1[..2·lanes]` writable (nothing past them is touched);
    /// `1 <= lanes <= N`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn unpool2x2(
        dy: *const f32,
        idx: *const u32,
        lanes: usize,
        first: u32,
        in_w: u32,
        dx0: *mut f32,
        dx1: *mut f32,
    ) -> bool;
}

/// Tap offsets for [`MicroKernel::conv_tile`] with their maximum (private fields: the maximum is
/// always right).
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

/// Whether a tile of `mr` rows of `nr` elements, rows `rs` apart (`rs >= nr`, so rows do not
/// overlap), fits in `len` elements; checked arithmetic, so no stride can wrap past the check.
#[inline]
pub(crate) fn tile_fits(len: usize, mr: usize, nr: usize, rs: usize) -> bool {
    rs >= nr
        && (mr - 1)
            .checked_mul(rs)
            .and_then(|v| v.checked_add(nr))
            .is_some_and(|end| end <= len)
}

/// The micro-kernels of one instruction set. The implementing type is a token that exists only on
/// CPUs with the instruction set; the `*_raw` functions are the bodies below compiled for it
/// (made by [`micro_kernels!`](instantiate::micro_kernels)), and the provided methods check every bound before calling them.
///
/// # Safety
/// Implementations must construct `Self` only when the CPU supports [`Self::ISA`], and the raw
/// functions must access memory only as their documentation says.
pub(crate) unsafe trait MicroKernel: Copy + Send + Sync + 'static {
    /// The instruction set.
    const ISA: Isa;
    /// Rows of a GEMM or convolution tile (output channels), and taps of a weight-gradient tile.
    const MR: usize;
    /// Columns of a GEMM tile, pixels of a convolution tile, output channels of a weight-gradient
    /// tile: a whole number of registers.
    const NR: usize;
    /// Floats per register: a depthwise sweep reads up to the next multiple of it.
    const LANES: usize;
    /// The kernels for weight gradients of at most `Narrow::NR` output channels: the same sums,
    /// bit for bit, on a narrower tile, so that a narrow layer is not padded to this tile's
    /// width (`Self` where there is nothing narrower).
    type Narrow: MicroKernel;

    /// The [`Self::Narrow`] kernels (the CPU that has these has those).
    fn narrow(self) -> Self::Narrow;

    /// [`gemm_body`](bodies::tiles::gemm_body) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`gemm_body`](bodies::tiles::gemm_body).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        self,
        k: usize,
        a: *const f32,
        b: *const f32,
        alpha: f32,
        beta: f32,
        c: *mut f32,
        rs: usize,
    );
    /// [`conv_body`](bodies::tiles::conv_body) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`conv_body`](bodies::tiles::conv_body).
    #[allow(clippy::too_many_arguments)]
    unsafe fn conv_raw(
        self,
        k: usize,
        a: *const f32,
        x: *const f32,
        off: *const u32,
        add: bool,
        c: *mut f32,
        rs: usize,
    );
    /// [`wgrad_body`](bodies::tiles::wgrad_body) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`wgrad_body`](bodies::tiles::wgrad_body).
    #[allow(clippy::too_many_arguments)]
    unsafe fn wgrad_raw(
        self,
        len: usize,
        x: *const f32,
        xo: *const usize,
        b: *const f32,
        bs: usize,
        c: *mut f32,
        rs: usize,
    );
    /// [`dot_any`](bodies::tiles::dot_any) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`dot_any`](bodies::tiles::dot_any).
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot_raw(
        self,
        rows: usize,
        cols: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: (*mut f32, *mut f32),
        rs: usize,
    );
    /// [`depthwise_body`](bodies::depthwise::depthwise_body) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`depthwise_body`](bodies::depthwise::depthwise_body).
    #[allow(clippy::too_many_arguments)]
    unsafe fn depthwise_raw(
        self,
        src: *const f32,
        offs: *const usize,
        w: *const f32,
        taps: usize,
        out: *mut f32,
        n: usize,
        add: bool,
    );
    /// [`Vector::transpose8`] compiled for this instruction set.
    ///
    /// # Safety
    /// As [`Vector::transpose8`], without the features (`self` proves them).
    unsafe fn transpose8_raw(self, src: *const f32, ss: usize, dst: *mut f32, ds: usize);
    /// [`max_pool2_body`](bodies::pool::max_pool2_body) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`max_pool2_body`](bodies::pool::max_pool2_body), without the features (`self` proves them).
    #[allow(clippy::too_many_arguments)]
    unsafe fn max_pool2_raw(
        self,
        x: *const f32,
        in_w: usize,
        y: *mut f32,
        idx: *mut u32,
        out_h: usize,
        out_w: usize,
        affine: Option<[f32; 2]>,
        at: *mut f32,
    );
    /// [`unpool2_body`](bodies::pool::unpool2_body) compiled for this instruction set.
    ///
    /// # Safety
    /// As [`unpool2_body`](bodies::pool::unpool2_body), without the features (`self` proves them).
    #[allow(clippy::too_many_arguments)]
    unsafe fn unpool2_raw(
        self,
        dy: *const f32,
        idx: *const u32,
        out_w: usize,
        dx: *mut f32,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        bn: Option<(*const f32, [f32; 4])>,
    ) -> bool;

    /// Max pooling of one plane by 2x2 windows at stride 2 without padding (`torch`'s
    /// `max_pool2d(x, 2)`): `x` is `in_h x in_w` (row-major, at least `2·out_h` rows read),
    /// `y` and `idx` (if given) are `out_h x in_w / 2`; `idx` receives each maximum's index in the plane (ties to the first
    /// in row-major order, the last NaN wins). With `affine = Some([a, b])` the plane pooled is
    /// `x·a + b` (each element rounded once, as `simd::Lane::mul_add`: a batch norm's output made
    /// in the registers); `at` (if given, `y`'s length) receives the element of `x` at each
    /// maximum.
    ///
    /// Panics (a programming error) if the lengths disagree or an index would not fit in `u32`.
    #[inline]
    fn max_pool2(
        self,
        x: &[f32],
        in_w: usize,
        y: &mut [f32],
        idx: Option<&mut [u32]>,
        affine: Option<[f32; 2]>,
        at: Option<&mut [f32]>,
    ) {
        let out_w = in_w / 2;
        let out_h = y.len().checked_div(out_w).unwrap_or(0);
        assert!(
            y.len() == out_h * out_w
                && idx.as_ref().is_none_or(|i| i.len() == y.len())
                && at.as_ref().is_none_or(|a| a.len() == y.len()),
            "pool output lengths"
        );
        assert!(
            x.len() / in_w.max(1) / 2 >= out_h && u32::try_from(x.len()).is_ok(),
            "pool input length"
        );
        // SAFETY: the CPU has the instruction set (`self` exists); rows 0..2·out_h of `x` are
        // readable (x.len() >= 2·out_h·in_w, checked), columns 0..2·out_w <= in_w; `y`, `idx` and
        // `at` (or a null `idx` or `at`) hold out_h·out_w elements (checked); indices < x.len()
        // fit in u32 (checked).
        unsafe {
            self.max_pool2_raw(
                x.as_ptr(),
                in_w,
                y.as_mut_ptr(),
                idx.map_or(std::ptr::null_mut(), |i| i.as_mut_ptr()),
                out_h,
                out_w,
                affine,
                at.map_or(std::ptr::null_mut(), |a| a.as_mut_ptr()),
            )
        }
    }

    /// The input gradient of [`MicroKernel::max_pool2`] for the plane `dx` (`in_h x in_w`,
    /// overwritten): `dy[o] + 0` at `idx[o]` and zero elsewhere. Returns `false` (with `dx` then
    /// unspecified) if some `idx[o]` is not a position of its own window, so that the caller can
    /// fall back to a scatter that checks each index.
    ///
    /// With `bn = Some((x, [k, mean, a, b]))` (`x` of `dx`'s length), each element `d` of that
    /// plane is then replaced by a batch norm's input gradient in training mode,
    /// `k·(d − a − (x − mean)·b)` with the product and its sum rounded once (the bits of
    /// `kernels::plane_ops::BnDx`), while the row pair is still in L1.
    ///
    /// Panics (a programming error) if the lengths disagree or an index would not fit in `u32`.
    #[inline]
    fn unpool2(
        self,
        dy: &[f32],
        idx: &[u32],
        dx: &mut [f32],
        in_w: usize,
        bn: Option<(&[f32], [f32; 4])>,
    ) -> bool {
        let out_w = in_w / 2;
        let in_h = dx.len() / in_w.max(1);
        let out_h = in_h / 2;
        assert!(
            dx.len() == in_h * in_w
                && u32::try_from(dx.len()).is_ok()
                && bn.is_none_or(|(x, _)| x.len() == dx.len()),
            "unpool input length"
        );
        assert!(
            dy.len() == out_h * out_w && idx.len() == dy.len(),
            "unpool output lengths"
        );
        // SAFETY: the CPU has the instruction set (`self` exists); `dy` and `idx` hold
        // out_h·out_w elements and `dx` (and `x`) in_h·in_w with 2·out_h <= in_h,
        // 2·out_w <= in_w (all checked), and indices < dx.len() fit in u32.
        unsafe {
            self.unpool2_raw(
                dy.as_ptr(),
                idx.as_ptr(),
                out_w,
                dx.as_mut_ptr(),
                in_h,
                in_w,
                out_h,
                bn.map(|(x, c)| (x.as_ptr(), c)),
            )
        }
    }

    /// One 8 x 8 block transposed: `dst[j·ds + i] = src[i·ss + j]` for `i, j < 8` (the
    /// weight gradient's output-gradient transpose, in registers).
    ///
    /// Panics (a programming error) if a row read or written would leave its slice.
    #[inline]
    fn transpose8(self, src: &[f32], ss: usize, dst: &mut [f32], ds: usize) {
        let fits = |stride: usize, len: usize| {
            stride
                .checked_mul(7)
                .and_then(|v| v.checked_add(8))
                .is_some_and(|end| end <= len)
        };
        assert!(fits(ss, src.len()), "transpose read out of bounds");
        assert!(fits(ds, dst.len()), "transpose write out of bounds");
        // SAFETY: the CPU has the instruction set (`self` exists); rows i·ss + 0..8 for i < 8
        // end at or below 7·ss + 8 <= src.len(), and likewise for dst (both checked).
        unsafe { self.transpose8_raw(src.as_ptr(), ss, dst.as_mut_ptr(), ds) }
    }

    /// GEMM tile: `C[i, j] = alpha·Σ_p a[p·MR + i]·b[p·NR + j] + beta·C[i, j]` for `i < MR`,
    /// `j < NR`, where row `i` of `C` is `c[i·rs..][..NR]`. With `beta == 0`, `C` is not read.
    ///
    /// Panics (a programming error, not a data error) if the panels are shorter than `k` steps or
    /// `C` does not hold the tile.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn tile(self, k: usize, a: &[f32], b: &[f32], alpha: f32, beta: f32, c: &mut [f32], rs: usize) {
        assert!(
            k.checked_mul(Self::MR).is_some_and(|n| n <= a.len())
                && k.checked_mul(Self::NR).is_some_and(|n| n <= b.len()),
            "{} GEMM tile: packed panels shorter than k",
            Self::ISA
        );
        assert!(
            tile_fits(c.len(), Self::MR, Self::NR, rs),
            "C tile out of bounds"
        );
        // SAFETY: `self` exists, so the CPU has the instruction set. Reads stay within
        // `a[..k·MR]` and `b[..k·NR]` (checked above); C accesses touch `c[i·rs + j]` for
        // i < MR, j < NR, all below `(MR−1)·rs + NR <= c.len()` (checked above). The slices come
        // from references: valid, aligned for f32, `c` the only mutable one.
        unsafe { self.gemm_raw(k, a.as_ptr(), b.as_ptr(), alpha, beta, c.as_mut_ptr(), rs) }
    }

    /// Direct-convolution tile: `C[i, j] = (add ? C[i, j] : 0) + Σ_t a[t·MR + i] · x[base +
    /// off[t] + j]` for `i < MR`, `j < NR`: `MR` output channels (packed weights, one tap per
    /// step) times `NR` consecutive output pixels read straight from the prepared input `x` (tap
    /// `t` shifted by `off[t]`). Row `i` of `C` is `c[i·rs..][..NR]`.
    ///
    /// Panics (a programming error) if any read or write would leave its slice.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn conv_tile(
        self,
        a: &[f32],
        x: &[f32],
        base: usize,
        taps: &Taps<'_>,
        add: bool,
        c: &mut [f32],
        rs: usize,
    ) {
        let k = taps.off.len();
        assert!(
            k.checked_mul(Self::MR).is_some_and(|n| n <= a.len()),
            "{} convolution tile: packed weights shorter than the taps",
            Self::ISA
        );
        assert!(
            tile_fits(c.len(), Self::MR, Self::NR, rs),
            "C tile out of bounds"
        );
        if k == 0 {
            if !add {
                for i in 0..Self::MR {
                    c[i * rs..][..Self::NR].fill(0.0);
                }
            }
            return;
        }
        assert!(
            base.checked_add(taps.max)
                .and_then(|v| v.checked_add(Self::NR))
                .is_some_and(|end| end <= x.len()),
            "input read out of bounds"
        );
        // SAFETY: the CPU has the instruction set (`self` exists). Reads: a[..k·MR] (checked);
        // x[base + off[t] + j] for j < NR, where every off[t] <= taps.max (a `Taps` invariant)
        // and base + taps.max + NR <= x.len() (checked), so `x.as_ptr().add(base)` is in bounds
        // too. C accesses stay below (MR−1)·rs + NR <= c.len() (checked).
        unsafe {
            self.conv_raw(
                k,
                a.as_ptr(),
                x.as_ptr().add(base),
                taps.off.as_ptr(),
                add,
                c.as_mut_ptr(),
                rs,
            )
        }
    }

    /// Weight-gradient tile: `C[i, j] += Σ_{s < len} x[xo[i] + s] · b[s·bs + j]` for `i < MR`,
    /// `j < NR`: `MR` filter taps (each a shifted read of the prepared input) times `NR` output
    /// channels (rows of the transposed output gradient `b`, one pixel per step).
    ///
    /// Panics (a programming error) if `xo` does not have `MR` entries or any read or write would
    /// leave its slice.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn wgrad_tile(
        self,
        len: usize,
        x: &[f32],
        xo: &[usize],
        b: &[f32],
        bs: usize,
        c: &mut [f32],
        rs: usize,
    ) {
        assert_eq!(xo.len(), Self::MR, "one input offset per tap row");
        assert!(
            tile_fits(c.len(), Self::MR, Self::NR, rs),
            "C tile out of bounds"
        );
        if len == 0 {
            return;
        }
        assert!(
            xo.iter()
                .all(|&o| o.checked_add(len).is_some_and(|end| end <= x.len())),
            "input read out of bounds"
        );
        assert!(
            bs >= Self::NR
                && (len - 1)
                    .checked_mul(bs)
                    .and_then(|v| v.checked_add(Self::NR))
                    .is_some_and(|end| end <= b.len()),
            "gradient read out of bounds"
        );
        // SAFETY: the CPU has the instruction set (`self` exists). xo has MR entries (checked);
        // len > 0, so xo[i] + len <= x.len() makes every read x[xo[i] + s], s < len, in bounds;
        // b[s·bs + j] for s < len, j < NR is below (len−1)·bs + NR <= b.len() (checked); C
        // accesses stay below (MR−1)·rs + NR <= c.len() (checked).
        unsafe {
            self.wgrad_raw(
                len,
                x.as_ptr(),
                xo.as_ptr(),
                b.as_ptr(),
                bs,
                c.as_mut_ptr(),
                rs,
            )
        }
    }

    /// Dot products of rows, `Σ_{s<k} a[i·lda + s] · b[j·ldb + s]` for `i < rows`, `j < cols`,
    /// added to running sums per lane: element `(i, j)`'s lane sums at
    /// `sums.0[(i·rs + j)·DOT_LANES..]`, the products past the last whole vector at
    /// `sums.1[i·rs + j]` ([`dot_body`](bodies::tiles::dot_body)); [`dot_total`] adds them up.
    /// `rows <= DOT_ROWS`, `cols <= DOT_COLS`.
    ///
    /// Panics (a programming error) if a count is 0 or above its limit, or any read or write
    /// would leave its slice.
    #[allow(clippy::too_many_arguments)]
    fn dot_tile(
        self,
        (rows, cols): (usize, usize),
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        (cv, ct): (&mut [f32], &mut [f32]),
        rs: usize,
    ) {
        use bodies::tiles::{DOT_COLS, DOT_LANES, DOT_ROWS};
        assert!(
            (1..=DOT_ROWS).contains(&rows) && (1..=DOT_COLS).contains(&cols),
            "dot tile of {rows}x{cols}"
        );
        assert!(
            Self::LANES == DOT_LANES || 2 * Self::LANES == DOT_LANES,
            "lanes of the dot tile"
        );
        let covers = |len: usize, n: usize, ld: usize, k: usize| {
            (n - 1)
                .checked_mul(ld)
                .and_then(|v| v.checked_add(k))
                .is_some_and(|end| end <= len)
        };
        assert!(covers(a.len(), rows, lda, k), "A read out of bounds");
        assert!(covers(b.len(), cols, ldb, k), "B read out of bounds");
        assert!(covers(ct.len(), rows, rs, cols), "tail sums out of bounds");
        assert!(
            covers(cv.len() / DOT_LANES, rows, rs, cols),
            "lane sums out of bounds"
        );
        // SAFETY: the CPU has the instruction set (`self` exists), whose lanes fit DOT_LANES
        // (checked); the counts are in range (checked); a[i·lda + s] for i < rows, s < k is below
        // (rows−1)·lda + k <= a.len(), and the same for b; element (i, j) for i < rows, j < cols
        // has index below (rows−1)·rs + cols, within ct and (times DOT_LANES, plus N) within cv
        // (all checked).
        unsafe {
            self.dot_raw(
                rows,
                cols,
                k,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                (cv.as_mut_ptr(), ct.as_mut_ptr()),
                rs,
            )
        }
    }

    /// A depthwise sweep: `out[j] (+)= Σ_t w[t] · src[offs[t] + j]` for `j < out.len()`, the
    /// taps summed in order with one fused multiply-add each. Reads `src` up to the next
    /// multiple of [`Self::LANES`] outputs past each tap's run.
    ///
    /// Panics (a programming error) if `src` does not hold every run read or `w` is shorter than
    /// `offs`.
    fn depthwise_taps(self, src: &[f32], offs: &[usize], w: &[f32], out: &mut [f32], add: bool) {
        assert!(offs.len() <= w.len(), "kernel");
        // The last element read, plus one: max_t offs[t] + ceil_LANES(out.len()).
        let span = out.len().div_ceil(Self::LANES).checked_mul(Self::LANES);
        let end = span.and_then(|s| offs.iter().max().copied().unwrap_or(0).checked_add(s));
        assert!(
            end.is_some_and(|e| e <= src.len()),
            "depthwise read out of bounds"
        );
        // SAFETY: the CPU has the instruction set (`self` exists). Every read is
        // `src[offs[t] + ow ..][..LANES]` with `ow + LANES <= ceil_LANES(out.len())`, so it ends
        // at or below `end <= src.len()` (checked above, without overflow); weights are read at
        // `t < offs.len() <= w.len()`; writes touch `out[..out.len()]` only.
        unsafe {
            self.depthwise_raw(
                src.as_ptr(),
                offs.as_ptr(),
                w.as_ptr(),
                offs.len(),
                out.as_mut_ptr(),
                out.len(),
                add,
            )
        }
    }
}

/// The total of an element's running sums from [`MicroKernel::dot_tile`]: the
/// [`DOT_LANES`](bodies::tiles::DOT_LANES) lane sums in lane order, then the tail.
pub(crate) fn dot_total(lane_sums: &[f32], tail: f32) -> f32 {
    let mut sum = 0.0f32;
    for v in &lane_sums[..bodies::tiles::DOT_LANES] {
        sum += v;
    }
    sum + tail
}

/// The micro-kernels of no instruction set: a type without values, so code written for any
/// [`MicroKernel`] type-checks on every target (see `with_kernel!`) but never runs with it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Never {}

// SAFETY: no value of `Never` exists, so none of its functions can be called.
unsafe impl MicroKernel for Never {
    const ISA: Isa = Isa::Portable;
    const MR: usize = 1;
    const NR: usize = 1;
    const LANES: usize = 1;
    type Narrow = Never;
    fn narrow(self) -> Never {
        self
    }
    unsafe fn gemm_raw(
        self,
        _: usize,
        _: *const f32,
        _: *const f32,
        _: f32,
        _: f32,
        _: *mut f32,
        _: usize,
    ) {
        match self {}
    }
    unsafe fn conv_raw(
        self,
        _: usize,
        _: *const f32,
        _: *const f32,
        _: *const u32,
        _: bool,
        _: *mut f32,
        _: usize,
    ) {
        match self {}
    }
    unsafe fn wgrad_raw(
        self,
        _: usize,
        _: *const f32,
        _: *const usize,
        _: *const f32,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
        match self {}
    }
    unsafe fn dot_raw(
        self,
        _: usize,
        _: usize,
        _: usize,
        _: *const f32,
        _: usize,
        _: *const f32,
        _: usize,
        _: (*mut f32, *mut f32),
        _: usize,
    ) {
        match self {}
    }
    unsafe fn depthwise_raw(
        self,
        _: *const f32,
        _: *const usize,
        _: *const f32,
        _: usize,
        _: *mut f32,
        _: usize,
        _: bool,
    ) {
        match self {}
    }
    unsafe fn transpose8_raw(self, _: *const f32, _: usize, _: *mut f32, _: usize) {
        match self {}
    }
    unsafe fn max_pool2_raw(
        self,
        _: *const f32,
        _: usize,
        _: *mut f32,
        _: *mut u32,
        _: usize,
        _: usize,
        _: Option<[f32; 2]>,
        _: *mut f32,
    ) {
        match self {}
    }
    unsafe fn unpool2_raw(
        self,
        _: *const f32,
        _: *const u32,
        _: usize,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: Option<(*const f32, [f32; 4])>,
    ) -> bool {
        match self {}
    }
}

/// The widest register of any instruction set, in floats (depthwise planes keep this much slack).
pub(crate) const MAX_LANES: usize = 16;
