//! Image preprocessing with OpenCV's semantics, on single-channel images: histogram
//! equalisation (`cv2.equalizeHist`), CLAHE (`cv2.createCLAHE(clipLimit, tileGridSize).apply`,
//! 8- and 16-bit), brightness/contrast (`cv2.addWeighted(img, alpha, 0, 0, beta)`), and resizing
//! (`cv2.resize` with `INTER_LINEAR` or `INTER_AREA`).
//!
//! Rounding follows OpenCV (`saturate_cast`: round half to even, then clamp), and CLAHE repeats
//! its arithmetic in the same `f32` order, so 8-bit results are identical to OpenCV's.

use crate::error::{Error, Result};

/// A single-channel image, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gray<T> {
    width: usize,
    height: usize,
    data: Vec<T>,
}

impl<T: Copy> Gray<T> {
    /// An image of `width x height` pixels from row-major `data`.
    ///
    /// # Errors
    /// [`Error::Length`] unless `data.len() == width * height`; [`Error::InvalidArg`] for an empty
    /// image.
    pub fn new(width: usize, height: usize, data: Vec<T>) -> Result<Self> {
        const OP: &str = "Gray::new";
        if width == 0 || height == 0 {
            return Err(Error::invalid(
                OP,
                "size",
                format!("empty image {width}x{height}"),
            ));
        }
        crate::error::check_len(
            OP,
            "data",
            &data,
            crate::error::mul(OP, "pixels", width, height)?,
        )?;
        Ok(Gray {
            width,
            height,
            data,
        })
    }
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }
    /// Pixels, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// The pixel buffer.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    fn row(&self, y: usize) -> &[T] {
        &self.data[y * self.width..(y + 1) * self.width]
    }
}

/// An integer pixel type CLAHE works on.
pub trait Pixel: Copy + Default + Send + Sync + 'static {
    /// Histogram bins (the number of values).
    const BINS: usize;
    /// The value as an index.
    fn index(self) -> usize;
    /// `saturate_cast` from `f32`: round half to even, clamp to the type's range.
    fn saturate(v: f32) -> Self;
}

impl Pixel for u8 {
    const BINS: usize = 256;
    fn index(self) -> usize {
        self as usize
    }
    fn saturate(v: f32) -> Self {
        v.round_ties_even().clamp(0.0, 255.0) as u8
    }
}

impl Pixel for u16 {
    const BINS: usize = 65536;
    fn index(self) -> usize {
        self as usize
    }
    fn saturate(v: f32) -> Self {
        v.round_ties_even().clamp(0.0, 65535.0) as u16
    }
}

/// `cv2.equalizeHist`: maps each grey level through the normalised cumulative histogram,
/// `lut[v] = round((cdf(v) − cdf(min)) · 255 / (N − count(min)))` where `min` is the darkest level
/// present; a constant image is returned unchanged.
pub fn equalize_hist(img: &Gray<u8>) -> Gray<u8> {
    let mut hist = [0usize; 256];
    for &p in &img.data {
        hist[p as usize] += 1;
    }
    let total = img.data.len();
    let first = hist.iter().position(|&h| h > 0).unwrap_or(0);
    if hist[first] == total {
        return img.clone();
    }
    let scale = 255.0f32 / (total - hist[first]) as f32;
    let mut lut = [0u8; 256];
    let mut sum = 0usize;
    for i in first + 1..256 {
        sum += hist[i];
        lut[i] = u8::saturate(sum as f32 * scale);
    }
    Gray {
        width: img.width,
        height: img.height,
        data: img.data.iter().map(|&p| lut[p as usize]).collect(),
    }
}

/// CLAHE parameters, as `cv2.createCLAHE(clipLimit, tileGridSize)` (defaults 40 and 8x8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clahe {
    /// Contrast limit: each tile's histogram is clipped at `clip_limit · tile_pixels / bins`
    /// (at least 1) and the excess redistributed; `0` disables clipping (plain adaptive
    /// equalisation).
    pub clip_limit: f64,
    /// Tiles across (x) and down (y), OpenCV's `tileGridSize = (x, y)`.
    pub tiles: [usize; 2],
}

impl Default for Clahe {
    fn default() -> Self {
        Clahe {
            clip_limit: 40.0,
            tiles: [8, 8],
        }
    }
}

/// Largest number of CLAHE lookup-table entries (`tiles_x · tiles_y · bins`): 256x256 tiles for
/// 8-bit images, 16x16 for 16-bit.
pub const MAX_CLAHE_LUT: usize = 1 << 24;

/// OpenCV's `BORDER_REFLECT_101` index for position `p` in `0..len` extended periodically.
fn reflect101(mut p: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let n = len as isize;
    while p < 0 || p >= n {
        p = if p < 0 { -p } else { 2 * (n - 1) - p };
    }
    p as usize
}

/// Contrast-limited adaptive histogram equalisation, as OpenCV's `CLAHE::apply` on 8- or 16-bit
/// single-channel images:
/// 1. If the image size is not a multiple of the grid, it is extended at the right and bottom
///    (by `tiles − size % tiles` pixels on both axes, mirrored without repeating the edge) for
///    the tile histograms; the output keeps the input size.
/// 2. Each tile's histogram is clipped and the clipped count spread evenly over all bins, the
///    remainder one per bin at a stride of `bins / remainder`.
/// 3. Each tile's lookup table is `round(cdf · (bins − 1) / tile_pixels)`.
/// 4. Each pixel blends the tables of the four nearest tile centres bilinearly.
///
/// # Errors
/// [`Error::InvalidArg`] for a zero tile count, a grid needing more than [`MAX_CLAHE_LUT`] table
/// entries, or a clip limit that is negative or not finite.
pub fn clahe<T: Pixel>(img: &Gray<T>, p: &Clahe) -> Result<Gray<T>> {
    const OP: &str = "clahe";
    let [tx, ty] = p.tiles;
    if tx == 0 || ty == 0 {
        return Err(Error::invalid(
            OP,
            "tiles",
            format!("tile grid {tx}x{ty} must be at least 1x1"),
        ));
    }
    if !(p.clip_limit.is_finite() && p.clip_limit >= 0.0) {
        return Err(Error::invalid(
            OP,
            "clip_limit",
            format!("must be finite and non-negative, got {}", p.clip_limit),
        ));
    }
    let (w, h) = (img.width, img.height);
    // One lookup table of `bins` entries per tile: keep them under MAX_CLAHE_LUT entries.
    if tx.saturating_mul(ty).saturating_mul(T::BINS) > MAX_CLAHE_LUT {
        return Err(Error::invalid(
            OP,
            "tiles",
            format!("a {tx}x{ty} grid needs more than {MAX_CLAHE_LUT} lookup-table entries"),
        ));
    }
    // Tile size over the (possibly extended) image.
    let (ew, eh) = if w % tx == 0 && h % ty == 0 {
        (w, h)
    } else {
        (w + tx - w % tx, h + ty - h % ty)
    };
    let (tw, th) = (ew / tx, eh / ty);
    let tile_px = tw * th;
    let bins = T::BINS;
    let lut_scale = (bins - 1) as f32 / tile_px as f32;
    let clip = if p.clip_limit > 0.0 {
        ((p.clip_limit * tile_px as f64 / bins as f64) as usize).max(1)
    } else {
        0
    };
    // Column and row index maps into the extended image (identity inside the original).
    let col: Vec<usize> = (0..ew).map(|x| reflect101(x as isize, w)).collect();
    let mut luts = vec![T::default(); tx * ty * bins];
    let mut hist = vec![0usize; bins];
    for t in 0..tx * ty {
        let (gx, gy) = (t % tx, t / tx);
        hist.fill(0);
        for y in gy * th..(gy + 1) * th {
            let row = img.row(reflect101(y as isize, h));
            for &c in &col[gx * tw..(gx + 1) * tw] {
                hist[row[c].index()] += 1;
            }
        }
        if clip > 0 {
            let mut clipped = 0;
            for v in hist.iter_mut() {
                if *v > clip {
                    clipped += *v - clip;
                    *v = clip;
                }
            }
            let (batch, mut residual) = (clipped / bins, clipped % bins);
            for v in hist.iter_mut() {
                *v += batch;
            }
            if let Some(q) = bins.checked_div(residual) {
                let step = q.max(1);
                let mut i = 0;
                while i < bins && residual > 0 {
                    hist[i] += 1;
                    i += step;
                    residual -= 1;
                }
            }
        }
        let lut = &mut luts[t * bins..(t + 1) * bins];
        let mut sum = 0usize;
        for (l, &v) in lut.iter_mut().zip(&hist) {
            sum += v;
            *l = T::saturate(sum as f32 * lut_scale);
        }
    }
    // Blend: tile-centre coordinates and weights, in OpenCV's f32 arithmetic.
    let axis = |i: usize, size: usize, n: usize| {
        let f = i as f32 * (1.0f32 / size as f32) - 0.5;
        let t1 = f.floor();
        let a = f - t1;
        let t1 = t1 as isize;
        (
            (t1.max(0) as usize).min(n - 1),
            ((t1 + 1).max(0) as usize).min(n - 1),
            a,
        )
    };
    let xs: Vec<(usize, usize, f32)> = (0..w).map(|x| axis(x, tw, tx)).collect();
    let mut data = crate::memory::vec_of(OP, "the equalised image", w * h, T::default())?;
    for (y, out) in data.chunks_exact_mut(w).enumerate() {
        let (ty1, ty2, ya) = axis(y, th, ty);
        let ya1 = 1.0 - ya;
        let row = img.row(y);
        for (x, o) in out.iter_mut().enumerate() {
            let (tx1, tx2, xa) = xs[x];
            let xa1 = 1.0 - xa;
            let v = row[x].index();
            let l = |gy: usize, gx: usize| luts[(gy * tx + gx) * bins + v].index() as f32;
            let res = (l(ty1, tx1) * xa1 + l(ty1, tx2) * xa) * ya1
                + (l(ty2, tx1) * xa1 + l(ty2, tx2) * xa) * ya;
            *o = T::saturate(res);
        }
    }
    Ok(Gray {
        width: w,
        height: h,
        data,
    })
}

/// Brightness and contrast, as `cv2.addWeighted(img, contrast, zeros, 0, brightness)`:
/// `saturate(round(contrast · v + brightness))`.
pub fn adjust(img: &Gray<u8>, contrast: f32, brightness: f32) -> Gray<u8> {
    Gray {
        width: img.width,
        height: img.height,
        data: img
            .data
            .iter()
            .map(|&v| u8::saturate(contrast * v as f32 + brightness))
            .collect(),
    }
}

/// Resampling filter of [`resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Filter {
    /// `INTER_LINEAR`: bilinear, pixel centres aligned (`src = (dst + 0.5)·scale − 0.5`, clamped).
    #[default]
    Bilinear,
    /// `INTER_AREA` when shrinking: each output pixel averages the input area it covers
    /// (fractional coverage at the edges). When enlarging, bilinear.
    Area,
}

/// Resizes a float image to `width x height`, as `cv2.resize(img, (width, height),
/// interpolation=INTER_LINEAR | INTER_AREA)` on a `float32` image.
///
/// # Errors
/// [`Error::InvalidArg`] for a zero target size; [`Error::TooLarge`] if it overflows.
pub fn resize(img: &Gray<f32>, width: usize, height: usize, filter: Filter) -> Result<Gray<f32>> {
    const OP: &str = "resize";
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            OP,
            "size",
            format!("target size {width}x{height} is empty"),
        ));
    }
    let len = crate::error::mul(OP, "target pixels", width, height)?;
    // The output, the horizontal pass (source rows at the target width) and the filter taps.
    crate::memory::check_elems::<f32>(
        OP,
        "the resized image",
        len as u128 + img.height as u128 * width as u128 + 8 * (width as u128 + height as u128),
    )?;
    // The two large buffers first, so a request the system refuses fails before any work.
    let mut data = crate::memory::vec_of(OP, "the resized image", len, 0.0f32)?;
    let mut tmp = crate::memory::vec_of(OP, "the resized image", img.height * width, 0.0f32)?;
    let shrink = width <= img.width && height <= img.height;
    let (hx, hy) = if filter == Filter::Area && shrink {
        (
            area_weights(img.width, width),
            area_weights(img.height, height),
        )
    } else {
        (
            linear_weights(img.width, width),
            linear_weights(img.height, height),
        )
    };
    // Horizontal pass into rows, then vertical.
    for (y, out) in tmp.chunks_exact_mut(width).enumerate() {
        let row = img.row(y);
        for (o, taps) in out.iter_mut().zip(&hx) {
            *o = taps.iter().map(|&(i, wt)| row[i] * wt).sum();
        }
    }
    for (out, taps) in data.chunks_exact_mut(width).zip(&hy) {
        for &(i, wt) in taps {
            for (o, v) in out.iter_mut().zip(&tmp[i * width..(i + 1) * width]) {
                *o += v * wt;
            }
        }
    }
    Ok(Gray {
        width,
        height,
        data,
    })
}

/// Bilinear taps for each of `dst` outputs over `src` inputs (OpenCV's `INTER_LINEAR`).
fn linear_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            let (mut s, mut a) = (s as isize, f - s);
            if s < 0 {
                (s, a) = (0, 0.0);
            }
            if s as usize >= src - 1 {
                (s, a) = (src as isize - 1, 0.0);
            }
            let s = s as usize;
            if a == 0.0 {
                vec![(s, 1.0)]
            } else {
                vec![(s, 1.0 - a), (s + 1, a)]
            }
        })
        .collect()
}

/// Area-averaging taps for shrinking `src` to `dst` (OpenCV's `INTER_AREA` coverage weights).
fn area_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let (f0, f1) = (d as f64 * scale, ((d + 1) as f64 * scale).min(src as f64));
            let mut taps = Vec::new();
            let mut i = f0.floor() as usize;
            while (i as f64) < f1 && i < src {
                let cover = (f1.min((i + 1) as f64) - f0.max(i as f64)) / (f1 - f0);
                if cover > 1e-12 {
                    taps.push((i, cover as f32));
                }
                i += 1;
            }
            taps
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect101_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-4..9).map(|p| reflect101(p, 4)).collect();
        assert_eq!(got, [2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect101(7, 1), 0);
    }

    #[test]
    fn constant_images_are_fixed_points_of_equalisation() {
        let g = Gray::new(3, 2, vec![7u8; 6]).unwrap();
        assert_eq!(equalize_hist(&g), g);
    }
}
