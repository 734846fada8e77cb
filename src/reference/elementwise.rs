//! Reference activations, softmax and losses, evaluated in `f64` from their textbook formulas.

use crate::kernels::activation::Activation;

/// `f(x)` for one element.
pub fn activation(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        Activation::LeakyRelu { slope } => {
            if x > 0.0 {
                x
            } else {
                x * slope as f64
            }
        }
        Activation::Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                alpha as f64 * x.exp_m1()
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Softplus { beta, threshold } => {
            let b = beta as f64;
            if x * b > threshold as f64 {
                x
            } else {
                (x * b).exp().ln_1p() / b
            }
        }
        Activation::Gelu => 0.5 * x * super::erfc(-x / std::f64::consts::SQRT_2),
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
        // PyTorch's formulas, special values included (hardswish(−∞) is −∞·0 = NaN).
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// `f'(x)` for one element, taking PyTorch's branch at the kinks.
pub fn activation_derivative(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Relu => {
            if x <= 0.0 {
                0.0
            } else {
                1.0
            }
        }
        Activation::LeakyRelu { slope } => {
            if x > 0.0 {
                1.0
            } else {
                slope as f64
            }
        }
        Activation::Elu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                alpha as f64 * x.exp()
            }
        }
        Activation::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Softplus { beta, threshold } => {
            let b = beta as f64;
            if x * b > threshold as f64 {
                1.0
            } else {
                1.0 / (1.0 + (-x * b).exp())
            }
        }
        Activation::Gelu => {
            let cdf = 0.5 * super::erfc(-x / std::f64::consts::SQRT_2);
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let u = k * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
        }
        // PyTorch's branches at the kinks: 0 at both ends for ReLU6 and hardsigmoid; for
        // hardswish 0 at −3 and 1 at 3. A NaN input takes the last branch.
        Activation::Relu6 => {
            if x <= 0.0 || x >= 6.0 {
                0.0
            } else {
                1.0
            }
        }
        Activation::Hardsigmoid => {
            if x > -3.0 && x < 3.0 {
                1.0 / 6.0
            } else {
                0.0
            }
        }
        Activation::Hardswish => {
            if x <= -3.0 {
                0.0
            } else if x < 3.0 {
                x / 3.0 + 0.5
            } else {
                1.0
            }
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
    }
}

/// `y = f(x)` element-wise.
pub fn activation_forward(act: Activation, x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| activation(act, v as f64) as f32)
        .collect()
}

/// `dx = dy·f'(x)` element-wise.
pub fn activation_backward(act: Activation, x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&v, &d)| (d as f64 * activation_derivative(act, v as f64)) as f32)
        .collect()
}

/// PReLU with `a` of length 1 or `c`, on `[n, c, plane]`.
pub fn prelu_forward(c: usize, plane: usize, x: &[f32], a: &[f32]) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = a[if a.len() == 1 { 0 } else { (i / plane) % c }];
            if v > 0.0 { v } else { s * v }
        })
        .collect()
}

/// Softmax rows of length `cols`.
pub fn softmax_forward(cols: usize, x: &[f32]) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect()
}

/// Log-softmax rows of length `cols`.
pub fn log_softmax_forward(cols: usize, x: &[f32]) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            r.iter().map(move |&v| (v as f64 - lse) as f32)
        })
        .collect()
}

/// Mean softmax cross-entropy with label smoothing `eps`.
pub fn cross_entropy_loss(classes: usize, logits: &[f32], labels: &[u32], eps: f64) -> f64 {
    let logp = log_softmax_forward(classes, logits);
    let rows = labels.len();
    let mut s = 0.0;
    for (r, &l) in labels.iter().enumerate() {
        let lp = &logp[r * classes..][..classes];
        let nll = -(lp[l as usize] as f64);
        let smooth = -lp.iter().map(|&v| v as f64).sum::<f64>() / classes as f64;
        s += (1.0 - eps) * nll + eps * smooth;
    }
    s / rows as f64
}

/// Mean squared error.
pub fn mse_loss(pred: &[f32], target: &[f32]) -> f64 {
    pred.iter()
        .zip(target)
        .map(|(&p, &t)| (p as f64 - t as f64).powi(2))
        .sum::<f64>()
        / pred.len() as f64
}

/// Mean binary cross-entropy of `sigmoid(x)` against `t`, written as `−t·ln σ(x) − (1−t)·ln(1−σ(x))`.
pub fn bce_with_logits_loss(x: &[f32], t: &[f32]) -> f64 {
    x.iter()
        .zip(t)
        .map(|(&x, &t)| {
            let (x, t) = (x as f64, t as f64);
            // ln σ(x) = −ln(1 + e^{−x}); ln(1 − σ(x)) = −ln(1 + e^{x}); ln_1p keeps both exact.
            let ln_s = -((-x).exp().ln_1p());
            let ln_1ms = -(x.exp().ln_1p());
            -t * ln_s - (1.0 - t) * ln_1ms
        })
        .sum::<f64>()
        / x.len() as f64
}
