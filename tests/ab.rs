//! vigil's own binary updated over the air into its A/B slots, end to end: a signed binary
//! target in the TUF repository (real HTTPS server, real mosquitto), `ota/apply` for `vigil`, and
//! vigil under a supervisor that follows the shipped vigil.service (`ExecStartPre=` guard,
//! `ExecStart=` launcher, `Restart=always`, no start limit, `Type=notify`, the watchdog),
//! with only the times shortened. systemd cannot be PID 1 here (docs/systemd.md).
//!
//! The good update is a second real vigil, the same code reporting the next patch version,
//! built by `make next-vigil` (make test does). The bad ones are scripts that pass the staging
//! checks (`--version`, `check-config`) and then crash, hang before READY, or stop their
//! watchdog.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::ota::*;
use support::*;
use vigil_ota::repo::latest_targets;
use vigil_testkit::supervisor::{Record, Supervisor, Unit};

/// The new binary's health window (`ota.binary_health_window_s`).
const HEALTH: &str = "binary_health_window_s = 3\n";

/// The second vigil `make next-vigil` builds, and the version it reports.
fn next_vigil() -> (PathBuf, String) {
    let path = repo_root().join("target/fixtures/vigil-next");
    assert!(path.is_file(), "{} is missing: run `make next-vigil` (make test does)", path.display());
    let version = version_of(&path);
    let package = version_of(&vigil_bin());
    let parse = |v: &str| v.parse::<semver::Version>().unwrap();
    assert!(parse(&version) > parse(&package), "vigil-next ({version}) must be newer than this build ({package})");
    (path, version)
}

fn version_of(binary: &Path) -> String {
    let out = std::process::Command::new(binary).arg("--version").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().strip_prefix("vigil ").unwrap().to_owned()
}

/// A version above this build's for the bad binaries: its minor version plus one, patch `n`.
fn bad_version(n: u64) -> String {
    let v: semver::Version = version_of(&vigil_bin()).parse().unwrap();
    format!("{}.{}.{n}", v.major, v.minor + 1)
}

/// vigil.service as shipped, running `package` as /usr/bin/vigil on `config`; restarts after
/// 200 ms (5 s shipped), READY within 30 s, the watchdog at 3 s. Its start limit is the shipped
/// one (none).
fn unit(package: &Path, config: &Path, log: &Path) -> Unit {
    let file = repo_root().join("appliance/vigil/package/vigil.service");
    let (package, config) = (package.to_str().unwrap(), config.to_str().unwrap());
    let mut unit =
        Unit::from_file(&file, &[("/usr/bin/vigil", package), ("/etc/vigil/vigil.toml", config)], log).unwrap();
    unit.env.push(("VIGIL_LOG".into(), "info,ort=warn".into()));
    // A copied package and the slot binaries live outside target/, where vigil looks for the
    // checkout's ONNX Runtime; a device has it in /usr/lib/vigil.
    let ort = vigil_infer::find_ort_library(None).unwrap();
    unit.env.push(("ORT_DYLIB_PATH".into(), ort.into()));
    unit.restart_sec = Duration::from_millis(200);
    unit.timeout_start = Duration::from_secs(30);
    unit.watchdog = Some(Duration::from_secs(3));
    unit
}

/// The binary the service's main process runs now.
fn running_exe(sup: &Supervisor) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{}/exe", sup.pid()?)).ok()
}

fn readies(sup: &Supervisor) -> usize {
    sup.records().iter().filter(|r| **r == Record::Ready).count()
}

/// One device of the rig under the supervisor, running `package`.
struct Device {
    name: String,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    sup: Supervisor,
}

impl Device {
    /// A new device `name` of the rig.
    fn start(rig: &Rig, name: &str, package: &Path) -> Self {
        Self::run(name, rig.add_device_with(name, HEALTH), package)
    }

    /// Device `name` on its configuration `config` (written by the rig), running `package`,
    /// once it is READY.
    fn run(name: &str, config: PathBuf, package: &Path) -> Self {
        let dir = config.parent().unwrap().to_owned();
        let log = dir.join("vigil.log");
        let sup = Supervisor::start(unit(package, &config, &log), &dir).unwrap();
        let device = Self { name: name.to_owned(), data: dir.join("data"), config, log, sup };
        device.wait_ready(1);
        device
    }

    /// Stopped, `while_stopped` done (the board off), and started again with `package` as the
    /// packaged binary: a reboot.
    fn restart(self, package: &Path, while_stopped: impl FnOnce()) -> Self {
        let Self { name, config, sup, .. } = self;
        sup.stop();
        while_stopped();
        Self::run(&name, config, package)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the `n`th READY.
    fn wait_ready(&self, n: usize) {
        let ready = self.sup.wait_for(Duration::from_secs(90), |_| readies(&self.sup) >= n);
        assert!(ready, "READY #{n}: {:?}\n{}", self.sup.records(), self.log());
    }

    fn apply(&self, rig: &Rig, request_id: &str, version: &str) {
        let r = rig.command(
            &self.name,
            request_id,
            "ota/apply",
            serde_json::json!({ "name": "vigil", "version": version }),
        );
        assert_eq!(r["ok"], true, "{r}");
    }

    /// The states published for `request_id`, in order.
    fn states(&self, rig: &Rig, request_id: &str) -> Vec<serde_json::Value> {
        rig.states(&self.name).into_iter().filter(|s| s["request_id"] == request_id).collect()
    }

    /// Waits for `request_id`'s outcome.
    fn outcome(&self, rig: &Rig, request_id: &str, within: Duration) -> serde_json::Value {
        let is_final = |s: &serde_json::Value| {
            ["successful", "failed", "rolled_back"].contains(&s["state"].as_str().unwrap_or(""))
        };
        let found = wait_until(within, || self.states(rig, request_id).iter().any(is_final));
        assert!(found, "no outcome: {:#?}\n{:?}\n{}", self.states(rig, request_id), self.sup.records(), self.log());
        self.states(rig, request_id).into_iter().find(is_final).unwrap()
    }

    /// `bin/slots.json`; `{}` where none was ever written (no binary was switched to: the
    /// package alone runs, as `Slots::load` reads it).
    fn slots(&self) -> serde_json::Value {
        match std::fs::read(self.data.join("bin/slots.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
            Err(e) => panic!("bin/slots.json: {e}"),
        }
    }

    fn slot_binary(&self, slot: &str) -> PathBuf {
        self.data.join("bin").join(slot).join("vigil")
    }
}

/// An executable that answers the staging checks as vigil `version` and runs `run` instead of
/// the service.
fn fake_vigil(dir: &Path, version: &str, run: &str) -> PathBuf {
    let path = dir.join(format!("fake-vigil-{version}"));
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  --version) echo \"vigil {version}\" ;;\n  check-config) exit 0 ;;\n  run) {run} ;;\n  *) exit 64 ;;\nesac\n"
    );
    std::fs::write(&path, script).unwrap();
    std::process::Command::new("chmod").arg("755").arg(&path).status().unwrap();
    path
}

#[test]
fn a_good_binary_update_is_kept_survives_restarts_and_yields_to_a_newer_package() {
    let (next, version) = next_vigil();
    let rig = Rig::new("ab-rig-good", "");
    rig.sign_binary(&next, &version);
    // The package is a copy here, so that an "apt upgrade" can replace it below.
    let package = rig.path("usr-bin-vigil");
    std::fs::copy(vigil_bin(), &package).unwrap();
    let device = Device::start(&rig, "ab-good", &package);
    assert_eq!(running_exe(&device.sup), Some(package.clone()));

    device.apply(&rig, "bin-1", &version);
    let end = device.outcome(&rig, "bin-1", Duration::from_secs(120));
    assert_eq!(end["state"], "successful", "{end:#}\n{}", device.log());
    let phases: Vec<String> =
        device.states(&rig, "bin-1").iter().map(|s| s["state"].as_str().unwrap().to_owned()).collect();
    let mut order = ["downloading", "verifying", "accepting", "activating", "canary", "successful"].into_iter();
    let mut want = order.next();
    for p in &phases {
        if Some(p.as_str()) == want {
            want = order.next();
        }
    }
    assert_eq!(want, None, "every phase in order: {phases:?}");
    assert!(end["reason"].as_str().unwrap().contains(&format!("vigil {version} marked itself good")), "{end:#}");
    // The new binary runs from slot a, in the process systemd started after the switch.
    let slot_a = device.slot_binary("a");
    assert_eq!(running_exe(&device.sup), Some(slot_a.clone()));
    let slots = device.slots();
    assert_eq!((slots["active"]["slot"].as_str(), slots["active"]["version"].as_str()), (Some("a"), Some(&*version)));
    assert!(slots["trial"].is_null() && slots["previous"].is_null(), "marked good: {slots:#}");
    let status: serde_json::Value =
        serde_json::from_slice(rig.watch.on(&format!("vigil/{}/status", device.name)).last().unwrap()).unwrap();
    assert_eq!(status["version"], version.as_str(), "the retained status names the new version");
    let minimum: serde_json::Value =
        serde_json::from_slice(&std::fs::read(device.data.join("ota/minimum.json")).unwrap()).unwrap();
    assert_eq!(minimum["vigil"], version.as_str(), "anti-rollback: the minimum rose with the good binary");
    let records = device.sup.records();
    assert!(records.contains(&Record::Exited { code: Some(75), signal: None }), "vigil restarted into it: {records:?}");

    // A reboot: the OTA'd binary runs again, and the guard counts nothing.
    let device = device.restart(&package, || {});
    assert_eq!(running_exe(&device.sup), Some(slot_a.clone()));

    // The slot's binary damaged on disk: its signed hash no longer matches, the package runs.
    let device = device.restart(&package, || {
        let mut bytes = std::fs::read(&slot_a).unwrap();
        bytes.push(0);
        std::fs::write(&slot_a, bytes).unwrap();
    });
    assert_eq!(running_exe(&device.sup), Some(package.clone()));
    let text = device.log();
    assert!(
        text.contains(&format!("is not vigil {version} as signed for this device: it does not match the SHA-256")),
        "{text}"
    );

    // apt installs a package as new as the slot's: the package wins.
    let device = device.restart(&package, || {
        let tmp = rig.path("usr-bin-vigil.dpkg-new");
        std::fs::copy(&next, &tmp).unwrap();
        std::fs::rename(&tmp, &package).unwrap();
    });
    assert_eq!(running_exe(&device.sup), Some(package.clone()));
    let log = device.log();
    assert!(log.contains("the installed package (") && log.contains("is as new as or newer"), "{log}");
}

/// Installs the fake vigil that does `run` and checks that the guard puts the package back
/// within the bound: three starts of the bad binary, then the package, with no start refused.
fn reverted_within_the_bound(rig_name: &str, version: &str, run: &str) {
    let rig = Rig::new(rig_name, "");
    let bad = fake_vigil(&rig.path(""), version, run);
    rig.sign_binary(&bad, version);
    let device = Device::start(&rig, &format!("{rig_name}-device"), &vigil_bin());
    device.apply(&rig, "bad", version);
    expect_reverted(&rig, &device, "bad", version);
}

/// Waits for `request`, the update to the bad binary `version`, to be rolled back, and checks
/// that it was within the bound: three starts of the bad binary after the switch, then the
/// package, READY, with no start refused, and the slots empty again.
fn expect_reverted(rig: &Rig, device: &Device, request: &str, version: &str) {
    let end = device.outcome(rig, request, Duration::from_secs(240));
    assert_eq!(end["state"], "rolled_back", "{end:#}\n{}", device.log());
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("vigil {version} did not mark itself good within 3 starts")), "{reason}");
    // The package is back: READY after the last start.
    let back = wait_until(Duration::from_secs(60), || {
        let records = device.sup.records();
        let last_start = records.iter().rposition(|r| matches!(r, Record::Spawned { .. }));
        records.iter().rposition(|r| *r == Record::Ready) > last_start
    });
    assert!(back, "{:?}\n{}", device.sup.records(), device.log());
    assert_eq!(running_exe(&device.sup), Some(vigil_bin()), "the package runs again");
    let records = device.sup.records();
    let switched = records.iter().rposition(|r| *r == Record::Exited { code: Some(75), signal: None });
    let switched = switched.unwrap_or_else(|| panic!("vigil restarted into the new binary: {records:?}"));
    let starts = records[switched..].iter().filter(|r| matches!(r, Record::Spawned { .. })).count();
    assert_eq!(starts, 4, "three starts of the bad binary, then the package: {records:?}");
    assert!(!records.contains(&Record::StartLimitHit), "{records:?}");
    let slots = device.slots();
    assert!(slots["active"].is_null() && slots["trial"].is_null() && slots["reverted"].is_null(), "{slots:#}");
    for slot in ["a", "b"] {
        assert!(!device.slot_binary(slot).exists(), "the bad binary is removed");
    }
}

#[test]
fn a_binary_that_crashes_at_start_is_reverted_within_the_bound() {
    // Killed by a signal, as a binary that faults before `main` would be.
    reverted_within_the_bound("ab-crash", &bad_version(1), "kill -SEGV $$");
}

/// Bad binary updates one after another, within minutes: each is reverted within the bound.
/// With a start limit (the unit had `StartLimitBurst=8` per 10 minutes) the second one's last try
/// was refused, counted with the first one's starts, and vigil was left failed with the bad
/// binary in place (docs/systemd.md, "No start limit").
#[test]
fn bad_binary_updates_back_to_back_are_each_reverted() {
    let rig = Rig::new("ab-twice", "");
    let versions = [bad_version(5), bad_version(6)];
    for version in &versions {
        let bad = fake_vigil(&rig.path(""), version, "kill -SEGV $$");
        rig.sign_binary(&bad, version);
    }
    let device = Device::start(&rig, "ab-twice-device", &vigil_bin());
    for (n, version) in versions.iter().enumerate() {
        let request = format!("bad-{n}");
        device.apply(&rig, &request, version);
        expect_reverted(&rig, &device, &request, version);
    }
}

#[test]
fn a_binary_that_never_becomes_ready_is_reverted_within_the_bound() {
    reverted_within_the_bound("ab-hang", &bad_version(2), "exec sleep 600");
}

#[test]
fn a_binary_that_stops_pinging_the_watchdog_is_reverted_within_the_bound() {
    let ready_then_silent =
        "exec python3 -c 'import os, socket, time\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                             s.connect(os.environ[\"NOTIFY_SOCKET\"])\ns.send(b\"READY=1\")\ntime.sleep(600)'";
    reverted_within_the_bound("ab-watchdog", &bad_version(3), ready_then_silent);
}

#[test]
fn killed_at_each_step_of_a_binary_update_the_device_comes_back_running_a_good_binary() {
    let (next, version) = next_vigil();
    let rig = Rig::new("ab-rig-kill", "");
    rig.sign_binary(&next, &version);
    for step in ["downloading", "verifying", "accepting", "activating", "first start", "canary"] {
        let name = format!("ab-kill-{}", step.replace(' ', "-"));
        rig.server.set(|b| b.trickle = (step == "downloading").then_some((16 << 10, Duration::from_millis(100))));
        let device = Device::start(&rig, &name, &vigil_bin());
        let id = format!("kill-{}", step.replace(' ', "-"));
        device.apply(&rig, &id, &version);
        let reached = |state: &str| {
            device.states(&rig, &id).iter().any(|s| {
                s["state"] == state && (state != "downloading" || s["detail"]["bytes"].as_u64().unwrap_or(0) > 0)
            })
        };
        let pid = if step == "first start" {
            // The first process after the switch, as soon as it is spawned.
            let switched = |r: &Record| *r == Record::Exited { code: Some(75), signal: None };
            assert!(device.sup.wait_for(Duration::from_secs(90), switched), "{:?}", device.sup.records());
            let spawned = device.sup.wait_for(Duration::from_secs(10), |_| {
                let records = device.sup.records();
                let at = records.iter().position(switched).unwrap();
                records[at..].iter().any(|r| matches!(r, Record::Spawned { .. }))
            });
            assert!(spawned, "{:?}", device.sup.records());
            device.sup.pid().unwrap()
        } else {
            assert!(wait_until(Duration::from_secs(90), || reached(step)), "{step}: {:#?}", device.states(&rig, &id));
            device.sup.pid().unwrap()
        };
        let readies_before = readies(&device.sup);
        // SAFETY: kill(2) on the supervisor's child, which it has not reaped.
        assert_eq!(unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) }, 0);
        rig.server.set(|b| b.trickle = None);

        let end = device.outcome(&rig, &id, Duration::from_secs(180));
        device.wait_ready(readies_before + 1);
        let exe = running_exe(&device.sup);
        match end["state"].as_str().unwrap() {
            "successful" => assert_eq!(exe, Some(device.slot_binary("a")), "killed in {step}: the new binary runs"),
            // Killed between the journal's `activating` and the switch: the update is abandoned.
            // `accepting` lasts one `check-config` of the new binary (a fraction of a second), so
            // a kill sent on seeing it may land in `activating` already: the same outcome, and
            // the device still comes back on a good binary. (That a kill in `accepting` itself
            // resumes is unit-tested in appliance/update/src/binary.rs.)
            "failed" if step == "activating" || step == "accepting" => {
                assert!(end["reason"].as_str().unwrap().contains("stopped before switching"), "{end:#}");
                assert_eq!(exe, Some(vigil_bin()), "killed in {step}: the package runs");
            }
            _ => panic!("killed in {step}: {end:#}\n{}", device.log()),
        }
        let slots = device.slots();
        assert!(slots["trial"].is_null(), "killed in {step}: no trial left over: {slots:#}");
        assert!(!device.data.join(format!("ota/vigil-{version}")).exists(), "the download is removed");
        assert!(!device.sup.records().contains(&Record::StartLimitHit));
        device.sup.stop();
    }
}

#[test]
fn a_new_binary_unhealthy_after_its_window_puts_the_previous_one_back_itself() {
    let (next, version) = next_vigil();
    let rig = Rig::new("ab-rig-unhealthy", "");
    rig.sign_binary(&next, &version);
    // The device's camera is a copy of the clip that the test takes away once the old binary has
    // opened it: the new binary then gets no frame in its health window.
    let clip = rig.path("clip.mp4");
    std::fs::copy(eval_clip(), &clip).unwrap();
    let config = rig.add_device_with("ab-unhealthy", HEALTH);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&looping_clip_uri(), &format!("{}?loop=true", file_uri(&clip)));
    std::fs::write(&config, text).unwrap();
    let device = Device::run("ab-unhealthy", config, &vigil_bin());
    device.apply(&rig, "sick", &version);
    let activating = || device.states(&rig, "sick").iter().any(|s| s["state"] == "activating");
    assert!(wait_until(Duration::from_secs(60), activating), "{:#?}", device.states(&rig, "sick"));
    let away = rig.path("clip.mp4.away");
    std::fs::rename(&clip, &away).unwrap();
    let end = device.outcome(&rig, "sick", Duration::from_secs(90));
    std::fs::rename(&away, &clip).unwrap();
    assert_eq!(end["state"], "rolled_back", "{end:#}\n{}", device.log());
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("vigil {version} was unhealthy after its 3s health window")), "{reason}");
    assert!(reason.contains("camera `yard` delivered no frame"), "{reason}");
    // The new binary took itself out (no guard count needed): one start of it, then the package.
    let states = device.states(&rig, "sick");
    assert!(states.iter().any(|s| s["state"] == "canary"), "the new binary ran its window: {states:#?}");
    let sup = &device.sup;
    assert!(sup.wait_for(Duration::from_secs(30), |_| running_exe(sup) == Some(vigil_bin())), "{:?}", sup.records());
    let slots = device.slots();
    assert!(slots["active"].is_null() && slots["trial"].is_null(), "{slots:#}");
    assert!(!device.slot_binary("a").exists(), "the unhealthy binary is removed");
    assert!(!sup.records().contains(&Record::StartLimitHit));
}

#[test]
fn a_binary_that_exits_cleanly_is_started_again_and_reverted_within_the_bound() {
    // Exit 0 and SIGPIPE are clean ends for systemd: only `Restart=always` starts it again, and
    // only a new start lets the guard count it.
    reverted_within_the_bound("ab-exit-0", &bad_version(4), "exit 0");
}

#[test]
fn a_binary_killed_by_sigpipe_is_started_again_and_reverted_within_the_bound() {
    reverted_within_the_bound("ab-sigpipe", &bad_version(5), "kill -PIPE $$");
}

#[test]
fn a_binary_planted_with_a_forged_slot_state_does_not_run() {
    // What code execution inside vigil, as its user, can write: a binary of its choice in slot
    // a, a `slots.json` that names it as vigil 999.0.0 with its SHA-256, and beside it signed
    // metadata of its own making.
    let rig = Rig::new("ab-rig-planted", "");
    let device = Device::start(&rig, "ab-planted", &vigil_bin());
    let (data, evil) = (device.data.clone(), fake_vigil(&rig.path(""), "999.0.0", "echo PLANTED >&2; exec sleep 600"));
    let plant = |voucher: Option<&Path>| {
        let slot = data.join("bin/a");
        std::fs::create_dir_all(&slot).unwrap();
        std::fs::copy(&evil, slot.join("vigil")).unwrap();
        let (_, hash) = vigil_ota::repo::hash_file(&evil, |_| {}).unwrap();
        let state = serde_json::json!({ "active": { "slot": "a", "version": "999.0.0", "sha256": hex::encode(hash) } });
        std::fs::write(data.join("bin/slots.json"), state.to_string()).unwrap();
        match voucher {
            Some(v) => std::fs::copy(v, slot.join("targets.json")).map(drop).unwrap(),
            None => drop(std::fs::remove_file(slot.join("targets.json"))),
        }
    };
    // Their own repository: metadata for the planted file, signed by keys this device never trusted.
    let theirs = rig.path("their-repo");
    let meta = vigil_ota::target::TargetMeta {
        kind: vigil_ota::Kind::Binary,
        name: "vigil".into(),
        version: "999.0.0".parse().unwrap(),
        compat: vigil_ota::Compat::default(),
        allow_downgrade: false,
    };
    rig.rt.block_on(async {
        let expiry = vigil_ota::repo::Expiry::default();
        let keys = vigil_ota::repo::init_with_new_keys(&theirs, &rig.path("their-keys"), &expiry).await.unwrap();
        vigil_ota::repo::add(&theirs, &evil, "binaries/vigil-999.0.0", &meta, &keys, &expiry, |_| {}).await.unwrap();
    });
    let cases = [
        (None, "bin/a/targets.json: No such file"),
        (Some(latest_targets(&theirs).unwrap().1), "not signed by the repository's keys"),
        // Genuine metadata of this device's repository, which signs no such binary.
        (Some(latest_targets(&rig.path("repo")).unwrap().1), "no signed vigil 999.0.0 target has its length"),
    ];
    let mut device = device;
    for (voucher, why) in cases {
        device = device.restart(&vigil_bin(), || plant(voucher.as_deref()));
        assert_eq!(running_exe(&device.sup), Some(vigil_bin()), "the package runs ({why})\n{}", device.log());
        let log = device.log();
        let refused = log.lines().rev().find(|l| l.contains("is not vigil 999.0.0 as signed for this device"));
        let refused = refused.unwrap_or_else(|| panic!("the log says why: {log}"));
        assert!(refused.contains(why) && refused.contains("running the packaged vigil"), "{why}: {refused}");
        assert!(!log.contains("PLANTED"), "the planted binary never ran: {log}");
    }
}
