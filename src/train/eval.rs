//! Evaluation of a trained model: class probabilities, metrics over a dataset, and the
//! reconstruction loss of an image-to-image model.

use super::config::Loss;
use crate::data::{Dataset, Pairs, gather};
use crate::error::{Error, Result};
use crate::kernels::loss::cross_entropy_loss;
use crate::kernels::softmax::softmax_forward;
use crate::metrics::Metrics;
use crate::model::Sequential;

pub(super) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || (v[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

/// Class probabilities (softmax of the outputs) of `n` images, in evaluation mode.
///
/// # Errors
/// [`Error::Length`] if `x` does not hold `n` images of the model's input shape.
pub fn predict(model: &mut Sequential, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let was = model.is_training();
    model.eval();
    let out = model.infer(x, n).map(|l| l.to_vec());
    if was {
        model.train();
    }
    let logits = out?;
    let mut probs = vec![0.0; logits.len()];
    softmax_forward(model.output_len(), &logits, &mut probs)?;
    Ok(probs)
}

/// The mean `loss` (MSE or L1, over every output element) of `model` on `pairs`, in evaluation
/// mode (the model's mode is restored afterwards), `batch` pairs at a time.
///
/// # Errors
/// [`Error::InvalidArg`] if the pairs do not fit the model or are empty, the loss is
/// cross-entropy, or `batch` is 0.
pub fn reconstruction_loss(
    model: &mut Sequential,
    pairs: &Pairs,
    loss: Loss,
    batch: usize,
) -> Result<f64> {
    const OP: &str = "reconstruction_loss";
    pairs.check_fits(OP, model)?;
    if pairs.is_empty() || batch == 0 || loss == Loss::CrossEntropy {
        return Err(Error::invalid(
            OP,
            "pairs",
            "needs pairs, a batch of at least 1 and the MSE or L1 loss",
        ));
    }
    let was = model.is_training();
    model.eval();
    let (a, b) = (pairs.input_len(), model.output_len());
    let mut total = 0.0f64;
    let r = (|| {
        for (x, t) in pairs
            .inputs()
            .chunks(batch * a)
            .zip(pairs.targets().chunks(batch * b))
        {
            let out = model.infer(x, x.len() / a)?;
            let l = match loss {
                Loss::Mse => crate::kernels::loss::mse_loss(out, t, None)?,
                _ => crate::kernels::loss::l1_loss(out, t, None)?,
            };
            total += l as f64 * t.len() as f64;
        }
        Ok(total / pairs.targets().len() as f64)
    })();
    if was {
        model.train();
    }
    r
}

/// Loss, accuracy, confusion matrix and per-class metrics of `model` on `ds`, in evaluation mode
/// (the model's mode is restored afterwards).
///
/// # Errors
/// [`Error::InvalidArg`] if the dataset does not fit the model.
pub fn evaluate(model: &mut Sequential, ds: &Dataset, batch: usize) -> Result<Metrics> {
    evaluate_scores(model, ds, batch).map(|r| r.0)
}

/// [`evaluate`], and for two classes the positive-class probability of every image (empty for
/// more classes).
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_scores(
    model: &mut Sequential,
    ds: &Dataset,
    batch: usize,
) -> Result<(Metrics, Vec<f32>)> {
    const OP: &str = "evaluate";
    if ds.shape() != model.input_shape() || ds.classes().len() != model.output_len() {
        return Err(Error::invalid(
            OP,
            "dataset",
            format!(
                "images {:?} with {} classes; the model takes {:?} and outputs {}",
                ds.shape(),
                ds.classes().len(),
                model.input_shape(),
                model.output_len()
            ),
        ));
    }
    let classes = model.output_len();
    let was = model.is_training();
    model.eval();
    let (mut pred, mut scores, mut loss_sum) = (Vec::with_capacity(ds.len()), Vec::new(), 0.0f64);
    let (mut xb, mut yb) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut result = Ok(());
    for chunk in idx.chunks(batch.max(1)) {
        gather(ds, chunk, &mut xb, &mut yb);
        let logits = match model.infer(&xb, chunk.len()) {
            Ok(l) => l,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        loss_sum +=
            cross_entropy_loss(classes, logits, &yb, 0.0, None)? as f64 * chunk.len() as f64;
        for row in logits.chunks_exact(classes) {
            pred.push(argmax(row) as u32);
            if classes == 2 {
                // P(class 1) = σ(z1 − z0).
                scores.push(1.0 / (1.0 + (row[0] - row[1]).exp()));
            }
        }
    }
    if was {
        model.train();
    }
    result?;
    let loss = loss_sum / ds.len().max(1) as f64;
    let m = Metrics::new(
        classes,
        ds.labels(),
        &pred,
        (classes == 2).then_some(&scores[..]),
        loss,
    );
    Ok((m, scores))
}
