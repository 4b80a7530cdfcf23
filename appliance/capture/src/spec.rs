//! What one camera needs to run, from its configuration.

use std::sync::Arc;
use std::time::Duration;

use vigil_config::{CameraConfig, CaptureConfig, Config};
use vigil_core::codec::Codec;
use vigil_core::secret::Secret;
use vigil_core::source::SourceUri;

use crate::camera::StreamInfo;
use crate::pipeline::{self, Plan};
use crate::platform::Platform;
use crate::CaptureError;

/// The supervision timings (`[capture]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// Longest silence of a streaming pipeline before it is declared stalled.
    pub watchdog: Duration,
    /// A freshly started pipeline gets this long for its first frame (RTSP set-up, decoder start).
    pub first_frame_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Streaming this long without a fault resets the backoff to its minimum.
    pub backoff_reset: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            watchdog: Duration::from_secs(2),
            first_frame_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            backoff_reset: Duration::from_secs(30),
        }
    }
}

/// Everything one camera needs to run.
#[derive(Debug, Clone)]
pub struct CameraSpec {
    /// Index in the configuration (the hub's slot).
    pub index: usize,
    pub id: Arc<str>,
    pub source: SourceUri,
    /// The codec, when configured; otherwise it is probed (files, RTSP, USB).
    pub codec: Option<Codec>,
    /// A decoder element forced by configuration instead of the platform's preference.
    pub decoder: Option<String>,
    /// RTSP credentials (set as element properties, never written into a description or log).
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub supervision: Supervision,
    /// Threads of a software decoder (0: FFmpeg's choice); see `CaptureConfig::decode_threads`.
    pub decode_threads: u32,
}

impl CameraSpec {
    pub fn new(index: usize, id: &str, source: SourceUri) -> Self {
        let (user, password) = match &source {
            SourceUri::Rtsp { user, password, .. } => (user.clone(), password.clone()),
            _ => (None, None),
        };
        Self {
            index,
            id: id.into(),
            source,
            codec: None,
            decoder: None,
            user,
            password,
            supervision: Supervision::default(),
            decode_threads: 0,
        }
    }

    /// What is known of the stream without probing it: the configured codec, or the one the
    /// source implies (CSI, test patterns).
    pub(crate) fn known_info(&self) -> Option<StreamInfo> {
        self.codec
            .or_else(|| pipeline::implied_codec(&self.source))
            .map(|codec| StreamInfo { codec, size: pipeline::known_size(&self.source) })
    }

    /// The plan for `info` with the `candidate`th decoder the platform offers (the last one when
    /// there are fewer).
    pub fn plan(&self, platform: &Platform, info: StreamInfo, candidate: usize) -> Result<Plan, CaptureError> {
        let decoders = platform
            .decoders(info.codec, self.decoder.as_deref())
            .map_err(|message| CaptureError::Build { camera: self.id.to_string(), message })?;
        let decoder = decoders.get(candidate.min(decoders.len().saturating_sub(1))).cloned();
        let mut plan = Plan::new(platform, info.codec, decoder);
        plan.decode_threads = self.decode_threads;
        Ok(plan)
    }
}

impl Supervision {
    /// The supervision timings of one camera: `[capture]`, with the camera's own watchdog.
    pub fn from_config(capture: &CaptureConfig, camera: &CameraConfig) -> Self {
        Self {
            watchdog: camera.watchdog.unwrap_or(capture.watchdog),
            first_frame_timeout: capture.first_frame_timeout,
            backoff_min: capture.backoff_min,
            backoff_max: capture.backoff_max,
            backoff_reset: capture.backoff_reset,
        }
    }
}

impl CameraSpec {
    /// Camera `index` of a validated `config`.
    pub fn from_config(config: &Config, index: usize) -> Self {
        let cam = &config.cameras[index];
        let source = cam.uri.source().expect("validated with the config").clone();
        let mut spec = CameraSpec::new(index, &cam.id, source);
        spec.codec = cam.codec;
        spec.decoder = cam.decoder.clone();
        spec.user = cam.user.clone().or(spec.user);
        spec.password = cam.password.clone().or(spec.password);
        spec.supervision = Supervision::from_config(&config.capture, cam);
        spec.decode_threads = decode_threads(&config.capture, config.cameras.len());
        spec
    }
}

/// The threads each software decoder gets with `cameras` cameras on this machine's cores.
pub fn decode_threads(capture: &vigil_config::CaptureConfig, cameras: usize) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    capture.decode_threads(cameras, cores)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/bundles/shapes-v1");
        let text = format!("device_id = \"dev-1\"\n[model]\nbundle = \"{}\"\n{text}", bundle.display());
        Config::from_str_at(&text, Path::new("test.toml"), Path::new("/")).expect("valid")
    }

    #[test]
    fn camera_specs_take_credentials_and_timings_from_the_config() {
        let cfg = config(
            "[capture]\nwatchdog_ms = 3000\n[[camera]]\nid = \"a\"\nuri = \"rtsp://uri-user:uri-pw@cam/s\"\n\
             password = \"cfg-pw\"\nwatchdog_ms = 500\n",
        );
        let spec = CameraSpec::from_config(&cfg, 0);
        assert_eq!(spec.user.as_deref(), Some("uri-user"));
        assert_eq!(spec.password.as_ref().map(Secret::expose), Some("cfg-pw"));
        assert_eq!(spec.supervision.watchdog, Duration::from_millis(500));
        assert_eq!(spec.supervision.backoff_max, Duration::from_secs(10));
    }
}
