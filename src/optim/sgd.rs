//! `torch.optim.SGD`.

use crate::error::{Error, Result, check_len};
use crate::par::{self, BLOCK, Items};
use crate::simd;
use crate::simd::lane::splat;

/// Stochastic gradient descent with momentum, as `torch.optim.SGD` (defaults included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Momentum factor (default 0).
    pub momentum: f32,
    /// Dampening of the momentum (default 0).
    pub dampening: f32,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f32,
    /// Nesterov momentum (default false; needs momentum > 0 and dampening 0).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        const OP: &str = "SgdConfig";
        super::non_negative(OP, "lr", self.lr)?;
        super::non_negative(OP, "momentum", self.momentum)?;
        super::non_negative(OP, "weight_decay", self.weight_decay)?;
        if !self.dampening.is_finite() {
            return Err(Error::invalid(OP, "dampening", "must be finite"));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid(
                OP,
                "nesterov",
                "requires momentum > 0 and zero dampening",
            ));
        }
        Ok(())
    }
}

/// One SGD step over flat `params` with `grads`, as PyTorch's single-tensor implementation:
/// `g = grad + wd·p`; with momentum, `buf = g` on the first step, else
/// `buf = momentum·buf + (1 − dampening)·g`, and `g = g + momentum·buf` (Nesterov) or `g = buf`;
/// then `p −= lr·g`. `velocity` (the momentum buffer) is unused without momentum.
///
/// # Errors
/// [`Error::Length`] if the buffers differ in length; [`Error::InvalidArg`] for an invalid
/// configuration.
pub fn sgd_step(
    cfg: &SgdConfig,
    first: bool,
    params: &mut [f32],
    grads: &[f32],
    velocity: &mut [f32],
) -> Result<()> {
    const OP: &str = "sgd_step";
    cfg.validate()?;
    check_len(OP, "grads", grads, params.len())?;
    let momentum = cfg.momentum != 0.0;
    if momentum {
        check_len(OP, "velocity", velocity, params.len())?;
    }
    let (lr, wd, mu, damp) = (
        splat(cfg.lr),
        splat(cfg.weight_decay),
        splat(cfg.momentum),
        splat(1.0 - cfg.dampening),
    );
    let (has_wd, nesterov) = (cfg.weight_decay != 0.0, cfg.nesterov);
    let vel: &mut [f32] = if momentum { velocity } else { &mut [] };
    let per = if momentum { BLOCK } else { 0 };
    par::for_each_block(
        params.len(),
        4,
        (Items(params, BLOCK), Items(vel, per)),
        #[inline(always)]
        |r, (Items(p, _), Items(v, _))| {
            let g = &grads[r];
            if momentum {
                simd::update(
                    g,
                    [p, v],
                    #[inline(always)]
                    |g, [p, v]| {
                        let g = if has_wd { p.mul_add(wd, g) } else { g };
                        *v = if first { g } else { g.mul_add(damp, *v * mu) };
                        let d = if nesterov { v.mul_add(mu, g) } else { *v };
                        *p = d.mul_neg_add(lr, *p);
                    },
                );
            } else {
                simd::update(
                    g,
                    [p],
                    #[inline(always)]
                    |g, [p]| {
                        let g = if has_wd { p.mul_add(wd, g) } else { g };
                        *p = g.mul_neg_add(lr, *p);
                    },
                );
            }
        },
    );
    Ok(())
}
