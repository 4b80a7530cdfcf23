//! `vigil-ops fleet ota push` against simulated fleets (`vigil-ops fleet-sim`: each device its
//! own MQTT connection, retained status and `ota` states) on a real mosquitto: every device
//! commanded exactly once in a large fleet; the tool killed in the big wave and run again; an
//! abort at `--max-failures`; the tool's connection cut by the broker mid-rollout. The kill, the
//! abort and the cut also run on rumqttd, with a rollout and `fleet list`, so that nothing
//! depends on mosquitto's ways; and a rollout and `fleet list` run on the broker configuration
//! as shipped (mutual TLS, a certificate per device, the ACL).
//!
//! 10 000 devices (each its own connection, on this 2-core machine with the broker and the tool)
//! for exactly-once delivery; the other scenarios need fewer. All seven take about 45 s together
//! on an idle machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_ops::fleet_bench::{mosquitto_shipped, raise_file_limit, Broker, Sim};
use vigil_ops::fleet_pki::FleetPki;
use vigil_ops::journal;
use vigil_ops::rollout::{DeviceState, End, Rollout};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vigil-ops"))
}

struct Fleet {
    dir: tempfile::TempDir,
    broker: Broker,
    sim: Option<Sim>,
    /// The certificates, on the broker as shipped.
    pki: Option<FleetPki>,
}

/// Which broker a scenario runs on: mosquitto, mosquitto as shipped (mutual TLS, every device
/// its own certificate, the ACL), or a second implementation.
#[derive(Clone, Copy)]
enum On {
    Mosquitto,
    Shipped,
    Rumqttd,
}

impl Fleet {
    fn start(devices: usize, sim_args: &[&str]) -> Self {
        Self::start_on(On::Mosquitto, devices, sim_args)
    }

    fn start_on(on: On, devices: usize, sim_args: &[&str]) -> Self {
        raise_file_limit();
        let dir = tempfile::tempdir().unwrap();
        let pki = matches!(on, On::Shipped).then(|| FleetPki::make(&dir.path().join("pki"), "sim", devices).unwrap());
        let broker = match (on, &pki) {
            (On::Mosquitto, _) => Broker::start(dir.path()).unwrap(),
            (On::Shipped, Some(pki)) => mosquitto_shipped(dir.path(), pki).unwrap(),
            (On::Rumqttd, _) => Broker::rumqttd(dir.path(), devices + 8).unwrap(),
            (On::Shipped, None) => unreachable!("made above"),
        };
        let mut fleet = Self { dir, broker, sim: None, pki };
        let mut args: Vec<String> = fleet.pki.as_ref().map(FleetPki::sim_args).unwrap_or_default();
        args.extend(sim_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fleet.sim = Some(Sim::start(&exe(), &fleet.url(), devices, fleet.dir.path(), &args).unwrap());
        fleet
    }

    fn url(&self) -> String {
        match self.pki {
            Some(_) => format!("mqtts://127.0.0.1:{}", self.broker.port),
            None => self.broker.url(),
        }
    }

    /// `vigil-ops fleet` with the broker's options (the operator's certificate where needed).
    fn tool(&self) -> Command {
        let mut tool = Command::new(exe());
        tool.args(["fleet", "--broker", &self.url()]);
        if let Some(pki) = &self.pki {
            tool.args(pki.operator_args());
        }
        tool
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("push.json")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `fleet ota push shapes 1.0.1` with `extra`, its stderr in `log`.
    fn push(&self, extra: &[&str], log: &str) -> Child {
        self.tool()
            .args(["ota", "push", "shapes", "1.0.1", "--state"])
            .arg(self.state())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log(log)).unwrap())
            .spawn()
            .unwrap()
    }

    fn read(&self, log: &str) -> String {
        std::fs::read_to_string(self.log(log)).unwrap_or_default()
    }

    /// Ends the simulated fleet: how many `ota/apply` each device received.
    fn commands(&mut self) -> Vec<(String, usize)> {
        let report = self.sim.take().unwrap().finish().unwrap();
        report["devices"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, d)| (id.clone(), d["ota_apply"].as_array().unwrap().len()))
            .collect()
    }
}

/// Waits (up to `within`) for `child`: its exit code.
fn wait(child: &mut Child, within: Duration, what: &str) -> i32 {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("{what} did not finish within {} s", within.as_secs());
}

/// Waits (up to 2 min) until `log` says `text`.
fn wait_for_line(fleet: &Fleet, log: &str, text: &str) {
    let until = Instant::now() + Duration::from_secs(120);
    while !fleet.read(log).contains(text) {
        assert!(Instant::now() < until, "`{text}` not in {log} within 2 min:\n{}", fleet.read(log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load(path: &Path) -> Rollout {
    journal::load(path).unwrap()
}

fn count(r: &Rollout, state: DeviceState) -> usize {
    r.devices.values().filter(|d| d.state == state).count()
}

#[test]
fn every_device_of_a_large_fleet_is_commanded_exactly_once() {
    let n = 10_000;
    let mut fleet = Fleet::start(n, &[]);
    let mut push = fleet.push(&[], "push.err");
    let code = wait(&mut push, Duration::from_secs(300), "the rollout");
    assert_eq!(code, 0, "{}", fleet.read("push.err"));
    let r = load(&fleet.state());
    assert_eq!((count(&r, DeviceState::Successful), r.end.clone()), (n, Some(End::Complete)));
    let commands = fleet.commands();
    assert_eq!(commands.len(), n);
    let not_once: Vec<_> = commands.iter().filter(|(_, c)| *c != 1).collect();
    assert!(
        not_once.is_empty(),
        "{} devices not commanded exactly once: {:?}",
        not_once.len(),
        &not_once[..5.min(not_once.len())]
    );
    // The state written stayed O(N): records appended, not the rollout rewritten per message
    // (which wrote 13 GB for 3 000 devices).
    let err = fleet.read("push.err");
    let written: u64 = err
        .lines()
        .find_map(|l| l.split_once(" (")?.1.strip_suffix(" bytes written by this run)")?.parse().ok())
        .unwrap_or_else(|| panic!("no bytes-written line:\n{err}"));
    assert!(written < 20_000 * n as u64, "{written} bytes written for {n} devices");
}

#[test]
fn a_rollout_killed_in_the_big_wave_goes_on_when_run_again_and_commands_no_device_twice() {
    killed_in_the_big_wave(On::Mosquitto);
}

#[test]
fn the_same_through_rumqttd() {
    killed_in_the_big_wave(On::Rumqttd);
    aborted_at_max_failures(On::Rumqttd);
    connection_cut(On::Rumqttd);
}

fn killed_in_the_big_wave(on: On) {
    let n = 2000;
    // Each update takes 5 × 100 ms, so that the kill finds devices at every stage.
    let mut fleet = Fleet::start_on(on, n, &["--step", "100ms"]);
    let mut first = fleet.push(&[], "first.err");
    wait_for_line(&fleet, "first.err", "wave 3/3");
    first.kill().unwrap();
    first.wait().unwrap();
    let interrupted = load(&fleet.state());
    let sent = interrupted.devices.values().filter(|d| d.wave == Some(3)).count();
    assert!(sent > 0 && count(&interrupted, DeviceState::Successful) < n, "killed mid-wave");
    let mut second = fleet.push(&[], "second.err");
    let code = wait(&mut second, Duration::from_secs(300), "the resumed rollout");
    assert_eq!(code, 0, "{}", fleet.read("second.err"));
    assert!(fleet.read("second.err").contains("going on with the rollout"), "{}", fleet.read("second.err"));
    let r = load(&fleet.state());
    assert_eq!(count(&r, DeviceState::Successful), n);
    let twice: Vec<_> = fleet.commands().into_iter().filter(|(_, c)| *c != 1).collect();
    assert!(twice.is_empty(), "{} devices not commanded exactly once: {:?}", twice.len(), &twice[..5.min(twice.len())]);
}

#[test]
fn an_abort_at_max_failures_sends_to_no_further_device() {
    aborted_at_max_failures(On::Mosquitto);
}

fn aborted_at_max_failures(on: On) {
    let n = 400;
    // A fifth of the devices roll back: the first two waves (40 devices) hold more than 2.
    let mut fleet = Fleet::start_on(on, n, &["--fail", "0.2"]);
    let mut push = fleet.push(&["--waves", "20,10%,100%", "--max-failures", "2"], "push.err");
    let code = wait(&mut push, Duration::from_secs(120), "the rollout");
    let err = fleet.read("push.err");
    assert_eq!(code, 1, "{err}");
    let r = load(&fleet.state());
    assert!(matches!(r.end, Some(End::Aborted { .. })), "{:?}\n{err}", r.end);
    assert!(count(&r, DeviceState::RolledBack) > 2, "{err}");
    let pending = count(&r, DeviceState::Pending);
    assert!(pending > n / 2, "the last wave never started: {pending} pending\n{err}");
    for (id, c) in fleet.commands() {
        let d = &r.devices[&id];
        let expected = usize::from(d.state != DeviceState::Pending);
        assert_eq!(c, expected, "{id} ({:?}) received {c} commands", d.state);
    }
}

#[test]
fn a_rollout_whose_connection_the_broker_cuts_reconnects_and_goes_on() {
    connection_cut(On::Mosquitto);
}

fn connection_cut(on: On) {
    let n = 2000;
    let mut fleet = Fleet::start_on(on, n, &["--step", "100ms"]);
    let id = format!("operator-{}", std::process::id());
    let mut push = fleet.push(&["--client-id", &id], "push.err");
    wait_for_line(&fleet, "push.err", "wave 3/3");
    // Another client with the tool's id: the broker closes the tool's connection (MQTT 3.1.1
    // §3.1.4), in the middle of the big wave.
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", fleet.broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = rumqttc::Client::new(opts, 8);
    for event in connection.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) = event {
            break;
        }
        event.unwrap();
    }
    client.disconnect().unwrap();
    let _ = connection.recv_timeout(Duration::from_secs(1));
    let code = wait(&mut push, Duration::from_secs(300), "the rollout");
    let err = fleet.read("push.err");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reconnecting") && err.contains("again; gathering the devices' states"), "{err}");
    let r = load(&fleet.state());
    assert_eq!(count(&r, DeviceState::Successful), n, "{err}");
    let twice: Vec<_> = fleet.commands().into_iter().filter(|(_, c)| *c != 1).collect();
    assert!(twice.is_empty(), "{} devices not commanded exactly once: {:?}", twice.len(), &twice[..5.min(twice.len())]);
}

#[test]
fn a_rollout_and_the_fleet_list_work_the_same_through_a_second_broker_rumqttd() {
    rollout_and_list(On::Rumqttd, 1000);
}

#[test]
fn a_rollout_and_the_fleet_list_work_on_the_broker_as_shipped_with_mutual_tls_and_its_acl() {
    rollout_and_list(On::Shipped, 500);
}

fn rollout_and_list(on: On, n: usize) {
    let mut fleet = Fleet::start_on(on, n, &[]);
    let out = fleet.tool().arg("list").output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" online ")).count();
    assert_eq!(listed, n, "{}", String::from_utf8_lossy(&out.stderr));
    let mut push = fleet.push(&[], "push.err");
    let code = wait(&mut push, Duration::from_secs(300), "the rollout");
    assert_eq!(code, 0, "{}", fleet.read("push.err"));
    assert_eq!(count(&load(&fleet.state()), DeviceState::Successful), n);
    let not_once: Vec<_> = fleet.commands().into_iter().filter(|(_, c)| *c != 1).collect();
    assert!(
        not_once.is_empty(),
        "{} devices not commanded exactly once: {:?}",
        not_once.len(),
        &not_once[..5.min(not_once.len())]
    );
}
