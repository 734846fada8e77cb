//! The `cnnkit` command end to end: training on the embedded digits and on image folders,
//! evaluation, prediction, preprocessing, resuming, and the error messages for bad input.

mod common;

use common::{Dir, blobs, cnnkit, fails, png, text};
use std::process::Command;

#[test]
fn train_eval_predict_on_the_embedded_digits() {
    let d = Dir::new("digits");
    let o = cnnkit(&d.0, &["train", "--epochs", "4"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("epoch   4/4") && t.contains("test accuracy:") && t.contains("confusion matrix"),
        "{t}"
    );
    for f in [
        "model.safetensors",
        "model.history.csv",
        "model.curves.svg",
        "model.confusion.csv",
        "model.report.txt",
    ] {
        assert!(d.0.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(d.0.join("model.history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let o = cnnkit(&d.0, &["eval", "model.safetensors"]);
    assert!(
        o.status.success() && text(&o).contains("355 images: accuracy"),
        "{}",
        text(&o)
    );
    // An 8x8 image with a bright vertical bar: whatever the class, predict prints probabilities.
    png(
        &d.0.join("one.png"),
        8,
        8,
        |x, _| if x == 4 { 255 } else { 0 },
    );
    let o = cnnkit(&d.0, &["predict", "model.safetensors", "one.png"]);
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("one.png: ") && t.contains("0=") && t.contains("9="),
        "{t}"
    );
    // Output into a pipe whose reader has gone (`cnnkit predict … | head -0`): the process ends
    // quietly, as `cat` would, instead of panicking in `println!`.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnkit"))
        .current_dir(&d.0)
        .args(["predict", "model.safetensors", "one.png"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[test]
fn train_on_an_image_folder_with_clahe_and_binary_metrics() {
    let d = Dir::new("folder");
    blobs(&d.0.join("data/train"), 12);
    blobs(&d.0.join("data/test"), 4);
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--data",
            "data",
            "--size",
            "8x8",
            "--grayscale",
            "--clahe",
            "2.0,2x2",
            "--epochs",
            "8",
            "--arch",
            "conv(4,3,p=1),relu,maxpool(2),flatten,dense(2)",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--out",
            "xray.safetensors",
            "--threads",
            "2",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("sensitivity") && t.contains("specificity") && t.contains("ROC AUC"),
        "{t}"
    );
    assert!(
        t.contains("1x8x8") && t.contains("left") && t.contains("right"),
        "{t}"
    );
    let o = cnnkit(&d.0, &["eval", "xray.safetensors", "--data", "data"]);
    assert!(
        o.status.success() && text(&o).contains("8 images"),
        "{}",
        text(&o)
    );
    let o = cnnkit(
        &d.0,
        &[
            "predict",
            "xray.safetensors",
            "data/test/left/0.png",
            "data/test/right/1.png",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// `--resume` after an interruption ends with the weights of the uninterrupted run.
#[test]
fn resume_after_interruption_matches_an_uninterrupted_run() {
    let d = Dir::new("resume");
    let arch = "conv(8,3,p=1),bn,relu,maxpool(2),flatten,dropout(0.3),dense(10)";
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--epochs",
            "3",
            "--arch",
            arch,
            "--seed",
            "5",
            "--out",
            "full.safetensors",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--epochs",
            "3",
            "--arch",
            arch,
            "--seed",
            "5",
            "--out",
            "part.safetensors",
            "--stop-after",
            "60",
        ],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(130), "{t}");
    assert!(
        t.contains("cnnkit train --resume part.resume.safetensors"),
        "{t}"
    );
    assert!(!d.0.join("part.safetensors").exists());
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--resume",
            "part.resume.safetensors",
            "--threads",
            "1",
        ],
    );
    let t = text(&o);
    // 46 steps per epoch (1,442 images in batches of 32): 60 steps end 14 steps into epoch 2.
    assert!(
        o.status.success() && t.contains("resuming at epoch 2, step 14"),
        "{t}"
    );
    assert!(
        !d.0.join("part.resume.safetensors").exists(),
        "the resume file is removed once done"
    );
    let load = |f: &str| {
        cnnkit::Sequential::load(&d.0.join(f))
            .unwrap()
            .0
            .state_dict()
    };
    assert_eq!(load("full.safetensors"), load("part.safetensors"));
}

#[test]
fn preprocess_writes_clahe_images_equal_to_the_library() {
    let d = Dir::new("pre");
    png(&d.0.join("in/a/x.png"), 20, 16, |x, y| {
        (x * 5 + y * 3) as u8
    });
    png(&d.0.join("in/b.png"), 9, 9, |x, _| (x * 20) as u8);
    let o = cnnkit(&d.0, &["preprocess", "--clahe=3.0,4x2", "in", "out"]);
    assert!(o.status.success(), "{}", text(&o));
    let got = image::open(d.0.join("out/a/x.png"))
        .unwrap()
        .to_luma8()
        .into_raw();
    let src: Vec<u8> = (0..320)
        .map(|i| ((i % 20) * 5 + (i / 20) * 3) as u8)
        .collect();
    let c = cnnkit::preprocess::Clahe {
        clip_limit: 3.0,
        tiles: [4, 2],
    };
    let want = cnnkit::preprocess::clahe(&cnnkit::preprocess::Gray::new(20, 16, src).unwrap(), &c)
        .unwrap();
    assert_eq!(got, want.into_data());
    assert!(d.0.join("out/b.png").is_file());
    let o = cnnkit(
        &d.0,
        &[
            "preprocess",
            "--equalize",
            "--brightness",
            "-10",
            "--contrast",
            "1.2",
            "--size",
            "4x5",
            "in/b.png",
            "one.png",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        image::open(d.0.join("one.png"))
            .unwrap()
            .to_luma8()
            .dimensions(),
        (5, 4)
    );
}

#[test]
fn bad_input_gives_one_clear_message() {
    let d = Dir::new("errors");
    fails(
        &d.0,
        &["train", "--data", "missing"],
        &["missing", "no such file"],
    );
    fails(&d.0, &["train", "--size", "8x"], &["--size", "not a size"]);
    fails(
        &d.0,
        &["train", "--clahe", "abc"],
        &["--clahe", "not a CLAHE setting"],
    );
    fails(
        &d.0,
        &["train", "--optimizer", "lbfgs"],
        &["--optimizer", "unknown optimizer 'lbfgs'"],
    );
    fails(&d.0, &["train", "--arch", "conv(8,"], &["--arch"]);
    fails(
        &d.0,
        &["train", "--arch", "resnet51"],
        &["--arch resnet51", "not a preset", "a zoo model (resnet18"],
    );
    fails(
        &d.0,
        &["train", "--arch", "conv(8,3),flatten,dense(3)"],
        &["ends with 3 outputs", "10 classes"],
    );
    fails(
        &d.0,
        &["train", "--arch", "lenet", "--epochs", "1", "--clahe"],
        &["apply to image folders"],
    );
    fails(&d.0, &["train", "--lr", "-1"], &["lr", "non-negative"]);
    fails(
        &d.0,
        &["train", "--momentum", "0.9"],
        &["--momentum applies to sgd and rmsprop"],
    );
    fails(&d.0, &["train", "--batch-size", "0"], &["batch_size"]);
    fails(&d.0, &["train", "--threads", "0"], &["--threads"]);
    fails(&d.0, &["train", "--schedule", "linear"], &["--schedule"]);
    // Image folders: an empty class, an unreadable image, a size the architecture cannot take.
    blobs(&d.0.join("imgs"), 2);
    std::fs::create_dir_all(d.0.join("imgs/empty")).unwrap();
    fails(&d.0, &["train", "--data", "imgs"], &["empty", "no .png"]);
    std::fs::remove_dir(d.0.join("imgs/empty")).unwrap();
    std::fs::write(d.0.join("imgs/left/bad.png"), b"not an image").unwrap();
    fails(
        &d.0,
        &["train", "--data", "imgs"],
        &["bad.png", "cannot decode"],
    );
    std::fs::remove_file(d.0.join("imgs/left/bad.png")).unwrap();
    fails(
        &d.0,
        &[
            "train", "--data", "imgs", "--size", "2x2", "--arch", "lenet",
        ],
        &[
            "does not fit 3x2x2",
            "maxpool(2) cannot take an input of shape 16x1x1",
        ],
    );
    // A layer written wrong is named as such, not blamed on the image size.
    let o = cnnkit(&d.0, &["train", "--arch", "noise(-1),flatten,dense(10)"]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("a layer is not valid"),
        "{t}"
    );
    assert!(t.contains("std = -1") && !t.contains("does not fit"), "{t}");
    // A corrupt IDX directory.
    std::fs::create_dir_all(d.0.join("idx")).unwrap();
    std::fs::write(
        d.0.join("idx/train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2],
    )
    .unwrap();
    for f in ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(d.0.join("idx").join(f), [0u8, 0, 8, 1, 0, 0, 0, 1, 0]).unwrap();
    }
    std::fs::write(
        d.0.join("idx/t10k-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0],
    )
    .unwrap();
    fails(
        &d.0,
        &["train", "--data", "idx"],
        &["train-images-idx3-ubyte", "declares 7056 bytes"],
    );
    // Models and images for eval / predict.
    std::fs::write(
        d.0.join("junk.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ",
    )
    .unwrap();
    fails(
        &d.0,
        &["eval", "junk.safetensors"],
        &["junk.safetensors", "not a valid safetensors"],
    );
    fails(
        &d.0,
        &["predict", "nope.safetensors", "x.png"],
        &["nope.safetensors"],
    );
    fails(
        &d.0,
        &["train", "--resume", "junk.safetensors"],
        &["--resume junk.safetensors"],
    );
    fails(
        &d.0,
        &["preprocess", "nothing", "out"],
        &["nothing", "no such file"],
    );
}

/// Ctrl-C (SIGINT) during training finishes the current step, saves a resumable checkpoint and
/// exits with 130; the checkpoint resumes.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_resumable_checkpoint() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let d = Dir::new("sigint");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnkit"))
        .current_dir(&d.0)
        .args(["train", "--epochs", "1000", "--out", "m.safetensors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until an epoch has been reported: the handler is installed and training is running.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.starts_with("epoch ") {
        line.clear();
    }
    assert!(line.starts_with("epoch "), "training did not start");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("continue with: cnnkit train --resume m.resume.safetensors"),
        "{err}"
    );
    assert!(!d.0.join("m.safetensors").exists());
    // The checkpoint resumes (stopping again after a few steps to keep the test short).
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--resume",
            "m.resume.safetensors",
            "--stop-after",
            "3",
        ],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(130), "{t}");
    assert!(t.contains("resuming at epoch"), "{t}");
}

/// ONNX both ways from the command: a trained model exported (its normalisation and classes in
/// the file) evaluates, predicts and audits as the checkpoint does; a model from elsewhere
/// (torch.onnx.export, no cnnkit metadata) is evaluated on given data; `train --init` fine-tunes
/// an ONNX model; a wrong file is one clear message.
#[test]
fn onnx_export_eval_predict_and_fine_tune() {
    let d = Dir::new("onnx");
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--epochs",
            "2",
            "--arch",
            "conv(8,3,p=1),bn,relu,maxpool(2),flatten,dense(10)",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cnnkit(
        &d.0,
        &["export", "model.safetensors", "--onnx", "model.onnx"],
    );
    let t = text(&o);
    assert!(o.status.success() && t.contains("wrote model.onnx"), "{t}");
    let accuracy = |o: &std::process::Output| {
        let t = text(o);
        let at = t.find("accuracy ").unwrap_or_else(|| panic!("{t}"));
        t[at..].split_whitespace().nth(1).unwrap().to_string()
    };
    let a = cnnkit(&d.0, &["eval", "model.safetensors"]);
    let b = cnnkit(&d.0, &["eval", "model.onnx"]);
    assert!(b.status.success(), "{}", text(&b));
    assert_eq!(accuracy(&a), accuracy(&b), "{}", text(&b));
    png(
        &d.0.join("one.png"),
        8,
        8,
        |x, _| if x == 4 { 255 } else { 0 },
    );
    let p1 = text(&cnnkit(&d.0, &["predict", "model.safetensors", "one.png"]));
    let p2 = text(&cnnkit(&d.0, &["predict", "model.onnx", "one.png"]));
    assert_eq!(p1, p2);
    let o = cnnkit(&d.0, &["robustness", "model.onnx", "--eps", "0.05"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cnnkit(
        &d.0,
        &["saliency", "model.onnx", "one.png", "--out-dir", "sal"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = cnnkit(
        &d.0,
        &[
            "perturb",
            "model.onnx",
            "one.png",
            "--iterations",
            "5",
            "--out",
            "strip.png",
        ],
    );
    assert!(
        o.status.success() && d.0.join("strip.png").is_file(),
        "{}",
        text(&o)
    );
    // Fine-tuning the exported model.
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--epochs",
            "1",
            "--init",
            "model.onnx",
            "--out",
            "tuned.safetensors",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // An ONNX file with no cnnkit metadata (torch.onnx.export's), on data of its shape.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/onnx/hostile/two_inputs.onnx"
    );
    fails(
        &d.0,
        &["eval", fixture],
        &["two_inputs.onnx", "one input; this graph has 2"],
    );
    fails(
        &d.0,
        &["eval", "model.onnx", "--arch", "cnn"],
        &["--arch is not used"],
    );
    std::fs::write(d.0.join("broken.onnx"), b"\x0a\xff\xff\xff").unwrap();
    fails(
        &d.0,
        &["predict", "broken.onnx", "one.png"],
        &["broken.onnx", "truncated"],
    );
}
