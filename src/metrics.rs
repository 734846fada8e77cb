//! Classification metrics: accuracy, confusion matrix, per-class precision / recall / F1, and for
//! two classes sensitivity, specificity and ROC AUC.

use std::fmt::Write as _;

/// Precision, recall and F1 of one class (0 where undefined, as scikit-learn's `zero_division=0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassMetrics {
    /// `TP / (TP + FP)`.
    pub precision: f64,
    /// `TP / (TP + FN)`.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Number of true instances.
    pub support: usize,
}

/// Two-class metrics, with class 1 as the positive class (scikit-learn's `pos_label=1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinaryMetrics {
    /// Recall of the positive class: `TP / (TP + FN)`.
    pub sensitivity: f64,
    /// Recall of the negative class: `TN / (TN + FP)`.
    pub specificity: f64,
    /// Area under the ROC curve of the positive-class probability (ties count one half); `None`
    /// when only one class is present.
    pub roc_auc: Option<f64>,
}

/// Metrics of a classifier over a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Per-class precision, recall, F1.
    pub per_class: Vec<ClassMetrics>,
    /// Present for two classes.
    pub binary: Option<BinaryMetrics>,
}

impl Metrics {
    /// Metrics from true `labels`, predicted labels `pred`, the positive-class scores (for ROC AUC,
    /// two classes only) and the mean loss.
    pub fn new(
        classes: usize,
        labels: &[u32],
        pred: &[u32],
        positive_scores: Option<&[f32]>,
        loss: f64,
    ) -> Self {
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&t, &p) in labels.iter().zip(pred) {
            if (t as usize) < classes && (p as usize) < classes {
                confusion[t as usize][p as usize] += 1;
            }
        }
        let total: usize = labels.len();
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassMetrics> = (0..classes)
            .map(|c| {
                let tp = confusion[c][c];
                let predicted: usize = (0..classes).map(|t| confusion[t][c]).sum();
                let support: usize = confusion[c].iter().sum();
                let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let binary = (classes == 2).then(|| BinaryMetrics {
            sensitivity: per_class[1].recall,
            specificity: per_class[0].recall,
            roc_auc: positive_scores.and_then(|s| roc_auc(labels, s)),
        });
        Metrics {
            loss,
            accuracy: ratio(correct, total),
            confusion,
            per_class,
            binary,
        }
    }

    /// Metrics rebuilt from a confusion matrix (with the mean loss and, for two classes, the ROC
    /// AUC, which the matrix does not determine).
    pub fn from_confusion(confusion: Vec<Vec<usize>>, loss: f64, roc_auc: Option<f64>) -> Self {
        let classes = confusion.len();
        let (mut labels, mut pred) = (Vec::new(), Vec::new());
        for (t, row) in confusion.iter().enumerate() {
            for (p, &n) in row.iter().enumerate() {
                labels.extend(std::iter::repeat_n(t as u32, n));
                pred.extend(std::iter::repeat_n(p as u32, n));
            }
        }
        let mut m = Metrics::new(classes, &labels, &pred, None, loss);
        if let Some(b) = &mut m.binary {
            b.roc_auc = roc_auc;
        }
        m
    }

    /// The confusion matrix as text: one row per true class, one column per predicted class.
    pub fn confusion_table(&self, names: &[String]) -> String {
        let w = names.iter().map(|n| n.len()).max().unwrap_or(1).max(
            self.confusion
                .iter()
                .flatten()
                .max()
                .map_or(1, |m| m.to_string().len()),
        ) + 1;
        let mut s = format!("{:>w$} |", "true\\pred");
        for n in names {
            let _ = write!(s, "{n:>w$}");
        }
        s.push('\n');
        for (name, row) in names.iter().zip(&self.confusion) {
            let _ = write!(s, "{name:>w$} |", w = w.max(9));
            for v in row {
                let _ = write!(s, "{v:>w$}");
            }
            s.push('\n');
        }
        s
    }

    /// Per-class precision, recall, F1 and support as text, and the binary metrics if any.
    pub fn report(&self, names: &[String]) -> String {
        let mut s = format!(
            "{:>12} {:>9} {:>9} {:>9} {:>8}\n",
            "class", "precision", "recall", "f1", "support"
        );
        for (n, m) in names.iter().zip(&self.per_class) {
            let _ = writeln!(
                s,
                "{n:>12} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                m.precision, m.recall, m.f1, m.support
            );
        }
        if let Some(b) = &self.binary {
            let _ = write!(
                s,
                "sensitivity {:.4}, specificity {:.4}",
                b.sensitivity, b.specificity
            );
            if let Some(auc) = b.roc_auc {
                let _ = write!(s, ", ROC AUC {auc:.4}");
            }
            s.push('\n');
        }
        s
    }
}

/// ROC AUC of `scores` for the positive class 1 against class 0, by the rank-sum (Mann–Whitney)
/// statistic with mid-ranks for ties; `None` if either class is absent. Labels other than 0 and
/// 1 are ignored.
pub fn roc_auc(labels: &[u32], scores: &[f32]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = labels
        .iter()
        .zip(scores)
        .filter(|(l, _)| **l <= 1)
        .map(|(&l, &s)| (s, l == 1))
        .collect();
    let pos = v.iter().filter(|p| p.1).count();
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * v[i..=j].iter().filter(|p| p.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

/// The operating point a two-class decision threshold is chosen for.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum OperatingPoint {
    /// At least this sensitivity (recall of class 1), with the best specificity that allows.
    Sensitivity(f64),
    /// At least this specificity (recall of class 0), with the best sensitivity that allows.
    Specificity(f64),
}

/// A decision threshold on the positive-class probability (`positive ⇔ P(class 1) ≥
/// threshold`) and the rates it gives on the data it was chosen on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    /// The threshold.
    pub threshold: f32,
    /// Sensitivity at the threshold.
    pub sensitivity: f64,
    /// Specificity at the threshold.
    pub specificity: f64,
}

/// The threshold on `scores` (positive-class probabilities) that reaches `target` on `labels`
/// (0/1; others ignored) with the best other rate, halfway between the neighbouring scores of the
/// cut so that it does not sit on a sample. `None` if a class is absent or the target is outside
/// `[0, 1]`.
///
/// # Example
/// ```
/// use cnnkit::metrics::{decision_threshold, OperatingPoint};
/// let labels = [0, 0, 0, 1, 1, 1];
/// let scores = [0.1, 0.4, 0.6, 0.35, 0.7, 0.9];
/// // Every positive found: the cut goes below 0.35, one negative (0.4) and 0.6 above it.
/// let t = decision_threshold(&labels, &scores, OperatingPoint::Sensitivity(1.0)).unwrap();
/// assert_eq!((t.threshold, t.sensitivity), (0.225, 1.0));
/// assert!((t.specificity - 1.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn decision_threshold(
    labels: &[u32],
    scores: &[f32],
    target: OperatingPoint,
) -> Option<Threshold> {
    let want = match target {
        OperatingPoint::Sensitivity(v) | OperatingPoint::Specificity(v) => v,
    };
    if !(0.0..=1.0).contains(&want) {
        return None;
    }
    let mut v: Vec<(f32, bool)> = labels
        .iter()
        .zip(scores)
        .filter(|(l, s)| **l <= 1 && !s.is_nan())
        .map(|(&l, &s)| (s, l == 1))
        .collect();
    let pos = v.iter().filter(|p| p.1).count();
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Cut k: the k lowest scores negative, the rest positive (at distinct score boundaries).
    let mut best: Option<(f64, usize)> = None;
    let (mut tn, mut fneg) = (0usize, 0usize);
    for k in 0..=v.len() {
        if k > 0 {
            if v[k - 1].1 {
                fneg += 1;
            } else {
                tn += 1;
            }
        }
        if k > 0 && k < v.len() && v[k].0 == v[k - 1].0 {
            continue;
        }
        let sens = (pos - fneg) as f64 / pos as f64;
        let spec = tn as f64 / neg as f64;
        let (ok, other) = match target {
            OperatingPoint::Sensitivity(s) => (sens >= s, spec),
            OperatingPoint::Specificity(s) => (spec >= s, sens),
        };
        if ok && best.is_none_or(|(o, _)| other > o) {
            best = Some((other, k));
        }
    }
    let (_, k) = best?;
    let threshold = match k {
        0 => v[0].0.min(0.0),
        k if k == v.len() => f32::INFINITY,
        k => (v[k - 1].0 + v[k].0) / 2.0,
    };
    rates_at(labels, scores, threshold)
}

/// Sensitivity and specificity of the rule `positive ⇔ score ≥ threshold` on `labels` (0/1;
/// others and NaN scores ignored): how a stored threshold does on new data. `None` if a class is
/// absent.
///
/// # Example
/// ```
/// use cnnkit::metrics::rates_at;
/// let r = rates_at(&[0, 0, 1, 1], &[0.2, 0.6, 0.5, 0.9], 0.5).unwrap();
/// // Positives 0.5 and 0.9 are both at or above it; of the negatives only 0.2 is below.
/// assert_eq!((r.sensitivity, r.specificity), (1.0, 0.5));
/// ```
pub fn rates_at(labels: &[u32], scores: &[f32], threshold: f32) -> Option<Threshold> {
    let (mut pos, mut neg, mut tp, mut tn) = (0usize, 0usize, 0usize, 0usize);
    for (&l, &s) in labels.iter().zip(scores) {
        if l > 1 || s.is_nan() {
            continue;
        }
        let positive = s >= threshold;
        if l == 1 {
            pos += 1;
            tp += usize::from(positive);
        } else {
            neg += 1;
            tn += usize::from(!positive);
        }
    }
    if pos == 0 || neg == 0 {
        return None;
    }
    Some(Threshold {
        threshold,
        sensitivity: tp as f64 / pos as f64,
        specificity: tn as f64 / neg as f64,
    })
}

/// The best sensitivity with specificity at least `specificity` (a point of the ROC curve), or
/// `None` as for [`decision_threshold`].
pub fn sensitivity_at_specificity(labels: &[u32], scores: &[f32], specificity: f64) -> Option<f64> {
    decision_threshold(labels, scores, OperatingPoint::Specificity(specificity))
        .map(|t| t.sensitivity)
}
