//! cnnkit model → ONNX (opset 17; 20 when a tanh-approximated GELU needs its `Gelu`), in
//! evaluation mode: the nodes in the model's order, its state-dict names as initializer names.

use super::proto::{self, Writer};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::upsample::UpsampleMode;
use crate::layer::spec::LayerSpec;
use crate::model::Model;
use crate::model::graph::{Join, Op, Src};
use crate::shape::{Shape3, Tensor, TensorData};
use std::collections::{BTreeMap, HashMap};

const OP: &str = "onnx::export";

/// One output value: its name and rank with the batch (2: `N×F`, 4: `N×C×H×W`).
#[derive(Clone)]
struct Val {
    name: String,
    rank: usize,
}

struct Out<'m> {
    nodes: Vec<Writer>,
    inits: Vec<Writer>,
    state: HashMap<String, &'m Tensor>,
    fresh: usize,
    opset: i64,
}

/// A per-axis pair as ONNX's integers.
fn ints(v: [usize; 2]) -> [i64; 2] {
    [v[0] as i64, v[1] as i64]
}

/// Symmetric padding as ONNX's `pads` (`[top, left, bottom, right]`).
fn pads_attr(p: [usize; 2]) -> Writer {
    let [h, w] = ints(p);
    proto::attr_ints("pads", &[h, w, h, w])
}

fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        TensorData::I64(_) => &[],
    }
}

impl Out<'_> {
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attrs: Vec<Writer>) {
        let mut w = Writer::default();
        for i in inputs {
            w.string(1, i);
        }
        w.string(2, output);
        w.string(3, name);
        w.string(4, op);
        for a in attrs {
            w.message(5, a);
        }
        self.nodes.push(w);
    }

    /// A value name not used before.
    fn temp(&mut self, base: &str) -> String {
        self.fresh += 1;
        format!("{base}:{}", self.fresh)
    }

    /// The initializer of state tensor `key`, reshaped to `dims` when given.
    fn init(&mut self, key: &str, dims: Option<&[usize]>) -> Result<String> {
        let t = *self
            .state
            .get(key)
            .ok_or_else(|| Error::invalid(OP, "model", format!("no tensor {key} (internal)")))?;
        let shape = dims.map_or(t.shape.as_slice(), |d| d);
        self.inits.push(proto::write_tensor(key, shape, f32s(t)));
        Ok(key.to_owned())
    }

    fn float_const(&mut self, base: &str, v: &[f32], dims: &[usize]) -> String {
        let name = self.temp(base);
        self.inits.push(proto::write_tensor(&name, dims, v));
        name
    }

    fn int_const(&mut self, base: &str, v: &[i64]) -> String {
        let name = self.temp(base);
        self.inits.push(proto::write_int_tensor(&name, v));
        name
    }

    /// `v` as rank `want` (a flatten to `N×F`, or a reshape of `N×C` to `N×C×1×1`).
    fn as_rank(&mut self, v: &Val, want: usize) -> Val {
        if v.rank == want {
            return v.clone();
        }
        let out = self.temp(&v.name);
        if want == 2 {
            self.node(
                "Flatten",
                &out,
                &[&v.name],
                &out,
                vec![proto::attr_int("axis", 1)],
            );
        } else {
            let shape = self.int_const("shape", &[0, -1, 1, 1]);
            self.node("Reshape", &out, &[&v.name, &shape], &out, Vec::new());
        }
        Val {
            name: out,
            rank: want,
        }
    }

    fn conv_attrs(
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> Vec<Writer> {
        vec![
            proto::attr_ints("dilations", &ints(dilation)),
            proto::attr_int("group", groups as i64),
            proto::attr_ints("kernel_shape", &ints(kernel)),
            pads_attr(padding),
            proto::attr_ints("strides", &ints(stride)),
        ]
    }

    fn batch_norm(
        &mut self,
        name: &str,
        prefix: &str,
        x: &str,
        out: &str,
        eps: f32,
        momentum: Option<f32>,
    ) -> Result<()> {
        let mut ins = vec![x.to_owned()];
        for p in ["weight", "bias", "running_mean", "running_var"] {
            ins.push(self.init(&format!("{prefix}.{p}"), None)?);
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let attrs = vec![
            proto::attr_float("epsilon", eps),
            proto::attr_float("momentum", 1.0 - momentum.unwrap_or(0.1)),
        ];
        self.node("BatchNormalization", name, &ins, out, attrs);
        Ok(())
    }

    fn conv(
        &mut self,
        name: &str,
        prefix: &str,
        x: &str,
        out: &str,
        spec: &LayerSpec,
    ) -> Result<()> {
        let LayerSpec::Conv2d {
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias,
            ..
        } = *spec
        else {
            return Err(Error::invalid(OP, "model", "not a convolution (internal)"));
        };
        let mut ins = vec![x.to_owned(), self.init(&format!("{prefix}.weight"), None)?];
        if bias {
            ins.push(self.init(&format!("{prefix}.bias"), None)?);
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        self.node(
            "Conv",
            name,
            &ins,
            out,
            Self::conv_attrs(kernel, stride, padding, dilation, groups),
        );
        Ok(())
    }

    fn activation(&mut self, name: &str, a: Activation, x: &str, out: &str) -> Result<()> {
        match a {
            Activation::Relu => self.node("Relu", name, &[x], out, Vec::new()),
            Activation::LeakyRelu { slope } => self.node(
                "LeakyRelu",
                name,
                &[x],
                out,
                vec![proto::attr_float("alpha", slope)],
            ),
            Activation::Elu { alpha } => self.node(
                "Elu",
                name,
                &[x],
                out,
                vec![proto::attr_float("alpha", alpha)],
            ),
            Activation::Sigmoid => self.node("Sigmoid", name, &[x], out, Vec::new()),
            Activation::Tanh => self.node("Tanh", name, &[x], out, Vec::new()),
            Activation::Softplus { beta, .. } => {
                if beta != 1.0 {
                    return Err(Error::invalid(
                        OP,
                        "model",
                        format!(
                            "node {name}: softplus with beta {beta} has no ONNX operator (Softplus is beta 1)"
                        ),
                    ));
                }
                self.node("Softplus", name, &[x], out, Vec::new());
            }
            Activation::Gelu => {
                // x·(1 + erf(x/√2))/2, as PyTorch exports GELU before opset 20.
                let r2 = self.float_const("sqrt2", &[std::f32::consts::SQRT_2], &[]);
                let one = self.float_const("one", &[1.0], &[]);
                let half = self.float_const("half", &[0.5], &[]);
                let (d, e, s, m) = (
                    self.temp(name),
                    self.temp(name),
                    self.temp(name),
                    self.temp(name),
                );
                self.node("Div", &d, &[x, &r2], &d, Vec::new());
                self.node("Erf", &e, &[&d], &e, Vec::new());
                self.node("Add", &s, &[&e, &one], &s, Vec::new());
                self.node("Mul", &m, &[x, &s], &m, Vec::new());
                self.node("Mul", name, &[&m, &half], out, Vec::new());
            }
            Activation::GeluTanh => {
                self.opset = self.opset.max(20);
                self.node(
                    "Gelu",
                    name,
                    &[x],
                    out,
                    vec![proto::attr_string("approximate", "tanh")],
                );
            }
            Activation::Relu6 => {
                let lo = self.float_const("zero", &[0.0], &[]);
                let hi = self.float_const("six", &[6.0], &[]);
                self.node("Clip", name, &[x, &lo, &hi], out, Vec::new());
            }
            Activation::Hardsigmoid => self.node(
                "HardSigmoid",
                name,
                &[x],
                out,
                vec![
                    proto::attr_float("alpha", 1.0 / 6.0),
                    proto::attr_float("beta", 0.5),
                ],
            ),
            Activation::Hardswish => self.node("HardSwish", name, &[x], out, Vec::new()),
            Activation::Silu => {
                let s = self.temp(name);
                self.node("Sigmoid", &s, &[x], &s, Vec::new());
                self.node("Mul", name, &[x, &s], out, Vec::new());
            }
        }
        Ok(())
    }

    /// Layer `spec` of node `name` reading `x` into value `out`; returns the output's rank.
    fn layer(
        &mut self,
        name: &str,
        spec: &LayerSpec,
        x: &Val,
        input: Shape3,
        out: &str,
    ) -> Result<usize> {
        let xs = x.name.as_str();
        let unsupported = |what: &str| {
            Err(Error::invalid(
                OP,
                "model",
                format!("node {name} ({spec}): {what}"),
            ))
        };
        match spec {
            LayerSpec::Conv2d { .. } => {
                let x = self.as_rank(x, 4);
                self.conv(name, name, &x.name, out, spec)?;
                Ok(4)
            }
            &LayerSpec::ConvTranspose2d {
                kernel,
                stride,
                padding,
                output_padding,
                dilation,
                groups,
                bias,
                ..
            } => {
                let x = self.as_rank(x, 4);
                let mut ins = vec![x.name.clone(), self.init(&format!("{name}.weight"), None)?];
                if bias {
                    ins.push(self.init(&format!("{name}.bias"), None)?);
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let mut attrs = Self::conv_attrs(kernel, stride, padding, dilation, groups);
                attrs.push(proto::attr_ints("output_padding", &ints(output_padding)));
                self.node("ConvTranspose", name, &ins, out, attrs);
                Ok(4)
            }
            &LayerSpec::Dense { bias, .. } => {
                let x = self.as_rank(x, 2);
                let mut ins = vec![x.name.clone(), self.init(&format!("{name}.weight"), None)?];
                if bias {
                    ins.push(self.init(&format!("{name}.bias"), None)?);
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                self.node("Gemm", name, &ins, out, vec![proto::attr_int("transB", 1)]);
                Ok(2)
            }
            &LayerSpec::MaxPool2d {
                window,
                stride,
                padding,
            }
            | &LayerSpec::AvgPool2d {
                window,
                stride,
                padding,
                ..
            } => {
                let x = self.as_rank(x, 4);
                let mut attrs = vec![
                    proto::attr_int("ceil_mode", 0),
                    proto::attr_ints("kernel_shape", &ints(window)),
                    pads_attr(padding),
                    proto::attr_ints("strides", &ints(stride)),
                ];
                let op = if let LayerSpec::AvgPool2d {
                    count_include_pad, ..
                } = spec
                {
                    attrs.push(proto::attr_int(
                        "count_include_pad",
                        i64::from(*count_include_pad),
                    ));
                    "AveragePool"
                } else {
                    "MaxPool"
                };
                self.node(op, name, &[&x.name], out, attrs);
                Ok(4)
            }
            LayerSpec::GlobalAvgPool => {
                let x = self.as_rank(x, 4);
                let pooled = self.temp(name);
                self.node(
                    "GlobalAveragePool",
                    &pooled,
                    &[&x.name],
                    &pooled,
                    Vec::new(),
                );
                self.node(
                    "Flatten",
                    name,
                    &[&pooled],
                    out,
                    vec![proto::attr_int("axis", 1)],
                );
                Ok(2)
            }
            &LayerSpec::AdaptiveAvgPool2d { out: o } => {
                let x = self.as_rank(x, 4);
                if o == [1, 1] {
                    self.node("GlobalAveragePool", name, &[&x.name], out, Vec::new());
                } else if input[1].is_multiple_of(o[0]) && input[2].is_multiple_of(o[1]) {
                    let k = [(input[1] / o[0]) as i64, (input[2] / o[1]) as i64];
                    self.node(
                        "AveragePool",
                        name,
                        &[&x.name],
                        out,
                        vec![
                            proto::attr_ints("kernel_shape", &k),
                            proto::attr_ints("strides", &k),
                        ],
                    );
                } else {
                    return unsupported(&format!(
                        "adaptive pooling of {}x{} to {}x{} has uneven windows, which no ONNX operator computes",
                        input[1], input[2], o[0], o[1]
                    ));
                }
                Ok(4)
            }
            LayerSpec::Flatten => {
                self.node(
                    "Flatten",
                    name,
                    &[xs],
                    out,
                    vec![proto::attr_int("axis", 1)],
                );
                Ok(2)
            }
            LayerSpec::Softmax => {
                self.node(
                    "Softmax",
                    name,
                    &[xs],
                    out,
                    vec![proto::attr_int("axis", 1)],
                );
                Ok(x.rank)
            }
            &LayerSpec::Upsample { scale, mode } => {
                let x = self.as_rank(x, 4);
                let scales = self.float_const(
                    "scales",
                    &[1.0, 1.0, scale[0] as f32, scale[1] as f32],
                    &[4],
                );
                let attrs = match mode {
                    UpsampleMode::Nearest => vec![
                        proto::attr_string("mode", "nearest"),
                        proto::attr_string("coordinate_transformation_mode", "asymmetric"),
                        proto::attr_string("nearest_mode", "floor"),
                    ],
                    UpsampleMode::Bilinear { align_corners } => vec![
                        proto::attr_string("mode", "linear"),
                        proto::attr_string(
                            "coordinate_transformation_mode",
                            if align_corners {
                                "align_corners"
                            } else {
                                "pytorch_half_pixel"
                            },
                        ),
                    ],
                };
                self.node("Resize", name, &[&x.name, "", &scales], out, attrs);
                Ok(4)
            }
            &LayerSpec::BatchNorm2d { eps, momentum } => {
                self.batch_norm(name, name, xs, out, eps, momentum)?;
                Ok(x.rank)
            }
            &LayerSpec::LayerNorm { eps } => {
                let x = self.as_rank(x, 4);
                let w = self.init(&format!("{name}.weight"), None)?;
                let b = self.init(&format!("{name}.bias"), None)?;
                self.node(
                    "LayerNormalization",
                    name,
                    &[&x.name, &w, &b],
                    out,
                    vec![
                        proto::attr_int("axis", 1),
                        proto::attr_float("epsilon", eps),
                    ],
                );
                Ok(4)
            }
            &LayerSpec::Dropout { p } => {
                let ratio = self.float_const("ratio", &[p], &[]);
                self.node("Dropout", name, &[xs, &ratio], out, Vec::new());
                Ok(x.rank)
            }
            LayerSpec::StochasticDepth { .. } | LayerSpec::GaussianNoise { .. } => {
                // The identity in evaluation.
                self.node("Identity", name, &[xs], out, Vec::new());
                Ok(x.rank)
            }
            &LayerSpec::Activation(a) => {
                self.activation(name, a, xs, out)?;
                Ok(x.rank)
            }
            &LayerSpec::PRelu { per_channel } => {
                let c = input[0];
                let dims: Vec<usize> = match (per_channel, x.rank) {
                    (false, _) => vec![1],
                    (true, 4) => vec![c, 1, 1],
                    (true, _) => vec![c],
                };
                let w = self.init(&format!("{name}.weight"), Some(&dims))?;
                self.node("PRelu", name, &[xs, &w], out, Vec::new());
                Ok(x.rank)
            }
            &LayerSpec::RRelu { lower, upper } => {
                // Evaluation mode: the mean slope.
                self.activation(
                    name,
                    Activation::LeakyRelu {
                        slope: (lower + upper) / 2.0,
                    },
                    xs,
                    out,
                )?;
                Ok(x.rank)
            }
            &LayerSpec::Residual {
                out: c,
                stride,
                eps,
                momentum,
            } => {
                let x = self.as_rank(x, 4);
                let conv = |k: usize, s: usize, p: usize| LayerSpec::Conv2d {
                    out: c,
                    kernel: [k, k],
                    stride: [s, s],
                    padding: [p, p],
                    dilation: [1, 1],
                    groups: 1,
                    bias: false,
                };
                let v: Vec<String> = (0..6).map(|_| self.temp(name)).collect();
                self.conv(
                    &format!("{name}.conv1"),
                    &format!("{name}.conv1"),
                    &x.name,
                    &v[0],
                    &conv(3, stride, 1),
                )?;
                self.batch_norm(
                    &format!("{name}.bn1"),
                    &format!("{name}.bn1"),
                    &v[0],
                    &v[1],
                    eps,
                    momentum,
                )?;
                self.node(
                    "Relu",
                    &format!("{name}.relu1"),
                    &[&v[1]],
                    &v[2],
                    Vec::new(),
                );
                self.conv(
                    &format!("{name}.conv2"),
                    &format!("{name}.conv2"),
                    &v[2],
                    &v[3],
                    &conv(3, 1, 1),
                )?;
                self.batch_norm(
                    &format!("{name}.bn2"),
                    &format!("{name}.bn2"),
                    &v[3],
                    &v[4],
                    eps,
                    momentum,
                )?;
                let short = if stride != 1 || input[0] != c {
                    let (d0, d1) = (self.temp(name), self.temp(name));
                    self.conv(
                        &format!("{name}.downsample.0"),
                        &format!("{name}.downsample.0"),
                        &x.name,
                        &d0,
                        &conv(1, stride, 0),
                    )?;
                    self.batch_norm(
                        &format!("{name}.downsample.1"),
                        &format!("{name}.downsample.1"),
                        &d0,
                        &d1,
                        eps,
                        momentum,
                    )?;
                    d1
                } else {
                    x.name.clone()
                };
                self.node(
                    "Add",
                    &format!("{name}.add"),
                    &[&v[4], &short],
                    &v[5],
                    Vec::new(),
                );
                self.node("Relu", name, &[&v[5]], out, Vec::new());
                Ok(4)
            }
            LayerSpec::Custom { .. } => {
                unsupported("a layer of the embedding program has no ONNX form")
            }
        }
    }
}

/// Writes `model` as an ONNX file's bytes (see [`super::export`]).
pub(crate) fn export(
    model: &Model,
    metadata: &BTreeMap<String, String>,
    input_name: &str,
    output_name: &str,
) -> Result<Vec<u8>> {
    let state = model.state_dict();
    let mut out = Out {
        nodes: Vec::new(),
        inits: Vec::new(),
        state: state.iter().map(|(k, t)| (k.clone(), t)).collect(),
        fresh: 0,
        opset: 17,
    };
    let nodes = model.graph_nodes();
    let input = Val {
        name: input_name.to_owned(),
        rank: 4,
    };
    let mut vals: Vec<Val> = Vec::with_capacity(nodes.len());
    let last = nodes.len() - 1;
    for (i, n) in nodes.iter().enumerate() {
        let src = |s: Src, vals: &[Val]| match s {
            Src::Input => input.clone(),
            Src::Node(j) => vals[j].clone(),
        };
        let value = if i == last {
            output_name.to_owned()
        } else if n.name == input_name || n.name == output_name {
            format!("{}:out", n.name)
        } else {
            n.name.clone()
        };
        let rank = match &n.op {
            Op::Layer(l) => {
                let x = src(n.inputs[0], &vals);
                let in_shape = match n.inputs[0] {
                    Src::Input => model.input_shape(),
                    Src::Node(j) => nodes[j].shape,
                };
                out.layer(&n.name, &l.layer().spec(), &x, in_shape, &value)?
            }
            Op::Join(j) => {
                let xs: Vec<Val> = n.inputs.iter().map(|&s| src(s, &vals)).collect();
                let rank = if xs.iter().all(|v| v.rank == 2) { 2 } else { 4 };
                // One rank for all: a gate `N×C` becomes `N×C×1×1`, to broadcast over a map.
                let xs: Vec<Val> = xs.iter().map(|v| out.as_rank(v, rank)).collect();
                let names: Vec<&str> = xs.iter().map(|v| v.name.as_str()).collect();
                match j {
                    Join::Add if names.len() == 2 => {
                        out.node("Add", &n.name, &names, &value, Vec::new())
                    }
                    Join::Add => out.node("Sum", &n.name, &names, &value, Vec::new()),
                    Join::Mul => out.node("Mul", &n.name, &names, &value, Vec::new()),
                    Join::Concat => out.node(
                        "Concat",
                        &n.name,
                        &names,
                        &value,
                        vec![proto::attr_int("axis", 1)],
                    ),
                }
                rank
            }
        };
        vals.push(Val { name: value, rank });
    }
    let s = model.input_shape();
    let o = model.output_shape();
    let mut graph = Writer::default();
    for n in out.nodes {
        graph.message(1, n);
    }
    graph.string(2, "cnnkit");
    for t in out.inits {
        graph.message(5, t);
    }
    graph.message(
        11,
        proto::write_value_info(input_name, &[None, Some(s[0]), Some(s[1]), Some(s[2])]),
    );
    let out_dims: Vec<Option<usize>> = if vals[last].rank == 2 {
        vec![None, Some(o[0] * o[1] * o[2])]
    } else {
        vec![None, Some(o[0]), Some(o[1]), Some(o[2])]
    };
    graph.message(12, proto::write_value_info(output_name, &out_dims));
    let mut m = Writer::default();
    m.int(1, if out.opset >= 20 { 9 } else { 8 });
    m.string(2, "cnnkit");
    m.string(3, env!("CARGO_PKG_VERSION"));
    m.message(7, graph);
    let mut opset = Writer::default();
    opset.string(1, "");
    opset.int(2, out.opset);
    m.message(8, opset);
    for (k, v) in metadata {
        m.message(14, proto::write_entry(k, v));
    }
    Ok(m.buf)
}
