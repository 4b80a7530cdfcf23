//! Wall-clock capture times that never go backwards, for one camera. Pure (the caller passes
//! both clocks in), so its behaviour under clock steps is unit-tested without waiting.
//!
//! Wall time only labels events; durations (dwell, lost, cool-down, update intervals) are
//! measured on the monotonic clock, so a step changes labels, never how long something lasted.

/// A wall-clock step bigger than this is a step (NTP set the clock), not drift.
const STEP: i128 = 1_000_000_000;
/// Smaller backward corrections (clock reading jitter, NTP slew) are adopted at once.
const SLEW_TOLERANCE: i128 = 1_000_000;
/// While absorbing a backward step, wall time advances at least this fraction of real time.
const SLEW_MIN_RATE: f64 = 0.5;

/// Maps monotonic capture instants to wall-clock (UTC) times for one camera.
///
/// The offset between the wall clock and the monotonic clock is re-measured at every frame, so
/// slow drift corrections are followed at once. A forward step is adopted at once (a board
/// without an RTC boots in the past and jumps forward when NTP syncs). A backward step is
/// absorbed by slewing: the mapped time keeps advancing at half speed until it meets the new
/// wall clock, so event times of one camera never go backwards and never freeze.
#[derive(Debug, Default)]
pub struct WallClock {
    /// Wall minus monotonic, nanoseconds, as currently applied.
    offset: Option<i128>,
    last_mono: i128,
    last_out: i128,
    steps: u64,
    slewing: bool,
}

impl WallClock {
    /// `capture_mono`: the frame's monotonic capture time; `now_mono`/`now_wall`: the two clocks
    /// read together now. All in nanoseconds (wall: since the Unix epoch). Returns the capture
    /// time on the wall clock.
    pub fn map(&mut self, capture_mono: i128, now_mono: i128, now_wall: i128) -> i128 {
        let measured = now_wall - now_mono;
        let offset = match self.offset {
            None => measured,
            Some(current) if current - measured > SLEW_TOLERANCE => {
                // The wall clock went back: approach it without letting time run backwards.
                if current - measured > STEP && !self.slewing {
                    self.steps += 1;
                }
                let elapsed = (capture_mono - self.last_mono).max(0);
                let max_correction = (elapsed as f64 * (1.0 - SLEW_MIN_RATE)) as i128;
                let next = (current - max_correction).max(measured);
                self.slewing = next != measured;
                next
            }
            Some(current) => {
                if measured - current > STEP {
                    self.steps += 1;
                }
                self.slewing = false;
                measured
            }
        };
        self.offset = Some(offset);
        self.last_mono = capture_mono;
        let out = (capture_mono + offset).max(self.last_out);
        self.last_out = out;
        out
    }

    /// Clock steps seen, forward or backward.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;
    const MS: i128 = 1_000_000;

    /// Feeds frames every 40 ms; `wall_at(mono)` is the wall clock at that monotonic time.
    fn run(clock: &mut WallClock, from: i128, frames: i128, wall_at: impl Fn(i128) -> i128) -> Vec<i128> {
        (0..frames)
            .map(|i| {
                let mono = from + i * 40 * MS;
                // Captured 5 ms before it is mapped.
                clock.map(mono - 5 * MS, mono, wall_at(mono))
            })
            .collect()
    }

    #[test]
    fn without_steps_capture_time_is_wall_clock_minus_the_pipeline_delay() {
        let mut c = WallClock::default();
        let out = run(&mut c, 10 * S, 3, |m| m + 1_700_000_000 * S);
        assert_eq!(out[0], 10 * S - 5 * MS + 1_700_000_000 * S);
        assert_eq!(out[2] - out[1], 40 * MS);
        assert_eq!(c.steps(), 0);
    }

    #[test]
    fn a_forward_step_is_adopted_at_once() {
        let mut c = WallClock::default();
        let base = 1_000 * S;
        let before = run(&mut c, 0, 10, |m| m + base);
        let after = run(&mut c, 400 * MS, 10, |m| m + base + 3600 * S);
        assert_eq!(after[0] - before[9], 3600 * S + 40 * MS);
        assert_eq!(c.steps(), 1);
    }

    #[test]
    fn a_backward_step_never_makes_time_go_back_or_freeze() {
        let mut c = WallClock::default();
        let base = 5_000 * S;
        let mut all = run(&mut c, 0, 10, |m| m + base);
        // The wall clock steps back 2 s; keep capturing for 10 s.
        all.extend(run(&mut c, 400 * MS, 250, |m| m + base - 2 * S));
        for pair in all.windows(2) {
            let step = pair[1] - pair[0];
            assert!(step >= 20 * MS, "time advanced by only {step} ns between frames");
        }
        // After slewing at half speed for ~4 s the mapped time has met the new wall clock.
        let last_mono = 400 * MS + 249 * 40 * MS - 5 * MS;
        assert_eq!(*all.last().unwrap(), last_mono + base - 2 * S);
        assert_eq!(c.steps(), 1);
    }

    #[test]
    fn a_new_offset_within_the_step_threshold_is_followed() {
        let mut c = WallClock::default();
        let a = c.map(0, 0, 100 * S);
        let b = c.map(40 * MS, 40 * MS, 100 * S + 40 * MS + 300 * MS);
        assert_eq!(b - a, 340 * MS);
        assert_eq!(c.steps(), 0);
    }
}
