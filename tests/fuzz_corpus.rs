//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`: seeds and the reproducers of
//! every crash the fuzzers found) through the same target bodies the fuzzers run, so a
//! regression fails an ordinary `cargo test` without a fuzzer.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str) {
    let f = harness::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("known target");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    for p in &files {
        let data = std::fs::read(p).expect("read corpus file");
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} fails", p.display());
    }
}

#[test]
fn every_target_has_a_replay_test() {
    let names: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "idx",
            "image_folder",
            "checkpoint",
            "kernels",
            "clahe",
            "layer_spec",
            "onnx"
        ]
    );
}

#[test]
fn replay_idx() {
    replay("idx");
}

#[test]
fn replay_image_folder() {
    replay("image_folder");
}

#[test]
fn replay_checkpoint() {
    replay("checkpoint");
}

#[test]
fn replay_kernels() {
    replay("kernels");
}

#[test]
fn replay_clahe() {
    replay("clahe");
}

#[test]
fn replay_layer_spec() {
    replay("layer_spec");
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
        .join(format!("seed-{name}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The valid seeds are valid: the fuzzers start from inputs that reach the success paths.
#[test]
fn valid_seeds_load() {
    let name = Path::new("seed");
    let limits = cnnkit::data::IdxLimits::default();
    let (dims, _) = cnnkit::data::parse_idx(&seed("idx", "images"), name, limits).unwrap();
    assert_eq!(dims, [4, 2, 2]);
    assert!(cnnkit::data::parse_idx(&seed("idx", "labels"), name, limits).is_ok());
    for s in ["cnn", "bn"] {
        let (m, _) = cnnkit::Sequential::from_checkpoint_bytes(&seed("checkpoint", s), name)
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(m.param_count() > 0);
        let e = cnnkit::Sequential::from_checkpoint_bytes(
            &seed("checkpoint", &format!("{s}-wrong-arch")),
            name,
        );
        assert!(e.is_err());
    }
    for i in 0..5 {
        let s = String::from_utf8(seed("layer_spec", &i.to_string())).unwrap();
        let specs = cnnkit::LayerSpec::parse_list(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(
            cnnkit::Sequential::new([3, 5, 7], &specs, 0).is_ok() || i == 1,
            "{s}"
        );
    }
    assert!(cnnkit::LayerSpec::parse_list("flatten,dense(1").is_err());
    // Each file of the image seeds decodes (PNG and JPEG, grey, RGB and 16-bit).
    for s in ["gray", "rgb-clahe", "sixteen-bit"] {
        let bytes = seed("image_folder", s);
        let parts = split(&bytes[1..], b"\n--\n");
        assert!(parts.len() >= 2, "{s}");
        for (i, p) in parts.iter().enumerate() {
            let opts = cnnkit::image::ImageOptions::default();
            cnnkit::image::decode_image(p, name, &opts)
                .unwrap_or_else(|e| panic!("{s} file {i}: {e}"));
        }
    }
}

fn split<'a>(mut s: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = s.windows(sep.len()).position(|w| w == sep) {
        out.push(&s[..i]);
        s = &s[i + sep.len()..];
    }
    out.push(s);
    out
}

#[test]
fn replay_onnx() {
    replay("onnx");
}
