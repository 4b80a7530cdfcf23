//! The operator's side of a vigil TUF repository (the `vigil-ota` tool; docs/ota.md), in the
//! layout the TUF specification (1.0.x) defines, which python-tuf and other TUF clients read:
//!
//! ```text
//! <repo>/metadata/N.root.json, N.targets.json, N.<role>.json, N.snapshot.json, timestamp.json
//! <repo>/targets/<dir>/<sha256>.<file name>      target `<dir>/<file name>`
//! <repo>/targets/<sha256>.<dir>/<file name>      the same file, linked, for older vigil releases
//! ```
//!
//! Consistent snapshots are on: a device never mixes a new `targets.json` with an old file of the
//! same name, and a target's file name holds its hash. Keys are ed25519, PKCS#8 DER files (each
//! with its public half beside it, `<key>.pub.json`). The root key signs only roots (keep it
//! offline); the targets key signs what may be installed and delegates paths to other roles (a
//! model team's, with its own keys); the snapshot and timestamp keys can live on the server that
//! refreshes the timestamp. `expires` is written in whole seconds (`YYYY-MM-DDTHH:MM:SSZ`).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    DelegatedRole, Delegations, Hashes, KeyHolder, Metafile, PathPattern, PathSet, Role, RoleKeys, RoleType, Root,
    Signature, Signed, Snapshot, Target, Targets, Timestamp,
};
use tough::TargetName;

use crate::resolve::TOP_LEVEL;
use crate::target::TargetMeta;

const SPEC_VERSION: &str = "1.0.0";

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub root: Duration,
    pub targets: Duration,
    pub snapshot: Duration,
    pub timestamp: Duration,
    /// Delegated roles' metadata (a model team's).
    pub delegated: Duration,
}

impl Default for Expiry {
    /// Root a year (it is re-signed offline), targets three months, snapshot a week, timestamp a
    /// day (refreshed daily by the online key: a device then never trusts a view more than a day
    /// old, which bounds a freeze attack).
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        Self { root: days(365), targets: days(90), snapshot: days(7), timestamp: days(1), delegated: days(90) }
    }
}

/// The key files signing each role.
#[derive(Debug, Clone)]
pub struct RoleKeyFiles {
    pub targets: PathBuf,
    pub snapshot: PathBuf,
    pub timestamp: PathBuf,
}

pub fn metadata_dir(repo: &Path) -> PathBuf {
    repo.join("metadata")
}

pub fn targets_dir(repo: &Path) -> PathBuf {
    repo.join("targets")
}

fn sources(paths: &[&Path]) -> Vec<Box<dyn KeySource>> {
    paths.iter().map(|p| Box::new(LocalKeySource { path: p.to_path_buf() }) as Box<dyn KeySource>).collect()
}

/// Now plus `d`, in whole seconds: the specification writes `expires` as
/// `YYYY-MM-DDTHH:MM:SSZ`, and python-tuf refuses fractions.
fn expires_in(d: Duration) -> anyhow::Result<jiff::Timestamp> {
    let secs = i64::try_from(d.as_secs()).context("expiry too far away")?;
    let at = jiff::Timestamp::now().as_second().checked_add(secs).context("expiry too far away")?;
    jiff::Timestamp::from_second(at).context("expiry too far away")
}

/// A new ed25519 key at `path` (PKCS#8 DER, mode 0600; never overwrites). Returns its TUF key id.
pub async fn keygen(path: &Path) -> anyhow::Result<String> {
    let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("cannot generate an ed25519 key"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(path).with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    std::io::Write::write_all(&mut file, doc.as_ref()).with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()?;
    let key = LocalKeySource { path: path.to_owned() }
        .as_sign()
        .await
        .map_err(|e| anyhow::anyhow!("{}: the new key is unusable ({e})", path.display()))?
        .tuf_key();
    let public = public_key_file(path);
    std::fs::write(&public, serde_json::to_vec_pretty(&key)?)
        .with_context(|| format!("cannot write {}", public.display()))?;
    key_id(path).await
}

/// `<key>.pub.json`: the public half of a key, as a TUF key object (what a model team hands the
/// operator for `vigil-ota delegate`).
pub fn public_key_file(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub.json");
    PathBuf::from(name)
}

/// The TUF key id of the key in `path`.
pub async fn key_id(path: &Path) -> anyhow::Result<String> {
    let sign = LocalKeySource { path: path.to_owned() }
        .as_sign()
        .await
        .map_err(|e| anyhow::anyhow!("{}: not a key vigil-ota can use ({e})", path.display()))?;
    Ok(hex::encode(sign.tuf_key().key_id().context("cannot compute the key id")?))
}

/// The root's keys and roles: `root_keys` (of which `threshold` must sign a root) and one key
/// per other role.
async fn build_root(
    version: NonZeroU64,
    root_keys: &[PathBuf],
    threshold: u64,
    roles: &RoleKeyFiles,
    expiry: Duration,
) -> anyhow::Result<Root> {
    let threshold = NonZeroU64::new(threshold).context("the root threshold must be at least 1")?;
    if threshold.get() > root_keys.len() as u64 {
        bail!("a threshold of {threshold} needs at least {threshold} root keys; {} given", root_keys.len());
    }
    let mut keys = HashMap::new();
    let role = |ids: Vec<Decoded<Hex>>, threshold| RoleKeys { keyids: ids, threshold, _extra: HashMap::new() };
    let mut root_ids = Vec::new();
    for path in root_keys {
        let (id, key) = public_key(path).await?;
        if root_ids.contains(&id) {
            bail!("{} is given twice as a root key", path.display());
        }
        root_ids.push(id.clone());
        keys.insert(id, key);
    }
    let one = NonZeroU64::MIN;
    let mut roles_map = HashMap::new();
    roles_map.insert(RoleType::Root, role(root_ids, threshold));
    for (kind, path) in [
        (RoleType::Targets, &roles.targets),
        (RoleType::Snapshot, &roles.snapshot),
        (RoleType::Timestamp, &roles.timestamp),
    ] {
        let (id, key) = public_key(path).await?;
        keys.insert(id.clone(), key);
        roles_map.insert(kind, role(vec![id], one));
    }
    Ok(Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version,
        expires: expires_in(expiry)?,
        keys,
        roles: roles_map,
        _extra: HashMap::new(),
    })
}

/// A new repository at `repo`: root version 1 signed by every root key, and empty targets,
/// snapshot and timestamp.
pub async fn init(
    repo: &Path,
    root_keys: &[PathBuf],
    threshold: u64,
    roles: &RoleKeyFiles,
    expiry: &Expiry,
) -> anyhow::Result<()> {
    let meta = metadata_dir(repo);
    if meta.join("1.root.json").exists() {
        bail!("{} already holds a repository; use `vigil-ota rotate` to change its keys", repo.display());
    }
    std::fs::create_dir_all(&meta)?;
    std::fs::create_dir_all(targets_dir(repo))?;
    let root = build_root(NonZeroU64::MIN, root_keys, threshold, roles, expiry.root).await?;
    let paths: Vec<&Path> = root_keys.iter().map(PathBuf::as_path).collect();
    let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &sources(&paths), &SystemRandom::new()).await?;
    let staging = Staging::new(&meta)?;
    signed.write(staging.path(), true).await?;
    staging.publish()?;
    let mut editor = RepositoryEditor::new(meta.join("1.root.json")).await?;
    let one = NonZeroU64::MIN;
    editor
        .targets_version(one)?
        .targets_expires(expires_in(expiry.targets)?)?
        .snapshot_version(one)
        .snapshot_expires(expires_in(expiry.snapshot)?)
        .timestamp_version(one)
        .timestamp_expires(expires_in(expiry.timestamp)?);
    let keys = sources(&[&roles.targets, &roles.snapshot, &roles.timestamp]);
    let staging = Staging::new(&meta)?;
    editor.sign(&keys).await?.write(staging.path()).await?;
    staging.publish()
}

/// A new repository at `repo` whose keys are all new and kept in `keys/` (`root`, `targets`,
/// `snapshot`, `timestamp`; one root key, threshold 1): for tests, benchmarks and the HIL
/// rig. A production repository keeps its root keys offline (docs/ota.md).
pub async fn init_with_new_keys(repo: &Path, keys: &Path, expiry: &Expiry) -> anyhow::Result<RoleKeyFiles> {
    std::fs::create_dir_all(keys)?;
    let key = |n: &str| keys.join(n);
    let roles = RoleKeyFiles { targets: key("targets"), snapshot: key("snapshot"), timestamp: key("timestamp") };
    for k in [key("root"), roles.targets.clone(), roles.snapshot.clone(), roles.timestamp.clone()] {
        keygen(&k).await?;
    }
    init(repo, &[key("root")], 1, &roles, expiry).await?;
    Ok(roles)
}

/// The newest `N.root.json` in the metadata directory.
pub fn latest_root(repo: &Path) -> anyhow::Result<(u64, PathBuf)> {
    latest(repo, "root")
}

/// The newest `N.targets.json` in the metadata directory (consistent snapshots: each signed
/// targets metadata keeps its version in its name).
pub fn latest_targets(repo: &Path) -> anyhow::Result<(u64, PathBuf)> {
    latest(repo, "targets")
}

/// The newest `N.<role>.json` in the metadata directory.
fn latest(repo: &Path, role: &str) -> anyhow::Result<(u64, PathBuf)> {
    let meta = metadata_dir(repo);
    let suffix = format!(".{role}.json");
    let mut best = None;
    for entry in std::fs::read_dir(&meta).with_context(|| format!("{} is not a repository", repo.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(&suffix).and_then(|n| n.parse::<u64>().ok()) {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, meta.join(&name)));
            }
        }
    }
    best.with_context(|| format!("{} has no N{suffix}; create the repository with `vigil-ota init`", meta.display()))
}

/// The repository's current metadata, read from its files: the newest root, the timestamp, the
/// snapshot it names, and every targets role the snapshot names. The operator's own files,
/// read as they are (`vigil-ota status` says whether devices would accept them).
pub struct Current {
    pub root: Signed<Root>,
    pub timestamp: Signed<Timestamp>,
    pub snapshot: Signed<Snapshot>,
    pub targets: Signed<Targets>,
    /// Delegated roles by name.
    pub roles: BTreeMap<String, Signed<Targets>>,
}

impl Current {
    /// The top-level targets role's delegation to `role`.
    fn delegation(&self, role: &str) -> anyhow::Result<&DelegatedRole> {
        self.targets.signed.delegations.as_ref().and_then(|d| d.roles.iter().find(|r| r.name == role)).with_context(
            || format!("the targets role delegates nothing to `{role}`; add it with `vigil-ota delegate`"),
        )
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not TUF metadata vigil-ota can read", path.display()))
}

/// The metadata file of `role` (`targets`, `snapshot` or a delegated role's name) at `version`.
fn role_file(repo: &Path, consistent: bool, version: NonZeroU64, role: &str) -> PathBuf {
    let role = crate::trust::encode_role(role);
    metadata_dir(repo).join(if consistent { format!("{version}.{role}.json") } else { format!("{role}.json") })
}

pub fn current(repo: &Path) -> anyhow::Result<Current> {
    let (_, root_path) = latest_root(repo)?;
    let root: Signed<Root> = read_json(&root_path)?;
    let consistent = root.signed.consistent_snapshot;
    let timestamp: Signed<Timestamp> = read_json(&metadata_dir(repo).join("timestamp.json"))?;
    let snap = timestamp.signed.meta.get("snapshot.json").context("the timestamp names no snapshot.json")?;
    let snapshot: Signed<Snapshot> = read_json(&role_file(repo, consistent, snap.version, "snapshot"))?;
    let mut targets = None;
    let mut roles = BTreeMap::new();
    for (file, m) in &snapshot.signed.meta {
        let Some(role) = file.strip_suffix(".json") else { continue };
        let t: Signed<Targets> = read_json(&role_file(repo, consistent, m.version, role))?;
        if role == TOP_LEVEL {
            targets = Some(t);
        } else {
            roles.insert(role.to_owned(), t);
        }
    }
    let targets = targets.context("the snapshot names no targets.json")?;
    Ok(Current { root, timestamp, snapshot, targets, roles })
}

/// A TUF key: a public key file (`.json`, the key object `vigil-ota keygen` writes beside each
/// key) or a private key (PKCS#8 DER), whose public half is taken.
async fn public_key(path: &Path) -> anyhow::Result<(Decoded<Hex>, tough::schema::key::Key)> {
    let key = if path.extension().is_some_and(|e| e == "json") {
        read_json::<tough::schema::key::Key>(path)?
    } else {
        LocalKeySource { path: path.to_owned() }
            .as_sign()
            .await
            .map_err(|e| anyhow::anyhow!("{}: not a key vigil-ota can use ({e})", path.display()))?
            .tuf_key()
    };
    Ok((key.key_id().context("cannot compute the key id")?, key))
}

/// `role` signed by each of `keys` that `allowed` lists; refused below `threshold` signatures or
/// for a key the role does not list (a wrong key is a mistake to say, not to skip).
async fn sign_role<T: Role + serde::Serialize>(
    role: T,
    what: &str,
    keys: &[PathBuf],
    allowed: &[Decoded<Hex>],
    threshold: NonZeroU64,
) -> anyhow::Result<Signed<T>> {
    let data = role.canonical_form().context("cannot serialise the metadata")?;
    let rng = SystemRandom::new();
    let mut signatures = Vec::new();
    for path in keys {
        let sign = LocalKeySource { path: path.clone() }
            .as_sign()
            .await
            .map_err(|e| anyhow::anyhow!("{}: not a private key vigil-ota can sign with ({e})", path.display()))?;
        let keyid = sign.tuf_key().key_id().context("cannot compute the key id")?;
        if !allowed.contains(&keyid) {
            bail!("{} (key id {}) is not one of the keys of {what}", path.display(), hex::encode(&keyid));
        }
        if signatures.iter().any(|s: &Signature| s.keyid == keyid) {
            continue;
        }
        let sig = sign.sign(&data, &rng).await.map_err(|e| anyhow::anyhow!("cannot sign {what}: {e}"))?;
        signatures.push(Signature { keyid, sig: sig.into() });
    }
    if (signatures.len() as u64) < threshold.get() {
        bail!("{what} needs {threshold} signatures; {} of its keys were given", signatures.len());
    }
    Ok(Signed { signed: role, signatures })
}

fn pretty<T: serde::Serialize>(signed: &Signed<T>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(signed).expect("metadata serialises");
    bytes.push(b'\n');
    bytes
}

/// Who signs a change of targets metadata.
#[derive(Debug, Clone)]
pub enum Signer {
    /// The operator's targets key (top-level targets role).
    TopLevel { targets: PathBuf },
    /// A delegated role's keys (its threshold of them).
    Role { name: String, keys: Vec<PathBuf> },
}

/// The online keys that re-sign the snapshot and the timestamp after any change.
#[derive(Debug, Clone)]
pub struct OnlineKeys {
    pub snapshot: PathBuf,
    pub timestamp: PathBuf,
}

impl From<&RoleKeyFiles> for OnlineKeys {
    fn from(k: &RoleKeyFiles) -> Self {
        Self { snapshot: k.snapshot.clone(), timestamp: k.timestamp.clone() }
    }
}

/// Publishes new targets metadata for `role` (`targets` or a delegated role, one version up),
/// then a snapshot naming every role's version and a timestamp naming the snapshot.
async fn publish(
    repo: &Path,
    cur: &Current,
    role: &str,
    mut new: Targets,
    signing: &[PathBuf],
    online: &OnlineKeys,
    expiry: &Expiry,
) -> anyhow::Result<()> {
    let consistent = cur.root.signed.consistent_snapshot;
    let old_version = if role == TOP_LEVEL {
        Some(cur.targets.signed.version)
    } else {
        cur.roles.get(role).map(|r| r.signed.version)
    };
    new.version = old_version.map_or(NonZeroU64::MIN, next);
    new.expires = expires_in(if role == TOP_LEVEL { expiry.targets } else { expiry.delegated })?;
    new.spec_version = SPEC_VERSION.to_owned();
    let (allowed, threshold, what) = if role == TOP_LEVEL {
        let r = cur.root.signed.roles.get(&RoleType::Targets).context("the root gives the targets role no keys")?;
        (r.keyids.clone(), r.threshold, "the targets role".to_owned())
    } else {
        let d = cur.delegation(role)?;
        (d.keyids.clone(), d.threshold, format!("delegated role `{role}`"))
    };
    let version = new.version;
    let signed = sign_role(new, &what, signing, &allowed, threshold).await?;
    let staging = Staging::new(&metadata_dir(repo))?;
    let file = role_file(repo, consistent, version, role);
    std::fs::write(staging.path().join(file.file_name().expect("a file name")), pretty(&signed))?;
    let mut snapshot = cur.snapshot.signed.clone();
    snapshot
        .meta
        .insert(format!("{role}.json"), Metafile { length: None, hashes: None, version, _extra: HashMap::new() });
    // A role no longer delegated stays listed: the specification (5.5.5) has clients refuse a
    // snapshot that drops a file the previous one listed, as a rollback.
    write_snapshot_and_timestamp(repo, cur, snapshot, online, expiry, &staging).await?;
    staging.publish()
}

/// Signs `snapshot` (one version up) and a timestamp naming it into `staging`.
async fn write_snapshot_and_timestamp(
    repo: &Path,
    cur: &Current,
    mut snapshot: Snapshot,
    online: &OnlineKeys,
    expiry: &Expiry,
    staging: &Staging,
) -> anyhow::Result<()> {
    let consistent = cur.root.signed.consistent_snapshot;
    snapshot.version = next(cur.snapshot.signed.version);
    snapshot.expires = expires_in(expiry.snapshot)?;
    snapshot.spec_version = SPEC_VERSION.to_owned();
    let top = |t: RoleType| cur.root.signed.roles.get(&t).map(|r| (r.keyids.clone(), r.threshold));
    let (ids, threshold) = top(RoleType::Snapshot).context("the root gives the snapshot role no keys")?;
    let version = snapshot.version;
    let signed = pretty(
        &sign_role(snapshot, "the snapshot role", std::slice::from_ref(&online.snapshot), &ids, threshold).await?,
    );
    let file = role_file(repo, consistent, version, "snapshot");
    std::fs::write(staging.path().join(file.file_name().expect("a file name")), &signed)?;
    let mut meta = HashMap::new();
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &signed);
    let hashes = Hashes { sha256: Decoded::from(sha256.as_ref().to_vec()), _extra: HashMap::new() };
    meta.insert(
        "snapshot.json".to_owned(),
        Metafile { length: Some(signed.len() as u64), hashes: Some(hashes), version, _extra: HashMap::new() },
    );
    let timestamp = Timestamp {
        spec_version: SPEC_VERSION.to_owned(),
        version: next(cur.timestamp.signed.version),
        expires: expires_in(expiry.timestamp)?,
        meta,
        _extra: HashMap::new(),
    };
    let (ids, threshold) = top(RoleType::Timestamp).context("the root gives the timestamp role no keys")?;
    let signed =
        sign_role(timestamp, "the timestamp role", std::slice::from_ref(&online.timestamp), &ids, threshold).await?;
    std::fs::write(staging.path().join("timestamp.json"), pretty(&signed))?;
    Ok(())
}

/// New metadata written beside the repository's metadata directory and then renamed into it,
/// file by file, `timestamp.json` last (it names the snapshot, which names the targets): a server
/// serving the directory meanwhile sends each file whole, old or new, never half written.
struct Staging {
    meta: PathBuf,
    dir: tempfile::TempDir,
}

impl Staging {
    fn new(meta: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(meta)
            .with_context(|| format!("cannot create a staging directory in {}", meta.display()))?;
        Ok(Self { meta: meta.to_owned(), dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn publish(self) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(self.dir.path())?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        files.sort_by_key(|p| p.file_name().is_some_and(|n| n == "timestamp.json"));
        for file in files {
            std::fs::File::open(&file)?.sync_all()?;
            let name = file.file_name().context("a staged file has a name")?;
            let to = self.meta.join(name);
            std::fs::rename(&file, &to).with_context(|| format!("cannot move new metadata to {}", to.display()))?;
        }
        std::fs::File::open(&self.meta)?.sync_all()?;
        Ok(())
    }
}

fn next(v: NonZeroU64) -> NonZeroU64 {
    v.checked_add(1).expect("metadata versions do not reach u64::MAX")
}

/// Hashes `file` (SHA-256), reporting each chunk's size to `progress`.
pub fn hash_file(file: &Path, progress: impl FnMut(u64)) -> anyhow::Result<(u64, Vec<u8>)> {
    let mut f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    Ok(hash_reader(&mut f, progress)?)
}

/// The length and SHA-256 of what `r` reads to its end (aws-lc's assembly SHA-256: fast in debug
/// builds too, where a vigil binary is hashed at every start of the A/B launcher's tests).
pub fn hash_reader(mut r: impl std::io::Read, mut progress: impl FnMut(u64)) -> std::io::Result<(u64, Vec<u8>)> {
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        progress(n as u64);
    }
    Ok((total, hasher.finish().as_ref().to_vec()))
}

/// Adds `file` as target `name` with vigil's fields `meta`, signed by the top-level targets
/// role, with new snapshot and timestamp metadata. See [`add_signed`].
pub async fn add(
    repo: &Path,
    file: &Path,
    name: &str,
    meta: &TargetMeta,
    keys: &RoleKeyFiles,
    expiry: &Expiry,
    progress: impl FnMut(u64),
) -> anyhow::Result<String> {
    let signer = Signer::TopLevel { targets: keys.targets.clone() };
    add_signed(repo, file, name, meta, &signer, &keys.into(), expiry, progress).await
}

/// Adds `file` as target `name` with vigil's fields `meta`, signed by `signer`, and re-signs the
/// snapshot and timestamp. The file is published where the specification serves it
/// (`targets/<dir>/<sha256>.<file name>`) and, linked, where older vigil releases look for it
/// (`targets/<sha256>.<dir>/<file name>`), so that devices not yet updated still find it.
/// Refused when devices would not take this entry for `name`: outside the paths delegated to
/// the role, or shadowed by an entry that TUF's search reaches first. `progress` hears of each
/// hashed and copied chunk.
#[allow(clippy::too_many_arguments)]
pub async fn add_signed(
    repo: &Path,
    file: &Path,
    name: &str,
    meta: &TargetMeta,
    signer: &Signer,
    online: &OnlineKeys,
    expiry: &Expiry,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<String> {
    let target_name = TargetName::new(name).map_err(|e| anyhow::anyhow!("`{name}` is not a valid target name: {e}"))?;
    if target_name.resolved() != name || name.starts_with('/') || name.ends_with('/') {
        bail!("`{name}` is not a plain relative target name (it resolves to `{}`)", target_name.resolved());
    }
    let cur = current(repo)?;
    let (role, signing) = match signer {
        Signer::TopLevel { targets } => (TOP_LEVEL, vec![targets.clone()]),
        Signer::Role { name: role, keys } => (role.as_str(), keys.clone()),
    };
    let mut targets = if role == TOP_LEVEL {
        cur.targets.signed.clone()
    } else {
        let delegation = cur.delegation(role)?;
        if !crate::resolve::covers(&delegation.paths, name) {
            bail!(
                "`{name}` is outside the paths delegated to `{role}` ({}); devices would ignore it",
                describe_paths(&delegation.paths)
            );
        }
        cur.roles.get(role).map_or_else(empty_targets, |r| r.signed.clone())
    };
    let (length, sha256) = hash_file(file, &mut progress)?;
    let hashes = Hashes { sha256: Decoded::from(sha256.clone()), _extra: HashMap::new() };
    targets.targets.insert(target_name, Target { length, hashes, custom: meta.to_custom(), _extra: HashMap::new() });
    // What a device's search would make of the name once this is published.
    let mut top = cur.targets.signed.clone();
    let mut loaded: crate::resolve::Loaded = cur.roles.iter().map(|(n, r)| (n.clone(), Ok(r.clone()))).collect();
    if role == TOP_LEVEL {
        top = targets.clone();
    } else {
        loaded.insert(role.to_owned(), Ok(Signed { signed: targets.clone(), signatures: Vec::new() }));
    }
    match crate::resolve::resolve(&top, &loaded, name) {
        crate::resolve::Resolution::Found { role: found, .. } if found == role => {}
        crate::resolve::Resolution::Found { role: found, .. } => {
            bail!("`{name}` is also signed by `{found}`, which devices ask first; they would ignore `{role}`'s entry")
        }
        other => bail!("devices would not find `{name}` in `{role}` ({other:?})"),
    }
    // The file first: a device that sees the new metadata finds its target.
    let hex_hash = hex::encode(&sha256);
    let consistent = cur.root.signed.consistent_snapshot;
    let dest = targets_dir(repo).join(crate::trust::target_path(name, &hex_hash, consistent));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    copy_with_progress(file, &dest, &mut progress)?;
    if consistent && name.contains('/') {
        let legacy = targets_dir(repo).join(crate::trust::legacy_target_path(name, &hex_hash));
        if let Some(parent) = legacy.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&legacy);
        if std::fs::hard_link(&dest, &legacy).is_err() {
            std::fs::copy(&dest, &legacy).with_context(|| format!("cannot write {}", legacy.display()))?;
        }
    }
    publish(repo, &cur, role, targets, &signing, online, expiry).await?;
    Ok(hex_hash)
}

/// A role's first targets metadata (its version and expiry are set when it is published).
fn empty_targets() -> Targets {
    Targets::new(SPEC_VERSION.to_owned(), NonZeroU64::MIN, jiff::Timestamp::now())
}

fn describe_paths(paths: &PathSet) -> String {
    match paths {
        PathSet::Paths(p) => p.iter().map(|p| p.value().to_owned()).collect::<Vec<_>>().join(", "),
        PathSet::PathHashPrefixes(p) => {
            format!("hash prefixes {}", p.iter().map(|p| p.value().to_owned()).collect::<Vec<_>>().join(", "))
        }
    }
}

/// A delegated role as the operator's targets role describes it.
#[derive(Debug, Clone)]
pub struct Delegation {
    /// The role's name (its metadata is `N.<name>.json`).
    pub name: String,
    /// The role's public keys (`.pub.json` files from `vigil-ota keygen`, or private keys).
    pub keys: Vec<PathBuf>,
    pub threshold: u64,
    /// PATHPATTERNs the role may sign (`models/people-*`; `*` does not cross `/`).
    pub paths: Vec<String>,
    /// Whether the search ends with this role for the names its paths cover.
    pub terminating: bool,
}

/// Adds or replaces the delegation to `d.name` in the top-level targets role (signed with
/// `targets_key`). A role listed again keeps its place in the search order; a new one goes last.
pub async fn delegate(
    repo: &Path,
    d: &Delegation,
    targets_key: &Path,
    online: &OnlineKeys,
    expiry: &Expiry,
) -> anyhow::Result<()> {
    if !crate::target::is_name(&d.name) || ["root", "targets", "snapshot", "timestamp"].contains(&d.name.as_str()) {
        bail!(
            "`{}` cannot name a delegated role (1-64 letters, digits, '-', '_' or '.'; not a top-level role's name)",
            d.name
        );
    }
    if d.paths.is_empty() {
        bail!("a delegation needs at least one --path (e.g. 'models/people-*')");
    }
    let threshold = NonZeroU64::new(d.threshold).context("the threshold must be at least 1")?;
    if threshold.get() > d.keys.len() as u64 {
        bail!("a threshold of {threshold} needs at least {threshold} keys; {} given", d.keys.len());
    }
    let mut patterns = Vec::new();
    for p in &d.paths {
        if p.starts_with('/') {
            bail!("path pattern `{p}` starts with `/`; target names are relative (models/people-*)");
        }
        patterns.push(PathPattern::new(p.clone()).map_err(|e| anyhow::anyhow!("path pattern `{p}`: {e}"))?);
    }
    let cur = current(repo)?;
    let mut top = cur.targets.signed.clone();
    let delegations = top.delegations.get_or_insert_with(Delegations::new);
    let mut keyids = Vec::new();
    for path in &d.keys {
        let (id, key) = public_key(path).await?;
        if keyids.contains(&id) {
            bail!("{} is given twice", path.display());
        }
        keyids.push(id.clone());
        delegations.keys.insert(id, key);
    }
    let role = DelegatedRole {
        name: d.name.clone(),
        keyids,
        threshold,
        paths: PathSet::Paths(patterns),
        terminating: d.terminating,
        targets: None,
    };
    match delegations.roles.iter_mut().find(|r| r.name == d.name) {
        Some(existing) => *existing = role,
        None => delegations.roles.push(role),
    }
    prune_keys(delegations);
    publish(repo, &cur, TOP_LEVEL, top, &[targets_key.to_owned()], online, expiry).await
}

/// Removes the delegation to `name`; devices no longer take anything that role signed.
pub async fn undelegate(
    repo: &Path,
    name: &str,
    targets_key: &Path,
    online: &OnlineKeys,
    expiry: &Expiry,
) -> anyhow::Result<()> {
    let cur = current(repo)?;
    let mut top = cur.targets.signed.clone();
    let Some(delegations) = top.delegations.as_mut().filter(|d| d.roles.iter().any(|r| r.name == name)) else {
        bail!("the targets role delegates nothing to `{name}`");
    };
    delegations.roles.retain(|r| r.name != name);
    prune_keys(delegations);
    publish(repo, &cur, TOP_LEVEL, top, &[targets_key.to_owned()], online, expiry).await
}

/// Drops keys no delegated role lists.
fn prune_keys(d: &mut Delegations) {
    let used: Vec<Decoded<Hex>> = d.roles.iter().flat_map(|r| r.keyids.clone()).collect();
    d.keys.retain(|id, _| used.contains(id));
}

fn copy_with_progress(from: &Path, to: &Path, progress: &mut impl FnMut(u64)) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(from)?;
    let tmp = to.with_extension("tmp");
    let mut dst = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        progress(n as u64);
    }
    dst.sync_all()?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// Re-signs the timestamp (and, with `snapshot_key`, the snapshot) with new versions and expiry,
/// leaving targets alone: the online keys' daily job.
pub async fn refresh(
    repo: &Path,
    timestamp_key: &Path,
    snapshot_key: Option<&Path>,
    expiry: &Expiry,
) -> anyhow::Result<(u64, Option<u64>)> {
    let cur = current(repo)?;
    let staging = Staging::new(&metadata_dir(repo))?;
    let timestamp_version = next(cur.timestamp.signed.version).get();
    if let Some(snapshot) = snapshot_key {
        let online = OnlineKeys { snapshot: snapshot.to_owned(), timestamp: timestamp_key.to_owned() };
        write_snapshot_and_timestamp(repo, &cur, cur.snapshot.signed.clone(), &online, expiry, &staging).await?;
        staging.publish()?;
        return Ok((timestamp_version, Some(next(cur.snapshot.signed.version).get())));
    }
    let old = &cur.timestamp.signed;
    let timestamp = Timestamp {
        spec_version: SPEC_VERSION.to_owned(),
        version: next(old.version),
        expires: expires_in(expiry.timestamp)?,
        meta: old.meta.clone(),
        _extra: old._extra.clone(),
    };
    let r = cur.root.signed.roles.get(&RoleType::Timestamp).context("the root gives the timestamp role no keys")?;
    let signed =
        sign_role(timestamp, "the timestamp role", &[timestamp_key.to_owned()], &r.keyids, r.threshold).await?;
    std::fs::write(staging.path().join("timestamp.json"), pretty(&signed))?;
    staging.publish()?;
    Ok((timestamp_version, None))
}

/// What [`rotate`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    pub version: u64,
    /// Signatures by the previous root's root keys, and how many devices require.
    pub old_signatures: usize,
    pub old_threshold: u64,
}

/// A new root (version N+1) with new keys, signed by `signing_keys` (the current root's keys:
/// devices require its threshold of them) and by the new root keys (devices require the new
/// threshold too). Written even below the old threshold, for key holders elsewhere to add
/// theirs with [`sign_root`]; devices refuse it until they have.
pub async fn rotate(
    repo: &Path,
    signing_keys: &[PathBuf],
    new_root_keys: &[PathBuf],
    threshold: u64,
    roles: &RoleKeyFiles,
    expiry: &Expiry,
) -> anyhow::Result<Rotated> {
    let (n, old_path) = latest_root(repo)?;
    let version = NonZeroU64::new(n + 1).expect("n + 1 > 0");
    let root = build_root(version, new_root_keys, threshold, roles, expiry.root).await?;
    let mut all: Vec<&Path> = signing_keys.iter().map(PathBuf::as_path).collect();
    all.extend(new_root_keys.iter().map(PathBuf::as_path));
    let rng = SystemRandom::new();
    // SignedRole signs with the given keys that the holder lists: once as the new root knows
    // them, once as the old one does.
    let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root.clone()), &sources(&all), &rng).await?;
    let old: Signed<Root> = serde_json::from_slice(&std::fs::read(&old_path)?)?;
    let old_threshold = old.signed.roles.get(&RoleType::Root).map_or(1, |r| r.threshold.get());
    let old_signatures = match SignedRole::new(root, &KeyHolder::Root(old.signed), &sources(&all), &rng).await {
        Ok(by_old) => by_old.signed().signatures.clone(),
        Err(_) => Vec::new(), // none of the signing keys is one of the old root's
    };
    let count = old_signatures.len();
    let staging = Staging::new(&metadata_dir(repo))?;
    signed.add_old_signatures(old_signatures)?.write(staging.path(), true).await?;
    staging.publish()?;
    Ok(Rotated { version: version.get(), old_signatures: count, old_threshold })
}

/// Adds the signature of `key` to the newest root (a threshold of root keys held by different
/// people sign one after the other).
pub async fn sign_root(repo: &Path, key: &Path) -> anyhow::Result<usize> {
    let (n, path) = latest_root(repo)?;
    let current: Signed<Root> = serde_json::from_slice(&std::fs::read(&path)?)?;
    let mut holders = vec![KeyHolder::Root(current.signed.clone())];
    if n > 1 {
        let prev = metadata_dir(repo).join(format!("{}.root.json", n - 1));
        let prev: Signed<Root> = serde_json::from_slice(&std::fs::read(&prev)?)?;
        holders.push(KeyHolder::Root(prev.signed));
    }
    let mut signatures = current.signatures.clone();
    for holder in holders {
        match SignedRole::new(current.signed.clone(), &holder, &sources(&[key]), &SystemRandom::new()).await {
            Ok(s) => {
                for sig in &s.signed().signatures {
                    if !signatures.iter().any(|o| o.keyid == sig.keyid) {
                        signatures.push(sig.clone());
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "the key is not one of this root's"),
        }
    }
    if signatures.len() == current.signatures.len() {
        bail!("{} is not a root key of version {n} or {}, or it signed already", key.display(), n.saturating_sub(1));
    }
    let count = signatures.len();
    let signed = SignedRole::new(current.signed.clone(), &KeyHolder::Root(current.signed), &[], &SystemRandom::new())
        .await?
        .add_old_signatures(signatures)?;
    let staging = Staging::new(&metadata_dir(repo))?;
    signed.write(staging.path(), true).await?;
    staging.publish()?;
    Ok(count)
}

/// What `vigil-ota status` prints: versions and expiry of each role, the delegations, and every
/// target with the role that signed it; an entry devices would not take says why.
pub async fn describe(repo: &Path) -> anyhow::Result<String> {
    let r = current(repo)?;
    let mut out = String::new();
    let line = |role: &str, v: NonZeroU64, exp: &jiff::Timestamp| format!("{role:<10} version {v:<4} expires {exp}\n");
    out += &line("root", r.root.signed.version, &r.root.signed.expires);
    out += &line("targets", r.targets.signed.version, &r.targets.signed.expires);
    out += &line("snapshot", r.snapshot.signed.version, &r.snapshot.signed.expires);
    out += &line("timestamp", r.timestamp.signed.version, &r.timestamp.signed.expires);
    for d in r.targets.signed.delegations.iter().flat_map(|d| d.roles.iter()) {
        let signed = r.roles.get(&d.name).map_or_else(
            || "nothing signed yet".to_owned(),
            |t| format!("version {} expires {}", t.signed.version, t.signed.expires),
        );
        out += &format!(
            "delegated {}: paths {}, {} of {} keys{}; {signed}\n",
            d.name,
            describe_paths(&d.paths),
            d.threshold,
            d.keyids.len(),
            if d.terminating { ", terminating" } else { "" }
        );
    }
    let loaded: crate::resolve::Loaded = r.roles.iter().map(|(n, t)| (n.clone(), Ok(t.clone()))).collect();
    let mut entries: Vec<(&str, &str, &Target)> =
        r.targets.signed.targets.iter().map(|(n, t)| (TOP_LEVEL, n.raw(), t)).collect();
    for (role, t) in &r.roles {
        entries.extend(t.signed.targets.iter().map(|(n, t)| (role.as_str(), n.raw(), t)));
    }
    entries.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    for (role, name, t) in entries {
        let fields = TargetMeta::from_custom(&t.custom)
            .map(|m| format!("{} {} {}", m.kind, m.name, m.version))
            .unwrap_or_else(|e| format!("(no vigil fields: {e})"));
        let taken = match crate::resolve::resolve(&r.targets.signed, &loaded, name) {
            crate::resolve::Resolution::Found { role: found, .. } if found == role => String::new(),
            crate::resolve::Resolution::Found { role: found, .. } => {
                format!("  IGNORED: devices take `{found}`'s entry")
            }
            _ => "  IGNORED: outside the paths delegated to it".to_owned(),
        };
        let signer = if role == TOP_LEVEL { String::new() } else { format!(" (signed by {role})") };
        out += &format!("target {name}  {} bytes  {fields}{signer}{taken}\n", t.length);
    }
    Ok(out)
}
