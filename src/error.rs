//! The crate's error type.
//!
//! Every fallible function returns [`Result`]. Variants carry the name of the operation and of the
//! argument at fault, so a message reads like `conv2d_forward: w has 288 elements, expected 576`.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, and where.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A buffer has the wrong number of elements for the geometry it is used with.
    Length {
        /// The operation that checked the buffer.
        op: &'static str,
        /// The argument at fault.
        arg: &'static str,
        /// The number of elements the geometry requires.
        expected: usize,
        /// The number of elements the buffer has.
        got: usize,
    },
    /// A parameter is outside its valid range (zero stride, groups that do not divide the
    /// channels, a window larger than the padded input, a label out of range, ...).
    InvalidArg {
        /// The operation that checked the parameter.
        op: &'static str,
        /// The parameter at fault.
        arg: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A size computation overflowed or exceeded a limit.
    TooLarge {
        /// The operation that computed the size.
        op: &'static str,
        /// What was too large.
        what: &'static str,
    },
    /// A request for memory above the process's memory budget (see [`crate::memory`]), refused
    /// before anything was allocated.
    OverBudget {
        /// The operation that asked.
        op: &'static str,
        /// What the memory was for.
        what: &'static str,
        /// Bytes asked for.
        bytes: u128,
        /// The budget in bytes.
        budget: usize,
    },
    /// The system refused an allocation within the budget.
    OutOfMemory {
        /// The operation that asked.
        op: &'static str,
        /// What the memory was for.
        what: &'static str,
        /// Bytes asked for.
        bytes: u128,
    },
    /// A loss or statistic became NaN or infinite.
    NonFinite {
        /// The operation that produced the value.
        op: &'static str,
        /// What became non-finite.
        what: &'static str,
    },
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file's contents are malformed, inconsistent or beyond a configured limit.
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (including the inner error's message, when there is one).
        reason: String,
        /// The error underneath (a decoder's, a parser's), when there is one: what
        /// [`std::error::Error::source`] returns.
        cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Length {
                op,
                arg,
                expected,
                got,
            } => write!(f, "{op}: {arg} has {got} elements, expected {expected}"),
            Error::InvalidArg { op, arg, reason } => write!(f, "{op}: invalid {arg}: {reason}"),
            Error::TooLarge { op, what } => write!(f, "{op}: {what} is too large"),
            Error::OverBudget {
                op,
                what,
                bytes,
                budget,
            } => write!(
                f,
                "{op}: {what} would need {}, above the memory budget of {} \
                 (set {}=SIZE, such as 32G, to change it)",
                human(*bytes),
                human(*budget as u128),
                BUDGET_ENV
            ),
            Error::OutOfMemory { op, what, bytes } => {
                write!(f, "{op}: the system refused {} for {what}", human(*bytes))
            }
            Error::NonFinite { op, what } => write!(f, "{op}: {what} is not finite"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::File { path, reason, .. } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::File { cause: Some(c), .. } => Some(c.as_ref()),
            _ => None,
        }
    }
}

impl Error {
    /// Builds [`Error::Length`].
    #[cold]
    #[inline(never)]
    pub(crate) fn length(op: &'static str, arg: &'static str, expected: usize, got: usize) -> Self {
        Error::Length {
            op,
            arg,
            expected,
            got,
        }
    }

    /// Builds [`Error::InvalidArg`].
    #[cold]
    #[inline(never)]
    pub(crate) fn invalid(op: &'static str, arg: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArg {
            op,
            arg,
            reason: reason.into(),
        }
    }

    /// Builds [`Error::Io`].
    #[cold]
    #[inline(never)]
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Builds [`Error::File`].
    #[cold]
    #[inline(never)]
    pub(crate) fn file(path: &Path, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.to_path_buf(),
            reason: reason.into(),
            cause: None,
        }
    }

    /// Builds [`Error::File`] over an inner error `cause`, whose message ends the reason
    /// (`"{context}: {cause}"`, or the cause's alone when `context` is empty) and which
    /// [`std::error::Error::source`] returns.
    #[cold]
    #[inline(never)]
    pub(crate) fn file_from(
        path: &Path,
        context: &str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let reason = if context.is_empty() {
            cause.to_string()
        } else {
            format!("{context}: {cause}")
        };
        Error::File {
            path: path.to_path_buf(),
            reason,
            cause: Some(Box::new(cause)),
        }
    }

    /// Builds [`Error::TooLarge`].
    #[cold]
    #[inline(never)]
    pub(crate) fn too_large(op: &'static str, what: &'static str) -> Self {
        Error::TooLarge { op, what }
    }
}

/// Returns `Err(Error::Length)` unless `buf.len() == expected`.
#[inline]
pub(crate) fn check_len<T>(
    op: &'static str,
    arg: &'static str,
    buf: &[T],
    expected: usize,
) -> Result<()> {
    if buf.len() == expected {
        Ok(())
    } else {
        Err(Error::length(op, arg, expected, buf.len()))
    }
}

/// Returns `Err(Error::Length)` unless `buf.len() >= expected` (scratch buffers may be larger).
#[inline]
pub(crate) fn check_min_len<T>(
    op: &'static str,
    arg: &'static str,
    buf: &[T],
    expected: usize,
) -> Result<()> {
    if buf.len() >= expected {
        Ok(())
    } else {
        Err(Error::length(op, arg, expected, buf.len()))
    }
}

/// `a * b`, or [`Error::TooLarge`] if it overflows or exceeds [`MAX_ELEMENTS`].
#[inline]
pub(crate) fn mul(op: &'static str, what: &'static str, a: usize, b: usize) -> Result<usize> {
    match a.checked_mul(b) {
        Some(p) if p <= MAX_ELEMENTS => Ok(p),
        _ => Err(Error::too_large(op, what)),
    }
}

/// The largest number of `f32` elements any buffer may have: its size in bytes must fit an
/// `isize`, so element offsets and strides can be passed to GEMM as `isize`.
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 4;

/// The environment variable of the memory budget ([`crate::memory::BUDGET_ENV`]), named by
/// [`Error::OverBudget`]'s message.
pub(crate) const BUDGET_ENV: &str = "CNNKIT_MEMORY_BUDGET";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(40_000_000_000), "40.0 GB");
        assert_eq!(human(900), "900 bytes");
        assert_eq!(human(1_500_000), "1.5 MB");
    }
}
