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
//! `K`, `M`, `G`, `T`: powers of 1024, e.g. `12G`); otherwise three quarters of the smaller of
//! the physical memory and the process's address-space limit (`ulimit -v`), read from
//! `/proc/meminfo` and `/proc/self/limits`; otherwise (neither readable) [`FALLBACK_BUDGET`].
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
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget when neither the environment nor `/proc` says anything: 8 GiB.
pub const FALLBACK_BUDGET: usize = 8 << 30;

/// The environment variable read for the default budget.
pub const BUDGET_ENV: &str = "CNNKIT_MEMORY_BUDGET";

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
/// smaller of physical memory and the address-space limit, else [`FALLBACK_BUDGET`].
pub fn default_memory_budget() -> usize {
    if let Some(b) = std::env::var(BUDGET_ENV).ok().and_then(|v| parse_bytes(&v)) {
        return b.max(1);
    }
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| meminfo_total(&s));
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| address_space_limit(&s));
    match (physical, limit) {
        (None, None) => FALLBACK_BUDGET,
        (a, b) => (a.unwrap_or(usize::MAX).min(b.unwrap_or(usize::MAX)) / 4).saturating_mul(3),
    }
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

/// A byte count for messages: `40.0 GB`, `512.0 MB`, `900 bytes` (decimal units).
pub(crate) fn human(bytes: u128) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    UNITS
        .iter()
        .find(|(_, f)| bytes as f64 >= *f)
        .map_or(format!("{bytes} bytes"), |(u, f)| {
            format!("{:.1} {u}", bytes as f64 / f)
        })
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
    fn human_sizes() {
        assert_eq!(human(40_000_000_000), "40.0 GB");
        assert_eq!(human(900), "900 bytes");
        assert_eq!(human(1_500_000), "1.5 MB");
    }
}
