//! The element-wise kernels are compiled three times — for AVX-512, for AVX2 + FMA (chosen at
//! run time) and for the build's baseline — and every variant must give the same bits: `mul_add`
//! is a fused multiply-add in all of them (an instruction, or exact software on the baseline) and
//! every other lane operation is exactly rounded, so nothing may differ but the sign and payload
//! of a NaN (hardware and software make different default NaNs). This binary runs each kernel
//! under every instruction set the CPU has ([`cnnkit::arch::limit`]) and compares each with the
//! baseline bit for bit. It is its own test binary, with one test, because the switch is
//! process-wide. (On a CPU with fewer instruction sets, the runs it cannot make are skipped: the
//! test lists which ran.)

mod common;

use cnnkit::kernels::*;
use cnnkit::optim::{Optimizer, OptimizerKind};
use cnnkit::{Pool2dGeom, Pool2dParams, Shape4};
use common::values;

/// Inputs with the awkward values: specials, huge and tiny magnitudes, exact zeros of both signs.
fn inputs(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut x: Vec<f32> = values(seed, n).iter().map(|v| v * scale).collect();
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        88.5,
        -104.5,
        20.0,
        -0.5,
        0.625,
    ];
    for (i, s) in specials.iter().enumerate() {
        if let Some(v) = x.get_mut(i * 7) {
            *v = *s;
        }
    }
    x
}

/// Runs every element-wise kernel once and returns all outputs, named.
fn run_all() -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = Vec::new();
    // Lengths with a tail shorter than a lane, and one spanning several parallel blocks.
    for n in [1usize, 13, 1003, 70_001] {
        let x = inputs(n as u64, n, 12.0);
        let dy = inputs(n as u64 + 1, n, 1.0);
        for act in [
            Activation::Relu,
            Activation::LEAKY_RELU,
            Activation::ELU,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::SOFTPLUS,
            Activation::Gelu,
            Activation::GeluTanh,
        ] {
            let mut y = vec![0.0; n];
            activation_forward(act, &x, &mut y).unwrap();
            let mut dx = vec![0.5; n];
            activation_backward(act, &x, &y, &dy, &mut dx, Accum::Add).unwrap();
            out.push((format!("{act:?} forward n={n}"), y));
            out.push((format!("{act:?} backward n={n}"), dx));
        }
    }
    // Softmax family and losses: narrow (one row per lane) and wide rows.
    for (rows, cols) in [(37usize, 10usize), (9, 1000), (5, 3)] {
        let x = inputs(cols as u64, rows * cols, 30.0);
        let dy = inputs(cols as u64 + 1, rows * cols, 1.0);
        let mut y = vec![0.0; rows * cols];
        softmax_forward(cols, &x, &mut y).unwrap();
        let mut dx = vec![0.0; rows * cols];
        softmax_backward(cols, &y, &dy, &mut dx, Accum::Replace).unwrap();
        out.push((format!("softmax {rows}x{cols}"), y.clone()));
        out.push((format!("softmax backward {rows}x{cols}"), dx));
        log_softmax_forward(cols, &x, &mut y).unwrap();
        out.push((format!("log_softmax {rows}x{cols}"), y));
        // Finite logits for the loss (a NaN logit makes the loss NaN on both paths alike).
        let logits: Vec<f32> = values(7, rows * cols).iter().map(|v| v * 20.0).collect();
        let labels: Vec<u32> = (0..rows).map(|i| (i * 7 % cols) as u32).collect();
        let mut d = vec![0.0; rows * cols];
        let l = cross_entropy_loss(cols, &logits, &labels, 0.1, Some(&mut d)).unwrap();
        d.push(l);
        out.push((format!("cross entropy {rows}x{cols}"), d));
        let t = values(8, rows * cols);
        let mut d = vec![0.0; rows * cols];
        let l = bce_with_logits_loss(&logits, &t, Some(&mut d)).unwrap();
        d.push(l);
        out.push((format!("bce {rows}x{cols}"), d));
        let mut d = vec![0.0; rows * cols];
        let l = mse_loss(&logits, &t, Some(&mut d)).unwrap();
        d.push(l);
        out.push((format!("mse {rows}x{cols}"), d));
    }
    // Batch norm (training forward and backward) and layer norm.
    let s = Shape4::new(3, 4, 5, 7);
    let x: Vec<f32> = values(9, s.len("test").unwrap())
        .iter()
        .map(|v| v * 3.0 + 1.0)
        .collect();
    let dy = values(10, s.len("test").unwrap());
    let gamma = values(11, s.c);
    let beta = values(12, s.c);
    let (mut y, mut mean, mut inv) = (
        vec![0.0; s.len("test").unwrap()],
        vec![0.0; s.c],
        vec![0.0; s.c],
    );
    batch_norm_forward_train(
        s,
        1e-5,
        &x,
        Some(&gamma),
        Some(&beta),
        &mut y,
        &mut mean,
        &mut inv,
        None,
    )
    .unwrap();
    let (mut dx, mut dg, mut db) = (
        vec![0.0; s.len("test").unwrap()],
        vec![0.0; s.c],
        vec![0.0; s.c],
    );
    let mut ws = vec![0.0; batch_norm_backward_scratch_len(s)];
    batch_norm_backward(
        s,
        true,
        &x,
        Some(&gamma),
        &mean,
        &inv,
        &dy,
        &mut dx,
        Some(&mut dg),
        Some(&mut db),
        Accum::Replace,
        &mut ws,
    )
    .unwrap();
    out.extend([
        ("batch norm y".into(), y),
        ("batch norm dx".into(), dx),
        ("batch norm dgamma".into(), dg),
        ("batch norm dbeta".into(), db),
    ]);
    let d = 35;
    let rows = s.len("test").unwrap() / d;
    let g = values(13, d);
    let (mut y, mut mean, mut inv) = (
        vec![0.0; s.len("test").unwrap()],
        vec![0.0; rows],
        vec![0.0; rows],
    );
    layer_norm_forward(d, 1e-5, &x, Some(&g), Some(&g), &mut y, &mut mean, &mut inv).unwrap();
    let (mut dx, mut dg, mut db) = (
        vec![0.0; s.len("test").unwrap()],
        vec![0.0; d],
        vec![0.0; d],
    );
    layer_norm_backward(
        d,
        &x,
        Some(&g),
        &mean,
        &inv,
        &dy,
        &mut dx,
        Some(&mut dg),
        Some(&mut db),
        Accum::Replace,
    )
    .unwrap();
    out.extend([
        ("layer norm y".into(), y),
        ("layer norm dx".into(), dx),
        ("layer norm dgamma".into(), dg),
        ("layer norm dbeta".into(), db),
    ]);
    // Pooling (the max-pool lane path and the scalar edges).
    let ps = Shape4::new(2, 3, 17, 19);
    let px = inputs(14, ps.len("test").unwrap(), 5.0);
    for p in [
        Pool2dParams::new(2),
        Pool2dParams::new(3).stride(2).padding(1),
    ] {
        let g = Pool2dGeom::new(ps, p).unwrap();
        let mut y = vec![0.0; g.y_len()];
        let mut a = vec![0u32; g.y_len()];
        max_pool2d_forward(&g, &px, &mut y, Some(&mut a)).unwrap();
        out.push((format!("max pool {p:?}"), y.clone()));
        out.push((
            format!("max pool argmax {p:?}"),
            a.iter().map(|&i| i as f32).collect(),
        ));
        avg_pool2d_forward(&g, false, &px, &mut y).unwrap();
        out.push((format!("avg pool {p:?}"), y));
    }
    // Every optimizer, three steps.
    for name in ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"] {
        let n = 1000 + 5;
        let mut kind = OptimizerKind::by_name(name).unwrap();
        kind.set_momentum(0.9);
        kind.set_weight_decay(0.01);
        let mut opt = Optimizer::new(kind, n).unwrap();
        let mut p = values(15, n);
        for step in 0..3 {
            opt.step(&mut p, &values(16 + step, n)).unwrap();
        }
        out.push((format!("optimizer {name}"), p));
    }
    out
}

#[test]
fn every_compiled_variant_gives_identical_bits() {
    use cnnkit::arch::{self, Isa};
    arch::limit(Some(Isa::Portable));
    let baseline = common::par(run_all);
    let mut ran = vec![];
    for isa in Isa::ALL.into_iter().filter(|&i| i > Isa::Portable) {
        arch::limit(Some(isa));
        if arch::active() != isa {
            continue;
        }
        ran.push(isa);
        let fast = common::par(run_all);
        assert_eq!(fast.len(), baseline.len());
        for ((name, a), (_, b)) in fast.iter().zip(&baseline) {
            assert_eq!(a.len(), b.len(), "{name}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{name}[{i}]: {isa} variant {x:e} ({:#010x}), baseline {y:e} ({:#010x})",
                    x.to_bits(),
                    y.to_bits()
                );
            }
        }
    }
    arch::limit(None);
    // Every instruction set the CPU has (and cnnkit has kernels for) was compared.
    let expected: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&i| i > Isa::Portable && i <= Isa::detected().min(arch::WIDEST_IMPLEMENTED))
        .collect();
    assert_eq!(ran, expected);
}
