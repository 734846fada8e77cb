//! GEMM, convolution and whole training steps on every instruction set this CPU has.
//!
//! - AVX-512 and AVX2 give the same bits: their micro-kernels (different register widths and
//!   tile shapes) sum every output in the same order, one fused multiply-add at a time, and the
//!   drivers cut the sums into the same blocks on both (packed depth, convolution tap blocks and
//!   bands are independent of the tile).
//! - The portable path (`matrixmultiply`, im2col) sums in another order: within float tolerance.
//! - On each instruction set, results are bit-identical for 1, 2 and 3 threads.
//!
//! Its own test binary with one test, because the instruction-set switch is process-wide.

mod common;

use cnnkit::arch::{self, Isa};
use cnnkit::gemm::{MatMut, MatRef, sgemm};
use cnnkit::kernels::*;
use cnnkit::{Conv2dGeom, Conv2dParams, LayerSpec, Sequential, Shape4, TrainConfig, Trainer};
use common::values;

type Named = Vec<(String, Vec<f32>)>;

/// Products and convolutions covering every path: packed GEMM at edge and interior sizes, direct
/// convolution (strides, dilation, groups), im2col (stride 5, 1x1), depthwise.
fn kernels() -> Named {
    let mut out = Named::new();
    for (m, k, n) in [
        (37, 50, 29),
        (128, 300, 200),
        (1, 64, 10),
        (300, 7, 513),
        (13, 257, 33),
    ] {
        let (a, b) = (values(1, m * k), values(2, k * n));
        let mut c = values(3, m * n);
        sgemm(
            0.5,
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
            1.25,
            MatMut::row_major(&mut c, m, n).unwrap(),
        )
        .unwrap();
        out.push((format!("sgemm {m}x{k}x{n}"), c));
    }
    let convs = [
        (
            Shape4::new(2, 8, 33, 31),
            16,
            3,
            Conv2dParams::default().padding(1),
        ),
        (
            Shape4::new(3, 5, 20, 17),
            12,
            3,
            Conv2dParams::default().stride(2),
        ),
        (
            Shape4::new(2, 6, 19, 23),
            8,
            3,
            Conv2dParams::default().dilation(2).padding(2),
        ),
        (
            Shape4::new(2, 8, 16, 16),
            8,
            3,
            Conv2dParams::default().groups(2).padding(1),
        ),
        (
            Shape4::new(2, 4, 30, 30),
            7,
            5,
            Conv2dParams::default().stride(5),
        ),
        (Shape4::new(2, 9, 12, 14), 20, 1, Conv2dParams::default()),
        (
            Shape4::new(2, 6, 21, 18),
            12,
            3,
            Conv2dParams::default().groups(6).padding(1),
        ),
        (
            Shape4::new(4, 1, 40, 40),
            32,
            3,
            Conv2dParams::default().padding(1),
        ),
        (
            Shape4::new(2, 32, 20, 20),
            64,
            3,
            Conv2dParams::default().padding(1),
        ),
    ];
    for (i, (x_shape, c_out, k, p)) in convs.into_iter().enumerate() {
        let g = Conv2dGeom::new(x_shape, c_out, [k, k], p).unwrap();
        let seed = 10 * i as u64;
        let (x, w, b, dy) = (
            values(seed, g.x_len()),
            values(seed + 1, g.w_len()),
            values(seed + 2, g.c_out()),
            values(seed + 3, g.y_len()),
        );
        let ws_len = conv2d_forward_scratch_len(&g)
            .max(conv2d_backward_data_scratch_len(&g))
            .max(conv2d_backward_weights_scratch_len(&g));
        let mut ws = vec![0.0; ws_len];
        let mut y = vec![f32::NAN; g.y_len()];
        conv2d_forward(&g, &x, &w, Some(&b), &mut y, &mut ws).unwrap();
        let mut dx = values(seed + 4, g.x_len());
        conv2d_backward_data(&g, &w, &dy, &mut dx, Accum::Add, &mut ws).unwrap();
        let (mut dw, mut db) = (vec![f32::NAN; g.w_len()], vec![f32::NAN; g.c_out()]);
        conv2d_backward_weights(&g, &x, &dy, &mut dw, Some(&mut db), Accum::Replace, &mut ws)
            .unwrap();
        out.push((format!("conv {i} forward"), y));
        out.push((format!("conv {i} backward-data"), dx));
        out.push((format!("conv {i} backward-weights"), [dw, db].concat()));
    }
    // Winograd, both tiles, forced (the switch is process-wide; this binary has one test).
    let g = Conv2dGeom::new(
        Shape4::new(2, 12, 19, 22),
        20,
        [3, 3],
        Conv2dParams::default().padding(1),
    )
    .unwrap();
    let (x, w, b) = (values(91, g.x_len()), values(92, g.w_len()), values(93, 20));
    let dy = values(94, g.y_len());
    for tile in [Winograd::F2, Winograd::F4] {
        set_winograd(tile);
        let mut y = vec![f32::NAN; g.y_len()];
        let ws_len = conv2d_forward_scratch_len(&g)
            .max(conv2d_backward_data_scratch_len(&g))
            .max(conv2d_backward_weights_scratch_len(&g));
        let mut ws = vec![0.0; ws_len];
        conv2d_forward(&g, &x, &w, Some(&b), &mut y, &mut ws).unwrap();
        let mut dx = vec![f32::NAN; g.x_len()];
        conv2d_backward_data(&g, &w, &dy, &mut dx, Accum::Replace, &mut ws).unwrap();
        let mut dw = vec![f32::NAN; g.w_len()];
        conv2d_backward_weights(&g, &x, &dy, &mut dw, None, Accum::Replace, &mut ws).unwrap();
        out.push((format!("winograd {tile:?} forward"), y));
        out.push((format!("winograd {tile:?} backward-data"), dx));
        out.push((format!("winograd {tile:?} backward-weights"), dw));
    }
    set_winograd(Winograd::Auto);
    out
}

/// Three training steps of two small networks (every layer kind that uses GEMM or convolution,
/// plus the element-wise ones between them): the parameters afterwards.
fn training() -> Named {
    let archs = [
        "conv(32,3,p=1),relu,maxpool(2),conv(64,3,p=1),relu,maxpool(2),flatten,dense(128),relu,dense(10)",
        "conv(8,3,p=1),bn,prelu(channels),conv(8,3,p=1,g=8),gelu,avgpool(3,s=2,p=1),conv(4,1),ln,flatten,dense(10)",
    ];
    let batch = 8;
    let x = values(50, batch * 784);
    let labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    archs
        .iter()
        .map(|a| {
            let model =
                Sequential::new([1, 28, 28], &LayerSpec::parse_list(a).unwrap(), 3).unwrap();
            let mut t =
                Trainer::new(model, "adam".parse().unwrap(), TrainConfig::default()).unwrap();
            for _ in 0..3 {
                t.step(&x, &labels).unwrap();
            }
            (format!("training {a}"), t.model().params().to_vec())
        })
        .collect()
}

fn all() -> Named {
    [kernels(), training()].concat()
}

/// `f` on pools of 1, 2 and 3 threads (parallel threshold 0), checked bit-identical; the
/// results.
fn same_for_any_thread_count(isa: Isa, f: impl Fn() -> Named + Sync) -> Named {
    cnnkit::par::set_parallel_threshold(0);
    let runs: Vec<Named> = [1, 2, 3]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(&f)
        })
        .collect();
    for r in &runs[1..] {
        assert_same_bits(&format!("{isa}, 1 thread vs more"), &runs[0], r);
    }
    runs.into_iter().next().unwrap()
}

#[track_caller]
fn assert_same_bits(what: &str, a: &Named, b: &Named) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{name}");
        if let Some(i) = (0..x.len()).find(|&i| x[i].to_bits() != y[i].to_bits()) {
            panic!("{what}: {name}[{i}]: {:e} vs {:e}", x[i], y[i]);
        }
    }
}

#[test]
fn instruction_sets_agree_and_each_is_deterministic() {
    let mut results: Vec<(Isa, Named, Named)> = vec![];
    for isa in Isa::ALL {
        arch::limit(Some(isa));
        if arch::active() != isa {
            continue;
        }
        let k = same_for_any_thread_count(isa, kernels);
        let t = same_for_any_thread_count(isa, training);
        results.push((isa, k, t));
    }
    arch::limit(None);
    let expected: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&i| i <= Isa::detected().min(arch::WIDEST_IMPLEMENTED))
        .collect();
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected,
        "every instruction set the CPU has was run"
    );
    let (portable, rest) = results.split_first().unwrap();
    // Micro-kernel instruction sets: identical bits, kernels and training alike.
    for pair in rest.windows(2) {
        let what = format!("{} vs {}", pair[0].0, pair[1].0);
        assert_same_bits(&what, &pair[0].1, &pair[1].1);
        assert_same_bits(&what, &pair[0].2, &pair[1].2);
    }
    // Against the portable path: within float tolerance (sums in another order).
    for (isa, k, _) in rest {
        for ((name, got), (_, want)) in k.iter().zip(&portable.1) {
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            common::assert_close(
                &format!("{isa} vs portable: {name}"),
                got,
                want,
                2e-5 * scale,
                1e-4,
            )
            .unwrap();
        }
    }
    // `all` is what a user's program sees: deterministic on the widest set too.
    let again = all();
    let widest = results.last().unwrap();
    assert_same_bits(
        "repeat",
        &[widest.1.clone(), widest.2.clone()].concat(),
        &again,
    );
}
