//! Datasets: images with integer labels, seeded shuffling and batching, splits and per-channel
//! normalisation; loaders for the embedded digits, MNIST IDX files and (feature `image`) image
//! folders.

mod digits;
mod idx;
pub mod normalization;

pub use digits::{DIGITS_TEST_EVERY, digits};
pub use idx::{IdxLimits, idx_dataset, load_idx, load_mnist_dir, parse_idx};
pub use normalization::Normalization;

use crate::error::{Error, Result, check_len};
use crate::rng::Rng;
use crate::shape::{Shape3, numel};

/// Labelled images, `f32` NCHW, one label per image.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    x: Vec<f32>,
    labels: Vec<u32>,
    shape: Shape3,
    classes: Vec<String>,
}

impl Dataset {
    /// A dataset of `labels.len()` images of `shape`, with class names `classes`.
    ///
    /// # Errors
    /// [`Error::Length`] if `x` does not hold one image per label; [`Error::InvalidArg`] for an
    /// empty shape, no classes, or a label outside `0..classes.len()`.
    pub fn new(x: Vec<f32>, labels: Vec<u32>, shape: Shape3, classes: Vec<String>) -> Result<Self> {
        const OP: &str = "Dataset::new";
        if shape.contains(&0) {
            return Err(Error::invalid(
                OP,
                "shape",
                format!("empty image shape {shape:?}"),
            ));
        }
        if classes.is_empty() {
            return Err(Error::invalid(OP, "classes", "no classes"));
        }
        check_len(
            OP,
            "x",
            &x,
            crate::error::mul(OP, "images", labels.len(), numel(shape))?,
        )?;
        if let Some(l) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(Error::invalid(
                OP,
                "labels",
                format!("label {l} but only {} classes", classes.len()),
            ));
        }
        Ok(Dataset {
            x,
            labels,
            shape,
            classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Per-image shape `[C, H, W]`.
    pub fn shape(&self) -> Shape3 {
        self.shape
    }
    /// Class names, indexed by label.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    /// All images, NCHW.
    pub fn images(&self) -> &[f32] {
        &self.x
    }
    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }
    /// Image `i` and its label.
    pub fn get(&self, i: usize) -> Option<(&[f32], u32)> {
        let l = *self.labels.get(i)?;
        let n = numel(self.shape);
        Some((&self.x[i * n..(i + 1) * n], l))
    }
    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The images at `indices`, in that order (indices past the end are skipped).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = numel(self.shape);
        let idx: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| i < self.len())
            .collect();
        let mut x = Vec::with_capacity(idx.len() * n);
        for &i in &idx {
            x.extend_from_slice(&self.x[i * n..(i + 1) * n]);
        }
        Dataset {
            x,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            classes: self.classes.clone(),
        }
    }

    /// Splits off a validation set: each class's images are shuffled with `seed` and the first
    /// `round(fraction · count)` go to validation (stratified), the rest to training. Returns
    /// `(train, validation)`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] unless `0 <= fraction < 1`.
    pub fn split(&self, fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::invalid(
                "Dataset::split",
                "fraction",
                format!("must be in [0, 1), got {fraction}"),
            ));
        }
        let mut rng = Rng::new(seed);
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for c in 0..self.classes.len() as u32 {
            let mut idx: Vec<usize> = (0..self.len()).filter(|&i| self.labels[i] == c).collect();
            rng.shuffle(&mut idx);
            let k = (fraction as f64 * idx.len() as f64).round() as usize;
            val.extend_from_slice(&idx[..k]);
            train.extend_from_slice(&idx[k..]);
        }
        train.sort_unstable();
        val.sort_unstable();
        Ok((self.subset(&train), self.subset(&val)))
    }

    /// Per-channel mean and (population) standard deviation over all images.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let [c, h, w] = self.shape;
        let plane = h * w;
        let mut mean = vec![0.0f32; c];
        let mut std = vec![0.0f32; c];
        for ch in 0..c {
            let planes = || self.x.chunks_exact(plane).skip(ch).step_by(c);
            let count = (self.len() * plane).max(1) as f64;
            let m = planes().flatten().map(|&v| v as f64).sum::<f64>() / count;
            let var = planes()
                .flatten()
                .map(|&v| (v as f64 - m).powi(2))
                .sum::<f64>()
                / count;
            mean[ch] = m as f32;
            std[ch] = var.sqrt() as f32;
        }
        (mean, std)
    }

    /// `x = (x − mean[c]) / std[c]` per channel (as `torchvision.transforms.Normalize`).
    ///
    /// # Errors
    /// [`Error::Length`] unless both have one value per channel; [`Error::InvalidArg`] for a
    /// standard deviation that is zero or not finite.
    pub fn normalize(&mut self, mean: &[f32], std: &[f32]) -> Result<()> {
        normalize_images(self.shape, &mut self.x, mean, std)
    }
}

/// Per-channel normalisation of NCHW images of `shape` in place.
///
/// # Errors
/// As [`Dataset::normalize`].
pub fn normalize_images(shape: Shape3, x: &mut [f32], mean: &[f32], std: &[f32]) -> Result<()> {
    const OP: &str = "normalize";
    check_len(OP, "mean", mean, shape[0])?;
    check_len(OP, "std", std, shape[0])?;
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid(
            OP,
            "std",
            format!("must be positive and finite, got {s}"),
        ));
    }
    let plane = shape[1] * shape[2];
    for (i, p) in x.chunks_exact_mut(plane).enumerate() {
        let c = i % shape[0];
        let (m, inv) = (mean[c], 1.0 / std[c]);
        for v in p {
            *v = (*v - m) * inv;
        }
    }
    Ok(())
}

/// Seeded mini-batches over a dataset: an epoch is a fresh permutation of the indices, cut into
/// batches of `batch` (the last one shorter). The order depends only on the seed and the epoch
/// count, and the buffers are reused: after the first epoch, nothing allocates.
#[derive(Clone, Debug)]
pub struct Batches {
    order: Vec<usize>,
    batch: usize,
    rng: Rng,
    shuffle: bool,
    /// Cumulative sample weights, for draws with replacement (empty: a permutation).
    cdf: Vec<f64>,
}

impl Batches {
    /// Batches of `batch` over `len` items, shuffled with `seed` (or in order if `!shuffle`).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a zero batch size.
    pub fn new(len: usize, batch: usize, shuffle: bool, seed: u64) -> Result<Self> {
        if batch == 0 {
            return Err(Error::invalid(
                "Batches::new",
                "batch",
                "must be at least 1",
            ));
        }
        Ok(Batches {
            order: (0..len).collect(),
            batch,
            rng: Rng::new(seed),
            shuffle,
            cdf: Vec::new(),
        })
    }

    /// Batches of `batch` over `weights.len()` draws per epoch, with replacement, item `i` drawn
    /// with probability `weights[i] / Σ weights` (`torch.utils.data.WeightedRandomSampler(weights,
    /// len(weights), replacement=True)`), from `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a zero batch size, or weights that are negative, not finite or
    /// all zero.
    pub fn weighted(weights: &[f64], batch: usize, seed: u64) -> Result<Self> {
        const OP: &str = "Batches::weighted";
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
            || !weights.iter().any(|&w| w > 0.0)
        {
            return Err(Error::invalid(
                OP,
                "weights",
                "must be finite, non-negative and not all zero",
            ));
        }
        let mut b = Batches::new(weights.len(), batch, true, seed)?;
        let mut acc = 0.0;
        b.cdf = weights
            .iter()
            .map(|&w| {
                acc += w;
                acc
            })
            .collect();
        Ok(b)
    }

    /// Starts an epoch: draws a new order (if shuffling) and returns it cut into batches.
    pub fn epoch(&mut self) -> std::slice::Chunks<'_, usize> {
        if let Some(&total) = self.cdf.last() {
            for v in self.order.iter_mut() {
                let u = self.rng.next_f64() * total;
                // The first item whose cumulative weight exceeds u (never one of weight 0).
                *v = self
                    .cdf
                    .partition_point(|&c| c <= u)
                    .min(self.cdf.len() - 1);
            }
        } else if self.shuffle {
            // Each epoch permutes the identity afresh, so the order depends only on the draws.
            for (i, v) in self.order.iter_mut().enumerate() {
                *v = i;
            }
            self.rng.shuffle(&mut self.order);
        }
        self.order.chunks(self.batch)
    }

    /// The generator's state (to resume between epochs).
    pub fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }
    /// Restores the generator.
    pub fn set_rng_state(&mut self, s: [u64; 4]) {
        self.rng = Rng::from_state(s);
    }
}

/// scikit-learn's "balanced" class weights, `n / (classes · count_c)`, for `labels` of
/// `classes` classes (0 for a class with no samples): each class then weighs as much in the loss
/// as if the classes were equally frequent.
pub fn balanced_class_weights(labels: &[u32], classes: usize) -> Vec<f32> {
    let mut count = vec![0usize; classes];
    for &l in labels {
        if let Some(c) = count.get_mut(l as usize) {
            *c += 1;
        }
    }
    count
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (labels.len() as f64 / (classes as f64 * c as f64)) as f32
            }
        })
        .collect()
}

/// Copies the images and labels at `idx` into `x` and `y` (cleared first; their capacity is
/// reused, so a training loop allocates only on its first, largest batch).
pub fn gather(ds: &Dataset, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<u32>) {
    let n = numel(ds.shape);
    x.clear();
    y.clear();
    for &i in idx {
        if let Some((img, l)) = ds.get(i) {
            x.extend_from_slice(img);
            y.push(l);
        }
    }
    debug_assert_eq!(x.len(), y.len() * n);
}

/// Input and target images for an image-to-image network (such as a network that undoes a
/// degradation, [`crate::stability::Degradation`]): `len` inputs of one shape and as many
/// targets of another, `f32` NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct Pairs {
    inputs: Vec<f32>,
    targets: Vec<f32>,
    input_shape: Shape3,
    target_shape: Shape3,
}

impl Pairs {
    /// Pairs of `inputs` (images of `input_shape`) and `targets` (images of `target_shape`).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for an empty shape, or counts of inputs and targets that differ or
    /// are not whole images.
    pub fn new(
        inputs: Vec<f32>,
        targets: Vec<f32>,
        input_shape: Shape3,
        target_shape: Shape3,
    ) -> Result<Self> {
        const OP: &str = "Pairs::new";
        let (a, b) = (numel(input_shape), numel(target_shape));
        if a == 0 || b == 0 {
            return Err(Error::invalid(
                OP,
                "shape",
                "an image shape with no elements",
            ));
        }
        if !inputs.len().is_multiple_of(a)
            || !targets.len().is_multiple_of(b)
            || inputs.len() / a != targets.len() / b
        {
            return Err(Error::invalid(
                OP,
                "targets",
                format!(
                    "{} input values ({} images of {input_shape:?}) and {} target values ({} of {target_shape:?})",
                    inputs.len(),
                    inputs.len() as f64 / a as f64,
                    targets.len(),
                    targets.len() as f64 / b as f64
                ),
            ));
        }
        Ok(Pairs {
            inputs,
            targets,
            input_shape,
            target_shape,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.inputs.len() / numel(self.input_shape)
    }

    /// No pairs.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Shape of an input.
    pub fn input_shape(&self) -> Shape3 {
        self.input_shape
    }

    /// Shape of a target.
    pub fn target_shape(&self) -> Shape3 {
        self.target_shape
    }

    /// All inputs.
    pub fn inputs(&self) -> &[f32] {
        &self.inputs
    }

    /// All targets.
    pub fn targets(&self) -> &[f32] {
        &self.targets
    }

    pub(crate) fn input_len(&self) -> usize {
        numel(self.input_shape)
    }

    /// The pairs at `indices` (in that order; out-of-range indices are skipped).
    pub fn subset(&self, indices: &[usize]) -> Pairs {
        let (mut x, mut t) = (Vec::new(), Vec::new());
        self.gather(indices, &mut x, &mut t);
        Pairs {
            inputs: x,
            targets: t,
            ..*self
        }
    }

    /// Copies the pairs at `idx` into `x` and `t` (cleared first, capacity reused).
    pub(crate) fn gather(&self, idx: &[usize], x: &mut Vec<f32>, t: &mut Vec<f32>) {
        let (a, b) = (numel(self.input_shape), numel(self.target_shape));
        x.clear();
        t.clear();
        for &i in idx.iter().filter(|&&i| i < self.len()) {
            x.extend_from_slice(&self.inputs[i * a..][..a]);
            t.extend_from_slice(&self.targets[i * b..][..b]);
        }
    }

    /// `Err` unless the model takes these inputs and outputs these targets.
    pub(crate) fn check_fits(&self, op: &'static str, m: &crate::model::Sequential) -> Result<()> {
        if m.input_shape() != self.input_shape || m.output_len() != numel(self.target_shape) {
            return Err(Error::invalid(
                op,
                "pairs",
                format!(
                    "inputs {:?} and targets {:?}; the model maps {:?} to {:?}",
                    self.input_shape,
                    self.target_shape,
                    m.input_shape(),
                    m.output_shape()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let x: Vec<f32> = (0..n * 4).map(|v| v as f32).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        Dataset::new(
            x,
            labels,
            [1, 2, 2],
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap()
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let d = toy(30);
        let (tr, va) = d.split(0.2, 5).unwrap();
        assert_eq!((tr.len(), va.len()), (24, 6));
        assert_eq!(va.class_counts(), vec![2, 2, 2]);
        let mut all: Vec<f32> = tr
            .images()
            .iter()
            .chain(va.images())
            .step_by(4)
            .copied()
            .collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, (0..30).map(|i| (i * 4) as f32).collect::<Vec<_>>());
        assert_eq!(d.split(0.2, 5).unwrap(), (tr, va));
        assert!(d.split(1.0, 5).is_err());
    }

    #[test]
    fn batches_cover_each_index_once_per_epoch() {
        let mut b = Batches::new(10, 3, true, 1).unwrap();
        let e1: Vec<Vec<usize>> = b.epoch().map(|c| c.to_vec()).collect();
        assert_eq!(e1.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let mut flat: Vec<usize> = e1.concat();
        flat.sort();
        assert_eq!(flat, (0..10).collect::<Vec<_>>());
        let e2: Vec<usize> = b.epoch().flatten().copied().collect();
        assert_ne!(e1.concat(), e2, "each epoch reshuffles");
    }

    #[test]
    fn normalization_gives_zero_mean_unit_std() {
        let mut d = toy(9);
        let (m, s) = d.channel_stats();
        d.normalize(&m, &s).unwrap();
        let (m2, s2) = d.channel_stats();
        assert!(m2[0].abs() < 1e-5 && (s2[0] - 1.0).abs() < 1e-5);
        assert!(d.normalize(&[0.0], &[0.0]).is_err());
    }
}
