//! Signed over-the-air updates, usable without the service (docs/ota.md).
//!
//! - [`client::Updater`]: the device side. It refreshes the signed metadata of a TUF repository
//!   ([`tough`], ed25519, expiry enforced), keeps what it trusts crash-safely in its state
//!   directory, picks a target that fits this device ([`target`]) and is not older than the
//!   device already runs (anti-rollback), and downloads it over HTTPS with resume across
//!   interruptions and restarts ([`transport`]). Length and hash are checked by TUF before a
//!   staged file is handed over.
//! - [`repo`]: the operator side, behind the `vigil-ota` tool: keys, a repository, targets with
//!   vigil's custom fields, signing, timestamp refresh, key rotation.
//!
//! - [`offline`]: a file checked against the kept signed metadata with no network and no
//!   clock (the A/B launcher's check of a slot binary before it runs it).
//!
//! What the device does with a staged target (acceptance, swap, canary) is the caller's.

pub mod archive;
pub mod client;
pub mod error;
pub mod offline;
pub mod repo;
pub mod resolve;
pub mod state;
pub mod target;
pub mod time;
pub mod transport;
pub mod trust;

pub use client::{Offer, Updater, UpdaterConfig};
pub use error::OtaError;
pub use target::{Compat, Device, Kind, TargetMeta};
