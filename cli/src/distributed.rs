//! `cnnkit train --distributed`: data-parallel training over MPI (Open MPI or MPICH through the
//! `mpi` crate), when the command is built with the `mpi` feature. Each process is one worker of
//! the library's gradient hook (`cnnkit::distributed`); process 0 alone prints, saves
//! checkpoints and writes reports.

use anyhow::{Result, bail};

/// The number of processes the launcher started, from the variables Open MPI, MPICH / PMI and
/// Slurm set (`None` outside a launcher).
pub fn launched_processes() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Refuses a plain run started as several processes: each would train the same model alone and
/// write the same files.
pub fn refuse_unasked() -> Result<()> {
    if let Some(n) = launched_processes().filter(|&n| n > 1) {
        bail!(
            "started as one of {n} processes (mpirun) without --distributed: add --distributed to train data-parallel"
        );
    }
    Ok(())
}

/// What the processes of a job must agree on before their first collective operation, in the
/// order of each process's record (after its status word). Hashes (`false`) are compared only;
/// counts (`true`) are named in the message.
pub const FIELDS: [(&str, bool); 10] = [
    ("the number of model parameters", true),
    ("the architecture (--arch)", false),
    ("the number of classes", true),
    ("the number of training images", true),
    ("the training data (images and labels)", false),
    ("--epochs", true),
    ("--batch-size", true),
    ("--seed", true),
    ("the other training options", false),
    ("the position resumed from (--resume)", false),
];

/// One process's record: its status (0 ready, 1 failed) and then [`FIELDS`].
pub type Record = [u64; FIELDS.len() + 1];

/// What a process does after the records are exchanged.
#[derive(Debug, PartialEq)]
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub enum Verdict {
    /// Every process is ready and they agree.
    Proceed,
    /// This process reports its own error (it is the first that failed).
    ReportOwn,
    /// This process reports the disagreement (process 0).
    Report(String),
    /// Another process reports; this one ends quietly with a failure.
    Quiet,
}

/// Judges the records of every process (indexed by rank) for process `rank`: the first failed
/// process reports its error; otherwise process 0 names the first field on which a process
/// differs from it.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub fn judge(records: &[Record], rank: usize) -> Verdict {
    if let Some(first) = records.iter().position(|r| r[0] != 0) {
        return if first == rank {
            Verdict::ReportOwn
        } else {
            Verdict::Quiet
        };
    }
    let Some(r0) = records.first() else {
        return Verdict::Proceed;
    };
    for (i, (name, count)) in FIELDS.iter().enumerate() {
        let k = i + 1;
        let differ: Vec<usize> = (1..records.len())
            .filter(|&r| records[r][k] != r0[k])
            .collect();
        if differ.is_empty() {
            continue;
        }
        if rank != 0 {
            return Verdict::Quiet;
        }
        let detail = if *count {
            let by_rank: Vec<String> = records
                .iter()
                .enumerate()
                .map(|(r, rec)| format!("{} on process {r}", rec[k]))
                .collect();
            by_rank.join(", ")
        } else {
            let ranks: Vec<String> = differ.iter().map(usize::to_string).collect();
            format!("process(es) {} differ from process 0", ranks.join(", "))
        };
        return Verdict::Report(format!(
            "the {} processes disagree on {name}: {detail}; every process must load the same data with the same model and options",
            records.len()
        ));
    }
    Verdict::Proceed
}

/// A 64-bit hash of `words` (FNV-1a over 64-bit words, each step mixed): for comparing records
/// across processes and runs, not for security.
pub fn hash_words(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// [`hash_words`] of a string's bytes (and its length).
pub fn hash_str(s: &str) -> u64 {
    hash_words(
        std::iter::once(s.len() as u64).chain(
            s.as_bytes()
                .chunks(8)
                .map(|c| c.iter().fold(0u64, |a, &b| (a << 8) | b as u64)),
        ),
    )
}

#[cfg(feature = "mpi")]
mod imp {
    use anyhow::{Context, Result, bail};
    use cnnkit::distributed::GradientSync;
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// A running MPI environment (finalised when dropped).
    pub struct Mpi {
        _universe: mpi::environment::Universe,
        rank: usize,
        size: usize,
    }

    /// Starts MPI; calls may come from any one thread at a time.
    pub fn start() -> Result<Mpi> {
        let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .context("MPI could not start (or was started twice)")?;
        if level < mpi::Threading::Serialized {
            bail!(
                "the MPI library does not allow calls from worker threads (needs MPI_THREAD_SERIALIZED)"
            );
        }
        let world = universe.world();
        Ok(Mpi {
            rank: world.rank() as usize,
            size: world.size() as usize,
            _universe: universe,
        })
    }

    impl Mpi {
        pub fn rank(&self) -> usize {
            self.rank
        }
        pub fn size(&self) -> usize {
            self.size
        }
        /// The trainer's hook.
        pub fn sync(&self) -> Box<dyn GradientSync> {
            Box::new(MpiSync {
                rank: self.rank,
                size: self.size,
                buf: Vec::new(),
            })
        }
        /// Exchanges every process's record (a fixed-size message, whatever the process holds)
        /// and judges them for this one: the first collective of a job, before any whose length
        /// depends on the model or the data.
        pub fn agree(&self, mine: &super::Record) -> super::Verdict {
            let mut all = vec![0u64; mine.len() * self.size];
            SimpleCommunicator::world().all_gather_into(&mine[..], &mut all[..]);
            let records: Vec<super::Record> = all
                .chunks_exact(mine.len())
                .map(|c| {
                    let mut r = [0u64; super::FIELDS.len() + 1];
                    r.copy_from_slice(c);
                    r
                })
                .collect();
            super::judge(&records, self.rank)
        }

        /// Ends every process of the job at once (MPI_Abort), after this one has said why.
        pub fn abort(&self, code: i32) -> ! {
            SimpleCommunicator::world().abort(code)
        }

        /// Whether any process wants to stop (a collective: every process calls it at the same
        /// point, so all stop after the same step).
        pub fn any(&self, flag: bool) -> bool {
            let mine = flag as i32;
            let mut any = 0i32;
            SimpleCommunicator::world().all_reduce_into(&mine, &mut any, SystemOperation::max());
            any != 0
        }
    }

    /// The world communicator as the library's gradient hook. (It holds no communicator handle:
    /// those cannot move between threads, and the world is always at hand.)
    #[derive(Debug)]
    struct MpiSync {
        rank: usize,
        size: usize,
        buf: Vec<f32>,
    }

    impl MpiSync {
        /// Fails on every process alike when the processes pass buffers of different lengths to
        /// the same collective (which would read and write past the shorter ones).
        fn same_len(&self, len: usize) -> cnnkit::Result<()> {
            let mine = [len as u64, u64::MAX - len as u64];
            let mut most = [0u64; 2];
            SimpleCommunicator::world().all_reduce_into(
                &mine[..],
                &mut most[..],
                SystemOperation::max(),
            );
            let (longest, shortest) = (most[0], u64::MAX - most[1]);
            if longest != shortest {
                return Err(cnnkit::Error::InvalidArg {
                    op: "distributed training",
                    arg: "buffer",
                    reason: format!(
                        "the processes pass buffers of {shortest} to {longest} values to one collective operation (process {} has {len}): their models differ",
                        self.rank
                    ),
                });
            }
            Ok(())
        }
    }

    impl GradientSync for MpiSync {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&mut self, data: &mut [f32]) -> cnnkit::Result<()> {
            self.same_len(data.len())?;
            self.buf.clear();
            self.buf.extend_from_slice(data);
            SimpleCommunicator::world().all_reduce_into(
                &self.buf[..],
                data,
                SystemOperation::sum(),
            );
            Ok(())
        }
        fn broadcast(&mut self, data: &mut [f32]) -> cnnkit::Result<()> {
            self.same_len(data.len())?;
            SimpleCommunicator::world()
                .process_at_rank(0)
                .broadcast_into(data);
            Ok(())
        }
    }
}

#[cfg(feature = "mpi")]
pub use imp::{Mpi, start};

/// Without the `mpi` feature there is no MPI environment (the type has no values), and
/// [`start`] says how to get one.
#[cfg(not(feature = "mpi"))]
pub enum Mpi {}

#[cfg(not(feature = "mpi"))]
pub fn start() -> Result<Mpi> {
    bail!(
        "--distributed: this cnnkit was built without MPI support; build it with `cargo build --release -p cnnkit-cli --features mpi` (needs an MPI library and libclang: apt-get install openmpi-bin libopenmpi-dev libclang-dev) and start it with `mpirun -np N cnnkit train --distributed ...`"
    )
}

#[cfg(not(feature = "mpi"))]
impl Mpi {
    pub fn rank(&self) -> usize {
        match *self {}
    }
    pub fn size(&self) -> usize {
        match *self {}
    }
    pub fn sync(&self) -> Box<dyn cnnkit::distributed::GradientSync> {
        match *self {}
    }
    pub fn any(&self, _: bool) -> bool {
        match *self {}
    }
    pub fn agree(&self, _: &Record) -> Verdict {
        match *self {}
    }
    pub fn abort(&self, _: i32) -> ! {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(f: impl Fn(usize) -> u64) -> Record {
        std::array::from_fn(|i| if i == 0 { 0 } else { f(i) })
    }

    #[test]
    fn the_first_failed_process_reports_and_the_others_stay_quiet() {
        let ok = record(|i| i as u64);
        let mut failed = ok;
        failed[0] = 1;
        let recs = [ok, failed, failed];
        assert_eq!(judge(&recs, 0), Verdict::Quiet);
        assert_eq!(judge(&recs, 1), Verdict::ReportOwn);
        assert_eq!(judge(&recs, 2), Verdict::Quiet);
    }

    #[test]
    fn process_0_names_the_first_field_that_differs() {
        let a = record(|i| 100 + i as u64);
        let mut b = a;
        b[4] = 601; // training images
        b[9] = 7; // options (a hash): later in the order, not named
        let recs = [a, a, b];
        let Verdict::Report(m) = judge(&recs, 0) else {
            panic!("process 0 reports");
        };
        assert!(
            m.contains("the 3 processes disagree on the number of training images"),
            "{m}"
        );
        assert!(
            m.contains("104 on process 0, 104 on process 1, 601 on process 2"),
            "{m}"
        );
        assert_eq!(judge(&recs, 1), Verdict::Quiet);
        assert_eq!(judge(&recs, 2), Verdict::Quiet);
        let mut c = a;
        c[2] ^= 1; // the architecture's hash
        let Verdict::Report(m) = judge(&[a, c], 0) else {
            panic!("process 0 reports");
        };
        assert!(
            m.contains("--arch") && m.contains("process(es) 1 differ"),
            "{m}"
        );
        assert_eq!(judge(&[a, a], 0), Verdict::Proceed);
        assert_eq!(judge(&[a, a], 1), Verdict::Proceed);
    }

    #[test]
    fn hashes_tell_strings_apart() {
        assert_ne!(hash_str("ab"), hash_str("ba"));
        assert_ne!(hash_str(""), hash_str("\0"));
        assert_eq!(hash_str("--epochs 2"), hash_str("--epochs 2"));
    }
}
