//! Residual blocks against PyTorch: a network of torchvision `BasicBlock`s (identity and
//! projection shortcuts) loaded from PyTorch's state dict gives PyTorch's training-mode logits,
//! loss, every parameter gradient, the input gradient, the running statistics and eval-mode
//! logits (`tests/fixtures/gen_resnet.py`). Finite-difference checks of the block are in
//! tests/model.rs (random networks) and tests/layers_public.rs.

use cnnkit::checkpoint::{self, CheckpointLimits};
use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::{LayerSpec, Sequential, TensorData};
use std::collections::HashMap;
use std::path::Path;

fn f32s(t: &cnnkit::Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        TensorData::I64(_) => panic!("expected f32"),
    }
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: cnnkit {g}, PyTorch {w}"
        );
    }
}

#[test]
fn residual_network_matches_pytorch_forward_backward_and_statistics() {
    let st = checkpoint::load(
        Path::new("tests/fixtures/resnet_torch.safetensors"),
        CheckpointLimits::default(),
    )
    .unwrap();
    // The fixture's network spells `gap` as one module (index 6), so its dense layer is module
    // 7; spelled naturally, `AdaptiveAvgPool2d(1), Flatten()` are modules 6 and 7 and the dense
    // layer is 8, as cnnkit names it: the same network, its indices past 6 one higher.
    let natural = |k: &str| -> String {
        let (prefix, rest) = k.split_once('.').unwrap_or(("", k));
        match rest.split_once('.') {
            Some((i, tail)) if i.parse::<usize>().is_ok_and(|i| i > 6) => {
                format!("{prefix}.{}.{tail}", i.parse::<usize>().unwrap() + 1)
            }
            _ => k.to_string(),
        }
    };
    let renamed: Vec<(String, &cnnkit::Tensor)> =
        st.tensors.iter().map(|(k, t)| (natural(k), t)).collect();
    let get: HashMap<&str, &cnnkit::Tensor> =
        renamed.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    let arch = &st.metadata["arch"];
    let specs = LayerSpec::parse_list(arch).unwrap();
    let mut m = Sequential::new([2, 9, 9], &specs, 0).unwrap();
    let sd: HashMap<String, cnnkit::Tensor> = renamed
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("model.")?.to_string(), (*t).clone())))
        .collect();
    // Names and shapes as PyTorch's state dict: the load refuses any difference.
    m.load_state_dict(&sd).unwrap();
    assert!(sd.contains_key("4.downsample.0.weight") && !sd.contains_key("3.downsample.0.weight"));
    assert!(sd.contains_key("8.weight") && !sd.contains_key("7.weight"));

    let x = f32s(get["x"]);
    let labels: Vec<u32> = f32s(get["labels"]).iter().map(|&v| v as u32).collect();
    let n = labels.len();
    m.train();
    let logits = m.forward(x, n).unwrap().to_vec();
    close("logits", &logits, f32s(get["logits"]), 1e-5);
    let mut d = vec![0.0; logits.len()];
    let loss = cross_entropy_loss(3, &logits, &labels, 0.0, Some(&mut d)).unwrap();
    close("loss", &[loss], f32s(get["loss"]), 1e-6);
    let mut dx = vec![0.0; x.len()];
    m.input_gradient(x, &d, &mut dx, Some(Accum::Replace))
        .unwrap();
    close("dx", &dx, f32s(get["dx"]), 1e-4);
    // Parameter gradients: the flat buffer follows the state dict's parameter order.
    let mut at = 0;
    let mut seen = 0;
    for (name, t) in m.state_dict() {
        let len = match &t.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(_) => continue,
        };
        if let Some(g) = get.get(format!("grad.{name}").as_str()) {
            close(
                &format!("grad {name}"),
                &m.grads()[at..at + len],
                f32s(g),
                1e-4,
            );
            at += len;
            seen += 1;
        } else {
            let after = get[format!("after.{name}").as_str()];
            close(
                &format!("{name} after the step"),
                f32s(&t),
                f32s(after),
                1e-5,
            );
        }
    }
    assert_eq!(at, m.param_count());
    assert_eq!(
        seen,
        st.tensors
            .iter()
            .filter(|(k, _)| k.starts_with("grad."))
            .count()
    );
    m.eval();
    let eval = m.forward(x, n).unwrap();
    close("eval logits", eval, f32s(get["eval_logits"]), 1e-5);
}

#[test]
fn residual_blocks_check_their_arguments() {
    for (arch, needle) in [
        ("res(0)", "at least 1"),
        ("res(4,s=0)", "at least 1"),
        ("res(4,s=2,x=1)", "unknown argument"),
    ] {
        let e = LayerSpec::parse_list(arch)
            .and_then(|s| Sequential::new([1, 8, 8], &s, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{arch}: {e}");
    }
    // A block on a 1x1 image still works (3x3 convolutions are padded).
    let specs = LayerSpec::parse_list("res(2,s=2),gap,dense(2)").unwrap();
    let mut m = Sequential::new([1, 1, 1], &specs, 0).unwrap();
    assert_eq!(m.forward(&[0.5, -0.5], 2).unwrap().len(), 4);
}
