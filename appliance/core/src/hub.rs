//! The latest-frame slots between the cameras and the scheduler.
//!
//! Queue: one slot per camera, capacity 1. Overflow policy: *latest frame wins* — a new frame
//! replaces an untaken older one, and the older one is counted in that camera's
//! `dropped_overwritten`. The scheduler looks at every waiting frame's age ([`FrameHub::pending`])
//! and takes the ones it chooses ([`FrameHub::take_camera`]); [`FrameHub::take`] serves cameras
//! in round-robin order for consumers with no policy of their own.
//!
//! The hub is generic over the frame so that the scheduler's tests can drive it with synthetic
//! frames on a virtual clock.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::stats::CameraStats;

/// What the hub needs to know about a frame.
pub trait HubFrame: Send {
    /// Index of the camera (the hub slot).
    fn camera(&self) -> usize;
    /// When it was captured, on the monotonic clock budgets are measured on.
    fn captured(&self) -> Instant;
}

pub struct FrameHub<F> {
    state: Mutex<HubState<F>>,
    ready: Condvar,
    stats: Vec<Arc<CameraStats>>,
}

struct HubState<F> {
    slots: Vec<Option<F>>,
    /// The camera served after the last one taken.
    next: usize,
    closed: bool,
}

impl<F: HubFrame> FrameHub<F> {
    pub fn new(stats: Vec<Arc<CameraStats>>) -> Self {
        let slots = stats.iter().map(|_| None).collect();
        Self { state: Mutex::new(HubState { slots, next: 0, closed: false }), ready: Condvar::new(), stats }
    }

    fn lock(&self) -> MutexGuard<'_, HubState<F>> {
        // A panic while holding this lock leaves only `Option<Frame>`s behind: still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a frame in its camera's slot, replacing (and counting) any frame not yet taken.
    pub fn put(&self, frame: F) {
        let camera = frame.camera();
        let replaced = {
            let mut state = self.lock();
            if state.closed {
                return; // shutting down: nobody will take it
            }
            state.slots[camera].replace(frame).is_some()
        };
        if replaced {
            self.stats[camera].dropped_overwritten.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    /// Takes the next waiting frame in round-robin camera order, waiting up to `timeout`.
    /// Returns `None` on timeout or once the hub is closed.
    pub fn take(&self, timeout: Duration) -> Option<F> {
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
                    drop(state);
                    self.stats[i].record_out();
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

    /// Waits up to `timeout` for any frame. False on timeout or once the hub is closed.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.closed {
                return false;
            }
            if state.slots.iter().any(Option::is_some) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.ready.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The waiting frames as (camera, capture instant), in camera order.
    pub fn pending(&self, out: &mut Vec<(usize, Instant)>) {
        out.clear();
        let state = self.lock();
        out.extend(state.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|f| (i, f.captured()))));
    }

    /// Takes camera `camera`'s waiting frame, if any.
    pub fn take_camera(&self, camera: usize) -> Option<F> {
        let frame = self.lock().slots.get_mut(camera)?.take()?;
        self.stats[camera].record_out();
        Some(frame)
    }

    /// Takes camera `camera`'s waiting frame only if it is the one captured at `captured` (not
    /// a newer one that replaced it since [`Self::pending`]).
    pub fn take_exact(&self, camera: usize, captured: Instant) -> Option<F> {
        let frame = {
            let mut state = self.lock();
            let slot = state.slots.get_mut(camera)?;
            if slot.as_ref()?.captured() != captured {
                return None;
            }
            slot.take()?
        };
        self.stats[camera].record_out();
        Some(frame)
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as the hub sees it: the camera, and a sequence number to tell frames apart.
    #[derive(Debug)]
    struct Frame {
        camera: usize,
        seq: u64,
        captured: Instant,
    }

    impl HubFrame for Frame {
        fn camera(&self) -> usize {
            self.camera
        }

        fn captured(&self) -> Instant {
            self.captured
        }
    }

    fn frame(camera: usize, seq: u64) -> Frame {
        Frame { camera, seq, captured: Instant::now() }
    }

    fn hub(n: usize) -> FrameHub<Frame> {
        FrameHub::new((0..n).map(|i| Arc::new(CameraStats::new(&format!("c{i}")))).collect())
    }

    #[test]
    fn the_newest_frame_wins_and_the_replaced_one_is_counted() {
        let hub = hub(1);
        hub.put(frame(0, 1));
        hub.put(frame(0, 2));
        hub.put(frame(0, 3));
        assert_eq!(hub.take(Duration::ZERO).map(|f| f.seq), Some(3));
        assert!(hub.take(Duration::ZERO).is_none(), "capacity is one frame per camera");
        assert_eq!(hub.stats()[0].dropped_overwritten.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_busy_camera_cannot_starve_the_others() {
        let hub = hub(3);
        for cam in 0..3 {
            hub.put(frame(cam, 0));
        }
        let mut order = Vec::new();
        for seq in 1..=4 {
            let f = hub.take(Duration::ZERO).expect("a frame is waiting");
            order.push(f.camera);
            // Camera 0 always has a new frame ready, yet the others get their turn.
            hub.put(frame(0, seq));
        }
        assert_eq!(order, [0, 1, 2, 0]);
    }

    #[test]
    fn close_wakes_a_waiting_consumer() {
        let hub = Arc::new(hub(1));
        let waiter = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.take(Duration::from_secs(30)).is_none())
        };
        std::thread::sleep(Duration::from_millis(50));
        hub.close();
        assert!(waiter.join().expect("joins"), "take returns None once closed");
    }
}
