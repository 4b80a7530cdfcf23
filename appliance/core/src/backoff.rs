//! One backoff for every retrying loop (a camera's pipeline, the MQTT connection): capped
//! exponential steps with ±20 % jitter, so that many cameras failing together, or a fleet of
//! devices losing the same broker, do not retry in lockstep.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The spread of each wait around its step: ±20 %.
pub const JITTER: f64 = 0.2;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    /// xorshift64 state: the jitter's source (never 0).
    rng: u64,
}

impl Backoff {
    /// Steps from `min`, doubling up to `max`, with jitter seeded from the OS's randomness (so
    /// that devices and cameras started together still spread out).
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Self::with_seed(min, max, seed)
    }

    /// The same, with a fixed seed: a reproducible sequence for tests.
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        // One splitmix64 step spreads nearby seeds apart; xorshift needs a state other than 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self { min, max: max.max(min), step: min, rng: (z ^ (z >> 31)).max(1) }
    }

    /// The next wait: the current step ±20 %; the step then doubles, up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.step.mul_f64(1.0 - JITTER + 2.0 * JITTER * self.unit());
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// Back to the first step (after a success: a connection, a healthy stream).
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The step the next wait is drawn around.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_from_the_minimum_to_the_cap_within_twenty_percent() {
        let mut b = Backoff::with_seed(250 * MS, 10_000 * MS, 7);
        let steps = [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000];
        for step in steps {
            let step = step * MS;
            assert_eq!(b.step(), step);
            let wait = b.next_wait();
            assert!(wait >= step.mul_f64(0.8) && wait <= step.mul_f64(1.2), "{wait:?} around {step:?}");
        }
    }

    #[test]
    fn a_reset_starts_again_from_the_minimum() {
        let mut b = Backoff::with_seed(250 * MS, 30_000 * MS, 1);
        for _ in 0..5 {
            b.next_wait();
        }
        b.reset();
        assert_eq!(b.step(), 250 * MS);
    }

    #[test]
    fn a_fleet_started_together_spreads_its_retries() {
        // Twenty devices losing the broker at the same moment: their first retries must not
        // coincide (without jitter all twenty would wait exactly 250 ms).
        let firsts: Vec<Duration> = (0..20).map(|_| Backoff::new(250 * MS, 30_000 * MS).next_wait()).collect();
        let spread = *firsts.iter().max().unwrap() - *firsts.iter().min().unwrap();
        assert!(spread >= 20 * MS, "first retries within {spread:?} of each other: {firsts:?}");
        assert!(firsts.iter().all(|w| *w >= 200 * MS && *w <= 300 * MS), "{firsts:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_waits() {
        let waits = |seed| {
            let mut b = Backoff::with_seed(MS, 1000 * MS, seed);
            (0..8).map(|_| b.next_wait()).collect::<Vec<_>>()
        };
        assert_eq!(waits(42), waits(42));
        assert_ne!(waits(42), waits(43));
    }
}
