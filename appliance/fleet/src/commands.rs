//! Fleet commands: requests on `vigil/<device_id>/cmd/<name>`, answered on
//! `vigil/<device_id>/reply/<request_id>` (see docs/mqtt.md).
//!
//! A request is JSON `{"request_id": "...", "args": {...}}`. Everything about it is checked before
//! anything is done: size, JSON, unknown fields, the request id (it becomes a topic level), the
//! command name, each argument. A bad request gets an error reply naming the problem; one without
//! a usable request id is answered on `reply/invalid`. Nothing a request contains can crash vigil.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use vigil_config::Config;
use vigil_core::stats::CameraStats;
use vigil_core::topic;
use vigil_pipeline::scheduler::SchedulerStats;
use vigil_store::query::EventsQuery;
use vigil_store::Store;

/// Largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
pub const COMMANDS: &[&str] = &[
    "status",
    "config/get",
    "config/set",
    "restart",
    "snapshot",
    "events/query",
    "events/get",
    "events/tail",
    "ota/apply",
];

/// `ota/apply`, answered by the service's updater (vigil-update defines its arguments and when it
/// is refused): the request id and the raw arguments in, the reply out.
pub type OtaApply = Box<dyn Fn(&str, serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

/// How long `snapshot` waits for the camera's next processed frame.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    ConfigGet,
    /// A whole new configuration (the shape `config/get` returns), applied with a health gate:
    /// see [`crate::config_change`]. Answered after the window, from the restarted service.
    ConfigSet {
        config: serde_json::Value,
        health_window_s: u64,
    },
    /// Restart one camera's pipeline, or (no camera) the whole service: vigil exits with
    /// [`RESTART_EXIT_CODE`] so that its supervisor (systemd `Restart=on-failure`) starts it again.
    Restart {
        camera: Option<String>,
    },
    /// A JPEG of a camera's next processed frame (base64 in the reply).
    Snapshot {
        camera: String,
    },
    EventsQuery(EventsQuery),
    /// One event by id, optionally with its snapshot (base64 JPEG).
    EventsGet {
        id: String,
        snapshot: bool,
    },
    /// Follow events as they are stored, after the newest `last` (local control socket only:
    /// over MQTT, subscribe to `vigil/<device_id>/events`).
    EventsTail(TailArgs),
    /// Install a signed model target (answered at once; progress on `vigil/<id>/ota`).
    OtaApply(serde_json::Value),
}

/// The error for an event id that is not stored.
pub fn no_event(id: &str) -> String {
    format!("no event `{id}` (retention may have removed it); events/query lists stored events")
}

/// Exit status of a service restart requested over MQTT.
pub const RESTART_EXIT_CODE: u8 = 75;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailArgs {
    /// Stored events to send first (newest, sent oldest first), at most [`TAIL_BACKLOG_MAX`].
    #[serde(default)]
    pub last: usize,
    #[serde(default)]
    pub camera: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

/// Most stored events `events/tail` sends before following.
pub const TAIL_BACKLOG_MAX: usize = vigil_store::query::PAGE_MAX;

impl TailArgs {
    /// Whether event `e` passes the tail's filters.
    pub fn wants(&self, e: &vigil_core::event::Event) -> bool {
        self.camera.as_ref().is_none_or(|c| *c == e.camera_id) && self.label.as_ref().is_none_or(|l| *l == e.label)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsGetArgs {
    id: String,
    #[serde(default)]
    snapshot: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: String,
    pub command: Command,
}

/// Why a request was refused, and where to say so.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub request_id: Option<String>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    request_id: String,
    #[serde(default)]
    args: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigSetArgs {
    config: serde_json::Value,
    #[serde(default)]
    health_window_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotArgs {
    camera: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartArgs {
    #[serde(default)]
    camera: Option<String>,
}

fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses command `name` (the topic after `cmd/`) with its payload.
pub fn parse(name: &str, payload: &[u8]) -> Result<Request, Refusal> {
    let refuse = |request_id: Option<String>, message: String| Refusal { request_id, message };
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(refuse(None, format!("request of {} bytes; the limit is {MAX_REQUEST_BYTES}", payload.len())));
    }
    let envelope: Envelope = serde_json::from_slice(payload).map_err(|e| {
        // Keep the request id if the JSON has one, so that the error reaches the asker.
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("request_id").and_then(|i| i.as_str()).map(str::to_owned))
            .filter(|i| valid_request_id(i));
        refuse(id, format!("request is not {{\"request_id\": \"...\", \"args\": {{...}}}}: {e}"))
    })?;
    if !valid_request_id(&envelope.request_id) {
        return Err(refuse(None, "request_id must be 1-64 letters, digits, '-' or '_'".to_owned()));
    }
    let id = envelope.request_id;
    let args = envelope.args.unwrap_or(serde_json::Value::Object(Default::default()));
    let bad_args = |e: serde_json::Error| refuse(Some(id.clone()), format!("{name}: bad args: {e}"));
    let no_args = |args: &serde_json::Value| match args.as_object() {
        Some(o) if o.is_empty() => Ok(()),
        _ => Err(refuse(Some(id.clone()), format!("{name} takes no args"))),
    };
    let command = match name {
        "status" => no_args(&args).map(|()| Command::Status)?,
        "config/get" => no_args(&args).map(|()| Command::ConfigGet)?,
        "restart" => {
            let a: RestartArgs = serde_json::from_value(args).map_err(bad_args)?;
            Command::Restart { camera: a.camera }
        }
        "config/set" => {
            let a: ConfigSetArgs = serde_json::from_value(args).map_err(bad_args)?;
            let window = a.health_window_s.unwrap_or(crate::config_change::DEFAULT_WINDOW.as_secs());
            if !(5..=3600).contains(&window) {
                return Err(refuse(Some(id), "config/set: health_window_s must be 5..=3600".to_owned()));
            }
            if !a.config.is_object() {
                return Err(refuse(Some(id), "config/set: `config` must be an object, as config/get returns".into()));
            }
            Command::ConfigSet { config: a.config, health_window_s: window }
        }
        "snapshot" => {
            let a: SnapshotArgs = serde_json::from_value(args).map_err(bad_args)?;
            Command::Snapshot { camera: a.camera }
        }
        "events/query" => {
            let q: EventsQuery = serde_json::from_value(args).map_err(bad_args)?;
            q.check().map_err(|e| refuse(Some(id.clone()), format!("events/query: {e}")))?;
            Command::EventsQuery(q)
        }
        "events/get" => {
            let a: EventsGetArgs = serde_json::from_value(args).map_err(bad_args)?;
            if !(1..=64).contains(&a.id.len()) {
                return Err(refuse(Some(id), "events/get: `id` must be an event id (1-64 characters)".into()));
            }
            Command::EventsGet { id: a.id, snapshot: a.snapshot }
        }
        "events/tail" => {
            let a: TailArgs = serde_json::from_value(args).map_err(bad_args)?;
            if a.last > TAIL_BACKLOG_MAX {
                return Err(refuse(Some(id), format!("events/tail: last must be 0..={TAIL_BACKLOG_MAX}")));
            }
            Command::EventsTail(a)
        }
        "ota/apply" => Command::OtaApply(args),
        other => {
            return Err(refuse(Some(id), format!("unknown command `{other}`; known: {}", COMMANDS.join(", "))));
        }
    };
    Ok(Request { request_id: id, command })
}

#[derive(Debug, Serialize)]
pub struct Reply {
    pub request_id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// The reply carrying a command's outcome.
    pub fn new(request_id: &str, outcome: Result<serde_json::Value, String>) -> Self {
        match outcome {
            Ok(result) => Reply { request_id: request_id.to_owned(), ok: true, result: Some(result), error: None },
            Err(error) => Self::error(request_id, error),
        }
    }

    pub fn error(request_id: &str, message: String) -> Self {
        Reply { request_id: request_id.to_owned(), ok: false, result: None, error: Some(message) }
    }

    /// This reply as an MQTT message of device `device_id`: (topic, JSON).
    pub fn message(&self, device_id: &str) -> (String, Vec<u8>) {
        (topic::reply(device_id, &self.request_id), serde_json::to_vec(self).expect("replies always serialise"))
    }
}

/// What the device answers with.
pub struct Fleet {
    pub config: Arc<Config>,
    pub started: Instant,
    pub cameras: Vec<Arc<CameraStats>>,
    pub inference: Arc<SchedulerStats>,
    pub store: Store,
    /// Cancelled to restart the whole service.
    pub restart: tokio_util::sync::CancellationToken,
    pub snapshots: vigil_pipeline::scheduler::SnapshotRequests,
    /// The file the service was started with (`None`: the demo).
    pub config_path: Option<std::path::PathBuf>,
    /// The running model's labels (rules of a new configuration must fit them).
    pub labels: Vec<String>,
    /// Held from a `config/set`'s check to its commit: commands run several at once, and two
    /// changes let through together would each keep the other's file as the one to roll back to.
    pub changing: std::sync::Mutex<()>,
    /// The updater (`None`: not running).
    pub updates: Option<OtaApply>,
}

impl Fleet {
    /// Runs a parsed request; `Err` is the error message for the reply.
    pub fn execute(&self, command: &Command) -> Result<serde_json::Value, String> {
        match command {
            Command::Status => Ok(serde_json::json!({
                "device_id": self.config.device_id,
                "version": vigil_core::build::version(),
                "uptime_s": self.started.elapsed().as_secs(),
                "cameras": self.cameras.iter().map(|c| {
                    let s = c.snapshot();
                    serde_json::json!({ "id": s.id, "state": s.state, "fps_in": s.fps_in, "last_error": s.last_error })
                }).collect::<Vec<_>>(),
                "store": { "events": self.store.event_count(), "outbox": self.store.outbox_len() },
                "deadline_misses": self.inference.deadline_misses(),
            })),
            Command::ConfigGet => {
                let mut value = serde_json::to_value(&*self.config).map_err(|e| e.to_string())?;
                // Camera credentials never leave the device: passwords, and user:pass@ in URIs.
                if let Some(cams) = value.get_mut("camera").and_then(|c| c.as_array_mut()) {
                    for cam in cams {
                        if cam.get("password").is_some_and(|p| !p.is_null()) {
                            cam["password"] = vigil_core::secret::REDACTED.into();
                        }
                        if let Some(uri) = cam.get("uri").and_then(|u| u.as_str()) {
                            cam["uri"] = vigil_core::source::SourceUri::redacted(uri).into();
                        }
                    }
                }
                Ok(value)
            }
            Command::Restart { camera: Some(id) } => {
                self.cameras[self.camera_index(id)?].request_restart();
                Ok(serde_json::json!({ "restarting": id }))
            }
            Command::Snapshot { camera } => self.snapshot(camera),
            Command::ConfigSet { .. } => Err("config/set is answered by Fleet::answer".to_owned()),
            Command::OtaApply(_) => Err("ota/apply is answered by Fleet::answer".to_owned()),
            Command::Restart { camera: None } => {
                self.restart.cancel();
                Ok(serde_json::json!({ "restarting": "service", "exit_code": RESTART_EXIT_CODE }))
            }
            Command::EventsQuery(q) => {
                let page = q.check()?.run(&self.store).map_err(|e| e.to_string())?;
                serde_json::to_value(page).map_err(|e| e.to_string())
            }
            Command::EventsGet { id, snapshot } => self.event(id, *snapshot),
            Command::EventsTail(_) => {
                Err("events/tail follows events on the local control socket (`vigil events tail`); over MQTT, \
                 subscribe to vigil/<device_id>/events"
                    .to_owned())
            }
        }
    }

    fn camera_index(&self, id: &str) -> Result<usize, String> {
        self.cameras.iter().position(|c| *c.id == *id).ok_or_else(|| {
            let known: Vec<&str> = self.cameras.iter().map(|c| &*c.id).collect();
            format!("no camera `{id}`; cameras: {}", known.join(", "))
        })
    }

    /// Waits (on this blocking thread) for the camera's next processed frame.
    fn snapshot(&self, camera: &str) -> Result<serde_json::Value, String> {
        use base64::Engine as _;
        let index = self.camera_index(camera)?;
        let mut rx = self
            .snapshots
            .request(index)
            .ok_or_else(|| format!("too many snapshot requests wait for `{camera}`; try again in a moment"))?;
        let until = Instant::now() + SNAPSHOT_WAIT;
        loop {
            match rx.try_recv() {
                Ok(snap) => {
                    // Encoded here, on the command's thread, not on the scheduler's.
                    let picture = &snap.picture;
                    let jpeg = picture
                        .encode_jpeg(self.config.events.snapshot_quality)
                        .map_err(|e| format!("cannot encode the picture of `{camera}`: {e}"))?;
                    return Ok(serde_json::json!({
                        "camera": camera,
                        "captured_at": vigil_core::event::rfc3339(snap.captured_at_ns),
                        "width": picture.width,
                        "height": picture.height,
                        "content_type": "image/jpeg",
                        "jpeg_base64": base64::engine::general_purpose::STANDARD.encode(&jpeg),
                    }));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(_) => {
                    let state = self.cameras[index].snapshot().state;
                    return Err(format!(
                        "camera `{camera}` processed no frame within {} s (it is {state:?}); check its status",
                        SNAPSHOT_WAIT.as_secs()
                    ));
                }
            }
        }
    }

    fn event(&self, id: &str, with_snapshot: bool) -> Result<serde_json::Value, String> {
        use base64::Engine as _;
        let event = self.store.event(id).map_err(|e| e.to_string())?.ok_or_else(|| no_event(id))?;
        let mut value = serde_json::json!({ "event": event });
        if with_snapshot && event.snapshot.is_some() {
            let jpeg = std::fs::read(self.store.snapshot_file(id))
                .map_err(|e| format!("event `{id}` names a snapshot that cannot be read: {e}"))?;
            value["jpeg_base64"] = base64::engine::general_purpose::STANDARD.encode(jpeg).into();
        }
        Ok(value)
    }

    /// Checks and commits a new configuration, then restarts the service; the reply comes
    /// after the health window. `Err` is the refusal.
    fn config_set(&self, request_id: &str, config: &serde_json::Value, window_s: u64) -> Result<(), String> {
        use crate::config_change as change;
        let path = self
            .config_path
            .as_deref()
            .ok_or("this vigil runs the demo; start it with --config FILE to change its configuration remotely")?;
        // One change at a time: the second waits here, then finds the first one's marker.
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        if change::on_probation(&self.config.data_dir) {
            return Err("another configuration change is on probation; wait for its reply".to_owned());
        }
        let new = change::prepare(&self.config, config.clone(), &self.labels)?;
        change::commit(&new, path, request_id, std::time::Duration::from_secs(window_s))
            .map_err(|e| format!("cannot write the new configuration, nothing changed: {e}"))?;
        tracing::warn!(request_id, window_s, "new configuration written; restarting to apply it on probation");
        self.restart.cancel();
        Ok(())
    }

    /// The reply to a raw request, as (topic, JSON); `None` for an accepted `config/set`, which
    /// is answered after its health window.
    pub fn answer(&self, name: &str, payload: &[u8]) -> Option<(String, Vec<u8>)> {
        let device = &self.config.device_id;
        let mut reply = match parse(name, payload) {
            Ok(Request { request_id, command: Command::ConfigSet { config, health_window_s } }) => {
                match self.config_set(&request_id, &config, health_window_s) {
                    Ok(()) => return None,
                    Err(error) => Reply::error(&request_id, error),
                }
            }
            Ok(Request { request_id, command: Command::OtaApply(args) }) => {
                let reply = match &self.updates {
                    Some(apply) => apply(&request_id, args),
                    None => Err("the updater is not running on this device; try again after a restart".to_owned()),
                };
                Reply::new(&request_id, reply)
            }
            Ok(req) => Reply::new(&req.request_id, self.execute(&req.command)),
            Err(r) => Reply::error(r.request_id.as_deref().unwrap_or("invalid"), r.message),
        };
        let mut message = reply.message(device);
        if let Some(bytes) = topic::oversized(&message.0, message.1.len()) {
            // Over the broker's packet limit it could never be sent: say so instead.
            reply = Reply::error(
                &reply.request_id,
                format!(
                    "the reply is {bytes} bytes, over the {}-byte MQTT packet limit; ask for less (events/get \
                     without snapshot, a smaller events/query limit), or read it on the device with `vigil events`",
                    topic::MAX_PACKET_BYTES
                ),
            );
            message = reply.message(device);
        }
        let at = humantime::format_rfc3339_millis(SystemTime::now());
        tracing::info!(command = name, request_id = %reply.request_id, ok = reply.ok, error = reply.error.as_deref().unwrap_or(""),
            at = %at, "fleet command");
        Some(message)
    }
}

#[cfg(test)]
mod tests;
