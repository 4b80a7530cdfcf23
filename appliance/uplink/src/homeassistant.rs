//! Home Assistant MQTT discovery (`mqtt.home_assistant = true`): each camera appears in Home
//! Assistant as a "last detection" sensor (state: the label; attributes: score, capture time,
//! event id, normalized box), available while the device's status is `online`.
//!
//! Discovery configs go to `<prefix>/sensor/<device_id>/<camera>_last_detection/config`
//! (retained), so that the shipped ACL can allow a device exactly `<prefix>/sensor/<its id>/#`.
//! Sensor states are retained on `vigil/<device_id>/ha/<camera>`: they are the latest value, not a
//! history, so they are published directly (on change, and again on every connection) rather
//! than through the outbox.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::Notify;

use vigil_core::event::Event;
use vigil_core::topic::{self, Topic};

pub fn state_topic(device: &str, camera: &str) -> String {
    Topic::HaState { device, camera }.to_string()
}

pub fn config_topic(prefix: &str, device: &str, camera: &str) -> String {
    Topic::HaConfig { prefix, device, camera }.to_string()
}

/// The discovery config of one camera's sensor.
pub fn sensor_config(device_id: &str, camera: &str) -> serde_json::Value {
    json!({
        "name": "Last detection",
        "unique_id": format!("vigil_{device_id}_{camera}_last_detection"),
        "state_topic": state_topic(device_id, camera),
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": state_topic(device_id, camera),
        "availability_topic": topic::status(device_id),
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "icon": "mdi:cctv",
        "device": {
            "identifiers": [format!("vigil_{device_id}_{camera}")],
            "name": format!("{device_id} {camera}"),
            "manufacturer": "vigil",
            "model": "camera",
            "sw_version": vigil_core::build::version(),
        },
    })
}

/// The latest detection per camera, and which changed since the uplink last published.
#[derive(Clone, Default)]
pub struct HaStates {
    inner: Arc<Mutex<Inner>>,
    pub changed: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    latest: BTreeMap<String, serde_json::Value>,
    dirty: Vec<String>,
}

impl HaStates {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the newest event of each camera in a durable batch.
    pub fn record(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for e in events {
            let state = json!({
                "label": e.label, "score": e.best_score, "captured_at": e.last, "phase": e.phase,
                "event_id": e.id, "box_norm": e.box_norm, "zones": e.zones, "rule": e.rule,
            });
            inner.latest.insert(e.camera_id.clone(), state);
            if !inner.dirty.contains(&e.camera_id) {
                inner.dirty.push(e.camera_id.clone());
            }
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// Marks a camera's state as still to publish (its publish could not be queued).
    pub fn mark_dirty(&self, camera: &str) {
        let mut inner = self.lock();
        if !inner.dirty.iter().any(|c| c == camera) {
            inner.dirty.push(camera.to_owned());
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// The states to publish: the changed ones, or all (after a reconnect).
    pub fn take(&self, all: bool) -> Vec<(String, Vec<u8>)> {
        let mut inner = self.lock();
        let cameras: Vec<String> =
            if all { inner.latest.keys().cloned().collect() } else { std::mem::take(&mut inner.dirty) };
        if all {
            inner.dirty.clear();
        }
        cameras
            .into_iter()
            .filter_map(|c| inner.latest.get(&c).map(|v| (c, serde_json::to_vec(v).expect("JSON values serialise"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensors_point_at_their_state_and_the_devices_availability() {
        let c = sensor_config("gate-01", "yard");
        assert_eq!(c["state_topic"], "vigil/gate-01/ha/yard");
        assert_eq!(c["availability_topic"], "vigil/gate-01/status");
        assert_eq!(c["unique_id"], "vigil_gate-01_yard_last_detection");
        assert_eq!(
            config_topic("homeassistant", "gate-01", "yard"),
            "homeassistant/sensor/gate-01/yard_last_detection/config"
        );
    }
}
