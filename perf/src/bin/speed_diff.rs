//! Compares two saved speed runs and lists every workload that got slower beyond its measured
//! noise; exits with status 1 when there is one (0 when none, 2 when a run cannot be read).
//!
//! ```sh
//! speed-diff old.json new.json                      # two `compare --json` files
//! speed-diff criterion:main criterion:mine          # two `cargo bench -- --save-baseline` runs
//! speed-diff old.json new.json --min-change 0.05    # ignore changes below 5 % (default 3 %)
//! ```
//!
//! A workload's noise is read from the run itself: for `compare`, half the spread of its round
//! medians relative to their median (run with `--rounds 3` or more); for criterion, half the width
//! of the 95 % confidence interval of the median, relative to it. A workload is *slower* when
//! `new / old − 1` exceeds the sum of both runs' noise and `--min-change`. Each run's stamp
//! (commit, CPU model, instruction set) is printed, with a warning when the CPUs or instruction
//! sets differ: such a comparison measures the machine, not the code.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One workload's time in a run.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Measure {
    median_ms: f64,
    /// Relative half-width of the run's uncertainty about `median_ms`.
    noise: f64,
}

/// A saved run: its stamp and its workloads by id (`X1/step/t1`, `xray/X1/step/t1`, …).
#[derive(Debug, Default)]
struct Run {
    stamp: Option<Value>,
    cases: BTreeMap<String, Measure>,
}

/// Reads a `compare --json` file: a stamp line, then one record per workload.
fn parse_compare(text: &str) -> Result<Run, String> {
    let mut run = Run::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
        if let Some(s) = v.get("stamp") {
            run.stamp = Some(s.clone());
            continue;
        }
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| format!("line {}: no field '{k}'", i + 1))
        };
        let id = format!(
            "{}/{}/t{}",
            field("id")?.as_str().unwrap_or("?"),
            field("op")?.as_str().unwrap_or("?"),
            field("threads")?.as_u64().unwrap_or(0)
        );
        let median_ms = field("cnnkit_ms")?
            .as_f64()
            .filter(|m| *m > 0.0)
            .ok_or_else(|| format!("line {}: cnnkit_ms is not a positive number", i + 1))?;
        let rounds: Vec<f64> = v
            .get("cnnkit_round_medians")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let noise = match (
            rounds.iter().copied().reduce(f64::min),
            rounds.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => (hi - lo) / (2.0 * median_ms),
            _ => 0.0,
        };
        run.cases.insert(id, Measure { median_ms, noise });
    }
    if run.cases.is_empty() {
        return Err("no workload records".into());
    }
    Ok(run)
}

/// Reads the criterion baseline `name` under `dir` (its `<group>/<bench>/<name>/` directories
/// and the stamp `<name>.stamp.json` that `cargo bench` writes beside them).
fn read_criterion(dir: &Path, name: &str) -> Result<Run, String> {
    let mut run = Run {
        stamp: std::fs::read_to_string(dir.join(format!("{name}.stamp.json")))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok()),
        ..Run::default()
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|f| f == name) && p.join("estimates.json").is_file() {
                let (id, m) = read_criterion_bench(&p)?;
                run.cases.insert(id, m);
            } else {
                stack.push(p);
            }
        }
    }
    if run.cases.is_empty() {
        return Err(format!(
            "no criterion baseline '{name}' under {} (save one with `cargo bench -- --save-baseline {name}`)",
            dir.display()
        ));
    }
    Ok(run)
}

/// One benchmark of a criterion baseline directory: its full id and median.
fn read_criterion_bench(p: &Path) -> Result<(String, Measure), String> {
    let read = |f: &str| -> Result<Value, String> {
        let path = p.join(f);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON ({e})", path.display()))
    };
    let est = read("estimates.json")?;
    let id = read("benchmark.json")
        .ok()
        .and_then(|b| b["full_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| p.display().to_string());
    let med = &est["median"];
    let num = |v: &Value| v.as_f64().filter(|x| x.is_finite());
    let point = num(&med["point_estimate"])
        .filter(|x| *x > 0.0)
        .ok_or_else(|| format!("{}: no median estimate", p.display()))?;
    let ci = &med["confidence_interval"];
    let noise = match (num(&ci["lower_bound"]), num(&ci["upper_bound"])) {
        (Some(lo), Some(hi)) => (hi - lo) / (2.0 * point),
        _ => 0.0,
    };
    Ok((
        id,
        Measure {
            median_ms: point * 1e-6,
            noise,
        },
    ))
}

/// One workload in both runs.
#[derive(Debug)]
struct Change {
    id: String,
    old: Measure,
    new: Measure,
    /// `new / old`.
    ratio: f64,
    /// The change below which it is noise: both runs' noise plus the floor.
    allowed: f64,
}

impl Change {
    fn slower(&self) -> bool {
        self.ratio - 1.0 > self.allowed
    }
    fn faster(&self) -> bool {
        1.0 - self.ratio > self.allowed
    }
}

/// The workloads both runs measured, in id order.
fn changes(old: &Run, new: &Run, min_change: f64) -> Vec<Change> {
    old.cases
        .iter()
        .filter_map(|(id, &o)| {
            let &n = new.cases.get(id)?;
            Some(Change {
                id: id.clone(),
                old: o,
                new: n,
                ratio: n.median_ms / o.median_ms,
                allowed: o.noise + n.noise + min_change,
            })
        })
        .collect()
}

fn load(spec: &str, criterion_dir: &Path) -> Result<Run, String> {
    match spec.strip_prefix("criterion:") {
        Some(name) => read_criterion(criterion_dir, name),
        None => std::fs::read_to_string(spec)
            .map_err(|e| format!("{spec}: {e}"))
            .and_then(|t| parse_compare(&t).map_err(|e| format!("{spec}: {e}"))),
    }
}

fn stamp_line(s: &Option<Value>) -> String {
    match s {
        Some(s) => format!(
            "commit {}, {}, kernels {}",
            s["commit"].as_str().unwrap_or("?"),
            s["cpu"].as_str().unwrap_or("?"),
            s["isa"].as_str().unwrap_or("?")
        ),
        None => "no stamp".into(),
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let usage = "usage: speed-diff OLD NEW [--min-change F] [--criterion-dir DIR] \
                 (OLD, NEW: a `compare --json` file or criterion:BASELINE)";
    let mut files = Vec::new();
    let mut min_change = 0.03;
    // Where `cargo bench` put them (criterion's rule, as `benches/main.rs` reads it).
    let mut dir = match std::env::var_os("CRITERION_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("CARGO_TARGET_DIR").unwrap_or("target".into()))
            .join("criterion"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--min-change" => {
                min_change = it
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or("--min-change needs a fraction such as 0.03")?
            }
            "--criterion-dir" => dir = it.next().ok_or("--criterion-dir needs a path")?.into(),
            "-h" | "--help" => return Err(usage.into()),
            f => files.push(f.to_string()),
        }
    }
    let [old, new] = &files[..] else {
        return Err(usage.into());
    };
    let (o, n) = (load(old, &dir)?, load(new, &dir)?);
    println!("old: {old}: {}", stamp_line(&o.stamp));
    println!("new: {new}: {}", stamp_line(&n.stamp));
    if let (Some(a), Some(b)) = (&o.stamp, &n.stamp) {
        for k in ["cpu", "isa"] {
            if a[k] != b[k] {
                println!("warning: the runs differ in {k}; the comparison measures that too");
            }
        }
    }
    let ch = changes(&o, &n, min_change);
    if ch.is_empty() {
        return Err("the runs have no workload in common".into());
    }
    println!("\n| workload | old ms | new ms | new/old | noise allowance | verdict |");
    println!("|---|---|---|---|---|---|");
    for c in &ch {
        let verdict = if c.slower() {
            "SLOWER"
        } else if c.faster() {
            "faster"
        } else {
            "same"
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | ±{:.1}% | {verdict} |",
            c.id,
            c.old.median_ms,
            c.new.median_ms,
            c.ratio,
            100.0 * c.allowed
        );
    }
    let slower: Vec<&Change> = ch.iter().filter(|c| c.slower()).collect();
    if slower.is_empty() {
        println!("\nno workload got slower beyond its noise");
    } else {
        println!(
            "\n{} workload(s) got slower beyond their noise:",
            slower.len()
        );
        for c in &slower {
            println!("  {} {:+.1}%", c.id, 100.0 * (c.ratio - 1.0));
        }
    }
    Ok(!slower.is_empty())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(false) => {}
        Ok(true) => std::process::exit(1),
        Err(e) => {
            eprintln!("speed-diff: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, ms: f64, rounds: &[f64]) -> String {
        serde_json::json!({"id": id, "op": "step", "threads": 1, "cnnkit_ms": ms,
            "cnnkit_round_medians": rounds})
        .to_string()
    }

    fn compare_file(lines: &[String]) -> Run {
        let stamp = r#"{"stamp":{"commit":"abc","cpu":"Test CPU","isa":"avx512"}}"#;
        parse_compare(&(stamp.to_string() + "\n" + &lines.join("\n"))).unwrap()
    }

    #[test]
    fn a_change_beyond_both_runs_noise_is_slower_and_one_within_it_is_not() {
        // A: 10 ms ± 2 % (9.8–10.2) → 11 ms ± 1 %: +10 % > 2 % + 1 % + 3 %: slower.
        // B: 10 ms ± 10 % (9–11) → 11 ms ± 0: +10 % < 10 % + 3 %: noise.
        // C: 10 ms → 8 ms: faster, never a regression.
        let old = compare_file(&[
            record("A", 10.0, &[9.8, 10.0, 10.2]),
            record("B", 10.0, &[9.0, 10.0, 11.0]),
            record("C", 10.0, &[10.0]),
        ]);
        let new = compare_file(&[
            record("A", 11.0, &[10.89, 11.0, 11.11]),
            record("B", 11.0, &[11.0]),
            record("C", 8.0, &[8.0]),
            record("D", 1.0, &[1.0]),
        ]);
        assert_eq!(old.stamp.as_ref().unwrap()["cpu"], "Test CPU");
        let ch = changes(&old, &new, 0.03);
        let ids: Vec<&str> = ch.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["A/step/t1", "B/step/t1", "C/step/t1"],
            "D is in one run only"
        );
        assert!(ch[0].slower() && (ch[0].allowed - 0.06).abs() < 1e-9);
        assert!(!ch[1].slower() && !ch[1].faster());
        assert!(!ch[2].slower() && ch[2].faster());
        // A higher floor absorbs A's change.
        assert!(!changes(&old, &new, 0.08)[0].slower());
    }

    #[test]
    fn bad_records_are_errors_naming_the_line() {
        assert!(parse_compare("").unwrap_err().contains("no workload"));
        assert!(parse_compare("{").unwrap_err().contains("line 1"));
        let no_time = r#"{"id":"A","op":"fwd","threads":1}"#;
        assert!(parse_compare(no_time).unwrap_err().contains("cnnkit_ms"));
        let zero = r#"{"id":"A","op":"fwd","threads":1,"cnnkit_ms":0}"#;
        assert!(parse_compare(zero).unwrap_err().contains("positive"));
    }

    /// A criterion baseline laid out as criterion writes it (`<group>/<bench>/<name>/`).
    fn write_bench(root: &Path, bench: &str, name: &str, median_ns: f64, ci: (f64, f64)) {
        let d = root.join("xray").join(bench).join(name);
        std::fs::create_dir_all(&d).unwrap();
        let est = serde_json::json!({"median": {"point_estimate": median_ns,
            "confidence_interval": {"lower_bound": ci.0, "upper_bound": ci.1,
            "confidence_level": 0.95}}});
        std::fs::write(d.join("estimates.json"), est.to_string()).unwrap();
        let b = serde_json::json!({"full_id": format!("xray/{}", bench.replace('_', "/"))});
        std::fs::write(d.join("benchmark.json"), b.to_string()).unwrap();
    }

    #[test]
    fn criterion_baselines_are_read_with_their_confidence_interval() {
        let root = std::env::temp_dir().join(format!("cnnkit-speed-diff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        write_bench(&root, "X1_step_t1", "before", 300e6, (297e6, 303e6));
        write_bench(&root, "X1_step_t1", "after", 330e6, (327e6, 333e6));
        write_bench(&root, "X1_infer_t1", "before", 5e6, (4.5e6, 5.5e6));
        write_bench(&root, "X1_infer_t1", "after", 5.3e6, (5.2e6, 5.4e6));
        std::fs::write(
            root.join("after.stamp.json"),
            r#"{"commit":"def","cpu":"Test CPU","isa":"avx2"}"#,
        )
        .unwrap();
        let (o, n) = (
            read_criterion(&root, "before").unwrap(),
            read_criterion(&root, "after").unwrap(),
        );
        assert!(o.stamp.is_none() && n.stamp.as_ref().unwrap()["isa"] == "avx2");
        let m = o.cases["xray/X1/step/t1"];
        assert!((m.median_ms - 300.0).abs() < 1e-9 && (m.noise - 0.01).abs() < 1e-9);
        let ch = changes(&o, &n, 0.03);
        // infer: +6 % within 10 % + 1 % + 3 %; step: +10 % beyond 1 % + 0.9 % + 3 %.
        assert_eq!(ch[0].id, "xray/X1/infer/t1");
        assert!(!ch[0].slower() && ch[1].slower());
        assert!(
            read_criterion(&root, "missing")
                .unwrap_err()
                .contains("save-baseline")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
