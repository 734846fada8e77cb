//! Checkpoints: PyTorch-exported models load and reproduce PyTorch's outputs; cnnkit's files load
//! back exactly and into PyTorch; corrupt files are refused.

mod common;
#[path = "fixtures/torch_model_io.rs"]
mod io;

use cnnkit::checkpoint::{self, CheckpointLimits, SafeTensors};
use cnnkit::kernels::{Accum, cross_entropy_loss};
use cnnkit::{LayerSpec, Sequential, Tensor, TensorData};
use common::{TempDir, assert_close, values};
use std::collections::BTreeMap;
use std::path::Path;

fn fixture() -> &'static Path {
    Path::new("tests/fixtures/torch_model.safetensors")
}

fn torch_model() -> Sequential {
    Sequential::load_with(
        fixture(),
        [2, 8, 8],
        &LayerSpec::parse_list(io::ARCH).unwrap(),
    )
    .unwrap()
}

/// `torch.nn.Sequential` trained and saved with `safetensors.torch.save_file(model.state_dict())`
/// gives the same outputs in cnnkit (convolution with groups, batch norm running statistics,
/// PReLU slopes, layer norm, dense layers).
#[test]
fn pytorch_model_reproduces_pytorch_outputs() {
    let mut m = torch_model();
    let y = m.forward(io::X, 4).unwrap().to_vec();
    assert_close("y", &y, io::Y, 2e-5, 1e-5).unwrap();
}

/// Save → load restores every parameter, buffer and the architecture, bit for bit.
#[test]
fn save_and_load_round_trip_exactly() {
    let t = TempDir::new("ckpt");
    let mut m = torch_model();
    m.train();
    // Change the state: one training step (parameters and batch-norm statistics move).
    let x = values(1, 8 * 128);
    let logits = m.forward(&x, 8).unwrap().to_vec();
    let mut d = vec![0.0; logits.len()];
    cross_entropy_loss(3, &logits, &[0, 1, 2, 0, 1, 2, 0, 1], 0.0, Some(&mut d)).unwrap();
    m.backward(&x, &d, Accum::Replace).unwrap();
    let (p, g) = m.params_and_grads();
    p.iter_mut().zip(g).for_each(|(p, g)| *p -= 0.1 * g);
    let mut meta = BTreeMap::new();
    meta.insert(
        "cnnkit.classes".to_string(),
        "[\"a\",\"b\",\"c\"]".to_string(),
    );
    let path = t.0.join("m.safetensors");
    m.save(&path, &meta).unwrap();
    let (mut back, got_meta) = Sequential::load(&path).unwrap();
    assert_eq!(back.state_dict(), m.state_dict());
    assert_eq!(back.specs(), m.specs());
    assert_eq!(got_meta["cnnkit.classes"], meta["cnnkit.classes"]);
    m.eval();
    assert_eq!(
        back.forward(io::X, 4).unwrap(),
        m.forward(io::X, 4).unwrap()
    );
}

/// cnnkit's checkpoint loads into the equivalent `torch.nn.Sequential` with
/// `load_state_dict(strict=True)` and gives cnnkit's outputs. Needs python3 with torch,
/// safetensors and numpy (`pip install torch safetensors numpy`), which the test command does not
/// install (torch is gigabytes), so it runs with `cargo test --test interop -- --ignored`; a
/// missing module fails it, never passes it.
#[test]
#[ignore = "needs python3 with torch, safetensors and numpy: cargo test --test interop -- --ignored"]
fn cnnkit_checkpoint_loads_into_pytorch() {
    let t = TempDir::new("totorch");
    let mut m = torch_model();
    // Make it cnnkit's own weights: perturb every parameter.
    for (i, p) in m.params_mut().iter_mut().enumerate() {
        *p += 0.01 * ((i % 7) as f32 - 3.0);
    }
    let path = t.0.join("m.safetensors");
    m.save(&path, &BTreeMap::new()).unwrap();
    let y = m.forward(io::X, 4).unwrap().to_vec();
    let raw = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(t.0.join("x.f32"), raw(io::X)).unwrap();
    std::fs::write(t.0.join("y.f32"), raw(&y)).unwrap();
    let out = std::process::Command::new("python3")
        .arg("tests/fixtures/check_cnnkit_in_torch.py")
        .args([&path, &t.0.join("x.f32"), &t.0.join("y.f32")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn st(tensors: Vec<(&str, Tensor)>) -> SafeTensors {
    SafeTensors {
        tensors: tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect(),
        metadata: BTreeMap::new(),
    }
}

fn f32t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
    Tensor {
        shape,
        data: TensorData::F32(v),
    }
}

#[test]
fn safetensors_round_trip_and_validation() {
    let lim = CheckpointLimits::default();
    let p = Path::new("t.safetensors");
    let good = st(vec![
        ("a", f32t(vec![2, 2], vec![1.0, -2.0, 3.5, 0.0])),
        (
            "b",
            Tensor {
                shape: vec![],
                data: TensorData::I64(vec![-7]),
            },
        ),
    ]);
    let bytes = checkpoint::to_bytes(&good);
    let back = checkpoint::parse(&bytes, p, lim).unwrap();
    assert_eq!(back.tensors, good.tensors);
    assert!(back.metadata.contains_key(checkpoint::HASH_KEY));
    // Header length past the end, truncated data, flipped data bit, garbage header.
    let e = |b: &[u8]| checkpoint::parse(b, p, lim).unwrap_err().to_string();
    assert!(
        e(&bytes[..bytes.len() - 3]).contains("truncated"),
        "{}",
        e(&bytes[..bytes.len() - 3])
    );
    let mut flip = bytes.clone();
    *flip.last_mut().unwrap() ^= 0x10;
    assert!(e(&flip).contains("do not match their hash"));
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(e(&huge).contains("above the limit"));
    assert!(e(&bytes[..5]).contains("too short"));
    // Hand-made headers: each structural error.
    let make = |h: &str, data: &[u8]| {
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    };
    for (h, data, needle) in [
        (
            r#"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#,
            &[0u8; 2][..],
            "only F32 and I64",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            &[0u8; 4][..],
            "needs 8 bytes",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
            &[0u8; 8][..],
            "overlap or gap",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0u8; 8][..],
            "cover 4 bytes of a 8-byte",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
            &[0u8; 4][..],
            "overflows",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0u8; 8][..],
            "duplicate key",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#,
            &[0u8; 4][..],
            "integers",
        ),
        (r#"{"a":[[[[[1]]]]]}"#, &[][..], "nested too deeply"),
        (r#"{"__metadata__":{"k":1}}"#, &[][..], "not a string"),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#,
            &[0u8; 4][..],
            "unknown field",
        ),
        (r#"{"a":"#, &[][..], "invalid JSON"),
        (r#"{"a":"\ud800"}"#, &[][..], "surrogate"),
        ("[]", &[][..], "not a JSON object"),
    ] {
        let msg = e(&make(h, data));
        assert!(msg.contains(needle), "{h}: {msg}");
    }
}

#[test]
fn wrong_architecture_and_missing_metadata_are_refused() {
    let t = TempDir::new("wrongarch");
    let wrong = LayerSpec::parse_list("conv(4,3,p=1),bn,relu,maxpool(2),conv(6,3,p=1),prelu(channels),avgpool(2),flatten,dense(5),gelu,ln,dense(3)").unwrap();
    let e = Sequential::load_with(fixture(), [2, 8, 8], &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("4.weight") && e.contains("[6, 4, 3, 3]") && e.contains("[6, 2, 3, 3]"),
        "{e}"
    );
    let e = Sequential::load(fixture()).unwrap_err().to_string();
    assert!(e.contains("no cnnkit.arch metadata"), "{e}");
    // Architecture metadata that disagrees with the tensors.
    let m = torch_model();
    let mut st = m.to_safetensors(&BTreeMap::new());
    st.metadata
        .insert(checkpoint::ARCH_KEY.into(), "flatten,dense(3)".into());
    let path = t.0.join("lie.safetensors");
    checkpoint::save(&path, &st).unwrap();
    let e = Sequential::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("lie.safetensors") && e.contains("1.weight: expected f32 of shape [3, 128]"),
        "{e}"
    );
}

/// A save replaces the file in one step: the directory never holds a partial checkpoint under
/// the final name, and no temporary file is left behind.
#[test]
fn saves_are_atomic_and_leave_no_temporary_files() {
    let t = TempDir::new("atomic");
    let path = t.0.join("m.safetensors");
    let m = torch_model();
    m.save(&path, &BTreeMap::new()).unwrap();
    let first = std::fs::read(&path).unwrap();
    let mut m2 = torch_model();
    m2.params_mut()[0] += 1.0;
    m2.save(&path, &BTreeMap::new()).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), first);
    let names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["m.safetensors"]);
    // A save into a missing directory fails cleanly, naming the file.
    let e = m
        .save(&t.0.join("no/such/dir/m.safetensors"), &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.safetensors"), "{e}");
}

/// `gap` is `AdaptiveAvgPool2d(1), Flatten()` in the natural `nn.Sequential`, two modules: the
/// names of every layer after it count both, as PyTorch's state dict does. Files written before
/// (a `gap` counted as one module, no `cnnkit.names` key) still load, models and training
/// states alike.
#[test]
fn state_dict_names_count_gap_as_two_modules_and_old_files_load() {
    use cnnkit::{TrainConfig, Trainer};
    let specs = LayerSpec::parse_list("conv(2,3),relu,gap,dense(3)").unwrap();
    let m = Sequential::new([1, 5, 5], &specs, 7).unwrap();
    let names: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    // nn.Sequential(Conv2d, ReLU, AdaptiveAvgPool2d(1), Flatten(), Linear): the linear is 4.
    assert_eq!(names, ["0.weight", "0.bias", "4.weight", "4.bias"]);

    let dir = TempDir::new("old_names");
    let old_name = |k: &str| k.replacen("4.", "3.", 1);
    // A model file as cnnkit wrote it before.
    let mut st = m.to_safetensors(&BTreeMap::new());
    st.metadata.remove(checkpoint::NAMES_KEY);
    st.tensors = st
        .tensors
        .into_iter()
        .map(|(k, t)| (old_name(&k), t))
        .collect();
    let old = dir.path().join("old.safetensors");
    checkpoint::save(&old, &st).unwrap();
    let (back, _) = Sequential::load(&old).unwrap();
    assert_eq!(back.params(), m.params());
    // A training state as cnnkit wrote it before.
    let cfg = TrainConfig {
        epochs: 1,
        ..Default::default()
    };
    let copy = Sequential::new([1, 5, 5], &specs, 7).unwrap();
    let t = Trainer::new(copy, "sgd".parse().unwrap(), cfg).unwrap();
    let mut st = t.to_safetensors(&BTreeMap::new());
    st.metadata.remove(checkpoint::NAMES_KEY);
    st.tensors = st
        .tensors
        .into_iter()
        .map(|(k, t)| match k.strip_prefix("model.") {
            Some(rest) => (format!("model.{}", old_name(rest)), t),
            None => (k, t),
        })
        .collect();
    let old = dir.path().join("old.train.safetensors");
    checkpoint::save(&old, &st).unwrap();
    let (back, _) = Trainer::load(&old).unwrap();
    assert_eq!(back.model().params(), m.params());
    // A file of today is not renamed (its names already follow PyTorch).
    let now = dir.path().join("now.safetensors");
    m.save(&now, &BTreeMap::new()).unwrap();
    assert_eq!(Sequential::load(&now).unwrap().0.params(), m.params());
}
