//! The queue between the scheduler and the store writer: event messages, some with a picture
//! (raw RGB at the model's resolution, up to ~1 MB each).
//!
//! Bounds: `batches` batches (one batch is the messages of one frame or one expiry pass), and
//! `max_bytes` of pictures. Overflow policy, in order:
//! 1. over the byte bound, the pictures of `update` messages are shed (their events keep the
//!    picture they already have; `new` and `end` pictures are never shed), counted in
//!    [`EventSender::shed`];
//! 2. still over it, or out of batch slots, the scheduler waits (frames then age out and are
//!    dropped as stale upstream). Event messages themselves are never dropped.
//!
//! A batch larger than the whole byte bound is let through alone (the queue empty), so that no
//! batch waits forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::mpsc;
use vigil_core::event::{Emitted, Phase};

/// One side of the byte budget: bytes queued, and a wake-up for a sender waiting for room.
#[derive(Default)]
struct Budget {
    queued: Mutex<usize>,
    room: Condvar,
}

pub struct EventSender {
    tx: mpsc::Sender<Vec<Emitted>>,
    budget: Arc<Budget>,
    max_bytes: usize,
    shed: Arc<AtomicU64>,
}

pub struct EventReceiver {
    rx: mpsc::Receiver<Vec<Emitted>>,
    budget: Arc<Budget>,
}

/// A queue of at most `batches` batches and `max_bytes` of pictures.
pub fn event_queue(batches: usize, max_bytes: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = mpsc::channel(batches);
    let budget = Arc::new(Budget::default());
    (
        EventSender { tx, budget: budget.clone(), max_bytes, shed: Arc::new(AtomicU64::new(0)) },
        EventReceiver { rx, budget },
    )
}

fn picture_bytes(batch: &[Emitted]) -> usize {
    batch.iter().filter_map(|m| m.snapshot.as_ref()).map(|p| p.rgb.len()).sum()
}

impl EventSender {
    /// Queues `batch`, waiting for room (on the scheduler's thread, never in async code).
    /// `false` when the receiver is gone (shutting down).
    pub fn send_blocking(&self, mut batch: Vec<Emitted>) -> bool {
        let mut bytes = picture_bytes(&batch);
        let mut queued = self.budget.queued.lock().unwrap_or_else(|p| p.into_inner());
        if *queued + bytes > self.max_bytes {
            for m in batch.iter_mut().filter(|m| m.event.phase == Phase::Update) {
                if let Some(p) = m.snapshot.take() {
                    bytes -= p.rgb.len();
                    self.shed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while *queued > 0 && *queued + bytes > self.max_bytes {
            // Checked under the lock the receiver's drop takes to notify: no lost wake-up.
            if self.tx.is_closed() {
                return false;
            }
            queued = self.budget.room.wait(queued).unwrap_or_else(|p| p.into_inner());
        }
        *queued += bytes;
        drop(queued);
        if self.tx.blocking_send(batch).is_err() {
            self.release(bytes);
            return false;
        }
        true
    }

    /// Pictures of `update` messages shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    fn release(&self, bytes: usize) {
        release(&self.budget, bytes);
    }
}

fn release(budget: &Budget, bytes: usize) {
    let mut queued = budget.queued.lock().unwrap_or_else(|p| p.into_inner());
    *queued = queued.saturating_sub(bytes);
    budget.room.notify_all();
}

impl EventReceiver {
    pub async fn recv(&mut self) -> Option<Vec<Emitted>> {
        let batch = self.rx.recv().await?;
        release(&self.budget, picture_bytes(&batch));
        Some(batch)
    }

    /// A batch already queued, if any.
    pub fn try_recv(&mut self) -> Option<Vec<Emitted>> {
        let batch = self.rx.try_recv().ok()?;
        release(&self.budget, picture_bytes(&batch));
        Some(batch)
    }
}

impl Drop for EventReceiver {
    /// Wakes a sender waiting for room: with the receiver gone it must not wait forever.
    fn drop(&mut self) {
        // Close, then notify under the lock: a sender either sees the channel closed or is
        // already waiting when the notification comes.
        self.rx.close();
        let _queued = self.budget.queued.lock().unwrap_or_else(|p| p.into_inner());
        self.budget.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vigil_core::event::test_event;
    use vigil_core::picture::SnapshotImage;

    use super::*;

    fn message(phase: Phase, picture: Option<usize>) -> Emitted {
        let mut event = test_event(1);
        event.phase = phase;
        let snapshot = picture.map(|n| Arc::new(SnapshotImage { rgb: vec![0; n], width: 1, height: 1 }));
        Emitted { event, snapshot }
    }

    fn pictures(batch: &[Emitted]) -> Vec<bool> {
        batch.iter().map(|m| m.snapshot.is_some()).collect()
    }

    #[test]
    fn over_the_byte_bound_update_pictures_are_shed_and_new_and_end_pictures_kept() {
        let (tx, mut rx) = event_queue(8, 1000);
        assert!(tx.send_blocking(vec![message(Phase::New, Some(600))]));
        // 600 queued: 600 more of update pictures would pass the bound; the new and end ones stay.
        let batch =
            vec![message(Phase::Update, Some(300)), message(Phase::New, Some(100)), message(Phase::Update, Some(300))];
        assert!(tx.send_blocking(batch));
        assert_eq!(tx.shed(), 2);
        assert_eq!(pictures(&rx.try_recv().unwrap()), [true]);
        assert_eq!(pictures(&rx.try_recv().unwrap()), [false, true, false], "the messages themselves all arrive");
        // The writer caught up: update pictures pass again.
        assert!(tx.send_blocking(vec![message(Phase::Update, Some(300))]));
        assert_eq!(pictures(&rx.try_recv().unwrap()), [true]);
        assert_eq!(tx.shed(), 2);
    }

    #[test]
    fn with_no_room_for_kept_pictures_the_sender_waits_for_the_writer() {
        let (tx, mut rx) = event_queue(8, 1000);
        assert!(tx.send_blocking(vec![message(Phase::New, Some(900))]));
        let sender = std::thread::spawn(move || {
            let sent = tx.send_blocking(vec![message(Phase::End, Some(900))]);
            (sent, tx)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!sender.is_finished(), "1800 bytes would be queued: the sender waits");
        assert!(rx.try_recv().is_some());
        let (sent, tx) = sender.join().unwrap();
        assert!(sent);
        assert_eq!(pictures(&rx.try_recv().unwrap()), [true], "an end picture is never shed");
        assert_eq!(tx.shed(), 0);
        // A batch over the whole bound still goes, alone.
        assert!(tx.send_blocking(vec![message(Phase::New, Some(5000))]));
        assert!(rx.try_recv().is_some());
    }

    #[test]
    fn a_waiting_sender_is_released_when_the_writer_goes() {
        let (tx, rx) = event_queue(8, 1000);
        assert!(tx.send_blocking(vec![message(Phase::New, Some(900))]));
        let sender = std::thread::spawn(move || tx.send_blocking(vec![message(Phase::End, Some(900))]));
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
        assert!(!sender.join().unwrap(), "told the writer is gone");
    }
}
