//! `cnnkit robustness`, `perturb`, `saliency` and `train --adversarial` end to end on the
//! embedded digits.

mod common;

use common::{Dir, cnnkit, fails, png, text};

/// An 8x8 ring, roughly a zero.
fn ring(path: &std::path::Path) {
    png(path, 8, 8, |x, y| {
        let (dx, dy) = (x as f32 - 3.5, y as f32 - 3.5);
        let r = (dx * dx + dy * dy).sqrt();
        if (1.8..3.4).contains(&r) { 255 } else { 0 }
    });
}

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let o = cnnkit(dir, args);
    let t = text(&o);
    assert!(o.status.success(), "{args:?}: {t}");
    t
}

#[test]
fn robustness_perturb_and_saliency_on_a_trained_model() {
    let d = Dir::new("stability");
    ok(&d.0, &["train", "--epochs", "4"]);
    let t = ok(
        &d.0,
        &[
            "robustness",
            "model.safetensors",
            "--attack",
            "fgsm",
            "--eps",
            "0,0.05,0.3",
        ],
    );
    // The table: clean accuracy, one row per budget; ε = 0 is the clean accuracy itself, and at
    // 0.3 (30 % of the pixel range) FGSM has broken most of the digits while noise has not.
    assert!(
        t.contains("clean accuracy") && t.contains("| 0.05 |"),
        "{t}"
    );
    let csv = std::fs::read_to_string(d.0.join("model.robustness-fgsm-linf.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert_eq!(rows[0][0], 0.0, "{csv}");
    let clean = format!("clean accuracy {:.2}%", 100.0 * rows[0][1]);
    let zero = format!("| 0 | {:.2}% |", 100.0 * rows[0][1]);
    assert!(
        t.contains(&clean) && t.contains(&zero),
        "ε = 0 is the clean accuracy: {t}"
    );
    let last = rows.last().unwrap();
    assert!(last[1] < 0.5 && last[2] > last[1], "{csv}");
    let svg = std::fs::read_to_string(d.0.join("model.robustness-fgsm-linf.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2);
    ok(
        &d.0,
        &[
            "robustness",
            "model.safetensors",
            "--attack",
            "pgd",
            "--norm",
            "l2",
            "--eps",
            "0.5",
            "--steps",
            "3",
            "--limit",
            "50",
        ],
    );
    assert!(d.0.join("model.robustness-pgd-l2.csv").is_file());
    // The smallest change of each decision: the quartiles in the report, a row per image in the
    // CSV whose sizes give those quartiles, every image changed within the whole range.
    let t = ok(
        &d.0,
        &[
            "robustness",
            "model.safetensors",
            "--minimal",
            "--norm",
            "l2",
            "--limit",
            "40",
            "--bisections",
            "8",
        ],
    );
    assert!(t.contains("changed 40 of 40 images"), "{t}");
    let csv = std::fs::read_to_string(d.0.join("model.robustness-minimal-l2.csv")).unwrap();
    let mut rel: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_ne!(f[1], f[2], "the class changes: {l}");
            f[4].parse().unwrap()
        })
        .collect();
    assert_eq!(rel.len(), 40, "{csv}");
    rel.sort_by(f64::total_cmp);
    // Nearest rank: the 20th of 40 is the median.
    let median = format!("median {:.4}", rel[19]);
    assert!(t.contains(&median), "{median} in {t}");
    assert!(rel[0] > 0.0 && rel[39] < 1.0, "{csv}");
    for (args, what) in [
        (&["--minimal", "--steps", "0"][..], "--steps"),
        (&["--minimal", "--bisections", "41"][..], "--bisections"),
    ] {
        let mut all = vec!["robustness", "model.safetensors"];
        all.extend_from_slice(args);
        fails(&d.0, &all, &[what]);
    }

    ring(&d.0.join("zero.png"));
    let t = ok(&d.0, &["perturb", "model.safetensors", "zero.png"]);
    assert!(t.contains("predicted 0") && t.contains("| 100 |"), "{t}");
    // Rows: iteration, ‖r‖/‖x‖, output change, class, noise's output change, noise's class.
    let rows: Vec<Vec<&str>> = t
        .lines()
        .filter(|l| l.starts_with("| ") && l.as_bytes()[2].is_ascii_digit())
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 20, "{t}");
    let num = |r: &Vec<&str>, i: usize| r[i].parse::<f64>().unwrap();
    // Growing perturbations, which end up changing the class, and at the end the worst case moves
    // the output more than noise of the same size.
    assert!(
        rows.windows(2)
            .all(|w| num(&w[1], 1) >= num(&w[0], 1) * 0.9),
        "{t}"
    );
    assert!(rows.iter().any(|r| r[3].contains("changed")), "{t}");
    let last = rows.last().unwrap();
    assert!(num(last, 2) > num(last, 4), "{t}");
    // A search that cannot move says so (it used to print its table of near-zero rows only).
    let t = ok(
        &d.0,
        &["perturb", "model.safetensors", "zero.png", "--step", "1e-9"],
    );
    assert!(t.contains("barely moved") && t.contains("--step"), "{t}");
    assert!(!ok(&d.0, &["perturb", "model.safetensors", "zero.png"]).contains("barely moved"));
    // Budgets and iterations beyond any use are refused; what the command does beyond what was
    // asked (resizing, creating a folder) it says.
    let o = cnnkit(
        &d.0,
        &["robustness", "model.safetensors", "--eps", "0.1,1e30"],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("--eps") && t.contains("larger than any perturbation"),
        "{t}"
    );
    let o = cnnkit(
        &d.0,
        &[
            "perturb",
            "model.safetensors",
            "zero.png",
            "--iterations",
            "2000000",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("--iterations"),
        "{}",
        text(&o)
    );
    png(&d.0.join("big.png"), 16, 16, |x, y| {
        if (x + y) % 5 == 0 { 255 } else { 0 }
    });
    let t = ok(
        &d.0,
        &[
            "perturb",
            "model.safetensors",
            "big.png",
            "--iterations",
            "5",
            "--out",
            "new/b.png",
        ],
    );
    assert!(t.contains("16x16; resized to 8x8"), "{t}");
    assert!(t.contains("created the folder new"), "{t}");
    assert!(d.0.join("new/b.png").is_file());
    // A negative number is a value with a range error, not an unknown option.
    for args in [
        &["robustness", "model.safetensors", "--eps", "-0.1"][..],
        &["perturb", "model.safetensors", "zero.png", "--lambda", "-1"],
        &["perturb", "model.safetensors", "zero.png", "--step", "-0.5"],
    ] {
        let o = cnnkit(&d.0, args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(!t.contains("unexpected argument"), "{args:?}: {t}");
        let name = args[args.len() - 2].trim_start_matches('-');
        assert!(t.contains(name), "{args:?}: {t}");
    }
    fails(
        &d.0,
        &["perturb", "model.safetensors", "zero.png", "--out", "f.SVG"],
        &["--out f.SVG", "PNG"],
    );
    assert!(!d.0.join("f.SVG").exists());
    let t = ok(&d.0, &["perturb", "model.safetensors", "zero.png"]);
    let strip = image::open(d.0.join("zero.perturb.png")).unwrap();
    // Four panels of 8x8 magnified 16 times, 4-pixel gaps.
    assert_eq!((strip.width(), strip.height()), (4 * 128 + 12, 128));
    // The figure beside it names what each panel shows, the perturbation's scale as drawn
    // (the factor that the text output states), and every class under its bars.
    let svg = std::fs::read_to_string(d.0.join("zero.perturb.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<image").count() == 3,
        "{svg}"
    );
    assert!(
        svg.contains("input: 0 (") && svg.contains("perturbed: "),
        "{svg}"
    );
    let factor = t
        .split("perturbation ")
        .nth(1)
        .and_then(|r| r.split('×').nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no scale in {t}"));
    assert!(
        svg.contains(&format!("r ×{factor}, grey = 0")),
        "{factor}: {svg}"
    );
    for c in 0..10 {
        assert!(svg.contains(&format!(">{c}</text>")), "class {c}: {svg}");
    }

    for m in ["grad", "smoothgrad", "ig"] {
        let t = ok(
            &d.0,
            &[
                "saliency",
                "model.safetensors",
                "zero.png",
                "--method",
                m,
                "--out-dir",
                "maps",
            ],
        );
        assert!(t.contains("zero.png: class"), "{t}");
        let img = image::open(d.0.join(format!("maps/zero.{m}.png")))
            .unwrap()
            .to_rgb8();
        // 8x8 maps are magnified to 128 pixels by default.
        assert_eq!(img.dimensions(), (128, 128));
        // Some pixel is coloured (the map is not empty), and for the plain gradient both signs
        // show: red where the class score rises, blue where it falls.
        assert!(img.pixels().any(|p| p[0] > p[2]), "{m}: no red");
        if m == "grad" {
            assert!(img.pixels().any(|p| p[2] > p[0]), "{m}: no blue");
        }
        // The figure: the map, a colour bar from −s to +s, a legend naming the class.
        let svg = std::fs::read_to_string(d.0.join(format!("maps/zero.{m}.svg"))).unwrap();
        assert!(
            svg.contains("linearGradient") && svg.contains("<image"),
            "{svg}"
        );
        assert!(svg.contains("raises the score of class 0"), "{svg}");
        let top = svg
            .split("start\">+")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or_else(|| panic!("no +s label: {svg}"));
        assert!(
            svg.contains(&format!(">-{top}<")),
            "the bar is symmetric: {svg}"
        );
    }
    ok(
        &d.0,
        &["saliency", "model.safetensors", "zero.png", "--class", "3"],
    );
}

/// Adversarial training raises accuracy under the attack it trains against (FGSM at ε = 0.2 on
/// the digits: the plain model keeps a few percent).
#[test]
fn adversarial_training_raises_robust_accuracy() {
    let d = Dir::new("adversarial");
    ok(
        &d.0,
        &["train", "--epochs", "8", "--out", "plain.safetensors"],
    );
    ok(
        &d.0,
        &[
            "train",
            "--epochs",
            "8",
            "--adversarial",
            "fgsm,eps=0.2",
            "--out",
            "adv.safetensors",
        ],
    );
    let acc = |m: &str| -> f64 {
        ok(&d.0, &["robustness", m, "--attack", "fgsm", "--eps", "0.2"]);
        let stem = m.trim_end_matches(".safetensors");
        let csv =
            std::fs::read_to_string(d.0.join(format!("{stem}.robustness-fgsm-linf.csv"))).unwrap();
        csv.lines()
            .nth(2)
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let (plain, adv) = (acc("plain.safetensors"), acc("adv.safetensors"));
    assert!(adv > plain + 0.2, "robust accuracy {plain} → {adv}");
}

#[test]
fn bad_stability_requests_get_one_clear_line() {
    let d = Dir::new("stability_errors");
    ok(&d.0, &["train", "--epochs", "1"]);
    ring(&d.0.join("zero.png"));
    fails(
        &d.0,
        &["robustness", "model.safetensors", "--attack", "cw"],
        &["--attack", "fgsm, pgd or noise"],
    );
    fails(
        &d.0,
        &["robustness", "model.safetensors", "--eps", "0.1,-1"],
        &["--eps", "'-1'"],
    );
    fails(
        &d.0,
        &["robustness", "model.safetensors", "--norm", "l1"],
        &["--norm", "linf or l2"],
    );
    fails(
        &d.0,
        &["robustness", "missing.safetensors"],
        &["missing.safetensors"],
    );
    fails(
        &d.0,
        &[
            "saliency",
            "model.safetensors",
            "zero.png",
            "--method",
            "lime",
        ],
        &["--method", "grad, smoothgrad or ig"],
    );
    fails(
        &d.0,
        &["saliency", "model.safetensors", "zero.png", "--class", "11"],
        &["--class 11"],
    );
    fails(
        &d.0,
        &["saliency", "model.safetensors", "zero.png", "--scale", "0"],
        &["--scale"],
    );
    fails(
        &d.0,
        &["saliency", "model.safetensors", "nothere.png"],
        &["nothere.png"],
    );
    fails(
        &d.0,
        &[
            "perturb",
            "model.safetensors",
            "zero.png",
            "--iterations",
            "0",
        ],
        &["iterations"],
    );
    fails(
        &d.0,
        &["train", "--epochs", "1", "--adversarial", "noise"],
        &["--adversarial", "fgsm or pgd"],
    );
    fails(
        &d.0,
        &["train", "--epochs", "1", "--adversarial", "pgd,eps=x"],
        &["--adversarial", "eps = 'x'"],
    );
    fails(
        &d.0,
        &["train", "--epochs", "1", "--adversarial", "fgsm,fraction=2"],
        &["fraction"],
    );
}

/// `--distributed` without MPI support says how to get it; a plain run started by mpirun as
/// several processes is refused (each would train alone and write the same files).
#[test]
fn distributed_runs_need_mpi_and_ask_for_it() {
    let d = Dir::new("distributed_errors");
    if !cfg!(feature = "mpi") {
        fails(
            &d.0,
            &["train", "--distributed", "--epochs", "1"],
            &["without MPI support", "--features mpi"],
        );
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cnnkit"))
        .current_dir(&d.0)
        .args(["train", "--epochs", "1"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("without --distributed"),
        "{t}"
    );
}

/// Bad `--adversarial` settings are named as such before any training (a fraction of 2 used to
/// be blamed on `--batch-size`, `--class-weights` and others; `steps=0` was found after the model
/// was printed, at the first step).
#[test]
fn bad_adversarial_settings_are_named_before_training() {
    let d = Dir::new("adversarial_settings");
    for (setting, want) in [
        ("pgd,fraction=2", "fraction"),
        ("pgd,steps=0", "steps"),
        ("fgsm,eps=3", "eps"),
    ] {
        let o = cnnkit(&d.0, &["train", "--epochs", "1", "--adversarial", setting]);
        let t = text(&o);
        assert!(!o.status.success(), "{setting}: {t}");
        let error = t.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            error.contains("--adversarial") && error.contains(want),
            "{setting}: {t}"
        );
        assert!(!error.contains("--batch-size"), "{setting}: {t}");
        assert!(
            !t.contains("params"),
            "{setting}: the model was printed first: {t}"
        );
    }
}
