//! Rules, zones and the event lifecycle on scripted detections.

use super::*;
use vigil_config::{RuleConfig, ZoneConfig};
use vigil_core::geometry::{BBox, Letterbox};
use vigil_core::image::Image;

const MS: u64 = 1_000_000;
/// 10 frames per second.
const FRAME: u64 = 100 * MS;

fn config(rules: Vec<RuleConfig>, zones: Vec<ZoneConfig>) -> Config {
    let mut c = Config::for_tests();
    c.cameras.truncate(1);
    c.cameras[0].id = "cam".into();
    c.cameras[0].zones = zones;
    c.rules = rules;
    c.events.lost_after = Duration::from_millis(500);
    c.events.update_interval = Duration::from_secs(1);
    c
}

fn rule(name: &str) -> RuleConfig {
    let mut r = Config::for_tests().effective_rules().remove(0);
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

/// Frame `n` at 10 fps; its wall label and monotonic time agree (no clock step).
fn frame(n: u64) -> FrameInfo {
    let t = 1_000 * MS + n * FRAME;
    FrameInfo {
        seq: n,
        pts_ns: Some(n * FRAME),
        captured_at_ns: t,
        mono_ns: t,
        width: 100,
        height: 100,
        wall_trusted: true,
    }
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
    r.dwell = Duration::from_secs(2);
    r.cooldown = Duration::from_secs(3);
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

/// `pixels` (100x100 RGB) as a processed frame's picture, without letterbox borders.
fn grey_picture(pixels: &[u8]) -> SourceImage<'_> {
    SourceImage {
        pixels: Image::rgb(pixels, 300),
        width: 100,
        height: 100,
        letterbox: Letterbox::new(100, 100, 100, 100),
    }
}

#[test]
fn snapshots_are_taken_when_the_best_improves_and_sent_with_the_message() {
    let c = config(vec![], vec![]);
    let mut e = engine(&c);
    let pixels = vec![128u8; 100 * 100 * 3];
    let img = grey_picture(&pixels);
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
fn rules_watching_the_same_object_share_one_copy_of_its_picture() {
    let c = config(vec![rule("a"), rule("b")], vec![]);
    let mut e = engine(&c);
    let pixels = vec![128u8; 100 * 100 * 3];
    let img = grey_picture(&pixels);
    let mut news = Vec::new();
    for n in 0..10u64 {
        let out = e.observe(&frame(n), &[at(0, 0.9, 50.0, 50.0)], Some(img));
        news.extend(out.into_iter().filter(|m| m.event.phase == Phase::New));
    }
    assert_eq!(news.len(), 2, "one event per rule");
    let (a, b) = (news[0].snapshot.as_ref().unwrap(), news[1].snapshot.as_ref().unwrap());
    assert!(Arc::ptr_eq(a, b), "the frame was copied once, not once per rule");
}

#[test]
fn a_better_picture_overwrites_the_candidates_own_copy_without_allocating() {
    let mut slow = rule("slow");
    slow.min_frames = 8;
    let c = config(vec![slow], vec![]);
    let mut e = engine(&c);
    let mut buffers = Vec::new();
    for n in 0..6u8 {
        let pixels = vec![n * 10; 100 * 100 * 3];
        let score = 0.5 + 0.05 * f32::from(n);
        let out = e.observe(&frame(n.into()), &[at(0, score, 50.0, 50.0)], Some(grey_picture(&pixels)));
        assert!(out.is_empty(), "no event before min_frames");
        let best = e.open.values().next().unwrap().best_image.as_ref().unwrap();
        assert_eq!(best.rgb[0], n * 10, "the picture is frame {n}'s");
        buffers.push(best.rgb.as_ptr());
    }
    assert!(buffers.windows(2).all(|w| w[0] == w[1]), "one buffer, overwritten in place: {buffers:?}");
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

/// One object in view for 6 s at 10 fps, then gone; the wall clock steps by `step_s` seconds at
/// 3 s, and capture labels frames as it does (`WallClock`). Returns every message.
fn tracked_through_a_wall_step(step_s: i64) -> Vec<Event> {
    use vigil_core::wallclock::WallClock;
    const S: i128 = 1_000_000_000;
    let mut e = engine(&config(vec![rule("objects")], vec![]));
    let mut labels = WallClock::default();
    let wall_at_mono_zero: i128 = 1_800_000_000 * S;
    let mut out = Vec::new();
    for n in 0..70u64 {
        let mono = 1_000 * MS + n * FRAME;
        let step = if n >= 30 { i128::from(step_s) * S } else { 0 };
        let wall_now = wall_at_mono_zero + i128::from(mono) + step;
        let label = labels.map(i128::from(mono), i128::from(mono), wall_now) as u64;
        let info = FrameInfo {
            seq: n,
            pts_ns: None,
            captured_at_ns: label,
            mono_ns: mono,
            width: 100,
            height: 100,
            wall_trusted: true,
        };
        let dets = if n < 60 { vec![at(0, 0.9, 50.0, 50.0)] } else { Vec::new() };
        out.extend(e.observe(&info, &dets, None).into_iter().map(|m| m.event));
    }
    out
}

#[test]
fn a_wall_clock_step_mid_track_changes_labels_only() {
    let steady = tracked_through_a_wall_step(0);
    assert_eq!(steady.first().map(|m| m.phase), Some(Phase::New));
    for step_s in [3600, -3600] {
        let msgs = tracked_through_a_wall_step(step_s);
        let ids: std::collections::BTreeSet<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "step {step_s} s: one event, not a lost one and a new one: {:?}", phases(&msgs));
        // The same lifecycle as without a step: no lost/new churn, no delayed or extra update.
        assert_eq!(phases(&msgs), phases(&steady), "step {step_s} s");
        let end = msgs.last().unwrap();
        assert_eq!(end.end_reason, Some(EndReason::Lost));
        assert!((end.dwell_s - steady.last().unwrap().dwell_s).abs() < 1e-6, "dwell {} s", end.dwell_s);
        assert!((end.dwell_s - 5.9).abs() < 1e-3, "dwell is measured on the monotonic clock: {} s", end.dwell_s);
        // Labels of one camera never go backwards.
        for pair in msgs.windows(2) {
            assert!(pair[1].last_ns >= pair[0].last_ns, "step {step_s} s: labels went back");
        }
        assert!(msgs.iter().all(|m| m.start_ns <= m.last_ns));
    }
}

#[test]
fn an_event_timed_by_an_unsynchronized_clock_says_so_and_one_after_the_sync_does_not() {
    let mut e = engine(&config(vec![rule("objects")], vec![]));
    let mut msgs = Vec::new();
    // One object from frame 0 to 39, another from 60 to 99; the clock synchronizes at frame 20,
    // while the first is in view.
    for n in 0..120u64 {
        let mut info = frame(n);
        info.wall_trusted = n >= 20;
        let dets = match n {
            0..40 => vec![at(0, 0.9, 20.0, 20.0)],
            60..100 => vec![at(0, 0.9, 80.0, 80.0)],
            _ => Vec::new(),
        };
        msgs.extend(e.observe(&info, &dets, None).into_iter().map(|m| m.event));
    }
    let mut ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 2, "{:?}", phases(&msgs));
    for m in &msgs {
        // The first began on the unsynchronized clock: every message of it says so, its end too.
        let before_sync = m.id == ids[0];
        assert_eq!(m.clock_unsynchronized, before_sync, "{:?} {} of event {}", m.phase, m.revision, m.id);
    }
    let json = serde_json::to_value(&msgs[0]).unwrap();
    assert_eq!(json["clock_unsynchronized"], true);
    let last = serde_json::to_value(msgs.last().unwrap()).unwrap();
    assert!(last.get("clock_unsynchronized").is_none(), "left out when false: {last}");
}
