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
use std::time::Duration;

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

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
                    dwell_ns: duration_ns(rule.dwell),
                    cooldown_ns: duration_ns(rule.cooldown),
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
                    lost_after_ns: duration_ns(e.lost_after),
                },
                update_interval_ns: duration_ns(e.update_interval),
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
            clock_unsynchronized: false,
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
            here: Vec::new(),
            seen: Vec::new(),
        }
    }
}

/// What a frame tells about one camera, apart from its detections.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub seq: u64,
    pub pts_ns: Option<u64>,
    /// Capture time on the wall clock, ns since the Unix epoch: what events are labelled with.
    pub captured_at_ns: u64,
    /// Capture time on the monotonic clock (`vigil_core::clock::mono_ns`): what every duration
    /// (dwell, lost, cool-down, update interval) is measured on, so that a wall-clock step
    /// changes labels only.
    pub mono_ns: u64,
    /// Source frame size (detections are in these pixels).
    pub width: u32,
    pub height: u32,
    /// Whether the wall clock could be trusted when `captured_at_ns` was read
    /// (`vigil_core::clock::wall_clock_trusted`): events with a time from a frame that says no
    /// are marked `clock_unsynchronized`.
    pub wall_trusted: bool,
}

/// A (rule, track) pair on its way to an event, or in one. `*_ns` are monotonic (durations),
/// `*_wall` the wall-clock labels of the same observations.
struct Candidate {
    frames: u32,
    first_ns: u64,
    last_ns: u64,
    first_wall: u64,
    last_wall: u64,
    /// One of its wall times came from an untrusted clock.
    wall_untrusted: bool,
    best_score: f32,
    best_box: PixelBox,
    best_frame: FrameRef,
    /// A copy of the best observation's picture, taken when snapshots are on and a picture
    /// was given.
    best_image: Option<Arc<SnapshotImage>>,
    /// The zones it is in at its latest observation: indexes into the camera's zones.
    zones: Vec<usize>,
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
    /// Scratch space reused for every detection (no allocation per frame in steady state): the
    /// zones the detection is in, and those a rule sees it in.
    here: Vec<usize>,
    seen: Vec<usize>,
}

impl CameraEvents {
    /// Takes one processed frame: its detections (source pixels) and, for snapshots, its picture.
    pub fn observe(
        &mut self,
        frame: &FrameInfo,
        detections: &[Detection],
        image: Option<SourceImage<'_>>,
    ) -> Vec<Emitted> {
        let (t, wall) = (frame.mono_ns, frame.captured_at_ns);
        let track_ids = self.tracker.update(detections, t);
        let (w, h) = (frame.width.max(1) as f32, frame.height.max(1) as f32);
        // This frame, as an event's best observation names it: made only when one is best.
        let frame_ref = || FrameRef {
            seq: frame.seq,
            pts_ns: frame.pts_ns,
            captured_at: rfc3339(wall),
            captured_at_ns: wall,
            width: frame.width,
            height: frame.height,
        };
        let mut out = Vec::new();
        for (det, track) in detections.iter().zip(track_ids) {
            let Some(track) = track else { continue };
            // This detection's picture, cut at most once per frame and shared by every rule that
            // takes it.
            let mut picture: Option<Arc<SnapshotImage>> = None;
            let pixel_box = PixelBox { x1: det.bbox.x1, y1: det.bbox.y1, x2: det.bbox.x2, y2: det.bbox.y2 };
            // Where the object stands: the bottom-centre of its box.
            let (fx, fy) = ((det.bbox.x1 + det.bbox.x2) / 2.0 / w, det.bbox.y2 / h);
            self.here.clear();
            self.here.extend((0..self.zones.len()).filter(|&z| self.zones[z].contains(fx, fy)));
            for r in 0..self.rules.len() {
                let rule = &self.rules[r];
                if det.score < rule.min_score || rule.classes.as_ref().is_some_and(|c| !c.contains(&det.class_id)) {
                    continue;
                }
                self.seen.clear();
                if rule.zones.is_empty() {
                    self.seen.extend_from_slice(&self.here);
                } else {
                    self.seen.extend(rule.zones.iter().filter(|z| self.here.contains(z)));
                    if self.seen.is_empty() {
                        continue;
                    }
                }
                let c = self.open.entry((r, track)).or_insert_with(|| Candidate {
                    frames: 0,
                    first_ns: t,
                    last_ns: t,
                    first_wall: wall,
                    last_wall: wall,
                    wall_untrusted: false,
                    best_score: f32::NEG_INFINITY,
                    best_box: pixel_box,
                    best_frame: frame_ref(),
                    best_image: None,
                    zones: Vec::new(),
                    event: None,
                });
                c.frames += 1;
                c.last_ns = t;
                c.last_wall = wall;
                c.wall_untrusted |= !frame.wall_trusted;
                if det.score > c.best_score {
                    let take_picture = self.settings.snapshots
                        && (c.best_image.is_none() || det.score >= c.best_score + SNAPSHOT_GAIN);
                    c.best_score = det.score;
                    c.best_box = pixel_box;
                    c.best_frame = frame_ref();
                    if let Some(img) = image.as_ref().filter(|_| take_picture) {
                        let cut = match &picture {
                            Some(cut) => cut.clone(),
                            None => {
                                // The candidate's earlier best picture, when no message holds it
                                // any more, is overwritten in place: a copy, no allocation.
                                let cut = match c.best_image.as_mut().and_then(Arc::get_mut) {
                                    Some(old) => {
                                        img.crop_with_box_into(&det.bbox, old);
                                        c.best_image.clone().expect("just written")
                                    }
                                    None => Arc::new(img.crop_with_box(&det.bbox)),
                                };
                                picture.insert(cut).clone()
                            }
                        };
                        c.best_image = Some(cut);
                    }
                }
                // Allocates only when the zones change.
                let zones_changed = c.zones != self.seen;
                if zones_changed {
                    c.zones.clone_from(&self.seen);
                }
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
                            let mut open = Open::new(&self.template, &rule.name, track, det.class_id, label, c);
                            out.push(open.emit(c, Phase::New, t, &self.zones));
                            c.event = Some(open);
                        }
                    }
                    Some(mut open) => {
                        let improved = c.best_score > open.sent.best_score || c.frames > open.sent.frames;
                        let due = t.saturating_sub(open.sent_at_ns) >= self.settings.update_interval_ns;
                        if zones_changed || (due && improved) {
                            out.push(open.emit(c, Phase::Update, t, &self.zones));
                        }
                        c.event = Some(open);
                    }
                }
            }
        }
        out.extend(self.expire(t));
        out
    }

    /// Ends the events whose objects have not satisfied their rule for `lost_after` at `now_ns`
    /// (monotonic, as [`FrameInfo::mono_ns`]), and forgets such candidates. Called for every
    /// frame, and from a timer while a camera delivers none.
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
                out.push(open.end(&c, reason, &self.zones));
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
                out.push(open.end(&c, reason, &self.zones));
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
    fn new(template: &Event, rule: &str, track_id: u64, class_id: usize, label: String, c: &Candidate) -> Self {
        let mut sent = template.clone();
        sent.id = new_event_id();
        sent.rule = rule.to_owned();
        sent.track_id = track_id;
        sent.class_id = class_id;
        sent.label = label;
        sent.start = rfc3339(c.first_wall);
        sent.start_ns = c.first_wall;
        Self { sent, sent_at_ns: c.first_ns, snapshot_score: f32::NEG_INFINITY }
    }

    /// The next message: the candidate's current state, with the picture if it is better than
    /// the last one sent.
    fn emit(&mut self, c: &Candidate, phase: Phase, now_ns: u64, zones: &[Zone]) -> Emitted {
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
        e.zones = c.zones.iter().map(|&z| zones[z].name.clone()).collect();
        e.last = rfc3339(c.last_wall);
        e.last_ns = c.last_wall;
        e.clock_unsynchronized = c.wall_untrusted;
        // On the monotonic clock: a wall-clock step does not change how long the object stayed.
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

    fn end(&mut self, c: &Candidate, reason: EndReason, zones: &[Zone]) -> Emitted {
        let mut msg = self.emit(c, Phase::End, c.last_ns, zones);
        msg.event.close(reason);
        msg
    }
}

#[cfg(test)]
mod tests;
