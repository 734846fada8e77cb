//! Whether a gradient output is overwritten or added to, and the helpers every kernel family
//! shares: the element-wise `out (+)= f(a, b)` and the count of parallel groups a scratch allows.

/// Whether a gradient output is overwritten or added to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accum {
    /// `grad = g` (the output is not read).
    #[default]
    Replace,
    /// `grad += g`.
    Add,
}

impl Accum {
    /// The GEMM `beta` that implements this mode.
    #[inline]
    pub(crate) fn beta(self) -> f32 {
        match self {
            Accum::Replace => 0.0,
            Accum::Add => 1.0,
        }
    }

    /// `g` or `old + g`.
    #[inline]
    pub(crate) fn apply(self, old: f32, g: f32) -> f32 {
        match self {
            Accum::Replace => g,
            Accum::Add => old + g,
        }
    }

    /// Lane version of [`Accum::apply`].
    #[inline(always)]
    pub(crate) fn lanes(
        self,
        old: crate::simd::lane::Lane,
        g: crate::simd::lane::Lane,
    ) -> crate::simd::lane::Lane {
        match self {
            Accum::Replace => g,
            Accum::Add => old + g,
        }
    }
}

/// `out (+)= f(a[i], b[i])` lane by lane, per `accum`: `out` is read only when adding to it (a
/// backward pass that overwrites its gradient is bound by memory traffic).
#[inline(always)]
pub(crate) fn zip_map_into(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    accum: Accum,
    f: impl Fn(crate::simd::lane::Lane, crate::simd::lane::Lane) -> crate::simd::lane::Lane,
) {
    match accum {
        Accum::Replace => crate::simd::iter::zip_map(a, b, out, f),
        Accum::Add => crate::simd::iter::zip_map_acc(
            a,
            b,
            out,
            #[inline(always)]
            |a, b, old| old + f(a, b),
        ),
    }
}

/// Parallel groups for `items` items of `work` total work, each needing `slot` elements of a
/// scratch of `ws_len`: never more groups than the scratch has slots for.
pub(crate) fn groups_in(items: usize, work: usize, ws_len: usize, slot: usize) -> usize {
    let g = crate::par::groups(items, work);
    ws_len
        .checked_div(slot)
        .map_or(g, |slots| g.min(slots).max(1))
}

/// The shape of every backward pass that adds each output's gradient into the inputs it read,
/// plane by plane: on the caller's pool, `scatter(dy_p, dx_p)` for each of the `planes` planes
/// (`dy_p`: `out_plane` values of `dy`; `dx_p`: `in_plane` values of `dx`, zeroed first for
/// [`Accum::Replace`]). Each plane is summed by one thread in a fixed order, so the result does
/// not depend on the thread count.
pub(crate) fn scatter_planes(
    planes: usize,
    (dy, out_plane): (&[f32], usize),
    (dx, in_plane): (&mut [f32], usize),
    accum: Accum,
    scatter: impl Fn(&[f32], &mut [f32]) + Sync,
) -> crate::error::Result<()> {
    if in_plane == 0 {
        return Ok(());
    }
    let work = dy.len().max(dx.len());
    crate::par::for_each(
        planes,
        work,
        crate::par::Items(dx, in_plane),
        #[inline(always)]
        |r, crate::par::Items(dx, _)| {
            for (p, dx_p) in r.zip(dx.chunks_exact_mut(in_plane)) {
                if accum == Accum::Replace {
                    dx_p.fill(0.0);
                }
                scatter(&dy[p * out_plane..][..out_plane], dx_p);
            }
            Ok(())
        },
    )
}
