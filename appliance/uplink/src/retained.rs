//! A retained topic whose every change must reach the broker: the updater's `ota` state. A
//! `watch` channel keeps only the newest value, so a short step (`activating`, between a
//! `verifying` and a `canary` a few milliseconds apart) could be overwritten before the uplink
//! sent it, and nothing said when the broker had the outcome. Here each state waits in order until
//! the broker acknowledges it (PUBACK), is sent again after a reconnect, and may carry a
//! notification of that acknowledgement.
//!
//! Bounded: [`MAX_STATES`] states wait at most. A state that replaces the one before it with the
//! same key (a download's progress, once a second) takes its place while that one is not yet
//! handed over, so an offline device does not pile up progress; past the bound the oldest waiting
//! state without a notification goes (the newest is always kept: the retained value is the last).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

/// States waiting for the broker, at most.
pub const MAX_STATES: usize = 64;

struct Entry {
    seq: u64,
    key: String,
    payload: Vec<u8>,
    handed: bool,
    acked: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiting: VecDeque<Entry>,
    /// The last state the broker acknowledged: sent again (retained) on each new connection.
    last: Option<Vec<u8>>,
}

/// The states of one retained topic on their way to the broker.
#[derive(Default)]
pub struct RetainedLog {
    inner: Mutex<Inner>,
    pub(crate) changed: Notify,
}

impl RetainedLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `payload`. `key` names what it is a state of (`<request>:<phase>`): a state with the
    /// key of the last one waiting, not yet handed over, replaces it. `acked` is told once the
    /// broker has it (dropped if the state is replaced or given up).
    pub fn push(&self, key: &str, payload: Vec<u8>, acked: Option<oneshot::Sender<()>>) {
        let mut inner = self.lock();
        let replace = inner.waiting.back().is_some_and(|t| t.key == key && !t.handed && t.acked.is_none());
        if replace {
            let tail = inner.waiting.back_mut().expect("checked above");
            tail.payload = payload;
            tail.acked = acked;
        } else {
            let seq = inner.next;
            inner.next += 1;
            inner.waiting.push_back(Entry { seq, key: key.to_owned(), payload, handed: false, acked });
        }
        while inner.waiting.len() > MAX_STATES {
            let last = inner.waiting.len() - 1;
            let victim = inner.waiting.iter().take(last).position(|e| e.acked.is_none()).unwrap_or(0);
            inner.waiting.remove(victim);
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// The states not handed over yet, oldest first, now marked handed over.
    pub(crate) fn take_unhanded(&self) -> Vec<(u64, Vec<u8>)> {
        let mut inner = self.lock();
        inner
            .waiting
            .iter_mut()
            .filter(|e| !e.handed)
            .map(|e| {
                e.handed = true;
                (e.seq, e.payload.clone())
            })
            .collect()
    }

    /// The state `seq` did not get to the client (its queue was full): offered again next time.
    pub(crate) fn unhand(&self, seq: u64) {
        if let Some(e) = self.lock().waiting.iter_mut().find(|e| e.seq == seq) {
            e.handed = false;
        }
    }

    /// A new connection: what was in flight is sent again; with nothing waiting, the last state
    /// acknowledged (the retained value), if any, is returned to send again.
    pub(crate) fn reconnected(&self) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        inner.waiting.iter_mut().for_each(|e| e.handed = false);
        if inner.waiting.is_empty() {
            inner.last.clone()
        } else {
            None
        }
    }

    /// The broker acknowledged state `seq`.
    pub(crate) fn acked(&self, seq: u64) {
        let mut inner = self.lock();
        let Some(at) = inner.waiting.iter().position(|e| e.seq == seq) else { return };
        let entry = inner.waiting.remove(at).expect("found above");
        inner.last = Some(entry.payload);
        if let Some(tx) = entry.acked {
            let _ = tx.send(());
        }
    }

    /// How many states wait (for tests and logs).
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: Vec<(u64, Vec<u8>)>) -> Vec<String> {
        v.into_iter().map(|(_, p)| String::from_utf8(p).unwrap()).collect()
    }

    #[test]
    fn every_step_waits_in_order_until_the_broker_has_it() {
        let log = RetainedLog::new();
        for step in ["verifying", "activating", "canary"] {
            log.push(&format!("r1:{step}"), step.into(), None);
        }
        let handed = log.take_unhanded();
        assert_eq!(texts(handed.clone()), ["verifying", "activating", "canary"], "a short step is not overwritten");
        assert!(log.take_unhanded().is_empty(), "handed over once");
        log.acked(handed[0].0);
        // The connection drops: what was not acknowledged goes again, in order.
        assert_eq!(log.reconnected(), None);
        assert_eq!(texts(log.take_unhanded()), ["activating", "canary"]);
        log.acked(handed[1].0);
        log.acked(handed[2].0);
        assert_eq!(log.waiting(), 0);
        assert_eq!(log.reconnected(), Some(b"canary".to_vec()), "the retained value again on a new connection");
    }

    #[test]
    fn progress_is_coalesced_the_queue_is_bounded_and_an_outcome_is_acknowledged() {
        let log = RetainedLog::new();
        for bytes in 0..1000 {
            log.push("r1:downloading", format!("{bytes}").into(), None);
        }
        assert_eq!(texts(log.take_unhanded()), ["999"], "a download's progress takes one place");
        log.push("r1:downloading", b"1000".to_vec(), None);
        assert_eq!(log.waiting(), 2, "one in flight is not replaced");
        let (tx, mut rx) = oneshot::channel();
        log.push("r1:successful", b"done".to_vec(), Some(tx));
        for n in 0..(2 * MAX_STATES) {
            log.push(&format!("r2:step{n}"), b"x".to_vec(), None);
        }
        assert_eq!(log.waiting(), MAX_STATES, "bounded");
        let all = log.take_unhanded();
        assert!(all.iter().any(|(_, p)| p == b"done"), "the outcome with a notification is kept");
        assert_eq!(all.last().map(|(_, p)| p.clone()), Some(b"x".to_vec()), "the newest is kept");
        assert!(rx.try_recv().is_err(), "not acknowledged yet");
        let seq = all.iter().find(|(_, p)| p == b"done").unwrap().0;
        log.acked(seq);
        assert_eq!(rx.try_recv(), Ok(()));
    }
}
