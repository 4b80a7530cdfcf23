//! The operator's side of a vigil TUF repository (the `vigil-ota` tool; docs/ota.md):
//!
//! ```text
//! <repo>/metadata/N.root.json, N.targets.json, N.snapshot.json, timestamp.json
//! <repo>/targets/<sha256>.<target name>
//! ```
//!
//! Consistent snapshots are on: a device never mixes a new `targets.json` with an old file of the
//! same name, and a target's file name holds its hash. Keys are ed25519, PKCS#8 DER files. The
//! root key signs only roots (keep it offline); the targets key signs what may be installed; the
//! snapshot and timestamp keys can live on the server that refreshes the timestamp.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, KeyHolder, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Timestamp};
use tough::{ExpirationEnforcement, FilesystemTransport, RepositoryLoader, TargetName};

use crate::target::TargetMeta;

const SPEC_VERSION: &str = "1.0.0";

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub root: Duration,
    pub targets: Duration,
    pub snapshot: Duration,
    pub timestamp: Duration,
}

impl Default for Expiry {
    /// Root a year (it is re-signed offline), targets three months, snapshot a week, timestamp a
    /// day (refreshed daily by the online key: a device then never trusts a view more than a day
    /// old, which bounds a freeze attack).
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        Self { root: days(365), targets: days(90), snapshot: days(7), timestamp: days(1) }
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

fn expires_in(d: Duration) -> anyhow::Result<jiff::Timestamp> {
    let span = jiff::SignedDuration::try_from(d).context("expiry too far away")?;
    jiff::Timestamp::now().checked_add(span).context("expiry too far away")
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
    key_id(path).await
}

/// The TUF key id of the key in `path`.
pub async fn key_id(path: &Path) -> anyhow::Result<String> {
    let sign = LocalKeySource { path: path.to_owned() }
        .as_sign()
        .await
        .map_err(|e| anyhow::anyhow!("{}: not a key vigil-ota can use ({e})", path.display()))?;
    Ok(hex::encode(sign.tuf_key().key_id().context("cannot compute the key id")?))
}

async fn public_key(path: &Path) -> anyhow::Result<(Decoded<Hex>, tough::schema::key::Key)> {
    let sign = LocalKeySource { path: path.to_owned() }
        .as_sign()
        .await
        .map_err(|e| anyhow::anyhow!("{}: not a key vigil-ota can use ({e})", path.display()))?;
    let key = sign.tuf_key();
    Ok((key.key_id().context("cannot compute the key id")?, key))
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

/// The repository as it is on disk, read through tough (expiry not enforced: the operator may
/// be renewing expired metadata).
async fn load(repo: &Path) -> anyhow::Result<tough::Repository> {
    let (_, root) = latest_root(repo)?;
    let url = |p: PathBuf| -> anyhow::Result<url::Url> {
        let p = p.canonicalize().with_context(|| format!("{}", p.display()))?;
        url::Url::from_directory_path(&p).map_err(|()| anyhow::anyhow!("{} is not an absolute path", p.display()))
    };
    let bytes = std::fs::read(&root)?;
    RepositoryLoader::new(&bytes, url(metadata_dir(repo))?, url(targets_dir(repo))?)
        .transport(FilesystemTransport)
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .with_context(|| format!("cannot read the repository at {}", repo.display()))
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

/// The length and SHA-256 of what `r` reads to its end.
pub fn hash_reader(mut r: impl std::io::Read, mut progress: impl FnMut(u64)) -> std::io::Result<(u64, Vec<u8>)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
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
    Ok((total, hasher.finalize().to_vec()))
}

/// Adds `file` as target `name` with vigil's fields `meta`, and signs new targets, snapshot and
/// timestamp metadata. The file is copied to `targets/<sha256>.<name>`. `progress` hears of
/// each hashed and copied chunk.
pub async fn add(
    repo: &Path,
    file: &Path,
    name: &str,
    meta: &TargetMeta,
    keys: &RoleKeyFiles,
    expiry: &Expiry,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<String> {
    let target_name = TargetName::new(name).map_err(|e| anyhow::anyhow!("`{name}` is not a valid target name: {e}"))?;
    if target_name.resolved() != name || name.starts_with('/') {
        bail!("`{name}` is not a plain relative target name (it resolves to `{}`)", target_name.resolved());
    }
    let (length, sha256) = hash_file(file, &mut progress)?;
    let hashes = Hashes { sha256: Decoded::from(sha256.clone()), _extra: HashMap::new() };
    let target = Target { length, hashes, custom: meta.to_custom(), _extra: HashMap::new() };
    let current = load(repo).await?;
    let (targets_v, snapshot_v, timestamp_v) = (
        next(current.targets().signed.version),
        next(current.snapshot().signed.version),
        next(current.timestamp().signed.version),
    );
    let (_, root_path) = latest_root(repo)?;
    let mut editor = RepositoryEditor::from_repo(&root_path, current).await?;
    editor
        .add_target(target_name, target)?
        .targets_version(targets_v)?
        .targets_expires(expires_in(expiry.targets)?)?
        .snapshot_version(snapshot_v)
        .snapshot_expires(expires_in(expiry.snapshot)?)
        .timestamp_version(timestamp_v)
        .timestamp_expires(expires_in(expiry.timestamp)?);
    let signed = editor.sign(&sources(&[&keys.targets, &keys.snapshot, &keys.timestamp])).await?;
    // The file first: a device that sees the new metadata finds its target.
    let hex_hash = hex::encode(&sha256);
    let dest = targets_dir(repo).join(format!("{hex_hash}.{name}"));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    copy_with_progress(file, &dest, &mut progress)?;
    let staging = Staging::new(&metadata_dir(repo))?;
    signed.write(staging.path()).await?;
    staging.publish()?;
    Ok(hex_hash)
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
    let current = load(repo).await?;
    let holder = KeyHolder::Root(current.root().signed.clone());
    let rng = SystemRandom::new();
    let meta = metadata_dir(repo);
    let mut snapshot_meta = current.timestamp().signed.meta.clone();
    let mut new_snapshot = None;
    let staging = Staging::new(&meta)?;
    if let Some(key) = snapshot_key {
        let old = &current.snapshot().signed;
        let snapshot = Snapshot {
            spec_version: SPEC_VERSION.to_owned(),
            version: next(old.version),
            expires: expires_in(expiry.snapshot)?,
            meta: old.meta.clone(),
            _extra: old._extra.clone(),
        };
        let signed = SignedRole::new(snapshot, &holder, &sources(&[key]), &rng).await?;
        signed.write(staging.path(), true).await?;
        let entry = snapshot_meta.get_mut("snapshot.json").context("the timestamp names no snapshot.json")?;
        entry.version = signed.signed().signed.version;
        entry.length = Some(*signed.length());
        entry.hashes = Some(Hashes { sha256: Decoded::from(signed.sha256().to_vec()), _extra: HashMap::new() });
        new_snapshot = Some(signed.signed().signed.version.get());
    }
    let old = &current.timestamp().signed;
    let timestamp = Timestamp {
        spec_version: SPEC_VERSION.to_owned(),
        version: next(old.version),
        expires: expires_in(expiry.timestamp)?,
        meta: std::mem::take(&mut snapshot_meta),
        _extra: old._extra.clone(),
    };
    let signed = SignedRole::new(timestamp, &holder, &sources(&[timestamp_key]), &rng).await?;
    signed.write(staging.path(), true).await?;
    staging.publish()?;
    Ok((signed.signed().signed.version.get(), new_snapshot))
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

/// What `vigil-ota status` prints: versions and expiry of each role, and the targets.
pub async fn describe(repo: &Path) -> anyhow::Result<String> {
    let r = load(repo).await?;
    let mut out = String::new();
    let line = |role: &str, v: NonZeroU64, exp: &jiff::Timestamp| format!("{role:<10} version {v:<4} expires {exp}\n");
    out += &line("root", r.root().signed.version, &r.root().signed.expires);
    out += &line("targets", r.targets().signed.version, &r.targets().signed.expires);
    out += &line("snapshot", r.snapshot().signed.version, &r.snapshot().signed.expires);
    out += &line("timestamp", r.timestamp().signed.version, &r.timestamp().signed.expires);
    let mut targets: Vec<_> = r.all_targets().collect();
    targets.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
    for (name, t) in targets {
        let fields = TargetMeta::from_custom(&t.custom)
            .map(|m| format!("{} {} {}", m.kind, m.name, m.version))
            .unwrap_or_else(|e| format!("(no vigil fields: {e})"));
        out += &format!("target {}  {} bytes  {fields}\n", name.raw(), t.length);
    }
    Ok(out)
}
