//! `vigil-ops fleet-bench`: the operator's tools against simulated fleets of growing size
//! (`fleet-sim`, each device its own MQTT connection) on a local mosquitto. For each size it
//! runs, as separate processes measured by the kernel (wall time, peak resident memory, bytes
//! written to storage):
//!
//! 1. `fleet list`: every device's retained status;
//! 2. `fleet ota push` of a model to every device in the default waves, the devices answering
//!    at once: commands per second, and every device checked successful in the state file;
//! 3. `fleet watch +` while every device publishes an event every few seconds: CPU time per
//!    message, with the exporter beside it, scraped once it holds every device's metrics.
//!
//! The first two run on the shipped broker configuration as it ships (mutual TLS, each device
//! with a certificate of its own, the ACL); the third on a plain local broker, so that its
//! figures are the tools' own.
//!
//! The first size is the baseline: each figure per device is printed as a ratio to it, which
//! stays about 1 when the cost is linear. The broker's memory and file descriptors at each size
//! are printed beside.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vigil_testkit::local_broker_conf;
pub use vigil_testkit::LocalBroker as Broker;

use crate::fleet_pki::FleetPki;

#[derive(Debug, clap::Args)]
pub struct FleetBenchArgs {
    /// Fleet sizes; the first is the baseline of the ratios.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000,10000")]
    pub sizes: Vec<usize>,
    /// Where the broker's configuration and the rollouts' state files go [default: a new
    /// temporary directory, removed at the end].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What the kernel says a finished process cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_kib: u64,
    /// Bytes the process caused to be written to storage (`ru_oublock` × 512).
    pub written: u64,
    pub code: i32,
}

/// Waits for `child` (at most `within`; killed after) and reads its cost with `wait4`.
pub fn wait_cost(child: &mut Child, started: Instant, within: Duration) -> anyhow::Result<Cost> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value for the kernel to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let deadline = started + within;
    loop {
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{pid} did not finish within {} s (killed)", within.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(Cost {
        wall: started.elapsed(),
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_rss_kib: usage.ru_maxrss as u64,
        written: usage.ru_oublock as u64 * 512,
        code: if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 },
    })
}

/// Raises this process's open-file limit to its hard limit (inherited by the broker and the
/// simulated fleet, which hold one descriptor per device).
pub fn raise_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    let _ = setrlimit(Resource::Nofile, raised);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The shipped fleet broker configuration and its ACL.
const SHIPPED_CONF: &str = include_str!("../../config/mosquitto/mosquitto.conf");
const SHIPPED_ACL: &str = include_str!("../../config/mosquitto/vigil.acl");

/// mosquitto without persistence (`vigil_testkit::LocalBroker`), its log in `dir`.
pub fn mosquitto(dir: &Path) -> anyhow::Result<Broker> {
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    Broker::mosquitto(dir, |port| local_broker_conf(port) + "persistence false\n", log.into())
}

/// The shipped fleet broker as it ships (`appliance/config/mosquitto`: TLS only, a client
/// certificate required and its common name the user name, the ACL, its queue and packet
/// limits, persistence), on a free loopback port, with `pki`'s certificates and persistence in
/// `dir`. The ACL gains one line: the operator may read `$SYS` (for [`retained`]).
pub fn mosquitto_shipped(dir: &Path, pki: &FleetPki) -> anyhow::Result<Broker> {
    let operator = "user operator\ntopic readwrite vigil/#\n";
    anyhow::ensure!(SHIPPED_ACL.contains(operator), "the shipped ACL no longer has `{operator}`");
    let acl = dir.join("vigil.acl");
    std::fs::write(&acl, SHIPPED_ACL.replace(operator, &format!("{operator}topic read $SYS/#\n")))?;
    use std::os::unix::fs::PermissionsExt;
    // mosquitto started as root reads its files, and keeps its database, as its own user.
    for path in [dir, pki.dir(), &acl] {
        let mode = if path.is_dir() { 0o777 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    Broker::mosquitto(
        dir,
        |port| vigil_testkit::shipped_broker_conf(SHIPPED_CONF, port, pki.dir(), &acl, Some(dir)),
        log.into(),
    )
}

/// A broker's (resident memory in KiB, peak resident memory in KiB, open file descriptors).
pub fn footprint(broker: &Broker) -> (u64, u64, usize) {
    let pid = broker.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (kib("VmRSS:"), kib("VmHWM:"), fds)
}

/// The retained messages mosquitto holds: its `$SYS` topic at its next update (every 10 s; the
/// retained value a new subscription gets first may be older than the fleet). Asked as the
/// operator on a broker with `pki`'s certificates.
pub fn retained(broker: &Broker, pki: Option<&FleetPki>) -> Option<u64> {
    let mut sub = Command::new("mosquitto_sub");
    sub.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()]);
    if let Some(pki) = pki {
        let file = |name: &str| pki.dir().join(name);
        sub.arg("--cafile")
            .arg(pki.ca())
            .arg("--cert")
            .arg(file("operator.pem"))
            .arg("--key")
            .arg(file("operator.key"));
    }
    let out = sub.args(["-t", "$SYS/broker/retained messages/count", "-C", "2", "-W", "25"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().last()?.trim().parse().ok()
}

/// A running `fleet-sim`; ended (its report written) when its standard input closes.
pub struct Sim {
    child: Child,
    pub report: PathBuf,
}

impl Sim {
    /// Starts `devices` simulated devices with `extra` options and waits until every one is
    /// connected with its status retained.
    pub fn start(exe: &Path, url: &str, devices: usize, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let report = dir.join(format!("sim-{devices}-{}.json", std::process::id()));
        let mut child = Command::new(exe)
            .args(["fleet-sim", "--broker", url, "--devices", &devices.to_string(), "--report"])
            .arg(&report)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start fleet-sim")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let line = BufReader::new(stdout).lines().next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(line);
        });
        // Connections come up at 2 000 a second by default; generous on a busy machine.
        let within = Duration::from_secs(60 + devices as u64 / 100);
        match rx.recv_timeout(within) {
            Ok(line) if line == format!("READY {devices}") => Ok(Self { child, report }),
            Ok(line) => {
                let _ = child.kill();
                bail!("fleet-sim said `{line}` instead of READY {devices}")
            }
            Err(_) => {
                let _ = child.kill();
                bail!("fleet-sim did not have {devices} devices up within {} s", within.as_secs())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the fleet and reads its report.
    pub fn finish(mut self) -> anyhow::Result<serde_json::Value> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "fleet-sim ended with {status}");
        let bytes = std::fs::read(&self.report).with_context(|| format!("no report at {}", self.report.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restarts the broker with `devices` connected and waits (up to 10 min) until its log shows
/// every one connected again: how long that took. The simulated devices try again 0.5 s after
/// a failure, so they all come back at once, as a fleet does after a broker restart.
fn reconnection_storm(broker: &mut Broker, dir: &Path, devices: usize) -> anyhow::Result<Duration> {
    let path = dir.join("mosquitto-restart.log");
    let started = Instant::now();
    broker.restart(std::fs::File::create(&path)?.into())?;
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.matches("New client connected from").count() >= devices {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not every device connected again within 10 min of the broker's restart (see {})",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One size's figures.
struct Row {
    devices: usize,
    list: Cost,
    listed: usize,
    push: Cost,
    watch: Cost,
    watched: usize,
    /// The fleet's connections made (mutual TLS), each device's status retained.
    up: Duration,
    /// From the broker's restart until every device had connected again.
    storm: Duration,
    broker: (u64, u64, usize),
    retained: Option<u64>,
    /// The exporter: a scrape's median duration, its size in bytes, resident KiB.
    exporter: (Duration, usize, u64),
}

/// `GET /metrics` on the exporter at `port`: how long it took, and the response.
fn get_metrics(port: u16) -> anyhow::Result<(Duration, String)> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok((started.elapsed(), text))
}

/// Waits (up to 60 s) until the exporter at `port` has every device's metrics.
fn wait_for_metrics(port: u16, devices: usize) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let complete = get_metrics(port).ok().is_some_and(|(_, body)| {
            body.lines().filter(|l| l.starts_with("vigil_device_uptime_seconds{")).count() >= devices
        });
        if complete {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "the exporter did not have {devices} devices' metrics within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The median of five scrapes, the body's size, and the exporter's resident memory (KiB).
fn scrape(port: u16, pid: u32) -> anyhow::Result<(Duration, usize, u64)> {
    let get = || get_metrics(port);
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let (took, body) = get()?;
        times.push(took.as_secs_f64());
        size = body.len();
    }
    let rss = crate::bench::resident_memory(pid).map_or(0, |(rss, _)| rss * 1024);
    Ok((Duration::from_secs_f64(vigil_testkit::median(&mut times)), size, rss))
}

pub fn run(args: &FleetBenchArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(!args.sizes.is_empty() && args.sizes.iter().all(|&n| n > 0), "--sizes: one or more device counts");
    let exe = std::env::current_exe()?;
    let files = raise_file_limit();
    let biggest = *args.sizes.iter().max().expect("not empty");
    if files < biggest as u64 + 256 {
        eprintln!("warning: {files} open files allowed; {biggest} devices need more (ulimit -Hn)");
    }
    let tmp = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            None
        }
        None => Some(tempfile::tempdir()?),
    };
    let dir = args.dir.clone().unwrap_or_else(|| tmp.as_ref().expect("made above").path().to_owned());
    println!(
        "fleet-bench: {} cores, sizes {:?}; each device its own MQTT connection to a local mosquitto",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.sizes
    );
    let mut rows = Vec::new();
    for &n in &args.sizes {
        rows.push(one_size(&exe, &dir, n)?);
    }
    print_rows(&rows);
    Ok(0)
}

fn one_size(exe: &Path, dir: &Path, n: usize) -> anyhow::Result<Row> {
    let here = dir.join(format!("n{n}"));
    std::fs::create_dir_all(&here)?;
    println!("== {n} devices");
    let started = Instant::now();
    let pki = FleetPki::make(&here.join("pki"), "sim", n)?;
    println!("  {n} device certificates made in {:.1} s", started.elapsed().as_secs_f64());
    let mut broker = mosquitto_shipped(&here, &pki)?;
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let operator = pki.operator_args();
    let started = Instant::now();
    let sim_args = pki.sim_args();
    let sim = Sim::start(exe, &url, n, &here, &sim_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let up = started.elapsed();
    let sim_mib = crate::bench::resident_memory(sim.pid()).map_or(0, |(rss, _)| rss);
    println!(
        "  fleet up (mutual TLS) in {:.1} s; fleet-sim resident {sim_mib} MiB ({:.0} KiB per device)",
        up.as_secs_f64(),
        sim_mib as f64 * 1024.0 / n as f64
    );
    let broker_up = footprint(&broker);
    let retained = retained(&broker, Some(&pki));

    let started = Instant::now();
    let mut list = Command::new(exe)
        .args(["fleet", "--broker", &url])
        .args(&operator)
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = list.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || BufReader::new(out).lines().count());
    let list_cost = wait_cost(&mut list, started, Duration::from_secs(120))?;
    let listed = reader.join().unwrap_or(0);
    println!("  fleet list: {listed} devices in {:.2} s", list_cost.wall.as_secs_f64());

    let state = here.join("push.json");
    let started = Instant::now();
    let mut push = Command::new(exe)
        .args(["fleet", "--broker", &url])
        .args(&operator)
        .args(["ota", "push", "shapes", "1.0.1", "--state"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(here.join("push.err"))?)
        .spawn()?;
    let push_cost = wait_cost(&mut push, started, Duration::from_secs(600))?;
    let storm = reconnection_storm(&mut broker, &here, n)?;
    println!("  broker restarted: every device connected again (mutual TLS) within {:.1} s", storm.as_secs_f64());
    let rollout = crate::journal::load(&state).map_err(anyhow::Error::msg)?;
    let successful = rollout.devices.values().filter(|d| d.state == crate::rollout::DeviceState::Successful).count();
    let report = sim.finish()?;
    let commanded: Vec<usize> = report["devices"]
        .as_object()
        .map(|m| m.values().map(|d| d["ota_apply"].as_array().map_or(0, Vec::len)).collect())
        .unwrap_or_default();
    let once = commanded.iter().filter(|&&c| c == 1).count();
    println!(
        "  fleet ota push: {successful}/{n} successful in {:.2} s (exit {}); {once} devices commanded exactly once",
        push_cost.wall.as_secs_f64(),
        push_cost.code
    );
    if successful != n || once != n || push_cost.code != 0 {
        bail!(
            "the rollout of {n} devices did not end with each commanded once and successful (see {})",
            here.display()
        );
    }
    drop(broker);

    // `fleet watch +`: every device publishes an event (`new` and `end`) every 5 s; its metrics
    // every 10 s for the exporter, which runs beside.
    let broker = mosquitto(&here)?;
    let url = broker.url();
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut exporter = Command::new(exe)
        .args(["fleet", "--broker", &url, "exporter", "--listen", &format!("127.0.0.1:{http}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let sim = Sim::start(exe, &url, n, &here, &["--events-every", "5s", "--metrics-every", "10s"])?;
    let count = 2 * n;
    let started = Instant::now();
    let mut watch = Command::new(exe)
        .args(["fleet", "--broker", &url, "watch", "+", "--count", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = watch.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || BufReader::new(out).lines().count());
    let watch_cost = wait_cost(&mut watch, started, Duration::from_secs(120))?;
    let watched = reader.join().unwrap_or(0);
    println!("  fleet watch +: {watched} messages in {:.2} s", watch_cost.wall.as_secs_f64());
    // The exporter is scraped once it holds every device's metrics, with the fleet stopped, so
    // that the figure is the exporter's and not the simulated fleet's share of the two cores.
    let complete = wait_for_metrics(http, n);
    sim.finish()?;
    std::thread::sleep(Duration::from_secs(2));
    let exporter_figures = complete.and_then(|()| scrape(http, exporter.id()));
    let _ = exporter.kill();
    let _ = exporter.wait();
    let exporter_figures = exporter_figures?;
    println!(
        "  exporter: scrape of {n} devices {:.1} ms ({} KiB), resident {:.1} MiB",
        exporter_figures.0.as_secs_f64() * 1e3,
        exporter_figures.1 / 1024,
        exporter_figures.2 as f64 / 1024.0
    );
    Ok(Row {
        devices: n,
        list: list_cost,
        listed,
        push: push_cost,
        watch: watch_cost,
        watched,
        up,
        storm,
        broker: broker_up,
        retained,
        exporter: exporter_figures,
    })
}

/// Prints `rows` under `title` and `heads`, each column as wide as its widest cell, right-aligned.
fn table(title: &str, heads: &[&str], rows: Vec<Vec<String>>) {
    println!("{title}");
    let widths: Vec<usize> = (0..heads.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([heads[c].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(s, w)| format!("{s:>w$}")).collect();
        println!("  {}", padded.join("  "));
    };
    line(heads.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print_rows(rows: &[Row]) {
    let base = &rows[0];
    let per = |d: Duration, n: usize| d.as_secs_f64() / n.max(1) as f64;
    let ratio = |d: Duration, n: usize, b: Duration, bn: usize| format!("{:.2}", per(d, n) / per(b, bn));
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    println!();
    table(
        "rollout (fleet ota push, waves 1,10%,100%, devices answering at once):",
        &["devices", "total s", "commands/s", "written MiB", "peak MiB", "per device ×"],
        rows.iter()
            .map(|r| {
                vec![
                    r.devices.to_string(),
                    format!("{:.2}", r.push.wall.as_secs_f64()),
                    format!("{:.0}", r.devices as f64 / r.push.wall.as_secs_f64()),
                    format!("{:.2}", r.push.written as f64 / 1048576.0),
                    mib(r.push.peak_rss_kib),
                    ratio(r.push.wall, r.devices, base.push.wall, base.devices),
                ]
            })
            .collect(),
    );
    table(
        "fleet list (every retained status, until the broker's marker returns):",
        &["devices", "total s", "listed", "peak MiB", "per device ×"],
        rows.iter()
            .map(|r| {
                vec![
                    r.devices.to_string(),
                    format!("{:.2}", r.list.wall.as_secs_f64()),
                    r.listed.to_string(),
                    mib(r.list.peak_rss_kib),
                    ratio(r.list.wall, r.devices, base.list.wall, base.devices),
                ]
            })
            .collect(),
    );
    table(
        "fleet watch + (one event per device every 5 s, new and end; CPU time per message):",
        &["devices", "messages", "total s", "CPU µs/msg", "peak MiB", "per message ×"],
        rows.iter()
            .map(|r| {
                vec![
                    r.devices.to_string(),
                    r.watched.to_string(),
                    format!("{:.2}", r.watch.wall.as_secs_f64()),
                    format!("{:.1}", r.watch.cpu.as_secs_f64() * 1e6 / r.watched.max(1) as f64),
                    mib(r.watch.peak_rss_kib),
                    ratio(r.watch.cpu, r.watched, base.watch.cpu, base.watched),
                ]
            })
            .collect(),
    );
    table(
        "fleet exporter (every device's metrics every 10 s; a scrape, median of 5):",
        &["devices", "scrape ms", "KiB", "resident MiB", "per device ×"],
        rows.iter()
            .map(|r| {
                vec![
                    r.devices.to_string(),
                    format!("{:.1}", r.exporter.0.as_secs_f64() * 1e3),
                    (r.exporter.1 / 1024).to_string(),
                    mib(r.exporter.2),
                    ratio(r.exporter.0, r.devices, base.exporter.0, base.devices),
                ]
            })
            .collect(),
    );
    table(
        "mosquitto as shipped (mutual TLS, the ACL) with the whole fleet connected:",
        &["devices", "fleet up s", "restart: all back s", "resident MiB", "fds", "retained"],
        rows.iter()
            .map(|r| {
                vec![
                    r.devices.to_string(),
                    format!("{:.1}", r.up.as_secs_f64()),
                    format!("{:.1}", r.storm.as_secs_f64()),
                    mib(r.broker.0),
                    r.broker.2.to_string(),
                    r.retained.map_or("?".to_owned(), |n| n.to_string()),
                ]
            })
            .collect(),
    );
    println!("goals: ≥ 200 commands/s at 10 000 devices; per-device ratios about 1; the tool's peak ≤ 100 MiB");
}
