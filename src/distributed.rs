//! Data-parallel training without a dependency: the hook a [`Trainer`](crate::Trainer) calls to
//! combine the gradients of several workers, each holding the whole model and a shard of every
//! global batch. An embedder plugs in their engine (MPI, NCCL-like rings, sockets) by
//! implementing [`GradientSync`]; [`LocalSync`] runs workers as threads of one process.
//!
//! With a hook set ([`Trainer::set_gradient_sync`](crate::Trainer::set_gradient_sync)), every
//! worker walks the same shuffled global batches (the same seed gives the same order) and takes
//! its balanced share of each; after backward it scales its gradient by `n_local / n_global` and
//! the hook sums the workers' gradients, so every worker applies the global batch's mean
//! gradient, as a single process would. Loss and accuracy are summed the same way. Equal to the
//! single-process run within float tolerance (the sums are ordered differently) for networks
//! without batch norm or random layers: like PyTorch's `DistributedDataParallel` without
//! `SyncBatchNorm`, batch norm uses each shard's statistics, and dropout / RReLU / noise draw
//! per worker.

use crate::error::{Error, Result};
use std::sync::{Arc, Barrier, Mutex};

/// Collective operations over the workers of a data-parallel run. Every worker calls the same
/// operations in the same order with buffers of the same length.
pub trait GradientSync: Send + std::fmt::Debug {
    /// This worker's index, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of workers.
    fn size(&self) -> usize;
    /// Replaces `data` on every worker by the element-wise sum over the workers. Every worker
    /// must end with the same bits (sum in a fixed order), or their weights drift apart.
    ///
    /// # Errors
    /// The engine's failures (a lost worker, mismatched lengths); training stops with them.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()>;
    /// Replaces `data` on every worker by worker 0's.
    ///
    /// # Errors
    /// As [`GradientSync::all_reduce_sum`].
    fn broadcast(&mut self, data: &mut [f32]) -> Result<()>;
}

#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f32>>>,
}

/// Workers as threads of one process: a group made by [`LocalSync::group`], one member per
/// thread. Sums are taken in rank order, so every member gets the same bits. All members must
/// make the same calls (a member that stops calling leaves the others waiting).
#[derive(Debug)]
pub struct LocalSync {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl LocalSync {
    /// `size` members of one group, ranks `0..size`.
    ///
    /// # Errors
    /// [`Error::InvalidArg`] for a size of 0.
    pub fn group(size: usize) -> Result<Vec<LocalSync>> {
        if size == 0 {
            return Err(Error::invalid(
                "LocalSync::group",
                "size",
                "must be at least 1",
            ));
        }
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
        });
        Ok((0..size)
            .map(|rank| LocalSync {
                rank,
                size,
                shared: Arc::clone(&shared),
            })
            .collect())
    }

    /// Deposits `data`, waits for everyone, computes `f(slots)` into `data`, waits again (so no
    /// slot is overwritten before everyone has read it).
    fn exchange(&mut self, data: &mut [f32], f: impl Fn(&[Vec<f32>], &mut [f32])) -> Result<()> {
        fn lock(s: &Shared) -> Result<std::sync::MutexGuard<'_, Vec<Vec<f32>>>> {
            s.slots
                .lock()
                .map_err(|_| Error::invalid("LocalSync", "group", "a member panicked"))
        }
        {
            let mut slots = lock(&self.shared)?;
            slots[self.rank].clear();
            slots[self.rank].extend_from_slice(data);
        }
        self.shared.barrier.wait();
        let r = {
            let slots = lock(&self.shared)?;
            if slots.iter().any(|s| s.len() != data.len()) {
                Err(Error::invalid(
                    "LocalSync",
                    "data",
                    format!(
                        "buffer lengths differ across members: {:?}",
                        slots.iter().map(Vec::len).collect::<Vec<_>>()
                    ),
                ))
            } else {
                f(&slots, data);
                Ok(())
            }
        };
        self.shared.barrier.wait();
        r
    }
}

impl GradientSync for LocalSync {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        self.exchange(data, |slots, out| {
            out.copy_from_slice(&slots[0]);
            for s in &slots[1..] {
                out.iter_mut().zip(s).for_each(|(o, v)| *o += v);
            }
        })
    }
    fn broadcast(&mut self, data: &mut [f32]) -> Result<()> {
        self.exchange(data, |slots, out| out.copy_from_slice(&slots[0]))
    }
}

/// The balanced share of `len` items for worker `rank` of `size`: `len·rank/size ..
/// len·(rank+1)/size`.
pub(crate) fn shard(len: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    len * rank / size..len * (rank + 1) / size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_group_sums_in_rank_order_and_broadcasts_rank_0() {
        let group = LocalSync::group(3).unwrap();
        let out: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = group
                .into_iter()
                .map(|mut g| {
                    s.spawn(move || {
                        let r = g.rank() as f32;
                        let mut a = vec![r, 1.0, 1e8 * (r - 1.0)];
                        g.all_reduce_sum(&mut a).unwrap();
                        let mut b = vec![r + 10.0; 2];
                        g.broadcast(&mut b).unwrap();
                        (a, b)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, b) in &out {
            // 0 + 1 + 2; 3 ones; (−1e8 + 0) + 1e8 in rank order.
            assert_eq!(a, &vec![3.0, 3.0, 0.0]);
            assert_eq!(b, &vec![10.0, 10.0]);
        }
        assert!(LocalSync::group(0).is_err());
        let shards: Vec<_> = (0..3).map(|r| shard(7, r, 3)).collect();
        assert_eq!(shards, [0..2, 2..4, 4..7]);
    }
}
