//! [`LayerSpec`]: a layer's kind and hyper-parameters, and its compact text form.
//!
//! A network is a comma-separated list of layers, each a name with optional arguments in
//! parentheses: positional first, then `key=value`; a per-axis value is `HxW` (or one number for
//! both axes):
//!
//! ```text
//! conv(32,3,p=1),relu,maxpool(2),flatten,dense(10)
//! conv(16,5x3,s=2x1,p=2x1,d=1,g=1,bias=false),bn(eps=1e-3,momentum=0.01),leakyrelu(0.1)
//! ```
//!
//! | layer | form | PyTorch module |
//! |---|---|---|
//! | convolution | `conv(OUT,K[,s=S][,p=P][,d=D][,g=G][,bias=BOOL])` | `nn.Conv2d` |
//! | transposed convolution | `convt(OUT,K[,s=S][,p=P][,op=OP][,d=D][,g=G][,bias=BOOL])` (`op` < `s`) | `nn.ConvTranspose2d` |
//! | upsampling | `upsample(S[,mode=bilinear][,align_corners=true])` | `nn.Upsample(scale_factor=S)` |
//! | adaptive average pooling | `adaptive_avgpool(OUT)` | `nn.AdaptiveAvgPool2d(OUT)` |
//! | stochastic depth | `stochastic_depth(P)` | `torchvision.ops.StochasticDepth(P, "row")` |
//! | dense | `dense(OUT[,bias=BOOL])` | `nn.Linear` |
//! | max pooling | `maxpool(K[,s=S][,p=P])` (stride defaults to K) | `nn.MaxPool2d` |
//! | average pooling | `avgpool(K[,s=S][,p=P][,count_include_pad=BOOL])` | `nn.AvgPool2d` |
//! | global average pooling | `gap` | `nn.AdaptiveAvgPool2d(1)` then `nn.Flatten()` (one module here) |
//! | flatten | `flatten` | `nn.Flatten()` |
//! | softmax | `softmax` (over the channels at each position) | `nn.Softmax(dim=1)` |
//! | batch norm | `bn[(eps=E][,momentum=M|none])` | `nn.BatchNorm2d` |
//! | layer norm | `ln[(eps=E)]` (over each sample's `C·H·W` values) | `nn.LayerNorm([C, H, W])` |
//! | dropout | `dropout[(P)]` (default 0.5) | `nn.Dropout` |
//! | Gaussian noise | `noise(STD)`: `x + STD·N(0, 1)` in training, identity in evaluation; `noise(0.1),relu` is a noisy ReLU | — (`x + std * torch.randn_like(x)` when training) |
//! | activations | `relu`, `leakyrelu[(SLOPE)]`, `elu[(ALPHA)]`, `sigmoid`, `tanh`, `softplus[(beta=B,threshold=T)]`, `gelu`, `gelu_tanh`, `relu6`, `hardsigmoid`, `hardswish`, `silu` | `nn.ReLU`, ... , `nn.GELU(approximate='tanh')`, `nn.ReLU6`, `nn.Hardsigmoid`, `nn.Hardswish`, `nn.SiLU` |
//! | PReLU | `prelu` (one slope) or `prelu(channels)` (one per channel) | `nn.PReLU()` / `nn.PReLU(C)` |
//! | RReLU | `rrelu[(LOWER,UPPER)]` (default 1/8, 1/3) | `nn.RReLU` |
//! | residual block | `res(OUT[,s=S][,eps=E][,momentum=M\|none])`: two 3x3 convolutions with batch norm (its `eps` and `momentum` as `bn`'s), identity or 1x1-projection shortcut | torchvision's `BasicBlock(in, OUT, stride=S, downsample=…)` |

use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::upsample::UpsampleMode;
use std::fmt;

/// One layer's kind and hyper-parameters (shapes are inferred from the layer before it).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LayerSpec {
    /// 2-D convolution.
    Conv2d {
        /// Output channels.
        out: usize,
        /// Kernel `[k_h, k_w]`.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Zero padding.
        padding: [usize; 2],
        /// Dilation.
        dilation: [usize; 2],
        /// Groups.
        groups: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// 2-D transposed convolution (`nn.ConvTranspose2d`).
    ConvTranspose2d {
        /// Output channels.
        out: usize,
        /// Kernel `[k_h, k_w]`.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding (removed from both sides of the output).
        padding: [usize; 2],
        /// Added to one side of the output (smaller than the stride).
        output_padding: [usize; 2],
        /// Dilation.
        dilation: [usize; 2],
        /// Groups.
        groups: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// Fully connected layer on a flat input.
    Dense {
        /// Output features.
        out: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// Max pooling.
    MaxPool2d {
        /// Window.
        window: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
    },
    /// Average pooling.
    AvgPool2d {
        /// Window.
        window: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
        /// Count padded positions in the divisor (PyTorch's default: true).
        count_include_pad: bool,
    },
    /// Global average pooling to `[C]` (flat output).
    GlobalAvgPool,
    /// Upsampling by integer factors (`nn.Upsample(scale_factor=scale, mode=…)`).
    Upsample {
        /// Height and width factors.
        scale: [usize; 2],
        /// Nearest or bilinear.
        mode: UpsampleMode,
    },
    /// Adaptive average pooling to `[C, out[0], out[1]]` (`nn.AdaptiveAvgPool2d(out)`).
    AdaptiveAvgPool2d {
        /// Output height and width.
        out: [usize; 2],
    },
    /// Flattens `[C, H, W]` to `[C·H·W]`.
    Flatten,
    /// Softmax over the channels at each position (`nn.Softmax(dim=1)`; over the features of a
    /// flat input).
    Softmax,
    /// Batch normalisation over channels.
    BatchNorm2d {
        /// Added to the variance.
        eps: f32,
        /// Running-statistics factor; `None` is a cumulative average (PyTorch's `momentum=None`).
        momentum: Option<f32>,
    },
    /// Layer normalisation over each sample's `C·H·W` values, with learnable `[C, H, W]` γ and β.
    LayerNorm {
        /// Added to the variance.
        eps: f32,
    },
    /// Stochastic depth (`torchvision.ops.StochasticDepth(p, mode="row")`): whole samples
    /// dropped while training, the identity in evaluation.
    StochasticDepth {
        /// Probability of dropping a sample.
        p: f32,
    },
    /// Inverted dropout.
    Dropout {
        /// Probability of zeroing an element.
        p: f32,
    },
    /// Additive Gaussian noise in training (`x + std·z`, `z ~ N(0, 1)` per element), the identity
    /// in evaluation. Put before an activation, it makes a noisy activation (`noise(σ),relu`).
    GaussianNoise {
        /// Standard deviation of the noise.
        std: f32,
    },
    /// An element-wise activation.
    Activation(Activation),
    /// PReLU with one learnable slope, or one per channel.
    PRelu {
        /// One slope per channel instead of one shared slope.
        per_channel: bool,
    },
    /// Randomised leaky ReLU.
    RRelu {
        /// Lower bound of the random slope.
        lower: f32,
        /// Upper bound of the random slope.
        upper: f32,
    },
    /// A residual block (torchvision's `BasicBlock`): `relu(bn2(conv2(relu(bn1(conv1(x))))) +
    /// shortcut(x))` with 3x3 convolutions without bias, `conv1` strided; the shortcut is the
    /// identity, or a strided 1x1 convolution and batch norm (`downsample`) when the channels or
    /// the stride change.
    Residual {
        /// Output channels.
        out: usize,
        /// Stride of the first convolution and the shortcut.
        stride: usize,
        /// The batch norms' `eps` (as [`LayerSpec::BatchNorm2d`]'s; PyTorch's 1e-5).
        eps: f32,
        /// The batch norms' running-statistics factor (0.1; `None`: a cumulative average).
        momentum: Option<f32>,
    },
    /// A layer implemented outside cnnkit (see [`crate::layer::Layer`]), known by its name only:
    /// it cannot be built from text, so a model holding one is made with
    /// [`crate::Sequential::from_layers`].
    Custom {
        /// The name shown in summaries and architecture strings.
        name: String,
    },
}

impl LayerSpec {
    /// A `k`x`k` convolution with stride 1 and padding `pad`, with bias.
    pub fn conv(out: usize, k: usize, pad: usize) -> Self {
        LayerSpec::Conv2d {
            out,
            kernel: [k, k],
            stride: [1, 1],
            padding: [pad, pad],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }
    /// A dense layer with bias.
    pub fn dense(out: usize) -> Self {
        LayerSpec::Dense { out, bias: true }
    }
    /// `k`x`k` max pooling with stride `k`.
    pub fn maxpool(k: usize) -> Self {
        LayerSpec::MaxPool2d {
            window: [k, k],
            stride: [k, k],
            padding: [0, 0],
        }
    }
    /// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1).
    pub fn batch_norm() -> Self {
        LayerSpec::BatchNorm2d {
            eps: 1e-5,
            momentum: Some(0.1),
        }
    }
    /// A layer of your own named `name` (for [`crate::layer::Layer::spec`]).
    pub fn custom(name: impl Into<String>) -> Self {
        LayerSpec::Custom { name: name.into() }
    }
    /// A residual block with `out` channels and stride 1.
    pub fn residual(out: usize) -> Self {
        LayerSpec::Residual {
            out,
            stride: 1,
            eps: 1e-5,
            momentum: Some(0.1),
        }
    }
    /// A small residual network (ResNet-14 style: a stem, then three stages of two
    /// [`LayerSpec::Residual`] blocks with 32, 64 and 128 channels, the last two stages starting
    /// with stride 2, global average pooling and a dense classifier), sized for grey chest
    /// X-rays of 1x128x128: the stem (3x3 convolution, batch norm, ReLU) has stride 2 and a 2x2
    /// max-pool when the image is 64 pixels or more on its shorter side (the blocks then work
    /// on 32x32), stride 2 alone from 32 pixels, and neither below (the 8x8 digits). About
    /// 0.7 M parameters; at 1x128x128 about 0.2 GFLOP per image forward.
    pub fn resnet(input: [usize; 3], classes: usize) -> Vec<LayerSpec> {
        let side = input[1].min(input[2]);
        let stem = match side {
            64.. => "conv(32,3,s=2,p=1,bias=false),bn,relu,maxpool(2)",
            32.. => "conv(32,3,s=2,p=1,bias=false),bn,relu",
            _ => "conv(32,3,p=1,bias=false),bn,relu",
        };
        let text = format!(
            "{stem},res(32),res(32),res(64,s=2),res(64),res(128,s=2),res(128),gap,dense({classes})"
        );
        Self::parse_list(&text).expect("the preset parses")
    }
    /// ReLU.
    pub const RELU: LayerSpec = LayerSpec::Activation(Activation::Relu);

    /// Parses a comma-separated network description (see the module documentation).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the layer and the problem.
    pub fn parse_list(s: &str) -> Result<Vec<LayerSpec>> {
        split_top(s)
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().parse())
            .collect()
    }

    /// The inverse of [`LayerSpec::parse_list`].
    pub fn list_to_string(specs: &[LayerSpec]) -> String {
        specs
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    split_top_by(s, ',')
}

/// Splits at every `sep` outside parentheses.
pub(crate) fn split_top_by(s: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn pair(v: [usize; 2]) -> String {
    if v[0] == v[1] {
        v[0].to_string()
    } else {
        format!("{}x{}", v[0], v[1])
    }
}

/// The options of `conv(…)` and `convt(…)` that differ from their defaults, then `)`; `extra` are
/// `(key, value, default)` written after the padding.
fn conv_options(
    f: &mut fmt::Formatter<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
    extra: &[(&str, [usize; 2], [usize; 2])],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
) -> fmt::Result {
    let pairs = [("s", stride, [1, 1]), ("p", padding, [0, 0])];
    for (key, v, default) in pairs.iter().chain(extra).chain(&[("d", dilation, [1, 1])]) {
        if v != default {
            write!(f, ",{key}={}", pair(*v))?;
        }
    }
    if groups != 1 {
        write!(f, ",g={groups}")?;
    }
    if !bias {
        write!(f, ",bias=false")?;
    }
    write!(f, ")")
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerSpec::ConvTranspose2d {
                out,
                kernel,
                stride,
                padding,
                output_padding,
                dilation,
                groups,
                bias,
            } => {
                write!(f, "convt({out},{}", pair(*kernel))?;
                let extra = [("op", *output_padding, [0, 0])];
                conv_options(f, *stride, *padding, &extra, *dilation, *groups, *bias)
            }
            LayerSpec::Conv2d {
                out,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                bias,
            } => {
                write!(f, "conv({out},{}", pair(*kernel))?;
                conv_options(f, *stride, *padding, &[], *dilation, *groups, *bias)
            }
            LayerSpec::Dense { out, bias } => {
                write!(f, "dense({out}{})", if *bias { "" } else { ",bias=false" })
            }
            LayerSpec::MaxPool2d {
                window,
                stride,
                padding,
            } => {
                write!(f, "maxpool({}", pair(*window))?;
                if stride != window {
                    write!(f, ",s={}", pair(*stride))?;
                }
                if *padding != [0, 0] {
                    write!(f, ",p={}", pair(*padding))?;
                }
                write!(f, ")")
            }
            LayerSpec::AvgPool2d {
                window,
                stride,
                padding,
                count_include_pad,
            } => {
                write!(f, "avgpool({}", pair(*window))?;
                if stride != window {
                    write!(f, ",s={}", pair(*stride))?;
                }
                if *padding != [0, 0] {
                    write!(f, ",p={}", pair(*padding))?;
                }
                if !count_include_pad {
                    write!(f, ",count_include_pad=false")?;
                }
                write!(f, ")")
            }
            LayerSpec::GlobalAvgPool => write!(f, "gap"),
            LayerSpec::AdaptiveAvgPool2d { out } => write!(f, "adaptive_avgpool({})", pair(*out)),
            LayerSpec::Upsample { scale, mode } => {
                write!(f, "upsample({}", pair(*scale))?;
                match mode {
                    UpsampleMode::Nearest => {}
                    UpsampleMode::Bilinear { align_corners } => {
                        write!(f, ",mode=bilinear")?;
                        if *align_corners {
                            write!(f, ",align_corners=true")?;
                        }
                    }
                }
                write!(f, ")")
            }
            LayerSpec::Flatten => write!(f, "flatten"),
            LayerSpec::Softmax => write!(f, "softmax"),
            LayerSpec::BatchNorm2d { eps, momentum } => {
                write!(f, "bn(eps={eps:?},momentum=")?;
                match momentum {
                    Some(m) => write!(f, "{m:?})"),
                    None => write!(f, "none)"),
                }
            }
            LayerSpec::LayerNorm { eps } => write!(f, "ln(eps={eps:?})"),
            LayerSpec::Dropout { p } => write!(f, "dropout({p:?})"),
            LayerSpec::StochasticDepth { p } => write!(f, "stochastic_depth({p:?})"),
            LayerSpec::GaussianNoise { std } => write!(f, "noise({std:?})"),
            LayerSpec::Activation(a) => match a {
                Activation::Relu => write!(f, "relu"),
                Activation::LeakyRelu { slope } => write!(f, "leakyrelu({slope:?})"),
                Activation::Elu { alpha } => write!(f, "elu({alpha:?})"),
                Activation::Sigmoid => write!(f, "sigmoid"),
                Activation::Tanh => write!(f, "tanh"),
                Activation::Softplus { beta, threshold } => {
                    write!(f, "softplus(beta={beta:?},threshold={threshold:?})")
                }
                Activation::Gelu => write!(f, "gelu"),
                Activation::GeluTanh => write!(f, "gelu_tanh"),
                Activation::Relu6 => write!(f, "relu6"),
                Activation::Hardsigmoid => write!(f, "hardsigmoid"),
                Activation::Hardswish => write!(f, "hardswish"),
                Activation::Silu => write!(f, "silu"),
            },
            LayerSpec::PRelu { per_channel } => {
                write!(
                    f,
                    "{}",
                    if *per_channel {
                        "prelu(channels)"
                    } else {
                        "prelu"
                    }
                )
            }
            LayerSpec::RRelu { lower, upper } => write!(f, "rrelu({lower:?},{upper:?})"),
            LayerSpec::Residual {
                out,
                stride,
                eps,
                momentum,
            } => {
                write!(f, "res({out}")?;
                if *stride != 1 {
                    write!(f, ",s={stride}")?;
                }
                if *eps != 1e-5 {
                    write!(f, ",eps={eps:?}")?;
                }
                match momentum {
                    Some(m) if *m == 0.1 => {}
                    Some(m) => write!(f, ",momentum={m:?}")?,
                    None => write!(f, ",momentum=none")?,
                }
                write!(f, ")")
            }
            LayerSpec::Custom { name } => f.write_str(name),
        }
    }
}

/// Arguments of one layer: positional values and `key=value` pairs.
struct Args<'a> {
    layer: &'a str,
    pos: Vec<&'a str>,
    kv: Vec<(&'a str, &'a str)>,
    used: Vec<bool>,
}

const OP: &str = "LayerSpec::parse";

fn bad(layer: &str, msg: impl Into<String>) -> Error {
    Error::invalid(OP, "layer", format!("{layer}: {}", msg.into()))
}

impl<'a> Args<'a> {
    fn new(layer: &'a str, inner: &'a str) -> Result<Self> {
        let (mut pos, mut kv) = (Vec::new(), Vec::new());
        for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) => kv.push((k.trim(), v.trim())),
                None if kv.is_empty() => pos.push(part),
                None => {
                    return Err(bad(
                        layer,
                        format!("positional argument '{part}' after key=value"),
                    ));
                }
            }
        }
        let used = vec![false; kv.len()];
        Ok(Args {
            layer,
            pos,
            kv,
            used,
        })
    }

    fn get(&mut self, idx: usize, key: &str) -> Option<&'a str> {
        if let Some(i) = self.kv.iter().position(|(k, _)| *k == key) {
            self.used[i] = true;
            return Some(self.kv[i].1);
        }
        self.pos.get(idx).copied()
    }

    fn num<T: std::str::FromStr>(
        &mut self,
        idx: usize,
        key: &str,
        default: Option<T>,
    ) -> Result<T> {
        match self.get(idx, key) {
            Some(v) => v
                .parse()
                .map_err(|_| bad(self.layer, format!("{key} = '{v}' is not a valid number"))),
            None => default.ok_or_else(|| bad(self.layer, format!("missing {key}"))),
        }
    }

    fn pair(&mut self, idx: usize, key: &str, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
        match self.get(idx, key) {
            Some(v) => {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<usize>()
                        .map_err(|_| bad(self.layer, format!("{key} = '{v}' is not N or HxW")))
                };
                match v.split_once(['x', 'X']) {
                    Some((h, w)) => Ok([parse(h)?, parse(w)?]),
                    None => {
                        let n = parse(v)?;
                        Ok([n, n])
                    }
                }
            }
            None => default.ok_or_else(|| bad(self.layer, format!("missing {key}"))),
        }
    }

    fn flag(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.get(usize::MAX, key) {
            Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(v) => Err(bad(
                self.layer,
                format!("{key} = '{v}' is not true or false"),
            )),
            None => Ok(default),
        }
    }

    /// Fails on arguments nobody asked for.
    fn done(self, max_pos: usize) -> Result<()> {
        if self.pos.len() > max_pos {
            return Err(bad(
                self.layer,
                format!(
                    "takes at most {max_pos} positional arguments, got {}",
                    self.pos.len()
                ),
            ));
        }
        if let Some(i) = self.used.iter().position(|u| !u) {
            return Err(bad(
                self.layer,
                format!("unknown argument '{}'", self.kv[i].0),
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for LayerSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (name, inner) = match s.find('(') {
            Some(i) => {
                let inner = s[i + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| bad(s, "missing ')'"))?;
                (s[..i].trim(), inner)
            }
            None => (s, ""),
        };
        let lname = name.to_ascii_lowercase();
        let mut a = Args::new(s, inner)?;
        let spec = match lname.as_str() {
            "convt" | "conv_transpose" | "convtranspose2d" => {
                let out = a.num(0, "out", None)?;
                let kernel = a.pair(1, "k", None)?;
                let spec = LayerSpec::ConvTranspose2d {
                    out,
                    kernel,
                    stride: a.pair(2, "s", Some([1, 1]))?,
                    padding: a.pair(3, "p", Some([0, 0]))?,
                    output_padding: a.pair(4, "op", Some([0, 0]))?,
                    dilation: a.pair(5, "d", Some([1, 1]))?,
                    groups: a.num(6, "g", Some(1))?,
                    bias: a.flag("bias", true)?,
                };
                a.done(7)?;
                spec
            }
            "conv" | "conv2d" => {
                let out = a.num(0, "out", None)?;
                let kernel = a.pair(1, "k", None)?;
                let spec = LayerSpec::Conv2d {
                    out,
                    kernel,
                    stride: a.pair(2, "s", Some([1, 1]))?,
                    padding: a.pair(3, "p", Some([0, 0]))?,
                    dilation: a.pair(4, "d", Some([1, 1]))?,
                    groups: a.num(5, "g", Some(1))?,
                    bias: a.flag("bias", true)?,
                };
                a.done(6)?;
                spec
            }
            "dense" | "linear" => {
                let spec = LayerSpec::Dense {
                    out: a.num(0, "out", None)?,
                    bias: a.flag("bias", true)?,
                };
                a.done(1)?;
                spec
            }
            "maxpool" | "avgpool" => {
                let window = a.pair(0, "k", None)?;
                let stride = a.pair(1, "s", Some(window))?;
                let padding = a.pair(2, "p", Some([0, 0]))?;
                let spec = if lname == "maxpool" {
                    LayerSpec::MaxPool2d {
                        window,
                        stride,
                        padding,
                    }
                } else {
                    LayerSpec::AvgPool2d {
                        window,
                        stride,
                        padding,
                        count_include_pad: a.flag("count_include_pad", true)?,
                    }
                };
                a.done(3)?;
                spec
            }
            "upsample" => {
                let scale = a.pair(0, "scale", None)?;
                let align_corners = a.flag("align_corners", false)?;
                let mode = match a.get(usize::MAX, "mode") {
                    None | Some("nearest") if !align_corners => UpsampleMode::Nearest,
                    None | Some("nearest") => {
                        return Err(bad(s, "align_corners applies to mode=bilinear only"));
                    }
                    Some("bilinear") => UpsampleMode::Bilinear { align_corners },
                    Some(m) => {
                        return Err(bad(s, format!("mode = '{m}': use nearest or bilinear")));
                    }
                };
                a.done(1)?;
                LayerSpec::Upsample { scale, mode }
            }
            "adaptive_avgpool" | "adaptiveavgpool" | "adaptiveavgpool2d" => {
                let out = a.pair(0, "out", None)?;
                a.done(1)?;
                LayerSpec::AdaptiveAvgPool2d { out }
            }
            "gap" | "globalavgpool" => {
                a.done(0)?;
                LayerSpec::GlobalAvgPool
            }
            "flatten" => {
                a.done(0)?;
                LayerSpec::Flatten
            }
            "softmax" => {
                a.done(0)?;
                LayerSpec::Softmax
            }
            "bn" | "batchnorm" | "batchnorm2d" => {
                let eps = a.num(0, "eps", Some(1e-5))?;
                let momentum = bn_momentum(s, &mut a, 1)?;
                a.done(2)?;
                LayerSpec::BatchNorm2d { eps, momentum }
            }
            "ln" | "layernorm" => {
                let eps = a.num(0, "eps", Some(1e-5))?;
                a.done(1)?;
                LayerSpec::LayerNorm { eps }
            }
            "dropout" => {
                let p = a.num(0, "p", Some(0.5))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad(s, format!("p = {p} must be in [0, 1]")));
                }
                a.done(1)?;
                LayerSpec::Dropout { p }
            }
            "stochastic_depth" | "drop_path" => {
                let p = a.num(0, "p", None)?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad(s, format!("p = {p} must be in [0, 1]")));
                }
                a.done(1)?;
                LayerSpec::StochasticDepth { p }
            }
            "noise" | "gaussian_noise" => {
                let std: f32 = a.num(0, "std", None)?;
                if !(std.is_finite() && std >= 0.0) {
                    return Err(bad(s, format!("std = {std} must be finite and >= 0")));
                }
                a.done(1)?;
                LayerSpec::GaussianNoise { std }
            }
            "relu" => act(a, 0, Activation::Relu)?,
            "sigmoid" => act(a, 0, Activation::Sigmoid)?,
            "tanh" => act(a, 0, Activation::Tanh)?,
            "gelu" => act(a, 0, Activation::Gelu)?,
            "gelu_tanh" => act(a, 0, Activation::GeluTanh)?,
            "relu6" => act(a, 0, Activation::Relu6)?,
            "hardsigmoid" => act(a, 0, Activation::Hardsigmoid)?,
            "hardswish" => act(a, 0, Activation::Hardswish)?,
            "silu" | "swish" => act(a, 0, Activation::Silu)?,
            "leakyrelu" | "leaky_relu" => {
                let slope = a.num(0, "slope", Some(0.01))?;
                act(a, 1, Activation::LeakyRelu { slope })?
            }
            "elu" => {
                let alpha = a.num(0, "alpha", Some(1.0))?;
                act(a, 1, Activation::Elu { alpha })?
            }
            "softplus" => {
                let beta = a.num(0, "beta", Some(1.0))?;
                let threshold = a.num(1, "threshold", Some(20.0))?;
                act(a, 2, Activation::Softplus { beta, threshold })?
            }
            "prelu" => {
                let per_channel = match a.get(0, "mode") {
                    None | Some("shared") => false,
                    Some("channels") => true,
                    Some(v) => return Err(bad(s, format!("'{v}': use prelu or prelu(channels)"))),
                };
                a.done(1)?;
                LayerSpec::PRelu { per_channel }
            }
            "rrelu" => {
                let lower = a.num(0, "lower", Some(1.0 / 8.0))?;
                let upper = a.num(1, "upper", Some(1.0 / 3.0))?;
                a.done(2)?;
                LayerSpec::RRelu { lower, upper }
            }
            "res" | "residual" => {
                let spec = LayerSpec::Residual {
                    out: a.num(0, "out", None)?,
                    stride: a.num(1, "s", Some(1))?,
                    eps: a.num(2, "eps", Some(1e-5))?,
                    momentum: bn_momentum(s, &mut a, 3)?,
                };
                a.done(4)?;
                spec
            }
            _ => return Err(bad(s, format!("unknown layer '{name}'"))),
        };
        Ok(spec)
    }
}

/// A batch norm's `momentum` (position `pos` or `momentum=`): a number, or `none` (a cumulative
/// average); 0.1 when not given.
fn bn_momentum(s: &str, a: &mut Args<'_>, pos: usize) -> Result<Option<f32>> {
    match a.get(pos, "momentum") {
        Some("none") | Some("None") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| bad(s, format!("momentum = '{v}' is not a number or none"))),
        None => Ok(Some(0.1)),
    }
}

/// An activation that takes at most `max_pos` arguments (already read by the caller).
fn act(a: Args<'_>, max_pos: usize, act: Activation) -> Result<LayerSpec> {
    a.done(max_pos)?;
    Ok(LayerSpec::Activation(act))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values out of range are named at parse time (they used to surface as "does not fit the
    /// input shape" when the model was built).
    #[test]
    fn values_out_of_range_are_named_when_parsed() {
        for (text, want) in [
            ("noise(-1)", "std = -1"),
            ("dropout(2)", "p = 2"),
            ("stochastic_depth(1.5)", "p = 1.5"),
        ] {
            let e = text.parse::<LayerSpec>().unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(text), "{text}: {e}");
        }
    }

    #[test]
    fn parses_and_prints_every_layer() {
        let text = "conv(32,3,p=1),relu,maxpool(2),conv(16,5x3,s=2x1,p=2x1,d=2,g=2,bias=false),\
                    bn(eps=0.001,momentum=none),leakyrelu(0.1),avgpool(3,s=2,p=1,count_include_pad=false),\
                    gap,flatten,ln(eps=1e-5),dropout(0.25),noise(0.1),elu(0.5),sigmoid,tanh,\
                    softplus(beta=2.0,threshold=10.0),gelu,gelu_tanh,relu6,hardsigmoid,hardswish,silu,adaptive_avgpool(3),adaptive_avgpool(2x5),upsample(2),upsample(3x2,mode=bilinear),upsample(2,mode=bilinear,align_corners=true),convt(4,3,s=2,p=1,op=1),convt(6,2x3,s=2,d=2,g=2,bias=false),stochastic_depth(0.2),prelu,prelu(channels),rrelu(0.1,0.3),res(8),res(16,s=2),dense(10,bias=false)";
        let specs = LayerSpec::parse_list(text).unwrap();
        assert_eq!(specs.len(), 36);
        let printed = LayerSpec::list_to_string(&specs);
        assert_eq!(LayerSpec::parse_list(&printed).unwrap(), specs);
        assert_eq!(specs[0], LayerSpec::conv(32, 3, 1));
        assert_eq!(
            specs[3],
            LayerSpec::Conv2d {
                out: 16,
                kernel: [5, 3],
                stride: [2, 1],
                padding: [2, 1],
                dilation: [2, 2],
                groups: 2,
                bias: false
            }
        );
    }

    #[test]
    fn rejects_malformed_layers_with_a_message() {
        for (bad, needle) in [
            ("conv(32)", "missing k"),
            ("conv(x,3)", "not a valid number"),
            ("conv(3,3,q=1)", "unknown argument 'q'"),
            ("maxpool(2", "missing ')'"),
            ("foo", "unknown layer 'foo'"),
            ("dense(10,1,2)", "at most 1 positional"),
            ("conv(8,3x)", "not N or HxW"),
            ("relu(1,2,3)", "at most"),
            ("dense(bias=maybe,out=3)", "true or false"),
        ] {
            let e = LayerSpec::parse_list(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
