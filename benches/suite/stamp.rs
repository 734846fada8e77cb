//! What a speed measurement was taken on: the commit, the CPU model and the instruction set
//! cnnkit's kernels ran with. Written beside every saved run (`compare --json`, criterion
//! baselines) so that two runs can be compared knowingly (`speed-diff`).
#![allow(dead_code)]

use std::process::Command;

/// The commit (short hash, `-dirty` with uncommitted changes; `unknown` outside a git checkout).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(h) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{h}-dirty"),
            _ => h,
        },
        None => "unknown".into(),
    }
}

/// The CPU's model name (`/proc/cpuinfo`), or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => vec![' '],
            c => vec![c],
        })
        .collect()
}

/// The stamp as one JSON object: `{"commit": …, "cpu": …, "isa": …}`.
pub fn json() -> String {
    format!(
        r#"{{"commit":"{}","cpu":"{}","isa":"{}"}}"#,
        escape(&commit()),
        escape(&cpu_model()),
        cnnkit::arch::active()
    )
}
