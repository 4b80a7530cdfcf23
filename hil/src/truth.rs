//! Events scored against a clip's ground truth (`vigil_testkit::truth`).
//!
//! Over RTSP the target's presentation times start wherever its receiver put the first frame,
//! not at the clip's frame 0. The camera (`vigil-rtsp-cam --clip --private`) starts every client
//! at frame 0 and keeps the clip's frame spacing, so the target's frame number is the clip's plus
//! one unknown offset per connection. [`score`] finds it as the offset under which the most
//! events match an object, and reports it beside the scores with the best precision half a
//! scene or more away from it, which is far lower (a wrong alignment puts boxes on empty frames
//! or on another scene's objects). It is one number fitted per run.

use std::collections::BTreeSet;

use vigil_core::event::Event;
pub use vigil_testkit::truth::{iou, GroundTruth, GtFrame, GtObject};

/// Events scored against the ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Events whose best observation is an object of the clip (label, and IoU ≥ 0.5 at its frame).
    pub precision: f64,
    /// Objects of the clip (per scene: `scene_frames` frames) found by at least one event.
    pub coverage: f64,
    pub events: usize,
    pub objects: usize,
    /// The fitted frame offset (target's frame number minus the clip's).
    pub offset: i64,
    /// The best precision at offsets half a scene or more from the fitted one, to show the fit
    /// is not a coin toss.
    pub next_best_precision: f64,
}

/// Scores `events` (one per event: its last message) against `gt`; frames are grouped into
/// scenes of `scene_frames` for coverage (an object is one scene's entry).
pub fn score(gt: &GroundTruth, events: &[&Event], scene_frames: usize) -> Score {
    let n = gt.frames.len() as i64;
    let frame_ns = gt.frame_ns();
    let stream_frame = |e: &Event| e.best.pts_ns.map(|p| (p as f64 / frame_ns).round() as i64);
    // The object `e`'s best box matches at `offset`, and how well.
    let hit = |e: &Event, offset: i64| -> Option<((usize, usize), f32)> {
        let f = (stream_frame(e)? - offset).rem_euclid(n) as usize;
        let b = [e.bbox.x1, e.bbox.y1, e.bbox.x2, e.bbox.y2];
        let frame = &gt.frames[f];
        let (i, v) = frame
            .objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o.label == e.label)
            .map(|(i, o)| (i, iou(o.bbox, b)))
            .filter(|(_, v)| *v >= 0.5)
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        Some(((frame.index / scene_frames, i), v))
    };
    // Per offset: events matched, then their summed IoU (objects move little from frame to
    // frame, so neighbouring offsets often match as many; the closer boxes decide).
    let fit = |offset: i64| {
        let hits: Vec<f32> = events.iter().filter_map(|e| hit(e, offset)).map(|h| h.1).collect();
        (hits.len(), hits.iter().sum::<f32>())
    };
    let mut by_offset: Vec<((usize, f32), i64)> = (0..n).map(|k| (fit(k), k)).collect();
    by_offset.sort_by(|a, b| b.0 .0.cmp(&a.0 .0).then(b.0 .1.total_cmp(&a.0 .1)).then(a.1.cmp(&b.1)));
    let ((best, _), offset) = by_offset[0];
    // Neighbouring offsets score nearly as well (objects move little from frame to frame):
    // the comparison is with offsets half a scene or more away.
    let far = |k: i64| {
        let d = (k - offset).rem_euclid(n);
        d.min(n - d) >= (scene_frames as i64 / 2).max(1)
    };
    let next = by_offset.iter().find(|(_, k)| far(*k)).map_or(0, |m| m.0 .0);
    let mut objects: Vec<(usize, usize)> = Vec::new();
    for frame in &gt.frames {
        for i in 0..frame.objects.len() {
            if !objects.contains(&(frame.index / scene_frames, i)) {
                objects.push((frame.index / scene_frames, i));
            }
        }
    }
    let found: BTreeSet<(usize, usize)> = events.iter().filter_map(|e| hit(e, offset)).map(|h| h.0).collect();
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Score {
        precision: share(best, events.len()),
        coverage: share(found.len(), objects.len()),
        events: events.len(),
        objects: objects.len(),
        offset,
        next_best_precision: share(next, events.len()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn clip() -> (std::path::PathBuf, GroundTruth) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/clips/shapes-eval.mp4");
        let gt = GroundTruth::for_clip(&path).unwrap();
        (path, gt)
    }

    /// An event whose best observation is `object` of clip frame `f`, seen at stream frame
    /// `f + offset` (its box moved by `shift` pixels).
    fn event(gt: &GroundTruth, f: usize, object: usize, offset: i64, shift: f32) -> Event {
        let o = &gt.frames[f].objects[object];
        let pts = ((f as i64 + offset) as f64 * gt.frame_ns()) as u64;
        let b = o.bbox;
        serde_json::from_value(serde_json::json!({
            "id": format!("e{f}-{object}"), "phase": "end", "revision": 2, "device_id": "d",
            "camera_id": "cam", "rule": "objects", "label": o.label, "class_id": 0, "track_id": 1, "best_score": 0.9,
            "box": { "x1": b[0] + shift, "y1": b[1], "x2": b[2] + shift, "y2": b[3] }, "box_norm": [0.0, 0.0, 0.1, 0.1],
            "best": { "seq": 1, "pts_ns": pts, "captured_at": "", "captured_at_ns": 1, "width": gt.width, "height": gt.height },
            "zones": [], "start": "", "start_ns": 1, "last": "", "last_ns": 1, "end": "", "end_ns": 1,
            "end_reason": "lost", "dwell_s": 0.0, "frames": 3,
            "model": { "name": "m", "version": "1", "backend": "b" }, "snapshot": null
        }))
        .unwrap()
    }

    /// One event per object, each at the middle frame of the object's scene where it shows.
    fn one_per_object(gt: &GroundTruth, offset: i64, shift: f32) -> Vec<Event> {
        let mut out = Vec::new();
        let scenes = gt.frames.len().div_ceil(45);
        for scene in 0..scenes {
            let f = (scene * 45 + 22).min(gt.frames.len() - 1);
            for i in 0..gt.frames[f].objects.len() {
                out.push(event(gt, f, i, offset, shift));
            }
        }
        out
    }

    #[test]
    fn the_stream_offset_is_found_and_right_events_score_fully() {
        let (_, gt) = clip();
        // The stream started 37 frames into its numbering, and has looped once since.
        for offset in [37, 37 + gt.frames.len() as i64] {
            let events = one_per_object(&gt, offset, 0.0);
            let refs: Vec<&Event> = events.iter().collect();
            let s = score(&gt, &refs, 45);
            assert_eq!(s.offset, 37);
            assert_eq!((s.precision, s.events), (1.0, events.len()));
            assert!(s.coverage > 0.9, "{s:?}");
            assert!(s.next_best_precision < 0.5, "a wrong alignment scores far lower: {s:?}");
        }
    }

    #[test]
    fn boxes_off_their_objects_lower_precision() {
        let (_, gt) = clip();
        let mut events = one_per_object(&gt, 0, 0.0);
        let n = events.len();
        // Half the boxes moved by 200 px: nowhere near an object.
        for (i, e) in events.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
            *e = event(&gt, 22, 0, 0, 200.0 + i as f32);
        }
        let refs: Vec<&Event> = events.iter().collect();
        let s = score(&gt, &refs, 45);
        let right = n - n.div_ceil(2);
        assert!((s.precision - right as f64 / n as f64).abs() < 1e-9, "{s:?}");
        assert!(s.coverage < 0.6, "{s:?}");
    }
}
