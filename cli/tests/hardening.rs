//! The command under the mistakes and accidents of real use: requests beyond the memory budget,
//! an output location that cannot be written, SIGTERM, a model saved elsewhere, arguments typed
//! the way users type them.

mod common;

use common::{Dir, blobs, cnnkit, fails, png, rescue_named, resumes_one_step, text};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `cnnkit args` under `ulimit -v` of `kib` KiB (the address-space limit a shared machine or a
/// batch scheduler may set).
fn cnnkit_limited(dir: &Path, kib: u64, args: &[&str]) -> Output {
    Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cnnkit"))
        .args(args)
        .env_remove("CNNKIT_MEMORY_BUDGET")
        .output()
        .unwrap()
}

/// One `error:` line, exit code 1, no abort.
fn one_line_error(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "expected {n:?} in {err}");
    }
}

#[cfg(unix)]
#[test]
fn oversized_requests_are_refused_against_the_memory_budget() {
    let d = Dir::new("budget");
    blobs(&d.0.join("imgs"), 2);
    png(&d.0.join("a.png"), 12, 10, |x, y| (x * 7 + y) as u8);
    // The requests of the report, under a 4 GB address-space limit: the default budget is 3/4 of
    // it, and each request is refused before it is made (it used to abort with SIGABRT).
    for args in [
        &["train", "--data", "imgs", "--size", "100000x100000"][..],
        &["train", "--data", "imgs", "--size", "20000x20000"],
        &["preprocess", "--size", "100000x100000", "a.png", "b.png"],
    ] {
        let o = cnnkit_limited(&d.0, 4_000_000, args);
        one_line_error(&o, &["memory budget of 3.1 GB", "CNNKIT_MEMORY_BUDGET"]);
    }
    // The budget is a setting: --memory-budget, or the environment.
    let o = cnnkit(
        &d.0,
        &[
            "--memory-budget",
            "256K",
            "train",
            "--data",
            "imgs",
            "--size",
            "64x64",
        ],
    );
    one_line_error(&o, &["the data set at this image size", "262.1 kB"]);
    let o = Command::new(env!("CARGO_BIN_EXE_cnnkit"))
        .current_dir(&d.0)
        .args(["train", "--data", "imgs", "--size", "64x64"])
        .env("CNNKIT_MEMORY_BUDGET", "256K")
        .output()
        .unwrap();
    one_line_error(&o, &["memory budget of 262.1 kB"]);
    fails(
        &d.0,
        &["--memory-budget", "lots", "train"],
        &["'lots' is not a memory size"],
    );
    // Within the budget, the same data trains.
    let o = cnnkit(
        &d.0,
        &[
            "--memory-budget",
            "64M",
            "train",
            "--data",
            "imgs",
            "--size",
            "8x8",
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn an_unwritable_output_is_refused_before_training() {
    let d = Dir::new("out");
    let started = std::time::Instant::now();
    let o = cnnkit(&d.0, &["train", "--out", "/nonexistent/dir/m.safetensors"]);
    one_line_error(
        &o,
        &["--out /nonexistent/dir/m.safetensors", "does not exist"],
    );
    assert!(!text(&o).contains("epoch "), "{}", text(&o));
    assert!(started.elapsed().as_secs() < 20);
    std::fs::create_dir(d.0.join("adir")).unwrap();
    fails(&d.0, &["train", "--out", "adir"], &["is a folder"]);
}

/// Starts a long training run and waits for its first epoch line.
#[cfg(unix)]
fn start_training(dir: &Path, out: &str) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnkit"))
        .current_dir(dir)
        .args(["train", "--epochs", "1000", "--out", out])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap() > 0 && !line.starts_with("epoch ") {
        line.clear();
    }
    assert!(line.starts_with("epoch "), "training did not start");
    child
}

#[cfg(unix)]
fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// SIGTERM (what `timeout` and batch schedulers send) saves a resumable checkpoint as Ctrl-C
/// does; and when the output folder has gone meanwhile, the checkpoint goes to a rescue file
/// that the message names, and that resumes.
#[cfg(unix)]
#[test]
fn sigterm_saves_a_resumable_checkpoint_even_when_the_folder_is_gone() {
    let d = Dir::new("sigterm");
    std::fs::create_dir(d.0.join("out")).unwrap();
    let child = start_training(&d.0, "out/m.safetensors");
    signal(&child, "-TERM");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(d.0.join("out/m.resume.safetensors").is_file(), "{err}");

    // A fresh run over it is refused until the interrupted run's checkpoint is gone.
    fails(
        &d.0,
        &["train", "--out", "out/m.safetensors"],
        &[
            "holds an interrupted run",
            "--resume out/m.resume.safetensors",
        ],
    );
    std::fs::remove_file(d.0.join("out/m.resume.safetensors")).unwrap();
    let child = start_training(&d.0, "out/m.safetensors");
    std::fs::remove_dir_all(d.0.join("out")).unwrap();
    signal(&child, "-TERM");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let rescue = rescue_named(&err);
    assert!(rescue.contains("cnnkit-rescue-"), "{err}");
    assert!(
        err.contains(&format!("cnnkit train --resume {rescue}")),
        "{err}"
    );
    resumes_one_step(&d.0, &rescue, "m2.safetensors");
    let _ = std::fs::remove_file(&rescue);
    assert!(d.0.join("m2.resume.safetensors").is_file());
}

#[test]
fn arguments_parse_the_way_users_type_them() {
    let d = Dir::new("args");
    png(&d.0.join("in.png"), 20, 16, |x, y| (x * 5 + y * 3) as u8);
    // An optional value does not swallow the file names; negative numbers are numbers.
    let o = cnnkit(&d.0, &["preprocess", "--clahe", "in.png", "out.png"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.0.join("out.png").is_file());
    let o = cnnkit(
        &d.0,
        &[
            "preprocess",
            "--contrast",
            "-1",
            "--brightness",
            "255",
            "in.png",
            "neg.png",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let neg = image::open(d.0.join("neg.png")).unwrap().to_luma8();
    assert_eq!(neg.get_pixel(1, 0)[0], 255 - 5);
    // `--clahe 3.0 in.png out.png`: the setting taken for the input, with the fix in the message.
    fails(
        &d.0,
        &["preprocess", "--clahe", "3.0", "in.png"],
        &["--clahe=3.0"],
    );
    // Settings PyTorch refuses, or that would save an untrained model.
    fails(
        &d.0,
        &["train", "--epochs", "0"],
        &["--epochs", "at least 1"],
    );
    fails(
        &d.0,
        &["train", "--schedule", "cosine:0"],
        &["t_max", "at least 1"],
    );
    fails(&d.0, &["train", "--schedule", "step:0:0.5"], &["step_size"]);
    // The command's defaults are the library's.
    let help = text(&cnnkit(&d.0, &["train", "--help"]));
    let cfg = cnnkit::TrainConfig::default();
    assert!(
        help.contains(&format!("[default: {}]", cfg.epochs)),
        "{help}"
    );
    assert!(
        help.contains(&format!("[default: {}]", cfg.batch_size)),
        "{help}"
    );
    assert!(!cnnkit::image::ImageOptions::default().grayscale);
}

#[test]
fn errors_name_a_path_once() {
    let d = Dir::new("once");
    for args in [
        &["eval", "/nonexistent.safetensors"][..],
        &["predict", "/nonexistent.safetensors", "x.png"],
        &["train", "--resume", "/nonexistent.safetensors"],
    ] {
        let o = cnnkit(&d.0, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.matches("/nonexistent.safetensors").count(), 1, "{err}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    }
}

#[test]
fn preprocess_refuses_to_write_inside_its_input() {
    let d = Dir::new("inside");
    png(&d.0.join("data/train/a/x.png"), 8, 8, |x, _| x as u8);
    for out in ["data/train/sub", "data", "./data/x/../train/y"] {
        fails(
            &d.0,
            &["preprocess", "data", out],
            &["inside the input folder"],
        );
    }
    assert!(!d.0.join("data/train/sub").exists());
    let o = cnnkit(&d.0, &["preprocess", "data", "data-clahe"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A folder-trained model remembers its folder; a state dict saved elsewhere (no cnnkit
/// metadata) is evaluated and used with --arch.
#[test]
fn eval_and_predict_find_the_data_and_take_foreign_models() {
    let d = Dir::new("foreign");
    blobs(&d.0.join("imgs"), 4);
    let arch = "conv(4,3,p=1),relu,maxpool(2),flatten,dense(2)";
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--data",
            "imgs",
            "--grayscale",
            "--arch",
            arch,
            "--epochs",
            "2",
            "--out",
            "m.safetensors",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // No --data: the folder trained on.
    let o = cnnkit(&d.0, &["eval", "m.safetensors"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("imgs"), "{}", text(&o));
    std::fs::rename(d.0.join("imgs"), d.0.join("moved")).unwrap();
    fails(
        &d.0,
        &["eval", "m.safetensors"],
        &["--data is needed", "imgs", "not there any more"],
    );
    // The same weights without cnnkit's metadata, as PyTorch's save_file writes them.
    let mut st = cnnkit::checkpoint::load(&d.0.join("m.safetensors"), Default::default()).unwrap();
    st.metadata.clear();
    cnnkit::checkpoint::save(&d.0.join("torch.safetensors"), &st).unwrap();
    fails(
        &d.0,
        &["eval", "torch.safetensors", "--data", "moved"],
        &["no architecture", "--arch"],
    );
    let o = cnnkit(
        &d.0,
        &[
            "eval",
            "torch.safetensors",
            "--data",
            "moved",
            "--arch",
            arch,
            "--grayscale",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("8 images: accuracy"), "{}", text(&o));
    let base = [
        "predict",
        "torch.safetensors",
        "moved/left/0.png",
        "--arch",
        arch,
    ];
    let o = cnnkit(
        &d.0,
        &[&base[..], &["--grayscale", "--size", "10x12"]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("moved/left/0.png: "), "{}", text(&o));
    fails(&d.0, &base, &["--size"]);
}

/// An IDX directory with training files only trains with a validation split.
#[test]
fn a_training_only_idx_directory_trains_with_a_validation_split() {
    let d = Dir::new("idxtrain");
    let dir = d.0.join("idx");
    std::fs::create_dir_all(&dir).unwrap();
    let n = 40u32;
    let mut img = vec![0u8, 0, 8, 3];
    for v in [n, 8, 8] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    let mut lab = vec![0u8, 0, 8, 1];
    lab.extend_from_slice(&n.to_be_bytes());
    for i in 0..n {
        let class = (i % 2) as u8;
        lab.push(class);
        img.extend((0..64).map(|p| if (p % 8 < 4) == (class == 0) { 200 } else { 10 }));
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).unwrap();
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--data",
            "idx",
            "--arch",
            "flatten,dense(2)",
            "--epochs",
            "2",
            "--val-split",
            "0.25",
            "--out",
            "m.safetensors",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("10 validation"), "{}", text(&o));
}
