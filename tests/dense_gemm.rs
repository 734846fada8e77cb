//! The GEMM gateway and the dense kernels against the reference.

mod common;

use cnnkit::gemm::{MatMut, MatRef, sgemm};
use cnnkit::kernels::{
    Accum, DenseGeom, dense_backward_data, dense_backward_weights, dense_forward,
};
use cnnkit::reference;
use common::gradcheck::{Tol, check_vjp};
use common::strategies::vals;
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

/// A matrix stored with arbitrary (non-aliasing) strides: returns (storage, rs, cs) holding the
/// row-major `rows x cols` values of `dense`.
fn strided(
    dense: &[f32],
    rows: usize,
    cols: usize,
    transposed: bool,
    pad: usize,
) -> (Vec<f32>, usize, usize) {
    let (rs, cs) = if transposed {
        (1, rows + pad)
    } else {
        (cols + pad, 1)
    };
    let mut data = vec![f32::NAN; (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1 + pad];
    for i in 0..rows {
        for j in 0..cols {
            data[i * rs + j * cs] = dense[i * cols + j];
        }
    }
    (data, rs, cs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    /// C = αAB + βC over edge sizes 0..=17 (micro-kernel boundaries: 6x16 tiles), transposed and
    /// padded layouts, and β = 0 into NaN (C must not be read).
    #[test]
    fn sgemm_matches_reference(
        (m, k, n) in (0..20usize, 0..40usize, 0..36usize),
        (ta, tb, tc) in (any::<bool>(), any::<bool>(), any::<bool>()),
        pad in 0..3usize,
        alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0],
        beta in prop_oneof![Just(0.0f32), Just(1.0f32), -2.0f32..2.0],
        seed in any::<u64>(),
    ) {
        let (a, b, c0) = (values(seed, m * k), values(seed ^ 1, k * n), values(seed ^ 2, m * n));
        let (ad, ars, acs) = strided(&a, m, k, ta, pad);
        let (bd, brs, bcs) = strided(&b, k, n, tb, pad);
        let init: Vec<f32> = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
        let ab = reference::matmul(m, k, n, &a, &b);
        let want: Vec<f32> = (0..m * n)
            .map(|i| alpha * ab[i] + if beta == 0.0 { 0.0 } else { beta * c0[i] })
            .collect();
        // Both implementations: the packed AVX2/FMA GEMM (where the CPU has it) and the
        // portable matrixmultiply path.
        for portable in [false, true] {
            cnnkit::arch::limit(portable.then_some(cnnkit::arch::Isa::Portable));
            let (mut cd, crs, ccs) = strided(&init, m, n, tc, pad);
            par(|| sgemm(
                alpha,
                MatRef::new(&ad, m, k, ars, acs).unwrap(),
                MatRef::new(&bd, k, n, brs, bcs).unwrap(),
                beta,
                MatMut::new(&mut cd, m, n, crs, ccs).unwrap(),
            )).unwrap();
            let got: Vec<f32> = (0..m * n).map(|i| cd[(i / n.max(1)) * crs + (i % n.max(1)) * ccs]).collect();
            assert_close(&format!("C (portable: {portable})"), &got, &want, 1e-5, 1e-5)?;
        }
        cnnkit::arch::limit(None);
    }

    #[test]
    fn dense_matches_reference_and_finite_differences(
        (n, inp, out) in (1..5usize, 1..12usize, 1..9usize),
        seed in any::<u64>(),
        with_bias in any::<bool>(),
    ) {
        let g = DenseGeom::new(n, inp, out).unwrap();
        let (x, w, b, dy) = (values(seed, n * inp), values(seed ^ 1, out * inp), values(seed ^ 2, out), values(seed ^ 3, n * out));
        let bias = with_bias.then_some(&b[..]);
        let fwd = |x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]| dense_forward(&g, x, w, b, y).unwrap();
        let mut y = nans(n * out);
        par(|| fwd(&x, &w, bias, &mut y));
        assert_close("y", &y, &reference::dense_forward(n, inp, out, &x, &w, bias), 1e-5, 1e-5)?;
        let (rdx, rdw, rdb) = reference::dense_backward(n, inp, out, &x, &w, &dy);
        let (mut dx, mut dw, mut db) = (nans(n * inp), nans(out * inp), nans(out));
        par(|| {
            dense_backward_data(&g, &w, &dy, &mut dx, Accum::Replace).unwrap();
            dense_backward_weights(&g, &x, &dy, &mut dw, Some(&mut db), Accum::Replace).unwrap();
        });
        assert_close("dx", &dx, &rdx, 1e-5, 1e-5)?;
        assert_close("dw", &dw, &rdw, 1e-5, 1e-5)?;
        assert_close("db", &db, &rdb, 1e-5, 1e-5)?;
        // Accumulation adds onto what is there.
        par(|| dense_backward_weights(&g, &x, &dy, &mut dw, Some(&mut db), Accum::Add).unwrap());
        assert_close("dw add", &dw, &rdw.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-5, 1e-5)?;
        assert_close("db add", &db, &rdb.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-5, 1e-5)?;
        par(|| check_vjp(&x, &dy, |x, y| fwd(x, &w, bias, y),
            |_, dy, dx| dense_backward_data(&g, &w, dy, dx, Accum::Replace).unwrap(), Tol::DEFAULT))?;
        par(|| check_vjp(&w, &dy, |w, y| fwd(&x, w, bias, y),
            |_, dy, dw| dense_backward_weights(&g, &x, dy, dw, None, Accum::Replace).unwrap(), Tol::DEFAULT))?;
        par(|| check_vjp(&b, &dy, |b, y| fwd(&x, &w, Some(b), y),
            |_, dy, db| dense_backward_weights(&g, &x, dy, &mut vec![0.0; out * inp], Some(db), Accum::Replace).unwrap(), Tol::DEFAULT))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    /// 64 finite-difference cases with random values (the dense test above covers the reference).
    #[test]
    fn dense_backward_matches_finite_differences(
        (n, inp, out, x, w, dy) in (1..4usize, 1..8usize, 1..6usize)
            .prop_flat_map(|(n, i, o)| (Just(n), Just(i), Just(o), vals(n * i), vals(o * i), vals(n * o)))
    ) {
        let g = DenseGeom::new(n, inp, out).unwrap();
        par(|| check_vjp(&x, &dy, |x, y| dense_forward(&g, x, &w, None, y).unwrap(),
            |_, dy, dx| dense_backward_data(&g, &w, dy, dx, Accum::Replace).unwrap(), Tol::DEFAULT))?;
        par(|| check_vjp(&w, &dy, |w, y| dense_forward(&g, &x, w, None, y).unwrap(),
            |_, dy, dw| dense_backward_weights(&g, &x, dy, dw, None, Accum::Replace).unwrap(), Tol::DEFAULT))?;
    }
}

#[test]
fn gemm_views_reject_bad_shapes() {
    let d = [0.0f32; 6];
    let mut c = [0.0f32; 4];
    let a = MatRef::row_major(&d, 2, 3).unwrap();
    let b = MatRef::row_major(&d, 2, 3).unwrap();
    // A is 2x3, B is 2x3: inner dimensions disagree.
    assert!(sgemm(1.0, a, b, 0.0, MatMut::row_major(&mut c, 2, 2).unwrap()).is_err());
    assert!(MatRef::row_major(&d, 3, 3).is_err());
    assert!(DenseGeom::new(1, 0, 3).is_err());
    assert!(DenseGeom::new(usize::MAX, 2, 3).is_err());
    let g = DenseGeom::new(2, 3, 4).unwrap();
    assert!(dense_forward(&g, &[0.0; 6], &[0.0; 11], None, &mut [0.0; 8]).is_err());
}
