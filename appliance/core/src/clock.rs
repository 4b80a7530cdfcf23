//! Time, injected: every piece of logic that depends on time reads it from a [`Clock`]. The
//! service runs on [`SystemClock`]; tests inject a [`ManualClock`] that moves only when told (its
//! wall clock can also be stepped, as NTP steps a board's clock), so that guarantees about
//! budgets, expiry and clock steps are checked exactly, not against a busy machine's timing.
//!
//! Durations are always measured on the monotonic clock ([`Clock::now`], or [`mono_ns`] of a
//! capture instant); the wall clock ([`Clock::wall`]) only labels events.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub trait Clock: Send + Sync {
    /// The monotonic clock: durations, deadlines, budgets, expiry.
    fn now(&self) -> Instant;
    /// The wall clock (UTC): labels only. It may step, forwards or back.
    fn wall(&self) -> SystemTime;
    /// Waits `d` on this clock (a manual clock advances instead).
    fn sleep(&self, d: Duration);
}

/// The process's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// The monotonic origin of this process: [`mono_ns`] counts from it.
pub fn mono_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A monotonic instant as nanoseconds since [`mono_epoch`] (0 before it): how durations travel
/// in records that also carry wall times.
pub fn mono_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(mono_epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// 2026-01-01T00:00:00Z: no vigil ran earlier, so a wall clock reading earlier is wrong (a board
/// without an RTC battery boots in 1970, or at the last time it saved).
pub fn earliest_plausible() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// `Err(why)` unless the kernel says the wall clock is synchronized: NTP, chrony and
/// systemd-timesyncd clear the kernel's `STA_UNSYNC` flag once they have set it; setting the
/// clock by hand (`date -s`) or from an RTC at boot leaves it set.
pub fn kernel_clock_synchronized() -> Result<(), String> {
    // SAFETY: adjtimex with `modes = 0` only reads the kernel's clock state into the zeroed
    // struct we own; rustix and nix do not wrap it.
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    if state == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err("the service's sandbox denies reading the clock's state (adjtimex: EPERM; a unit with \
                 ProtectClock=yes, or a system call filter without adjtimex and clock_adjtime: see \
                 docs/systemd.md, \"Hardening\")"
                .to_owned());
        }
        return Err(format!("adjtimex failed: {e}"));
    }
    if state == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0 {
        return Err("the kernel reports the clock as unsynchronized".to_owned());
    }
    Ok(())
}

/// Whether wall times read now can be trusted as labels: the kernel says the clock is
/// synchronized and it reads no earlier than [`earliest_plausible`]. Asked per frame, so the
/// kernel is asked at most once a second (a sync that arrives shows within a second). Ask it
/// before reading the time it is to vouch for: a sync in between would vouch for a time read
/// before the sync.
pub fn wall_clock_trusted() -> bool {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    static CHECKED_AT: AtomicU64 = AtomicU64::new(u64::MAX);
    static TRUSTED: AtomicBool = AtomicBool::new(false);
    let now = mono_ns(Instant::now());
    let at = CHECKED_AT.load(Relaxed);
    if at == u64::MAX || now.saturating_sub(at) >= 1_000_000_000 {
        let trusted = kernel_clock_synchronized().is_ok() && SystemTime::now() >= earliest_plausible();
        TRUSTED.store(trusted, Relaxed);
        CHECKED_AT.store(now, Relaxed);
    }
    TRUSTED.load(Relaxed)
}

/// A clock that stands still until advanced; its wall clock follows it, and can be stepped.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    wall_origin: SystemTime,
    state: Mutex<ManualState>,
}

#[derive(Debug, Default)]
struct ManualState {
    elapsed: Duration,
    /// Wall minus monotonic, relative to the origins, in nanoseconds (steps change it).
    wall_offset_ns: i128,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::with_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    /// A manual clock whose wall clock reads `wall` now.
    pub fn with_wall(wall: SystemTime) -> Self {
        Self { origin: Instant::now(), wall_origin: wall, state: Mutex::new(ManualState::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ManualState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn advance(&self, by: Duration) {
        self.state().elapsed += by;
    }

    /// Moves the clock forward to `to`; never backwards.
    pub fn advance_to(&self, to: Instant) {
        let target = to.saturating_duration_since(self.origin);
        let mut state = self.state();
        state.elapsed = state.elapsed.max(target);
    }

    /// The clock's reading at `offset` after it was created.
    pub fn at(&self, offset: Duration) -> Instant {
        self.origin + offset
    }

    /// Steps the wall clock by `ns` (negative: back), as NTP does; the monotonic clock is
    /// untouched.
    pub fn step_wall(&self, ns: i128) {
        self.state().wall_offset_ns += ns;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + self.state().elapsed
    }

    fn wall(&self) -> SystemTime {
        let state = self.state();
        let ns = state.elapsed.as_nanos() as i128 + state.wall_offset_ns;
        if ns >= 0 {
            self.wall_origin + Duration::from_nanos(ns as u64)
        } else {
            self.wall_origin - Duration::from_nanos(ns.unsigned_abs() as u64)
        }
    }

    fn sleep(&self, d: Duration) {
        self.advance(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_first_of_january_2026() {
        assert_eq!(humantime::format_rfc3339(earliest_plausible()).to_string(), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn the_kernel_answers_and_the_cached_answer_agrees() {
        // Either answer is possible on a build machine; what matters is that it is an answer
        // and not a failure of the call, and that the cached view says the same.
        let kernel = kernel_clock_synchronized();
        if let Err(why) = &kernel {
            assert!(!why.contains("adjtimex failed"), "{why}");
        }
        assert_eq!(wall_clock_trusted(), kernel.is_ok() && SystemTime::now() >= earliest_plausible());
    }

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

    #[test]
    fn a_manual_wall_clock_follows_the_monotonic_one_and_steps_alone() {
        let c = ManualClock::new();
        let (t0, w0) = (c.now(), c.wall());
        c.sleep(Duration::from_secs(2));
        assert_eq!(
            (c.now() - t0, c.wall().duration_since(w0).unwrap()),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        c.step_wall(3_600_000_000_000);
        assert_eq!(c.now() - t0, Duration::from_secs(2), "a wall step leaves the monotonic clock");
        assert_eq!(c.wall().duration_since(w0).unwrap(), Duration::from_secs(3602));
        c.step_wall(-7_200_000_000_000);
        assert_eq!(w0.duration_since(c.wall()).unwrap(), Duration::from_secs(3598));
    }

    #[test]
    fn monotonic_instants_travel_as_nanoseconds_since_the_epoch() {
        let e = mono_epoch();
        assert_eq!(mono_ns(e + Duration::from_millis(5)), 5_000_000);
        assert_eq!(mono_ns(e.checked_sub(Duration::from_millis(5)).unwrap_or(e)), 0);
    }
}
