//! Events: what vigil reports. Detections are tracked per camera, matched against the configured
//! rules and zones (in `vigil-pipeline`), and become events with a lifecycle `new → update* →
//! end`, each message carrying the event's stable id and a revision number.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::picture::SnapshotImage;

/// One event as stored and as published. The store keeps the latest revision; every revision is
/// published once (at least once: a re-sent message is identical, same id and revision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and stable for the whole lifecycle: a UUIDv7 (time-ordered) fixed at `new`.
    pub id: String,
    /// Which message of the lifecycle this is.
    pub phase: Phase,
    /// 0 for `new`, then one more for each message of this event.
    pub revision: u32,
    pub device_id: String,
    pub camera_id: String,
    /// The rule that made the event.
    pub rule: String,
    pub label: String,
    pub class_id: usize,
    /// The tracker's id of the object on this camera (restarts from 1 when vigil starts).
    pub track_id: u64,
    /// Highest score seen; `box`, `box_norm` and `best` describe that observation.
    pub best_score: f32,
    /// Box in source-frame pixels.
    #[serde(rename = "box")]
    pub bbox: PixelBox,
    /// Box normalised to 0..1 by the source frame size.
    pub box_norm: [f32; 4],
    /// The frame of the best observation.
    pub best: FrameRef,
    /// Zones the object is in at its latest observation (the rule's zones, or all of the
    /// camera's zones for a rule without zones).
    pub zones: Vec<String>,
    /// Capture time of the first observation that satisfied the rule (RFC 3339 UTC) and in ns.
    pub start: String,
    pub start_ns: u64,
    /// Capture time of the latest such observation.
    pub last: String,
    pub last_ns: u64,
    /// Set in the `end` message: the latest observation's time (the object was not seen after).
    pub end: Option<String>,
    pub end_ns: Option<u64>,
    pub end_reason: Option<EndReason>,
    /// Seconds from start to the latest observation.
    pub dwell_s: f32,
    /// Observations that satisfied the rule.
    pub frames: u32,
    pub model: ModelRef,
    /// JPEG of the best observation, relative to the data directory (`snapshots/<id>.jpg`).
    pub snapshot: Option<String>,
    /// Set when a time of this event was read from a wall clock that was not synchronized (no
    /// NTP yet, or a clock before 2026: a board whose RTC lost its time): its times are the
    /// device's belief, not the time of day. Its durations (`dwell_s`) are right regardless.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_unsynchronized: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    New,
    Update,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The object is still tracked but no longer satisfies the rule (left its zones, or its
    /// score fell below the rule's minimum) for `events.lost_after_ms`.
    Left,
    /// The tracker lost the object (unseen for `events.lost_after_ms`).
    Lost,
    /// vigil stopped (signal, restart command, new configuration).
    Shutdown,
    /// vigil found the event still open when it started: it had been killed.
    Restart,
    /// Made from a detection record of store schema 2 by the migration to schema 3.
    Migrated,
    /// A new model was activated (or a canary rolled back): the model that saw the object
    /// stopped serving; the new model's detections open events of their own.
    ModelChanged,
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

impl Event {
    /// The next message of an open event, ending it.
    pub fn ended(&self, reason: EndReason) -> Event {
        let mut e = self.clone();
        e.revision += 1;
        e.close(reason);
        e
    }

    /// Makes this message an `end`: the event ends at its latest observation.
    pub fn close(&mut self, reason: EndReason) {
        self.phase = Phase::End;
        self.end = Some(self.last.clone());
        self.end_ns = Some(self.last_ns);
        self.end_reason = Some(reason);
    }
}

/// A new event id: a UUIDv7, unique without coordination and sorted by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Nanoseconds since the Unix epoch: 0 before it, `u64::MAX` after 2554.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// RFC 3339 UTC with microseconds, for a Unix-nanosecond time.
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
}

/// One message of an event's lifecycle, and the picture to store with it when it has a better one.
#[derive(Debug)]
pub struct Emitted {
    pub event: Event,
    pub snapshot: Option<Arc<SnapshotImage>>,
}

/// Where an event's snapshot is stored, relative to the data directory.
pub fn snapshot_path(id: &str) -> String {
    format!("snapshots/{id}.jpg")
}

/// A plain ended event for tests: camera `c`, label `circle`, `best.seq` = `n`, captured at time 0.
#[cfg(any(test, feature = "testing"))]
pub fn test_event(n: u32) -> Event {
    Event {
        id: new_event_id(),
        phase: Phase::End,
        revision: 1,
        device_id: "d".into(),
        camera_id: "c".into(),
        rule: "objects".into(),
        label: "circle".into(),
        class_id: 0,
        track_id: u64::from(n),
        best_score: 0.9,
        bbox: PixelBox { x1: 0.0, y1: 0.0, x2: n as f32, y2: 1.0 },
        box_norm: [0.0; 4],
        best: FrameRef {
            seq: u64::from(n),
            pts_ns: None,
            captured_at: String::new(),
            captured_at_ns: 0,
            width: 1,
            height: 1,
        },
        zones: Vec::new(),
        start: String::new(),
        start_ns: 0,
        last: String::new(),
        last_ns: 0,
        end: Some(String::new()),
        end_ns: Some(0),
        end_reason: Some(EndReason::Lost),
        dwell_s: 0.0,
        frames: 1,
        model: ModelRef { name: "m".into(), version: "1".into(), backend: "b".into() },
        snapshot: None,
        clock_unsynchronized: false,
    }
}
