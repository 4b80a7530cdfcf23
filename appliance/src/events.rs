//! Events: what vigil reports. For now one `detection` event per detected object per processed
//! frame; tracking, zones and an event lifecycle build on this record.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::capture::Frame;
use crate::infer::Detection;
use crate::scheduler::FrameTimes;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and stable: a UUIDv7 (time-ordered) fixed when the event is made, so a re-sent
    /// event always carries the same id.
    pub id: String,
    pub kind: EventKind,
    pub device_id: String,
    pub camera_id: String,
    pub label: String,
    pub class_id: usize,
    pub score: f32,
    /// Box in source-frame pixels.
    #[serde(rename = "box")]
    pub bbox: PixelBox,
    /// Box normalised to 0..1 by the source frame size.
    pub box_norm: [f32; 4],
    pub frame: FrameRef,
    pub model: ModelRef,
    pub latency: Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Detection,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRef {
    pub seq: u64,
    /// Stream presentation time in nanoseconds, when the stream has one.
    pub pts_ns: Option<u64>,
    /// Capture time, RFC 3339 UTC.
    pub captured_at: String,
    /// Capture time, nanoseconds since the Unix epoch.
    pub captured_at_ns: u64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    pub backend: String,
}

/// Milliseconds spent on the frame that produced the event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Capture to detections ready.
    pub total_ms: f32,
    pub queue_ms: f32,
    pub preprocess_ms: f32,
    pub inference_ms: f32,
    pub postprocess_ms: f32,
}

fn ms(d: std::time::Duration) -> f32 {
    d.as_secs_f32() * 1000.0
}

/// A new event id: a UUIDv7, unique without coordination and sorted by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Nanoseconds since the Unix epoch: 0 before it, `u64::MAX` after 2554.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Everything about a processed frame that its events share.
pub struct FrameContext<'a> {
    pub device_id: &'a str,
    pub labels: &'a [String],
    pub model: &'a ModelRef,
    pub frame: &'a Frame,
    pub times: FrameTimes,
}

impl FrameContext<'_> {
    /// One event per detection, ids fixed here.
    pub fn events(&self, detections: &[Detection]) -> Vec<Event> {
        let f = self.frame;
        let (w, h) = (f.source_width as f32, f.source_height as f32);
        let frame = FrameRef {
            seq: f.seq,
            pts_ns: f.pts.map(|p| p.as_nanos() as u64),
            captured_at: humantime::format_rfc3339_micros(f.captured_at).to_string(),
            captured_at_ns: unix_ns(f.captured_at),
            width: f.source_width,
            height: f.source_height,
        };
        let latency = Latency {
            total_ms: ms(self.times.total),
            queue_ms: ms(self.times.queue),
            preprocess_ms: ms(self.times.preprocess),
            inference_ms: ms(self.times.inference),
            postprocess_ms: ms(self.times.postprocess),
        };
        detections
            .iter()
            .map(|d| Event {
                id: new_event_id(),
                kind: EventKind::Detection,
                device_id: self.device_id.to_owned(),
                camera_id: f.camera_id.to_string(),
                label: self.labels.get(d.class_id).cloned().unwrap_or_else(|| format!("class{}", d.class_id)),
                class_id: d.class_id,
                score: d.score,
                bbox: PixelBox { x1: d.bbox.x1, y1: d.bbox.y1, x2: d.bbox.x2, y2: d.bbox.y2 },
                box_norm: [d.bbox.x1 / w, d.bbox.y1 / h, d.bbox.x2 / w, d.bbox.y2 / h],
                frame: frame.clone(),
                model: self.model.clone(),
                latency,
            })
            .collect()
    }
}

/// A plain event for tests: camera `c`, label `circle`, `seq` = `n`, captured at time 0.
#[cfg(test)]
pub(crate) fn test_event(n: u32) -> Event {
    Event {
        id: new_event_id(),
        kind: EventKind::Detection,
        device_id: "d".into(),
        camera_id: "c".into(),
        label: "circle".into(),
        class_id: 0,
        score: 0.9,
        bbox: PixelBox { x1: 0.0, y1: 0.0, x2: n as f32, y2: 1.0 },
        box_norm: [0.0; 4],
        frame: FrameRef {
            seq: u64::from(n),
            pts_ns: None,
            captured_at: String::new(),
            captured_at_ns: 0,
            width: 1,
            height: 1,
        },
        model: ModelRef { name: "m".into(), version: "1".into(), backend: "b".into() },
        latency: Latency { total_ms: 0.0, queue_ms: 0.0, preprocess_ms: 0.0, inference_ms: 0.0, postprocess_ms: 0.0 },
    }
}
