//! The whole model: random networks' parameter gradients against finite differences of the loss,
//! shape inference, summaries and state-dict naming.

mod common;

use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::{LayerSpec, Sequential};
use common::{par, values};
use proptest::prelude::*;

/// A random small network: 1–2 convolution blocks (convolution, optional batch norm, an
/// activation, optional pooling), then flatten or global pooling, an optional hidden dense layer
/// with dropout, and the classifier.
fn network() -> impl Strategy<Value = (cnnkit::Shape3, String, usize)> {
    let act = prop_oneof![
        Just("relu"),
        Just("tanh"),
        Just("sigmoid"),
        Just("gelu"),
        Just("gelu_tanh"),
        Just("elu(0.7)"),
        Just("softplus"),
        Just("leakyrelu(0.1)"),
        Just("prelu"),
        Just("prelu(channels)"),
        Just("rrelu"),
    ];
    let block = (
        1..4usize,
        1..4usize,
        0..2usize,
        1..3usize,
        any::<bool>(),
        act.clone(),
        prop_oneof![
            Just(""),
            Just(",maxpool(2)"),
            Just(",avgpool(2)"),
            Just(",avgpool(3,s=2,p=1,count_include_pad=false)"),
            Just(",maxpool(3,s=2,p=1)")
        ],
    )
        .prop_map(|(o, k, p, s, bn, a, pool)| {
            format!(
                "conv({o},{k},s={s},p={p}){}{},{a}{pool}",
                if bn { ",bn" } else { "" },
                ""
            )
        });
    (
        (1..3usize, 4..9usize, 4..9usize),
        prop::collection::vec(block, 1..3),
        prop_oneof![Just("flatten"), Just("gap"), Just("flatten,ln")],
        prop_oneof![
            Just(String::new()),
            (2..6usize, act).prop_map(|(h, a)| format!(",dense({h}),{a},dropout(0.3)"))
        ],
        2..5usize,
    )
        .prop_map(|((c, h, w), blocks, flat, hidden, classes)| {
            (
                [c, h, w],
                format!("{},{flat}{hidden},dense({classes})", blocks.join(",")),
                classes,
            )
        })
}

/// The loss of `model` on `(x, labels)` with the noise generator reset to `rng`, so dropout and
/// RReLU masks are the same on every evaluation.
fn loss(model: &mut Sequential, rng: [u64; 4], x: &[f32], n: usize, labels: &[u32]) -> f64 {
    model.set_rng_state(rng);
    let classes = model.output_len();
    let logits = model.forward(x, n).unwrap().to_vec();
    cross_entropy_loss(classes, &logits, labels, 0.0, None).unwrap() as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every parameter gradient of the full backward pass (convolutions, batch norm, layer norm,
    /// pooling, activations with learnable slopes, dropout, dense, cross-entropy) against central
    /// differences of the loss. A component whose central differences at h and h/2 disagree lies
    /// on a kink (ReLU, max-pool switch) and is skipped; a case with more than 20% skipped is
    /// replaced by another.
    #[test]
    fn model_gradients_match_finite_differences((input, arch, classes) in network(), seed in 0..1000u64) {
        let specs = LayerSpec::parse_list(&arch).unwrap();
        let Ok(mut model) = Sequential::new(input, &specs, seed) else {
            return Err(TestCaseError::reject("architecture does not fit the input"));
        };
        prop_assume!(model.param_count() <= 600);
        let n = 3;
        let x: Vec<f32> = values(seed, n * input.iter().product::<usize>()).iter().map(|v| v * 2.0).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let rng = model.rng_state();
        par(|| -> Result<(), TestCaseError> {
            model.set_rng_state(rng);
            let logits = model.forward(&x, n).unwrap().to_vec();
            let mut d = vec![0.0; logits.len()];
            cross_entropy_loss(classes, &logits, &labels, 0.0, Some(&mut d)).unwrap();
            model.backward(&x, &d, Accum::Replace).unwrap();
            let grads = model.grads().to_vec();
            let (mut checked, mut skipped) = (0, 0);
            // A network of pooling and activations is piecewise smooth on a scale finer than the
            // kernels' h = 1e-2 (max-pool switches among close values); the loss is a sum of
            // f32 values of order 1, so h = 2e-3 still keeps rounding noise near 1e-4.
            let h = 2e-3f32;
            for (i, &g) in grads.iter().enumerate() {
                let p0 = model.params()[i];
                let mut at = |v: f32| {
                    model.params_mut()[i] = v;
                    loss(&mut model, rng, &x, n, &labels)
                };
                let (lm, lm2, l0, lp2, lp) = (at(p0 - h), at(p0 - h / 2.0), at(p0), at(p0 + h / 2.0), at(p0 + h));
                model.params_mut()[i] = p0;
                let num_h = (lp - lm) / (2.0 * h as f64);
                let num_h2 = (lp2 - lm2) / h as f64;
                // One-sided slopes differ at a kink (by the jump in slope) and agree, up to
                // (h/2)·L'', where the loss is smooth.
                let (fwd, bwd) = ((lp2 - l0) / (h as f64 / 2.0), (l0 - lm2) / (h as f64 / 2.0));
                let tol = |v: f64| 1e-3 + 5e-2 * v.abs();
                if (num_h - num_h2).abs() > tol(num_h) || (fwd - bwd).abs() > tol(num_h) {
                    skipped += 1;
                    continue;
                }
                // Richardson extrapolation removes the h² term.
                let num = (4.0 * num_h2 - num_h) / 3.0;
                let ana = g as f64;
                prop_assert!(
                    (num - ana).abs() <= 2e-3 + 2e-2 * num.abs(),
                    "{arch}: gradient[{i}] analytic {ana}, finite difference {num}"
                );
                checked += 1;
            }
            // A unit sitting on a kink makes every parameter upstream of it non-differentiable
            // at this point; such a case says nothing either way, so draw another.
            if checked * 5 < (checked + skipped) * 4 {
                return Err(TestCaseError::reject("too many parameters on a kink"));
            }
            Ok(())
        })?;
    }
}

#[test]
fn summary_lists_layers_shapes_and_parameters() {
    let specs =
        LayerSpec::parse_list("conv(32,3,p=1),bn,relu,maxpool(2),flatten,dense(10)").unwrap();
    let m = Sequential::new([1, 28, 28], &specs, 0).unwrap();
    // PyTorch: conv 32·1·3·3 + 32, bn 2·32, dense 10·(32·14·14) + 10.
    assert_eq!(m.param_count(), 320 + 64 + 10 * 6272 + 10);
    let s = m.summary();
    assert!(s.contains("input 1x28x28, 63114 parameters"), "{s}");
    assert!(
        s.contains("32x28x28") && s.contains("32x14x14") && s.contains("6272"),
        "{s}"
    );
    assert_eq!(s.lines().count(), 2 + 6);
    let names: Vec<String> = m.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "5.weight",
            "5.bias"
        ]
    );
}

#[test]
fn architectures_that_do_not_fit_the_input_are_rejected_with_the_layer_named() {
    for (arch, needle) in [
        (
            "conv(8,5),relu,conv(8,5),flatten,dense(2)",
            "conv(8,5) cannot take an input of shape 8x4x4",
        ),
        ("conv(8,3),dense(2)", "dense needs a flat input"),
        ("maxpool(16),flatten,dense(2)", "maxpool(16) cannot take"),
    ] {
        let e = Sequential::new([1, 8, 8], &LayerSpec::parse_list(arch).unwrap(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{arch}: {e}");
    }
}

/// Forward in evaluation mode is deterministic (no noise) and does not touch running statistics.
#[test]
fn eval_mode_uses_running_statistics_and_no_noise() {
    let specs =
        LayerSpec::parse_list("conv(4,3,p=1),bn,rrelu,dropout(0.5),flatten,dense(3)").unwrap();
    let mut m = Sequential::new([2, 5, 5], &specs, 1).unwrap();
    let x = values(3, 4 * 50);
    let a = m.forward(&x, 4).unwrap().to_vec();
    let b = m.forward(&x, 4).unwrap().to_vec();
    assert_ne!(a, b, "training forward draws new noise");
    m.eval();
    let before = m.state_dict();
    let c = m.forward(&x, 4).unwrap().to_vec();
    let d = m.forward(&x, 4).unwrap().to_vec();
    assert_eq!(c, d);
    assert_eq!(before, m.state_dict());
}

/// Mean and standard deviation of a slice.
fn stats(v: &[f32]) -> (f64, f64) {
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

/// Each initialisation scheme draws from `torch.nn.init`'s distribution with the layer's fans
/// (conv: fan_in = in/groups·kh·kw, fan_out = out·kh·kw), biases from PyTorch's default, constants
/// exact; the same seed gives the same weights.
#[test]
fn initialisation_follows_torch_nn_init() {
    use cnnkit::Init;
    let specs = LayerSpec::parse_list("conv(64,3,g=2),bn,prelu,flatten,dense(400)").unwrap();
    // conv: in 8 → fan_in 4·9 = 36, fan_out 64·9 = 576; dense: fan_in 64·6·6 = 2304, fan_out 400.
    let (conv_w, conv_b, dense_w) = (64 * 4 * 9, 64, 400 * 2304);
    for (init, bound_or_std) in [
        (
            Init::TorchDefault,
            [1.0 / 36f64.sqrt(), 1.0 / 2304f64.sqrt()],
        ),
        (
            Init::XavierUniform,
            [
                (6.0 / (36.0 + 576.0f64)).sqrt(),
                (6.0 / (2304.0 + 400.0f64)).sqrt(),
            ],
        ),
        (
            Init::KaimingUniform,
            [(6.0 / 36.0f64).sqrt(), (6.0 / 2304.0f64).sqrt()],
        ),
        (
            Init::XavierNormal,
            [
                (2.0 / (36.0 + 576.0f64)).sqrt(),
                (2.0 / (2304.0 + 400.0f64)).sqrt(),
            ],
        ),
        (
            Init::KaimingNormal,
            [(2.0 / 36.0f64).sqrt(), (2.0 / 2304.0f64).sqrt()],
        ),
    ] {
        let m = Sequential::with_init([8, 8, 8], &specs, init, 11).unwrap();
        let p = m.params();
        let conv = &p[..conv_w];
        let bias = &p[conv_w..conv_w + conv_b];
        let bn = &p[conv_w + conv_b..conv_w + conv_b + 128];
        let prelu = p[conv_w + conv_b + 128];
        let dense = &p[conv_w + conv_b + 129..conv_w + conv_b + 129 + dense_w];
        let normal = matches!(init, Init::XavierNormal | Init::KaimingNormal);
        for (w, b) in [(conv, bound_or_std[0]), (dense, bound_or_std[1])] {
            let (mean, sd) = stats(w);
            // Uniform(−b, b) has sd b/√3; normal draws have sd b.
            let want_sd = if normal { b } else { b / 3f64.sqrt() };
            assert!(
                mean.abs() < 4.0 * want_sd / (w.len() as f64).sqrt(),
                "{init:?}: mean {mean}"
            );
            assert!(
                (sd / want_sd - 1.0).abs() < 0.05,
                "{init:?}: sd {sd}, want {want_sd}"
            );
            if !normal {
                assert!(
                    w.iter().all(|&v| (v as f64).abs() <= b),
                    "{init:?}: a weight beyond {b}"
                );
            }
        }
        assert!(bias.iter().all(|&v| (v as f64).abs() <= 1.0 / 6.0));
        assert!(bn[..64].iter().all(|&v| v == 1.0) && bn[64..].iter().all(|&v| v == 0.0));
        assert_eq!(prelu, 0.25);
        assert_eq!(
            Sequential::with_init([8, 8, 8], &specs, init, 11)
                .unwrap()
                .params(),
            p
        );
        assert_ne!(
            Sequential::with_init([8, 8, 8], &specs, init, 12)
                .unwrap()
                .params(),
            p
        );
    }
}
