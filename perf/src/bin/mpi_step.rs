//! Data-parallel training steps over MPI, for the scaling model of the README: the MNIST-CNN and
//! X1 steps with their global batches split over the processes, and the all-reduce of X1's
//! gradient alone.
//!
//! ```text
//! cargo build --release -p cnnkit-perf --features mpi --bin mpi-step
//! CNNKIT_THREADS=2 target/release/mpi-step          # 1 process x 2 threads
//! mpirun -np 2 target/release/mpi-step              # 2 processes x 1 thread
//! ```

#[path = "../../../benches/suite/workloads.rs"]
mod workloads;

#[allow(dead_code)]
#[path = "../../../cli/src/distributed.rs"]
mod distributed;

use cnnkit::rng::Rng;
use cnnkit::{LayerSpec, Sequential, Shape3, TrainConfig, Trainer};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mpi: distributed::Mpi = distributed::start()?;
    let (rank, size) = (mpi.rank(), mpi.size());
    let threads: usize = std::env::var("CNNKIT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let say = |s: String| {
        if rank == 0 {
            println!("{s}");
        }
    };
    pool.install(|| -> anyhow::Result<()> {
        let cases: [(&str, &str, Shape3, usize, &str, usize); 2] = [
            ("mnist-cnn", workloads::MNIST_ARCH, [1, 28, 28], 64, "sgd(lr=0.01,momentum=0.9)", 30),
            ("X1", workloads::XRAY_ARCH, [1, 128, 128], workloads::XRAY_BATCH, "adam(lr=1e-3)", 8),
        ];
        for (name, arch, shape, global, opt, reps) in cases {
            let specs = LayerSpec::parse_list(arch)?;
            let model = Sequential::new(shape, &specs, 0)?;
            let cfg = TrainConfig { batch_size: global, ..Default::default() };
            let mut t = Trainer::new(model, opt.parse()?, cfg)?;
            t.set_gradient_sync(mpi.sync())?;
            let d = shape.iter().product::<usize>();
            let (lo, hi) = (global * rank / size, global * (rank + 1) / size);
            let mut r = Rng::new(7);
            let x: Vec<f32> = (0..global * d).map(|_| r.normal() as f32).collect();
            let labels: Vec<u32> = (0..global).map(|i| (i % 3) as u32).collect();
            let (xs, ls) = (&x[lo * d..hi * d], &labels[lo..hi]);
            for _ in 0..2 {
                t.step(xs, ls)?;
            }
            let mut times = Vec::new();
            for _ in 0..reps {
                mpi.any(false); // line the processes up
                let s = Instant::now();
                t.step(xs, ls)?;
                times.push(s.elapsed().as_secs_f64());
            }
            let m = median(times);
            say(format!(
                "{name} step, global batch {global}: {size} process(es) x {threads} thread(s): median {:.2} ms, {:.0} images/s",
                m * 1e3,
                global as f64 / m
            ));
            if name == "X1" {
                // The all-reduce alone, on X1's gradient.
                let mut g = vec![1.0f32; t.model().param_count()];
                let mut sync = mpi.sync();
                let mut times = Vec::new();
                for _ in 0..50 {
                    mpi.any(false);
                    let s = Instant::now();
                    sync.all_reduce_sum(&mut g)?;
                    times.push(s.elapsed().as_secs_f64());
                }
                let m = median(times);
                say(format!(
                    "all-reduce of X1's gradient ({} floats, {:.2} MB) over {size} process(es): median {:.3} ms",
                    g.len(),
                    g.len() as f64 * 4e-6,
                    m * 1e3
                ));
            }
        }
        Ok(())
    })
}
