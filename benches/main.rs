//! `cargo bench`: every standard workload (C1–C7 in three passes, G1–G3, P1–P3, the activations,
//! S1–S2, B1, the MNIST-CNN step and inference) at 1 and 2 threads, with throughput in FLOP/s
//! (compute-bound) or bytes/s (memory-bound). `cargo bench -- conv/C3` runs a subset.
//!
//! The side-by-side comparison with PyTorch and the machine's peak is `perf/` (see the README).

use criterion::{Criterion, Throughput, criterion_group};

#[path = "suite/stamp.rs"]
mod stamp;
#[path = "suite/workloads.rs"]
mod workloads;

fn bench_group(c: &mut Criterion, name: &str) {
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        // Build (scratch sized for the pool) and time inside the pool; criterion itself stays
        // outside, entering the pool once per batch of iterations.
        let cases = pool.install(|| workloads::group(name));
        let mut g = c.benchmark_group(name);
        g.sample_size(10)
            .measurement_time(std::time::Duration::from_secs(2))
            .warm_up_time(std::time::Duration::from_millis(300));
        for mut case in cases {
            if case.flops > 0.0 {
                g.throughput(Throughput::Elements(case.flops as u64));
            } else if case.bytes > 0.0 {
                g.throughput(Throughput::Bytes(case.bytes as u64));
            }
            let run = &mut case.run;
            g.bench_function(format!("{}/{}/t{threads}", case.id, case.op), |b| {
                b.iter_custom(|iters| {
                    pool.install(|| {
                        let t = std::time::Instant::now();
                        for _ in 0..iters {
                            run();
                        }
                        t.elapsed()
                    })
                })
            });
        }
        g.finish();
    }
}

fn all(c: &mut Criterion) {
    for name in workloads::GROUPS {
        bench_group(c, name);
    }
}

criterion_group!(benches, all);
/// Where criterion keeps its results (its own rule: `CRITERION_HOME`, else the target directory).
fn criterion_home() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    std::path::PathBuf::from(target).join("criterion")
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `--save-baseline NAME`: stamp the baseline with the commit, CPU and instruction set, so
    // `speed-diff criterion:OLD criterion:NEW` can say what it compares.
    let args: Vec<String> = std::env::args().collect();
    if let Some(name) = args
        .iter()
        .position(|a| a == "--save-baseline")
        .and_then(|i| args.get(i + 1))
    {
        let path = criterion_home().join(format!("{name}.stamp.json"));
        if let Err(e) = std::fs::write(&path, stamp::json() + "\n") {
            eprintln!("could not write {}: {e}", path.display());
        }
    }
}
