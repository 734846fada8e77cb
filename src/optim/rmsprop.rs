//! `torch.optim.RMSprop`.

use crate::error::{Result, check_len};
use crate::par::{self, BLOCK, Items};
use crate::simd;
use crate::simd::lane::splat;

/// RMSprop hyper-parameters, as `torch.optim.RMSprop` (defaults: lr 1e-2, alpha 0.99, eps 1e-8,
/// weight decay 0, momentum 0, not centred).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropConfig {
    /// Learning rate.
    pub lr: f32,
    /// Smoothing constant of the squared-gradient average.
    pub alpha: f32,
    /// Added to the denominator (outside the square root).
    pub eps: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Momentum factor.
    pub momentum: f32,
    /// Normalise by the estimated variance (subtract the squared mean gradient).
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

impl RmsPropConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        const OP: &str = "RmsPropConfig";
        super::non_negative(OP, "lr", self.lr)?;
        super::non_negative(OP, "eps", self.eps)?;
        super::non_negative(OP, "momentum", self.momentum)?;
        super::non_negative(OP, "weight_decay", self.weight_decay)?;
        super::non_negative(OP, "alpha", self.alpha)
    }
}

/// One RMSprop step, as PyTorch's single-tensor implementation: `g += wd·p`,
/// `s = alpha·s + (1 − alpha)·g²`; centred: `a = lerp(a, g, 1 − alpha)`, `avg = sqrt(s − a²) + eps`,
/// else `avg = sqrt(s) + eps`; with momentum `buf = momentum·buf + g/avg`, `p −= lr·buf`, else
/// `p −= lr·g/avg`. `grad_avg` is used only when centred, `buf` only with momentum.
///
/// # Errors
/// [`crate::Error::Length`] if the buffers differ in length; [`crate::Error::InvalidArg`] for an
/// invalid configuration.
pub fn rmsprop_step(
    cfg: &RmsPropConfig,
    params: &mut [f32],
    grads: &[f32],
    square_avg: &mut [f32],
    grad_avg: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    const OP: &str = "rmsprop_step";
    cfg.validate()?;
    let n = params.len();
    check_len(OP, "grads", grads, n)?;
    check_len(OP, "square_avg", square_avg, n)?;
    let (centered, momentum) = (cfg.centered, cfg.momentum > 0.0);
    let grad_avg: &mut [f32] = if centered {
        check_len(OP, "grad_avg", grad_avg, n)?;
        grad_avg
    } else {
        &mut []
    };
    let buf: &mut [f32] = if momentum {
        check_len(OP, "buf", buf, n)?;
        buf
    } else {
        &mut []
    };
    let (lr, alpha, w, eps) = (
        splat(cfg.lr),
        splat(cfg.alpha),
        splat(1.0 - cfg.alpha),
        splat(cfg.eps),
    );
    let (wd, has_wd, mu) = (
        splat(cfg.weight_decay),
        cfg.weight_decay != 0.0,
        splat(cfg.momentum),
    );
    let per = |on: bool| if on { BLOCK } else { 0 };
    par::for_each_block(
        n,
        8,
        (
            Items(params, BLOCK),
            Items(square_avg, BLOCK),
            Items(grad_avg, per(centered)),
            Items(buf, per(momentum)),
        ),
        #[inline(always)]
        |r, (Items(p, _), Items(s, _), Items(a, _), Items(b, _))| {
            let g = &grads[r.clone()];
            // The optional states are empty when unused; give `update` zero-length-safe stand-ins
            // by handling the four combinations.
            let step = simd::inlined(
                #[inline(always)]
                |g: simd::Lane,
                 p: &mut simd::Lane,
                 s: &mut simd::Lane,
                 a: Option<&mut simd::Lane>,
                 b: Option<&mut simd::Lane>| {
                    let g = if has_wd { p.mul_add(wd, g) } else { g };
                    *s = (g * g).mul_add(w, *s * alpha);
                    let avg = match a {
                        Some(a) => {
                            *a = (g - *a).mul_add(w, *a);
                            a.mul_neg_add(*a, *s).sqrt() + eps
                        }
                        None => s.sqrt() + eps,
                    };
                    match b {
                        Some(b) => {
                            *b = b.mul_add(mu, g / avg);
                            *p = b.mul_neg_add(lr, *p);
                        }
                        None => *p = (g / avg).mul_neg_add(lr, *p),
                    }
                },
            );
            match (centered, momentum) {
                (true, true) => simd::update(
                    g,
                    [p, s, a, b],
                    #[inline(always)]
                    |g, [p, s, a, b]| step(g, p, s, Some(a), Some(b)),
                ),
                (true, false) => simd::update(
                    g,
                    [p, s, a],
                    #[inline(always)]
                    |g, [p, s, a]| step(g, p, s, Some(a), None),
                ),
                (false, true) => simd::update(
                    g,
                    [p, s, b],
                    #[inline(always)]
                    |g, [p, s, b]| step(g, p, s, None, Some(b)),
                ),
                (false, false) => simd::update(
                    g,
                    [p, s],
                    #[inline(always)]
                    |g, [p, s]| step(g, p, s, None, None),
                ),
            }
        },
    );
    Ok(())
}
