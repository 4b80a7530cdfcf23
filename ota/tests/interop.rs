//! vigil's TUF code against python-tuf, the TUF project's reference implementation (PyPI `tuf`,
//! installed into `.venv` by `make setup`), both ways:
//!
//! - repositories written with python-tuf's Metadata API (ota/tests/peer/tuf_peer.py `write`),
//!   served over HTTPS, update a vigil device: ed25519, ECDSA and RSA keys, consistent snapshots
//!   on and off, a two-step root rotation, targets in subdirectories, delegated targets;
//! - vigil resolves every name of a repository with nested, terminating, shadowing, path-limited
//!   and under-signed delegations to the entry python-tuf's client resolves it to;
//! - python-tuf's client (`read`) reads what `vigil-ota` writes: root rotation, targets in
//!   subdirectories, a model team's delegated role.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use support::*;
use vigil_ota::repo::{self, Delegation, Expiry, OnlineKeys, RoleKeyFiles, Signer};
use vigil_ota::target::{Compat, Kind, TargetMeta};
use vigil_ota::time::AssumeSynchronized;
use vigil_ota::{OtaError, Updater};

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} is missing: run `make setup` (it installs python-tuf)", p.display());
    p
}

/// Runs the peer; its stdout.
fn peer(args: &[&std::ffi::OsStr]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/tuf_peer.py");
    let o = std::process::Command::new(python()).arg(script).args(args).output().expect("runs python");
    assert!(o.status.success(), "tuf_peer.py {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A repository written by python-tuf from `plan` into `out`.
fn python_writes(plan: &Value, out: &Path) {
    let file = out.with_extension("plan.json");
    std::fs::write(&file, serde_json::to_vec(plan).unwrap()).unwrap();
    peer(&["write".as_ref(), file.as_os_str(), out.as_os_str()]);
}

/// What python-tuf's client resolves each of `names` to in the repository at `repo`.
fn python_reads(repo: &Path, names: &[&str]) -> Value {
    let mut args: Vec<&std::ffi::OsStr> = vec!["read".as_ref(), repo.as_os_str()];
    args.extend(names.iter().map(std::ffi::OsStr::new));
    serde_json::from_str(&peer(&args)).unwrap()
}

/// vigil's fields for model `people` `version`, as a target's `custom` object.
fn custom(version: &str) -> Value {
    serde_json::to_value(model(version).to_custom()).unwrap()
}

/// A file of `len` bytes in `dir`, and its entry for a plan.
fn entry(dir: &Path, name: &str, len: usize, seed: u8, custom: Value) -> Value {
    let file = dir.join(format!("payload-{seed}"));
    std::fs::write(&file, payload(len, seed)).unwrap();
    json!({ "name": name, "file": file, "custom": custom })
}

/// A device updating from the repository in `repo` (served over HTTPS), shipped with its
/// version 1 root.
struct Device {
    dir: tempfile::TempDir,
    server: Server,
}

impl Device {
    async fn serve(repo: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo.join("metadata/1.root.json"), dir.path().join("root.json")).unwrap();
        let server = Server::start(repo.to_owned(), dir.path()).await;
        Self { dir, server }
    }

    fn updater(&self) -> Updater {
        let config = vigil_ota::UpdaterConfig {
            metadata_url: self.server.url("metadata").parse().unwrap(),
            targets_url: self.server.url("targets").parse().unwrap(),
            state_dir: self.dir.path().join("state"),
            shipped_root: self.dir.path().join("root.json"),
            ca: self.server.ca.clone(),
            client_cert: None,
            timeouts: Default::default(),
            limits: vigil_ota::client::default_limits(),
        };
        Updater::new(config, Arc::new(AssumeSynchronized)).unwrap()
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_python_tuf_writes_update_a_device() {
    for keytype in ["ed25519", "ecdsa", "rsa"] {
        for consistent in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let plan = json!({
                "keytype": keytype, "consistent": consistent, "rotate": true,
                "targets": [entry(d, "models/people-1.0.0.tar", 5000, 1, custom("1.0.0"))],
                "roles": [{
                    "name": "people-team", "paths": ["models/people-*"], "keys": 2, "threshold": 2,
                    "targets": [entry(d, "models/people-2.0.0.tar", 3000, 2, custom("2.0.0"))]
                }]
            });
            python_writes(&plan, &d.join("repo"));
            let case = format!("{keytype} keys, consistent snapshots {consistent}");
            let device = Device::serve(&d.join("repo")).await;
            let u = device.updater();
            let trusted = u.refresh().await.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(trusted.versions().0, 3, "{case}: the root chain was walked to version 3");
            let newest = u.choose(&trusted, &Fixture::device(), MODEL, None).unwrap();
            assert_eq!(
                (newest.meta.version.to_string(), newest.role.as_str()),
                ("2.0.0".into(), "people-team"),
                "{case}"
            );
            u.download(&trusted, &newest, &device.dest("2.tar")).await.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(std::fs::read(device.dest("2.tar")).unwrap(), payload(3000, 2), "{case}");
            let v1 = "1.0.0".parse().unwrap();
            let first = u.choose(&trusted, &Fixture::device(), MODEL, Some(&v1)).unwrap();
            assert_eq!(first.role, "targets", "{case}");
            u.download(&trusted, &first, &device.dest("1.tar")).await.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(std::fs::read(device.dest("1.tar")).unwrap(), payload(5000, 1), "{case}");
            // The requests followed the specification's layout.
            let asked: Vec<String> = device.server.requests().into_iter().map(|(path, _)| path).collect();
            let hashed = asked.iter().any(|p| p.starts_with("targets/models/") && p.ends_with(".people-2.0.0.tar"));
            let plain = asked.iter().any(|p| p == "targets/models/people-2.0.0.tar");
            assert!(if consistent { hashed } else { plain }, "{case}: {asked:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_name_resolves_to_the_entry_python_tuf_resolves_it_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = |name: &str, seed: u8| entry(d, name, 1000 + seed as usize, seed, custom(&format!("{seed}.0.0")));
    let plan = json!({
        "keytype": "ed25519",
        "targets": [e("models/people-1.0.0.tar", 1)],
        "roles": [
            // Listed first: asked first for the names its paths cover.
            { "name": "team", "paths": ["models/people-*"], "keys": 2, "threshold": 2, "targets": [
                e("models/people-1.0.0.tar", 11),  // the top-level entry decides
                e("models/people-2.0.0.tar", 2),
                e("models/cars-1.0.0.tar", 12),    // outside its paths
            ]},
            { "name": "interns", "delegated_by": "team", "paths": ["models/people-3*"], "targets": [
                e("models/people-3.0.0.tar", 3),
            ]},
            // Terminating: nothing after it is asked for models/people-4*.
            { "name": "strict", "paths": ["models/people-4*"], "terminating": true, "targets": [
                e("models/people-9.0.0.tar", 19),  // outside its paths
            ]},
            { "name": "late", "paths": ["models/*"], "targets": [
                e("models/people-4.0.0.tar", 14),  // cut off by `strict`
                e("models/people-5.0.0.tar", 5),
                e("models/people-2.0.0.tar", 15),  // `team` was asked first
                e("models/deep/people-7.0.0.tar", 17),  // `*` does not cross `/`
            ]},
            // Two keys, one signature: unusable.
            { "name": "weak", "paths": ["models/people-6*"], "keys": 2, "threshold": 2, "sign_with": 1, "targets": [
                e("models/people-6.0.0.tar", 6),
            ]},
            { "name": "after-weak", "paths": ["models/people-6*"], "targets": [e("models/people-6.1.0.tar", 16)] },
        ]
    });
    python_writes(&plan, &d.join("repo"));
    let names = [
        "models/people-1.0.0.tar",
        "models/people-2.0.0.tar",
        "models/people-3.0.0.tar",
        "models/people-4.0.0.tar",
        "models/people-5.0.0.tar",
        "models/people-6.0.0.tar",
        "models/people-6.1.0.tar",
        "models/people-9.0.0.tar",
        "models/cars-1.0.0.tar",
        "models/deep/people-7.0.0.tar",
    ];
    let python = python_reads(&d.join("repo"), &names);
    let device = Device::serve(&d.join("repo")).await;
    let u = device.updater();
    let trusted = u.refresh().await.unwrap();
    let offers: std::collections::BTreeMap<String, Result<vigil_ota::Offer, OtaError>> =
        u.offers(&trusted).into_iter().collect();
    let mut found = 0;
    for name in names {
        let theirs = &python[name];
        let Some(ours) = offers.get(name) else {
            // Listed only by a role vigil could not verify: vigil cannot even know the name.
            assert!(theirs.get("error").is_some(), "{name}: python-tuf {theirs}, vigil does not list it");
            assert_eq!(name, "models/people-6.0.0.tar");
            continue;
        };
        match (theirs, ours) {
            (Value::Object(t), Ok(o)) if t.contains_key("sha256") => {
                assert_eq!(
                    (t["sha256"].as_str().unwrap(), t["length"].as_u64().unwrap()),
                    (o.sha256.as_str(), o.length),
                    "{name}"
                );
                found += 1;
            }
            (Value::Null, Err(OtaError::BadTarget { why, .. })) => {
                assert!(why.contains("do not cover it"), "{name}: {why}")
            }
            // python-tuf raises where the search meets an unusable role; vigil reports it there.
            (Value::Object(t), Err(OtaError::BadTarget { why, .. })) if t.contains_key("error") => {
                assert!(why.contains("stopped at delegated role `weak`"), "{name}: {why}")
            }
            _ => panic!("{name}: python-tuf {theirs}, vigil {ours:?}"),
        }
    }
    assert_eq!(found, 4, "people 1.0.0 (top level), 2.0.0 (team), 3.0.0 (interns), 5.0.0 (late): {python}");
    // The entry that decides is the one downloaded: people-2.0.0 from `team`, not `late`'s.
    let v2 = "2.0.0".parse().unwrap();
    let offer = u.choose(&trusted, &Fixture::device(), MODEL, Some(&v2)).unwrap();
    assert_eq!(offer.role, "team");
    u.download(&trusted, &offer, &device.dest("2.tar")).await.unwrap();
    assert_eq!(std::fs::read(device.dest("2.tar")).unwrap(), payload(1002, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_role_cannot_change_what_the_top_level_role_signed() {
    // The case that let an x86_64 device install an aarch64-only binary and raised its minimum
    // to 9.9.9: two roles list the top-level name with other fields, one of them outside its paths.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let binary = |version: &str, arch: &[&str]| {
        let meta = TargetMeta {
            kind: Kind::Binary,
            name: "vigil".into(),
            version: version.parse().unwrap(),
            compat: Compat { arch: arch.iter().map(|a| a.to_string()).collect(), ..Compat::default() },
            allow_downgrade: false,
        };
        serde_json::to_value(meta.to_custom()).unwrap()
    };
    let name = "binaries/vigil-2.0.0";
    let plan = json!({
        "targets": [entry(d, name, 2000, 1, binary("2.0.0", &["riscv64"]))],
        "roles": [
            { "name": "models-only", "paths": ["models/*"], "targets": [entry(d, name, 2000, 2, binary("9.9.9", &[]))] },
            { "name": "everything", "paths": ["*/*"], "targets": [entry(d, name, 2000, 3, binary("9.9.9", &[]))] },
        ]
    });
    python_writes(&plan, &d.join("repo"));
    let device = Device::serve(&d.join("repo")).await;
    let u = device.updater();
    let trusted = u.refresh().await.unwrap();
    let offers = u.offers(&trusted);
    let (_, decided) = offers.iter().find(|(n, _)| n == name).unwrap();
    let decided = decided.as_ref().unwrap();
    assert_eq!((decided.meta.version.to_string(), decided.role.as_str()), ("2.0.0".into(), "targets"));
    assert_eq!(
        decided.sha256,
        python_reads(&d.join("repo"), &[name])[name]["sha256"].as_str().unwrap(),
        "python-tuf agrees"
    );
    let e = u.choose(&trusted, &Fixture::device(), "vigil", None).unwrap_err();
    assert!(matches!(&e, OtaError::Incompatible { version, .. } if version == "2.0.0"), "{e}");
    assert!(u.state().minimums().unwrap().is_empty(), "no minimum was raised");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_id_that_is_not_the_hash_of_its_key_is_refused_with_the_reason() {
    // python-tuf takes key ids as opaque; vigil keeps the specification's definition
    // (docs/decisions/0016) and says so.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan =
        json!({ "custom_keyid": true, "targets": [entry(d, "models/people-1.0.0.tar", 100, 1, custom("1.0.0"))] });
    python_writes(&plan, &d.join("repo"));
    assert!(
        python_reads(&d.join("repo"), &["models/people-1.0.0.tar"])["models/people-1.0.0.tar"]["sha256"].is_string()
    );
    let device = Device::serve(&d.join("repo")).await;
    let e = device.updater().refresh().await.err().expect("refused");
    let text = e.to_string();
    assert!(text.contains("2.root.json") && text.contains("SHA-256 of the key's canonical JSON"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_tuf_reads_what_vigil_ota_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = d.join("repo");
    let k = |n: &str| d.join(n);
    for key in ["root0", "root1", "root2", "targets", "snapshot", "timestamp", "team0", "team1"] {
        repo::keygen(&k(key)).await.unwrap();
    }
    let roles = RoleKeyFiles { targets: k("targets"), snapshot: k("snapshot"), timestamp: k("timestamp") };
    let online = OnlineKeys::from(&roles);
    let expiry = Expiry::default();
    repo::init(&r, &[k("root0"), k("root1")], 2, &roles, &expiry).await.unwrap();
    let add = |name: &'static str, seed: u8, meta: TargetMeta, signer: Signer| {
        let (r, online) = (r.clone(), online.clone());
        let file = d.join(format!("file-{seed}"));
        std::fs::write(&file, payload(1500, seed)).unwrap();
        async move { repo::add_signed(&r, &file, name, &meta, &signer, &online, &expiry, |_| {}).await }
    };
    let top = Signer::TopLevel { targets: k("targets") };
    add("models/people-1.0.0.tar", 1, model("1.0.0"), top.clone()).await.unwrap();
    let mut binary = model("0.2.0");
    (binary.kind, binary.name) = (Kind::Binary, "vigil".into());
    add("binaries/vigil-0.2.0", 2, binary, top).await.unwrap();
    // Root version 2: one new root key, signed by both old ones.
    repo::rotate(&r, &[k("root0"), k("root1")], &[k("root2")], 1, &roles, &expiry).await.unwrap();
    repo::refresh(&r, &k("timestamp"), Some(&k("snapshot")), &expiry).await.unwrap();
    // A model team: two keys, both needed, for models/people-*.
    let team = Delegation {
        name: "people-team".into(),
        keys: vec![repo::public_key_file(&k("team0")), repo::public_key_file(&k("team1"))],
        threshold: 2,
        paths: vec!["models/people-*".into()],
        terminating: false,
    };
    repo::delegate(&r, &team, &k("targets"), &online, &expiry).await.unwrap();
    let as_team = Signer::Role { name: "people-team".into(), keys: vec![k("team0"), k("team1")] };
    add("models/people-2.0.0.tar", 3, model("2.0.0"), as_team.clone()).await.unwrap();

    // Every metadata file writes `expires` as the specification does.
    for file in std::fs::read_dir(r.join("metadata")).unwrap() {
        let path = file.unwrap().path();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let expires = v["signed"]["expires"].as_str().unwrap().to_owned();
        let shape = expires.len() == 20 && expires.ends_with('Z') && !expires.contains('.');
        assert!(shape, "{}: expires {expires}", path.display());
    }
    let names = ["models/people-1.0.0.tar", "binaries/vigil-0.2.0", "models/people-2.0.0.tar"];
    let theirs = python_reads(&r, &names);
    for (name, seed) in names.iter().zip([1u8, 2, 3]) {
        use sha2::Digest;
        let want = hex::encode(sha2::Sha256::digest(payload(1500, seed)));
        assert_eq!(theirs[name]["sha256"], want.as_str(), "{name}: {theirs}");
        assert_eq!(theirs[name]["custom"]["vigil"]["name"], if seed == 2 { "vigil" } else { "people" }, "{name}");
    }
    // And vigil's device, from the specification's paths.
    let device = Device::serve(&r).await;
    let u = device.updater();
    let trusted = u.refresh().await.unwrap();
    let newest = u.choose(&trusted, &Fixture::device(), MODEL, None).unwrap();
    assert_eq!((newest.meta.version.to_string(), newest.role.as_str()), ("2.0.0".into(), "people-team"));
    u.download(&trusted, &newest, &device.dest("2.tar")).await.unwrap();
    let asked: Vec<String> = device.server.requests().into_iter().map(|(p, _)| p).collect();
    assert!(asked.iter().any(|p| p.starts_with("targets/models/") && p.ends_with(".people-2.0.0.tar")), "{asked:?}");

    // The team signs nothing outside its paths, nothing the top level already signed, and
    // nothing below its threshold.
    let e = add("models/cars-1.0.0.tar", 4, model("1.0.0"), as_team.clone()).await.unwrap_err().to_string();
    assert!(e.contains("outside the paths delegated to `people-team`"), "{e}");
    let e = add("models/people-1.0.0.tar", 5, model("1.0.0"), as_team).await.unwrap_err().to_string();
    assert!(e.contains("also signed by `targets`"), "{e}");
    let one = Signer::Role { name: "people-team".into(), keys: vec![k("team0")] };
    let e = add("models/people-3.0.0.tar", 6, model("3.0.0"), one).await.unwrap_err().to_string();
    assert!(e.contains("needs 2 signatures"), "{e}");
    // Removing the delegation withdraws what the team signed.
    repo::undelegate(&r, "people-team", &k("targets"), &online, &expiry).await.unwrap();
    let trusted = u.refresh().await.unwrap();
    let newest = u.choose(&trusted, &Fixture::device(), MODEL, None).unwrap();
    assert_eq!(newest.meta.version.to_string(), "1.0.0");
    assert!(python_reads(&r, &["models/people-2.0.0.tar"])["models/people-2.0.0.tar"].is_null());
}
