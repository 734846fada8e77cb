//! Activations: forward and backward against the f64 reference at every lane boundary and on
//! special values, every backward against finite differences.

mod common;

use cnnkit::kernels::{
    Accum, Activation, activation_backward, activation_forward, dropout_backward,
    dropout_forward_train, global_avg_pool_backward, prelu_backward, prelu_forward,
    rrelu_backward_train, rrelu_forward_train,
};
use cnnkit::{Shape4, reference};
use common::gradcheck::{Tol, check_vjp};
use common::strategies::{off_kink, vals};
use common::{assert_close, nans, par, values};
use proptest::prelude::*;

/// Forward tolerance against f64: a few ulp of the transcendental approximations.
const ATOL: f32 = 1e-6;
const RTOL: f32 = 4e-6;

const LANE_LENGTHS: [usize; 9] = [0, 1, 7, 8, 9, 15, 16, 17, 33];

fn all_activations() -> Vec<Activation> {
    vec![
        Activation::Relu,
        Activation::LEAKY_RELU,
        Activation::LeakyRelu { slope: 0.3 },
        Activation::ELU,
        Activation::Elu { alpha: 0.5 },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::SOFTPLUS,
        Activation::Softplus {
            beta: 2.0,
            threshold: 3.0,
        },
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu6,
        Activation::Hardsigmoid,
        Activation::Hardswish,
        Activation::Silu,
    ]
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Relu),
        (0.0f32..0.5).prop_map(|slope| Activation::LeakyRelu { slope }),
        (0.1f32..2.0).prop_map(|alpha| Activation::Elu { alpha }),
        Just(Activation::Sigmoid),
        Just(Activation::Tanh),
        // threshold above β·|x| for |x| <= 2: the smooth branch (the linear one is checked
        // against the reference).
        (0.5f32..3.0, 10.0f32..30.0)
            .prop_map(|(beta, threshold)| Activation::Softplus { beta, threshold }),
        Just(Activation::Gelu),
        Just(Activation::GeluTanh),
        Just(Activation::Relu6),
        Just(Activation::Hardsigmoid),
        Just(Activation::Hardswish),
        Just(Activation::Silu),
    ]
}

fn fwd(act: Activation, x: &[f32]) -> Vec<f32> {
    let mut y = nans(x.len());
    activation_forward(act, x, &mut y).unwrap();
    y
}

fn bwd(act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32], accum: Accum) {
    let y = fwd(act, x);
    activation_backward(act, x, &y, dy, dx, accum).unwrap();
}

/// Inputs covering both branches, the lane tail, and the special values.
fn special_inputs(len: usize, seed: u64) -> Vec<f32> {
    let specials = [
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e4,
        -1e4,
        1e-30,
        -1e-30,
        30.0,
        -30.0,
        88.0,
        -90.0,
    ];
    let mut v: Vec<f32> = values(seed, len).iter().map(|v| v * 8.0).collect();
    for (i, s) in specials.iter().enumerate() {
        if i < len {
            v[(i * 7 + seed as usize) % len] = *s;
        }
    }
    v
}

#[test]
fn every_activation_matches_reference_at_lane_boundaries_and_special_values() {
    for act in all_activations() {
        for len in LANE_LENGTHS.into_iter().chain([100, 1000]) {
            let x = special_inputs(len, len as u64);
            let y = par(|| fwd(act, &x));
            assert_close(
                &format!("{act:?} y, len {len}"),
                &y,
                &reference::activation_forward(act, &x),
                ATOL,
                RTOL,
            )
            .unwrap();
            let dy = values(len as u64 + 7, len);
            let mut dx = nans(len);
            par(|| bwd(act, &x, &dy, &mut dx, Accum::Replace));
            let want = reference::activation_backward(act, &x, &dy);
            assert_close(&format!("{act:?} dx, len {len}"), &dx, &want, 2e-6, 1e-5).unwrap();
            let old = values(len as u64 + 8, len);
            let mut dx = old.clone();
            par(|| bwd(act, &x, &dy, &mut dx, Accum::Add));
            let want: Vec<f32> = want.iter().zip(&old).map(|(v, o)| v + o).collect();
            assert_close(
                &format!("{act:?} dx add, len {len}"),
                &dx,
                &want,
                2e-6,
                1e-5,
            )
            .unwrap();
        }
    }
}

/// The piecewise activations at and around their kinks, from their definitions in
/// `torch.nn` (checked against torch 2.15): ReLU6 and hardsigmoid have gradient 0 at the kinks,
/// hardswish 0 at −3 and 1 at 3; a NaN input passes `dy` through ReLU6's and hardswish's
/// gradients and gives 0 through hardsigmoid's.
#[test]
fn piecewise_activations_take_torch_branches_at_their_kinks() {
    let x = [-3.0f32, 3.0, 0.0, 6.0, -3.5, 7.0, 1.5, -1.5];
    let dy = [1.0f32; 8];
    let cases: [(Activation, [f32; 8], [f32; 8]); 3] = [
        (
            Activation::Relu6,
            [0.0, 3.0, 0.0, 6.0, 0.0, 6.0, 1.5, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        ),
        (
            Activation::Hardsigmoid,
            [0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.75, 0.25],
            [0.0, 0.0, 1.0 / 6.0, 0.0, 0.0, 0.0, 1.0 / 6.0, 1.0 / 6.0],
        ),
        (
            Activation::Hardswish,
            [0.0, 3.0, 0.0, 6.0, 0.0, 7.0, 1.125, -0.375],
            [0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, 0.0],
        ),
    ];
    for (act, want_y, want_dx) in cases {
        let y = fwd(act, &x);
        let mut dx = nans(8);
        bwd(act, &x, &dy, &mut dx, Accum::Replace);
        for i in 0..8 {
            assert!(
                (y[i] - want_y[i]).abs() <= 1e-6,
                "{act:?}({}) = {}",
                x[i],
                y[i]
            );
            assert!(
                (dx[i] - want_dx[i]).abs() <= 1e-6,
                "{act:?}'({}) = {}",
                x[i],
                dx[i]
            );
        }
        assert!(fwd(act, &[f32::NAN])[0].is_nan(), "{act:?} keeps NaN");
        let mut dx = [f32::NAN];
        bwd(act, &[f32::NAN], &[2.0], &mut dx, Accum::Replace);
        let want = if act == Activation::Hardsigmoid {
            0.0
        } else {
            2.0
        };
        assert_eq!(dx[0], want, "{act:?}'(NaN)");
    }
    assert!(fwd(Activation::Hardswish, &[f32::NEG_INFINITY])[0].is_nan());
    let y = fwd(Activation::Relu6, &[-0.0]);
    assert!(y[0] == 0.0 && y[0].is_sign_negative());
}

/// PyTorch keeps the sign of −0.0 through ReLU (`x < 0 ? 0 : x`) and maps −1 to +0.
#[test]
fn relu_keeps_negative_zero_and_propagates_nan() {
    let y = fwd(Activation::Relu, &[-0.0, -1.0, f32::NAN]);
    assert!(y[0] == 0.0 && y[0].is_sign_negative());
    assert!(y[1] == 0.0 && y[1].is_sign_positive());
    assert!(y[2].is_nan());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

    #[test]
    fn activation_backward_matches_finite_differences(
        act in activation(),
        (x, dy) in (1..40usize).prop_flat_map(|n| (off_kink(n), vals(n))),
    ) {
        par(|| check_vjp(
            &x,
            &dy,
            |x, y| activation_forward(act, x, y).unwrap(),
            |x, dy, dx| bwd(act, x, dy, dx, Accum::Replace),
            Tol::DEFAULT,
        ))?;
    }

    #[test]
    fn prelu_backward_matches_finite_differences(
        (s, x, a, dy) in (1..3usize, 1..4usize, 1..5usize, any::<bool>())
            .prop_flat_map(|(n, c, hw, shared)| {
                let s = Shape4::new(n, c, hw, 1);
                let len = n * c * hw;
                (Just(s), off_kink(len), vals(if shared { 1 } else { c }), vals(len))
            })
    ) {
        let mut y = nans(x.len());
        prelu_forward(s, &x, &a, &mut y).unwrap();
        assert_close("y", &y, &reference::prelu_forward(s.c, s.h * s.w, &x, &a), 0.0, 0.0)?;
        let grads = |x: &[f32], a: &[f32], dy: &[f32]| {
            let (mut dx, mut da) = (nans(x.len()), nans(a.len()));
            prelu_backward(s, x, a, dy, &mut dx, &mut da, Accum::Replace).unwrap();
            (dx, da)
        };
        par(|| check_vjp(
            &x, &dy,
            |x, y| prelu_forward(s, x, &a, y).unwrap(),
            |x, dy, dx| dx.copy_from_slice(&grads(x, &a, dy).0),
            Tol::DEFAULT,
        ))?;
        par(|| check_vjp(
            &a, &dy,
            |a, y| prelu_forward(s, &x, a, y).unwrap(),
            |a, dy, da| da.copy_from_slice(&grads(&x, a, dy).1),
            Tol::DEFAULT,
        ))?;
    }

    #[test]
    fn rrelu_backward_matches_finite_differences(
        (x, dy) in (1..40usize).prop_flat_map(|n| (off_kink(n), vals(n))),
        seed in any::<u64>(),
    ) {
        let (lo, hi) = (1.0 / 8.0, 1.0 / 3.0);
        let run = |x: &[f32], y: &mut [f32], noise: &mut [f32]| {
            rrelu_forward_train(lo, hi, seed, x, y, noise).unwrap()
        };
        let mut noise = nans(x.len());
        run(&x, &mut nans(x.len()), &mut noise);
        for (&xv, &n) in x.iter().zip(&noise) {
            let ok = if xv > 0.0 { n == 1.0 } else { (lo..hi).contains(&n) };
            prop_assert!(ok, "x {} noise {}", xv, n);
        }
        par(|| check_vjp(
            &x, &dy,
            |x, y| run(x, y, &mut nans(x.len())),
            |_, dy, dx| rrelu_backward_train(&noise, dy, dx, Accum::Replace).unwrap(),
            Tol::DEFAULT,
        ))?;
    }
}

/// RReLU noise: reproducible per seed, different across seeds, the same for any thread count,
/// uniform on [lower, upper) (mean (lower + upper)/2, which is the evaluation-mode slope).
#[test]
fn rrelu_noise_is_seeded_uniform_and_thread_independent() {
    let x = vec![-1.0f32; 200_000];
    let draw = |seed: u64| {
        let (mut y, mut n) = (nans(x.len()), nans(x.len()));
        rrelu_forward_train(0.125, 1.0 / 3.0, seed, &x, &mut y, &mut n).unwrap();
        n
    };
    let serial = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| draw(9));
    assert_eq!(serial, par(|| draw(9)));
    assert_ne!(serial, draw(10));
    let mean = serial.iter().map(|&v| v as f64).sum::<f64>() / serial.len() as f64;
    let want = (0.125 + 1.0 / 3.0) / 2.0;
    // sd of the mean: (1/3 − 1/8)/sqrt(12 · 2e5) ≈ 1.3e-4; allow 6 sd.
    assert!((mean - want).abs() < 8e-4, "mean slope {mean}, want {want}");
    for len in LANE_LENGTHS {
        let x = special_inputs(len, 3);
        let (mut y, mut n) = (nans(len), nans(len));
        rrelu_forward_train(0.1, 0.2, 1, &x, &mut y, &mut n).unwrap();
        for i in 0..len {
            let want = x[i] * n[i];
            assert!(y[i].to_bits() == want.to_bits() || (y[i].is_nan() && want.is_nan()));
        }
    }
}

#[test]
fn activations_reject_bad_parameters() {
    let mut y = [0.0; 2];
    assert!(
        activation_forward(
            Activation::Softplus {
                beta: 0.0,
                threshold: 20.0
            },
            &[1.0, 2.0],
            &mut y
        )
        .is_err()
    );
    assert!(activation_forward(Activation::Relu, &[1.0, 2.0], &mut [0.0; 3]).is_err());
    assert!(rrelu_forward_train(0.5, 0.1, 0, &[1.0], &mut [0.0], &mut [0.0]).is_err());
    assert!(rrelu_forward_train(f32::NAN, 0.1, 0, &[1.0], &mut [0.0], &mut [0.0]).is_err());
    let s = Shape4::new(1, 3, 1, 1);
    assert!(prelu_forward(s, &[1.0; 3], &[0.1, 0.2], &mut [0.0; 3]).is_err());
}

/// The element-wise kernels other than the activations, at every lane boundary: PReLU (plane
/// lengths), dropout and mask gradients, and the global-average-pool gradient (a broadcast fill).
#[test]
fn other_elementwise_kernels_cover_lane_boundaries() {
    for len in LANE_LENGTHS {
        let x = special_inputs(len.max(1), 11)[..len].to_vec();
        let dy = values(12, len);
        // PReLU over two channels of `len` elements each.
        let s = Shape4::new(1, 2, len, 1);
        let x2 = [x.clone(), x.clone()].concat();
        let a = [0.25, -0.5];
        let mut y = nans(2 * len);
        prelu_forward(s, &x2, &a, &mut y).unwrap();
        assert_close(
            "prelu",
            &y,
            &reference::prelu_forward(2, len, &x2, &a),
            0.0,
            0.0,
        )
        .unwrap();
        let (mut dx, mut da) = (nans(2 * len), nans(2));
        let dy2 = [dy.clone(), dy.clone()].concat();
        prelu_backward(s, &x2, &a, &dy2, &mut dx, &mut da, Accum::Replace).unwrap();
        for i in 0..2 * len {
            let want = if x2[i] > 0.0 {
                dy2[i]
            } else {
                a[i / len.max(1)] * dy2[i]
            };
            assert!(
                dx[i] == want || (dx[i].is_nan() && want.is_nan()),
                "prelu dx[{i}] len {len}"
            );
        }
        // Dropout: y = x·mask, dx = dy·mask, for every element.
        let (mut y, mut mask) = (nans(len), nans(len));
        dropout_forward_train(0.5, 3, &x, &mut y, &mut mask).unwrap();
        let mut dx = nans(len);
        dropout_backward(&mask, &dy, &mut dx, Accum::Replace).unwrap();
        for i in 0..len {
            assert!(mask[i] == 0.0 || mask[i] == 2.0);
            let want = x[i] * mask[i];
            assert!(
                y[i] == want || (y[i].is_nan() && want.is_nan()),
                "dropout y[{i}] len {len}"
            );
            assert_eq!(dx[i], dy[i] * mask[i]);
        }
        // Global average pool gradient: one plane of `len` elements, accumulated.
        if len > 0 {
            let mut dx = vec![1.0; len];
            global_avg_pool_backward(Shape4::new(1, 1, 1, len), &[2.0], &mut dx, Accum::Add)
                .unwrap();
            assert!(dx.iter().all(|&v| v == 1.0 + 2.0 / len as f32));
        }
    }
}

/// The softmax layer is `nn.Softmax(dim=1)`: at each position, exp over the channels divided by
/// their sum (computed here in float64), for a map and for a flat input.
#[test]
fn softmax_layer_normalises_over_the_channels_at_each_position() {
    use cnnkit::layer::{self, Ctx};
    for shape in [[3usize, 2, 3], [5, 1, 1]] {
        let [c, h, w] = shape;
        let n = 2;
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let mut l = layer::build(&"softmax".parse().unwrap(), shape).unwrap();
        let mut y = vec![0.0; x.len()];
        let mut ws = Vec::new();
        l.forward(n, &[], &x, &mut y, &mut Ctx::new(false, 0, &mut ws))
            .unwrap();
        let hw = h * w;
        for s in 0..n {
            for p in 0..hw {
                let at = |k: usize| s * c * hw + k * hw + p;
                let m = (0..c).map(|k| x[at(k)] as f64).fold(f64::MIN, f64::max);
                let z: f64 = (0..c).map(|k| (x[at(k)] as f64 - m).exp()).sum();
                for k in 0..c {
                    let want = (x[at(k)] as f64 - m).exp() / z;
                    assert!(
                        (y[at(k)] as f64 - want).abs() < 1e-6,
                        "{shape:?} {s} {p} {k}"
                    );
                }
            }
        }
    }
}

/// The channel softmax kernels: `Accum::Add` adds to the gradient `Accum::Replace` writes, and a
/// zero plane size or a length that is not a whole number of samples is an error.
#[test]
fn softmax_channels_kernels_accumulate_and_check_lengths() {
    use cnnkit::kernels::{Accum, softmax_channels_backward, softmax_channels_forward};
    let (c, hw) = (3, 4);
    let x: Vec<f32> = (0..2 * c * hw).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0.0; x.len()];
    softmax_channels_forward(c, hw, &x, &mut y).unwrap();
    let dy: Vec<f32> = (0..x.len()).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut replace = vec![0.0; x.len()];
    softmax_channels_backward(c, hw, &y, &dy, &mut replace, Accum::Replace).unwrap();
    let mut add = vec![1.0; x.len()];
    softmax_channels_backward(c, hw, &y, &dy, &mut add, Accum::Add).unwrap();
    for (a, r) in add.iter().zip(&replace) {
        assert!((a - (1.0 + r)).abs() < 1e-6);
    }
    assert!(softmax_channels_forward(c, 0, &x, &mut y).is_err());
    assert!(softmax_channels_forward(c, hw, &x[1..], &mut y[1..]).is_err());
}
