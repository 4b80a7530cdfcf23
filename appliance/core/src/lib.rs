//! vigil's shared value types, with no I/O dependencies: clocks, images and boxes, events, camera
//! sources and codecs, camera statistics, the latest-frame hub, the MQTT topic schema, and the
//! durable-write routine every writer uses.
//!
//! Every other vigil crate depends on this one; it depends on none of them.

pub mod backoff;
pub mod build;
pub mod clock;
pub mod codec;
pub mod event;
pub mod fsutil;
pub mod geometry;
pub mod hub;
pub mod image;
pub mod picture;
pub mod secret;
pub mod source;
pub mod stats;
pub mod topic;
pub mod wallclock;
