//! `cargo bench`: every standard workload (C1–C7 in three passes, G1–G3, P1–P3, the activations,
//! S1–S2, B1, the MNIST-CNN step and inference) at 1 and 2 threads, with throughput in FLOP/s
//! (compute-bound) or bytes/s (memory-bound). `cargo bench -- conv/C3` runs a subset.
//!
//! The side-by-side comparison with PyTorch and the machine's peak is `perf/` (see the README).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

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
criterion_main!(benches);
