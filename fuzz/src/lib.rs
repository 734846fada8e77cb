//! The bodies of cnnkit's fuzz targets, shared by the `cargo fuzz` targets in `fuzz_targets/`
//! and by the corpus replay test (`tests/fuzz_corpus.rs`), so a committed input runs exactly the
//! same code under `cargo test` as under the fuzzer.
//!
//! Each function takes arbitrary bytes and panics only when cnnkit breaks a promise: a panic
//! inside the library, a result that disagrees with the reference kernel, a round trip that does
//! not return what was written, or an `Ok` for an input the independent check calls invalid.

use cnnkit::checkpoint::{self, CheckpointLimits};
use cnnkit::data::{IdxLimits, idx_dataset, load_idx, parse_idx};
use cnnkit::image::{ImageLimits, ImageOptions, load_image_splits};
use cnnkit::kernels::{
    Accum, avg_pool2d_backward, avg_pool2d_forward, conv2d_backward_data,
    conv2d_backward_data_scratch_len, conv2d_backward_weights, conv2d_backward_weights_scratch_len,
    conv2d_forward, conv2d_forward_scratch_len, max_pool2d_backward, max_pool2d_forward,
};
use cnnkit::preprocess::{Clahe, Gray, clahe as apply_clahe, equalize_hist};
use cnnkit::{
    Conv2dGeom, Conv2dParams, LayerSpec, Pool2dGeom, Pool2dParams, Sequential, Shape4, reference,
};
use std::path::{Path, PathBuf};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("idx", idx),
    ("image_folder", image_folder),
    ("checkpoint", checkpoint),
    ("kernels", kernels),
    ("clahe", clahe),
    ("layer_spec", layer_spec),
    ("onnx", onnx),
];

/// A per-process scratch directory, emptied before each input.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnkit-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temporary directory");
    d
}

/// Reads parameters off the front of the input; zero once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    /// A value in `0..=max`.
    fn upto(&mut self, max: usize) -> usize {
        self.u8() as usize % (max + 1)
    }
}

// ----------------------------------------------------------------------------------------- IDX

/// IDX parsing: the in-memory parser and the streaming file loader agree on every input, the
/// gzip path never panics, and a pair of files either loads as a consistent dataset or is
/// refused.
pub fn idx(data: &[u8]) {
    let limits = IdxLimits { max_bytes: 1 << 20 };
    let dir = scratch("idx");
    let raw = dir.join("x-idx3-ubyte");
    std::fs::write(&raw, data).expect("write");
    let parsed = parse_idx(data, &raw, limits);
    let loaded = load_idx(&raw, limits);
    match (&parsed, &loaded) {
        (Ok((d1, v1)), Ok((d2, v2))) => {
            assert_eq!(d1, d2);
            assert_eq!(*v1, &v2[..]);
            assert_eq!(d1.iter().product::<usize>(), v1.len());
        }
        (Err(_), Err(_)) => {}
        _ => panic!("parse_idx {parsed:?} and load_idx {loaded:?} disagree"),
    }
    let gz = dir.join("x-idx3-ubyte.gz");
    std::fs::write(&gz, data).expect("write");
    if let Ok((dims, v)) = load_idx(&gz, limits) {
        assert_eq!(dims.iter().product::<usize>(), v.len());
    }
    // Two files: after the first byte, `4 · first byte` bytes of labels, then the images.
    let rest = data.get(1..).unwrap_or_default();
    let cut = (data.first().copied().unwrap_or(0) as usize * 4).min(rest.len());
    let (images, labels) = (dir.join("i"), dir.join("l"));
    std::fs::write(&labels, &rest[..cut]).expect("write");
    std::fs::write(&images, &rest[cut..]).expect("write");
    if let Ok(ds) = idx_dataset(&images, &labels, 255.0, limits) {
        assert_eq!(
            ds.images().len(),
            ds.len() * ds.shape().iter().product::<usize>()
        );
        assert!(
            ds.labels()
                .iter()
                .all(|&l| (l as usize) < ds.classes().len())
        );
    }
}

// -------------------------------------------------------------------------------- image folder

/// Image-folder loading: the first byte picks the options, the rest is split at `\n--\n` into up
/// to six files placed in two classes (and `train`/`test` splits). Whatever the bytes, the result
/// is an error or a dataset of finite values in `[0, 1]` of the promised shape.
pub fn image_folder(data: &[u8]) {
    let mut b = Bytes(data);
    let flags = b.u8();
    let files: Vec<&[u8]> = split(b.0, b"\n--\n").take(6).collect();
    let root = scratch("images");
    let splits = flags & 16 != 0;
    for (i, f) in files.iter().enumerate() {
        let part = if splits {
            root.join(if i % 4 < 2 { "train" } else { "test" })
        } else {
            root.clone()
        };
        let class = part.join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).expect("mkdir");
        let ext = ["png", "jpg", "jpeg"][i % 3];
        std::fs::write(class.join(format!("{i}.{ext}")), f).expect("write");
    }
    let opts = ImageOptions {
        size: (flags & 8 != 0).then_some([6, 5]),
        grayscale: flags & 1 == 0,
        clahe: (flags & 2 != 0).then_some(Clahe {
            clip_limit: (flags >> 5) as f64,
            tiles: [1 + (flags >> 6) as usize, 2],
        }),
        equalize: flags & 4 != 0,
        limits: ImageLimits {
            max_file_bytes: 1 << 20,
            max_side: 1024,
            max_alloc: 64 << 20,
        },
    };
    if let Ok((train, test)) = load_image_splits(&root, &opts) {
        for ds in std::iter::once(&train).chain(test.as_ref()) {
            let [c, h, w] = ds.shape();
            assert_eq!(c, opts.channels());
            if let Some(s) = opts.size {
                assert_eq!([h, w], s);
            }
            assert_eq!(ds.images().len(), ds.len() * c * h * w);
            assert!(ds.images().iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
}

fn split<'a>(mut s: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match s.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                let head = &s[..i];
                s = &s[i + sep.len()..];
                Some(head)
            }
            None => {
                done = true;
                Some(s)
            }
        }
    })
}

// ---------------------------------------------------------------------------------- checkpoint

/// Checkpoint loading: what parses writes back to bytes that parse to the same thing, and a
/// model rebuilt from the architecture metadata (which may disagree with the tensors) either
/// loads and runs or is refused.
pub fn checkpoint(data: &[u8]) {
    let name = Path::new("fuzz.safetensors");
    let limits = CheckpointLimits::default();
    if let Ok(st) = checkpoint::parse(data, name, limits) {
        // Bytes, not values: NaN weights are legal and NaN != NaN.
        let bytes = checkpoint::to_bytes(&st);
        let again = checkpoint::parse(&bytes, name, limits).expect("a written checkpoint parses");
        assert_eq!(again.tensors.len(), st.tensors.len());
        assert_eq!(checkpoint::to_bytes(&again), bytes);
    }
    if let Ok((mut m, _)) = Sequential::from_checkpoint_bytes(data, name) {
        let [c, h, w] = m.input_shape();
        if c * h * w <= 1 << 12 {
            let x = vec![0.5; c * h * w];
            let y = m.forward(&x, 1).expect("forward on a loaded model");
            assert_eq!(y.len(), m.output_len());
        }
    }
}

// ------------------------------------------------------------------------------------- kernels

/// Conv2d and pooling geometry plus all passes on small arbitrary shapes: the geometry is
/// accepted exactly when PyTorch's rules accept it, and every pass then equals the naive
/// reference (exactly for max-pool, to float tolerance otherwise). A buffer one element short is
/// an error.
pub fn kernels(data: &[u8]) {
    let mut b = Bytes(data);
    let x = Shape4::new(1 + b.upto(2), b.upto(6), b.upto(9), b.upto(9));
    let seed = b.u8() as u64;
    let short = b.u8() % 8 == 0;
    if b.u8() % 2 == 0 {
        let c_out = b.upto(6);
        let k = [b.upto(4), b.upto(4)];
        let p = Conv2dParams {
            stride: [b.upto(3), b.upto(3)],
            padding: [b.upto(3), b.upto(3)],
            dilation: [b.upto(2), b.upto(2)],
            groups: b.upto(4),
        };
        conv(x, c_out, k, p, seed, short);
    } else {
        let p = Pool2dParams {
            window: [b.upto(4), b.upto(4)],
            stride: [b.upto(3), b.upto(3)],
            padding: [b.upto(2), b.upto(2)],
        };
        pool(x, p, seed, b.u8() % 2 == 0, short);
    }
}

/// Output size by PyTorch's formula, or `None` if the layer is invalid.
fn out_size(len: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k.checked_sub(1)?) + 1;
    (len + 2 * p).checked_sub(span).map(|r| r / s + 1)
}

/// Values in `[-1, 1)` in steps of 1/64 from a small generator.
fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 33) % 128) as f32 / 64.0 - 1.0
        })
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs reference {w}"
        );
    }
}

fn conv(x: Shape4, c_out: usize, k: [usize; 2], p: Conv2dParams, seed: u64, short: bool) {
    let valid = x.c > 0
        && c_out > 0
        && p.groups > 0
        && x.c.is_multiple_of(p.groups)
        && c_out.is_multiple_of(p.groups)
        && p.stride.iter().chain(&p.dilation).all(|&v| v > 0)
        && out_size(x.h, k[0], p.stride[0].max(1), p.padding[0], p.dilation[0]).is_some()
        && out_size(x.w, k[1], p.stride[1].max(1), p.padding[1], p.dilation[1]).is_some()
        && x.h > 0
        && x.w > 0;
    let g = match Conv2dGeom::new(x, c_out, k, p) {
        Ok(g) => {
            assert!(valid, "accepted an invalid conv {x:?} {c_out} {k:?} {p:?}");
            g
        }
        Err(_) => {
            assert!(!valid, "refused a valid conv {x:?} {c_out} {k:?} {p:?}");
            return;
        }
    };
    let mut s = seed;
    let (xv, wv, bv, dy) = (
        values(g.x_len(), &mut s),
        values(g.w_len(), &mut s),
        values(c_out, &mut s),
        values(g.y_len(), &mut s),
    );
    let cut = usize::from(short);
    let mut y = vec![f32::NAN; g.y_len() - cut.min(g.y_len())];
    let mut ws = vec![0.0; conv2d_forward_scratch_len(&g)];
    let r = conv2d_forward(&g, &xv, &wv, Some(&bv), &mut y, &mut ws);
    if short {
        assert!(r.is_err(), "conv2d_forward took a short output");
        return;
    }
    r.expect("conv2d_forward");
    close(
        "conv y",
        &y,
        &reference::conv2d_forward(&g, &xv, &wv, Some(&bv)),
        1e-4,
    );
    let mut dx = vec![f32::NAN; g.x_len()];
    let mut ws = vec![0.0; conv2d_backward_data_scratch_len(&g)];
    conv2d_backward_data(&g, &wv, &dy, &mut dx, Accum::Replace, &mut ws).expect("backward data");
    close(
        "conv dx",
        &dx,
        &reference::conv2d_backward_data(&g, &wv, &dy),
        1e-4,
    );
    let (mut dw, mut db) = (vec![f32::NAN; g.w_len()], vec![f32::NAN; c_out]);
    let mut ws = vec![0.0; conv2d_backward_weights_scratch_len(&g)];
    conv2d_backward_weights(
        &g,
        &xv,
        &dy,
        &mut dw,
        Some(&mut db),
        Accum::Replace,
        &mut ws,
    )
    .expect("backward weights");
    let (want_dw, want_db) = reference::conv2d_backward_weights(&g, &xv, &dy);
    close("conv dw", &dw, &want_dw, 1e-4);
    close("conv db", &db, &want_db, 1e-4);
}

fn pool(x: Shape4, p: Pool2dParams, seed: u64, include_pad: bool, short: bool) {
    let valid = x.c > 0
        && x.h > 0
        && x.w > 0
        && p.stride.iter().all(|&v| v > 0)
        && (0..2).all(|a| 2 * p.padding[a] <= p.window[a])
        && out_size(x.h, p.window[0], p.stride[0].max(1), p.padding[0], 1).is_some()
        && out_size(x.w, p.window[1], p.stride[1].max(1), p.padding[1], 1).is_some();
    let g = match Pool2dGeom::new(x, p) {
        Ok(g) => {
            assert!(valid, "accepted an invalid pooling {x:?} {p:?}");
            g
        }
        Err(_) => {
            assert!(!valid, "refused a valid pooling {x:?} {p:?}");
            return;
        }
    };
    let mut s = seed;
    let (xv, dy) = (values(g.x_len(), &mut s), values(g.y_len(), &mut s));
    let cut = usize::from(short);
    let mut y = vec![f32::NAN; g.y_len() - cut.min(g.y_len())];
    let mut idx = vec![0u32; g.y_len()];
    let r = max_pool2d_forward(&g, &xv, &mut y, Some(&mut idx));
    if short {
        assert!(r.is_err(), "max_pool2d_forward took a short output");
        return;
    }
    r.expect("max-pool forward");
    let (want_y, want_idx) = reference::max_pool2d_forward(&g, &xv);
    assert_eq!(y, want_y, "max-pool y");
    assert_eq!(idx, want_idx, "max-pool indices");
    let mut dx = vec![f32::NAN; g.x_len()];
    max_pool2d_backward(&g, &idx, &dy, &mut dx, Accum::Replace).expect("max-pool backward");
    close(
        "max-pool dx",
        &dx,
        &reference::max_pool2d_backward(&g, &xv, &dy),
        1e-5,
    );
    let mut y = vec![f32::NAN; g.y_len()];
    avg_pool2d_forward(&g, include_pad, &xv, &mut y).expect("avg-pool forward");
    close(
        "avg-pool y",
        &y,
        &reference::avg_pool2d_forward(&g, include_pad, &xv),
        1e-5,
    );
    let mut dx = vec![f32::NAN; g.x_len()];
    avg_pool2d_backward(&g, include_pad, &dy, &mut dx, Accum::Replace).expect("avg-pool backward");
    close(
        "avg-pool dx",
        &dx,
        &reference::avg_pool2d_backward(&g, include_pad, &dy),
        1e-5,
    );
}

// --------------------------------------------------------------------------------------- CLAHE

/// CLAHE (8- and 16-bit) and histogram equalisation on arbitrary sizes, clip limits (including
/// negative, infinite and NaN) and tile grids: an error or an image of the same size; a finite
/// negative or NaN clip limit and a zero grid are errors; equalisation and single-tile CLAHE are
/// monotone maps of the input.
pub fn clahe(data: &[u8]) {
    let mut b = Bytes(data);
    let (w, h) = (b.upto(40), b.upto(40));
    let tiles = [b.upto(12), b.upto(12)];
    let clip = match b.u8() {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -1.0,
        v => (v as f64 - 3.0) / 8.0,
    };
    let deep = b.u8() % 2 == 0;
    let p = Clahe {
        clip_limit: clip,
        tiles,
    };
    let pixels: Vec<u8> = (0..w * h).map(|_| b.u8()).collect();
    let Ok(img) = Gray::new(w, h, pixels.clone()) else {
        return;
    };
    let bad = !clip.is_finite() || clip < 0.0 || tiles.contains(&0);
    let monotone = |src: &[u8], out: &[u8]| {
        let mut pairs: Vec<(u8, u8)> = src.iter().copied().zip(out.iter().copied()).collect();
        pairs.sort_unstable();
        assert!(pairs.windows(2).all(|q| q[0].1 <= q[1].1), "not monotone");
    };
    let eq = equalize_hist(&img);
    assert_eq!((eq.width(), eq.height()), (w, h));
    monotone(&pixels, eq.data());
    if deep {
        let wide: Vec<u16> = pixels.iter().map(|&v| u16::from(v) * 257).collect();
        let img = Gray::new(w, h, wide).expect("same size");
        match apply_clahe(&img, &p) {
            Ok(o) => {
                assert!(!bad, "accepted clip {clip} tiles {tiles:?}");
                assert_eq!((o.width(), o.height()), (w, h));
            }
            Err(_) => assert!(bad || tiles[0] * tiles[1] > 256, "refused {p:?}"),
        }
    } else {
        match apply_clahe(&img, &p) {
            Ok(o) => {
                assert!(!bad, "accepted clip {clip} tiles {tiles:?}");
                assert_eq!((o.width(), o.height()), (w, h));
                if tiles == [1, 1] {
                    monotone(&pixels, o.data());
                }
            }
            Err(_) => assert!(bad, "refused {p:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------- layer spec

/// The layer-spec parser: a parsed list prints to a string that parses to the same list, and a
/// network built from it on a small input runs forward to the shape it reports.
pub fn layer_spec(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(specs) = LayerSpec::parse_list(s) else {
        return;
    };
    let text = LayerSpec::list_to_string(&specs);
    let again = LayerSpec::parse_list(&text).expect("a printed layer list parses");
    assert_eq!(again, specs, "{s:?} printed as {text:?}");
    // A short string can ask for gigabytes (`dense(4000000000)`, or wide padding repeated):
    // build with a parameter limit, and run only networks of modest activations.
    for input in [[1, 8, 8], [3, 5, 7]] {
        if let Ok(mut m) = Sequential::new_with_limit(input, &specs, 0, 1 << 20) {
            let acts: usize = m
                .layer_shapes()
                .iter()
                .map(|s| s.iter().product::<usize>())
                .sum();
            // ... nor of much work (`conv(6,28,7,503)` on a flattened input is 12 GFLOP; under
            // AddressSanitizer even 0.5 GFLOP exceeds the 20 s timeout).
            if acts > 1 << 20 || acts.saturating_mul(m.param_count()) > 1 << 26 {
                continue;
            }
            let [c, h, w] = input;
            let x = vec![0.25; 2 * c * h * w];
            let n = m.output_len();
            let y = m.forward(&x, 2).expect("forward");
            assert_eq!(y.len(), 2 * n);
        }
    }
}

// ---------------------------------------------------------------------------------------- onnx

/// ONNX import: a file either reads into a model (small limits, so no input asks for much
/// memory) that runs and writes back to ONNX that reads again with the same weights, or is
/// refused; never a panic.
pub fn onnx(data: &[u8]) {
    use cnnkit::onnx::{self, ExportOptions, ImportOptions, Limits};
    let options = ImportOptions {
        input: None,
        limits: Limits {
            max_file_bytes: 1 << 20,
            max_nodes: 200,
            max_tensors: 200,
            max_elements: 1 << 16,
        },
    };
    let Ok(im) = onnx::from_bytes(data, &options) else {
        return;
    };
    let mut m = im.model;
    let [c, h, w] = m.input_shape();
    if c * h * w > 1 << 12 || m.param_count() > 1 << 16 {
        return;
    }
    let x = vec![0.5; c * h * w];
    let y = m.forward(&x, 1).expect("forward on an imported model");
    assert_eq!(y.len(), m.output_len());
    if let Ok(bytes) = onnx::to_bytes(&m, &ExportOptions::default()) {
        let back =
            onnx::from_bytes(&bytes, &ImportOptions::default()).expect("an exported model reads");
        assert_eq!(back.model.param_count(), m.param_count());
    }
}
