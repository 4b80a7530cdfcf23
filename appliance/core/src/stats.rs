//! What each camera is doing, for logs and the status/metrics reporters: one [`CameraStats`]
//! per camera, written by its capture thread (and the hub), read by anyone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Supervision states: `starting → streaming → stalled | failed → starting`, the fault's state
/// held through the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CameraState {
    Starting = 0,
    Streaming = 1,
    /// No frame within the watchdog period (a hung server posts no error at all); waiting out
    /// the backoff before the next start.
    Stalled = 2,
    /// The pipeline reported an error or an unexpected end of stream, or could not be built;
    /// waiting out the backoff before the next start.
    Failed = 3,
    /// A file played once reached its end.
    Finished = 4,
    Stopped = 5,
}

impl CameraState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Streaming,
            2 => Self::Stalled,
            3 => Self::Failed,
            4 => Self::Finished,
            _ => Self::Stopped,
        }
    }
}

/// Frames per second over a sliding window (bounded: at most `CAP` timestamps kept).
#[derive(Debug, Default)]
struct RateMeter {
    times: Mutex<VecDeque<Instant>>,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(5);
    const CAP: usize = 1024;

    fn lock(&self) -> MutexGuard<'_, VecDeque<Instant>> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, at: Instant) {
        let mut times = self.lock();
        while times.len() >= Self::CAP || times.front().is_some_and(|t| at.duration_since(*t) > Self::WINDOW) {
            times.pop_front();
        }
        times.push_back(at);
    }

    /// Rate over the window ending now; 0 when nothing arrived in it.
    fn per_second(&self, now: Instant) -> f64 {
        let times = self.lock();
        let mut in_window = times.iter().filter(|t| now.duration_since(**t) <= Self::WINDOW);
        let Some(first) = in_window.next() else { return 0.0 };
        let recent = 1 + in_window.count();
        if recent < 2 {
            return 0.0;
        }
        // Over the span actually covered, so a camera that just started is not under-counted.
        (recent - 1) as f64 / now.duration_since(*first).as_secs_f64().max(1.0 / 240.0)
    }

    fn last(&self) -> Option<Instant> {
        self.lock().back().copied()
    }
}

/// Counters one camera thread updates and anyone may read.
#[derive(Debug)]
pub struct CameraStats {
    pub id: Arc<str>,
    state: AtomicU8,
    /// Frames out of the pipeline into the latest-frame slot.
    pub frames_in: AtomicU64,
    /// Frames taken from the slot by the scheduler.
    pub frames_out: AtomicU64,
    /// A newer frame replaced one the scheduler had not taken yet.
    pub dropped_overwritten: AtomicU64,
    /// Compressed frames discarded after a (re)connect while waiting for the first keyframe.
    pub dropped_before_keyframe: AtomicU64,
    /// Compressed frames discarded after a decode error while waiting for the next keyframe.
    pub dropped_decode_error: AtomicU64,
    /// Damage seen in or before the decoder (see [`super::gate`]).
    pub decode_errors: AtomicU64,
    /// Frames the sequence numbers say never arrived (outages, losses, drops before the slot).
    pub frames_missing: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Pipeline restarts after a fault or on request.
    pub reconnects: AtomicU64,
    /// Watchdog expiries.
    pub stalls: AtomicU64,
    pub clock_steps: AtomicU64,
    restart: AtomicBool,
    rate_in: RateMeter,
    rate_out: RateMeter,
    text: Mutex<Texts>,
}

#[derive(Debug, Default, Clone)]
struct Texts {
    last_error: Option<String>,
    decode_path: Option<String>,
}

/// A consistent-enough copy of [`CameraStats`] for reporting (each field read atomically).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraStatsSnapshot {
    /// Not serialized: the `metrics` message names the camera once, beside this.
    #[serde(skip)]
    pub id: String,
    pub state: CameraState,
    /// `avdec_h264 (software) → videoconvert`.
    pub decode_path: Option<String>,
    pub fps_in: f64,
    pub fps_out: f64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped_overwritten: u64,
    pub dropped_before_keyframe: u64,
    pub dropped_decode_error: u64,
    pub decode_errors: u64,
    pub frames_missing: u64,
    pub keyframe_requests: u64,
    pub reconnects: u64,
    pub stalls: u64,
    pub clock_steps: u64,
    pub last_error: Option<String>,
    /// Milliseconds since the last frame left the pipeline; `None` before the first.
    pub since_last_frame_ms: Option<u64>,
}

impl CameraStats {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            state: AtomicU8::new(CameraState::Starting as u8),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            dropped_overwritten: AtomicU64::new(0),
            dropped_before_keyframe: AtomicU64::new(0),
            dropped_decode_error: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            frames_missing: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            clock_steps: AtomicU64::new(0),
            restart: AtomicBool::new(false),
            rate_in: RateMeter::default(),
            rate_out: RateMeter::default(),
            text: Mutex::new(Texts::default()),
        }
    }

    pub fn state(&self) -> CameraState {
        CameraState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: CameraState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    fn texts(&self) -> MutexGuard<'_, Texts> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_error(&self, e: &str) {
        self.texts().last_error = Some(e.to_owned());
    }

    pub fn set_path(&self, decode_path: String) {
        self.texts().decode_path = Some(decode_path);
    }

    pub fn record_in(&self, at: Instant) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        self.rate_in.record(at);
    }

    pub fn record_out(&self) {
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        self.rate_out.record(Instant::now());
    }

    /// Asks the capture thread to tear its pipeline down and start again at once (no backoff).
    pub fn request_restart(&self) {
        self.restart.store(true, Ordering::Relaxed);
    }

    pub fn take_restart_request(&self) -> bool {
        self.restart.swap(false, Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> CameraStatsSnapshot {
        let now = Instant::now();
        let texts = self.texts().clone();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CameraStatsSnapshot {
            id: self.id.to_string(),
            state: self.state(),
            decode_path: texts.decode_path,
            fps_in: self.rate_in.per_second(now),
            fps_out: self.rate_out.per_second(now),
            frames_in: load(&self.frames_in),
            frames_out: load(&self.frames_out),
            dropped_overwritten: load(&self.dropped_overwritten),
            dropped_before_keyframe: load(&self.dropped_before_keyframe),
            dropped_decode_error: load(&self.dropped_decode_error),
            decode_errors: load(&self.decode_errors),
            frames_missing: load(&self.frames_missing),
            keyframe_requests: load(&self.keyframe_requests),
            reconnects: load(&self.reconnects),
            stalls: load(&self.stalls),
            clock_steps: load(&self.clock_steps),
            last_error: texts.last_error,
            since_last_frame_ms: self.rate_in.last().map(|t| now.duration_since(t).as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_recent_window_only() {
        let m = RateMeter::default();
        let t0 = Instant::now();
        for i in 0..=50 {
            m.record(t0 + Duration::from_millis(i * 100));
        }
        let end = t0 + Duration::from_millis(5000);
        assert!((m.per_second(end) - 10.0).abs() < 0.3, "{}", m.per_second(end));
        // Nothing for 6 s: the rate falls to 0.
        assert_eq!(m.per_second(end + Duration::from_secs(6)), 0.0);
        assert!(m.lock().len() <= 51);
    }

    #[test]
    fn the_meter_is_bounded() {
        let m = RateMeter::default();
        let t0 = Instant::now();
        for i in 0..5000 {
            m.record(t0 + Duration::from_micros(i * 10));
        }
        assert_eq!(m.lock().len(), RateMeter::CAP);
    }

    #[test]
    fn snapshots_carry_state_path_and_restart_requests() {
        let s = CameraStats::new("a");
        s.set_state(CameraState::Stalled);
        s.set_path("raw → nvvidconv".into());
        s.record_in(Instant::now());
        let snap = s.snapshot();
        assert_eq!(snap.state, CameraState::Stalled);
        assert_eq!(snap.decode_path.as_deref(), Some("raw → nvvidconv"));
        assert_eq!(snap.frames_in, 1);
        assert!(snap.since_last_frame_ms.is_some());
        assert!(!s.take_restart_request());
        s.request_restart();
        assert!(s.take_restart_request() && !s.take_restart_request());
    }
}
