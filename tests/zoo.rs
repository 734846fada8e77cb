//! The model zoo against torchvision: state-dict names and shapes (both ways: every tensor of
//! one is a tensor of the other, of the same shape), parameter counts of the published
//! networks, and the outputs, loss and gradients of the same weights on the same inputs
//! (`tests/fixtures/gen_zoo.py` wrote the fixtures with torchvision).

use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::{Model, zoo};
use cnnkit::{Tensor, TensorData};
use std::collections::HashMap;

struct Pass {
    logits: Vec<f64>,
    loss: f64,
    grads: Vec<(String, f64, f64)>,
    input: (f64, f64),
}

struct Fixture {
    tensors: Vec<(String, Vec<usize>)>,
    passes: Vec<(bool, Pass)>,
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/zoo/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut f = Fixture {
        tensors: Vec::new(),
        passes: Vec::new(),
    };
    let num = |s: &str| s.parse::<f64>().unwrap();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[0] {
            "tensor" => f.tensors.push((
                w[1].into(),
                w[2..].iter().map(|d| d.parse().unwrap()).collect(),
            )),
            "mode" => f.passes.push((
                w[1] == "train",
                Pass {
                    logits: Vec::new(),
                    loss: 0.0,
                    grads: Vec::new(),
                    input: (0.0, 0.0),
                },
            )),
            "logits" => {
                f.passes.last_mut().unwrap().1.logits = w[1..].iter().map(|s| num(s)).collect()
            }
            "loss" => f.passes.last_mut().unwrap().1.loss = num(w[1]),
            "grad" => {
                f.passes
                    .last_mut()
                    .unwrap()
                    .1
                    .grads
                    .push((w[1].into(), num(w[2]), num(w[3])))
            }
            "input" => f.passes.last_mut().unwrap().1.input = (num(w[1]), num(w[2])),
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
            let s = (0.37 * i as f64 + 1.3 * t as f64).sin();
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

fn stats(v: &[f32]) -> (f64, f64) {
    v.iter().fold((0.0, 0.0), |(s, q), &x| {
        (s + x as f64, q + (x as f64).powi(2))
    })
}

fn check_model(name: &str) {
    let f = fixture(name);
    let mut m = zoo::build(name, [1, 32, 32], 3).unwrap().build(0).unwrap();
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
    for (train, want) in &f.passes {
        m.load_state_dict(&sd).unwrap();
        if *train {
            m.train();
        } else {
            m.eval();
        }
        let x: Vec<f32> = (0..2 * 32 * 32)
            .map(|i| (0.1 * i as f64).sin() as f32)
            .collect();
        let y = m.forward(&x, 2).unwrap().to_vec();
        let scale = want.logits.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        for (a, b) in y.iter().zip(&want.logits) {
            assert!(
                (*a as f64 - b).abs() <= 2e-4 * scale,
                "{name} (train {train}): logits {y:?} vs {:?}",
                want.logits
            );
        }
        let mut d = vec![0.0; y.len()];
        let loss = cross_entropy_loss(3, &y, &[0, 2], 0.0, Some(&mut d)).unwrap();
        assert!(
            (loss as f64 - want.loss).abs() <= 2e-4 * (1.0 + want.loss),
            "{name}: loss"
        );
        let mut dx = vec![0.0; x.len()];
        m.input_gradient(&x, &d, &mut dx, Some(Accum::Replace))
            .unwrap();
        let grads: HashMap<String, Vec<f32>> = m
            .named_grads()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        // Sums may cancel: compare against the gradient's size (√ of its sum of squares).
        let close = |name_k: &str, (s, q): (f64, f64), (ws, wq): (f64, f64)| {
            let size = wq.sqrt() * 1e-3 + 1e-7;
            assert!(
                (s - ws).abs() <= size && (q - wq).abs() <= 2e-3 * wq + 1e-12,
                "{name} (train {train}): {name_k}: sum {s} vs {ws}, squares {q} vs {wq}"
            );
        };
        for (k, ws, wq) in &want.grads {
            close(k, stats(&grads[k]), (*ws, *wq));
        }
        close("input", stats(&dx), want.input);
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
