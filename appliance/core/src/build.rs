//! Which vigil this is. The binary names its version once at start ([`set_version`]): the
//! crate's, or the one a packager set at build time (`VIGIL_VERSION`, see
//! `appliance/vigil/build.rs`). Everything that reports or compares vigil's version — the
//! retained status, `status` replies, OTA target compatibility, the A/B slots — reads it here.

use std::sync::OnceLock;

static VERSION: OnceLock<&'static str> = OnceLock::new();

/// Sets the version this process reports; the first call wins.
pub fn set_version(version: &'static str) {
    let _ = VERSION.set(version);
}

/// The version set by the binary, else the workspace's (libraries and their tests).
pub fn version() -> &'static str {
    VERSION.get().copied().unwrap_or(env!("CARGO_PKG_VERSION"))
}
