//! Winograd convolution (F(2×2, 3×3) and F(4×4, 3×3)) against the `f64` reference with a stated
//! bound, bit-identical for any thread count, and chosen by the cost model only where it
//! applies. Its own test binary: the algorithm switch is process-wide.

mod common;

use cnnkit::kernels::{
    Accum, Activation, Epilogue, Winograd, conv2d_backward_data, conv2d_backward_data_scratch_len,
    conv2d_backward_weights, conv2d_backward_weights_scratch_len, conv2d_forward,
    conv2d_forward_fused, conv2d_forward_scratch_len, set_winograd,
};
use cnnkit::{Conv2dGeom, Conv2dParams, Shape4, reference};
use common::values;
use std::sync::Mutex;

/// Held by each test: the switch is process-wide and the tests of a binary run concurrently.
static SWITCH: Mutex<()> = Mutex::new(());

/// Largest error against the reference, relative to the reference's largest magnitude: the
/// bounds are about ten times the worst error measured over these shapes and the zoo's
/// (F(2×2): 1e-6; F(4×4): 3e-5, whose transforms multiply by up to 8 and divide by up to 24).
const BOUND_F2: f32 = 1e-5;
const BOUND_F4: f32 = 3e-4;

fn run(g: &Conv2dGeom, x: &[f32], w: &[f32], b: &[f32], threads: usize) -> Vec<f32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut y = vec![f32::NAN; g.y_len()];
    let mut ws = vec![0.0; pool.install(|| conv2d_forward_scratch_len(g))];
    pool.install(|| conv2d_forward(g, x, w, Some(b), &mut y, &mut ws))
        .unwrap();
    y
}

fn rel_error(y: &[f32], r: &[f32]) -> f32 {
    let scale = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    y.iter()
        .zip(r)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Shapes of every kind Winograd takes: channel counts below and above a GEMM tile, images not
/// a multiple of the tile, padding 0 to 2, unequal sides, batches of one and three (split inside
/// the image, and over images).
fn shapes() -> Vec<Conv2dGeom> {
    let mut v = Vec::new();
    for (n, c, k, h, w, pad) in [
        (1, 1, 1, 3, 3, 0),
        (1, 3, 5, 7, 9, 1),
        (3, 8, 16, 13, 10, 1),
        (1, 16, 8, 9, 17, 2),
        (2, 32, 40, 20, 20, 1),
        (1, 64, 64, 56, 56, 1),
        (1, 5, 7, 4, 30, 0),
        (1, 2, 3, 5, 300, 1),
    ] {
        v.push(
            Conv2dGeom::new(
                Shape4::new(n, c, h, w),
                k,
                [3, 3],
                Conv2dParams::default().padding(pad),
            )
            .unwrap(),
        );
    }
    v
}

#[test]
fn winograd_matches_the_reference_and_every_thread_count() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    for (mode, bound) in [(Winograd::F2, BOUND_F2), (Winograd::F4, BOUND_F4)] {
        let mut worst = 0.0f32;
        for (i, g) in shapes().iter().enumerate() {
            let (x, w, b) = (
                values(i as u64, g.x_len()),
                values(100 + i as u64, g.w_len()),
                values(200 + i as u64, g.c_out()),
            );
            let r = reference::conv2d_forward(g, &x, &w, Some(&b));
            set_winograd(Winograd::Off);
            let direct = run(g, &x, &w, &b, 1);
            set_winograd(mode);
            let y = run(g, &x, &w, &b, 1);
            assert_ne!(y, direct, "{mode:?} did not run on {g:?}");
            let e = rel_error(&y, &r);
            assert!(e <= bound, "{mode:?} {g:?}: error {e:e} above {bound:e}");
            worst = worst.max(e);
            for threads in [2, 3] {
                let yt = run(g, &x, &w, &b, threads);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&yt), bits(&y), "{mode:?} {g:?}, {threads} threads");
            }
        }
        eprintln!("{mode:?}: largest error {worst:e} of the output's magnitude");
    }
    set_winograd(Winograd::Auto);
}

/// Both gradients of a pass on `threads` threads: `(dx, dw, db)`, each added to a start value
/// (`Accum::Add`) when `add`.
fn grads(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    threads: usize,
    add: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (start, accum) = if add {
        (0.25, Accum::Add)
    } else {
        (f32::NAN, Accum::Replace)
    };
    let (mut dx, mut dw, mut db) = (
        vec![start; g.x_len()],
        vec![start; g.w_len()],
        vec![start; g.c_out()],
    );
    pool.install(|| {
        let mut ws = vec![0.0; conv2d_backward_data_scratch_len(g)];
        conv2d_backward_data(g, w, dy, &mut dx, accum, &mut ws).unwrap();
        let mut ws = vec![0.0; conv2d_backward_weights_scratch_len(g)];
        conv2d_backward_weights(g, x, dy, &mut dw, Some(&mut db), accum, &mut ws).unwrap();
    });
    (dx, dw, db)
}

/// Both gradients by Winograd (the backward-data pass as the convolution of the output gradient
/// with the turned, transposed filters; the weight gradient as the adjoint of the forward tile)
/// against the `f64` reference within the forward pass's bounds, bit-identical on 1–3 threads,
/// and added to the destination with `Accum::Add`.
#[test]
fn winograd_gradients_match_the_reference_and_every_thread_count() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (mode, bound) in [(Winograd::F2, BOUND_F2), (Winograd::F4, BOUND_F4)] {
        let (mut worst_dx, mut worst_dw) = (0.0f32, 0.0f32);
        for (i, g) in shapes().iter().enumerate() {
            let (x, w, dy) = (
                values(i as u64, g.x_len()),
                values(100 + i as u64, g.w_len()),
                values(300 + i as u64, g.y_len()),
            );
            let rdx = reference::conv2d_backward_data(g, &w, &dy);
            let (rdw, rdb) = reference::conv2d_backward_weights(g, &x, &dy);
            set_winograd(Winograd::Off);
            let (ddx, ddw, _) = grads(g, &x, &w, &dy, 1, false);
            set_winograd(mode);
            let (dx, dw, db) = grads(g, &x, &w, &dy, 1, false);
            assert_ne!(dx, ddx, "{mode:?}: backward data did not run on {g:?}");
            assert_ne!(dw, ddw, "{mode:?}: weight gradient did not run on {g:?}");
            let (e_dx, e_dw) = (rel_error(&dx, &rdx), rel_error(&dw, &rdw));
            assert!(e_dx <= bound, "{mode:?} {g:?}: dx error {e_dx:e}");
            assert!(e_dw <= bound, "{mode:?} {g:?}: dw error {e_dw:e}");
            assert!(rel_error(&db, &rdb) <= 1e-6, "{mode:?} {g:?}: db");
            worst_dx = worst_dx.max(e_dx);
            worst_dw = worst_dw.max(e_dw);
            for threads in [2, 3] {
                let (tx, tw, tb) = grads(g, &x, &w, &dy, threads, false);
                assert_eq!(bits(&tx), bits(&dx), "{mode:?} {g:?} dx, {threads} threads");
                assert_eq!(bits(&tw), bits(&dw), "{mode:?} {g:?} dw, {threads} threads");
                assert_eq!(bits(&tb), bits(&db), "{mode:?} {g:?} db, {threads} threads");
            }
            let (ax, aw, _) = grads(g, &x, &w, &dy, 2, true);
            let plus = |v: &[f32]| v.iter().map(|a| a + 0.25).collect::<Vec<_>>();
            assert_eq!(bits(&ax), bits(&plus(&dx)), "{mode:?} {g:?}: dx added");
            assert_eq!(bits(&aw), bits(&plus(&dw)), "{mode:?} {g:?}: dw added");
        }
        eprintln!(
            "{mode:?}: largest error {worst_dx:e} (input gradient), {worst_dw:e} (weight \
             gradient) of the gradient's magnitude"
        );
    }
    set_winograd(Winograd::Auto);
}

/// The fused epilogue after Winograd: the residual and activation of the separate passes.
#[test]
fn winograd_takes_the_fused_epilogue() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_winograd(Winograd::F4);
    let g = Conv2dGeom::new(
        Shape4::new(2, 6, 11, 9),
        5,
        [3, 3],
        Conv2dParams::default().padding(1),
    )
    .unwrap();
    let (x, w, r) = (
        values(1, g.x_len()),
        values(2, g.w_len()),
        values(3, g.y_len()),
    );
    let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
    let mut want = vec![0.0; g.y_len()];
    conv2d_forward(&g, &x, &w, None, &mut want, &mut ws).unwrap();
    for (v, s) in want.iter_mut().zip(&r) {
        *v = (*v + s).max(0.0);
    }
    let mut y = vec![0.0; g.y_len()];
    let epi = Epilogue {
        residual: Some(&r),
        act: Some(Activation::Relu),
    };
    conv2d_forward_fused(&g, &x, &w, None, epi, &mut y, &mut ws).unwrap();
    assert_eq!(y, want);
    set_winograd(Winograd::Auto);
}

/// The cost model takes Winograd only for 3×3 stride-1 one-group layers of the sizes where it
/// measured faster, and never where it does not apply, whatever the setting.
#[test]
fn the_cost_model_and_the_switch_choose_where_winograd_runs() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let geom = |c: usize, h: usize, k: usize, stride: usize, groups: usize| {
        Conv2dGeom::new(
            Shape4::new(1, c, h, h),
            c,
            [k, k],
            Conv2dParams::default()
                .padding(k / 2)
                .stride(stride)
                .groups(groups),
        )
        .unwrap()
    };
    // Whether a setting changes the bits of `g` from the direct path's.
    let differs = |mode: Winograd, g: &Conv2dGeom| {
        let (x, w, b) = (
            values(1, g.x_len()),
            values(2, g.w_len()),
            values(3, g.c_out()),
        );
        set_winograd(Winograd::Off);
        let direct = run(g, &x, &w, &b, 1);
        set_winograd(mode);
        let y = run(g, &x, &w, &b, 1);
        set_winograd(Winograd::Auto);
        y != direct
    };
    assert!(differs(Winograd::Auto, &geom(128, 56, 3, 1, 1)));
    assert!(differs(Winograd::Auto, &geom(64, 56, 3, 1, 1)));
    assert!(differs(Winograd::Auto, &geom(128, 28, 3, 1, 1)));
    assert!(!differs(Winograd::Auto, &geom(64, 28, 3, 1, 1)));
    assert!(!differs(Winograd::Auto, &geom(32, 56, 3, 1, 1)));
    assert!(!differs(Winograd::Auto, &geom(128, 14, 3, 1, 1)));
    for g in [
        geom(8, 9, 3, 2, 1),
        geom(8, 9, 5, 1, 1),
        geom(8, 9, 3, 1, 2),
    ] {
        assert!(!differs(Winograd::F4, &g), "{g:?}");
    }
    // The gradients' own tables: whether Auto changes (input gradient, weight gradient).
    let grads_differ = |g: &Conv2dGeom| {
        let (x, w, dy) = (
            values(1, g.x_len()),
            values(2, g.w_len()),
            values(4, g.y_len()),
        );
        set_winograd(Winograd::Off);
        let (dx0, dw0, _) = grads(g, &x, &w, &dy, 1, false);
        set_winograd(Winograd::Auto);
        let (dx, dw, _) = grads(g, &x, &w, &dy, 1, false);
        (dx != dx0, dw != dw0)
    };
    assert_eq!(grads_differ(&geom(64, 28, 3, 1, 1)), (false, true));
    assert_eq!(grads_differ(&geom(128, 28, 3, 1, 1)), (true, true));
    assert_eq!(grads_differ(&geom(128, 14, 3, 1, 1)), (false, true));
    assert_eq!(grads_differ(&geom(32, 56, 3, 1, 1)), (false, false));
    assert_eq!(grads_differ(&geom(512, 7, 3, 1, 1)), (false, false));
    assert_eq!(grads_differ(&geom(128, 28, 3, 2, 1)), (false, false));
    assert!(cnnkit::kernels::winograd() == Winograd::Auto);
}

/// `CNNKIT_WINOGRAD`'s values, as the setting's text form reads them.
#[test]
fn the_setting_reads_its_text_form() {
    for (text, want) in [
        ("auto", Winograd::Auto),
        ("Off", Winograd::Off),
        ("f2", Winograd::F2),
        ("F4", Winograd::F4),
    ] {
        assert_eq!(text.parse::<Winograd>().unwrap(), want);
    }
    let err = "f6".parse::<Winograd>().unwrap_err().to_string();
    assert!(err.contains("'f6'") && err.contains("f4"), "{err}");
}
