//! Parameter initialisation with a seeded generator.

use crate::layer::{ParamInfo, ParamKind};
use crate::rng::Rng;

/// How weights are initialised (biases and constants always follow PyTorch's defaults).
///
/// With `fan_in = in_channels/groups · k_h · k_w` (or `in_features`) and
/// `fan_out = out_channels · k_h · k_w` (or `out_features`), as `torch.nn.init`:
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Init {
    /// PyTorch's `reset_parameters`: `kaiming_uniform_(a=√5)`, i.e. `U(−b, b)` with
    /// `b = 1/√fan_in`.
    #[default]
    TorchDefault,
    /// Glorot: `U(−b, b)`, `b = √(6/(fan_in + fan_out))`.
    XavierUniform,
    /// Glorot: `N(0, 2/(fan_in + fan_out))`.
    XavierNormal,
    /// He (ReLU gain, fan-in mode): `U(−b, b)`, `b = √(6/fan_in)`.
    KaimingUniform,
    /// He: `N(0, 2/fan_in)`.
    KaimingNormal,
}

impl std::str::FromStr for Init {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        Ok(match s {
            "torch" | "default" => Init::TorchDefault,
            "xavier" | "xavier_uniform" | "glorot" => Init::XavierUniform,
            "xavier_normal" => Init::XavierNormal,
            "kaiming" | "kaiming_uniform" | "he" => Init::KaimingUniform,
            "kaiming_normal" | "he_normal" => Init::KaimingNormal,
            _ => {
                return Err(crate::error::Error::invalid(
                    "Init::from_str",
                    "init",
                    format!(
                        "unknown scheme '{s}' (torch, xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal)"
                    ),
                ));
            }
        })
    }
}

/// Fills `out` with the initial values of the parameter `info`.
pub(crate) fn fill(info: &ParamInfo, init: Init, rng: &mut Rng, out: &mut [f32]) {
    let uniform = |rng: &mut Rng, out: &mut [f32], b: f64| {
        for v in out.iter_mut() {
            *v = rng.uniform(-b as f32, b as f32);
        }
    };
    let normal = |rng: &mut Rng, out: &mut [f32], std: f64| {
        for v in out.iter_mut() {
            *v = (rng.normal() * std) as f32;
        }
    };
    match info.kind {
        ParamKind::Const(c) => out.fill(c),
        ParamKind::Bias { fan_in } => uniform(rng, out, 1.0 / (fan_in as f64).sqrt()),
        ParamKind::Weight { fan_in, fan_out } => {
            let (fi, fo) = (fan_in as f64, fan_out as f64);
            match init {
                Init::TorchDefault => uniform(rng, out, 1.0 / fi.sqrt()),
                Init::XavierUniform => uniform(rng, out, (6.0 / (fi + fo)).sqrt()),
                Init::XavierNormal => normal(rng, out, (2.0 / (fi + fo)).sqrt()),
                Init::KaimingUniform => uniform(rng, out, (6.0 / fi).sqrt()),
                Init::KaimingNormal => normal(rng, out, (2.0 / fi).sqrt()),
            }
        }
    }
}
