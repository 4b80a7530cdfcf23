//! Rules and zones, and the event lifecycle they drive.
//!
//! Per camera, each frame's detections go through the [`Tracker`]; every tracked detection is
//! checked against each rule that watches the camera (label, minimum score, and the bottom-centre
//! of its box inside one of the rule's zones). A (rule, track) pair that has been satisfied for
//! `min_frames` observations and `dwell_s` seconds opens an event (`new`); while it stays
//! satisfied the event is re-sent (`update`) when its zones change or, at most every
//! `update_interval`, when it has improved or grown; once it has not been satisfied for
//! `lost_after` the event closes (`end`) with the time of its last observation.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::bail;

use vigil_config::Config;
use vigil_core::event::{
    new_event_id, rfc3339, snapshot_path, Emitted, EndReason, Event, FrameRef, ModelRef, Phase, PixelBox,
};
use vigil_core::geometry::Detection;
use vigil_core::picture::{SnapshotImage, SourceImage};

use crate::tracker::{Tracker, TrackerSettings};

/// An object's best score must rise by this much for a new snapshot to be taken.
const SNAPSHOT_GAIN: f32 = 0.02;

/// A zone polygon, normalised coordinates.
#[derive(Debug, Clone)]
struct Zone {
    name: String,
    polygon: Vec<[f32; 2]>,
}

impl Zone {
    /// Even-odd rule; a point on an edge may fall either way.
    fn contains(&self, x: f32, y: f32) -> bool {
        let p = &self.polygon;
        let mut inside = false;
        let mut j = p.len() - 1;
        for i in 0..p.len() {
            let ([xi, yi], [xj, yj]) = (p[i], p[j]);
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    /// Class ids taken; `None`: all.
    classes: Option<Vec<usize>>,
    /// Indexes into the camera's zones; empty: the whole frame.
    zones: Vec<usize>,
    min_score: f32,
    min_frames: u32,
    dwell_ns: u64,
    cooldown_ns: u64,
}

/// The rules and zones of a whole configuration, checked against the model's labels.
pub struct RuleSet {
    cameras: HashMap<String, (Vec<Zone>, Vec<Rule>)>,
    settings: Settings,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    tracker: TrackerSettings,
    update_interval_ns: u64,
    snapshots: bool,
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

impl RuleSet {
    /// Compiles the configuration's rules for a model with `labels`. A rule naming a label the
    /// model does not have is an error (an OTA model with other labels is refused with it).
    pub fn compile(config: &Config, labels: &[String]) -> anyhow::Result<Self> {
        let rules = config.effective_rules();
        for rule in &rules {
            for label in &rule.labels {
                if !labels.contains(label) {
                    bail!(
                        "rule `{}` names label `{label}`, which the model does not have; its labels are: {}",
                        rule.name,
                        labels.join(", ")
                    );
                }
            }
        }
        let mut cameras = HashMap::new();
        for cam in &config.cameras {
            let zones: Vec<Zone> =
                cam.zones.iter().map(|z| Zone { name: z.name.clone(), polygon: z.polygon.clone() }).collect();
            let mut compiled = Vec::new();
            for rule in rules.iter().filter(|r| r.cameras.is_empty() || r.cameras.contains(&cam.id)) {
                let zone_ids: Vec<usize> =
                    zones.iter().enumerate().filter(|(_, z)| rule.zones.contains(&z.name)).map(|(i, _)| i).collect();
                if !rule.zones.is_empty() && zone_ids.is_empty() {
                    continue; // none of the rule's zones is on this camera
                }
                compiled.push(Rule {
                    name: rule.name.clone(),
                    classes: (!rule.labels.is_empty())
                        .then(|| rule.labels.iter().filter_map(|l| labels.iter().position(|m| m == l)).collect()),
                    zones: zone_ids,
                    min_score: rule.min_score,
                    min_frames: rule.min_frames.max(1),
                    dwell_ns: secs_to_ns(rule.dwell_s),
                    cooldown_ns: secs_to_ns(rule.cooldown_s),
                });
            }
            cameras.insert(cam.id.clone(), (zones, compiled));
        }
        let e = &config.events;
        Ok(Self {
            cameras,
            settings: Settings {
                tracker: TrackerSettings {
                    // Without tracking no detection matches a track: each starts its own.
                    iou_threshold: if e.track { e.iou_threshold } else { f32::INFINITY },
                    lost_after_ns: e.lost_after_ms * 1_000_000,
                },
                update_interval_ns: e.update_interval_s * 1_000_000_000,
                snapshots: e.snapshots,
            },
        })
    }

    /// The event state of one camera.
    pub fn camera(&self, camera_id: &str, device_id: &str, model: &ModelRef, labels: Arc<[String]>) -> CameraEvents {
        let (zones, rules) = self.cameras.get(camera_id).cloned().unwrap_or_default();
        let unset =
            FrameRef { seq: 0, pts_ns: None, captured_at: String::new(), captured_at_ns: 0, width: 0, height: 0 };
        let template = Event {
            id: String::new(),
            phase: Phase::New,
            revision: 0,
            device_id: device_id.to_owned(),
            camera_id: camera_id.to_owned(),
            rule: String::new(),
            label: String::new(),
            class_id: 0,
            track_id: 0,
            best_score: 0.0,
            bbox: PixelBox { x1: 0.0, y1: 0.0, x2: 0.0, y2: 0.0 },
            box_norm: [0.0; 4],
            best: unset,
            zones: Vec::new(),
            start: String::new(),
            start_ns: 0,
            last: String::new(),
            last_ns: 0,
            end: None,
            end_ns: None,
            end_reason: None,
            dwell_s: 0.0,
            frames: 0,
            model: model.clone(),
            snapshot: None,
        };
        CameraEvents {
            template,
            labels,
            cooldown_until: vec![0; rules.len()],
            zones,
            rules,
            tracker: Tracker::new(self.settings.tracker),
            settings: self.settings,
            open: HashMap::new(),
        }
    }
}

/// What a frame tells about one camera, apart from its detections.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub seq: u64,
    pub pts_ns: Option<u64>,
    pub captured_at_ns: u64,
    /// Source frame size (detections are in these pixels).
    pub width: u32,
    pub height: u32,
}

/// A (rule, track) pair on its way to an event, or in one.
struct Candidate {
    frames: u32,
    first_ns: u64,
    last_ns: u64,
    best_score: f32,
    best_box: PixelBox,
    best_frame: FrameRef,
    /// A copy of the best observation's picture, taken when snapshots are on and a picture
    /// was given.
    best_image: Option<Arc<SnapshotImage>>,
    zones: Vec<String>,
    event: Option<Open>,
}

struct Open {
    /// The latest message sent.
    sent: Event,
    sent_at_ns: u64,
    /// The best score when a snapshot was last sent.
    snapshot_score: f32,
}

/// The tracker and the open events of one camera.
pub struct CameraEvents {
    /// What every event of this camera starts from: device, camera and model filled in.
    template: Event,
    labels: Arc<[String]>,
    zones: Vec<Zone>,
    rules: Vec<Rule>,
    tracker: Tracker,
    settings: Settings,
    open: HashMap<(usize, u64), Candidate>,
    cooldown_until: Vec<u64>,
}

impl CameraEvents {
    /// Takes one processed frame: its detections (source pixels) and, for snapshots, its picture.
    pub fn observe(
        &mut self,
        frame: &FrameInfo,
        detections: &[Detection],
        image: Option<SourceImage<'_>>,
    ) -> Vec<Emitted> {
        let t = frame.captured_at_ns;
        let track_ids = self.tracker.update(detections, t);
        let (w, h) = (frame.width.max(1) as f32, frame.height.max(1) as f32);
        // This frame, as an event's best observation names it (cloned only when one is best).
        let frame_ref = FrameRef {
            seq: frame.seq,
            pts_ns: frame.pts_ns,
            captured_at: rfc3339(t),
            captured_at_ns: t,
            width: frame.width,
            height: frame.height,
        };
        let mut out = Vec::new();
        for (det, track) in detections.iter().zip(track_ids) {
            let Some(track) = track else { continue };
            let pixel_box = PixelBox { x1: det.bbox.x1, y1: det.bbox.y1, x2: det.bbox.x2, y2: det.bbox.y2 };
            // Where the object stands: the bottom-centre of its box.
            let (fx, fy) = ((det.bbox.x1 + det.bbox.x2) / 2.0 / w, det.bbox.y2 / h);
            let here: Vec<usize> = (0..self.zones.len()).filter(|&z| self.zones[z].contains(fx, fy)).collect();
            for r in 0..self.rules.len() {
                let rule = &self.rules[r];
                if det.score < rule.min_score || rule.classes.as_ref().is_some_and(|c| !c.contains(&det.class_id)) {
                    continue;
                }
                let zones: Vec<String> = if rule.zones.is_empty() {
                    here.iter().map(|&z| self.zones[z].name.clone()).collect()
                } else {
                    let inside: Vec<String> =
                        rule.zones.iter().filter(|z| here.contains(z)).map(|&z| self.zones[z].name.clone()).collect();
                    if inside.is_empty() {
                        continue;
                    }
                    inside
                };
                let c = self.open.entry((r, track)).or_insert_with(|| Candidate {
                    frames: 0,
                    first_ns: t,
                    last_ns: t,
                    best_score: f32::NEG_INFINITY,
                    best_box: pixel_box,
                    best_frame: frame_ref.clone(),
                    best_image: None,
                    zones: Vec::new(),
                    event: None,
                });
                c.frames += 1;
                c.last_ns = t;
                if det.score > c.best_score {
                    let take_picture = self.settings.snapshots
                        && (c.best_image.is_none() || det.score >= c.best_score + SNAPSHOT_GAIN);
                    c.best_score = det.score;
                    c.best_box = pixel_box;
                    c.best_frame = frame_ref.clone();
                    if take_picture {
                        if let Some(img) = &image {
                            c.best_image = Some(Arc::new(img.crop_with_box(&det.bbox)));
                        }
                    }
                }
                let zones_changed = c.zones != zones;
                c.zones = zones;
                match c.event.take() {
                    None => {
                        let ready = c.frames >= rule.min_frames
                            && t.saturating_sub(c.first_ns) >= rule.dwell_ns
                            && t >= self.cooldown_until[r];
                        if ready {
                            let label = self
                                .labels
                                .get(det.class_id)
                                .cloned()
                                .unwrap_or_else(|| format!("class{}", det.class_id));
                            let mut open =
                                Open::new(&self.template, &rule.name, track, det.class_id, label, c.first_ns);
                            out.push(open.emit(c, Phase::New, t));
                            c.event = Some(open);
                        }
                    }
                    Some(mut open) => {
                        let improved = c.best_score > open.sent.best_score || c.frames > open.sent.frames;
                        let due = t.saturating_sub(open.sent_at_ns) >= self.settings.update_interval_ns;
                        if zones_changed || (due && improved) {
                            out.push(open.emit(c, Phase::Update, t));
                        }
                        c.event = Some(open);
                    }
                }
            }
        }
        out.extend(self.expire(t));
        out
    }

    /// Ends the events whose objects have not satisfied their rule for `lost_after` at `now_ns`,
    /// and forgets such candidates. Called for every frame, and from a timer while a camera
    /// delivers none.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Emitted> {
        let lost_after = self.settings.tracker.lost_after_ns;
        self.tracker.expire(now_ns);
        let stale: Vec<(usize, u64)> =
            self.open.iter().filter(|(_, c)| now_ns.saturating_sub(c.last_ns) > lost_after).map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for key in stale {
            let mut c = self.open.remove(&key).expect("listed above");
            if let Some(mut open) = c.event.take() {
                let reason = if self.tracker.is_tracked(key.1) { EndReason::Left } else { EndReason::Lost };
                out.push(open.end(&c, reason));
                self.cooldown_until[key.0] = c.last_ns.saturating_add(self.rules[key.0].cooldown_ns);
            }
        }
        sort_by_id(&mut out);
        out
    }

    /// Ends every open event (vigil is stopping).
    pub fn finish(&mut self, reason: EndReason) -> Vec<Emitted> {
        let mut out = Vec::new();
        for (_, mut c) in self.open.drain() {
            if let Some(mut open) = c.event.take() {
                out.push(open.end(&c, reason));
            }
        }
        sort_by_id(&mut out);
        out
    }

    /// Events open now.
    pub fn open_events(&self) -> usize {
        self.open.values().filter(|c| c.event.is_some()).count()
    }
}

/// Messages of one call in a stable order (ids sort by creation).
fn sort_by_id(out: &mut [Emitted]) {
    out.sort_by(|a, b| a.event.id.cmp(&b.event.id));
}

impl Open {
    fn new(template: &Event, rule: &str, track_id: u64, class_id: usize, label: String, start_ns: u64) -> Self {
        let mut sent = template.clone();
        sent.id = new_event_id();
        sent.rule = rule.to_owned();
        sent.track_id = track_id;
        sent.class_id = class_id;
        sent.label = label;
        sent.start = rfc3339(start_ns);
        sent.start_ns = start_ns;
        Self { sent, sent_at_ns: start_ns, snapshot_score: f32::NEG_INFINITY }
    }

    /// The next message: the candidate's current state, with the picture if it is better than
    /// the last one sent.
    fn emit(&mut self, c: &Candidate, phase: Phase, now_ns: u64) -> Emitted {
        let e = &mut self.sent;
        if phase != Phase::New {
            e.revision += 1;
        }
        e.phase = phase;
        e.best_score = c.best_score;
        e.bbox = c.best_box;
        let (w, h) = (c.best_frame.width.max(1) as f32, c.best_frame.height.max(1) as f32);
        e.box_norm = [c.best_box.x1 / w, c.best_box.y1 / h, c.best_box.x2 / w, c.best_box.y2 / h];
        e.best = c.best_frame.clone();
        e.zones = c.zones.clone();
        e.last = rfc3339(c.last_ns);
        e.last_ns = c.last_ns;
        e.dwell_s = c.last_ns.saturating_sub(c.first_ns) as f32 / 1e9;
        e.frames = c.frames;
        let snapshot = match &c.best_image {
            Some(img) if c.best_score > self.snapshot_score => {
                self.snapshot_score = c.best_score;
                e.snapshot = Some(snapshot_path(&e.id));
                Some(img.clone())
            }
            _ => None,
        };
        self.sent_at_ns = now_ns;
        Emitted { event: e.clone(), snapshot }
    }

    fn end(&mut self, c: &Candidate, reason: EndReason) -> Emitted {
        let mut msg = self.emit(c, Phase::End, c.last_ns);
        msg.event.close(reason);
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_config::{RuleConfig, ZoneConfig};
    use vigil_core::geometry::{BBox, Letterbox};
    use vigil_core::image::Image;

    const MS: u64 = 1_000_000;
    /// 10 frames per second.
    const FRAME: u64 = 100 * MS;

    fn config(rules: Vec<RuleConfig>, zones: Vec<ZoneConfig>) -> Config {
        let mut c = Config::embedded_default().unwrap();
        c.cameras.truncate(1);
        c.cameras[0].id = "cam".into();
        c.cameras[0].zones = zones;
        c.rules = rules;
        c.events.lost_after_ms = 500;
        c.events.update_interval_s = 1;
        c
    }

    fn rule(name: &str) -> RuleConfig {
        let mut r = Config::embedded_default().unwrap().effective_rules().remove(0);
        r.name = name.into();
        r
    }

    fn labels() -> Arc<[String]> {
        vec!["circle".to_owned(), "square".to_owned()].into()
    }

    fn engine(c: &Config) -> CameraEvents {
        let model = ModelRef { name: "m".into(), version: "1".into(), backend: "b".into() };
        RuleSet::compile(c, &labels()).unwrap().camera("cam", "dev", &model, labels())
    }

    fn frame(n: u64) -> FrameInfo {
        FrameInfo { seq: n, pts_ns: Some(n * FRAME), captured_at_ns: 1_000 * MS + n * FRAME, width: 100, height: 100 }
    }

    /// A 10x10 box whose bottom-centre is at (x, y) in a 100x100 frame.
    fn at(class_id: usize, score: f32, x: f32, y: f32) -> Detection {
        Detection { class_id, score, bbox: BBox { x1: x - 5.0, y1: y - 10.0, x2: x + 5.0, y2: y } }
    }

    /// Runs `frames` frames, each with `dets(n)`, then 1 s of empty frames; all messages.
    fn run(e: &mut CameraEvents, frames: u64, dets: impl Fn(u64) -> Vec<Detection>) -> Vec<Event> {
        let mut out = Vec::new();
        for n in 0..frames + 10 {
            let d = if n < frames { dets(n) } else { Vec::new() };
            out.extend(e.observe(&frame(n), &d, None).into_iter().map(|m| m.event));
        }
        out
    }

    fn phases(msgs: &[Event]) -> Vec<(Phase, u32)> {
        msgs.iter().map(|m| (m.phase, m.revision)).collect()
    }

    #[test]
    fn an_object_makes_one_event_new_update_end_with_a_stable_id() {
        let c = config(vec![], vec![]);
        let mut e = engine(&c);
        // Seen for 3 s, slowly moving, its score rising.
        let msgs = run(&mut e, 30, |n| vec![at(0, 0.5 + n as f32 * 0.01, 20.0 + n as f32, 50.0)]);
        assert!(msgs.iter().all(|m| m.id == msgs[0].id), "one event");
        assert_eq!(msgs[0].phase, Phase::New);
        assert_eq!(msgs[0].frames, 3, "starts after min_frames = 3");
        assert_eq!(msgs.last().unwrap().phase, Phase::End);
        let revisions: Vec<u32> = msgs.iter().map(|m| m.revision).collect();
        assert_eq!(revisions, (0..msgs.len() as u32).collect::<Vec<_>>());
        // Updates at most every second while it improves: 3 s of sightings → 2 or 3 of them.
        let updates = msgs.iter().filter(|m| m.phase == Phase::Update).count();
        assert!((2..=3).contains(&updates), "{:?}", phases(&msgs));
        let end = msgs.last().unwrap();
        assert_eq!(end.end_reason, Some(EndReason::Lost));
        assert_eq!(end.end_ns, Some(frame(29).captured_at_ns), "ends at the last sighting");
        assert_eq!(end.start_ns, frame(0).captured_at_ns);
        assert_eq!(end.frames, 30);
        assert!((end.best_score - 0.79).abs() < 1e-6 && end.best.seq == 29, "{end:?}");
        assert!((end.dwell_s - 2.9).abs() < 1e-3);
        assert_eq!((end.rule.as_str(), end.label.as_str(), end.camera_id.as_str()), ("objects", "circle", "cam"));
        assert_eq!(end.box_norm, [0.44, 0.4, 0.54, 0.5]);
    }

    #[test]
    fn without_tracking_every_detection_is_an_event() {
        let mut c = config(vec![], vec![]);
        c.events.track = false;
        c.rules = vec![RuleConfig { min_frames: 1, ..rule("every") }];
        let mut e = engine(&c);
        let msgs = run(&mut e, 5, |_| vec![at(0, 0.9, 50.0, 50.0)]);
        let new = msgs.iter().filter(|m| m.phase == Phase::New).count();
        let end = msgs.iter().filter(|m| m.phase == Phase::End).count();
        assert_eq!((new, end, msgs.len()), (5, 5, 10));
    }

    #[test]
    fn fewer_than_min_frames_make_no_event() {
        let c = config(vec![], vec![]);
        let mut e = engine(&c);
        assert!(run(&mut e, 2, |_| vec![at(0, 0.9, 50.0, 50.0)]).is_empty());
    }

    #[test]
    fn zones_use_the_bottom_centre_and_leaving_ends_the_event() {
        let door = ZoneConfig { name: "door".into(), polygon: vec![[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0]] };
        let mut r = rule("at-door");
        r.zones = vec!["door".into()];
        let c = config(vec![r], vec![door]);
        let mut e = engine(&c);
        // Walks right along y = 0.8: inside the door zone while x < 50, then out (still seen).
        let msgs = run(&mut e, 40, |n| vec![at(0, 0.9, 20.0 + n as f32 * 2.0, 80.0)]);
        assert_eq!(msgs.first().unwrap().zones, ["door"]);
        let end = msgs.last().unwrap();
        assert_eq!(end.end_reason, Some(EndReason::Left), "{:?}", phases(&msgs));
        // Bottom-centre x = 20 + 2n < 50 ⇔ n ≤ 14: the last frame inside is 14.
        assert_eq!(end.end_ns, Some(frame(14).captured_at_ns));
        // The box top is in the zone only below y = 50: an object whose feet are above it is out.
        let mut e = engine(&c);
        assert!(run(&mut e, 20, |_| vec![at(0, 0.9, 20.0, 45.0)]).is_empty(), "feet at y = 0.45");
    }

    #[test]
    fn labels_min_score_dwell_and_cooldown_are_applied() {
        let mut r = rule("loiter");
        r.labels = vec!["square".into()];
        r.min_score = 0.6;
        r.dwell_s = 2.0;
        r.cooldown_s = 3.0;
        let c = config(vec![r], vec![]);
        let mut e = engine(&c);
        // A circle (wrong label) and a square scoring too low: nothing.
        assert!(run(&mut e, 30, |_| vec![at(0, 0.9, 20.0, 50.0), at(1, 0.5, 70.0, 50.0)]).is_empty());
        // A square that stays 3 s: its event starts once it has dwelt 2 s.
        let mut e = engine(&c);
        let msgs = run(&mut e, 30, |_| vec![at(1, 0.9, 70.0, 50.0)]);
        assert_eq!(msgs[0].phase, Phase::New);
        assert_eq!(msgs[0].last_ns - msgs[0].start_ns, 20 * FRAME, "new after 2 s of dwell");
        // Within the cool-down after that event ended, another square starts nothing; after it,
        // one does.
        let base = 40u64;
        let mut later = Vec::new();
        for n in 0..60u64 {
            let d = vec![at(1, 0.9, 20.0, 50.0)];
            later.extend(e.observe(&frame(base + n), &d, None).into_iter().map(|m| m.event));
        }
        let new = later.iter().find(|m| m.phase == Phase::New).expect("an event after the cool-down");
        // The first event ended at frame 29; cool-down to frame 59; dwell 2 s from its first
        // sighting (frame 40) → frame 60.
        assert_eq!(new.last_ns, frame(60).captured_at_ns);
    }

    #[test]
    fn zone_changes_are_sent_at_once_and_finish_ends_open_events() {
        let left = ZoneConfig { name: "left".into(), polygon: vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]] };
        let right = ZoneConfig { name: "right".into(), polygon: vec![[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]] };
        let c = config(vec![], vec![left, right]);
        let mut e = engine(&c);
        let mut msgs = Vec::new();
        for n in 0..20u64 {
            let d = vec![at(0, 0.9, 30.0 + n as f32 * 2.0, 50.0)];
            msgs.extend(e.observe(&frame(n), &d, None).into_iter().map(|m| m.event));
        }
        let zones: Vec<Vec<String>> = msgs.iter().map(|m| m.zones.clone()).collect();
        assert_eq!(zones, [vec!["left".to_owned()], vec!["right".to_owned()]], "{:?}", phases(&msgs));
        assert_eq!(msgs[1].phase, Phase::Update);
        assert_eq!(e.open_events(), 1);
        let ended = e.finish(EndReason::Shutdown);
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].event.phase, ended[0].event.end_reason), (Phase::End, Some(EndReason::Shutdown)));
        assert_eq!(e.open_events(), 0);
    }

    #[test]
    fn snapshots_are_taken_when_the_best_improves_and_sent_with_the_message() {
        let c = config(vec![], vec![]);
        let mut e = engine(&c);
        let lb = Letterbox::new(100, 100, 100, 100);
        let pixels = vec![128u8; 100 * 100 * 3];
        let img = SourceImage { pixels: Image::rgb(&pixels, 300), width: 100, height: 100, letterbox: lb };
        let mut sent = Vec::new();
        for n in 0..25u64 {
            let score = if n < 12 { 0.5 } else { 0.9 };
            for m in e.observe(&frame(n), &[at(0, score, 50.0, 50.0)], Some(img)) {
                sent.push((m.event.revision, m.event.snapshot.clone(), m.snapshot.is_some()));
            }
        }
        let path = format!("snapshots/{}.jpg", e.open.values().next().unwrap().event.as_ref().unwrap().sent.id);
        assert_eq!(sent[0], (0, Some(path.clone()), true), "the new event carries its first picture");
        // The better picture from frame 12 goes with the next update; later ones carry none.
        assert_eq!(sent[1], (1, Some(path.clone()), true), "{sent:?}");
        assert!(sent[2..].iter().all(|s| !s.2), "{sent:?}");
    }

    #[test]
    fn rules_naming_unknown_labels_are_refused_with_the_model_labels() {
        let mut r = rule("people");
        r.labels = vec!["person".into()];
        let err = RuleSet::compile(&config(vec![r], vec![]), &labels()).err().unwrap().to_string();
        assert!(err.contains("`person`") && err.contains("circle, square"), "{err}");
    }

    #[test]
    fn points_in_concave_polygons() {
        // An L shape.
        let z = Zone {
            name: "l".into(),
            polygon: vec![[0.0, 0.0], [0.2, 0.0], [0.2, 0.8], [1.0, 0.8], [1.0, 1.0], [0.0, 1.0]],
        };
        assert!(z.contains(0.1, 0.5));
        assert!(z.contains(0.9, 0.9));
        assert!(!z.contains(0.5, 0.5), "in the notch");
        assert!(!z.contains(1.5, 0.9));
    }
}
