//! A model rollout to a fleet in waves (`vigil fleet ota push`): which devices get `ota/apply`
//! when, what each one's outcome is, and when the rollout stops. This is the logic and its state
//! file only: messages go in ([`Rollout::on_message`]), the devices to send `ota/apply` to come
//! out of [`Rollout::step`], so that every decision is tested without a broker; `push.rs` drives
//! it over MQTT.
//!
//! Waves are cumulative device counts (`1,10%,100%`: one device, then up to a tenth of them, then
//! the rest), each adding at least one device. A wave starts when every device of the previous
//! one has an outcome, and draws only devices whose retained status is `online` (commands are not
//! queued for offline devices); devices still offline after the last wave are reported
//! `unreached` and retried when the rollout is run again. Failures — a device's `failed` or
//! `rolled_back`, a refused command, no outcome within the device timeout — over
//! `max_failures` abort it: no further device is sent the update, and those already updating are
//! followed to their outcome.
//!
//! Each command's `sent` record is on disk before the command goes out (`journal.rs`), so a
//! rollout interrupted anywhere — the operator's machine restarting included — goes on from its
//! state file: a device the command may have reached is followed through its retained `ota`
//! topic (every device of a rollout gets the same request id), and sent again only when neither
//! its topic nor an answer within [`RESEND_GRACE`] shows a trace of it. The same holds after the
//! tool's connection to the broker is lost ([`Rollout::requeue_sent`]).
//!
//! Messages are taken in one at a time; [`Rollout::step`] looks at every device and is meant to
//! run once per batch of messages (`push.rs` batches them), so a rollout costs O(N) per batch
//! and O(N) in all for its messages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vigil_core::topic::Topic;

/// The state file's format.
pub const SCHEMA: u32 = 1;

/// How long a device has to answer `ota/apply` (its reply or its first `ota` state) before it
/// counts as unreached.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a device sent the command by an earlier run (or before the connection was lost) has
/// to show that it took it, once the retained `ota` topics are gathered again, before it is sent
/// the command again. A command the broker had accepted may still be queued for the device, or
/// the device slow to answer: resending at once commanded such devices twice.
pub const RESEND_GRACE: Duration = Duration::from_secs(10);

/// One wave: how many devices have been sent the update once it has started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wave {
    Devices(usize),
    Percent(u32),
}

/// Reads `1,10%,100%`: counts or percentages of the rollout's devices, rising, the last `100%`.
pub fn parse_waves(spec: &str) -> Result<Vec<Wave>, String> {
    let mut waves = Vec::new();
    for piece in spec.split(',').map(str::trim) {
        let wave = match piece.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u32>() {
                Ok(p @ 1..=100) => Wave::Percent(p),
                _ => return Err(format!("--waves: `{piece}` is not a percentage from 1% to 100%")),
            },
            None => match piece.parse::<usize>() {
                Ok(n @ 1..) => Wave::Devices(n),
                _ => return Err(format!("--waves: `{piece}` is neither a device count (1 or more) nor a percentage")),
            },
        };
        let rises = match (waves.last(), wave) {
            (Some(Wave::Devices(a)), Wave::Devices(b)) => b > *a,
            (Some(Wave::Percent(a)), Wave::Percent(b)) => b > *a,
            _ => true,
        };
        if !rises {
            return Err(format!("--waves: `{spec}`: each wave counts the devices updated so far, so they must rise"));
        }
        waves.push(wave);
    }
    if waves.last() != Some(&Wave::Percent(100)) {
        return Err(format!("--waves: `{spec}` must end with 100% so that every device is covered (e.g. 1,10%,100%)"));
    }
    Ok(waves)
}

/// The devices sent the update by the end of each wave, for `total` devices: each wave adds at
/// least one (while any remain); waves with nothing left to add are dropped.
pub fn wave_targets(waves: &[Wave], total: usize) -> Vec<usize> {
    let mut targets: Vec<usize> = Vec::new();
    for w in waves {
        let want = match *w {
            Wave::Devices(n) => n,
            Wave::Percent(p) => (total * p as usize).div_ceil(100),
        };
        let previous = targets.last().copied().unwrap_or(0);
        let target = want.max(previous + 1).min(total);
        if target > previous {
            targets.push(target);
        }
    }
    targets
}

/// Where a device stands in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Not sent yet.
    Pending,
    /// `ota/apply` sent; neither its reply nor an `ota` state of this rollout seen yet.
    Sent,
    /// The device took the command and is updating (`phase` says where).
    Updating,
    Successful,
    Failed,
    RolledBack,
    /// The device refused the command (no `[ota]` section, another update under way, ...).
    Refused,
    /// No outcome within the device timeout.
    TimedOut,
    /// Offline for the whole rollout, or no answer to the command: retried at the next run.
    Unreached,
    /// Already runs this version or a newer one: nothing to do.
    Current,
}

impl DeviceState {
    /// Counts against `max_failures`.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack | Self::Refused | Self::TimedOut)
    }

    fn in_flight(self) -> bool {
        matches!(self, Self::Sent | Self::Updating)
    }

    fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Sent | Self::Updating | Self::Unreached)
    }
}

/// One device of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub state: DeviceState,
    /// The wave it was sent in (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
    /// Its latest `ota` state while it updates (`downloading`, `canary`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The model version it ran when the rollout was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub sent_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub ended_at: Option<SystemTime>,
    /// Why it failed, was rolled back, refused or unreached (the device's own words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_lost_at_swap: Option<u64>,
    /// The canary's figures (both windows) from the device's last `ota` state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Value>,
    /// It answered that another update is under way: the command is sent again once that one
    /// has an outcome (its `ota` topic says so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

impl Device {
    fn new(state: DeviceState) -> Self {
        Self {
            state,
            wave: None,
            phase: None,
            ran: None,
            sent_at: None,
            ended_at: None,
            reason: None,
            frames_lost_at_swap: None,
            canary: None,
            waiting: false,
        }
    }

    fn end(&mut self, state: DeviceState, reason: Option<String>, now: SystemTime) {
        self.state = state;
        self.reason = reason;
        self.phase = None;
        self.ended_at = Some(now);
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum End {
    /// Every wave ran (some devices may be unreached or have failed within `max_failures`).
    Complete,
    Aborted {
        reason: String,
    },
}

/// What a device's retained `status` says (the part a rollout uses).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub online: bool,
    /// The model it serves: name and version.
    pub model: Option<(String, String)>,
    /// The vigil it runs.
    pub vigil: Option<String>,
    /// Its periodic update checks (`ota.check_interval_s`), when it updates its model itself.
    pub checks_every_s: Option<u64>,
}

impl DeviceStatus {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        let model = match (v["model"]["name"].as_str(), v["model"]["version"].as_str()) {
            (Some(n), Some(ver)) => Some((n.to_owned(), ver.to_owned())),
            _ => None,
        };
        let vigil = v["version"].as_str().map(str::to_owned);
        Some(Self { online: v["state"] == "online", model, vigil, checks_every_s: v["ota_check_interval_s"].as_u64() })
    }

    /// The version it runs of `name`: a model's name, or `vigil` for vigil's own binary.
    pub fn runs(&self, name: &str) -> Option<&str> {
        if name == VIGIL {
            return self.vigil.as_deref();
        }
        self.model.as_ref().filter(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The target name of vigil's own binary.
const VIGIL: &str = "vigil";

/// Which devices a rollout is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// These, whatever they run.
    Devices(Vec<String>),
    /// Every device whose retained status names the target's model (every device, for
    /// `vigil` itself).
    RunningModel,
}

/// What is rolled out, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub version: String,
    /// `ota/apply`'s per-update canary thresholds.
    pub canary: Option<serde_json::Map<String, Value>>,
    pub waves: String,
    pub max_failures: u32,
    pub device_timeout: Duration,
}

/// A rollout: its plan, each device, and how far it has gone. Serialised, it is the state file
/// and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub schema: u32,
    /// The request id of every `ota/apply` of this rollout.
    pub request_id: String,
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<serde_json::Map<String, Value>>,
    pub waves: String,
    pub max_failures: u32,
    pub device_timeout_s: u64,
    #[serde(with = "rfc3339::required")]
    pub started_at: SystemTime,
    /// Waves started so far.
    pub waves_started: usize,
    pub devices: BTreeMap<String, Device>,
    /// Set once the failures passed `max_failures` (devices still updating are followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<End>,
    /// Which snapshot the journal's lines belong to (`journal.rs`): raised at each compaction,
    /// so that lines written before it are not replayed over it.
    #[serde(default)]
    pub generation: u64,
    /// Devices whose record changed since [`Rollout::take_changed`] (not kept).
    #[serde(skip)]
    changed: BTreeSet<String>,
    /// Whether each device is online now (from the retained statuses; not kept).
    #[serde(skip)]
    online: BTreeSet<String>,
    /// Devices to send the command again at the next step.
    #[serde(skip)]
    resend: BTreeSet<String>,
    /// Devices sent the command by an earlier run or before a reconnection that have shown no
    /// trace of it: moved to `resend` once [`RESEND_GRACE`] has passed since `unconfirmed_since`
    /// (the first step after they were gathered).
    #[serde(skip)]
    unconfirmed: BTreeSet<String>,
    #[serde(skip)]
    unconfirmed_since: Option<SystemTime>,
    /// Lines for the operator, taken with [`Rollout::take_notes`].
    #[serde(skip)]
    notes: Vec<String>,
}

/// A device id as a topic level: what `ota/apply` can be sent to.
fn device_id_ok(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#'])
}

impl Rollout {
    /// A new rollout of `plan` to `selection`, from the devices' retained statuses.
    pub fn new(
        plan: Plan,
        selection: Selection,
        statuses: &BTreeMap<String, DeviceStatus>,
        request_id: String,
        now: SystemTime,
    ) -> Result<Self, String> {
        let target = semver::Version::parse(&plan.version)
            .map_err(|e| format!("`{}` is not a semantic version such as 1.2.0 ({e})", plan.version))?;
        parse_waves(&plan.waves)?;
        let ids: Vec<String> = match selection {
            Selection::Devices(ids) => {
                if let Some(bad) = ids.iter().find(|id| !device_id_ok(id)) {
                    return Err(format!("--device `{bad}` is not a device id"));
                }
                ids
            }
            Selection::RunningModel => {
                let ids: Vec<String> =
                    statuses.iter().filter(|(_, s)| s.runs(&plan.name).is_some()).map(|(id, _)| id.clone()).collect();
                if ids.is_empty() {
                    return Err(format!(
                        "no device on the broker serves model `{}` ({} devices have a status); name the devices \
                         with --device",
                        plan.name,
                        statuses.len()
                    ));
                }
                ids
            }
        };
        // A device that looks for new model versions itself installs this one as soon as it
        // is signed, outside the waves: the two cannot be combined (vigil's own binary is
        // never installed by periodic checks).
        let self_updating: Vec<String> = if plan.name == VIGIL {
            Vec::new()
        } else {
            ids.iter().filter_map(|id| Some(format!("{id} (every {} s)", statuses.get(id)?.checks_every_s?))).collect()
        };
        if !self_updating.is_empty() {
            return Err(format!(
                "{} of the devices update `{}` themselves (ota.check_interval_s): {}; they would install {} on their \
                 own as soon as it is signed, outside the waves. Set ota.check_interval_s = 0 on them \
                 (config/set), or leave them out with --device",
                self_updating.len(),
                plan.name,
                self_updating.join(", "),
                plan.version
            ));
        }
        let mut devices = BTreeMap::new();
        for id in ids {
            let ran = statuses.get(&id).and_then(|s| s.runs(&plan.name)).map(str::to_owned);
            let current = ran.as_deref().and_then(|v| semver::Version::parse(v).ok()).is_some_and(|v| v >= target);
            let mut device = Device::new(if current { DeviceState::Current } else { DeviceState::Pending });
            if current {
                let verb = if plan.name == VIGIL { "runs" } else { "serves" };
                device.reason = Some(format!("already {verb} {}", ran.as_deref().unwrap_or_default()));
            }
            device.ran = ran;
            devices.insert(id, device);
        }
        let mut rollout = Self {
            schema: SCHEMA,
            request_id,
            name: plan.name,
            version: plan.version,
            canary: plan.canary,
            waves: plan.waves,
            max_failures: plan.max_failures,
            device_timeout_s: plan.device_timeout.as_secs().max(1),
            started_at: now,
            waves_started: 0,
            devices,
            aborting: None,
            end: None,
            generation: 0,
            changed: BTreeSet::new(),
            online: BTreeSet::new(),
            resend: BTreeSet::new(),
            unconfirmed: BTreeSet::new(),
            unconfirmed_since: None,
            notes: Vec::new(),
        };
        for (id, s) in statuses {
            rollout.on_status(id, s);
        }
        Ok(rollout)
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let rollout: Self = serde_json::from_slice(&bytes).map_err(|e| {
            format!("{} is not a vigil rollout state file ({e}); move it away to start a new rollout", path.display())
        })?;
        if rollout.schema != SCHEMA {
            return Err(format!(
                "{} has schema {}, this vigil reads {SCHEMA}: finish it with the vigil that started it",
                path.display(),
                rollout.schema
            ));
        }
        parse_waves(&rollout.waves).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(rollout)
    }

    /// Writes the state file durably (synced, renamed over the old one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("a rollout serialises");
        vigil_core::fsutil::write_durably(path, &bytes)
    }

    /// Goes on with a rollout read from its state file: unreached devices are tried again,
    /// devices sent the command are sent it again unless their `ota` topic (fed in before the
    /// next [`Rollout::step`]) or an answer within [`RESEND_GRACE`] shows it, and a raised
    /// `max_failures` lifts an abort it caused.
    pub fn resume(&mut self, max_failures: Option<u32>, device_timeout: Option<Duration>) {
        if let Some(m) = max_failures {
            self.max_failures = m;
        }
        if let Some(t) = device_timeout {
            self.device_timeout_s = t.as_secs().max(1);
        }
        if self.aborting.is_some() && self.failures() <= self.max_failures as usize {
            self.notes.push(format!(
                "the abort is lifted: {} failures, --max-failures {}",
                self.failures(),
                self.max_failures
            ));
            self.aborting = None;
            self.end = None;
        }
        for (id, d) in &mut self.devices {
            if d.state == DeviceState::Unreached {
                *d = Device { ran: d.ran.take(), ..Device::new(DeviceState::Pending) };
                self.changed.insert(id.clone());
                if self.end == Some(End::Complete) {
                    self.end = None;
                }
            }
        }
        // As after a reconnection: the earlier run's commands may still be on their way.
        self.requeue_sent();
    }

    /// Takes in one message from the broker: a device's status, its `ota` state, or its reply.
    pub fn on_message(&mut self, topic: &str, payload: &[u8], now: SystemTime) {
        match Topic::parse(topic, "") {
            Some(Topic::Status { device }) => {
                if let Some(s) = DeviceStatus::parse(payload) {
                    self.on_status(device, &s);
                }
            }
            Some(Topic::Ota { device }) => {
                if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                    self.on_ota(device, &v, now);
                }
            }
            Some(Topic::Reply { device, request }) if request == self.request_id => {
                if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                    self.on_reply(device, &v, now);
                }
            }
            _ => {}
        }
    }

    /// Whether `id`'s retained status says `online`.
    pub fn is_online(&self, id: &str) -> bool {
        self.online.contains(id)
    }

    fn on_status(&mut self, device: &str, status: &DeviceStatus) {
        if status.online {
            self.online.insert(device.to_owned());
        } else {
            self.online.remove(device);
        }
    }

    fn on_ota(&mut self, id: &str, v: &Value, now: SystemTime) {
        let request = v["request_id"].as_str().unwrap_or_default();
        let is_final = matches!(v["state"].as_str(), Some("successful" | "failed" | "rolled_back"));
        if request != self.request_id {
            // Another update of a device that waits for it: its outcome frees the device.
            if let Some(d) = self.devices.get_mut(id).filter(|d| d.waiting && is_final) {
                d.waiting = false;
                d.state = DeviceState::Sent;
                self.resend.insert(id.to_owned());
                self.changed.insert(id.to_owned());
                self.notes.push(format!("{id}: the other update ended; sending the command again"));
            }
            return;
        }
        let Some(d) = self.devices.get_mut(id) else { return };
        if d.state.is_final() {
            return;
        }
        d.waiting = false;
        self.resend.remove(id);
        self.unconfirmed.remove(id);
        self.changed.insert(id.to_owned());
        let phase = v["state"].as_str().unwrap_or("?");
        if let Some(lost) = v["detail"]["frames_lost_at_swap"].as_u64() {
            d.frames_lost_at_swap = Some(lost);
        }
        if !v["detail"]["canary"].is_null() {
            d.canary = Some(v["detail"]["canary"].clone());
        }
        let reason = v["reason"].as_str().map(str::to_owned);
        let outcome = match phase {
            "successful" => Some(DeviceState::Successful),
            "failed" => Some(DeviceState::Failed),
            "rolled_back" => Some(DeviceState::RolledBack),
            _ => None,
        };
        match outcome {
            Some(state) => {
                d.end(state, reason.clone(), now);
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                self.notes.push(format!("{id}: {phase}{why}"));
            }
            None => {
                if d.sent_at.is_none() {
                    d.sent_at = Some(now);
                }
                if d.phase.as_deref() != Some(phase) {
                    self.notes.push(format!("{id}: {phase}"));
                }
                d.state = DeviceState::Updating;
                d.phase = Some(phase.to_owned());
                d.reason = None;
            }
        }
    }

    fn on_reply(&mut self, id: &str, v: &Value, now: SystemTime) {
        let Some(d) = self.devices.get_mut(id) else { return };
        // A device that has shown an `ota` state of this rollout took the command: a refusal of
        // a second copy ("an update is in progress") is about that copy.
        if !matches!(d.state, DeviceState::Sent | DeviceState::Unreached) {
            return;
        }
        self.resend.remove(id);
        self.unconfirmed.remove(id);
        self.changed.insert(id.to_owned());
        if v["ok"] == true {
            d.state = DeviceState::Updating;
            d.phase = Some("queued".to_owned());
            d.reason = None;
            self.notes.push(format!("{id}: queued"));
        } else {
            let error = v["error"].as_str().unwrap_or("refused without a reason").to_owned();
            if error.starts_with(vigil_core::topic::UPDATE_IN_PROGRESS) {
                // Busy, not refused: either with this rollout's command from an earlier run (its
                // `ota` topic will show it) or with another update, after whose outcome the
                // command goes again. Bounded by the device timeout like any update.
                // (The device clears its busy flag before it publishes the outcome, so that
                // outcome comes after this reply.)
                d.state = DeviceState::Updating;
                d.phase = Some("waiting for the update under way".to_owned());
                d.waiting = true;
                if d.sent_at.is_none() {
                    d.sent_at = Some(now);
                }
                self.notes.push(format!("{id}: another update is under way; waiting for its outcome"));
                return;
            }
            self.notes.push(format!("{id}: refused: {error}"));
            d.end(DeviceState::Refused, Some(error), now);
        }
    }

    /// Failures so far (see [`DeviceState::is_failure`]).
    pub fn failures(&self) -> usize {
        self.devices.values().filter(|d| d.state.is_failure()).count()
    }

    /// Devices that need the update (all but those already current).
    fn total(&self) -> usize {
        self.devices.values().filter(|d| d.state != DeviceState::Current).count()
    }

    /// Moves the rollout on at `now`: timeouts, the abort, the next wave. Returns the devices to
    /// send `ota/apply` to now; the caller saves the state file before sending.
    pub fn step(&mut self, now: SystemTime) -> Vec<String> {
        if self.end.is_some() {
            return Vec::new();
        }
        let device_timeout = Duration::from_secs(self.device_timeout_s);
        for (id, d) in &mut self.devices {
            let since = d.sent_at.and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
            let resending = self.resend.contains(id) || self.unconfirmed.contains(id);
            if d.state == DeviceState::Sent && since >= REPLY_TIMEOUT && !resending {
                let why = format!(
                    "no answer to ota/apply within {} s (offline, or not subscribed yet): retried at the next run",
                    REPLY_TIMEOUT.as_secs()
                );
                self.notes.push(format!("{id}: unreached: {why}"));
                d.end(DeviceState::Unreached, Some(why), now);
                self.changed.insert(id.clone());
            } else if d.state == DeviceState::Updating && since >= device_timeout {
                let why = format!(
                    "no outcome within {} (last state: {}); the device may still finish: see its `ota` topic",
                    humantime::format_duration(device_timeout),
                    d.phase.as_deref().unwrap_or("?")
                );
                self.notes.push(format!("{id}: timed out: {why}"));
                d.end(DeviceState::TimedOut, Some(why), now);
                self.changed.insert(id.clone());
            }
        }
        if self.aborting.is_none() && self.failures() > self.max_failures as usize {
            let failed: Vec<String> = self
                .devices
                .iter()
                .filter(|(_, d)| d.state.is_failure())
                .map(|(id, d)| format!("{id} {}", state_word(d.state)))
                .collect();
            let why = format!(
                "{} failures, more than --max-failures {} ({}); no further device is sent the update",
                failed.len(),
                self.max_failures,
                failed.join(", ")
            );
            self.notes.push(format!("aborting: {why}"));
            self.aborting = Some(why);
        }
        if !self.unconfirmed.is_empty() {
            let since = *self.unconfirmed_since.get_or_insert_with(|| {
                self.notes.push(format!(
                    "{} devices were sent the command before and show no trace of it yet: they are sent it \
                     again unless they answer within {} s",
                    self.unconfirmed.len(),
                    RESEND_GRACE.as_secs()
                ));
                now
            });
            if now.duration_since(since).unwrap_or_default() >= RESEND_GRACE {
                self.resend.append(&mut self.unconfirmed);
                self.unconfirmed_since = None;
            }
        }
        let mut sends: Vec<String> = self.resend.iter().cloned().collect();
        self.resend.clear();
        for id in &sends {
            if let Some(d) = self.devices.get_mut(id) {
                d.sent_at = Some(now);
                self.changed.insert(id.clone());
            }
        }
        if self.devices.values().any(|d| d.state.in_flight()) {
            return sends;
        }
        if let Some(reason) = &self.aborting {
            self.end = Some(End::Aborted { reason: reason.clone() });
            return sends;
        }
        let targets = wave_targets(&parse_waves(&self.waves).expect("checked when read"), self.total());
        loop {
            // The wave under way (from 1; 0 before the first), topped up to its size when some of
            // its devices were unreached; the last takes every device online.
            let wave = self.waves_started;
            let last = wave == targets.len();
            let reached = self
                .devices
                .values()
                .filter(|d| d.wave.is_some() && !matches!(d.state, DeviceState::Pending | DeviceState::Unreached))
                .count();
            let want = match wave {
                _ if last => usize::MAX,
                0 => 0,
                w => targets[w - 1].saturating_sub(reached),
            };
            let drawn: Vec<String> = self
                .devices
                .iter()
                .filter(|(id, d)| d.state == DeviceState::Pending && self.online.contains(*id))
                .map(|(id, _)| id.clone())
                .take(want)
                .collect();
            if !drawn.is_empty() {
                let wave = wave.max(1);
                for id in &drawn {
                    let d = self.devices.get_mut(id).expect("drawn from devices");
                    d.state = DeviceState::Sent;
                    d.wave = Some(wave);
                    d.sent_at = Some(now);
                    self.changed.insert(id.clone());
                }
                self.notes.push(format!("wave {wave}/{}: {}", targets.len().max(1), drawn.join(", ")));
                sends.extend(drawn);
                return sends;
            }
            if last {
                break;
            }
            self.waves_started += 1;
        }
        for (id, d) in &mut self.devices {
            if d.state == DeviceState::Pending {
                let why = "offline throughout the rollout (no `online` status): retried at the next run".to_owned();
                self.notes.push(format!("{id}: unreached: {why}"));
                d.end(DeviceState::Unreached, Some(why), now);
                self.changed.insert(id.clone());
            }
        }
        self.end = Some(End::Complete);
        sends
    }

    /// The `ota/apply` request for every device of this rollout.
    pub fn request(&self) -> Value {
        let mut args = serde_json::json!({ "name": self.name, "version": self.version });
        if let Some(c) = &self.canary {
            args["canary"] = Value::Object(c.clone());
        }
        serde_json::json!({ "request_id": self.request_id, "args": args })
    }

    /// After the connection to the broker was lost and made again: the devices sent the command
    /// that have not been seen to take it are sent it again unless they answer within
    /// [`RESEND_GRACE`] (a command handed to the MQTT client may not have left before the
    /// connection went, and a clean session drops it). Call it once the retained `ota` topics
    /// have been gathered again, so that those that did take it are followed instead.
    pub fn requeue_sent(&mut self) {
        for (id, d) in &self.devices {
            if d.state == DeviceState::Sent {
                self.unconfirmed.insert(id.clone());
            }
        }
        self.unconfirmed_since = None;
    }

    /// The command to `id` was handed to the MQTT client at `now`: its reply timeout runs from
    /// here (commands queue behind each other in a large wave). Not journaled: after a restart
    /// every `sent` device is sent the command again anyway.
    pub fn handed_over(&mut self, id: &str, now: SystemTime) {
        if let Some(d) = self.devices.get_mut(id).filter(|d| d.state == DeviceState::Sent) {
            d.sent_at = Some(now);
        }
    }

    /// The devices whose record changed since the last call, for the journal.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Lines for the operator since the last call.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The exit status of `vigil fleet ota push`: 0 when every device serves the version, 1 when
    /// it was aborted or a device failed, 2 when it is complete but some devices were unreached.
    pub fn exit_code(&self) -> u8 {
        let unreached = self.devices.values().any(|d| d.state == DeviceState::Unreached);
        match &self.end {
            Some(End::Aborted { .. }) => 1,
            _ if self.failures() > 0 => 1,
            Some(End::Complete) if unreached => 2,
            Some(End::Complete) => 0,
            None => 1,
        }
    }
}

/// A device state as the report writes it.
pub fn state_word(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Pending => "pending",
        DeviceState::Sent => "sent",
        DeviceState::Updating => "updating",
        DeviceState::Successful => "successful",
        DeviceState::Failed => "failed",
        DeviceState::RolledBack => "rolled_back",
        DeviceState::Refused => "refused",
        DeviceState::TimedOut => "timed_out",
        DeviceState::Unreached => "unreached",
        DeviceState::Current => "current",
    }
}

/// Times in the state file as RFC 3339 (it is read by people too).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => required::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub mod required {
        use super::*;

        pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            humantime::parse_rfc3339_weak(&String::deserialize(d)?).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn serving(online: bool, version: &str) -> DeviceStatus {
        DeviceStatus {
            online,
            model: Some(("shapes".into(), version.into())),
            vigil: Some("0.1.0".into()),
            checks_every_s: None,
        }
    }

    /// `dev-1` … `dev-n`, online, serving shapes 1.0.0.
    fn fleet(n: usize) -> BTreeMap<String, DeviceStatus> {
        (1..=n).map(|i| (format!("dev-{i}"), serving(true, "1.0.0"))).collect()
    }

    fn plan(waves: &str, max_failures: u32) -> Plan {
        Plan {
            name: "shapes".into(),
            version: "1.0.1".into(),
            canary: None,
            waves: waves.into(),
            max_failures,
            device_timeout: Duration::from_secs(600),
        }
    }

    fn rollout(statuses: &BTreeMap<String, DeviceStatus>, waves: &str, max_failures: u32) -> Rollout {
        Rollout::new(plan(waves, max_failures), Selection::RunningModel, statuses, "push-1".into(), at(0)).unwrap()
    }

    fn ota(r: &mut Rollout, device: &str, request: &str, state: &str, t: u64) {
        let mut v = serde_json::json!({ "request_id": request, "name": "shapes", "version": "1.0.1", "state": state });
        match state {
            "canary" => v["detail"] = serde_json::json!({ "frames_lost_at_swap": 0 }),
            "successful" => {
                v["detail"] = serde_json::json!({ "canary": { "new": { "detections_per_frame": 3.4 },
                                                             "previous": { "detections_per_frame": 3.5 } } })
            }
            "failed" | "rolled_back" => v["reason"] = format!("{device} {state} on purpose").into(),
            _ => {}
        }
        r.on_message(&format!("vigil/{device}/ota"), v.to_string().as_bytes(), at(t));
    }

    fn reply(r: &mut Rollout, device: &str, ok: bool, t: u64) {
        let v = if ok {
            serde_json::json!({ "request_id": "push-1", "ok": true, "result": { "queued": true } })
        } else {
            serde_json::json!({ "request_id": "push-1", "ok": false, "error": "no [ota] section" })
        };
        r.on_message(&format!("vigil/{device}/reply/push-1"), v.to_string().as_bytes(), at(t));
    }

    /// `device` takes the command and ends in `outcome`.
    fn update(r: &mut Rollout, device: &str, outcome: &str, t: u64) {
        reply(r, device, true, t);
        for state in ["downloading", "accepting", "canary", outcome] {
            ota(r, device, "push-1", state, t + 1);
        }
    }

    fn state(r: &Rollout, device: &str) -> DeviceState {
        r.devices[device].state
    }

    #[test]
    fn waves_are_cumulative_each_adds_a_device_and_the_last_is_everyone() {
        use Wave::*;
        assert_eq!(parse_waves("1,10%,100%").unwrap(), [Devices(1), Percent(10), Percent(100)]);
        assert_eq!(parse_waves(" 2 , 50% ,100%").unwrap(), [Devices(2), Percent(50), Percent(100)]);
        let default = parse_waves("1,10%,100%").unwrap();
        assert_eq!(wave_targets(&default, 100), [1, 10, 100]);
        assert_eq!(wave_targets(&default, 10), [1, 2, 10], "10 % of 10 is one device: the wave adds one more");
        assert_eq!(wave_targets(&default, 3), [1, 2, 3]);
        assert_eq!(wave_targets(&default, 1), [1]);
        assert!(wave_targets(&default, 0).is_empty());
        assert_eq!(wave_targets(&parse_waves("5,50%,100%").unwrap(), 4), [4], "waves past the fleet are dropped");
        for (bad, says) in [
            ("", "neither a device count"),
            ("0,100%", "`0` is neither"),
            ("1,10%", "must end with 100%"),
            ("10%,5%,100%", "must rise"),
            ("3,2,100%", "must rise"),
            ("1,150%,100%", "`150%` is not a percentage"),
            ("one,100%", "`one` is neither"),
        ] {
            let e = parse_waves(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn each_wave_starts_once_every_device_of_the_previous_has_an_outcome() {
        let mut r = rollout(&fleet(3), "1,10%,100%", 0);
        assert_eq!(r.step(at(0)), ["dev-1"]);
        assert_eq!(r.request()["args"], serde_json::json!({ "name": "shapes", "version": "1.0.1" }));
        assert_eq!(r.request()["request_id"], "push-1");
        assert!(r.step(at(1)).is_empty(), "dev-1 has no outcome yet");
        reply(&mut r, "dev-1", true, 2);
        ota(&mut r, "dev-1", "push-1", "downloading", 3);
        assert_eq!(
            (state(&r, "dev-1"), r.devices["dev-1"].phase.as_deref()),
            (DeviceState::Updating, Some("downloading"))
        );
        assert!(r.step(at(4)).is_empty());
        for s in ["accepting", "canary", "successful"] {
            ota(&mut r, "dev-1", "push-1", s, 5);
        }
        let d = &r.devices["dev-1"];
        assert_eq!((d.state, d.frames_lost_at_swap, d.wave), (DeviceState::Successful, Some(0), Some(1)));
        assert_eq!(d.canary.as_ref().unwrap()["new"]["detections_per_frame"], 3.4);
        assert_eq!(r.step(at(6)), ["dev-2"]);
        update(&mut r, "dev-2", "successful", 7);
        assert_eq!(r.step(at(9)), ["dev-3"]);
        update(&mut r, "dev-3", "successful", 10);
        assert!(r.step(at(12)).is_empty());
        assert_eq!(r.end, Some(End::Complete));
        assert_eq!(r.exit_code(), 0);
        assert_eq!(r.devices.values().map(|d| d.wave.unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
        // Another rollout's states, and repeats of a final one, change nothing.
        ota(&mut r, "dev-3", "push-0", "failed", 13);
        ota(&mut r, "dev-3", "push-1", "rolled_back", 13);
        assert_eq!(state(&r, "dev-3"), DeviceState::Successful);
    }

    #[test]
    fn failures_over_the_limit_abort_and_devices_already_updating_are_followed_to_their_outcome() {
        let mut r = rollout(&fleet(5), "2,100%", 0);
        assert_eq!(r.step(at(0)), ["dev-1", "dev-2"]);
        update(&mut r, "dev-1", "rolled_back", 1);
        reply(&mut r, "dev-2", true, 1);
        assert!(r.step(at(3)).is_empty(), "dev-2 is still updating");
        assert!(r.aborting.as_ref().unwrap().contains("dev-1 rolled_back"), "{:?}", r.aborting);
        assert_eq!(r.end, None);
        ota(&mut r, "dev-2", "push-1", "successful", 4);
        assert!(r.step(at(5)).is_empty(), "nothing more is sent");
        match &r.end {
            Some(End::Aborted { reason }) => {
                assert!(reason.contains("1 failures, more than --max-failures 0"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.exit_code(), 1);
        assert_eq!(state(&r, "dev-3"), DeviceState::Pending);
        assert_eq!(r.devices["dev-1"].reason.as_deref(), Some("dev-1 rolled_back on purpose"));
        // Run again with a higher limit: the rollout goes on.
        r.resume(Some(1), None);
        assert_eq!(r.end, None);
        assert_eq!(r.step(at(6)), ["dev-3", "dev-4", "dev-5"]);
        update(&mut r, "dev-3", "failed", 7);
        update(&mut r, "dev-4", "successful", 7);
        update(&mut r, "dev-5", "successful", 7);
        r.step(at(9));
        assert!(matches!(r.end, Some(End::Aborted { .. })), "a second failure is over 1: {:?}", r.end);
    }

    #[test]
    fn a_refusal_is_a_failure_but_a_refused_second_copy_of_a_command_taken_is_not() {
        let mut r = rollout(&fleet(3), "2,100%", 1);
        assert_eq!(r.step(at(0)), ["dev-1", "dev-2"]);
        reply(&mut r, "dev-1", false, 1);
        assert_eq!(
            (state(&r, "dev-1"), r.devices["dev-1"].reason.as_deref()),
            (DeviceState::Refused, Some("no [ota] section"))
        );
        ota(&mut r, "dev-2", "push-1", "downloading", 1);
        reply(&mut r, "dev-2", false, 2);
        assert_eq!(state(&r, "dev-2"), DeviceState::Updating);
        ota(&mut r, "dev-2", "push-1", "successful", 3);
        assert_eq!(r.step(at(4)), ["dev-3"], "one failure is within --max-failures 1");
    }

    #[test]
    fn offline_devices_wait_for_a_later_wave_are_unreached_at_the_end_and_retried_at_the_next_run() {
        let mut statuses = fleet(3);
        statuses.insert("dev-1".into(), serving(false, "1.0.0"));
        let mut r = rollout(&statuses, "1,100%", 0);
        assert_eq!(r.step(at(0)), ["dev-2"], "dev-1 is offline");
        update(&mut r, "dev-2", "successful", 1);
        assert_eq!(r.step(at(3)), ["dev-3"]);
        update(&mut r, "dev-3", "successful", 4);
        assert!(r.step(at(6)).is_empty());
        assert_eq!(r.end, Some(End::Complete));
        assert_eq!(state(&r, "dev-1"), DeviceState::Unreached);
        assert!(r.devices["dev-1"].reason.as_ref().unwrap().contains("offline throughout"));
        assert_eq!(r.exit_code(), 2);
        r.resume(None, None);
        assert_eq!((r.end.clone(), state(&r, "dev-1")), (None, DeviceState::Pending));
        r.on_message(
            "vigil/dev-1/status",
            br#"{"state": "online", "model": {"name": "shapes", "version": "1.0.0"}}"#,
            at(7),
        );
        assert_eq!(r.step(at(8)), ["dev-1"]);
    }

    #[test]
    fn no_answer_makes_a_device_unreached_and_its_wave_takes_another_no_outcome_times_it_out() {
        let mut r = rollout(&fleet(3), "1,100%", 5);
        assert_eq!(r.step(at(0)), ["dev-1"]);
        assert!(r.step(at(29)).is_empty());
        assert_eq!(r.step(at(30)), ["dev-2"], "the first wave is still one device: dev-2 stands in for dev-1");
        assert_eq!((state(&r, "dev-1"), r.devices["dev-2"].wave), (DeviceState::Unreached, Some(1)));
        reply(&mut r, "dev-2", true, 31);
        assert!(r.step(at(629)).is_empty());
        assert!(r.step(at(630)).contains(&"dev-3".to_owned()), "dev-2 timed out after 600 s; the next wave starts");
        assert_eq!(state(&r, "dev-2"), DeviceState::TimedOut);
        assert!(r.devices["dev-2"].reason.as_ref().unwrap().contains("last state: queued"));
        // A late answer from the unreached device is followed.
        ota(&mut r, "dev-1", "push-1", "canary", 640);
        assert_eq!(state(&r, "dev-1"), DeviceState::Updating);
    }

    #[test]
    fn a_resumed_rollout_follows_devices_that_took_the_command_and_sends_it_again_to_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("push.json");
        let mut r = rollout(&fleet(4), "3,100%", 0);
        assert_eq!(r.step(at(0)), ["dev-1", "dev-2", "dev-3"]);
        r.save(&path).unwrap();
        let mut again = Rollout::load(&path).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&r).unwrap());
        again.resume(None, None);
        // Retained `ota` states as a new subscription sees them: dev-1 took this rollout's
        // command, dev-2 shows an older update, dev-3 nothing yet.
        ota(&mut again, "dev-1", "push-1", "downloading", 40);
        ota(&mut again, "dev-2", "push-0", "successful", 40);
        for id in ["dev-1", "dev-2", "dev-3", "dev-4"] {
            again.on_message(&format!("vigil/{id}/status"), br#"{"state": "online"}"#, at(40));
        }
        assert!(again.step(at(41)).is_empty(), "the earlier commands may still be on their way");
        // dev-3's command was still queued at the broker: it answers late, and is not sent again.
        reply(&mut again, "dev-3", true, 45);
        assert!(again.step(at(50)).is_empty());
        assert_eq!(again.step(at(51)), ["dev-2"], "sent again to dev-2 only, and no new wave");
        assert_eq!(again.devices["dev-2"].sent_at, Some(at(51)));
        assert!(again.step(at(80)).is_empty(), "dev-2's reply timeout runs from the new send");
        assert_eq!(state(&again, "dev-2"), DeviceState::Sent);
        again.step(at(81));
        assert_eq!(state(&again, "dev-2"), DeviceState::Unreached, "no answer to the second send within 30 s");
    }

    fn busy(r: &mut Rollout, device: &str, t: u64) {
        let error = format!("an update is in progress; follow vigil/{device}/ota and send ota/apply again");
        let v = serde_json::json!({ "request_id": "push-1", "ok": false, "error": error });
        r.on_message(&format!("vigil/{device}/reply/push-1"), v.to_string().as_bytes(), at(t));
    }

    #[test]
    fn a_device_busy_with_another_update_gets_the_command_again_after_it_and_is_no_failure() {
        let mut r = rollout(&fleet(1), "100%", 0);
        assert_eq!(r.step(at(0)), ["dev-1"]);
        busy(&mut r, "dev-1", 1);
        assert_eq!((state(&r, "dev-1"), r.devices["dev-1"].waiting, r.failures()), (DeviceState::Updating, true, 0));
        ota(&mut r, "dev-1", "periodic", "downloading", 2);
        assert!(r.step(at(3)).is_empty(), "still waiting");
        ota(&mut r, "dev-1", "periodic", "successful", 4);
        assert_eq!(r.step(at(5)), ["dev-1"], "the other update ended: sent again");
        update(&mut r, "dev-1", "successful", 6);
        r.step(at(8));
        assert_eq!((r.end.clone(), r.failures()), (Some(End::Complete), 0));
    }

    #[test]
    fn a_resumed_rollout_follows_a_device_that_answers_busy_with_this_rollouts_own_command() {
        let mut r = rollout(&fleet(1), "100%", 0);
        assert_eq!(r.step(at(0)), ["dev-1"]);
        // The operator's machine restarts before anything came back; the device's retained
        // `ota` message of this rollout has not arrived yet when the command goes again.
        let mut again: Rollout = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        again.resume(None, None);
        assert!(again.step(at(10)).is_empty());
        assert_eq!(again.step(at(20)), ["dev-1"]);
        busy(&mut again, "dev-1", 21);
        assert_eq!((state(&again, "dev-1"), again.failures()), (DeviceState::Updating, 0), "not refused");
        ota(&mut again, "dev-1", "push-1", "canary", 22);
        assert!(!again.devices["dev-1"].waiting, "its own update: followed");
        ota(&mut again, "dev-1", "push-1", "successful", 23);
        again.step(at(24));
        assert_eq!((state(&again, "dev-1"), again.end.clone()), (DeviceState::Successful, Some(End::Complete)));
    }

    #[test]
    fn devices_are_chosen_by_the_model_they_serve_or_by_name_and_current_ones_are_left_alone() {
        let mut statuses = fleet(2);
        statuses.insert("dev-3".into(), serving(true, "1.0.1"));
        statuses.insert("dev-4".into(), serving(true, "2.0.0"));
        statuses.insert(
            "other".into(),
            DeviceStatus {
                online: true,
                model: Some(("faces".into(), "1.0.0".into())),
                vigil: Some("0.2.0".into()),
                checks_every_s: None,
            },
        );
        let mut r = rollout(&statuses, "100%", 0);
        assert_eq!(r.devices.keys().collect::<Vec<_>>(), ["dev-1", "dev-2", "dev-3", "dev-4"]);
        assert_eq!((state(&r, "dev-3"), state(&r, "dev-4")), (DeviceState::Current, DeviceState::Current));
        assert_eq!(r.devices["dev-4"].reason.as_deref(), Some("already serves 2.0.0"));
        assert_eq!(r.step(at(0)), ["dev-1", "dev-2"]);
        let named = Selection::Devices(vec!["other".into(), "gone".into()]);
        let mut r = Rollout::new(plan("100%", 0), named, &statuses, "push-1".into(), at(0)).unwrap();
        assert_eq!(r.step(at(0)), ["other"], "`gone` has no status");
        update(&mut r, "other", "successful", 1);
        r.step(at(3));
        assert_eq!((r.end.clone(), state(&r, "gone")), (Some(End::Complete), DeviceState::Unreached));
        let none = Rollout::new(plan("100%", 0), Selection::RunningModel, &fleet(0), "p".into(), at(0)).unwrap_err();
        assert!(none.contains("no device on the broker serves model `shapes`") && none.contains("--device"), "{none}");
        let bad = Selection::Devices(vec!["a/b".into()]);
        let e = Rollout::new(plan("100%", 0), bad, &statuses, "p".into(), at(0)).unwrap_err();
        assert!(e.contains("`a/b` is not a device id"), "{e}");
        let mut latest = plan("100%", 0);
        latest.version = "latest".into();
        let e = Rollout::new(latest, Selection::RunningModel, &statuses, "p".into(), at(0)).unwrap_err();
        assert!(e.contains("not a semantic version"), "{e}");
        // vigil's own binary: every device, by the vigil version it runs.
        let mut binary = plan("100%", 0);
        (binary.name, binary.version) = ("vigil".into(), "0.2.0".into());
        let r = Rollout::new(binary, Selection::RunningModel, &statuses, "p".into(), at(0)).unwrap();
        assert_eq!(r.devices.len(), 5);
        assert_eq!((state(&r, "dev-1"), state(&r, "other")), (DeviceState::Pending, DeviceState::Current));
        assert_eq!(r.devices["other"].reason.as_deref(), Some("already runs 0.2.0"));
        // A device that updates its model itself would take the version outside the waves.
        let mut statuses = fleet(3);
        statuses.get_mut("dev-2").unwrap().checks_every_s = Some(3600);
        let e = Rollout::new(plan("1,100%", 0), Selection::RunningModel, &statuses, "p".into(), at(0)).unwrap_err();
        assert!(
            e.contains("1 of the devices update `shapes` themselves (ota.check_interval_s): dev-2 (every 3600 s)"),
            "{e}"
        );
        assert!(e.contains("Set ota.check_interval_s = 0 on them") && e.contains("--device"), "{e}");
        let others = Selection::Devices(vec!["dev-1".into(), "dev-3".into()]);
        assert!(Rollout::new(plan("1,100%", 0), others, &statuses, "p".into(), at(0)).is_ok(), "left out: fine");
        let mut binary = plan("100%", 0);
        (binary.name, binary.version) = ("vigil".into(), "0.2.0".into());
        assert!(
            Rollout::new(binary, Selection::RunningModel, &statuses, "p".into(), at(0)).is_ok(),
            "binaries: no conflict"
        );
        let parsed =
            DeviceStatus::parse(br#"{"state":"online","version":"0.1.0","ota_check_interval_s":600}"#).unwrap();
        assert_eq!(parsed.checks_every_s, Some(600));
    }

    #[test]
    fn a_state_file_that_is_not_one_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("push.json");
        std::fs::write(&path, "{ half").unwrap();
        let e = Rollout::load(&path).unwrap_err();
        assert!(e.contains("is not a vigil rollout state file") && e.contains("move it away"), "{e}");
        let mut v = serde_json::to_value(rollout(&fleet(1), "100%", 0)).unwrap();
        v["schema"] = 2.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Rollout::load(&path).unwrap_err();
        assert!(e.contains("has schema 2"), "{e}");
    }
}
