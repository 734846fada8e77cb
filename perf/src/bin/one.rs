//! Runs one workload case in a loop (for profilers): `one ID OP [THREADS] [SECONDS]`, e.g.
//! `perf record -e cpu-clock target/release/one C3 fwd 1 5`. `CNNKIT_ISA=avx2` (or `portable`)
//! in the environment caps the instruction set (`CNNKIT_PORTABLE=1` is `CNNKIT_ISA=portable`);
//! `CNNKIT_PAR_THRESHOLD=work` sets `cnnkit::par::set_parallel_threshold`; `CNNKIT_PRECISION=bf16`
//! runs every case in bf16 (the `step_bf16` cases set it themselves).

#[path = "../../../benches/suite/workloads.rs"]
mod workloads;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (id, op) = (args.get(1).expect("ID"), args.get(2).expect("OP"));
    let threads: usize = args.get(3).map_or(1, |t| t.parse().expect("THREADS"));
    let secs: f64 = args.get(4).map_or(3.0, |t| t.parse().expect("SECONDS"));
    if std::env::var_os("CNNKIT_PORTABLE").is_some_and(|v| v == "1") {
        cnnkit::arch::limit(Some(cnnkit::arch::Isa::Portable));
    }
    if let Ok(isa) = std::env::var("CNNKIT_ISA") {
        cnnkit::arch::limit(Some(
            isa.parse().expect("CNNKIT_ISA: portable, avx2 or avx512"),
        ));
    }
    if let Ok(t) = std::env::var("CNNKIT_PAR_THRESHOLD") {
        cnnkit::par::set_parallel_threshold(t.parse().expect("CNNKIT_PAR_THRESHOLD: a number"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        // Only the workload's own group is built: its setup stays out of a profile's way.
        let mut cases = workloads::group(workloads::group_of(id, op));
        let i = cases
            .iter()
            .position(|c| c.id == id && c.op == op)
            .unwrap_or_else(|| panic!("no case {id} {op}"));
        let mut case = cases.swap_remove(i);
        let t = std::time::Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs_f64() < secs {
            (case.run)();
            n += 1;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        println!(
            "{id} {op} t{threads}: {ms:.3} ms/call, {:.1} GFLOP/s",
            case.flops / ms / 1e6
        );
    });
}

#[cfg(test)]
mod tests {
    use super::workloads;

    /// `one` builds only the group `group_of` names: every case must be in it.
    #[test]
    fn every_workload_is_in_the_group_its_id_names() {
        for g in workloads::GROUPS {
            for c in workloads::group(g) {
                assert_eq!(workloads::group_of(c.id, c.op), g, "{} {}", c.id, c.op);
            }
        }
    }
}
