//! The only module that names `rayon`: batch splitting, the serial threshold, and the serial
//! path when the `rayon` feature is off.
//!
//! Kernels run on the caller's rayon pool (`rayon::current_num_threads()`), so an embedding
//! program controls the thread count with `ThreadPool::install`. Work is split into at most one
//! contiguous group of items per thread; every group gets disjoint `&mut` sub-slices of the outputs
//! (and its own slot of scratch), never a shared raw pointer.
//!
//! **Determinism.** A reduction (weight gradients, batch-norm statistics, bias gradients) is
//! always split over its *outputs*, never over the axis it sums: each output element is summed by
//! one thread, in the same order, whatever the number of threads. Results are therefore
//! bit-identical for 1, 2 or any number of threads.

use crate::error::Result;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default for [`parallel_threshold`]: below about this many floating-point operations a
/// kernel runs on the calling thread (a rayon fork-join costs a few microseconds).
pub const DEFAULT_PARALLEL_THRESHOLD: usize = 1 << 17;

static MIN_WORK: AtomicUsize = AtomicUsize::new(DEFAULT_PARALLEL_THRESHOLD);

/// Sets the amount of work (roughly, floating-point operations) below which kernels do not fork.
///
/// `0` makes every kernel with more than one item split, which tests use to exercise the parallel
/// paths on tiny shapes. Results do not depend on this setting.
pub fn set_parallel_threshold(work: usize) {
    MIN_WORK.store(work, Ordering::Relaxed);
}

/// The current threshold (see [`set_parallel_threshold`]).
pub fn parallel_threshold() -> usize {
    MIN_WORK.load(Ordering::Relaxed)
}

/// Threads of the current rayon pool (1 without the `rayon` feature).
#[inline]
pub fn threads() -> usize {
    #[cfg(feature = "rayon")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "rayon"))]
    {
        1
    }
}

/// Runs `a` and `b`, potentially in parallel.
#[inline]
pub(crate) fn join<RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    #[cfg(feature = "rayon")]
    {
        // rayon's own bookkeeping runs outside the probe; cnnkit's closures inside it, on
        // whichever thread runs them (see `probe`).
        let tracked = probe::set(false);
        let r = rayon::join(
            move || probe::within(tracked, a),
            move || probe::within(tracked, b),
        );
        probe::set(tracked);
        r
    }
    #[cfg(not(feature = "rayon"))]
    {
        (a(), b())
    }
}

/// Which code is cnnkit's own, per thread: for tests that count heap allocations (a counting
/// global allocator asks [`probe::active`]) and must not count the thread pool's internal
/// bookkeeping, which allocates now and then depending on scheduling. A thread marks itself with
/// [`probe::set`]; every closure cnnkit hands to the pool runs with the mark of the thread that
/// forked it, and the pool's own code between them runs unmarked. Costs a thread-local write per
/// fork.
#[doc(hidden)]
pub mod probe {
    use std::cell::Cell;

    thread_local! {
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
    }

    /// Whether this thread is running code under the probe (safe to call from an allocator).
    pub fn active() -> bool {
        ACTIVE.try_with(Cell::get).unwrap_or(false)
    }

    /// Marks (or unmarks) this thread; returns the previous mark.
    pub fn set(on: bool) -> bool {
        ACTIVE.try_with(|a| a.replace(on)).unwrap_or(false)
    }

    /// Runs `f` with this thread marked `on`, then restores the mark.
    #[inline]
    pub(crate) fn within<R>(on: bool, f: impl FnOnce() -> R) -> R {
        let prev = set(on);
        let r = f();
        set(prev);
        r
    }
}

/// Runs `f` once on every thread of the current pool (on the calling thread without the `rayon`
/// feature): to make per-thread buffers before the steps that must not allocate.
pub(crate) fn on_every_thread(f: impl Fn() + Sync) {
    #[cfg(feature = "rayon")]
    {
        rayon::broadcast(|_| f());
    }
    #[cfg(not(feature = "rayon"))]
    {
        f();
    }
}

/// How many groups `items` items with `work` total work should be split into.
#[inline]
pub(crate) fn groups(items: usize, work: usize) -> usize {
    if items <= 1 || work < parallel_threshold() {
        1
    } else {
        items.min(threads())
    }
}

/// Something that can be cut between items: a tuple of output slices, each with its own number
/// of elements per item.
pub(crate) trait Parts: Send + Sized {
    /// Splits after `items` items.
    fn split(self, items: usize) -> (Self, Self);
}

/// A slice of `per_item` elements per item.
pub(crate) struct Items<'a, T>(pub &'a mut [T], pub usize);

impl<T: Send> Parts for Items<'_, T> {
    #[inline]
    fn split(self, items: usize) -> (Self, Self) {
        let at = (items * self.1).min(self.0.len());
        let (a, b) = self.0.split_at_mut(at);
        (Items(a, self.1), Items(b, self.1))
    }
}

/// The planes of a `[n][c][plane]` buffer, cut between channels: each part holds every sample's
/// planes of its own channels, which lie `c·plane` apart (a per-channel pass over a batch, such
/// as a batch norm's input gradient, writes them while another thread writes other channels).
pub(crate) struct ChannelPlanes<'a> {
    ptr: *mut f32,
    n: usize,
    c: usize,
    plane: usize,
    /// The channels of this part.
    ch: Range<usize>,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a part only reaches the planes of its own channels (`plane_mut` checks), and parts
// made by `split` hold disjoint channel ranges of one exclusively borrowed buffer, so sending a
// part to another thread is sending a `&mut` to data no other part reaches.
#[allow(unsafe_code)]
unsafe impl Send for ChannelPlanes<'_> {}

impl<'a> ChannelPlanes<'a> {
    /// All `c` channels of `buf`, which holds exactly `n·c·plane` values.
    pub(crate) fn new(buf: &'a mut [f32], n: usize, c: usize, plane: usize) -> Self {
        assert_eq!(buf.len(), n * c * plane, "ChannelPlanes: buffer length");
        ChannelPlanes {
            ptr: buf.as_mut_ptr(),
            n,
            c,
            plane,
            ch: 0..c,
            _buf: std::marker::PhantomData,
        }
    }

    /// The plane of sample `i` and channel `ch` (one of this part's).
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn plane_mut(&mut self, i: usize, ch: usize) -> &mut [f32] {
        assert!(
            i < self.n && self.ch.contains(&ch),
            "ChannelPlanes: plane out of the part"
        );
        // SAFETY: `(i·c + ch + 1)·plane ≤ n·c·plane`, the buffer's length (checked in `new`), so
        // the range lies inside the buffer; `ch` is this part's, so no other part reaches it, and
        // the `&mut self` borrow keeps this part from handing out a second reference meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add((i * self.c + ch) * self.plane), self.plane)
        }
    }
}

impl Parts for ChannelPlanes<'_> {
    #[inline]
    fn split(self, items: usize) -> (Self, Self) {
        let mid = (self.ch.start + items).min(self.ch.end);
        let part = |ch: Range<usize>| ChannelPlanes {
            ch,
            _buf: std::marker::PhantomData,
            ..self
        };
        (part(self.ch.start..mid), part(mid..self.ch.end))
    }
}

impl<A: Parts> Parts for Option<A> {
    #[inline]
    fn split(self, items: usize) -> (Self, Self) {
        match self {
            Some(a) => {
                let (x, y) = a.split(items);
                (Some(x), Some(y))
            }
            None => (None, None),
        }
    }
}

impl Parts for () {
    #[inline]
    fn split(self, _: usize) -> (Self, Self) {
        ((), ())
    }
}

impl<A: Parts, B: Parts> Parts for (A, B) {
    #[inline]
    fn split(self, items: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(items);
        let (b0, b1) = self.1.split(items);
        ((a0, b0), (a1, b1))
    }
}

impl<A: Parts, B: Parts, C: Parts> Parts for (A, B, C) {
    #[inline]
    fn split(self, items: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(items);
        let (b0, b1) = self.1.split(items);
        let (c0, c1) = self.2.split(items);
        ((a0, b0, c0), (a1, b1, c1))
    }
}

impl<A: Parts, B: Parts, C: Parts, D: Parts> Parts for (A, B, C, D) {
    #[inline]
    fn split(self, items: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split(items);
        let (b0, b1) = self.1.split(items);
        let (c0, c1) = self.2.split(items);
        let (d0, d1) = self.3.split(items);
        ((a0, b0, c0, d0), (a1, b1, c1, d1))
    }
}

/// Splits items `0..n` into `groups` contiguous, near-equal ranges and runs
/// `f(range, parts_of_range, scratch_slot)` for each, in parallel. Group `k` gets scratch
/// `ws[k*slot..(k+1)*slot]`; the caller guarantees `ws.len() >= groups * slot`. Returns the first
/// error in group order.
///
/// With `groups == 1` this is a plain call on the current thread: one body for both paths.
pub(crate) fn for_each_group<P: Parts>(
    n: usize,
    groups: usize,
    parts: P,
    ws: &mut [f32],
    slot: usize,
    f: impl Fn(Range<usize>, P, &mut [f32]) -> Result<()> + Sync,
) -> Result<()> {
    debug_assert!(groups >= 1 && ws.len() >= groups * slot);
    go(0..n, groups.clamp(1, n.max(1)), parts, ws, slot, &f)
}

fn go<P: Parts>(
    r: Range<usize>,
    groups: usize,
    parts: P,
    ws: &mut [f32],
    slot: usize,
    f: &(impl Fn(Range<usize>, P, &mut [f32]) -> Result<()> + Sync),
) -> Result<()> {
    if groups <= 1 {
        // Each group's work is compiled for every instruction set (see `arch::dispatch`).
        return crate::arch::dispatch(
            #[inline(always)]
            || f(r, parts, &mut ws[..slot]),
        );
    }
    let left = groups / 2;
    let mid = r.start + r.len() * left / groups;
    let (pl, pr) = parts.split(mid - r.start);
    let (wl, wr) = ws.split_at_mut(left * slot);
    let (a, b) = join(
        || go(r.start..mid, left, pl, wl, slot, f),
        || go(mid..r.end, groups - left, pr, wr, slot, f),
    );
    a.and(b)
}

/// [`for_each_group`] without scratch, with the group count chosen from `work`.
#[inline]
pub(crate) fn for_each<P: Parts>(
    n: usize,
    work: usize,
    parts: P,
    f: impl Fn(Range<usize>, P) -> Result<()> + Sync,
) -> Result<()> {
    for_each_group(
        n,
        groups(n, work),
        parts,
        &mut [],
        0,
        #[inline(always)]
        |r, p, _| f(r, p),
    )
}

/// Elements per block of an element-wise kernel: the unit [`for_each_block`] splits on.
pub(crate) const BLOCK: usize = 1 << 14;

/// Runs `f(element_range, parts)` over blocks of [`BLOCK`] elements of a length-`len` element-wise
/// operation; `parts` must be built with `Items(slice, BLOCK)`. `cost` is the work per element.
#[inline]
pub(crate) fn for_each_block<P: Parts>(
    len: usize,
    cost: usize,
    parts: P,
    f: impl Fn(Range<usize>, P) + Sync,
) {
    let blocks = len.div_ceil(BLOCK);
    // The closure cannot fail.
    let _ = for_each(
        blocks,
        len.saturating_mul(cost),
        parts,
        #[inline(always)]
        |r, p| {
            f(r.start * BLOCK..(r.end * BLOCK).min(len), p);
            Ok(())
        },
    );
}

/// `f(i, out_row)` for every row `i` of the row-major output `out` (rows of `cols`, at least 1),
/// rows split over the current pool. `f` should be `#[inline(always)]` (see `simd::dispatch`).
#[inline(always)]
pub(crate) fn for_each_row(
    cols: usize,
    work: usize,
    out: &mut [f32],
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let rows = out.len() / cols;
    // The closure cannot fail.
    let _ = for_each(
        rows,
        work,
        Items(out, cols),
        #[inline(always)]
        |r, Items(o, _)| {
            for (i, o_r) in r.zip(o.chunks_exact_mut(cols)) {
                f(i, o_r);
            }
            Ok(())
        },
    );
}

/// `f` applied to every item, in parallel (serially without the `rayon` feature), results in
/// item order. For coarse work such as decoding files.
#[cfg_attr(not(feature = "image"), allow(dead_code))]
pub(crate) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        items.par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        items.iter().map(f).collect()
    }
}

/// At most this many partial sums in [`sum_over_rows`].
const MAX_PARTIALS: usize = 64;

/// `Σ f(rows_b, out_b)` over fixed blocks `rows_b` of `0..rows`, where `out_b` is the block's part
/// of the row-major output `out` (`rows * cols` elements, or empty for no output). Blocks run in
/// parallel; each returns its own partial sum and the partials are added in block order. The
/// blocks depend only on `rows`, so the result is the same for any number of threads.
pub(crate) fn sum_over_rows(
    rows: usize,
    cols: usize,
    work: usize,
    out: &mut [f32],
    f: impl Fn(Range<usize>, &mut [f32]) -> f64 + Sync,
) -> f64 {
    let block = rows.div_ceil(MAX_PARTIALS).max(1);
    let blocks = rows.div_ceil(block);
    let per = if out.is_empty() { 0 } else { block * cols };
    let mut partials = [0.0f64; MAX_PARTIALS];
    // The closure cannot fail.
    let _ = for_each(
        blocks,
        work,
        (Items(out, per), Items(&mut partials[..blocks], 1)),
        #[inline(always)]
        |br, (Items(o, _), Items(p, _))| {
            let mut o = o;
            for (b, pb) in br.zip(p.iter_mut()) {
                let rr = b * block..((b + 1) * block).min(rows);
                let take = if per == 0 { 0 } else { rr.len() * cols };
                let (ob, rest) = std::mem::take(&mut o).split_at_mut(take);
                o = rest;
                *pb = f(rr, ob);
            }
            Ok(())
        },
    );
    partials[..blocks].iter().sum()
}

#[cfg(all(test, feature = "rayon"))]
mod tests {
    /// The probe mark follows cnnkit's closures onto the pool's threads, and the forking
    /// thread's mark is back after the join.
    #[test]
    fn probe_marks_forked_closures_on_every_thread() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for on in [true, false] {
                let was = super::probe::set(on);
                let seen = std::sync::Mutex::new(Vec::new());
                let _ = super::for_each_group(8, 8, (), &mut [], 0, |_, _, _| {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    seen.lock()
                        .unwrap()
                        .push((std::thread::current().id(), super::probe::active()));
                    Ok(())
                });
                let seen = seen.into_inner().unwrap();
                assert!(seen.iter().all(|&(_, a)| a == on), "{seen:?}");
                assert_eq!(super::probe::active(), on);
                super::probe::set(was);
            }
        });
    }

    use super::*;

    #[test]
    fn groups_cover_every_item_once_with_their_own_slices() {
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for n in 0..12 {
                    for g in 1..6 {
                        let mut a = vec![0u32; n * 3];
                        let mut b = vec![0u8; n];
                        let mut ws = vec![0.0f32; g * 2];
                        for_each_group(
                            n,
                            g,
                            (Items(&mut a, 3), Items(&mut b, 1)),
                            &mut ws,
                            2,
                            |r, (Items(a, _), Items(b, _)), s| {
                                assert_eq!(a.len(), r.len() * 3);
                                assert_eq!(b.len(), r.len());
                                assert_eq!(s.len(), 2);
                                for (k, i) in r.enumerate() {
                                    a[3 * k] += i as u32 + 1;
                                    b[k] += 1;
                                }
                                Ok(())
                            },
                        )
                        .unwrap();
                        for i in 0..n {
                            assert_eq!(a[3 * i], i as u32 + 1);
                            assert_eq!(b[i], 1);
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod channel_planes_tests {
    use super::{ChannelPlanes, Parts};

    /// Parts cut between channels reach exactly their own channels' planes of every sample.
    #[test]
    fn parts_reach_their_own_channels_of_every_sample() {
        let (n, c, plane) = (3, 5, 4);
        let mut buf = vec![0.0f32; n * c * plane];
        let (mut a, rest) = ChannelPlanes::new(&mut buf, n, c, plane).split(2);
        let (mut b, mut d) = rest.split(1);
        for i in 0..n {
            for (part, chs) in [(&mut a, 0..2), (&mut b, 2..3), (&mut d, 3..5)] {
                for ch in chs {
                    part.plane_mut(i, ch).fill((i * c + ch) as f32);
                }
            }
        }
        let want: Vec<f32> = (0..n * c * plane).map(|k| (k / plane) as f32).collect();
        assert_eq!(buf, want);
    }

    #[test]
    #[should_panic(expected = "out of the part")]
    fn a_part_refuses_another_parts_channel() {
        let mut buf = vec![0.0f32; 2 * 4 * 3];
        let (mut a, _b) = ChannelPlanes::new(&mut buf, 2, 4, 3).split(2);
        a.plane_mut(0, 2);
    }
}
