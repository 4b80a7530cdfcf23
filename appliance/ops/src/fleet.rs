//! `vigil fleet`: the operator's side of the MQTT interface. Lists devices from their retained
//! `status`, shows one, sends a command and waits for its reply, watches events or metrics, and
//! rolls a model update out in waves (`vigil fleet ota`, in `push.rs`).
//! It talks to the fleet broker with the operator's own certificate (mutual TLS) or, for a
//! local demo broker, plain TCP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS, Transport};

use vigil_config::{BrokerUrl, TlsConfig};
use vigil_core::topic::{self, Topic};

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    // The connection options are global: they go before or after the subcommand
    // (`vigil fleet --broker URL list` and `vigil fleet list --broker URL`).
    /// The fleet broker: mqtts://host:port (TLS) or mqtt://host:port (local demos).
    #[arg(long, global = true, env = "VIGIL_FLEET_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// CA bundle that signs the broker's certificate (mqtts://).
    #[arg(long, global = true, env = "VIGIL_FLEET_CA")]
    pub ca: Option<PathBuf>,
    /// The operator's certificate and key (mutual TLS).
    #[arg(long, global = true, env = "VIGIL_FLEET_CERT")]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true, env = "VIGIL_FLEET_KEY")]
    pub key: Option<PathBuf>,
    /// The MQTT client id [default: vigil-fleet-<pid>-<random>]. The broker closes an older
    /// connection with the same id, so give each running tool its own.
    #[arg(long, global = true, env = "VIGIL_FLEET_CLIENT_ID")]
    pub client_id: Option<String>,
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Devices that have published a status, with their state.
    List {
        /// The longest to wait for the retained statuses. They are all in once a marker the
        /// tool publishes after subscribing comes back, which is usually much sooner.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// One device's retained status, as JSON.
    Show { device: String },
    /// Sends a command and prints its reply; exit 0 if it succeeded, 1 if refused, 2 on no reply.
    Cmd {
        device: String,
        /// status, config/get, config/set, restart, snapshot, events/query, events/get (docs/mqtt.md).
        name: String,
        /// The command's args, as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Prints a device's events (or metrics) as JSON lines; `+` watches every device.
    Watch {
        device: String,
        #[arg(long)]
        metrics: bool,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Serves the fleet's state for Prometheus: every device's status, metrics and update
    /// state, at http://LISTEN/metrics (docs/mqtt.md, "Prometheus").
    Exporter {
        #[arg(long, default_value = "127.0.0.1:9469")]
        listen: std::net::SocketAddr,
    },
    /// Model and vigil updates across the fleet: `push` a signed target in waves, `report` on a rollout.
    Ota {
        #[command(subcommand)]
        command: crate::push::OtaCommand,
    },
}

/// The QoS of the tools' subscriptions. A clean session loses undelivered QoS 1 messages at a
/// disconnection just as it loses QoS 0 ones, so QoS 1 buys a subscriber nothing; and rumqttd
/// sends at most its in-flight window (100) of a subscription's retained messages at QoS 1,
/// dropping the rest (docs/fleet.md, "Brokers"). What the tools publish stays QoS 1.
pub const SUBSCRIBE_QOS: QoS = QoS::AtMostOnce;

/// Exit statuses of `vigil fleet cmd`.
pub const REFUSED: u8 = 1;
pub const NO_REPLY: u8 = 2;

/// A connection to the fleet broker; `queue` requests may wait for the connection's thread.
pub(crate) fn connect(args: &FleetArgs, queue: usize) -> anyhow::Result<(Client, Connection)> {
    let url = BrokerUrl::parse(&args.broker).map_err(|e| anyhow::anyhow!("--broker: {e}"))?;
    let id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("vigil-fleet-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()));
    let mut opts = MqttOptions::new(id, url.host, url.port);
    opts.set_keep_alive(Duration::from_secs(15)).set_max_packet_size(4 << 20, 4 << 20);
    if url.tls {
        let ca = args.ca.clone().context("mqtts:// needs --ca (and --cert/--key for mutual TLS)")?;
        let tls = TlsConfig { ca, cert: args.cert.clone(), key: args.key.clone() };
        let config = vigil_uplink::rustls_config(&tls)?;
        opts.set_transport(Transport::tls_with_config(config.into()));
    }
    Ok(Client::new(opts, queue))
}

/// What a network thread ([`pump`]) tells its tool.
pub(crate) enum Net {
    /// Connected (again): the subscriptions were asked for.
    Connected,
    Subscribed,
    Message(String, Vec<u8>),
    /// The connection failed or was lost; rumqttc connects again.
    Down(String),
}

/// The network thread: polls the connection (pings, reconnections), subscribes on every
/// connection (clean sessions), and passes on what the tool needs. Ends when the client
/// disconnects or the tool is gone. `up` is set while the connection is.
///
/// A command handed to the client while the connection was down must not go out on the next
/// one: the rollout sends the devices it reached no trace of again once it has gathered their
/// states, and a late copy would be a second command. So before each attempt to connect again,
/// what waits in the client's queue is moved to rumqttc's pending list (`clean`), which a clean
/// session's CONNACK empties.
pub(crate) fn pump(
    mut connection: Connection,
    client: &Client,
    filters: &[String],
    tx: &SyncSender<Net>,
    up: &AtomicBool,
) {
    let mut failed = false;
    loop {
        if std::mem::take(&mut failed) {
            connection.eventloop.clean();
        }
        let event = match connection.recv() {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                up.store(true, Ordering::SeqCst);
                let subs = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), SUBSCRIBE_QOS));
                if let Err(e) = client.try_subscribe_many(subs) {
                    Net::Down(format!("cannot subscribe: {e}"))
                } else {
                    Net::Connected
                }
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => Net::Subscribed,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => Net::Message(p.topic, p.payload.to_vec()),
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                up.store(false, Ordering::SeqCst);
                failed = true;
                let down = Net::Down(e.to_string());
                if tx.send(down).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(_) => return,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// Subscribes to `filters` and calls `on` for each message until it returns false or `until`.
fn listen(
    args: &FleetArgs,
    filters: &[String],
    until: Option<Instant>,
    mut on: impl FnMut(&str, &[u8]) -> bool,
    after_subscribe: impl FnOnce(&Client) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (client, mut connection) = connect(args, 32)?;
    for f in filters {
        client.subscribe(f, SUBSCRIBE_QOS)?;
    }
    let mut after = Some(after_subscribe);
    let mut acks = 0;
    loop {
        let timeout = match until {
            Some(u) => u.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(60),
        };
        if timeout.is_zero() {
            break;
        }
        match connection.recv_timeout(timeout) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                acks += 1;
                if acks == filters.len() {
                    if let Some(f) = after.take() {
                        f(&client)?;
                    }
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if !on(&p.topic, &p.payload) {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("cannot reach the broker at {}: {e}", args.broker),
            // Without a deadline (watch), a quiet minute is just a quiet minute.
            Err(rumqttc::RecvTimeoutError::Timeout) if until.is_none() => {}
            Err(rumqttc::RecvTimeoutError::Timeout) => break,
            Err(rumqttc::RecvTimeoutError::Disconnected) => bail!("the connection to {} closed", args.broker),
        }
    }
    let _ = client.disconnect();
    Ok(())
}

/// Runs a `vigil fleet` command; `Ok(code)` is the exit status.
pub fn run(args: &FleetArgs) -> anyhow::Result<u8> {
    match &args.command {
        FleetCommand::List { wait } => {
            let mut devices: BTreeMap<String, serde_json::Value> = BTreeMap::new();
            // The broker sends a subscription's retained messages before it acknowledges it, so
            // a message published after the acknowledgements comes back after all of them.
            let fence = topic::reply(".fence", &uuid::Uuid::now_v7().simple().to_string());
            let mut complete = false;
            listen(
                args,
                &[topic::status("+"), fence.clone()],
                Some(Instant::now() + *wait),
                |topic, payload| {
                    if topic == fence {
                        complete = true;
                        return false;
                    }
                    if let (Some(Topic::Status { device }), Ok(v)) =
                        (Topic::parse(topic, ""), serde_json::from_slice(payload))
                    {
                        devices.insert(device.to_owned(), v);
                    }
                    true
                },
                |client| Ok(client.try_publish(&fence, QoS::AtLeastOnce, false, b"fence".to_vec())?),
            )?;
            if !complete {
                eprintln!(
                    "warning: the broker did not finish sending the statuses within {}; the list may be partial",
                    humantime::format_duration(*wait)
                );
            }
            if devices.is_empty() {
                eprintln!("no device has published a status on {}", args.broker);
            }
            for (id, s) in &devices {
                let str_of = |k: &str| s[k].as_str().unwrap_or("?").to_owned();
                let model = s["model"]["name"]
                    .as_str()
                    .map_or(String::new(), |n| format!("{n} {}", s["model"]["version"].as_str().unwrap_or("")));
                println!(
                    "{id:<24} {:<8} {:<10} since {}  {model}",
                    str_of("state"),
                    str_of("version"),
                    str_of("started_at")
                );
            }
            Ok(0)
        }
        FleetCommand::Show { device } => {
            let mut found = None;
            listen(
                args,
                &[topic::status(device)],
                Some(Instant::now() + Duration::from_secs(3)),
                |_, p| {
                    found = serde_json::from_slice::<serde_json::Value>(p).ok();
                    false
                },
                |_| Ok(()),
            )?;
            match found {
                Some(s) => {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                    Ok(0)
                }
                None => {
                    eprintln!("device `{device}` has no status on {}", args.broker);
                    Ok(NO_REPLY)
                }
            }
        }
        FleetCommand::Cmd { device, name, args: json, timeout } => {
            let cmd_args: serde_json::Value =
                serde_json::from_str(json).with_context(|| format!("--args is not JSON: {json}"))?;
            let request_id = uuid::Uuid::now_v7().simple().to_string();
            let request = serde_json::to_vec(&serde_json::json!({ "request_id": request_id, "args": cmd_args }))?;
            let reply_topic = topic::reply(device, &request_id);
            let cmd_topic = topic::command(device, name);
            let mut reply = None;
            listen(
                args,
                &[reply_topic],
                Some(Instant::now() + *timeout),
                |_, p| {
                    reply = serde_json::from_slice::<serde_json::Value>(p).ok();
                    false
                },
                |client| Ok(client.try_publish(&cmd_topic, QoS::AtLeastOnce, false, request.clone())?),
            )?;
            match reply {
                Some(r) => {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                    Ok(if r["ok"] == true { 0 } else { REFUSED })
                }
                None => {
                    eprintln!(
                        "no reply from `{device}` within {} (is it online? `vigil fleet list`)",
                        humantime::format_duration(*timeout)
                    );
                    Ok(NO_REPLY)
                }
            }
        }
        FleetCommand::Watch { device, metrics, count } => {
            let topic = if *metrics { topic::metrics(device) } else { topic::events(device) };
            let mut seen = 0usize;
            listen(
                args,
                &[topic],
                None,
                |_, p| {
                    println!("{}", String::from_utf8_lossy(p));
                    seen += 1;
                    count.is_none_or(|c| seen < c)
                },
                |_| Ok(()),
            )?;
            Ok(0)
        }
        FleetCommand::Exporter { listen } => crate::exporter::run(args, *listen),
        FleetCommand::Ota { command } => crate::push::run(args, command),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fleet: FleetArgs,
    }

    #[test]
    fn connection_options_go_before_or_after_the_subcommand() {
        let before = ["fleet", "--broker", "mqtts://b:8883", "--ca", "ca.pem", "list"];
        let after = ["fleet", "list", "--broker", "mqtts://b:8883", "--ca", "ca.pem", "--wait", "1s"];
        let cmd =
            ["fleet", "cmd", "dev-1", "status", "--cert", "op.pem", "--key", "op.key", "--broker", "mqtts://b:8883"];
        for argv in [&before[..], &after[..], &cmd[..]] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cli.fleet.broker, "mqtts://b:8883", "{argv:?}");
        }
        let cli = Cli::try_parse_from(cmd).unwrap();
        assert_eq!((cli.fleet.cert, cli.fleet.key), (Some("op.pem".into()), Some("op.key".into())));
        assert!(matches!(cli.fleet.command, FleetCommand::Cmd { ref device, .. } if device == "dev-1"));
        let cli = Cli::try_parse_from(after).unwrap();
        assert_eq!(cli.fleet.ca, Some(PathBuf::from("ca.pem")));
        assert!(matches!(cli.fleet.command, FleetCommand::List { wait } if wait == Duration::from_secs(1)));
    }
}
