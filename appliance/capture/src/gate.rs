//! The keyframe gate and decode accounting, on the decoder's pads.
//!
//! - After a (re)connect, compressed frames before the first keyframe are dropped (they would
//!   decode to grey smears) and a key unit is asked of upstream (`force-key-unit`, which RTP
//!   turns into a picture-loss request where the server supports it), at most once a second.
//! - Stream damage sends the gate back to waiting for a keyframe. Damage is what can be seen:
//!   a unit flagged DISCONT (RTP packet loss) or CORRUPTED mid-stream, a frame that went into the
//!   decoder and never came out, a decoded frame flagged DISCONT (GstVideoDecoder's mark after an
//!   error it tolerated) or CORRUPTED, or an error message the decoder posted (see `FrameSource`).
//!   Software H.264/H.265 decoding (FFmpeg) conceals bit errors inside a slice without reporting
//!   them; those cannot be counted here.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;

use vigil_core::stats::CameraStats;

/// Timestamps of frames inside the decoder, kept to spot frames it swallowed. Bounded.
const MAX_PENDING: usize = 64;
const KEY_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The stream (re)started: drops count as "before keyframe".
    Start,
    /// Damage was seen: drops count as "decode error".
    Damage,
}

#[derive(Debug)]
struct GateState {
    waiting: Option<Waiting>,
    /// A unit has passed since the last (re)start or flush; DISCONT on the first is normal.
    seen_any: bool,
    /// The same on the decoder's output.
    seen_output: bool,
    last_request: Option<Instant>,
    pending: BTreeSet<u64>,
}

pub struct Gate {
    state: Mutex<GateState>,
    stats: Arc<CameraStats>,
}

impl Gate {
    /// Installs the gate on `decoder`'s sink and source pads.
    pub fn install(decoder: &gst::Element, stats: Arc<CameraStats>) -> Option<Arc<Self>> {
        let sink = decoder.static_pad("sink")?;
        let src = decoder.static_pad("src")?;
        let gate = Arc::new(Self {
            state: Mutex::new(GateState {
                waiting: Some(Waiting::Start),
                seen_any: false,
                seen_output: false,
                last_request: None,
                pending: BTreeSet::new(),
            }),
            stats,
        });
        let g = gate.clone();
        sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let verdict = match &info.data {
                Some(gst::PadProbeData::Buffer(buffer)) => g.on_input(pad, buffer),
                _ => gst::PadProbeReturn::Ok,
            };
            if verdict == gst::PadProbeReturn::Drop {
                // Consume the buffer here and report it handled: with `Drop`, gstreamer-rs 0.25
                // releases the buffer and GStreamer then unrefs the emptied slot again
                // (a CRITICAL per dropped frame).
                info.data = None;
                return gst::PadProbeReturn::Handled;
            }
            verdict
        });
        let g = gate.clone();
        sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH, move |_, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data {
                if matches!(event.type_(), gst::EventType::FlushStop | gst::EventType::StreamStart) {
                    // A seek (file loop) or a new stream: its first unit may be DISCONT.
                    let mut s = g.lock();
                    s.seen_any = false;
                    s.seen_output = false;
                    s.pending.clear();
                }
            }
            gst::PadProbeReturn::Ok
        });
        let g = gate.clone();
        src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                g.on_output(buffer);
            }
            gst::PadProbeReturn::Ok
        });
        Some(gate)
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Damage reported from outside (an error the decoder posted on the bus).
    pub fn damage(&self) {
        self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
        self.lock().waiting = Some(Waiting::Damage);
    }

    fn on_input(&self, pad: &gst::Pad, buffer: &gst::BufferRef) -> gst::PadProbeReturn {
        let flags = buffer.flags();
        let mut request_key = false;
        let verdict = {
            let mut s = self.lock();
            if s.seen_any && flags.intersects(gst::BufferFlags::DISCONT | gst::BufferFlags::CORRUPTED) {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                s.waiting = Some(Waiting::Damage);
            }
            s.seen_any = true;
            match s.waiting {
                Some(why) if flags.contains(gst::BufferFlags::DELTA_UNIT) => {
                    let counter = match why {
                        Waiting::Start => &self.stats.dropped_before_keyframe,
                        Waiting::Damage => &self.stats.dropped_decode_error,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if s.last_request.is_none_or(|t| t.elapsed() >= KEY_REQUEST_INTERVAL) {
                        s.last_request = Some(Instant::now());
                        request_key = true;
                    }
                    gst::PadProbeReturn::Drop
                }
                _ => {
                    s.waiting = None;
                    if let Some(pts) = buffer.pts() {
                        s.pending.insert(pts.nseconds());
                        if s.pending.len() > MAX_PENDING {
                            s.pending.pop_first();
                        }
                    }
                    gst::PadProbeReturn::Ok
                }
            }
        };
        if request_key {
            // Upstream, against the flow: the depayloader/parser/source turns it into a request.
            let event = gst_video::UpstreamForceKeyUnitEvent::builder().all_headers(true).build();
            pad.push_event(event);
            self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    fn on_output(&self, buffer: &gst::BufferRef) {
        let mut s = self.lock();
        // GstVideoDecoder marks the frame after an error it tolerated DISCONT; FFmpeg marks frames
        // it knows are broken CORRUPTED.
        let flagged = buffer.flags().intersects(gst::BufferFlags::DISCONT | gst::BufferFlags::CORRUPTED);
        if flagged && s.seen_output {
            self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            s.waiting = Some(Waiting::Damage);
        }
        s.seen_output = true;
        let Some(pts) = buffer.pts().map(|t| t.nseconds()) else { return };
        // Decoders emit frames in presentation order: inputs older than this output that never
        // came out never will. Only trust timestamps the decoder passed through unchanged.
        if s.pending.remove(&pts) {
            let newer = s.pending.split_off(&pts);
            let lost = s.pending.len() as u64;
            s.pending = newer;
            if lost > 0 {
                self.stats.decode_errors.fetch_add(lost, Ordering::Relaxed);
                s.waiting = Some(Waiting::Damage);
            }
        }
    }
}
