//! The GEMM gateway: `C = alpha * A * B + beta * C` on strided `f32` matrices.
//!
//! Matrices are described by [`MatRef`] / [`MatMut`] (slice, rows, cols, row stride `rs`, column
//! stride `cs`); their constructors prove that every element lies inside the slice, and for
//! [`MatMut`] that no two elements share a location, so a product is sound for any value that
//! type-checks. A transpose is a view with the strides swapped ([`MatRef::t`]). This module is
//! the only caller of `matrixmultiply`; its one `unsafe` block is that call.
//!
//! Three ways to compute a product, chosen per call:
//! - on CPUs with AVX2 and FMA or AVX-512, cnnkit's own packed GEMM (`packed`: BLIS blocking
//!   around the instruction set's micro-kernel from `arch`);
//! - elsewhere (or under [`crate::arch::limit`]`(Some(Isa::Portable))`), `matrixmultiply`;
//! - for a product of at most `FEW_ROWS` rows, when the caller allows it for the whole product it
//!   splits (`sgemm_rows`), dot products, which skip the packing a tiny product cannot repay.
//!
//! [`sgemm`] is the public entry (dimensions checked, an `Err` on a mismatch); `gemm_serial` runs
//! on the calling thread, for kernels that split the work themselves; `warm_thread` makes a
//! thread's packing buffers ahead of time so that no later product allocates.

pub(crate) mod packed;
pub mod precision;

pub use precision::{PRECISION_ENV, Precision, precision, round_bf16, set_precision};

use crate::error::{Error, Result};

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable strided matrix view whose elements are pairwise distinct locations.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Largest offset `(rows-1)*rs + (cols-1)*cs`, or `None` for an empty matrix, or `Err` if it does
/// not fit in `len` (or overflows).
fn last_offset(
    op: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    match last {
        Some(l) if l < len && l <= isize::MAX as usize => Ok(()),
        Some(l) => Err(Error::length(op, "data", l + 1, len)),
        None => Err(Error::too_large(op, "matrix extent")),
    }
}

impl<'a> MatRef<'a> {
    /// A `rows x cols` view of `data` with element `(i, j)` at `i*rs + j*cs`.
    ///
    /// # Errors
    /// [`Error::Length`] if the last element lies outside `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        last_offset("MatRef::new", data.len(), rows, cols, rs, cs)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A dense row-major view (`rs = cols`, `cs = 1`) of the first `rows * cols` elements.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose: the same elements with rows and columns (and strides) swapped.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Element `(i, j)` (panics out of range; for tests and references).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols);
        self.data[i * self.rs + j * self.cs]
    }
}

impl<'a> MatMut<'a> {
    /// A mutable `rows x cols` view of `data` with element `(i, j)` at `i*rs + j*cs`.
    ///
    /// # Errors
    /// [`Error::Length`] if the last element lies outside `data`; [`Error::InvalidArg`] if two
    /// elements would share a location (the smaller stride times its dimension must not exceed the
    /// larger stride).
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        const OP: &str = "MatMut::new";
        last_offset(OP, data.len(), rows, cols, rs, cs)?;
        // Injectivity: order the axes by stride; the inner one must step by at least 1 and the
        // outer one must step past the whole inner extent.
        let (inner, outer) = if rs <= cs {
            ((rows, rs), (cols, cs))
        } else {
            ((cols, cs), (rows, rs))
        };
        let ok = rows == 0
            || cols == 0
            || match (inner.0 > 1, outer.0 > 1) {
                (false, false) => true,
                (true, false) => inner.1 >= 1,
                (false, true) => outer.1 >= 1,
                (true, true) => inner.1 >= 1 && outer.1 >= inner.0 * inner.1,
            };
        if !ok {
            return Err(Error::invalid(
                OP,
                "strides",
                format!("rs = {rs}, cs = {cs} alias elements of a {rows}x{cols} matrix"),
            ));
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// A dense row-major view of the first `rows * cols` elements.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose.
    pub fn t(self) -> Self {
        MatMut {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `C = alpha * A * B + beta * C`, where `A` is `m x k`, `B` is `k x n`, `C` is `m x n`.
///
/// With `beta == 0`, `C` is overwritten and never read (NaN in `C` does not propagate), as in
/// BLAS. Runs on the calling thread; kernels parallelise around it.
///
/// # Errors
/// [`Error::InvalidArg`] if the dimensions disagree.
///
/// # Example
/// ```
/// use cnnkit::gemm::{sgemm, MatMut, MatRef};
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
/// let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // 3x2
/// let mut c = [0.0; 4];
/// sgemm(1.0, MatRef::row_major(&a, 2, 3)?, MatRef::row_major(&b, 3, 2)?, 0.0,
///       MatMut::row_major(&mut c, 2, 2)?)?;
/// // Row 0: [1+3, 2+3]; row 1: [4+6, 5+6].
/// assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
/// # Ok::<(), cnnkit::Error>(())
/// ```
pub fn sgemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) -> Result<()> {
    let dots = a.rows <= FEW_ROWS;
    sgemm_rows(alpha, a, b, beta, c, dots)
}

/// [`sgemm`], with the choice of dot products for a product of few rows made by the caller:
/// `dots` must depend on the whole product a caller splits (say, the batch), never on one part
/// of it, or results would depend on how the work was split (the dot products sum in another
/// order than the packed product).
pub(crate) fn sgemm_rows(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
    dots: bool,
) -> Result<()> {
    const OP: &str = "sgemm";
    if a.cols != b.rows || a.rows != c.rows || b.cols != c.cols {
        return Err(Error::invalid(
            OP,
            "dimensions",
            format!(
                "A is {}x{}, B is {}x{}, C is {}x{}",
                a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
            ),
        ));
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // Large products with row-major C are split by rows across the current pool (each row of C
    // is computed the same way whatever the split).
    let work = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    let mr = crate::arch::tile().map_or(1, |t| t.0);
    let groups = crate::par::groups(m.div_ceil(mr), work);
    if groups > 1 && c.cs == 1 && packed::enabled() {
        let (rs, cols) = (c.rs, c.cols);
        return crate::par::for_each(
            m.div_ceil(mr),
            work,
            crate::par::Items(c.data, rs * mr),
            #[inline(always)]
            |r, crate::par::Items(d, _)| {
                let rows = r.start * mr..(r.end * mr).min(m);
                let a = MatRef {
                    data: a.data,
                    rows: rows.len(),
                    cols: k,
                    rs: a.rs,
                    cs: a.cs,
                };
                let a = MatRef {
                    data: &a.data[rows.start * a.rs..],
                    ..a
                };
                gemm_serial(
                    alpha,
                    a,
                    b,
                    beta,
                    MatMut {
                        data: d,
                        rows: rows.len(),
                        cols,
                        rs,
                        cs: 1,
                    },
                    dots,
                );
                Ok(())
            },
        );
    }
    gemm_serial(alpha, a, b, beta, c, dots);
    Ok(())
}

/// Makes the calling thread's GEMM packing buffers now (where the packed path runs), so that no
/// later product allocates on this thread.
pub(crate) fn warm_thread() {
    if packed::enabled() {
        packed::warm();
    }
}

/// Most rows of `A` computed by dot products instead of a packed product.
pub(crate) const FEW_ROWS: usize = 2;

/// [`sgemm`] on the calling thread; `dots` allows dot products for a product of at most
/// `FEW_ROWS` rows (see [`sgemm_rows`]).
///
/// # Panics
/// If the views' dimensions disagree (`a.cols != b.rows`, `a.rows != c.rows` or
/// `b.cols != c.cols`): an internal caller's bug, checked here because the unsafe product below
/// relies on it. Public entry points check the dimensions first and return an error.
pub(crate) fn gemm_serial(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
    dots: bool,
) {
    gemm_serial_in(alpha, a, b, beta, c, dots, false)
}

/// [`gemm_serial`] in f32 whatever the [`Precision`]: for products whose operands are not a
/// layer's weights and activations but transforms of them (Winograd's), where a rounding to
/// bf16 would be amplified by the inverse transform.
pub(crate) fn gemm_serial_f32(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
    dots: bool,
) {
    gemm_serial_in(alpha, a, b, beta, c, dots, true)
}

/// [`gemm_serial`], in f32 when `f32_only`.
fn gemm_serial_in(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
    dots: bool,
    f32_only: bool,
) {
    assert!(
        a.cols == b.rows && a.rows == c.rows && b.cols == c.cols,
        "gemm_serial: A is {}x{}, B {}x{}, C {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if dots && m <= FEW_ROWS && k > 0 && a.cs == 1 && b.rs == 1 {
        // A few rows against a B whose columns are contiguous (a dense layer's `x·Wᵀ` on one
        // sample): one dot product per element; packing B would copy all of it for one use.
        crate::arch::dispatch(
            #[inline(always)]
            || {
                for i in 0..m {
                    let a_i = &a.data[i * a.rs..][..k];
                    for j in 0..n {
                        let d = alpha * crate::simd::iter::dot(a_i, &b.data[j * b.cs..][..k]);
                        let e = &mut c.data[i * c.rs + j * c.cs];
                        *e = if beta == 0.0 { d } else { d + beta * *e };
                    }
                }
            },
        );
        return;
    }
    if c.cs == 1 || c.rs == 1 {
        fn src<'a>(x: &MatRef<'a>) -> packed::Strided<'a> {
            packed::Strided {
                data: x.data,
                rs: x.rs,
                cs: x.cs,
                rows: x.rows,
            }
        }
        // Column-major C: compute Cᵀ = Bᵀ·Aᵀ, which is row-major.
        let (l, r, out) = if c.cs == 1 {
            let out = packed::Out {
                data: &mut *c.data,
                rs: c.rs,
                rows: m,
                cols: n,
            };
            (src(&a), src(&b), out)
        } else {
            let out = packed::Out {
                data: &mut *c.data,
                rs: c.cs,
                rows: n,
                cols: m,
            };
            (src(&b.t()), src(&a.t()), out)
        };
        let done = crate::arch::with_kernel!(
            kern => {
                if f32_only {
                    packed::gemm_f32(kern, k, alpha, &l, &r, beta, out);
                } else {
                    packed::gemm(kern, k, alpha, &l, &r, beta, out);
                }
                true
            };
            else false
        );
        if done {
            return;
        }
    }
    if k == 0 {
        // C = beta * C (and exactly zero for beta == 0, without reading C).
        for i in 0..m {
            for j in 0..n {
                let e = &mut c.data[i * c.rs + j * c.cs];
                *e = if beta == 0.0 { 0.0 } else { beta * *e };
            }
        }
        return;
    }
    // SAFETY: `MatRef::new` / `MatMut::new` proved that for every i < m, j < n, l < k the offsets
    // i*rs + l*cs (A), l*rs + j*cs (B) and i*rs + j*cs (C) are below the length of the respective
    // slice and fit in isize (so the `as isize` casts are exact), and that C's elements are
    // pairwise distinct. `a.cols == b.rows == k`, `a.rows == c.rows == m`, `b.cols == c.cols == n`
    // was asserted at the top of this function. C is borrowed mutably for the whole call, so it cannot alias A
    // or B. matrixmultiply reads only those elements of A and B and writes only those of C.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            /* rsa = */ a.rs as isize,
            /* csa = */ a.cs as isize,
            b.data.as_ptr(),
            /* rsb = */ b.rs as isize,
            /* csb = */ b.cs as isize,
            beta,
            c.data.as_mut_ptr(),
            /* rsc = */ c.rs as isize,
            /* csc = */ c.cs as isize,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views whose dimensions disagree stop `gemm_serial` before its unsafe product (it used to
    /// trust its callers).
    #[test]
    fn gemm_serial_refuses_mismatched_views() {
        let (a, b) = ([1.0f32; 6], [1.0f32; 6]);
        let r = std::panic::catch_unwind(|| {
            let mut c = [0.0f32; 4];
            let a = MatRef::new(&a, 2, 3, 3, 1).unwrap();
            let b = MatRef::new(&b, 2, 3, 3, 1).unwrap(); // 2 rows, but A has 3 columns
            gemm_serial(
                1.0,
                a,
                b,
                0.0,
                MatMut::new(&mut c, 2, 2, 2, 1).unwrap(),
                true,
            );
        });
        assert!(r.is_err());
    }

    #[test]
    fn mat_mut_rejects_aliasing_strides() {
        let mut d = [0.0; 16];
        assert!(MatMut::new(&mut d, 2, 3, 2, 1).is_err()); // rows overlap
        assert!(MatMut::new(&mut d, 2, 2, 0, 1).is_err()); // zero stride
        assert!(MatMut::new(&mut d, 3, 3, 1, 3).is_ok()); // column-major
        assert!(MatMut::new(&mut d, 1, 4, 7, 1).is_ok()); // one row: rs irrelevant
    }

    #[test]
    fn views_reject_out_of_bounds_extents() {
        let d = [0.0; 6];
        assert!(MatRef::new(&d, 2, 3, 3, 1).is_ok());
        assert!(MatRef::new(&d, 2, 4, 3, 1).is_err());
        assert!(MatRef::new(&d, 0, 100, 100, 1).is_ok());
        assert!(MatRef::new(&d, usize::MAX, 2, usize::MAX, 1).is_err());
    }
}
