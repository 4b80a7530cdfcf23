//! The operator's tools, outside the device's libraries: `vigil fleet` (an MQTT client that lists
//! devices, sends commands and watches their messages) and `vigil bench` (throughput against
//! side-by-side baselines).

pub mod bench;
pub mod fleet;
