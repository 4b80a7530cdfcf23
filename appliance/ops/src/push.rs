//! `vigil fleet ota push` and `vigil fleet ota report`: a [`Rollout`] driven over MQTT. One
//! connection follows every device's retained `status` and `ota` topics and the replies to the
//! rollout's request id; the state file is written before each `ota/apply` goes out, so the same
//! command run again (after Ctrl-C, or the operator's machine restarting) goes on where it was.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use rumqttc::{Client, Connection, Event, Packet, QoS, RecvTimeoutError};
use vigil_core::topic::{self, Topic};

use crate::fleet::{connect, FleetArgs};
use crate::rollout::{state_word, DeviceState, DeviceStatus, End, Plan, Rollout, Selection};

/// Waves when `--waves` is not given: one device, then a tenth of them, then the rest.
pub const DEFAULT_WAVES: &str = "1,10%,100%";
const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest the retained messages are waited for after subscribing (see [`Link::settle`]).
const SETTLE_AT_MOST: Duration = Duration::from_secs(30);
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
        /// The state file as it is (JSON), instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(fleet: &FleetArgs, command: &OtaCommand) -> anyhow::Result<u8> {
    match command {
        OtaCommand::Push(args) => push(fleet, args),
        OtaCommand::Report { state, json } => {
            let rollout = Rollout::load(state).map_err(anyhow::Error::msg)?;
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
        Ok(true) => Some(Rollout::load(&path).map_err(anyhow::Error::msg)?),
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
    if args.dry_run {
        print!("{}", plan_text(&rollout));
        link.close();
        return Ok(0);
    }
    eprint!("{}", plan_text(&rollout));
    eprintln!("state: {} (run the same command again to go on after an interruption)", path.display());
    let request = serde_json::to_vec(&rollout.request())?;
    let mut saved = Vec::new();
    let mut outgoing: VecDeque<String> = VecDeque::new();
    loop {
        let now = SystemTime::now();
        let sends = rollout.step(now);
        for note in rollout.take_notes() {
            eprintln!("{}  {note}", humantime::format_rfc3339_seconds(now));
        }
        let bytes = serde_json::to_vec(&rollout)?;
        if bytes != saved {
            rollout.save(&path).with_context(|| format!("cannot write the state file {}", path.display()))?;
            saved = bytes;
        }
        // Only once the state file says `sent` may the command go out.
        outgoing.extend(sends);
        while let Some(device) = outgoing.front() {
            match link.client.try_publish(topic::command(device, "ota/apply"), QoS::AtLeastOnce, false, request.clone())
            {
                Ok(()) => {
                    outgoing.pop_front();
                }
                Err(rumqttc::ClientError::TryRequest(_)) => break,
                Err(e) => bail!("cannot send ota/apply: {e}"),
            }
        }
        if rollout.end.is_some() && outgoing.is_empty() {
            break;
        }
        if let Some((topic, payload)) = link.next(Duration::from_millis(500)) {
            rollout.on_message(&topic, &payload, SystemTime::now());
        }
    }
    link.close();
    print!("{}", report(&rollout, &path));
    Ok(rollout.exit_code())
}

/// The operator's MQTT connection for a rollout: subscribed (again after each reconnection) to
/// every status, every `ota` topic and the replies to `request_id`.
struct Link {
    client: Client,
    connection: Connection,
    filters: Vec<String>,
    subscribed: bool,
    broker: String,
    /// When the last connection error was printed (one line per outage, not one per retry).
    complained: Option<Instant>,
    /// The topic of the message that marks the end of the retained ones ([`Link::settle`]).
    fence: String,
}

impl Link {
    fn connect(fleet: &FleetArgs, request_id: &str) -> anyhow::Result<Self> {
        let (client, connection) = connect(fleet)?;
        let filters = vec![topic::status("+"), topic::ota("+"), topic::reply("+", request_id)];
        let fence = topic::reply(FENCE_DEVICE, request_id);
        Ok(Self {
            client,
            connection,
            filters,
            subscribed: false,
            broker: fleet.broker.clone(),
            complained: None,
            fence,
        })
    }

    /// Waits for the subscriptions and collects the retained messages that follow them, until
    /// they are all in: the broker sends a subscription's retained messages before anything
    /// published after it was taken, so a message of our own (the fence), published once the
    /// subscriptions are acknowledged to a topic they cover, comes back after the last of them.
    /// A fixed wait would plan on a partial view when the broker is slow, and send a device the
    /// command again while its retained `ota` topic is still on its way.
    fn settle(&mut self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let give_up = Instant::now() + Duration::from_secs(15);
        let mut messages = Vec::new();
        while !self.subscribed {
            if Instant::now() > give_up {
                bail!("the broker at {} did not take the subscriptions within 15 s", self.broker);
            }
            match self.connection.recv_timeout(Duration::from_millis(500)) {
                Ok(Ok(event)) => messages.extend(self.on_event(event)),
                Ok(Err(e)) => bail!("cannot reach the broker at {}: {e}", self.broker),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("the connection to {} closed", self.broker),
            }
        }
        let fenced = self.client.try_publish(self.fence.clone(), QoS::AtLeastOnce, false, b"fence".to_vec()).is_ok();
        let until = Instant::now() + SETTLE_AT_MOST;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some((topic, _)) if fenced && topic == self.fence => return Ok(messages),
                Some(message) => messages.push(message),
                None => {}
            }
        }
        eprintln!(
            "warning: the broker at {} did not finish sending the retained states within {} s; going on with the {} received",
            self.broker,
            SETTLE_AT_MOST.as_secs(),
            messages.len()
        );
        Ok(messages)
    }

    /// The next message within `timeout`; connection errors are reported and retried.
    fn next(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        match self.connection.recv_timeout(timeout) {
            Ok(Ok(event)) => self.on_event(event),
            Ok(Err(e)) => {
                if self.complained.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    eprintln!("the broker at {}: {e}; reconnecting (the rollout waits)", self.broker);
                    self.complained = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_secs(1));
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                None
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<(String, Vec<u8>)> {
        match event {
            // A clean session: subscribe on every connection.
            Event::Incoming(Packet::ConnAck(_)) => {
                self.subscribed = false;
                let filters = self.filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    eprintln!("cannot subscribe: {e}");
                }
                None
            }
            Event::Incoming(Packet::SubAck(_)) => {
                self.subscribed = true;
                None
            }
            Event::Incoming(Packet::Publish(p)) => Some((p.topic, p.payload.to_vec())),
            _ => None,
        }
    }

    fn close(mut self) {
        let _ = self.client.disconnect();
        let until = Instant::now() + Duration::from_secs(2);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
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
