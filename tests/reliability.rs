//! Never lose a model, never trust a file: saves killed mid-write, bit-flipped and hostile
//! checkpoints, and the limits on untrusted input.

mod common;

use cnnkit::checkpoint::{self, CheckpointLimits};
use cnnkit::{LayerSpec, Sequential, Tensor, TensorData};
use common::TempDir;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A model of about 4 MB, so that a save takes long enough to be killed in the middle.
fn big_model(seed: u64) -> Sequential {
    let specs = LayerSpec::parse_list("flatten,dense(1024),relu,dense(10)").unwrap();
    Sequential::new([1, 32, 32], &specs, seed).unwrap()
}

const CHILD_ENV: &str = "CNNKIT_SAVE_LOOP";

/// Run by `an_interrupted_save_leaves_the_previous_checkpoint_intact` in a child process: saves
/// two different models to the same path in turn until it is killed.
#[test]
#[ignore = "child process of the kill-mid-save test"]
fn save_loop_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let models = [big_model(1), big_model(2)];
    for i in 0.. {
        models[i % 2]
            .save(Path::new(&path), &BTreeMap::new())
            .unwrap();
    }
}

/// Kills a process that saves checkpoints in a loop at many points in time: every time, the file
/// under the final name loads and is exactly one of the two models, never a mixture or a torn
/// file. At least some kills land while a temporary file is being written (it is left behind,
/// under a hidden name that is never loaded), and the next save of the same target removes such
/// leftovers of dead processes, but never the temporary file of a save still running.
#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_intact() {
    let t = TempDir::new("kill");
    let path = t.0.join("model.safetensors");
    let want: Vec<Vec<(String, Tensor)>> = [1, 2].map(|s| big_model(s).state_dict()).into();
    big_model(1).save(&path, &BTreeMap::new()).unwrap();
    let (mut torn, rounds) = (0, 24);
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "save_loop_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different point of the save cycle each round.
        std::thread::sleep(Duration::from_millis(40 + 7 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let (m, _) = Sequential::load(&path)
            .unwrap_or_else(|e| panic!("round {round}: the checkpoint does not load: {e}"));
        let sd = m.state_dict();
        assert!(
            want.contains(&sd),
            "round {round}: the checkpoint is neither model"
        );
        // At most the one leftover of the child just killed: each save removed the earlier
        // children's.
        let leftovers = std::fs::read_dir(&t.0).unwrap().count() - 1;
        assert!(
            leftovers <= 1,
            "round {round}: {leftovers} temporary files left"
        );
        torn += leftovers;
    }
    assert!(
        torn > 0,
        "no kill landed during a write in {rounds} rounds: the test did not test anything"
    );
    // A save in progress elsewhere (pid 1 is always alive) is left alone; the dead ones go.
    let live = t.0.join(".model.safetensors.tmp-1-00000000deadbeef");
    std::fs::write(&live, b"in progress").unwrap();
    big_model(2).save(&path, &BTreeMap::new()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".model.safetensors.tmp-1-00000000deadbeef",
            "model.safetensors"
        ]
    );
}

fn small_model() -> Sequential {
    let specs = LayerSpec::parse_list("conv(3,3,p=1),bn,relu,maxpool(2),flatten,dense(4)").unwrap();
    let mut m = Sequential::new([1, 4, 4], &specs, 7).unwrap();
    m.eval();
    m
}

/// Every single-bit flip anywhere in a cnnkit checkpoint (header length, JSON, metadata, tensor
/// data, the hash itself) is refused with an error, or changes nothing that is read: no flip
/// loads as a different model or with different metadata. (The only flips that load are those in
/// the hash key's own name, which turn the file into an unchecked one with the same contents.)
#[test]
fn every_single_bit_flip_is_detected() {
    let m = small_model();
    let bytes = checkpoint::to_bytes(&m.to_safetensors(&BTreeMap::new()));
    let name = Path::new("flip.safetensors");
    let (ok, meta) = Sequential::from_checkpoint_bytes(&bytes, name).unwrap();
    assert_eq!(ok.state_dict(), m.state_dict());
    let hash_key = bytes
        .windows(checkpoint::HASH_KEY.len())
        .position(|w| w == checkpoint::HASH_KEY.as_bytes())
        .unwrap();
    let mut flipped = bytes.clone();
    let mut loaded = 0;
    for i in 0..bytes.len() {
        for bit in 0..8 {
            flipped[i] ^= 1 << bit;
            if let Ok((got, got_meta)) = Sequential::from_checkpoint_bytes(&flipped, name) {
                loaded += 1;
                let at = format!("bit {bit} of byte {i} flipped");
                assert_eq!(got.state_dict(), m.state_dict(), "{at}: another model");
                assert!(
                    (hash_key..hash_key + checkpoint::HASH_KEY.len()).contains(&i),
                    "{at} and the file loaded"
                );
                let unchecked = |m: &BTreeMap<String, String>| -> Vec<String> {
                    m.iter()
                        .filter(|(_, v)| **v != meta[checkpoint::HASH_KEY])
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect()
                };
                assert_eq!(unchecked(&got_meta), unchecked(&meta), "{at}");
            }
            flipped[i] = bytes[i];
        }
    }
    assert!(
        loaded <= 8 * checkpoint::HASH_KEY.len(),
        "{loaded} flips loaded"
    );
}

/// Every prefix of a checkpoint is refused with an error naming the file.
#[test]
fn every_truncation_is_detected() {
    let bytes = checkpoint::to_bytes(&small_model().to_safetensors(&BTreeMap::new()));
    for len in 0..bytes.len() {
        let e = Sequential::from_checkpoint_bytes(&bytes[..len], Path::new("cut.safetensors"))
            .err()
            .unwrap_or_else(|| panic!("a file cut to {len} bytes loaded"));
        assert!(e.to_string().contains("cut.safetensors"), "{e}");
    }
}

/// An architecture string asking for far more parameters than the file holds is refused before
/// anything is allocated (4·10⁹ parameters would be 16 GB).
#[test]
fn a_hostile_architecture_cannot_allocate_gigabytes() {
    let mut st = small_model().to_safetensors(&BTreeMap::new());
    st.metadata.insert(
        checkpoint::ARCH_KEY.into(),
        "flatten,dense(4000000000)".into(),
    );
    st.metadata
        .insert(checkpoint::INPUT_KEY.into(), "1x4x4".into());
    let bytes = checkpoint::to_bytes(&st);
    let e = Sequential::from_checkpoint_bytes(&bytes, Path::new("h.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("h.safetensors") && e.contains("needs more than"),
        "{e}"
    );
}

/// A header that declares more than the limits allow is refused before the data is read.
#[test]
fn checkpoint_limits_are_enforced() {
    let bytes = checkpoint::to_bytes(&small_model().to_safetensors(&BTreeMap::new()));
    let name = Path::new("l.safetensors");
    let tight = CheckpointLimits {
        max_header_bytes: 64,
        ..CheckpointLimits::default()
    };
    let e = checkpoint::parse(&bytes, name, tight)
        .unwrap_err()
        .to_string();
    assert!(e.contains("l.safetensors") && e.contains("header"), "{e}");
    let few = CheckpointLimits {
        max_tensors: 2,
        ..CheckpointLimits::default()
    };
    let e = checkpoint::parse(&bytes, name, few)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensors"), "{e}");
    // A header length of 2⁶⁴ − 1.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = checkpoint::parse(&huge, name, CheckpointLimits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("l.safetensors"), "{e}");
}

/// A state dictionary whose tensor holds fewer values than its shape says is refused (found in
/// the audit: it used to reach a slice copy that panics).
#[test]
fn a_tensor_with_too_few_values_is_refused() {
    let mut m = small_model();
    let mut sd: HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    let t = sd.get_mut("0.weight").unwrap();
    if let TensorData::F32(v) = &mut t.data {
        v.pop();
    }
    let e = m.load_state_dict(&sd).unwrap_err().to_string();
    assert!(e.contains("0.weight") && e.contains("26 values"), "{e}");
}

/// An architecture from an untrusted source is built with a parameter limit: a short string asking
/// for gigabytes is an error before anything is allocated.
#[test]
fn a_parameter_limit_refuses_huge_networks_before_allocating() {
    let specs = LayerSpec::parse_list("flatten,dense(4000000000)").unwrap();
    let e = Sequential::new_with_limit([1, 8, 8], &specs, 0, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs more than 1048576 parameters"), "{e}");
    let specs = LayerSpec::parse_list("conv(4,3,p=1),relu,flatten,dense(3)").unwrap();
    let m = Sequential::new_with_limit([1, 8, 8], &specs, 0, 1 << 20).unwrap();
    assert_eq!(m.param_count(), 4 * 9 + 4 + 3 * 256 + 3);
    assert_eq!(
        m.layer_shapes(),
        [[4, 8, 8], [4, 8, 8], [256, 1, 1], [3, 1, 1]]
    );
}

/// An output path that names a device, a pipe or a link is written through, never replaced by a
/// regular file: `/dev/null` stays a character device, a FIFO receives the bytes, a link stays a
/// link and its target gets the bytes, atomically.
#[cfg(unix)]
#[test]
fn atomic_writes_keep_devices_pipes_and_links() {
    use std::os::unix::fs::{FileTypeExt, symlink};
    let d = TempDir::new("write_through");
    // A device: written through, still a device.
    checkpoint::write_atomic(Path::new("/dev/null"), b"abc").unwrap();
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // A FIFO: a reader gets the bytes; the FIFO stays a FIFO.
    let fifo = d.path().join("out.fifo");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    let reader = {
        let f = fifo.clone();
        std::thread::spawn(move || std::fs::read(f).unwrap())
    };
    checkpoint::write_atomic(&fifo, b"through the pipe").unwrap();
    assert_eq!(reader.join().unwrap(), b"through the pipe");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A link to a regular file: the link stays, its target is replaced.
    let target = d.path().join("target.csv");
    std::fs::write(&target, b"old contents, longer than the new").unwrap();
    let link = d.path().join("link.csv");
    symlink(&target, &link).unwrap();
    checkpoint::write_atomic(&link, b"new").unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    // A folder is refused by name.
    let err = checkpoint::write_atomic(d.path(), b"x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a folder"), "{err}");
}

/// Errors over an inner failure keep it as their source (with its message in their own), so a
/// caller can walk the chain: a corrupt image's decoder error, a checkpoint's malformed
/// architecture.
#[cfg(feature = "image")]
#[test]
fn wrapped_errors_keep_their_source() {
    use std::error::Error as _;
    let d = TempDir::new("sources");
    let bad = d.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let e = cnnkit::image::load_image(&bad, &cnnkit::image::ImageOptions::default()).unwrap_err();
    let source = e.source().expect("the decoder's error");
    assert!(e.to_string().contains(&source.to_string()), "{e}");
    // A checkpoint whose architecture no longer parses.
    let m = small_model();
    let mut st = m.to_safetensors(&BTreeMap::new());
    st.metadata
        .insert(checkpoint::ARCH_KEY.into(), "conv(".into());
    let path = d.path().join("arch.safetensors");
    checkpoint::save(&path, &st).unwrap();
    let e = Sequential::load(&path).unwrap_err();
    let source = e.source().expect("the parser's error");
    assert!(source.to_string().contains("conv("), "{source}");
}
