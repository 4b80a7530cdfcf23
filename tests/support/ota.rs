//! The over-the-air rig shared by tests/ota.rs (models) and tests/ab.rs (vigil's binary): a
//! signed TUF repository served by a real HTTPS server (test CA, free port), a real mosquitto,
//! and devices configured to update from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::QoS;
use vigil_ota::repo::{self, Expiry, RoleKeyFiles};
use vigil_ota::target::{Compat, Kind, TargetMeta};
use vigil_testkit::https::Server;

use super::*;

/// A full loop of the clip (15 fps × 12 s): the canary compares the two models over the same
/// scenes.
pub const CANARY_FRAMES: u64 = 180;

/// A signed repository served over HTTPS, a broker, and a device configured to update from them.
pub struct Rig {
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub roles: RoleKeyFiles,
    pub server: Server,
    pub broker: Broker,
    pub config: PathBuf,
    pub operator: rumqttc::Client,
    pub watch: Subscriber,
}

/// A device's configuration in `dir` (data in `dir/data`): the looping clip as camera `yard`, the
/// rig's broker, and updates from the rig's server trusting the repository's first root.
pub fn device_config(dir: &Path, device: &str, rig: (&Broker, &Server, &Path), ota_extra: &str) -> PathBuf {
    let (broker, server, repo) = rig;
    let config = write_config(dir, device, &broker.url(), &[("yard", looping_clip_uri())]);
    let root = repo.join("metadata/1.root.json");
    append_config(
        &config,
        &format!(
            "[ota]\nserver = \"https://127.0.0.1:{}/\"\nroot = \"{}\"\nca = \"{}\"\nclock = \"trusted\"\n{ota_extra}\
             [ota.canary]\nmin_frames = {CANARY_FRAMES}\nmax_wait_s = 60\n",
            server.port,
            root.display(),
            server.ca.display()
        ),
    );
    config
}

impl Rig {
    pub fn new(device: &str, ota_extra: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        for sub in ["pki", "bundles"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (roles, server) = rt.block_on(async {
            let roles = repo::init_with_new_keys(&d.join("repo"), &d.join("keys"), &Expiry::default()).await.unwrap();
            (roles, Server::start(d.join("repo"), &d.join("pki")).await)
        });
        let broker = Broker::start();
        let config = device_config(&d, device, (&broker, &server, &d.join("repo")), ota_extra);
        let watch = Subscriber::start(broker.port, "vigil/#");
        let (operator, mut connection) = rumqttc::Client::new(mqtt_options(broker.port, None), 10);
        std::thread::spawn(move || for _ in connection.iter() {});
        Self { rt, dir, roles, server, broker, config, operator, watch }
    }

    /// Another device on the same broker and update server, in its own directory.
    pub fn add_device(&self, device: &str) -> PathBuf {
        self.add_device_with(device, "")
    }

    /// [`Rig::add_device`] with `ota_extra` (keys) in its `[ota]` table.
    pub fn add_device_with(&self, device: &str, ota_extra: &str) -> PathBuf {
        let dir = self.path(device);
        std::fs::create_dir_all(&dir).unwrap();
        device_config(&dir, device, (&self.broker, &self.server, &self.path("repo")), ota_extra)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A copy of the shipped bundle as `version`, changed by `edit` (manifest text → new text),
    /// signed into the repository as `models/shapes-<version>.tar`.
    pub fn publish(&self, version: &str, edit: impl FnOnce(String) -> String) {
        let bundle = self.prepare(version, edit);
        self.sign(&bundle, version);
    }

    /// The bundle directory of [`Rig::publish`], not signed yet. Unless `edit` sets another
    /// budget, the bundle's is 1 s: these tests are not about speed (acceptance's latency check
    /// has its own case), and a machine busy with the other tests' devices must not fail a
    /// correct model (the shipped model's ORT p95 reached 83 ms of the 80 allowed there).
    pub fn prepare(&self, version: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
        let bundle = self.path(&format!("bundles/shapes-{version}"));
        copy_bundle(&bundle);
        let manifest = bundle.join("manifest.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
        let text = edit(text).replace("latency_ms = 100\n", "latency_ms = 1000\n");
        std::fs::write(&manifest, text).unwrap();
        bundle
    }

    /// A copy of the shipped bundle as `version` whose reference output is not what the model
    /// computes (it fails acceptance's reference check), signed into the repository.
    pub fn publish_wrong_outputs(&self, version: &str) {
        let bundle = self.prepare(version, |m| m);
        let reference = bundle.join("reference/output.int8model.f32");
        let values = std::fs::metadata(&reference).unwrap().len() / 4;
        std::fs::write(&reference, (0..values).flat_map(|_| 1000.0f32.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        self.sign(&bundle, version);
    }

    /// Packs the bundle directory `bundle` and signs it into the repository as `version`.
    pub fn sign(&self, bundle: &Path, version: &str) {
        self.sign_model(bundle, "shapes", version);
    }

    /// [`Rig::sign`] for a model called `name`.
    pub fn sign_model(&self, bundle: &Path, name: &str, version: &str) {
        let archive = self.path(&format!("bundles/{name}-{version}.tar"));
        vigil_ota::archive::pack_dir(bundle, &archive).unwrap();
        self.add(&archive, &format!("models/{name}-{version}.tar"), Kind::Model, name, version, Compat::default());
    }

    /// Signs the executable `file` into the repository as vigil's binary, `version`.
    pub fn sign_binary(&self, file: &Path, version: &str) {
        let compat = Compat { arch: vec![std::env::consts::ARCH.to_owned()], ..Compat::default() };
        self.add(file, &format!("binaries/vigil-{version}"), Kind::Binary, "vigil", version, compat);
    }

    /// Adds `file` to the repository as target `target` with these vigil fields.
    fn add(&self, file: &Path, target: &str, kind: Kind, name: &str, version: &str, compat: Compat) {
        let meta =
            TargetMeta { kind, name: name.into(), version: version.parse().unwrap(), compat, allow_downgrade: false };
        self.rt
            .block_on(repo::add(&self.path("repo"), file, target, &meta, &self.roles, &Expiry::default(), |_| {}))
            .unwrap();
    }

    pub fn apply(&self, device: &str, request_id: &str, version: &str) {
        self.apply_model(device, request_id, "shapes", version);
    }

    /// [`Rig::apply`] for a model called `name`.
    pub fn apply_model(&self, device: &str, request_id: &str, name: &str, version: &str) {
        let args = serde_json::json!({ "name": name, "version": version });
        let r = self.command(device, request_id, "ota/apply", args);
        assert_eq!(r["ok"], true, "{r}");
    }

    /// Sends command `name` and returns its reply.
    pub fn command(&self, device: &str, request_id: &str, name: &str, args: serde_json::Value) -> serde_json::Value {
        let payload = serde_json::json!({ "request_id": request_id, "args": args }).to_string();
        let topic = format!("vigil/{device}/cmd/{name}");
        let reply = format!("vigil/{device}/reply/{request_id}");
        // Commands are not retained: send until the service has subscribed and answers.
        let answered = wait_until(Duration::from_secs(30), || {
            self.operator.publish(&topic, QoS::AtLeastOnce, false, payload.clone().into_bytes()).unwrap();
            wait_until(Duration::from_secs(1), || self.watch.count(&reply) > 0)
        });
        assert!(answered, "no reply to {name}");
        serde_json::from_slice(&self.watch.on(&reply)[0]).unwrap()
    }

    /// Every OTA state published so far.
    pub fn states(&self, device: &str) -> Vec<serde_json::Value> {
        self.watch.on(&format!("vigil/{device}/ota")).iter().map(|p| serde_json::from_slice(p).unwrap()).collect()
    }

    /// Waits for an outcome of `request_id` (`successful`, `failed` or `rolled_back`).
    pub fn outcome(&self, device: &str, request_id: &str, within: Duration, vigil: &Vigil) -> serde_json::Value {
        let final_state = |s: &serde_json::Value| {
            s["request_id"] == request_id
                && ["successful", "failed", "rolled_back"].contains(&s["state"].as_str().unwrap_or(""))
        };
        let found = wait_until(within, || self.states(device).iter().any(final_state));
        assert!(found, "no outcome within {within:?}; states: {:#?}\nlog:\n{}", self.states(device), vigil.log());
        self.states(device).into_iter().find(final_state).unwrap()
    }

    pub fn data(&self) -> PathBuf {
        self.path("data")
    }

    /// The device's update journal (`data/ota/update.json`) as JSON.
    pub fn journal(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.data().join("ota/update.json")).unwrap()).unwrap()
    }

    /// `vigil-ops fleet ota push shapes <version>` against the rig's broker, as the operator runs it;
    /// its report and progress go to `<log>.out` and `<log>.err`.
    pub fn push(&self, version: &str, state: &Path, extra: &[&str], log: &str) -> std::process::Child {
        let file = |ext: &str| std::fs::File::create(self.path(&format!("{log}.{ext}"))).unwrap();
        std::process::Command::new(ops_bin())
            .args(["fleet", "--broker", &self.broker.url(), "ota", "push", "shapes", version, "--state"])
            .arg(state)
            .args(extra)
            .stdout(file("out"))
            .stderr(file("err"))
            .spawn()
            .unwrap()
    }

    /// Waits (up to 4 min) for a [`Rig::push`]: its exit code, report and progress.
    pub fn finish(&self, mut child: std::process::Child, log: &str) -> (Option<i32>, String, String) {
        if !wait_until(Duration::from_secs(240), || child.try_wait().unwrap().is_some()) {
            let _ = child.kill();
        }
        let code = child.wait().unwrap().code();
        (code, self.read(&format!("{log}.out")), self.read(&format!("{log}.err")))
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}
