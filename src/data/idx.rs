//! MNIST's IDX format: a 4-byte magic (`0, 0, type, ndims`), `ndims` big-endian `u32`
//! dimensions, then the data. Only unsigned-byte data (type `0x08`) is supported.
//!
//! The header is checked against the file before the data is read: the declared size must fit
//! the limit and equal what the file holds. A gzip-compressed file (`.gz`, with the `gzip`
//! feature) is read through a bounded decoder, growing the buffer only as data actually arrives.

use super::Dataset;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Limits on untrusted IDX files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdxLimits {
    /// Largest declared data size in bytes (default 1 GiB).
    pub max_bytes: u64,
}

impl Default for IdxLimits {
    fn default() -> Self {
        IdxLimits { max_bytes: 1 << 30 }
    }
}

/// Parses an IDX header and returns the dimensions and the data slice.
///
/// # Errors
/// [`Error::File`] (naming `name`) for a bad magic number, an unsupported type, a size product
/// that overflows or exceeds the limit, or data that is shorter or longer than declared.
pub fn parse_idx<'a>(
    bytes: &'a [u8],
    name: &Path,
    limits: IdxLimits,
) -> Result<(Vec<usize>, &'a [u8])> {
    let (dims, header) = parse_header(bytes, name, limits)?;
    let want = dims.iter().product::<usize>();
    let data = &bytes[header..];
    if data.len() != want {
        return Err(Error::file(
            name,
            format!(
                "header declares {want} bytes of data, file holds {}",
                data.len()
            ),
        ));
    }
    Ok((dims, data))
}

/// Reads and checks the header: `(dims, header length)`.
fn parse_header(bytes: &[u8], name: &Path, limits: IdxLimits) -> Result<(Vec<usize>, usize)> {
    let bad = |why: String| Error::file(name, format!("not an IDX file: {why}"));
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes, too short for a header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "magic starts with {:#04x} {:#04x}, expected 0 0",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "data type {:#04x}; only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(bad(format!("{nd} dimensions")));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(bad(format!(
            "{} bytes, too short for a {nd}-dimensional header",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let size = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    match size {
        Some(s) if s <= limits.max_bytes => Ok((dims, header)),
        Some(s) => Err(Error::file(
            name,
            format!(
                "declares {s} bytes of data, above the limit of {}",
                limits.max_bytes
            ),
        )),
        None => Err(Error::file(name, format!("dimensions {dims:?} overflow"))),
    }
}

/// Reads a whole IDX file (raw, or gzip-compressed if the name ends in `.gz`), checking the
/// header against the limits and the file size before reading the data.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::File`] as for [`parse_idx`].
pub fn load_idx(path: &Path, limits: IdxLimits) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let mut reader: Box<dyn Read> = if gz {
        gunzip(file, path)?
    } else {
        Box::new(file)
    };
    // Header: 4 bytes, then 4 per dimension.
    let mut head = vec![0u8; 4];
    reader.read_exact(&mut head).map_err(|e| short(path, e))?;
    let nd = (head[3] as usize).min(4);
    head.resize(4 + 4 * nd, 0);
    reader
        .read_exact(&mut head[4..])
        .map_err(|e| short(path, e))?;
    let (dims, _) = parse_header(&head, path, limits)?;
    let want = dims.iter().product::<usize>();
    if !gz {
        let on_disk = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if on_disk != (head.len() + want) as u64 {
            return Err(Error::file(
                path,
                format!(
                    "header declares {want} bytes of data, file holds {}",
                    on_disk.saturating_sub(head.len() as u64)
                ),
            ));
        }
    }
    // Read at most one byte more than declared, growing only with the data that arrives.
    let mut data = Vec::new();
    reader
        .take(want as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, e))?;
    if data.len() != want {
        return Err(Error::file(
            path,
            format!(
                "header declares {want} bytes of data, file holds {}{}",
                data.len().min(want),
                if data.len() > want { " and more" } else { "" }
            ),
        ));
    }
    Ok((dims, data))
}

fn short(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::file(path, "not an IDX file: truncated header")
    } else {
        Error::io(path, e)
    }
}

#[cfg(feature = "gzip")]
fn gunzip(file: std::fs::File, _: &Path) -> Result<Box<dyn Read>> {
    Ok(Box::new(flate2::read::GzDecoder::new(
        std::io::BufReader::new(file),
    )))
}

#[cfg(not(feature = "gzip"))]
fn gunzip(_: std::fs::File, path: &Path) -> Result<Box<dyn Read>> {
    Err(Error::file(
        path,
        "gzip-compressed IDX needs cnnkit's `gzip` feature (or decompress the file first)",
    ))
}

/// Builds a dataset from an IDX image file (`[n, h, w]`, pixels scaled by `1/max_value`) and an
/// IDX label file (`[n]`); classes are the digits of the largest label.
///
/// # Errors
/// As [`load_idx`], and [`Error::File`] if the dimensions or counts disagree.
pub fn idx_dataset(
    images: &Path,
    labels: &Path,
    max_value: f32,
    limits: IdxLimits,
) -> Result<Dataset> {
    let (idims, pixels) = load_idx(images, limits)?;
    let (ldims, labs) = load_idx(labels, limits)?;
    idx_to_dataset(images, labels, &idims, &pixels, &ldims, &labs, max_value)
}

pub(super) fn idx_to_dataset(
    images: &Path,
    labels: &Path,
    idims: &[usize],
    pixels: &[u8],
    ldims: &[usize],
    labs: &[u8],
    max_value: f32,
) -> Result<Dataset> {
    if idims.len() != 3 {
        return Err(Error::file(
            images,
            format!("expected 3 dimensions (n, h, w), got {}", idims.len()),
        ));
    }
    if ldims.len() != 1 {
        return Err(Error::file(
            labels,
            format!("expected 1 dimension (n), got {}", ldims.len()),
        ));
    }
    if idims[0] != ldims[0] {
        return Err(Error::file(
            labels,
            format!(
                "{} labels for {} images in {}",
                ldims[0],
                idims[0],
                images.display()
            ),
        ));
    }
    if idims[1] == 0 || idims[2] == 0 {
        return Err(Error::file(images, "images of zero size"));
    }
    let classes = labs.iter().copied().max().map_or(0, |m| m as usize + 1);
    if classes < 2 {
        return Err(Error::file(labels, "fewer than two classes"));
    }
    crate::memory::check_elems::<f32>("idx_dataset", "the images as f32", pixels.len() as u128)?;
    let x = pixels.iter().map(|&p| p as f32 / max_value).collect();
    Dataset::new(
        x,
        labs.iter().map(|&l| l as u32).collect(),
        [1, idims[1], idims[2]],
        (0..classes).map(|c| c.to_string()).collect(),
    )
}

/// Finds `stem` in `dir` under the usual MNIST spellings (`-idx3-ubyte`, `.idx3-ubyte`, with or
/// without `.gz`).
fn find(dir: &Path, stem: &str, kind: &str) -> Result<PathBuf> {
    for sep in ["-", "."] {
        for gz in ["", ".gz"] {
            let p = dir.join(format!("{stem}{sep}{kind}-ubyte{gz}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::file(
        dir,
        format!("no {stem}-{kind}-ubyte[.gz] file in this directory"),
    ))
}

/// Loads an MNIST-style directory (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, optionally `.gz`) as `(train, test)`,
/// pixels scaled to `[0, 1]`. A directory with no `t10k` files at all is a training-only set
/// (`test` is `None`; hold out a validation split with [`Dataset::split`]).
///
/// # Errors
/// [`Error::File`] naming a missing or malformed file (a `t10k` images file without its labels
/// file, or the reverse, included).
pub fn load_mnist_dir(dir: &Path, limits: IdxLimits) -> Result<(Dataset, Option<Dataset>)> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not a directory"));
    }
    let train = idx_dataset(
        &find(dir, "train-images", "idx3")?,
        &find(dir, "train-labels", "idx1")?,
        255.0,
        limits,
    )?;
    // A training-only directory has no t10k files at all; one of the two alone is an error.
    let (images, labels) = (
        find(dir, "t10k-images", "idx3"),
        find(dir, "t10k-labels", "idx1"),
    );
    let test = match (images, labels) {
        (Err(_), Err(_)) => None,
        (i, l) => Some(idx_dataset(&i?, &l?, 255.0, limits)?),
    };
    Ok((train, test))
}
