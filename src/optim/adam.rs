//! `torch.optim.Adam` and `torch.optim.AdamW`.

use crate::error::{Result, check_len};
use crate::par::{self, BLOCK, Items};
use crate::simd;
use crate::simd::lane::splat;

/// Adam / AdamW hyper-parameters, as `torch.optim.Adam` (defaults: lr 1e-3, betas (0.9, 0.999),
/// eps 1e-8, weight decay 0 — AdamW's default weight decay is 1e-2, see [`AdamConfig::adamw`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first and second moment estimates.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// Adam: L2 penalty added to the gradient; AdamW: decoupled decay `p *= 1 − lr·wd`.
    pub weight_decay: f32,
    /// Use the maximum of past second moments (AMSGrad).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults (weight decay 1e-2).
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            ..Self::default()
        }
    }
    pub(crate) fn validate(&self) -> Result<()> {
        const OP: &str = "AdamConfig";
        super::non_negative(OP, "lr", self.lr)?;
        super::non_negative(OP, "eps", self.eps)?;
        super::non_negative(OP, "weight_decay", self.weight_decay)?;
        super::unit_interval(OP, "betas.0", self.betas.0)?;
        super::unit_interval(OP, "betas.1", self.betas.1)
    }
}

/// One Adam step (`decoupled = false`) or AdamW step (`true`) at step number `t` (1 for the
/// first), as PyTorch's single-tensor implementation:
/// `m = lerp(m, g, 1 − β1)`, `v = β2·v + (1 − β2)·g²`, `v̂ = max(v̂, v)` with AMSGrad,
/// `p −= lr/(1 − β1ᵗ) · m / (sqrt(v or v̂)/sqrt(1 − β2ᵗ) + eps)`. Adam adds `wd·p` to the
/// gradient; AdamW first scales `p *= 1 − lr·wd`. `vmax` is only used with AMSGrad.
///
/// # Errors
/// [`crate::Error::Length`] if the buffers differ in length; [`crate::Error::InvalidArg`] for an
/// invalid configuration.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    cfg: &AdamConfig,
    decoupled: bool,
    t: u64,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: &mut [f32],
) -> Result<()> {
    const OP: &str = "adam_step";
    cfg.validate()?;
    let n = params.len();
    check_len(OP, "grads", grads, n)?;
    check_len(OP, "m", m, n)?;
    check_len(OP, "v", v, n)?;
    let vmax: &mut [f32] = if cfg.amsgrad {
        check_len(OP, "vmax", vmax, n)?;
        vmax
    } else {
        &mut []
    };
    let (b1, b2) = (cfg.betas.0 as f64, cfg.betas.1 as f64);
    let step_size = splat((cfg.lr as f64 / (1.0 - b1.powf(t as f64))) as f32);
    let bc2_sqrt = splat((1.0 - b2.powf(t as f64)).sqrt() as f32);
    let (w1, beta2, w2, eps) = (
        splat(1.0 - cfg.betas.0),
        splat(cfg.betas.1),
        splat(1.0 - cfg.betas.1),
        splat(cfg.eps),
    );
    let (wd, has_wd) = (splat(cfg.weight_decay), cfg.weight_decay != 0.0);
    let decay = splat(1.0 - cfg.lr * cfg.weight_decay);
    let amsgrad = cfg.amsgrad;
    let per = if amsgrad { BLOCK } else { 0 };
    par::for_each_block(
        n,
        8,
        (
            Items(params, BLOCK),
            Items(m, BLOCK),
            Items(v, BLOCK),
            Items(vmax, per),
        ),
        #[inline(always)]
        |r, (Items(p, _), Items(m, _), Items(v, _), Items(vmax, _))| {
            let g = &grads[r];
            let moments = simd::inlined(
                #[inline(always)]
                |g: simd::Lane, p: &mut simd::Lane, m: &mut simd::Lane, v: &mut simd::Lane| {
                    let g = if has_wd && !decoupled {
                        p.mul_add(wd, g)
                    } else {
                        g
                    };
                    if has_wd && decoupled {
                        *p *= decay;
                    }
                    *m = (g - *m).mul_add(w1, *m);
                    *v = (g * g).mul_add(w2, *v * beta2);
                },
            );
            let apply = simd::inlined(
                #[inline(always)]
                |p: &mut simd::Lane, m: simd::Lane, v: simd::Lane| {
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p = (m / denom).mul_neg_add(step_size, *p);
                },
            );
            if amsgrad {
                simd::update(
                    g,
                    [p, m, v, vmax],
                    #[inline(always)]
                    |g, [p, m, v, vmax]| {
                        moments(g, p, m, v);
                        *vmax = vmax.max(*v);
                        apply(p, *m, *vmax);
                    },
                );
            } else {
                simd::update(
                    g,
                    [p, m, v],
                    #[inline(always)]
                    |g, [p, m, v]| {
                        moments(g, p, m, v);
                        apply(p, *m, *v);
                    },
                );
            }
        },
    );
    Ok(())
}
