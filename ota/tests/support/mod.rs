//! A real HTTPS update server (vigil_testkit::https) on a free loopback port, a
//! signed repository made with `vigil_ota::repo`, and a device state directory. The server can
//! misbehave on request: cut a transfer, ignore `Range`, trickle, append bytes to a target, or
//! serve other bytes for a path.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vigil_ota::repo::{self, Expiry, RoleKeyFiles};
use vigil_ota::target::{Compat, Device, Kind, TargetMeta};
use vigil_ota::time::{AssumeSynchronized, TimeSource};
use vigil_ota::transport::Timeouts;
use vigil_ota::{Updater, UpdaterConfig};
pub use vigil_testkit::https::Server;

/// Refreshes and chooses the newest `people` that fits [`Fixture::device`].
pub async fn newest(u: &Updater) -> (vigil_ota::client::Trusted, vigil_ota::Offer) {
    let trusted = u.refresh().await.expect("the repository is trusted");
    let offer = u.choose(&trusted, &Fixture::device(), MODEL, None).expect("a target fits the device");
    (trusted, offer)
}

/// Signing keys of a test repository.
pub struct Keys {
    pub root: Vec<PathBuf>,
    pub roles: RoleKeyFiles,
}

/// A signed repository served over HTTPS, and a device to update from it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub keys: Keys,
    pub server: Server,
    pub expiry: Expiry,
}

pub const MODEL: &str = "people";

pub fn model(version: &str) -> TargetMeta {
    TargetMeta {
        kind: Kind::Model,
        name: MODEL.into(),
        version: version.parse().unwrap(),
        compat: Compat::default(),
        allow_downgrade: false,
    }
}

/// `len` bytes that differ per `seed`.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

impl Fixture {
    /// A repository with `root_keys` root keys (threshold `threshold`) holding model `people`
    /// 1.0.0 (`payload(len, 1)`), served over HTTPS.
    pub async fn new(root_keys: usize, threshold: u64, len: usize) -> Self {
        Self::with_expiry(root_keys, threshold, len, Expiry::default()).await
    }

    /// [`Fixture::new`] with metadata valid for `expiry`.
    pub async fn with_expiry(root_keys: usize, threshold: u64, len: usize, expiry: Expiry) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["keys", "repo", "pki", "device", "files"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let key = |name: &str| d.join("keys").join(name);
        let mut root = Vec::new();
        for i in 0..root_keys {
            let k = key(&format!("root{i}.der"));
            repo::keygen(&k).await.unwrap();
            root.push(k);
        }
        let roles = RoleKeyFiles {
            targets: key("targets.der"),
            snapshot: key("snapshot.der"),
            timestamp: key("timestamp.der"),
        };
        for k in [&roles.targets, &roles.snapshot, &roles.timestamp] {
            repo::keygen(k).await.unwrap();
        }
        repo::init(&d.join("repo"), &root, threshold, &roles, &expiry).await.unwrap();
        std::fs::copy(d.join("repo/metadata/1.root.json"), d.join("device/shipped-root.json")).unwrap();
        let server = Server::start(d.join("repo"), &d.join("pki")).await;
        let f = Self { dir, keys: Keys { root, roles }, server, expiry };
        f.add("models/people-1.0.0", &payload(len, 1), &model("1.0.0")).await;
        f
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }

    /// Adds `bytes` as target `name` with `meta`, signed.
    pub async fn add(&self, name: &str, bytes: &[u8], meta: &TargetMeta) {
        let file = self.path().join("files").join(name.replace('/', "_"));
        std::fs::write(&file, bytes).unwrap();
        repo::add(&self.repo(), &file, name, meta, &self.keys.roles, &self.expiry, |_| {}).await.unwrap();
    }

    pub fn config(&self) -> UpdaterConfig {
        UpdaterConfig {
            metadata_url: self.server.url("metadata").parse().unwrap(),
            targets_url: self.server.url("targets").parse().unwrap(),
            state_dir: self.path().join("device/state"),
            shipped_root: self.path().join("device/shipped-root.json"),
            ca: self.server.ca.clone(),
            client_cert: None,
            timeouts: Timeouts { read: Duration::from_secs(5), ..Timeouts::default() },
            limits: vigil_ota::client::default_limits(),
        }
    }

    pub fn updater(&self) -> Updater {
        self.updater_with(self.config(), Arc::new(AssumeSynchronized))
    }

    pub fn updater_with(&self, config: UpdaterConfig, time: Arc<dyn TimeSource>) -> Updater {
        Updater::new(config, time).unwrap()
    }

    pub fn device() -> Device {
        Device {
            boards: vec!["generic".into()],
            soc: None,
            arch: std::env::consts::ARCH.into(),
            jetpack: None,
            backends: vec!["onnxruntime".into()],
            vigil: "0.1.0".parse().unwrap(),
        }
    }

    pub fn dest(&self, name: &str) -> PathBuf {
        self.path().join("device").join(name)
    }

    /// Everything the device keeps but its partial downloads, as JSON values (tough writes its
    /// maps in no set order): after a refused update, this must not have changed.
    pub fn device_state(&self) -> BTreeMap<PathBuf, serde_json::Value> {
        let mut out = BTreeMap::new();
        let state = self.path().join("device/state");
        for sub in ["trusted", ""] {
            let Ok(entries) = std::fs::read_dir(state.join(sub)) else { continue };
            for e in entries.flatten() {
                // The clock reading of the last check, and the lock file: not trust.
                if e.path().is_file() && e.file_name() != "latest_known_time.json" && e.file_name() != "lock" {
                    out.insert(e.path(), serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap());
                }
            }
        }
        out
    }

    /// Reads a metadata file of the repository as JSON.
    pub fn read_json(&self, file: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.repo().join("metadata").join(file)).unwrap()).unwrap()
    }

    pub fn write_json(&self, file: &str, v: &serde_json::Value) {
        std::fs::write(self.repo().join("metadata").join(file), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    /// The newest `N.<role>.json` version.
    pub fn latest(&self, role: &str) -> u64 {
        std::fs::read_dir(self.repo().join("metadata"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(&format!(".{role}.json"))?.parse().ok())
            .max()
            .unwrap()
    }
}
