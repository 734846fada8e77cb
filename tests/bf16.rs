//! bf16 precision (`Precision::Bf16`: bf16 operands, f32 sums, f32 master weights): products
//! against the `f64` reference within a bound derived from the rounding, bit-identical for any
//! thread count, on every instruction set the CPU has; and training in bf16 against the same
//! training in f32. Its own test binary: the precision is process-wide.

mod common;

use cnnkit::arch::{self, Isa};
use cnnkit::gemm::{MatMut, MatRef, Precision, set_precision, sgemm};
use cnnkit::kernels::{
    Accum, conv2d_backward_data, conv2d_backward_data_scratch_len, conv2d_backward_weights,
    conv2d_backward_weights_scratch_len, conv2d_forward, conv2d_forward_scratch_len,
};
use cnnkit::{
    Control, Conv2dGeom, Conv2dParams, LayerSpec, Sequential, Shape4, TrainConfig, Trainer, data,
    evaluate, reference,
};
use common::values;
use std::sync::Mutex;

/// Held by each test: the precision and the instruction-set limit are process-wide.
static SWITCH: Mutex<()> = Mutex::new(());

/// The bound on `|y − exact|` per unit of `Σ|a·b|` for a sum of `k` products of operands rounded
/// to bf16 and summed in f32: each operand is off by at most 2⁻⁹ of itself (8 significant bits,
/// round to nearest), so each product by at most 2⁻⁸ + 2⁻¹⁸; the f32 sum adds at most
/// `k·2⁻²⁴` (one rounding per addition), and the reference's own f32 result 2⁻²⁴ more.
fn bound(k: usize) -> f64 {
    2f64.powi(-8) + 2f64.powi(-18) + (k + 1) as f64 * 2f64.powi(-24)
}

/// Checks `got` against the reference `want` element by element, with `mag` the reference of
/// the same product on the operands' magnitudes (`Σ|a·b|`); returns the largest error per unit
/// of `mag`.
#[track_caller]
fn within(what: &str, got: &[f32], want: &[f32], mag: &[f32], k: usize) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut worst = 0.0f64;
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let e = (*g as f64 - *w as f64).abs();
        let allowed = bound(k) * *m as f64 + 1e-30;
        assert!(
            e <= allowed,
            "{what}[{i}]: {g:e} vs {w:e}, error {e:e} above {allowed:e}"
        );
        worst = worst.max(e / allowed * bound(k));
    }
    worst
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// The three passes of `g` on `threads` threads: `(y, dx, dw, db)`.
fn passes(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    threads: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut y = vec![f32::NAN; g.y_len()];
    let (mut dx, mut dw, mut db) = (
        vec![f32::NAN; g.x_len()],
        vec![f32::NAN; g.w_len()],
        vec![f32::NAN; g.c_out()],
    );
    pool(threads).install(|| {
        let mut ws = vec![0.0; conv2d_forward_scratch_len(g)];
        conv2d_forward(g, x, w, None, &mut y, &mut ws).unwrap();
        let mut ws = vec![0.0; conv2d_backward_data_scratch_len(g)];
        conv2d_backward_data(g, w, dy, &mut dx, Accum::Replace, &mut ws).unwrap();
        let mut ws = vec![0.0; conv2d_backward_weights_scratch_len(g)];
        conv2d_backward_weights(g, x, dy, &mut dw, Some(&mut db), Accum::Replace, &mut ws).unwrap();
    });
    (y, dx, dw, db)
}

/// Shapes that take every f32 path: the direct kernels, Winograd (64 channels at 56×56), a
/// strided and a grouped convolution, a 1×1, channel counts below and above a tile, batches
/// split over images and inside the image.
fn shapes() -> Vec<Conv2dGeom> {
    [
        (1, 3, 5, [3, 3], 9, 7, 1, 1, 1),
        (3, 8, 16, [3, 3], 13, 10, 1, 1, 1),
        (1, 64, 64, [3, 3], 56, 56, 1, 1, 1),
        (2, 16, 24, [3, 3], 15, 15, 2, 1, 1),
        (2, 32, 40, [1, 1], 12, 9, 1, 0, 1),
        (1, 12, 18, [5, 5], 11, 11, 1, 2, 3),
    ]
    .into_iter()
    .map(|(n, c, k, kk, h, w, s, p, groups)| {
        Conv2dGeom::new(
            Shape4::new(n, c, h, w),
            k,
            kk,
            Conv2dParams::default().stride(s).padding(p).groups(groups),
        )
        .unwrap()
    })
    .collect()
}

/// The convolution's three passes in bf16 against the `f64` reference within [`bound`], on every
/// instruction set the CPU has (AVX512-BF16's pairs, the rounded operands on the f32 tiles of
/// AVX-512 and AVX2), bit-identical on 1–3 threads; and measurably coarser than f32, so the
/// setting is in effect.
#[test]
fn bf16_convolutions_are_within_the_rounding_bound_on_every_instruction_set() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for isa in [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2Fma] {
        arch::limit(Some(isa));
        if arch::active() != isa {
            continue;
        }
        let mut worst = 0.0f64;
        for (i, g) in shapes().iter().enumerate() {
            let s = i as u64;
            let (x, w, dy) = (
                values(s, g.x_len()),
                values(100 + s, g.w_len()),
                values(200 + s, g.y_len()),
            );
            let (rx, rw, rdy) = (abs(&x), abs(&w), abs(&dy));
            set_precision(Precision::F32);
            let f32_y = passes(g, &x, &w, &dy, 1).0;
            set_precision(Precision::Bf16);
            let (y, dx, dw, db) = passes(g, &x, &w, &dy, 1);
            let taps = g.c_in_g() * g.k_h() * g.k_w();
            let what = |p: &str| format!("{isa} {g:?} {p}");
            worst = worst.max(within(
                &what("forward"),
                &y,
                &reference::conv2d_forward(g, &x, &w, None),
                &reference::conv2d_forward(g, &rx, &rw, None),
                taps,
            ));
            let per_input = g.c_out_g() * g.k_h() * g.k_w();
            worst = worst.max(within(
                &what("input gradient"),
                &dx,
                &reference::conv2d_backward_data(g, &w, &dy),
                &reference::conv2d_backward_data(g, &rw, &rdy),
                per_input,
            ));
            let (rdw, rdb) = reference::conv2d_backward_weights(g, &x, &dy);
            let terms = g.n() * g.out_h() * g.out_w();
            worst = worst.max(within(
                &what("weight gradient"),
                &dw,
                &rdw,
                &reference::conv2d_backward_weights(g, &rx, &rdy).0,
                terms,
            ));
            // The bias gradient is a sum of f32 values, no product: f32 exactly as before.
            for (a, b) in db.iter().zip(&rdb) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{}", what("bias"));
            }
            assert_ne!(
                bits(&y),
                bits(&f32_y),
                "{}: bf16 not in effect",
                what("forward")
            );
            for threads in [2, 3] {
                let t = passes(g, &x, &w, &dy, threads);
                for (name, a, b) in [("y", &t.0, &y), ("dx", &t.1, &dx), ("dw", &t.2, &dw)] {
                    assert_eq!(bits(a), bits(b), "{}: {threads} threads", what(name));
                }
            }
        }
        // A real bf16 error (f32 sums stay near 2⁻²⁴ of the magnitudes): the bound is not slack.
        assert!(
            worst > 2f64.powi(-12),
            "{isa}: largest error {worst:e} per unit of Σ|a·b|"
        );
        eprintln!("{isa}: largest error {worst:e} per unit of Σ|a·b| (bound 2^-8 + k·2^-24)");
    }
    arch::limit(None);
    set_precision(Precision::F32);
}

/// Which passes multiply in bf16 (the rest stay f32, the same bits as without the setting): the
/// forward pass always; both gradients from 128 output channels and of 1x1 layers, and where the
/// direct path cannot run them; Winograd's F(4×4) picks (in f32) before the bf16 path.
#[test]
fn each_pass_takes_bf16_where_it_measured_faster() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    if arch::active() < Isa::Avx2Fma {
        return; // The portable path multiplies f32 in either precision.
    }
    let geom = |n, c, k, kk: usize, hw, s| {
        let p = Conv2dParams::default().stride(s).padding(kk / 2);
        Conv2dGeom::new(Shape4::new(n, c, hw, hw), k, [kk, kk], p).unwrap()
    };
    // (geometry, forward, input gradient, weight gradient in bf16)
    for (g, want) in [
        (geom(2, 16, 32, 3, 12, 1), [true, false, false]),
        (geom(2, 16, 128, 3, 12, 1), [true, true, true]),
        (geom(2, 24, 40, 1, 9, 1), [true, true, true]),
        (geom(2, 2, 32, 3, 12, 1), [true, true, false]),
        (geom(1, 64, 64, 3, 56, 1), [true, false, false]),
        (geom(1, 128, 128, 3, 28, 1), [true, false, false]),
    ] {
        let (x, w, dy) = (
            values(1, g.x_len()),
            values(2, g.w_len()),
            values(3, g.y_len()),
        );
        set_precision(Precision::F32);
        let f = passes(&g, &x, &w, &dy, 1);
        set_precision(Precision::Bf16);
        let b = passes(&g, &x, &w, &dy, 1);
        set_precision(Precision::F32);
        let got = [
            bits(&b.0) != bits(&f.0),
            bits(&b.1) != bits(&f.1),
            bits(&b.2) != bits(&f.2),
        ];
        assert_eq!(
            got, want,
            "{g:?}: forward, input and weight gradient in bf16"
        );
    }
}

/// A dense product (`sgemm`) in bf16 against the reference within [`bound`], on edge sizes of
/// the tile and across a packed block of `k`.
#[test]
fn bf16_matrix_products_are_within_the_rounding_bound() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_precision(Precision::Bf16);
    for (m, k, n) in [(3, 5, 7), (8, 256, 32), (33, 300, 70), (64, 1000, 129)] {
        let (a, b) = (values(1, m * k), values(2, k * n));
        let mut c = vec![f32::NAN; m * n];
        sgemm(
            1.0,
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
            0.0,
            MatMut::row_major(&mut c, m, n).unwrap(),
        )
        .unwrap();
        within(
            &format!("sgemm {m}x{k}x{n}"),
            &c,
            &reference::matmul(m, k, n, &a, &b),
            &reference::matmul(m, k, n, &abs(&a), &abs(&b)),
            k,
        );
    }
    set_precision(Precision::F32);
}

/// Test accuracy of `cnnkit train`'s default network on the embedded digits after `epochs` of
/// Adam, in the current precision.
fn digits_accuracy(epochs: usize) -> f64 {
    let (mut train, mut test) = data::digits().unwrap();
    let (m, s) = train.channel_stats();
    train.normalize(&m, &s).unwrap();
    test.normalize(&m, &s).unwrap();
    let specs = LayerSpec::parse_list("conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)").unwrap();
    let model = Sequential::new([1, 8, 8], &specs, 0).unwrap();
    let cfg = TrainConfig {
        epochs,
        batch_size: 32,
        ..Default::default()
    };
    let mut t = Trainer::new(model, "adam".parse().unwrap(), cfg).unwrap();
    t.fit(&train, None, &mut |_| Control::Continue).unwrap();
    evaluate(t.model_mut(), &test, 256).unwrap().accuracy
}

/// Training in bf16 ends within half a point of the same training in f32, on the digits and on
/// the synthetic chest X-rays (two convolutional networks with Adam; the X-ray one with batch
/// norm).
#[test]
fn bf16_training_matches_f32_accuracy() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows = vec![];
    for (name, run) in [
        ("digits", (|| digits_accuracy(30)) as fn() -> f64),
        ("x-rays", || xray_accuracy(15)),
    ] {
        set_precision(Precision::F32);
        let f = run();
        set_precision(Precision::Bf16);
        let b = run();
        set_precision(Precision::F32);
        eprintln!("{name}: test accuracy f32 {f:.4}, bf16 {b:.4}");
        rows.push((name, f, b));
    }
    for (name, f, b) in rows {
        assert!(
            (f - b).abs() <= 0.005,
            "{name}: f32 {f}, bf16 {b}: more than half a point apart"
        );
    }
}

#[path = "../examples/synthetic_xrays.rs"]
#[allow(dead_code)]
mod xrays;

/// Test accuracy of a small X-ray CNN (convolutions, batch norm, global pooling) after `epochs`
/// of Adam on synthetic normal / opacity images, in the current precision.
fn xray_accuracy(epochs: usize) -> f64 {
    const SIZE: usize = 48;
    let mut rng = cnnkit::rng::Rng::new(3);
    let mut set = |count: usize| {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..count {
            let label = (i % 2) as u32;
            x.extend(xrays::image(&mut rng, SIZE, label == 1));
            y.push(label);
        }
        data::Dataset::new(
            x,
            y,
            [1, SIZE, SIZE],
            vec!["normal".into(), "opacity".into()],
        )
        .unwrap()
    };
    let (mut train, mut test) = (set(800), set(1000));
    let (m, s) = train.channel_stats();
    train.normalize(&m, &s).unwrap();
    test.normalize(&m, &s).unwrap();
    let specs = LayerSpec::parse_list(
        "conv(16,3,p=1),bn,relu,maxpool(2),conv(32,3,p=1),bn,relu,maxpool(2),conv(32,3,p=1),bn,relu,gap,dense(2)",
    )
    .unwrap();
    let model = Sequential::new([1, SIZE, SIZE], &specs, 1).unwrap();
    let cfg = TrainConfig {
        epochs,
        ..Default::default()
    };
    let mut t = Trainer::new(model, "adam".parse().unwrap(), cfg).unwrap();
    t.fit(&train, None, &mut |_| Control::Continue).unwrap();
    evaluate(t.model_mut(), &test, 256).unwrap().accuracy
}
