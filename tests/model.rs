//! The whole model: random networks' parameter gradients against finite differences of the loss,
//! shape inference, summaries and state-dict naming.

mod common;

use cnnkit::gradcheck::{self, Tolerance};
use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::{LayerSpec, Sequential};
use common::{par, values};
use proptest::prelude::*;

/// A random small network: 1–2 convolution blocks (convolution, optional batch norm, an
/// activation, optional pooling; or a residual block with an identity or projection shortcut), then flatten or global pooling, an optional hidden dense layer
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
        Just("relu6"),
        Just("hardsigmoid"),
        Just("hardswish"),
        Just("silu"),
        Just("softmax"),
    ];
    let block = (
        1..4usize,
        1..4usize,
        0..2usize,
        1..3usize,
        any::<bool>(),
        (act.clone(), 0..5u8),
        prop_oneof![
            Just(""),
            Just(",maxpool(2)"),
            Just(",avgpool(2)"),
            Just(",avgpool(3,s=2,p=1,count_include_pad=false)"),
            Just(",maxpool(3,s=2,p=1)")
        ],
    )
        .prop_map(|(o, k, p, s, bn, (a, res), pool)| {
            if res == 0 {
                // A residual block (its own convolutions, batch norms and ReLUs).
                return format!("res({o},s={s}){pool}");
            }
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
            (2..6usize, act).prop_map(|(h, a)| format!(",dense({h}),noise(0.2),{a},dropout(0.3)"))
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
/// The mean cross-entropy of the network's f32 logits, computed in f64 (so the loss adds no
/// rounding of its own to the logits').
fn loss(model: &mut Sequential, rng: [u64; 4], x: &[f32], n: usize, labels: &[u32]) -> f64 {
    model.set_rng_state(rng);
    let classes = model.output_len();
    let logits = model.forward(x, n).unwrap();
    let mut s = 0.0;
    for (row, &l) in logits.chunks(classes).zip(labels) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        s += lse - row[l as usize] as f64;
    }
    s / n as f64
}

/// Checks `grad[i]` for every `i` in `idx` with [`cnnkit::gradcheck::compare`] (fitted slopes
/// of the loss, its measured rounding noise, windows on a kink skipped). A network of pooling and
/// activations is piecewise smooth on a scale finer than the kernels' h = 1e-2 and its f32
/// forward pass makes the loss noisy at the 1e-7 level, hence fitted cubics rather than single
/// quotients. Returns how many were checked and how many skipped.
fn check_slopes(
    what: &str,
    orig: &[f32],
    grad: &[f32],
    idx: impl Iterator<Item = usize>,
    eta_at: &[usize],
    eval: &mut dyn FnMut(usize, f32) -> f64,
) -> Result<(usize, usize), TestCaseError> {
    let r = gradcheck::compare(what, orig, grad, idx, eta_at, Tolerance::default(), eval);
    prop_assert!(r.passed(), "{what}: {r}");
    Ok((r.checked, r.skipped))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64)))]

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
            let orig = model.params().to_vec();
            let count = orig.len();
            let (checked, skipped) = check_slopes(
                &arch,
                &orig,
                &grads,
                0..count,
                &[0, count / 3, 2 * count / 3, count.saturating_sub(1)],
                &mut |i, v| {
                    model.params_mut()[i] = v;
                    loss(&mut model, rng, &x, n, &labels)
                },
            )?;
            // A unit sitting on a kink makes every parameter upstream of it non-differentiable
            // at this point; such a case says nothing either way, so draw another.
            if checked * 5 < (checked + skipped) * 4 {
                return Err(TestCaseError::reject("too many parameters on a kink"));
            }
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(48)))]

    /// The input gradient (`Sequential::input_gradient`) of random networks of every layer kind
    /// against central differences of the loss in each input value (the same fitted slopes,
    /// noise bound and kink handling as the parameter check above); the parameter gradients are
    /// left untouched by it, and a pass that is asked for both gives the same parameter
    /// gradients as `backward`.
    #[test]
    fn input_gradients_match_finite_differences((input, arch, classes) in network(), seed in 0..1000u64) {
        let specs = LayerSpec::parse_list(&arch).unwrap();
        let Ok(mut model) = Sequential::new(input, &specs, seed) else {
            return Err(TestCaseError::reject("architecture does not fit the input"));
        };
        let n = 3;
        let mut x: Vec<f32> = values(seed + 7, n * input.iter().product::<usize>()).iter().map(|v| v * 2.0).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let rng = model.rng_state();
        par(|| -> Result<(), TestCaseError> {
            model.set_rng_state(rng);
            let logits = model.forward(&x, n).unwrap().to_vec();
            let mut d = vec![0.0; logits.len()];
            cross_entropy_loss(classes, &logits, &labels, 0.0, Some(&mut d)).unwrap();
            // Parameter gradients before: a marker that must survive.
            model.backward(&x, &d, Accum::Replace).unwrap();
            let before = model.grads().to_vec();
            let mut dx = vec![f32::NAN; x.len()];
            model.input_gradient(&x, &d, &mut dx, None).unwrap();
            prop_assert!(model.grads() == &before[..], "input_gradient(None) changed the parameter gradients");
            let mut dx2 = vec![0.0; x.len()];
            model.input_gradient(&x, &d, &mut dx2, Some(Accum::Replace)).unwrap();
            prop_assert!(model.grads() == &before[..], "input_gradient(Some) differs from backward");
            prop_assert!(dx == dx2);
            // `d` is the gradient of the mean loss, so `dx` is too.
            let orig = x.clone();
            let len = x.len();
            let (checked, skipped) = check_slopes(
                &format!("{arch}: dx"),
                &orig,
                &dx,
                (0..len).step_by(len.div_ceil(96)),
                &[0, len / 2, len - 1],
                &mut |i, v| {
                    x[i] = v;
                    loss(&mut model, rng, &x, n, &labels)
                },
            )?;
            if checked * 5 < (checked + skipped) * 4 {
                return Err(TestCaseError::reject("too many inputs on a kink"));
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

/// A noise layer is the identity in evaluation; in training it draws new noise on every call,
/// and a model whose generator state is restored draws the same noise again (resuming a run
/// repeats it exactly).
#[test]
fn noise_layers_are_identity_in_eval_and_resumable_in_training() {
    let specs = LayerSpec::parse_list("noise(0.3),relu").unwrap();
    let mut m = Sequential::new([1, 4, 4], &specs, 7).unwrap();
    let x = values(5, 2 * 16);
    let state = m.rng_state();
    let a = m.forward(&x, 2).unwrap().to_vec();
    let b = m.forward(&x, 2).unwrap().to_vec();
    assert_ne!(a, b, "training forward draws new noise");
    // Not just a re-scaled ReLU: some elements that ReLU would zero are now positive.
    assert!(a.iter().zip(&x).any(|(y, x)| *x <= 0.0 && *y > 0.0));
    m.set_rng_state(state);
    assert_eq!(m.forward(&x, 2).unwrap(), &a[..], "same state, same noise");
    m.eval();
    let relu: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    assert_eq!(m.forward(&x, 2).unwrap(), &relu[..]);
    // A negative spread is refused when the text is parsed, and when the spec is made in code.
    assert!(LayerSpec::parse_list("noise(-1)").is_err());
    let negative = [LayerSpec::GaussianNoise { std: -1.0 }];
    assert!(Sequential::new([1, 2, 2], &negative, 0).is_err());
    assert!(
        LayerSpec::parse_list("noise").is_err(),
        "the standard deviation has no default"
    );
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

/// The bits of one forward pass and input-gradient pass of a 3-class cross-entropy loss:
/// outputs, parameter gradients, input gradients and the state dict (running statistics).
#[allow(clippy::type_complexity)]
fn pass_bits(
    m: &mut Sequential,
    x: &[f32],
    n: usize,
    labels: &[u32],
) -> (Vec<u32>, Vec<u32>, Vec<u32>, Vec<(String, String)>) {
    let y = m.forward(x, n).unwrap().to_vec();
    let mut d = vec![0.0; y.len()];
    cross_entropy_loss(3, &y, labels, 0.0, Some(&mut d)).unwrap();
    let mut dx = vec![0.0; x.len()];
    m.input_gradient(x, &d, &mut dx, Some(Accum::Replace))
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    let state = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, format!("{:?}", t.data)))
        .collect();
    (bits(&y), bits(m.grads()), bits(&dx), state)
}

/// [`pass_bits`] of `specs` with the layers fused and separate (`Sequential::set_fusion`) on the
/// 3-thread pool: the layers the fused model fuses, or which part of the results differs.
fn fused_against_separate(
    input: [usize; 3],
    specs: &[LayerSpec],
    seed: u64,
    training: bool,
    x: &[f32],
    labels: &[u32],
) -> Result<Vec<usize>, String> {
    let n = labels.len();
    let run = |fused: bool| {
        let mut m = Sequential::new(input, specs, seed).unwrap();
        m.set_fusion(fused);
        if !training {
            m.eval();
        }
        let bits = par(|| pass_bits(&mut m, x, n, labels));
        (bits, m.fused_layers())
    };
    let ((fused, layers), (separate, _)) = (run(true), run(false));
    compare_passes(specs, &layers, &fused, &separate)?;
    Ok(layers)
}

/// Whether the fused pass `fused` (the model fusing `layers` of `specs`) gives the results of
/// the separate layers: the same bits, but for the gradients when a batch norm is fused into a
/// max-pool — its backward sums are then taken over the pooled positions, the same sums in
/// another order — which agree to `1e-4` of each gradient's largest element.
#[allow(clippy::type_complexity)]
fn compare_passes(
    specs: &[LayerSpec],
    layers: &[usize],
    fused: &(Vec<u32>, Vec<u32>, Vec<u32>, Vec<(String, String)>),
    separate: &(Vec<u32>, Vec<u32>, Vec<u32>, Vec<(String, String)>),
) -> Result<(), String> {
    let reordered = layers
        .iter()
        .any(|&i| matches!(specs[i], LayerSpec::BatchNorm2d { .. }));
    let close = |a: &[u32], b: &[u32]| {
        let f = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
        let (a, b) = (f(a), f(b));
        let tol = 1e-4 * b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol)
    };
    let parts = ["outputs", "parameter gradients", "input gradients"];
    for (part, same) in parts.iter().zip([
        fused.0 == separate.0,
        fused.1 == separate.1 || (reordered && close(&fused.1, &separate.1)),
        fused.2 == separate.2 || (reordered && close(&fused.2, &separate.2)),
    ]) {
        if !same {
            return Err(format!("{part} differ"));
        }
    }
    if fused.3 != separate.3 {
        return Err("running statistics differ".into());
    }
    Ok(())
}

/// A ReLU directly before a max-pool runs inside the pool by default (`Sequential::set_fusion`),
/// a batch norm before a max-pool (directly or through such a ReLU) hands the pool its output
/// map instead of its output, and a convolution before a max-pool (directly or through such a
/// ReLU) runs inside the pool image by image: outputs, parameter gradients, input gradients and
/// running statistics are bit-identical to running every layer as written (the gradients within
/// tolerance where a batch norm is fused, see `compare_passes`; the fused pass itself the same
/// bits on 1 and 2 threads), in training and evaluation mode, for 1 and 2 threads (overlapping
/// and padded windows, a batch norm as the first layer, strided and pointwise convolutions).
#[test]
fn fused_layers_give_the_results_of_separate_layers() {
    let archs = [
        "conv(4,3,p=1),relu,maxpool(2),conv(6,3,p=1),bn,relu,maxpool(3,s=2,p=1),flatten,dense(5),relu,dense(3)",
        "relu,maxpool(2),conv(3,3),relu,maxpool(2),flatten,dense(3)",
        "conv(4,3,p=1,bias=false),bn,relu,maxpool(2),relu,maxpool(2),gap,dense(3)",
        "conv(4,3,p=1),relu,avgpool(2),flatten,dense(3),relu",
        "bn,maxpool(2),conv(3,3,p=1),bn,maxpool(3,s=2,p=1),flatten,dense(3)",
        "conv(4,3,p=1),bn,relu,avgpool(2),bn,relu,gap,dense(3)",
        "conv(5,3,s=2,p=1),maxpool(3,s=2,p=1),conv(4,1),relu,maxpool(2),flatten,dense(3)",
    ];
    let fused: [&[usize]; 7] = [
        &[0, 1, 4, 5],
        &[2, 3],
        &[1, 2, 4],
        &[],
        &[0, 3],
        &[],
        &[0, 2, 3],
    ];
    for (arch, want) in archs.into_iter().zip(fused) {
        let specs = LayerSpec::parse_list(arch).unwrap();
        let mut m = Sequential::new([2, 12, 12], &specs, 3).unwrap();
        assert_eq!(m.fused_layers(), want, "{arch}");
        m.set_fusion(false);
        assert!(m.fused_layers().is_empty());
        let n = 3;
        // Negative-heavy inputs: whole pooling windows at or below zero occur.
        let x: Vec<f32> = values(5, n * 2 * 12 * 12)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 5 == 0 { 0.0 } else { v * 2.0 - 0.5 })
            .collect();
        let labels = [0u32, 2, 1];
        let mut by_threads = [None, None];
        for threads in [1, 2] {
            for training in [true, false] {
                let run = |fused: bool| {
                    let mut m = Sequential::new([2, 12, 12], &specs, 3).unwrap();
                    m.set_fusion(fused);
                    if !training {
                        m.eval();
                    }
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| pass_bits(&mut m, &x, n, &labels))
                };
                let (fused, separate) = (run(true), run(false));
                compare_passes(&specs, want, &fused, &separate)
                    .unwrap_or_else(|e| panic!("{arch}: {e} (training {training})"));
                // The fused pass itself does not depend on the thread count.
                match &by_threads[usize::from(training)] {
                    None => by_threads[usize::from(training)] = Some(fused.clone()),
                    Some(one) => assert!(one == &fused, "{arch}: depends on the thread count"),
                }
                assert!(fused.2.iter().any(|&b| b != 0), "{arch}: a zero gradient");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(48)))]

    /// The batch norm + (ReLU +) max-pool fusion over random shapes and pooling geometries
    /// (windows 1–3, strides 1–3, padding up to half the window, batches of 1–4 on the 3-thread
    /// pool with every split taken): the results of the layers run separately (see
    /// `compare_passes`).
    #[test]
    fn fused_batch_norm_and_max_pool_match_separate_layers_on_random_shapes(
        c in 1usize..5, h in 3usize..11, w in 3usize..11, k in 1usize..4, s in 1usize..4,
        pad in 0usize..2, relu in any::<bool>(), first in any::<bool>(), n in 1usize..5,
        training in any::<bool>(), seed in 0..1000u64,
    ) {
        let pad = pad.min(k / 2);
        let pool = format!("maxpool({k},s={s},p={pad})");
        let block = if relu { format!("bn,relu,{pool}") } else { format!("bn,{pool}") };
        let arch = if first {
            format!("{block},flatten,dense(3)")
        } else {
            format!("conv({c},3,p=1),{block},flatten,dense(3)")
        };
        let specs = LayerSpec::parse_list(&arch).unwrap();
        let input = [c, h, w];
        let x: Vec<f32> = values(seed, n * c * h * w).iter().map(|v| v * 3.0).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let fused = fused_against_separate(input, &specs, seed, training, &x, &labels)
            .map_err(|e| TestCaseError::fail(format!("{arch}: {e}")))?;
        let bn = usize::from(!first);
        prop_assert!(fused.contains(&bn), "{arch}: the batch norm was not fused: {fused:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(48)))]

    /// The convolution + (ReLU +) max-pool fusion over random convolution and pooling geometries
    /// (kernels 1–3, strides 1–2, padding, with and without bias, first layer or after a
    /// convolution of 1–6 channels — both input-gradient paths —, batches of 1–4 on the 3-thread
    /// pool with every split taken): the same bits as separate layers, and the convolution is
    /// fused.
    #[test]
    fn fused_convolution_and_max_pool_match_separate_layers_on_random_shapes(
        c in 1usize..4, o in 1usize..10, h in 3usize..14, w in 3usize..14, k in 1usize..4,
        s in 1usize..3, pad in 0usize..2, bias in any::<bool>(), relu in any::<bool>(),
        pk in 1usize..4, ps in 1usize..4, ppad in 0usize..2, first in any::<bool>(),
        m in 1usize..7, n in 1usize..5, training in any::<bool>(), seed in 0..1000u64,
    ) {
        let (pad, ppad) = (pad.min(k / 2), ppad.min(pk / 2));
        let conv = format!("conv({o},{k},s={s},p={pad},bias={bias})");
        let pool = format!("maxpool({pk},s={ps},p={ppad})");
        let block = if relu { format!("{conv},relu,{pool}") } else { format!("{conv},{pool}") };
        let arch = if first {
            format!("{block},flatten,dense(3)")
        } else {
            format!("conv({m},3,p=1),relu,{block},flatten,dense(3)")
        };
        let specs = LayerSpec::parse_list(&arch).unwrap();
        let input = [c, h, w];
        prop_assume!(Sequential::new(input, &specs, seed).is_ok());
        let x: Vec<f32> = values(seed, n * c * h * w).iter().map(|v| v * 3.0 - 1.0).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let fused = fused_against_separate(input, &specs, seed, training, &x, &labels)
            .map_err(|e| TestCaseError::fail(format!("{arch}: {e}")))?;
        let conv_at = if first { 0 } else { 2 };
        prop_assert!(fused.contains(&conv_at), "{arch}: not fused: {fused:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(48)))]

    /// Chains of one to three blocks, each fusable (convolution, batch norm, ReLU, max-pool in
    /// every fused combination) or not, after zero to two plain layers and before a tail of one
    /// to four layers: every fused step is reached after an even and after an odd number of
    /// backward steps (the model alternates two gradient buffers, and a fused step that flips
    /// them wrongly is caught only at one parity), at every depth. The results of separate
    /// layers (see `compare_passes`), and every fusable block is fused.
    #[test]
    fn fusable_blocks_at_every_depth_and_position_match_separate_layers(
        prefix in 0usize..3,
        blocks in proptest::collection::vec((0usize..7, 1usize..5), 1..4),
        tail in 0usize..4,
        n in 1usize..4,
        training in any::<bool>(),
        seed in 0..1000u64,
    ) {
        let c = 2;
        let mut layers: Vec<String> = ["conv(3,3,p=1)", "tanh"][..prefix].iter().map(|s| s.to_string()).collect();
        let mut fusable = Vec::new();
        for &(kind, o) in &blocks {
            let start = layers.len();
            let block: &[String] = &match kind {
                0 => vec![format!("conv({o},3,p=1)"), "maxpool(2)".into()],
                1 => vec![format!("conv({o},3,p=1)"), "relu".into(), "maxpool(2)".into()],
                2 => vec!["bn".into(), "maxpool(2)".into()],
                3 => vec!["bn".into(), "relu".into(), "maxpool(2)".into()],
                4 => vec![format!("conv({o},3,p=1)"), "bn".into(), "maxpool(2)".into()],
                5 => vec![format!("conv({o},3,p=1)"), "bn".into(), "relu".into(), "maxpool(2)".into()],
                _ => vec![format!("conv({o},3,p=1)"), "relu".into()],
            };
            if kind < 6 {
                // The layer the pool absorbs: the convolution or batch norm just before it (a
                // ReLU before the pool is absorbed too).
                fusable.push(start + block.len() - 2 - usize::from(block[block.len() - 2] == "relu"));
            }
            layers.extend(block.iter().cloned());
        }
        let tails = ["flatten,dense(3)", "gap,dense(3)", "flatten,dense(4),relu,dense(3)", "conv(3,1),relu,gap,dense(3)"];
        layers.push(tails[tail].into());
        let arch = layers.join(",");
        let specs = LayerSpec::parse_list(&arch).unwrap();
        let input = [c, 16, 16];
        let x: Vec<f32> = values(seed, n * c * 256).iter().map(|v| v * 3.0 - 1.0).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let fused = fused_against_separate(input, &specs, seed, training, &x, &labels)
            .map_err(|e| TestCaseError::fail(format!("{arch}: {e}")))?;
        for i in fusable {
            prop_assert!(fused.contains(&i), "{arch}: layer {i} not fused: {fused:?}");
        }
    }
}

/// The convolution + max-pool fusion, and the convolution + batch norm + max-pool backward, on a
/// layer large enough that its weight gradient splits inside each image (one partial sum) while
/// the input gradient is made per image on the direct path, with batches smaller and larger than
/// the pool: the results of separate layers (see `compare_passes`).
#[test]
fn fused_convolution_and_max_pool_on_a_large_layer_match_separate_layers() {
    let archs = [
        (
            "conv(32,3,p=1),relu,conv(32,3,p=1),relu,maxpool(2),flatten,dense(3)",
            vec![2, 3],
        ),
        (
            "conv(32,3,p=1),relu,conv(32,3,p=1,bias=false),bn,relu,maxpool(2),flatten,dense(3)",
            vec![3, 4],
        ),
    ];
    let input = [1, 34, 34];
    for (arch, want) in archs {
        let specs = LayerSpec::parse_list(arch).unwrap();
        for n in [1, 2, 4] {
            let x: Vec<f32> = values(n as u64, n * 34 * 34)
                .iter()
                .map(|v| v * 2.0 - 1.0)
                .collect();
            let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
            let fused = fused_against_separate(input, &specs, 9, true, &x, &labels)
                .unwrap_or_else(|e| panic!("{arch}, n = {n}: {e}"));
            assert_eq!(fused, want, "{arch}, n = {n}");
        }
    }
}

/// Gradient accumulation (`Accum::Add`) adds this batch's parameter gradients to the previous
/// ones, through every layer kind with parameters between the loss and the first layer: the
/// layers overwrite their input gradients whatever the mode (a batch norm, layer norm or PReLU
/// that added its input gradient to a stale buffer corrupted every layer before it).
#[test]
fn accumulated_gradients_are_the_sum_of_the_separate_ones() {
    let archs = [
        "conv(3,3,p=1),bn,relu,flatten,dense(2)",
        "conv(3,3,p=1),bn,relu,maxpool(2),flatten,dense(2)",
        "conv(3,3,p=1),ln,prelu(channels),flatten,dense(2)",
        "conv(3,3,p=1),res(3),prelu,gap,dense(2)",
    ];
    for arch in archs {
        let specs = LayerSpec::parse_list(arch).unwrap();
        let x1: Vec<f32> = values(1, 2 * 36);
        let x2: Vec<f32> = values(2, 2 * 36).iter().map(|v| v * 2.0).collect();
        for training in [true, false] {
            let mut m = Sequential::new([1, 6, 6], &specs, 4).unwrap();
            if !training {
                m.eval();
            }
            let mut grad = |x: &[f32], accum: Accum| {
                let y = m.forward(x, 2).unwrap().to_vec();
                let mut d = vec![0.0; y.len()];
                cross_entropy_loss(2, &y, &[0, 1], 0.0, Some(&mut d)).unwrap();
                m.backward(x, &d, accum).unwrap();
                m.grads().to_vec()
            };
            // Training mode updates running statistics between passes: compare the sum with
            // the same sequence of passes.
            let g1 = grad(&x1, Accum::Replace);
            let g2 = grad(&x2, Accum::Replace);
            let _ = grad(&x1, Accum::Replace);
            let sum = grad(&x2, Accum::Add);
            for (i, ((a, b), s)) in g1.iter().zip(&g2).zip(&sum).enumerate() {
                assert!(
                    (a + b - s).abs() <= 1e-5 * (1.0 + s.abs()),
                    "{arch} (training {training}): parameter {i}: {a} + {b} != {s}"
                );
            }
        }
    }
}

/// Max-pool layers keep their indices in evaluation mode: the input gradient of an
/// evaluation-mode network (what stability analysis differentiates) is that of its own forward
/// pass, not of an earlier training-mode one.
#[test]
fn eval_mode_input_gradients_through_max_pooling_follow_the_eval_forward_pass() {
    let specs = LayerSpec::parse_list("conv(3,3,p=1),tanh,maxpool(2),flatten,dense(2)").unwrap();
    let mut m = Sequential::new([1, 8, 8], &specs, 1).unwrap();
    let (x1, x2) = (values(1, 64), values(2, 64));
    let grad = |m: &mut Sequential, x: &[f32]| {
        let y = m.forward(x, 1).unwrap().to_vec();
        let mut dx = vec![0.0; 64];
        m.input_gradient(x, &y, &mut dx, None).unwrap();
        dx
    };
    let train = grad(&mut m, &x2);
    grad(&mut m, &x1);
    m.eval();
    // No batch norm or dropout: the evaluation-mode network is the same function.
    assert_eq!(grad(&mut m, &x2), train);
}

/// A backward pass at another input than the last forward pass's (another forward ran in
/// between, or the buffer changed) is an error naming it, not the gradient at the wrong point;
/// at the same input again it gives the gradient of a fresh forward pass there.
#[test]
fn differentiating_at_an_input_other_than_the_last_forward_is_refused() {
    let specs = LayerSpec::parse_list("conv(4,3,p=1),relu,flatten,dense(3)").unwrap();
    let mut m = Sequential::new([1, 6, 6], &specs, 0).unwrap();
    let (x1, x2) = (values(1, 2 * 36), values(2, 2 * 36));
    let dout = values(3, 2 * 3);
    let mut at_x1 = vec![0.0; x1.len()];
    m.forward(&x1, 2).unwrap();
    m.input_gradient(&x1, &dout, &mut at_x1, None).unwrap();
    m.forward(&x2, 2).unwrap();
    let mut dx = vec![0.0; x1.len()];
    let err = m
        .input_gradient(&x1, &dout, &mut dx, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the input of the last forward pass"),
        "{err}"
    );
    let err = m
        .backward(&x1, &dout, Accum::Replace)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the input of the last forward pass"),
        "{err}"
    );
    // The same buffer changed in place is another input too.
    let mut x3 = x2.clone();
    m.forward(&x3, 2).unwrap();
    x3[5] += 1.0;
    assert!(m.input_gradient(&x3, &dout, &mut dx, None).is_err());
    // After a forward pass at x1 again: the gradient at x1.
    m.forward(&x1, 2).unwrap();
    m.input_gradient(&x1, &dout, &mut dx, None).unwrap();
    assert_eq!(dx, at_x1);
}

/// `res(...)` takes `bn`'s `eps` and `momentum` for its batch norms (all three, the projection's
/// too), prints them back, and keeps PyTorch's defaults when they are not given.
#[test]
fn residual_blocks_take_the_batch_norm_options() {
    let specs =
        LayerSpec::parse_list("res(4,s=2,eps=0.001,momentum=1.0),flatten,dense(2)").unwrap();
    assert_eq!(
        LayerSpec::list_to_string(&specs),
        "res(4,s=2,eps=0.001,momentum=1.0),flatten,dense(2)"
    );
    let none = LayerSpec::parse_list("res(4,momentum=none)").unwrap();
    assert_eq!(LayerSpec::list_to_string(&none), "res(4,momentum=none)");
    assert_eq!(
        LayerSpec::list_to_string(&LayerSpec::parse_list("res(4)").unwrap()),
        "res(4)"
    );
    assert!(LayerSpec::parse_list("res(4,momentum=fast)").is_err());
    // Momentum 1 makes each running mean the batch mean; the default 0.1 a tenth of it.
    let running_means = |arch: &str| {
        let specs = LayerSpec::parse_list(arch).unwrap();
        let mut m = Sequential::new([3, 6, 6], &specs, 5).unwrap();
        m.forward(&values(9, 4 * 108), 4).unwrap();
        m.state_dict()
            .into_iter()
            .filter(|(k, _)| k.ends_with("running_mean"))
            .map(|(k, t)| match t.data {
                cnnkit::TensorData::F32(v) => (k, v),
                _ => unreachable!(),
            })
            .collect::<Vec<_>>()
    };
    let one = running_means("res(4,s=2,momentum=1.0),flatten,dense(2)");
    let tenth = running_means("res(4,s=2),flatten,dense(2)");
    assert_eq!(one.len(), 3, "bn1, bn2 and the projection's: {one:?}");
    for ((k, a), (_, b)) in one.iter().zip(&tenth) {
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - 10.0 * y).abs() <= 1e-5 * x.abs().max(1e-3),
                "{k}: {x} vs 10·{y}"
            );
        }
    }
    // A large eps shrinks the normalised values: another output.
    let out = |arch: &str| {
        let specs = LayerSpec::parse_list(arch).unwrap();
        let mut m = Sequential::new([3, 6, 6], &specs, 5).unwrap();
        m.forward(&values(9, 4 * 108), 4).unwrap().to_vec()
    };
    assert_ne!(
        out("res(4,eps=100.0),flatten,dense(2)"),
        out("res(4),flatten,dense(2)")
    );
}

/// `state_dict()` goes straight back into `load_state_dict` (one type both ways); a batch norm's
/// `num_batches_tracked` may be missing (PyTorch before 0.4.1 wrote none), any other tensor not.
#[test]
fn a_state_dict_loads_back_as_it_is_and_without_num_batches_tracked() {
    let specs = LayerSpec::parse_list("conv(2,3),bn,relu,res(2),flatten,dense(2)").unwrap();
    let mut a = Sequential::new([1, 6, 6], &specs, 1).unwrap();
    a.forward(&values(4, 3 * 36), 3).unwrap(); // running statistics and counts move
    let mut b = Sequential::new([1, 6, 6], &specs, 2).unwrap();
    b.load_state_dict(&a.state_dict()).unwrap();
    assert_eq!(a.state_dict(), b.state_dict());
    let without: Vec<_> = a
        .state_dict()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    assert!(without.len() < a.state_dict().len());
    let mut c = Sequential::new([1, 6, 6], &specs, 3).unwrap();
    c.load_state_dict(&without).unwrap();
    assert_eq!(c.params(), a.params());
    let map: std::collections::HashMap<_, _> = without
        .iter()
        .filter(|(k, _)| k != "1.running_mean")
        .cloned()
        .collect();
    let err = c.load_state_dict(&map).unwrap_err().to_string();
    assert!(err.contains("missing tensor 1.running_mean"), "{err}");
}

/// Parameters, their gradients and the buffers by name: the parameters and buffers together are
/// the state dict, the gradients follow the parameters' names and order, and running statistics
/// are told from parameters without knowing their names.
#[test]
fn parameters_gradients_and_buffers_by_name() {
    let specs = LayerSpec::parse_list("conv(2,3),bn,relu,flatten,dense(3)").unwrap();
    let mut m = Sequential::new([1, 5, 5], &specs, 4).unwrap();
    let x = values(1, 2 * 25);
    let logits = m.forward(&x, 2).unwrap().to_vec();
    let mut d = vec![0.0; logits.len()];
    cross_entropy_loss(3, &logits, &[0, 2], 0.0, Some(&mut d)).unwrap();
    m.backward(&x, &d, Accum::Replace).unwrap();
    let params: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        params,
        [
            "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"
        ]
    );
    let buffers: Vec<String> = m.named_buffers().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        buffers,
        ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    );
    let mut all: Vec<String> = params.iter().chain(&buffers).cloned().collect();
    let mut sd: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    all.sort();
    sd.sort();
    assert_eq!(all, sd);
    // Views into the flat buffers, in order.
    let flat_p: Vec<f32> = m
        .named_parameters()
        .iter()
        .flat_map(|(_, v)| v.to_vec())
        .collect();
    let flat_g: Vec<f32> = m
        .named_grads()
        .iter()
        .flat_map(|(_, v)| v.to_vec())
        .collect();
    assert_eq!(flat_p, m.params());
    assert_eq!(flat_g, m.grads());
    let grads = m.named_grads();
    let (name, dense_bias_grad) = &grads[5];
    assert_eq!(name, "4.bias");
    // The dense bias gradient is the sum over the batch of the mean loss's logit gradients.
    for (k, g) in dense_bias_grad.iter().enumerate() {
        assert!((g - (d[k] + d[3 + k])).abs() < 1e-6, "{k}: {g}");
    }
}
