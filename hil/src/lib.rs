//! The hardware-in-the-loop rig's library (docs/hil.md): targets vigil runs on (this machine,
//! qemu-aarch64, a board over SSH), the lab description they come from, power control, what
//! the rig runs beside a target (broker, network fault proxy, RTSP camera, monitor), the
//! acceptance suite and its report.

pub mod fault_proxy;
pub mod lab;
pub mod ntp;
pub mod power;
pub mod report;
pub mod rig;
pub mod suite;
pub mod target;
pub mod truth;
