//! The model zoo against torchvision: state-dict names and shapes (both ways: every tensor of
//! one is a tensor of the other, of the same shape), parameter counts of the published
//! networks, and, for the same weights on the same inputs, in evaluation and in training mode,
//! the outputs, loss, every parameter gradient and the input gradient, then one Adam step and
//! the outputs after it (`tests/fixtures/gen_zoo.py` wrote the fixtures with torchvision, in
//! float64, with PyTorch float32's distance from them, which sets each bound).

mod common;

use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::optim::{AdamConfig, Optimizer, OptimizerKind, SgdConfig};
use cnnkit::{Model, zoo};
use cnnkit::{Tensor, TensorData};
use common::hashed;
use std::collections::HashMap;

/// A reference value (float64 PyTorch) and PyTorch's own float32 distance from it.
#[derive(Clone, Copy, Default)]
struct Stats {
    sum: f64,
    squares: f64,
    /// ‖PyTorch f32 − PyTorch f64‖ of the tensor.
    err: f64,
}

#[derive(Default)]
struct Pass {
    train: bool,
    /// PyTorch f32's largest logit error, and the float64 logits.
    logits: (f64, Vec<f64>),
    loss: (f64, f64),
    grads: Vec<(String, Stats)>,
    input: Stats,
}

#[derive(Default)]
struct Fixture {
    tensors: Vec<(String, Vec<usize>)>,
    passes: Vec<Pass>,
    /// Adam's learning rate and weight decay, each parameter's update, the logits after it.
    adam: (f32, f32),
    steps: Vec<(String, Stats)>,
    after: (f64, Vec<f64>),
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/zoo/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut f = Fixture::default();
    let num = |s: &str| s.parse::<f64>().unwrap();
    let stats = |w: &[&str]| Stats {
        sum: num(w[0]),
        squares: num(w[1]),
        err: num(w[2]),
    };
    let logits = |w: &[&str]| (num(w[0]), w[1..].iter().map(|s| num(s)).collect());
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[0] {
            "tensor" => f.tensors.push((
                w[1].into(),
                w[2..].iter().map(|d| d.parse().unwrap()).collect(),
            )),
            "mode" => f.passes.push(Pass {
                train: w[1] == "train",
                ..Pass::default()
            }),
            "logits" => f.passes.last_mut().unwrap().logits = logits(&w[1..]),
            "loss" => f.passes.last_mut().unwrap().loss = (num(w[1]), num(w[2])),
            "grad" => {
                let s = stats(&w[2..]);
                f.passes.last_mut().unwrap().grads.push((w[1].into(), s))
            }
            "input" => f.passes.last_mut().unwrap().input = stats(&w[1..]),
            "adam" => f.adam = (num(w[2]) as f32, num(w[4]) as f32),
            "step" => f.steps.push((w[1].into(), stats(&w[2..]))),
            "after" => f.after = logits(&w[1..]),
            _ => {}
        }
    }
    f
}

/// The fixture's formula for tensor `t` (in torchvision's order) named `name`.
fn filled(t: usize, name: &str, shape: &[usize]) -> Tensor {
    let m: usize = shape.iter().product();
    if name.ends_with("num_batches_tracked") {
        return Tensor {
            shape: shape.to_vec(),
            data: TensorData::I64(vec![0; m]),
        };
    }
    let v: Vec<f32> = (0..m)
        .map(|i| {
            let s = hashed(t as u64, i as u64);
            let x = if name.ends_with("running_var") {
                1.0 + 0.2 * s.abs()
            } else if name.ends_with("running_mean") {
                0.1 * s
            } else if shape.len() >= 2 {
                s * (3.0 / (m / shape[0]) as f64).sqrt()
            } else if name.ends_with("bias") {
                0.1 * s
            } else {
                1.0 + 0.1 * s
            };
            x as f32
        })
        .collect();
    Tensor {
        shape: shape.to_vec(),
        data: TensorData::F32(v),
    }
}

/// How far cnnkit may be from the float64 reference: `FACTOR` times PyTorch float32's own
/// distance, plus a floor relative to the quantity's size (two float32 programs that sum in
/// different orders differ by a few times the rounding of the sums, in either direction);
/// ten times that with Winograd F(4×4) forced (`common::wino_scale`).
const FACTOR: f64 = 4.0;
const FLOOR: f64 = 2e-5;

/// The tensor `v` against the reference `want`: the sum of squares within `2‖v‖·T + T²` and
/// the sum within `√n·T + slack` (both follow from ‖v − ref‖ ≤ T), with
/// `T = FACTOR·err + FLOOR·‖ref‖`. `Err` says by how much it missed (the larger of the two
/// misses, as a multiple of its bound).
fn close(v: &[f32], want: Stats, slack: f64) -> Result<(), (f64, String)> {
    let (s, q) = v.iter().fold((0.0, 0.0), |(s, q), &x| {
        (s + x as f64, q + (x as f64).powi(2))
    });
    let norm = want.squares.sqrt();
    let t = (FACTOR * want.err + FLOOR * norm) * common::wino_scale() as f64 + 1e-9;
    let miss = ((q - want.squares).abs() / (2.0 * norm * t + t * t))
        .max((s - want.sum).abs() / ((v.len() as f64).sqrt() * t + slack));
    if miss <= 1.0 {
        return Ok(());
    }
    Err((
        miss,
        format!(
            "sum {s:e} vs {:e}, squares {q:e} vs {:e} (PyTorch f32 is {:e} from it): {miss:.1}x the bound",
            want.sum, want.squares, want.err
        ),
    ))
}

/// Every tensor of `got` (by name) against the reference, allowing `flips` of them to miss by
/// up to 100x their bound (see the training pass in [`check_model`]).
fn close_all(
    what: &str,
    got: &HashMap<String, Vec<f32>>,
    want: &[(String, Stats)],
    slack: f64,
    flips: usize,
) {
    assert_eq!(got.len(), want.len(), "{what}: parameter count");
    let mut missed = Vec::new();
    for (k, s) in want {
        if let Err((miss, msg)) = close(&got[k], *s, slack) {
            missed.push(format!("{k}: {msg}"));
            assert!(miss <= 100.0, "{what}: {k}: {msg}");
        }
    }
    assert!(
        missed.len() <= flips,
        "{what}: {} tensors miss their bound (at most {flips} may):\n{}",
        missed.len(),
        missed.join("\n")
    );
}

fn close_logits(what: &str, y: &[f32], (err, want): &(f64, Vec<f64>)) {
    let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    for (a, b) in y.iter().zip(want) {
        assert!(
            (*a as f64 - b).abs() <= (FACTOR * err + FLOOR * scale) * common::wino_scale() as f64,
            "{what}: logits {y:?} vs {want:?} (PyTorch f32 is {err:e} from it)"
        );
    }
}

/// The architecture text with every dropout and stochastic depth at 0 (the fixture's training
/// pass turns off the only random layers, whose masks no two programs draw alike).
fn without_dropout(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = ["dropout(", "stochastic_depth("]
        .iter()
        .filter_map(|k| rest.find(k).map(|i| i + k.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push('0');
        rest = &rest[at + rest[at..].find(')').unwrap()..];
    }
    out + rest
}

/// The model of `tests/fixtures/zoo/NAME.onnx` (torchvision's network as `torch.onnx.export`
/// wrote it, see `gen_onnx.py`) with the fixture's weights: the file's initializers point into
/// `NAME.weights`, which is written here from the formula, in torchvision's order.
fn from_onnx(name: &str, f: &Fixture) -> Model {
    let dir = std::env::temp_dir().join(format!("cnnkit-zoo-onnx-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = format!(
        "{}/tests/fixtures/zoo/{name}.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(&src, dir.join(format!("{name}.onnx"))).unwrap();
    let mut bytes = Vec::new();
    for (t, (k, shape)) in f.tensors.iter().enumerate() {
        if let TensorData::F32(v) = filled(t, k, shape).data {
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    std::fs::write(dir.join(format!("{name}.weights")), bytes).unwrap();
    let m = Model::from_onnx(dir.join(format!("{name}.onnx"))).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    m
}

fn check_model(name: &str) {
    check(name, false);
}

/// Checks the zoo's model `name`, or with `onnx` the model read from torchvision's ONNX export
/// (whose weights must then be the file's, and which must train as the zoo's does).
fn check(name: &str, onnx: bool) {
    let f = fixture(name);
    let built = zoo::build(name, [1, 64, 64], 3).unwrap().build(0).unwrap();
    let arch = without_dropout(&built.architecture());
    let mut m = if onnx {
        let mut m = from_onnx(name, &f);
        // Dropout and stochastic depth are not in an evaluation-mode export: training mode is
        // the fixture's (where they are 0) without them.
        assert!(!m.architecture().contains("dropout"), "{name}");
        m.train();
        m
    } else {
        Model::from_text([1, 64, 64], &arch, 0).unwrap()
    };
    // The same names and shapes, both ways.
    let ours: HashMap<String, Vec<usize>> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect();
    let theirs: HashMap<String, Vec<usize>> = f.tensors.iter().cloned().collect();
    for (k, s) in &theirs {
        assert_eq!(ours.get(k), Some(s), "{name}: torchvision's {k}");
    }
    for (k, s) in &ours {
        assert_eq!(theirs.get(k), Some(s), "{name}: cnnkit's {k}");
    }
    let sd: Vec<(String, Tensor)> = f
        .tensors
        .iter()
        .enumerate()
        .map(|(t, (k, s))| (k.clone(), filled(t, k, s)))
        .collect();
    if onnx {
        // The file's weights are the formula's, bit for bit.
        let mut got: HashMap<String, Tensor> = m.state_dict().into_iter().collect();
        for (k, want) in &sd {
            let g = got.remove(k).unwrap();
            if !k.ends_with("num_batches_tracked") {
                assert_eq!(&g, want, "{name}: {k} from the ONNX file");
            }
        }
    } else {
        m.load_state_dict(&sd).unwrap();
    }
    let x: Vec<f32> = (0..2 * 64 * 64)
        .map(|i| hashed(1_000_000, i) as f32)
        .collect();
    for want in &f.passes {
        let train = want.train;
        if train {
            m.train();
        } else {
            m.eval();
        }
        let what = format!("{name} (train {train})");
        let y = m.forward(&x, 2).unwrap().to_vec();
        close_logits(&what, &y, &want.logits);
        let mut d = vec![0.0; y.len()];
        let loss = cross_entropy_loss(3, &y, &[0, 2], 0.0, Some(&mut d)).unwrap();
        assert!(
            (loss as f64 - want.loss.0).abs() <= FACTOR * want.loss.1 + FLOOR,
            "{what}: loss {loss} vs {}",
            want.loss.0
        );
        let mut dx = vec![0.0; x.len()];
        m.input_gradient(&x, &d, &mut dx, Some(Accum::Replace))
            .unwrap();
        let grads: HashMap<String, Vec<f32>> = m
            .named_grads()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        // In training mode a few tensors may miss, for a reason that is not an error: a ReLU
        // whose input lies within float32 rounding of 0 takes either branch in two float32
        // programs (DenseNet-121's nearest is 1.2e-7 of the largest input of its unit, ResNet-50's
        // 5e-8), and the gradient of the tensor just before it then differs by that one element's
        // upstream gradient. Evaluation mode is held to every bound.
        let flips = if train {
            2.max(want.grads.len() / 100)
        } else {
            0
        };
        close_all(&what, &grads, &want.grads, 0.0, flips);
        if let Err((_, msg)) = close(&dx, want.input, 0.0) {
            panic!("{what}: input gradient: {msg}");
        }
    }
    // One Adam step with the training pass's gradients, then the evaluation-mode logits with
    // the running statistics that pass updated.
    assert!(f.passes.last().unwrap().train);
    let before: HashMap<String, Vec<f32>> = m
        .named_parameters()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    let kind = OptimizerKind::Adam(AdamConfig {
        lr: f.adam.0,
        weight_decay: f.adam.1,
        ..AdamConfig::default()
    });
    let mut opt = Optimizer::new(kind, m.param_count()).unwrap();
    let (p, g) = m.params_and_grads();
    opt.step(p, g).unwrap();
    let after: HashMap<String, Vec<f32>> = m
        .named_parameters()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    let delta: HashMap<String, Vec<f32>> = after
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                a.iter().zip(&before[k]).map(|(a, b)| a - b).collect(),
            )
        })
        .collect();
    // Adam's first update is `lr·g/(|g| + eps)`, about `±lr` by the sign of the gradient: an
    // element whose gradient (with the weight decay) is within rounding of 0 may move either way,
    // `2·lr` apart. Three such elements per tensor are allowed in its sum.
    let slack = 6.0 * f.adam.0 as f64;
    close_all(
        &format!("{name}: Adam's update"),
        &delta,
        &f.steps,
        slack,
        0,
    );
    m.eval();
    let y = m.forward(&x, 2).unwrap().to_vec();
    close_logits(&format!("{name} after the Adam step"), &y, &f.after);
}

/// torchvision's networks as `torch.onnx.export` writes them read into cnnkit with
/// torchvision's state-dict names, and give torchvision's outputs, gradients, Adam step and
/// running statistics, to the bounds of the zoo's own tests.
#[test]
fn torchvision_onnx_exports_are_torchvisions() {
    for name in [
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet121",
        "mobilenet_v2",
        "efficientnet_b0",
    ] {
        check(name, true);
    }
}

#[test]
fn resnet18_is_torchvisions() {
    check_model("resnet18");
}

#[test]
fn resnet34_is_torchvisions() {
    check_model("resnet34");
}

#[test]
fn resnet50_is_torchvisions() {
    check_model("resnet50");
}

#[test]
fn densenet121_is_torchvisions() {
    check_model("densenet121");
}

#[test]
fn mobilenet_v2_is_torchvisions() {
    check_model("mobilenet_v2");
}

#[test]
fn efficientnet_b0_is_torchvisions() {
    check_model("efficientnet_b0");
}

/// The published parameter counts (3 input channels, 1000 classes), as torchvision's model
/// documentation lists them.
#[test]
fn the_zoo_has_the_published_parameter_counts() {
    for (name, count) in [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("densenet121", 7_978_856),
        ("mobilenet_v2", 3_504_872),
        ("efficientnet_b0", 5_288_548),
    ] {
        let g = zoo::build(name, [3, 224, 224], 1000).unwrap();
        let m: Model = g.build(0).unwrap();
        assert_eq!(m.param_count(), count, "{name}");
    }
}

/// U-Net: the output has the input's size and the requested channels; gradients agree with
/// finite differences on a small one; bad sizes are errors.
#[test]
fn unet_maps_images_to_images() {
    let mut m = zoo::unet([1, 16, 16], 2, 4, 2).unwrap().build(1).unwrap();
    assert_eq!(m.output_shape(), [2, 16, 16]);
    let names: Vec<String> = m.named_parameters().into_iter().map(|(k, _)| k).collect();
    for k in [
        "enc1.0.weight",
        "bottleneck.2.bias",
        "up2.weight",
        "dec1.2.weight",
        "head.bias",
    ] {
        assert!(names.iter().any(|n| n == k), "{k} in {names:?}");
    }
    // The original width and depth: two 3x3 convolutions per level, 2x2 transposed
    // convolutions up, a 1x1 head, counted from the layout.
    let conv = |i: usize, o: usize, k: usize| i * o * k * k + o;
    let (mut count, mut cin) = (0, 1);
    for l in 0..4 {
        let c = 64 << l;
        count += conv(cin, c, 3) + conv(c, c, 3);
        cin = c;
    }
    count += conv(cin, 1024, 3) + conv(1024, 1024, 3);
    cin = 1024;
    for l in (0..4).rev() {
        let c = 64 << l;
        count += cin * c * 4 + c + conv(2 * c, c, 3) + conv(c, c, 3);
        cin = c;
    }
    count += conv(64, 1, 1);
    let original = zoo::build("unet", [1, 16, 16], 1)
        .unwrap()
        .build(0)
        .unwrap();
    assert_eq!(original.param_count(), count);
    assert_eq!(count, 31_030_593);
    let mut small = zoo::unet([1, 8, 8], 1, 2, 2).unwrap().build(3).unwrap();
    let r = cnnkit::gradcheck::check_model(&mut small, 2, 3).unwrap();
    assert!(r.passed(), "{r}");
    let e = zoo::unet([1, 12, 12], 1, 4, 3).unwrap_err().to_string();
    assert!(e.contains("multiples of 2^depth = 8"), "{e}");
    assert!(zoo::build("vgg99", [1, 8, 8], 2).is_err());
    assert!(zoo::build("resnet18", [1, 32, 32], 0).is_err());
    let y = m.forward(&vec![0.5; 2 * 256], 2).unwrap();
    assert_eq!(y.len(), 2 * 2 * 256);
}

/// Each zoo model's checkpoint, written by cnnkit after a few training steps of its own, loads
/// into torchvision's network of the same name with `load_state_dict(strict=True)` and gives
/// cnnkit's evaluation-mode outputs. Needs python3 with torch, torchvision, safetensors and numpy
/// (see `docs/testing.md`), which the test command does not install, so it runs with
/// `cargo test --test zoo -- --ignored`; a missing module fails it, never passes it.
#[test]
#[ignore = "needs python3 with torch and torchvision: cargo test --test zoo -- --ignored"]
fn cnnkit_zoo_checkpoints_load_into_torchvision() {
    let dir = std::env::temp_dir().join(format!("cnnkit-zoo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, h, k) = (3, 64, 5);
    for (name, _) in zoo::MODELS.iter().filter(|(n, _)| *n != "unet") {
        let mut m = zoo::build(name, [c, h, h], k).unwrap().build(7).unwrap();
        let x: Vec<f32> = (0..2 * c * h * h)
            .map(|i| hashed(99, i as u64) as f32)
            .collect();
        // Two SGD steps make the weights and the running statistics cnnkit's own.
        let sgd = OptimizerKind::Sgd(SgdConfig {
            lr: 1e-3,
            ..SgdConfig::default()
        });
        let mut opt = Optimizer::new(sgd, m.param_count()).unwrap();
        for _ in 0..2 {
            let y = m.forward(&x, 2).unwrap().to_vec();
            let mut d = vec![0.0; y.len()];
            cross_entropy_loss(k, &y, &[1, 3], 0.0, Some(&mut d)).unwrap();
            m.backward(&x, &d, Accum::Replace).unwrap();
            let (p, g) = m.params_and_grads();
            opt.step(p, g).unwrap();
        }
        m.eval();
        let y = m.forward(&x, 2).unwrap().to_vec();
        assert!(y.iter().all(|v| v.is_finite()), "{name}: {y:?}");
        let path = dir.join(format!("{name}.safetensors"));
        m.save(&path, &Default::default()).unwrap();
        let raw = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(dir.join("x.f32"), raw(&x)).unwrap();
        std::fs::write(dir.join("y.f32"), raw(&y)).unwrap();
        let out = std::process::Command::new("python3")
            .arg("tests/fixtures/check_zoo_in_torchvision.py")
            .arg(name)
            .args([c, h, h, k].map(|v| v.to_string()))
            .arg(&path)
            .args([dir.join("x.f32"), dir.join("y.f32")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Inference of every zoo model gives the forward pass's outputs — bit for bit without fusion,
/// within the rounding of folding each batch norm into its convolution's weights with it — for
/// one image and for a batch, after the batch norms' running statistics moved away from their
/// initial values; for one image, DenseNet's and U-Net's concatenations copy nothing (every
/// input is written into its slice), for a batch DenseNet's copy nothing (stacked, read by batch
/// norms) and U-Net's do (read by convolutions), and the buffer is a fraction of what training
/// keeps.
#[test]
fn zoo_inference_is_the_forward_pass_without_copies() {
    let mut models: Vec<(&str, Model)> = zoo::MODELS
        .iter()
        .filter(|(n, _)| *n != "unet")
        .map(|(n, _)| (*n, zoo::build(n, [1, 32, 32], 3).unwrap().build(1).unwrap()))
        .collect();
    models.push((
        "unet",
        zoo::unet([1, 32, 32], 1, 8, 3).unwrap().build(1).unwrap(),
    ));
    for (name, mut m) in models {
        // Running statistics of a few training batches (not PyTorch's initial 0 and 1).
        let xs: Vec<f32> = (0..4 * 32 * 32)
            .map(|i| 0.5 + 2.0 * hashed(9, i as u64) as f32)
            .collect();
        for _ in 0..3 {
            m.forward(&xs, 4).unwrap();
        }
        m.eval();
        for n in [1, 2] {
            let x: Vec<f32> = (0..n * 32 * 32)
                .map(|i| hashed(5, i as u64) as f32)
                .collect();
            for fused in [false, true] {
                m.set_fusion(fused);
                let y = m.forward(&x, n).unwrap().to_vec();
                let z = m.infer(&x, n).unwrap();
                if !fused {
                    assert!(
                        y.iter().zip(z).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name}, batch {n}"
                    );
                    continue;
                }
                let scale = y.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let err = y
                    .iter()
                    .zip(z)
                    .fold(0.0f32, |a, (p, q)| a.max((p - q).abs()));
                assert!(err <= 1e-5 * scale, "{name}, batch {n}: {err} of {scale}");
            }
        }
        let mem = m.activation_memory(1);
        assert!(mem.inference * 2 <= mem.training, "{name}: {mem:?}");
        if name == "densenet121" || name == "unet" {
            assert_eq!(mem.copied, 0, "{name}");
            let batch = m.activation_memory(2).copied;
            assert_eq!(
                batch == 0,
                name == "densenet121",
                "{name}: {batch} bytes copied"
            );
        }
    }
}

/// Training keeps one copy of each DenseNet block's feature maps: every concatenation's inputs
/// are written straight into the block's output (the layers' inputs are views of it), so what
/// the forward pass keeps is every other output, and no concatenation's — against the copies,
/// which keep each concatenation too. U-Net's concatenations (read by convolutions) copy.
#[test]
fn densenet_training_keeps_each_blocks_feature_maps_once() {
    let n = 2;
    for name in ["densenet121", "unet"] {
        let mut m = zoo::build(name, [1, 32, 32], 3).unwrap().build(0).unwrap();
        let names = m.node_names();
        let fused = m.fused_layers();
        let size = |keep: &dyn Fn(usize) -> bool| -> usize {
            (0..names.len())
                .filter(|&i| !fused.contains(&i) && keep(i))
                .map(|i| m.layer_shapes()[i].iter().product::<usize>())
                .sum::<usize>()
                * n
                * 4
        };
        let is_cat = |i: usize| m.architecture().contains(&format!("{} = cat(", names[i]));
        let cats = (0..names.len()).filter(|&i| is_cat(i)).count();
        let (all, without_cats) = (size(&|_| true), size(&|i| !is_cat(i)));
        assert!(cats >= 4, "{name}: {cats} concatenations");
        let kept = m.activation_memory(n).training;
        if name == "densenet121" {
            assert_eq!(kept, without_cats, "{name}");
        } else {
            assert_eq!(kept, all, "{name}");
        }
        m.set_stacking(false);
        assert_eq!(m.activation_memory(n).training, all, "{name}");
    }
}
