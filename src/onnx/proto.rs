//! The part of ONNX's protobuf schema (`onnx.proto`, IR version 3 and later) that a CNN uses:
//! a reader over borrowed bytes and a writer, both on the protobuf wire format directly.
//!
//! The reader never trusts a length: every length-delimited field is checked against the bytes
//! left, every count against [`Limits`], and fields it does not know are skipped (as protobuf
//! requires), without recursion. Groups (wire types 3 and 4, deprecated since proto2) are
//! refused. Messages that ONNX nests without bound (graphs inside attributes) are not read: an
//! attribute of type `GRAPH` is kept as its type only, and the importer refuses it.

use crate::error::{Error, Result};

/// Bounds on what one file may hold, checked while reading, before anything is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest model file, and largest external-data file, in bytes (default 2 GiB, protobuf's
    /// own limit for one message).
    pub max_file_bytes: u64,
    /// Most nodes in the graph (default 100 000).
    pub max_nodes: usize,
    /// Most initializers (default 100 000).
    pub max_tensors: usize,
    /// Most elements in one tensor, and in all of them together (default 1 << 30).
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 2 << 30,
            max_nodes: 100_000,
            max_tensors: 100_000,
            max_elements: 1 << 30,
        }
    }
}

/// ONNX's element types that cnnkit reads (`TensorProto.DataType`).
pub(crate) const FLOAT: i32 = 1;
pub(crate) const INT32: i32 = 6;
pub(crate) const INT64: i32 = 7;
pub(crate) const DOUBLE: i32 = 11;

/// The name of an ONNX element type, for messages.
pub(crate) fn type_name(t: i32) -> &'static str {
    match t {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "an unknown type",
    }
}

/// `ModelProto`.
#[derive(Debug, Default)]
pub(crate) struct ModelProto<'a> {
    pub ir_version: i64,
    /// `(domain, version)`; the default domain is `""` (or `ai.onnx`).
    pub opsets: Vec<(String, i64)>,
    pub producer: String,
    pub graph: Option<GraphProto<'a>>,
    pub metadata: Vec<(String, String)>,
}

/// `GraphProto`.
#[derive(Debug, Default)]
pub(crate) struct GraphProto<'a> {
    pub name: String,
    pub nodes: Vec<NodeProto<'a>>,
    pub initializers: Vec<TensorProto<'a>>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Whether the graph has sparse initializers (not supported).
    pub sparse: bool,
}

/// `NodeProto`.
#[derive(Debug, Default)]
pub(crate) struct NodeProto<'a> {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute<'a>>,
}

/// `AttributeProto`: the kinds a CNN's operators use, and the type of any other.
#[derive(Debug, Default)]
pub(crate) struct Attribute<'a> {
    pub name: String,
    /// `AttributeProto.AttributeType`, as written (0 when absent: then inferred from the field).
    pub kind: i32,
    pub f: Option<f32>,
    pub i: Option<i64>,
    pub s: Option<&'a [u8]>,
    pub t: Option<TensorProto<'a>>,
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
    /// A field cnnkit does not read (a graph, strings, tensors, a sparse tensor, a type).
    pub other: bool,
}

/// `AttributeProto.AttributeType` values.
pub(crate) const ATTR_FLOAT: i32 = 1;
pub(crate) const ATTR_INT: i32 = 2;
pub(crate) const ATTR_STRING: i32 = 3;
pub(crate) const ATTR_INTS: i32 = 7;

/// `TensorProto`.
#[derive(Debug, Default, Clone)]
pub(crate) struct TensorProto<'a> {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub raw: Option<&'a [u8]>,
    pub floats: Vec<f32>,
    pub int32s: Vec<i32>,
    pub int64s: Vec<i64>,
    pub doubles: Vec<f64>,
    /// `external_data` entries (`location`, `offset`, `length`, `checksum`).
    pub external: Vec<(String, String)>,
    /// `data_location == EXTERNAL`.
    pub is_external: bool,
    /// Whether the tensor is split into segments (not supported).
    pub segmented: bool,
}

/// `ValueInfoProto`: a name and, for tensors, the element type and dimensions.
#[derive(Debug, Default, Clone)]
pub(crate) struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    /// `None`: no shape given. Each dimension: `Some(n)`, or `None` for a symbolic one.
    pub dims: Option<Vec<Option<i64>>>,
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// A field's value on the wire.
#[derive(Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A protobuf message's fields, in order.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

fn malformed(what: impl Into<String>) -> Error {
    Error::invalid("onnx", "file", what.into())
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, at: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.at) else {
                return Err(malformed("the file ends inside a number (truncated?)"));
            };
            self.at += 1;
            if shift == 63 && b > 1 {
                return Err(malformed("a number is longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("a number is longer than 64 bits"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.at) as u64;
        if n > left {
            return Err(malformed(format!(
                "a field claims {n} bytes where {left} are left (truncated?)"
            )));
        }
        let s = &self.buf[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    /// The next field number and value, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.at == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(malformed("a field numbered 0"));
        }
        let v = match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().unwrap_or([0; 8]),
            )),
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or([0; 4]),
            )),
            w => {
                return Err(malformed(format!(
                    "field {field} has wire type {w} (groups are not read)"
                )));
            }
        };
        Ok(Some((field, v)))
    }
}

fn int(v: Value<'_>, what: &str) -> Result<i64> {
    match v {
        Value::Varint(x) => Ok(x as i64),
        _ => Err(malformed(format!("{what} is not an integer"))),
    }
}

fn bytes<'a>(v: Value<'a>, what: &str) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(malformed(format!("{what} is not a string or message"))),
    }
}

fn string(v: Value<'_>, what: &str) -> Result<String> {
    let b = bytes(v, what)?;
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| malformed(format!("{what} is not UTF-8")))
}

fn float(v: Value<'_>, what: &str) -> Result<f32> {
    match v {
        Value::Fixed32(x) => Ok(f32::from_bits(x)),
        _ => Err(malformed(format!("{what} is not a float"))),
    }
}

/// A repeated integer field: packed (one length-delimited run) or one value per field.
fn ints_into(v: Value<'_>, out: &mut Vec<i64>, max: usize, what: &str) -> Result<()> {
    match v {
        Value::Varint(x) => push_bounded(out, x as i64, max, what),
        Value::Bytes(b) => {
            let mut f = Fields::new(b);
            while f.at < b.len() {
                let x = f.varint()?;
                push_bounded(out, x as i64, max, what)?;
            }
            Ok(())
        }
        _ => Err(malformed(format!("{what} is not a list of integers"))),
    }
}

fn push_bounded<T>(out: &mut Vec<T>, x: T, max: usize, what: &str) -> Result<()> {
    if out.len() >= max {
        return Err(malformed(format!("{what} has more than {max} values")));
    }
    out.push(x);
    Ok(())
}

/// A repeated fixed-width field (4 or 8 bytes), packed or not.
fn fixed_into<T, const W: usize>(
    v: Value<'_>,
    out: &mut Vec<T>,
    max: usize,
    what: &str,
    conv: fn([u8; W]) -> T,
) -> Result<()> {
    match (v, W) {
        (Value::Fixed32(x), 4) => {
            let b = x.to_le_bytes();
            push_bounded(out, conv(b[..W].try_into().unwrap_or([0; W])), max, what)
        }
        (Value::Fixed64(x), 8) => {
            let b = x.to_le_bytes();
            push_bounded(out, conv(b[..W].try_into().unwrap_or([0; W])), max, what)
        }
        (Value::Bytes(b), _) => {
            if b.len() % W != 0 {
                return Err(malformed(format!(
                    "{what}: {} bytes is not a whole number of values",
                    b.len()
                )));
            }
            if out.len() + b.len() / W > max {
                return Err(malformed(format!("{what} has more than {max} values")));
            }
            out.extend(
                b.chunks_exact(W)
                    .map(|c| conv(c.try_into().unwrap_or([0; W]))),
            );
            Ok(())
        }
        _ => Err(malformed(format!("{what} has the wrong wire type"))),
    }
}

fn entry(b: &[u8]) -> Result<(String, String)> {
    let mut f = Fields::new(b);
    let (mut k, mut v) = (String::new(), String::new());
    while let Some((n, x)) = f.next()? {
        match n {
            1 => k = string(x, "a metadata key")?,
            2 => v = string(x, "a metadata value")?,
            _ => {}
        }
    }
    Ok((k, v))
}

/// Reads a `ModelProto`.
pub(crate) fn read_model<'a>(buf: &'a [u8], limits: &Limits) -> Result<ModelProto<'a>> {
    let mut m = ModelProto::default();
    let mut f = Fields::new(buf);
    while let Some((n, v)) = f.next()? {
        match n {
            1 => m.ir_version = int(v, "ir_version")?,
            2 => m.producer = string(v, "producer_name")?,
            7 => m.graph = Some(read_graph(bytes(v, "graph")?, limits)?),
            8 => {
                let mut g = Fields::new(bytes(v, "opset_import")?);
                let (mut d, mut ver) = (String::new(), 0);
                while let Some((k, x)) = g.next()? {
                    match k {
                        1 => d = string(x, "an opset's domain")?,
                        2 => ver = int(x, "an opset's version")?,
                        _ => {}
                    }
                }
                push_bounded(&mut m.opsets, (d, ver), 1000, "opset_import")?;
            }
            14 => push_bounded(
                &mut m.metadata,
                entry(bytes(v, "metadata_props")?)?,
                10_000,
                "metadata_props",
            )?,
            _ => {}
        }
    }
    Ok(m)
}

fn read_graph<'a>(buf: &'a [u8], limits: &Limits) -> Result<GraphProto<'a>> {
    let mut g = GraphProto::default();
    let mut f = Fields::new(buf);
    while let Some((n, v)) = f.next()? {
        match n {
            1 => {
                if g.nodes.len() >= limits.max_nodes {
                    return Err(malformed(format!(
                        "the graph has more than {} nodes (the limit)",
                        limits.max_nodes
                    )));
                }
                g.nodes.push(read_node(bytes(v, "a node")?, limits)?);
            }
            2 => g.name = string(v, "the graph's name")?,
            5 => {
                if g.initializers.len() >= limits.max_tensors {
                    return Err(malformed(format!(
                        "the graph has more than {} initializers (the limit)",
                        limits.max_tensors
                    )));
                }
                g.initializers
                    .push(read_tensor(bytes(v, "an initializer")?, limits)?);
            }
            11 => push_bounded(
                &mut g.inputs,
                read_value_info(bytes(v, "an input")?)?,
                limits.max_tensors + 1000,
                "the graph's inputs",
            )?,
            12 => push_bounded(
                &mut g.outputs,
                read_value_info(bytes(v, "an output")?)?,
                1000,
                "the graph's outputs",
            )?,
            15 => g.sparse = true,
            _ => {}
        }
    }
    Ok(g)
}

fn read_node<'a>(buf: &'a [u8], limits: &Limits) -> Result<NodeProto<'a>> {
    let mut node = NodeProto::default();
    let mut f = Fields::new(buf);
    while let Some((n, v)) = f.next()? {
        match n {
            1 => push_bounded(
                &mut node.inputs,
                string(v, "a node's input")?,
                10_000,
                "a node's inputs",
            )?,
            2 => push_bounded(
                &mut node.outputs,
                string(v, "a node's output")?,
                10_000,
                "a node's outputs",
            )?,
            3 => node.name = string(v, "a node's name")?,
            4 => node.op_type = string(v, "a node's op_type")?,
            5 => push_bounded(
                &mut node.attributes,
                read_attribute(bytes(v, "an attribute")?, limits)?,
                1000,
                "a node's attributes",
            )?,
            7 => node.domain = string(v, "a node's domain")?,
            _ => {}
        }
    }
    Ok(node)
}

fn read_attribute<'a>(buf: &'a [u8], limits: &Limits) -> Result<Attribute<'a>> {
    let mut a = Attribute::default();
    let mut f = Fields::new(buf);
    let max = limits.max_elements;
    while let Some((n, v)) = f.next()? {
        match n {
            1 => a.name = string(v, "an attribute's name")?,
            20 => a.kind = int(v, "an attribute's type")? as i32,
            2 => a.f = Some(float(v, "an attribute's float")?),
            3 => a.i = Some(int(v, "an attribute's integer")?),
            4 => a.s = Some(bytes(v, "an attribute's string")?),
            5 => a.t = Some(read_tensor(bytes(v, "an attribute's tensor")?, limits)?),
            7 => fixed_into::<f32, 4>(
                v,
                &mut a.floats,
                max,
                "an attribute's floats",
                f32::from_le_bytes,
            )?,
            8 => ints_into(v, &mut a.ints, max, "an attribute's integers")?,
            6 | 9 | 10 | 11 | 14 | 15 | 22 | 23 => a.other = true,
            _ => {}
        }
    }
    Ok(a)
}

fn read_tensor<'a>(buf: &'a [u8], limits: &Limits) -> Result<TensorProto<'a>> {
    let mut t = TensorProto::default();
    let mut f = Fields::new(buf);
    let max = limits.max_elements;
    while let Some((n, v)) = f.next()? {
        match n {
            1 => ints_into(v, &mut t.dims, 64, "a tensor's dimensions")?,
            2 => t.data_type = int(v, "a tensor's data_type")? as i32,
            3 => t.segmented = true,
            4 => fixed_into::<f32, 4>(v, &mut t.floats, max, "float_data", f32::from_le_bytes)?,
            5 => {
                let mut w = Vec::new();
                ints_into(v, &mut w, max, "int32_data")?;
                t.int32s.extend(w.into_iter().map(|x| x as i32));
            }
            7 => ints_into(v, &mut t.int64s, max, "int64_data")?,
            8 => t.name = string(v, "a tensor's name")?,
            9 => t.raw = Some(bytes(v, "raw_data")?),
            10 => fixed_into::<f64, 8>(v, &mut t.doubles, max, "double_data", f64::from_le_bytes)?,
            13 => push_bounded(
                &mut t.external,
                entry(bytes(v, "external_data")?)?,
                100,
                "external_data",
            )?,
            14 => t.is_external = int(v, "data_location")? == 1,
            _ => {}
        }
    }
    Ok(t)
}

fn read_value_info(buf: &[u8]) -> Result<ValueInfo> {
    let mut vi = ValueInfo::default();
    let mut f = Fields::new(buf);
    while let Some((n, v)) = f.next()? {
        match n {
            1 => vi.name = string(v, "a value's name")?,
            2 => {
                // TypeProto: tensor_type = 1.
                let mut tp = Fields::new(bytes(v, "a value's type")?);
                while let Some((k, x)) = tp.next()? {
                    if k != 1 {
                        continue;
                    }
                    let mut tt = Fields::new(bytes(x, "a tensor type")?);
                    while let Some((j, y)) = tt.next()? {
                        match j {
                            1 => vi.elem_type = int(y, "an element type")? as i32,
                            2 => vi.dims = Some(read_shape(bytes(y, "a tensor shape")?)?),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(vi)
}

fn read_shape(buf: &[u8]) -> Result<Vec<Option<i64>>> {
    let mut dims = Vec::new();
    let mut f = Fields::new(buf);
    while let Some((n, v)) = f.next()? {
        if n != 1 {
            continue;
        }
        let mut d = Fields::new(bytes(v, "a dimension")?);
        let mut value = None;
        while let Some((k, x)) = d.next()? {
            if k == 1 {
                value = Some(int(x, "a dimension's value")?);
            }
        }
        push_bounded(&mut dims, value, 64, "a shape's dimensions")?;
    }
    Ok(dims)
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// A protobuf message being written.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }
    /// An integer field (negative numbers as ten-byte two's complement, as protobuf's `int64`).
    pub fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }
    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    pub fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    pub fn message(&mut self, field: u32, m: Writer) {
        self.bytes(field, &m.buf);
    }
    /// A packed repeated integer field.
    pub fn ints(&mut self, field: u32, v: &[i64]) {
        let mut p = Writer::default();
        for &x in v {
            p.varint(x as u64);
        }
        self.bytes(field, &p.buf);
    }
}

/// A `StringStringEntryProto`.
pub(crate) fn write_entry(k: &str, v: &str) -> Writer {
    let mut w = Writer::default();
    w.string(1, k);
    w.string(2, v);
    w
}

/// A float tensor with its data in `raw_data`.
pub(crate) fn write_tensor(name: &str, dims: &[usize], data: &[f32]) -> Writer {
    let mut w = Writer::default();
    let d: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
    w.ints(1, &d);
    w.int(2, i64::from(FLOAT));
    w.string(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    w.bytes(9, &raw);
    w
}

/// An int64 tensor (shapes, axes) with its data in `raw_data`.
pub(crate) fn write_int_tensor(name: &str, data: &[i64]) -> Writer {
    let mut w = Writer::default();
    w.ints(1, &[data.len() as i64]);
    w.int(2, i64::from(INT64));
    w.string(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    w.bytes(9, &raw);
    w
}

/// A `ValueInfoProto` of a float tensor; `None` dimensions are written as `dim_param` `N`.
pub(crate) fn write_value_info(name: &str, dims: &[Option<usize>]) -> Writer {
    let mut shape = Writer::default();
    for d in dims {
        let mut dim = Writer::default();
        match d {
            Some(n) => dim.int(1, *n as i64),
            None => dim.string(2, "N"),
        }
        shape.message(1, dim);
    }
    let mut tensor = Writer::default();
    tensor.int(1, i64::from(FLOAT));
    tensor.message(2, shape);
    let mut ty = Writer::default();
    ty.message(1, tensor);
    let mut w = Writer::default();
    w.string(1, name);
    w.message(2, ty);
    w
}

/// An attribute of one integer.
pub(crate) fn attr_int(name: &str, v: i64) -> Writer {
    let mut w = Writer::default();
    w.string(1, name);
    w.int(3, v);
    w.int(20, i64::from(ATTR_INT));
    w
}

/// An attribute of one float.
pub(crate) fn attr_float(name: &str, v: f32) -> Writer {
    let mut w = Writer::default();
    w.string(1, name);
    w.float(2, v);
    w.int(20, i64::from(ATTR_FLOAT));
    w
}

/// An attribute of integers.
pub(crate) fn attr_ints(name: &str, v: &[i64]) -> Writer {
    let mut w = Writer::default();
    w.string(1, name);
    w.ints(8, v);
    w.int(20, i64::from(ATTR_INTS));
    w
}

/// An attribute of one string.
pub(crate) fn attr_string(name: &str, v: &str) -> Writer {
    let mut w = Writer::default();
    w.string(1, name);
    w.string(4, v);
    w.int(20, i64::from(ATTR_STRING));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_including_negative_numbers() {
        for v in [0i64, 1, 127, 128, 300, -1, i64::MIN, i64::MAX] {
            let mut w = Writer::default();
            w.int(3, v);
            let mut f = Fields::new(&w.buf);
            let (n, x) = f.next().unwrap().unwrap();
            assert_eq!(n, 3);
            assert_eq!(int(x, "v").unwrap(), v);
            assert!(f.next().unwrap().is_none());
        }
    }

    #[test]
    fn packed_and_unpacked_repeated_fields_read_alike() {
        let mut packed = Writer::default();
        packed.ints(1, &[3, 1, 4]);
        let mut plain = Writer::default();
        for x in [3, 1, 4] {
            plain.int(1, x);
        }
        for w in [packed, plain] {
            let t = read_tensor(&w.buf, &Limits::default()).unwrap();
            assert_eq!(t.dims, vec![3, 1, 4]);
        }
    }

    #[test]
    fn lengths_past_the_end_groups_and_long_varints_are_errors() {
        // Field 9 (raw_data) claiming 100 bytes with 2 left.
        let e = read_tensor(&[0x4a, 100, 1, 2], &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Wire type 3 (start group).
        let e = read_tensor(&[0x0b], &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("groups"), "{e}");
        let e = read_tensor(
            &[
                0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("64 bits"), "{e}");
        // A string field where an integer belongs.
        let e = read_tensor(&[0x12, 1, 0], &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("data_type"), "{e}");
    }

    #[test]
    fn node_count_is_limited_before_reading_further() {
        let mut g = Writer::default();
        for _ in 0..3 {
            let mut n = Writer::default();
            n.string(4, "Relu");
            g.message(1, n);
        }
        let limits = Limits {
            max_nodes: 2,
            ..Limits::default()
        };
        let e = read_graph(&g.buf, &limits).unwrap_err();
        assert!(e.to_string().contains("more than 2 nodes"), "{e}");
    }
}
