//! What the command writes, and where: standard output that fails (a full disk, a closed pipe)
//! is an error, never a panic; output files never land on what the command reads, and two
//! results never share one name.

use anyhow::{Result, bail};
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Writes one line to standard output.
///
/// # Errors
/// The write's failure, as "writing to standard output: …".
pub fn line(args: fmt::Arguments<'_>) -> Result<()> {
    text(format_args!("{args}\n"))
}

/// Writes to standard output without a line break (text that ends in its own).
///
/// # Errors
/// As [`line`].
pub fn text(args: fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))
}

/// `println!` that returns the failure instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::output::line(format_args!($($t)*))
    };
}
pub(crate) use outln;

/// Writes a line to standard error; a standard error that cannot be written is ignored (there
/// is nowhere left to say so). The line goes out in one write, so that the lines of the
/// processes of an MPI job (and `mpirun`'s own) do not cut into each other: standard error is
/// unbuffered, and `writeln!` would write each formatted piece on its own.
pub fn warn(args: fmt::Arguments<'_>) {
    let mut line = args.to_string();
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Standard output for a long run: a write that fails does not stop the work. The first failure
/// is kept, later lines are dropped, and [`Progress::lost`] tells what happened so the end of
/// the run can say it on standard error.
#[derive(Debug, Default)]
pub struct Progress {
    lost: Mutex<Option<(String, usize)>>,
    lines: Mutex<usize>,
}

impl Progress {
    /// Writes a line unless standard output has failed before.
    pub fn line(&self, args: fmt::Arguments<'_>) {
        self.text(format_args!("{args}\n"));
    }

    /// Writes text unless standard output has failed before.
    pub fn text(&self, args: fmt::Arguments<'_>) {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if lost.is_some() {
            return;
        }
        let mut n = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        match text(args) {
            Ok(()) => *n += 1,
            Err(e) => *lost = Some((e.to_string(), *n)),
        }
    }

    /// The first failure of standard output and how many writes had gone through before it.
    pub fn lost(&self) -> Option<(String, usize)> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The identity of an existing file (device and inode, links followed).
#[cfg(unix)]
fn identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(p: &Path) -> Option<(u64, u64)> {
    let _ = p;
    None
}

/// The files a command reads, and the outputs it has planned: an output that is one of the
/// inputs (by identity, so through links and other spellings too) or that two results would
/// share is refused before anything is written.
#[derive(Debug, Default)]
pub struct Outputs {
    inputs: HashMap<(u64, u64), PathBuf>,
    input_paths: HashMap<PathBuf, PathBuf>,
    planned: HashMap<PathBuf, String>,
}

impl Outputs {
    /// Records a file the command reads.
    pub fn input(&mut self, p: &Path) {
        if let Some(id) = identity(p) {
            self.inputs.entry(id).or_insert_with(|| p.to_path_buf());
        }
        self.input_paths.insert(normal(p), p.to_path_buf());
    }

    /// Records an output `out` for `what` (an option or the input it comes from).
    ///
    /// # Errors
    /// When `out` is an input, or an earlier output of this command.
    pub fn plan(&mut self, out: &Path, what: &str) -> Result<()> {
        let read = identity(out)
            .and_then(|id| self.inputs.get(&id))
            .or_else(|| self.input_paths.get(&normal(out)));
        if let Some(input) = read {
            let same = if normal(input) == normal(out) {
                String::new()
            } else {
                format!(" ({} is the same file)", input.display())
            };
            bail!(
                "{what}: {} is a file this command reads{same}; writing it would destroy it: choose another output",
                out.display()
            );
        }
        if let Some(earlier) = self.planned.get(&normal(out)) {
            bail!(
                "{what} and {earlier} would both be written to {}: give them different names or write them to different folders",
                out.display()
            );
        }
        self.planned.insert(normal(out), what.to_string());
        Ok(())
    }
}

/// `p` made absolute with `.` and `..` resolved lexically, and the existing part of it through
/// its links (an output does not exist yet: its nearest existing folder is resolved).
pub fn normal(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            std::path::Component::CurDir => {}
            c => lexical.push(c),
        }
    }
    let mut base = lexical.clone();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(&base).is_err() {
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut r = std::fs::canonicalize(&base).unwrap_or(base);
    r.extend(rest.iter().rev());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_over_an_input_or_twice_planned_is_refused() {
        let dir = std::env::temp_dir().join(format!("cnnkit-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.safetensors");
        std::fs::write(&model, b"x").unwrap();
        let mut o = Outputs::default();
        o.input(&model);
        let err = o.plan(&model, "--csv").unwrap_err().to_string();
        assert!(err.contains("a file this command reads"), "{err}");
        // Another spelling of the same file.
        let other = dir.join(".").join("m.safetensors");
        assert!(o.plan(&other, "--csv").is_err());
        o.plan(&dir.join("a.png"), "x.png").unwrap();
        let err = o.plan(&dir.join("a.png"), "x.jpg").unwrap_err().to_string();
        assert!(
            err.contains("x.jpg and x.png would both be written"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
