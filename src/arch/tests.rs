//! One test harness per micro-kernel family, run on the micro-kernels of every instruction set
//! this CPU has (expanded from the kernel table, so a new instruction set is tested as soon as it
//! is listed there).
//!
//! The references are scalar loops that accumulate in the kernels' documented order with
//! `f32::mul_add` (one rounding per step, as a fused multiply-add instruction), so every kernel
//! must match them *bit for bit* — which also makes the instruction sets identical to each other.
//! Sizes cover the edges (0..2·MR by 0..2·NR for GEMM, short and long `k`), every accumulate
//! mode, and outputs pre-filled with NaN wherever a kernel must not read them.

use super::isa::Isa;
use super::kernel::{MicroKernel, Taps};

/// A test over any instruction set's micro-kernels.
pub(crate) trait KernelTest {
    fn run<K: MicroKernel>(&mut self, kern: K);
}

/// The expansion of [`on_every_kernel`] over the kernel table.
macro_rules! every_kernel {
    (($t:ident, $ran:ident) $(#[$m:meta] $isa:ident = $tok:path, $feat:literal;)*) => {
        $(
            #[$m]
            {
                if let Some(k) = <$tok>::new() {
                    $t.run(k);
                    $ran.push(Isa::$isa);
                }
            }
        )*
    };
}
pub(crate) use every_kernel;

/// Runs `t` on the micro-kernels of every instruction set this CPU supports; returns which ran.
pub(crate) fn on_every_kernel(t: &mut impl KernelTest) -> Vec<Isa> {
    let mut ran = Vec::new();
    super::kernel_table!(tests::every_kernel, (t, ran));
    ran
}

/// Deterministic values in [-1, 1) with a few exact zeros.
pub(crate) fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let u = crate::rng::uniform_at(seed, i);
            if i % 29 == 3 { 0.0 } else { 2.0 * u - 1.0 }
        })
        .collect()
}

/// A destination for a tile of `rows` rows of `cols` elements, rows `rs` apart: values of `seed`,
/// with the tile itself NaN when `beta == 0` (a kernel that reads C there then fails).
pub(crate) fn c_tile(seed: u64, rows: usize, cols: usize, rs: usize, beta: f32) -> Vec<f32> {
    let len = if rows == 0 { 0 } else { (rows - 1) * rs + cols };
    let mut c = values(seed, len);
    if beta == 0.0 {
        for i in 0..rows {
            c[i * rs..][..cols].fill(f32::NAN);
        }
    }
    c
}

/// Bit-for-bit equality (NaN never expected here).
#[track_caller]
pub(crate) fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}[{i}]: kernel {g:e} ({:#010x}), reference {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn every_instruction_set_the_cpu_has_is_exercised() {
    struct Seen(Vec<(Isa, usize, usize)>);
    impl KernelTest for Seen {
        fn run<K: MicroKernel>(&mut self, _: K) {
            self.0.push((K::ISA, K::MR, K::NR));
        }
    }
    let mut seen = Seen(Vec::new());
    let ran = on_every_kernel(&mut seen);
    // AVX512-BF16 runs the AVX-512 entry's kernels in f32; its one tile of its own, the bf16
    // GEMM tile, has its tests beside it (`x86_64::bf16`) and in the packed GEMM's.
    let expected: Vec<Isa> = Isa::ALL
        .into_iter()
        .rev()
        .filter(|&i| i > Isa::Portable && i <= Isa::detected() && i != Isa::Avx512Bf16)
        .collect();
    assert_eq!(
        ran, expected,
        "the CPU supports an instruction set the kernel harness did not run"
    );
    for (isa, mr, nr) in seen.0 {
        assert!(
            ran.contains(&isa),
            "a token reports {isa} but was listed as another"
        );
        assert!(
            mr > 0 && nr > 0 && mr <= 32 && nr <= 64,
            "{isa}: tile {mr}x{nr}"
        );
    }
}

/// The GEMM tile, directly: every `k` from 0 to past a packed block, four alpha/beta modes, C
/// rows further apart than the tile (the gap must stay untouched).
#[test]
fn gemm_tile_matches_the_reference_bit_for_bit() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            let (mr, nr) = (K::MR, K::NR);
            for k in [0, 1, 2, 3, 4, 5, 17, 64, 300] {
                let (a, b) = (values(1, k * mr), values(2, k * nr));
                for (alpha, beta) in [(1.0, 0.0), (-2.0, 0.0), (1.0, 1.0), (0.5, -1.5)] {
                    let rs = nr + 3;
                    let mut c = c_tile(3, mr, nr, rs, beta);
                    let mut want = c.clone();
                    for i in 0..mr {
                        for j in 0..nr {
                            let mut acc = 0.0f32;
                            for p in 0..k {
                                acc = a[p * mr + i].mul_add(b[p * nr + j], acc);
                            }
                            let mut r = acc * alpha;
                            if beta != 0.0 {
                                r = want[i * rs + j].mul_add(beta, r);
                            }
                            want[i * rs + j] = r;
                        }
                    }
                    kern.tile(k, &a, &b, alpha, beta, &mut c, rs);
                    same_bits(
                        &format!("{} tile k={k} alpha={alpha} beta={beta}", K::ISA),
                        &c,
                        &want,
                    );
                }
            }
        }
    }
    on_every_kernel(&mut T);
}

/// The convolution tile: tap counts from none to many, both accumulate modes (overwrite onto NaN),
/// offsets in any order.
#[test]
fn conv_tile_matches_the_reference_bit_for_bit() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            let (mr, nr) = (K::MR, K::NR);
            let x = values(7, 900);
            for taps in [0, 1, 2, 3, 4, 5, 9, 27, 70] {
                let a = values(8, taps * mr);
                let off: Vec<u32> = (0..taps as u32).map(|t| (t * 37 + 11) % 700).collect();
                for (base, add) in [(0, false), (5, true), (100, false), (3, true)] {
                    let rs = nr + 1;
                    let mut c = c_tile(9, mr, nr, rs, if add { 1.0 } else { 0.0 });
                    let mut want = c.clone();
                    for i in 0..mr {
                        for j in 0..nr {
                            let mut acc = 0.0f32;
                            for t in 0..taps {
                                let xv = x[base + off[t] as usize + j];
                                acc = a[t * mr + i].mul_add(xv, acc);
                            }
                            let e = &mut want[i * rs + j];
                            *e = if add { acc + *e } else { acc };
                        }
                    }
                    kern.conv_tile(&a, &x, base, &Taps::new(&off), add, &mut c, rs);
                    same_bits(
                        &format!("{} conv tile taps={taps} base={base} add={add}", K::ISA),
                        &c,
                        &want,
                    );
                }
            }
        }
    }
    on_every_kernel(&mut T);
}

/// The weight-gradient tile: pixel counts from none to long, gradient rows further apart than
/// the tile, added onto existing values.
#[test]
fn wgrad_tile_matches_the_reference_bit_for_bit() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            let (mr, nr) = (K::MR, K::NR);
            let x = values(10, 1200);
            for len in [0, 1, 2, 3, 4, 5, 17, 64, 301] {
                let xo: Vec<usize> = (0..mr).map(|i| (i * 53 + 7) % 800).collect();
                let bs = nr + 5;
                let b = values(11, len.max(1) * bs);
                let rs = nr + 2;
                let mut c = values(12, (mr - 1) * rs + nr);
                let mut want = c.clone();
                for i in 0..mr {
                    for j in 0..nr {
                        let mut acc = 0.0f32;
                        for s in 0..len {
                            acc = x[xo[i] + s].mul_add(b[s * bs + j], acc);
                        }
                        let e = &mut want[i * rs + j];
                        if len > 0 {
                            *e += acc;
                        }
                    }
                }
                kern.wgrad_tile(len, &x, &xo, &b, bs, &mut c, rs);
                same_bits(&format!("{} wgrad tile len={len}", K::ISA), &c, &want);
            }
        }
    }
    on_every_kernel(&mut T);
}

/// The dot-product tile: every tile shape, lengths from none to several blocks with and without
/// a tail, rows further apart than their length, two calls adding to the same running sums, and
/// NaN wherever the tile must not write (the elements of the row stride outside the tile).
#[test]
fn dot_tile_matches_the_reference_bit_for_bit() {
    use super::kernel::bodies::tiles::{DOT_COLS, DOT_LANES, DOT_ROWS};
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            for (rows, cols) in (1..=DOT_ROWS).flat_map(|r| (1..=DOT_COLS).map(move |c| (r, c))) {
                for k in [0, 1, 15, 16, 17, 33, 100] {
                    let (lda, ldb, rs) = (k + 3, k + 7, cols + 2);
                    let a = values(20, (rows - 1) * lda + k.max(1));
                    let b = values(21, (cols - 1) * ldb + k.max(1));
                    let elems = (rows - 1) * rs + cols;
                    let mut cv = vec![f32::NAN; elems * DOT_LANES];
                    let mut ct = vec![f32::NAN; elems];
                    let start = values(22, elems * (DOT_LANES + 1));
                    for i in 0..rows {
                        for j in 0..cols {
                            let e = i * rs + j;
                            cv[e * DOT_LANES..][..DOT_LANES]
                                .copy_from_slice(&start[e * DOT_LANES..][..DOT_LANES]);
                            ct[e] = start[elems * DOT_LANES + e];
                        }
                    }
                    let (mut want_v, mut want_t) = (cv.clone(), ct.clone());
                    let whole = k / DOT_LANES * DOT_LANES;
                    for _call in 0..2 {
                        for i in 0..rows {
                            for j in 0..cols {
                                let e = i * rs + j;
                                let (ar, br) = (&a[i * lda..], &b[j * ldb..]);
                                for s in 0..whole {
                                    let l = &mut want_v[e * DOT_LANES + s % DOT_LANES];
                                    *l = ar[s].mul_add(br[s], *l);
                                }
                                for s in whole..k {
                                    want_t[e] = ar[s].mul_add(br[s], want_t[e]);
                                }
                            }
                        }
                        kern.dot_tile((rows, cols), k, &a, lda, &b, ldb, (&mut cv, &mut ct), rs);
                    }
                    let what = format!("{} dot tile {rows}x{cols} k={k}", K::ISA);
                    same_bits(&format!("{what}, lane sums"), &cv, &want_v);
                    same_bits(&format!("{what}, tails"), &ct, &want_t);
                }
            }
        }
    }
    on_every_kernel(&mut T);
}

/// The depthwise sweep: every length up to past four registers, no taps to 49 taps at any
/// offsets (repeated ones too), added or overwriting NaN.
#[test]
fn depthwise_taps_match_the_reference_bit_for_bit() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            let lanes = K::LANES;
            for taps in [0, 1, 2, 9, 25, 49] {
                let w = values(13, taps);
                // Offsets spread over a few hundred floats, out of order, some equal.
                let offs: Vec<usize> = (0..taps).map(|t| (t * 37 + t / 3) % 211).collect();
                for n in (0..=4 * lanes + 3).chain([8 * lanes + 5]) {
                    let src = values(14, 211 + n.div_ceil(lanes) * lanes);
                    for add in [false, true] {
                        let mut out = if add {
                            values(15, n)
                        } else {
                            vec![f32::NAN; n]
                        };
                        let mut want = out.clone();
                        for (j, e) in want.iter_mut().enumerate() {
                            let mut acc = 0.0f32;
                            for (&o, &wt) in offs.iter().zip(&w) {
                                acc = src[o + j].mul_add(wt, acc);
                            }
                            *e = if add { *e + acc } else { acc };
                        }
                        kern.depthwise_taps(&src, &offs, &w, &mut out, add);
                        same_bits(
                            &format!("{} depthwise n={n} taps={taps} add={add}", K::ISA),
                            &out,
                            &want,
                        );
                    }
                }
            }
        }
    }
    on_every_kernel(&mut T);
}

/// The 8 x 8 transpose moves every element to its mirrored place, with any row strides, and
/// writes nothing between the rows.
#[test]
fn transpose8_matches_the_reference() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            for (ss, ds) in [(8, 8), (13, 9), (100, 32), (3136, 64)] {
                let src = values(ss as u64, 7 * ss + 8);
                let mut dst = vec![f32::NAN; 7 * ds + 8];
                kern.transpose8(&src, ss, &mut dst, ds);
                for (k, &d) in dst.iter().enumerate() {
                    let (j, i) = (k / ds, k % ds);
                    if i < 8 {
                        let want = src[i * ss + j];
                        assert_eq!(
                            d.to_bits(),
                            want.to_bits(),
                            "{:?} ss {ss} ds {ds} [{j}][{i}]",
                            K::ISA
                        );
                    } else {
                        assert!(d.is_nan(), "{:?}: wrote between rows at {k}", K::ISA);
                    }
                }
            }
        }
    }
    on_every_kernel(&mut T);
}

/// 2x2 max pooling at stride 2 of planes of every width up to past two registers of windows
/// (full and partial registers, an odd last column and row), over values full of ties, signed
/// zeros, −∞ and NaN: the maxima and their indices are the scalar loop's (candidates in
/// row-major order from −∞, taking a greater value or a NaN), bit for bit; the gradient spread
/// back is `0 + dy` at each index and `+0` elsewhere, and an index outside its own window is
/// reported. Nothing past the outputs is written.
#[test]
fn max_pool2_and_unpool2_match_the_scalar_loops() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            let pick = [1.0, -1.0, 0.0, -0.0, f32::NAN, f32::NEG_INFINITY, 2.0];
            for in_h in 0..=5usize {
                for in_w in 0..=37usize {
                    let (out_h, out_w) = (in_h / 2, in_w / 2);
                    let seed = (in_h * 100 + in_w) as u64;
                    let x: Vec<f32> = (0..in_h * in_w)
                        .map(|i| {
                            let u = crate::rng::uniform_at(seed, i as u64);
                            pick[(u * pick.len() as f32) as usize % pick.len()]
                        })
                        .collect();
                    let (mut want_y, mut want_i) = (vec![], vec![]);
                    for oh in 0..out_h {
                        for ow in 0..out_w {
                            let first = 2 * oh * in_w + 2 * ow;
                            let (mut b, mut at) = (f32::NEG_INFINITY, first);
                            for o in [0, 1, in_w, in_w + 1] {
                                let v = x[first + o];
                                if v > b || v.is_nan() {
                                    (b, at) = (v, first + o);
                                }
                            }
                            want_y.push(b);
                            want_i.push(at as u32);
                        }
                    }
                    let len = out_h * out_w;
                    let (mut y, mut idx) = (vec![7.5f32; len + 3], vec![u32::MAX; len + 3]);
                    kern.max_pool2(&x, in_w, &mut y[..len], Some(&mut idx[..len]), None, None);
                    let what = format!("{:?} {in_h}x{in_w}", K::ISA);
                    // Without indices: the same maxima.
                    let mut y2 = vec![7.5f32; len + 3];
                    kern.max_pool2(&x, in_w, &mut y2[..len], None, None, None);
                    let b = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(b(&y2), b(&y), "{what}: without indices");
                    // An affine map made in the registers (a negative scale reverses the order):
                    // the pooling of the mapped plane, and the element read at each maximum.
                    for ab in [[-1.5f32, 0.25], [3.0, -0.0]] {
                        let mapped: Vec<f32> = x.iter().map(|v| v.mul_add(ab[0], ab[1])).collect();
                        let (mut want_m, mut want_mi) = (vec![0.0f32; len], vec![0u32; len]);
                        kern.max_pool2(&mapped, in_w, &mut want_m, Some(&mut want_mi), None, None);
                        let mut ym = vec![7.5f32; len + 3];
                        let mut im = vec![u32::MAX; len + 3];
                        let mut at = vec![7.5f32; len + 3];
                        kern.max_pool2(
                            &x,
                            in_w,
                            &mut ym[..len],
                            Some(&mut im[..len]),
                            Some(ab),
                            Some(&mut at[..len]),
                        );
                        assert_eq!(b(&ym[..len]), b(&want_m), "{what}: {ab:?} maxima");
                        assert_eq!(im[..len], want_mi[..], "{what}: {ab:?} indices");
                        let read: Vec<f32> = im[..len].iter().map(|&i| x[i as usize]).collect();
                        assert_eq!(
                            b(&at[..len]),
                            b(&read),
                            "{what}: {ab:?} values at the maxima"
                        );
                        assert_eq!(ym[len..], [7.5; 3], "{what}: wrote past y");
                        assert_eq!(at[len..], [7.5; 3], "{what}: wrote past at");
                        // The values at the maxima without the indices.
                        let mut at2 = vec![7.5f32; len];
                        kern.max_pool2(&x, in_w, &mut ym[..len], None, Some(ab), Some(&mut at2));
                        assert_eq!(b(&at2), b(&read), "{what}: {ab:?} values without indices");
                    }
                    for (k, (g, w)) in y[..len].iter().zip(&want_y).enumerate() {
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{what}: y[{k}] {g} vs {w}"
                        );
                    }
                    assert_eq!(&idx[..len], &want_i[..], "{what}: indices");
                    assert_eq!(y[len..], [7.5; 3], "{what}: wrote past y");
                    assert_eq!(idx[len..], [u32::MAX; 3], "{what}: wrote past idx");

                    // The gradient: signed zeros and NaN among the values.
                    let dy: Vec<f32> = (0..len)
                        .map(|i| match i % 5 {
                            0 => -0.0,
                            1 => f32::NAN,
                            _ => values(seed + 1, len)[i],
                        })
                        .collect();
                    let mut want = vec![0.0f32; in_h * in_w];
                    for (&a, &d) in want_i.iter().zip(&dy) {
                        want[a as usize] += d;
                    }
                    let plane = in_h * in_w;
                    let mut dx = vec![f32::NAN; plane + 3];
                    dx[plane..].fill(7.5);
                    assert!(
                        kern.unpool2(&dy, &want_i, &mut dx[..plane], in_w, None),
                        "{what}"
                    );
                    for (k, (g, w)) in dx[..plane].iter().zip(&want).enumerate() {
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{what}: dx[{k}] {g:e} vs {w:e}"
                        );
                    }
                    assert_eq!(dx[plane..], [7.5; 3], "{what}: wrote past dx");
                    // Then a batch norm's backward map of the plane `x` in the same pass:
                    // k·((d − a) − (x − mean)·b), the product and its sum rounded once.
                    let c = [0.75f32, -0.25, 0.125, 1.5];
                    let [k, mean, a, b] = c;
                    dx[..plane].fill(f32::NAN);
                    let bn = Some((&x[..], c));
                    assert!(
                        kern.unpool2(&dy, &want_i, &mut dx[..plane], in_w, bn),
                        "{what}"
                    );
                    for (i, (g, (&w, &xv))) in
                        dx[..plane].iter().zip(want.iter().zip(&x)).enumerate()
                    {
                        let w = (-(xv - mean)).mul_add(b, w - a) * k;
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{what}: mapped dx[{i}] {g:e} vs {w:e}"
                        );
                    }
                    assert_eq!(dx[plane..], [7.5; 3], "{what}: wrote past dx (mapped)");
                    // An index inside the plane but outside its window is reported.
                    if len > 1 {
                        let mut bad = want_i.clone();
                        bad[len - 1] = want_i[0];
                        assert!(
                            !kern.unpool2(&dy, &bad, &mut dx[..plane], in_w, None),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
    on_every_kernel(&mut T);
}

/// Strides and offsets so large that the bound arithmetic would wrap around are refused: with
/// wrapping arithmetic `(MR-1)·rs + NR` came out small, the check passed, and the kernel would
/// have written far outside `c`.
#[test]
fn bound_checks_refuse_what_would_wrap() {
    struct T;
    impl KernelTest for T {
        fn run<K: MicroKernel>(&mut self, kern: K) {
            use super::kernel::tile_fits;
            let (mr, nr) = (K::MR, K::NR);
            let rs = usize::MAX / (mr - 1) + 1;
            assert!(!tile_fits(64, mr, nr, rs));
            let fit = nr + 3;
            assert!(tile_fits((mr - 1) * fit + nr, mr, nr, fit));
            assert!(!tile_fits((mr - 1) * fit + nr - 1, mr, nr, fit));
            let refused =
                |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
            assert!(refused(&|| {
                let mut c = vec![0.0; 64];
                kern.tile(1, &vec![0.0; mr], &vec![0.0; nr], 1.0, 0.0, &mut c, rs);
            }));
            assert!(refused(&|| {
                let mut c = vec![0.0; mr * nr];
                let off = [0u32];
                kern.conv_tile(
                    &vec![0.0; mr],
                    &[0.0; 64],
                    usize::MAX - 4,
                    &Taps::new(&off),
                    false,
                    &mut c,
                    nr,
                );
            }));
            assert!(refused(&|| {
                let mut c = vec![0.0; mr * nr];
                let xo = vec![usize::MAX - 1; mr];
                kern.wgrad_tile(4, &[0.0; 64], &xo, &vec![0.0; 4 * nr], nr, &mut c, nr);
            }));
            assert!(refused(&|| {
                let mut out = [0.0; 8];
                kern.depthwise_taps(&[0.0; 64], &[0, 57], &[0.0; 2], &mut out, false);
            }));
            assert!(refused(&|| {
                let mut out = [0.0; 8];
                kern.depthwise_taps(&[0.0; 64], &[0, 1], &[0.0; 1], &mut out, false);
            }));
            assert!(refused(&|| {
                let mut out = [0.0; 8];
                kern.depthwise_taps(&[0.0; 64], &[usize::MAX - 4, 0], &[0.0; 2], &mut out, false);
            }));
            assert!(refused(&|| {
                let mut dst = [0.0; 64];
                kern.transpose8(&[0.0; 64], usize::MAX / 4, &mut dst, 8);
            }));
            assert!(refused(&|| {
                let mut dst = [0.0; 63];
                kern.transpose8(&[0.0; 64], 8, &mut dst, 8);
            }));
            // Pooling planes whose lengths disagree.
            assert!(refused(&|| {
                let (mut y, mut i) = ([0.0; 4], [0u32; 4]);
                kern.max_pool2(&[0.0; 15], 4, &mut y, Some(&mut i), None, None);
            }));
            assert!(refused(&|| {
                let (mut y, mut i) = ([0.0; 4], [0u32; 3]);
                kern.max_pool2(&[0.0; 16], 4, &mut y, Some(&mut i), None, None);
            }));
            assert!(refused(&|| {
                let (mut y, mut at) = ([0.0; 4], [0.0; 3]);
                kern.max_pool2(&[0.0; 16], 4, &mut y, None, None, Some(&mut at));
            }));
            assert!(refused(&|| {
                let mut dx = [0.0; 15];
                kern.unpool2(&[0.0; 4], &[0u32; 4], &mut dx, 4, None);
            }));
            assert!(refused(&|| {
                let mut dx = [0.0; 16];
                kern.unpool2(
                    &[0.0; 4],
                    &[0u32; 4],
                    &mut dx,
                    4,
                    Some((&[0.0; 15], [0.0; 4])),
                );
            }));
            // A C tile one element short is refused too.
            assert!(refused(&|| {
                let mut c = vec![0.0; mr * nr - 1];
                kern.tile(1, &vec![0.0; mr], &vec![0.0; nr], 1.0, 0.0, &mut c, nr);
            }));
        }
    }
    on_every_kernel(&mut T);
}
