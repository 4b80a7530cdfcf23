//! The in-flight window between the outbox and the broker, as a pure state machine (the way
//! rumqttc tests its `MqttState`): which outbox entries are handed to the client, which packet
//! id each one went out under, which outbox entry a PUBACK releases, and where sending resumes
//! after a reconnect. The uplink (`lib.rs`) feeds it the client's events and does the I/O.
//!
//! rumqttc reports outgoing publishes with their packet ids in the order they were handed over,
//! so handed-over publishes wait in a FIFO until their packet id is known.

use std::collections::{HashMap, VecDeque};

/// What a publish stands for, until its PUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// An outbox entry: removed from the outbox on PUBACK.
    Outbox(u64),
    /// Published directly (status, Home Assistant): nothing to remove.
    Direct,
    /// A state of the retained log (`retained.rs`): acknowledged there on PUBACK.
    State(u64),
}

#[derive(Debug)]
pub(crate) struct Window {
    max: usize,
    /// Handed to the client, packet id not yet known.
    pending: VecDeque<Tag>,
    /// Packet id → what it carries, until PUBACK.
    inflight: HashMap<u16, Tag>,
    /// The newest outbox key handed over: sending continues after it.
    cursor: Option<u64>,
}

impl Window {
    /// At most `max` unacknowledged publishes (`mqtt.max_inflight`).
    pub(crate) fn new(max: usize) -> Self {
        Self { max, pending: VecDeque::new(), inflight: HashMap::new(), cursor: None }
    }

    /// A new connection: nothing is in flight any more, and the outbox is sent again from its
    /// oldest entry (what was not acknowledged is still there).
    pub(crate) fn reconnected(&mut self) {
        self.pending.clear();
        self.inflight.clear();
        self.cursor = None;
    }

    /// How many more outbox entries may be handed over now.
    pub(crate) fn room(&self) -> usize {
        self.max.saturating_sub(self.pending.len() + self.inflight.len())
    }

    /// Sending continues after this outbox key (`None`: from the oldest).
    pub(crate) fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// Outbox entry `key` was handed to the client.
    pub(crate) fn handed(&mut self, key: u64) {
        self.pending.push_back(Tag::Outbox(key));
        self.cursor = Some(key);
    }

    /// A publish of the uplink's own (status, Home Assistant) was handed to the client.
    pub(crate) fn handed_direct(&mut self) {
        self.pending.push_back(Tag::Direct);
    }

    /// State `seq` of the retained log was handed to the client.
    pub(crate) fn handed_state(&mut self, seq: u64) {
        self.pending.push_back(Tag::State(seq));
    }

    /// The client sent the oldest handed-over publish under packet id `pkid`.
    pub(crate) fn sent(&mut self, pkid: u16) {
        if let Some(tag) = self.pending.pop_front() {
            self.inflight.insert(pkid, tag);
        }
    }

    /// PUBACK for `pkid`: the outbox entry to remove, if the publish carried one. An unknown or
    /// repeated PUBACK releases nothing.
    #[cfg(test)]
    pub(crate) fn acked(&mut self, pkid: u16) -> Option<u64> {
        match self.released(pkid) {
            Some(Tag::Outbox(key)) => Some(key),
            _ => None,
        }
    }

    /// PUBACK for `pkid`: what the publish carried, if it is known.
    pub(crate) fn released(&mut self, pkid: u16) -> Option<Tag> {
        self.inflight.remove(&pkid)
    }

    /// Nothing handed over is waiting for its packet id or its PUBACK.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_the_window_is_unacknowledged() {
        let mut w = Window::new(3);
        assert_eq!(w.room(), 3);
        w.handed(10);
        w.handed(11);
        w.sent(1);
        assert_eq!(w.room(), 1, "handed over and in flight both count");
        w.handed(12);
        assert_eq!(w.room(), 0);
        w.sent(2);
        w.sent(3);
        assert_eq!(w.room(), 0, "in flight until acknowledged");
        assert_eq!(w.acked(1), Some(10));
        assert_eq!(w.room(), 1);
    }

    #[test]
    fn a_puback_releases_the_outbox_entry_its_packet_id_carried() {
        let mut w = Window::new(8);
        for key in [5, 6, 7] {
            w.handed(key);
        }
        for pkid in [41, 42, 43] {
            w.sent(pkid);
        }
        // Acknowledged out of order: each releases its own entry.
        assert_eq!(w.acked(43), Some(7));
        assert_eq!(w.acked(41), Some(5));
        assert_eq!(w.acked(42), Some(6));
        assert!(w.is_idle());
    }

    #[test]
    fn packet_ids_are_matched_in_the_order_publishes_were_handed_over_status_included() {
        let mut w = Window::new(8);
        w.handed(1);
        w.handed_direct(); // the retained `online` between two events
        w.handed(2);
        w.sent(7);
        w.sent(8);
        w.sent(9);
        assert_eq!(w.acked(8), None, "the status carries no outbox entry");
        w.handed_state(4);
        w.sent(10);
        assert_eq!(w.released(10), Some(Tag::State(4)), "a state of the retained log");
        assert_eq!(w.acked(9), Some(2));
        assert_eq!(w.acked(7), Some(1));
    }

    #[test]
    fn an_unknown_or_repeated_puback_releases_nothing() {
        let mut w = Window::new(8);
        w.handed(1);
        w.sent(1);
        assert_eq!(w.acked(2), None, "never sent");
        assert_eq!(w.acked(1), Some(1));
        assert_eq!(w.acked(1), None, "a second PUBACK for the same id");
    }

    #[test]
    fn a_packet_id_reused_after_its_puback_carries_the_new_entry() {
        let mut w = Window::new(8);
        w.handed(1);
        w.sent(1);
        assert_eq!(w.acked(1), Some(1));
        w.handed(2);
        w.sent(1);
        assert_eq!(w.acked(1), Some(2));
    }

    #[test]
    fn after_a_reconnect_everything_unacknowledged_is_sent_again_from_the_oldest() {
        let mut w = Window::new(4);
        for key in [1, 2, 3] {
            w.handed(key);
        }
        w.sent(1);
        assert_eq!(w.acked(1), Some(1));
        assert_eq!(w.cursor(), Some(3));
        w.reconnected();
        // Entries 2 and 3 were never acknowledged: still in the outbox, sent from the start.
        assert_eq!((w.cursor(), w.room()), (None, 4));
        assert!(w.is_idle());
        // A PUBACK of the old connection's packet id releases nothing on the new one.
        w.handed(2);
        assert_eq!(w.acked(2), None);
    }
}
