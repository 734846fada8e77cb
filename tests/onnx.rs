//! ONNX: files written by `torch.onnx.export` give PyTorch's outputs and gradients in cnnkit;
//! cnnkit's files give cnnkit's outputs in onnxruntime and read back bit for bit; hostile files
//! are refused with the reason. Fixtures: tests/fixtures/gen_onnx.py.

mod common;

use cnnkit::kernels::Accum;
use cnnkit::onnx::{self, ExportOptions, ImportOptions, Limits};
use cnnkit::{GraphBuilder, LayerSpec, Model, Sequential};
use common::{TempDir, hashed};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

/// A fixture's expectations: input shape, float64 outputs with PyTorch float32's largest
/// error, onnxruntime's outputs, and (sum, sum of squares, f32 error) of each gradient.
struct Expect {
    input: [usize; 3],
    err: f64,
    output: Vec<f64>,
    ort: Vec<f64>,
    grads: Vec<(String, [f64; 3])>,
    dinput: [f64; 3],
}

fn expect(name: &str) -> Expect {
    let text = std::fs::read_to_string(dir().join(format!("{name}.txt"))).unwrap();
    let mut e = Expect {
        input: [0; 3],
        err: 0.0,
        output: Vec::new(),
        ort: Vec::new(),
        grads: Vec::new(),
        dinput: [0.0; 3],
    };
    let nums = |w: &[&str]| -> Vec<f64> { w.iter().map(|s| s.parse().unwrap()).collect() };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[0] {
            "input" => e.input = [w[1], w[2], w[3]].map(|s| s.parse().unwrap()),
            "output" => {
                let v = nums(&w[1..]);
                e.err = v[0];
                e.output = v[1..].to_vec();
            }
            "onnxruntime" => e.ort = nums(&w[1..]),
            "grad" => {
                let v = nums(&w[2..]);
                e.grads.push((w[1].to_owned(), [v[0], v[1], v[2]]));
            }
            "dinput" => {
                let v = nums(&w[1..]);
                e.dinput = [v[0], v[1], v[2]];
            }
            _ => {}
        }
    }
    e
}

const SMALL: [&str; 11] = [
    "convnet",
    "convnet13",
    "mobile",
    "unet",
    "matmul",
    "gelu20",
    "folded",
    "convnet_dynamo",
    "unet_dynamo",
    "matmul_dynamo",
    "folded_dynamo",
];

fn input_for(shape: [usize; 3], n: usize) -> Vec<f32> {
    (0..n * shape.iter().product::<usize>())
        .map(|i| hashed(1_000_000, i as u64) as f32)
        .collect()
}

/// `v` against the reference statistics: ‖v − ref‖ ≤ T gives |Σv − Σref| ≤ √n·T and
/// |Σv² − Σref²| ≤ 2‖v‖·T + T², with T four times PyTorch float32's error plus 2e-5 of the
/// norm (the bound tests/zoo.rs uses).
fn check_stats(what: &str, v: &[f32], [sum, squares, err]: [f64; 3]) {
    let norm = squares.sqrt();
    let t = 4.0 * err + 2e-5 * norm + 1e-7;
    let s: f64 = v.iter().map(|&x| x as f64).sum();
    let q: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
    let n = v.len() as f64;
    assert!(
        (s - sum).abs() <= n.sqrt() * t,
        "{what}: sum {s} vs {sum} (bound {})",
        n.sqrt() * t
    );
    assert!(
        (q - squares).abs() <= 2.0 * q.sqrt() * t + t * t,
        "{what}: sum of squares {q} vs {squares}"
    );
}

/// Every small network, as `torch.onnx.export` wrote it, gives PyTorch's float64 outputs (within
/// four times PyTorch float32's own error), onnxruntime's outputs on the same file, and
/// PyTorch's gradients of every parameter (by PyTorch's names) and of the input.
#[test]
fn pytorch_exports_give_pytorchs_outputs_and_gradients() {
    for name in SMALL {
        let e = expect(name);
        let im = onnx::read(
            dir().join(format!("{name}.onnx")),
            &ImportOptions::default(),
        )
        .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(im.input_name, "input");
        assert_eq!(im.output_name, "output");
        let mut m = im.model;
        assert!(!m.is_training(), "{name}: imported in evaluation mode");
        let x = input_for(e.input, 2);
        let y = m.forward(&x, 2).unwrap().to_vec();
        assert_eq!(y.len(), e.output.len(), "{name}");
        let scale = e.output.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (i, ((&a, &b), &o)) in y.iter().zip(&e.output).zip(&e.ort).enumerate() {
            let a = a as f64;
            assert!(
                (a - b).abs() <= 4.0 * e.err + 1e-6 * scale.max(1.0),
                "{name}: output {i}: {a} vs PyTorch {b}"
            );
            assert!(
                (a - o).abs() <= 1e-5 * scale.max(1.0),
                "{name}: output {i}: {a} vs onnxruntime {o}"
            );
        }
        // The loss sum(y · r): its gradient at the output is r.
        let r: Vec<f32> = (0..y.len())
            .map(|i| hashed(2_000_000, i as u64) as f32)
            .collect();
        let mut dx = vec![0.0; x.len()];
        m.input_gradient(&x, &r, &mut dx, Some(Accum::Replace))
            .unwrap();
        check_stats(&format!("{name}: input gradient"), &dx, e.dinput);
        if name.starts_with("folded") || name.ends_with("_dynamo") {
            // Batch norm folded into the convolutions (and the newer exporter's own weight
            // names): the weights are not PyTorch's parameters.
            continue;
        }
        let grads: HashMap<String, Vec<f32>> = m
            .named_grads()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        for (k, want) in &e.grads {
            // MatMulNet's own `x @ w + b` (no module, so no name to keep) is the dense node
            // `MatMul` (its weight transposed, which keeps the sums compared).
            let ours = match (name, k.as_str()) {
                ("matmul", "w") => "MatMul.weight",
                ("matmul", "b") => "MatMul.bias",
                _ => k,
            };
            let got = grads
                .get(ours)
                .unwrap_or_else(|| panic!("{name}: no gradient {ours} in {:?}", grads.keys()));
            check_stats(&format!("{name}: gradient of {k}"), got, *want);
        }
    }
}

/// PyTorch's parameter names survive the import where the exporter kept them.
#[test]
fn imported_models_keep_pytorchs_state_dict_names() {
    let m = Model::from_onnx(dir().join("convnet.onnx")).unwrap();
    let names: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    for want in [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.running_mean",
        "bn1.running_var",
        "conv2.weight",
        "conv3.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // ONNX's momentum 0.9 is PyTorch's 0.1.
    assert!(m.specs().contains(&LayerSpec::BatchNorm2d {
        eps: 1e-5,
        momentum: Some(0.1)
    }));
}

/// An imported model trains: one SGD step in training mode lowers the loss, and the batch
/// norm's running statistics move.
#[test]
fn imported_models_fine_tune() {
    let mut m = Model::from_onnx(dir().join("convnet.onnx")).unwrap();
    m.train();
    let x = input_for([3, 16, 16], 4);
    let target: Vec<f32> = (0..20)
        .map(|i| if i % 5 == i / 5 { 1.0 } else { 0.0 })
        .collect();
    let loss = |y: &[f32]| -> f32 { y.iter().zip(&target).map(|(a, b)| (a - b) * (a - b)).sum() };
    let before_stats = m.state_dict();
    let y0 = m.forward(&x, 4).unwrap().to_vec();
    let l0 = loss(&y0);
    let d: Vec<f32> = y0.iter().zip(&target).map(|(a, b)| 2.0 * (a - b)).collect();
    m.backward(&x, &d, Accum::Replace).unwrap();
    let (p, g) = m.params_and_grads();
    p.iter_mut().zip(g).for_each(|(p, g)| *p -= 0.5 * g);
    let l1 = loss(m.forward(&x, 4).unwrap());
    assert!(l1 < l0, "loss {l0} -> {l1}");
    let after = m.state_dict();
    let stat = |sd: &[(String, cnnkit::Tensor)]| {
        sd.iter()
            .find(|(k, _)| k == "bn1.running_mean")
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(stat(&before_stats), stat(&after));
}

/// Models of every exportable layer (chains and graphs, the residual block, layer norm, PReLU,
/// every activation, both upsamplings, uneven-free adaptive pooling, dropout and noise).
fn cnnkit_models() -> Vec<(&'static str, Model)> {
    let chain = |input, text: &str, seed| {
        let mut m = Sequential::new(input, &LayerSpec::parse_list(text).unwrap(), seed).unwrap();
        // Running statistics that are not 0 and 1, so batch norm is not the identity.
        m.train();
        let n = 4;
        let x = input_for(input, n);
        m.forward(&x, n).unwrap();
        m.eval();
        m
    };
    let graph = GraphBuilder::parse(
        [2, 8, 8],
        "stem = conv(8,3,p=1), bn(momentum=0.2), relu
         body = conv(8,3,p=1,bias=false), bn, silu
         sum = add(stem, body)
         gate = sum: adaptive_avgpool(1), conv(4,1), relu, conv(8,1), hardsigmoid
         scaled = mul(gate, sum)
         up = scaled: convt(4,2,s=2), gelu_tanh
         down = up: maxpool(2)
         cat(scaled, down), ln, gap, dense(3), softmax",
    )
    .unwrap()
    .build(5)
    .unwrap();
    let mut graph = graph;
    graph.eval();
    vec![
        (
            "activations",
            chain(
                [1, 6, 6],
                "conv(4,3,p=1),leakyrelu(0.2),conv(4,3,p=1,g=2),elu(0.5),prelu(channels),sigmoid,tanh,softplus,gelu,relu6,hardswish,rrelu,prelu,dropout(0.3),noise(0.1),flatten,dense(5,bias=false)",
                1,
            ),
        ),
        (
            "resnet",
            chain(
                [1, 8, 8],
                "conv(4,3,p=1),bn,relu,res(4),res(8,s=2),gap,dense(3)",
                2,
            ),
        ),
        (
            "pools",
            chain(
                [2, 12, 12],
                "conv(4,3,s=1,p=1,d=1),avgpool(3,s=1,p=1),avgpool(2,count_include_pad=false,p=1),maxpool(3,s=2,p=1),adaptive_avgpool(2),upsample(2),upsample(2,mode=bilinear),upsample(3,mode=bilinear,align_corners=true),conv(2,1),stochastic_depth(0.2),softmax",
                3,
            ),
        ),
        ("graph", graph),
    ]
}

/// cnnkit → ONNX → cnnkit keeps every weight and buffer bit for bit and gives the same outputs.
#[test]
fn round_trip_is_bit_identical() {
    let mut all = cnnkit_models();
    for name in SMALL {
        all.push((
            name,
            Model::from_onnx(dir().join(format!("{name}.onnx"))).unwrap(),
        ));
    }
    for (name, mut m) in all {
        let bytes =
            onnx::to_bytes(&m, &ExportOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut back = onnx::from_bytes(&bytes, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .model;
        // By name: a residual block comes back as its own nodes, whose tensors are ordered
        // node by node.
        let values = |m: &Model| -> BTreeMap<String, Vec<f32>> {
            m.state_dict()
                .into_iter()
                .filter_map(|(k, t)| match t.data {
                    cnnkit::TensorData::F32(v) => Some((k, v)),
                    cnnkit::TensorData::I64(_) => None,
                })
                .collect()
        };
        assert_eq!(values(&back), values(&m), "{name}: weights");
        let x = input_for(m.input_shape(), 3);
        let want = m.forward(&x, 3).unwrap().to_vec();
        let got = back.forward(&x, 3).unwrap().to_vec();
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{name}: {a} vs {b}"
            );
        }
        // Where the layers come back as they were, the bits do too (a residual block and an
        // adaptive pooling come back as their ONNX equivalents, which sum in another order; the
        // evaluation-mode forms of RReLU and noise are a leaky ReLU and nothing).
        if back.specs() == m.specs() {
            assert_eq!(got, want, "{name}: outputs");
        } else {
            assert!(
                ["resnet", "pools", "graph", "activations"].contains(&name),
                "{name}: {:?}",
                back.specs()
            );
        }
    }
}

/// Names from a state dict survive the round trip too.
#[test]
fn round_trip_keeps_names_and_metadata() {
    let (_, m) = cnnkit_models().remove(1);
    let mut meta = BTreeMap::new();
    meta.insert(
        "classes".to_owned(),
        "[\"normal\",\"pneumonia\",\"other\"]".to_owned(),
    );
    let t = TempDir::new("onnx-meta");
    let path = t.0.join("m.onnx");
    onnx::save(
        &m,
        &path,
        &ExportOptions {
            metadata: meta.clone(),
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let im = onnx::read(&path, &ImportOptions::default()).unwrap();
    assert_eq!(im.metadata, meta);
    let names: Vec<String> = im.model.state_dict().into_iter().map(|(k, _)| k).collect();
    assert!(names.iter().any(|n| n == "3.conv1.weight"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "4.downsample.1.running_var"),
        "{names:?}"
    );
}

/// cnnkit's files run in onnxruntime and give cnnkit's outputs (within 1e-5 of the largest).
/// Needs python3 with onnxruntime and numpy, which `.ci/run` installs; elsewhere a missing module
/// skips the test with a note, unless `CI` is set.
#[test]
fn exported_models_give_cnnkits_outputs_in_onnxruntime() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs python3 with onnxruntime and numpy"
        );
        eprintln!("note: python3 with onnxruntime and numpy not found; test skipped");
        return;
    }
    let t = TempDir::new("onnx-ort");
    let mut all = cnnkit_models();
    all.push(("unet_zoo", {
        let mut m = cnnkit::zoo::unet([1, 16, 16], 1, 4, 2)
            .unwrap()
            .build(1)
            .unwrap();
        m.eval();
        m
    }));
    let mut script = String::from("import numpy as np, onnxruntime as ort\nbad = []\n");
    for (name, mut m) in all {
        let path = t.0.join(format!("{name}.onnx"));
        m.save_onnx(&path).unwrap();
        let n = 3;
        let x = input_for(m.input_shape(), n);
        let y = m.forward(&x, n).unwrap().to_vec();
        let raw = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(t.0.join(format!("{name}.x")), raw(&x)).unwrap();
        std::fs::write(t.0.join(format!("{name}.y")), raw(&y)).unwrap();
        let s = m.input_shape();
        script += &format!(
            "s = ort.InferenceSession({p:?}, providers=['CPUExecutionProvider'])\n\
             x = np.fromfile({x:?}, '<f4').reshape({n}, {}, {}, {})\n\
             y = s.run(None, {{'input': x}})[0].ravel()\n\
             w = np.fromfile({yp:?}, '<f4')\n\
             d = np.abs(y - w).max() / max(1.0, np.abs(w).max()) if y.shape == w.shape else 1e9\n\
             print({name:?}, d)\n\
             if d > 1e-5: bad.append({name:?})\n",
            s[0],
            s[1],
            s[2],
            p = path.display().to_string(),
            x = t.0.join(format!("{name}.x")).display().to_string(),
            yp = t.0.join(format!("{name}.y")).display().to_string(),
        );
    }
    script += "assert not bad, bad\n";
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each hostile file is refused with an error naming what is wrong.
#[test]
fn hostile_files_are_refused_with_the_reason() {
    let d = dir().join("hostile");
    let expect = std::fs::read_to_string(d.join("EXPECT.txt")).unwrap();
    let mut seen = 0;
    for line in expect.lines() {
        let (file, words) = line.split_once('\t').unwrap();
        let e = onnx::read(d.join(file), &ImportOptions::default())
            .map(|_| ())
            .expect_err(file)
            .to_string();
        assert!(e.contains(words), "{file}: {e}");
        assert!(e.contains(file), "{file}: the message names the file: {e}");
        seen += 1;
    }
    assert!(seen >= 14);
}

/// External data is read from the model's folder, and a symbolic link that leads out of it is
/// refused like a `..` path.
#[test]
fn external_data_stays_inside_the_models_folder() {
    let t = TempDir::new("onnx-ext");
    let inside = t.0.join("model");
    std::fs::create_dir(&inside).unwrap();
    let src = dir().join("hostile/external_parent.onnx");
    // Rewrite the location "../secret.bin" to a same-length name inside the folder.
    let bytes = std::fs::read(&src).unwrap();
    let at = bytes
        .windows(13)
        .position(|w| w == b"../secret.bin")
        .unwrap();
    let mut good = bytes.clone();
    good[at..at + 13].copy_from_slice(b"weights_1.bin");
    std::fs::write(inside.join("m.onnx"), &good).unwrap();
    let w: Vec<u8> = (0..18)
        .flat_map(|i| (i as f32 * 0.1).to_le_bytes())
        .collect();
    std::fs::write(inside.join("weights_1.bin"), &w).unwrap();
    let m = Model::from_onnx(inside.join("m.onnx")).unwrap();
    let (_, wt) = m
        .state_dict()
        .into_iter()
        .find(|(k, _)| k.ends_with("weight"))
        .unwrap();
    assert_eq!(
        wt.data,
        cnnkit::TensorData::F32((0..18).map(|i| i as f32 * 0.1).collect())
    );
    // Too short a file.
    std::fs::write(inside.join("weights_1.bin"), &w[..40]).unwrap();
    let e = Model::from_onnx(inside.join("m.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has 40 bytes"), "{e}");
    // A link out of the folder.
    std::fs::write(t.0.join("outside.bin"), &w).unwrap();
    std::fs::remove_file(inside.join("weights_1.bin")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(t.0.join("outside.bin"), inside.join("weights_1.bin")).unwrap();
        let e = Model::from_onnx(inside.join("m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("leads outside the model's folder"), "{e}");
    }
    // From bytes there is no folder.
    let e = onnx::from_bytes(&good, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("read the model from its path"), "{e}");
}

/// Every truncation and many single-byte corruptions of a real file give an error or a model,
/// never a panic; limits bound what a file can ask for.
#[test]
fn truncated_and_corrupted_files_never_panic() {
    let bytes = std::fs::read(dir().join("mobile.onnx")).unwrap();
    for n in 0..bytes.len() {
        let _ = onnx::from_bytes(&bytes[..n], &ImportOptions::default());
    }
    let mut refused = 0;
    for i in (0..bytes.len()).step_by(3) {
        for v in [0x00, 0xff, 0x80, 0x0a] {
            let mut b = bytes.clone();
            b[i] = v;
            refused += usize::from(onnx::from_bytes(&b, &ImportOptions::default()).is_err());
        }
    }
    assert!(refused > 0);
    let tight = ImportOptions {
        limits: Limits {
            max_nodes: 3,
            ..Limits::default()
        },
        ..ImportOptions::default()
    };
    let e = onnx::from_bytes(&bytes, &tight).unwrap_err().to_string();
    assert!(e.contains("more than 3 nodes"), "{e}");
    let tight = ImportOptions {
        limits: Limits {
            max_elements: 100,
            ..Limits::default()
        },
        ..ImportOptions::default()
    };
    let e = onnx::from_bytes(&bytes, &tight).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
}

/// A model whose input has symbolic sizes reads with the size given, and refuses a size that
/// contradicts a fixed dimension.
#[test]
fn the_input_size_can_be_given() {
    let p = dir().join("hostile/symbolic_size.onnx");
    let m = onnx::read(
        &p,
        &ImportOptions {
            input: Some([1, 9, 7]),
            ..ImportOptions::default()
        },
    )
    .unwrap()
    .model;
    assert_eq!(m.output_shape(), [2, 7, 5]);
    let e = onnx::read(
        &p,
        &ImportOptions {
            input: Some([3, 9, 7]),
            ..ImportOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("dimension 1 is 1 in the model, 3 was asked for"),
        "{e}"
    );
}

/// A layer of the embedding program, and the few layers ONNX cannot express, are refused by
/// name.
#[test]
fn inexpressible_layers_are_refused_by_name() {
    let m = Sequential::new(
        [1, 7, 7],
        &LayerSpec::parse_list("conv(2,3),adaptive_avgpool(2),flatten,dense(2)").unwrap(),
        0,
    )
    .unwrap();
    let e = onnx::to_bytes(&m, &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node 1 (adaptive_avgpool(2))") && e.contains("uneven"),
        "{e}"
    );
    let m = Sequential::new(
        [1, 4, 4],
        &LayerSpec::parse_list("conv(2,3),softplus(beta=2),flatten,dense(2)").unwrap(),
        0,
    )
    .unwrap();
    let e = onnx::to_bytes(&m, &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("softplus with beta 2"), "{e}");
}
