//! Side-by-side comparison of cnnkit with PyTorch on the standard workloads.
//!
//! ```sh
//! cargo run --release -p cnnkit-perf --bin compare                 # everything, 3 rounds
//! cargo run --release -p cnnkit-perf --bin compare -- --only conv --rounds 5
//! RUSTFLAGS="-C target-cpu=native" cargo run --release -p cnnkit-perf --bin compare
//! ```
//!
//! Each round measures, group by group, cnnkit at every thread count and then PyTorch
//! (`perf/torch_bench.py`, when `python3 -c "import torch"` works) in the same time window, with
//! the same timing rule (median of individually timed calls after a warm-up). The table reports
//! medians of the round medians, the ratio PyTorch/cnnkit (above 1: cnnkit is faster), for
//! inference cases onnxruntime on the same PyTorch module exported to ONNX (when the
//! `onnxruntime` package is installed) and its ratio — and, as op `infer_onnx`, cnnkit running
//! the very ONNX file onnxruntime ran (read with `cnnkit::onnx`) — and cnnkit's fraction of the machine's limit: the measured FMA peak for compute-bound cases, the
//! STREAM bandwidth at the workload's size for memory-bound ones.

mod peak;
#[path = "../../benches/suite/stamp.rs"]
mod stamp;
#[path = "../../benches/suite/workloads.rs"]
mod workloads;

use std::collections::BTreeMap;
use std::process::Command;

struct Opts {
    rounds: usize,
    groups: Vec<String>,
    threads: Vec<usize>,
    torch: bool,
    json: Option<String>,
    /// Print the machine's limits and stop.
    peak_only: bool,
}

const USAGE: &str = "usage: compare [--rounds N] [--only g1,g2] [--threads 1,2] [--no-torch] \
[--json FILE] [--isa portable|avx2|avx512] [--peak-only]";

/// Ends the program over a malformed command line: the message, the usage, exit status 2.
fn usage_error(msg: &str) -> ! {
    eprintln!("error: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        rounds: 3,
        groups: workloads::GROUPS.iter().map(|s| s.to_string()).collect(),
        threads: vec![1, 2],
        torch: true,
        json: None,
        peak_only: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let next = |i: usize| {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| usage_error(&format!("{} needs a value", args[i])))
        };
        match args[i].as_str() {
            "--rounds" => {
                o.rounds = next(i)
                    .parse()
                    .unwrap_or_else(|_| usage_error("--rounds takes a number"))
            }
            "--only" => o.groups = next(i).split(',').map(str::to_string).collect(),
            "--threads" => {
                o.threads = next(i)
                    .split(',')
                    .map(|t| {
                        t.parse()
                            .unwrap_or_else(|_| usage_error("--threads takes numbers: 1,2"))
                    })
                    .collect()
            }
            "--no-torch" => {
                o.torch = false;
                i += 1;
                continue;
            }
            "--json" => o.json = Some(next(i)),
            // Caps cnnkit's instruction set (to compare, say, the AVX2 kernels on an AVX-512 CPU).
            "--isa" => {
                let isa = next(i)
                    .parse()
                    .unwrap_or_else(|_| usage_error("--isa takes portable, avx2 or avx512"));
                cnnkit::arch::limit(Some(isa))
            }
            "--peak-only" => {
                o.peak_only = true;
                i += 1;
                continue;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => usage_error(&format!("unknown option {other}")),
        }
        i += 2;
    }
    o
}

type Key = (String, String, usize);

#[derive(Default)]
struct Row {
    cnnkit: Vec<f64>,
    torch: Vec<f64>,
    /// onnxruntime on the same PyTorch module (inference cases, when installed).
    ort: Vec<f64>,
    flops: f64,
    bytes: f64,
    images: f64,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// PyTorch's median of each case, and onnxruntime's where it was measured; the ONNX files that
/// onnxruntime ran are left in `onnx_dir` as `ID.onnx`.
fn run_torch(
    group: &str,
    threads: &[usize],
    onnx_dir: &std::path::Path,
) -> Vec<(Key, f64, Option<f64>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/torch_bench.py");
    let ts: Vec<String> = threads.iter().map(|t| t.to_string()).collect();
    let out = Command::new("python3")
        .env("CNNKIT_ONNX_DIR", onnx_dir)
        .arg(script)
        .arg("--only")
        .arg(group)
        .arg("--threads")
        .args(&ts)
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                (
                    v["id"].as_str()?.to_string(),
                    v["op"].as_str()?.to_string(),
                    v["threads"].as_u64()? as usize,
                ),
                v["median_ms"].as_f64()?,
                v["ort_ms"].as_f64(),
            ))
        })
        .collect()
}

/// Array size (bytes) whose STREAM bandwidth a memory-bound case is compared with.
fn stream_size(id: &str) -> usize {
    match id {
        "P1" | "P2" => 6272 << 10,
        "P3" | "B1" => 25088 << 10,
        _ => 16384 << 10,
    }
}

fn main() {
    let o = parse_args();
    let torch = o.torch && torch_available();
    let build = if cfg!(target_feature = "avx2") {
        "native (compiled for AVX2; SIMD kernels still dispatch at run time)"
    } else {
        "portable (SSE2 baseline; SIMD kernels dispatch AVX-512 or AVX2/FMA at run time)"
    };
    println!("cnnkit {} — build: {build}", env!("CARGO_PKG_VERSION"));
    println!(
        "torch: {}",
        if torch {
            "measured side by side"
        } else {
            "not measured (python3 with torch not found, or --no-torch)"
        }
    );
    // The machine's limits.
    // The FMA peak of the widest instruction set the CPU has (AVX-512 where present), which
    // "% of limit" divides by; the AVX2 peak beside it for reference.
    let mut peak = BTreeMap::new();
    let mut peak_isa = "none";
    let mut stream = BTreeMap::new();
    for &t in &o.threads {
        if let Some((p, isa)) = peak::fma_gflops(t, 1.5) {
            peak.insert(t, p);
            peak_isa = isa;
            if isa != "avx2"
                && let Some(p2) = peak::fma_gflops_of("avx2", t, 1.5)
            {
                println!("FMA peak (avx2, for reference), {t} thread(s): {p2:.1} GFLOP/s");
            }
        }
        for size in [6272 << 10, 16384 << 10, 25088 << 10] {
            stream.insert((t, size), peak::stream_gbps(t, size));
        }
    }
    for (t, p) in &peak {
        println!("FMA peak ({peak_isa}), {t} thread(s): {p:.1} GFLOP/s");
    }
    println!(
        "cnnkit kernels: {} (CPU: {})",
        cnnkit::arch::active(),
        cnnkit::arch::Isa::detected()
    );
    for ((t, size), (c, tr)) in &stream {
        println!(
            "STREAM {t} thread(s), {} KiB arrays: copy {c:.1} GB/s, triad {tr:.1} GB/s",
            size >> 10
        );
    }
    if o.peak_only {
        return;
    }
    let mut rows: BTreeMap<Key, Row> = BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for round in 0..o.rounds {
        eprintln!("round {}/{}", round + 1, o.rounds);
        for g in &o.groups {
            for &t in &o.threads {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap();
                pool.install(|| {
                    for mut c in workloads::group(g) {
                        let timing = workloads::measure(&mut c.run);
                        let key = (c.id.to_string(), c.op.to_string(), t);
                        if !rows.contains_key(&key) {
                            order.push(key.clone());
                        }
                        let r = rows.entry(key).or_default();
                        r.cnnkit.push(timing.median_ms);
                        (r.flops, r.bytes, r.images) = (c.flops, c.bytes, c.images);
                    }
                });
            }
            if torch {
                let dir =
                    std::env::temp_dir().join(format!("cnnkit-compare-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("a temporary folder");
                let measured = run_torch(g, &o.threads, &dir);
                for (key, ms, ort) in &measured {
                    let r = rows.entry(key.clone()).or_default();
                    r.torch.push(*ms);
                    r.ort.extend(*ort);
                }
                // cnnkit on the file onnxruntime ran (`cnnkit::onnx`), beside onnxruntime.
                for (key, _, ort) in &measured {
                    let (id, op, t) = key;
                    let path = dir.join(format!("{id}.onnx"));
                    let (Some(ort), "infer", true) = (ort, op.as_str(), path.is_file()) else {
                        continue;
                    };
                    let Ok(mut m) = cnnkit::Model::from_onnx(&path) else {
                        eprintln!("{id}: the ONNX file does not read into cnnkit");
                        continue;
                    };
                    // Normal noise, as the other cases and PyTorch's side (a constant image
                    // ran ResNet-18 1.6x slower here, in the zoo's model and the file's alike).
                    let x = workloads::randn(1, m.input_shape().iter().product(), 1.0);
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(*t)
                        .build()
                        .unwrap();
                    let timing = pool.install(|| {
                        workloads::measure(&mut || {
                            std::hint::black_box(m.infer(&x, 1).unwrap());
                        })
                    });
                    let flops = rows.get(key).map_or(0.0, |r| r.flops);
                    let key = (id.clone(), "infer_onnx".to_string(), *t);
                    if !rows.contains_key(&key) {
                        order.push(key.clone());
                    }
                    let r = rows.entry(key).or_default();
                    r.cnnkit.push(timing.median_ms);
                    r.ort.push(*ort);
                    (r.flops, r.images) = (flops, 1.0);
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    println!();
    println!(
        "| id | op | threads | cnnkit ms | torch ms | torch/cnnkit | onnxruntime ms | ort/cnnkit | cnnkit | % of limit ({peak_isa} FMA peak; STREAM) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut records = Vec::new();
    for key in &order {
        let r = &rows[key];
        let (id, op, t) = key;
        let Some(ms) = median(&r.cnnkit) else {
            continue;
        };
        let torch_ms = median(&r.torch);
        let ort_ms = median(&r.ort);
        let (rate, limit) = if r.images > 0.0 {
            (
                format!("{:.0} img/s", r.images / ms * 1e3),
                peak.get(t).map(|p| r.flops / ms / 1e6 / p),
            )
        } else if r.flops > 0.0 {
            (
                format!("{:.1} GFLOP/s", r.flops / ms / 1e6),
                peak.get(t).map(|p| r.flops / ms / 1e6 / p),
            )
        } else if r.bytes > 0.0 {
            let gbps = r.bytes / ms / 1e6;
            let s = stream
                .get(&(*t, stream_size(id)))
                .map(|&(c, tr)| if op == "bwd_data" { tr } else { c });
            (format!("{gbps:.1} GB/s"), s.map(|s| gbps / s))
        } else {
            (String::new(), None)
        };
        let time = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}x", v / ms));
        println!(
            "| {id} | {op} | {t} | {ms:.3} | {} | {} | {} | {} | {rate} | {} |",
            time(torch_ms),
            ratio(torch_ms),
            time(ort_ms),
            ratio(ort_ms),
            limit.map_or("-".into(), |l| format!("{:.0}%", 100.0 * l)),
        );
        records.push(serde_json::json!({
            "id": id, "op": op, "threads": t, "cnnkit_ms": ms, "torch_ms": torch_ms,
            "ort_ms": ort_ms, "ort_round_medians": r.ort,
            "cnnkit_round_medians": r.cnnkit, "torch_round_medians": r.torch,
            "flops": r.flops, "bytes": r.bytes, "fraction_of_limit": limit,
        }));
    }
    if let Some(path) = o.json {
        // First line: what the run was taken on (for `speed-diff`).
        let head = format!("{{\"stamp\":{}}}\n", stamp::json());
        let text: String = std::iter::once(head)
            .chain(records.iter().map(|r| format!("{r}\n")))
            .collect();
        std::fs::write(&path, text).expect("writing the JSON file");
        println!("\nraw results: {path}");
    }
}
