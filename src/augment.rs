//! Data augmentation on the fly: random flips, rotations, resized crops, translations,
//! brightness and contrast jitter and Gaussian noise, applied to training batches only.
//!
//! Each image's random draws come from the augmentation seed, the epoch and the image's index in
//! the training set, so an augmented epoch is the same for any number of threads or workers and
//! again after a resume. Images are augmented in pixel units: with a [`Normalization`], the
//! (normalised) batch is taken back to pixels, augmented and normalised again; without one, the
//! inputs are taken to be pixels in `[0, 1]`.
//!
//! The transforms follow torchvision's, applied in this order (one bilinear resampling for the
//! geometric ones together):
//!
//! | option | torchvision | default when named |
//! |---|---|---|
//! | `flip[=P]` | `RandomHorizontalFlip(p=P)` | P = 0.5 |
//! | `vflip[=P]` | `RandomVerticalFlip(p=P)` | P = 0.5 |
//! | `crop=S` | `RandomResizedCrop(size, scale=(S, 1), ratio=(3/4, 4/3))` (bilinear, no antialias) | S = 0.8 |
//! | `rotate=D` | `RandomRotation(D)`: an angle uniform in `[−D, D]` degrees about the centre, bilinear (torchvision's default is nearest), zero fill | D = 10 |
//! | `translate=T` | `RandomAffine(0, translate=(T, T))`: shifts uniform in `±T·W`, `±T·H` | T = 0.1 |
//! | `brightness=B` | `ColorJitter(brightness=B)`: `x·f`, `f` uniform in `[max(0, 1 − B), 1 + B]`, clamped to `[0, 1]` | B = 0.2 |
//! | `contrast=C` | `ColorJitter(contrast=C)`: `f·x + (1 − f)·mean(x)` per image, clamped | C = 0.2 |
//! | `noise=σ` | `GaussianNoise(sigma=σ)` (transforms v2): `x + σ·N(0, 1)`, clamped | σ = 0.02 |

use crate::data::normalization::Normalization;
use crate::error::{Error, Result};
use crate::rng::{Rng, mix64};
use crate::shape::Shape3;
use std::fmt;

/// Which augmentations to apply to training images (all off by default; see the module
/// documentation for each one's definition).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Augment {
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Probability of a vertical flip.
    pub vflip: f32,
    /// Largest rotation, in degrees.
    pub rotate: f32,
    /// Smallest area fraction of a random resized crop (`None`: no crop).
    pub crop: Option<f32>,
    /// Largest shift, as a fraction of the width and height.
    pub translate: f32,
    /// Brightness jitter.
    pub brightness: f32,
    /// Contrast jitter.
    pub contrast: f32,
    /// Standard deviation of additive Gaussian noise, in pixel units.
    pub noise: f32,
    /// Seed of the random draws (with the epoch and the image's index).
    pub seed: u64,
    /// The normalisation of the inputs (`None`: inputs are pixels in `[0, 1]`).
    pub normalization: Option<Normalization>,
}

impl Augment {
    /// Checks every parameter.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, v: f32, range: &str| {
            Err(Error::invalid(
                "Augment",
                what,
                format!("{v} (must be {range})"),
            ))
        };
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(self.hflip) {
            return bad("flip", self.hflip, "in [0, 1]");
        }
        if !unit(self.vflip) {
            return bad("vflip", self.vflip, "in [0, 1]");
        }
        if !(0.0..=180.0).contains(&self.rotate) {
            return bad("rotate", self.rotate, "in [0, 180] degrees");
        }
        if let Some(c) = self.crop
            && !(c > 0.0 && c <= 1.0)
        {
            return bad("crop", c, "in (0, 1]");
        }
        if !(0.0..=0.5).contains(&self.translate) {
            return bad("translate", self.translate, "in [0, 0.5]");
        }
        for (what, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("noise", self.noise),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(what, v, "finite and non-negative");
            }
        }
        Ok(())
    }

    /// Whether nothing is switched on.
    pub fn is_identity(&self) -> bool {
        !self.geometric() && self.brightness == 0.0 && self.contrast == 0.0 && self.noise == 0.0
    }

    fn geometric(&self) -> bool {
        self.hflip > 0.0
            || self.vflip > 0.0
            || self.rotate > 0.0
            || self.crop.is_some()
            || self.translate > 0.0
    }

    /// Augments the `n` images of `x` (shape `shape` each) in place: image `k` is the training
    /// set's image `indices[k]`, in epoch `epoch` (0-based). `scratch` is grown to one image
    /// once and reused (no allocation after the first call).
    ///
    /// # Errors
    /// [`Error::Length`] if `x` is not `indices.len()` images; [`Error::InvalidArg`] as
    /// [`Augment::validate`], or for a normalisation of another channel count.
    pub fn apply(
        &self,
        shape: Shape3,
        x: &mut [f32],
        indices: &[usize],
        epoch: usize,
        scratch: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "Augment::apply";
        self.validate()?;
        let d = crate::shape::numel(shape);
        crate::error::check_len(OP, "x", x, indices.len() * d)?;
        if let Some(nm) = &self.normalization
            && nm.mean.len() != shape[0]
        {
            return Err(Error::invalid(
                OP,
                "normalization",
                format!("{} channels for images of {}", nm.mean.len(), shape[0]),
            ));
        }
        if self.is_identity() || d == 0 {
            return Ok(());
        }
        crate::memory::grow(OP, "an image", scratch, d)?;
        let plane = shape[1] * shape[2];
        for (img, &idx) in x.chunks_exact_mut(d).zip(indices) {
            let seed = mix64(self.seed ^ mix64((epoch as u64) << 32 ^ idx as u64));
            let mut rng = Rng::new(seed);
            if let Some(nm) = &self.normalization {
                scratch[..d].copy_from_slice(img);
                nm.to_pixels(plane, &scratch[..d], img);
            }
            self.augment_pixels(shape, img, &mut scratch[..d], &mut rng, seed);
            if let Some(nm) = &self.normalization {
                scratch[..d].copy_from_slice(img);
                nm.to_input(plane, &scratch[..d], img);
            }
        }
        Ok(())
    }

    /// One image in pixel units, in place (`tmp` one image long).
    fn augment_pixels(
        &self,
        shape: Shape3,
        img: &mut [f32],
        tmp: &mut [f32],
        rng: &mut Rng,
        seed: u64,
    ) {
        let [_, h, w] = shape;
        // Every draw is made whether or not it is used, so the options do not shift each
        // other's random numbers.
        let flip_h = rng.next_f64() < self.hflip as f64;
        let flip_v = rng.next_f64() < self.vflip as f64;
        let angle = (rng.uniform(-1.0, 1.0) * self.rotate).to_radians();
        let (tx, ty) = (
            rng.uniform(-1.0, 1.0) * self.translate * w as f32,
            rng.uniform(-1.0, 1.0) * self.translate * h as f32,
        );
        let crop = self.crop.map(|s| crop_box(rng, s, h, w));
        let bright = rng.uniform((1.0 - self.brightness).max(0.0), 1.0 + self.brightness);
        let contrast = rng.uniform((1.0 - self.contrast).max(0.0), 1.0 + self.contrast);
        if self.geometric() {
            tmp.copy_from_slice(img);
            let g = Geometry {
                flip_h,
                flip_v,
                angle,
                shift: (tx, ty),
                crop: crop.unwrap_or((0.0, 0.0, h as f32, w as f32)),
            };
            g.warp(shape, tmp, img);
        }
        if self.brightness > 0.0 {
            img.iter_mut()
                .for_each(|p| *p = (*p * bright).clamp(0.0, 1.0));
        }
        if self.contrast > 0.0 {
            // torchvision: the mean of the grey image (the channels' mean for colour).
            let mean = (img.iter().map(|&p| p as f64).sum::<f64>() / img.len() as f64) as f32;
            img.iter_mut()
                .for_each(|p| *p = (contrast * *p + (1.0 - contrast) * mean).clamp(0.0, 1.0));
        }
        if self.noise > 0.0 {
            for (i, p) in img.iter_mut().enumerate() {
                let z = crate::rng::normal_at(seed ^ 0x006e_6f69_7365, i as u64);
                *p = (*p + self.noise * z).clamp(0.0, 1.0);
            }
        }
    }
}

/// One image's geometric transform: crop (then resized to the full size), flips, rotation about
/// the centre and shift.
struct Geometry {
    flip_h: bool,
    flip_v: bool,
    /// Radians.
    angle: f32,
    /// Pixels, `(x, y)`.
    shift: (f32, f32),
    /// `(top, left, height, width)` in the input.
    crop: (f32, f32, f32, f32),
}

impl Geometry {
    /// `dst = T(src)` for every plane, by bilinear sampling with zero fill.
    fn warp(&self, shape: Shape3, src: &[f32], dst: &mut [f32]) {
        let [c, h, w] = shape;
        let plane = h * w;
        let (ci, cj, ch, cw) = self.crop;
        let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
        let (sin, cos) = self.angle.sin_cos();
        for v in 0..h {
            for u in 0..w {
                // Output pixel -> before the rotation and shift -> before the flips -> in the
                // crop -> in the input.
                let (dx, dy) = (u as f32 - cx - self.shift.0, v as f32 - cy - self.shift.1);
                let mut xs = cos * dx + sin * dy + cx;
                let mut ys = -sin * dx + cos * dy + cy;
                if self.flip_h {
                    xs = w as f32 - 1.0 - xs;
                }
                if self.flip_v {
                    ys = h as f32 - 1.0 - ys;
                }
                let xi = cj + (xs + 0.5) * cw / w as f32 - 0.5;
                let yi = ci + (ys + 0.5) * ch / h as f32 - 0.5;
                for k in 0..c {
                    dst[k * plane + v * w + u] = bilinear(&src[k * plane..][..plane], h, w, yi, xi);
                }
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params` with `scale = (s, 1)`, `ratio = (3/4, 4/3)`:
/// up to ten tries for a box of random area and log-uniform aspect that fits, else the central
/// crop of the clamped ratio. Returns `(top, left, height, width)`.
fn crop_box(rng: &mut Rng, s: f32, h: usize, w: usize) -> (f32, f32, f32, f32) {
    let area = (h * w) as f64;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (s as f64 + (1.0 - s as f64) * rng.next_f64());
        let ratio = (lr0 + (lr1 - lr0) * rng.next_f64()).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let i = rng.below(h - ch + 1);
            let j = rng.below(w - cw + 1);
            return (i as f32, j as f32, ch as f32, cw as f32);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < 3.0 / 4.0 {
        ((w as f64 / (3.0 / 4.0)).round() as usize, w)
    } else if in_ratio > 4.0 / 3.0 {
        (h, (h as f64 * (4.0 / 3.0)).round() as usize)
    } else {
        (h, w)
    };
    (
        ((h - ch.min(h)) / 2) as f32,
        ((w - cw.min(w)) / 2) as f32,
        ch.min(h) as f32,
        cw.min(w) as f32,
    )
}

/// Bilinear sample of a `h`x`w` plane at `(y, x)` (pixel centres at integers), zero outside.
fn bilinear(p: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| -> f32 {
        if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
            0.0
        } else {
            p[yy as usize * w + xx as usize]
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

impl fmt::Display for Augment {
    /// The `--augment` form: `flip=0.5,rotate=10.0,…` (only what is on; `none` for nothing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, v) in [
            ("flip", self.hflip),
            ("vflip", self.vflip),
            ("rotate", self.rotate),
            ("translate", self.translate),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("noise", self.noise),
        ] {
            if v > 0.0 {
                parts.push(format!("{name}={v:?}"));
            }
        }
        if let Some(c) = self.crop {
            parts.push(format!("crop={c:?}"));
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for Augment {
    type Err = Error;
    /// `flip,rotate=10,crop=0.9,contrast=0.2,…` (see the module documentation; a name alone
    /// takes its default), or `none`. Seed and normalisation are left at their defaults.
    fn from_str(s: &str) -> Result<Self> {
        let mut a = Augment::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "none" {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (part, None),
            };
            let num = |default: f32| -> Result<f32> {
                match value {
                    None => Ok(default),
                    Some(v) => v.parse().map_err(|_| {
                        Error::invalid("Augment", "augment", format!("{name}={v}: not a number"))
                    }),
                }
            };
            match name {
                "flip" | "hflip" => a.hflip = num(0.5)?,
                "vflip" => a.vflip = num(0.5)?,
                "rotate" => a.rotate = num(10.0)?,
                "crop" => a.crop = Some(num(0.8)?),
                "translate" => a.translate = num(0.1)?,
                "brightness" => a.brightness = num(0.2)?,
                "contrast" => a.contrast = num(0.2)?,
                "noise" => a.noise = num(0.02)?,
                other => {
                    return Err(Error::invalid(
                        "Augment",
                        "augment",
                        format!(
                            "unknown augmentation '{other}': use flip, vflip, rotate, crop, translate, brightness, contrast, noise"
                        ),
                    ));
                }
            }
        }
        a.validate()?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: Shape3) -> Vec<f32> {
        let d = crate::shape::numel(shape);
        (0..d).map(|i| (i as f32 + 0.5) / d as f32).collect()
    }

    #[test]
    fn a_certain_flip_mirrors_each_row() {
        let shape = [2, 3, 4];
        let x = ramp(shape);
        let mut y = x.clone();
        let a = Augment {
            hflip: 1.0,
            ..Default::default()
        };
        a.apply(shape, &mut y, &[0], 0, &mut Vec::new()).unwrap();
        for k in 0..2 {
            for v in 0..3 {
                for u in 0..4 {
                    assert_eq!(y[k * 12 + v * 4 + u], x[k * 12 + v * 4 + 3 - u]);
                }
            }
        }
    }

    fn warp(g: Geometry, shape: Shape3, x: &[f32]) -> Vec<f32> {
        let mut y = vec![f32::NAN; x.len()];
        g.warp(shape, x, &mut y);
        y
    }

    fn identity(h: usize, w: usize) -> Geometry {
        Geometry {
            flip_h: false,
            flip_v: false,
            angle: 0.0,
            shift: (0.0, 0.0),
            crop: (0.0, 0.0, h as f32, w as f32),
        }
    }

    #[test]
    fn the_geometric_map_rotates_shifts_and_crops_exactly() {
        let shape = [1, 5, 5];
        let x = ramp(shape);
        assert_eq!(warp(identity(5, 5), shape, &x), x);
        // A quarter turn is a permutation: y[v][u] = x[4 − u][v].
        let y = warp(
            Geometry {
                angle: std::f32::consts::FRAC_PI_2,
                ..identity(5, 5)
            },
            shape,
            &x,
        );
        for v in 0..5 {
            for u in 0..5 {
                assert!((y[v * 5 + u] - x[(4 - u) * 5 + v]).abs() < 1e-5, "{v},{u}");
            }
        }
        // A shift by one pixel to the right, zero fill on the left.
        let y = warp(
            Geometry {
                shift: (1.0, 0.0),
                ..identity(5, 5)
            },
            shape,
            &x,
        );
        for v in 0..5 {
            assert_eq!(y[v * 5], 0.0);
            for u in 1..5 {
                assert_eq!(y[v * 5 + u], x[v * 5 + u - 1]);
            }
        }
        // The top-left 2x2 of a 4x4 ramp stretched to 4x4: bilinear with half-pixel centres,
        // as torch's interpolate(align_corners=False) away from the edges.
        let shape = [1, 4, 4];
        let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let y = warp(
            Geometry {
                crop: (0.0, 0.0, 2.0, 2.0),
                ..identity(4, 4)
            },
            shape,
            &x,
        );
        // Output (1, 1) samples input (0.25, 0.25): 0.75²·0 + 0.75·0.25·(1 + 4) + 0.25²·5.
        assert!((y[5] - (0.1875 * 5.0 + 0.0625 * 5.0)).abs() < 1e-6, "{y:?}");
        // Output (2, 2) samples (0.75, 0.75).
        let want = 0.0625 * 0.0 + 0.1875 * 1.0 + 0.1875 * 4.0 + 0.5625 * 5.0;
        assert!((y[10] - want).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn brightness_and_contrast_follow_torchvision_formulas() {
        let shape = [1, 2, 2];
        let x = vec![0.1f32, 0.2, 0.4, 0.9];
        let a = Augment {
            brightness: 0.5,
            ..Default::default()
        };
        let mut y = x.clone();
        a.apply(shape, &mut y, &[7], 2, &mut Vec::new()).unwrap();
        // One factor for the whole image, within [0.5, 1.5], clamped at 1.
        let f = y[0] / x[0];
        assert!((0.5..=1.5).contains(&f));
        for (a, b) in y.iter().zip(&x) {
            assert!((a - (b * f).min(1.0)).abs() < 1e-6);
        }
        let a = Augment {
            contrast: 0.5,
            ..Default::default()
        };
        let mut y = x.clone();
        a.apply(shape, &mut y, &[7], 2, &mut Vec::new()).unwrap();
        // y = f·x + (1 − f)·mean: the mean is kept, deviations scaled by one factor.
        let mean = 0.4f32;
        let f = (y[3] - mean) / (x[3] - mean);
        assert!((0.5..=1.5).contains(&f));
        for (a, b) in y.iter().zip(&x) {
            assert!((a - (f * b + (1.0 - f) * mean)).abs() < 1e-5);
        }
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_index_only() {
        let shape = [1, 6, 6];
        let a: Augment = "flip,rotate=15,crop=0.7,translate=0.1,brightness,contrast,noise"
            .parse()
            .unwrap();
        let one = ramp(shape);
        let mut batch: Vec<f32> = [one.clone(), one.clone(), one.clone()].concat();
        a.apply(shape, &mut batch, &[4, 9, 4], 3, &mut Vec::new())
            .unwrap();
        // The same image index in the same epoch: the same result, wherever it sits.
        assert_eq!(batch[..36], batch[72..]);
        assert_ne!(batch[..36], batch[36..72]);
        let mut alone = one.clone();
        a.apply(shape, &mut alone, &[9], 3, &mut Vec::new())
            .unwrap();
        assert_eq!(alone[..], batch[36..72]);
        let mut next = one.clone();
        a.apply(shape, &mut next, &[9], 4, &mut Vec::new()).unwrap();
        assert_ne!(next, alone);
        assert!(batch.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn normalised_inputs_are_augmented_in_pixels() {
        let shape = [1, 2, 2];
        let nm = Normalization::new(vec![0.5], vec![0.25]).unwrap();
        let pixels = vec![0.1f32, 0.2, 0.4, 0.9];
        let mut x: Vec<f32> = pixels.iter().map(|p| (p - 0.5) / 0.25).collect();
        let a = Augment {
            brightness: 0.5,
            normalization: Some(nm),
            ..Default::default()
        };
        let mut plain = pixels.clone();
        Augment {
            brightness: 0.5,
            ..Default::default()
        }
        .apply(shape, &mut plain, &[1], 0, &mut Vec::new())
        .unwrap();
        a.apply(shape, &mut x, &[1], 0, &mut Vec::new()).unwrap();
        for (a, b) in x.iter().zip(&plain) {
            assert!((a * 0.25 + 0.5 - b).abs() < 1e-5);
        }
    }

    #[test]
    fn parses_prints_and_refuses() {
        let a: Augment = "flip,rotate=10,crop=0.9,contrast=0.2".parse().unwrap();
        assert_eq!(a.hflip, 0.5);
        assert_eq!(a.crop, Some(0.9));
        assert_eq!(a.to_string().parse::<Augment>().unwrap(), a);
        assert!("none".parse::<Augment>().unwrap().is_identity());
        for (bad, needle) in [
            ("flip=2", "flip"),
            ("rotate=x", "not a number"),
            ("crop=0", "crop"),
            ("zoom", "unknown augmentation"),
            ("noise=-1", "noise"),
        ] {
            let e = bad.parse::<Augment>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn the_crop_box_fits_and_covers_the_scale() {
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let (i, j, h, w) = crop_box(&mut rng, 0.5, 20, 30);
            assert!(i >= 0.0 && j >= 0.0 && i + h <= 20.0 && j + w <= 30.0);
            let frac = h * w / 600.0;
            assert!((0.4..=1.0).contains(&frac), "{frac}");
        }
    }
}
