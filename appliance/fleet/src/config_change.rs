//! `config/set`: a new configuration, applied with a health gate and rolled back when it makes
//! the device unhealthy.
//!
//! 1. The request is checked like a config file (every problem named), and more: the device id
//!    and data directory cannot change remotely, and the rules must fit the running model.
//!    Redacted secrets (`"***"` passwords, URIs as `config/get` shows them) keep their current
//!    values. A refused request changes nothing.
//! 2. The new configuration is written to the remote layer, `<data_dir>/remote/vigil.toml`
//!    (synced, renamed), never over the file vigil was started with: that one is the package's,
//!    read-only to the service (`/etc/vigil`, `ProtectSystem=strict`), and stays as the operator
//!    or packager wrote it. The remote file it replaces, if any, is kept as `vigil.toml.previous`.
//!    A marker `config-change.json` in the data directory records the request. vigil exits with
//!    75 for its supervisor to start it again; `vigil run --config FILE` runs on the remote file
//!    whenever one exists ([`effective`]).
//! 3. Started under the new file with a marker, vigil is on probation for the window: healthy
//!    means the broker accepted a connection and every camera delivered a frame. Healthy: the
//!    reply says `applied` and the marker and previous file go. Unhealthy, or not started twice:
//!    the previous remote file is put back (or, after the first change, the remote file is
//!    removed, so the packaged one runs again), the marker records why, and vigil exits with 75
//!    again; the next start (on the old configuration) sends the error reply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use vigil_config::Config;
use vigil_core::secret::Secret;

pub const MARKER: &str = "config-change.json";
/// Starts under a new configuration before it is rolled back without waiting for its window.
const MAX_STARTS: u32 = 2;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// A configuration change in progress, as the marker file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub request_id: String,
    pub config_path: PathBuf,
    pub window_s: u64,
    /// Starts under the new configuration so far.
    pub starts: u32,
    /// Set when the change was rolled back: why.
    pub rolled_back: Option<String>,
}

/// What a starting vigil has to do about a configuration change.
#[derive(Debug, Clone, PartialEq)]
pub enum Startup {
    None,
    /// Running the new configuration: check health after `window`.
    Probation {
        request_id: String,
        window: Duration,
    },
    /// Running the restored configuration: send this error reply.
    RolledBack {
        request_id: String,
        reason: String,
    },
    /// The new configuration was tried too often: it has been rolled back; exit with 75.
    RollBackNow,
}

/// Where `config/set` writes: the remote layer under the data directory.
pub fn remote_path(data_dir: &Path) -> PathBuf {
    data_dir.join("remote").join("vigil.toml")
}

/// The configuration file `vigil run --config config_file` runs on: the remote one `config/set`
/// wrote under `data_dir` when there is one, else `config_file` itself.
pub fn effective(config_file: &Path, data_dir: &Path) -> PathBuf {
    let remote = remote_path(data_dir);
    if remote.is_file() {
        remote
    } else {
        config_file.to_owned()
    }
}

pub(crate) fn previous_path(config_path: &Path) -> PathBuf {
    let mut p = config_path.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

fn read_marker(data_dir: &Path) -> Option<Pending> {
    let text = std::fs::read(data_dir.join(MARKER)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "unreadable {MARKER}; ignoring it");
            None
        }
    }
}

fn write_marker(data_dir: &Path, p: &Pending) -> std::io::Result<()> {
    vigil_core::fsutil::write_durably(&data_dir.join(MARKER), &serde_json::to_vec_pretty(p).expect("markers serialise"))
}

/// The new configuration a `config/set` request asks for, checked; `Err` names every problem.
pub fn prepare(current: &Config, requested: serde_json::Value, labels: &[String]) -> Result<Config, String> {
    let mut new: Config = serde_json::from_value(requested).map_err(|e| format!("not a vigil configuration: {e}"))?;
    // What config/get redacted keeps its current value.
    for cam in &mut new.cameras {
        if let Some(old) = current.cameras.iter().find(|c| c.id == cam.id) {
            if cam.password.as_ref().is_some_and(Secret::is_redacted) {
                cam.password = old.password.clone();
            }
            if cam.uri.as_written() == old.uri.redacted() {
                cam.uri = old.uri.clone();
            }
        }
    }
    let mut problems: Vec<String> = new.validate().iter().map(ToString::to_string).collect();
    if new.device_id != current.device_id {
        problems.push(format!(
            "device_id: cannot change remotely (`{}` → `{}`): it names the certificate and every topic",
            current.device_id, new.device_id
        ));
    }
    if new.data_dir != current.data_dir {
        problems.push("data_dir: cannot change remotely (the store and this change's record live there)".to_owned());
    }
    if problems.is_empty() {
        if let Err(e) = vigil_pipeline::RuleSet::compile(&new, labels) {
            problems.push(format!("rule: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(new)
    } else {
        Err(format!("configuration refused, nothing changed: {}", problems.join("; ")))
    }
}

/// Writes the new configuration to the remote layer ([`remote_path`]), keeping the remote file
/// it replaces as `.previous` (none when `running`, the file vigil runs on now, is the packaged
/// one), and the marker. Returns the file written. The caller then restarts.
pub fn commit(new: &Config, running: &Path, request_id: &str, window: Duration) -> std::io::Result<PathBuf> {
    let text = toml::to_string(new).map_err(std::io::Error::other)?;
    let target = remote_path(&new.data_dir);
    let dir = target.parent().expect("the remote file has a directory");
    std::fs::create_dir_all(dir)?;
    let previous = previous_path(&target);
    if target.is_file() && same_file(running, &target) {
        vigil_core::fsutil::write_durably(&previous, &std::fs::read(&target)?)?;
    } else {
        // No remote file before this change: a rollback removes it and the packaged one runs.
        remove_if_there(&previous)?;
    }
    write_marker(
        &new.data_dir,
        &Pending {
            request_id: request_id.to_owned(),
            config_path: target.clone(),
            window_s: window.as_secs(),
            starts: 0,
            rolled_back: None,
        },
    )?;
    let header = format!(
        "# Written by vigil for config/set request {request_id}. It is used instead of {}; remove it \
         (and restart vigil) to go back to that file.\n",
        running.display()
    );
    vigil_core::fsutil::write_durably(&target, format!("{header}{text}").as_bytes())?;
    Ok(target)
}

/// Removes the file at `path`; none there is fine.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Puts the previous configuration back and records why in the marker: the previous remote
/// file, or none (the packaged file runs again).
pub fn roll_back(data_dir: &Path, reason: &str) -> std::io::Result<()> {
    let Some(mut p) = read_marker(data_dir) else { return Ok(()) };
    match std::fs::read(previous_path(&p.config_path)) {
        Ok(previous) => vigil_core::fsutil::write_durably(&p.config_path, &previous)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            remove_if_there(&p.config_path)?;
            if let Some(dir) = p.config_path.parent() {
                vigil_core::fsutil::sync_dir(dir)?;
            }
        }
        Err(e) => return Err(e),
    }
    p.rolled_back = Some(reason.to_owned());
    write_marker(data_dir, &p)?;
    tracing::error!(request_id = %p.request_id, reason, "configuration change rolled back");
    Ok(())
}

/// The file at `config_path` does not load (a file it names went missing, say): if a change is on
/// probation for it, the previous configuration is put back. `Ok(true)`: rolled back, restart.
/// `data_dir` is where the marker is (from the packaged file: a change cannot move it).
pub fn roll_back_unloadable(config_path: &Path, data_dir: &Path, reason: &str) -> std::io::Result<bool> {
    match read_marker(data_dir) {
        Some(p) if p.rolled_back.is_none() && same_file(&p.config_path, config_path) => {
            roll_back(data_dir, reason)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The change went through: forget it.
pub fn accept(data_dir: &Path) {
    if let Some(p) = read_marker(data_dir) {
        let _ = std::fs::remove_file(previous_path(&p.config_path));
    }
    let _ = std::fs::remove_file(data_dir.join(MARKER));
}

/// Whether a change is on probation (not yet accepted or rolled back).
pub fn on_probation(data_dir: &Path) -> bool {
    read_marker(data_dir).is_some_and(|p| p.rolled_back.is_none())
}

/// Called as vigil starts with `config`: what to do about a change in progress.
pub fn on_start(config: &Config) -> Startup {
    let Some(mut p) = read_marker(&config.data_dir) else { return Startup::None };
    if let Some(reason) = p.rolled_back.take() {
        let _ = std::fs::remove_file(config.data_dir.join(MARKER));
        let _ = std::fs::remove_file(previous_path(&p.config_path));
        return Startup::RolledBack { request_id: p.request_id, reason };
    }
    p.starts += 1;
    if p.starts > MAX_STARTS {
        let reason = format!("vigil did not get through {MAX_STARTS} starts with the new configuration");
        return match roll_back(&config.data_dir, &reason) {
            Ok(()) => Startup::RollBackNow,
            Err(e) => {
                tracing::error!(error = %e, "cannot roll the configuration back");
                Startup::None
            }
        };
    }
    if let Err(e) = write_marker(&config.data_dir, &p) {
        tracing::error!(error = %e, "cannot update {MARKER}");
    }
    Startup::Probation { request_id: p.request_id, window: Duration::from_secs(p.window_s) }
}

/// The end of a probation window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    /// Why the change goes back.
    Unhealthy(String),
}

/// Waits out a probation `window` on tokio's clock (paused in tests), then asks `health` what is
/// wrong. `None`: vigil stopped first, and the change stays on probation for the next start.
pub async fn probation(
    window: Duration,
    cancel: &tokio_util::sync::CancellationToken,
    health: impl FnOnce() -> Vec<String>,
) -> Option<Verdict> {
    tokio::select! {
        _ = cancel.cancelled() => return None,
        _ = tokio::time::sleep(window) => {}
    }
    let problems = health();
    Some(if problems.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Unhealthy(format!("unhealthy within {} s: {}", window.as_secs(), problems.join("; ")))
    })
}

/// What is wrong with a running service at the end of its window; empty when healthy.
pub fn health_problems(
    mqtt_connected: bool,
    cameras: &[std::sync::Arc<vigil_core::stats::CameraStats>],
) -> Vec<String> {
    let mut out = Vec::new();
    if !mqtt_connected {
        out.push("the MQTT broker never accepted a connection".to_owned());
    }
    for c in cameras {
        let s = c.snapshot();
        if s.frames_in == 0 {
            let why = s.last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
            out.push(format!("camera `{}` delivered no frame{why}", s.id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Config, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests();
        config.data_dir = dir.path().join("data");
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let path = dir.path().join("vigil.toml");
        std::fs::write(&path, "# the operator's file\n").unwrap();
        (dir, config, path)
    }

    fn labels() -> Vec<String> {
        ["circle", "square", "triangle"].map(String::from).to_vec()
    }

    #[test]
    fn bad_requests_are_refused_with_every_problem_and_secrets_are_kept() {
        let (_dir, mut config, _) = setup();
        config.cameras[0].uri = "rtsp://cam.local/stream".into();
        config.cameras[0].password = Some(Secret::new("s3cret"));
        let mut asked = serde_json::to_value(&config).unwrap();
        asked["device_id"] = "other".into();
        asked["mqtt"]["max_inflight"] = 0.into();
        asked["rule"] = serde_json::json!([{ "name": "p", "labels": ["person"] }]);
        let err = prepare(&config, asked.clone(), &labels()).unwrap_err();
        assert!(err.contains("mqtt.max_inflight") && err.contains("device_id: cannot change"), "{err}");
        asked["device_id"] = config.device_id.clone().into();
        asked["mqtt"]["max_inflight"] = 8.into();
        let err = prepare(&config, asked.clone(), &labels()).unwrap_err();
        assert!(err.contains("`person`"), "rules are checked against the model: {err}");
        asked["rule"] = serde_json::json!([]);
        asked["camera"][0]["password"] = "***".into();
        let new = prepare(&config, asked, &labels()).unwrap();
        assert_eq!(new.cameras[0].password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(new.mqtt.max_inflight, 8);
        assert!(prepare(&config, serde_json::json!({"device_id": 5}), &labels()).unwrap_err().contains("not a vigil"));
    }

    #[test]
    fn a_change_goes_to_the_remote_layer_on_probation_then_is_accepted_or_rolled_back() {
        let (_dir, config, path) = setup();
        // The packaged file is read-only: config/set never writes it.
        let packaged = std::fs::read(&path).unwrap();
        let remote = remote_path(&config.data_dir);
        assert_eq!(effective(&path, &config.data_dir), path, "no remote file: the packaged one runs");
        let mut new = config.clone();
        new.mqtt.max_inflight = 7;
        assert_eq!(commit(&new, &path, "r1", Duration::from_secs(9)).unwrap(), remote);
        assert_eq!(effective(&path, &config.data_dir), remote);
        let written = Config::load(&remote).expect("the written file loads");
        assert_eq!(written.mqtt.max_inflight, 7);
        assert_eq!(std::fs::read(&path).unwrap(), packaged, "the packaged file is untouched");
        assert_eq!(on_start(&written), Startup::Probation { request_id: "r1".into(), window: Duration::from_secs(9) });
        assert!(on_probation(&config.data_dir));
        roll_back(&config.data_dir, "camera `x` delivered no frame").unwrap();
        assert!(!remote.exists(), "the first change rolled back: no remote file, the packaged one runs");
        assert_eq!(effective(&path, &config.data_dir), path);
        assert_eq!(
            on_start(&config),
            Startup::RolledBack { request_id: "r1".into(), reason: "camera `x` delivered no frame".into() }
        );
        assert_eq!(on_start(&config), Startup::None, "reported once");

        commit(&new, &path, "r2", Duration::from_secs(9)).unwrap();
        accept(&config.data_dir);
        assert_eq!(on_start(&config), Startup::None);
        assert!(!previous_path(&remote).exists());
        // A second change replaces the remote file, keeping it to go back to.
        let kept = std::fs::read(&remote).unwrap();
        new.mqtt.max_inflight = 9;
        commit(&new, &remote, "r3", Duration::from_secs(9)).unwrap();
        roll_back(&config.data_dir, "unhealthy").unwrap();
        assert_eq!(std::fs::read(&remote).unwrap(), kept, "the previous remote file, byte for byte");
        assert_eq!(std::fs::read(&path).unwrap(), packaged);
    }

    #[test]
    fn a_new_file_that_does_not_load_is_rolled_back_before_vigil_starts() {
        let (_dir, config, path) = setup();
        let remote = remote_path(&config.data_dir);
        assert!(!roll_back_unloadable(&path, &config.data_dir, "x").unwrap(), "no change in progress: nothing to do");
        commit(&config, &path, "r4", Duration::from_secs(60)).unwrap();
        std::fs::write(&remote, "this = [is not a vigil config").unwrap();
        assert!(roll_back_unloadable(&remote, &config.data_dir, "vigil cannot load it: bad TOML").unwrap());
        assert_eq!(effective(&path, &config.data_dir), path, "back on the packaged file");
        assert!(matches!(on_start(&config), Startup::RolledBack { reason, .. } if reason.contains("bad TOML")));
        assert!(!roll_back_unloadable(&remote, &config.data_dir, "x").unwrap(), "and only once");
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_judged_once_at_the_end_of_the_window_and_not_when_vigil_stops_first() {
        use tokio::time::Instant;
        let cancel = tokio_util::sync::CancellationToken::new();
        let window = Duration::from_secs(60);
        let started = Instant::now();
        let mut judged_at = None;
        let verdict = probation(window, &cancel, || {
            judged_at = Some(Instant::now());
            vec!["camera `a` delivered no frame".to_owned()]
        })
        .await;
        assert_eq!(judged_at.map(|t| t - started), Some(window), "judged when the window ends, not before");
        assert_eq!(verdict, Some(Verdict::Unhealthy("unhealthy within 60 s: camera `a` delivered no frame".into())));
        assert_eq!(probation(window, &cancel, Vec::new).await, Some(Verdict::Healthy));

        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(59)).await;
            stop.cancel();
        });
        let started = Instant::now();
        let verdict = probation(window, &cancel, || panic!("judged after vigil stopped")).await;
        assert_eq!((verdict, started.elapsed()), (None, Duration::from_secs(59)));
    }

    #[test]
    fn a_configuration_that_keeps_failing_to_start_is_rolled_back() {
        let (_dir, config, path) = setup();
        commit(&config, &path, "r3", Duration::from_secs(60)).unwrap();
        assert!(matches!(on_start(&config), Startup::Probation { .. }));
        assert!(matches!(on_start(&config), Startup::Probation { .. }));
        assert_eq!(on_start(&config), Startup::RollBackNow);
        assert_eq!(effective(&path, &config.data_dir), path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# the operator's file\n");
        assert!(matches!(on_start(&config), Startup::RolledBack { reason, .. } if reason.contains("2 starts")));
    }
}
