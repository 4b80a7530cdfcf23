//! The device side: refresh the signed metadata, choose a target, download it, and record it as
//! accepted (anti-rollback).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use semver::Version;
use tough::schema::{Hashes, Root, Signed, Target};
use tough::{Limits, TargetName, Transport, TransportErrorKind};
use url::Url;

use crate::error::{from_error, OtaError};
use crate::resolve::{resolve, Resolution};
use crate::state::StateDir;
use crate::target::{Device, TargetMeta};
use crate::time::{earliest_plausible, TimeSource};
use crate::transport::{HttpsTransport, Progress, Timeouts};
use crate::trust::{Client, Clock, Digests, Held, Refreshed, Verified};

#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Where `timestamp.json`, `N.root.json`, … are served (`https://…/metadata/`).
    pub metadata_url: Url,
    /// Where targets are served (`https://…/targets/`).
    pub targets_url: Url,
    /// The device's OTA state (see [`crate::state`]).
    pub state_dir: PathBuf,
    /// The root shipped with the device: trusted when no newer root has been, or when the kept
    /// one is unreadable.
    pub shipped_root: PathBuf,
    /// PEM bundle of the CA(s) that sign the update server's certificate.
    pub ca: PathBuf,
    /// Client certificate and key (PEM) where the server asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub timeouts: Timeouts,
    /// Largest metadata accepted (an endless-data attack stops there).
    pub limits: Limits,
}

/// Metadata limits for vigil's repositories: a few hundred targets fit in 1 MiB of targets.json.
pub fn default_limits() -> Limits {
    Limits {
        max_root_size: 256 << 10,
        max_targets_size: 4 << 20,
        max_timestamp_size: 64 << 10,
        max_snapshot_size: 256 << 10,
        max_root_updates: 1024,
    }
}

pub struct Updater {
    config: UpdaterConfig,
    state: StateDir,
    transport: HttpsTransport,
    time: Arc<dyn TimeSource>,
}

/// The repository as last refreshed: signed, complete and unexpired when it was loaded.
pub struct Trusted {
    r: Refreshed,
}

impl Trusted {
    /// The signed top-level targets metadata as trusted, byte for byte (kept beside a slot
    /// binary for the launcher's check, [`crate::offline`]).
    pub fn targets_json(&self) -> Vec<u8> {
        self.r.targets.bytes.clone()
    }

    /// The versions of the root, timestamp, snapshot and targets metadata (for reports).
    pub fn versions(&self) -> (u64, u64, u64, u64) {
        (
            self.r.root.signed.signed.version.get(),
            self.r.timestamp.signed.signed.version.get(),
            self.r.snapshot.signed.signed.version.get(),
            self.r.targets.signed.signed.version.get(),
        )
    }

    /// The earliest expiry of the metadata this view rests on, and whose it is.
    fn earliest_expiry(&self, role: &str) -> (jiff::Timestamp, String) {
        let r = &self.r;
        let mut all = vec![
            (r.root.signed.signed.expires, "root".to_owned()),
            (r.timestamp.signed.signed.expires, "timestamp".to_owned()),
            (r.snapshot.signed.signed.expires, "snapshot".to_owned()),
            (r.targets.signed.signed.expires, "targets".to_owned()),
        ];
        if let Some(Ok(d)) = r.delegated.get(role) {
            all.push((d.signed.expires, role.to_owned()));
        }
        all.into_iter().min_by_key(|(t, _)| *t).expect("four roles")
    }

    /// Every target name any role lists, once.
    fn names(&self) -> std::collections::BTreeSet<&str> {
        let top = self.r.targets.signed.signed.targets.keys();
        let delegated = self.r.delegated.values().filter_map(|r| r.as_ref().ok()).flat_map(|r| r.signed.targets.keys());
        top.chain(delegated).map(TargetName::raw).collect()
    }

    /// The `name` the vigil fields of any entry listing `target` claim, even when it is refused.
    fn claimed_name(&self, target: &str) -> Option<String> {
        let top = std::iter::once(&self.r.targets.signed.signed);
        let delegated = self.r.delegated.values().filter_map(|r| r.as_ref().ok()).map(|r| &r.signed);
        top.chain(delegated).find_map(|t| {
            let (_, entry) = t.targets.iter().find(|(n, _)| n.raw() == target)?;
            entry.custom.get(crate::target::CUSTOM_KEY)?.get("name")?.as_str().map(str::to_owned)
        })
    }
}

/// A target this device could install.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The TUF target name.
    pub target: String,
    pub meta: TargetMeta,
    /// Signed length in bytes.
    pub length: u64,
    /// Signed SHA-256, hex.
    pub sha256: String,
    /// Every hash signed (SHA-512 too where the repository lists it).
    pub hashes: Hashes,
    /// The role whose entry decides: `targets`, or a delegated role's name.
    pub role: String,
}

impl Updater {
    pub fn new(config: UpdaterConfig, time: Arc<dyn TimeSource>) -> Result<Self, OtaError> {
        let state = StateDir::open(&config.state_dir)?;
        let client = config.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let tls = vigil_tls::client_config(&config.ca, client).map_err(OtaError::Config)?;
        for url in [&config.metadata_url, &config.targets_url] {
            if url.scheme() != "https" || !url.path().ends_with('/') {
                return Err(OtaError::Config(format!(
                    "`{url}`: the update server's URLs must be https:// and end with `/`"
                )));
            }
        }
        let transport =
            HttpsTransport::new(tls, config.timeouts)?.with_resume(state.downloads(), config.targets_url.clone());
        Ok(Self { config, state, transport, time })
    }

    /// Bytes of the current download so far, its total, and where this try resumed from.
    pub fn progress(&self) -> Arc<Progress> {
        self.transport.progress()
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Fetches and verifies the repository's metadata (TUF's client workflow, [`crate::trust`]:
    /// root chain, timestamp, snapshot, targets, delegated roles; signatures, thresholds,
    /// versions, expiry, sizes). What it trusts afterwards is kept for the next refresh; on any
    /// error nothing kept changes but the latest time seen.
    pub async fn refresh(&self) -> Result<Trusted, OtaError> {
        self.time.synchronized().map_err(OtaError::ClockNotSynchronized)?;
        let now = SystemTime::now();
        if now < earliest_plausible() {
            return Err(OtaError::ClockBehind {
                now: humantime::format_rfc3339_seconds(now).to_string(),
                floor: humantime::format_rfc3339_seconds(earliest_plausible()).to_string(),
                why: "older than any vigil release",
            });
        }
        let now = jiff::Timestamp::try_from(now)
            .map_err(|e| OtaError::ClockNotSynchronized(format!("the clock reads an impossible time: {e}")))?;
        let _lock = self.state.lock()?;
        self.state.tidy();
        let root = self.trusted_root()?;
        let held = self.held();
        let seen = self.seen(now, &root.signed.signed, &held)?;
        let client = Client {
            transport: &self.transport,
            metadata_url: &self.config.metadata_url,
            limits: self.config.limits,
            clock: Clock { now, seen },
        };
        let r = client.refresh(root, held).await?;
        // The roots walked, each verified by the one before, kept first: the launcher checks a
        // slot binary against the chain from the shipped root offline.
        for (version, bytes) in &r.walked {
            self.state.keep_root(*version, bytes)?;
        }
        for (file, bytes) in [
            ("root.json", &r.root.bytes),
            ("targets.json", &r.targets.bytes),
            ("snapshot.json", &r.snapshot.bytes),
            ("timestamp.json", &r.timestamp.bytes),
        ] {
            self.state.keep(file, bytes)?;
        }
        Ok(Trusted { r })
    }

    /// The metadata this device trusted at its last refresh (unreadable files count as absent:
    /// the refresh then starts their rollback checks again from the root).
    fn held(&self) -> Held {
        fn read<T: serde::de::DeserializeOwned>(state: &StateDir, file: &str) -> Option<Signed<T>> {
            serde_json::from_slice(&state.trusted_file(file)?).ok()
        }
        Held {
            timestamp: read(&self.state, "timestamp.json"),
            snapshot: read(&self.state, "snapshot.json"),
            targets: read(&self.state, "targets.json"),
        }
    }

    /// The latest time this device has seen, no later than the earliest expiry of what it holds
    /// (so that only metadata it saw expire is refused later, [`crate::trust`]); recorded before
    /// the network is asked, so that a check that fails still counts.
    fn seen(&self, now: jiff::Timestamp, root: &Root, held: &Held) -> Result<jiff::Timestamp, OtaError> {
        let cap = [
            held.timestamp.as_ref().map(|t| t.signed.expires),
            held.snapshot.as_ref().map(|t| t.signed.expires),
            held.targets.as_ref().map(|t| t.signed.expires),
        ]
        .into_iter()
        .flatten()
        .fold(root.expires, jiff::Timestamp::min);
        let before = self
            .state
            .trusted_file(crate::state::LATEST_KNOWN_TIME)
            .and_then(|b| serde_json::from_slice::<jiff::Timestamp>(&b).ok())
            .map(|t| t.min(cap));
        let seen = before.map_or(now.min(cap), |b| b.max(now.min(cap)));
        if before != Some(seen) {
            self.state.keep(crate::state::LATEST_KNOWN_TIME, &serde_json::to_vec(&seen).expect("a time serialises"))?;
        }
        Ok(seen)
    }

    /// The newest root reachable from the shipped root through the kept chain (each signed by
    /// the one before: [`crate::offline::root_chain`]), so that a root written into the state
    /// directory by anyone else is never a trust anchor; else the shipped root, from which the
    /// repository's chain is walked again.
    fn trusted_root(&self) -> Result<Verified<Root>, OtaError> {
        let shipped = &self.config.shipped_root;
        match crate::offline::root_chain(shipped, &self.state.roots()) {
            Ok(root) => {
                let bytes = serde_json::to_vec(&root).expect("root metadata serialises");
                return Ok(Verified { signed: root, bytes });
            }
            Err(why) => {
                tracing::warn!(why, "the kept chain of roots is unusable; starting again from the shipped root")
            }
        }
        let bytes = std::fs::read(shipped).map_err(|e| {
            OtaError::Config(format!(
                "cannot read the shipped TUF root {}: {e}; install the repository's 1.root.json there",
                shipped.display()
            ))
        })?;
        let signed: Signed<Root> = serde_json::from_slice(&bytes).map_err(|e| {
            OtaError::Config(format!("the shipped TUF root {} is not root metadata: {e}", shipped.display()))
        })?;
        signed.signed.verify_role(&signed).map_err(|e| {
            OtaError::Config(format!("the shipped TUF root {} is not signed by its own keys: {e}", shipped.display()))
        })?;
        Ok(Verified { signed, bytes })
    }

    /// Every target name the repository lists, with what TUF's search resolves it to
    /// ([`crate::resolve`]): vigil's fields of the entry that decides, or why there is none.
    pub fn offers(&self, trusted: &Trusted) -> Vec<(String, Result<Offer, OtaError>)> {
        let top = &trusted.r.targets.signed.signed;
        trusted
            .names()
            .into_iter()
            .map(|name| {
                let result = match resolve(top, &trusted.r.delegated, name) {
                    Resolution::Found { target, role } => offer(name, target, &role),
                    Resolution::NotFound => Err(OtaError::BadTarget {
                        name: name.to_owned(),
                        why: "it is listed only by delegated roles whose paths do not cover it, or that a \
                              terminating role's paths cut off from the search; devices ignore those entries"
                            .to_owned(),
                    }),
                    Resolution::Broken { role, why } => Err(OtaError::BadTarget {
                        name: name.to_owned(),
                        why: format!("the search for it stopped at delegated role `{role}`, which is unusable: {why}"),
                    }),
                };
                (name.to_owned(), result)
            })
            .collect()
    }

    /// The target named `name` (vigil's field, e.g. a model's name) to install: `version`, or the
    /// highest version that fits `device`. Refused when it does not fit, or is older than the
    /// version this device accepted last and not signed as a downgrade.
    pub fn choose(
        &self,
        trusted: &Trusted,
        device: &Device,
        name: &str,
        version: Option<&Version>,
    ) -> Result<Offer, OtaError> {
        let mut found = Vec::new();
        let mut refused = None;
        for (target, result) in self.offers(trusted) {
            match result {
                Ok(o) if o.meta.name == name => found.push(o),
                Ok(_) => {}
                // A broken target that claims this name is reported if nothing else is found.
                Err(e) if trusted.claimed_name(&target).as_deref() == Some(name) => refused = Some(e),
                Err(_) => {}
            }
        }
        if let Some(v) = version {
            found.retain(|o| &o.meta.version == v);
        }
        if found.is_empty() {
            let what = version.map_or_else(|| name.to_owned(), |v| format!("{name} {v}"));
            return Err(refused.unwrap_or(OtaError::NoSuchTarget(what)));
        }
        found.sort_by(|a, b| b.meta.version.cmp(&a.meta.version));
        let Some(best) = found.iter().find(|o| o.meta.compat.mismatches(device).is_empty()).cloned() else {
            let o = &found[0];
            return Err(OtaError::Incompatible {
                name: name.to_owned(),
                version: o.meta.version.to_string(),
                reasons: o.meta.compat.mismatches(device).join("; "),
            });
        };
        if let Some(minimum) = self.state.minimums()?.get(name) {
            if best.meta.version < *minimum && !best.meta.allow_downgrade {
                return Err(OtaError::Downgrade {
                    name: name.to_owned(),
                    version: best.meta.version.to_string(),
                    minimum: minimum.to_string(),
                });
            }
        }
        Ok(best)
    }

    /// Downloads `offer` into `dest` (a new file, renamed into place and synced once its length
    /// and hashes are what was signed). An interrupted download resumes on the next call, even
    /// after a restart; a download that is not what was signed is discarded. `trusted` must not
    /// have expired: a long download that is retried takes a fresh [`Updater::refresh`] first
    /// ([`OtaError::MetadataExpired`] otherwise, with the download kept).
    pub async fn download(&self, trusted: &Trusted, offer: &Offer, dest: &Path) -> Result<(), OtaError> {
        let _lock = self.state.lock()?;
        let (expires, role) = trusted.earliest_expiry(&offer.role);
        if jiff::Timestamp::try_from(SystemTime::now()).is_ok_and(|now| now >= expires) {
            return Err(OtaError::MetadataExpired(role));
        }
        let consistent = trusted.r.root.signed.signed.consistent_snapshot;
        let url = |path: String| {
            self.config
                .targets_url
                .join(&path)
                .map_err(|e| OtaError::BadTarget { name: offer.target.clone(), why: e.to_string() })
        };
        let primary = url(crate::trust::target_path(&offer.target, &offer.sha256, consistent))?;
        self.transport.expect_length(offer.length);
        let mut fetched = self.transport.fetch(primary.clone()).await;
        let mut used = primary.clone();
        if consistent
            && offer.target.contains('/')
            && fetched.as_ref().is_err_and(|e| matches!(e.kind(), TransportErrorKind::FileNotFound))
        {
            // A repository written by vigil-ota before it followed the specification's layout.
            let legacy = url(crate::trust::legacy_target_path(&offer.target, &offer.sha256))?;
            fetched = self.transport.fetch(legacy.clone()).await;
            if fetched.is_ok() {
                tracing::warn!(
                    %legacy,
                    "the target is served only at an older vigil-ota's path; TUF clients other than vigil \
                     look for it at the specification's (docs/ota.md, \"Repository layout\")"
                );
                used = legacy;
            }
        }
        let mut stream = match fetched {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), TransportErrorKind::FileNotFound) => {
                return Err(OtaError::Missing {
                    what: format!("file for target `{}`", offer.target),
                    url: primary.to_string(),
                });
            }
            Err(e) => return Err(from_error(&e)),
        };
        let mut digests = Digests::for_hashes(&offer.hashes);
        let mut got = 0u64;
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    got += chunk.len() as u64;
                    if got > offer.length {
                        failed = Some(OtaError::Verification {
                            name: offer.target.clone(),
                            why: format!("the server sent more than the {} bytes signed", offer.length),
                        });
                        break;
                    }
                    digests.update(&chunk);
                }
                Err(e) => {
                    failed = Some(from_error(&e));
                    break;
                }
            }
        }
        drop(stream);
        if failed.is_none() && got != offer.length {
            failed = Some(OtaError::Verification {
                name: offer.target.clone(),
                why: format!("the server's file is {got} bytes, {} were signed", offer.length),
            });
        }
        if failed.is_none() {
            if let Err(why) = digests.check(&offer.hashes) {
                failed = Some(OtaError::Verification { name: offer.target.clone(), why });
            }
        }
        if let Some(e) = failed {
            if !e.is_retryable() {
                self.transport.discard(&used);
            }
            return Err(e);
        }
        let part = self.transport.take_completed(&used).ok_or_else(|| OtaError::Verification {
            name: offer.target.clone(),
            why: "the downloaded file went missing".to_owned(),
        })?;
        std::fs::rename(&part, dest).map_err(OtaError::io("cannot move the download to", dest))?;
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::state::sync_dir(dir)
    }

    /// Records `offer` as installed: no lower version of its name is accepted from now on (a
    /// signed downgrade sets the minimum to itself).
    pub fn accept(&self, offer: &Offer) -> Result<(), OtaError> {
        self.state.set_minimum(&offer.meta.name, &offer.meta.version)
    }
}

impl Offer {
    /// Whether `file` already holds this target: its signed length and SHA-256 (a download that
    /// finished before a restart). Reads the file once; anything else is `false`.
    pub fn is_in(&self, file: &Path) -> bool {
        if std::fs::metadata(file).map_or(true, |m| m.len() != self.length) {
            return false;
        }
        crate::repo::hash_file(file, |_| {})
            .is_ok_and(|(len, hash)| len == self.length && hex::encode(hash) == self.sha256)
    }
}

/// A target's vigil fields, if they parse; the name must be one that stays in the targets
/// directory, and a vigil binary must come from the top-level targets role (the launcher checks
/// it offline against that role's metadata, [`crate::offline`]).
fn offer(name: &str, target: &Target, role: &str) -> Result<Offer, OtaError> {
    let bad = |why: String| OtaError::BadTarget { name: name.to_owned(), why };
    let parsed = TargetName::new(name).map_err(|e| bad(e.to_string()))?;
    if name != parsed.resolved() || name.starts_with('/') || name.split('/').any(|c| c == ".." || c == ".") {
        return Err(bad("unsafe target name (it would leave the repository's targets directory)".to_owned()));
    }
    let meta = TargetMeta::from_custom(&target.custom).map_err(bad)?;
    if meta.kind == crate::target::Kind::Binary && role != crate::resolve::TOP_LEVEL {
        return Err(bad(format!(
            "a vigil binary signed by delegated role `{role}`; binaries must be signed by the top-level targets role"
        )));
    }
    Ok(Offer {
        target: name.to_owned(),
        meta,
        length: target.length,
        sha256: hex::encode(&target.hashes.sha256),
        hashes: target.hashes.clone(),
        role: role.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Compat, Kind};

    #[test]
    fn a_kept_download_counts_only_with_the_signed_length_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.tar");
        std::fs::write(&file, b"abc").unwrap();
        let meta = TargetMeta {
            kind: Kind::Model,
            name: "m".into(),
            version: "1.0.0".parse().unwrap(),
            compat: Compat::default(),
            allow_downgrade: false,
        };
        // SHA-256 of "abc".
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hashes = Hashes { sha256: hex::decode(sha256).unwrap().into(), _extra: Default::default() };
        let offer = Offer {
            target: "models/m.tar".into(),
            meta,
            length: 3,
            sha256: sha256.into(),
            hashes,
            role: "targets".into(),
        };
        assert!(offer.is_in(&file));
        assert!(!Offer { length: 4, ..offer.clone() }.is_in(&file), "another length");
        std::fs::write(&file, b"abd").unwrap();
        assert!(!offer.is_in(&file), "other bytes of the same length");
        assert!(!offer.is_in(&dir.path().join("missing.tar")));
    }
}
