//! The scheduler's notion of "now". Production reads the monotonic clock; the scheduler's tests
//! inject a [`ManualClock`] that only moves when the test (or a scripted backend) moves it, so
//! that guarantees about budgets are checked exactly, not against a busy machine's timing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock capture times are taken on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until advanced.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self { origin: Instant::now(), elapsed: Mutex::new(Duration::ZERO) }
    }

    fn elapsed(&self) -> std::sync::MutexGuard<'_, Duration> {
        self.elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn advance(&self, by: Duration) {
        *self.elapsed() += by;
    }

    /// Moves the clock forward to `to`; never backwards.
    pub fn advance_to(&self, to: Instant) {
        let target = to.saturating_duration_since(self.origin);
        let mut elapsed = self.elapsed();
        *elapsed = (*elapsed).max(target);
    }

    /// The clock's reading at `offset` after it was created.
    pub fn at(&self, offset: Duration) -> Instant {
        self.origin + offset
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + *self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let c = ManualClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_millis(40));
        assert_eq!(c.now() - t0, Duration::from_millis(40));
        c.advance_to(t0 + Duration::from_millis(10));
        assert_eq!(c.now() - t0, Duration::from_millis(40), "advance_to never goes back");
        c.advance_to(c.at(Duration::from_secs(1)));
        assert_eq!(c.now() - t0, Duration::from_secs(1));
    }
}
