//! vigil: an edge video appliance. Cameras → INT8 detector under per-frame latency budgets →
//! events → sled (durable) → MQTT (store-and-forward).
//!
//! See `docs/architecture.md` for the frame path, the event path and every queue.

pub mod app;
pub mod bench;
pub mod capture;
pub mod commands;
pub mod config;
pub mod config_change;
pub mod control;
pub mod events;
pub mod events_cli;
pub mod fleet;
pub mod fsutil;
pub mod homeassistant;
pub mod infer;
pub mod metrics;
pub mod scheduler;
pub mod store;
pub mod testkit;
pub mod uplink;
