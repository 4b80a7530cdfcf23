//! `vigil-store-bench`: what durability costs, measured side by side in one run.
//!
//! 1. Durable event writes: vigil's store (sled: event + time index + outbox entry in one
//!    transaction, then a flush) against SQLite in WAL mode with `synchronous=FULL` doing the same
//!    inserts in one transaction per batch. Batches of 1 event (one detection per frame) and 16;
//!    rounds alternate; medians and their ratio are printed.
//! 2. Outbox drain: a 100 000-message backlog drained by vigil's uplink into a local mosquitto
//!    (QoS 1, acknowledged), in messages per second.
//! 3. Snapshot writes: a burst of event snapshots (640x480 JPEGs, encoded, written and synced)
//!    saved by one thread against several, rounds alternating; medians and their ratio.
//! 4. Space under steady churn: hours of simulated time in which events arrive at a steady rate,
//!    each goes through `new`, `update` and `end`, the outbox is acknowledged, and retention
//!    deletes as fast as events arrive. The on-disk size of sled's files against the live bytes
//!    they hold (its space amplification), and the same for SQLite side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use vigil_core::event::{Emitted, Event};
use vigil_core::picture::SnapshotImage;
use vigil_store::snapshot::SaveOptions;
use vigil_store::Store;
use vigil_testkit::median;

#[derive(Parser)]
#[command(about = "Durable writes (sled vs SQLite WAL) and outbox drain, side by side")]
struct Args {
    /// Events written per measurement.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Alternating rounds of each write measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Outbox backlog to drain (0: skip).
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Snapshots per burst in the snapshot measurement (0: skip).
    #[arg(long, default_value_t = 200)]
    snapshots: usize,
    /// Threads compared with one in the snapshot measurement (default: the cores, at most 4).
    #[arg(long)]
    snapshot_threads: Option<usize>,
    /// Simulated hours of steady churn in the space measurement (0: skip).
    #[arg(long, default_value_t = 2)]
    churn_hours: u64,
    /// Events per simulated second in the space measurement.
    #[arg(long, default_value_t = 5)]
    churn_rate: u64,
    /// Events kept by retention in the space measurement.
    #[arg(long, default_value_t = 10_000)]
    churn_keep: usize,
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Steady churn through vigil's store for `hours` of simulated time under `retention`; returns
/// the on-disk bytes of its directory against the live bytes (event records) every simulated
/// 10 minutes.
fn sled_churn(
    hours: u64,
    rate: u64,
    retention: &vigil_store::Retention,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<(u64, u64)>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let mut samples = Vec::new();
    let mut n = 0usize;
    for second in 0..hours * 3600 {
        let mut batch = Vec::new();
        for _ in 0..rate {
            let mut e = event(n);
            n += 1;
            for phase in [vigil_core::event::Phase::New, vigil_core::event::Phase::Update] {
                e.phase = phase;
                batch.push(e.clone());
            }
            e.phase = vigil_core::event::Phase::End;
            batch.push(e);
        }
        store.append(&batch, "vigil/bench/events")?;
        rt.block_on(store.flush())?;
        // The broker acknowledged everything.
        for (key, _) in store.outbox_after(None, usize::MAX)? {
            store.outbox_remove(key)?;
        }
        if second % 60 == 59 {
            store.enforce_retention(retention, 0)?;
        }
        if second % 600 == 599 {
            samples.push((dir_bytes(dir.path()), store.event_bytes()));
        }
    }
    Ok(samples)
}

/// The same churn in SQLite (WAL, synchronous=FULL, a checkpoint every simulated minute).
fn sqlite_churn(hours: u64, rate: u64, keep: usize) -> Result<Vec<(u64, u64)>> {
    let dir = tempfile::tempdir()?;
    let mut db = sqlite_store(dir.path())?;
    let mut samples = Vec::new();
    let mut n = 0usize;
    for second in 0..hours * 3600 {
        let tx = db.transaction()?;
        for _ in 0..rate {
            let e = event(n);
            n += 1;
            let json = serde_json::to_vec(&e)?;
            for _phase in 0..3 {
                tx.execute(
                    "INSERT OR REPLACE INTO events (id, captured_at_ns, json) VALUES (?1, ?2, ?3)",
                    rusqlite::params![e.id, e.start_ns as i64, json],
                )?;
                tx.execute("INSERT INTO outbox (topic, payload) VALUES (?1, ?2)", rusqlite::params!["t", json])?;
            }
        }
        tx.execute("DELETE FROM outbox", [])?;
        tx.commit()?;
        if second % 60 == 59 {
            db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY captured_at_ns LIMIT \
                 max(0, (SELECT count(*) FROM events) - ?1))",
                rusqlite::params![keep as i64],
            )?;
            db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        if second % 600 == 599 {
            let live: i64 = db.query_row("SELECT coalesce(sum(length(json)), 0) FROM events", [], |r| r.get(0))?;
            samples.push((dir_bytes(dir.path()), live as u64));
        }
    }
    Ok(samples)
}

fn churn(hours: u64, rate: u64, keep: usize, rt: &tokio::runtime::Runtime) -> Result<()> {
    println!(
        "== space under steady churn: {hours} simulated hours, {rate} events/s (new, update, end each), \
         retention keeps {keep}"
    );
    let by_count = vigil_store::Retention { max_age: None, max_events: keep, max_bytes: u64::MAX, record_factor: 1 };
    let sled = sled_churn(hours, rate, &by_count, rt)?;
    let sqlite = sqlite_churn(hours, rate, keep)?;
    let amp = |(disk, live): (u64, u64)| disk as f64 / live.max(1) as f64;
    for (i, (a, b)) in sled.iter().zip(&sqlite).enumerate() {
        println!(
            "t = {:>3} min: sled {:>6.1} MiB on disk for {:>5.1} MiB live (x{:.2})   SQLite {:>6.1} MiB for {:>5.1} MiB (x{:.2})",
            (i + 1) * 10,
            a.0 as f64 / 1048576.0,
            a.1 as f64 / 1048576.0,
            amp(*a),
            b.0 as f64 / 1048576.0,
            b.1 as f64 / 1048576.0,
            amp(*b)
        );
    }
    if let (Some(a), Some(b)) = (sled.last(), sqlite.last()) {
        let peak = sled.iter().map(|s| s.0).max().unwrap_or(0);
        println!(
            "space amplification at the end: sled x{:.2} / SQLite WAL x{:.2} = ratio {:.2}; sled's peak {:.1} MiB",
            amp(*a),
            amp(*b),
            amp(*a) / amp(*b),
            peak as f64 / 1048576.0
        );
    }
    // The same churn under a byte bound, as the service sets it (records counted at
    // SLED_SPACE_FACTOR): does the store's directory stay under it? sled's files also have a
    // fixed part (a few MiB), which matters only for small bounds.
    for bound_mb in [16u64, 64] {
        let by_bytes = vigil_store::Retention {
            max_age: None,
            max_events: usize::MAX,
            max_bytes: bound_mb << 20,
            record_factor: vigil_store::SLED_SPACE_FACTOR,
        };
        let bounded = sled_churn(hours, rate, &by_bytes, rt)?;
        let peak = bounded.iter().map(|s| s.0).max().unwrap_or(0);
        let live = bounded.last().map_or(0, |s| s.1);
        println!(
            "bounded by store.max_event_mb = {bound_mb} MiB (records at x{}): {:.1} MiB live, sled's directory \
             peaked at {:.1} MiB = {:.2} of the bound",
            vigil_store::SLED_SPACE_FACTOR,
            live as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            peak as f64 / (bound_mb << 20) as f64
        );
    }
    Ok(())
}

/// An ended event message as vigil stores and sends it (about the size of a real one).
fn event(n: usize) -> Event {
    let at = 1_795_482_000_000_000_000u64 + n as u64 * 33_333_333;
    serde_json::from_value(serde_json::json!({
        "id": vigil_core::event::new_event_id(), "phase": "end", "revision": 2, "device_id": "bench",
        "camera_id": "cam0", "rule": "objects", "label": "circle", "class_id": 0, "track_id": n,
        "best_score": 0.93,
        "box": { "x1": 203.4, "y1": 243.1, "x2": 270.2, "y2": 314.8 }, "box_norm": [0.317, 0.506, 0.422, 0.656],
        "best": { "seq": n, "pts_ns": n * 33_333_333, "captured_at": "2026-11-24T01:00:00.000000Z",
                  "captured_at_ns": at, "width": 640, "height": 480 },
        "zones": ["driveway"], "start": "2026-11-24T01:00:00.000000Z", "start_ns": at,
        "last": "2026-11-24T01:00:02.000000Z", "last_ns": at + 2_000_000_000,
        "end": "2026-11-24T01:00:02.000000Z", "end_ns": at + 2_000_000_000, "end_reason": "lost",
        "dwell_s": 2.0, "frames": 30,
        "model": { "name": "shapes", "version": "1.0.0", "backend": "onnxruntime-cpu" },
        "snapshot": null
    }))
    .expect("a valid event")
}

/// Events per second into vigil's store, `batch` events per flush.
fn sled_rate(events: &[Event], batch: usize, rt: &tokio::runtime::Runtime) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let t = Instant::now();
    for chunk in events.chunks(batch) {
        store.append(chunk, "vigil/bench/events")?;
        rt.block_on(store.flush())?;
    }
    Ok(events.len() as f64 / t.elapsed().as_secs_f64())
}

/// The SQLite baseline's store in `dir`: WAL, `synchronous=FULL`, the tables vigil's store has.
fn sqlite_store(dir: &std::path::Path) -> Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(dir.join("events.db"))?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE events (id TEXT PRIMARY KEY, captured_at_ns INTEGER NOT NULL, json BLOB NOT NULL);
         CREATE INDEX events_by_time ON events (captured_at_ns, id);
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL);",
    )?;
    Ok(db)
}

/// The same durable writes into SQLite (WAL, synchronous=FULL): event row, time index, outbox row.
fn sqlite_rate(events: &[Event], batch: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut db = sqlite_store(dir.path())?;
    let t = Instant::now();
    for chunk in events.chunks(batch) {
        let tx = db.transaction()?;
        for e in chunk {
            let json = serde_json::to_vec(e)?;
            tx.execute(
                "INSERT INTO events (id, captured_at_ns, json) VALUES (?1, ?2, ?3)",
                rusqlite::params![e.id, e.start_ns as i64, json],
            )?;
            tx.execute(
                "INSERT INTO outbox (topic, payload) VALUES (?1, ?2)",
                rusqlite::params!["vigil/bench/events", json],
            )?;
        }
        tx.commit()?;
    }
    Ok(events.len() as f64 / t.elapsed().as_secs_f64())
}

fn drain(backlog: usize, rt: &tokio::runtime::Runtime) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("data"))?.with_outbox_limit(backlog.max(1));
    let payload = serde_json::to_vec(&event(0))?;
    for _ in 0..backlog {
        store.enqueue("vigil/bench/events", &payload)?;
    }
    rt.block_on(store.flush())?;
    let broker = vigil_testkit::LocalBroker::start(dir.path())?;
    let port = broker.port;
    // Run by `make bench` in the source checkout: its demo configuration, with the bench's broker.
    let mut config = vigil_config::Config::demo(&std::env::current_dir()?)?;
    config.device_id = "bench".into();
    config.mqtt.url = format!("mqtt://127.0.0.1:{port}");
    let wake = Arc::new(tokio::sync::Notify::new());
    let status = vigil_uplink::SharedStatus::new(vigil_uplink::new_status(&config, None));
    let uplink = vigil_uplink::Uplink::new(&config, status, store.clone(), wake)?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    let task = rt.spawn(uplink.run(cancel.clone()));
    while store.outbox_len() > 0 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the backlog did not drain in 10 minutes ({} left)", store.outbox_len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = rt.block_on(task);
    println!(
        "outbox drain: {backlog} messages ({} bytes each) acknowledged by mosquitto in {secs:.2} s = {:.0} msg/s \
         (window mqtt.max_inflight = {})",
        payload.len(),
        backlog as f64 / secs,
        config.mqtt.max_inflight
    );
    Ok(())
}

/// A 640x480 picture with edges and texture, so that JPEG has real work to do.
fn picture() -> SnapshotImage {
    let (w, h) = (640u16, 480u16);
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let v = ((x * 7 + y * 13) ^ (x * y / 64)) as u8;
            rgb.extend_from_slice(&[v, v.wrapping_mul(3), 255 - v]);
        }
    }
    SnapshotImage { rgb, width: w, height: h }
}

/// Snapshots per second saved by `workers` threads, one burst of `events.len()`.
fn snapshot_rate(events: &[Event], image: &Arc<SnapshotImage>, workers: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let burst: Vec<Emitted> =
        events.iter().map(|e| Emitted { event: e.clone(), snapshot: Some(image.clone()) }).collect();
    let options = SaveOptions { quality: 85, workers, cutoff: tokio_util::sync::CancellationToken::new() };
    let t = Instant::now();
    let saved = vigil_store::snapshot::save(&store, burst, &options);
    let secs = t.elapsed().as_secs_f64();
    if saved.written != events.len() {
        bail!("{} of {} snapshots written", saved.written, events.len());
    }
    Ok(events.len() as f64 / secs)
}

fn snapshots(n: usize, threads: usize, rounds: usize) -> Result<()> {
    println!("== snapshot writes: bursts of {n} 640x480 JPEGs (quality 85), 1 thread vs {threads}");
    let events: Vec<Event> = (0..n).map(event).collect();
    let image = Arc::new(picture());
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let a = snapshot_rate(&events, &image, 1)?;
        let b = snapshot_rate(&events, &image, threads)?;
        println!("round {round}: 1 thread {a:.0} snapshots/s  {threads} threads {b:.0} snapshots/s");
        one.push(a);
        many.push(b);
    }
    let (a, b) = (median(&mut one), median(&mut many));
    println!("snapshots: {threads} threads {b:.0}/s / 1 thread {a:.0}/s = ratio {:.2}", b / a);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let events: Vec<Event> = (0..args.events).map(event).collect();
    println!("== durable event writes: {} events per measurement, {} alternating rounds", args.events, args.rounds);
    for batch in [1usize, 16] {
        let (mut s, mut q) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds.max(1) {
            let a = sled_rate(&events, batch, &rt)?;
            let b = sqlite_rate(&events, batch)?;
            println!("batch {batch:>2}, round {round}: sled {a:.0} events/s  SQLite WAL {b:.0} events/s");
            s.push(a);
            q.push(b);
        }
        let (a, b) = (median(&mut s), median(&mut q));
        println!("batch {batch:>2}: vigil's store {a:.0} events/s / SQLite WAL (synchronous=FULL) {b:.0} events/s = ratio {:.2}", a / b);
    }
    if args.backlog > 0 {
        drain(args.backlog, &rt)?;
    }
    if args.snapshots > 0 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        snapshots(args.snapshots, args.snapshot_threads.unwrap_or(cores.min(4)), args.rounds)?;
    }
    if args.churn_hours > 0 {
        churn(args.churn_hours, args.churn_rate, args.churn_keep, &rt)?;
    }
    Ok(())
}
