//! Every error the geometries can return, and bit-identical results for 1, 2 and 3 threads.

mod common;

use cnnkit::kernels::*;
use cnnkit::{Conv2dGeom, Conv2dParams, Error, Pool2dGeom, Pool2dParams, Shape4};
use common::values;

fn conv(x: Shape4, c_out: usize, k: [usize; 2], p: Conv2dParams) -> Result<Conv2dGeom, Error> {
    Conv2dGeom::new(x, c_out, k, p)
}

fn invalid(r: Result<impl std::fmt::Debug, Error>, arg: &str) {
    match r {
        Err(Error::InvalidArg { arg: a, .. }) if a == arg => {}
        other => panic!("expected InvalidArg for {arg}, got {other:?}"),
    }
}

#[test]
fn conv_geometry_rejects_every_invalid_parameter() {
    let x = Shape4::new(2, 4, 8, 8);
    let d = Conv2dParams::default();
    for (p, arg) in [
        (
            Conv2dParams {
                stride: [0, 1],
                ..d
            },
            "stride_h",
        ),
        (
            Conv2dParams {
                stride: [1, 0],
                ..d
            },
            "stride_w",
        ),
        (
            Conv2dParams {
                dilation: [0, 1],
                ..d
            },
            "dilation_h",
        ),
        (
            Conv2dParams {
                dilation: [1, 0],
                ..d
            },
            "dilation_w",
        ),
        (Conv2dParams { groups: 0, ..d }, "groups"),
        (Conv2dParams { groups: 3, ..d }, "groups"), // does not divide c_in = 4
    ] {
        invalid(conv(x, 6, [3, 3], p), arg);
    }
    invalid(conv(x, 6, [3, 3], d.groups(4)), "groups"); // divides c_in, not c_out = 6
    invalid(conv(x, 6, [0, 3], d), "k_h");
    invalid(conv(x, 6, [3, 0], d), "k_w");
    invalid(conv(x, 0, [3, 3], d), "c_out");
    invalid(conv(Shape4::new(2, 0, 8, 8), 6, [3, 3], d), "c_in");
    invalid(conv(Shape4::new(2, 4, 0, 8), 6, [3, 3], d), "in_h");
    invalid(conv(Shape4::new(2, 4, 8, 0), 6, [3, 3], d), "in_w");
    // A kernel larger than the padded input, per axis, and through dilation.
    invalid(conv(Shape4::new(1, 1, 2, 9), 1, [3, 3], d), "k_h");
    invalid(conv(Shape4::new(1, 1, 9, 2), 1, [3, 3], d), "k_w");
    invalid(
        conv(Shape4::new(1, 1, 4, 4), 1, [3, 3], d.dilation(2)),
        "k_h",
    );
    assert!(conv(Shape4::new(1, 1, 2, 2), 1, [3, 3], d.padding(1)).is_ok());
    // Sizes whose products overflow.
    assert!(matches!(
        conv(Shape4::new(usize::MAX / 2, 4, 8, 8), 6, [3, 3], d),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        conv(Shape4::new(1, 1, usize::MAX, 1), 1, [1, 1], d),
        Err(Error::TooLarge { .. })
    ));
    assert!(
        conv(
            Shape4::new(1, 1, 8, 8),
            1,
            [usize::MAX, 1],
            d.padding(usize::MAX / 2)
        )
        .is_err()
    );
    // Messages name the operation and the argument.
    let e = conv(x, 6, [3, 3], d.stride(0)).unwrap_err().to_string();
    assert!(
        e.contains("Conv2dGeom::new") && e.contains("stride_h"),
        "{e}"
    );
}

#[test]
fn pool_geometry_rejects_every_invalid_parameter() {
    let x = Shape4::new(1, 2, 6, 6);
    let p = Pool2dParams::new(2);
    let g = |p| Pool2dGeom::new(x, p);
    invalid(
        g(Pool2dParams {
            window: [0, 2],
            ..p
        }),
        "window_h",
    );
    invalid(
        g(Pool2dParams {
            window: [2, 0],
            ..p
        }),
        "window_w",
    );
    invalid(
        g(Pool2dParams {
            stride: [0, 2],
            ..p
        }),
        "stride_h",
    );
    invalid(
        g(Pool2dParams {
            stride: [2, 0],
            ..p
        }),
        "stride_w",
    );
    invalid(
        g(Pool2dParams {
            padding: [2, 0],
            ..p
        }),
        "padding_h",
    ); // > window/2
    invalid(
        g(Pool2dParams {
            padding: [0, 2],
            ..p
        }),
        "padding_w",
    );
    invalid(
        Pool2dGeom::new(Shape4::new(1, 2, 2, 6), Pool2dParams::new(3)),
        "window_h",
    );
    invalid(
        Pool2dGeom::new(Shape4::new(1, 2, 6, 2), Pool2dParams::new(3)),
        "window_w",
    );
    invalid(Pool2dGeom::new(Shape4::new(1, 0, 6, 6), p), "c");
    invalid(Pool2dGeom::new(Shape4::new(1, 2, 0, 6), p), "in_h");
    invalid(Pool2dGeom::new(Shape4::new(1, 2, 6, 0), p), "in_w");
    assert!(matches!(
        Pool2dGeom::new(Shape4::new(1, 1, 1 << 20, 1 << 13), p),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn kernels_reject_wrong_buffer_lengths() {
    let g = conv(Shape4::new(2, 3, 5, 5), 4, [3, 3], Conv2dParams::default()).unwrap();
    let (x, w, y) = (
        vec![0.0; g.x_len()],
        vec![0.0; g.w_len()],
        vec![0.0; g.y_len()],
    );
    let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
    let e = conv2d_forward(&g, &x, &w[1..], None, &mut y.clone(), &mut ws).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "conv2d_forward: w has {} elements, expected {}",
            g.w_len() - 1,
            g.w_len()
        )
    );
    assert!(conv2d_forward(&g, &x[1..], &w, None, &mut y.clone(), &mut ws).is_err());
    assert!(conv2d_forward(&g, &x, &w, Some(&[0.0; 3]), &mut y.clone(), &mut ws).is_err());
    assert!(
        conv2d_backward_data(&g, &w, &y[1..], &mut x.clone(), Accum::Replace, &mut ws).is_err()
    );
    assert!(
        conv2d_backward_weights(
            &g,
            &x,
            &y,
            &mut w.clone(),
            Some(&mut [0.0; 5]),
            Accum::Replace,
            &mut ws
        )
        .is_err()
    );
    let pg = Pool2dGeom::new(Shape4::new(1, 1, 4, 4), Pool2dParams::new(2)).unwrap();
    assert!(max_pool2d_forward(&pg, &[0.0; 15], &mut [0.0; 4], None).is_err());
    assert!(
        max_pool2d_backward(
            &pg,
            &[0, 1, 2, 16],
            &[0.0; 4],
            &mut [0.0; 16],
            Accum::Replace
        )
        .is_err()
    );
    assert!(avg_pool2d_backward(&pg, true, &[0.0; 3], &mut [0.0; 16], Accum::Replace).is_err());
}

/// Runs `f` on pools of 1, 2 and 3 threads (parallel threshold 0) and checks the outputs are
/// bit-identical.
fn same_for_any_thread_count(name: &str, f: impl Fn() -> Vec<f32> + Sync) {
    cnnkit::par::set_parallel_threshold(0);
    let runs: Vec<Vec<u32>> = [1, 2, 3]
        .iter()
        .map(|&t| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            pool.install(|| f().iter().map(|v| v.to_bits()).collect())
        })
        .collect();
    assert!(
        runs[0] == runs[1] && runs[1] == runs[2],
        "{name}: results depend on the thread count"
    );
}

#[test]
fn reductions_are_bit_identical_for_1_2_and_3_threads() {
    for (n, groups, k) in [(1, 1, 3), (2, 1, 3), (5, 2, 3), (3, 1, 1), (4, 4, 3)] {
        let g = conv(
            Shape4::new(n, 4, 33, 31),
            8,
            [k, k],
            Conv2dParams::default().padding(k / 2).groups(groups),
        )
        .unwrap();
        let (x, dy) = (values(1, g.x_len()), values(2, g.y_len()));
        same_for_any_thread_count("conv2d_backward_weights", || {
            let (mut dw, mut db) = (vec![0.0; g.w_len()], vec![0.0; g.c_out()]);
            let mut ws = vec![0.0; conv2d_backward_weights_scratch_len(&g)];
            conv2d_backward_weights(&g, &x, &dy, &mut dw, Some(&mut db), Accum::Replace, &mut ws)
                .unwrap();
            dw.extend(db);
            dw
        });
        let w = values(3, g.w_len());
        same_for_any_thread_count("conv2d_forward + backward_data", || {
            let mut y = vec![0.0; g.y_len()];
            let mut ws =
                vec![0.0; conv2d_forward_scratch_len(&g).max(conv2d_backward_data_scratch_len(&g))];
            conv2d_forward(&g, &x, &w, None, &mut y, &mut ws).unwrap();
            let mut dx = vec![0.0; g.x_len()];
            conv2d_backward_data(&g, &w, &dy, &mut dx, Accum::Replace, &mut ws).unwrap();
            y.extend(dx);
            y
        });
    }
    // Channel counts below and above the thread counts; the input gradient is added to a buffer
    // holding values.
    let operands = |s: Shape4| {
        (
            values(4, s.n * s.c * s.h * s.w),
            values(5, s.n * s.c * s.h * s.w),
        )
    };
    for s in [Shape4::new(3, 13, 5, 7), Shape4::new(7, 5, 13, 11)] {
        let (x, dy) = operands(s);
        let (gm, bt) = (values(6, s.c), values(7, s.c));
        same_for_any_thread_count("batch norm", || {
            let (mut y, mut m, mut i) = (vec![0.0; x.len()], vec![0.0; s.c], vec![0.0; s.c]);
            let (mut rm, mut rv) = (vec![0.0; s.c], vec![1.0; s.c]);
            batch_norm_forward_train(
                s,
                1e-5,
                &x,
                Some(&gm),
                Some(&bt),
                &mut y,
                &mut m,
                &mut i,
                Some(RunningStats {
                    mean: &mut rm,
                    var: &mut rv,
                    factor: 0.1,
                }),
            )
            .unwrap();
            let (mut dx, mut dg, mut db) = (values(8, x.len()), vec![0.0; s.c], vec![0.0; s.c]);
            let mut ws = vec![0.0; batch_norm_backward_scratch_len(s)];
            batch_norm_backward(
                s,
                true,
                &x,
                Some(&gm),
                &m,
                &i,
                &dy,
                &mut dx,
                Some(&mut dg),
                Some(&mut db),
                Accum::Add,
                &mut ws,
            )
            .unwrap();
            [y, m, i, rm, rv, dx, dg, db].concat()
        });
    }
    let s = Shape4::new(7, 5, 13, 11);
    let (x, dy) = operands(s);
    same_for_any_thread_count("layer norm", || {
        let d = s.h * s.w;
        let rows = x.len() / d;
        let g = values(8, d);
        let (mut y, mut m, mut i) = (vec![0.0; x.len()], vec![0.0; rows], vec![0.0; rows]);
        layer_norm_forward(d, 1e-5, &x, Some(&g), None, &mut y, &mut m, &mut i).unwrap();
        let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; d], vec![0.0; d]);
        layer_norm_backward(
            d,
            &x,
            Some(&g),
            &m,
            &i,
            &dy,
            &mut dx,
            Some(&mut dg),
            Some(&mut db),
            Accum::Replace,
        )
        .unwrap();
        [y, dx, dg, db].concat()
    });
    let dg = DenseGeom::new(37, 50, 29).unwrap();
    let (dxv, ddy) = (values(9, dg.x_len()), values(10, dg.y_len()));
    same_for_any_thread_count("dense weights", || {
        let (mut dw, mut db) = (vec![0.0; dg.w_len()], vec![0.0; 29]);
        dense_backward_weights(&dg, &dxv, &ddy, &mut dw, Some(&mut db), Accum::Replace).unwrap();
        [dw, db].concat()
    });
    let labels: Vec<u32> = (0..700).map(|i| (i * 7 % 10) as u32).collect();
    let logits = values(11, 7000);
    same_for_any_thread_count("losses", || {
        let mut d = vec![0.0; 7000];
        let ce = cross_entropy_loss(10, &logits, &labels, 0.1, Some(&mut d)).unwrap();
        let mse = mse_loss(&logits, &d, None).unwrap();
        let bce = bce_with_logits_loss(&logits, &d, None).unwrap();
        let mut pa = vec![0.0; 1];
        let mut pdx = vec![0.0; x.len()];
        prelu_backward(s, &x, &[0.2], &dy, &mut pdx, &mut pa, Accum::Replace).unwrap();
        [vec![ce, mse, bce], d, pa].concat()
    });
}
