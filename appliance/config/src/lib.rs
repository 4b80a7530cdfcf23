//! The one configuration file, `vigil.toml`: schema, defaults and validation.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error, never silently ignored.
//! Validation collects *every* problem with its field path, so an operator fixes a file in one pass.
//! Relative paths are resolved against the directory of the config file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use vigil_core::codec::Codec;
use vigil_core::secret::Secret;
use vigil_core::source::CameraUri;

mod broker;
mod check;
mod error;
mod ota;
pub mod units;

pub use broker::BrokerUrl;
pub use error::{ConfigError, Problem};
pub use ota::{CanaryConfig, ClockTrust, OtaConfig};

/// The demo configuration, as `vigil default-config` prints it: an annotated example.
pub const EMBEDDED_DEFAULT: &str = include_str!("../demo.toml");
/// Where an installed vigil reads its configuration when none is named.
pub const SYSTEM_CONFIG: &str = "/etc/vigil/vigil.toml";
/// The demo configuration's place in a source checkout: `vigil demo` runs there.
pub const DEMO_CONFIG: &str = "appliance/config/demo.toml";

/// What the A/B launcher and guard read of a configuration ([`Config::launch_paths_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPaths {
    pub data_dir: PathBuf,
    /// The shipped TUF root that slot binaries are checked against; none: no slot runs.
    pub ota_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Unique name of this device in the fleet; becomes part of every MQTT topic.
    pub device_id: String,
    /// Where the sled store lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub mqtt: MqttConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub events: EventsConfig,
    /// What makes an event; without any, one rule `objects` covers every label everywhere.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
    /// Signed model updates; without it `ota/apply` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ota: Option<OtaConfig>,
}

/// How detections become events: tracking, updates and snapshots (docs/config.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Track objects across frames (one event per object). `false`: every detection is an event
    /// of its own (raw-detection logging; use with rules of `min_frames = 1`).
    #[serde(default = "default_true")]
    pub track: bool,
    /// Minimum IoU between a track's predicted box and a detection for them to match.
    #[serde(default = "default_iou_threshold")]
    pub iou_threshold: f32,
    /// An object unseen (or outside the rule) this long ends its event.
    #[serde(rename = "lost_after_ms", with = "units::ms", default = "default_lost_after")]
    pub lost_after: Duration,
    /// An open event is re-sent (`update`) at most this often while it changes; a change of
    /// zones is sent at once.
    #[serde(rename = "update_interval_s", with = "units::secs", default = "default_update_interval")]
    pub update_interval: Duration,
    /// Store a JPEG of each event's best observation.
    #[serde(default = "default_true")]
    pub snapshots: bool,
    /// JPEG quality of snapshots, 1-100.
    #[serde(default = "default_snapshot_quality")]
    pub snapshot_quality: u8,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            track: true,
            iou_threshold: default_iou_threshold(),
            lost_after: default_lost_after(),
            update_interval: default_update_interval(),
            snapshots: true,
            snapshot_quality: default_snapshot_quality(),
        }
    }
}

/// One rule: which detections, where and for how long make an event.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Short unique name; reported in each event.
    pub name: String,
    /// Labels of the model this rule takes; empty: all.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Camera ids this rule watches; empty: all.
    #[serde(default)]
    pub cameras: Vec<String>,
    /// Zone names (see `[[camera.zone]]`); the object's bottom-centre must be inside one. Empty:
    /// the whole frame.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Detections scoring lower do not count.
    #[serde(default)]
    pub min_score: f32,
    /// Observations of the object before its event starts.
    #[serde(default = "default_min_frames")]
    pub min_frames: u32,
    /// Seconds the object must stay (dwell, loitering) before its event starts.
    #[serde(rename = "dwell_s", with = "units::secs_f64", default)]
    pub dwell: Duration,
    /// Seconds after an event of this rule ends on a camera during which the rule starts no
    /// new event there.
    #[serde(rename = "cooldown_s", with = "units::secs_f64", default)]
    pub cooldown: Duration,
}

/// A named area of a camera's picture: a polygon in normalised coordinates (0..1, origin top-left).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    pub polygon: Vec<[f32; 2]>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (plain TCP, demos only) or `mqtts://host[:port]` (TLS).
    #[serde(default = "default_mqtt_url")]
    pub url: String,
    /// Defaults to `vigil-<device_id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(rename = "keep_alive_s", with = "units::secs", default = "default_keep_alive")]
    pub keep_alive: Duration,
    /// Unacknowledged QoS 1 publishes allowed at once (the outbox drain window).
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// Messages the disk outbox holds while the broker is unreachable. When full, the oldest are
    /// dropped from the outbox (their events stay in the store) and counted.
    #[serde(default = "default_outbox_max")]
    pub outbox_max_messages: usize,
    /// Seconds between `metrics` messages (`metrics_interval_s`); 0 turns them off (`None`).
    #[serde(rename = "metrics_interval_s", with = "units::secs_or_off", default = "default_metrics_interval")]
    pub metrics_every: Option<Duration>,
    /// Home Assistant MQTT discovery: each camera appears as a "last detection" sensor.
    #[serde(default)]
    pub home_assistant: bool,
    /// Home Assistant's discovery prefix.
    #[serde(default = "default_ha_prefix")]
    pub home_assistant_prefix: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: default_mqtt_url(),
            client_id: None,
            keep_alive: default_keep_alive(),
            max_inflight: default_inflight(),
            outbox_max_messages: default_outbox_max(),
            metrics_every: default_metrics_interval(),
            home_assistant: false,
            home_assistant_prefix: default_ha_prefix(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of the CA(s) that sign the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate (mutual TLS). Give `cert` and `key` together.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory holding a model bundle (`manifest.toml` + ONNX files).
    pub bundle: PathBuf,
    /// Capture → detections budget (`latency_budget_ms`); defaults to the bundle's `budget.latency_ms`.
    #[serde(rename = "latency_budget_ms", with = "units::opt_ms", default)]
    pub latency_budget: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// TensorRT where it is built in, a CUDA device answers and the bundle supports it; else
    /// ONNX Runtime.
    Auto,
    Tensorrt,
    Onnxruntime,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [Self::Auto, Self::Tensorrt, Self::Onnxruntime];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tensorrt => "tensorrt",
            Self::Onnxruntime => "onnxruntime",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|b| b.name()).collect();
            format!("`{s}` is not a backend; use one of {}", names.join(", "))
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    /// Path to `libonnxruntime.so*`. Defaults to `$ORT_DYLIB_PATH`, then well-known locations.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// Threads ONNX Runtime may use inside one inference.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Largest batch across cameras, for models with a dynamic batch dimension (others run one
    /// frame at a time). The scheduler batches only while every frame still meets its budget.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// TensorRT: where built engines are cached. Default: `<data_dir>/engines` (see
    /// [`Config::engine_cache_dir`]).
    #[serde(default)]
    pub engine_cache: Option<PathBuf>,
    /// TensorRT: builder workspace limit in MiB.
    #[serde(default = "default_workspace_mb")]
    pub workspace_mb: u64,
    /// TensorRT: run on this DLA core (layers it cannot run fall back to the GPU).
    #[serde(default)]
    pub dla_core: Option<u32>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            ort_library: None,
            threads: default_threads(),
            max_batch: default_max_batch(),
            engine_cache: None,
            workspace_mb: default_workspace_mb(),
            dla_core: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Short unique name: letters, digits, `-` and `_`.
    pub id: String,
    /// `file:///path.mp4[?loop=true&pace=fast]`, `rtsp://…`, `v4l2:///dev/videoN`, `csi://N`,
    /// `test://<videotestsrc pattern>`.
    pub uri: CameraUri,
    /// Overrides the model's budget for this camera (`latency_budget_ms`).
    #[serde(rename = "latency_budget_ms", with = "units::opt_ms", default)]
    pub latency_budget: Option<Duration>,
    /// `h264`, `h265`, `mjpeg` or `raw`; learnt from the stream when not given.
    #[serde(default)]
    pub codec: Option<Codec>,
    /// A decoder element to use instead of the best one installed (`avdec_h264`, `nvv4l2decoder`...).
    #[serde(default)]
    pub decoder: Option<String>,
    /// RTSP user name; kept out of the URI so that it never reaches logs or status.
    #[serde(default)]
    pub user: Option<String>,
    /// RTSP password (keep this file readable by vigil only).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Overrides `capture.watchdog_ms` for this camera.
    #[serde(rename = "watchdog_ms", with = "units::opt_ms", default)]
    pub watchdog: Option<Duration>,
    /// Zones rules can refer to.
    #[serde(default, rename = "zone")]
    pub zones: Vec<ZoneConfig>,
}

/// How long events are kept on the device. The oldest (by capture time) go first when any
/// limit is passed; checked at start and every minute.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Events older than `retention_days` days are deleted; 0 (`None`) keeps them regardless of age.
    #[serde(rename = "retention_days", with = "units::days_or_off", default = "default_retention")]
    pub max_age: Option<Duration>,
    /// At most this many events.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// At most this many megabytes of the data directory for events: snapshot files, and the
    /// store's files (each byte of event record counted at sled's measured space amplification).
    #[serde(default = "default_max_event_mb")]
    pub max_event_mb: u64,
    /// Keep at least this many megabytes free on the data directory's file system: below it the
    /// oldest events and their snapshots are deleted (checked every second, and whenever a
    /// write fails).
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_age: default_retention(),
            max_events: default_max_events(),
            max_event_mb: default_max_event_mb(),
            min_free_mb: default_min_free_mb(),
        }
    }
}

fn default_retention() -> Option<Duration> {
    Some(Duration::from_secs(30 * 86_400))
}
fn default_max_events() -> usize {
    1_000_000
}
fn default_max_event_mb() -> u64 {
    1024
}
fn default_min_free_mb() -> u64 {
    256
}

/// How cameras are supervised; defaults suit RTSP cameras on a LAN.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// A streaming camera silent this long is declared stalled and restarted.
    #[serde(rename = "watchdog_ms", with = "units::ms", default = "default_watchdog")]
    pub watchdog: Duration,
    /// Time a (re)started camera gets for its first frame.
    #[serde(rename = "first_frame_timeout_ms", with = "units::ms", default = "default_first_frame")]
    pub first_frame_timeout: Duration,
    /// Backoff between restarts: doubles from the minimum up to the maximum, with ±20 % jitter.
    #[serde(rename = "backoff_min_ms", with = "units::ms", default = "default_backoff_min")]
    pub backoff_min: Duration,
    #[serde(rename = "backoff_max_ms", with = "units::ms", default = "default_backoff_max")]
    pub backoff_max: Duration,
    /// Streaming this long without a fault resets the backoff.
    #[serde(rename = "backoff_reset_s", with = "units::secs", default = "default_backoff_reset")]
    pub backoff_reset: Duration,
    /// Threads each software decoder may use; 0 shares the cores out: cores ÷ cameras, at least
    /// one. Each thread of FFmpeg's frame threading holds a frame of its own (memory) and adds a
    /// frame of delay.
    #[serde(default)]
    pub software_decode_threads: u32,
}

impl CaptureConfig {
    /// The threads each of `cameras` software decoders gets on a machine of `cores`.
    pub fn decode_threads(&self, cameras: usize, cores: usize) -> u32 {
        match self.software_decode_threads {
            0 => u32::try_from(cores / cameras.max(1)).unwrap_or(u32::MAX).max(1),
            n => n,
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            watchdog: default_watchdog(),
            first_frame_timeout: default_first_frame(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
            backoff_reset: default_backoff_reset(),
            software_decode_threads: 0,
        }
    }
}

fn default_watchdog() -> Duration {
    Duration::from_secs(2)
}
fn default_first_frame() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_reset() -> Duration {
    Duration::from_secs(30)
}

fn default_iou_threshold() -> f32 {
    0.3
}
fn default_lost_after() -> Duration {
    Duration::from_millis(1_500)
}
fn default_update_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}
fn default_snapshot_quality() -> u8 {
    80
}
fn default_min_frames() -> u32 {
    3
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/vigil")
}
fn default_mqtt_url() -> String {
    "mqtt://127.0.0.1:1883".to_owned()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_inflight() -> u16 {
    32
}
fn default_outbox_max() -> usize {
    100_000
}
fn default_metrics_interval() -> Option<Duration> {
    Some(Duration::from_secs(30))
}
fn default_ha_prefix() -> String {
    "homeassistant".to_owned()
}
fn default_backend() -> BackendKind {
    BackendKind::Auto
}
fn default_max_batch() -> usize {
    4
}
fn default_workspace_mb() -> u64 {
    1024
}
fn default_threads() -> usize {
    1
}

/// Letters, digits, `-` and `_`: safe inside MQTT topics, file names and log lines.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    /// `camera`'s latency budget: its own, else `model.latency_budget_ms`, else `bundle`'s (the
    /// model's manifest).
    pub fn camera_budget(&self, camera: &CameraConfig, bundle: Duration) -> Duration {
        camera.latency_budget.or(self.model.latency_budget).unwrap_or(bundle)
    }

    /// Reads, parses, resolves relative paths and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        // Absolute, so that `file://` URIs made from relative paths stay absolute.
        let absolute = std::path::absolute(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let base = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_str_at(&text, path, &base)
    }

    /// `data_dir` and `ota.root` as the file at `path` sets them (resolved like
    /// [`Config::load`]), reading nothing else: the A/B slot guard and launcher (docs/ota.md) run
    /// the packaged vigil, which must find the slots, and the root they are checked against, even
    /// under a configuration only a newer, OTA'd vigil understands.
    pub fn launch_paths_of(path: &Path) -> Result<LaunchPaths, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let absolute = std::path::absolute(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let base = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
        let string = |value: Option<&toml::Value>, key: &str| match value {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(base.join(s))),
            Some(other) => Err(ConfigError::Parse {
                path: path.into(),
                message: format!("{key} must be a string, not {}", other.type_str()),
            }),
        };
        Ok(LaunchPaths {
            data_dir: string(table.get("data_dir"), "data_dir")?.unwrap_or_else(default_data_dir),
            ota_root: string(table.get("ota").and_then(|o| o.get("root")), "ota.root")?,
        })
    }

    /// The configuration a command runs on: `path` if given, else [`SYSTEM_CONFIG`], which must
    /// exist (nothing is guessed: a device without a configuration says so).
    pub fn load_or_system(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(SYSTEM_CONFIG).exists() => Self::load(Path::new(SYSTEM_CONFIG)),
            None => Err(ConfigError::Missing),
        }
    }

    /// Every default, and the bundle at `bundle`: for a command that needs only the model and
    /// the inference settings (`vigil model-check --bundle DIR` where no configuration exists).
    /// Its one camera is a test pattern, as a configuration must name a camera.
    pub fn for_bundle(bundle: &Path) -> Result<Self, ConfigError> {
        let text = format!(
            "device_id = \"model-check\"\n[model]\nbundle = {}\n[[camera]]\nid = \"test\"\nuri = \"test://ball\"\n",
            toml::Value::String(bundle.display().to_string())
        );
        let here = std::env::current_dir().map_err(|source| ConfigError::Read { path: ".".into(), source })?;
        Self::from_str_at(&text, Path::new("<defaults>"), &here)
    }

    /// The demo configuration of the source checkout at `root` ([`DEMO_CONFIG`]), its paths
    /// relative to that file.
    pub fn demo(root: &Path) -> Result<Self, ConfigError> {
        let path = root.join(DEMO_CONFIG);
        if !path.is_file() {
            return Err(ConfigError::NoDemo { dir: root.to_path_buf() });
        }
        Self::load(&path)
    }

    /// The demo configuration of this source tree, for tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_tests() -> Self {
        Self::demo(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).expect("the demo configuration loads")
    }

    /// Parses `text` (named `origin` in errors) and resolves relative paths against `base`.
    pub fn from_str_at(text: &str, origin: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string().trim_end().to_owned() })?;
        cfg.resolve_paths(base);
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid { path: origin.into(), problems })
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.model.bundle);
        if let Some(lib) = &mut self.inference.ort_library {
            fix(lib);
        }
        if let Some(dir) = &mut self.inference.engine_cache {
            fix(dir);
        }
        if let Some(tls) = &mut self.mqtt.tls {
            fix(&mut tls.ca);
            tls.cert.as_mut().map(fix);
            tls.key.as_mut().map(fix);
        }
        if let Some(ota) = &mut self.ota {
            for p in [&mut ota.root, &mut ota.ca] {
                fix(p);
            }
            ota.cert.as_mut().map(fix);
            ota.key.as_mut().map(fix);
        }
        for cam in &mut self.cameras {
            if let Some(rest) = cam.uri.as_written().strip_prefix("file://") {
                if !rest.starts_with('/') {
                    cam.uri = CameraUri::new(format!("file://{}", base.join(rest).display()));
                }
            }
        }
    }

    /// Where TensorRT engines are cached.
    pub fn engine_cache_dir(&self) -> PathBuf {
        self.inference.engine_cache.clone().unwrap_or_else(|| self.data_dir.join("engines"))
    }

    fn camera_ids(&self) -> String {
        self.cameras.iter().map(|c| format!("`{}`", c.id)).collect::<Vec<_>>().join(", ")
    }

    /// The configured rules, or the one default rule (`objects`: every label, everywhere).
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        if !self.rules.is_empty() {
            return self.rules.clone();
        }
        vec![RuleConfig {
            name: "objects".to_owned(),
            labels: Vec::new(),
            cameras: Vec::new(),
            zones: Vec::new(),
            min_score: 0.0,
            min_frames: default_min_frames(),
            dwell: Duration::ZERO,
            cooldown: Duration::ZERO,
        }]
    }

    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| format!("vigil-{}", self.device_id))
    }
}

#[cfg(test)]
mod tests;
