//! A clip's ground truth (`<clip>.gt.json`, written with the clip by models/tools): the objects
//! in each frame, for the end-to-end tests and the HIL rig to score detections against.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct GroundTruth {
    pub width: u32,
    pub height: u32,
    pub fps_n: u64,
    pub fps_d: u64,
    pub frames: Vec<GtFrame>,
}

#[derive(Debug, Deserialize)]
pub struct GtFrame {
    pub index: usize,
    pub pts_ns: u64,
    pub objects: Vec<GtObject>,
}

#[derive(Debug, Deserialize)]
pub struct GtObject {
    pub label: String,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

impl GroundTruth {
    /// The ground truth beside `clip`: `shapes-eval.mp4` → `shapes-eval.gt.json`.
    pub fn for_clip(clip: &Path) -> Result<Self> {
        let path = clip.with_extension("gt.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("no ground truth at {}", path.display()))?;
        let gt: Self = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        anyhow::ensure!(!gt.frames.is_empty() && gt.fps_n > 0 && gt.fps_d > 0, "{}: empty", path.display());
        Ok(gt)
    }

    pub fn frame_ns(&self) -> f64 {
        self.fps_d as f64 * 1e9 / self.fps_n as f64
    }

    /// The clip's length in seconds.
    pub fn seconds(&self) -> f64 {
        self.frames.len() as f64 * self.frame_ns() / 1e9
    }

    /// The frame shown at presentation time `pts_ns` of the file (played from its start).
    pub fn frame_at(&self, pts_ns: u64) -> Option<&GtFrame> {
        self.frames.get((pts_ns as f64 / self.frame_ns()).round() as usize)
    }
}

pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}
