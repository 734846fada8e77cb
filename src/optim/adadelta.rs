//! `torch.optim.Adadelta`.

use crate::error::{Result, check_len};
use crate::par::{self, BLOCK, Items};
use crate::simd;
use crate::simd::lane::splat;

/// Adadelta hyper-parameters, as `torch.optim.Adadelta` (defaults: lr 1.0, rho 0.9, eps 1e-6,
/// weight decay 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdadeltaConfig {
    /// Scale of the update.
    pub lr: f32,
    /// Decay of the running averages.
    pub rho: f32,
    /// Added inside both square roots.
    pub eps: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        AdadeltaConfig {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }
}

impl AdadeltaConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        const OP: &str = "AdadeltaConfig";
        super::non_negative(OP, "lr", self.lr)?;
        super::non_negative(OP, "eps", self.eps)?;
        super::non_negative(OP, "weight_decay", self.weight_decay)?;
        super::unit_interval(OP, "rho", self.rho)
    }
}

/// One Adadelta step, as PyTorch's single-tensor implementation: `g += wd·p`,
/// `s = rho·s + (1 − rho)·g²`, `delta = sqrt(acc + eps)/sqrt(s + eps)·g`,
/// `acc = rho·acc + (1 − rho)·delta²`, `p −= lr·delta`.
///
/// # Errors
/// [`crate::Error::Length`] if the buffers differ in length; [`crate::Error::InvalidArg`] for an
/// invalid configuration.
pub fn adadelta_step(
    cfg: &AdadeltaConfig,
    params: &mut [f32],
    grads: &[f32],
    square_avg: &mut [f32],
    acc_delta: &mut [f32],
) -> Result<()> {
    const OP: &str = "adadelta_step";
    cfg.validate()?;
    let n = params.len();
    check_len(OP, "grads", grads, n)?;
    check_len(OP, "square_avg", square_avg, n)?;
    check_len(OP, "acc_delta", acc_delta, n)?;
    let (lr, rho, w, eps) = (
        splat(cfg.lr),
        splat(cfg.rho),
        splat(1.0 - cfg.rho),
        splat(cfg.eps),
    );
    let (wd, has_wd) = (splat(cfg.weight_decay), cfg.weight_decay != 0.0);
    par::for_each_block(
        n,
        8,
        (
            Items(params, BLOCK),
            Items(square_avg, BLOCK),
            Items(acc_delta, BLOCK),
        ),
        #[inline(always)]
        |r, (Items(p, _), Items(s, _), Items(a, _))| {
            simd::update(
                &grads[r],
                [p, s, a],
                #[inline(always)]
                |g, [p, s, a]| {
                    let g = if has_wd { p.mul_add(wd, g) } else { g };
                    *s = (g * g).mul_add(w, *s * rho);
                    let delta = (*a + eps).sqrt() / (*s + eps).sqrt() * g;
                    *a = (delta * delta).mul_add(w, *a * rho);
                    *p = delta.mul_neg_add(lr, *p);
                },
            );
        },
    );
    Ok(())
}
