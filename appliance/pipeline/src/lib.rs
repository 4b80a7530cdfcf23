//! vigil's pipeline logic, pure and on injected clocks: the inference scheduler under per-frame
//! latency budgets, the per-camera tracker, and the rules that turn tracked detections into
//! events with a lifecycle.

pub mod canary;
pub mod queue;
pub mod rules;
pub mod scheduler;
pub mod tracker;

pub use rules::{CameraEvents, FrameInfo, RuleSet};
