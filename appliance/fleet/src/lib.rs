//! The device's side of fleet management: fleet commands (parsed strictly, run with bounded
//! concurrency, answered on their reply topic), the local control socket that serves the same
//! read-only commands to `vigil events`, and configuration changes on probation with rollback.

pub mod commands;
pub mod config_change;
pub mod control;
