//! The store's guarantees, on sled in a temporary directory.

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
    open_again_with(dir, Store::open)
}

/// `open` of the store in `dir`, waiting out the lock a just-dropped handle's flusher may hold.
fn open_again_with(dir: &Path, open: fn(&Path) -> Result<Store, StoreError>) -> Result<Store, StoreError> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open(dir) {
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
    assert_eq!(between.iter().map(|e| e.start_ns).collect::<Vec<_>>(), [100, 200, 300], "start order, end excluded");
    let e = &between[0];
    assert_eq!((e.id.as_str(), e.phase, e.end_reason), (records[1].0.as_str(), Phase::End, Some(EndReason::Migrated)));
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
    let loose = Retention { max_age: None, max_events: 100, max_bytes: u64::MAX, record_factor: 1 };
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
        let r =
            Retention { max_age: None, max_events: 100, max_bytes: 2 * 10_000 + store.event_bytes(), record_factor: 1 };
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

#[tokio::test]
async fn entries_that_can_never_be_sent_are_dropped_and_counted_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Refused at the door: over the broker's packet limit.
    let err = store.enqueue("vigil/d/reply/r", &vec![b'x'; MAX_PACKET_BYTES]).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert_eq!(store.outbox_len(), 0);
    // Already on disk (written by an older vigil, or damaged): an oversized entry and an
    // unreadable one ahead of a good one.
    let write_raw = |bytes: Vec<u8>| {
        let key = store.db.generate_id().unwrap();
        store.outbox.insert(key.to_be_bytes(), bytes).unwrap();
        store.outbox_count.fetch_add(1, Ordering::Relaxed);
        store.written_next.fetch_max(key + 1, Ordering::SeqCst);
    };
    write_raw(OutboxEntry { topic: "vigil/d/reply/r".into(), payload: vec![b'x'; MAX_PACKET_BYTES] }.encode());
    write_raw(vec![0xFF]);
    store.enqueue("vigil/d/events", b"{}").unwrap();
    store.flush().await.unwrap();
    let out = store.outbox_after(None, 10).unwrap();
    assert_eq!(out.len(), 1, "only the good entry is offered");
    assert_eq!(out[0].1.topic, "vigil/d/events");
    assert_eq!((store.outbox_dropped(), store.outbox_len()), (2, 1));
    // And they are gone: the next read (after a reconnect, from the start) does not meet them.
    assert_eq!(store.outbox_after(None, 10).unwrap().len(), 1);
    assert_eq!(store.outbox_dropped(), 2);
}

#[tokio::test]
async fn a_malformed_index_key_is_an_error_or_quarantined_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&[event_at(1, 5_000)], "t").unwrap();
    // A key too short to hold a time and an id.
    store.by_time.insert(b"\x00\x01", b"").unwrap();
    let read: Vec<Result<Event, StoreError>> = store.events_between(0, u64::MAX).collect();
    let corrupt = read.iter().filter(|r| matches!(r, Err(StoreError::Corrupt { .. }))).count();
    assert_eq!((corrupt, read.len()), (1, 2), "a read says what is wrong and goes on to the good entry: {read:?}");
    // Retention moves it aside and carries on.
    let retention = Retention { max_age: None, max_events: 0, max_bytes: u64::MAX, record_factor: 1 };
    let report = store.enforce_retention(&retention, 10_000).unwrap();
    assert_eq!((report.by_count, store.event_count()), (1, 0));
    let quarantine = store.db.open_tree(QUARANTINE_TREE).unwrap();
    assert_eq!(quarantine.len(), 1, "kept, not deleted");
    assert_eq!(store.by_time.len(), 0);
    store.by_time.insert(b"\x07", b"").unwrap();
    assert_eq!(store.evict_oldest(5).unwrap(), 0);
    assert_eq!(quarantine.len(), 2);
}

#[tokio::test]
async fn a_reader_neither_migrates_nor_deletes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.append(&[event_at(1, 5_000)], "t").unwrap();
        store.flush().await.unwrap();
    }
    // A stray snapshot file (no event): the owner would remove it; a reader leaves it.
    let stray = dir.path().join("snapshots/stray.jpg");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"jpeg").unwrap();
    {
        let reader = open_again_with(dir.path(), Store::open_read_only).unwrap();
        assert_eq!(reader.events().count(), 1);
    }
    assert!(stray.exists(), "a reader deleted a file");
    // An older schema is refused by a reader, and left as it was.
    write_v1_store(dir.path(), &[legacy_record(1, 7)], true);
    let err = open_again_with(dir.path(), Store::open_read_only).err().expect("refused");
    assert!(matches!(err, StoreError::TooOld { found: 1, .. }), "{err}");
    assert!(err.to_string().contains("start the vigil service once"), "{err}");
    let meta = raw_db(dir.path()).open_tree("meta").unwrap();
    assert_eq!(meta.get(SCHEMA_KEY).unwrap().as_deref(), Some(&1u64.to_be_bytes()[..]), "not migrated");
}

#[tokio::test]
async fn after_a_clean_close_the_counts_are_read_not_rescanned_and_a_crash_rescans() {
    let dir = tempfile::tempdir().unwrap();
    let evs: Vec<Event> = (0..5).map(event).collect();
    {
        let store = Store::open(dir.path()).unwrap();
        store.append(&evs, "t").unwrap();
        store.write_snapshot(&evs[0].id, b"jpeg").unwrap();
        store.close().await.unwrap();
    }
    // Change the events behind the store's back: a reopen that trusts the record shows the
    // recorded counts, which proves it did not count again.
    raw_db(dir.path()).open_tree("events").unwrap().remove(evs[4].id.as_bytes()).unwrap();
    {
        let store = open_again(dir.path()).unwrap();
        assert_eq!((store.event_count(), store.outbox_len(), store.snapshot_bytes()), (5, 5, 4));
        // No close this time: a crash. The record is gone, so the next open counts.
        store.flush().await.unwrap();
    }
    let store = open_again(dir.path()).unwrap();
    assert_eq!((store.event_count(), store.outbox_len(), store.snapshot_bytes()), (4, 5, 4));
}

#[test]
fn when_the_space_is_sleds_own_the_guard_does_not_evict_every_event_each_second() {
    use std::cell::Cell;
    const MB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&(0..200).map(|n| event_at(n, u64::from(n))).collect::<Vec<_>>(), "t").unwrap();
    // sled's files fill the disk: deleting records frees nothing.
    let free = Cell::new(50 * MB);
    let mut evicted = 0;
    for _second in 0..60 {
        evicted += store.make_room_with(100 * MB, || Ok(free.get())).unwrap();
    }
    assert_eq!(evicted, 20, "one slice, then the guard waits for free space to fall further");
    // New records outgrow the reused space: free space falls by more than a step, one more slice.
    free.set(50 * MB - 6 * MB);
    for _second in 0..10 {
        evicted += store.make_room_with(100 * MB, || Ok(free.get())).unwrap();
    }
    assert_eq!(evicted, 40);
    // Where evicting does free space (snapshot files), slices go on until there is room.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&(0..200).map(|n| event_at(n, u64::from(n))).collect::<Vec<_>>(), "t").unwrap();
    let freed_per_slice = 10 * MB;
    let reading = Cell::new(0u32);
    let before = store.event_count();
    let scripted = || {
        let n = reading.get();
        reading.set(n + 1);
        // Readings alternate before/after a slice: each slice frees 10 MB from 44 MB up.
        Ok(44 * MB + u64::from(n.div_ceil(2)) * freed_per_slice)
    };
    store.make_room_with(100 * MB, scripted).unwrap();
    // 44 MB free, 10 MB more per slice: 6 slices reach 100 MB.
    assert_eq!((before - store.event_count()) / 20, 6);
}

#[test]
fn the_byte_bound_counts_records_at_sleds_space_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(&(0..10).map(|n| event_at(n, u64::from(n))).collect::<Vec<_>>(), "t").unwrap();
    let per_event = store.event_bytes() / 10;
    // Room for 5 records' footprint on disk: 5 × their size × the factor.
    let bound = Retention {
        max_age: None,
        max_events: 100,
        max_bytes: 5 * per_event * SLED_SPACE_FACTOR + 4,
        record_factor: SLED_SPACE_FACTOR,
    };
    let report = store.enforce_retention(&bound, 0).unwrap();
    assert_eq!((report.by_bytes, store.event_count()), (5, 5));
    // From the configuration, the factor is sled's.
    assert_eq!(Retention::from_config(&vigil_config::StoreConfig::default()).record_factor, SLED_SPACE_FACTOR);
}
