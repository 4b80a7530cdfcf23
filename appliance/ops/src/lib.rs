//! The operator's tools (the `vigil-ops` binary), outside the device's binary and libraries:
//! `fleet` (an MQTT client that lists devices, sends commands, watches their messages and rolls
//! updates out in waves), `fleet-sim` and `fleet-bench` (a simulated fleet, and rollouts
//! measured against it), and `bench` (vigil's throughput and footprint against side-by-side
//! baselines).

pub mod bench;
pub mod exporter;
pub mod fleet;
pub mod fleet_bench;
pub mod fleet_pki;
pub mod footprint;
pub mod journal;
pub mod push;
pub mod rollout;
pub mod sim;
