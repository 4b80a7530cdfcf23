//! The MQTT uplink: drains the sled outbox to the broker (QoS 1, oldest first, a bounded window
//! of unacknowledged messages), keeps a retained `status` with an `offline` last will, and
//! reconnects with backoff.
//!
//! rumqttc keeps its own queue in memory only; vigil therefore never relies on it. Each
//! connection gets a fresh client, and after every (re)connect the outbox is replayed from its
//! oldest entry: a message the broker may already have is sent again with the same event id
//! (at-least-once), and nothing is lost across disconnects or restarts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use vigil_config::{BrokerUrl, Config, TlsConfig};
use vigil_core::backoff::Backoff;
use vigil_core::stats::CameraState;
use vigil_core::topic;
use vigil_store::Store;

pub mod homeassistant;
pub mod metrics;
pub mod retained;
mod window;

use window::Window;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait between connection attempts: 250 ms doubling to 30 s, ±20 % jitter, so that a fleet
/// that lost its broker at once does not come back at once.
fn reconnect_backoff() -> Backoff {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
}
/// How long a stopping uplink keeps sending what is queued.
const DRAIN_ON_STOP: Duration = Duration::from_secs(2);
/// How long a clean shutdown waits for the broker to acknowledge the `offline` status.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: &'static str,
    pub device_id: String,
    pub version: &'static str,
    pub started_at: String,
    /// Seconds since start, when this status was published.
    pub uptime_s: u64,
    pub model: Option<StatusModel>,
    pub cameras: Vec<CameraStatus>,
    /// `ota.check_interval_s` when the device updates its model on its own (periodic checks):
    /// `vigil-ops fleet ota push` leaves such devices out of waves unless told (docs/ota.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_check_interval_s: Option<u64>,
    /// While the store refuses writes (a failing or read-only data disk): its last error.
    /// Events detected meanwhile cannot be kept, and are lost (docs/mqtt.md, `status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CameraStatus {
    pub id: String,
    /// Serialized as `starting`, `streaming`, `stalled`, `failed`, `finished` or `stopped`.
    pub state: CameraState,
}

/// The status the uplink publishes (retained) on connect and whenever it is told it changed.
#[derive(Clone)]
pub struct SharedStatus {
    current: Arc<std::sync::Mutex<Status>>,
    changed: Arc<Notify>,
    /// Set once the broker has accepted a connection (the health gate of `config/set`).
    connected_once: Arc<std::sync::atomic::AtomicBool>,
}

impl SharedStatus {
    pub fn new(status: Status) -> Self {
        Self {
            current: Arc::new(std::sync::Mutex::new(status)),
            changed: Arc::new(Notify::new()),
            connected_once: Arc::default(),
        }
    }

    /// Whether the broker has accepted a connection since vigil started.
    pub fn has_connected(&self) -> bool {
        self.connected_once.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self) -> Status {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records that the store refuses writes (`Some(error)`) or takes them again (`None`);
    /// republishes the retained status when that changed.
    pub fn set_store_error(&self, error: Option<String>) {
        self.update(|s| {
            let changed = s.store_error != error;
            s.store_error = error;
            changed
        });
    }

    /// Applies `f`; republishes the retained status if `f` says something changed.
    pub fn update(&self, f: impl FnOnce(&mut Status) -> bool) {
        let changed = f(&mut self.current.lock().unwrap_or_else(|p| p.into_inner()));
        if changed {
            self.changed.notify_one();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusModel {
    pub name: String,
    pub version: String,
    pub backend: String,
}

impl From<&vigil_core::event::ModelRef> for StatusModel {
    fn from(m: &vigil_core::event::ModelRef) -> Self {
        Self { name: m.name.clone(), version: m.version.clone(), backend: m.backend.clone() }
    }
}

impl Status {
    fn with_state(&self, state: &'static str) -> Vec<u8> {
        let mut s = self.clone();
        s.state = state;
        serde_json::to_vec(&s).expect("status always serialises")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

pub struct Uplink {
    options: MqttOptions,
    device_id: String,
    window: usize,
    status: SharedStatus,
    store: Store,
    /// Rung by the store writer after each durable batch.
    wake: Arc<Notify>,
    /// Fleet commands received, as (name after `cmd/`, payload). Bounded: when the command
    /// worker is behind, further commands are dropped with a warning (the asker times out).
    commands: Option<tokio::sync::mpsc::Sender<(String, Vec<u8>)>>,
    /// Home Assistant discovery: prefix, camera ids, and the sensors' latest states.
    home_assistant: Option<(String, Vec<String>, crate::homeassistant::HaStates)>,
    /// A retained state kept on the broker (the OTA state): published on each connection and
    /// whenever it changes; empty publishes nothing.
    retained: Option<(String, Arc<retained::RetainedLog>)>,
}

impl Uplink {
    pub fn new(config: &Config, status: SharedStatus, store: Store, wake: Arc<Notify>) -> Result<Self, UplinkError> {
        let url = BrokerUrl::parse(&config.mqtt.url).map_err(UplinkError::Url)?;
        let mut options = MqttOptions::new(config.client_id(), url.host.clone(), url.port);
        let window = usize::from(config.mqtt.max_inflight);
        options
            .set_keep_alive(config.mqtt.keep_alive)
            .set_clean_session(true)
            .set_inflight(config.mqtt.max_inflight.saturating_add(2))
            .set_max_packet_size(1 << 20, topic::MAX_PACKET_BYTES)
            .set_last_will(LastWill::new(
                topic::status(&config.device_id),
                status.get().with_state("offline"),
                QoS::AtLeastOnce,
                true,
            ));
        if url.tls {
            let tls = config.mqtt.tls.as_ref().ok_or_else(|| UplinkError::Tls("mqtts:// needs [mqtt.tls]".into()))?;
            if let Some(cert) = &tls.cert {
                check_identity(cert, &config.device_id)?;
            }
            options.set_transport(Transport::tls_with_config(rustls_config(tls)?.into()));
        }
        Ok(Self {
            options,
            device_id: config.device_id.clone(),
            window,
            status,
            store,
            wake,
            commands: None,
            home_assistant: None,
            retained: None,
        })
    }

    /// Publishes Home Assistant discovery on every connection, and `states` as they change.
    pub fn with_home_assistant(
        mut self,
        prefix: &str,
        cameras: Vec<String>,
        states: crate::homeassistant::HaStates,
    ) -> Self {
        self.home_assistant = Some((prefix.to_owned(), cameras, states));
        self
    }

    /// Hands Home Assistant messages to rumqttc (retained): the discovery configs and every
    /// state after a connect, only changed states otherwise.
    fn publish_home_assistant(&self, client: &AsyncClient, window: &mut Window, on_connect: bool) {
        use crate::homeassistant as ha;
        let Some((prefix, cameras, states)) = &self.home_assistant else { return };
        let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
        if on_connect {
            for cam in cameras {
                let config = serde_json::to_vec(&ha::sensor_config(&self.device_id, cam)).expect("JSON serialises");
                messages.push((ha::config_topic(prefix, &self.device_id, cam), config));
            }
        }
        let configs = messages.len();
        let taken = states.take(on_connect);
        for (cam, state) in &taken {
            messages.push((ha::state_topic(&self.device_id, cam), state.clone()));
        }
        for (i, (topic, payload)) in messages.into_iter().enumerate() {
            if client.try_publish(topic, QoS::AtLeastOnce, true, payload).is_ok() {
                window.handed_direct();
            } else if i >= configs {
                // rumqttc's queue is full: keep the state for the next round.
                states.mark_dirty(&taken[i - configs].0);
            } else {
                tracing::warn!(
                    "Home Assistant discovery config not sent (queue full); it is sent on the next connection"
                );
            }
        }
    }

    /// Keeps the states of `log` retained on `topic`: each sent in order and again until the
    /// broker acknowledges it, and the last one again on each new connection (`retained.rs`).
    pub fn with_retained(mut self, topic: String, log: Arc<retained::RetainedLog>) -> Self {
        self.retained = Some((topic, log));
        self
    }

    /// Hands the retained log's waiting states to rumqttc, in order; on a new connection with
    /// none waiting, the last acknowledged one again.
    fn publish_retained(&self, client: &AsyncClient, window: &mut Window, reconnected: bool) {
        let Some((topic, log)) = &self.retained else { return };
        if reconnected {
            if let Some(last) = log.reconnected() {
                if client.try_publish(topic.clone(), QoS::AtLeastOnce, true, last).is_ok() {
                    window.handed_direct();
                }
            }
        }
        for (seq, payload) in log.take_unhanded() {
            if client.try_publish(topic.clone(), QoS::AtLeastOnce, true, payload).is_ok() {
                window.handed_state(seq);
            } else {
                // rumqttc's queue is full: offered again on the next round.
                log.unhand(seq);
            }
        }
    }

    /// Subscribes to `vigil/<device_id>/cmd/#` on every connection and hands requests to `tx`.
    pub fn with_commands(mut self, tx: tokio::sync::mpsc::Sender<(String, Vec<u8>)>) -> Self {
        self.commands = Some(tx);
        self
    }

    fn on_publish(&self, topic: &str, payload: &[u8], retained: bool) {
        let (Some(tx), Some(name)) = (&self.commands, topic::command_name(topic, &self.device_id)) else { return };
        if retained {
            // A retained command would run again on every connection (a retained `restart`:
            // forever). Commands are requests, never state.
            tracing::warn!(command = name, "retained fleet command ignored; publish commands without the retain flag");
            return;
        }
        if tx.try_send((name.to_owned(), payload.to_vec())).is_err() {
            tracing::warn!(command = name, "fleet command dropped: too many waiting");
        }
    }

    /// Runs until `cancel`; then publishes `offline` and disconnects.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = reconnect_backoff();
        let mut window = Window::new(self.window);
        while !cancel.is_cancelled() {
            let (client, eventloop) = AsyncClient::new(self.options.clone(), self.window + 8);
            match self.session(&client, eventloop, &cancel, &mut backoff, &mut window).await {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection lost");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One connection's life. `Ok` means a clean shutdown; `Err` a lost connection.
    async fn session(
        &self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
        window: &mut Window,
    ) -> Result<(), rumqttc::ConnectionError> {
        let status_topic = topic::status(&self.device_id);
        let mut connected = false;
        // A new connection owes the broker the retained state again.
        let mut reconnected = false;
        loop {
            if connected {
                self.publish_retained(client, window, std::mem::take(&mut reconnected));
                self.fill_window(client, window);
            }
            tokio::select! {
                event = eventloop.poll() => match event? {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        tracing::info!(outbox = self.store.outbox_len(), "MQTT connected");
                        self.status.connected_once.store(true, std::sync::atomic::Ordering::Relaxed);
                        connected = true;
                        backoff.reset();
                        // A new connection: nothing is in flight; send again from the oldest entry.
                        window.reconnected();
                        // Subscribed before `online` goes out: the broker takes packets in order,
                        // so a command sent once the status says `online` reaches the device.
                        if self.commands.is_some() {
                            let _ = client.try_subscribe(topic::command_filter(&self.device_id), QoS::AtLeastOnce);
                        }
                        self.publish_online(client, &status_topic, window);
                        self.publish_home_assistant(client, window, true);
                        reconnected = true;
                    }
                    Event::Incoming(Packet::Publish(p)) => self.on_publish(&p.topic, &p.payload, p.retain),
                    other => self.track_publish(&other, window),
                },
                _ = self.wake.notified(), if connected => {}
                _ = async { match &self.home_assistant { Some((_, _, s)) => s.changed.notified().await, None => std::future::pending().await } }, if connected => {
                    self.publish_home_assistant(client, window, false);
                }
                _ = self.status.changed.notified(), if connected => self.publish_online(client, &status_topic, window),
                () = async { match &self.retained { Some((_, log)) => log.changed.notified().await, None => std::future::pending().await } }, if connected => {}
                _ = cancel.cancelled() => {
                    if connected {
                        self.drain(client, &mut eventloop, window).await;
                    }
                    self.goodbye(client, &mut eventloop, &status_topic).await;
                    return Ok(());
                }
            }
        }
    }

    /// Hands the retained `online` status, as it is now, to rumqttc.
    fn publish_online(&self, client: &AsyncClient, topic: &str, window: &mut Window) {
        if client.try_publish(topic, QoS::AtLeastOnce, true, self.status.get().with_state("online")).is_ok() {
            window.handed_direct();
        }
    }

    /// Follows a publish from rumqttc's queue (its packet id) to its PUBACK, when the outbox
    /// entry it carried is removed.
    fn track_publish(&self, event: &Event, window: &mut Window) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => window.sent(*pkid),
            Event::Incoming(Packet::PubAck(ack)) => match window.released(ack.pkid) {
                Some(window::Tag::Outbox(key)) => {
                    if let Err(e) = self.store.outbox_remove(key) {
                        tracing::error!(error = %e, "cannot remove an acknowledged message from the outbox");
                    }
                }
                Some(window::Tag::State(seq)) => {
                    if let Some((_, log)) = &self.retained {
                        log.acked(seq);
                    }
                }
                Some(window::Tag::Direct) | None => {}
            },
            _ => {}
        }
    }

    /// On the way out: sends what the outbox still holds (the events ended by the shutdown
    /// among them), for at most [`DRAIN_ON_STOP`]. What is left is sent at the next start.
    async fn drain(&self, client: &AsyncClient, eventloop: &mut EventLoop, window: &mut Window) {
        let drained = tokio::time::timeout(DRAIN_ON_STOP, async {
            loop {
                self.fill_window(client, window);
                let more = self.store.outbox_after(window.cursor(), 1).map(|e| !e.is_empty()).unwrap_or(false);
                if window.is_idle() && !more {
                    return;
                }
                match eventloop.poll().await {
                    Ok(ev) => self.track_publish(&ev, window),
                    Err(_) => return,
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                outbox = self.store.outbox_len(),
                "stopping with messages still queued; they go at the next start"
            );
        }
    }

    /// Hands outbox entries to rumqttc until the window of unacknowledged messages is full.
    fn fill_window(&self, client: &AsyncClient, window: &mut Window) {
        let room = window.room();
        if room == 0 {
            return;
        }
        let entries = match self.store.outbox_after(window.cursor(), room) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        for (key, entry) in entries {
            if client.try_publish(entry.topic, QoS::AtLeastOnce, false, entry.payload).is_err() {
                // rumqttc's request queue is sized above the window, so this means it is closing.
                return;
            }
            window.handed(key);
        }
    }

    /// Publishes the retained `offline` status (a clean disconnect sends no last will) and
    /// disconnects, waiting briefly for the broker.
    async fn goodbye(&self, client: &AsyncClient, eventloop: &mut EventLoop, topic: &str) {
        if client.try_publish(topic, QoS::AtLeastOnce, true, self.status.get().with_state("offline")).is_err() {
            return;
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

pub fn new_status(config: &Config, model: Option<StatusModel>) -> Status {
    Status {
        state: "online",
        device_id: config.device_id.clone(),
        version: vigil_core::build::version(),
        started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        uptime_s: 0,
        model,
        cameras: config
            .cameras
            .iter()
            .map(|c| CameraStatus { id: c.id.clone(), state: CameraState::Starting })
            .collect(),
        ota_check_interval_s: config.ota.as_ref().and_then(|o| o.check_every).map(|d| d.as_secs()),
        store_error: None,
    }
}

/// The fleet broker names a client by its certificate's CN and lets it write only
/// `vigil/<CN>/…`; a publish it refuses is still acknowledged (MQTT 3.1.1), so a CN that is not
/// the device id would make every event vanish. Refuse to start instead.
pub fn check_identity(cert: &std::path::Path, device_id: &str) -> Result<(), UplinkError> {
    let pem = read_pem(cert)?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or_else(|| UplinkError::Tls(format!("{} holds no PEM certificate", cert.display())))?
        .map_err(|e| UplinkError::Tls(format!("{}: {e}", cert.display())))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| UplinkError::Tls(format!("{}: not an X.509 certificate: {e}", cert.display())))?;
    let cn = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    match cn {
        Some(cn) if cn == device_id => Ok(()),
        Some(cn) => Err(UplinkError::Tls(format!(
            "{} is issued to `{cn}`, but device_id is `{device_id}`: the fleet broker's ACL would drop every message; \
             use this device's own certificate, or set device_id to `{cn}`",
            cert.display()
        ))),
        None => Err(UplinkError::Tls(format!(
            "{} has no common name; the fleet broker needs CN = device_id (`{device_id}`)",
            cert.display()
        ))),
    }
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, UplinkError> {
    vigil_tls::read_pem(path).map_err(UplinkError::Tls)
}

/// A rustls client configuration on the ring provider: the CA bundle verifies the broker, and a
/// client certificate, when configured, proves the device (mutual TLS).
pub fn rustls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, UplinkError> {
    let client = tls.cert.as_deref().zip(tls.key.as_deref());
    vigil_tls::client_config(&tls.ca, client).map_err(UplinkError::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_that_lost_its_broker_does_not_reconnect_in_lockstep() {
        // Every device's first retry was exactly 250 ms before jitter; now they spread over ±20 %.
        let firsts: Vec<Duration> = (0..20).map(|_| reconnect_backoff().next_wait()).collect();
        let (lo, hi) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
        assert!(*hi - *lo >= Duration::from_millis(20), "first retries bunched within {:?}: {firsts:?}", *hi - *lo);
        assert!(*lo >= BACKOFF_MIN.mul_f64(0.8) && *hi <= BACKOFF_MIN.mul_f64(1.2), "{firsts:?}");
    }

    /// On tokio's paused clock, a minute of a broker that takes each connection and hangs up at
    /// once: the attempts follow the backoff (7 to 9: 0.25 + 0.5 + 1 + … s), not a loop (over
    /// 150 with the waits cut a thousandfold).
    #[tokio::test(start_paused = true)]
    async fn a_broker_that_hangs_up_is_retried_on_the_backoff_not_in_a_loop() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(conn); // hang up before CONNACK
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mut config = vigil_config::Config::for_tests();
        config.mqtt.url = format!("mqtt://127.0.0.1:{port}");
        let store = Store::open(dir.path()).unwrap();
        let status = SharedStatus::new(new_status(&config, None));
        let uplink = Uplink::new(&config, status, store, Arc::new(Notify::new())).unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(uplink.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        // Real time (not the paused clock) for the accepting thread to count the last ones.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let attempts = accepted.load(Ordering::SeqCst);
        assert!((5..=12).contains(&attempts), "{attempts} connection attempts in a virtual minute");
    }
}
