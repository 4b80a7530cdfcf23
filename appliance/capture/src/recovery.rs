//! What a camera's supervisor decides after a fault, as a pure state machine: how long to wait,
//! which decoder the next start uses, whether the stream is probed again, and the state the
//! camera shows meanwhile. The supervisor (`supervise.rs`) does the I/O around it; this is where
//! the rules live, tested without GStreamer, streams or waiting.

use std::time::Duration;

use vigil_core::backoff::Backoff;
use vigil_core::clock::Clock;
use vigil_core::stats::CameraState;

use crate::camera::FaultKind;
use crate::spec::Supervision;

/// One fault, as the supervisor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub kind: FaultKind,
    /// The run that failed delivered at least one frame.
    pub frames_seen: bool,
    /// How long that run streamed, if it streamed at all.
    pub streamed: Option<Duration>,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Next {
    /// The state to show until the next start: why the camera is down.
    pub state: CameraState,
    /// How long to wait before the next start (a reachable-again source cuts it short).
    pub wait: Duration,
    /// The decoder the next start uses: an index into the platform's candidates.
    pub decoder: usize,
    /// Forget the stream's codec and size, and probe it again before the next start.
    pub reprobe: bool,
}

pub(crate) struct Recovery {
    backoff: Backoff,
    /// Streaming this long without a fault resets the backoff to its minimum.
    backoff_reset: Duration,
    decoder: usize,
}

impl Recovery {
    pub(crate) fn new(supervision: &Supervision) -> Self {
        Self::with_backoff(supervision, Backoff::new(supervision.backoff_min, supervision.backoff_max))
    }

    pub(crate) fn with_backoff(supervision: &Supervision, backoff: Backoff) -> Self {
        Self { backoff, backoff_reset: supervision.backoff_reset, decoder: 0 }
    }

    /// The decoder the next start uses.
    pub(crate) fn decoder(&self) -> usize {
        self.decoder
    }

    /// Decides after `fault`. `candidates`: how many decoders the platform offers for the
    /// stream (0 when it is not known yet); `codec_configured`: the camera's codec is set in its
    /// configuration (nothing to probe).
    pub(crate) fn on_fault(&mut self, fault: Fault, candidates: usize, codec_configured: bool) -> Next {
        if fault.streamed.is_some_and(|d| d >= self.backoff_reset) {
            self.backoff.reset();
        }
        // A decoder that fails before its first frame cannot decode this stream here: the next
        // start tries the next one. One that fails after frames had a glitch: it stays.
        if fault.kind == FaultKind::Decoder && !fault.frames_seen && self.decoder + 1 < candidates {
            self.decoder += 1;
        }
        Next {
            state: if fault.kind == FaultKind::Stalled { CameraState::Stalled } else { CameraState::Failed },
            wait: self.backoff.next_wait(),
            decoder: self.decoder,
            reprobe: fault.kind == FaultKind::Negotiation && !codec_configured,
        }
    }
}

/// Why a backoff wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// The whole wait passed.
    Elapsed,
    Cancelled,
    /// A restart was asked for (fleet command, tests).
    Restart,
    /// A source that was unreachable when the wait began answers again.
    Reachable,
}

/// Waits `wait` on `clock` in steps of at most [`WAIT_STEP`]. Ends early when `cancelled`, when
/// `restart` says a restart was asked for, or, for a source that was unreachable when the wait
/// began, when `reachable` (asked every `poll`) says it answers again: that is what brings a
/// camera back soon after its server returns without hammering a dead server with rebuilds.
pub(crate) fn wait_out(
    clock: &dyn Clock,
    wait: Duration,
    poll: Duration,
    cancelled: impl Fn() -> bool,
    mut restart: impl FnMut() -> bool,
    mut reachable: impl FnMut() -> Option<bool>,
) -> WaitEnd {
    let until = clock.now() + wait;
    let was_reachable = reachable();
    let mut next_check = clock.now() + poll;
    while clock.now() < until {
        if cancelled() {
            return WaitEnd::Cancelled;
        }
        if restart() {
            return WaitEnd::Restart;
        }
        if was_reachable == Some(false) && clock.now() >= next_check {
            if reachable() == Some(true) {
                return WaitEnd::Reachable;
            }
            next_check = clock.now() + poll;
        }
        clock.sleep(until.saturating_duration_since(clock.now()).min(WAIT_STEP));
    }
    if cancelled() {
        WaitEnd::Cancelled
    } else {
        WaitEnd::Elapsed
    }
}

/// The longest a backoff wait sleeps between its checks.
pub(crate) const WAIT_STEP: Duration = Duration::from_millis(25);

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn recovery() -> Recovery {
        Recovery::with_backoff(&Supervision::default(), Backoff::with_seed(250 * MS, 10_000 * MS, 3))
    }

    fn fault(kind: FaultKind, frames_seen: bool, streamed_ms: Option<u64>) -> Fault {
        Fault { kind, frames_seen, streamed: streamed_ms.map(Duration::from_millis) }
    }

    fn around(wait: Duration, step_ms: u64) -> bool {
        let step = Duration::from_millis(step_ms);
        wait >= step.mul_f64(0.8) && wait <= step.mul_f64(1.2)
    }

    #[test]
    fn waits_double_while_the_source_stays_down_up_to_the_cap() {
        let mut r = recovery();
        for step in [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000] {
            let next = r.on_fault(fault(FaultKind::Failed, false, None), 3, false);
            assert!(around(next.wait, step), "{:?} around {step} ms", next.wait);
        }
    }

    #[test]
    fn a_fault_after_a_long_healthy_stream_retries_at_the_minimum_again() {
        let mut r = recovery();
        for _ in 0..5 {
            r.on_fault(fault(FaultKind::Failed, false, None), 3, false);
        }
        // Streamed 30 s (the default backoff_reset), then failed: back to 250 ms.
        let next = r.on_fault(fault(FaultKind::Stalled, true, Some(30_000)), 3, false);
        assert!(around(next.wait, 250), "{:?}", next.wait);
        // A short stream does not reset: the next wait doubles from there.
        let next = r.on_fault(fault(FaultKind::Stalled, true, Some(2_000)), 3, false);
        assert!(around(next.wait, 500), "{:?}", next.wait);
    }

    #[test]
    fn a_stall_shows_stalled_and_any_other_fault_shows_failed() {
        let mut r = recovery();
        assert_eq!(r.on_fault(fault(FaultKind::Stalled, true, Some(10)), 3, false).state, CameraState::Stalled);
        for kind in [FaultKind::Failed, FaultKind::Decoder, FaultKind::Negotiation] {
            assert_eq!(r.on_fault(fault(kind, true, Some(10)), 3, false).state, CameraState::Failed, "{kind:?}");
        }
    }

    #[test]
    fn a_decoder_that_fails_before_its_first_frame_is_replaced_by_the_next_candidate() {
        let mut r = recovery();
        assert_eq!(r.decoder(), 0);
        assert_eq!(r.on_fault(fault(FaultKind::Decoder, false, None), 3, false).decoder, 1);
        assert_eq!(r.on_fault(fault(FaultKind::Decoder, false, None), 3, false).decoder, 2);
        // The last candidate stays: there is nothing after it.
        assert_eq!(r.on_fault(fault(FaultKind::Decoder, false, None), 3, false).decoder, 2);
        assert_eq!(r.decoder(), 2);
    }

    #[test]
    fn a_decoder_that_fails_after_frames_had_a_glitch_and_is_kept() {
        let mut r = recovery();
        assert_eq!(r.on_fault(fault(FaultKind::Decoder, true, Some(500)), 3, false).decoder, 0);
        // Nor does any other fault move to another decoder.
        assert_eq!(r.on_fault(fault(FaultKind::Failed, false, None), 3, false).decoder, 0);
        // Nor a decoder fault while the candidates are not known yet.
        assert_eq!(r.on_fault(fault(FaultKind::Decoder, false, None), 0, false).decoder, 0);
    }

    #[test]
    fn caps_that_stop_negotiating_are_probed_again_unless_the_codec_is_configured() {
        let mut r = recovery();
        assert!(r.on_fault(fault(FaultKind::Negotiation, true, Some(100)), 3, false).reprobe);
        assert!(!r.on_fault(fault(FaultKind::Negotiation, true, Some(100)), 3, true).reprobe);
        for kind in [FaultKind::Stalled, FaultKind::Failed, FaultKind::Decoder] {
            assert!(!r.on_fault(fault(kind, true, Some(100)), 3, false).reprobe, "{kind:?}");
        }
    }

    mod waits {
        use std::cell::Cell;

        use vigil_core::clock::ManualClock;

        use super::*;

        const POLL: Duration = Duration::from_millis(250);

        #[test]
        fn with_nothing_happening_the_whole_wait_passes() {
            let clock = ManualClock::new();
            let t0 = clock.now();
            let end = wait_out(&clock, 2000 * MS, POLL, || false, || false, || Some(false));
            assert_eq!(end, WaitEnd::Elapsed);
            assert_eq!(clock.now() - t0, 2000 * MS);
        }

        #[test]
        fn a_source_that_answers_again_ends_the_wait_at_the_next_poll() {
            let clock = ManualClock::new();
            let t0 = clock.now();
            let polls = Cell::new(0);
            // Down at the start; back 600 ms in: seen by the poll at 750 ms.
            let reachable = || {
                polls.set(polls.get() + 1);
                Some(clock.now() - t0 >= 600 * MS)
            };
            let end = wait_out(&clock, 10_000 * MS, POLL, || false, || false, reachable);
            assert_eq!(end, WaitEnd::Reachable);
            assert_eq!(clock.now() - t0, 750 * MS);
            assert_eq!(polls.get(), 4, "at the start, then every 250 ms");
        }

        #[test]
        fn a_source_that_was_reachable_is_not_polled_and_does_not_cut_the_wait() {
            let clock = ManualClock::new();
            let polls = Cell::new(0);
            let reachable = || {
                polls.set(polls.get() + 1);
                Some(true)
            };
            assert_eq!(wait_out(&clock, 1000 * MS, POLL, || false, || false, reachable), WaitEnd::Elapsed);
            assert_eq!(polls.get(), 1, "asked once, at the start");
            // A source that cannot tell (CSI, test patterns) waits it out too.
            assert_eq!(wait_out(&clock, 1000 * MS, POLL, || false, || false, || None), WaitEnd::Elapsed);
        }

        #[test]
        fn a_restart_request_or_a_cancel_ends_the_wait_at_once() {
            let clock = ManualClock::new();
            let t0 = clock.now();
            let asked = Cell::new(false);
            let restart = || {
                let was = asked.get();
                asked.set(clock.now() - t0 >= 100 * MS);
                was
            };
            assert_eq!(wait_out(&clock, 10_000 * MS, POLL, || false, restart, || Some(false)), WaitEnd::Restart);
            assert!(clock.now() - t0 <= 100 * MS + WAIT_STEP);
            let t1 = clock.now();
            assert_eq!(wait_out(&clock, 10_000 * MS, POLL, || true, || false, || Some(false)), WaitEnd::Cancelled);
            assert_eq!(clock.now(), t1);
        }
    }
}
