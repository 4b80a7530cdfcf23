//! The hardware-in-the-loop rig's library (issue 14; grows into the rig: targets, power
//! control, the suite and its report). So far: the network fault proxy the rig puts between a
//! target and its broker, cameras and update server.

pub mod fault_proxy;
