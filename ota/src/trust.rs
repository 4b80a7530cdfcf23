//! TUF's client workflow (specification 1.0.x, section 5), written here on tough's metadata
//! types and signature checks (docs/decisions/0004).
//!
//! One refresh: the root chain (5.3), the timestamp (5.4), the snapshot (5.5), the top-level
//! targets (5.6), then every delegated role the top-level role reaches (5.6.7), each verified
//! with the keys and threshold its delegating role gives it. A delegated role that cannot be
//! fetched or verified is kept as a failure of that role alone: a search that reaches it stops
//! there ([`crate::resolve`]), and the rest of the repository stays usable, as it would with a
//! client that loads delegations only when a search needs them.
//!
//! Every metadata file is refused if its `spec_version` is not 1.x: the specification has a
//! client refuse a major version it does not implement.
//!
//! Time: expiry is judged against the clock at the start of the refresh. On top of that the
//! device keeps the latest time it has seen, *capped at the earliest expiry of the metadata it
//! held then*: metadata that the device has once seen expire is never trusted again, whatever the
//! clock says later (a clock set back cannot revive a frozen view), while a clock that was ahead
//! blocks nothing once it is right, because only the metadata it saw expire is refused and the
//! repository's next signing replaces it. See docs/ota.md, "Time".

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tough::schema::{Hashes, Metafile, Role, RoleType, Root, Signed, Snapshot, Targets, Timestamp};
use tough::{Limits, Transport, TransportErrorKind};
use url::Url;

use crate::error::{from_error, OtaError};
use crate::resolve::Loaded;
use crate::transport::HttpsTransport;

/// The most delegated roles one refresh loads.
pub const MAX_ROLES: usize = 1024;

/// What the device held before this refresh (its rollback and freeze checks compare with it).
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub timestamp: Option<Signed<Timestamp>>,
    pub snapshot: Option<Signed<Snapshot>>,
    pub targets: Option<Signed<Targets>>,
}

/// The clock of one refresh.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The fixed update start time (5.0).
    pub now: jiff::Timestamp,
    /// The latest time this device has seen, capped at the earliest expiry of what it held.
    pub seen: jiff::Timestamp,
}

/// A metadata file as verified, with the bytes it was verified from.
#[derive(Debug, Clone)]
pub(crate) struct Verified<T> {
    pub signed: Signed<T>,
    pub bytes: Vec<u8>,
}

/// Everything one refresh trusts.
#[derive(Debug)]
pub(crate) struct Refreshed {
    pub root: Verified<Root>,
    /// Roots newer than the one the refresh started from, by version.
    pub walked: BTreeMap<u64, Vec<u8>>,
    pub timestamp: Verified<Timestamp>,
    pub snapshot: Verified<Snapshot>,
    pub targets: Verified<Targets>,
    pub delegated: Loaded,
}

pub(crate) struct Client<'a> {
    pub transport: &'a HttpsTransport,
    pub metadata_url: &'a Url,
    pub limits: Limits,
    pub clock: Clock,
}

/// A file the server does not have.
struct NotThere;

impl Client<'_> {
    /// Fetches `file` from the metadata directory, at most `max` bytes. `Ok(Err(NotThere))`: the
    /// server has no such file (404 or 410).
    async fn fetch(&self, file: &str, max: u64) -> Result<Result<Vec<u8>, NotThere>, OtaError> {
        let url = self
            .metadata_url
            .join(file)
            .map_err(|e| OtaError::Config(format!("`{file}` under {}: {e}", self.metadata_url)))?;
        let mut stream = match self.transport.fetch(url.clone()).await {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), TransportErrorKind::FileNotFound) => return Ok(Err(NotThere)),
            Err(e) => return Err(from_error(&e)),
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| from_error(&e))?;
            if (out.len() + chunk.len()) as u64 > max {
                return Err(OtaError::Untrusted(format!(
                    "{url} is larger than the {max} bytes allowed for it (endless data?)"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Ok(out))
    }

    /// Fetches `file`, which must exist.
    async fn fetch_required(&self, file: &str, what: &str, max: u64) -> Result<Vec<u8>, OtaError> {
        match self.fetch(file, max).await? {
            Ok(b) => Ok(b),
            Err(NotThere) => Err(OtaError::Missing {
                what: what.to_owned(),
                url: self.metadata_url.join(file).map_or_else(|_| file.to_owned(), |u| u.to_string()),
            }),
        }
    }

    /// The refresh, from the trusted root `root` and what the device `held`.
    pub async fn refresh(&self, root: Verified<Root>, held: Held) -> Result<Refreshed, OtaError> {
        let mut held = held;
        // 5.3: the root chain, one version at a time.
        let held_root_version = root.signed.signed.version;
        let mut root = root;
        let mut walked = BTreeMap::new();
        for _ in 0..self.limits.max_root_updates {
            let v = root.signed.signed.version.get() + 1;
            let file = format!("{v}.root.json");
            let bytes = match self.fetch(&file, self.limits.max_root_size).await? {
                Ok(b) => b,
                Err(NotThere) => break,
            };
            let next: Signed<Root> = parse(&bytes, &file)?;
            spec_version(&next.signed.spec_version, &file)?;
            root.signed.signed.verify_role(&next).map_err(|e| {
                OtaError::Untrusted(format!(
                    "{file} is not signed by a threshold of root version {}'s root keys: {e}",
                    v - 1
                ))
            })?;
            next.signed.verify_role(&next).map_err(|e| {
                OtaError::Untrusted(format!("{file} is not signed by a threshold of its own root keys: {e}"))
            })?;
            if next.signed.version.get() != v {
                return Err(OtaError::Untrusted(format!("{file} holds root version {}", next.signed.version)));
            }
            // 5.3.11: new timestamp or snapshot keys forget the old ones' metadata, so that a
            // repository recovering from a compromise can start their versions again.
            if role_keys(&root.signed.signed, &RoleType::Timestamp) != role_keys(&next.signed, &RoleType::Timestamp)
                || role_keys(&root.signed.signed, &RoleType::Snapshot) != role_keys(&next.signed, &RoleType::Snapshot)
            {
                held.timestamp = None;
                held.snapshot = None;
            }
            walked.insert(v, bytes.clone());
            root = Verified { signed: next, bytes };
        }
        let r = &root.signed.signed;
        spec_version(&r.spec_version, "the trusted root")?;
        self.fresh("root", r.version, r.expires, Some(held_root_version))?;

        // 5.4: the timestamp.
        let bytes = self.fetch_required("timestamp.json", "timestamp.json", self.limits.max_timestamp_size).await?;
        let timestamp: Signed<Timestamp> = parse(&bytes, "timestamp.json")?;
        verify_top(r, &timestamp, "timestamp.json")?;
        spec_version(&timestamp.signed.spec_version, "timestamp.json")?;
        let snapshot_meta = meta(&timestamp.signed.meta, "snapshot.json", "timestamp.json")?.clone();
        if let Some(h) = &held.timestamp {
            if timestamp.signed.version < h.signed.version {
                return Err(rollback("timestamp", timestamp.signed.version, h.signed.version));
            }
            if let Some(old) = h.signed.meta.get("snapshot.json") {
                if snapshot_meta.version < old.version {
                    return Err(rollback("snapshot named by the timestamp", snapshot_meta.version, old.version));
                }
            }
        }
        self.fresh(
            "timestamp",
            timestamp.signed.version,
            timestamp.signed.expires,
            held.timestamp.as_ref().map(|h| h.signed.version),
        )?;
        let timestamp = Verified { signed: timestamp, bytes };

        // 5.5: the snapshot the timestamp names.
        let file = versioned(r.consistent_snapshot, snapshot_meta.version, "snapshot");
        let bytes = self
            .fetch_required(&file, "snapshot metadata", limit(&snapshot_meta, self.limits.max_snapshot_size))
            .await?;
        check_meta(&snapshot_meta, &bytes, &file)?;
        let snapshot: Signed<Snapshot> = parse(&bytes, &file)?;
        verify_top(r, &snapshot, &file)?;
        spec_version(&snapshot.signed.spec_version, &file)?;
        if snapshot.signed.version != snapshot_meta.version {
            return Err(OtaError::Untrusted(format!(
                "{file} holds snapshot version {}, the timestamp names {}",
                snapshot.signed.version, snapshot_meta.version
            )));
        }
        if let Some(h) = &held.snapshot {
            for (name, old) in &h.signed.meta {
                match snapshot.signed.meta.get(name) {
                    None => {
                        return Err(OtaError::Untrusted(format!(
                            "the new snapshot no longer lists {name}, which the trusted one did (rollback)"
                        )))
                    }
                    Some(new) if new.version < old.version => {
                        return Err(rollback(name, new.version, old.version));
                    }
                    Some(_) => {}
                }
            }
        }
        self.fresh(
            "snapshot",
            snapshot.signed.version,
            snapshot.signed.expires,
            held.snapshot.as_ref().map(|h| h.signed.version),
        )?;
        let snapshot = Verified { signed: snapshot, bytes };

        // 5.6: the top-level targets.
        let targets_meta = meta(&snapshot.signed.signed.meta, "targets.json", "the snapshot")?.clone();
        let file = versioned(r.consistent_snapshot, targets_meta.version, "targets");
        let bytes =
            self.fetch_required(&file, "targets metadata", limit(&targets_meta, self.limits.max_targets_size)).await?;
        check_meta(&targets_meta, &bytes, &file)?;
        let targets: Signed<Targets> = parse(&bytes, &file)?;
        verify_top(r, &targets, &file)?;
        spec_version(&targets.signed.spec_version, &file)?;
        if targets.signed.version != targets_meta.version {
            return Err(OtaError::Untrusted(format!(
                "{file} holds targets version {}, the snapshot names {}",
                targets.signed.version, targets_meta.version
            )));
        }
        self.fresh(
            "targets",
            targets.signed.version,
            targets.signed.expires,
            held.targets.as_ref().map(|h| h.signed.version),
        )?;
        let delegated = self.delegations(&targets.signed, &snapshot.signed.signed, r.consistent_snapshot).await?;
        Ok(Refreshed { root, walked, timestamp, snapshot, targets: Verified { signed: targets, bytes }, delegated })
    }

    /// Loads every role reachable from `top`, depth first in the order roles are listed (the
    /// search's order), each once, each verified by the first role found delegating to it.
    async fn delegations(&self, top: &Targets, snapshot: &Snapshot, consistent: bool) -> Result<Loaded, OtaError> {
        let mut loaded = Loaded::new();
        // Each level: a delegating role's delegations, and the next of its roles to load.
        let mut stack: Vec<(tough::schema::Delegations, usize)> =
            top.delegations.iter().map(|d| (d.clone(), 0)).collect();
        while let Some((delegations, next)) = stack.last_mut() {
            let Some(child) = delegations.roles.get(*next).cloned() else {
                stack.pop();
                continue;
            };
            *next += 1;
            if loaded.contains_key(&child.name) || child.name == crate::resolve::TOP_LEVEL {
                continue;
            }
            if loaded.len() >= MAX_ROLES {
                loaded.insert(child.name.clone(), Err(format!("more than {MAX_ROLES} delegated roles")));
                continue;
            }
            let by = delegations.clone();
            let result = self.role(&by, &child.name, snapshot, consistent).await?;
            let grandchildren = result.as_ref().ok().and_then(|r| r.signed.delegations.clone());
            loaded.insert(child.name.clone(), result);
            if let Some(d) = grandchildren {
                stack.push((d, 0));
            }
        }
        Ok(loaded)
    }

    /// One delegated role: `Ok(Err(why))` when it is unusable (missing, badly signed, expired),
    /// `Err` only for a failure of the network, which ends the refresh (a retry resumes).
    async fn role(
        &self,
        by: &tough::schema::Delegations,
        name: &str,
        snapshot: &Snapshot,
        consistent: bool,
    ) -> Result<Result<Signed<Targets>, String>, OtaError> {
        let Some(m) = snapshot.meta.get(&format!("{name}.json")) else {
            return Ok(Err("the snapshot does not list it".to_owned()));
        };
        let file = versioned(consistent, m.version, &encode_role(name));
        let bytes = match self.fetch(&file, limit(m, self.limits.max_targets_size)).await {
            Ok(Ok(b)) => b,
            Ok(Err(NotThere)) => return Ok(Err(format!("the update server has no {file}"))),
            Err(e @ (OtaError::Transport(_) | OtaError::TooSlow { .. } | OtaError::Storage(_))) => return Err(e),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let checked = (|| {
            check_meta(m, &bytes, &file).map_err(|e| e.to_string())?;
            let role: Signed<Targets> = parse(&bytes, &file).map_err(|e| e.to_string())?;
            spec_version(&role.signed.spec_version, &file).map_err(|e| e.to_string())?;
            by.verify_role(&role, name)
                .map_err(|e| format!("not signed by a threshold of the keys its delegation gives it: {e}"))?;
            if role.signed.version != m.version {
                return Err(format!("{file} holds version {}, the snapshot names {}", role.signed.version, m.version));
            }
            self.fresh(name, role.signed.version, role.signed.expires, None).map_err(|e| e.to_string())?;
            Ok(role)
        })();
        if let Err(why) = &checked {
            tracing::warn!(role = name, why, "a delegated role is unusable; searches that reach it stop there");
        }
        Ok(checked)
    }

    /// The specification's "check for a freeze attack": unexpired at the start of the refresh,
    /// and, if it is the version the device held, unexpired at the latest time the device has seen.
    fn fresh(
        &self,
        what: &str,
        version: NonZeroU64,
        expires: jiff::Timestamp,
        held: Option<NonZeroU64>,
    ) -> Result<(), OtaError> {
        if expires <= self.clock.now {
            return Err(OtaError::Untrusted(format!(
                "the {what} metadata (version {version}) expired at {expires}; the clock reads {} (a repository \
                 whose online keys stopped re-signing, or a freeze attack)",
                self.clock.now
            )));
        }
        if held == Some(version) && expires <= self.clock.seen {
            let seen = self.clock.seen;
            return Err(OtaError::Untrusted(format!(
                "the update server still serves {what} version {version}, which this device saw expire ({expires}; \
                 its clock read {seen} before): a clock that was ahead then, or a freeze attack now; the repository's \
                 next {what} is accepted"
            )));
        }
        Ok(())
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8], file: &str) -> Result<T, OtaError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let e = e.to_string();
        // tough checks key ids as it reads keys (docs/decisions/0016).
        let why = if e.contains("key ID") || e.contains("keyid") {
            "; vigil requires each key id to be the SHA-256 of the key's canonical JSON, as the specification \
             defines it: list the key under that id (python-tuf's own keys already are)"
        } else {
            ""
        };
        OtaError::Untrusted(format!("{file} is not valid TUF metadata: {e}{why}"))
    })
}

fn verify_top<T: Role + serde::Serialize>(root: &Root, role: &Signed<T>, file: &str) -> Result<(), OtaError> {
    root.verify_role(role).map_err(|e| {
        OtaError::Untrusted(format!("{file} is not signed by a threshold of the keys the root gives its role: {e}"))
    })
}

/// Refuses a major version of the specification other than 1.
pub(crate) fn spec_version(v: &str, file: &str) -> Result<(), OtaError> {
    let major = v.split('.').next().unwrap_or_default();
    if major == "1" && v.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        return Ok(());
    }
    Err(OtaError::Untrusted(format!(
        "{file} says spec_version \"{v}\"; this vigil implements TUF 1.x and refuses other major versions \
         (write the repository with a TUF 1.0 tool)"
    )))
}

fn role_keys(root: &Root, role: &RoleType) -> Option<(Vec<String>, u64)> {
    root.roles.get(role).map(|r| {
        let mut ids: Vec<String> = r.keyids.iter().map(hex::encode).collect();
        ids.sort();
        (ids, r.threshold.get())
    })
}

fn meta<'m>(meta: &'m HashMap<String, Metafile>, name: &str, in_what: &str) -> Result<&'m Metafile, OtaError> {
    meta.get(name).ok_or_else(|| OtaError::Untrusted(format!("{in_what} does not list {name}")))
}

fn rollback(what: &str, new: NonZeroU64, old: NonZeroU64) -> OtaError {
    OtaError::Untrusted(format!(
        "{what} version {new} is older than version {old}, which this device trusts (rollback)"
    ))
}

/// `N.role.json` under consistent snapshots, `role.json` otherwise.
fn versioned(consistent: bool, version: NonZeroU64, role: &str) -> String {
    if consistent {
        format!("{version}.{role}.json")
    } else {
        format!("{role}.json")
    }
}

/// The most bytes to fetch for a file whose meta entry may give its length.
fn limit(m: &Metafile, max: u64) -> u64 {
    m.length.map_or(max, |l| l.min(max))
}

/// The length and hashes a meta entry gives, where it gives them.
fn check_meta(m: &Metafile, bytes: &[u8], file: &str) -> Result<(), OtaError> {
    if let Some(len) = m.length {
        if bytes.len() as u64 != len {
            return Err(OtaError::Untrusted(format!("{file} is {} bytes, signed as {len}", bytes.len())));
        }
    }
    if let Some(h) = &m.hashes {
        hashes_match(h, bytes).map_err(|why| OtaError::Untrusted(format!("{file}: {why}")))?;
    }
    Ok(())
}

/// Checks `bytes` against every hash listed that vigil knows (SHA-256 always, SHA-512 if listed).
pub(crate) fn hashes_match(h: &Hashes, bytes: &[u8]) -> Result<(), String> {
    let mut d = Digests::for_hashes(h);
    d.update(bytes);
    d.check(h)
}

/// Running digests of a download: SHA-256, and SHA-512 where the metadata lists it. aws-lc's
/// (assembly) implementations: a vigil binary is tens of MB, and debug builds of a pure-Rust
/// hash take seconds for it.
pub(crate) struct Digests {
    sha256: aws_lc_rs::digest::Context,
    sha512: Option<aws_lc_rs::digest::Context>,
}

impl Digests {
    pub fn for_hashes(h: &Hashes) -> Self {
        Self {
            sha256: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            sha512: h
                ._extra
                .contains_key("sha512")
                .then(|| aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA512)),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(d) = &mut self.sha512 {
            d.update(bytes);
        }
    }

    pub fn check(self, h: &Hashes) -> Result<(), String> {
        let sha256 = self.sha256.finish();
        if sha256.as_ref() != h.sha256.as_ref() {
            return Err(format!("SHA-256 {} where {} was signed", hex::encode(sha256), hex::encode(&h.sha256)));
        }
        if let (Some(d), Some(signed)) = (self.sha512, h._extra.get("sha512").and_then(|v| v.as_str())) {
            let sha512 = hex::encode(d.finish());
            if !sha512.eq_ignore_ascii_case(signed) {
                return Err(format!("SHA-512 {sha512} where {signed} was signed"));
            }
        }
        Ok(())
    }
}

/// A role name as it appears in a file name: characters outside `A-Z a-z 0-9 - _ .` are
/// percent-encoded, as python-tuf encodes them.
pub(crate) fn encode_role(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a target is served below the targets URL (specification 5.7.3): `dir/name` as it is, or
/// under consistent snapshots `dir/<sha256>.name`, each segment percent-encoded.
pub fn target_path(name: &str, sha256_hex: &str, consistent: bool) -> String {
    let (dir, base) = name.rsplit_once('/').map_or(("", name), |(d, b)| (d, b));
    let base = if consistent { format!("{sha256_hex}.{base}") } else { base.to_owned() };
    let mut segments: Vec<String> =
        if dir.is_empty() { Vec::new() } else { dir.split('/').map(encode_segment).collect() };
    segments.push(encode_segment(&base));
    segments.join("/")
}

/// Where older vigil releases look for a target under consistent snapshots
/// (`<sha256>.dir/name`): asked for only when the specification's path is missing, so that a
/// repository written by an older `vigil-ota` still serves its older targets.
pub fn legacy_target_path(name: &str, sha256_hex: &str) -> String {
    format!("{sha256_hex}.{name}").split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'@' | b'=' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_in_directories_carry_their_hash_on_the_file_name() {
        assert_eq!(target_path("models/people-1.2.0.tar", "ab", true), "models/ab.people-1.2.0.tar");
        assert_eq!(target_path("models/people-1.2.0.tar", "ab", false), "models/people-1.2.0.tar");
        assert_eq!(target_path("vigil", "ab", true), "ab.vigil");
        assert_eq!(target_path("a b/c#d", "ab", true), "a%20b/ab.c%23d");
        assert_eq!(legacy_target_path("models/people-1.2.0.tar", "ab"), "ab.models/people-1.2.0.tar");
    }

    #[test]
    fn only_major_version_1_of_the_specification_is_read() {
        for ok in ["1.0.0", "1.0.31", "1.0", "1"] {
            assert!(spec_version(ok, "x").is_ok(), "{ok}");
        }
        for bad in ["2.0.0", "0.9", "", "1.x", "v1.0.0"] {
            let e = spec_version(bad, "timestamp.json").unwrap_err().to_string();
            assert!(e.contains("refuses other major versions"), "{bad}: {e}");
        }
    }

    #[test]
    fn role_names_are_percent_encoded_in_file_names() {
        assert_eq!(encode_role("people-team"), "people-team");
        assert_eq!(encode_role("a/b c"), "a%2Fb%20c");
    }
}
