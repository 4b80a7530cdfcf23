//! A per-camera multi-object tracker in the SORT family, without the Kalman filter: each track
//! predicts its box from a smoothed velocity, detections are matched to predictions greedily by
//! IoU (highest first, same class only), unmatched detections start tracks, and a track unseen
//! for `lost_after` is dropped. Cheap enough to run on every processed frame of every camera.

use vigil_core::geometry::{BBox, Detection};

/// Tracks one camera may hold at once; detections beyond it are not tracked (and logged).
pub const MAX_TRACKS: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct TrackerSettings {
    /// Minimum IoU between a track's predicted box and a detection for them to match.
    pub iou_threshold: f32,
    /// A track not matched for this long (capture time) is dropped.
    pub lost_after_ns: u64,
}

#[derive(Debug, Clone)]
pub struct Track {
    pub id: u64,
    pub class_id: usize,
    /// The latest matched box (source pixels).
    pub bbox: BBox,
    /// Smoothed velocity of the box's edges, pixels per second: x1, y1, x2, y2.
    velocity: [f32; 4],
    pub last_seen_ns: u64,
    pub hits: u32,
}

impl Track {
    fn predict(&self, t_ns: u64) -> BBox {
        let dt = t_ns.saturating_sub(self.last_seen_ns) as f32 / 1e9;
        let v = self.velocity;
        BBox {
            x1: self.bbox.x1 + v[0] * dt,
            y1: self.bbox.y1 + v[1] * dt,
            x2: self.bbox.x2 + v[2] * dt,
            y2: self.bbox.y2 + v[3] * dt,
        }
    }

    fn observe(&mut self, bbox: BBox, t_ns: u64) {
        let dt = t_ns.saturating_sub(self.last_seen_ns) as f32 / 1e9;
        if dt > 0.0 {
            let moved =
                [bbox.x1 - self.bbox.x1, bbox.y1 - self.bbox.y1, bbox.x2 - self.bbox.x2, bbox.y2 - self.bbox.y2];
            for (v, m) in self.velocity.iter_mut().zip(moved) {
                // The first step sets the velocity; later ones smooth it.
                *v = if self.hits == 1 { m / dt } else { 0.5 * *v + 0.5 * m / dt };
            }
        }
        self.bbox = bbox;
        self.last_seen_ns = t_ns;
        self.hits += 1;
    }
}

pub struct Tracker {
    settings: TrackerSettings,
    tracks: Vec<Track>,
    next_id: u64,
    /// Detections left untracked because `MAX_TRACKS` was reached.
    pub untracked: u64,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Self { settings, tracks: Vec::new(), next_id: 1, untracked: 0 }
    }

    /// Matches one frame's detections (captured at `t_ns`, never earlier than the previous
    /// frame's) to tracks. Returns the track id of each detection, in order (`None` when it could
    /// not be tracked), and drops the tracks that are now lost.
    pub fn update(&mut self, detections: &[Detection], t_ns: u64) -> Vec<Option<u64>> {
        self.expire(t_ns);
        let predicted: Vec<BBox> = self.tracks.iter().map(|t| t.predict(t_ns)).collect();
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (d, det) in detections.iter().enumerate() {
            for (k, track) in self.tracks.iter().enumerate() {
                if track.class_id != det.class_id {
                    continue;
                }
                let iou = predicted[k].iou(&det.bbox).max(track.bbox.iou(&det.bbox));
                if iou >= self.settings.iou_threshold {
                    pairs.push((iou, d, k));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ids = vec![None; detections.len()];
        let mut taken = vec![false; self.tracks.len()];
        for (_, d, k) in pairs {
            if ids[d].is_some() || taken[k] {
                continue;
            }
            taken[k] = true;
            self.tracks[k].observe(detections[d].bbox, t_ns);
            ids[d] = Some(self.tracks[k].id);
        }
        for (d, det) in detections.iter().enumerate() {
            if ids[d].is_some() {
                continue;
            }
            if self.tracks.len() >= MAX_TRACKS {
                self.untracked += 1;
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.tracks.push(Track {
                id,
                class_id: det.class_id,
                bbox: det.bbox,
                velocity: [0.0; 4],
                last_seen_ns: t_ns,
                hits: 1,
            });
            ids[d] = Some(id);
        }
        ids
    }

    /// Drops tracks unseen for longer than `lost_after` at `t_ns`.
    pub fn expire(&mut self, t_ns: u64) {
        let lost_after = self.settings.lost_after_ns;
        self.tracks.retain(|t| t_ns.saturating_sub(t.last_seen_ns) <= lost_after);
    }

    pub fn is_tracked(&self, id: u64) -> bool {
        self.tracks.iter().any(|t| t.id == id)
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn det(class_id: usize, x: f32, y: f32) -> Detection {
        Detection { class_id, score: 0.9, bbox: BBox { x1: x, y1: y, x2: x + 40.0, y2: y + 40.0 } }
    }

    fn tracker() -> Tracker {
        Tracker::new(TrackerSettings { iou_threshold: 0.3, lost_after_ns: 500 * MS })
    }

    #[test]
    fn moving_objects_keep_their_ids_and_crossing_classes_do_not_swap() {
        let mut t = tracker();
        // A circle moving right and a square moving left, crossing at frame 10.
        let mut first = None;
        for f in 0..20u64 {
            let x = f as f32 * 12.0;
            let ids = t.update(&[det(0, x, 100.0), det(1, 240.0 - x, 100.0)], f * 66 * MS);
            assert!(ids.iter().all(Option::is_some));
            match first {
                None => first = Some(ids),
                Some(ref f0) => assert_eq!(&ids, f0, "frame {f}"),
            }
        }
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_fast_object_is_followed_through_its_predicted_box() {
        let mut t = tracker();
        // 20 px per frame on a 40 px box (IoU 0.33), then 35 px per frame: frame-to-frame IoU
        // 0.07, far below the threshold; the prediction from the smoothed velocity still matches.
        let x = |f: u64| if f < 3 { f as f32 * 20.0 } else { 40.0 + (f - 2) as f32 * 35.0 };
        let ids: Vec<_> = (0..12u64).map(|f| t.update(&[det(0, x(f), 0.0)], f * 66 * MS)[0]).collect();
        assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    }

    #[test]
    fn unseen_tracks_are_lost_after_the_timeout_and_new_objects_get_new_ids() {
        let mut t = tracker();
        let a = t.update(&[det(0, 0.0, 0.0)], 0)[0];
        // Missed for 400 ms (less than lost_after): the same track.
        assert_eq!(t.update(&[det(0, 2.0, 0.0)], 400 * MS)[0], a);
        assert!(t.update(&[], 800 * MS).is_empty());
        assert!(t.is_tracked(a.unwrap()));
        // 1 s after the last match: gone, and the same place now starts a new track.
        let b = t.update(&[det(0, 2.0, 0.0)], 1_400 * MS)[0];
        assert_ne!(a, b);
        assert!(!t.is_tracked(a.unwrap()));
    }

    #[test]
    fn the_number_of_tracks_is_bounded() {
        let mut t = tracker();
        let many: Vec<Detection> = (0..MAX_TRACKS + 10).map(|i| det(0, i as f32 * 100.0, 0.0)).collect();
        let ids = t.update(&many, 0);
        assert_eq!(ids.iter().filter(|i| i.is_some()).count(), MAX_TRACKS);
        assert_eq!(t.untracked, 10);
    }
}
