//! The control socket: modes, orders, refusals, tails, and the peer check.

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
        updates: None,
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
async fn with_connection<T: Send + 'static>(dir: &Path, f: impl FnOnce(&mut Connection) -> T + Send + 'static) -> T {
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
    assert!(
        rustix::process::geteuid().is_root(),
        "this test starts a client as another user, which takes root (as make test and CI have)"
    );
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
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(socket_path(run.dir.path())).unwrap().permissions());
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
    assert!(set.contains("read-only") && set.contains("vigil-ops fleet"), "{set}");
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

/// On tokio's paused clock: the minute passes at once, and exactly.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_a_minute_and_not_before() {
    use tokio::io::AsyncReadExt;
    let run = serve(&[]).await;
    let mut idle = tokio::net::UnixStream::connect(socket_path(run.dir.path())).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(2 * IDLE_TIMEOUT, idle.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "closed without a word");
    let waited = t0.elapsed();
    assert!(waited >= IDLE_TIMEOUT && waited < IDLE_TIMEOUT + Duration::from_secs(1), "closed after {waited:?}");
    run.cancel.cancel();
}
