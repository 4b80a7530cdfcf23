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

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

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
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
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
        let mut r = tokio::io::BufReader::new(r);
        loop {
            let mut line = Vec::new();
            let mut limited = (&mut r).take(MAX_LINE as u64);
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(IDLE_TIMEOUT) => return,
                n = limited.read_until(b'\n', &mut line) => n,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) if !line.ends_with(b"\n") && line.len() >= MAX_LINE => {
                    let too_long = Reply::error("invalid", format!("request line over {MAX_LINE} bytes"));
                    let _ = write_line(&mut w, &too_long, WRITE_TIMEOUT).await;
                    return;
                }
                Ok(_) => {}
            }
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
                        "{name} changes the device: send it over MQTT (`vigil fleet cmd`); the local socket is \
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
        mut r: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
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
        let mut byte = [0u8; 1];
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
                _ = r.read(&mut byte) => return,
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
mod tests {
    use super::*;
    use vigil_config::Config;
    use vigil_store::Store;

    struct Running {
        dir: tempfile::TempDir,
        stored: StoredEvents,
        cancel: CancellationToken,
        server: tokio::task::JoinHandle<()>,
        store: Store,
    }

    async fn serve(events: &[Event]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(events, "t").unwrap();
        let fleet = Arc::new(Fleet {
            config: Arc::new(Config::for_tests()),
            started: std::time::Instant::now(),
            cameras: Vec::new(),
            inference: Arc::new(vigil_pipeline::scheduler::SchedulerStats::new::<&str>(&[])),
            store: store.clone(),
            restart: CancellationToken::new(),
            snapshots: vigil_pipeline::scheduler::SnapshotRequests::default(),
            config_path: None,
            labels: Vec::new(),
            changing: Default::default(),
        });
        let (stored, _) = broadcast::channel(4);
        let cancel = CancellationToken::new();
        let server = Server::bind(dir.path()).unwrap().spawn(fleet, stored.clone(), cancel.clone());
        Running { dir, stored, cancel, server, store }
    }

    fn event(n: u32, camera: &str) -> Event {
        let mut e = vigil_core::event::test_event(n);
        e.start_ns = 1_000_000 * u64::from(n + 1);
        e.camera_id = camera.into();
        e
    }

    /// Runs `f` with a blocking connection, off the runtime's threads.
    async fn with_connection<T: Send + 'static>(
        dir: &Path,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> T {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || f(&mut Connection::connect(&dir).unwrap())).await.unwrap()
    }

    /// Behind the 0600 file mode, each peer's uid is checked. Opened up here (socket 0666,
    /// directory 0755) so that a process of another user reaches the server at all. Running a
    /// process as another user takes root, as CI has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_users_connection_is_refused_even_through_an_open_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not run: needs root to start a client as another user");
            return;
        }
        let run = serve(&[]).await;
        let path = socket_path(run.dir.path());
        std::fs::set_permissions(run.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        // A client in a process of its own: sends `status`, prints the answer.
        let ask = move |uid: Option<u32>| {
            // A hang-up shows as EOF, or as a broken pipe if it came before the request.
            let script = "import socket, sys\n\
                          s = socket.socket(socket.AF_UNIX)\n\
                          s.settimeout(10)\n\
                          s.connect(sys.argv[1])\n\
                          try:\n\
                          \x20   s.sendall(b'status {\"request_id\": \"p\", \"args\": {}}\\n')\n\
                          \x20   print(s.recv(65536).decode(), end='')\n\
                          except (BrokenPipeError, ConnectionResetError):\n\
                          \x20   pass\n";
            let mut cmd = std::process::Command::new("python3");
            cmd.arg("-c").arg(script).arg(&path);
            if let Some(uid) = uid {
                cmd.uid(uid).gid(uid);
            }
            let out = cmd.output().expect("python3 runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let (root, nobody) = tokio::task::spawn_blocking(move || (ask(None), ask(Some(65_534)))).await.unwrap();
        assert!(root.contains("\"ok\":true") && root.contains("device_id"), "the same client as root: {root}");
        assert_eq!(nobody, "", "uid 65534 is hung up on without an answer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_are_answered_and_changes_and_garbage_refused() {
        let events = [event(0, "a"), event(1, "b"), event(2, "a")];
        let run = serve(&events).await;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(socket_path(run.dir.path())).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "owner only");
        let id = events[1].id.clone();
        let (page, newest, got, set, bad) = with_connection(run.dir.path(), move |c| {
            let page = c.call("events/query", serde_json::json!({ "camera": "a" })).unwrap();
            let newest = c.call("events/query", serde_json::json!({ "order": "newest", "limit": 2 })).unwrap();
            let got = c.call("events/get", serde_json::json!({ "id": id })).unwrap();
            let set = c.call("config/set", serde_json::json!({ "config": {} })).unwrap_err().to_string();
            let bad = c.call("events/query", serde_json::json!({ "limit": 0 })).unwrap_err().to_string();
            (page, newest, got, set, bad)
        })
        .await;
        let seqs = |page: &serde_json::Value| -> Vec<u64> {
            page["events"].as_array().unwrap().iter().map(|e| e["best"]["seq"].as_u64().unwrap()).collect()
        };
        assert_eq!(seqs(&page), [0, 2]);
        assert_eq!(seqs(&newest), [2, 1], "newest first");
        assert!(newest["next"].is_string(), "one more to come");
        assert_eq!(got["event"]["id"], events[1].id.as_str());
        assert!(set.contains("read-only") && set.contains("vigil fleet"), "{set}");
        assert!(bad.contains("limit must be"), "{bad}");

        // A line that is not a request, then one far too long: answered, then hung up on.
        let dir = run.dir.path().to_owned();
        let replies = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(socket_path(&dir)).unwrap();
            s.write_all(b"status not-json\n").unwrap();
            s.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut s, &mut text).unwrap();
            text
        })
        .await
        .unwrap();
        let lines: Vec<serde_json::Value> = replies.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{replies}");
        assert!(lines[0]["error"].as_str().unwrap().contains("request_id"), "{replies}");
        assert!(lines[1]["error"].as_str().unwrap().contains("request line over"), "{replies}");

        run.cancel.cancel();
        run.server.await.unwrap();
        assert!(!socket_path(run.dir.path()).exists(), "the socket goes with the service");
        // A socket left by a killed service is replaced by the next one.
        let _stale = std::os::unix::net::UnixListener::bind(socket_path(run.dir.path())).unwrap();
        drop(_stale);
        Server::bind(run.dir.path()).expect("a stale socket is replaced");
        drop(run.store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tails_have_slots_of_their_own() {
        let run = serve(&[event(0, "a")]).await;
        let dir = run.dir.path().to_owned();
        let (refused, status) = tokio::task::spawn_blocking(move || {
            let mut tails: Vec<Connection> = (0..MAX_TAILS).map(|_| Connection::connect(&dir).unwrap()).collect();
            for t in &mut tails {
                t.tail(&TailArgs::default()).unwrap();
            }
            let mut one_more = Connection::connect(&dir).unwrap();
            let refused = one_more.tail(&TailArgs::default()).unwrap_err().to_string();
            // Requests still get through: the tails do not hold request slots.
            let status = one_more.call("status", serde_json::json!({})).unwrap();
            (refused, status)
        })
        .await
        .unwrap();
        assert!(refused.contains("tails are following already"), "{refused}");
        assert_eq!(status["store"]["events"], 1);
        run.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), run.server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tail_sends_the_backlog_then_each_stored_burst_and_says_what_it_missed() {
        let run = serve(&[event(0, "a"), event(1, "b"), event(2, "a")]).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        let dir = run.dir.path().to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            let mut c = Connection::connect(&dir).unwrap();
            c.tail(&TailArgs { last: 5, camera: Some("a".into()), label: None }).unwrap();
            while let Ok(Some(item)) = c.next_tail() {
                let said = match item {
                    TailItem::Event(e) => format!("event {}", e.best.seq),
                    TailItem::Lagged(n) => format!("lagged {n}"),
                };
                if tx.blocking_send(said).is_err() {
                    return;
                }
            }
        });
        async fn next(rx: &mut tokio::sync::mpsc::Receiver<String>) -> String {
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap()
        }
        assert_eq!(next(&mut rx).await, "event 0", "backlog, oldest first, camera a only");
        assert_eq!(next(&mut rx).await, "event 2");
        // Subscribed before the backlog was read: a burst stored now arrives, filtered.
        while run.stored.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.stored.send(vec![event(3, "b"), event(4, "a")].into()).unwrap();
        assert_eq!(next(&mut rx).await, "event 4");
        // More bursts than the channel holds at once (this runtime has one thread: the server
        // cannot take any before the loop ends): the reader is told how many it missed.
        for n in 10..20 {
            run.stored.send(vec![event(n, "a")].into()).unwrap();
        }
        let mut seen = Vec::new();
        while seen.last().is_none_or(|s| s != "event 19") {
            seen.push(next(&mut rx).await);
        }
        assert!(seen.iter().any(|s| s.starts_with("lagged ")), "{seen:?}");
        run.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
    }
}
