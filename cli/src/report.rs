//! The training report beside the model: history as CSV, loss and accuracy curves as SVG, the
//! confusion matrix as CSV, and the text report.

use anyhow::{Context, Result};
use cnnkit::EpochReport;
use cnnkit::metrics::Metrics;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn beside(model: &Path, suffix: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    model.with_file_name(format!("{stem}.{suffix}"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds`.
pub fn history_csv(h: &[EpochReport]) -> String {
    let mut s = String::from("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n");
    for r in h {
        let (vl, va) = r.val.as_ref().map_or((String::new(), String::new()), |m| {
            (format!("{:.6}", m.loss), format!("{:.6}", m.accuracy))
        });
        let _ = writeln!(
            s,
            "{},{},{:.6},{:.6},{vl},{va},{:.3}",
            r.epoch, r.lr, r.train_loss, r.train_accuracy, r.seconds
        );
    }
    s
}

/// One panel of line plots: `series` of (name, colour, values per epoch).
fn panel(
    out: &mut String,
    x0: f64,
    title: &str,
    series: &[(&str, &str, Vec<f64>)],
    unit_range: bool,
) {
    let (w, h, m) = (420.0, 300.0, 45.0);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (mut lo, mut hi) = if unit_range {
        (
            all.iter()
                .copied()
                .fold(1.0, f64::min)
                .min(0.9)
                .floor_to(0.1),
            1.0,
        )
    } else {
        (
            0.0,
            all.iter().copied().fold(0.0, f64::max).max(1e-6) * 1.05,
        )
    };
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let px = |i: usize| x0 + m + (w - 1.5 * m) * i as f64 / (n - 1) as f64;
    let py = |v: f64| h - m + (m - h + m * 0.6) * (v - lo) / (hi - lo);
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="20" font-size="14" text-anchor="middle">{title}</text>"#,
        x0 + w / 2.0
    );
    let _ = write!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="gray"/>"#,
        x0 + m,
        m * 0.6,
        w - 1.5 * m,
        h - 1.6 * m
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{v:.3}</text>"#,
            x0 + m - 4.0,
            py(v) + 3.0
        );
    }
    for (i, ep) in [(0, 1), (n - 1, n)] {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{ep}</text>"#,
            px(i),
            h - m + 14.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">epoch</text>"#,
        x0 + w / 2.0,
        h - 8.0
    );
    for (k, (name, colour, vals)) in series.iter().enumerate() {
        if vals.is_empty() {
            continue;
        }
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", px(i), py(v)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        // Legend in the corner the curves leave free: top for loss, bottom for accuracy.
        let ly = if unit_range {
            h - m - 24.0 + 14.0 * k as f64
        } else {
            m * 0.6 + 14.0 + 14.0 * k as f64
        };
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{ly:.1}" font-size="11" fill="{colour}">{name}</text>"#,
            x0 + w - m - 60.0
        );
    }
}

trait FloorTo {
    fn floor_to(self, step: f64) -> f64;
}
impl FloorTo for f64 {
    fn floor_to(self, step: f64) -> f64 {
        (self / step).floor() * step
    }
}

/// Loss and accuracy curves (training and evaluation set) as an SVG picture.
pub fn curves_svg(h: &[EpochReport], eval_name: &str) -> String {
    let tl: Vec<f64> = h.iter().map(|r| r.train_loss).collect();
    let ta: Vec<f64> = h.iter().map(|r| r.train_accuracy).collect();
    let vl: Vec<f64> = h
        .iter()
        .filter_map(|r| r.val.as_ref().map(|m| m.loss))
        .collect();
    let va: Vec<f64> = h
        .iter()
        .filter_map(|r| r.val.as_ref().map(|m| m.accuracy))
        .collect();
    let mut s = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="860" height="300" font-family="sans-serif">"#,
    );
    s.push_str(r#"<rect width="860" height="300" fill="white"/>"#);
    panel(
        &mut s,
        0.0,
        "loss",
        &[("train", "#1f77b4", tl), (eval_name, "#d62728", vl)],
        false,
    );
    panel(
        &mut s,
        430.0,
        "accuracy",
        &[("train", "#1f77b4", ta), (eval_name, "#d62728", va)],
        true,
    );
    s.push_str("</svg>\n");
    s
}

/// The confusion matrix as CSV: a header of predicted classes, a row per true class.
pub fn confusion_csv(m: &Metrics, classes: &[String]) -> String {
    let mut s = String::from("true\\predicted");
    for c in classes {
        s.push(',');
        s.push_str(&csv_field(c));
    }
    s.push('\n');
    for (c, row) in classes.iter().zip(&m.confusion) {
        s.push_str(&csv_field(c));
        for v in row {
            let _ = write!(s, ",{v}");
        }
        s.push('\n');
    }
    s
}

/// Writes the report files beside `model` and returns their names.
pub fn write(
    model: &Path,
    h: &[EpochReport],
    m: Option<&Metrics>,
    classes: &[String],
    eval_name: &str,
) -> Result<Vec<String>> {
    let mut files = vec![
        (beside(model, "history.csv"), history_csv(h)),
        (beside(model, "curves.svg"), curves_svg(h, eval_name)),
    ];
    if let Some(m) = m {
        files.push((beside(model, "confusion.csv"), confusion_csv(m, classes)));
        files.push((
            beside(model, "report.txt"),
            format!(
                "accuracy {:.4}\nloss {:.4}\n\n{}\n{}",
                m.accuracy,
                m.loss,
                m.report(classes),
                m.confusion_table(classes)
            ),
        ));
    }
    let mut names = Vec::new();
    for (p, text) in files {
        cnnkit::checkpoint::write_atomic(&p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        names.push(p.display().to_string());
    }
    Ok(names)
}
