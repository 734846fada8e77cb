//! ONNX graph → cnnkit graph: constants folded, operators mapped to layers and joins, the
//! patterns exporters write for one PyTorch module (GELU's `erf` form, SiLU's `x·σ(x)`,
//! `MatMul` + `Add`, the `Shape`/`Gather`/`Concat` arithmetic of a flatten) matched back into it.

use super::proto::{self, Attribute, GraphProto, Limits, ModelProto, NodeProto, TensorProto};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::upsample::UpsampleMode;
use crate::layer::spec::LayerSpec;
use crate::model::graph::{GraphBuilder, NodeId};
use crate::shape::{Shape3, Tensor, TensorData};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// The symbolic batch size inside folded shape arithmetic.
const BATCH: i64 = i64::MIN;

/// A constant: an initializer, a `Constant` node, or folded arithmetic.
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Const {
    fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::I64(v) => v.clone(),
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }
    fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }
    fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.floats()[0])
    }
}

/// A value of the ONNX graph as the import sees it.
#[derive(Clone, Debug)]
enum Value {
    Const(Const),
    /// A tensor computed per sample: its node, its per-sample shape, and its rank with the batch
    /// (4 for `N×C×H×W`, 2 for `N×F`, whose shape is `[F, 1, 1]`).
    Tensor {
        id: NodeId,
        shape: Shape3,
        rank: usize,
    },
}

/// What the import produced, before the model is made.
pub(crate) struct Imported {
    pub builder: GraphBuilder,
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: BTreeMap<String, String>,
    pub input_name: String,
    pub output_name: String,
}

/// An error about node `node`.
fn at(node: &NodeProto<'_>, what: impl std::fmt::Display) -> Error {
    let name = if node.name.is_empty() {
        "(unnamed)"
    } else {
        node.name.as_str()
    };
    Error::invalid(
        "onnx",
        "model",
        format!("node {name} ({}): {what}", node.op_type),
    )
}

fn bad(what: impl Into<String>) -> Error {
    Error::invalid("onnx", "model", what.into())
}

/// The operators the importer maps, for messages.
pub(crate) const SUPPORTED: &str = "Conv, ConvTranspose, BatchNormalization, LayerNormalization (axis 1), Relu, Clip, LeakyRelu, Elu, Sigmoid, Tanh, Softplus, Gelu, HardSwish, HardSigmoid, PRelu, Softmax, MaxPool, AveragePool, GlobalAveragePool, ReduceMean (over H and W), Gemm, MatMul, Flatten, Reshape (as a flatten), Add, Sum, Mul, Concat, Resize, Dropout, Identity, and for constants Constant, Shape, Gather, Unsqueeze, Squeeze, Cast, Slice";

/// Reads the model in `buf`; external data is read relative to `dir` (refused without one).
pub(crate) fn import(
    buf: &[u8],
    dir: Option<&Path>,
    input: Option<Shape3>,
    limits: &Limits,
) -> Result<Imported> {
    let model: ModelProto<'_> = proto::read_model(buf, limits)?;
    let opset = model
        .opsets
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|&(_, v)| v)
        .ok_or_else(|| bad("the model imports no opset of the default domain"))?;
    if opset < 13 {
        return Err(bad(format!(
            "opset {opset}: cnnkit reads opset 13 and later (export again with opset_version=13 or more)"
        )));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| bad("the file holds no graph"))?;
    if graph.sparse {
        return Err(bad("sparse initializers are not supported"));
    }
    let mut ext = External::new(dir, limits);
    let mut values: HashMap<String, Value> = HashMap::new();
    let mut total = 0usize;
    for t in &graph.initializers {
        let c = tensor_const(t, &mut ext, limits)?;
        total = total.saturating_add(c.len());
        if total > limits.max_elements {
            return Err(bad(format!(
                "the initializers hold more than {} values (the limit)",
                limits.max_elements
            )));
        }
        values.insert(t.name.clone(), Value::Const(c));
    }
    let inputs: Vec<_> = graph
        .inputs
        .iter()
        .filter(|v| !values.contains_key(&v.name))
        .collect();
    let [x] = inputs[..] else {
        return Err(bad(format!(
            "cnnkit models have one input; this graph has {} ({})",
            inputs.len(),
            inputs
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if x.elem_type != proto::FLOAT {
        return Err(bad(format!(
            "input {} is {}; cnnkit reads float inputs",
            x.name,
            proto::type_name(x.elem_type)
        )));
    }
    let (shape, rank) = input_shape(x, input)?;
    let [out] = &graph.outputs[..] else {
        return Err(bad(format!(
            "cnnkit models have one output; this graph has {}",
            graph.outputs.len()
        )));
    };
    let mut b = Importer {
        graph,
        builder: GraphBuilder::with_limit(shape, limits.max_elements),
        values,
        tensors: Vec::new(),
        used: HashSet::from(["input".to_owned()]),
        consumers: HashMap::new(),
        done: vec![false; graph.nodes.len()],
        producer: HashMap::new(),
        count: 0,
        batch: x
            .dims
            .as_ref()
            .and_then(|d| d.first().copied().flatten())
            .filter(|&b| b > 0),
    };
    let id = b.builder.input();
    b.values
        .insert(x.name.clone(), Value::Tensor { id, shape, rank });
    b.run(&out.name)?;
    match b.values.get(&out.name) {
        Some(Value::Tensor { id, .. }) if *id != b.builder.input() => {}
        Some(Value::Tensor { .. }) => {
            return Err(bad("the output is the input: the graph computes nothing"));
        }
        Some(Value::Const(_)) => return Err(bad(format!("output {} is a constant", out.name))),
        None => return Err(bad(format!("no node computes the output {}", out.name))),
    }
    Ok(Imported {
        builder: b.builder,
        tensors: b.tensors,
        metadata: model.metadata.iter().cloned().collect(),
        input_name: x.name.clone(),
        output_name: out.name.clone(),
    })
}

fn input_shape(x: &proto::ValueInfo, given: Option<Shape3>) -> Result<(Shape3, usize)> {
    let dims = x.dims.clone().unwrap_or_default();
    let fixed = |i: usize| {
        dims.get(i)
            .copied()
            .flatten()
            .filter(|&d| d > 0)
            .map(|d| d as usize)
    };
    match (dims.len(), given) {
        (4, Some(s)) => {
            for (k, &d) in s.iter().enumerate() {
                if let Some(f) = fixed(k + 1)
                    && f != d
                {
                    return Err(bad(format!(
                        "input {}: dimension {} is {f} in the model, {d} was asked for",
                        x.name,
                        k + 1
                    )));
                }
            }
            Ok((s, 4))
        }
        (4, None) => match (fixed(1), fixed(2), fixed(3)) {
            (Some(c), Some(h), Some(w)) => Ok(([c, h, w], 4)),
            _ => Err(bad(format!(
                "input {} has symbolic channels, height or width; give the input shape",
                x.name
            ))),
        },
        (2, _) => match fixed(1) {
            Some(f) => Ok(([f, 1, 1], 2)),
            None => Err(bad(format!(
                "input {} has a symbolic feature count",
                x.name
            ))),
        },
        (0, Some(s)) => Ok((s, 4)),
        (r, _) => Err(bad(format!(
            "input {} has rank {r}; cnnkit reads N×C×H×W images (or N×F vectors)",
            x.name
        ))),
    }
}

/// External-data files, read once each, only inside the model's folder.
struct External<'l> {
    dir: Option<PathBuf>,
    files: HashMap<String, Vec<u8>>,
    limits: &'l Limits,
}

impl<'l> External<'l> {
    fn new(dir: Option<&Path>, limits: &'l Limits) -> Self {
        External {
            dir: dir.map(Path::to_path_buf),
            files: HashMap::new(),
            limits,
        }
    }

    fn read(&mut self, t: &TensorProto<'_>) -> Result<&[u8]> {
        let get = |k: &str| {
            t.external
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let loc = get("location").ok_or_else(|| {
            bad(format!(
                "tensor {}: external data without a location",
                t.name
            ))
        })?;
        let Some(dir) = &self.dir else {
            return Err(bad(format!(
                "tensor {} is in the external file {loc}; read the model from its path, not from bytes",
                t.name
            )));
        };
        let rel = Path::new(loc);
        if loc.is_empty()
            || loc.contains('\0')
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!(
                "tensor {}: external data location {loc:?} is not a plain path inside the model's folder",
                t.name
            )));
        }
        if !self.files.contains_key(loc) {
            let path = dir.join(rel);
            let real = path.canonicalize().map_err(|e| Error::io(&path, e))?;
            let base = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
            if !real.starts_with(&base) {
                return Err(bad(format!(
                    "tensor {}: external data {loc} leads outside the model's folder",
                    t.name
                )));
            }
            let size = std::fs::metadata(&real)
                .map_err(|e| Error::io(&real, e))?
                .len();
            if size > self.limits.max_file_bytes {
                return Err(Error::file(
                    &real,
                    format!(
                        "{size} bytes is over the limit of {}",
                        self.limits.max_file_bytes
                    ),
                ));
            }
            let bytes = std::fs::read(&real).map_err(|e| Error::io(&real, e))?;
            self.files.insert(loc.to_owned(), bytes);
        }
        let file = &self.files[loc];
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        bad(format!(
                            "tensor {}: external data {k} {v:?} is not a number",
                            t.name
                        ))
                    })
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let length = num("length")?.unwrap_or(file.len().saturating_sub(offset));
        match offset.checked_add(length) {
            Some(end) if end <= file.len() => Ok(&file[offset..end]),
            _ => Err(bad(format!(
                "tensor {}: external data {loc} has {} bytes, the tensor asks for {length} from offset {offset}",
                t.name,
                file.len()
            ))),
        }
    }
}

fn tensor_const(t: &TensorProto<'_>, ext: &mut External<'_>, limits: &Limits) -> Result<Const> {
    if t.segmented {
        return Err(bad(format!(
            "tensor {}: segmented tensors are not supported",
            t.name
        )));
    }
    let mut n = 1usize;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| bad(format!("tensor {}: negative dimension {d}", t.name)))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= limits.max_elements)
            .ok_or_else(|| {
                bad(format!(
                    "tensor {}: shape {:?} is over the limit of {} values",
                    t.name, t.dims, limits.max_elements
                ))
            })?;
        dims.push(d);
    }
    let raw = if t.is_external {
        Some(ext.read(t)?)
    } else {
        t.raw
    };
    let width = match t.data_type {
        proto::FLOAT | proto::INT32 => 4,
        proto::INT64 | proto::DOUBLE => 8,
        other => {
            return Err(bad(format!(
                "tensor {} is {}; cnnkit reads float, double, int32 and int64 tensors",
                t.name,
                proto::type_name(other)
            )));
        }
    };
    let count = |got: usize| -> Result<()> {
        if got == n {
            Ok(())
        } else {
            Err(bad(format!(
                "tensor {}: {got} values for shape {:?}",
                t.name, t.dims
            )))
        }
    };
    let data = if let Some(raw) = raw {
        if raw.len() != n * width {
            return Err(bad(format!(
                "tensor {}: {} bytes of data for shape {:?} of {}",
                t.name,
                raw.len(),
                t.dims,
                proto::type_name(t.data_type)
            )));
        }
        let w4 = || raw.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let w8 = || {
            raw.chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        };
        match t.data_type {
            proto::FLOAT => Data::F32(w4().map(f32::from_le_bytes).collect()),
            proto::DOUBLE => Data::F32(w8().map(|b| f64::from_bits(b) as f32).collect()),
            proto::INT32 => Data::I64(w4().map(|b| i64::from(i32::from_le_bytes(b))).collect()),
            _ => Data::I64(w8().map(|b| b as i64).collect()),
        }
    } else {
        match t.data_type {
            proto::FLOAT => {
                count(t.floats.len())?;
                Data::F32(t.floats.clone())
            }
            proto::DOUBLE => {
                count(t.doubles.len())?;
                Data::F32(t.doubles.iter().map(|&x| x as f32).collect())
            }
            proto::INT32 => {
                count(t.int32s.len())?;
                Data::I64(t.int32s.iter().map(|&x| i64::from(x)).collect())
            }
            _ => {
                count(t.int64s.len())?;
                Data::I64(t.int64s.clone())
            }
        }
    };
    Ok(Const { dims, data })
}

struct Importer<'g, 'a> {
    graph: &'g GraphProto<'a>,
    builder: GraphBuilder,
    values: HashMap<String, Value>,
    tensors: Vec<(String, Tensor)>,
    /// Node names taken.
    used: HashSet<String>,
    /// Value name → the nodes that read it.
    consumers: HashMap<&'g str, Vec<usize>>,
    /// ONNX nodes already taken in by a pattern.
    done: Vec<bool>,
    /// Value name → the node that computes it.
    producer: HashMap<&'g str, usize>,
    /// Nodes made so far (for names of unnamed nodes).
    count: usize,
    /// The input's batch size where the file fixes it (an export without a dynamic batch writes
    /// it into its reshapes).
    batch: Option<i64>,
}

/// An attribute's value.
fn attr<'n, 'a>(node: &'n NodeProto<'a>, name: &str) -> Option<&'n Attribute<'a>> {
    node.attributes.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto<'_>, name: &str, default: i64) -> Result<i64> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) => {
            a.i.ok_or_else(|| at(node, format!("attribute {name} is not an integer")))
        }
    }
}

fn attr_float(node: &NodeProto<'_>, name: &str, default: f32) -> Result<f32> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) => {
            a.f.ok_or_else(|| at(node, format!("attribute {name} is not a float")))
        }
    }
}

fn attr_ints(node: &NodeProto<'_>, name: &str) -> Result<Option<Vec<i64>>> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if a.kind == proto::ATTR_INTS || (a.kind == 0 && a.i.is_none()) => {
            Ok(Some(a.ints.clone()))
        }
        Some(_) => Err(at(
            node,
            format!("attribute {name} is not a list of integers"),
        )),
    }
}

fn attr_str(node: &NodeProto<'_>, name: &str, default: &str) -> Result<String> {
    match attr(node, name) {
        None => Ok(default.to_owned()),
        Some(a) => {
            a.s.and_then(|s| std::str::from_utf8(s).ok())
                .map(str::to_owned)
                .ok_or_else(|| at(node, format!("attribute {name} is not a string")))
        }
    }
}

/// A pair of per-axis sizes from a 2-element attribute (`None`: absent).
fn pair(node: &NodeProto<'_>, name: &str, default: usize) -> Result<[usize; 2]> {
    match attr_ints(node, name)? {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|&x| (0..1 << 20).contains(&x)) => {
            Ok([v[0] as usize, v[1] as usize])
        }
        Some(v) => Err(at(
            node,
            format!("{name} {v:?}: cnnkit needs two non-negative values (2-D)"),
        )),
    }
}

/// Symmetric 2-D padding from `pads` (`[top, left, bottom, right]`) and `auto_pad`.
fn pads(node: &NodeProto<'_>) -> Result<[usize; 2]> {
    let auto = attr_str(node, "auto_pad", "NOTSET")?;
    match auto.as_str() {
        "NOTSET" => {}
        "VALID" => return Ok([0, 0]),
        other => {
            return Err(at(
                node,
                format!("auto_pad {other} is not supported (NOTSET and VALID are)"),
            ));
        }
    }
    match attr_ints(node, "pads")? {
        None => Ok([0, 0]),
        Some(p) if p.len() == 4 && p.iter().all(|&x| (0..1 << 20).contains(&x)) => {
            if p[0] != p[2] || p[1] != p[3] {
                return Err(at(
                    node,
                    format!("pads {p:?} differ between the two sides; cnnkit pads symmetrically"),
                ));
            }
            Ok([p[0] as usize, p[1] as usize])
        }
        Some(p) => Err(at(
            node,
            format!("pads {p:?}: cnnkit needs four non-negative values (2-D)"),
        )),
    }
}

fn refuse_attrs(node: &NodeProto<'_>, known: &[&str]) -> Result<()> {
    for a in &node.attributes {
        if !known.contains(&a.name.as_str()) {
            return Err(at(
                node,
                format!(
                    "attribute {} is not supported (known: {})",
                    a.name,
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

impl<'g, 'a> Importer<'g, 'a> {
    /// Converts the nodes the output depends on, in the file's order (which ONNX requires to be
    /// topological).
    fn run(&mut self, output: &str) -> Result<()> {
        let nodes = &self.graph.nodes;
        // Which nodes the output needs, walking back from it.
        let producer = &mut self.producer;
        for (i, n) in nodes.iter().enumerate() {
            for o in &n.outputs {
                if !o.is_empty() && producer.insert(o.as_str(), i).is_some() {
                    return Err(at(n, format!("output {o} is computed by two nodes")));
                }
            }
        }
        let mut needed = vec![false; nodes.len()];
        let mut stack: Vec<&str> = vec![output];
        while let Some(v) = stack.pop() {
            if let Some(&i) = self.producer.get(v)
                && !needed[i]
            {
                needed[i] = true;
                stack.extend(
                    nodes[i]
                        .inputs
                        .iter()
                        .map(String::as_str)
                        .filter(|s| !s.is_empty()),
                );
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            if needed[i] {
                for inp in &n.inputs {
                    self.consumers.entry(inp.as_str()).or_default().push(i);
                }
            }
        }
        for consumers in self.consumers.values_mut() {
            consumers.dedup();
        }
        for (i, n) in nodes.iter().enumerate() {
            // Every needed node has an output (that is how it is needed); every operator but a
            // constant reads something.
            if needed[i] && n.op_type != "Constant" && n.inputs.first().is_none_or(String::is_empty)
            {
                return Err(at(n, "has no input"));
            }
        }
        // Constants read nothing: known before any pattern looks ahead at them.
        for (i, n) in nodes.iter().enumerate() {
            if needed[i] && n.op_type == "Constant" && n.domain.is_empty() {
                let c = self.constant_node(n)?;
                self.set(n, Value::Const(c));
                self.done[i] = true;
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            if !needed[i] || self.done[i] {
                continue;
            }
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                return Err(at(
                    n,
                    format!(
                        "domain {} is not supported (only ONNX's own operators are)",
                        n.domain
                    ),
                ));
            }
            for inp in &n.inputs {
                if !inp.is_empty() && !self.values.contains_key(inp) {
                    return Err(at(
                        n,
                        format!(
                            "input {inp} is not computed before this node (the graph is not in topological order, or has a cycle)"
                        ),
                    ));
                }
            }
            self.node(i)?;
        }
        Ok(())
    }

    fn input(&self, node: &NodeProto<'_>, k: usize) -> Result<&Value> {
        match node.inputs.get(k).filter(|s| !s.is_empty()) {
            Some(name) => self
                .values
                .get(name)
                .ok_or_else(|| at(node, format!("input {name} is unknown"))),
            None => Err(at(node, format!("input {k} is missing"))),
        }
    }

    fn opt_const(&self, node: &NodeProto<'_>, k: usize) -> Result<Option<&Const>> {
        match node.inputs.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(_) => match self.input(node, k)? {
                Value::Const(c) => Ok(Some(c)),
                Value::Tensor { .. } => Err(at(
                    node,
                    format!("input {k} must be a constant (an initializer)"),
                )),
            },
        }
    }

    fn constant(&self, node: &NodeProto<'_>, k: usize) -> Result<&Const> {
        self.opt_const(node, k)?
            .ok_or_else(|| at(node, format!("input {k} is missing")))
    }

    fn tensor(&self, node: &NodeProto<'_>, k: usize) -> Result<(NodeId, Shape3, usize)> {
        match self.input(node, k)? {
            Value::Tensor { id, shape, rank } => Ok((*id, *shape, *rank)),
            Value::Const(_) => Err(at(
                node,
                format!("input {k} is a constant where cnnkit needs a computed tensor"),
            )),
        }
    }

    /// The only reader of value `v`, if exactly one node reads it.
    fn sole_reader(&self, v: &str) -> Option<usize> {
        match self.consumers.get(v).map(Vec::as_slice) {
            Some([i]) if !self.graph.outputs.iter().any(|o| o.name == v) => Some(*i),
            _ => None,
        }
    }

    /// A fresh node name: `preferred` if it is free and valid, or the ONNX node's name made valid.
    fn name_for(&mut self, node: &NodeProto<'_>, preferred: Option<&str>) -> String {
        self.count += 1;
        let ok = |s: &str| !s.is_empty() && s.chars().all(valid_name_char);
        let base = match preferred {
            Some(p) if ok(p) && !self.used.contains(p) => p.to_owned(),
            _ => {
                let s: String = node
                    .name
                    .trim_start_matches('/')
                    .chars()
                    .map(|c| {
                        if c == '/' {
                            '.'
                        } else if valid_name_char(c) {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if s.is_empty() {
                    format!("{}_{}", node.op_type.to_ascii_lowercase(), self.count)
                } else {
                    s
                }
            }
        };
        let mut name = base.clone();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }

    fn set(&mut self, node: &NodeProto<'_>, v: Value) {
        if let Some(o) = node.outputs.first() {
            self.values.insert(o.clone(), v);
        }
    }

    /// Adds layer `spec` reading input 0 of `node` (or `from`), with its parameters.
    fn layer(
        &mut self,
        node: &NodeProto<'_>,
        spec: LayerSpec,
        from: NodeId,
        rank: usize,
        params: Vec<(&str, Const)>,
        preferred: Option<String>,
    ) -> Result<Value> {
        let name = self.name_for(node, preferred.as_deref());
        let id = self
            .builder
            .layer(&name, &spec, from)
            .map_err(|e| at(node, e))?;
        for (p, c) in params {
            let data = match c.data {
                Data::F32(v) => v,
                Data::I64(_) => {
                    return Err(at(node, format!("parameter {p} is an integer tensor")));
                }
            };
            self.tensors.push((
                format!("{name}.{p}"),
                Tensor {
                    shape: c.dims,
                    data: TensorData::F32(data),
                },
            ));
        }
        let shape = self.builder.shape(id)?;
        Ok(Value::Tensor { id, shape, rank })
    }

    /// The state-dict prefix of the initializer `x.weight` that input `k` holds (through the
    /// `Identity`, `Unsqueeze` or `Reshape` that exporters put between): `x`.
    fn prefix(&self, node: &NodeProto<'_>, k: usize) -> Option<String> {
        let mut v = node.inputs.get(k)?.as_str();
        for _ in 0..8 {
            match self.producer.get(v).map(|&p| &self.graph.nodes[p]) {
                Some(p)
                    if matches!(
                        p.op_type.as_str(),
                        "Identity" | "Unsqueeze" | "Squeeze" | "Reshape" | "Cast"
                    ) =>
                {
                    v = p.inputs.first()?.as_str();
                }
                _ => break,
            }
        }
        v.strip_suffix(".weight").map(str::to_owned)
    }

    fn activation(&mut self, i: usize, act: Activation) -> Result<()> {
        let node = &self.graph.nodes[i];
        let (from, _, rank) = self.tensor(node, 0)?;
        let v = self.layer(
            node,
            LayerSpec::Activation(act),
            from,
            rank,
            Vec::new(),
            None,
        )?;
        self.set(node, v);
        Ok(())
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        let all_const = node
            .inputs
            .iter()
            .filter(|s| !s.is_empty())
            .all(|s| matches!(self.values.get(s), Some(Value::Const(_))));
        let op = node.op_type.as_str();
        if op == "Constant" {
            let c = self.constant_node(node)?;
            self.set(node, Value::Const(c));
            return Ok(());
        }
        if op == "Shape" {
            let (_, s, rank) = self.tensor(node, 0)?;
            let full: Vec<i64> = if rank == 4 {
                vec![BATCH, s[0] as i64, s[1] as i64, s[2] as i64]
            } else {
                vec![BATCH, s[0] as i64]
            };
            let c = Const {
                dims: vec![full.len()],
                data: Data::I64(full),
            };
            let c = slice_const(
                node,
                &c,
                attr_int(node, "start", 0)?,
                attr_int(node, "end", i64::MAX)?,
            )?;
            self.set(node, Value::Const(c));
            return Ok(());
        }
        if all_const && !node.inputs.is_empty() {
            let c = self.fold(node)?;
            self.set(node, Value::Const(c));
            return Ok(());
        }
        match op {
            "Identity" => {
                let v = self.input(node, 0)?.clone();
                self.set(node, v);
            }
            "Dropout" => {
                let v = self.input(node, 0)?.clone();
                let p = match self.opt_const(node, 1)? {
                    Some(c) => c
                        .scalar()
                        .ok_or_else(|| at(node, "ratio is not a scalar"))?,
                    None => 0.5,
                };
                if let Some(c) = self.opt_const(node, 2)?
                    && c.ints().first().is_some_and(|&t| t != 0)
                {
                    return Err(at(
                        node,
                        "training_mode=true: export the model in evaluation mode",
                    ));
                }
                // An exported dropout is the identity; its rate is kept for fine-tuning.
                let v = match v {
                    Value::Tensor { id, rank, .. } if p > 0.0 && p < 1.0 => {
                        self.layer(node, LayerSpec::Dropout { p }, id, rank, Vec::new(), None)?
                    }
                    v => v,
                };
                self.set(node, v);
            }
            "Relu" => self.activation(i, Activation::Relu)?,
            "Sigmoid" => {
                // x · σ(x): SiLU.
                let x = node.inputs[0].as_str();
                if let Some(j) = self.sole_reader(&node.outputs[0]) {
                    let m = &self.graph.nodes[j];
                    if m.op_type == "Mul"
                        && m.inputs.len() == 2
                        && m.inputs.iter().any(|s| s == x)
                        && m.inputs.iter().any(|s| s == &node.outputs[0])
                    {
                        let (from, _, rank) = self.tensor(node, 0)?;
                        let v = self.layer(
                            m,
                            LayerSpec::Activation(Activation::Silu),
                            from,
                            rank,
                            Vec::new(),
                            None,
                        )?;
                        self.done[j] = true;
                        self.set(m, v);
                        return Ok(());
                    }
                }
                self.activation(i, Activation::Sigmoid)?;
            }
            "Tanh" => self.activation(i, Activation::Tanh)?,
            "LeakyRelu" => {
                refuse_attrs(node, &["alpha"])?;
                self.activation(
                    i,
                    Activation::LeakyRelu {
                        slope: attr_float(node, "alpha", 0.01)?,
                    },
                )?
            }
            "Elu" => {
                refuse_attrs(node, &["alpha"])?;
                self.activation(
                    i,
                    Activation::Elu {
                        alpha: attr_float(node, "alpha", 1.0)?,
                    },
                )?
            }
            // ONNX's softplus is exact; cnnkit's (PyTorch's) is linear above 20, where the two
            // differ by less than 2e-9.
            "Softplus" => self.activation(
                i,
                Activation::Softplus {
                    beta: 1.0,
                    threshold: 20.0,
                },
            )?,
            "HardSwish" => self.activation(i, Activation::Hardswish)?,
            "HardSigmoid" => {
                let (a, b) = (
                    attr_float(node, "alpha", 0.2)?,
                    attr_float(node, "beta", 0.5)?,
                );
                if (a - 1.0 / 6.0).abs() > 1e-6 || (b - 0.5).abs() > 1e-6 {
                    return Err(at(
                        node,
                        format!(
                            "alpha {a}, beta {b}: cnnkit has PyTorch's hard sigmoid (alpha 1/6, beta 0.5)"
                        ),
                    ));
                }
                self.activation(i, Activation::Hardsigmoid)?
            }
            "Gelu" => {
                let act = match attr_str(node, "approximate", "none")?.as_str() {
                    "none" => Activation::Gelu,
                    "tanh" => Activation::GeluTanh,
                    other => return Err(at(node, format!("approximate={other} is not supported"))),
                };
                self.activation(i, act)?
            }
            "Clip" => {
                let lo = self
                    .opt_const(node, 1)?
                    .map(|c| c.scalar().ok_or_else(|| at(node, "min is not a scalar")))
                    .transpose()?;
                let hi = self
                    .opt_const(node, 2)?
                    .map(|c| c.scalar().ok_or_else(|| at(node, "max is not a scalar")))
                    .transpose()?;
                let act = match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Activation::Relu6,
                    (Some(0.0), None) => Activation::Relu,
                    _ => {
                        return Err(at(
                            node,
                            format!(
                                "Clip to [{lo:?}, {hi:?}]: cnnkit has ReLU6 ([0, 6]) and ReLU ([0, ∞))"
                            ),
                        ));
                    }
                };
                self.activation(i, act)?
            }
            "PRelu" => {
                let (from, s, rank) = self.tensor(node, 0)?;
                let slope = self.constant(node, 1)?.clone();
                let per_channel = match slope.len() {
                    1 => false,
                    n if n == s[0] => true,
                    n => return Err(at(node, format!("{n} slopes for {} channels", s[0]))),
                };
                let dims = if per_channel { vec![s[0]] } else { vec![1] };
                let c = Const {
                    dims,
                    data: slope.data,
                };
                let pre = self.prefix(node, 1);
                let v = self.layer(
                    node,
                    LayerSpec::PRelu { per_channel },
                    from,
                    rank,
                    vec![("weight", c)],
                    pre,
                )?;
                self.set(node, v);
            }
            "Softmax" => {
                let (from, _, rank) = self.tensor(node, 0)?;
                let axis = attr_int(node, "axis", -1)?;
                let axis = if axis < 0 { axis + rank as i64 } else { axis };
                if axis != 1 {
                    return Err(at(
                        node,
                        format!("axis {axis}: cnnkit's softmax is over the channels (axis 1)"),
                    ));
                }
                let v = self.layer(node, LayerSpec::Softmax, from, rank, Vec::new(), None)?;
                self.set(node, v);
            }
            "Div" => self.gelu(i)?,
            "Conv" => self.conv(i)?,
            "ConvTranspose" => self.conv_transpose(i)?,
            "BatchNormalization" => self.batch_norm(i)?,
            "MaxPool" | "AveragePool" => self.pool(i)?,
            "LayerNormalization" => {
                refuse_attrs(node, &["axis", "epsilon", "stash_type"])?;
                let (from, s, rank) = self.tensor(node, 0)?;
                let axis = attr_int(node, "axis", -1)?;
                if rank != 4 || (axis != 1 && axis != -3) {
                    return Err(at(
                        node,
                        format!(
                            "axis {axis}: cnnkit normalises each sample's C·H·W values (axis 1 of N×C×H×W)"
                        ),
                    ));
                }
                let mut params = Vec::new();
                for (k, p) in [(1, "weight"), (2, "bias")] {
                    let c = self.constant(node, k)?.clone();
                    if c.len() != s[0] * s[1] * s[2] {
                        return Err(at(
                            node,
                            format!("{p} has {} values for a sample of {s:?}", c.len()),
                        ));
                    }
                    params.push((
                        p,
                        Const {
                            dims: s.to_vec(),
                            data: c.data,
                        },
                    ));
                }
                let eps = attr_float(node, "epsilon", 1e-5)?;
                let pre = self.prefix(node, 1);
                let v = self.layer(node, LayerSpec::LayerNorm { eps }, from, 4, params, pre)?;
                self.set(node, v);
            }
            "ReduceMean" => {
                // The mean over height and width (the newer exporter's adaptive_avg_pool2d(1)).
                refuse_attrs(node, &["axes", "keepdims", "noop_with_empty_axes"])?;
                let (from, _, rank) = self.tensor(node, 0)?;
                let axes = match (attr_ints(node, "axes")?, self.opt_const(node, 1)?) {
                    (Some(a), _) => a,
                    (None, Some(c)) => c.ints(),
                    (None, None) => Vec::new(),
                };
                let mut axes: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + rank as i64 } else { a })
                    .collect();
                axes.sort_unstable();
                if rank != 4 || axes != [2, 3] {
                    return Err(at(
                        node,
                        format!(
                            "a mean over axes {axes:?}: cnnkit averages over height and width (axes 2 and 3 of N×C×H×W)"
                        ),
                    ));
                }
                let spec = LayerSpec::AdaptiveAvgPool2d { out: [1, 1] };
                let v = self.layer(node, spec, from, 4, Vec::new(), None)?;
                // Without keepdims the result is N×C: the same values, read as flat.
                let v = match v {
                    Value::Tensor { id, shape, .. } if attr_int(node, "keepdims", 1)? == 0 => {
                        Value::Tensor { id, shape, rank: 2 }
                    }
                    v => v,
                };
                self.set(node, v);
            }
            "GlobalAveragePool" => {
                let (from, _, rank) = self.tensor(node, 0)?;
                if rank != 4 {
                    return Err(at(node, "needs an N×C×H×W input"));
                }
                let v = self.layer(
                    node,
                    LayerSpec::AdaptiveAvgPool2d { out: [1, 1] },
                    from,
                    4,
                    Vec::new(),
                    None,
                )?;
                self.set(node, v);
            }
            "Flatten" => {
                let (from, s, rank) = self.tensor(node, 0)?;
                let axis = attr_int(node, "axis", 1)?;
                if axis != 1 && axis != 1 - rank as i64 {
                    return Err(at(
                        node,
                        format!("axis {axis}: cnnkit flattens each sample (axis 1)"),
                    ));
                }
                self.flatten(node, from, s, rank)?;
            }
            "Reshape" => {
                let (from, s, rank) = self.tensor(node, 0)?;
                let target = self.constant(node, 1)?.ints();
                let per_sample = s[0] * s[1] * s[2];
                let fixed = self.batch;
                let batch_like = |d: i64| d == BATCH || d == 0 || d == -1 || Some(d) == fixed;
                let ok = match target[..] {
                    [b, f] => {
                        batch_like(b)
                            && (f == -1 || f == per_sample as i64)
                            && !(b == -1 && f == -1)
                    }
                    _ => false,
                };
                if !ok {
                    let shown: Vec<String> = target
                        .iter()
                        .map(|&d| {
                            if d == BATCH {
                                "N".into()
                            } else {
                                d.to_string()
                            }
                        })
                        .collect();
                    return Err(at(
                        node,
                        format!(
                            "reshape of {s:?} to [{}]: cnnkit reshapes only to N×features (a flatten)",
                            shown.join(", ")
                        ),
                    ));
                }
                self.flatten(node, from, s, rank)?;
            }
            "Gemm" | "MatMul" => self.dense(i)?,
            "Add" | "Sum" => {
                let mut ids = Vec::new();
                let mut shape = None;
                let mut ranks = Vec::new();
                for k in 0..node.inputs.len() {
                    let (id, s, rank) = self.tensor(node, k).map_err(|_| {
                        at(node, "adds a constant to a tensor; cnnkit adds constants only as a bias after MatMul")
                    })?;
                    ids.push(id);
                    ranks.push(rank);
                    shape = Some((s, rank));
                }
                same_rank(node, &ranks)?;
                if ids.len() == 1 {
                    let v = self.input(node, 0)?.clone();
                    self.set(node, v);
                    return Ok(());
                }
                let name = self.name_for(node, None);
                let id = self.builder.add(&name, &ids).map_err(|e| at(node, e))?;
                let (s, rank) = shape.ok_or_else(|| at(node, "no inputs"))?;
                self.set(node, Value::Tensor { id, shape: s, rank });
            }
            "Mul" => {
                let (a, _, rank) = self.tensor(node, 0)?;
                let (b, _, rank_b) = self.tensor(node, 1).map_err(|_| {
                    at(node, "multiplies by a constant; cnnkit multiplies tensors (gates), and constants only inside GELU")
                })?;
                same_rank(node, &[rank, rank_b])?;
                let name = self.name_for(node, None);
                let id = self.builder.mul(&name, a, b).map_err(|e| at(node, e))?;
                let shape = self.builder.shape(id)?;
                self.set(node, Value::Tensor { id, shape, rank });
            }
            "Concat" => {
                let mut ids = Vec::new();
                let mut ranks = Vec::new();
                for k in 0..node.inputs.len() {
                    let (id, _, r) = self.tensor(node, k)?;
                    ids.push(id);
                    ranks.push(r);
                }
                same_rank(node, &ranks)?;
                let rank = ranks.first().copied().unwrap_or(4);
                let axis = attr_int(node, "axis", 0)?;
                if axis != 1 && axis != 1 - rank as i64 {
                    return Err(at(
                        node,
                        format!("axis {axis}: cnnkit concatenates channels (axis 1)"),
                    ));
                }
                if ids.len() == 1 {
                    // A concatenation of one tensor (DenseNet's first layer) is that tensor.
                    let v = self.input(node, 0)?.clone();
                    self.set(node, v);
                    return Ok(());
                }
                let name = self.name_for(node, None);
                let id = self.builder.concat(&name, &ids).map_err(|e| at(node, e))?;
                let shape = self.builder.shape(id)?;
                self.set(node, Value::Tensor { id, shape, rank });
            }
            "Resize" => self.resize(i)?,
            "Upsample" => {
                return Err(at(
                    node,
                    "Upsample left ONNX in opset 10; cnnkit reads Resize",
                ));
            }
            _ => {
                return Err(at(
                    node,
                    format!("operator {op} is not supported; cnnkit reads {SUPPORTED}"),
                ));
            }
        }
        Ok(())
    }

    fn flatten(
        &mut self,
        node: &NodeProto<'_>,
        from: NodeId,
        s: Shape3,
        rank: usize,
    ) -> Result<()> {
        let v = if rank == 2 || (s[1] == 1 && s[2] == 1) {
            // Already N×F (or N×C×1×1, which cnnkit's flat layers read as it is).
            Value::Tensor {
                id: from,
                shape: s,
                rank: 2,
            }
        } else {
            self.layer(node, LayerSpec::Flatten, from, 2, Vec::new(), None)?
        };
        self.set(node, v);
        Ok(())
    }

    /// `Div(x, √2) → Erf → Add(1) → Mul(x) → Mul(0.5)`: GELU as `torch.onnx.export` writes it
    /// before opset 20.
    fn gelu(&mut self, i: usize) -> Result<()> {
        let nodes = &self.graph.nodes;
        let div = &nodes[i];
        let unsupported = || {
            at(
                div,
                "division is supported only inside GELU's x·(1 + erf(x/√2))/2",
            )
        };
        let x = div.inputs.first().ok_or_else(unsupported)?;
        let is = |k: Option<&Value>, want: f32| matches!(k, Some(Value::Const(c)) if c.scalar().is_some_and(|v| (v - want).abs() < 1e-4 * want.abs().max(1.0)));
        if !is(
            div.inputs.get(1).and_then(|s| self.values.get(s)),
            std::f32::consts::SQRT_2,
        ) {
            return Err(unsupported());
        }
        let next = |from: &str, op: &str| -> Option<usize> {
            self.sole_reader(from).filter(|&j| nodes[j].op_type == op)
        };
        let erf = next(&div.outputs[0], "Erf").ok_or_else(unsupported)?;
        let add = next(&nodes[erf].outputs[0], "Add").ok_or_else(unsupported)?;
        let other = |j: usize, v: &str| nodes[j].inputs.iter().find(|s| *s != v).cloned();
        if !is(
            other(add, &nodes[erf].outputs[0]).and_then(|s| self.values.get(&s)),
            1.0,
        ) {
            return Err(unsupported());
        }
        let m1 = next(&nodes[add].outputs[0], "Mul").ok_or_else(unsupported)?;
        if other(m1, &nodes[add].outputs[0]).as_deref() != Some(x.as_str()) {
            return Err(unsupported());
        }
        let m2 = next(&nodes[m1].outputs[0], "Mul").ok_or_else(unsupported)?;
        if !is(
            other(m2, &nodes[m1].outputs[0]).and_then(|s| self.values.get(&s)),
            0.5,
        ) {
            return Err(unsupported());
        }
        let (from, _, rank) = self.tensor(div, 0)?;
        let v = self.layer(
            div,
            LayerSpec::Activation(Activation::Gelu),
            from,
            rank,
            Vec::new(),
            None,
        )?;
        for j in [erf, add, m1, m2] {
            self.done[j] = true;
        }
        self.set(&nodes[m2], v);
        Ok(())
    }

    /// A convolution's input, weight (2-D), group count and bias, checked against each other.
    #[allow(clippy::type_complexity)]
    fn conv_parts(
        &self,
        node: &NodeProto<'_>,
        extra: &[&str],
    ) -> Result<(NodeId, Shape3, Const, usize, Option<Const>)> {
        let mut known = vec![
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ];
        known.extend_from_slice(extra);
        refuse_attrs(node, &known)?;
        let (from, s, _) = self.tensor(node, 0)?;
        let w = self.constant(node, 1)?.clone();
        if w.dims.len() != 4 {
            return Err(at(
                node,
                format!("weight of shape {:?}: cnnkit has 2-D convolutions", w.dims),
            ));
        }
        if let Some(k) = attr_ints(node, "kernel_shape")?
            && k != [w.dims[2] as i64, w.dims[3] as i64]
        {
            return Err(at(
                node,
                format!(
                    "kernel_shape {k:?} differs from the weight's {:?}",
                    &w.dims[2..]
                ),
            ));
        }
        let groups = attr_int(node, "group", 1)?;
        let groups = usize::try_from(groups)
            .ok()
            .filter(|&g| g >= 1)
            .ok_or_else(|| at(node, format!("group {groups}")))?;
        Ok((from, s, w, groups, self.opt_const(node, 2)?.cloned()))
    }

    fn conv(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        let (from, s, w, groups, bias) = self.conv_parts(node, &[])?;
        if w.dims[1] * groups != s[0] {
            return Err(at(
                node,
                format!(
                    "weight of shape {:?} with {groups} groups for {} input channels",
                    w.dims, s[0]
                ),
            ));
        }
        let spec = LayerSpec::Conv2d {
            out: w.dims[0],
            kernel: [w.dims[2], w.dims[3]],
            stride: pair(node, "strides", 1)?,
            padding: pads(node)?,
            dilation: pair(node, "dilations", 1)?,
            groups,
            bias: bias.is_some(),
        };
        let mut params = vec![("weight", w)];
        params.extend(bias.map(|b| ("bias", b)));
        let pre = self.prefix(node, 1);
        let v = self.layer(node, spec, from, 4, params, pre)?;
        self.set(node, v);
        Ok(())
    }

    fn conv_transpose(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        let (from, s, w, groups, bias) =
            self.conv_parts(node, &["output_padding", "output_shape"])?;
        if w.dims[0] != s[0] {
            return Err(at(
                node,
                format!("weight of shape {:?} for {} input channels", w.dims, s[0]),
            ));
        }
        let spec = LayerSpec::ConvTranspose2d {
            out: w.dims[1] * groups,
            kernel: [w.dims[2], w.dims[3]],
            stride: pair(node, "strides", 1)?,
            padding: pads(node)?,
            output_padding: pair(node, "output_padding", 0)?,
            dilation: pair(node, "dilations", 1)?,
            groups,
            bias: bias.is_some(),
        };
        let mut params = vec![("weight", w)];
        params.extend(bias.map(|b| ("bias", b)));
        let pre = self.prefix(node, 1);
        let v = self.layer(node, spec, from, 4, params, pre)?;
        if let Some(os) = attr_ints(node, "output_shape")? {
            let Value::Tensor { shape, .. } = &v else {
                return Err(at(node, "made no tensor (internal)"));
            };
            let want = &os[os.len().saturating_sub(2)..];
            if want != [shape[1] as i64, shape[2] as i64] {
                return Err(at(
                    node,
                    format!("output_shape {os:?} differs from the {shape:?} the padding gives"),
                ));
            }
        }
        self.set(node, v);
        Ok(())
    }

    fn batch_norm(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        refuse_attrs(node, &["epsilon", "momentum", "training_mode", "spatial"])?;
        let (from, s, rank) = self.tensor(node, 0)?;
        let eps = attr_float(node, "epsilon", 1e-5)?;
        let m = attr_float(node, "momentum", 0.9)?;
        let mut params = Vec::new();
        for (k, name) in [
            (1, "weight"),
            (2, "bias"),
            (3, "running_mean"),
            (4, "running_var"),
        ] {
            let c = self.constant(node, k)?.clone();
            if c.len() != s[0] {
                return Err(at(
                    node,
                    format!("{name} has {} values for {} channels", c.len(), s[0]),
                ));
            }
            params.push((
                name,
                Const {
                    dims: vec![s[0]],
                    data: c.data,
                },
            ));
        }
        // ONNX keeps `momentum` of the old statistics, PyTorch gives it to the new ones.
        let spec = LayerSpec::BatchNorm2d {
            eps,
            momentum: Some(momentum_of(m)),
        };
        let pre = self.prefix(node, 1);
        let v = self.layer(node, spec, from, rank, params, pre)?;
        self.set(node, v);
        Ok(())
    }

    fn pool(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        let max = node.op_type == "MaxPool";
        refuse_attrs(
            node,
            &[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
                "storage_order",
            ],
        )?;
        let (from, _, _) = self.tensor(node, 0)?;
        if attr_int(node, "ceil_mode", 0)? != 0 {
            return Err(at(
                node,
                "ceil_mode=1 is not supported (cnnkit pools with floor)",
            ));
        }
        if pair(node, "dilations", 1)? != [1, 1] {
            return Err(at(node, "dilated pooling is not supported"));
        }
        if node.outputs.len() > 1 && !node.outputs[1].is_empty() {
            return Err(at(node, "the indices output is not supported"));
        }
        let window = pair(node, "kernel_shape", 0)?;
        let stride = pair(node, "strides", 1)?;
        let padding = pads(node)?;
        let spec = if max {
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
                count_include_pad: attr_int(node, "count_include_pad", 0)? != 0,
            }
        };
        let v = self.layer(node, spec, from, 4, Vec::new(), None)?;
        self.set(node, v);
        Ok(())
    }

    /// `Gemm(x, W, b)` (with `transB=1`, `torch.nn.Linear`; or `transB=0`), or `MatMul(x, W)`
    /// followed by `Add(·, b)`.
    fn dense(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        let (from, s, _) = self.tensor(node, 0)?;
        let w = self.constant(node, 1)?.clone();
        let fin = s[0] * s[1] * s[2];
        let gemm = node.op_type == "Gemm";
        if gemm {
            refuse_attrs(node, &["alpha", "beta", "transA", "transB"])?;
            if attr_int(node, "transA", 0)? != 0
                || attr_float(node, "alpha", 1.0)? != 1.0
                || attr_float(node, "beta", 1.0)? != 1.0
            {
                return Err(at(
                    node,
                    "cnnkit reads Gemm with transA=0, alpha=1 and beta=1 (a linear layer)",
                ));
            }
        }
        if s[1] != 1 || s[2] != 1 {
            return Err(at(
                node,
                format!("input of shape {s:?}: a linear layer needs N×features (flatten first)"),
            ));
        }
        let trans = gemm && attr_int(node, "transB", 0)? != 0;
        if w.dims.len() != 2 {
            return Err(at(
                node,
                format!("weight of shape {:?} is not a matrix", w.dims),
            ));
        }
        let (out, inp) = if trans {
            (w.dims[0], w.dims[1])
        } else {
            (w.dims[1], w.dims[0])
        };
        if inp != fin {
            return Err(at(
                node,
                format!("weight of shape {:?} for {fin} input features", w.dims),
            ));
        }
        let weight = if trans {
            w
        } else {
            // [in, out] → [out, in].
            let v = w.floats();
            let t: Vec<f32> = (0..out)
                .flat_map(|o| (0..inp).map(move |k| (o, k)))
                .map(|(o, k)| v[k * out + o])
                .collect();
            Const {
                dims: vec![out, inp],
                data: Data::F32(t),
            }
        };
        let mut bias = if gemm {
            self.opt_const(node, 2)?.cloned()
        } else {
            None
        };
        let mut last = node;
        if !gemm
            && let Some(j) = self.sole_reader(&node.outputs[0])
            && self.graph.nodes[j].op_type == "Add"
        {
            let add = &self.graph.nodes[j];
            let other = add.inputs.iter().find(|s| *s != &node.outputs[0]);
            if let Some(Value::Const(c)) = other.and_then(|s| self.values.get(s)) {
                bias = Some(c.clone());
                self.done[j] = true;
                last = add;
            }
        }
        if let Some(b) = &mut bias {
            if b.len() != out {
                return Err(at(
                    node,
                    format!(
                        "bias of {} values for {out} outputs (broadcast biases are not supported)",
                        b.len()
                    ),
                ));
            }
            b.dims = vec![out];
        }
        let mut params = vec![("weight", weight)];
        let has_bias = bias.is_some();
        params.extend(bias.map(|b| ("bias", b)));
        let pre = self.prefix(node, 1);
        let v = self.layer(
            node,
            LayerSpec::Dense {
                out,
                bias: has_bias,
            },
            from,
            2,
            params,
            pre,
        )?;
        self.set(last, v);
        Ok(())
    }

    fn resize(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        refuse_attrs(
            node,
            &[
                "coordinate_transformation_mode",
                "cubic_coeff_a",
                "mode",
                "nearest_mode",
                "exclude_outside",
                "extrapolation_value",
                "antialias",
                "keep_aspect_ratio_policy",
                "axes",
            ],
        )?;
        let (from, s, rank) = self.tensor(node, 0)?;
        if rank != 4 {
            return Err(at(node, "needs an N×C×H×W input"));
        }
        let scales = self
            .opt_const(node, 2)?
            .filter(|c| c.len() > 0)
            .map(Const::floats);
        let sizes = self
            .opt_const(node, 3)?
            .filter(|c| c.len() > 0)
            .map(Const::ints);
        let scale = match (scales, sizes) {
            (Some(sc), None) if sc.len() == 4 && sc[0] == 1.0 && sc[1] == 1.0 => [sc[2], sc[3]],
            (None, Some(sz)) if sz.len() == 4 && sz[1] == s[0] as i64 => {
                [sz[2] as f32 / s[1] as f32, sz[3] as f32 / s[2] as f32]
            }
            _ => {
                return Err(at(
                    node,
                    "cnnkit reads Resize with constant scales (or sizes) over height and width only",
                ));
            }
        };
        let int = |f: f32| (f >= 1.0 && f.fract() == 0.0 && f < 65536.0).then_some(f as usize);
        let (Some(sh), Some(sw)) = (int(scale[0]), int(scale[1])) else {
            return Err(at(
                node,
                format!("scale {scale:?}: cnnkit upsamples by whole factors"),
            ));
        };
        let ctm = attr_str(node, "coordinate_transformation_mode", "half_pixel")?;
        let mode = match (attr_str(node, "mode", "nearest")?.as_str(), ctm.as_str()) {
            ("nearest", "asymmetric")
                if attr_str(node, "nearest_mode", "round_prefer_floor")? == "floor" =>
            {
                UpsampleMode::Nearest
            }
            ("linear", "align_corners") => UpsampleMode::Bilinear {
                align_corners: true,
            },
            ("linear", "half_pixel" | "pytorch_half_pixel") => UpsampleMode::Bilinear {
                align_corners: false,
            },
            (m, c) => {
                return Err(at(
                    node,
                    format!(
                        "mode {m} with coordinate_transformation_mode {c}: cnnkit has nearest (asymmetric, floor) and linear (half_pixel, pytorch_half_pixel, align_corners)"
                    ),
                ));
            }
        };
        if attr_int(node, "antialias", 0)? != 0 {
            return Err(at(node, "antialias is not supported"));
        }
        let v = self.layer(
            node,
            LayerSpec::Upsample {
                scale: [sh, sw],
                mode,
            },
            from,
            4,
            Vec::new(),
            None,
        )?;
        self.set(node, v);
        Ok(())
    }

    fn constant_node(&self, node: &NodeProto<'_>) -> Result<Const> {
        let a = node
            .attributes
            .first()
            .ok_or_else(|| at(node, "no value"))?;
        match a.name.as_str() {
            "value" => {
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| at(node, "value is not a tensor"))?;
                let limits = Limits::default();
                let mut none = External::new(None, &limits);
                tensor_const(t, &mut none, &limits).map_err(|e| at(node, e))
            }
            "value_float" => Ok(Const {
                dims: vec![],
                data: Data::F32(vec![a.f.ok_or_else(|| at(node, "no float"))?]),
            }),
            "value_floats" => Ok(Const {
                dims: vec![a.floats.len()],
                data: Data::F32(a.floats.clone()),
            }),
            "value_int" => Ok(Const {
                dims: vec![],
                data: Data::I64(vec![a.i.ok_or_else(|| at(node, "no integer"))?]),
            }),
            "value_ints" => Ok(Const {
                dims: vec![a.ints.len()],
                data: Data::I64(a.ints.clone()),
            }),
            other => Err(at(node, format!("a constant's {other} is not supported"))),
        }
    }

    /// Evaluates a node of constants: the shape arithmetic exporters write, and identities.
    fn fold(&self, node: &NodeProto<'_>) -> Result<Const> {
        let c = |k| self.constant(node, k);
        let op = node.op_type.as_str();
        match op {
            "Identity" | "Dropout" => Ok(c(0)?.clone()),
            "Cast" => {
                let x = c(0)?;
                let to = attr_int(node, "to", 0)? as i32;
                let data = match to {
                    proto::FLOAT | proto::DOUBLE => Data::F32(x.floats()),
                    proto::INT32 | proto::INT64 => Data::I64(x.ints()),
                    t => return Err(at(node, format!("cast to {}", proto::type_name(t)))),
                };
                Ok(Const {
                    dims: x.dims.clone(),
                    data,
                })
            }
            "Unsqueeze" | "Squeeze" => {
                let x = c(0)?;
                let n = x.len();
                let dims = if op == "Unsqueeze" || n == 1 {
                    if op == "Unsqueeze" {
                        vec![n.max(1)]
                    } else {
                        vec![]
                    }
                } else {
                    x.dims.iter().copied().filter(|&d| d != 1).collect()
                };
                Ok(Const {
                    dims,
                    data: x.data.clone(),
                })
            }
            "Concat" => {
                let mut v = Vec::new();
                let mut f = Vec::new();
                let mut float = false;
                for k in 0..node.inputs.len() {
                    let x = c(k)?;
                    if x.dims.len() > 1 {
                        return Err(at(
                            node,
                            "concatenation of constants of rank above 1 is not folded",
                        ));
                    }
                    float |= matches!(x.data, Data::F32(_));
                    v.extend(x.ints());
                    f.extend(x.floats());
                }
                let n = v.len();
                Ok(Const {
                    dims: vec![n],
                    data: if float { Data::F32(f) } else { Data::I64(v) },
                })
            }
            "Gather" => {
                let x = c(0)?;
                let idx = c(1)?;
                if x.dims.len() != 1 || attr_int(node, "axis", 0)? != 0 {
                    return Err(at(
                        node,
                        "only gathering from a vector of constants is folded",
                    ));
                }
                let vals = x.ints();
                let mut out = Vec::new();
                for &k in &idx.ints() {
                    let k = if k < 0 { k + vals.len() as i64 } else { k };
                    out.push(
                        *usize::try_from(k)
                            .ok()
                            .and_then(|k| vals.get(k))
                            .ok_or_else(|| at(node, format!("index {k} out of range")))?,
                    );
                }
                Ok(Const {
                    dims: idx.dims.clone(),
                    data: Data::I64(out),
                })
            }
            "Slice" => {
                let x = c(0)?;
                let (s, e) = (c(1)?.ints(), c(2)?.ints());
                if x.dims.len() != 1
                    || s.len() != 1
                    || e.len() != 1
                    || self.opt_const(node, 4)?.is_some_and(|st| st.ints() != [1])
                {
                    return Err(at(
                        node,
                        "only a unit-step slice of a vector of constants is folded",
                    ));
                }
                slice_const(node, x, s[0], e[0])
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (c(0)?, c(1)?);
                if a.len() != b.len() && a.len() != 1 && b.len() != 1 {
                    return Err(at(
                        node,
                        "arithmetic on constants of different lengths is not folded",
                    ));
                }
                let n = a.len().max(b.len());
                let dims = if a.len() >= b.len() {
                    a.dims.clone()
                } else {
                    b.dims.clone()
                };
                let pick = |v: &Vec<f32>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
                match (&a.data, &b.data) {
                    (Data::I64(_), Data::I64(_)) => {
                        let (x, y) = (a.ints(), b.ints());
                        let pick = |v: &Vec<i64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
                        let mut out = Vec::with_capacity(n);
                        for i in 0..n {
                            let (p, q) = (pick(&x, i), pick(&y, i));
                            if p == BATCH || q == BATCH {
                                return Err(at(node, "arithmetic on the batch size is not folded"));
                            }
                            out.push(match op {
                                "Add" => p.wrapping_add(q),
                                "Sub" => p.wrapping_sub(q),
                                "Mul" => p.wrapping_mul(q),
                                _ => p
                                    .checked_div(q)
                                    .ok_or_else(|| at(node, "division by zero"))?,
                            });
                        }
                        Ok(Const {
                            dims,
                            data: Data::I64(out),
                        })
                    }
                    _ => {
                        let (x, y) = (a.floats(), b.floats());
                        let out = (0..n)
                            .map(|i| {
                                let (p, q) = (pick(&x, i), pick(&y, i));
                                match op {
                                    "Add" => p + q,
                                    "Sub" => p - q,
                                    "Mul" => p * q,
                                    _ => p / q,
                                }
                            })
                            .collect();
                        Ok(Const {
                            dims,
                            data: Data::F32(out),
                        })
                    }
                }
            }
            _ => Err(at(
                node,
                format!(
                    "operator {op} on constants is not folded; cnnkit folds Identity, Cast, Shape, Gather, Unsqueeze, Squeeze, Concat, Slice and arithmetic"
                ),
            )),
        }
    }
}

/// Inputs of one rank: ONNX broadcasts `N×C` against `N×C×H×W` from the right (over `H×W`), which
/// is not a per-channel gate or a sum of maps.
fn same_rank(node: &NodeProto<'_>, ranks: &[usize]) -> Result<()> {
    if ranks.windows(2).any(|w| w[0] != w[1]) {
        return Err(at(
            node,
            format!(
                "inputs of ranks {ranks:?}: cnnkit joins tensors of one rank (ONNX broadcasts mixed ranks from the right)"
            ),
        ));
    }
    Ok(())
}

fn slice_const(node: &NodeProto<'_>, x: &Const, start: i64, end: i64) -> Result<Const> {
    let v = x.ints();
    let n = v.len() as i64;
    let clamp = |k: i64| if k < 0 { (k + n).max(0) } else { k.min(n) };
    let (s, e) = (clamp(start), clamp(end));
    if s > e {
        return Err(at(
            node,
            format!("slice [{start}, {end}) of {n} values is empty"),
        ));
    }
    let out = v[s as usize..e as usize].to_vec();
    Ok(Const {
        dims: vec![out.len()],
        data: Data::I64(out),
    })
}

/// PyTorch's batch-norm momentum from ONNX's (`1 − m`, rounded to 6 digits: `0.9` gives `0.1`,
/// not `0.100000024`).
pub(crate) fn momentum_of(m: f32) -> f32 {
    ((1.0 - f64::from(m)) * 1e6).round() as f32 / 1e6
}
