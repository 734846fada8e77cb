//! Shapes and validated geometries.
//!
//! [`Conv2dGeom`] and [`Pool2dGeom`] are built by checked constructors that reject every
//! parameter combination PyTorch rejects (and every size whose product overflows); their fields are
//! private, so a kernel that receives one can rely on it being consistent.

use crate::error::{Error, Result, mul};

/// A per-sample shape `[channels, height, width]`; a flat vector of `F` features is `[F, 1, 1]`.
pub type Shape3 = [usize; 3];

/// Elements of a per-sample shape.
pub(crate) fn numel(s: Shape3) -> usize {
    s[0] * s[1] * s[2]
}

/// A named tensor of model state: a parameter or a buffer, with its PyTorch shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: TensorData,
}

/// The element type and values of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// 32-bit floats (parameters, running statistics).
    F32(Vec<f32>),
    /// 64-bit integers (batch norm's `num_batches_tracked`).
    I64(Vec<i64>),
}

/// A 4-D activation shape in NCHW order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape4 {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape4 {
    /// A shape `[n, c, h, w]`.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Shape4 { n, c, h, w }
    }

    /// The number of elements, or [`Error::TooLarge`] if it overflows.
    pub fn len(&self, op: &'static str) -> Result<usize> {
        let plane = mul(op, "h * w", self.h, self.w)?;
        let item = mul(op, "c * h * w", self.c, plane)?;
        mul(op, "n * c * h * w", self.n, item)
    }

    /// `h * w`, assuming the shape was validated.
    pub(crate) const fn plane(&self) -> usize {
        self.h * self.w
    }
}

/// Convolution hyper-parameters, each per axis `[height, width]`. The default matches
/// `torch.nn.Conv2d`: stride 1, no padding, dilation 1, one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit zeros added on both sides.
    pub padding: [usize; 2],
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Blocked connections: input and output channels are split into this many groups.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// Sets the stride of both axes.
    pub fn stride(self, s: usize) -> Self {
        Conv2dParams {
            stride: [s, s],
            ..self
        }
    }
    /// Sets the padding of both axes.
    pub fn padding(self, p: usize) -> Self {
        Conv2dParams {
            padding: [p, p],
            ..self
        }
    }
    /// Sets the dilation of both axes.
    pub fn dilation(self, d: usize) -> Self {
        Conv2dParams {
            dilation: [d, d],
            ..self
        }
    }
    /// Sets the number of groups.
    pub fn groups(self, g: usize) -> Self {
        Conv2dParams { groups: g, ..self }
    }
}

/// The output length of one axis of a convolution or pooling window sweep, or `None` if the
/// (dilated) window does not fit the padded input.
fn out_len(input: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    let span = dil.checked_mul(k - 1)?.checked_add(1)?;
    let padded = pad.checked_mul(2)?.checked_add(input)?;
    if span > padded {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// A validated 2-D transposed convolution (`torch.nn.ConvTranspose2d`), described by the
/// convolution it is the adjoint of: that convolution maps the transposed convolution's output
/// shape back to its input shape, with the same kernel, stride, padding, dilation and groups.
///
/// Output size per axis: `(in − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1`.
/// Weights are `[c_in, c_out / groups, k_h, k_w]`, PyTorch's layout, which is the adjoint
/// convolution's OIHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvTranspose2dGeom {
    conv: Conv2dGeom,
    output_padding: [usize; 2],
}

impl ConvTranspose2dGeom {
    /// Validates a transposed convolution of input `x` (NCHW) to `c_out` channels.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] as [`Conv2dGeom::new`], for an `output_padding` not smaller than the
    /// stride (PyTorch also allows one below the dilation; cnnkit does not), or for an output
    /// size below 1; [`Error::TooLarge`] if a buffer size overflows.
    pub fn new(
        x: Shape4,
        c_out: usize,
        kernel: [usize; 2],
        p: Conv2dParams,
        output_padding: [usize; 2],
    ) -> Result<Self> {
        const OP: &str = "ConvTranspose2dGeom::new";
        let mut out = [0usize; 2];
        for a in 0..2 {
            let (len, k, s, pad, d) = (
                [x.h, x.w][a],
                kernel[a],
                p.stride[a],
                p.padding[a],
                p.dilation[a],
            );
            if s == 0 || d == 0 || k == 0 || len == 0 {
                // Conv2dGeom::new names which.
                break;
            }
            if output_padding[a] >= s {
                return Err(Error::invalid(
                    OP,
                    ["output_padding_h", "output_padding_w"][a],
                    format!("{} must be smaller than the stride {s}", output_padding[a]),
                ));
            }
            let grown = (len - 1)
                .checked_mul(s)
                .and_then(|v| v.checked_add(d.checked_mul(k - 1)?))
                .and_then(|v| v.checked_add(output_padding[a] + 1))
                .ok_or_else(|| Error::too_large(OP, "output size"))?;
            out[a] = grown
                .checked_sub(pad.saturating_mul(2))
                .filter(|&o| o >= 1)
                .ok_or_else(|| {
                    Error::invalid(
                        OP,
                        ["padding_h", "padding_w"][a],
                        format!("2·{pad} leaves no output of an input of {len}"),
                    )
                })?;
        }
        let conv = Conv2dGeom::new(Shape4::new(x.n, c_out, out[0], out[1]), x.c, kernel, p)?;
        if conv.out != [x.h, x.w] {
            return Err(Error::invalid(
                OP,
                "shape",
                format!(
                    "the adjoint convolution maps {}x{} to {}x{}, not back to {}x{}",
                    out[0], out[1], conv.out[0], conv.out[1], x.h, x.w
                ),
            ));
        }
        Ok(ConvTranspose2dGeom {
            conv,
            output_padding,
        })
    }

    /// The convolution this is the adjoint of: its input is this output, its output this input.
    pub const fn conv(&self) -> &Conv2dGeom {
        &self.conv
    }
    /// `output_padding`.
    pub const fn output_padding(&self) -> [usize; 2] {
        self.output_padding
    }
    /// Input shape `[n, c_in, in_h, in_w]`.
    pub const fn x_shape(&self) -> Shape4 {
        self.conv.y_shape()
    }
    /// Output shape `[n, c_out, out_h, out_w]`.
    pub const fn y_shape(&self) -> Shape4 {
        self.conv.x_shape()
    }
    /// Elements of `x`.
    pub const fn x_len(&self) -> usize {
        self.conv.y_len()
    }
    /// Elements of `y`.
    pub const fn y_len(&self) -> usize {
        self.conv.x_len()
    }
    /// Elements of `w`: `c_in * c_out/groups * k_h * k_w`.
    pub const fn w_len(&self) -> usize {
        self.conv.w_len()
    }
}

/// A validated 2-D convolution: input shape, kernel, parameters and derived output size.
///
/// Weights are OIHW: `[c_out, c_in / groups, k_h, k_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    x: Shape4,
    c_out: usize,
    k: [usize; 2],
    p: Conv2dParams,
    out: [usize; 2],
}

impl Conv2dGeom {
    /// Validates a convolution of input `x` (NCHW) with `c_out` filters of size `kernel`
    /// (`[k_h, k_w]`).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for zero channels, spatial size, kernel, stride, dilation or groups;
    /// groups that do not divide `c_in` and `c_out`; a dilated kernel larger than the padded input.
    /// [`Error::TooLarge`] if a buffer size overflows.
    pub fn new(x: Shape4, c_out: usize, kernel: [usize; 2], p: Conv2dParams) -> Result<Self> {
        const OP: &str = "Conv2dGeom::new";
        for (v, arg) in [
            (x.c, "c_in"),
            (x.h, "in_h"),
            (x.w, "in_w"),
            (c_out, "c_out"),
            (kernel[0], "k_h"),
            (kernel[1], "k_w"),
            (p.stride[0], "stride_h"),
            (p.stride[1], "stride_w"),
            (p.dilation[0], "dilation_h"),
            (p.dilation[1], "dilation_w"),
            (p.groups, "groups"),
        ] {
            if v == 0 {
                return Err(Error::invalid(OP, arg, "must be at least 1"));
            }
        }
        if !x.c.is_multiple_of(p.groups) {
            return Err(Error::invalid(
                OP,
                "groups",
                format!("{} does not divide c_in = {}", p.groups, x.c),
            ));
        }
        if !c_out.is_multiple_of(p.groups) {
            return Err(Error::invalid(
                OP,
                "groups",
                format!("{} does not divide c_out = {}", p.groups, c_out),
            ));
        }
        let mut out = [0; 2];
        for a in 0..2 {
            out[a] = out_len(
                [x.h, x.w][a],
                kernel[a],
                p.stride[a],
                p.padding[a],
                p.dilation[a],
            )
            .ok_or_else(|| {
                Error::invalid(
                    OP,
                    ["k_h", "k_w"][a],
                    format!(
                        "dilated kernel {} is larger than the padded input {} + 2*{}",
                        p.dilation[a]
                            .saturating_mul(kernel[a] - 1)
                            .saturating_add(1),
                        [x.h, x.w][a],
                        p.padding[a]
                    ),
                )
            })?;
        }
        let g = Conv2dGeom {
            x,
            c_out,
            k: kernel,
            p,
            out,
        };
        // Every buffer size (and the largest im2col row block) must be representable.
        x.len(OP)?;
        Shape4::new(x.n, c_out, out[0], out[1]).len(OP)?;
        let kk = mul(OP, "k_h * k_w", kernel[0], kernel[1])?;
        let k_all = mul(OP, "c_in * k_h * k_w", x.c, kk)?;
        mul(
            OP,
            "weights",
            c_out,
            mul(OP, "weights", x.c / p.groups, kk)?,
        )?;
        mul(
            OP,
            "im2col rows",
            k_all,
            mul(OP, "out_h * out_w", out[0], out[1])?,
        )?;
        // Offsets of padded coordinates are computed in isize.
        mul(
            OP,
            "padded input",
            x.h + 2 * p.padding[0],
            x.w + 2 * p.padding[1],
        )?;
        Ok(g)
    }

    /// Batch size.
    pub const fn n(&self) -> usize {
        self.x.n
    }
    /// Input channels.
    pub const fn c_in(&self) -> usize {
        self.x.c
    }
    /// Input height.
    pub const fn in_h(&self) -> usize {
        self.x.h
    }
    /// Input width.
    pub const fn in_w(&self) -> usize {
        self.x.w
    }
    /// Output channels.
    pub const fn c_out(&self) -> usize {
        self.c_out
    }
    /// Kernel height.
    pub const fn k_h(&self) -> usize {
        self.k[0]
    }
    /// Kernel width.
    pub const fn k_w(&self) -> usize {
        self.k[1]
    }
    /// Output height.
    pub const fn out_h(&self) -> usize {
        self.out[0]
    }
    /// Output width.
    pub const fn out_w(&self) -> usize {
        self.out[1]
    }
    /// The hyper-parameters.
    pub const fn params(&self) -> Conv2dParams {
        self.p
    }
    /// Number of groups.
    pub const fn groups(&self) -> usize {
        self.p.groups
    }
    /// Input channels per group.
    pub const fn c_in_g(&self) -> usize {
        self.x.c / self.p.groups
    }
    /// Output channels per group.
    pub const fn c_out_g(&self) -> usize {
        self.c_out / self.p.groups
    }
    /// Input shape `[n, c_in, in_h, in_w]`.
    pub const fn x_shape(&self) -> Shape4 {
        self.x
    }
    /// Output shape `[n, c_out, out_h, out_w]`.
    pub const fn y_shape(&self) -> Shape4 {
        Shape4::new(self.x.n, self.c_out, self.out[0], self.out[1])
    }
    /// Elements of `x`.
    pub const fn x_len(&self) -> usize {
        self.x.n * self.x.c * self.x.h * self.x.w
    }
    /// Elements of `y`.
    pub const fn y_len(&self) -> usize {
        self.x.n * self.c_out * self.out[0] * self.out[1]
    }
    /// Elements of `w`: `c_out * c_in/groups * k_h * k_w`.
    pub const fn w_len(&self) -> usize {
        self.c_out * self.c_in_g() * self.k[0] * self.k[1]
    }
    /// Rows of one group's im2col matrix: `c_in/groups * k_h * k_w` (the GEMM's inner dimension).
    pub const fn k_g(&self) -> usize {
        self.c_in_g() * self.k[0] * self.k[1]
    }
    /// `out_h * out_w`.
    pub const fn out_plane(&self) -> usize {
        self.out[0] * self.out[1]
    }
    /// `in_h * in_w`.
    pub const fn in_plane(&self) -> usize {
        self.x.plane()
    }
    /// True for a 1x1 kernel with stride 1 and no padding: the input *is* its im2col matrix.
    pub const fn is_pointwise(&self) -> bool {
        self.k[0] == 1
            && self.k[1] == 1
            && self.p.stride[0] == 1
            && self.p.stride[1] == 1
            && self.p.padding[0] == 0
            && self.p.padding[1] == 0
    }
    /// True when every group has one input channel (depthwise, with any channel multiplier).
    pub const fn is_depthwise(&self) -> bool {
        self.c_in_g() == 1 && self.p.groups > 1
    }
}

/// Pooling hyper-parameters, each per axis `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Window size.
    pub window: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit padding on both sides (at most half the window, as PyTorch requires).
    pub padding: [usize; 2],
}

impl Pool2dParams {
    /// A square `k`x`k` window with stride `k` and no padding (PyTorch's default stride).
    pub fn new(k: usize) -> Self {
        Pool2dParams {
            window: [k, k],
            stride: [k, k],
            padding: [0, 0],
        }
    }
    /// Sets the stride of both axes.
    pub fn stride(self, s: usize) -> Self {
        Pool2dParams {
            stride: [s, s],
            ..self
        }
    }
    /// Sets the padding of both axes.
    pub fn padding(self, p: usize) -> Self {
        Pool2dParams {
            padding: [p, p],
            ..self
        }
    }
}

/// A validated 2-D pooling: input shape, window parameters and derived output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGeom {
    x: Shape4,
    p: Pool2dParams,
    out: [usize; 2],
}

impl Pool2dGeom {
    /// Validates a pooling of input `x` (NCHW).
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a zero window, stride, channel count or spatial size, padding
    /// above half the window, or a window larger than the padded input. [`Error::TooLarge`] if a
    /// buffer size overflows or a plane has more than `u32::MAX` elements (max-pool indices are
    /// `u32`).
    pub fn new(x: Shape4, p: Pool2dParams) -> Result<Self> {
        const OP: &str = "Pool2dGeom::new";
        for (v, arg) in [
            (x.c, "c"),
            (x.h, "in_h"),
            (x.w, "in_w"),
            (p.window[0], "window_h"),
            (p.window[1], "window_w"),
            (p.stride[0], "stride_h"),
            (p.stride[1], "stride_w"),
        ] {
            if v == 0 {
                return Err(Error::invalid(OP, arg, "must be at least 1"));
            }
        }
        let mut out = [0; 2];
        for a in 0..2 {
            if p.padding[a] > p.window[a] / 2 {
                return Err(Error::invalid(
                    OP,
                    ["padding_h", "padding_w"][a],
                    format!(
                        "{} is more than half the window {}",
                        p.padding[a], p.window[a]
                    ),
                ));
            }
            out[a] = out_len([x.h, x.w][a], p.window[a], p.stride[a], p.padding[a], 1).ok_or_else(
                || {
                    Error::invalid(
                        OP,
                        ["window_h", "window_w"][a],
                        format!(
                            "{} is larger than the padded input {} + 2*{}",
                            p.window[a],
                            [x.h, x.w][a],
                            p.padding[a]
                        ),
                    )
                },
            )?;
        }
        x.len(OP)?;
        if x.plane() > u32::MAX as usize {
            return Err(Error::too_large(
                OP,
                "input plane (max-pool indices are u32)",
            ));
        }
        Ok(Pool2dGeom { x, p, out })
    }

    /// Batch size.
    pub const fn n(&self) -> usize {
        self.x.n
    }
    /// Channels.
    pub const fn c(&self) -> usize {
        self.x.c
    }
    /// Input height.
    pub const fn in_h(&self) -> usize {
        self.x.h
    }
    /// Input width.
    pub const fn in_w(&self) -> usize {
        self.x.w
    }
    /// Output height.
    pub const fn out_h(&self) -> usize {
        self.out[0]
    }
    /// Output width.
    pub const fn out_w(&self) -> usize {
        self.out[1]
    }
    /// The hyper-parameters.
    pub const fn params(&self) -> Pool2dParams {
        self.p
    }
    /// Input shape.
    pub const fn x_shape(&self) -> Shape4 {
        self.x
    }
    /// Output shape `[n, c, out_h, out_w]`.
    pub const fn y_shape(&self) -> Shape4 {
        Shape4::new(self.x.n, self.x.c, self.out[0], self.out[1])
    }
    /// Elements of `x`.
    pub const fn x_len(&self) -> usize {
        self.x.n * self.x.c * self.x.h * self.x.w
    }
    /// Elements of `y` (and of the max-pool index buffer).
    pub const fn y_len(&self) -> usize {
        self.x.n * self.x.c * self.out[0] * self.out[1]
    }
    /// `n * c`: the number of independent planes.
    pub const fn planes(&self) -> usize {
        self.x.n * self.x.c
    }
    /// The clipped window `[start, end)` along axis `a` for output index `o`, and the extent of
    /// the window clipped to the padded input only (PyTorch's divisor with `count_include_pad`).
    #[inline]
    pub(crate) fn window(&self, a: usize, o: usize) -> (usize, usize, usize) {
        let input = [self.x.h, self.x.w][a];
        let (k, s, p) = (self.p.window[a], self.p.stride[a], self.p.padding[a]);
        // Positions are shifted by +p so they stay unsigned: padded coordinate = input + p.
        let start = o * s;
        let end_padded = (start + k).min(input + 2 * p);
        let lo = start.max(p) - p;
        let hi = end_padded.min(input + p).saturating_sub(p);
        (lo, hi.max(lo), end_padded - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_output_size_follows_torch_formula() {
        // floor((in + 2p - d(k-1) - 1)/s) + 1, per axis.
        let g = Conv2dGeom::new(
            Shape4::new(2, 4, 11, 7),
            6,
            [3, 2],
            Conv2dParams {
                stride: [2, 3],
                padding: [1, 0],
                dilation: [2, 1],
                groups: 2,
            },
        )
        .unwrap();
        assert_eq!(g.out_h(), (11 + 2 - 2 * 2 - 1) / 2 + 1);
        assert_eq!(g.out_w(), (7 - 1 - 1) / 3 + 1);
        assert_eq!(g.w_len(), 6 * 2 * 3 * 2);
    }

    #[test]
    fn pool_window_clips_to_input_and_padding() {
        let g = Pool2dGeom::new(
            Shape4::new(1, 1, 3, 3),
            Pool2dParams::new(3).stride(2).padding(1),
        )
        .unwrap();
        assert_eq!((g.out_h(), g.out_w()), (2, 2));
        // First window covers padded rows -1..2: input rows 0..2, padded extent 3.
        assert_eq!(g.window(0, 0), (0, 2, 3));
        // Second window covers padded rows 1..4: input rows 1..3, extent 3 (clipped at in+p).
        assert_eq!(g.window(0, 1), (1, 3, 3));
    }
}
