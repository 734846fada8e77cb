//! The nodes of a graph model that join several inputs: element-wise sum (`a + b + …`, as a
//! residual connection), channel concatenation (`torch.cat(xs, dim=1)`, as DenseNet and U-Net)
//! and the broadcast product of a per-channel gate and a map (`gate * x` with `gate` of shape
//! `[N, C, 1, 1]`, as squeeze-and-excitation).
//!
//! Each forward sums or copies in the order of its inputs, so results are the same bits for any
//! thread count; each backward writes one input's gradient per call, overwritten or added to
//! ([`Accum`]), because a graph node's output may feed several others.

use super::accum::Accum;
use crate::error::{Error, Result, check_len};

/// `y (+)= x`: one input of a sum (the first overwrites, the others add, in the order of the
/// node's inputs).
///
/// # Errors
/// [`Error::Length`] if `x` and `y` differ in length.
pub fn add_forward(x: &[f32], y: &mut [f32], accum: Accum) -> Result<()> {
    pass_backward(x, y, accum)
}

/// `dx (+)= dy`: the gradient of any input of a sum.
///
/// # Errors
/// [`Error::Length`] if `dx` and `dy` differ in length.
pub fn pass_backward(dy: &[f32], dx: &mut [f32], accum: Accum) -> Result<()> {
    check_len("pass_backward", "dx", dx, dy.len())?;
    match accum {
        Accum::Replace => dx.copy_from_slice(dy),
        Accum::Add => dx.iter_mut().zip(dy).for_each(|(d, &g)| *d += g),
    }
    Ok(())
}

/// One input of a channel concatenation of `n` samples: `x` holds `len` values per sample
/// (`C_k·H·W`), written to `offset..offset + len` of each output sample of `per` values.
///
/// # Errors
/// [`Error::InvalidArg`] if the slice does not fit a sample; [`Error::Length`] for buffers of the
/// wrong length.
pub fn concat_forward(
    n: usize,
    per: usize,
    offset: usize,
    len: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "concat_forward";
    check_slice(OP, per, offset, len)?;
    check_len(OP, "x", x, n * len)?;
    check_len(OP, "y", y, n * per)?;
    for s in 0..n {
        y[s * per + offset..s * per + offset + len].copy_from_slice(&x[s * len..(s + 1) * len]);
    }
    Ok(())
}

/// The gradient of input `k` of [`concat_forward`]: its slice `offset..offset + len` of each
/// output sample of `per` values, into `dx` (`n·len`), overwritten or added to.
///
/// # Errors
/// [`Error::InvalidArg`] if the slice does not fit a sample; [`Error::Length`] for buffers of the
/// wrong length.
pub fn concat_backward(
    n: usize,
    per: usize,
    offset: usize,
    len: usize,
    dy: &[f32],
    dx: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "concat_backward";
    check_slice(OP, per, offset, len)?;
    check_len(OP, "dy", dy, n * per)?;
    check_len(OP, "dx", dx, n * len)?;
    for s in 0..n {
        let src = &dy[s * per + offset..s * per + offset + len];
        let dst = &mut dx[s * len..(s + 1) * len];
        match accum {
            Accum::Replace => dst.copy_from_slice(src),
            Accum::Add => dst.iter_mut().zip(src).for_each(|(d, &g)| *d += g),
        }
    }
    Ok(())
}

/// `y[s, c, p] = gate[s, c] · map[s, c, p]` for `n` samples of `c` channels of `plane` values.
///
/// # Errors
/// [`Error::Length`] for buffers of the wrong length.
pub fn gate_forward(
    n: usize,
    c: usize,
    plane: usize,
    gate: &[f32],
    map: &[f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "gate_forward";
    check_len(OP, "gate", gate, n * c)?;
    check_len(OP, "map", map, n * c * plane)?;
    check_len(OP, "y", y, n * c * plane)?;
    if plane == 0 {
        return Ok(());
    }
    for ((out, x), &g) in y
        .chunks_exact_mut(plane)
        .zip(map.chunks_exact(plane))
        .zip(gate)
    {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = g * v);
    }
    Ok(())
}

/// The gradients of [`gate_forward`]: `dgate[s, c] (+)= Σ_p dy[s, c, p]·map[s, c, p]` (summed in
/// order over the plane) and `dmap (+)= gate · dy`, each when asked for.
///
/// # Errors
/// [`Error::Length`] for buffers of the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn gate_backward(
    n: usize,
    c: usize,
    plane: usize,
    gate: &[f32],
    map: &[f32],
    dy: &[f32],
    dgate: Option<(&mut [f32], Accum)>,
    dmap: Option<(&mut [f32], Accum)>,
) -> Result<()> {
    const OP: &str = "gate_backward";
    check_len(OP, "gate", gate, n * c)?;
    check_len(OP, "map", map, n * c * plane)?;
    check_len(OP, "dy", dy, n * c * plane)?;
    if let Some((dg, accum)) = dgate {
        check_len(OP, "dgate", dg, n * c)?;
        for (k, d) in dg.iter_mut().enumerate() {
            let r = k * plane..(k + 1) * plane;
            let s: f32 = dy[r.clone()]
                .iter()
                .zip(&map[r])
                .fold(0.0, |a, (&g, &v)| a + g * v);
            *d = accum.apply(*d, s);
        }
    }
    if let Some((dm, accum)) = dmap {
        check_len(OP, "dmap", dm, n * c * plane)?;
        if plane > 0 {
            for ((d, g), &w) in dm
                .chunks_exact_mut(plane)
                .zip(dy.chunks_exact(plane))
                .zip(gate)
            {
                d.iter_mut()
                    .zip(g)
                    .for_each(|(o, &v)| *o = accum.apply(*o, w * v));
            }
        }
    }
    Ok(())
}

/// `y = a ⊙ b` for two tensors of the same shape.
///
/// # Errors
/// [`Error::Length`] for buffers of different lengths.
pub fn mul_forward(a: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("mul_forward", "a", a, y.len())?;
    check_len("mul_forward", "b", b, y.len())?;
    y.iter_mut()
        .zip(a.iter().zip(b))
        .for_each(|(o, (&u, &v))| *o = u * v);
    Ok(())
}

/// The gradient of one factor of [`mul_forward`]: `dx (+)= other ⊙ dy`.
///
/// # Errors
/// [`Error::Length`] for buffers of different lengths.
pub fn mul_backward(other: &[f32], dy: &[f32], dx: &mut [f32], accum: Accum) -> Result<()> {
    check_len("mul_backward", "other", other, dy.len())?;
    check_len("mul_backward", "dx", dx, dy.len())?;
    dx.iter_mut()
        .zip(other.iter().zip(dy))
        .for_each(|(d, (&o, &g))| *d = accum.apply(*d, o * g));
    Ok(())
}

/// Refuses a slice `offset..offset + len` that does not fit a sample of `per` values.
fn check_slice(op: &'static str, per: usize, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_none_or(|e| e > per) {
        return Err(Error::invalid(
            op,
            "offset",
            format!("{offset}+{len} exceeds a sample of {per}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenation_puts_each_sample_of_each_input_in_order_and_backward_takes_it_back() {
        let a = [1.0, 2.0, 3.0, 4.0]; // 2 samples of 2
        let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]; // 2 samples of 3
        let mut y = [0.0; 10];
        concat_forward(2, 5, 0, 2, &a, &mut y).unwrap();
        concat_forward(2, 5, 2, 3, &b, &mut y).unwrap();
        assert_eq!(y, [1.0, 2.0, 5.0, 6.0, 7.0, 3.0, 4.0, 8.0, 9.0, 10.0]);
        let mut db = [1.0; 6];
        concat_backward(2, 5, 2, 3, &y, &mut db, Accum::Add).unwrap();
        assert_eq!(db, [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        assert!(concat_backward(2, 5, 3, 3, &y, &mut db, Accum::Add).is_err());
    }

    #[test]
    fn a_gate_scales_every_value_of_its_channel_and_its_gradient_is_the_plane_sum() {
        // 1 sample, 2 channels of 3.
        let gate = [2.0, -1.0];
        let map = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut y = [0.0; 6];
        gate_forward(1, 2, 3, &gate, &map, &mut y).unwrap();
        assert_eq!(y, [2.0, 4.0, 6.0, -4.0, -5.0, -6.0]);
        let dy = [1.0, 0.0, 1.0, 0.5, 0.5, 0.5];
        let (mut dg, mut dm) = ([0.0; 2], [0.0; 6]);
        gate_backward(
            1,
            2,
            3,
            &gate,
            &map,
            &dy,
            Some((&mut dg, Accum::Replace)),
            Some((&mut dm, Accum::Replace)),
        )
        .unwrap();
        assert_eq!(dg, [4.0, 7.5]);
        assert_eq!(dm, [2.0, 0.0, 2.0, -0.5, -0.5, -0.5]);
    }

    #[test]
    fn sums_and_products_refuse_mismatched_lengths() {
        let mut y = [0.0; 3];
        assert!(add_forward(&[1.0; 2], &mut y, Accum::Add).is_err());
        assert!(concat_forward(1, 3, 2, 2, &[1.0; 2], &mut y).is_err());
        assert!(mul_forward(&[1.0; 3], &[1.0; 4], &mut y).is_err());
        assert!(gate_forward(1, 3, 1, &[1.0; 2], &[1.0; 3], &mut y).is_err());
    }
}
