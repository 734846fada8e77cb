//! Checkpoints in the [safetensors](https://github.com/huggingface/safetensors) format, written
//! atomically, read with strict validation.
//!
//! A file is an 8-byte little-endian header length, a JSON header
//! (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`) and the tensor bytes.
//! A [`Sequential`](crate::Sequential) is saved under PyTorch's `state_dict` names
//! (`"0.weight"`, `"1.running_mean"`, ...), so
//! `torch.nn.Sequential.load_state_dict(safetensors.torch.load_file(path))` reads it, and the
//! other way round. The metadata keeps the architecture (`cnnkit.arch`, `cnnkit.input`), so
//! [`Sequential::load`](crate::Sequential::load) rebuilds the model (the model's side lives in
//! `model/persist.rs`), plus a hash of the tensor bytes (`cnnkit.data_hash`) so a flipped bit is
//! caught.
//!
//! The reader trusts nothing: the header length, JSON grammar, dtypes, shapes, offsets (in
//! bounds, contiguous, non-overlapping, covering the buffer) and sizes are all checked against
//! [`CheckpointLimits`] and the file size before any tensor is allocated.

use crate::error::{Error, Result};
use crate::rng::mix64;
use crate::shape::{Shape3, Tensor, TensorData};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tensors and string metadata of a safetensors file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SafeTensors {
    /// Named tensors.
    pub tensors: Vec<(String, Tensor)>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
}

/// Limits on untrusted checkpoint files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointLimits {
    /// Largest JSON header in bytes (default 16 MiB; safetensors itself allows 100 MB).
    pub max_header_bytes: u64,
    /// Largest file in bytes (default 4 GiB).
    pub max_file_bytes: u64,
    /// Most tensors (default 100 000).
    pub max_tensors: usize,
}

impl Default for CheckpointLimits {
    fn default() -> Self {
        CheckpointLimits {
            max_header_bytes: 16 << 20,
            max_file_bytes: 4 << 30,
            max_tensors: 100_000,
        }
    }
}

/// Metadata key of the checksum cnnkit writes: a hash of the tensor bytes, of every tensor's
/// name, dtype, shape and offsets, and of every other metadata entry, so a flipped bit anywhere
/// in the file is detected on load.
pub const HASH_KEY: &str = "cnnkit.hash";

/// A 64-bit hash of `bytes` (SplitMix64's mixer chained over little-endian words, then the
/// length), written as 16 hex digits.
pub fn data_hash(bytes: &[u8]) -> String {
    let mut h = 0x243F_6A88_85A3_08D3u64;
    let (words, tail) = bytes.as_chunks::<8>();
    for w in words {
        h = mix64(h ^ u64::from_le_bytes(*w));
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    h = mix64(h ^ u64::from_le_bytes(last));
    format!("{:016x}", mix64(h ^ bytes.len() as u64))
}

/// The value of [`HASH_KEY`] for a file with this metadata, these tensors
/// `(name, dtype, shape, start, end)` and data section.
fn content_hash<'a>(
    metadata: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, &'a str, Vec<u64>, usize, usize)>,
    data: &[u8],
) -> String {
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort();
    let mut desc = data_hash(data);
    for (k, v) in metadata.iter().filter(|(k, _)| *k != HASH_KEY) {
        desc.push_str(&format!("\0m{}:{k}={v}", k.len()));
    }
    for (name, dtype, shape, s, e) in tensors {
        desc.push_str(&format!(
            "\0t{}:{name}:{dtype}:{shape:?}:{s}:{e}",
            name.len()
        ));
    }
    data_hash(desc.as_bytes())
}

// ----------------------------------------------------------------------------------- writing

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Serialises `st` to safetensors bytes. The tensor hash is added to the metadata.
pub fn to_bytes(st: &SafeTensors) -> Vec<u8> {
    let mut data = Vec::new();
    let mut entries = Vec::new();
    for (name, t) in &st.tensors {
        let start = data.len();
        let dtype = match &t.data {
            TensorData::F32(v) => {
                v.iter()
                    .for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                "F32"
            }
            TensorData::I64(v) => {
                v.iter()
                    .for_each(|x| data.extend_from_slice(&x.to_le_bytes()));
                "I64"
            }
        };
        entries.push((name, dtype, &t.shape, start, data.len()));
    }
    let mut meta = st.metadata.clone();
    let described = entries.iter().map(|(n, d, sh, s, e)| {
        (
            n.as_str(),
            *d,
            sh.iter().map(|&v| v as u64).collect(),
            *s,
            *e,
        )
    });
    meta.insert(
        HASH_KEY.to_string(),
        content_hash(&st.metadata, described, &data),
    );
    let mut h = String::from("{\"__metadata__\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            h.push(',');
        }
        json_string(&mut h, k);
        h.push(':');
        json_string(&mut h, v);
    }
    h.push('}');
    for (name, dtype, shape, s, e) in entries {
        h.push(',');
        json_string(&mut h, name);
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            ":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{s},{e}]}}",
            dims.join(",")
        ));
    }
    h.push('}');
    // Pad the header with spaces so the data starts 8-byte aligned.
    while (8 + h.len()) % 8 != 0 {
        h.push(' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory, flushed to
/// disk, then renamed over `path` (and the directory flushed). A crash at any point leaves either
/// the old file or the new one, never a mixture.
///
/// What `path` names is kept: a device, a pipe, a socket or a terminal (`/dev/null`, a FIFO,
/// `/dev/stdout`, `/proc/self/fd/1`) is written through, not replaced by a regular file; a
/// symbolic link to a regular file stays a link, and the file it points to is replaced
/// atomically.
///
/// # Errors
/// [`Error::Io`] naming the file; the temporary file is removed on failure. Temporary files that
/// earlier, killed writes of the same target left behind are removed first. [`Error::File`] if
/// `path` is a folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    match OutputKind::of(path) {
        OutputKind::Folder => Err(Error::file(path, "is a folder, not a file")),
        OutputKind::Stream => write_through(path, bytes),
        OutputKind::File(target) => replace_atomically(path, &target, bytes),
    }
}

/// What an output path names.
enum OutputKind {
    /// Nothing yet, or a regular file (possibly behind links): replaced atomically at the path
    /// given (the link's target for a link).
    File(PathBuf),
    /// A device, pipe, socket or terminal, or a link into `/dev` or `/proc`: written through.
    Stream,
    Folder,
}

impl OutputKind {
    fn of(path: &Path) -> OutputKind {
        let Ok(meta) = std::fs::metadata(path) else {
            return OutputKind::File(path.to_path_buf());
        };
        if meta.is_dir() {
            return OutputKind::Folder;
        }
        if !meta.is_file() {
            return OutputKind::Stream;
        }
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            return OutputKind::File(path.to_path_buf());
        }
        match std::fs::canonicalize(path) {
            // `/dev/stdout` → `/proc/self/fd/1` → a file the shell opened: the shell holds it
            // open, so replacing it would send the bytes nowhere.
            Ok(t) if t.starts_with("/proc") || t.starts_with("/dev") => OutputKind::Stream,
            Ok(t) => OutputKind::File(t),
            Err(_) => OutputKind::Stream,
        }
    }
}

/// Writes `bytes` into what `path` names, opened for writing as a shell redirection would.
fn write_through(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // A regular file behind `/proc/self/fd/N` starts empty, as `>` would leave it.
    if f.metadata().is_ok_and(|m| m.is_file()) {
        f.set_len(0).map_err(|e| Error::io(path, e))?;
    }
    f.write_all(bytes)
        .and_then(|()| f.flush())
        .map_err(|e| Error::io(path, e))
}

/// The temporary-file-and-rename write of [`write_atomic`] to `target` (`path` is what the
/// caller named, for messages).
fn replace_atomically(path: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?;
    let nonce = mix64(
        std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
    );
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    remove_stale_temporaries(&dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}-{nonce:016x}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, target)?;
        // Make the rename itself durable (directories can be opened and synced on Unix).
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Removes temporary files `PREFIX{pid}-{nonce}` of earlier writes of the same target that were
/// killed before they could rename or remove them: those whose process is gone (Linux: no
/// `/proc/{pid}`), or, where that cannot be told or for names without a pid, older than a minute.
/// A write in progress in a live process is never touched.
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let proc_fs = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok());
        let stale = match pid {
            Some(p) if p == std::process::id() => false,
            Some(p) if proc_fs => !Path::new(&format!("/proc/{p}")).exists(),
            _ => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 60),
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `st` to `path` as safetensors, atomically ([`write_atomic`]).
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn save(path: &Path, st: &SafeTensors) -> Result<()> {
    write_atomic(path, &to_bytes(st))
}

// ----------------------------------------------------------------------------------- reading

/// The JSON values a safetensors header may hold.
#[derive(Debug)]
enum Json {
    Str(String),
    Int(u64),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("invalid JSON header at byte {}: {what}", self.i)
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> std::result::Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }
    fn value(&mut self) -> std::result::Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'"') => self.string().map(Json::Str),
            Some(b'{') | Some(b'[') if self.depth >= 4 => Err(self.err("nested too deeply")),
            Some(b'{') => {
                self.depth += 1;
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.eat(b':')?;
                        let x = self.value()?;
                        if v.iter().any(|(kk, _): &(String, Json)| *kk == k) {
                            return Err(self.err(&format!("duplicate key {k:?}")));
                        }
                        v.push((k, x));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or '}'")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(Json::Obj(v))
            }
            Some(b'[') => {
                self.depth += 1;
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        v.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or ']'")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(Json::Arr(v))
            }
            Some(b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                if matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E')) {
                    return Err(self.err("only non-negative integers are expected"));
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Json::Int)
                    .ok_or_else(|| self.err("integer out of range"))
            }
            _ => Err(self.err("expected a string, integer, array or object")),
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("bad low surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or_else(|| self.err("invalid code point"))?
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    let mut b = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                }
                c if c < 0x20 => return Err(self.err("control character in string")),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
    fn hex4(&mut self) -> std::result::Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let t = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(t, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }
}

/// Parses and validates safetensors bytes (`name` is used in messages). Supports `F32` and
/// `I64` tensors.
///
/// # Errors
/// [`Error::File`] naming `name` and the first problem found.
pub fn parse(bytes: &[u8], name: &Path, limits: CheckpointLimits) -> Result<SafeTensors> {
    let bad = |why: String| Error::file(name, format!("not a valid safetensors file: {why}"));
    if bytes.len() < 8 {
        return Err(bad(format!(
            "{} bytes, too short for a header length",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(
        bytes[..8]
            .try_into()
            .map_err(|_| bad("header length".into()))?,
    );
    if n > limits.max_header_bytes {
        return Err(bad(format!(
            "header of {n} bytes, above the limit of {}",
            limits.max_header_bytes
        )));
    }
    let n = n as usize;
    if bytes.len() - 8 < n {
        return Err(bad(format!(
            "header declares {n} bytes, file holds {}",
            bytes.len() - 8
        )));
    }
    let header = &bytes[8..8 + n];
    let data = &bytes[8 + n..];
    let mut p = Parser {
        s: header,
        i: 0,
        depth: 0,
    };
    let root = p.value().map_err(bad)?;
    p.ws();
    if p.i != header.len() {
        return Err(bad(p.err("trailing bytes after the header object")));
    }
    let Json::Obj(entries) = root else {
        return Err(bad("header is not a JSON object".into()));
    };
    if entries.len() > limits.max_tensors + 1 {
        return Err(bad(format!(
            "{} entries, above the limit of {}",
            entries.len(),
            limits.max_tensors
        )));
    }
    let mut metadata = BTreeMap::new();
    let mut spans = Vec::new();
    for (key, v) in entries {
        if key == "__metadata__" {
            let Json::Obj(m) = v else {
                return Err(bad("__metadata__ is not an object".into()));
            };
            for (k, v) in m {
                let Json::Str(s) = v else {
                    return Err(bad(format!("metadata {k:?} is not a string")));
                };
                metadata.insert(k, s);
            }
            continue;
        }
        let Json::Obj(fields) = v else {
            return Err(bad(format!("tensor {key:?} is not an object")));
        };
        let get = |f: &str| fields.iter().find(|(k, _)| k == f).map(|(_, v)| v);
        if let Some((k, _)) = fields
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
        {
            return Err(bad(format!("tensor {key:?} has an unknown field {k:?}")));
        }
        let dtype = match get("dtype") {
            Some(Json::Str(s)) => s.as_str(),
            _ => return Err(bad(format!("tensor {key:?} has no dtype"))),
        };
        let size = match dtype {
            "F32" => 4u64,
            "I64" => 8,
            other => {
                return Err(bad(format!(
                    "tensor {key:?} has dtype {other}; only F32 and I64 are supported"
                )));
            }
        };
        let ints = |v: Option<&Json>, what: &str| -> Result<Vec<u64>> {
            match v {
                Some(Json::Arr(a)) => a
                    .iter()
                    .map(|x| match x {
                        Json::Int(i) => Ok(*i),
                        _ => Err(bad(format!("tensor {key:?}: {what} must hold integers"))),
                    })
                    .collect(),
                _ => Err(bad(format!("tensor {key:?} has no {what}"))),
            }
        };
        let shape = ints(get("shape"), "shape")?;
        let off = ints(get("data_offsets"), "data_offsets")?;
        if off.len() != 2 || off[0] > off[1] {
            return Err(bad(format!("tensor {key:?} has data_offsets {off:?}")));
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor {key:?}: shape {shape:?} overflows")))?;
        let nbytes = numel
            .checked_mul(size)
            .ok_or_else(|| bad(format!("tensor {key:?}: size overflows")))?;
        if off[1] - off[0] != nbytes {
            return Err(bad(format!(
                "tensor {key:?} of shape {shape:?} needs {nbytes} bytes, its offsets span {}",
                off[1] - off[0]
            )));
        }
        if off[1] > data.len() as u64 {
            return Err(bad(format!(
                "tensor {key:?} ends at byte {} of a {}-byte data section (truncated file?)",
                off[1],
                data.len()
            )));
        }
        spans.push((off[0] as usize, off[1] as usize, key, dtype == "F32", shape));
    }
    // Offsets must tile the data section exactly: sorted, contiguous, no gap, no overlap.
    spans.sort_by_key(|s| (s.0, s.1));
    let mut at = 0;
    for (s, e, key, _, _) in &spans {
        if *s != at {
            return Err(bad(format!(
                "tensor {key:?} starts at byte {s}, expected {at} (overlap or gap)"
            )));
        }
        at = *e;
    }
    if at != data.len() {
        return Err(bad(format!(
            "tensors cover {at} bytes of a {}-byte data section",
            data.len()
        )));
    }
    if let Some(want) = metadata.get(HASH_KEY) {
        let described = spans.iter().map(|(s, e, key, f32s, shape)| {
            let dtype = if *f32s { "F32" } else { "I64" };
            (key.as_str(), dtype, shape.clone(), *s, *e)
        });
        if *want != content_hash(&metadata, described, data) {
            return Err(Error::file(
                name,
                "checkpoint is corrupt: its contents do not match their hash",
            ));
        }
    }
    let tensors = spans
        .into_iter()
        .map(|(s, e, key, f32s, shape)| {
            let b = &data[s..e];
            let data = if f32s {
                TensorData::F32(
                    b.as_chunks::<4>()
                        .0
                        .iter()
                        .map(|c| f32::from_le_bytes(*c))
                        .collect(),
                )
            } else {
                TensorData::I64(
                    b.as_chunks::<8>()
                        .0
                        .iter()
                        .map(|c| i64::from_le_bytes(*c))
                        .collect(),
                )
            };
            (
                key,
                Tensor {
                    shape: shape.into_iter().map(|d| d as usize).collect(),
                    data,
                },
            )
        })
        .collect();
    Ok(SafeTensors { tensors, metadata })
}

/// Reads and validates a safetensors file (see [`parse`]); the file size is checked against the
/// limit before it is read.
///
/// # Errors
/// [`Error::Io`] / [`Error::File`] naming the file.
pub fn load(path: &Path, limits: CheckpointLimits) -> Result<SafeTensors> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > limits.max_file_bytes {
        return Err(Error::file(
            path,
            format!("{len} bytes, above the limit of {}", limits.max_file_bytes),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path, limits)
}

// ----------------------------------------------------------------------------------- models

/// Metadata key of the layer-spec string.
pub const ARCH_KEY: &str = "cnnkit.arch";
/// Metadata key of the input shape (`CxHxW`).
pub const INPUT_KEY: &str = "cnnkit.input";
/// Metadata key of the naming of the tensors: [`NAMES_TORCH`] when they follow
/// `torch.nn.Sequential`'s module indices (a `gap` is two modules); files written before it
/// existed counted a `gap` as one, and are renamed when loaded.
pub const NAMES_KEY: &str = "cnnkit.names";
/// The value of [`NAMES_KEY`] in files written now.
pub const NAMES_TORCH: &str = "torch-modules";

/// `CxHxW`, as [`INPUT_KEY`] holds it.
pub fn shape_string(s: Shape3) -> String {
    format!("{}x{}x{}", s[0], s[1], s[2])
}

/// Parses `CxHxW`.
pub fn parse_shape(s: &str) -> Option<Shape3> {
    let v: Vec<usize> = s
        .split('x')
        .map(|t| t.trim().parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 3 && !v.contains(&0)).then(|| [v[0], v[1], v[2]])
}
