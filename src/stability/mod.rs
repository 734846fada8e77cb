//! How stable is a trained network at an input? The worst-case perturbation search of Antun et
//! al. ("On instabilities of deep learning in image reconstruction and the potential costs of
//! AI", PNAS 2020), with random perturbations of the same size beside it.
//!
//! Given a model `f` and an input `x`, [`worst_case_perturbation`] looks for `r` that makes
//! `‖f(x + r) − f(x)‖` large while `‖r‖` stays small, by gradient ascent with momentum on
//!
//! ```text
//! Q(r) = ½‖f(x + r) − f(x)‖² − (λ/2)‖r‖²,    ∇Q(r) = J(x + r)ᵀ (f(x + r) − f(x)) − λ r,
//! ```
//!
//! keeping `x + r` in the valid pixel range. It records the perturbations along the way
//! (`r₁, r₂, …`, growing), each with `‖r‖/‖x‖`, `‖f(x + r) − f(x)‖/‖f(x)‖`, whether the predicted
//! class changed, and the same output change for Gaussian noise of the same norm: the gap between
//! the two is the paper's point.
//!
//! ```
//! use cnnkit::stability::{worst_case_perturbation, PerturbationSearch};
//! use cnnkit::{LayerSpec, Sequential};
//! let specs = LayerSpec::parse_list("conv(4,3,p=1),relu,flatten,dense(3)")?;
//! let mut m = Sequential::new([1, 8, 8], &specs, 0)?;
//! let x: Vec<f32> = (0..64).map(|i| (i % 7) as f32 / 7.0).collect();
//! let steps = worst_case_perturbation(&mut m, &x, &PerturbationSearch::default())?;
//! for s in &steps {
//!     assert!(s.output_change >= 0.0 && s.size >= 0.0);
//! }
//! # Ok::<(), cnnkit::Error>(())
//! ```
//!
//! Beside it, this module holds the other instruments of a stability audit, one file each:
//! adversarial examples (`attack`: FGSM, PGD and same-size noise), robustness curves (`curve`:
//! accuracy against the budget), the smallest perturbation that changes each decision
//! (`minimal`: a bisection on the budget over PGD), degradations (`degrade`: blur, noise, contrast, subsampling),
//! saliency maps (`saliency`), and the pixel-space view of a normalised model they share
//! (`pixels`).

pub(crate) mod attack;
mod curve;
mod degrade;
mod minimal;
mod operator;
mod perturbation;
mod pixels;
mod saliency;

pub use crate::data::normalization::Normalization;
pub use attack::{Attack, AttackKind, AttackNorm, PgdResult, adversarial_examples};
pub use curve::{RobustnessCurve, RobustnessPoint, robustness_curve};
pub use degrade::Degradation;
pub use minimal::{MinimalPerturbation, MinimalSearch, MinimalSummary, minimal_perturbations};
pub use operator::Operator;
pub use perturbation::{Objective, PerturbationSearch, PerturbationStep, worst_case_perturbation};
pub use saliency::{
    SIGNED_NEGATIVE, SIGNED_POSITIVE, SaliencyMethod, heatmap_overlay, saliency, signed_overlay,
};
