//! Data loaders on small files the tests write: IDX (raw and gzip), image folders, and every
//! malformed-file case with its message.

mod common;

use cnnkit::data::{IdxLimits, idx_dataset, load_idx, load_mnist_dir};
use cnnkit::image::{ImageOptions, load_image, load_image_folder, load_image_splits};
use cnnkit::preprocess::{Clahe, Gray, clahe};
use common::TempDir;
use std::io::Write;
use std::path::{Path, PathBuf};

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

fn gz(path: &Path, bytes: &[u8]) -> PathBuf {
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
    path.to_path_buf()
}

fn err(r: cnnkit::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn idx_files_load_raw_and_gzip() {
    let t = TempDir::new("idx");
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|v| (v * 4) as u8).collect();
    let img = idx_bytes(&[3, 4, 5], &pixels);
    let lab = idx_bytes(&[3], &[2, 0, 1]);
    let ds = idx_dataset(
        &write(&t.0.join("i.idx3"), &img),
        &write(&t.0.join("l.idx1"), &lab),
        255.0,
        IdxLimits::default(),
    )
    .unwrap();
    assert_eq!(
        (ds.len(), ds.shape(), ds.classes().len()),
        (3, [1, 4, 5], 3)
    );
    assert_eq!(ds.labels(), [2, 0, 1]);
    assert_eq!(ds.get(1).unwrap().0[0], 80.0 / 255.0);
    let dsz = idx_dataset(
        &gz(&t.0.join("i.idx3.gz"), &img),
        &gz(&t.0.join("l.idx1.gz"), &lab),
        255.0,
        IdxLimits::default(),
    )
    .unwrap();
    assert_eq!(ds, dsz);
    // An MNIST-style directory, with the usual names.
    for (n, b) in [
        ("train-images-idx3-ubyte", &img),
        ("train-labels-idx1-ubyte", &lab),
    ] {
        write(&t.0.join(n), b);
    }
    for (n, b) in [
        ("t10k-images-idx3-ubyte.gz", &img),
        ("t10k-labels-idx1-ubyte.gz", &lab),
    ] {
        gz(&t.0.join(n), b);
    }
    let (train, test) = load_mnist_dir(t.path(), IdxLimits::default()).unwrap();
    assert_eq!((train.len(), test.map(|t| t.len())), (3, Some(3)));
    // Without the t10k files: a training-only set. With only one of them: an error naming it.
    std::fs::remove_file(t.0.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let e = err(load_mnist_dir(t.path(), IdxLimits::default()));
    assert!(e.contains("no t10k-images-idx3-ubyte"), "{e}");
    std::fs::remove_file(t.0.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let (train, test) = load_mnist_dir(t.path(), IdxLimits::default()).unwrap();
    assert_eq!((train.len(), test.is_none()), (3, true));
}

#[test]
fn malformed_idx_files_are_rejected_naming_the_file() {
    let t = TempDir::new("idxbad");
    let lim = IdxLimits::default();
    let case = |name: &str, bytes: &[u8]| err(load_idx(&write(&t.0.join(name), bytes), lim));
    let e = case("magic", &[1, 0, 8, 1, 0, 0, 0, 1, 7]);
    assert!(e.contains("magic") && e.contains("magic"), "{e}");
    let e = case("type.idx1", &[0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(
        e.contains("type.idx1") && e.contains("only unsigned bytes"),
        "{e}"
    );
    let e = case("short.idx3", &idx_bytes(&[2, 2, 2], &[1, 2, 3]));
    assert!(
        e.contains("short.idx3") && e.contains("declares 8 bytes") && e.contains("holds 3"),
        "{e}"
    );
    let e = case("long.idx1", &idx_bytes(&[2], &[1, 2, 3]));
    assert!(
        e.contains("declares 2 bytes") && e.contains("holds 3"),
        "{e}"
    );
    let e = case("huge.idx3", &idx_bytes(&[60000, 60000, 60000], &[]));
    assert!(e.contains("above the limit"), "{e}");
    let e = case("trunc_header", &[0, 0, 8, 3, 0, 0]);
    assert!(e.contains("truncated header"), "{e}");
    let e = case("dims0", &[0, 0, 8, 0]);
    assert!(e.contains("0 dimensions"), "{e}");
    // Declared size checked before reading: a gzip stream that stops early.
    let e = err(load_idx(
        &gz(
            &t.0.join("trunc.idx3.gz"),
            &idx_bytes(&[10, 10, 10], &[0; 50]),
        ),
        lim,
    ));
    assert!(e.contains("trunc.idx3.gz") && e.contains("holds 50"), "{e}");
    let e = err(load_idx(
        &gz(&t.0.join("garbage.idx1.gz"), b"definitely not idx"),
        lim,
    ));
    assert!(e.contains("garbage.idx1.gz"), "{e}");
    // Labels that do not match the images.
    let i = write(&t.0.join("i"), &idx_bytes(&[2, 1, 1], &[0, 1]));
    let l = write(&t.0.join("l"), &idx_bytes(&[3], &[0, 1, 1]));
    assert!(err(idx_dataset(&i, &l, 255.0, lim)).contains("3 labels for 2 images"));
    assert!(err(idx_dataset(&l, &l, 255.0, lim)).contains("expected 3 dimensions"));
    assert!(err(load_mnist_dir(&t.0.join("nope"), lim)).contains("not a directory"));
    assert!(err(load_mnist_dir(t.path(), lim)).contains("no train-images-idx3-ubyte"));
}

fn png_gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

fn make_folder(root: &Path) {
    for (class, n) in [("normal", 3), ("pneumonia", 2)] {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            png_gray(&d.join(format!("{i}.png")), 6, 4, |x, y| {
                (x * 10 + y * 3 + i * 50) as u8
            });
        }
    }
    // A JPEG and an uppercase extension count; other files do not.
    let rgb = image::RgbImage::from_fn(6, 4, |x, _| image::Rgb([x as u8 * 40, 0, 255]));
    rgb.save(root.join("pneumonia/extra.JPG")).unwrap();
    std::fs::write(root.join("normal/notes.txt"), "ignored").unwrap();
}

#[test]
fn image_folders_load_sorted_classes_and_resize() {
    let t = TempDir::new("folder");
    make_folder(t.path());
    // Class folders are searched recursively, in torchvision's order: a folder's own files
    // (sorted) before those of its sub-folders ("normal/2.png" before "normal/batch2/0.png",
    // although "2.png" > "batch2/…" as a path would not say so).
    std::fs::create_dir_all(t.0.join("normal/batch2")).unwrap();
    png_gray(&t.0.join("normal/batch2/0.png"), 6, 4, |x, _| x as u8);
    let grey = ImageOptions {
        grayscale: true,
        ..Default::default()
    };
    let ds = load_image_folder(t.path(), &grey).unwrap();
    assert_eq!(ds.classes(), ["normal", "pneumonia"]);
    assert_eq!(ds.labels(), [0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(ds.shape(), [1, 4, 6]);
    // Pixel (x=2, y=1) of normal/1.png = 2·10 + 1·3 + 50.
    assert_eq!(ds.get(1).unwrap().0[6 + 2], 73.0 / 255.0);
    // Pixel (x=5, y=0) of normal/batch2/0.png, the fourth image.
    assert_eq!(ds.get(3).unwrap().0[5], 5.0 / 255.0);
    // The default is RGB, as torchvision's loader and the command.
    let ds = load_image_folder(t.path(), &ImageOptions::default()).unwrap();
    assert_eq!(ds.shape(), [3, 4, 6]);
    let opts = ImageOptions {
        size: Some([8, 3]),
        ..Default::default()
    };
    let ds = load_image_folder(t.path(), &opts).unwrap();
    assert_eq!(ds.shape(), [3, 8, 3]);
    // CLAHE runs before the conversion: equal to applying it to the decoded pixels.
    let opts = ImageOptions {
        clahe: Some(Clahe {
            clip_limit: 2.0,
            tiles: [2, 2],
        }),
        ..grey
    };
    let (v, _) = load_image(&t.0.join("normal/0.png"), &opts).unwrap();
    let raw: Vec<u8> = (0..24)
        .map(|i| ((i % 6) * 10 + (i / 6) * 3) as u8)
        .collect();
    let want = clahe(
        &Gray::new(6, 4, raw).unwrap(),
        &Clahe {
            clip_limit: 2.0,
            tiles: [2, 2],
        },
    )
    .unwrap();
    assert_eq!(
        v,
        want.data()
            .iter()
            .map(|&p| p as f32 / 255.0)
            .collect::<Vec<_>>()
    );
}

#[test]
fn sixteen_bit_grey_images_keep_their_depth() {
    let t = TempDir::new("png16");
    let p = t.0.join("x.png");
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(5, 3, |x, y| {
        image::Luma([(x * 1000 + y * 7) as u16])
    })
    .save(&p)
    .unwrap();
    let grey = ImageOptions {
        grayscale: true,
        ..Default::default()
    };
    let (v, s) = load_image(&p, &grey).unwrap();
    assert_eq!(s, [1, 3, 5]);
    assert_eq!(v[5 + 3], 3007.0 / 65535.0);
}

#[test]
fn train_and_test_subfolders_are_both_loaded() {
    let t = TempDir::new("splits");
    make_folder(&t.0.join("train"));
    make_folder(&t.0.join("test"));
    let (train, test) = load_image_splits(
        t.path(),
        &ImageOptions {
            size: Some([4, 6]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((train.len(), test.unwrap().len()), (6, 6));
    let (only, none) = load_image_splits(&t.0.join("train"), &ImageOptions::default()).unwrap();
    assert!(none.is_none() && only.len() == 6);
}

#[test]
fn bad_image_folders_give_one_clear_message() {
    let t = TempDir::new("badfolder");
    assert!(
        err(load_image_folder(
            &t.0.join("missing"),
            &ImageOptions::default()
        ))
        .contains("not a directory")
    );
    make_folder(t.path());
    // Different sizes without --size.
    png_gray(&t.0.join("normal/big.png"), 9, 9, |_, _| 0);
    let e = err(load_image_folder(t.path(), &ImageOptions::default()));
    assert!(e.contains("big.png") && e.contains("give a size"), "{e}");
    std::fs::remove_file(t.0.join("normal/big.png")).unwrap();
    // An unreadable image.
    std::fs::write(
        t.0.join("normal/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let e = err(load_image_folder(t.path(), &ImageOptions::default()));
    assert!(
        e.contains("broken.png") && e.contains("cannot decode"),
        "{e}"
    );
    std::fs::remove_file(t.0.join("normal/broken.png")).unwrap();
    // An empty class.
    std::fs::create_dir_all(t.0.join("empty")).unwrap();
    let e = err(load_image_folder(t.path(), &ImageOptions::default()));
    assert!(e.contains("empty") && e.contains("no .png"), "{e}");
    std::fs::remove_dir(t.0.join("empty")).unwrap();
    // An image above the size limit is refused before decoding.
    let mut o = ImageOptions::default();
    o.limits.max_side = 5;
    let e = err(load_image_folder(t.path(), &o));
    assert!(e.contains(".png") && e.contains("cannot decode"), "{e}");
    o.limits = Default::default();
    o.limits.max_file_bytes = 10;
    assert!(err(load_image_folder(t.path(), &o)).contains("above the limit"));
}

/// Links that lead back to a folder above them end the search at once with an error naming the
/// cycle (two such links made the old depth guard walk 2^32 paths); a FIFO or device named like
/// an image is never opened (it would block for ever).
#[cfg(unix)]
#[test]
fn link_cycles_and_pipes_named_like_images_are_refused_at_once() {
    use std::os::unix::fs::symlink;
    let d = common::TempDir::new("walk_cycles");
    let root = d.path().join("data");
    let a = root.join("a");
    std::fs::create_dir_all(&a).unwrap();
    image::GrayImage::from_pixel(4, 4, image::Luma([9u8]))
        .save(a.join("0.png"))
        .unwrap();
    let started = std::time::Instant::now();
    // A link to a sibling is followed (torchvision follows links too).
    std::fs::create_dir_all(root.join("b")).unwrap();
    symlink(&a, root.join("b").join("also_a")).unwrap();
    let found = cnnkit::image::images_under(&root).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    symlink(&root, a.join("up")).unwrap();
    symlink(&root, a.join("up_again")).unwrap();
    let err = cnnkit::image::images_under(&root).unwrap_err().to_string();
    assert!(err.contains("a link cycle"), "{err}");
    assert!(started.elapsed().as_secs() < 5);
    let fifo = d.path().join("x.png");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = cnnkit::image::load_image(&fifo, &cnnkit::image::ImageOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    // In a folder it is passed over.
    std::fs::rename(&fifo, root.join("b").join("pipe.png")).unwrap();
    std::fs::remove_file(a.join("up")).unwrap();
    std::fs::remove_file(a.join("up_again")).unwrap();
    assert_eq!(cnnkit::image::images_under(&root).unwrap().len(), 2);
}
