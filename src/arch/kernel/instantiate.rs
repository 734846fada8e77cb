//! `micro_kernels!`: one instruction set's [`MicroKernel`](super::MicroKernel) implementation,
//! made by compiling the bodies for its register type and tile shape inside
//! `#[target_feature]` functions.

/// Implements [`MicroKernel`](super::MicroKernel) for the token `$token` with vector `$v`, `$mr` rows and `$nv`
/// registers per row, compiling every body for `$features`. The bodies' contracts are the
/// safety conditions of the `*_raw` functions made here. (Unused on targets that have no
/// instruction set with micro-kernels yet.)
macro_rules! micro_kernels {
    ($token:ty, $isa:expr, $v:ty, $features:literal, mr = $mr:literal, nv = $nv:literal,
     narrow = $narrow:ty => $to_narrow:expr) => {
        // SAFETY: `$token` is constructed only when the CPU has `$isa` (its constructor checks
        // `Isa::detected()`), and the raw functions are the bodies of `arch::kernel`, which touch
        // exactly the memory their contracts name.
        unsafe impl $crate::arch::kernel::MicroKernel for $token {
            const ISA: $crate::arch::isa::Isa = $isa;
            const MR: usize = $mr;
            const NR: usize = $nv * <$v as $crate::arch::kernel::Vector>::N;
            const LANES: usize = <$v as $crate::arch::kernel::Vector>::N;
            type Narrow = $narrow;

            #[inline]
            fn narrow(self) -> $narrow {
                ($to_narrow)(self)
            }

            #[inline]
            unsafe fn gemm_raw(
                self,
                k: usize,
                a: *const f32,
                b: *const f32,
                alpha: f32,
                beta: f32,
                c: *mut f32,
                rs: usize,
            ) {
                #[target_feature(enable = $features)]
                unsafe fn f(
                    k: usize,
                    a: *const f32,
                    b: *const f32,
                    alpha: f32,
                    beta: f32,
                    c: *mut f32,
                    rs: usize,
                ) {
                    // SAFETY: the caller's contract (as `gemm_body`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::tiles::gemm_body::<$v, $mr, $nv>(
                            k, a, b, alpha, beta, c, rs,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(k, a, b, alpha, beta, c, rs) }
            }

            #[inline]
            unsafe fn conv_raw(
                self,
                k: usize,
                a: *const f32,
                x: *const f32,
                off: *const u32,
                add: bool,
                c: *mut f32,
                rs: usize,
            ) {
                #[target_feature(enable = $features)]
                unsafe fn f(
                    k: usize,
                    a: *const f32,
                    x: *const f32,
                    off: *const u32,
                    add: bool,
                    c: *mut f32,
                    rs: usize,
                ) {
                    // SAFETY: the caller's contract (as `conv_body`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::tiles::conv_body::<$v, $mr, $nv>(
                            k, a, x, off, add, c, rs,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(k, a, x, off, add, c, rs) }
            }

            #[inline]
            unsafe fn wgrad_raw(
                self,
                len: usize,
                x: *const f32,
                xo: *const usize,
                b: *const f32,
                bs: usize,
                c: *mut f32,
                rs: usize,
            ) {
                #[target_feature(enable = $features)]
                unsafe fn f(
                    len: usize,
                    x: *const f32,
                    xo: *const usize,
                    b: *const f32,
                    bs: usize,
                    c: *mut f32,
                    rs: usize,
                ) {
                    // SAFETY: the caller's contract (as `wgrad_body`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::tiles::wgrad_body::<$v, $mr, $nv>(
                            len, x, xo, b, bs, c, rs,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(len, x, xo, b, bs, c, rs) }
            }

            #[inline]
            unsafe fn dot_raw(
                self,
                rows: usize,
                cols: usize,
                k: usize,
                a: *const f32,
                lda: usize,
                b: *const f32,
                ldb: usize,
                (cv, ct): (*mut f32, *mut f32),
                rs: usize,
            ) {
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn f(
                    rows: usize,
                    cols: usize,
                    k: usize,
                    a: *const f32,
                    lda: usize,
                    b: *const f32,
                    ldb: usize,
                    cv: *mut f32,
                    ct: *mut f32,
                    rs: usize,
                ) {
                    // SAFETY: the caller's contract (as `dot_any`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::tiles::dot_any::<$v>(
                            rows, cols, k, a, lda, b, ldb, cv, ct, rs,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(rows, cols, k, a, lda, b, ldb, cv, ct, rs) }
            }

            #[inline]
            unsafe fn depthwise_raw(
                self,
                src: *const f32,
                offs: *const usize,
                w: *const f32,
                taps: usize,
                out: *mut f32,
                n: usize,
                add: bool,
            ) {
                #[target_feature(enable = $features)]
                unsafe fn f(
                    src: *const f32,
                    offs: *const usize,
                    w: *const f32,
                    taps: usize,
                    out: *mut f32,
                    n: usize,
                    add: bool,
                ) {
                    // SAFETY: the caller's contract (as `depthwise_body`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::depthwise::depthwise_body::<$v>(
                            src, offs, w, taps, out, n, add,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(src, offs, w, taps, out, n, add) }
            }

            #[inline]
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
            ) {
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn f(
                    x: *const f32,
                    in_w: usize,
                    y: *mut f32,
                    idx: *mut u32,
                    out_h: usize,
                    out_w: usize,
                    affine: Option<[f32; 2]>,
                    at: *mut f32,
                ) {
                    // SAFETY: the caller's contract (as `max_pool2_body`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::pool::max_pool2_body::<$v>(
                            x, in_w, y, idx, out_h, out_w, affine, at,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(x, in_w, y, idx, out_h, out_w, affine, at) }
            }

            #[inline]
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
            ) -> bool {
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn f(
                    dy: *const f32,
                    idx: *const u32,
                    out_w: usize,
                    dx: *mut f32,
                    in_h: usize,
                    in_w: usize,
                    out_h: usize,
                    bn: Option<(*const f32, [f32; 4])>,
                ) -> bool {
                    // SAFETY: the caller's contract (as `unpool2_body`'s).
                    unsafe {
                        $crate::arch::kernel::bodies::pool::unpool2_body::<$v>(
                            dy, idx, out_w, dx, in_h, in_w, out_h, bn,
                        )
                    }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(dy, idx, out_w, dx, in_h, in_w, out_h, bn) }
            }

            #[inline]
            unsafe fn transpose8_raw(self, src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
                #[target_feature(enable = $features)]
                unsafe fn f(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
                    // SAFETY: the caller's contract (as `Vector::transpose8`'s).
                    unsafe { <$v as $crate::arch::kernel::Vector>::transpose8(src, ss, dst, ds) }
                }
                // SAFETY: `self` proves the features; the rest is the caller's contract.
                unsafe { f(src, ss, dst, ds) }
            }
        }
    };
}
pub(crate) use micro_kernels;
