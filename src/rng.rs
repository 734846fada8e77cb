//! Seeded random numbers: a small sequential generator for initialisation and shuffling, and a
//! counter-based one for per-element noise (dropout masks, RReLU slopes).
//!
//! The counter-based generator gives element `i` of a call a value that depends only on
//! `(seed, i)`, so masks are identical however the work is split across threads.

/// The SplitMix64 output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A uniform `f32` in `[0, 1)` for element `i` of the stream `seed` (24 random bits).
#[inline]
pub(crate) fn uniform_at(seed: u64, i: u64) -> f32 {
    let z = mix64(seed ^ mix64(i.wrapping_add(1).wrapping_mul(GOLDEN)));
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A standard normal value for element `i` of the stream `seed` (Box–Muller on two counter-based
/// uniforms, in `f64`): like [`uniform_at`], the same for any split of the work.
#[inline]
pub(crate) fn normal_at(seed: u64, i: u64) -> f32 {
    let j = i.wrapping_mul(2);
    // 53 random bits each: u1 in (0, 1], u2 in [0, 1).
    let bits = |k: u64| mix64(seed ^ mix64(k.wrapping_add(1).wrapping_mul(GOLDEN))) >> 11;
    let u1 = 1.0 - bits(j) as f64 * (1.0 / (1u64 << 53) as f64);
    let u2 = bits(j.wrapping_add(1)) as f64 * (1.0 / (1u64 << 53) as f64);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// A small, fast, seeded generator (xoshiro256++, Blackman and Vigna), seeded through SplitMix64.
///
/// Its state can be saved and restored ([`Rng::state`], [`Rng::from_state`]) so a resumed training
/// run draws the same numbers as an uninterrupted one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut s = [0; 4];
        for v in &mut s {
            x = x.wrapping_add(GOLDEN);
            *v = mix64(x);
        }
        Rng { s }
    }

    /// The internal state.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// A generator continuing from a saved state (an all-zero state is replaced by seed 0's).
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] { Rng::new(0) } else { Rng { s } }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// A uniform `f64` in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f32` in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let v = lo as f64 + (hi as f64 - lo as f64) * self.next_f64();
        // Rounding to f32 can reach `hi`; keep the interval half-open.
        let v = v as f32;
        if v >= hi && hi > lo {
            lo.max(hi.next_down())
        } else {
            v
        }
    }

    /// A standard normal `f64` (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's method).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        let n = n as u64;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let lo = m as u64;
            if lo >= n.wrapping_neg() % n {
                return (m >> 64) as usize;
            }
        }
    }

    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_at_is_roughly_uniform_and_in_range() {
        let n = 100_000;
        let mut buckets = [0usize; 10];
        for i in 0..n {
            let u = uniform_at(42, i);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            // Binomial(1e5, 0.1): sd ≈ 95; 6 sd.
            assert!((b as i64 - 10_000).abs() < 600, "{buckets:?}");
        }
        assert_ne!(uniform_at(1, 0), uniform_at(2, 0));
    }

    #[test]
    fn below_is_unbiased_and_state_round_trips() {
        let mut r = Rng::new(7);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.below(3)] += 1;
        }
        for c in counts {
            assert!((c as i64 - 10_000).abs() < 600, "{counts:?}");
        }
        let saved = r.state();
        let a: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        let mut r2 = Rng::from_state(saved);
        let b: Vec<u64> = (0..5).map(|_| r2.next_u64()).collect();
        assert_eq!(a, b);
    }
}
