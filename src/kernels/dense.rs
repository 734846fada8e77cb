//! Fully connected layer kernels, as `torch.nn.Linear`: `y = x·Wᵀ + b` with `W` stored
//! `[out, in]`.

use crate::error::{Error, Result, check_len, mul};
use crate::gemm::{FEW_ROWS, MatMut, MatRef, sgemm_rows};
use crate::kernels::accum::Accum;
use crate::kernels::conv::backward_weights::bias_backward;
use crate::par::{self, Items};

/// A validated dense layer shape: `n` rows of `in_features` inputs to `out_features` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenseGeom {
    n: usize,
    inp: usize,
    out: usize,
}

impl DenseGeom {
    /// Validates the shape.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for zero features; [`Error::TooLarge`] if a size overflows.
    pub fn new(n: usize, in_features: usize, out_features: usize) -> Result<Self> {
        const OP: &str = "DenseGeom::new";
        if in_features == 0 {
            return Err(Error::invalid(OP, "in_features", "must be at least 1"));
        }
        if out_features == 0 {
            return Err(Error::invalid(OP, "out_features", "must be at least 1"));
        }
        mul(OP, "x", n, in_features)?;
        mul(OP, "y", n, out_features)?;
        mul(OP, "w", out_features, in_features)?;
        Ok(DenseGeom {
            n,
            inp: in_features,
            out: out_features,
        })
    }
    /// Rows (batch size).
    pub const fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub const fn in_features(&self) -> usize {
        self.inp
    }
    /// Output features.
    pub const fn out_features(&self) -> usize {
        self.out
    }
    /// Elements of `x`.
    pub const fn x_len(&self) -> usize {
        self.n * self.inp
    }
    /// Elements of `y`.
    pub const fn y_len(&self) -> usize {
        self.n * self.out
    }
    /// Elements of `w`.
    pub const fn w_len(&self) -> usize {
        self.out * self.inp
    }
    fn work(&self) -> usize {
        2 * self.n * self.inp * self.out
    }
}

/// `y = x·Wᵀ + b`, as `torch.nn.functional.linear(x, w, b)`.
///
/// - `x`: `[n, in]`; `w`: `[out, in]`; `b`: `[out]` or `None`; `y`: `[n, out]`, overwritten
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`.
///
/// # Example
/// ```
/// use cnnkit::kernels::{dense_forward, DenseGeom};
/// let g = DenseGeom::new(1, 2, 2)?;
/// let mut y = [0.0; 2];
/// // W = [[1, 2], [3, 4]], x = [1, 1], b = [0, 10]: y = [1+2, 3+4+10].
/// dense_forward(&g, &[1.0, 1.0], &[1.0, 2.0, 3.0, 4.0], Some(&[0.0, 10.0]), &mut y)?;
/// assert_eq!(y, [3.0, 17.0]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn dense_forward(
    g: &DenseGeom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "dense_forward";
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "w", w, g.w_len())?;
    if let Some(b) = b {
        check_len(OP, "b", b, g.out)?;
    }
    check_len(OP, "y", y, g.y_len())?;
    let (inp, out) = (g.inp, g.out);
    // Dot products for the whole batch or for none of it, however the rows are split.
    let dots = g.n <= FEW_ROWS;
    // y[rows, cols] = x[rows] · W[cols]ᵀ (+ b[cols]); `y_rows` starts at (rows.start, cols.start).
    let block = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, y_blk: &mut [f32]| {
        let beta = match b {
            Some(b) => {
                for r in 0..rows.len() {
                    y_blk[r * out..][..cols.len()].copy_from_slice(&b[cols.clone()]);
                }
                1.0
            }
            None => 0.0,
        };
        let a = MatRef::new(&x[rows.start * inp..], rows.len(), inp, inp, 1)?;
        let wt = MatRef::new(&w[cols.start * inp..], cols.len(), inp, inp, 1)?.t();
        sgemm_rows(
            1.0,
            a,
            wt,
            beta,
            MatMut::new(y_blk, rows.len(), cols.len(), out, 1)?,
            dots,
        )
    };
    if g.n == 1 {
        // One row: split the output features instead of the batch.
        par::for_each(
            out,
            g.work(),
            Items(y, 1),
            #[inline(always)]
            |c, Items(y, _)| block(0..1, c, y),
        )
    } else {
        par::for_each(
            g.n,
            g.work(),
            Items(y, out),
            #[inline(always)]
            |r, Items(y, _)| block(r, 0..out, y),
        )
    }
}

/// Gradient of [`dense_forward`] with respect to `x`: `dx = dy·W`.
///
/// - `w`: `[out, in]`; `dy`: `[n, out]`; `dx`: `[n, in]`, overwritten or added to
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`.
pub fn dense_backward_data(
    g: &DenseGeom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "dense_backward_data";
    check_len(OP, "w", w, g.w_len())?;
    check_len(OP, "dy", dy, g.y_len())?;
    check_len(OP, "dx", dx, g.x_len())?;
    let (inp, out, beta) = (g.inp, g.out, accum.beta());
    let dots = g.n <= FEW_ROWS;
    let block = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, dx_blk: &mut [f32]| {
        let a = MatRef::new(&dy[rows.start * out..], rows.len(), out, out, 1)?;
        let b = MatRef::new(&w[cols.start..], out, cols.len(), inp, 1)?;
        sgemm_rows(
            1.0,
            a,
            b,
            beta,
            MatMut::new(dx_blk, rows.len(), cols.len(), inp, 1)?,
            dots,
        )
    };
    if g.n == 1 {
        par::for_each(
            inp,
            g.work(),
            Items(dx, 1),
            #[inline(always)]
            |c, Items(dx, _)| block(0..1, c, dx),
        )
    } else {
        par::for_each(
            g.n,
            g.work(),
            Items(dx, inp),
            #[inline(always)]
            |r, Items(dx, _)| block(r, 0..inp, dx),
        )
    }
}

/// Gradient of [`dense_forward`] with respect to `W` and `b`: `dW = dyᵀ·x`, `db = Σ_rows dy`.
///
/// - `x`: `[n, in]`; `dy`: `[n, out]`; `dw`: `[out, in]`; `db`: `[out]` or `None`; overwritten or
///   added to
///
/// Split over output features: each gradient row is summed by one thread, in batch order.
///
/// # Errors
/// [`Error::Length`] if a buffer disagrees with `g`.
pub fn dense_backward_weights(
    g: &DenseGeom,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    accum: Accum,
) -> Result<()> {
    const OP: &str = "dense_backward_weights";
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "dy", dy, g.y_len())?;
    check_len(OP, "dw", dw, g.w_len())?;
    if let Some(db) = db {
        check_len(OP, "db", db, g.out)?;
        bias_backward(g.n, g.out, 1, dy, db, accum);
    }
    let (inp, out, n, beta) = (g.inp, g.out, g.n, accum.beta());
    par::for_each(
        out,
        g.work(),
        Items(dw, inp),
        #[inline(always)]
        |o, Items(dw, _)| {
            // dyᵀ restricted to rows o: element (j, i) = dy[i, j].
            let a = MatRef::new(&dy[o.start..], o.len(), n, 1, out)?;
            let b = MatRef::row_major(x, n, inp)?;
            sgemm_rows(
                1.0,
                a,
                b,
                beta,
                MatMut::row_major(dw, o.len(), inp)?,
                out <= FEW_ROWS,
            )
        },
    )
}
