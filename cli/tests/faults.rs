//! Fault injection: the command under full disks (small tmpfs mounts), closed and full standard
//! output, signals at every phase, memory cgroups, hostile paths (link cycles, FIFOs, devices,
//! non-UTF-8 names) and outputs that name its own inputs. Each test states the promise it keeps
//! (docs/reliability.md lists them). Mounts and cgroups need root: where they cannot be made,
//! those parts say so on standard error and are skipped.

mod common;

use common::{Dir, blobs, cnnkit, fails, png, rescue_named, resumes_one_step, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cnnkit"))
}

/// Runs `c` to its end, failing the test if it takes longer than `secs` (a hang).
fn within(mut c: Command, secs: u64) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("hung for {secs} s: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cnnkit train --epochs 1 --out OUT` in `dir`, which must succeed.
fn train_one_epoch(dir: &Path, out: &str) {
    let o = cnnkit(dir, &["train", "--epochs", "1", "--out", out]);
    assert!(o.status.success(), "{}", text(&o));
}

fn weights(p: &Path) -> Vec<f32> {
    cnnkit::Sequential::load(p).unwrap().0.params().to_vec()
}

/// A tmpfs of `kib` KiB at `dir` (unmounted when dropped), or `None` where mounting is not
/// allowed (not root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: cannot mount a tmpfs here (not root?): full-disk cases skipped");
        }
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Promise: an output never destroys what it names. A device stays a device (and gets no
/// report files beside it), a link to standard output stays a link, an output that is one of
/// the command's inputs is refused, and two inputs never share one output.
#[cfg(unix)]
#[test]
fn outputs_never_destroy_what_they_name() {
    use std::os::unix::fs::{FileTypeExt, symlink};
    let d = Dir::new("faults_outputs");
    train_one_epoch(&d.0, "/dev/null");
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    for side in [
        "null.history.csv",
        "null.report.txt",
        "null.resume.safetensors",
    ] {
        assert!(!Path::new("/dev").join(side).exists(), "/dev/{side}");
    }
    train_one_epoch(&d.0, "m.safetensors");
    let model = std::fs::read(d.0.join("m.safetensors")).unwrap();
    png(&d.0.join("a/0.png"), 8, 8, |x, y| (x * 20 + y) as u8);
    png(&d.0.join("b/0.png"), 8, 8, |x, _| (x * 30) as u8);

    // --csv through a link to standard output: the CSV comes out there, the link stays.
    symlink("/proc/self/fd/1", d.0.join("out.csv")).unwrap();
    let o = cnnkit(
        &d.0,
        &["predict", "m.safetensors", "a/0.png", "--csv", "out.csv"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("path,predicted"));
    let link = std::fs::symlink_metadata(d.0.join("out.csv")).unwrap();
    assert!(link.file_type().is_symlink());

    // Outputs over inputs.
    for (csv, needle) in [
        (
            "m.safetensors",
            "m.safetensors is a file this command reads",
        ),
        ("./a/../a/0.png", "a file this command reads"),
    ] {
        let args = ["predict", "m.safetensors", "a/0.png", "--csv", csv];
        fails(&d.0, &args, &[needle]);
    }
    assert_eq!(std::fs::read(d.0.join("m.safetensors")).unwrap(), model);
    let before = std::fs::read(d.0.join("a/0.png")).unwrap();
    fails(
        &d.0,
        &["preprocess", "--size", "4", "a/0.png", "a/0.png"],
        &["a file this command reads"],
    );
    assert_eq!(std::fs::read(d.0.join("a/0.png")).unwrap(), before);

    // x.png, x.jpg and x.JPEG would all become x.png: refused before anything is written.
    png(&d.0.join("three/x.png"), 8, 8, |x, _| x as u8);
    for name in ["x.jpg", "x.JPEG"] {
        image::GrayImage::from_pixel(8, 8, image::Luma([80u8]))
            .save_with_format(d.0.join("three").join(name), image::ImageFormat::Jpeg)
            .unwrap();
    }
    fails(
        &d.0,
        &["preprocess", "three", "three_out"],
        &["would both be written to three_out/x.png"],
    );
    assert!(!d.0.join("three_out").exists());

    // Two inputs called 0.png: two saliency maps.
    let o = cnnkit(
        &d.0,
        &[
            "saliency",
            "m.safetensors",
            "a/0.png",
            "b/0.png",
            "--out-dir",
            "maps",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let mut maps: Vec<String> = std::fs::read_dir(d.0.join("maps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    maps.sort();
    assert_eq!(
        maps,
        ["0-2.grad.png", "0-2.grad.svg", "0.grad.png", "0.grad.svg"],
        "{}",
        text(&o)
    );
}

/// Promise: standard output that fails never costs a run. Training goes on when stdout is full
/// or closed, saves its model and says so on standard error; the other commands end with one
/// error line instead of a panic.
#[cfg(unix)]
#[test]
fn standard_output_that_fails_loses_nothing() {
    let d = Dir::new("faults_stdout");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut c = bin();
    c.current_dir(&d.0)
        .args(["train", "--epochs", "2", "--out", "full.safetensors"]);
    c.stdout(full());
    let o = c.stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("standard output failed") && err.contains("full.safetensors"),
        "{err}"
    );
    weights(&d.0.join("full.safetensors"));
    assert!(d.0.join("full.history.csv").is_file());

    for args in [
        &["predict", "full.safetensors", "full.safetensors"][..],
        &["eval", "full.safetensors"],
    ] {
        let mut c = bin();
        c.current_dir(&d.0).args(args).stdout(full());
        let o = c.stderr(Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if args[0] == "eval" {
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(err.contains("error: writing to standard output"), "{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }

    // `train | head`: the reader goes away after the first line.
    let mut child = bin()
        .current_dir(&d.0)
        .args(["train", "--epochs", "2", "--out", "piped.safetensors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("Broken pipe") || err.contains("standard output failed"),
        "{err}"
    );
    weights(&d.0.join("piped.safetensors"));
}

/// Promise: a loss that becomes non-finite ends the run with what it has: the best epoch's
/// model when one was kept, else the state before the failing step as a resume checkpoint.
#[test]
fn a_non_finite_loss_saves_what_there_is() {
    let d = Dir::new("faults_nonfinite");
    // Epoch 1 learns; from epoch 2 the learning rate is 1e12 times larger.
    let schedule = "--schedule=step:1:1e12";
    fails(
        &d.0,
        &[
            "train",
            "--epochs=3",
            "--optimizer=sgd",
            schedule,
            "--val-split=0.2",
            "--keep-best",
            "--out=best.safetensors",
        ],
        &["not finite", "best epoch so far (1)", "best.safetensors"],
    );
    let w = weights(&d.0.join("best.safetensors"));
    assert!(w.iter().all(|v| v.is_finite()));
    fails(
        &d.0,
        &[
            "train",
            "--optimizer=sgd",
            "--lr=1e12",
            "--out=nf.safetensors",
        ],
        &["not finite", "saved in nf.resume.safetensors"],
    );
    let (trainer, _) = cnnkit::Trainer::load(&d.0.join("nf.resume.safetensors")).unwrap();
    assert!(trainer.model().params().iter().all(|v| v.is_finite()));
}

/// Promise: what cannot work is refused before the first step: a decision threshold without
/// both classes in the validation set, a folder or a full disk as --out, selection on the test
/// set, a validation fraction outside [0, 1).
#[test]
fn what_cannot_work_is_refused_before_training() {
    let d = Dir::new("faults_before");
    // One image of the second class: a 10 % validation split holds one class only.
    for i in 0..10 {
        png(&d.0.join(format!("two/a/{i}.png")), 8, 8, |x, _| {
            (x + i) as u8
        });
    }
    png(&d.0.join("two/b/0.png"), 8, 8, |_, _| 200);
    let o = cnnkit(
        &d.0,
        &[
            "train",
            "--data",
            "two",
            "--val-split",
            "0.1",
            "--threshold-for",
            "sensitivity=0.9",
        ],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("needs images of both classes") && !t.contains("epoch "),
        "{t}"
    );
    std::fs::create_dir(d.0.join("w")).unwrap();
    fails(&d.0, &["train", "--out", "w/sub/"], &["is a folder"]);
    for args in [
        &["--keep-best"][..],
        &["--early-stopping", "2"],
        &["--schedule", "plateau"],
    ] {
        let all: Vec<&str> = ["train"].iter().chain(args).copied().collect();
        fails(&d.0, &all, &[args[0], "--val-split", "bias"]);
    }
    for v in ["-0.5", "nan", "1", "inf"] {
        fails(
            &d.0,
            &["train", "--val-split", v],
            &["--val-split", "[0, 1)"],
        );
    }
    let Some(_small) = Tmpfs::mount(&d.0.join("small"), 16) else {
        return;
    };
    fails(
        &d.0,
        &["train", "--out", "small/m.safetensors"],
        &["no room for the model"],
    );
}

/// Promise: a disk that fills during training, with the temporary folder unusable too, still
/// loses nothing: the resume checkpoint goes to a rescue file in the current folder, named in
/// the message, and resumes.
#[cfg(unix)]
#[test]
fn a_disk_that_fills_mid_run_still_keeps_the_checkpoint() {
    let d = Dir::new("faults_fill");
    let Some(_small) = Tmpfs::mount(&d.0.join("small"), 256) else {
        return;
    };
    let mut child = bin()
        .current_dir(&d.0)
        .args(["train", "--epochs", "1000", "--out", "small/m.safetensors"])
        .env("TMPDIR", d.0.join("no-such-folder"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut lines, &mut line).unwrap() > 0
        && !line.starts_with("epoch ")
    {
        line.clear();
    }
    // Fill the disk to the last byte.
    let _ = std::fs::write(d.0.join("small/fill"), vec![7u8; 512 << 10]);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let rescue = rescue_named(&err);
    assert!(rescue.starts_with(d.0.to_str().unwrap()), "{err}");
    resumes_one_step(&d.0, &rescue, "m.safetensors");
}

/// Promise: a resume is what it seems. Data with the same number of images but other labels is
/// refused; relative --data and --out resume from any folder; options that a resume would
/// ignore are refused.
#[test]
fn a_resume_is_what_it_seems() {
    let d = Dir::new("faults_resume");
    blobs(&d.0.join("data"), 6);
    std::fs::create_dir_all(d.0.join("run")).unwrap();
    std::fs::create_dir_all(d.0.join("elsewhere")).unwrap();
    let start = [
        "train",
        "--data",
        "../data",
        "--grayscale",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--out",
        "m.safetensors",
        "--stop-after",
        "2",
    ];
    let o = cnnkit(&d.0.join("run"), &start);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    fails(
        &d.0.join("elsewhere"),
        &[
            "train",
            "--resume",
            "../run/m.resume.safetensors",
            "--epochs",
            "5",
        ],
        &["--epochs cannot be changed"],
    );
    fails(
        &d.0.join("elsewhere"),
        &[
            "train",
            "--resume",
            "../run/m.resume.safetensors",
            "--lr=0.1",
        ],
        &["--lr cannot be changed"],
    );
    let o = cnnkit(
        &d.0.join("elsewhere"),
        &[
            "train",
            "--resume",
            "../run/m.resume.safetensors",
            "--threads",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    weights(&d.0.join("run/m.safetensors"));
    assert!(!d.0.join("elsewhere/m.safetensors").exists());

    // Two images trade classes: as many images, other labels.
    let o = cnnkit(&d.0.join("run"), &start);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let data = d.0.join("data");
    std::fs::rename(data.join("left/0.png"), data.join("tmp.png")).unwrap();
    std::fs::rename(data.join("right/0.png"), data.join("left/0.png")).unwrap();
    std::fs::rename(data.join("tmp.png"), data.join("right/0.png")).unwrap();
    fails(
        &d.0.join("run"),
        &["train", "--resume", "m.resume.safetensors"],
        &["the training data changed", "other pixels or labels"],
    );
}

/// Promise: limits see the machine. A malformed CNNKIT_MEMORY_BUDGET is an error, a memory
/// cgroup's limit bounds the default budget (a too-large request is refused, not OOM-killed),
/// and --threads has a ceiling.
#[test]
fn limits_see_the_machine() {
    let d = Dir::new("faults_limits");
    for v in ["0", "abc", "-1G", "1.5X"] {
        let o = bin()
            .current_dir(&d.0)
            .args(["train", "--epochs", "1"])
            .env("CNNKIT_MEMORY_BUDGET", v)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{v}: {t}");
        assert!(t.contains("CNNKIT_MEMORY_BUDGET") && t.contains(v), "{t}");
    }
    let o = bin()
        .current_dir(&d.0)
        .args(["train", "--epochs", "1", "--out", "m.safetensors"])
        .env("CNNKIT_MEMORY_BUDGET", "1.5G")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    fails(
        &d.0,
        &["train", "--threads", "5000"],
        &["--threads 5000: at most"],
    );
    fails(
        &d.0,
        &["eval", "m.safetensors", "--threads", "100000"],
        &["at most"],
    );

    // A memory cgroup of 256 MiB (cgroup v1 or v2, where this process may make one).
    blobs(&d.0.join("imgs"), 2);
    let Some(group) = MemoryGroup::new(256 << 20) else {
        return;
    };
    let o = Command::new("sh")
        .current_dir(&d.0)
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec \"$0\" \"$@\"",
            group.procs().display()
        ))
        .arg(env!("CARGO_BIN_EXE_cnnkit"))
        .args(["train", "--data", "imgs", "--size", "4000x4000"])
        .env_remove("CNNKIT_MEMORY_BUDGET")
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("above the memory budget of 201.3 MB"), "{t}");
}

/// A memory cgroup of its own (removed when dropped), v2 where the unified hierarchy takes the
/// memory controller, else v1.
struct MemoryGroup(PathBuf, &'static str);

impl MemoryGroup {
    fn new(bytes: u64) -> Option<MemoryGroup> {
        let name = format!("cnnkit-test-{}", std::process::id());
        // A real hierarchy: v2 names the memory controller at its root, v1 has the limit file.
        let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"));
        let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file();
        let tries = [
            (v2, "/sys/fs/cgroup", "memory.max", "cgroup.procs"),
            (
                v1,
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "cgroup.procs",
            ),
        ];
        for (_, root, limit, procs) in tries.into_iter().filter(|t| t.0) {
            let dir = Path::new(root).join(&name);
            if std::fs::create_dir(&dir).is_ok() {
                if std::fs::write(dir.join(limit), bytes.to_string()).is_ok() {
                    return Some(MemoryGroup(dir, procs));
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        eprintln!("note: cannot make a memory cgroup here (not root?): the cgroup case is skipped");
        None
    }
    fn procs(&self) -> PathBuf {
        self.0.join(self.1)
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Promise: no command hangs on a file. Link cycles end at once with an error naming the link;
/// a FIFO named like an image is refused, never opened; a path that is not UTF-8 is an error
/// naming it, not a panic.
#[cfg(unix)]
#[test]
fn no_command_hangs_on_a_file() {
    use std::os::unix::fs::symlink;
    let d = Dir::new("faults_files");
    train_one_epoch(&d.0, "m.safetensors");
    png(&d.0.join("cyc/x/0.png"), 8, 8, |x, _| x as u8);
    symlink("..", d.0.join("cyc/x/up")).unwrap();
    symlink("..", d.0.join("cyc/x/up2")).unwrap();
    let ok = Command::new("mkfifo")
        .arg(d.0.join("f.png"))
        .status()
        .unwrap();
    assert!(ok.success());
    let cases: [(&[&str], &str); 5] = [
        (&["predict", "m.safetensors", "cyc"], "a link cycle"),
        (&["preprocess", "cyc", "cyc_out"], "a link cycle"),
        (&["predict", "m.safetensors", "f.png"], "not a regular file"),
        (&["preprocess", "f.png", "g.png"], "not a regular file"),
        (
            &["saliency", "m.safetensors", "f.png"],
            "not a regular file",
        ),
    ];
    for (args, needle) in cases {
        let mut c = bin();
        c.current_dir(&d.0).args(args);
        let o = within(c, 20);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains(needle), "{t}");
    }
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"data-\xff\xfe");
    let o = bin()
        .current_dir(&d.0)
        .arg("train")
        .arg("--data")
        .arg(bad)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("is not UTF-8") && !t.contains("panicked"), "{t}");
}

/// Promise: a signal at any phase of a run (loading, training, evaluating, saving) leaves no
/// half-written file: every model or checkpoint under its final name loads, and no temporary
/// file stays behind.
#[cfg(unix)]
#[test]
fn a_signal_at_any_phase_leaves_no_torn_file() {
    let d = Dir::new("faults_signals");
    for (i, delay_ms) in [0u64, 30, 80, 150, 300, 600, 1000, 1600, 2400]
        .iter()
        .enumerate()
    {
        let out = format!("s{i}.safetensors");
        let child = bin()
            .current_dir(&d.0)
            .args(["train", "--epochs", "1", "--out", &out])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        let model = d.0.join(&out);
        let resume = d.0.join(format!("s{i}.resume.safetensors"));
        if model.exists() {
            weights(&model);
        }
        if resume.exists() {
            cnnkit::Trainer::load(&resume).unwrap();
        }
        if o.status.code() == Some(130) {
            assert!(resume.is_file(), "interrupted without a checkpoint: {err}");
        }
    }
    let leftovers: Vec<String> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains("write-probe"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
