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

    impl GradientSync for MpiSync {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&mut self, data: &mut [f32]) -> cnnkit::Result<()> {
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
            SimpleCommunicator::world()
                .process_at_rank(0)
                .broadcast_into(data);
            Ok(())
        }
    }
}

#[cfg(feature = "mpi")]
pub use imp::start;

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
}
