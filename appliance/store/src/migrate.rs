//! Numbered schema migrations, `vN → vN+1`, run in order when an older store is opened. Each is
//! idempotent; the version is bumped (and flushed) only after its work is durable, so a crash
//! mid-migration re-runs it on the next start.

use vigil_core::event::{EndReason, Event, Phase};

use crate::*;

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
                    clock_unsynchronized: false,
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

pub(crate) fn migrate(db: &sled::Db, meta: &sled::Tree, mut version: u64) -> Result<(), StoreError> {
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
