//! A service supervisor for tests and the HIL rig's local target, following what systemd does
//! with vigil's unit where systemd cannot be PID 1 (docs/systemd.md):
//!
//! - `Type=notify`: the service is started once it sends `READY=1` on `NOTIFY_SOCKET` within
//!   `TimeoutStartSec` (each `EXTEND_TIMEOUT_USEC=` moves that deadline to now + its value);
//!   otherwise it is killed and the start failed.
//! - `WatchdogSec`: `WATCHDOG_USEC` is passed; once started, a service that sends no
//!   `WATCHDOG=1` within it gets `SIGABRT` (systemd's default `WatchdogSignal`), a failure.
//! - `ExecStartPre=`: run before each start; a failure fails the start (the service is not run).
//! - `Restart=on-failure` after `RestartSec`: a non-zero exit status, a signal other than
//!   systemd's clean ones (`SIGHUP`, `SIGINT`, `SIGTERM`, `SIGPIPE`), a start timeout and a
//!   watchdog timeout are failures. `Restart=always`: any end but a stop asked for restarts.
//! - `INVOCATION_ID`: a new id for each start, the same for its `ExecStartPre=` commands and its
//!   main process.
//! - `StartLimitBurst=` starts within `StartLimitIntervalSec=`: one more start is refused and
//!   the unit gives up (`start-limit-hit`). `StartLimitIntervalSec=0`: no limit.
//! - A stop sends `SIGTERM` and waits `TimeoutStopSec`, then `SIGKILL`.
//!
//! Not modelled: `NotifyAccess=` (any sender on the socket counts), cgroups (only the main
//! process is signalled), `OnFailure=` units, `SuccessExitStatus=`.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The unit's settings that the supervisor follows.
#[derive(Debug, Clone)]
pub struct Unit {
    /// `ExecStartPre=`: each runs to completion before every start.
    pub exec_start_pre: Vec<Vec<OsString>>,
    /// `ExecStart=`: the program and its arguments.
    pub exec_start: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// The service's stderr and its `ExecStartPre=` commands' output go here (appended).
    pub log: PathBuf,
    pub timeout_start: Duration,
    pub timeout_stop: Duration,
    pub watchdog: Option<Duration>,
    pub restart: Restart,
    pub restart_sec: Duration,
    pub start_limit_burst: usize,
    pub start_limit_interval: Duration,
}

impl Unit {
    /// systemd's defaults for a `Type=notify` service running `program args…`.
    pub fn new(program: impl Into<OsString>, args: &[&str], log: &Path) -> Self {
        let mut exec_start = vec![program.into()];
        exec_start.extend(args.iter().map(OsString::from));
        Self {
            exec_start_pre: Vec::new(),
            exec_start,
            env: Vec::new(),
            log: log.to_owned(),
            timeout_start: Duration::from_secs(90),
            timeout_stop: Duration::from_secs(90),
            watchdog: None,
            restart: Restart::OnFailure,
            restart_sec: Duration::from_millis(100),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(10),
        }
    }
}

impl Unit {
    /// The settings of the unit file at `path` that the supervisor follows (`ExecStartPre=`,
    /// `ExecStart=`, `Restart=`, `RestartSec=`, `TimeoutStartSec=`, `TimeoutStopSec=`,
    /// `WatchdogSec=`, `StartLimitBurst=`, `StartLimitIntervalSec=`), with each `(from, to)` of
    /// `replace` applied to the command lines' words (a test's binary and configuration for
    /// `/usr/bin/vigil` and `/etc/vigil/vigil.toml`). Other keys are left to systemd.
    pub fn from_file(path: &Path, replace: &[(&str, &str)], log: &Path) -> std::io::Result<Self> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let text = std::fs::read_to_string(path)?;
        let mut unit = Unit::new("", &[], log);
        unit.exec_start.clear();
        unit.restart = Restart::No;
        let command = |value: &str| -> Vec<OsString> {
            value
                .split_whitespace()
                .map(|w| replace.iter().find(|(from, _)| *from == w).map_or(w, |(_, to)| to).into())
                .collect()
        };
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with('[')) {
            let Some((key, value)) = line.split_once('=') else { continue };
            let time = || parse_time(value).ok_or_else(|| bad(format!("{key}={value}: not a time span")));
            let count = || value.parse::<usize>().map_err(|_| bad(format!("{key}={value}: not a number")));
            match key {
                "ExecStartPre" => unit.exec_start_pre.push(command(value)),
                "ExecStart" => unit.exec_start = command(value),
                "Restart" => {
                    unit.restart = match value {
                        "no" => Restart::No,
                        "on-failure" => Restart::OnFailure,
                        "always" => Restart::Always,
                        _ => {
                            return Err(bad(format!(
                                "Restart={value}: the supervisor follows no, on-failure and always"
                            )))
                        }
                    }
                }
                "RestartSec" => unit.restart_sec = time()?,
                "TimeoutStartSec" => unit.timeout_start = time()?,
                "TimeoutStopSec" => unit.timeout_stop = time()?,
                "WatchdogSec" => unit.watchdog = Some(time()?),
                "StartLimitBurst" => unit.start_limit_burst = count()?,
                "StartLimitIntervalSec" => unit.start_limit_interval = time()?,
                _ => {}
            }
        }
        if unit.exec_start.is_empty() {
            return Err(bad(format!("{} has no ExecStart=", path.display())));
        }
        Ok(unit)
    }
}

/// `Restart=`: when the service is started again after its main process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    /// After a failure: not after exit 0 or a clean signal.
    OnFailure,
    /// After any end but a stop that was asked for.
    Always,
}

/// A systemd time span of one number and unit: `500ms`, `5s`, `10min`, `2h` (bare: seconds).
fn parse_time(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let n: u64 = value[..split].parse().ok()?;
    Some(match &value[split..] {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An `ExecStartPre=` command exited with this status (`None`: killed by a signal).
    PreExited(Option<i32>),
    Spawned {
        pid: u32,
    },
    Ready,
    Status(String),
    Watchdog,
    ExtendTimeout(Duration),
    Stopping,
    /// Not READY within the start timeout: killed.
    StartTimeout,
    /// No `WATCHDOG=1` within the watchdog period: `SIGABRT`.
    WatchdogTimeout,
    /// The main process ended: its exit status, or the signal that killed it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Too many starts within the interval: the unit gave up.
    StartLimitHit,
}

/// A running supervisor; stops its service (`SIGTERM`) when dropped.
pub struct Supervisor {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    /// Set with `stop` for a power cut: the service is killed, not stopped.
    cut: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pid: Arc<Mutex<Option<u32>>>,
}

impl Supervisor {
    /// Starts supervising `unit`; `dir` holds the notification socket.
    pub fn start(unit: Unit, dir: &Path) -> std::io::Result<Self> {
        let socket_path = dir.join(format!("notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(Mutex::new(None));
        let run = Run {
            unit,
            socket,
            socket_path,
            records: records.clone(),
            stop: stop.clone(),
            cut: cut.clone(),
            pid: pid.clone(),
        };
        let thread = std::thread::Builder::new().name("supervisor".into()).spawn(move || run.run())?;
        Ok(Self { records, stop, cut, thread: Some(thread), pid })
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `within` for a record that `want` accepts.
    pub fn wait_for(&self, within: Duration, want: impl Fn(&Record) -> bool) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.records().iter().any(&want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The main process now, if one runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the supervisor has given up or stopped.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the service as `systemctl stop` does and waits for the supervisor to end.
    pub fn stop(mut self) -> Vec<Record> {
        self.shut();
        self.records()
    }

    /// A power cut: the service gets `SIGKILL` (no `SIGTERM`, no grace), and the supervisor,
    /// which the cut takes down too, starts nothing more.
    pub fn power_cut(mut self) -> Vec<Record> {
        self.cut.store(true, Ordering::SeqCst);
        self.shut();
        self.records()
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shut();
    }
}

struct Run {
    unit: Unit,
    socket: UnixDatagram,
    socket_path: PathBuf,
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    pid: Arc<Mutex<Option<u32>>>,
}

/// How one start ended.
enum Ended {
    Failed,
    Clean,
    Stopped,
}

impl Run {
    fn record(&self, r: Record) {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    fn run(self) {
        let mut starts: Vec<Instant> = Vec::new();
        loop {
            // StartLimitIntervalSec=0: no limit.
            starts.retain(|t| t.elapsed() < self.unit.start_limit_interval);
            if !self.unit.start_limit_interval.is_zero() && starts.len() >= self.unit.start_limit_burst {
                self.record(Record::StartLimitHit);
                break;
            }
            starts.push(Instant::now());
            let ended = self.once();
            if matches!(ended, Ended::Stopped) || self.stop.load(Ordering::SeqCst) {
                break;
            }
            let again = match self.unit.restart {
                Restart::No => false,
                Restart::OnFailure => matches!(ended, Ended::Failed),
                Restart::Always => true,
            };
            if !again {
                break;
            }
            std::thread::sleep(self.unit.restart_sec);
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// One start: the pre-start commands, then the service until it ends or is stopped.
    fn once(&self) -> Ended {
        let invocation = invocation_id();
        let log = || std::fs::OpenOptions::new().create(true).append(true).open(&self.unit.log);
        for pre in &self.unit.exec_start_pre {
            // Its output goes to the service's log, as the journal keeps both.
            let status = Command::new(&pre[0])
                .args(&pre[1..])
                .envs(self.unit.env.iter().cloned())
                .env("INVOCATION_ID", &invocation)
                .stdin(Stdio::null())
                .stdout(log().map_or(Stdio::null(), Stdio::from))
                .stderr(log().map_or(Stdio::null(), Stdio::from))
                .status();
            let code = status.as_ref().ok().and_then(|s| s.code());
            self.record(Record::PreExited(code));
            if code != Some(0) {
                return Ended::Failed;
            }
        }
        let mut command = Command::new(&self.unit.exec_start[0]);
        command
            .args(&self.unit.exec_start[1..])
            .envs(self.unit.env.iter().cloned())
            .env("INVOCATION_ID", &invocation)
            .env("NOTIFY_SOCKET", &self.socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log().map_or(Stdio::null(), Stdio::from));
        if let Some(w) = self.unit.watchdog {
            command.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(_) => {
                self.record(Record::Exited { code: Some(203), signal: None }); // systemd's EXEC status
                return Ended::Failed;
            }
        };
        self.record(Record::Spawned { pid: child.id() });
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(child.id());
        let ended = self.watch(&mut child);
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        ended
    }

    fn watch(&self, child: &mut Child) -> Ended {
        let mut start_deadline = Some(Instant::now() + self.unit.timeout_start);
        let mut last_ping = Instant::now();
        loop {
            for r in self.receive() {
                match r {
                    Record::Ready => {
                        start_deadline = None;
                        last_ping = Instant::now();
                    }
                    Record::Watchdog => last_ping = Instant::now(),
                    Record::ExtendTimeout(by) if start_deadline.is_some() => start_deadline = Some(Instant::now() + by),
                    _ => {}
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                self.receive();
                return self.exited(status);
            }
            if self.cut.load(Ordering::SeqCst) {
                let _ = child.kill();
                let status = child.wait().expect("a killed child is reaped");
                self.exited(status);
                return Ended::Stopped;
            }
            if self.stop.load(Ordering::SeqCst) {
                signal(child, rustix::process::Signal::TERM);
                let status = self.reap(child, self.unit.timeout_stop);
                self.exited(status);
                return Ended::Stopped;
            }
            if start_deadline.is_some_and(|d| Instant::now() > d) {
                self.record(Record::StartTimeout);
                signal(child, rustix::process::Signal::TERM);
                let status = self.reap(child, self.unit.timeout_stop);
                self.exited(status);
                return Ended::Failed;
            }
            if let Some(w) = self.unit.watchdog.filter(|_| start_deadline.is_none()) {
                if last_ping.elapsed() > w {
                    self.record(Record::WatchdogTimeout);
                    signal(child, rustix::process::Signal::ABORT);
                    let status = self.reap(child, self.unit.timeout_stop);
                    self.exited(status);
                    return Ended::Failed;
                }
            }
        }
    }

    /// Reads the notifications waiting (up to 20 ms for the first) and records them.
    fn receive(&self) -> Vec<Record> {
        let mut buf = [0u8; 4096];
        let Ok(n) = self.socket.recv(&mut buf) else { return Vec::new() };
        let got: Vec<Record> = String::from_utf8_lossy(&buf[..n])
            .lines()
            .filter_map(|line| match line.split_once('=')? {
                ("READY", "1") => Some(Record::Ready),
                ("WATCHDOG", "1") => Some(Record::Watchdog),
                ("STOPPING", "1") => Some(Record::Stopping),
                ("STATUS", s) => Some(Record::Status(s.to_owned())),
                ("EXTEND_TIMEOUT_USEC", us) => {
                    us.parse().ok().map(|us| Record::ExtendTimeout(Duration::from_micros(us)))
                }
                _ => None,
            })
            .collect();
        for r in &got {
            self.record(r.clone());
        }
        got
    }

    /// Waits for `child` to exit, `SIGKILL` after `grace`; what it sends meanwhile is recorded.
    fn reap(&self, child: &mut Child, grace: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + grace;
        loop {
            self.receive();
            if let Ok(Some(status)) = child.try_wait() {
                self.receive();
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                return child.wait().expect("a killed child is reaped");
            }
        }
    }

    /// Records the exit; a failure unless it exited 0 or died of one of systemd's clean signals
    /// (`SIGHUP`, `SIGINT`, `SIGTERM`, `SIGPIPE`), asked to stop or not.
    fn exited(&self, status: std::process::ExitStatus) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        let (code, sig) = (status.code(), status.signal());
        self.record(Record::Exited { code, signal: sig });
        use rustix::process::Signal;
        let clean_signals = [Signal::HUP, Signal::INT, Signal::TERM, Signal::PIPE].map(|s| s.as_raw());
        let clean = code == Some(0) || sig.is_some_and(|s| clean_signals.contains(&s));
        if clean {
            Ended::Clean
        } else {
            Ended::Failed
        }
    }
}

/// A new 128-bit id in hex, as systemd's `INVOCATION_ID`: this process's id and a count, so
/// that no two starts share one (systemd's are random; only uniqueness matters here).
fn invocation_id() -> String {
    static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{:016x}{:016x}", std::process::id(), STARTS.fetch_add(1, Ordering::Relaxed))
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    // Our own child, not reaped yet: the pid is still its own.
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service in Python that sends `messages` on `NOTIFY_SOCKET`, 100 ms apart, then sleeps.
    fn notifier(messages: &[&str], dir: &Path) -> Unit {
        let list = messages.iter().map(|m| format!("b'{m}'")).collect::<Vec<_>>().join(", ");
        let script = format!(
            "import os, socket, time\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             for m in [{list}]:\n    s.sendto(m, os.environ['NOTIFY_SOCKET'])\n    time.sleep(0.1)\ntime.sleep(60)\n"
        );
        Unit::new("python3", &["-c", &script], &dir.join("service.log"))
    }

    fn count(records: &[Record], want: impl Fn(&Record) -> bool) -> usize {
        records.iter().filter(|r| want(r)).count()
    }

    #[test]
    fn a_service_that_fails_at_start_is_restarted_until_the_start_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut unit = Unit::new("sh", &["-c", "exit 3"], &dir.path().join("log"));
        unit.start_limit_burst = 3;
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        assert!(sup.wait_for(Duration::from_secs(10), |r| *r == Record::StartLimitHit), "{:?}", sup.records());
        let records = sup.records();
        assert_eq!(count(&records, |r| matches!(r, Record::Spawned { .. })), 3, "{records:?}");
        assert_eq!(count(&records, |r| *r == Record::Exited { code: Some(3), signal: None }), 3, "{records:?}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(sup.finished());
    }

    #[test]
    fn with_start_limit_interval_zero_a_failing_service_is_started_again_and_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut unit = Unit::new("sh", &["-c", "exit 3"], &dir.path().join("log"));
        unit.restart_sec = Duration::from_millis(10);
        unit.start_limit_burst = 3;
        unit.start_limit_interval = Duration::ZERO;
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        let spawned = |r: &Record| matches!(r, Record::Spawned { .. });
        assert!(sup.wait_for(Duration::from_secs(10), |_| count(&sup.records(), spawned) >= 10), "{:?}", sup.records());
        assert!(!sup.finished());
        let records = sup.stop();
        assert!(!records.contains(&Record::StartLimitHit), "{records:?}");
    }

    #[test]
    fn a_service_that_never_becomes_ready_is_stopped_at_the_start_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut unit = notifier(&["STATUS=loading"], dir.path());
        unit.timeout_start = Duration::from_millis(500);
        unit.restart = Restart::No;
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        let term = Some(rustix::process::Signal::TERM.as_raw());
        assert!(sup.wait_for(Duration::from_secs(10), |r| *r == Record::Exited { code: None, signal: term }));
        let records = sup.records();
        assert!(records.contains(&Record::Status("loading".into())), "{records:?}");
        assert!(records.contains(&Record::StartTimeout) && !records.contains(&Record::Ready), "{records:?}");
    }

    #[test]
    fn extending_the_start_timeout_moves_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let extend = "EXTEND_TIMEOUT_USEC=1000000";
        let mut unit = notifier(&[extend, extend, extend, extend, extend, extend, extend, "READY=1"], dir.path());
        unit.timeout_start = Duration::from_millis(300);
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        assert!(sup.wait_for(Duration::from_secs(5), |r| *r == Record::Ready), "{:?}", sup.records());
        assert!(!sup.records().contains(&Record::StartTimeout), "ready after 0.8 s, beyond the first 0.3 s");
    }

    #[test]
    fn a_service_that_stops_feeding_the_watchdog_is_aborted_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut unit = notifier(&["READY=1", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1"], dir.path());
        unit.watchdog = Some(Duration::from_millis(600));
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        let abort = Some(rustix::process::Signal::ABORT.as_raw());
        let restarted = sup
            .wait_for(Duration::from_secs(10), |_| count(&sup.records(), |r| matches!(r, Record::Spawned { .. })) >= 2);
        assert!(restarted, "{:?}", sup.records());
        let records = sup.stop();
        assert!(count(&records, |r| *r == Record::Watchdog) >= 4, "{records:?}");
        let timeout = records.iter().position(|r| *r == Record::WatchdogTimeout).expect("a watchdog timeout");
        assert_eq!(records[timeout + 1], Record::Exited { code: None, signal: abort }, "{records:?}");
    }

    #[test]
    fn a_power_cut_kills_the_service_without_a_stop_and_starts_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        // A service that would take 5 s to stop on SIGTERM: a cut does not wait for it.
        let mut unit = notifier(&["READY=1"], dir.path());
        unit.timeout_stop = Duration::from_secs(5);
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        assert!(sup.wait_for(Duration::from_secs(5), |r| *r == Record::Ready), "{:?}", sup.records());
        let pid = sup.pid().unwrap();
        let started = std::time::Instant::now();
        let records = sup.power_cut();
        assert!(started.elapsed() < Duration::from_secs(2), "no grace period: {:?}", started.elapsed());
        let kill = Some(rustix::process::Signal::KILL.as_raw());
        assert_eq!(records.last(), Some(&Record::Exited { code: None, signal: kill }), "{records:?}");
        assert_eq!(count(&records, |r| matches!(r, Record::Spawned { .. })), 1, "not restarted: {records:?}");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the process is gone");
    }

    #[test]
    fn a_clean_end_is_not_restarted_on_failure_but_is_always_and_each_start_has_its_own_invocation() {
        let dir = tempfile::tempdir().unwrap();
        // The pre-start command and the service print the start's INVOCATION_ID.
        let log = dir.path().join("log");
        let show = "echo \"$INVOCATION_ID\" >&2";
        for (end, signal) in [("exit 0", None), ("kill -PIPE $$", Some(rustix::process::Signal::PIPE.as_raw()))] {
            let mut unit = Unit::new("sh", &["-c", &format!("{show}; {end}")], &log);
            unit.exec_start_pre = vec![vec!["sh".into(), "-c".into(), show.into()]];
            let sup = Supervisor::start(unit.clone(), dir.path()).unwrap();
            let ended = Record::Exited { code: signal.map_or(Some(0), |_| None), signal };
            assert!(sup.wait_for(Duration::from_secs(5), |r| *r == ended), "{:?}", sup.records());
            std::thread::sleep(Duration::from_millis(300));
            assert!(sup.finished(), "{end}: clean for Restart=on-failure, not restarted: {:?}", sup.records());
            unit.restart = Restart::Always;
            unit.start_limit_burst = 3;
            let sup = Supervisor::start(unit, dir.path()).unwrap();
            assert!(sup.wait_for(Duration::from_secs(10), |r| *r == Record::StartLimitHit), "{:?}", sup.records());
            assert_eq!(count(&sup.records(), |r| matches!(r, Record::Spawned { .. })), 3, "{end}: restarted always");
        }
        let ids: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
        assert_eq!(ids.len(), 2 * (1 + 3) * 2, "{ids:?}");
        for pair in ids.chunks(2) {
            assert_eq!(pair[0].len(), 32, "{pair:?}");
            assert_eq!(pair[0], pair[1], "a start's pre-start command and service share its id");
        }
        let mut distinct: Vec<&String> = ids.iter().step_by(2).collect();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len() / 2, "a new id at each start: {ids:?}");
    }

    #[test]
    fn a_failing_pre_start_command_fails_the_start_and_the_service_does_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut unit = notifier(&["READY=1"], dir.path());
        unit.exec_start_pre = vec![vec!["sh".into(), "-c".into(), "exit 1".into()]];
        unit.restart = Restart::No;
        let sup = Supervisor::start(unit, dir.path()).unwrap();
        assert!(sup.wait_for(Duration::from_secs(5), |r| *r == Record::PreExited(Some(1))));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!sup.records().iter().any(|r| matches!(r, Record::Spawned { .. })), "{:?}", sup.records());
        assert!(sup.finished());
    }
}

#[cfg(test)]
mod unit_file_tests {
    use super::*;

    #[test]
    fn a_unit_file_gives_its_commands_with_words_replaced_and_its_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.service");
        std::fs::write(
            &path,
            "[Unit]\nStartLimitIntervalSec=10min\nStartLimitBurst=8\n[Service]\n# ExecStart=/bin/false\n\
             ExecStartPre=/usr/bin/vigil slots guard --config /etc/vigil/vigil.toml\n\
             ExecStart=/usr/bin/vigil run --config /etc/vigil/vigil.toml\nRestart=on-failure\nRestartSec=5s\n\
             TimeoutStartSec=120s\nWatchdogSec=30\n",
        )
        .unwrap();
        let unit =
            Unit::from_file(&path, &[("/usr/bin/vigil", "/t/vigil"), ("/etc/vigil/vigil.toml", "/t/c.toml")], &path)
                .unwrap();
        let words = |c: &[OsString]| c.iter().map(|w| w.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        assert_eq!(
            unit.exec_start_pre.iter().map(|c| words(c)).collect::<Vec<_>>(),
            ["/t/vigil slots guard --config /t/c.toml"]
        );
        assert_eq!(words(&unit.exec_start), "/t/vigil run --config /t/c.toml");
        assert_eq!(unit.restart, Restart::OnFailure);
        std::fs::write(&path, "[Service]\nRestart=always\nExecStart=/x\n").unwrap();
        assert_eq!(Unit::from_file(&path, &[], &path).unwrap().restart, Restart::Always);
        std::fs::write(&path, "[Service]\nRestart=on-abort\nExecStart=/x\n").unwrap();
        let e = Unit::from_file(&path, &[], &path).unwrap_err().to_string();
        assert!(e.contains("Restart=on-abort: the supervisor follows no, on-failure and always"), "{e}");
        assert_eq!(
            (unit.restart_sec, unit.timeout_start, unit.watchdog, unit.start_limit_burst, unit.start_limit_interval),
            (
                Duration::from_secs(5),
                Duration::from_secs(120),
                Some(Duration::from_secs(30)),
                8,
                Duration::from_secs(600)
            )
        );
        std::fs::write(&path, "[Service]\nRestartSec=5 s\nExecStart=/x\n").unwrap();
        let e = Unit::from_file(&path, &[], &path).unwrap_err().to_string();
        assert!(e.contains("RestartSec=5 s: not a time span"), "{e}");
    }
}
