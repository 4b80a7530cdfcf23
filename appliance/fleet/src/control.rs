//! The local control socket: `<data_dir>/vigil.sock`, owner-only, read-only.
//!
//! One process owns the sled store, so while vigil runs, `vigil events …` asks the service
//! instead of opening the store. A request is one line, `<command> <JSON request>`, with the same
//! commands and request shape as over MQTT ([`crate::commands`]); every request gets one line
//! back, the same reply JSON. `events/tail` then keeps the connection and sends a line per stored
//! lifecycle message: `{"event": {...}}`, or `{"lagged": n}` when `n` bursts were missed because
//! the reader fell behind. Commands that change the device (`config/set`, `restart`) are refused
//! here: they go through the fleet, where they are authenticated and audited.
//!
//! Only the service's own user (and root) may connect: the socket file is 0600 and each peer's
//! uid is checked. Everything is bounded: connections, tails, commands running at once (apart
//! from the fleet's), request lines, idle time.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;

/// A connection's request lines.
type Requests = FramedRead<tokio::net::unix::OwnedReadHalf, AnyDelimiterCodec>;

use crate::commands::{self, Command, Fleet, Reply, TailArgs};
use vigil_core::event::Event;
use vigil_store::query::EventsQuery;

pub const SOCKET_FILE: &str = "vigil.sock";
/// Request connections served at once; one more is told to try again.
const MAX_CLIENTS: usize = 8;
/// Tails followed at once (they hold their connection; counted apart from requests).
const MAX_TAILS: usize = 8;
/// Commands from the socket running at once: separate from the fleet's, so that local use
/// cannot hold up fleet commands.
const COMMANDS_AT_ONCE: usize = 2;
/// Longest request line: a request plus the command name.
const MAX_LINE: usize = commands::MAX_REQUEST_BYTES + 128;
/// A request connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request client that does not take its reply within this is dropped. (A tail reader may
/// stall as long as it likes: it is told what it missed.)
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown, how long a tail reader gets for each of the last lines (the shutdown's `end`s).
const LAST_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bursts of stored events kept for slow tail readers; beyond it they are told what they missed.
pub const TAIL_BURSTS: usize = 256;

/// Bursts of events just made durable, for `events/tail`.
pub type StoredEvents = broadcast::Sender<Arc<[Event]>>;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A bound control socket.
pub struct Server {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `<data_dir>/vigil.sock`, replacing a socket left by a process that died: call it
    /// only once the store is open (the store's lock says no other vigil uses this directory).
    pub fn bind(data_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let path = socket_path(data_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; move it away", path.display()),
                ))
            }
            Err(_) => {}
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }

    /// Serves until `cancel`; then waits for its clients (tails send what was stored before the
    /// stop) and removes the socket.
    pub fn spawn(
        self,
        fleet: Arc<Fleet>,
        stored: StoredEvents,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let shared = Arc::new(Shared {
            fleet,
            stored,
            commands: Semaphore::new(COMMANDS_AT_ONCE),
            tails: Arc::new(Semaphore::new(MAX_TAILS)),
        });
        let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
        let tracker = tokio_util::task::TaskTracker::new();
        let me = rustix::process::geteuid().as_raw();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = cancel.cancelled() => break,
                    got = self.listener.accept() => match got {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "control socket: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                match stream.peer_cred().map(|c| c.uid()) {
                    Ok(uid) if uid == me || uid == 0 => {}
                    other => {
                        tracing::warn!(peer = ?other, "control socket: connection from another user refused");
                        continue;
                    }
                }
                let Ok(slot) = clients.clone().try_acquire_owned() else {
                    let (_, mut w) = stream.into_split();
                    let busy = Reply::error("busy", format!("{MAX_CLIENTS} clients are connected; try again"));
                    let _ = write_line(&mut w, &busy, WRITE_TIMEOUT).await;
                    continue;
                };
                tracker.spawn(shared.clone().serve(stream, slot, cancel.clone()));
            }
            tracker.close();
            tracker.wait().await;
            let _ = std::fs::remove_file(&self.path);
        })
    }
}

struct Shared {
    fleet: Arc<Fleet>,
    stored: StoredEvents,
    commands: Semaphore,
    tails: Arc<Semaphore>,
}

impl Shared {
    async fn serve(
        self: Arc<Self>,
        stream: tokio::net::UnixStream,
        slot: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) {
        let (r, mut w) = stream.into_split();
        // Request lines, each at most MAX_LINE bytes (bytes, not text: a line that is not UTF-8
        // gets a refusal from the parser, like any other bad request).
        let mut r = FramedRead::new(r, AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_LINE));
        loop {
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(IDLE_TIMEOUT) => return,
                line = r.next() => line,
            };
            let line = match read {
                None | Some(Err(AnyDelimiterCodecError::Io(_))) => return,
                Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                    let too_long = Reply::error("invalid", format!("request line over {MAX_LINE} bytes"));
                    let _ = write_line(&mut w, &too_long, WRITE_TIMEOUT).await;
                    return;
                }
                Some(Ok(line)) => line,
            };
            let text = line.trim_ascii();
            let space = text.iter().position(|b| *b == b' ').unwrap_or(text.len());
            let name = String::from_utf8_lossy(&text[..space]).into_owned();
            let request = match commands::parse(&name, text[space..].trim_ascii()) {
                Ok(r) => r,
                Err(refusal) => {
                    let id = refusal.request_id.unwrap_or_else(|| "invalid".to_owned());
                    if write_line(&mut w, &Reply::error(&id, refusal.message), WRITE_TIMEOUT).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let id = request.request_id;
            let reply = match request.command {
                Command::EventsTail(args) => match self.tails.clone().try_acquire_owned() {
                    Ok(tail_slot) => {
                        drop(slot); // a tail holds a tail slot, not a request slot
                        return self.tail(&id, args, r, w, &cancel, tail_slot).await;
                    }
                    Err(_) => Reply::error(&id, format!("{MAX_TAILS} tails are following already; stop one")),
                },
                Command::ConfigSet { .. } | Command::Restart { .. } => Reply::error(
                    &id,
                    format!(
                        "{name} changes the device: send it over MQTT (`vigil-ops fleet cmd`); the local socket is \
                         read-only"
                    ),
                ),
                command => {
                    let Ok(_permit) = self.commands.acquire().await else { return };
                    let fleet = self.fleet.clone();
                    match tokio::task::spawn_blocking(move || fleet.execute(&command)).await {
                        Ok(result) => Reply::new(&id, result),
                        Err(_) => Reply::error(&id, "the command failed (see vigil's log)".into()),
                    }
                }
            };
            if write_line(&mut w, &reply, WRITE_TIMEOUT).await.is_err() {
                return;
            }
        }
    }

    /// Answers, sends the newest `args.last` stored events, then every event as it is stored,
    /// until the client hangs up or vigil stops.
    async fn tail(
        &self,
        request_id: &str,
        args: TailArgs,
        mut r: Requests,
        mut w: OwnedWriteHalf,
        cancel: &CancellationToken,
        _slot: OwnedSemaphorePermit,
    ) {
        // Subscribed before the backlog is read: an event stored meanwhile is sent (perhaps in
        // both), never missed.
        let mut rx = self.stored.subscribe();
        let backlog = if args.last == 0 {
            Ok(Vec::new())
        } else {
            let q = EventsQuery { camera: args.camera.clone(), label: args.label.clone(), ..EventsQuery::default() };
            let Ok(_permit) = self.commands.acquire().await else { return };
            let (store, n) = (self.fleet.store.clone(), args.last);
            tokio::task::spawn_blocking(move || vigil_store::query::newest_stored(&store, q, n))
                .await
                .unwrap_or_else(|_| Err("the query failed (see vigil's log)".into()))
        };
        let backlog = match backlog {
            Ok(b) => b,
            Err(e) => {
                let _ = write_line(&mut w, &Reply::error(request_id, e), WRITE_TIMEOUT).await;
                return;
            }
        };
        let following = Reply::new(request_id, Ok(serde_json::json!({ "following": true })));
        if write_line(&mut w, &following, WRITE_TIMEOUT).await.is_err() {
            return;
        }
        // Writes wait as long as the reader needs (a pager); a stop interrupts them.
        for e in &backlog {
            if !send_line(&mut w, &serde_json::json!({ "event": e }), cancel).await {
                return;
            }
        }
        loop {
            let line = tokio::select! {
                // Stored events first, so that a stop does not cut in before them.
                biased;
                got = rx.recv() => match got {
                    Ok(burst) => {
                        for e in burst.iter().filter(|e| args.wants(e)) {
                            if !send_line(&mut w, &serde_json::json!({ "event": e }), cancel).await {
                                return; // gone, or stopped mid-line: nothing more can be sent
                            }
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => serde_json::json!({ "lagged": n }),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = cancel.cancelled() => break,
                // Anything from the client, or its hang-up, ends the tail.
                _ = r.next() => return,
            };
            if !send_line(&mut w, &line, cancel).await {
                return;
            }
        }
        // Stopping between lines: what was stored before the stop (the shutdown's `end`s) still
        // goes out, each line within a short time.
        while let Ok(burst) = rx.try_recv() {
            for e in burst.iter().filter(|e| args.wants(e)) {
                if write_line(&mut w, &serde_json::json!({ "event": e }), LAST_WRITE_TIMEOUT).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes one line, waiting as long as the reader needs unless `cancel` comes first.
async fn send_line(w: &mut OwnedWriteHalf, value: &serde_json::Value, cancel: &CancellationToken) -> bool {
    let mut line = serde_json::to_vec(value).expect("JSON values serialise");
    line.push(b'\n');
    tokio::select! {
        // The write first: one that can go at once goes, even when vigil is stopping.
        biased;
        written = w.write_all(&line) => written.is_ok(),
        _ = cancel.cancelled() => false,
    }
}

async fn write_line(w: &mut OwnedWriteHalf, value: &impl serde::Serialize, limit: Duration) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(limit, w.write_all(&line)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read")),
    }
}

/// The command-line side: a blocking connection to a running vigil.
pub struct Connection {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    requests: u32,
    socket: PathBuf,
}

/// What a tail sends.
#[derive(Debug)]
pub enum TailItem {
    Event(Box<Event>),
    /// Bursts of events missed because the reader fell behind.
    Lagged(u64),
}

/// How long a request may take (a `snapshot` waits up to 5 s for a frame).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Connection {
    /// Connects to the vigil running on `data_dir`; `Err` when none answers there.
    pub fn connect(data_dir: &Path) -> std::io::Result<Self> {
        let socket = socket_path(data_dir);
        let stream = std::os::unix::net::UnixStream::connect(&socket)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(Self { reader: std::io::BufReader::new(stream.try_clone()?), writer: stream, requests: 0, socket })
    }

    /// Sends command `name` with `args`; the result, or the service's error message.
    pub fn call(&mut self, name: &str, args: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.requests += 1;
        let request = serde_json::json!({ "request_id": format!("cli-{}", self.requests), "args": args });
        writeln!(self.writer, "{name} {request}")?;
        let reply = self.read_value()?.ok_or_else(|| anyhow::anyhow!("vigil closed the connection"))?;
        match reply.get("ok").and_then(|ok| ok.as_bool()) {
            Some(true) => Ok(reply.get("result").cloned().unwrap_or_default()),
            _ => {
                anyhow::bail!("{}", reply.get("error").and_then(|e| e.as_str()).unwrap_or("vigil refused the request"))
            }
        }
    }

    /// Starts `events/tail`; then [`Connection::next_tail`] blocks for each item.
    pub fn tail(&mut self, args: &TailArgs) -> anyhow::Result<()> {
        self.call("events/tail", serde_json::to_value(args)?)?;
        self.reader.get_ref().set_read_timeout(None)?;
        Ok(())
    }

    /// The next item of a tail; `None` when vigil closed the connection (it stopped).
    pub fn next_tail(&mut self) -> anyhow::Result<Option<TailItem>> {
        let Some(mut line) = self.read_value()? else { return Ok(None) };
        if let Some(n) = line.get("lagged").and_then(|n| n.as_u64()) {
            return Ok(Some(TailItem::Lagged(n)));
        }
        let event = serde_json::from_value(line["event"].take())?;
        Ok(Some(TailItem::Event(Box::new(event))))
    }

    fn read_value(&mut self) -> anyhow::Result<Option<serde_json::Value>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                anyhow::bail!(
                    "vigil did not answer within {} s on {}; see its log",
                    REQUEST_TIMEOUT.as_secs(),
                    self.socket.display()
                )
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Some(serde_json::from_str(&line)?))
    }
}

#[cfg(test)]
mod tests;
