//! The periodic `metrics` message: per camera, what capture and inference did (rates, drops by
//! reason, latency percentiles, deadline misses), and the store's state. It goes through the
//! outbox like everything vigil publishes, so an outage delays it but does not lose it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use vigil_core::stats::{CameraStats, CameraStatsSnapshot};
use vigil_pipeline::scheduler::{CameraInferSnapshot, SchedulerStats};
use vigil_store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub device_id: String,
    /// When the snapshot was taken, RFC 3339 UTC.
    pub at: String,
    pub uptime_s: u64,
    pub cameras: Vec<CameraMetrics>,
    pub inference: InferenceTotals,
    pub store: StoreMetrics,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraMetrics {
    pub id: String,
    pub capture: CameraStatsSnapshot,
    pub inference: CameraInferSnapshot,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferenceTotals {
    pub batches: u64,
    pub events: u64,
    /// Pictures of `update` messages shed because the store writer was behind.
    pub pictures_shed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreMetrics {
    pub events: usize,
    pub outbox: usize,
    pub outbox_evicted: u64,
    /// Entries removed unsent because they could never be sent (over the packet limit, unreadable).
    pub outbox_dropped: u64,
    pub size_bytes: u64,
}

impl Metrics {
    pub fn collect(
        device_id: &str,
        started: Instant,
        cameras: &[Arc<CameraStats>],
        inference: &SchedulerStats,
        store: &Store,
    ) -> Self {
        Self {
            device_id: device_id.to_owned(),
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            uptime_s: started.elapsed().as_secs(),
            cameras: cameras
                .iter()
                .zip(&inference.cameras)
                .map(|(c, i)| {
                    let capture = c.snapshot();
                    debug_assert_eq!(&*c.id, i.id.as_str(), "capture and inference list the cameras in one order");
                    CameraMetrics { id: capture.id.clone(), capture, inference: i.snapshot() }
                })
                .collect(),
            inference: InferenceTotals {
                batches: inference.batches.load(Ordering::Relaxed),
                events: inference.events.load(Ordering::Relaxed),
                pictures_shed: inference.pictures_shed.load(Ordering::Relaxed),
            },
            store: StoreMetrics {
                events: store.event_count(),
                outbox: store.outbox_len(),
                outbox_evicted: store.outbox_evicted(),
                outbox_dropped: store.outbox_dropped(),
                size_bytes: store.size_on_disk(),
            },
        }
    }
}
