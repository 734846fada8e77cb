//! The memory budget: every allocation whose size comes from user input (image size, batch size,
//! layer widths, data-set size) is checked against it *before* it is made, and an over-budget
//! request is an [`Error::OverBudget`] that says what was asked and what the budget is, instead
//! of an aborted process. The allocations themselves are fallible too: if the system refuses one
//! that is within the budget, the result is an [`Error::OutOfMemory`], not an abort.
//!
//! The budget is one number of bytes per process, compared with each request (a data set, the
//! activations of a batch, the parameters and optimizer state, an image being resized).
//!
//! **Default.** `CNNKIT_MEMORY_BUDGET` from the environment if set (bytes, or with a suffix
//! `K`, `M`, `G`, `T`: powers of 1024, e.g. `12G`); otherwise three quarters of the smallest of
//! the physical memory, the process's address-space limit (`ulimit -v`) and the memory limit of
//! its control group (a container's or a batch job's: cgroup v1 or v2), read from
//! `/proc/meminfo`, `/proc/self/limits` and `/proc/self/cgroup`; otherwise (none readable)
//! [`FALLBACK_BUDGET`].
//! [`set_memory_budget`] overrides it for the process.
//!
//! # Example
//! ```
//! use cnnkit::{LayerSpec, Sequential, memory};
//! let specs = LayerSpec::parse_list("flatten,dense(10)")?;
//! memory::set_memory_budget(1 << 20); // 1 MiB
//! // 10 x 4M parameters and their gradients need 320 MB: refused before anything is allocated.
//! let err = Sequential::new([1, 2048, 2048], &specs, 0).unwrap_err();
//! assert!(err.to_string().contains("memory budget"), "{err}");
//! memory::set_memory_budget(memory::default_memory_budget());
//! # Ok::<(), cnnkit::Error>(())
//! ```

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget when neither the environment nor `/proc` says anything: 8 GiB.
pub const FALLBACK_BUDGET: usize = 8 << 30;

/// The environment variable read for the default budget.
pub const BUDGET_ENV: &str = crate::error::BUDGET_ENV;

/// 0: not determined yet.
static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// The current budget in bytes (see the module docs for the default).
pub fn memory_budget() -> usize {
    match BUDGET.load(Ordering::Relaxed) {
        0 => {
            let b = default_memory_budget();
            // Another thread may have set it meanwhile: keep theirs.
            let _ = BUDGET.compare_exchange(0, b, Ordering::Relaxed, Ordering::Relaxed);
            BUDGET.load(Ordering::Relaxed)
        }
        b => b,
    }
}

/// Sets the budget in bytes for this process (at least 1).
pub fn set_memory_budget(bytes: usize) {
    BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

/// The default budget, computed afresh: `CNNKIT_MEMORY_BUDGET` if set and valid, else ¾ of the
/// smallest of physical memory, the address-space limit (`ulimit -v`) and the memory limit of
/// the process's control group (Docker, Kubernetes, Slurm: cgroup v1 or v2, the group and every
/// group above it), else [`FALLBACK_BUDGET`]. A malformed `CNNKIT_MEMORY_BUDGET` is passed over
/// here; [`budget_from_env`] reports it.
pub fn default_memory_budget() -> usize {
    if let Ok(Some(b)) = budget_from_env() {
        return b;
    }
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| meminfo_total(&s));
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| address_space_limit(&s));
    let group = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| cgroup_limit(&s, Path::new("/sys/fs/cgroup")));
    match (physical, limit, group) {
        (None, None, None) => FALLBACK_BUDGET,
        (a, b, c) => {
            let least = [a, b, c].into_iter().flatten().min().unwrap_or(usize::MAX);
            (least / 4).saturating_mul(3)
        }
    }
}

/// `CNNKIT_MEMORY_BUDGET`: `Ok(None)` when unset, the bytes when valid.
///
/// # Errors
/// [`Error::InvalidArg`] naming the value when it is set but not a size of at least one byte
/// (`0`, `abc`, `-1G`).
pub fn budget_from_env() -> Result<Option<usize>> {
    match std::env::var_os(BUDGET_ENV) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .and_then(parse_bytes)
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(
                    "memory budget",
                    BUDGET_ENV,
                    format!(
                        "'{}' is not a memory size of at least one byte; use bytes or K, M, G, T such as 8G or 1.5G",
                        v.to_string_lossy()
                    ),
                )
            }),
    }
}

/// The tightest memory limit of the control groups in `proc_cgroup` (the text of
/// `/proc/self/cgroup`) under the cgroup file system mounted at `root`: v2 `memory.max`
/// (`0::/path`) and v1 `memory.limit_in_bytes` (`N:memory:/path`, or `memory` among other
/// controllers), for the group and each group above it. A group's path that is not under
/// `root` (a cgroup namespace shows the group as the root) is read at the root. `None` when
/// no limit is set.
fn cgroup_limit(proc_cgroup: &str, root: &Path) -> Option<usize> {
    let mut least: Option<usize> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (mount, file) = if controllers.is_empty() {
            let v2 = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            (v2, "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = mount.join(path.trim_start_matches('/'));
        if !dir.starts_with(&mount) || !dir.is_dir() {
            dir = mount.clone();
        }
        loop {
            let limit = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                // v1 writes "no limit" as a page-rounded i64::MAX.
                .filter(|&v| v < (1u64 << 62))
                .and_then(|v| usize::try_from(v).ok());
            if let Some(l) = limit {
                least = Some(least.map_or(l, |m| m.min(l)));
            }
            if dir == mount || !dir.pop() {
                break;
            }
        }
    }
    least
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn meminfo_total(s: &str) -> Option<usize> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The soft `Max address space` of `/proc/self/limits`, in bytes (`None` if unlimited).
fn address_space_limit(s: &str) -> Option<usize> {
    let line = s.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses a size in bytes: a number with an optional suffix `K`, `M`, `G` or `T` (powers of
/// 1024; `KB`, `KiB`, `GB`, … mean the same), such as `512M` or `12G`. `None` if malformed, zero
/// or too large.
pub fn parse_bytes(s: &str) -> Option<usize> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    let v: f64 = num.parse().ok()?;
    let bytes = v * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// `Err(Error::OverBudget)` if `bytes` exceed the budget.
pub(crate) fn check(op: &'static str, what: &'static str, bytes: u128) -> Result<()> {
    let budget = memory_budget();
    if bytes > budget as u128 {
        Err(Error::OverBudget {
            op,
            what,
            bytes,
            budget,
        })
    } else {
        Ok(())
    }
}

/// As [`check`] for `count` values of `T` (any product of user-given sizes, computed in `u128`
/// so it cannot overflow).
pub(crate) fn check_elems<T>(op: &'static str, what: &'static str, count: u128) -> Result<()> {
    check(
        op,
        what,
        count.saturating_mul(std::mem::size_of::<T>() as u128),
    )
}

/// `v[..len]`, growing `v` first (zero-filled) if it is shorter: checked against the budget and
/// fallible, so neither a huge request nor a refusing allocator aborts the process. Allocates
/// only when `v` grows.
pub(crate) fn grow<'a, T: Clone + Default>(
    op: &'static str,
    what: &'static str,
    v: &'a mut Vec<T>,
    len: usize,
) -> Result<&'a mut [T]> {
    if v.len() < len {
        check_elems::<T>(op, what, len as u128)?;
        v.try_reserve_exact(len - v.len())
            .map_err(|_| out_of_memory::<T>(op, what, len))?;
        v.resize(len, T::default());
    }
    Ok(&mut v[..len])
}

/// A new vector of `len` copies of `value`, checked and fallible as [`grow`].
pub(crate) fn vec_of<T: Clone>(
    op: &'static str,
    what: &'static str,
    len: usize,
    value: T,
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(op, what, &mut v, len)?;
    v.resize(len, value);
    Ok(v)
}

/// Reserves room for `additional` more elements in `v`, checked and fallible as [`grow`].
pub(crate) fn reserve<T>(
    op: &'static str,
    what: &'static str,
    v: &mut Vec<T>,
    additional: usize,
) -> Result<()> {
    let total = v.len() as u128 + additional as u128;
    check_elems::<T>(op, what, total)?;
    v.try_reserve_exact(additional)
        .map_err(|_| out_of_memory::<T>(op, what, additional))
}

#[cold]
fn out_of_memory<T>(op: &'static str, what: &'static str, len: usize) -> Error {
    Error::OutOfMemory {
        op,
        what,
        bytes: len as u128 * std::mem::size_of::<T>() as u128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("12g"), Some(12 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_bytes(" 2 KB "), Some(2048));
        for bad in ["", "G", "-1G", "0", "1X", "1e400", "nan"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn proc_files_are_read_as_bytes() {
        assert_eq!(
            meminfo_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24576000 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max address space         4096000000           unlimited            bytes\n";
        assert_eq!(address_space_limit(limits), Some(4096000000));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_space_limit(unlimited), None);
    }

    #[test]
    fn cgroup_limits_are_read_for_the_group_and_its_parents() {
        let root = std::env::temp_dir().join(format!("cnnkit-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // v1: the group's own limit is unlimited, its parent's is 512 MiB.
        let v1 = root.join("memory/slurm/job_7");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            root.join("memory/slurm/memory.limit_in_bytes"),
            "536870912\n",
        )
        .unwrap();
        let text = "4:memory:/slurm/job_7\n3:cpu:/\n";
        assert_eq!(cgroup_limit(text, &root), Some(512 << 20));
        // v2 (mounted at the root itself): "max" is no limit; the tighter of the two counts.
        std::fs::write(root.join("cgroup.controllers"), "memory\n").unwrap();
        let v2 = root.join("kubepods/pod1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "268435456\n").unwrap();
        std::fs::write(root.join("kubepods/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit("0::/kubepods/pod1\n", &root), Some(256 << 20));
        assert_eq!(
            cgroup_limit(&format!("{text}0::/kubepods/pod1\n"), &root),
            Some(256 << 20)
        );
        // A namespaced group ("/" or a path not under the mount) reads the root's files.
        std::fs::write(root.join("memory.max"), "1073741824\n").unwrap();
        assert_eq!(cgroup_limit("0::/\n", &root), Some(1 << 30));
        assert_eq!(cgroup_limit("0::/elsewhere\n", &root), Some(1 << 30));
        // No limit anywhere.
        assert_eq!(cgroup_limit("1:cpu:/\n", &root), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
