//! Per-camera sequence numbers that count the frames a source *should* have produced, so that
//! gaps show. Pure (the caller passes the times in), so its behaviour under outages and loops is
//! unit-tested without waiting. Wall-clock capture times are `vigil_core::wallclock`.

use std::time::Duration;

/// Per-camera frame sequence numbers, kept across pipeline rebuilds.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: Option<Last>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    pts: Option<Duration>,
    mono: Duration,
    run: u64,
}

/// What the sequencer needs to know about one frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameTiming {
    /// Stream timestamp (comparable only within one run of the pipeline).
    pub pts: Option<Duration>,
    /// Monotonic capture time.
    pub mono: Duration,
    /// Which pipeline run produced the frame (it changes at every rebuild).
    pub run: u64,
    /// The source's nominal frame interval, if it has a fixed rate.
    pub interval: Option<Duration>,
    /// A camera (real time) rather than a file.
    pub live: bool,
}

impl Sequencer {
    /// The sequence number given to the last frame.
    pub fn last(&self) -> Option<u64> {
        self.last.map(|l| l.seq)
    }

    /// The sequence number of the next frame: one more than the last, plus the frames that should
    /// have come in between (judged from stream timestamps within a run, and from real time
    /// across a rebuild of a live source).
    pub fn next(&mut self, f: FrameTiming) -> u64 {
        let seq = match (self.last, f.interval) {
            (None, _) => 0,
            (Some(last), None) => last.seq + 1,
            (Some(last), Some(interval)) => {
                let elapsed = if last.run == f.run {
                    match (last.pts, f.pts) {
                        (Some(a), Some(b)) if b > a => Some(b - a),
                        _ => None,
                    }
                } else if f.live {
                    f.mono.checked_sub(last.mono)
                } else {
                    None // a file restarted: its timeline begins again
                };
                let frames = elapsed.map(|e| (e.as_secs_f64() / interval.as_secs_f64()).round() as u64);
                last.seq + frames.unwrap_or(1).max(1)
            }
        };
        self.last = Some(Last { seq, pts: f.pts, mono: f.mono, run: f.run });
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pts_ms: Option<u64>, mono_ms: u64, run: u64, live: bool) -> FrameTiming {
        FrameTiming {
            pts: pts_ms.map(Duration::from_millis),
            mono: Duration::from_millis(mono_ms),
            run,
            interval: Some(Duration::from_millis(40)),
            live,
        }
    }

    #[test]
    fn sequence_numbers_count_missing_frames_within_a_run() {
        let mut s = Sequencer::default();
        assert_eq!(s.next(t(Some(0), 0, 1, true)), 0);
        assert_eq!(s.next(t(Some(40), 40, 1, true)), 1);
        // Two frames lost upstream.
        assert_eq!(s.next(t(Some(160), 160, 1, true)), 4);
        // Jitter in timestamps does not invent gaps.
        assert_eq!(s.next(t(Some(205), 205, 1, true)), 5);
    }

    #[test]
    fn an_outage_of_a_live_source_shows_as_a_gap_after_the_rebuild() {
        let mut s = Sequencer::default();
        s.next(t(Some(0), 0, 1, true));
        s.next(t(Some(40), 40, 1, true));
        // 5 s later a new pipeline starts its timestamps again from 0.
        assert_eq!(s.next(t(Some(0), 5_040, 2, true)), 1 + 125);
    }

    #[test]
    fn files_that_restart_or_loop_continue_by_one() {
        let mut s = Sequencer::default();
        s.next(t(Some(0), 0, 1, false));
        s.next(t(Some(40), 1, 1, false));
        assert_eq!(s.next(t(Some(0), 2, 1, false)), 2, "loop back to the start");
        assert_eq!(s.next(t(Some(0), 9_000, 2, false)), 3, "rebuilt file");
        let mut free = Sequencer::default();
        let mut f = t(None, 0, 1, true);
        f.interval = None;
        assert_eq!((free.next(f), free.next(f)), (0, 1));
    }
}
