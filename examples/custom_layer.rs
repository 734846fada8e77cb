//! Your own layer in a cnnkit model: a Swish activation with one learnable β per channel,
//! `y = x·σ(β_c·x)`, checked against finite differences and trained on the embedded digits
//! between cnnkit's own layers.
//!
//! ```text
//! cargo run --release --example custom_layer
//! ```

use cnnkit::layer::{self, Backward, Ctx, Layer, ParamInfo, ParamKind, Shape3};
use cnnkit::{Control, LayerSpec, Result, Sequential, TrainConfig, Trainer, data, gradcheck};

/// `y = x·σ(β_c·x)` with a learnable `β` per channel (initialised to 1, PyTorch-style
/// `nn.Parameter(torch.ones(C))`).
#[derive(Debug)]
pub struct LearnedSwish {
    shape: Shape3,
}

impl LearnedSwish {
    /// For per-sample inputs of `shape`.
    pub fn new(shape: Shape3) -> Self {
        LearnedSwish { shape }
    }
    fn plane(&self) -> usize {
        self.shape[1] * self.shape[2]
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl Layer for LearnedSwish {
    fn spec(&self) -> LayerSpec {
        LayerSpec::custom("learned_swish")
    }
    fn out_shape(&self) -> Shape3 {
        self.shape
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![ParamInfo {
            name: "beta",
            shape: vec![self.shape[0]],
            kind: ParamKind::Const(1.0),
        }]
    }
    fn forward(
        &mut self,
        _n: usize,
        beta: &[f32],
        x: &[f32],
        y: &mut [f32],
        _ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let (c, plane) = (self.shape[0], self.plane());
        for (i, (xs, ys)) in x.chunks(plane).zip(y.chunks_mut(plane)).enumerate() {
            let b = beta[i % c];
            for (&v, o) in xs.iter().zip(ys) {
                *o = v * sigmoid(b * v);
            }
        }
        Ok(())
    }
    fn backward(&mut self, a: Backward<'_>, _ctx: &mut Ctx<'_>) -> Result<()> {
        let (c, plane) = (self.shape[0], self.plane());
        let beta = a.params;
        // dβ: this batch's sum, replacing or adding to the gradient as asked.
        let mut dbeta = vec![0.0f64; c];
        let mut dx = a.dx;
        for (i, (xs, dys)) in a.x.chunks(plane).zip(a.dy.chunks(plane)).enumerate() {
            let b = beta[i % c];
            for (j, (&v, &d)) in xs.iter().zip(dys).enumerate() {
                let s = sigmoid(b * v);
                let ds = s * (1.0 - s);
                dbeta[i % c] += (d * v * v * ds) as f64;
                if let Some(dx) = dx.as_deref_mut() {
                    dx[i * plane + j] = d * (s + b * v * ds);
                }
            }
        }
        for (g, &s) in a.grads.iter_mut().zip(&dbeta) {
            *g = match a.accum {
                cnnkit::kernels::Accum::Replace => s as f32,
                cnnkit::kernels::Accum::Add => *g + s as f32,
            };
        }
        Ok(())
    }
}

/// `conv(8,3,p=1), learned_swish, maxpool(2), flatten, dense(10)` for 1x8x8 digits.
pub fn model(seed: u64) -> Result<Sequential> {
    let input = [1, 8, 8];
    let conv = layer::build(&LayerSpec::conv(8, 3, 1), input)?;
    let swish: Box<dyn Layer> = Box::new(LearnedSwish::new(conv.out_shape()));
    let pool = layer::build(&LayerSpec::maxpool(2), swish.out_shape())?;
    let flat = layer::build(&LayerSpec::Flatten, pool.out_shape())?;
    let dense = layer::build(&LayerSpec::dense(10), flat.out_shape())?;
    Sequential::from_layers(input, vec![conv, swish, pool, flat, dense], seed)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    // 1. The backward pass against finite differences, as cnnkit checks its own layers.
    let report = gradcheck::check_layer(Box::new(LearnedSwish::new([3, 4, 4])), [3, 4, 4], 2, 1)?;
    println!("gradient check: {report}");
    assert!(report.passed());

    // 2. In a model, trained like any other.
    let (train, test) = data::digits()?;
    let cfg = TrainConfig {
        epochs: 5,
        ..Default::default()
    };
    let mut t = Trainer::new(model(0)?, "adam(lr=0.01)".parse()?, cfg)?;
    t.fit(&train, Some(&test), &mut |_| Control::Continue)?;
    let last = t.history().last().expect("five epochs");
    print!("{}", t.model().summary());
    println!(
        "test accuracy after {} epochs: {:.2} %",
        last.epoch,
        100.0 * last.val.as_ref().map_or(0.0, |m| m.accuracy)
    );
    let beta = &t.model().state_dict()[2];
    println!("learned {}: {:?}", beta.0, beta.1.data);
    Ok(())
}
