//! Image files (feature `image`): decoding PNG and JPEG with limits, the preprocessing pipeline
//! (grey or RGB, CLAHE or histogram equalisation, resize) into `f32` CHW, and
//! `torchvision.datasets.ImageFolder`-style folders.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::preprocess::{self, Clahe, Filter, Gray};
use crate::shape::Shape3;
use std::path::{Path, PathBuf};

/// Limits on untrusted image files, checked before decoding allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest file read, in bytes (default 256 MiB).
    pub max_file_bytes: u64,
    /// Largest width or height in pixels (default 16384).
    pub max_side: u32,
    /// Largest decoder allocation in bytes (default 512 MiB).
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_file_bytes: 256 << 20,
            max_side: 16384,
            max_alloc: 512 << 20,
        }
    }
}

/// How images become network inputs. The default: original size, RGB, no CLAHE or
/// equalisation, default limits.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ImageOptions {
    /// Resize every image to `[height, width]`; `None` keeps the size (all images must agree).
    pub size: Option<[usize; 2]>,
    /// One grey channel (ITU-R 601 luma, as `image`'s `to_luma8`) instead of RGB (default
    /// `false`: RGB, as torchvision's `ImageFolder` loader and the `cnnkit` command).
    pub grayscale: bool,
    /// CLAHE on each 8-bit (or 16-bit grey) channel before resizing.
    pub clahe: Option<Clahe>,
    /// Histogram equalisation on each 8-bit channel before resizing (after CLAHE if both).
    pub equalize: bool,
    /// Limits on the files.
    pub limits: ImageLimits,
}

impl ImageOptions {
    /// Channels of the output.
    pub fn channels(&self) -> usize {
        if self.grayscale { 1 } else { 3 }
    }
}

fn read(path: &Path, limits: &ImageLimits) -> Result<image::DynamicImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::file(
            path,
            "not a regular file (a folder, pipe, device or socket): give an image file",
        ));
    }
    if meta.len() > limits.max_file_bytes {
        return Err(Error::file(
            path,
            format!(
                "{} bytes, above the limit of {}",
                meta.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path, limits)
}

fn decode_bytes(bytes: &[u8], path: &Path, limits: &ImageLimits) -> Result<image::DynamicImage> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Error::file(
            path,
            format!(
                "{} bytes, above the limit of {}",
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    reader
        .decode()
        .map_err(|e| Error::file_from(path, "cannot decode image", e))
}

/// Decodes `path` and turns it into `f32` CHW values in `[0, 1]` (after CLAHE / equalisation and
/// resizing as `opts` says). Returns the values and their shape.
///
/// # Errors
/// [`Error::Io`] / [`Error::File`] naming the file: unreadable, not an image, beyond the limits.
pub fn load_image(path: &Path, opts: &ImageOptions) -> Result<(Vec<f32>, Shape3)> {
    convert(read(path, &opts.limits)?, path, opts)
}

/// As [`load_image`], from the bytes of a PNG or JPEG file (`name` is used in messages).
///
/// # Errors
/// [`Error::File`] naming `name`: not an image, beyond the limits.
pub fn decode_image(bytes: &[u8], name: &Path, opts: &ImageOptions) -> Result<(Vec<f32>, Shape3)> {
    convert(decode_bytes(bytes, name, &opts.limits)?, name, opts)
}

fn convert(
    img: image::DynamicImage,
    path: &Path,
    opts: &ImageOptions,
) -> Result<(Vec<f32>, Shape3)> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::file(path, "image has no pixels"));
    }
    let with = |e: Error| Error::file_from(path, "", e);
    // Channels as f32 planes in [0, 1], each preprocessed in its native depth.
    let planes: Vec<Vec<f32>> =
        if opts.grayscale && matches!(img, image::DynamicImage::ImageLuma16(_)) {
            let g = Gray::new(w, h, img.to_luma16().into_raw()).map_err(with)?;
            let g = match &opts.clahe {
                Some(c) => preprocess::clahe(&g, c).map_err(with)?,
                None => g,
            };
            vec![g.data().iter().map(|&v| v as f32 / 65535.0).collect()]
        } else {
            let raw: Vec<Vec<u8>> = if opts.grayscale {
                vec![img.to_luma8().into_raw()]
            } else {
                let rgb = img.to_rgb8().into_raw();
                (0..3)
                    .map(|c| rgb.iter().skip(c).step_by(3).copied().collect())
                    .collect()
            };
            let mut planes = Vec::with_capacity(raw.len());
            for p in raw {
                let mut g = Gray::new(w, h, p).map_err(with)?;
                if let Some(c) = &opts.clahe {
                    g = preprocess::clahe(&g, c).map_err(with)?;
                }
                if opts.equalize {
                    g = preprocess::equalize_hist(&g);
                }
                planes.push(g.data().iter().map(|&v| v as f32 / 255.0).collect());
            }
            planes
        };
    let [oh, ow] = opts.size.unwrap_or([h, w]);
    let mut out = Vec::new();
    let len = crate::error::mul("load_image", "image", planes.len() * oh, ow)?;
    crate::memory::reserve("load_image", "the converted image", &mut out, len).map_err(with)?;
    for p in planes {
        if [oh, ow] == [h, w] {
            out.extend_from_slice(&p);
        } else {
            let filter = if ow <= w && oh <= h {
                Filter::Area
            } else {
                Filter::Bilinear
            };
            let r = preprocess::resize(&Gray::new(w, h, p).map_err(with)?, ow, oh, filter)
                .map_err(with)?;
            out.extend_from_slice(r.data());
        }
    }
    Ok((out, [opts.channels(), oh, ow]))
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["png", "jpg", "jpeg"]
                .iter()
                .any(|x| e.eq_ignore_ascii_case(x))
        })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Deepest folder nesting searched below a class folder.
const MAX_DEPTH: usize = 32;

/// The image files (`.png`, `.jpg`, `.jpeg`, any case) in `dir` and, recursively, in its
/// sub-folders, sorted by path: hidden entries skipped, links followed as torchvision does, at
/// most 32 levels deep. Only regular files are taken (a FIFO or device named `x.png` would
/// block or never end).
///
/// # Errors
/// [`Error::Io`] for a folder that cannot be read; [`Error::File`] for a link that leads back to
/// a folder above it (a cycle) or nesting deeper than 32 levels.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut ancestors = Vec::new();
    images_below(dir, &mut out, &mut ancestors)?;
    Ok(out)
}

/// Appends the image files in `dir` and its sub-folders; `ancestors` holds the resolved folders
/// above it, so a link back to one of them is found at once.
fn images_below(dir: &Path, out: &mut Vec<PathBuf>, ancestors: &mut Vec<PathBuf>) -> Result<()> {
    let here = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if let Some(above) = ancestors.iter().find(|a| **a == here) {
        return Err(Error::file(
            dir,
            format!(
                "a link cycle: it leads back to {}, a folder above it",
                above.display()
            ),
        ));
    }
    if ancestors.len() > MAX_DEPTH {
        return Err(Error::file(
            dir,
            format!("folders nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    ancestors.push(here);
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            images_below(&p, out, ancestors)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    ancestors.pop();
    Ok(())
}

/// The classes (sub-folders, sorted by name) of `root` and their image files: every image in
/// the class folder and its sub-folders, as `torchvision.datasets.ImageFolder` finds them.
///
/// # Errors
/// [`Error::File`] naming a missing folder, a folder without classes, or an empty class.
pub fn scan_folder(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    if !root.is_dir() {
        return Err(Error::file(root, "not a directory"));
    }
    let mut classes = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = images_under(&dir)?;
        // torchvision's order: folders by path (`sorted(os.walk(...))`), then file names.
        files.sort_by(|a, b| (a.parent(), a.file_name()).cmp(&(b.parent(), b.file_name())));
        if files.is_empty() {
            return Err(Error::file(
                &dir,
                "class folder has no .png, .jpg or .jpeg images (searched recursively)",
            ));
        }
        classes.push((name, files));
    }
    if classes.len() < 2 {
        return Err(Error::file(
            root,
            format!(
                "found {} class folder(s); need at least two (root/<class>/*.png)",
                classes.len()
            ),
        ));
    }
    Ok(classes)
}

/// Loads an image folder laid out as `torchvision.datasets.ImageFolder` expects:
/// `root/<class>/*.{png,jpg,jpeg}`, classes sorted by name. Images are decoded in parallel.
///
/// # Errors
/// As [`scan_folder`] and [`load_image`]; [`Error::File`] if images differ in size and no
/// `size` was given.
pub fn load_image_folder(root: &Path, opts: &ImageOptions) -> Result<Dataset> {
    load_classes(&scan_folder(root)?, opts)
}

fn load_classes(classes: &[(String, Vec<PathBuf>)], opts: &ImageOptions) -> Result<Dataset> {
    let items: Vec<(u32, &PathBuf)> = classes
        .iter()
        .enumerate()
        .flat_map(|(c, (_, files))| files.iter().map(move |f| (c as u32, f)))
        .collect();
    const OP: &str = "load_image_folder";
    // The decoded images, the data set they are copied into, and per thread the working copies
    // of one image being converted (planes, resize pass, output): refused before decoding.
    if let Some([oh, ow]) = opts.size {
        let per_image = opts.channels() as u128 * oh as u128 * ow as u128;
        crate::memory::check_elems::<f32>(
            OP,
            "the data set at this image size",
            per_image * (2 * items.len() as u128 + 3 * crate::par::threads() as u128),
        )?;
    }
    let decoded = crate::par::map(&items, |(_, p)| load_image(p, opts));
    let mut x = Vec::new();
    let mut shape = None;
    for (r, (_, path)) in decoded.into_iter().zip(&items) {
        let (v, s) = r?;
        match shape {
            None => shape = Some(s),
            Some(first) if first != s => {
                return Err(Error::file(
                    path,
                    format!(
                        "image is {}x{}, earlier images are {}x{}: give a size to resize them all",
                        s[1], s[2], first[1], first[2]
                    ),
                ));
            }
            Some(_) => {}
        }
        if x.is_empty() {
            let total = crate::error::mul(OP, "data set", v.len(), items.len())?;
            crate::memory::reserve(OP, "the data set", &mut x, total)?;
        }
        x.extend_from_slice(&v);
    }
    let labels = items.iter().map(|(c, _)| *c).collect();
    let shape = shape.ok_or_else(|| Error::invalid("load_image_folder", "root", "no images"))?;
    Dataset::new(
        x,
        labels,
        shape,
        classes.iter().map(|(n, _)| n.clone()).collect(),
    )
}

/// Loads `root/train` and `root/test` if both exist (the same class folders in each), else
/// `root` alone as the training set. Returns `(train, test)`.
///
/// # Errors
/// As [`load_image_folder`]; [`Error::File`] if the train and test classes differ.
pub fn load_image_splits(root: &Path, opts: &ImageOptions) -> Result<(Dataset, Option<Dataset>)> {
    let (tr, te) = (root.join("train"), root.join("test"));
    if tr.is_dir() && te.is_dir() {
        let (ctr, cte) = (scan_folder(&tr)?, scan_folder(&te)?);
        let names =
            |c: &[(String, Vec<PathBuf>)]| c.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        if names(&ctr) != names(&cte) {
            return Err(Error::file(
                &te,
                format!(
                    "classes {:?} differ from the training classes {:?}",
                    names(&cte),
                    names(&ctr)
                ),
            ));
        }
        Ok((load_classes(&ctr, opts)?, Some(load_classes(&cte, opts)?)))
    } else {
        Ok((load_image_folder(root, opts)?, None))
    }
}
