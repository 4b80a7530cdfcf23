//! The device side: refresh the signed metadata, choose a target, download it, and record it as
//! accepted (anti-rollback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::StreamExt;
use semver::Version;
use tough::schema::{Root, Signed, Target};
use tough::{ExpirationEnforcement, Limits, RepositoryLoader, TargetName};
use url::Url;

use crate::error::{from_tough, OtaError};
use crate::state::StateDir;
use crate::target::{Device, TargetMeta};
use crate::time::{earliest_plausible, TimeSource};
use crate::transport::{HttpsTransport, Progress, Timeouts};

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
    /// The URL of the target download in progress (its part file is found by it).
    target_url: Arc<Mutex<Option<Url>>>,
}

/// The repository as last refreshed: signed, complete and unexpired when it was loaded.
pub struct Trusted {
    repo: tough::Repository,
    /// tough's datastore for this refresh (it checks expiry against it again at download).
    _scratch: tempfile::TempDir,
}

impl Trusted {
    /// The signed targets metadata as trusted (kept beside a slot binary for the launcher's
    /// check, [`crate::offline`]). tough keeps every field, so its signature verifies again.
    pub fn targets_json(&self) -> Vec<u8> {
        serde_json::to_vec(self.repo.targets()).expect("signed targets metadata serialises")
    }

    /// The versions of the root, timestamp, snapshot and targets metadata (for reports).
    pub fn versions(&self) -> (u64, u64, u64, u64) {
        (
            self.repo.root().signed.version.get(),
            self.repo.timestamp().signed.version.get(),
            self.repo.snapshot().signed.version.get(),
            self.repo.targets().signed.version.get(),
        )
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
        Ok(Self { config, state, transport, time, target_url: Arc::default() })
    }

    /// Bytes of the current download so far, its total, and where this try resumed from.
    pub fn progress(&self) -> Arc<Progress> {
        self.transport.progress()
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Fetches and verifies the repository's metadata (TUF's client workflow: root chain,
    /// timestamp, snapshot, targets; signatures, thresholds, versions, expiry, sizes). What it
    /// trusts afterwards is kept for the next refresh; on any error nothing kept changes.
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
        let _lock = self.state.lock()?;
        self.state.tidy();
        let root = self.trusted_root()?;
        let from_version = serde_json::from_slice::<Signed<Root>>(&root).map_or(0, |r| r.signed.version.get());
        let scratch = self.state.scratch()?;
        let roots = Arc::new(Mutex::new(BTreeMap::new()));
        let transport = RecordingTransport {
            inner: self.transport.clone(),
            last: self.target_url.clone(),
            metadata_url: self.config.metadata_url.clone(),
            roots: roots.clone(),
        };
        let repo = RepositoryLoader::new(&root, self.config.metadata_url.clone(), self.config.targets_url.clone())
            .transport(transport)
            .limits(self.config.limits)
            .datastore(scratch.path())
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(|e| from_tough(&e))?;
        // The roots tough walked through, each verified by the one before: kept so that the
        // launcher can check a slot binary against the chain from the shipped root offline.
        let to_version = repo.root().signed.version.get();
        let walked = std::mem::take(&mut *roots.lock().unwrap_or_else(|p| p.into_inner()));
        for (version, bytes) in walked.range(from_version + 1..=to_version) {
            self.state.keep_root(*version, bytes)?;
        }
        self.state.keep_trusted(scratch.path())?;
        Ok(Trusted { repo, _scratch: scratch })
    }

    /// The newest root reachable from the shipped root through the kept chain (each signed by
    /// the one before: [`crate::offline::root_chain`]), so that a root written into the state
    /// directory by anyone else is never a trust anchor; else the shipped root, from which tough
    /// walks the repository's chain again.
    fn trusted_root(&self) -> Result<Vec<u8>, OtaError> {
        let shipped = &self.config.shipped_root;
        match crate::offline::root_chain(shipped, &self.state.roots()) {
            Ok(root) => return Ok(serde_json::to_vec(&root).expect("root metadata serialises")),
            Err(why) => {
                tracing::warn!(why, "the kept chain of roots is unusable; starting again from the shipped root")
            }
        }
        std::fs::read(shipped).map_err(|e| {
            OtaError::Config(format!(
                "cannot read the shipped TUF root {}: {e}; install the repository's 1.root.json there",
                shipped.display()
            ))
        })
    }

    /// Every target of the repository with vigil's fields, or why it has none.
    pub fn offers(&self, trusted: &Trusted) -> Vec<(String, Result<Offer, OtaError>)> {
        trusted.repo.all_targets().map(|(name, target)| (name.raw().to_owned(), offer(name, target))).collect()
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
                Err(e) if custom_name(&trusted.repo, &target).as_deref() == Some(name) => refused = Some(e),
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

    /// Downloads `offer` into `dest` (a new file, renamed into place and synced once TUF has
    /// checked its length and hash). An interrupted download resumes on the next call, even
    /// after a restart; a download that is not what was signed is discarded. `trusted` must not
    /// have expired: a long download that is retried takes a fresh [`Updater::refresh`] first
    /// ([`OtaError::MetadataExpired`] otherwise, with the download kept).
    pub async fn download(&self, trusted: &Trusted, offer: &Offer, dest: &Path) -> Result<(), OtaError> {
        let name = TargetName::new(offer.target.clone())
            .map_err(|e| OtaError::BadTarget { name: offer.target.clone(), why: e.to_string() })?;
        let _lock = self.state.lock()?;
        self.transport.expect_length(offer.length);
        *self.target_url.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let refused = |e: &tough::error::Error| match (e, from_tough(e)) {
            // Checked by tough as the read starts: the trusted view aged, the bytes are not at fault.
            (tough::error::Error::ExpiredMetadata { role, .. }, _) => OtaError::MetadataExpired(role.to_string()),
            (_, OtaError::Untrusted(why)) => OtaError::Verification { name: offer.target.clone(), why },
            (_, other) => other,
        };
        let mut stream = match trusted.repo.read_target(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(OtaError::NoSuchTarget(offer.target.clone())),
            Err(e) => return Err(refused(&e)),
        };
        let mut failed = None;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                failed = Some(refused(&e));
                break;
            }
        }
        drop(stream);
        let url = self.target_url.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(url) = url else {
            return Err(failed.unwrap_or_else(|| OtaError::Transport("the target was never requested".to_owned())));
        };
        if let Some(e) = failed {
            if !e.is_retryable() {
                self.transport.discard(&url);
            }
            return Err(e);
        }
        let part = self.transport.take_completed(&url).ok_or_else(|| OtaError::Verification {
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
/// directory.
fn offer(name: &TargetName, target: &Target) -> Result<Offer, OtaError> {
    let bad = |why: String| OtaError::BadTarget { name: name.raw().to_owned(), why };
    let raw = name.raw();
    if raw != name.resolved() || raw.starts_with('/') || raw.split('/').any(|c| c == ".." || c == ".") {
        return Err(bad("unsafe target name (it would leave the repository's targets directory)".to_owned()));
    }
    let meta = TargetMeta::from_custom(&target.custom).map_err(bad)?;
    Ok(Offer { target: raw.to_owned(), meta, length: target.length, sha256: hex::encode(&target.hashes.sha256) })
}

/// The `name` a target's fields claim, even when the target is refused.
fn custom_name(repo: &tough::Repository, target: &str) -> Option<String> {
    let (_, t) = repo.all_targets().find(|(n, _)| n.raw() == target)?;
    t.custom.get(crate::target::CUSTOM_KEY)?.get("name")?.as_str().map(str::to_owned)
}

/// The transport, noting the last target URL it was asked for (the download's part file is
/// found by it) and keeping the bytes of each `N.root.json` it fetched.
#[derive(Debug, Clone)]
struct RecordingTransport {
    inner: HttpsTransport,
    last: Arc<Mutex<Option<Url>>>,
    metadata_url: Url,
    roots: Arc<Mutex<BTreeMap<u64, Vec<u8>>>>,
}

#[tough::async_trait]
impl tough::Transport for RecordingTransport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, tough::TransportError> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(url.clone());
        let root_version = url
            .as_str()
            .strip_prefix(self.metadata_url.as_str())
            .and_then(|file| file.strip_suffix(".root.json"))
            .and_then(|n| n.parse::<u64>().ok());
        let stream = self.inner.fetch(url).await?;
        let Some(version) = root_version else { return Ok(stream) };
        let roots = self.roots.clone();
        roots.lock().unwrap_or_else(|p| p.into_inner()).insert(version, Vec::new());
        Ok(Box::pin(stream.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                let mut kept = roots.lock().unwrap_or_else(|p| p.into_inner());
                kept.entry(version).or_default().extend_from_slice(bytes);
            }
        })))
    }
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
        let offer = Offer {
            target: "models/m.tar".into(),
            meta,
            length: 3,
            // SHA-256 of "abc".
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
        };
        assert!(offer.is_in(&file));
        assert!(!Offer { length: 4, ..offer.clone() }.is_in(&file), "another length");
        std::fs::write(&file, b"abd").unwrap();
        assert!(!offer.is_in(&file), "other bytes of the same length");
        assert!(!offer.is_in(&dir.path().join("missing.tar")));
    }
}
