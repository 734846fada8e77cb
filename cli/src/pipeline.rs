//! Where the data comes from and how images become inputs; recorded in the model file so
//! `eval` and `predict` repeat it exactly.

use anyhow::{Context, Result, bail};
use cnnkit::data::{self, Dataset, IdxLimits};
use cnnkit::image::{ImageOptions, load_image_splits};
use cnnkit::preprocess::Clahe;
use serde_json::{Value, json};
use std::path::Path;

/// Metadata key of the pipeline.
pub const KEY: &str = "cnnkit.pipeline";

/// The data source and preprocessing of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// `digits`, `idx` or `folder`.
    pub source: String,
    /// The data folder trained on (absolute), for `idx` and `folder` sources.
    pub data: Option<String>,
    /// Class names by label.
    pub classes: Vec<String>,
    /// Input channels.
    pub channels: usize,
    /// Input `[height, width]`.
    pub size: [usize; 2],
    /// CLAHE applied before resizing.
    pub clahe: Option<Clahe>,
    /// Histogram equalisation applied before resizing.
    pub equalize: bool,
    /// Per-channel normalisation.
    pub mean: Vec<f32>,
    /// Per-channel normalisation.
    pub std: Vec<f32>,
    /// Two classes: the decision threshold on P(second class) chosen on validation data, and
    /// the operating point it was chosen for (such as `sensitivity=0.95`).
    pub threshold: Option<(f32, String)>,
}

impl Pipeline {
    /// The pipeline of a model from elsewhere: images of `shape` (`[C, H, W]`) in [0, 1], not
    /// normalised, no enhancement.
    pub fn plain(source: String, classes: Vec<String>, shape: cnnkit::Shape3) -> Self {
        let [c, h, w] = shape;
        Pipeline {
            source,
            data: None,
            classes,
            channels: c,
            size: [h, w],
            clahe: None,
            equalize: false,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            threshold: None,
        }
    }

    pub fn to_json(&self) -> String {
        json!({
            "source": self.source,
            "data": self.data,
            "classes": self.classes,
            "channels": self.channels,
            "size": self.size,
            "clahe": self.clahe.map(|c| json!({"clip_limit": c.clip_limit, "tiles": c.tiles})),
            "equalize": self.equalize,
            "mean": self.mean,
            "std": self.std,
            "threshold": self.threshold.as_ref().map(|(t, why)| json!({"value": t, "for": why})),
        })
        .to_string()
    }

    pub fn from_json(s: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(s).context("malformed pipeline metadata")?;
        let f32s = |k: &str| -> Result<Vec<f32>> {
            v[k].as_array()
                .context(format!("pipeline: missing {k}"))?
                .iter()
                .map(|x| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .context(format!("pipeline: bad {k}"))
                })
                .collect()
        };
        let usize_of = |x: &Value| x.as_u64().map(|u| u as usize);
        let size = v["size"]
            .as_array()
            .filter(|a| a.len() == 2)
            .context("pipeline: bad size")?;
        let clahe = match &v["clahe"] {
            Value::Null => None,
            c => {
                let t = c["tiles"]
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .context("pipeline: bad clahe tiles")?;
                Some(Clahe {
                    clip_limit: c["clip_limit"]
                        .as_f64()
                        .context("pipeline: bad clip limit")?,
                    tiles: [
                        usize_of(&t[0]).context("pipeline: bad tiles")?,
                        usize_of(&t[1]).context("pipeline: bad tiles")?,
                    ],
                })
            }
        };
        Ok(Pipeline {
            source: v["source"]
                .as_str()
                .context("pipeline: missing source")?
                .to_string(),
            data: v["data"].as_str().map(str::to_string),
            classes: v["classes"]
                .as_array()
                .context("pipeline: missing classes")?
                .iter()
                .map(|c| {
                    c.as_str()
                        .map(str::to_string)
                        .context("pipeline: bad class name")
                })
                .collect::<Result<_>>()?,
            channels: usize_of(&v["channels"]).context("pipeline: bad channels")?,
            size: [
                usize_of(&size[0]).context("pipeline: bad size")?,
                usize_of(&size[1]).context("pipeline: bad size")?,
            ],
            clahe,
            equalize: v["equalize"].as_bool().unwrap_or(false),
            mean: f32s("mean")?,
            std: f32s("std")?,
            threshold: match &v["threshold"] {
                Value::Null => None,
                t => Some((
                    t["value"].as_f64().context("pipeline: bad threshold")? as f32,
                    t["for"].as_str().unwrap_or("").to_string(),
                )),
            },
        })
    }

    /// How `predict` and `eval` read image files for this model.
    pub fn image_options(&self) -> ImageOptions {
        ImageOptions {
            size: Some(self.size),
            grayscale: self.channels == 1,
            clahe: self.clahe,
            equalize: self.equalize,
            ..Default::default()
        }
    }
}

/// Training data: a training set and, if the source has one, a test set.
pub struct Loaded {
    pub source: &'static str,
    pub train: Dataset,
    pub test: Option<Dataset>,
}

fn is_mnist_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("train-images"))
    })
}

/// Loads `data` (the embedded digits when `None`). Image options other than the defaults only
/// apply to image folders.
pub fn load(data: Option<&Path>, opts: &ImageOptions, image_opts_given: bool) -> Result<Loaded> {
    let folder_only = || -> Result<()> {
        if image_opts_given {
            bail!(
                "--size, --grayscale, --clahe and --equalize apply to image folders, not to this data"
            );
        }
        Ok(())
    };
    match data {
        None => {
            folder_only()?;
            let (train, test) = data::digits()?;
            Ok(Loaded {
                source: "digits",
                train,
                test: Some(test),
            })
        }
        Some(p) if !p.exists() => bail!("{}: no such file or directory (--data)", p.display()),
        Some(p) if !p.is_dir() => bail!(
            "{}: --data must be a directory (MNIST IDX files or an image folder)",
            p.display()
        ),
        Some(p) if is_mnist_dir(p) => {
            folder_only()?;
            let (train, test) = data::load_mnist_dir(p, IdxLimits::default())?;
            Ok(Loaded {
                source: "idx",
                train,
                test,
            })
        }
        Some(p) => {
            let (train, test) = load_image_splits(p, opts)?;
            Ok(Loaded {
                source: "folder",
                train,
                test,
            })
        }
    }
}
