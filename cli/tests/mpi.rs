//! `mpirun -np N cnnkit train --distributed` on loopback (the command built with the `mpi`
//! feature; `.ci/run` installs Open MPI and runs these): the weights of one process on the same
//! global batches, the same bits on a repeated run, resuming at another process count, a clear
//! error for a batch that does not split, and a killed process failing the job without touching
//! the saved model.
#![cfg(feature = "mpi")]

mod common;

use common::{Dir, cnnkit, text};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mpirun_cmd(dir: &Path, np: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &np.to_string()])
        .arg(env!("CARGO_BIN_EXE_cnnkit"))
        .args(args)
        .current_dir(dir)
        // Containers run tests as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn mpirun(dir: &Path, np: usize, args: &[&str]) -> Output {
    mpirun_cmd(dir, np, args).output().unwrap()
}

fn weights(path: &Path) -> Vec<f32> {
    let (m, _) = cnnkit::Sequential::load(path).unwrap();
    m.params().to_vec()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * scale,
            "{what}: weight {i}: {x} vs {y}"
        );
    }
}

const RUN: &[&str] = &[
    "train",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--threads",
    "1",
];

#[test]
fn two_processes_train_the_weights_of_one() {
    let d = Dir::new("mpi_equal");
    let one = cnnkit(&d.0, &[RUN, &["--out", "one.safetensors"]].concat());
    assert!(one.status.success(), "{}", text(&one));
    for out in ["two.safetensors", "two_again.safetensors"] {
        let o = mpirun(&d.0, 2, &[RUN, &["--distributed", "--out", out]].concat());
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        // Process 0 alone reports.
        assert_eq!(t.matches("test accuracy").count(), 1, "{t}");
        assert!(t.contains("distributed: 2 processes, 16 images"), "{t}");
    }
    let (w1, w2) = (
        weights(&d.0.join("one.safetensors")),
        weights(&d.0.join("two.safetensors")),
    );
    assert_close(&w2, &w1, "2 processes vs 1");
    let again = weights(&d.0.join("two_again.safetensors"));
    assert!(
        again
            .iter()
            .zip(&w2)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a repeated 2-process run gives other bits"
    );
}

/// A graph model (given as a file) trains over MPI as a chain does: 2 processes give the weights
/// of 1 (without batch norm, whose statistics each process takes over its own share, as
/// PyTorch's data-parallel training without `SyncBatchNorm`).
#[test]
fn a_graph_trains_on_two_processes_as_on_one() {
    let d = Dir::new("mpi_graph");
    let arch = d.0.join("graph.txt");
    std::fs::write(
        &arch,
        "stem = conv(8,3,p=1), relu\n\
         body = conv(8,3,p=1), tanh\n\
         sum = add(stem, body), relu\n\
         cat(sum, stem), maxpool(2), gap, dense(10)\n",
    )
    .unwrap();
    let arch = arch.to_str().unwrap();
    let one = cnnkit(
        &d.0,
        &[RUN, &["--arch", arch, "--out", "one.safetensors"]].concat(),
    );
    assert!(one.status.success(), "{}", text(&one));
    let two = mpirun(
        &d.0,
        2,
        &[
            RUN,
            &["--arch", arch, "--distributed", "--out", "two.safetensors"],
        ]
        .concat(),
    );
    assert!(two.status.success(), "{}", text(&two));
    assert_close(
        &weights(&d.0.join("two.safetensors")),
        &weights(&d.0.join("one.safetensors")),
        "a graph on 2 processes vs 1",
    );
}

/// Interrupted on 2 processes, resumed on 1 (and the other way round): the weights of an
/// uninterrupted run.
#[test]
fn a_run_resumes_at_another_process_count() {
    let d = Dir::new("mpi_resume");
    let full = cnnkit(&d.0, &[RUN, &["--out", "full.safetensors"]].concat());
    assert!(full.status.success(), "{}", text(&full));
    let want = weights(&d.0.join("full.safetensors"));
    let o = mpirun(
        &d.0,
        2,
        &[
            RUN,
            &[
                "--distributed",
                "--stop-after",
                "20",
                "--out",
                "a.safetensors",
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let o = cnnkit(&d.0, &["train", "--resume", "a.resume.safetensors"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_close(
        &weights(&d.0.join("a.safetensors")),
        &want,
        "2 then 1 process",
    );
    let o = cnnkit(
        &d.0,
        &[RUN, &["--stop-after", "20", "--out", "b.safetensors"]].concat(),
    );
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let o = mpirun(
        &d.0,
        2,
        &["train", "--resume", "b.resume.safetensors", "--distributed"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_close(
        &weights(&d.0.join("b.safetensors")),
        &want,
        "1 then 2 processes",
    );
}

#[test]
fn a_batch_that_does_not_split_is_one_clear_error() {
    let d = Dir::new("mpi_split");
    let o = mpirun(&d.0, 3, &[RUN, &["--distributed"]].concat());
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("error:") && t.contains("does not split over 3 workers"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

/// A process killed mid-run fails the whole job with an error; the model saved before stays
/// loadable (process 0 writes only when training ends, and atomically).
#[test]
fn a_killed_process_fails_the_job_and_the_saved_model_stays_loadable() {
    let d = Dir::new("mpi_kill");
    let o = mpirun(&d.0, 2, &[RUN, &["--distributed"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let before = weights(&d.0.join("model.safetensors"));
    let marker = format!("killed-{}.safetensors", std::process::id());
    let mut job = mpirun_cmd(
        &d.0,
        2,
        &[
            "train",
            "--distributed",
            "--epochs",
            "100000",
            "--threads",
            "1",
            "--out",
            &marker,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The two training processes (not the launcher, whose command line holds the marker too).
    let ranks = || -> Vec<String> {
        let out = Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "cnnkit")
            })
            .map(str::to_string)
            .collect()
    };
    let mut pids = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        pids = ranks();
        if pids.len() == 2 {
            break;
        }
    }
    if pids.len() != 2 {
        let _ = job.kill();
        panic!("the job did not start: {pids:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    Command::new("kill")
        .args(["-9", &pids[1]])
        .status()
        .unwrap();
    let status = job.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the job went on without a process");
    assert!(!err.is_empty(), "no error message");
    assert_eq!(weights(&d.0.join("model.safetensors")), before);
    assert!(!d.0.join(&marker).exists(), "a killed job saved a model");
    assert!(ranks().is_empty(), "processes left running");
}

/// `mpirun` with one process per argument list (Open MPI's `A : B` form), so that the processes
/// of one job are given different data, models or options.
fn mpirun_each(dir: &Path, per_process: &[Vec<String>]) -> (Output, std::time::Duration) {
    let mut c = Command::new("mpirun");
    c.arg("--oversubscribe");
    for (i, args) in per_process.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", "1"])
            .arg(env!("CARGO_BIN_EXE_cnnkit"))
            .args(args);
    }
    c.current_dir(dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let started = std::time::Instant::now();
    let o = c.output().unwrap();
    (o, started.elapsed())
}

/// The job failed within seconds, with exactly one `error:` line (from one process) that holds
/// `needles`, and no sign of memory corruption or of an MPI error without a message.
fn one_error(o: &Output, took: std::time::Duration, needles: &[&str]) {
    let t = text(o);
    assert!(!o.status.success(), "{t}");
    assert!(took.as_secs() < 60, "took {took:?}: {t}");
    let errors: Vec<&str> = t.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{t}");
    for n in needles {
        assert!(errors[0].contains(n), "expected {n:?} in {t}");
    }
    for bad in ["free()", "panicked", "MPI_ERR", "corrupted", "Segmentation"] {
        assert!(!t.contains(bad), "{bad}: {t}");
    }
}

fn args(v: &[&str]) -> Vec<String> {
    let base = ["train", "--distributed", "--epochs", "1", "--threads", "1"];
    base.iter().chain(v).map(|s| s.to_string()).collect()
}

/// Processes whose models, data or options differ are refused before the first collective
/// operation (which used to pass buffers of different lengths and corrupt the heap), with one
/// message from one process that names what differs.
#[test]
fn mismatched_processes_are_refused_before_any_collective() {
    let d = Dir::new("mpi_mismatch");
    common::blobs(&d.0.join("a"), 8);
    common::blobs(&d.0.join("b"), 8);
    // One node's folder has a third class.
    common::blobs(&d.0.join("three"), 8);
    common::png(&d.0.join("three/middle/0.png"), 12, 10, |x, _| x as u8 * 20);
    // One more image.
    common::blobs(&d.0.join("more"), 8);
    common::png(&d.0.join("more/left/extra.png"), 12, 10, |x, _| x as u8 * 9);
    // As many images, other labels: two images trade folders.
    common::blobs(&d.0.join("swapped"), 8);
    std::fs::rename(
        d.0.join("swapped/left/0.png"),
        d.0.join("swapped/right/x.png"),
    )
    .unwrap();
    std::fs::rename(
        d.0.join("swapped/right/1.png"),
        d.0.join("swapped/left/x.png"),
    )
    .unwrap();
    let data = |p: &str| ["--data", p, "--grayscale", "--batch-size", "4"].map(String::from);
    let with = |p: &str, extra: &[&str]| -> Vec<String> {
        let mut v = args(extra);
        v.extend(data(p));
        v
    };
    let cases: [(Vec<String>, Vec<String>, &[&str]); 7] = [
        (
            with("a", &[]),
            with("a", &["--arch", "mlp"]),
            &["number of model parameters", "on process 1"],
        ),
        (
            with("a", &[]),
            with("three", &[]),
            &["number of model parameters"],
        ),
        (
            with("a", &[]),
            with("more", &[]),
            &[
                "number of training images",
                "16 on process 0, 17 on process 1",
            ],
        ),
        (
            with("a", &[]),
            with("swapped", &[]),
            &["training data (images and labels)"],
        ),
        (with("a", &[]), with("b", &["--epochs", "2"]), &["--epochs"]),
        (with("a", &[]), with("b", &["--seed", "5"]), &["--seed"]),
        (
            with("a", &[]),
            with("b", &["--lr", "0.5"]),
            &["the other training options"],
        ),
    ];
    for (a, b, needles) in cases {
        let (o, took) = mpirun_each(&d.0, &[a, b]);
        one_error(&o, took, needles);
        assert!(!d.0.join("model.safetensors").exists());
    }
    // Identical folders in two places train.
    let (o, _) = mpirun_each(&d.0, &[with("a", &[]), with("b", &[])]);
    assert!(o.status.success(), "{}", text(&o));
}

/// An error on one process (a missing data folder, a memory budget) ends the whole job within
/// seconds with that process's message, instead of leaving the others waiting.
#[test]
fn an_error_on_one_process_ends_the_job_with_its_message() {
    let d = Dir::new("mpi_one_fails");
    let (o, took) = mpirun_each(&d.0, &[args(&[]), args(&["--data", "nowhere"])]);
    one_error(&o, took, &["process 1 of 2", "nowhere"]);
    let mut budget = vec!["--memory-budget".to_string(), "1K".to_string()];
    budget.extend(args(&[]));
    let (o, took) = mpirun_each(&d.0, &[budget, args(&[])]);
    one_error(&o, took, &["process 0 of 2", "memory budget"]);
    // A failure inside training on one process (its budget refuses the batch's activations):
    // MPI_Abort ends the others, which would wait for its gradient.
    let big = ["--batch-size", "256"];
    let mut small_budget = vec!["--memory-budget".to_string(), "1M".to_string()];
    small_budget.extend(args(&big));
    let (o, took) = mpirun_each(&d.0, &[args(&big), small_budget]);
    one_error(&o, took, &["process 1", "activations of the batch"]);
    // An error every process meets is said once.
    let (o, took) = mpirun_each(
        &d.0,
        &[args(&["--val-split", "nan"]), args(&["--val-split", "nan"])],
    );
    one_error(&o, took, &["process 0 of 2", "--val-split"]);
}

/// An interrupted job: every process waits until process 0 has written the resume checkpoint,
/// so the launcher never ends the job before it is complete.
#[test]
fn an_interrupted_job_writes_its_checkpoint_before_any_process_exits() {
    let d = Dir::new("mpi_interrupt");
    for i in 0..4 {
        let out = format!("m{i}.safetensors");
        let o = mpirun(
            &d.0,
            2,
            &[RUN, &["--distributed", "--stop-after", "3", "--out", &out]].concat(),
        );
        assert_eq!(o.status.code(), Some(130), "{}", text(&o));
        let rp = d.0.join(format!("m{i}.resume.safetensors"));
        assert!(rp.is_file(), "run {i}: no checkpoint: {}", text(&o));
        cnnkit::Trainer::load(&rp).unwrap();
    }
}
