//! The latest-frame slots between the cameras and the scheduler.
//!
//! Queue: one slot per camera, capacity 1. Overflow policy: *latest frame wins* — a new frame
//! replaces an untaken older one, and the older one is counted in that camera's
//! `dropped_overwritten`. The consumer takes cameras in round-robin order so that no camera
//! starves another.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{CameraStats, Frame};

pub struct FrameHub {
    state: Mutex<HubState>,
    ready: Condvar,
    stats: Vec<Arc<CameraStats>>,
}

struct HubState {
    slots: Vec<Option<Frame>>,
    /// The camera served after the last one taken.
    next: usize,
    closed: bool,
}

impl FrameHub {
    pub fn new(stats: Vec<Arc<CameraStats>>) -> Self {
        let slots = stats.iter().map(|_| None).collect();
        Self { state: Mutex::new(HubState { slots, next: 0, closed: false }), ready: Condvar::new(), stats }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding this lock leaves only `Option<Frame>`s behind: still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a frame in its camera's slot, replacing (and counting) any frame not yet taken.
    pub fn put(&self, frame: Frame) {
        let camera = frame.camera;
        let replaced = {
            let mut state = self.lock();
            state.slots[camera].replace(frame).is_some()
        };
        if replaced {
            self.stats[camera].dropped_overwritten.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    /// Takes the next waiting frame in round-robin camera order, waiting up to `timeout`.
    /// Returns `None` on timeout or once the hub is closed.
    pub fn take(&self, timeout: Duration) -> Option<Frame> {
        let mut state = self.lock();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if state.closed {
                return None;
            }
            let n = state.slots.len();
            for k in 0..n {
                let i = (state.next + k) % n;
                if let Some(frame) = state.slots[i].take() {
                    state.next = (i + 1) % n;
                    return Some(frame);
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            state = self.ready.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Wakes every waiter; later `take`s return `None`. Frames still in slots are dropped.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.slots.iter_mut().for_each(|s| *s = None);
        drop(state);
        self.ready.notify_all();
    }

    pub fn stats(&self) -> &[Arc<CameraStats>] {
        &self.stats
    }
}
