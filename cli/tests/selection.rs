//! `cnnkit train` with augmentation, class weights, the balanced sampler, model selection and a
//! decision threshold, then `predict` with top-k, CSV and that threshold; and their errors.

mod common;

use common::{Dir, blobs, cnnkit, fails, text};

#[test]
fn train_with_every_option_then_predict_with_the_stored_threshold() {
    let d = Dir::new("selection");
    blobs(&d.0.join("data/train"), 16);
    blobs(&d.0.join("data/test"), 4);
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--data",
            "data",
            "--grayscale",
            "--arch",
            "resnet",
            "--epochs",
            "6",
            "--batch-size",
            "8",
            "--augment",
            "flip,rotate=10,crop=0.9,translate=0.05,brightness=0.1,contrast=0.2,noise=0.01",
            "--class-weights",
            "balanced",
            "--sampler",
            "balanced",
            "--val-split",
            "0.25",
            "--monitor",
            "sens@0.5",
            "--keep-best",
            "--early-stopping",
            "3",
            "--schedule",
            "plateau:0.5:1",
            "--threshold-for",
            "sensitivity=1",
            "--out",
            "m.safetensors",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("kept epoch "), "{t}");
    assert!(
        t.contains("threshold ") && t.contains("for sensitivity=1"),
        "{t}"
    );
    assert!(t.contains("res(32)"), "the resnet preset: {t}");
    // eval applies the stored threshold to the same test images and gets the same rates.
    let tail = |t: &str, head: &str| -> String {
        let l = t
            .lines()
            .find(|l| l.starts_with(head))
            .unwrap_or_else(|| panic!("{t}"));
        l.rsplit_once("sensitivity ").unwrap().1.to_string()
    };
    let trained = tail(&t, "at the threshold ");
    let o = cnnkit(&d.0, &["eval", "m.safetensors"]);
    let e = text(&o);
    assert!(o.status.success(), "{e}");
    assert_eq!(tail(&e, "at the stored threshold "), trained, "{e}");
    // predict: the stored threshold, top-1, a CSV row per image of the folder.
    let o = cnnkit(
        &d.0,
        &[
            "predict",
            "m.safetensors",
            "data/test",
            "--top-k",
            "1",
            "--csv",
            "p.csv",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("decision: right when P(right) >= "), "{t}");
    assert!(t.contains("(sensitivity=1)"), "{t}");
    let csv = std::fs::read_to_string(d.0.join("p.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "path,predicted,p_left,p_right");
    assert_eq!(lines.len(), 1 + 8, "{csv}");
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 4, "{l}");
        let (p0, p1): (f32, f32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        assert!((p0 + p1 - 1.0).abs() < 1e-5, "{l}");
    }
    // top-1 prints one class per image.
    let first = t.lines().find(|l| l.contains(".png: ")).unwrap();
    assert_eq!(first.matches('=').count(), 1, "{first}");
    // An explicit threshold overrides the stored one: 0 makes everything the second class.
    let o = cnnkit(
        &d.0,
        &["predict", "m.safetensors", "data/test", "--threshold", "0"],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(t.matches(": right (").count(), 8, "{t}");
}

#[test]
fn selection_and_imbalance_options_say_what_is_wrong() {
    let d = Dir::new("selection-errors");
    blobs(&d.0.join("data"), 4);
    let base = ["train", "--data", "data", "--grayscale", "--epochs", "1"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra).copied().collect()
    };
    fails(
        &d.0,
        &with(&["--threshold-for", "sensitivity=0.9"]),
        &["--val-split"],
    );
    fails(
        &d.0,
        &with(&["--val-split", "0.25", "--threshold-for", "recall=0.9"]),
        &["sensitivity=S or specificity=S"],
    );
    fails(&d.0, &with(&["--sampler", "random"]), &["--sampler random"]);
    fails(
        &d.0,
        &with(&["--augment", "zoom"]),
        &["unknown augmentation 'zoom'"],
    );
    fails(
        &d.0,
        &with(&["--class-weights", "1,x"]),
        &["--class-weights"],
    );
    fails(&d.0, &with(&["--class-weights", "1,2,3"]), &["one finite"]);
    fails(&d.0, &with(&["--monitor", "f1"]), &["--monitor"]);
    fails(&d.0, &with(&["--early-stopping", "0"]), &["at least 1"]);
    // AUC needs two classes and validation data: the digits have ten.
    fails(
        &d.0,
        &["train", "--epochs", "1", "--monitor", "auc"],
        &["two classes"],
    );
    fails(
        &d.0,
        &["train", "--epochs", "1", "--schedule", "plateau:2"],
        &["factor"],
    );
}
