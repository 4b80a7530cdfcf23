//! The outbox: every message on its way to the broker, oldest first, bounded, and never
//! blocked by an entry that cannot be sent.

use std::sync::atomic::Ordering;

use vigil_core::topic;

use crate::{Store, StoreError};

/// One message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl OutboxEntry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let topic = self.topic.as_bytes();
        let len = u16::try_from(topic.len()).expect("MQTT topics are at most 65535 bytes");
        let mut out = Vec::with_capacity(2 + topic.len() + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.payload);
        out
    }

    pub(crate) fn decode(key: u64, bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = |m: &str| StoreError::Corrupt { key: format!("outbox/{key}"), message: m.to_owned() };
        let len = bytes.get(..2).ok_or_else(|| bad("shorter than its header"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let topic = bytes.get(2..2 + len).ok_or_else(|| bad("topic runs past the end"))?;
        let topic = String::from_utf8(topic.to_vec()).map_err(|_| bad("topic is not UTF-8"))?;
        Ok(Self { topic, payload: bytes[2 + len..].to_vec() })
    }
}

impl Store {
    /// Bounds the outbox to `limit` messages (at least 1); see the module documentation.
    pub fn with_outbox_limit(mut self, limit: usize) -> Self {
        self.outbox_limit = limit.max(1);
        self
    }

    /// Messages dropped from a full outbox since this store was opened.
    pub fn outbox_evicted(&self) -> u64 {
        self.outbox_evicted.load(Ordering::Relaxed)
    }

    /// Drops the oldest outbox entries beyond the limit (the write lock is held).
    pub(crate) fn evict_overflow(&self) -> Result<(), StoreError> {
        let mut evicted = 0u64;
        while self.outbox_count.load(Ordering::Relaxed) > self.outbox_limit {
            match self.outbox.pop_min()? {
                Some(_) => {
                    self.outbox_count.fetch_sub(1, Ordering::Relaxed);
                    evicted += 1;
                }
                None => break,
            }
        }
        if evicted > 0 {
            let total = self.outbox_evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            tracing::warn!(
                evicted,
                total,
                limit = self.outbox_limit,
                "outbox full: oldest messages dropped from it (their events stay in the store)"
            );
        }
        Ok(())
    }

    /// Queues one message that is not an event (metrics, replies) in the outbox (not yet
    /// durable: call [`Store::flush`]).
    pub fn enqueue(&self, topic: &str, payload: &[u8]) -> Result<(), StoreError> {
        if let Some(bytes) = topic::oversized(topic, payload.len()) {
            return Err(StoreError::TooLarge { topic: topic.to_owned(), bytes });
        }
        let _writes = self.lock_writes();
        let key = self.db.generate_id()?;
        let entry = OutboxEntry { topic: topic.to_owned(), payload: payload.to_vec() };
        self.outbox.insert(key.to_be_bytes(), entry.encode())?;
        self.written_next.fetch_max(key + 1, Ordering::SeqCst);
        self.outbox_count.fetch_add(1, Ordering::Relaxed);
        self.evict_overflow()
    }

    /// Up to `limit` outbox entries with keys greater than `after`, oldest first; only entries
    /// already flushed to disk (so nothing reaches MQTT before it is durable).
    pub fn outbox_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let start = after.map_or(0, |k| k.saturating_add(1));
        let end = self.durable_next.load(Ordering::SeqCst);
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        for item in self.outbox.range(start.to_be_bytes()..end.to_be_bytes()) {
            if out.len() == limit {
                break;
            }
            let (k, v) = item?;
            let Ok(raw) = <[u8; 8]>::try_from(k.as_ref()) else {
                // Keys are written as 8 bytes only; anything else cannot be sent or acknowledged.
                self.drop_unsendable(&k, "its key is not 8 bytes")?;
                continue;
            };
            let key = u64::from_be_bytes(raw);
            // Kept, an entry that can never be sent would be read first after every reconnect,
            // forever.
            match OutboxEntry::decode(key, &v) {
                Ok(entry) => match topic::oversized(&entry.topic, entry.payload.len()) {
                    Some(bytes) => {
                        let why = format!("{bytes} bytes on {}, over the broker's limit", entry.topic);
                        self.drop_unsendable(&k, &why)?;
                    }
                    None => out.push((key, entry)),
                },
                Err(e) => self.drop_unsendable(&k, &e.to_string())?,
            }
        }
        Ok(out)
    }

    /// Removes the entry under `key` that can never be sent (too large for the broker,
    /// unreadable), counted in [`Store::outbox_dropped`] and logged: a poison entry must not block
    /// the outbox.
    fn drop_unsendable(&self, key: &[u8], why: &str) -> Result<(), StoreError> {
        tracing::error!(key = ?key, why, "outbox entry dropped: it can never be sent");
        self.outbox_dropped.fetch_add(1, Ordering::Relaxed);
        if self.outbox.remove(key)?.is_some() {
            self.outbox_count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Outbox entries removed unsent: too large to send, or unreadable.
    pub fn outbox_dropped(&self) -> u64 {
        self.outbox_dropped.load(Ordering::Relaxed)
    }

    /// Removes an acknowledged outbox entry. Not flushed: losing a removal in a crash only means
    /// the message is sent again (at-least-once), never lost.
    pub fn outbox_remove(&self, key: u64) -> Result<(), StoreError> {
        if self.outbox.remove(key.to_be_bytes())?.is_some() {
            self.outbox_count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox_count.load(Ordering::Relaxed)
    }
}
