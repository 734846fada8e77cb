//! A model's graph: nodes with names and inputs, built from Rust ([`GraphBuilder`]) or from text
//! ([`GraphBuilder::parse`]), checked as they are added (shapes, names, references), so that
//! every graph a [`Model`](super::Model) receives is acyclic by construction: a node can only read
//! the model's input or nodes added before it.
//!
//! The text form (a layer list, or statements with names, sources and joins) is described on
//! [`GraphBuilder::parse`].

use crate::error::{Error, Result};
use crate::layer::spec::{LayerSpec, split_top_by};
use crate::layer::{self, Built, Layer};
use crate::shape::Shape3;
use std::fmt::Write as _;

/// Where a node reads from: the model's input or an earlier node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Src {
    /// The model's input.
    Input,
    /// Node `i`'s output.
    Node(usize),
}

/// A node (or the model's input) of a [`GraphBuilder`], to wire into later nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(pub(crate) Src);

/// A node that joins several inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Element-wise sum of inputs of one shape (a residual connection).
    Add,
    /// Concatenation along channels of inputs of one height and width (`torch.cat(xs, 1)`).
    Concat,
    /// Product of two inputs: of one shape element-wise, or a per-channel gate (`C×1×1`) times a
    /// map of `C` channels (`gate * x`, squeeze-and-excitation).
    Mul,
}

impl Join {
    /// Its name in the text form.
    pub fn keyword(self) -> &'static str {
        match self {
            Join::Add => "add",
            Join::Concat => "cat",
            Join::Mul => "mul",
        }
    }
}

/// What a node computes.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per node, made once: boxing buys nothing
pub(crate) enum Op {
    /// A layer on one input.
    Layer(Built),
    /// A join of several.
    Join(Join),
}

/// One node of a graph.
#[derive(Debug)]
pub(crate) struct Node {
    /// Unique; the prefix of its parameters' state-dict names.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Src>,
    /// Per-sample output shape.
    pub shape: Shape3,
}

impl Node {
    /// The node as the text form writes it (the layer's spec or the join).
    pub(crate) fn describe(&self, names: &dyn Fn(Src) -> String) -> String {
        match &self.op {
            Op::Layer(l) => l.layer().spec().to_string(),
            Op::Join(j) => {
                let args: Vec<String> = self.inputs.iter().map(|&s| names(s)).collect();
                format!("{}({})", j.keyword(), args.join(","))
            }
        }
    }
}

/// Builds a graph model node by node (or from text, see [`GraphBuilder::parse`]).
///
/// # Example
/// A residual block and a squeeze-and-excitation gate:
/// ```
/// use cnnkit::{GraphBuilder, LayerSpec};
/// let mut g = GraphBuilder::new([3, 16, 16]);
/// let x = g.input();
/// let stem = g.chain("stem", &LayerSpec::parse_list("conv(8,3,p=1),bn,relu")?, x)?;
/// let body = g.chain("body", &LayerSpec::parse_list("conv(8,3,p=1),bn")?, stem)?;
/// let sum = g.add("sum", &[stem, body])?;
/// let se = LayerSpec::parse_list("adaptive_avgpool(1),conv(2,1),relu,conv(8,1),sigmoid")?;
/// let gate = g.chain("se", &se, sum)?; // 8x1x1
/// let scaled = g.mul("scaled", gate, sum)?;
/// g.chain("head", &LayerSpec::parse_list("gap,dense(10)")?, scaled)?;
/// let mut model = g.build(0)?;
/// assert_eq!(model.output_len(), 10);
/// let y = model.forward(&vec![0.1; 2 * 3 * 16 * 16], 2)?;
/// assert_eq!(y.len(), 20);
/// # Ok::<(), cnnkit::Error>(())
/// ```
#[derive(Debug)]
pub struct GraphBuilder {
    input: Shape3,
    nodes: Vec<Node>,
    params: usize,
    max_params: usize,
    /// Nodes of unnamed statements so far (their names are their numbers).
    anonymous: usize,
    /// Names of chains (and statements) of several nodes, for their last node.
    aliases: Vec<(String, NodeId)>,
}

const OP: &str = "GraphBuilder";

impl GraphBuilder {
    /// An empty graph for samples of shape `input` (`[C, H, W]`).
    pub fn new(input: Shape3) -> Self {
        Self::with_limit(input, usize::MAX)
    }

    /// As [`GraphBuilder::new`], refusing (before allocating them) a graph of more than
    /// `max_params` parameters: for architectures from untrusted sources.
    pub fn with_limit(input: Shape3, max_params: usize) -> Self {
        GraphBuilder {
            input,
            nodes: Vec::new(),
            params: 0,
            max_params,
            anonymous: 0,
            aliases: Vec::new(),
        }
    }

    /// The model's input.
    pub fn input(&self) -> NodeId {
        NodeId(Src::Input)
    }

    /// The per-sample output shape of `id`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a node of another builder.
    pub fn shape(&self, id: NodeId) -> Result<Shape3> {
        match id.0 {
            Src::Input => Ok(self.input),
            Src::Node(i) => self
                .nodes
                .get(i)
                .map(|n| n.shape)
                .ok_or_else(|| Error::invalid(OP, "node", format!("no node {i} in this graph"))),
        }
    }

    /// The node called `name`, or the last node of the chain called `name`, if there is one
    /// (`input` is the model's input).
    pub fn find(&self, name: &str) -> Option<NodeId> {
        if name == "input" {
            return Some(self.input());
        }
        if let Some((_, id)) = self.aliases.iter().find(|(a, _)| a == name) {
            return Some(*id);
        }
        self.nodes
            .iter()
            .rposition(|n| n.name == name)
            .map(|i| NodeId(Src::Node(i)))
    }

    /// Parameters of the nodes so far.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Nodes so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has been added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds cnnkit's layer `spec` called `name`, reading `from`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a name already used (or empty, or with characters other than
    /// letters, digits, `_`, `-` and `.`), a layer that cannot take `from`'s shape, or a graph
    /// over its parameter limit.
    pub fn layer(&mut self, name: &str, spec: &LayerSpec, from: NodeId) -> Result<NodeId> {
        let input = self.shape(from)?;
        self.check_name(name)?;
        let built = layer::build_typed(spec, input)?;
        self.push_layer(name, built, from)
    }

    /// Adds your own layer (see [`Layer`]), made for `from`'s output shape.
    ///
    /// # Errors
    /// As [`GraphBuilder::layer`]; [`Error::InvalidArg`] for a layer with an empty output shape.
    pub fn custom(&mut self, name: &str, layer: Box<dyn Layer>, from: NodeId) -> Result<NodeId> {
        self.shape(from)?;
        self.check_name(name)?;
        if layer.out_shape().contains(&0) {
            return Err(Error::invalid(
                OP,
                "layer",
                format!("{name} ({}) has an empty output shape", layer.spec()),
            ));
        }
        self.push_layer(name, Built::Other(layer), from)
    }

    /// Adds the layers `specs` one after another from `from`, named as the statement
    /// `name = …` of the text form names them (`name` for one layer, `name.0`, `name.1`, … in
    /// `torch.nn.Sequential`'s numbering for several); returns the last.
    ///
    /// # Errors
    /// As [`GraphBuilder::layer`], and for no layers.
    pub fn chain(&mut self, name: &str, specs: &[LayerSpec], from: NodeId) -> Result<NodeId> {
        if specs.is_empty() {
            return Err(Error::invalid(OP, "chain", format!("{name}: no layers")));
        }
        if specs.len() == 1 {
            return self.layer(name, &specs[0], from);
        }
        self.check_name(name)?;
        let mut at = from;
        for (spec, k) in specs.iter().zip(torch_indices(specs)) {
            at = self.layer(&format!("{name}.{k}"), spec, at)?;
        }
        self.aliases.push((name.to_string(), at));
        Ok(at)
    }

    /// Adds a node summing `inputs` (at least two, of one shape).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for fewer than two inputs, inputs of different shapes, or a bad name.
    pub fn add(&mut self, name: &str, inputs: &[NodeId]) -> Result<NodeId> {
        let shapes = self.join_inputs(name, Join::Add, inputs)?;
        if let Some(s) = shapes.iter().find(|&&s| s != shapes[0]) {
            return Err(Error::invalid(
                OP,
                "add",
                format!(
                    "{name}: inputs of shapes {} and {} cannot be added",
                    show(shapes[0]),
                    show(*s)
                ),
            ));
        }
        self.push_join(name, Join::Add, inputs, shapes[0])
    }

    /// Adds a node concatenating `inputs` (at least two, of one height and width) along channels.
    ///
    /// # Errors
    /// As [`GraphBuilder::add`], for inputs of different heights or widths.
    pub fn concat(&mut self, name: &str, inputs: &[NodeId]) -> Result<NodeId> {
        let shapes = self.join_inputs(name, Join::Concat, inputs)?;
        if let Some(s) = shapes.iter().find(|s| s[1..] != shapes[0][1..]) {
            return Err(Error::invalid(
                OP,
                "cat",
                format!(
                    "{name}: inputs of shapes {} and {} differ in height or width",
                    show(shapes[0]),
                    show(*s)
                ),
            ));
        }
        let c = shapes
            .iter()
            .try_fold(0usize, |a, s| a.checked_add(s[0]))
            .ok_or_else(|| Error::too_large(OP, "channels"))?;
        crate::error::mul(OP, "cat output", c, shapes[0][1] * shapes[0][2])?;
        self.push_join(name, Join::Concat, inputs, [c, shapes[0][1], shapes[0][2]])
    }

    /// Adds the product of `a` and `b`: of one shape element-wise, or a per-channel gate of shape
    /// `C×1×1` (either one) times a map of `C` channels.
    ///
    /// # Errors
    /// As [`GraphBuilder::add`], for shapes that are neither equal nor a gate and its map.
    pub fn mul(&mut self, name: &str, a: NodeId, b: NodeId) -> Result<NodeId> {
        let shapes = self.join_inputs(name, Join::Mul, &[a, b])?;
        let (sa, sb) = (shapes[0], shapes[1]);
        let out = match gate_of(sa, sb) {
            Some((_, map)) => map,
            None => {
                return Err(Error::invalid(
                    OP,
                    "mul",
                    format!(
                        "{name}: shapes {} and {} are neither equal nor a C×1×1 gate and a map of C channels",
                        show(sa),
                        show(sb)
                    ),
                ));
            }
        };
        self.push_join(name, Join::Mul, &[a, b], out)
    }

    /// The model of this graph, its output the last node added, with PyTorch's default
    /// initialisation drawn from `seed` (in training mode).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for an empty graph or a node whose output nothing reads.
    pub fn build(self, seed: u64) -> Result<super::Model> {
        self.build_with_init(crate::init::Init::TorchDefault, seed)
    }

    /// As [`GraphBuilder::build`], with weights initialised by `init`.
    ///
    /// # Errors
    /// As [`GraphBuilder::build`].
    pub fn build_with_init(self, init: crate::init::Init, seed: u64) -> Result<super::Model> {
        let count = self.nodes.len();
        if count == 0 {
            return Err(Error::invalid(OP, "architecture", "no layers"));
        }
        let mut read = vec![false; count];
        for n in &self.nodes {
            for s in &n.inputs {
                if let Src::Node(j) = *s {
                    read[j] = true;
                }
            }
        }
        if let Some(j) = (0..count - 1).find(|&j| !read[j]) {
            return Err(Error::invalid(
                OP,
                "architecture",
                format!(
                    "the output of node {} is not used (the model's output is the last node, {})",
                    self.nodes[j].name,
                    self.nodes[count - 1].name
                ),
            ));
        }
        super::Model::assemble(self.input, self.nodes, init, seed, self.max_params)
    }

    /// Builds the graph of a text for inputs of shape `input`; a plain layer list is the
    /// one-statement graph.
    ///
    /// # The text form
    /// One statement per line (or separated by `;`), `#` to the end of a line is a comment:
    ///
    /// ```text
    /// [NAME =] [SOURCE:] ITEM, ITEM, …
    /// ```
    ///
    /// - An item is a layer as in a layer list (`conv(16,3,p=1)`, `bn`, `relu`, …) or, as the first
    ///   item of a statement, a join of named nodes: `add(a, b, …)` (element-wise sum),
    ///   `cat(a, b, …)` (channel concatenation) or `mul(a, b)` (a product; one factor may be a
    ///   per-channel gate of shape `C×1×1`, as squeeze-and-excitation).
    /// - A statement reads `SOURCE` (a node's name, or `input`), by default the output of the
    ///   statement before it (the model's input for the first).
    /// - A statement of one item names its node `NAME`; of several, `NAME.0`, `NAME.1`, … in the
    ///   numbering of the equivalent `torch.nn.Sequential` (a `gap` counts as two modules), so the
    ///   state-dict names are PyTorch's (`stem.0.weight`). Nodes of unnamed statements are numbered
    ///   `0`, `1`, … across the graph: a plain layer list is the one-statement graph, named exactly as
    ///   `torch.nn.Sequential`.
    /// - The model's output is the last node; every other node must be read by some node.
    ///
    /// ```text
    /// stem = conv(16,3,p=1,bias=false), bn, relu
    /// body = conv(16,3,p=1,bias=false), bn, relu, conv(16,3,p=1,bias=false), bn
    /// sum  = add(stem, body), relu
    /// head = gap, dense(10)
    /// ```
    ///
    ///
    /// # Errors
    /// [`Error::InvalidArg`] naming the statement and what is wrong with it.
    ///
    /// # Example
    /// ```
    /// use cnnkit::GraphBuilder;
    /// let text = "stem = conv(8,3,p=1), relu
    ///             body = conv(8,3,p=1), relu
    ///             add(stem, body), gap, dense(3)";
    /// let m = GraphBuilder::parse([1, 8, 8], text)?.build(0)?;
    /// assert!(m.state_dict().iter().any(|(k, _)| k == "body.0.weight"));
    /// # Ok::<(), cnnkit::Error>(())
    /// ```
    pub fn parse(input: Shape3, text: &str) -> Result<Self> {
        Self::parse_with_limit(input, text, usize::MAX)
    }

    /// As [`GraphBuilder::parse`], refusing more than `max_params` parameters.
    ///
    /// # Errors
    /// As [`GraphBuilder::parse`].
    pub fn parse_with_limit(input: Shape3, text: &str, max_params: usize) -> Result<Self> {
        const P: &str = "GraphBuilder::parse";
        super::check_input(input, 1)?;
        let mut g = Self::with_limit(input, max_params);
        let mut prev = g.input();
        for (k, stmt) in statements(text).into_iter().enumerate() {
            let bad =
                |why: String| Error::invalid(P, "graph", format!("statement {}: {why}", k + 1));
            let (name, rest) = match split_top_at(stmt, '=') {
                Some((a, b)) => (Some(a.trim()), b),
                None => (None, stmt),
            };
            let (source, rest) = match split_top_at(rest, ':') {
                Some((a, b)) => {
                    let a = a.trim();
                    let id = g
                        .find(a)
                        .ok_or_else(|| bad(format!("no node named '{a}' before it")))?;
                    (Some(id), b)
                }
                None => (None, rest),
            };
            let mut items = split_top(rest);
            items.retain(|t| !t.trim().is_empty());
            if items.is_empty() {
                return Err(bad("no layers".into()));
            }
            let head = items[0].trim();
            let join = [Join::Add, Join::Concat, Join::Mul]
                .into_iter()
                .find(|j| head.starts_with(&format!("{}(", j.keyword())) && head.ends_with(')'));
            let mut at = source.unwrap_or(prev);
            let mut specs: &[&str] = &items;
            // Every node of the statement, its name and what it is.
            let layer_names = |g: &mut Self, count: usize, specs: &[LayerSpec]| -> Vec<String> {
                match name {
                    Some(n) if count == 1 => vec![n.to_string()],
                    Some(n) => torch_indices(specs)
                        .into_iter()
                        .map(|i| format!("{n}.{i}"))
                        .collect(),
                    None => {
                        let first = g.anonymous;
                        let idx = torch_indices(specs);
                        g.anonymous += idx.last().map_or(0, |&l| l + 1)
                            + usize::from(matches!(specs.last(), Some(LayerSpec::GlobalAvgPool)));
                        idx.into_iter().map(|i| (first + i).to_string()).collect()
                    }
                }
            };
            let parsed_specs = |items: &[&str]| -> Result<Vec<LayerSpec>> {
                items
                    .iter()
                    .map(|t| t.trim().parse::<LayerSpec>())
                    .collect()
            };
            if let Some(j) = join {
                if source.is_some() {
                    return Err(bad(format!(
                        "{}(…) names its inputs; it takes no 'SOURCE:'",
                        j.keyword()
                    )));
                }
                let args = &head[j.keyword().len() + 1..head.len() - 1];
                let mut ids = Vec::new();
                for a in split_top(args) {
                    let a = a.trim();
                    ids.push(
                        g.find(a)
                            .ok_or_else(|| bad(format!("no node named '{a}' before it")))?,
                    );
                }
                let rest_specs = parsed_specs(&items[1..]).map_err(|e| bad(e.to_string()))?;
                // The join counts as one module in the statement's numbering.
                let mut all = vec![LayerSpec::Flatten];
                all.extend(rest_specs.iter().cloned());
                let names = layer_names(&mut g, all.len(), &all);
                at = match j {
                    Join::Add => g.add(&names[0], &ids),
                    Join::Concat => g.concat(&names[0], &ids),
                    Join::Mul if ids.len() == 2 => g.mul(&names[0], ids[0], ids[1]),
                    Join::Mul => Err(Error::invalid(
                        OP,
                        "mul",
                        format!("{}: takes two inputs, got {}", names[0], ids.len()),
                    )),
                }
                .map_err(|e| bad(e.to_string()))?;
                for (spec, n) in rest_specs.iter().zip(&names[1..]) {
                    at = g.layer(n, spec, at).map_err(|e| bad(e.to_string()))?;
                }
                specs = &[];
            }
            if !specs.is_empty() {
                let list = parsed_specs(specs).map_err(|e| bad(e.to_string()))?;
                let names = layer_names(&mut g, list.len(), &list);
                for (spec, n) in list.iter().zip(&names) {
                    at = g.layer(n, spec, at).map_err(|e| bad(e.to_string()))?;
                }
            }
            if let Some(n) = name
                && g.find(n) != Some(at)
            {
                g.check_name(n).map_err(|e| bad(e.to_string()))?;
                g.aliases.push((n.to_string(), at));
            }
            prev = at;
        }
        if g.nodes.is_empty() {
            return Err(Error::invalid(
                "Sequential::new",
                "architecture",
                "no layers",
            ));
        }
        Ok(g)
    }

    fn check_name(&self, name: &str) -> Result<()> {
        let ok = !name.is_empty()
            && name != "input"
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(Error::invalid(
                OP,
                "name",
                format!(
                    "'{name}' is not a node name (letters, digits, '_', '-', '.'; not 'input')"
                ),
            ));
        }
        if self.nodes.iter().any(|n| n.name == name) || self.aliases.iter().any(|(a, _)| a == name)
        {
            return Err(Error::invalid(
                OP,
                "name",
                format!("two nodes are called '{name}'"),
            ));
        }
        Ok(())
    }

    fn join_inputs(&self, name: &str, j: Join, inputs: &[NodeId]) -> Result<Vec<Shape3>> {
        self.check_name(name)?;
        if inputs.len() < 2 {
            return Err(Error::invalid(
                OP,
                j.keyword(),
                format!("{name}: needs at least two inputs, got {}", inputs.len()),
            ));
        }
        inputs.iter().map(|&i| self.shape(i)).collect()
    }

    fn push_layer(&mut self, name: &str, built: Built, from: NodeId) -> Result<NodeId> {
        let l = built.layer();
        let shape = l.out_shape();
        crate::error::mul(
            "Sequential::new",
            "layer output",
            shape[0],
            shape[1] * shape[2],
        )?;
        self.params = super::add_params(self.params, &l.params(), self.max_params)?;
        self.nodes.push(Node {
            name: name.to_string(),
            op: Op::Layer(built),
            inputs: vec![from.0],
            shape,
        });
        Ok(NodeId(Src::Node(self.nodes.len() - 1)))
    }

    fn push_join(
        &mut self,
        name: &str,
        j: Join,
        inputs: &[NodeId],
        shape: Shape3,
    ) -> Result<NodeId> {
        self.nodes.push(Node {
            name: name.to_string(),
            op: Op::Join(j),
            inputs: inputs.iter().map(|i| i.0).collect(),
            shape,
        });
        Ok(NodeId(Src::Node(self.nodes.len() - 1)))
    }
}

/// `(gate, map)` shapes when `a` and `b` can be multiplied: equal, or one `C×1×1` and the
/// other of `C` channels; the second is the output shape.
pub(crate) fn gate_of(a: Shape3, b: Shape3) -> Option<(Shape3, Shape3)> {
    if a == b || (a[1] == 1 && a[2] == 1 && a[0] == b[0]) {
        Some((a, b))
    } else if b[1] == 1 && b[2] == 1 && a[0] == b[0] {
        Some((b, a))
    } else {
        None
    }
}

/// The index of each layer in the equivalent `torch.nn.Sequential` (where a `gap` is two
/// modules, `AdaptiveAvgPool2d(1), Flatten()`).
pub(crate) fn torch_indices(specs: &[LayerSpec]) -> Vec<usize> {
    let mut extra = 0;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let at = i + extra;
            if matches!(s, LayerSpec::GlobalAvgPool) {
                extra += 1;
            }
            at
        })
        .collect()
}

fn show(s: Shape3) -> String {
    format!("{}x{}x{}", s[0], s[1], s[2])
}

/// The statements of a text: split at newlines and `;` outside parentheses, comments removed.
fn statements(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = text
        .lines()
        .flat_map(|line| split_top_by(line.split('#').next().unwrap_or(""), ';'))
        .collect();
    out.retain(|s| !s.trim().is_empty());
    out
}

/// Splits at the first `sep` outside parentheses.
fn split_top_at(s: &str, sep: char) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c == sep && depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    split_top_by(s, ',')
}

/// Whether `nodes` are a chain: each a layer reading the one before it (the first the input).
pub(crate) fn is_chain(nodes: &[Node]) -> bool {
    nodes.iter().enumerate().all(|(i, n)| {
        matches!(n.op, Op::Layer(_))
            && n.inputs == [if i == 0 { Src::Input } else { Src::Node(i - 1) }]
    })
}

/// The text form of `nodes` (read back by [`GraphBuilder::parse`] into the same graph and
/// names): the layer list for a chain named as `torch.nn.Sequential`, else one statement per
/// node.
pub(crate) fn to_text(nodes: &[Node]) -> String {
    let specs: Vec<LayerSpec> = nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Layer(l) => Some(l.layer().spec()),
            Op::Join(_) => None,
        })
        .collect();
    let chain = is_chain(nodes)
        && torch_indices(&specs)
            .iter()
            .zip(nodes)
            .all(|(k, n)| n.name == k.to_string());
    if chain {
        return LayerSpec::list_to_string(&specs);
    }
    let name_of = |s: Src| match s {
        Src::Input => "input".to_string(),
        Src::Node(j) => nodes[j].name.clone(),
    };
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        let _ = write!(out, "{} = ", n.name);
        if let Op::Layer(_) = n.op {
            let prev = if i == 0 { Src::Input } else { Src::Node(i - 1) };
            if n.inputs[0] != prev {
                let _ = write!(out, "{}: ", name_of(n.inputs[0]));
            }
        }
        out.push_str(&n.describe(&name_of));
        out.push('\n');
    }
    out
}
