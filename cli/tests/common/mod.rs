//! Helpers shared by the command's end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("cnnkit-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn cnnkit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnnkit"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A failing command prints one `error:` message naming what was wrong, exits non-zero (1, or 2
/// for a malformed command line), never panics.
pub fn fails(dir: &Path, args: &[&str], needles: &[&str]) {
    let o = cnnkit(dir, args);
    let t = text(&o);
    assert!(matches!(o.status.code(), Some(1 | 2)), "{args:?}: {t}");
    assert!(
        !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
        "{args:?}: {t}"
    );
    assert!(t.contains("error:"), "{args:?}: {t}");
    for n in needles {
        assert!(t.contains(n), "{args:?}: expected {n:?} in {t}");
    }
}

pub fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

/// Two classes of 12x10 grey images: a bright blob on the left or on the right.
pub fn blobs(root: &Path, per_class: u32) {
    for (class, left) in [("left", true), ("right", false)] {
        for i in 0..per_class {
            png(
                &root.join(class).join(format!("{i}.png")),
                12,
                10,
                |x, y| {
                    let cx = if left { 3 } else { 8 };
                    let d = (x as i32 - cx).abs() + (y as i32 - 5).abs();
                    ((200 - 30 * d.min(6)) as u32 + i * 3 % 20) as u8
                },
            );
        }
    }
}

/// The rescue file that an error message names ("… saved it to PATH instead").
pub fn rescue_named(err: &str) -> String {
    err.lines()
        .find_map(|l| l.split_once("saved it to ")?.1.strip_suffix(" instead"))
        .unwrap_or_else(|| panic!("no rescue file named: {err}"))
        .to_string()
}

/// `cnnkit train --resume CHECKPOINT --out OUT --stop-after 1` in `dir`: it must resume and stop
/// again (status 130), leaving OUT's resume checkpoint.
pub fn resumes_one_step(dir: &Path, checkpoint: &str, out: &str) {
    let args = [
        "train",
        "--resume",
        checkpoint,
        "--out",
        out,
        "--stop-after",
        "1",
    ];
    let o = cnnkit(dir, &args);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(text(&o).contains("resuming at epoch"), "{}", text(&o));
}
