//! Shared test support: the gradient checker, proptest strategies, comparison helpers and a
//! thread pool that forces the parallel code paths.
#![allow(dead_code)]

pub mod conv_check;
pub mod gradcheck;
pub mod strategies;

use proptest::test_runner::TestCaseError;
use std::sync::OnceLock;

/// How much wider a tolerance against a reference is under the active Winograd setting:
/// `CNNKIT_WINOGRAD=f4` runs a suite with F(4×4, 3×3) forced on every 3×3 stride-1 layer,
/// whose stated error bound (`tests/winograd.rs`) is ten times that of the direct path's sums.
pub fn wino_scale() -> f32 {
    match cnnkit::kernels::winograd() {
        cnnkit::kernels::Winograd::F4 => 10.0,
        _ => 1.0,
    }
}

/// `n` proptest cases, times `CNNKIT_PROPTEST_SCALE` if set (e.g. 4 for a longer search):
/// the tests' own case counts are explicit, so proptest's `PROPTEST_CASES` does not change them.
pub fn cases(n: u32) -> u32 {
    let scale = std::env::var("CNNKIT_PROPTEST_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    n.saturating_mul(scale)
}

/// A 3-thread pool with the parallel threshold at 0, so even tiny shapes take the parallel paths
/// (batch split with `n >= threads` and the split inside an image with `n < threads`).
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        cnnkit::par::set_parallel_threshold(0);
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
    })
}

/// Runs `f` on [`pool`].
pub fn par<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// A buffer of NaN: any element a kernel forgets to write fails the comparison.
pub fn nans(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// `|got - want| <= atol + rtol * |want|` element-wise (NaN must match NaN).
pub fn assert_close(
    what: &str,
    got: &[f32],
    want: &[f32],
    atol: f32,
    rtol: f32,
) -> Result<(), TestCaseError> {
    if got.len() != want.len() {
        return Err(TestCaseError::fail(format!(
            "{what}: length {} vs {}",
            got.len(),
            want.len()
        )));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            return Err(TestCaseError::fail(format!(
                "{what}[{i}]: got {g}, want {w} (atol {atol}, rtol {rtol})"
            )));
        }
    }
    Ok(())
}

/// Deterministic pseudo-random values in `[-1, 1)` for tests that need data but no shrinking.
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut r = cnnkit::rng::Rng::new(seed);
    (0..n).map(|_| r.uniform(-1.0, 1.0)).collect()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("cnnkit-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Element `i` of stream `t` in [-1, 1): the fixtures' 32-bit integer hash (`hashed` in
/// `tests/fixtures/gen_zoo.py`, exact in any language).
pub fn hashed(t: u64, i: u64) -> f64 {
    const M: u64 = 0xFFFF_FFFF;
    let mut h = (i * 2_654_435_761 + t * 40_503 + 12_345) & M;
    for _ in 0..2 {
        h ^= h >> 16;
        h = (h * 0x45D_9F3B) & M;
    }
    h ^= h >> 16;
    h as f64 / 2f64.powi(31) - 1.0
}
