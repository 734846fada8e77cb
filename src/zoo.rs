//! The networks of chest-X-ray and reconstruction work, as graphs with torchvision's exact
//! topology and state-dict names: `resnet18`, `resnet34`, `resnet50`, `densenet121` (CheXNet),
//! `mobilenet_v2`, `efficientnet_b0`, for any input channel count and class count; and `unet`,
//! the encoder-decoder of image-to-image work.
//!
//! A torchvision model's state dict, with its first convolution made for the input's channels and
//! its classifier for the classes, loads into the model of the same name here with
//! [`Model::load_state_dict`](crate::Model::load_state_dict) (strict: every name and shape), and
//! the reverse loads into torchvision.
//!
//! # Example
//! ```
//! use cnnkit::zoo;
//! let mut m = zoo::build("resnet18", [1, 32, 32], 3)?.build(0)?;
//! assert!(m.state_dict().iter().any(|(k, _)| k == "layer4.1.bn2.running_var"));
//! m.eval(); // (training mode needs more than one value per channel: 1x1 maps, batch 1)
//! assert_eq!(m.forward(&vec![0.0; 32 * 32], 1)?.len(), 3);
//! # Ok::<(), cnnkit::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::layer::spec::LayerSpec;
use crate::model::graph::{GraphBuilder, NodeId};
use crate::shape::Shape3;

/// The names [`build`] knows, with what each is.
pub const MODELS: [(&str, &str); 7] = [
    ("resnet18", "torchvision ResNet-18 (BasicBlock, 2-2-2-2)"),
    ("resnet34", "torchvision ResNet-34 (BasicBlock, 3-4-6-3)"),
    ("resnet50", "torchvision ResNet-50 (Bottleneck, 3-4-6-3)"),
    (
        "densenet121",
        "torchvision DenseNet-121 (CheXNet's network)",
    ),
    ("mobilenet_v2", "torchvision MobileNetV2"),
    ("efficientnet_b0", "torchvision EfficientNet-B0"),
    (
        "unet",
        "U-Net, width 64 and depth 4 (an image-to-image network: `classes` output channels)",
    ),
];

/// The zoo model `name` (see [`MODELS`]) for inputs of shape `input` and `classes` outputs (for
/// `unet`, output channels).
///
/// # Errors
/// [`Error::InvalidArg`] for an unknown name, no classes, or an input the network cannot take.
pub fn build(name: &str, input: Shape3, classes: usize) -> Result<GraphBuilder> {
    match name {
        "resnet18" => resnet(input, classes, Block::Basic, [2, 2, 2, 2]),
        "resnet34" => resnet(input, classes, Block::Basic, [3, 4, 6, 3]),
        "resnet50" => resnet(input, classes, Block::Bottleneck, [3, 4, 6, 3]),
        "densenet121" => densenet(input, classes, 32, [6, 12, 24, 16], 64),
        "mobilenet_v2" => mobilenet_v2(input, classes),
        "efficientnet_b0" => efficientnet_b0(input, classes),
        "unet" => unet(input, classes, 64, 4),
        other => Err(Error::invalid(
            "zoo::build",
            "name",
            format!(
                "no model called '{other}' (known: {})",
                MODELS.map(|(n, _)| n).join(", ")
            ),
        )),
    }
}

fn spec(text: &str) -> Result<LayerSpec> {
    text.parse()
}

fn check(op: &'static str, input: Shape3, classes: usize) -> Result<()> {
    if classes == 0 {
        return Err(Error::invalid(op, "classes", "must be at least 1"));
    }
    if input.contains(&0) {
        return Err(Error::invalid(
            op,
            "input",
            format!("empty input shape {input:?}"),
        ));
    }
    Ok(())
}

/// A chain of layers given as text, named as the statement `name = …` names them.
fn chain(g: &mut GraphBuilder, name: &str, specs: &[String], from: NodeId) -> Result<NodeId> {
    let specs: Vec<LayerSpec> = specs.iter().map(|s| spec(s)).collect::<Result<_>>()?;
    g.chain(name, &specs, from)
}

fn layer(g: &mut GraphBuilder, name: &str, text: &str, from: NodeId) -> Result<NodeId> {
    g.layer(name, &spec(text)?, from)
}

/// torchvision's ResNet blocks.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    Basic,
    Bottleneck,
}

/// torchvision's `ResNet` with `layers` blocks per stage.
fn resnet(input: Shape3, classes: usize, block: Block, layers: [usize; 4]) -> Result<GraphBuilder> {
    check("zoo::resnet", input, classes)?;
    let mut g = GraphBuilder::new(input);
    let x = g.input();
    let mut at = layer(&mut g, "conv1", "conv(64,7,s=2,p=3,bias=false)", x)?;
    at = layer(&mut g, "bn1", "bn", at)?;
    at = layer(&mut g, "relu", "relu", at)?;
    at = layer(&mut g, "maxpool", "maxpool(3,s=2,p=1)", at)?;
    let expansion = if block == Block::Basic { 1 } else { 4 };
    let mut inplanes = 64;
    for (stage, &count) in layers.iter().enumerate() {
        let planes = 64 << stage;
        for b in 0..count {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let p = format!("layer{}.{b}", stage + 1);
            let out = planes * expansion;
            let mut y = at;
            let convs: Vec<(usize, usize, usize)> = match block {
                // (out channels, kernel, stride)
                Block::Basic => vec![(planes, 3, stride), (planes, 3, 1)],
                Block::Bottleneck => vec![(planes, 1, 1), (planes, 3, stride), (out, 1, 1)],
            };
            for (k, &(o, kern, s)) in convs.iter().enumerate() {
                let pad = kern / 2;
                y = layer(
                    &mut g,
                    &format!("{p}.conv{}", k + 1),
                    &format!("conv({o},{kern},s={s},p={pad},bias=false)"),
                    y,
                )?;
                y = layer(&mut g, &format!("{p}.bn{}", k + 1), "bn", y)?;
                if k + 1 < convs.len() {
                    y = layer(&mut g, &format!("{p}.relu{}", k + 1), "relu", y)?;
                }
            }
            let shortcut = if stride != 1 || inplanes != out {
                chain(
                    &mut g,
                    &format!("{p}.downsample"),
                    &[format!("conv({out},1,s={stride},bias=false)"), "bn".into()],
                    at,
                )?
            } else {
                at
            };
            let sum = g.add(&format!("{p}.add"), &[y, shortcut])?;
            at = layer(&mut g, &format!("{p}.relu"), "relu", sum)?;
            inplanes = out;
        }
    }
    at = layer(&mut g, "avgpool", "gap", at)?;
    layer(&mut g, "fc", &format!("dense({classes})"), at)?;
    Ok(g)
}

/// torchvision's `DenseNet` (no dropout, `bn_size` 4).
fn densenet(
    input: Shape3,
    classes: usize,
    growth: usize,
    blocks: [usize; 4],
    init: usize,
) -> Result<GraphBuilder> {
    check("zoo::densenet", input, classes)?;
    let mut g = GraphBuilder::new(input);
    let x = g.input();
    let f = "features";
    let mut at = layer(
        &mut g,
        &format!("{f}.conv0"),
        &format!("conv({init},7,s=2,p=3,bias=false)"),
        x,
    )?;
    at = layer(&mut g, &format!("{f}.norm0"), "bn", at)?;
    at = layer(&mut g, &format!("{f}.relu0"), "relu", at)?;
    at = layer(&mut g, &format!("{f}.pool0"), "maxpool(3,s=2,p=1)", at)?;
    let mut channels = init;
    for (i, &count) in blocks.iter().enumerate() {
        let block = format!("{f}.denseblock{}", i + 1);
        let mut feats = vec![at];
        for j in 1..=count {
            let p = format!("{block}.denselayer{j}");
            let input = if feats.len() == 1 {
                feats[0]
            } else {
                g.concat(&format!("{p}.cat"), &feats)?
            };
            let mut y = layer(&mut g, &format!("{p}.norm1"), "bn", input)?;
            y = layer(&mut g, &format!("{p}.relu1"), "relu", y)?;
            y = layer(
                &mut g,
                &format!("{p}.conv1"),
                &format!("conv({},1,bias=false)", 4 * growth),
                y,
            )?;
            y = layer(&mut g, &format!("{p}.norm2"), "bn", y)?;
            y = layer(&mut g, &format!("{p}.relu2"), "relu", y)?;
            y = layer(
                &mut g,
                &format!("{p}.conv2"),
                &format!("conv({growth},3,p=1,bias=false)"),
                y,
            )?;
            feats.push(y);
        }
        at = g.concat(&format!("{block}.cat"), &feats)?;
        channels += count * growth;
        if i + 1 < blocks.len() {
            let t = format!("{f}.transition{}", i + 1);
            channels /= 2;
            at = layer(&mut g, &format!("{t}.norm"), "bn", at)?;
            at = layer(&mut g, &format!("{t}.relu"), "relu", at)?;
            at = layer(
                &mut g,
                &format!("{t}.conv"),
                &format!("conv({channels},1,bias=false)"),
                at,
            )?;
            at = layer(&mut g, &format!("{t}.pool"), "avgpool(2)", at)?;
        }
    }
    at = layer(&mut g, &format!("{f}.norm5"), "bn", at)?;
    at = layer(&mut g, "relu", "relu", at)?;
    at = layer(&mut g, "avgpool", "gap", at)?;
    layer(&mut g, "classifier", &format!("dense({classes})"), at)?;
    Ok(g)
}

/// torchvision's `Conv2dNormActivation`: `{name}.0` convolution, `{name}.1` batch norm, then the
/// activation (`{name}.2`, no parameters).
#[allow(clippy::too_many_arguments)]
fn conv_norm_act(
    g: &mut GraphBuilder,
    name: &str,
    out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    act: Option<&str>,
    from: NodeId,
) -> Result<NodeId> {
    let pad = (kernel - 1) / 2;
    let mut specs = vec![
        format!("conv({out},{kernel},s={stride},p={pad},g={groups},bias=false)"),
        "bn".to_string(),
    ];
    if let Some(a) = act {
        specs.push(a.to_string());
    }
    chain(g, name, &specs, from)
}

/// The front of an inverted residual block (MobileNetV2, EfficientNet): a 1x1 expansion to
/// `hidden` channels when `expand`, then the depthwise `kernel`x`kernel` convolution with
/// `stride`, each with batch norm and `act`, named `{p}.0`, `{p}.1`; returns the output and the
/// index of the next module.
fn expand_depthwise(
    g: &mut GraphBuilder,
    p: &str,
    [hidden, kernel, stride]: [usize; 3],
    act: &str,
    expand: bool,
    from: NodeId,
) -> Result<(NodeId, usize)> {
    let mut y = from;
    let mut k = 0;
    if expand {
        y = conv_norm_act(g, &format!("{p}.{k}"), hidden, 1, 1, 1, Some(act), y)?;
        k += 1;
    }
    y = conv_norm_act(
        g,
        &format!("{p}.{k}"),
        hidden,
        kernel,
        stride,
        hidden,
        Some(act),
        y,
    )?;
    Ok((y, k + 1))
}

/// torchvision's `MobileNetV2` (width 1.0).
fn mobilenet_v2(input: Shape3, classes: usize) -> Result<GraphBuilder> {
    check("zoo::mobilenet_v2", input, classes)?;
    let mut g = GraphBuilder::new(input);
    let x = g.input();
    let mut at = conv_norm_act(&mut g, "features.0", 32, 3, 2, 1, Some("relu6"), x)?;
    let settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let (mut inp, mut idx) = (32usize, 1usize);
    for (t, c, n, s) in settings {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("features.{idx}.conv");
            let (mut y, k) =
                expand_depthwise(&mut g, &p, [inp * t, 3, stride], "relu6", t != 1, at)?;
            y = layer(
                &mut g,
                &format!("{p}.{k}"),
                &format!("conv({c},1,bias=false)"),
                y,
            )?;
            y = layer(&mut g, &format!("{p}.{}", k + 1), "bn", y)?;
            at = if stride == 1 && inp == c {
                g.add(&format!("features.{idx}.add"), &[at, y])?
            } else {
                y
            };
            inp = c;
            idx += 1;
        }
    }
    at = conv_norm_act(
        &mut g,
        &format!("features.{idx}"),
        1280,
        1,
        1,
        1,
        Some("relu6"),
        at,
    )?;
    at = layer(&mut g, "avgpool", "gap", at)?;
    chain(
        &mut g,
        "classifier",
        &["dropout(0.2)".into(), format!("dense({classes})")],
        at,
    )?;
    Ok(g)
}

/// torchvision's `EfficientNet-B0` (stochastic depth 0.2 over its 16 blocks).
fn efficientnet_b0(input: Shape3, classes: usize) -> Result<GraphBuilder> {
    check("zoo::efficientnet_b0", input, classes)?;
    let mut g = GraphBuilder::new(input);
    let x = g.input();
    let mut at = conv_norm_act(&mut g, "features.0", 32, 3, 2, 1, Some("silu"), x)?;
    // (expand ratio, kernel, stride, in, out, layers)
    let stages = [
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    ];
    let total: usize = stages.iter().map(|s| s.5).sum();
    let mut block_id = 0;
    for (si, &(e, k, s, cin, cout, n)) in stages.iter().enumerate() {
        for i in 0..n {
            let (inp, stride) = if i == 0 { (cin, s) } else { (cout, 1) };
            let p = format!("features.{}.{i}.block", si + 1);
            let hidden = inp * e;
            let (mut y, b) = expand_depthwise(&mut g, &p, [hidden, k, stride], "silu", e != 1, at)?;
            // Squeeze-and-excitation: `{p}.{b+1}.fc1`, `.fc2`.
            let se = format!("{p}.{b}");
            let squeeze = (inp / 4).max(1);
            let mut gate = layer(&mut g, &format!("{se}.avgpool"), "adaptive_avgpool(1)", y)?;
            gate = layer(
                &mut g,
                &format!("{se}.fc1"),
                &format!("conv({squeeze},1)"),
                gate,
            )?;
            gate = layer(&mut g, &format!("{se}.activation"), "silu", gate)?;
            gate = layer(
                &mut g,
                &format!("{se}.fc2"),
                &format!("conv({hidden},1)"),
                gate,
            )?;
            gate = layer(&mut g, &format!("{se}.scale_activation"), "sigmoid", gate)?;
            y = g.mul(&format!("{se}.scale"), gate, y)?;
            y = conv_norm_act(&mut g, &format!("{p}.{}", b + 1), cout, 1, 1, 1, None, y)?;
            at = if stride == 1 && inp == cout {
                let sd = 0.2 * block_id as f32 / total as f32;
                let name = format!("features.{}.{i}.stochastic_depth", si + 1);
                let y = if sd > 0.0 {
                    layer(&mut g, &name, &format!("stochastic_depth({sd})"), y)?
                } else {
                    y
                };
                g.add(&format!("features.{}.{i}.add", si + 1), &[y, at])?
            } else {
                y
            };
            block_id += 1;
        }
    }
    at = conv_norm_act(&mut g, "features.8", 1280, 1, 1, 1, Some("silu"), at)?;
    at = layer(&mut g, "avgpool", "gap", at)?;
    chain(
        &mut g,
        "classifier",
        &["dropout(0.2)".into(), format!("dense({classes})")],
        at,
    )?;
    Ok(g)
}

/// U-Net (Ronneberger et al. 2015) with padded convolutions, so the output has the input's
/// height and width: `depth` levels of two 3x3 convolutions with ReLU (`enc{i}`), halved by
/// max-pooling and doubling in width from `width`; a bottleneck; on the way up a 2x2 transposed
/// convolution (`up{i}`) whose output is concatenated with the level's skip connection and
/// followed by two convolutions (`dec{i}`); a 1x1 convolution (`head`) to `out` channels.
///
/// # Errors
/// [`Error::InvalidArg`] for zero width, depth or outputs, or an input whose height or width
/// is not a multiple of `2^depth`.
pub fn unet(input: Shape3, out: usize, width: usize, depth: usize) -> Result<GraphBuilder> {
    const OP: &str = "zoo::unet";
    check(OP, input, out)?;
    if width == 0 || depth == 0 || depth > 8 {
        return Err(Error::invalid(
            OP,
            "architecture",
            format!("width {width} and depth {depth}: both at least 1, depth at most 8"),
        ));
    }
    let m = 1usize << depth;
    if !input[1].is_multiple_of(m) || !input[2].is_multiple_of(m) {
        return Err(Error::invalid(
            OP,
            "input",
            format!(
                "{}x{} images: height and width must be multiples of 2^depth = {m}",
                input[1], input[2]
            ),
        ));
    }
    let double = |c: usize| {
        vec![
            format!("conv({c},3,p=1)"),
            "relu".to_string(),
            format!("conv({c},3,p=1)"),
            "relu".to_string(),
        ]
    };
    let mut g = GraphBuilder::new(input);
    let mut at = g.input();
    let mut skips = Vec::new();
    for i in 1..=depth {
        let c = width << (i - 1);
        let e = chain(&mut g, &format!("enc{i}"), &double(c), at)?;
        skips.push(e);
        at = layer(&mut g, &format!("pool{i}"), "maxpool(2)", e)?;
    }
    at = chain(&mut g, "bottleneck", &double(width << depth), at)?;
    for i in (1..=depth).rev() {
        let c = width << (i - 1);
        let up = layer(&mut g, &format!("up{i}"), &format!("convt({c},2,s=2)"), at)?;
        let cat = g.concat(&format!("cat{i}"), &[skips[i - 1], up])?;
        at = chain(&mut g, &format!("dec{i}"), &double(c), cat)?;
    }
    layer(&mut g, "head", &format!("conv({out},1)"), at)?;
    Ok(g)
}
