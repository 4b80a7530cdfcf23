//! `vigil-ops fleet ota push` and `vigil-ops fleet ota report`: a [`Rollout`] driven over MQTT.
//! One connection, polled by a thread of its own (keep-alive never waits for the rollout),
//! follows every device's retained `status` and `ota` topics and the replies to the rollout's
//! request id. Messages are taken in batches, each followed by one [`Rollout::step`]; the
//! journal (`journal.rs`) is synced before each batch of `ota/apply` goes out, so the same
//! command run again (after Ctrl-C, or the operator's machine restarting) goes on where it was.
//! A lost connection is made again, subscribed again, and the retained states gathered again
//! before anything more is decided.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use anyhow::{bail, Context};
use rumqttc::{Client, QoS};
use vigil_core::topic::{self, Topic};

use crate::fleet::{connect, pump, FleetArgs, Net};
use crate::journal::{self, StateFile};
use crate::rollout::{state_word, DeviceState, DeviceStatus, End, Plan, Rollout, Selection};

/// Waves when `--waves` is not given: one device, then a tenth of them, then the rest.
pub const DEFAULT_WAVES: &str = "1,10%,100%";
const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The device segment of the fence's topic: no device id can be it (ids have no `.`).
const FENCE_DEVICE: &str = ".fence";

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The target's name as signed (`vigil-ota add --name`): a model's, or `vigil` for vigil's
    /// own binary.
    pub name: String,
    /// Its exact version: every device of the rollout gets the same.
    pub version: String,
    /// Devices to update (repeat, or separate with commas); without it, every device whose
    /// retained status names the model (for `vigil`: every device).
    #[arg(long = "device", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Cumulative wave sizes: device counts or percentages, ending with 100% [default: 1,10%,100%].
    #[arg(long)]
    pub waves: Option<String>,
    /// Failures (failed, rolled back, refused, timed out) tolerated before no further device is
    /// sent the update [default: 0]. Raise it when running a rollout again to go on after an abort.
    #[arg(long)]
    pub max_failures: Option<u32>,
    /// How long one device may take from the command to its outcome [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub device_timeout: Option<Duration>,
    /// Canary thresholds for this rollout, as JSON (any `[ota.canary]` key), e.g. '{"min_frames": 600}'.
    #[arg(long)]
    pub canary: Option<String>,
    /// The state file (and report) [default: vigil-push-<name>-<version>.json]. When it exists,
    /// the rollout in it goes on.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Print the devices and waves, send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum OtaCommand {
    /// Rolls a signed model target out to devices in waves, following each to its outcome;
    /// exit 0 when every device serves it, 1 when aborted or a device failed, 2 when some were
    /// unreached (run it again to retry them).
    Push(PushArgs),
    /// Prints a rollout's report from its state file.
    Report {
        state: PathBuf,
        /// The whole rollout as JSON (the state file with its journal applied), instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(fleet: &FleetArgs, command: &OtaCommand) -> anyhow::Result<u8> {
    match command {
        OtaCommand::Push(args) => push(fleet, args),
        OtaCommand::Report { state, json } => {
            let rollout = journal::load(state).map_err(anyhow::Error::msg)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rollout)?);
            } else {
                print!("{}", report(&rollout, state));
            }
            Ok(rollout.exit_code())
        }
    }
}

fn push(fleet: &FleetArgs, args: &PushArgs) -> anyhow::Result<u8> {
    let path =
        args.state.clone().unwrap_or_else(|| PathBuf::from(format!("vigil-push-{}-{}.json", args.name, args.version)));
    let existing = match path.try_exists() {
        Ok(true) => Some(journal::load(&path).map_err(anyhow::Error::msg)?),
        Ok(false) => None,
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    if let Some(r) = &existing {
        if (r.name.as_str(), r.version.as_str()) != (args.name.as_str(), args.version.as_str()) {
            bail!(
                "{} holds the rollout of {} {}, not of {} {}: give this one its own --state",
                path.display(),
                r.name,
                r.version,
                args.name,
                args.version
            );
        }
        if args.waves.is_some() || !args.devices.is_empty() || args.canary.is_some() {
            eprintln!(
                "note: going on with the rollout in {}: its devices, waves and canary were fixed when it started \
                 (--device, --waves and --canary are ignored)",
                path.display()
            );
        }
    }
    let canary = match &args.canary {
        None => None,
        Some(json) => {
            Some(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json).with_context(|| {
                format!("--canary must be a JSON object of [ota.canary] keys, e.g. '{{\"min_frames\": 600}}': {json}")
            })?)
        }
    };
    let request_id =
        existing.as_ref().map_or_else(|| format!("push-{}", uuid::Uuid::now_v7().simple()), |r| r.request_id.clone());
    let mut link = Link::connect(fleet, &request_id)?;
    let retained = link.settle()?;
    let now = SystemTime::now();
    let mut rollout = match existing {
        Some(mut r) => {
            eprintln!("going on with the rollout in {}", path.display());
            r.resume(args.max_failures, args.device_timeout);
            r
        }
        None => {
            let statuses: BTreeMap<String, DeviceStatus> = retained
                .iter()
                .filter_map(|(t, p)| match Topic::parse(t, "") {
                    Some(Topic::Status { device }) => DeviceStatus::parse(p).map(|s| (device.to_owned(), s)),
                    _ => None,
                })
                .collect();
            let plan = Plan {
                name: args.name.clone(),
                version: args.version.clone(),
                canary,
                waves: args.waves.clone().unwrap_or_else(|| DEFAULT_WAVES.to_owned()),
                max_failures: args.max_failures.unwrap_or(0),
                device_timeout: args.device_timeout.unwrap_or(DEFAULT_DEVICE_TIMEOUT),
            };
            let selection = if args.devices.is_empty() {
                Selection::RunningModel
            } else {
                Selection::Devices(args.devices.clone())
            };
            Rollout::new(plan, selection, &statuses, request_id, now).map_err(anyhow::Error::msg)?
        }
    };
    for (t, p) in &retained {
        rollout.on_message(t, p, now);
    }
    drop(retained);
    if args.dry_run {
        print!("{}", plan_text(&rollout));
        link.close();
        return Ok(0);
    }
    eprint!("{}", plan_text(&rollout));
    eprintln!("state: {} (run the same command again to go on after an interruption)", path.display());
    let mut state = StateFile::start(&path, &mut rollout)
        .with_context(|| format!("cannot write the state file {}", path.display()))?;
    let request = serde_json::to_vec(&rollout.request())?;
    // Bounded by the rollout's devices: each is in it at most once per step.
    let mut outgoing: VecDeque<String> = VecDeque::new();
    loop {
        // Nothing is decided while the retained states are being gathered again after a
        // reconnection: a device's progress may be on its way.
        if link.ready() {
            let now = SystemTime::now();
            if link.take_reconnected() {
                rollout.requeue_sent();
                outgoing.clear();
            }
            let sends = rollout.step(now);
            // Only once the journal says `sent` on disk may the command go out.
            state
                .record(&mut rollout, !sends.is_empty())
                .with_context(|| format!("cannot write the state file {}", path.display()))?;
            // What the operator reads has happened: it is on disk.
            for note in rollout.take_notes() {
                eprintln!("{}  {note}", humantime::format_rfc3339_seconds(now));
            }
            outgoing.extend(sends);
        }
        while let Some(device) = outgoing.front().filter(|_| link.ready()) {
            match link.client.try_publish(topic::command(device, "ota/apply"), QoS::AtLeastOnce, false, request.clone())
            {
                Ok(()) => {
                    rollout.handed_over(device, SystemTime::now());
                    outgoing.pop_front();
                }
                Err(rumqttc::ClientError::TryRequest(_)) => break,
                Err(e) => bail!("cannot send ota/apply: {e}"),
            }
        }
        if rollout.end.is_some() && outgoing.is_empty() {
            break;
        }
        // A batch of messages, then one step: the step looks at every device.
        let wait = if outgoing.is_empty() { Duration::from_millis(200) } else { Duration::from_millis(5) };
        link.gather(wait, |topic, payload| rollout.on_message(topic, payload, SystemTime::now()));
    }
    state.record(&mut rollout, true).with_context(|| format!("cannot write the state file {}", path.display()))?;
    eprintln!("state: {} ({} bytes written by this run)", path.display(), state.written);
    link.close();
    print!("{}", report(&rollout, &path));
    Ok(rollout.exit_code())
}

/// Messages the network thread may hold for the rollout; it waits (and so reads no more from
/// the broker) only when the rollout falls this far behind.
const NET_QUEUE: usize = 65_536;
/// The MQTT client's queue of commands waiting for the network thread.
const REQUEST_QUEUE: usize = 1024;
/// How long a batch of messages is gathered once its first has come.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// A broker that sends nothing at all for this long while the retained states are gathered is
/// not answering.
const SILENT_AT_MOST: Duration = Duration::from_secs(60);

/// The operator's MQTT connection for a rollout: subscribed (again after each reconnection) to
/// every status, every `ota` topic and the replies to `request_id`. Its own thread polls the
/// connection, so keep-alive pings go out whatever the rollout is doing.
struct Link {
    client: Client,
    events: Receiver<Net>,
    broker: String,
    /// The topic of the message that marks the end of the retained ones ([`Link::settle`]).
    fence: String,
    /// The fence being waited for (its payload); `None` once it came back.
    awaiting: Option<String>,
    /// The client's queue was full when the fence was to go out: it is tried again.
    fence_unsent: bool,
    fences: u64,
    connected: bool,
    /// Connected at least once (a failure before that is an error, not an outage).
    ever: bool,
    /// A reconnection whose retained states have come back since [`Link::take_reconnected`].
    reconnected: bool,
    /// When the last connection error was printed (one line per outage, not one per retry).
    complained: Option<Instant>,
    /// Set by the network thread while its connection is up.
    up: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Link {
    fn connect(fleet: &FleetArgs, request_id: &str) -> anyhow::Result<Self> {
        let (client, connection) = connect(fleet, REQUEST_QUEUE)?;
        let filters = vec![topic::status("+"), topic::ota("+"), topic::reply("+", request_id)];
        let (tx, events) = std::sync::mpsc::sync_channel(NET_QUEUE);
        let subscriber = client.clone();
        let up = Arc::new(AtomicBool::new(false));
        let thread = {
            let up = up.clone();
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || pump(connection, &subscriber, &filters, &tx, &up))
                .context("cannot start the network thread")?
        };
        Ok(Self {
            client,
            events,
            broker: fleet.broker.clone(),
            fence: topic::reply(FENCE_DEVICE, request_id),
            awaiting: None,
            fence_unsent: false,
            fences: 0,
            connected: false,
            ever: false,
            reconnected: false,
            complained: None,
            up,
            thread: Some(thread),
        })
    }

    /// Subscribed, and every retained message of this connection's subscriptions is in. The
    /// network thread's own flag goes down at once when the connection fails, before the
    /// rollout hears of it, so that no command is handed over to be sent on a later connection.
    fn ready(&self) -> bool {
        self.connected && self.ever && self.awaiting.is_none() && self.fences > 0 && self.up.load(Ordering::SeqCst)
    }

    fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.reconnected)
    }

    /// Waits for the subscriptions and collects the retained messages that follow them, until
    /// they are all in: the broker sends a subscription's retained messages before anything
    /// published after it was taken, so a message of our own (the fence), published once the
    /// subscriptions are acknowledged to a topic they cover, comes back after the last of them.
    /// A fixed wait would plan on a partial view when the broker is slow, and send a device the
    /// command again while its retained `ota` topic is still on its way. A connection lost
    /// meanwhile starts the gathering again.
    fn settle(&mut self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut messages = Vec::new();
        while !self.ready() {
            self.send_fence();
            let wait = if self.fence_unsent { Duration::from_millis(10) } else { SILENT_AT_MOST };
            match self.events.recv_timeout(wait) {
                Ok(Net::Down(e)) if !self.ever => bail!("cannot reach the broker at {}: {e}", self.broker),
                Ok(event) => {
                    if let Some(m) = self.on_event(event) {
                        messages.push(m);
                    }
                }
                Err(RecvTimeoutError::Timeout) if self.fence_unsent => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "the broker at {} sent nothing for {} s while the devices' retained states were gathered ({} \
                     received)",
                    self.broker,
                    SILENT_AT_MOST.as_secs(),
                    messages.len()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!("the connection to {} closed", self.broker),
            }
        }
        self.reconnected = false;
        Ok(messages)
    }

    /// Hands `on` a batch of messages: waits up to `wait` for the first, then takes what
    /// arrives within [`BATCH_WINDOW`] of it (at most [`NET_QUEUE`]), so that the rollout steps
    /// at most every few milliseconds however fast messages come.
    fn gather(&mut self, wait: Duration, mut on: impl FnMut(&str, &[u8])) {
        self.send_fence();
        let Ok(first) = self.events.recv_timeout(wait) else { return };
        let until = Instant::now() + BATCH_WINDOW;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next.take() {
            if let Some((topic, payload)) = self.on_event(event) {
                on(&topic, &payload);
            }
            taken += 1;
            let left = until.saturating_duration_since(Instant::now());
            if taken < NET_QUEUE {
                next = match self.events.try_recv() {
                    Ok(event) => Some(event),
                    Err(_) if left.is_zero() => None,
                    Err(_) => self.events.recv_timeout(left).ok(),
                };
            }
        }
    }

    fn on_event(&mut self, event: Net) -> Option<(String, Vec<u8>)> {
        match event {
            Net::Connected => {
                if self.ever {
                    eprintln!(
                        "{}  connected to {} again; gathering the devices' states before going on",
                        humantime::format_rfc3339_seconds(SystemTime::now()),
                        self.broker
                    );
                }
                self.connected = true;
                self.awaiting = None;
                self.fences = 0;
                self.complained = None;
                None
            }
            Net::Subscribed => {
                self.fences += 1;
                self.awaiting = Some(format!("{}-{}", std::process::id(), self.fences));
                self.fence_unsent = true;
                self.send_fence();
                None
            }
            Net::Message(topic, payload) => {
                if topic == self.fence {
                    if self.awaiting.as_deref().is_some_and(|m| m.as_bytes() == payload) {
                        self.awaiting = None;
                        if self.ever {
                            self.reconnected = true;
                        }
                        self.ever = true;
                    }
                    return None;
                }
                Some((topic, payload))
            }
            Net::Down(e) => {
                self.connected = false;
                if self.complained.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    eprintln!(
                        "{}  the broker at {}: {e}; reconnecting (the rollout waits)",
                        humantime::format_rfc3339_seconds(SystemTime::now()),
                        self.broker
                    );
                    self.complained = Some(Instant::now());
                }
                None
            }
        }
    }

    /// Publishes the fence awaited, if it has not gone out yet. No command is queued while the
    /// link is not ready, so the client's queue has room for it but in a freak case.
    fn send_fence(&mut self) {
        if let (true, Some(mark)) = (self.fence_unsent, &self.awaiting) {
            let sent = self.client.try_publish(self.fence.clone(), QoS::AtLeastOnce, false, mark.clone().into_bytes());
            self.fence_unsent = sent.is_err();
        }
    }

    fn close(mut self) {
        let _ = self.client.try_disconnect();
        // The thread ends at the disconnection (or when the connection fails); bounded wait.
        let until = Instant::now() + Duration::from_secs(2);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Err(RecvTimeoutError::Disconnected) = self.events.recv_timeout(left) {
                break;
            }
        }
        if let Some(t) = self.thread.take().filter(|t| t.is_finished()) {
            let _ = t.join();
        }
    }
}

/// The devices and waves of a rollout, before it runs.
fn plan_text(r: &Rollout) -> String {
    let count = |s: DeviceState| r.devices.values().filter(|d| d.state == s).count();
    let waves = crate::rollout::parse_waves(&r.waves).expect("checked when read");
    let need = r.devices.len() - count(DeviceState::Current);
    let targets = crate::rollout::wave_targets(&waves, need);
    let offline: Vec<&str> = r
        .devices
        .iter()
        .filter(|(id, d)| d.state == DeviceState::Pending && !r.is_online(id))
        .map(|(id, _)| id.as_str())
        .collect();
    let mut text = format!(
        "rollout of {} {} ({}): {} devices, {need} to update, {} already current; waves reach {targets:?} devices; \
         abort after {} failures\n",
        r.name,
        r.version,
        r.request_id,
        r.devices.len(),
        count(DeviceState::Current),
        r.max_failures
    );
    if !offline.is_empty() {
        text.push_str(&format!("offline now (sent the update once online): {}\n", offline.join(", ")));
    }
    text
}

/// The report: how the rollout ended, then one line per device.
pub fn report(r: &Rollout, path: &Path) -> String {
    let mut text = match &r.end {
        Some(End::Complete) => format!("rollout of {} {}: complete\n", r.name, r.version),
        Some(End::Aborted { reason }) => format!(
            "rollout of {} {}: ABORTED: {reason}\n  (to go on anyway, run it again with a higher --max-failures)\n",
            r.name, r.version
        ),
        None => format!(
            "rollout of {} {}: not finished (go on with `vigil fleet ota push {} {} --state {}`)\n",
            r.name,
            r.version,
            r.name,
            r.version,
            path.display()
        ),
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in r.devices.values() {
        *counts.entry(state_word(d.state)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    text.push_str(&format!("  {}\n", counts.join(", ")));
    text.push_str(&format!("{:<24} {:>4}  {:<11} {:>8}  {}\n", "DEVICE", "WAVE", "OUTCOME", "TOOK", "DETAIL"));
    for (id, d) in &r.devices {
        let wave = d.wave.map_or("-".to_owned(), |w| w.to_string());
        let took = match (d.sent_at, d.ended_at) {
            (Some(a), Some(b)) => b.duration_since(a).map_or("-".to_owned(), |t| format!("{} s", t.as_secs())),
            _ => "-".to_owned(),
        };
        let state = match (d.state, &d.phase) {
            (DeviceState::Updating, Some(p)) => p.as_str(),
            (s, _) => state_word(s),
        };
        let detail = if d.state == DeviceState::Successful {
            let mut parts = Vec::new();
            if let Some(lost) = d.frames_lost_at_swap {
                parts.push(format!("frames lost at swap {lost}"));
            }
            if let Some(c) = &d.canary {
                if let (Some(new), Some(old)) =
                    (c["new"]["detections_per_frame"].as_f64(), c["previous"]["detections_per_frame"].as_f64())
                {
                    parts.push(format!("canary {new:.2} detections/frame against {old:.2}"));
                }
            }
            parts.join("; ")
        } else {
            d.reason.clone().unwrap_or_default()
        };
        text.push_str(&format!("{id:<24} {wave:>4}  {state:<11} {took:>8}  {detail}\n"));
    }
    text
}
