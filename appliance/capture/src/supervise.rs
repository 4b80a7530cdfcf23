//! The supervisor: one long-lived, retrying thread per camera. It owns its pipeline, rebuilds it
//! after any fault (ERROR, unexpected EOS, or silence caught by the frame watchdog) with capped
//! exponential backoff, and reports what it is doing in [`CameraStats`]; nothing else restarts it.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_core::clock::{Clock, SystemClock};
use vigil_core::hub::FrameHub;
use vigil_core::source::SourceUri;
use vigil_core::stats::{CameraState, CameraStats};

use crate::camera::{probe, FaultKind, FrameSource, SourceEnd, StreamInfo, Timeline};
use crate::platform::Platform;
use crate::recovery::{wait_out, Fault, Recovery, WaitEnd};
use crate::resolve::Resolver;
use crate::spec::CameraSpec;
use crate::{CaptureError, Frame};

/// How often a camera in backoff checks whether its source came back.
const REACHABILITY_POLL: Duration = Duration::from_millis(250);
/// How long a reachability check waits for a name lookup, then for the TCP connection.
const DNS_TIMEOUT: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Runs one camera until cancelled (or, for a file played once, until its end), rebuilding the
/// pipeline after every fault. Frames go to `hub`; state and counters to the hub's stats.
pub fn spawn_camera(
    spec: CameraSpec,
    platform: Arc<Platform>,
    hub: Arc<FrameHub<Frame>>,
    cancel: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let stats = hub.stats()[spec.index].clone();
    std::thread::Builder::new()
        .name(format!("cam-{}", spec.id))
        .spawn(move || Supervisor::new(spec, platform, stats).run(&hub, &cancel))
}

struct Supervisor {
    spec: CameraSpec,
    platform: Arc<Platform>,
    stats: Arc<CameraStats>,
    timeline: Timeline,
    /// Learnt once and kept across rebuilds; cleared when the stream stops negotiating.
    info: Option<StreamInfo>,
    /// The decisions after a fault: wait, decoder, probe again (`recovery.rs`).
    recovery: Recovery,
    runs: u64,
    resolver: Resolver,
    /// Backoff waits are timed on it.
    clock: Arc<dyn Clock>,
}

impl Supervisor {
    fn new(spec: CameraSpec, platform: Arc<Platform>, stats: Arc<CameraStats>) -> Self {
        let (info, recovery) = (spec.known_info(), Recovery::new(&spec.supervision));
        Self {
            spec,
            platform,
            stats,
            timeline: Timeline::default(),
            info,
            recovery,
            runs: 0,
            resolver: Resolver::system(DNS_TIMEOUT),
            clock: Arc::new(SystemClock),
        }
    }

    fn run(mut self, hub: &FrameHub<Frame>, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            self.stats.set_state(CameraState::Starting);
            let (outcome, streamed) = self.run_once(hub, cancel);
            match outcome {
                Ok(SourceEnd::Finished) => {
                    tracing::info!(camera = %self.spec.id, "source finished");
                    self.stats.set_state(CameraState::Finished);
                    return;
                }
                Ok(SourceEnd::Cancelled) => break,
                Ok(SourceEnd::Restart) => {
                    tracing::info!(camera = %self.spec.id, "restart requested");
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let wait = self.on_fault(&e, streamed);
                    tracing::warn!(camera = %self.spec.id, error = %e, retry_in_ms = wait.as_millis() as u64, "camera fault");
                    // The state stays `stalled` or `failed` (set by on_fault) through the wait.
                    if self.wait_backoff(wait, cancel) {
                        break;
                    }
                }
            }
        }
        self.stats.set_state(CameraState::Stopped);
    }

    /// Records a fault (the state it leaves the camera in until the next start: `stalled` or
    /// `failed`), applies what [`Recovery`] decides for the next start, and returns the wait.
    fn on_fault(&mut self, e: &CaptureError, streamed: Option<Duration>) -> Duration {
        let kind = match e {
            CaptureError::Stream { kind, .. } => *kind,
            _ => FaultKind::Failed,
        };
        let candidates = self
            .info
            .and_then(|i| self.platform.decoders(i.codec, self.spec.decoder.as_deref()).ok())
            .unwrap_or_default();
        let before = self.recovery.decoder();
        let fault = Fault { kind, frames_seen: streamed.is_some(), streamed };
        let next = self.recovery.on_fault(fault, candidates.len(), self.spec.codec.is_some());
        // The error first: whoever sees the new state finds its reason beside it.
        self.stats.set_error(&e.to_string());
        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if next.state == CameraState::Stalled {
            self.stats.stalls.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.set_state(next.state);
        if next.decoder != before {
            tracing::warn!(camera = %self.spec.id, failed = candidates[before].element,
                next = candidates[next.decoder].element, "decoder failed; falling back");
        }
        if next.reprobe {
            self.info = None; // learn the stream again
        }
        next.wait
    }

    fn run_once(
        &mut self,
        hub: &FrameHub<Frame>,
        cancel: &CancellationToken,
    ) -> (Result<SourceEnd, CaptureError>, Option<Duration>) {
        let info = match self.info {
            Some(info) => info,
            None => match probe(&self.spec, self.spec.supervision.first_frame_timeout) {
                Ok(info) => {
                    tracing::info!(camera = %self.spec.id, codec = %info.codec, size = ?info.size, "stream probed");
                    *self.info.insert(info)
                }
                Err(e) => return (Err(e), None),
            },
        };
        let plan = match self.spec.plan(&self.platform, info, self.recovery.decoder()) {
            Ok(plan) => plan,
            Err(e) => return (Err(e), None),
        };
        self.runs += 1;
        let mut src = match FrameSource::start(&self.spec, &plan, &self.platform, self.runs, self.stats.clone()) {
            Ok(s) => s,
            Err(e) => return (Err(e), None),
        };
        self.stats.set_path(plan.path());
        tracing::info!(camera = %self.spec.id, path = %plan.path(), pipeline = %src.description(), "pipeline started");
        let outcome = self.pump(&mut src, hub, cancel);
        (outcome, src.streamed_for())
    }

    fn pump(
        &mut self,
        src: &mut FrameSource,
        hub: &FrameHub<Frame>,
        cancel: &CancellationToken,
    ) -> Result<SourceEnd, CaptureError> {
        loop {
            if cancel.is_cancelled() {
                return Ok(SourceEnd::Cancelled);
            }
            if self.stats.take_restart_request() {
                return Ok(SourceEnd::Restart);
            }
            match src.next_frame(&mut self.timeline) {
                Ok(Some(frame)) => {
                    if self.stats.state() != CameraState::Streaming {
                        self.stats.set_state(CameraState::Streaming);
                    }
                    self.stats.record_in(frame.captured_mono);
                    hub.put(frame);
                }
                Ok(None) => {}
                Err(_) if src.at_end() && src.is_finite() => return Ok(SourceEnd::Finished),
                Err(_) if src.at_end() && src.is_looped() => src.rewind()?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sleeps for `wait` unless cancelled (returns true) or the source comes back first: a
    /// network camera answering on its port again, a file or device node reappearing
    /// ([`wait_out`], on the supervisor's clock).
    fn wait_backoff(&mut self, wait: Duration, cancel: &CancellationToken) -> bool {
        let (source, resolver, stats) = (&self.spec.source, &mut self.resolver, &self.stats);
        let end = wait_out(
            self.clock.as_ref(),
            wait,
            REACHABILITY_POLL,
            || cancel.is_cancelled(),
            || stats.take_restart_request(),
            || reachable(source, resolver),
        );
        if end == WaitEnd::Reachable {
            tracing::info!(camera = %self.spec.id, "source is reachable again; reconnecting now");
        }
        end == WaitEnd::Cancelled
    }
}

/// Whether a source can be reached right now, where that is cheap to tell: a TCP connection to
/// an RTSP server (its name looked up with a deadline), the existence of a file or device node.
/// `None` for sources it cannot tell.
fn reachable(source: &SourceUri, resolver: &mut Resolver) -> Option<bool> {
    match source {
        SourceUri::Rtsp { .. } => {
            let (host, port) = source.network_address()?;
            let Some(target) = resolver.resolve(host, port) else { return Some(false) };
            Some(TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).is_ok())
        }
        SourceUri::File { path, .. } => Some(path.exists()),
        SourceUri::V4l2 { device, .. } => Some(device.exists()),
        SourceUri::Csi { .. } | SourceUri::Test { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_is_told_for_network_and_file_sources_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = SourceUri::parse(&format!("rtsp://127.0.0.1:{port}/cam")).unwrap();
        // Credentials in the URI do not hide the address (`user:pw@host` used to be looked up).
        let with_credentials = SourceUri::parse(&format!("rtsp://admin:p%2Fw@127.0.0.1:{port}/cam")).unwrap();
        let mut resolver = Resolver::system(DNS_TIMEOUT);
        assert_eq!(reachable(&up, &mut resolver), Some(true));
        assert_eq!(reachable(&with_credentials, &mut resolver), Some(true));
        drop(listener);
        assert_eq!(reachable(&up, &mut resolver), Some(false));
        assert_eq!(reachable(&SourceUri::parse("file:///nonexistent.mp4").unwrap(), &mut resolver), Some(false));
        assert_eq!(reachable(&SourceUri::parse("test://ball").unwrap(), &mut resolver), None);
    }
}
