//! The durable store (sled): events, the MQTT outbox, and metadata; event snapshots (JPEG) as
//! files beside it, under `snapshots/`.
//!
//! An event message and its outbox entry are written in one transaction, and the store is
//! flushed before anything is offered to MQTT: an event that reached the broker is always on
//! disk. The events tree holds each event's latest revision; the outbox holds every message. The
//! outbox is drained oldest first; an entry leaves it only when the broker acknowledged it
//! (PUBACK). A snapshot file is written and synced before the event that names it.
//!
//! Schema changes are numbered migrations, `vN → vN+1`, run in order when an older store is
//! opened ([`MIGRATIONS`]). Each is idempotent, and the version is bumped (and flushed) only
//! after its work is durable, so a crash mid-migration re-runs it on the next start.
//!
//! The outbox is bounded ([`Store::with_outbox_limit`]). When a long outage fills it, the oldest
//! messages are dropped from the outbox — their events stay in the events tree, readable with
//! `vigil events list` — counted in [`Store::outbox_evicted`] and logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use vigil_core::event::{EndReason, Event, Phase};

pub mod query;
pub mod snapshot;

pub const SCHEMA_VERSION: u64 = 3;
/// Outbox bound when none is configured (`mqtt.outbox_max_messages`).
pub const DEFAULT_OUTBOX_LIMIT: usize = 100_000;
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {0} is in use by another process (another vigil service on this data_dir, or a `vigil \
         events` command reading it); one process owns a store at a time"
    )]
    Locked(PathBuf),
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "the store at {path} has schema {found}, newer than this vigil understands ({SCHEMA_VERSION}); \
             run the newer vigil or move the data directory aside"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("store holds a malformed record under {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("cannot write snapshot {path}: {source}")]
    Snapshot { path: PathBuf, source: std::io::Error },
}

impl StoreError {
    /// The file system is full (ENOSPC or a quota).
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::Io(sled::Error::Io(io)) | StoreError::Open { source: sled::Error::Io(io), .. } => io,
            StoreError::Snapshot { source, .. } => source,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
}

/// Limits on the events kept (see [`Store::enforce_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<std::time::Duration>,
    pub max_events: usize,
    pub max_bytes: u64,
}

impl Retention {
    pub fn from_config(c: &vigil_config::StoreConfig) -> Self {
        Self {
            max_age: (c.retention_days > 0).then(|| std::time::Duration::from_secs(c.retention_days * 86_400)),
            max_events: c.max_events,
            max_bytes: c.max_event_mb << 20,
        }
    }
}

/// Events deleted by one retention pass, by the limit that deleted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub by_age: usize,
    pub by_count: usize,
    pub by_bytes: usize,
}

impl RetentionReport {
    pub fn total(&self) -> usize {
        self.by_age + self.by_count + self.by_bytes
    }
}

/// One message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl OutboxEntry {
    fn encode(&self) -> Vec<u8> {
        let topic = self.topic.as_bytes();
        let len = u16::try_from(topic.len()).expect("MQTT topics are at most 65535 bytes");
        let mut out = Vec::with_capacity(2 + topic.len() + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(key: u64, bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = |m: &str| StoreError::Corrupt { key: format!("outbox/{key}"), message: m.to_owned() };
        let len = bytes.get(..2).ok_or_else(|| bad("shorter than its header"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let topic = bytes.get(2..2 + len).ok_or_else(|| bad("topic runs past the end"))?;
        let topic = String::from_utf8(topic.to_vec()).map_err(|_| bad("topic is not UTF-8"))?;
        Ok(Self { topic, payload: bytes[2 + len..].to_vec() })
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    events: sled::Tree,
    /// Index: start time (ns, big-endian) ‖ event id → (empty). Schema 2.
    by_time: sled::Tree,
    /// Ids of events not yet ended (closed at the next start after a crash). Schema 3.
    open_events: sled::Tree,
    snapshots: PathBuf,
    snapshot_bytes: Arc<AtomicU64>,
    outbox: sled::Tree,
    outbox_limit: usize,
    /// Entries in the outbox (sled's `len` walks the whole tree).
    outbox_count: Arc<AtomicUsize>,
    /// Events stored, and the bytes of their records (counted at open, kept up to date).
    event_total: Arc<AtomicUsize>,
    event_bytes: Arc<AtomicU64>,
    /// Serializes outbox writers, so that keys enter the outbox in the order they were taken
    /// (the uplink's cursor never passes a key that is still to come) and counters and
    /// eviction stay consistent.
    write_lock: Arc<std::sync::Mutex<()>>,
    /// One past the highest outbox key written, and one past the highest known to be on disk:
    /// the uplink sees only durable entries ([`Store::outbox_after`]).
    written_next: Arc<AtomicU64>,
    durable_next: Arc<AtomicU64>,
    outbox_evicted: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the store under `data_dir/store`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("store");
        let db = sled::Config::new().path(&path).mode(sled::Mode::HighThroughput).open().map_err(|source| {
            if is_lock_error(&source) {
                StoreError::Locked(path.clone())
            } else {
                StoreError::Open { path: path.clone(), source }
            }
        })?;
        let meta = db.open_tree("meta")?;
        let found = match meta.get(SCHEMA_KEY)? {
            // A new store starts at the current schema; one made before versions existed is v1.
            None if db.open_tree("events")?.is_empty() => SCHEMA_VERSION,
            None => 1,
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
                key: "meta/schema_version".into(),
                message: "not an 8-byte integer".into(),
            })?,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path, found });
        }
        migrate(&db, &meta, found)?;
        let outbox = db.open_tree("outbox")?;
        let next_key = match outbox.last()? {
            Some((k, _)) => k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0).saturating_add(1),
            None => 0,
        };
        let events = db.open_tree("events")?;
        let (mut total, mut bytes) = (0usize, 0u64);
        for item in events.iter() {
            let (_, v) = item?;
            total += 1;
            bytes += v.len() as u64;
        }
        let snapshots = data_dir.join("snapshots");
        let snapshot_bytes = tidy_snapshots(&snapshots, &events)?;
        Ok(Self {
            by_time: db.open_tree(BY_TIME_TREE)?,
            open_events: db.open_tree(OPEN_TREE)?,
            snapshots,
            snapshot_bytes: Arc::new(AtomicU64::new(snapshot_bytes)),
            events,
            event_total: Arc::new(AtomicUsize::new(total)),
            event_bytes: Arc::new(AtomicU64::new(bytes)),
            write_lock: Arc::new(std::sync::Mutex::new(())),
            written_next: Arc::new(AtomicU64::new(next_key)),
            durable_next: Arc::new(AtomicU64::new(next_key)),
            outbox_count: Arc::new(AtomicUsize::new(outbox.len())),
            outbox,
            outbox_limit: DEFAULT_OUTBOX_LIMIT,
            outbox_evicted: Arc::new(AtomicU64::new(0)),
            db,
        })
    }

    /// Bounds the outbox to `limit` messages (at least 1); see the module documentation.
    pub fn with_outbox_limit(mut self, limit: usize) -> Self {
        self.outbox_limit = limit.max(1);
        self
    }

    /// Messages dropped from a full outbox since this store was opened.
    pub fn outbox_evicted(&self) -> u64 {
        self.outbox_evicted.load(Ordering::Relaxed)
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the oldest outbox entries beyond the limit (the write lock is held).
    fn evict_overflow(&self) -> Result<(), StoreError> {
        let mut evicted = 0u64;
        while self.outbox_count.load(Ordering::Relaxed) > self.outbox_limit {
            match self.outbox.pop_min()? {
                Some(_) => {
                    self.outbox_count.fetch_sub(1, Ordering::Relaxed);
                    evicted += 1;
                }
                None => break,
            }
        }
        if evicted > 0 {
            let total = self.outbox_evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            tracing::warn!(
                evicted,
                total,
                limit = self.outbox_limit,
                "outbox full: oldest messages dropped from it (their events stay in the store)"
            );
        }
        Ok(())
    }

    /// Writes event messages and their outbox entries atomically (not yet durable: call
    /// [`Store::flush`]). Each message replaces the stored revision of its event.
    pub fn append(&self, events: &[Event], topic: &str) -> Result<(), StoreError> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = events
            .iter()
            .map(|e| {
                let json = serde_json::to_vec(e).expect("events always serialise");
                (e.id.as_bytes().to_vec(), json)
            })
            .collect();
        let _writes = self.lock_writes();
        let next = std::cell::Cell::new(0u64);
        // (new events, bytes added, bytes replaced), from the run of the transaction that committed.
        let counts = std::cell::Cell::new((0usize, 0u64, 0u64));
        (&self.events, &self.outbox, &self.by_time, &self.open_events)
            .transaction(|(ev, ob, bt, open)| {
                counts.set((0, 0, 0));
                for ((id, json), e) in encoded.iter().zip(events) {
                    let (mut added, mut bytes, mut replaced) = counts.get();
                    match ev.insert(id.as_slice(), json.as_slice())? {
                        Some(old) => replaced += old.len() as u64,
                        None => added += 1,
                    }
                    bytes += json.len() as u64;
                    counts.set((added, bytes, replaced));
                    bt.insert(time_key(e.start_ns, id), &[][..])?;
                    if e.phase == Phase::End {
                        open.remove(id.as_slice())?;
                    } else {
                        open.insert(id.as_slice(), &[][..])?;
                    }
                    let key = ob.generate_id()?;
                    next.set(next.get().max(key + 1));
                    let entry = OutboxEntry { topic: topic.to_owned(), payload: json.clone() };
                    ob.insert(&key.to_be_bytes(), entry.encode())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        let (added, bytes, replaced) = counts.get();
        self.written_next.fetch_max(next.get(), Ordering::SeqCst);
        self.outbox_count.fetch_add(encoded.len(), Ordering::Relaxed);
        self.event_total.fetch_add(added, Ordering::Relaxed);
        self.event_bytes.fetch_add(bytes, Ordering::Relaxed);
        sub_saturating(&self.event_bytes, replaced);
        self.evict_overflow()
    }

    /// Ends the events a killed vigil left open (reason `restart`) and queues their `end`
    /// messages. Returns how many there were.
    pub fn close_open_events(&self, topic: &str) -> Result<usize, StoreError> {
        let mut ended = Vec::new();
        for item in self.open_events.iter() {
            let (id, _) = item?;
            match self.events.get(&id)? {
                Some(v) => ended.push(decode_event(&id, &v)?.ended(EndReason::Restart)),
                None => {
                    self.open_events.remove(&id)?; // deleted by retention meanwhile
                }
            }
        }
        self.append(&ended, topic)?;
        Ok(ended.len())
    }

    /// Writes the JPEG of event `id` and syncs it (the directory entry is synced by
    /// [`Store::sync_snapshots`]). Replaces an earlier snapshot of the same event.
    pub fn write_snapshot(&self, id: &str, jpeg: &[u8]) -> Result<(), StoreError> {
        let path = self.snapshot_file(id);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let fail = |source| StoreError::Snapshot { path: path.clone(), source };
        std::fs::create_dir_all(&self.snapshots).map_err(fail)?;
        let old = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        vigil_core::fsutil::write_atomically(&path, Path::new(&tmp), jpeg).map_err(fail)?;
        self.snapshot_bytes.fetch_add(jpeg.len() as u64, Ordering::Relaxed);
        sub_saturating(&self.snapshot_bytes, old);
        Ok(())
    }

    /// Makes the snapshot files written so far durable (their directory entries).
    pub fn sync_snapshots(&self) -> Result<(), StoreError> {
        let dir = vigil_core::fsutil::sync_dir(&self.snapshots)
            .map_err(|source| StoreError::Snapshot { path: self.snapshots.clone(), source });
        match dir {
            Err(StoreError::Snapshot { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Where snapshot files live.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshots
    }

    /// The snapshot file of event `id` (see [`vigil_core::event::snapshot_path`]).
    pub fn snapshot_file(&self, id: &str) -> PathBuf {
        self.snapshots.join(format!("{id}.jpg"))
    }

    /// Bytes of snapshot files.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Queues one message that is not an event (metrics, replies) in the outbox (not yet
    /// durable: call [`Store::flush`]).
    pub fn enqueue(&self, topic: &str, payload: &[u8]) -> Result<(), StoreError> {
        let _writes = self.lock_writes();
        let key = self.db.generate_id()?;
        let entry = OutboxEntry { topic: topic.to_owned(), payload: payload.to_vec() };
        self.outbox.insert(key.to_be_bytes(), entry.encode())?;
        self.written_next.fetch_max(key + 1, Ordering::SeqCst);
        self.outbox_count.fetch_add(1, Ordering::Relaxed);
        self.evict_overflow()
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let upto = self.written_next.load(Ordering::SeqCst);
        self.db.flush_async().await?;
        self.durable_next.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Up to `limit` outbox entries with keys greater than `after`, oldest first; only entries
    /// already flushed to disk (so nothing reaches MQTT before it is durable).
    pub fn outbox_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let start = after.map_or(0, |k| k.saturating_add(1));
        let end = self.durable_next.load(Ordering::SeqCst);
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        for item in self.outbox.range(start.to_be_bytes()..end.to_be_bytes()).take(limit) {
            let (k, v) = item?;
            let key = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt { key: "outbox".into(), message: "key is not 8 bytes".into() })?,
            );
            out.push((key, OutboxEntry::decode(key, &v)?));
        }
        Ok(out)
    }

    /// Removes an acknowledged outbox entry. Not flushed: losing a removal in a crash only means
    /// the message is sent again (at-least-once), never lost.
    pub fn outbox_remove(&self, key: u64) -> Result<(), StoreError> {
        if self.outbox.remove(key.to_be_bytes())?.is_some() {
            self.outbox_count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox_count.load(Ordering::Relaxed)
    }

    pub fn event_count(&self) -> usize {
        self.event_total.load(Ordering::Relaxed)
    }

    /// Bytes of the stored event records (what `max_event_mb` bounds).
    pub fn event_bytes(&self) -> u64 {
        self.event_bytes.load(Ordering::Relaxed)
    }

    /// Deletes the oldest events (by start time), with their snapshots, until none is older
    /// than `retention.max_age` before `now_ns` and the count and bytes (records and snapshots)
    /// are within bounds. Outbox copies are not touched: an event still waiting to be sent is
    /// still sent. Not flushed (a deletion lost in a crash is done again).
    pub fn enforce_retention(&self, retention: &Retention, now_ns: u64) -> Result<RetentionReport, StoreError> {
        let cutoff = retention.max_age.map_or(0, |age| now_ns.saturating_sub(age.as_nanos() as u64));
        let mut report = RetentionReport::default();
        loop {
            let Some((key, _)) = self.by_time.first()? else { break };
            let at = u64::from_be_bytes(key[..8].try_into().expect("index keys start with 8 bytes of time"));
            let reason = if at < cutoff {
                &mut report.by_age
            } else if self.event_count() > retention.max_events {
                &mut report.by_count
            } else if self.event_bytes() + self.snapshot_bytes() > retention.max_bytes {
                &mut report.by_bytes
            } else {
                break;
            };
            *reason += 1;
            self.delete_indexed(&key)?;
        }
        if report.total() > 0 {
            tracing::info!(
                by_age = report.by_age,
                by_count = report.by_count,
                by_bytes = report.by_bytes,
                events = self.event_count(),
                "retention deleted the oldest events"
            );
        }
        Ok(report)
    }

    /// Bytes free for vigil on the file system of the data directory.
    pub fn free_space(&self) -> std::io::Result<u64> {
        free_space(self.snapshots.parent().unwrap_or(Path::new("/")))
    }

    /// When the data directory's file system has less than `min_free` bytes free, deletes the
    /// oldest events with their snapshots, a slice at a time, until it has (or no event is left).
    /// Snapshot files give their space back at once; sled reuses the space of deleted records
    /// for new ones. Returns how many events went.
    pub fn make_room(&self, min_free: u64) -> Result<usize, StoreError> {
        let mut evicted = 0;
        loop {
            let free = match self.free_space() {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the free space of the data directory");
                    return Ok(evicted);
                }
            };
            if free >= min_free || self.event_count() == 0 {
                break;
            }
            // A slice: 2 % of the events, at least 20.
            let slice = (self.event_count() / 50).max(20);
            let n = self.evict_oldest(slice)?;
            evicted += n;
            if n == 0 {
                break;
            }
            // Without snapshots, sled's own files do not shrink: stop after one slice per pass.
            if self.snapshot_bytes() == 0 {
                break;
            }
        }
        if evicted > 0 {
            tracing::warn!(
                evicted,
                events = self.event_count(),
                free_mb = self.free_space().unwrap_or(0) >> 20,
                min_free_mb = min_free >> 20,
                "disk nearly full: the oldest events and their snapshots were deleted"
            );
        }
        Ok(evicted)
    }

    /// Deletes the `n` oldest events (by start time) and their snapshots: room for the newest
    /// when the disk is full. Returns how many went.
    pub fn evict_oldest(&self, n: usize) -> Result<usize, StoreError> {
        let mut done = 0;
        while done < n {
            let Some((key, _)) = self.by_time.first()? else { break };
            self.delete_indexed(&key)?;
            done += 1;
        }
        Ok(done)
    }

    /// Deletes the event under time-index key `key`, its index entry and its snapshot.
    fn delete_indexed(&self, key: &[u8]) -> Result<(), StoreError> {
        let id = &key[8..];
        // Index entry and event go together: a crash cannot leave one without the other.
        let removed = (&self.by_time, &self.events, &self.open_events)
            .transaction(|(bt, ev, open)| {
                bt.remove(key)?;
                open.remove(id)?;
                Ok::<_, ConflictableTransactionError<()>>(ev.remove(id)?)
            })
            .map_err(storage_error)?;
        if let Some(v) = removed {
            self.event_total.fetch_sub(1, Ordering::Relaxed);
            sub_saturating(&self.event_bytes, v.len() as u64);
        }
        let file = self.snapshot_file(&String::from_utf8_lossy(id));
        if let Ok(meta) = std::fs::metadata(&file) {
            if std::fs::remove_file(&file).is_ok() {
                sub_saturating(&self.snapshot_bytes, meta.len());
            }
        }
        Ok(())
    }

    pub fn event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        self.events.get(id.as_bytes())?.map(|v| decode_event(id.as_bytes(), &v)).transpose()
    }

    /// Events that started in `[from_ns, to_ns)` (Unix nanoseconds), in start-time order.
    /// An index entry whose event is gone (retention running at the same moment) is skipped.
    pub fn events_between(
        &self,
        from_ns: u64,
        to_ns: u64,
    ) -> impl DoubleEndedIterator<Item = Result<Event, StoreError>> + '_ {
        self.by_time.range(from_ns.to_be_bytes()..to_ns.to_be_bytes()).filter_map(move |item| {
            let lookup = || -> Result<Option<Event>, StoreError> {
                let (k, _) = item?;
                let id = &k[8..];
                self.events.get(id)?.map(|v| decode_event(id, &v)).transpose()
            };
            lookup().transpose()
        })
    }

    /// All events, oldest first (UUIDv7 ids sort by creation time).
    pub fn events(&self) -> impl DoubleEndedIterator<Item = Result<Event, StoreError>> + '_ {
        self.events.iter().map(|item| {
            let (k, v) = item?;
            decode_event(&k, &v)
        })
    }
}

/// The error of a transaction that never aborts: only storage can fail it.
fn storage_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(s) => StoreError::Io(s),
        TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
    }
}

/// Subtracts `n` from a byte counter, stopping at 0 (a counter that missed an addition must not
/// wrap around).
fn sub_saturating(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we own and reads the NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Another process (or a just-dropped handle's flusher thread) holds the database's file lock.
fn is_lock_error(e: &sled::Error) -> bool {
    // sled wraps the flock failure in an io::Error of its own making.
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

const BY_TIME_TREE: &str = "events_by_time";
const OPEN_TREE: &str = "events_open";
/// Records a migration could not read, moved out of the way (kept, never deleted).
const QUARANTINE_TREE: &str = "quarantine";

/// Removes snapshot files without an event (a crash between the file and its event, or a
/// half-written `.tmp`) and returns the bytes of the rest.
fn tidy_snapshots(dir: &Path, events: &sled::Tree) -> Result<u64, StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut bytes = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let keep = match name.strip_suffix(".jpg") {
            Some(id) => events.contains_key(id.as_bytes())?,
            None => false,
        };
        if keep {
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        } else if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stray snapshot file");
        }
    }
    Ok(bytes)
}

fn time_key(captured_at_ns: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&captured_at_ns.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// One schema step: brings a store at version `from` to `from + 1`. Must be idempotent.
type Migration = fn(&sled::Db) -> Result<(), StoreError>;

/// `MIGRATIONS[i]` takes a store from version `i + 1` to `i + 2`.
pub const MIGRATIONS: &[Migration] = &[v1_to_v2, v2_to_v3];
const _: () = assert!(MIGRATIONS.len() as u64 == SCHEMA_VERSION - 1, "one migration per schema step");

/// v2: the capture-time index of events (for time-range queries and retention by age). Reads
/// only each record's capture time; a record without one is left out of the index (and logged)
/// rather than keeping the whole store from opening.
fn v1_to_v2(db: &sled::Db) -> Result<(), StoreError> {
    #[derive(serde::Deserialize)]
    struct Frame {
        captured_at_ns: u64,
    }
    #[derive(serde::Deserialize)]
    struct Timed {
        frame: Frame,
    }
    let events = db.open_tree("events")?;
    let by_time = db.open_tree(BY_TIME_TREE)?;
    for item in events.iter() {
        let (id, v) = item?;
        match serde_json::from_slice::<Timed>(&v) {
            Ok(t) => {
                by_time.insert(time_key(t.frame.captured_at_ns, &id), &[][..])?;
            }
            Err(e) => tracing::warn!(event = %String::from_utf8_lossy(&id), error = %e,
                "store migration v1→v2: event without a capture time left out of the time index"),
        }
    }
    Ok(())
}

/// v3: events have a lifecycle (tracking, rules). Each v2 record was one detection in one
/// frame; it becomes an ended event of rule `detection` that started and ended at that frame
/// (`end_reason: migrated`). Records already in the v3 shape (a crash mid-migration) are left as
/// they are; records neither version can read move to the `quarantine` tree, so that the rest of
/// the store stays readable and nothing is deleted.
fn v2_to_v3(db: &sled::Db) -> Result<(), StoreError> {
    #[derive(serde::Deserialize)]
    struct V2 {
        id: String,
        device_id: String,
        camera_id: String,
        label: String,
        class_id: usize,
        score: f32,
        #[serde(rename = "box")]
        bbox: vigil_core::event::PixelBox,
        box_norm: [f32; 4],
        frame: vigil_core::event::FrameRef,
        model: vigil_core::event::ModelRef,
    }
    let events = db.open_tree("events")?;
    let by_time = db.open_tree(BY_TIME_TREE)?;
    let quarantine = db.open_tree(QUARANTINE_TREE)?;
    for item in events.iter() {
        let (key, v) = item?;
        if serde_json::from_slice::<Event>(&v).is_ok() {
            continue;
        }
        match serde_json::from_slice::<V2>(&v) {
            Ok(old) => {
                let at = old.frame.captured_at.clone();
                let ns = old.frame.captured_at_ns;
                let e = Event {
                    id: old.id,
                    phase: Phase::End,
                    revision: 0,
                    device_id: old.device_id,
                    camera_id: old.camera_id,
                    rule: "detection".to_owned(),
                    label: old.label,
                    class_id: old.class_id,
                    track_id: 0,
                    best_score: old.score,
                    bbox: old.bbox,
                    box_norm: old.box_norm,
                    best: old.frame,
                    zones: Vec::new(),
                    start: at.clone(),
                    start_ns: ns,
                    last: at.clone(),
                    last_ns: ns,
                    end: Some(at),
                    end_ns: Some(ns),
                    end_reason: Some(EndReason::Migrated),
                    dwell_s: 0.0,
                    frames: 1,
                    model: old.model,
                    snapshot: None,
                };
                events.insert(&key, serde_json::to_vec(&e).expect("events always serialise"))?;
            }
            Err(e) => {
                tracing::warn!(event = %String::from_utf8_lossy(&key), error = %e,
                    "store migration v2→v3: unreadable event moved to the quarantine tree");
                quarantine.insert(&key, v)?;
                events.remove(&key)?;
                let stale: Vec<sled::IVec> =
                    by_time.iter().keys().filter_map(Result::ok).filter(|k| k.len() > 8 && k[8..] == key[..]).collect();
                for k in stale {
                    by_time.remove(k)?;
                }
            }
        }
    }
    Ok(())
}

fn migrate(db: &sled::Db, meta: &sled::Tree, mut version: u64) -> Result<(), StoreError> {
    let start = version;
    while version < SCHEMA_VERSION {
        MIGRATIONS[(version - 1) as usize](db)?;
        db.flush()?;
        version += 1;
        meta.insert(SCHEMA_KEY, &version.to_be_bytes())?;
        db.flush()?;
    }
    if meta.get(SCHEMA_KEY)?.is_none() {
        meta.insert(SCHEMA_KEY, &version.to_be_bytes())?;
        db.flush()?;
    }
    if start < version {
        tracing::info!(from = start, to = version, "store migrated");
    }
    Ok(())
}

fn decode_event(key: &[u8], value: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: format!("events/{}", String::from_utf8_lossy(key)),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) use vigil_core::event::test_event as event;

    #[tokio::test]
    async fn events_and_outbox_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<Event> = (0..5).map(event).collect();
        {
            let store = Store::open(dir.path()).unwrap();
            store.append(&evs[..3], "t/a").unwrap();
            store.append(&evs[3..], "t/a").unwrap();
            store.flush().await.unwrap();
        }
        let store = open_again(dir.path()).unwrap();
        let stored: Vec<Event> = store.events().collect::<Result<_, _>>().unwrap();
        assert_eq!(stored, evs);
        let out = store.outbox_after(None, 100).unwrap();
        let payloads: Vec<Event> = out.iter().map(|(_, e)| serde_json::from_slice(&e.payload).unwrap()).collect();
        assert_eq!(payloads, evs, "outbox keeps append order");
        assert!(out.iter().all(|(_, e)| e.topic == "t/a"));
        let second = store.outbox_after(Some(out[1].0), 2).unwrap();
        assert_eq!(second.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [out[2].0, out[3].0]);
        store.outbox_remove(out[0].0).unwrap();
        assert_eq!(store.outbox_len(), 4);
        assert_eq!(store.event(&evs[2].id).unwrap().as_ref(), Some(&evs[2]));
    }

    #[tokio::test]
    async fn a_full_outbox_drops_its_oldest_messages_and_keeps_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<Event> = (0..25).map(event).collect();
        {
            let store = Store::open(dir.path()).unwrap().with_outbox_limit(10);
            for chunk in evs.chunks(4) {
                store.append(chunk, "t").unwrap();
            }
            store.flush().await.unwrap();
            assert_eq!(store.outbox_len(), 10);
            assert_eq!(store.outbox_evicted(), 15);
            let kept: Vec<Event> = store
                .outbox_after(None, 100)
                .unwrap()
                .iter()
                .map(|(_, e)| serde_json::from_slice(&e.payload).unwrap())
                .collect();
            assert_eq!(kept, evs[15..], "the newest ten, in order");
            assert_eq!(store.event_count(), 25, "every event is still in the store");
            // Removing an entry that eviction already took changes nothing.
            store.outbox_remove(0).unwrap();
            assert_eq!(store.outbox_len(), 10);
        }
        let reopened = open_again(dir.path()).unwrap();
        assert_eq!(reopened.outbox_len(), 10, "the count is rebuilt on open");
    }

    fn event_at(n: u32, start_ns: u64) -> Event {
        let mut e = event(n);
        e.start_ns = start_ns;
        e
    }

    /// A detection record as schemas 1 and 2 stored it.
    fn legacy_record(n: u32, captured_at_ns: u64) -> (String, Vec<u8>) {
        let id = vigil_core::event::new_event_id();
        let json = serde_json::json!({
            "id": id, "kind": "detection", "device_id": "d", "camera_id": "c", "label": "circle",
            "class_id": 0, "score": 0.75, "box": { "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0 },
            "box_norm": [0.1, 0.2, 0.3, 0.4],
            "frame": { "seq": n, "pts_ns": null, "captured_at": "2026-11-24T08:00:00Z",
                       "captured_at_ns": captured_at_ns, "width": 10, "height": 10 },
            "model": { "name": "m", "version": "1", "backend": "b" },
            "latency": { "total_ms": 1.0, "queue_ms": 0.0, "preprocess_ms": 0.0, "inference_ms": 1.0, "postprocess_ms": 0.0 }
        });
        (id, serde_json::to_vec(&json).unwrap())
    }

    /// Waits out sled's flusher, which may hold the file lock for a moment after a drop.
    fn open_again(dir: &Path) -> Result<Store, StoreError> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other,
            }
        }
    }

    /// The store's sled database opened directly (to write what older versions or crashes left),
    /// waiting out the lock a just-dropped handle's flusher thread may still hold.
    fn raw_db(dir: &Path) -> sled::Db {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match sled::open(dir.join("store")) {
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.expect("the store's sled database opens"),
            }
        }
    }

    /// A store as schema 1 wrote it: events, outbox and meta, no time index.
    fn write_v1_store(dir: &Path, records: &[(String, Vec<u8>)], version_key: bool) {
        let db = raw_db(dir);
        let tree = db.open_tree("events").unwrap();
        for (id, json) in records {
            tree.insert(id.as_bytes(), json.as_slice()).unwrap();
        }
        if version_key {
            db.open_tree("meta").unwrap().insert(SCHEMA_KEY, &1u64.to_be_bytes()).unwrap();
        }
        db.flush().unwrap();
    }

    #[test]
    fn a_schema_1_store_is_migrated_to_the_time_index_and_lifecycle_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut records: Vec<(String, Vec<u8>)> =
            [(0, 300), (1, 100), (2, 200), (3, 400)].iter().map(|&(n, t)| legacy_record(n, t)).collect();
        records.push(("019ab3c2-0000-7000-8000-000000000bad".into(), b"{\"not\": \"an event\"}".to_vec()));
        write_v1_store(dir.path(), &records, true);
        let store = open_again(dir.path()).unwrap();
        let version = store.db.open_tree("meta").unwrap().get(SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(version.as_ref().try_into().unwrap()), SCHEMA_VERSION);
        let between: Vec<Event> = store.events_between(100, 400).map(Result::unwrap).collect();
        assert_eq!(
            between.iter().map(|e| e.start_ns).collect::<Vec<_>>(),
            [100, 200, 300],
            "start order, end excluded"
        );
        let e = &between[0];
        assert_eq!(
            (e.id.as_str(), e.phase, e.end_reason),
            (records[1].0.as_str(), Phase::End, Some(EndReason::Migrated))
        );
        assert_eq!((e.best_score, e.best.seq, e.end_ns, e.frames), (0.75, 1, Some(100), 1));
        assert_eq!(e.bbox, vigil_core::event::PixelBox { x1: 1.0, y1: 2.0, x2: 3.0, y2: 4.0 });
        assert_eq!(store.event_count(), 4, "every readable event kept");
        assert_eq!(store.events().count(), 4, "the unreadable record is out of the way");
        let quarantined = store.db.open_tree(QUARANTINE_TREE).unwrap();
        assert_eq!(quarantined.get(records[4].0.as_bytes()).unwrap().as_deref(), Some(&records[4].1[..]), "kept");
    }

    #[test]
    fn a_store_from_before_schema_versions_counts_as_version_1() {
        let dir = tempfile::tempdir().unwrap();
        write_v1_store(dir.path(), &[legacy_record(0, 5)], false);
        let store = open_again(dir.path()).unwrap();
        assert_eq!(store.events_between(0, 10).count(), 1);
    }

    #[test]
    fn a_migration_interrupted_before_its_version_bump_runs_again_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let records = [legacy_record(0, 10), legacy_record(1, 20)];
        write_v1_store(dir.path(), &records, true);
        {
            // The index half written, the version never bumped: what a crash leaves.
            let db = raw_db(dir.path());
            db.open_tree(BY_TIME_TREE).unwrap().insert(time_key(10, records[0].0.as_bytes()), &[][..]).unwrap();
            db.flush().unwrap();
        }
        let store = open_again(dir.path()).unwrap();
        assert_eq!(store.events_between(0, 100).count(), 2, "each event indexed once");
        assert_eq!(store.by_time.len(), 2);
    }

    #[test]
    fn retention_deletes_the_oldest_by_age_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sec = 1_000_000_000u64;
        // Ten events captured at 1 s … 10 s, appended out of order.
        let mut evs: Vec<Event> = (1..=10).map(|s| event_at(s as u32, s * sec)).collect();
        evs.reverse();
        store.append(&evs, "t").unwrap();
        let per_event = store.event_bytes() / 10;
        let loose = Retention { max_age: None, max_events: 100, max_bytes: u64::MAX };
        assert_eq!(store.enforce_retention(&loose, 10 * sec).unwrap().total(), 0);

        // Age: at t = 10 s, keep what is at most 6.5 s old (captured at 3.5 s or later).
        let by_age = Retention { max_age: Some(std::time::Duration::from_millis(6_500)), ..loose };
        assert_eq!(store.enforce_retention(&by_age, 10 * sec).unwrap().by_age, 3);
        // Count: at most 5.
        let by_count = Retention { max_events: 5, ..loose };
        assert_eq!(store.enforce_retention(&by_count, 10 * sec).unwrap().by_count, 2);
        // Bytes: room for about three records.
        let by_bytes = Retention { max_bytes: per_event * 3 + per_event / 2, ..loose };
        assert_eq!(store.enforce_retention(&by_bytes, 10 * sec).unwrap().by_bytes, 2);

        let left: Vec<u64> = store.events_between(0, u64::MAX).map(|e| e.unwrap().start_ns / sec).collect();
        assert_eq!(left, [8, 9, 10], "the newest survive");
        assert_eq!(store.event_count(), 3);
        assert_eq!(store.outbox_len(), 10, "queued copies are still sent");
        let bytes = store.event_bytes();
        drop(store);
        let reopened = open_again(dir.path()).unwrap();
        assert_eq!((reopened.event_count(), reopened.event_bytes()), (3, bytes), "counts rebuilt on open");
    }

    #[tokio::test]
    async fn new_events_are_indexed_by_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(&[event_at(0, 50), event_at(1, 10)], "t").unwrap();
        let got: Vec<u64> = store.events_between(0, 100).map(|e| e.unwrap().start_ns).collect();
        assert_eq!(got, [10, 50]);
    }

    #[tokio::test]
    async fn the_uplink_sees_only_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(&[event(0)], "t/events").unwrap();
        store.enqueue("t/metrics", b"{}").unwrap();
        assert!(store.outbox_after(None, 10).unwrap().is_empty(), "nothing before the flush");
        store.flush().await.unwrap();
        let first = store.outbox_after(None, 10).unwrap();
        assert_eq!(first.iter().map(|(_, e)| e.topic.as_str()).collect::<Vec<_>>(), ["t/events", "t/metrics"]);
        store.enqueue("t/reply", b"{}").unwrap();
        let cursor = Some(first[1].0);
        assert!(store.outbox_after(cursor, 10).unwrap().is_empty());
        store.flush().await.unwrap();
        assert_eq!(store.outbox_after(cursor, 10).unwrap()[0].1.topic, "t/reply");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = raw_db(dir.path());
            db.open_tree("meta").unwrap().insert(SCHEMA_KEY, &99u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = open_again(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("schema 99"), "{err}");
    }

    #[tokio::test]
    async fn each_message_replaces_the_stored_revision_and_open_events_are_closed_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = event(1);
        (open.phase, open.revision, open.end, open.end_ns, open.end_reason) = (Phase::New, 0, None, None, None);
        let mut update = open.clone();
        (update.phase, update.revision, update.frames) = (Phase::Update, 1, 7);
        let closed = update.ended(EndReason::Lost);
        let mut other = open.clone();
        other.id = vigil_core::event::new_event_id();
        {
            let store = Store::open(dir.path()).unwrap();
            store.append(&[open.clone(), update.clone()], "t").unwrap();
            store.append(&[closed.clone(), other.clone()], "t").unwrap();
            assert_eq!(store.event_count(), 2, "two events, four messages");
            assert_eq!(store.outbox_len(), 4);
            assert_eq!(store.event(&open.id).unwrap(), Some(closed.clone()), "the latest revision");
            let json = |e: &Event| serde_json::to_vec(e).unwrap().len() as u64;
            assert_eq!(store.event_bytes(), json(&closed) + json(&other));
            store.flush().await.unwrap();
        } // a crash here leaves `other` open
        let store = open_again(dir.path()).unwrap();
        assert_eq!(store.close_open_events("t").unwrap(), 1);
        store.flush().await.unwrap();
        let ended = store.event(&other.id).unwrap().unwrap();
        assert_eq!((ended.phase, ended.revision, ended.end_reason), (Phase::End, 1, Some(EndReason::Restart)));
        assert_eq!(ended.end_ns, Some(ended.last_ns));
        let last = store.outbox_after(None, 10).unwrap().pop().unwrap().1;
        assert_eq!(serde_json::from_slice::<Event>(&last.payload).unwrap(), ended, "the end is queued for MQTT");
        assert_eq!(store.close_open_events("t").unwrap(), 0, "nothing left open");
    }

    #[tokio::test]
    async fn snapshots_count_toward_retention_and_go_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<Event> = (1..=4).map(|n| event_at(n, u64::from(n))).collect();
        {
            let store = Store::open(dir.path()).unwrap();
            store.append(&evs, "t").unwrap();
            for e in &evs {
                store.write_snapshot(&e.id, &[7u8; 10_000]).unwrap();
            }
            store.write_snapshot(&evs[0].id, &[7u8; 5_000]).unwrap(); // replaced by a better one
            store.sync_snapshots().unwrap();
            assert_eq!(store.snapshot_bytes(), 35_000);
            // Room for about two events with their pictures.
            let r = Retention { max_age: None, max_events: 100, max_bytes: 2 * 10_000 + store.event_bytes() };
            assert_eq!(store.enforce_retention(&r, 0).unwrap().by_bytes, 2);
            assert!(!store.snapshot_file(&evs[0].id).exists(), "deleted with its event");
            assert_eq!(store.snapshot_bytes(), 20_000);
            assert_eq!(store.evict_oldest(1).unwrap(), 1);
            store.flush().await.unwrap();
            // A picture whose event never made it to the store (a crash in between), and a
            // half-written one.
            std::fs::write(store.snapshot_dir().join("019ab3c2-0000-7000-8000-00000000dead.jpg"), b"x").unwrap();
            std::fs::write(store.snapshot_dir().join(format!("{}.jpg.tmp", evs[3].id)), b"x").unwrap();
        }
        let store = open_again(dir.path()).unwrap();
        let files: Vec<String> = std::fs::read_dir(store.snapshot_dir())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, [format!("{}.jpg", evs[3].id)], "strays removed at open");
        assert_eq!(store.snapshot_bytes(), 10_000);
    }

    #[test]
    fn outbox_entries_round_trip_and_reject_garbage() {
        let e = OutboxEntry { topic: "vigil/d/events".into(), payload: b"{}".to_vec() };
        assert_eq!(OutboxEntry::decode(1, &e.encode()).unwrap(), e);
        assert!(OutboxEntry::decode(1, &[0]).is_err());
        assert!(OutboxEntry::decode(1, &[0, 9, b'a']).is_err());
    }
}
