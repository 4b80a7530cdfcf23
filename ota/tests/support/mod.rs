//! A real HTTPS update server on a free loopback port (a test CA made with openssl, rustls), a
//! signed repository made with `vigil_ota::repo`, and a device state directory. The server can
//! misbehave on request: cut a transfer, ignore `Range`, trickle, append bytes to a target, or
//! serve other bytes for a path.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vigil_ota::repo::{self, Expiry, RoleKeyFiles};
use vigil_ota::target::{Compat, Device, Kind, TargetMeta};
use vigil_ota::time::{AssumeSynchronized, TimeSource};
use vigil_ota::transport::Timeouts;
use vigil_ota::{Updater, UpdaterConfig};

/// How the server misbehaves; changed while it runs.
#[derive(Debug, Default, Clone)]
pub struct Behaviour {
    /// Close the connection after this many body bytes of the next target response (once).
    pub cut_target_after: Option<u64>,
    /// Answer every request with the whole file, `200`, whatever `Range` says.
    pub ignore_range: bool,
    /// Send target bodies this many bytes at a time, waiting this long between.
    pub trickle: Option<(usize, Duration)>,
    /// Bytes appended to every target body (and to its Content-Length).
    pub extra_target_bytes: usize,
    /// Bytes served instead of the file at a path (`metadata/timestamp.json`).
    pub replace: HashMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Each request: path and its `Range` header.
    pub requests: Vec<(String, Option<String>)>,
}

pub struct Server {
    pub port: u16,
    pub ca: PathBuf,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves `root` over HTTPS on 127.0.0.1 with a certificate from a new test CA in `pki`.
    pub async fn start(root: PathBuf, pki: &Path) -> Self {
        let ca = vigil_testkit::pki::TestCa::new(pki, "update-ca");
        let (cert, key) = ca.issue("update-server", true);
        let chain = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut std::fs::read(&key).unwrap().as_slice()).unwrap().unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (b, s) = (behaviour.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, root, b, s) = (acceptor.clone(), root.clone(), b.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &root, &b, &s).await;
                    }
                });
            }
        });
        Self { port, ca: ca.ca_pem(), behaviour, seen, task }
    }

    pub fn url(&self, dir: &str) -> url::Url {
        url::Url::parse(&format!("https://127.0.0.1:{}/{dir}/", self.port)).unwrap()
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().requests.clone()
    }
}

/// One request per connection: `GET /path`, with `Range: bytes=N-` and `If-Range` honoured.
async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    root: &Path,
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Seen>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).await.unwrap_or(0) == 0 || head.len() > 16 << 10 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
    let header = |name: &str| {
        text.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
        })
    };
    let range = header("range");
    seen.lock().unwrap().requests.push((path.clone(), range.clone()));
    let b = behaviour.lock().unwrap().clone();
    let is_target = path.starts_with("targets/");
    let body = match b.replace.get(&path) {
        Some(bytes) => Some(bytes.clone()),
        None if path.contains("..") => None,
        None => std::fs::read(root.join(&path)).ok(),
    };
    let Some(mut body) = body else {
        let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        let _ = tls.shutdown().await;
        return;
    };
    if is_target {
        body.extend(std::iter::repeat_n(b'X', b.extra_target_bytes));
    }
    let etag =
        format!("\"{}-{:x}\"", body.len(), body.iter().fold(0u64, |h, &x| h.wrapping_mul(31).wrapping_add(x.into())));
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| !b.ignore_range)
        .filter(|_| header("if-range").is_none_or(|v| v == etag))
        .filter(|&n| n < body.len());
    let (status, part) = match from {
        Some(n) => {
            (format!("206 Partial Content\r\nContent-Range: bytes {n}-{}/{}", body.len() - 1, body.len()), &body[n..])
        }
        None => ("200 OK".to_owned(), &body[..]),
    };
    let head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n", part.len());
    if tls.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let cut = if is_target {
        let mut g = behaviour.lock().unwrap();
        g.cut_target_after.take()
    } else {
        None
    };
    let mut sent = 0usize;
    let step = b.trickle.filter(|_| is_target).map_or(64 << 10, |(n, _)| n);
    while sent < part.len() {
        let mut n = step.min(part.len() - sent);
        if let Some(c) = cut {
            let c = c as usize;
            if sent + n >= c {
                n = c.saturating_sub(sent);
                let _ = tls.write_all(&part[sent..sent + n]).await;
                let _ = tls.flush().await;
                return; // dropped without close_notify: the client sees a broken transfer
            }
        }
        if tls.write_all(&part[sent..sent + n]).await.is_err() {
            return;
        }
        sent += n;
        if let Some((_, pause)) = b.trickle.filter(|_| is_target) {
            let _ = tls.flush().await;
            tokio::time::sleep(pause).await;
        }
    }
    let _ = tls.shutdown().await;
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
        let expiry = Expiry::default();
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
            metadata_url: self.server.url("metadata"),
            targets_url: self.server.url("targets"),
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
                // The clock reading of the last check, not trust.
                if e.path().is_file() && e.file_name() != "latest_known_time.json" {
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
