//! The embedded dataset: handwritten digits, 8x8 pixels.
//!
//! The UCI "Optical Recognition of Handwritten Digits" test set as distributed by scikit-learn
//! (`sklearn.datasets.load_digits`): 1,797 images of 8x8 pixels with 17 grey levels, written by 13
//! people (E. Alpaydin and C. Kaynak, UCI Machine Learning Repository, 1998,
//! <https://doi.org/10.24432/C50P49>, CC BY 4.0). Stored in the crate as IDX files
//! (`data/digits-*.idx*`, 117 KB, made by `data/make_digits.py`).

use super::Dataset;
use super::idx::{IdxLimits, idx_to_dataset, parse_idx};
use crate::error::Result;
use std::path::Path;

static IMAGES: &[u8] = include_bytes!("../../data/digits-images.idx3");
static LABELS: &[u8] = include_bytes!("../../data/digits-labels.idx1");

/// Every `DIGITS_TEST_EVERY`-th image of each class goes to the test split.
pub const DIGITS_TEST_EVERY: usize = 5;

/// The embedded digits as `(train, test)`: pixels scaled to `[0, 1]` (grey level / 16), shape
/// `[1, 8, 8]`, classes `"0"` to `"9"`. The split is fixed and stratified: in scikit-learn's order,
/// the 5th, 10th, 15th, ... image of each digit is a test image (355 test images, 34 to 36 per
/// digit; 1,442 training images).
///
/// # Errors
/// Never in practice (the embedded files are checked by the tests); the parse is the same as for
/// any IDX file.
pub fn digits() -> Result<(Dataset, Dataset)> {
    let (ip, lp) = (
        Path::new("data/digits-images.idx3"),
        Path::new("data/digits-labels.idx1"),
    );
    let (idims, pixels) = parse_idx(IMAGES, ip, IdxLimits::default())?;
    let (ldims, labels) = parse_idx(LABELS, lp, IdxLimits::default())?;
    let all = idx_to_dataset(ip, lp, &idims, pixels, &ldims, labels, 16.0)?;
    let mut seen = [0usize; 256];
    let (test, train): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|&i| {
        let c = &mut seen[all.labels()[i] as usize];
        *c += 1;
        *c % DIGITS_TEST_EVERY == 0
    });
    Ok((all.subset(&train), all.subset(&test)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_digits_have_the_documented_split() {
        let (train, test) = super::digits().unwrap();
        assert_eq!((train.len(), test.len()), (1442, 355));
        assert_eq!(train.shape(), [1, 8, 8]);
        assert_eq!(train.classes().len(), 10);
        assert_eq!(
            test.class_counts(),
            [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]
        );
        assert!(train.images().iter().all(|&v| (0.0..=1.0).contains(&v)));
        // scikit-learn's first image is a 0, its second a 1.
        assert_eq!(train.labels()[..2], [0, 1]);
    }
}
