//! `[ota]`: where signed model updates come from, how a new model is accepted, and the canary
//! that watches it after activation (docs/ota.md).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtaConfig {
    /// The update server: metadata under `<server>metadata/`, targets under `<server>targets/`.
    /// Must be `https://` and end with `/`.
    pub server: String,
    /// The repository's root metadata as shipped with the device (`1.root.json`): what it trusts
    /// until the repository rotates its keys.
    pub root: PathBuf,
    /// PEM bundle of the CA(s) that sign the update server's certificate.
    pub ca: PathBuf,
    /// Client certificate and key (PEM), where the server asks for one. Give both or neither.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `kernel`: update only once the kernel reports a synchronized clock (NTP); `trusted`: the
    /// clock is taken as right (a board with a battery-backed RTC the operator vouches for).
    #[serde(default)]
    pub clock: ClockTrust,
    /// How often to look for a newer version of the running model (`check_interval_s`); 0
    /// (the default) checks only when the fleet sends `ota/apply`.
    #[serde(rename = "check_interval_s", with = "units::secs_or_off", default)]
    pub check_every: Option<Duration>,
    /// Memory that must stay available with the old and the new model both loaded.
    #[serde(default = "default_min_available_mb")]
    pub min_available_mb: u64,
    /// Timed inferences of the reference input during acceptance.
    #[serde(default = "default_accept_runs")]
    pub accept_runs: usize,
    #[serde(default)]
    pub canary: CanaryConfig,
    /// A new vigil binary keeps its slot once it has run this long with every camera streaming
    /// and the broker connected; otherwise the previous binary is restored.
    #[serde(rename = "binary_health_window_s", with = "units::secs", default = "default_binary_health_window")]
    pub binary_health_window: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockTrust {
    #[default]
    Kernel,
    Trusted,
}

/// When a newly activated model is rolled back. Each may be overridden per `ota/apply`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Frames the new model must serve before it is judged.
    #[serde(default = "default_min_frames")]
    pub min_frames: u64,
    /// A canary that has not seen `min_frames` frames by then (cameras down) rolls back.
    #[serde(rename = "max_wait_s", with = "units::secs", default = "default_max_wait")]
    pub max_wait: Duration,
    /// Largest rise in the share of frames that miss their deadline (0.02: two points).
    #[serde(default = "default_max_miss_rate_rise")]
    pub max_miss_rate_rise: f64,
    /// Largest share of frames failing with an error.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Smallest ratio of detections per frame, new model over previous.
    #[serde(default = "default_min_detection_ratio")]
    pub min_detection_ratio: f64,
    /// Largest population stability index between the two models' score distributions.
    #[serde(default = "default_max_score_psi")]
    pub max_score_psi: f64,
    /// A new model (not another version of the serving one) is accepted only with its exporter's
    /// detections in its bundle (`vigil model pack --expect`), checked on this device: the
    /// canary cannot compare it with the model it replaces.
    #[serde(default = "crate::default_true")]
    pub new_model_needs_expected: bool,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            min_frames: default_min_frames(),
            max_wait: default_max_wait(),
            max_miss_rate_rise: default_max_miss_rate_rise(),
            max_error_rate: default_max_error_rate(),
            min_detection_ratio: default_min_detection_ratio(),
            max_score_psi: default_max_score_psi(),
            new_model_needs_expected: true,
        }
    }
}

impl CanaryConfig {
    /// Every problem, as (field under `ota.canary`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(1..=1_000_000).contains(&self.min_frames) {
            out.push(("min_frames", format!("{} is outside 1..=1000000", self.min_frames)));
        }
        if !(1..=86_400).contains(&self.max_wait.as_secs()) {
            out.push(("max_wait_s", format!("{} is outside 1..=86400", self.max_wait.as_secs())));
        }
        for (field, v) in [
            ("max_miss_rate_rise", self.max_miss_rate_rise),
            ("max_error_rate", self.max_error_rate),
            ("min_detection_ratio", self.min_detection_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                out.push((field, format!("{v} is outside 0..=1")));
            }
        }
        if !(self.max_score_psi.is_finite() && self.max_score_psi >= 0.0) {
            out.push(("max_score_psi", format!("{} must be 0 or more", self.max_score_psi)));
        }
        out
    }
}

fn default_binary_health_window() -> Duration {
    Duration::from_secs(60)
}
fn default_min_available_mb() -> u64 {
    256
}
fn default_accept_runs() -> usize {
    20
}
fn default_min_frames() -> u64 {
    300
}
fn default_max_wait() -> Duration {
    Duration::from_secs(600)
}
fn default_max_miss_rate_rise() -> f64 {
    0.02
}
fn default_max_error_rate() -> f64 {
    0.01
}
fn default_min_detection_ratio() -> f64 {
    0.7
}
fn default_max_score_psi() -> f64 {
    0.25
}
