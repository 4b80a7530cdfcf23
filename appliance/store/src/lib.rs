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
use vigil_core::topic::MAX_PACKET_BYTES;

mod migrate;
mod outbox;
pub mod query;
mod retention;
pub mod snapshot;

pub use migrate::MIGRATIONS;
pub use outbox::OutboxEntry;
pub use retention::{free_space, Retention, RetentionReport, SLED_SPACE_FACTOR};

pub const SCHEMA_VERSION: u64 = 3;
/// Outbox bound when none is configured (`mqtt.outbox_max_messages`).
pub const DEFAULT_OUTBOX_LIMIT: usize = 100_000;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// sled's page cache. Its default, 1 GiB, is filled as a store is written and read (retention
/// scans, queries), so vigil's memory would grow with its store toward it, on a board whose
/// 4 GB are shared with the GPU. Pages beyond it are read back from the file (and the kernel's
/// page cache).
const CACHE_BYTES: u64 = 32 << 20;
/// The counts a clean close wrote down ([`Store::close`]); absent while a store is open.
const COUNTS_KEY: &[u8] = b"counts_at_close";

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
    #[error(
        "the store at {path} has schema {found}, older than this vigil's ({SCHEMA_VERSION}); it is read as it \
         is, never migrated by a reader: start the vigil service once (it migrates the store), or read it \
         with the vigil that wrote it"
    )]
    TooOld { path: PathBuf, found: u64 },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error(
        "a {bytes}-byte message on {topic} is over the {MAX_PACKET_BYTES}-byte MQTT packet limit: it was not \
         queued"
    )]
    TooLarge { topic: String, bytes: usize },
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
        let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT].map(|e| e.raw_os_error());
        io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error().is_some_and(|e| full.contains(&e))
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
    /// Outbox entries removed unsent because they could never be sent (too large, unreadable).
    outbox_dropped: Arc<AtomicU64>,
    /// The free space under which the disk guard evicts again, after a slice that freed nothing
    /// (see [`Store::make_room`]).
    no_gain_floor: Arc<std::sync::Mutex<Option<u64>>>,
}

/// What an opener may do to a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The service: migrate an older schema, tidy stray snapshot files.
    Owner,
    /// A reader (`vigil events` on a stopped service): no migration, no deletion.
    Reader,
}

impl Store {
    /// Opens (or creates) the store under `data_dir/store`, migrating an older schema.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_as(data_dir, Access::Owner)
    }

    /// Opens the store to read it (`vigil events` while the service is stopped): no migration
    /// and no deletion. A store of an older schema is refused with [`StoreError::TooOld`].
    pub fn open_read_only(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_as(data_dir, Access::Reader)
    }

    fn open_as(data_dir: &Path, access: Access) -> Result<Self, StoreError> {
        let path = data_dir.join("store");
        let config = sled::Config::new().path(&path).mode(sled::Mode::HighThroughput).cache_capacity(CACHE_BYTES);
        let db = config.open().map_err(|source| {
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
        match access {
            Access::Owner => migrate::migrate(&db, &meta, found)?,
            Access::Reader if found < SCHEMA_VERSION => return Err(StoreError::TooOld { path, found }),
            Access::Reader => {}
        }
        let outbox = db.open_tree("outbox")?;
        let next_key = match outbox.last()? {
            Some((k, _)) => k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0).saturating_add(1),
            None => 0,
        };
        let events = db.open_tree("events")?;
        let snapshots = data_dir.join("snapshots");
        // After a clean close the counts were written down: no scan of every event and file. An
        // owner takes the record away (durably) before anything changes, so that a crash from
        // here on is caught by the scan at the next start.
        let counts = match meta.get(COUNTS_KEY)?.as_deref().and_then(Counts::decode) {
            Some(c) => {
                if access == Access::Owner {
                    meta.remove(COUNTS_KEY)?;
                    db.flush()?;
                }
                c
            }
            None => Counts::scan(&events, &outbox, &snapshots, access == Access::Owner)?,
        };
        Ok(Self {
            by_time: db.open_tree(BY_TIME_TREE)?,
            open_events: db.open_tree(OPEN_TREE)?,
            snapshots,
            snapshot_bytes: Arc::new(AtomicU64::new(counts.snapshot_bytes)),
            events,
            event_total: Arc::new(AtomicUsize::new(counts.events as usize)),
            event_bytes: Arc::new(AtomicU64::new(counts.event_bytes)),
            write_lock: Arc::new(std::sync::Mutex::new(())),
            written_next: Arc::new(AtomicU64::new(next_key)),
            durable_next: Arc::new(AtomicU64::new(next_key)),
            outbox_count: Arc::new(AtomicUsize::new(counts.outbox as usize)),
            outbox,
            outbox_limit: DEFAULT_OUTBOX_LIMIT,
            outbox_evicted: Arc::new(AtomicU64::new(0)),
            outbox_dropped: Arc::new(AtomicU64::new(0)),
            no_gain_floor: Arc::new(std::sync::Mutex::new(None)),
            db,
        })
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Makes everything written so far durable.
    /// A clean close: writes the counts down (so the next open needs no scan) and flushes.
    /// Whoever closes a store writes nothing more to it.
    pub async fn close(&self) -> Result<(), StoreError> {
        let _writes = self.lock_writes();
        let counts = Counts {
            events: self.event_count() as u64,
            event_bytes: self.event_bytes(),
            snapshot_bytes: self.snapshot_bytes(),
            outbox: self.outbox_len() as u64,
        };
        self.db.open_tree("meta")?.insert(COUNTS_KEY, &counts.encode()[..])?;
        drop(_writes);
        self.flush().await
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        let upto = self.written_next.load(Ordering::SeqCst);
        self.db.flush_async().await?;
        self.durable_next.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    pub fn event_count(&self) -> usize {
        self.event_total.load(Ordering::Relaxed)
    }

    /// Bytes of the stored event records (what `max_event_mb` bounds).
    pub fn event_bytes(&self) -> u64 {
        self.event_bytes.load(Ordering::Relaxed)
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
                let id = k.get(8..).filter(|id| !id.is_empty()).ok_or_else(|| StoreError::Corrupt {
                    key: format!("{BY_TIME_TREE}/{}", String::from_utf8_lossy(&k)),
                    message: "a time-index key shorter than time‖id".into(),
                })?;
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

/// What a clean close writes down, so that the next open need not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    events: u64,
    event_bytes: u64,
    snapshot_bytes: u64,
    outbox: u64,
}

impl Counts {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0; 32];
        for (i, v) in [self.events, self.event_bytes, self.snapshot_bytes, self.outbox].into_iter().enumerate() {
            out[i * 8..(i + 1) * 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 32] = bytes.try_into().ok()?;
        let at = |i: usize| u64::from_be_bytes(bytes[i * 8..(i + 1) * 8].try_into().expect("8 bytes of 32"));
        Some(Self { events: at(0), event_bytes: at(1), snapshot_bytes: at(2), outbox: at(3) })
    }

    /// Counts by reading everything (after a crash, or a store closed by an older vigil); the
    /// owner also removes stray snapshot files on the way.
    fn scan(events: &sled::Tree, outbox: &sled::Tree, snapshots: &Path, owner: bool) -> Result<Self, StoreError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in events.iter() {
            let (_, v) = item?;
            n += 1;
            bytes += v.len() as u64;
        }
        let snapshot_bytes = tidy_snapshots(snapshots, events, owner)?;
        Ok(Self { events: n, event_bytes: bytes, snapshot_bytes, outbox: outbox.len() as u64 })
    }
}

/// Removes snapshot files without an event (a crash between the file and its event, or a
/// half-written `.tmp`) when `remove` (the owner), and returns the bytes of the rest.
fn tidy_snapshots(dir: &Path, events: &sled::Tree, remove: bool) -> Result<u64, StoreError> {
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
        } else if !remove {
            continue;
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

fn decode_event(key: &[u8], value: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: format!("events/{}", String::from_utf8_lossy(key)),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
