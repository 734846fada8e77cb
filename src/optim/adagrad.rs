//! `torch.optim.Adagrad`.

use crate::error::{Result, check_len};
use crate::par::{self, BLOCK, Items};
use crate::simd;
use crate::simd::lane::splat;

/// Adagrad hyper-parameters, as `torch.optim.Adagrad` (defaults: lr 1e-2, lr_decay 0, weight
/// decay 0, initial accumulator value 0, eps 1e-10).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: f32,
    /// Learning-rate decay: step `t` uses `lr / (1 + (t − 1)·lr_decay)`.
    pub lr_decay: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Starting value of the squared-gradient sum.
    pub initial_accumulator_value: f32,
    /// Added to the denominator (outside the square root).
    pub eps: f32,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

impl AdagradConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        const OP: &str = "AdagradConfig";
        super::non_negative(OP, "lr", self.lr)?;
        super::non_negative(OP, "lr_decay", self.lr_decay)?;
        super::non_negative(OP, "weight_decay", self.weight_decay)?;
        super::non_negative(
            OP,
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        super::non_negative(OP, "eps", self.eps)
    }
}

/// One Adagrad step at step number `t` (1 for the first), as PyTorch's single-tensor
/// implementation: `g += wd·p`, `sum += g²`, `p −= lr/(1 + (t − 1)·lr_decay) · g/(sqrt(sum) + eps)`.
/// `sum` starts at `initial_accumulator_value`.
///
/// # Errors
/// [`crate::Error::Length`] if the buffers differ in length; [`crate::Error::InvalidArg`] for an
/// invalid configuration.
pub fn adagrad_step(
    cfg: &AdagradConfig,
    t: u64,
    params: &mut [f32],
    grads: &[f32],
    sum: &mut [f32],
) -> Result<()> {
    const OP: &str = "adagrad_step";
    cfg.validate()?;
    check_len(OP, "grads", grads, params.len())?;
    check_len(OP, "sum", sum, params.len())?;
    let clr = splat((cfg.lr as f64 / (1.0 + (t.max(1) - 1) as f64 * cfg.lr_decay as f64)) as f32);
    let (wd, has_wd, eps) = (
        splat(cfg.weight_decay),
        cfg.weight_decay != 0.0,
        splat(cfg.eps),
    );
    par::for_each_block(
        params.len(),
        6,
        (Items(params, BLOCK), Items(sum, BLOCK)),
        #[inline(always)]
        |r, (Items(p, _), Items(s, _))| {
            simd::update(
                &grads[r],
                [p, s],
                #[inline(always)]
                |g, [p, s]| {
                    let g = if has_wd { p.mul_add(wd, g) } else { g };
                    *s = g.mul_add(g, *s);
                    *p = (g / (s.sqrt() + eps)).mul_neg_add(clr, *p);
                },
            );
        },
    );
    Ok(())
}
