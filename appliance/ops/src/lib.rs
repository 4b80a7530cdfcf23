//! The operator's tools, outside the device's libraries: `vigil fleet` (an MQTT client that lists
//! devices, sends commands, watches their messages and rolls model updates out in waves) and
//! `vigil bench` (throughput and footprint against side-by-side baselines).

pub mod bench;
pub mod fleet;
pub mod footprint;
pub mod push;
pub mod rollout;
