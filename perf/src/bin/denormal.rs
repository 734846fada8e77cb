//! Does denormal data slow training down? Times the MNIST-CNN training step (batch 64, one
//! thread) side by side on normal inputs, on denormal inputs (every pixel below 1.2e-38) and with
//! tiny weights (activations and gradients underflow into the denormal range), alternating the
//! three, and once more with flush-to-zero / denormals-are-zero set in MXCSR for comparison.
//! Prints the medians and the ratios to the normal case.

#[path = "../../../benches/suite/workloads.rs"]
mod workloads;

use cnnkit::{LayerSpec, Sequential, TrainConfig, Trainer};
use std::time::Instant;

fn trainer(weight_scale: f32) -> Trainer {
    let specs = LayerSpec::parse_list(workloads::MNIST_ARCH).unwrap();
    let mut m = Sequential::new([1, 28, 28], &specs, 0).unwrap();
    m.params_mut().iter_mut().for_each(|w| *w *= weight_scale);
    Trainer::new(
        m,
        "sgd(lr=0.01,momentum=0.9)".parse().unwrap(),
        TrainConfig::default(),
    )
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(target_arch = "x86_64")]
fn set_ftz_daz(on: bool) {
    // Bits 15 (FTZ) and 6 (DAZ) of MXCSR.
    #[allow(deprecated)]
    // SAFETY: only the flush-to-zero and denormals-are-zero bits change; both are defined on
    // every x86-64 CPU with SSE2 and affect only rounding of denormal values.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        let m = _mm_getcsr();
        _mm_setcsr(if on { m | 0x8040 } else { m & !0x8040 });
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_ftz_daz(_: bool) {}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(15, |s| s.parse().expect("ROUNDS"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let mut r = cnnkit::rng::Rng::new(3);
        let x: Vec<f32> = (0..64 * 784).map(|_| r.uniform(0.05, 1.0)).collect();
        let labels: Vec<u32> = (0..64).map(|i| (i % 10) as u32).collect();
        let tiny_x: Vec<f32> = x.iter().map(|v| v * 1e-39).collect();
        assert!(tiny_x.iter().all(|v| v.abs() < f32::MIN_POSITIVE));
        for ftz in [false, true] {
            set_ftz_daz(ftz);
            let mut cases = [
                ("normal", trainer(1.0), &x, Vec::new()),
                ("denormal inputs", trainer(1.0), &tiny_x, Vec::new()),
                ("tiny weights (1e-20)", trainer(1e-20), &x, Vec::new()),
            ];
            for _ in 0..rounds + 2 {
                for (_, t, x, times) in cases.iter_mut() {
                    let t0 = Instant::now();
                    t.step(x, &labels).unwrap();
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            let base = median(cases[0].3[2..].to_vec());
            println!(
                "flush-to-zero {}:",
                if ftz { "on" } else { "off (default)" }
            );
            for (name, _, _, times) in &cases {
                let m = median(times[2..].to_vec());
                println!("  {name:<22} {m:8.2} ms/step  {:.2}x normal", m / base);
            }
        }
    });
}
