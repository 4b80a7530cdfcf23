//! Event snapshots on disk: the store writer encodes and writes a burst's pictures in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use vigil_core::event::{Emitted, Event};

use crate::Store;

/// How the store writer saves a burst's snapshots.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// Threads that encode and write at once (see [`default_workers`]).
    pub workers: usize,
    /// Once cancelled (a stop), images are no longer encoded.
    pub cutoff: CancellationToken,
}

/// Snapshot threads for this machine: every core but one (left to the scheduler), 1 to 4.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 4)
}

/// What [`save`] did with a burst.
#[derive(Debug)]
pub struct Saved {
    /// The burst's messages, each naming its snapshot only if the file is on disk.
    pub events: Vec<Event>,
    pub written: usize,
    /// Images not encoded because the cutoff had passed.
    pub skipped: usize,
}

/// Encodes and writes a burst's snapshots on `options.workers` threads, then makes them durable
/// (the directory synced once). Only the last image of each event in the burst is written (an
/// earlier one would be overwritten by it: one file per event). An event's message names its
/// snapshot only when the file is on disk: one whose image was skipped or could not be written
/// (a full disk), now or for an earlier message of the event, goes out without one.
pub fn save(store: &Store, burst: Vec<Emitted>, options: &SaveOptions) -> Saved {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, m) in burst.iter().enumerate() {
        if m.snapshot.is_some() {
            last.insert(m.event.id.as_str(), i);
        }
    }
    let mut jobs: Vec<usize> = last.into_values().collect();
    jobs.sort_unstable();
    let outcomes = run_parallel(&jobs, options.workers, |i| {
        let Emitted { event, snapshot } = &burst[i];
        let image = snapshot.as_ref().expect("a job has an image");
        if options.cutoff.is_cancelled() {
            return None;
        }
        Some(
            image
                .encode_jpeg(options.quality)
                .map_err(|e| e.to_string())
                .and_then(|jpeg| store.write_snapshot(&event.id, &jpeg).map_err(|e| e.to_string())),
        )
    });
    let (mut written, mut skipped) = (0, 0);
    for (&i, outcome) in jobs.iter().zip(outcomes) {
        match outcome {
            Some(Ok(())) => written += 1,
            Some(Err(e)) => tracing::warn!(event = %burst[i].event.id, error = %e, "snapshot not stored"),
            None => skipped += 1,
        }
    }
    if written > 0 {
        if let Err(e) = store.sync_snapshots() {
            tracing::warn!(error = %e, "cannot sync the snapshot directory");
        }
    }
    let events = burst
        .into_iter()
        .map(|Emitted { mut event, .. }| {
            if event.snapshot.is_some() && !store.snapshot_file(&event.id).is_file() {
                event.snapshot = None;
            }
            event
        })
        .collect();
    Saved { events, written, skipped }
}

/// `work` on each of `jobs` on up to `workers` scoped threads (none for one job or one worker);
/// the results in the order of `jobs`.
fn run_parallel<T: Send>(jobs: &[usize], workers: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let workers = workers.clamp(1, jobs.len().max(1));
    if workers == 1 {
        return jobs.iter().map(|&i| work(i)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while let Some(&i) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        mine.push((i, work(i)));
                    }
                    mine
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("a snapshot thread panicked")).collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use vigil_core::picture::SnapshotImage;

    /// A message of event `id` naming its snapshot, with a `w`×8 image if `w` is given.
    fn message(id: &str, w: Option<u16>) -> Emitted {
        let mut event = vigil_core::event::test_event(1);
        event.id = id.to_owned();
        event.snapshot = Some(format!("snapshots/{id}.jpg"));
        let snapshot = w.map(|w| Arc::new(SnapshotImage { rgb: vec![128; w as usize * 8 * 3], width: w, height: 8 }));
        Emitted { event, snapshot }
    }

    /// Width and height from a baseline JPEG's frame header.
    fn jpeg_size(jpeg: &[u8]) -> (u16, u16) {
        let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline frame header");
        let be = |at: usize| u16::from_be_bytes([jpeg[sof + at], jpeg[sof + at + 1]]);
        (be(7), be(5))
    }

    fn options(workers: usize) -> SaveOptions {
        SaveOptions { quality: 90, workers, cutoff: CancellationToken::new() }
    }

    #[test]
    fn each_event_gets_its_own_last_image_whatever_the_threads() {
        for workers in [1, 4] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            // 20 events, each image a width of its own; event e0 twice (a better image later),
            // and an `end` without an image.
            let mut burst: Vec<Emitted> = (0..20).map(|n| message(&format!("e{n}"), Some(8 + n))).collect();
            burst.push(message("e0", Some(100)));
            burst.push(message("e5", None));
            let saved = save(&store, burst, &options(workers));
            assert_eq!((saved.written, saved.skipped), (20, 0), "{workers} workers");
            assert_eq!(saved.events.len(), 22);
            assert!(saved.events.iter().all(|e| e.snapshot.is_some()));
            for n in 1..20u16 {
                let jpeg = std::fs::read(store.snapshot_file(&format!("e{n}"))).unwrap();
                assert_eq!(jpeg_size(&jpeg), (8 + n, 8), "e{n} with {workers} workers");
            }
            let e0 = std::fs::read(store.snapshot_file("e0")).unwrap();
            assert_eq!(jpeg_size(&e0), (100, 8), "the later image of e0");
        }
    }

    #[test]
    fn past_the_cutoff_images_are_skipped_and_messages_name_only_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let opts = options(2);
        let first = save(&store, vec![message("old", Some(8))], &opts);
        assert_eq!(first.written, 1);

        opts.cutoff.cancel();
        let saved = save(&store, vec![message("old", Some(16)), message("new", Some(8)), message("new", None)], &opts);
        assert_eq!((saved.written, saved.skipped), (0, 2));
        // An event with an earlier snapshot on disk keeps naming it (the earlier image).
        assert_eq!(saved.events[0].snapshot.as_deref(), Some("snapshots/old.jpg"));
        assert_eq!(jpeg_size(&std::fs::read(store.snapshot_file("old")).unwrap()), (8, 8));
        // One without goes without, in every message of it.
        assert_eq!((saved.events[1].snapshot.as_deref(), saved.events[2].snapshot.as_deref()), (None, None));
        assert!(!store.snapshot_file("new").exists(), "nothing written past the cutoff");
    }
}
