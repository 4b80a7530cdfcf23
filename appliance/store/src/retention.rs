//! Keeping the store within its bounds: retention by age, count and bytes, and the free-space
//! guard that evicts the oldest events when the file system runs low.

use std::path::Path;

use crate::*;

/// Limits on the events kept (see [`Store::enforce_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<std::time::Duration>,
    pub max_events: usize,
    /// Bytes the store may take: event records (at `record_factor` times their size) and
    /// snapshot files.
    pub max_bytes: u64,
    /// What a byte of event record costs on disk; see [`SLED_SPACE_FACTOR`].
    pub record_factor: u64,
}

/// sled's space amplification under steady churn: its files hold 3.3 to 3.9 times the live
/// bytes of the records in them once retention deletes as fast as events arrive (measured by
/// `vigil-store-bench`, docs/performance.md; SQLite under the same churn: 1.5). sled does not give
/// deleted space back to the file system but reuses it, so the ratio stays flat. Counting each
/// record byte at this factor keeps the data directory under `store.max_event_mb` (above ~40 MiB:
/// sled's files also have a fixed part of about 8 MiB).
pub const SLED_SPACE_FACTOR: u64 = 4;

impl Retention {
    pub fn from_config(c: &vigil_config::StoreConfig) -> Self {
        Self {
            max_age: c.max_age,
            max_events: c.max_events,
            max_bytes: c.max_event_mb << 20,
            record_factor: SLED_SPACE_FACTOR,
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

/// After a slice of evictions that freed nothing, how much further free space must fall before
/// the next slice (or a twentieth of `min_free`, if more).
pub const NO_GAIN_STEP: u64 = 1 << 20;

impl Store {
    /// Deletes the oldest events (by start time), with their snapshots, until none is older
    /// than `retention.max_age` before `now_ns` and the count and bytes (records and snapshots)
    /// are within bounds. Outbox copies are not touched: an event still waiting to be sent is
    /// still sent. Not flushed (a deletion lost in a crash is done again).
    pub fn enforce_retention(&self, retention: &Retention, now_ns: u64) -> Result<RetentionReport, StoreError> {
        let cutoff = retention.max_age.map_or(0, |age| now_ns.saturating_sub(age.as_nanos() as u64));
        let mut report = RetentionReport::default();
        while let Some((at, key)) = self.oldest_indexed()? {
            let reason = if at < cutoff {
                &mut report.by_age
            } else if self.event_count() > retention.max_events {
                &mut report.by_count
            } else if self.event_bytes().saturating_mul(retention.record_factor.max(1)) + self.snapshot_bytes()
                > retention.max_bytes
            {
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
    /// Returns how many events went.
    ///
    /// Snapshot files give their space back at once; sled does not: it keeps its files and
    /// reuses the space of deleted records for new ones. So a slice that freed nothing (the
    /// space is sled's own) is the last until free space falls a further step below where that
    /// slice left it ([`NO_GAIN_STEP`]): new records then fill the reused space and no more. This
    /// keeps a disk that sled's files fill from losing every event, a slice each second.
    pub fn make_room(&self, min_free: u64) -> Result<usize, StoreError> {
        self.make_room_with(min_free, || self.free_space())
    }

    /// [`Store::make_room`] with the free space read by `free` (scripted in tests).
    pub(crate) fn make_room_with(
        &self,
        min_free: u64,
        free: impl Fn() -> std::io::Result<u64>,
    ) -> Result<usize, StoreError> {
        let read = || match free() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the free space of the data directory");
                None
            }
        };
        let mut floor = self.no_gain_floor.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = 0;
        while let Some(before) = read() {
            if before >= min_free || self.event_count() == 0 {
                *floor = None;
                break;
            }
            if floor.is_some_and(|f| before >= f) {
                break;
            }
            // A slice: 2 % of the events, at least 20.
            let n = self.evict_oldest((self.event_count() / 50).max(20))?;
            evicted += n;
            let Some(after) = read() else { break };
            if n == 0 || after <= before {
                *floor = Some(after.saturating_sub(NO_GAIN_STEP.max(min_free / 20)));
                break;
            }
        }
        drop(floor);
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
            let Some((_, key)) = self.oldest_indexed()? else { break };
            self.delete_indexed(&key)?;
            done += 1;
        }
        Ok(done)
    }

    /// The oldest well-formed entry of the time index, as (start time, key); malformed keys met
    /// at the head on the way are quarantined.
    fn oldest_indexed(&self) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        while let Some((key, _)) = self.by_time.first()? {
            match index_time(&key) {
                Some(at) => return Ok(Some((at, key))),
                None => self.quarantine_index_key(&key)?,
            }
        }
        Ok(None)
    }

    /// Moves a time-index key that is not `time‖id` out of the index (kept in the quarantine
    /// tree, never deleted): it cannot be ordered or followed, and left at the head of the index
    /// it would stop retention for good.
    fn quarantine_index_key(&self, key: &[u8]) -> Result<(), StoreError> {
        tracing::error!(key = ?key, "malformed time-index key moved to quarantine");
        let quarantine = self.db.open_tree(QUARANTINE_TREE)?;
        let mut kept = format!("{BY_TIME_TREE}/").into_bytes();
        kept.extend_from_slice(key);
        quarantine.insert(kept, key)?;
        self.by_time.remove(key)?;
        Ok(())
    }

    /// Deletes the event under time-index key `key` (well-formed: see [`index_time`]), its index
    /// entry and its snapshot.
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
}

/// The start time of a time-index key (`time‖id`); `None` for a malformed one.
pub(crate) fn index_time(key: &[u8]) -> Option<u64> {
    (key.len() > 8).then(|| u64::from_be_bytes(key[..8].try_into().expect("8 bytes: checked above")))
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}
