//! What can go wrong with an update, each with what to do about it. Nothing on the device changes
//! when any of these is returned: the trusted metadata, the minimum versions and the running
//! software stay as they were.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    /// The clock cannot be trusted yet: expired metadata could not be told from fresh.
    #[error(
        "the clock is not synchronized ({0}); signed metadata expires, so vigil waits for NTP (or \
         chrony, or systemd-timesyncd) to synchronize and tries again"
    )]
    ClockNotSynchronized(String),
    /// The clock reads earlier than a time already seen: it was set back, or lost at boot.
    #[error("the clock reads {now}, earlier than {floor} ({why}); waiting for a synchronized clock")]
    ClockBehind { now: String, floor: String, why: &'static str },
    /// The repository's metadata failed a TUF check (signature, threshold, expiry, rollback,
    /// consistency, size limit).
    #[error("the update repository's metadata was refused: {0}")]
    Untrusted(String),
    /// The server could not be reached or broke off; a download resumes where it stopped.
    #[error("cannot fetch from the update server: {0}")]
    Transport(String),
    /// The server sent data slower than the configured minimum rate (a slow retrieval attack,
    /// or a link too poor for the update).
    #[error("the update server sent {bytes} bytes in {secs} s, below the minimum of {min_rate} bytes/s; gave up (the download resumes on the next try)")]
    TooSlow { bytes: u64, secs: u64, min_rate: u64 },
    /// The download could not be kept on this device (a full or failing disk); the partial file
    /// is discarded.
    #[error("cannot keep the download on this device: {0}; free space where vigil keeps its state")]
    Storage(String),
    /// The metadata trusted at the refresh expired before the download (re)started: not the
    /// target's fault. The download is kept; the caller refreshes and tries again.
    #[error(
        "the {0} metadata trusted at the last check expired before the download could go on; it is \
         fetched again and the download resumes"
    )]
    MetadataExpired(String),
    /// Another process uses the OTA state directory.
    #[error("{0}")]
    Busy(String),
    /// The update server lacks a file the signed metadata names (a repository published
    /// incompletely, or served from the wrong directory): nothing is wrong with the trust.
    #[error(
        "the update server has no {what} ({url}); the signed metadata names it, so the repository on the \
         server is incomplete: publish the file there (docs/ota.md, \"Repository layout\"); retrying later"
    )]
    Missing { what: String, url: String },
    #[error("no target `{0}` in the signed repository")]
    NoSuchTarget(String),
    /// A target's vigil fields are missing or invalid: the repository was built wrongly.
    #[error("target `{name}`: {why}; add it with `vigil-ota add`, which writes these fields")]
    BadTarget { name: String, why: String },
    #[error("target `{name}` {version} does not fit this device: {reasons}")]
    Incompatible { name: String, version: String, reasons: String },
    /// Anti-rollback: a version lower than the one this device already accepted.
    #[error(
        "target `{name}` {version} is older than {minimum}, the lowest version this device accepts; \
         to go back on purpose, sign a target with `allow_downgrade` (vigil-ota add --allow-downgrade)"
    )]
    Downgrade { name: String, version: String, minimum: String },
    /// The downloaded bytes are not what was signed (too long, wrong hash): discarded.
    #[error("the download of `{name}` is not what was signed ({why}); it was discarded")]
    Verification { name: String, why: String },
    /// A bundle archive that would unpack to something other than plain files inside its slot.
    #[error("the archive {name} is refused: {why}; nothing was unpacked")]
    BadArchive { name: String, why: String },
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

impl OtaError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    /// Whether trying again later may succeed without anyone changing the repository: the clock,
    /// the network, or metadata that a new refresh renews.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::ClockNotSynchronized(_)
                | Self::ClockBehind { .. }
                | Self::Transport(_)
                | Self::TooSlow { .. }
                | Self::Missing { .. }
                | Self::MetadataExpired(_)
                | Self::Busy(_)
        )
    }

    /// The short name of the failure, for status messages and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClockNotSynchronized(_) | Self::ClockBehind { .. } => "clock",
            Self::Untrusted(_) => "untrusted",
            Self::MetadataExpired(_) => "metadata_expired",
            Self::Busy(_) => "busy",
            Self::Transport(_) => "transport",
            Self::TooSlow { .. } => "too_slow",
            Self::Storage(_) => "storage",
            Self::Missing { .. } => "missing",
            Self::NoSuchTarget(_) => "no_such_target",
            Self::BadTarget { .. } => "bad_target",
            Self::Incompatible { .. } => "incompatible",
            Self::Downgrade { .. } => "downgrade",
            Self::Verification { .. } => "verification",
            Self::BadArchive { .. } => "bad_archive",
            Self::Io { .. } => "io",
            Self::Config(_) => "config",
        }
    }
}

/// Sorts the transport's errors: the network (retry, a download resumes), the device's own disk,
/// and everything else, which is a refusal. Only failures the transport itself marked as the
/// network's count as the network's.
pub(crate) fn from_error(e: &(dyn std::error::Error + 'static)) -> OtaError {
    if let Some(slow) = find_source::<crate::transport::SlowRetrieval>(e) {
        return OtaError::TooSlow { bytes: slow.bytes, secs: slow.secs, min_rate: slow.min_rate };
    }
    if let Some(disk) = find_source::<crate::transport::StorageError>(e) {
        return OtaError::Storage(disk.0.clone());
    }
    if find_source::<crate::transport::NetError>(e).is_some() {
        return OtaError::Transport(chain(e));
    }
    OtaError::Untrusted(chain(e))
}

/// An error and its sources, on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn find_source<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
