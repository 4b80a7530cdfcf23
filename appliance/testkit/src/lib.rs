//! Helpers the benchmarks and the test suites share: a handle on the synthetic RTSP camera
//! (`vigil-rtsp-cam`, built from `hil/`), which they kill, freeze and restart, a way to start
//! a local mosquitto ([`LocalBroker`] for the benchmarks) and its configuration, a clip's ground
//! truth ([`truth`]), and the median the benchmarks report.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[cfg(feature = "https")]
pub mod https;
pub mod pki;
pub mod supervisor;
pub mod truth;
pub use rustix::process::Signal;

/// The median of `v` (sorted in place); the mean of the middle two for an even count.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A mosquitto configuration for local tests and benchmarks: plain MQTT on loopback `port`,
/// anonymous clients, and no cap on a subscriber's queue (mosquitto's default of 1000 drops the
/// rest silently, and the tests count every message). Persistence is for the caller to add.
pub fn local_broker_conf(port: u16) -> String {
    format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
}

/// The shipped fleet broker configuration (appliance/config/mosquitto/mosquitto.conf, given as
/// `template`) for a test or benchmark: its listener on loopback `port`, its certificates read
/// from `certs` (the names the template gives them: fleet-ca.pem, broker.pem, broker.key), its
/// ACL from `acl`, persistence in `persistence` or off. Everything else stays as shipped. Panics
/// if the template no longer has a setting it replaces: the caller would test something else.
pub fn shipped_broker_conf(template: &str, port: u16, certs: &Path, acl: &Path, persistence: Option<&Path>) -> String {
    let mut conf = template.to_owned();
    let mut replace = |from: &str, to: &str| {
        assert!(conf.contains(from), "the shipped broker configuration no longer has `{from}`");
        conf = conf.replace(from, to);
    };
    replace("listener 8883", &format!("listener {port} 127.0.0.1"));
    replace("/etc/mosquitto/certs/", &format!("{}/", certs.display()));
    replace("/etc/mosquitto/vigil.acl", &acl.display().to_string());
    match persistence {
        Some(dir) => {
            replace("persistence_location /var/lib/mosquitto/", &format!("persistence_location {}/", dir.display()))
        }
        None => replace("persistence true", "persistence false"),
    }
    conf
}

/// Starts mosquitto on the configuration `conf` and waits (up to 5 s) for it to listen on
/// `port`. `None` if it exited or never listened (e.g. another process took the port).
pub fn spawn_mosquitto(conf: &Path, port: u16, log: Stdio) -> Option<Child> {
    // Taken already: an answer below would come from someone else.
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        return None;
    }
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto is installed (make setup)");
    let until = Instant::now() + Duration::from_secs(5);
    let listening = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break true;
        }
        if Instant::now() >= until {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Someone may take the port between that check and mosquitto's bind, which then fails and
    // mosquitto exits: check that it is still alive a moment later.
    if listening {
        std::thread::sleep(Duration::from_millis(100));
        if child.try_wait().ok().flatten().is_none() {
            return Some(child);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Copies a model bundle (its files and its `reference/` directory) from `from` into `to`.
pub fn copy_bundle(from: &Path, to: &Path) -> std::io::Result<()> {
    for sub in ["", "reference"] {
        std::fs::create_dir_all(to.join(sub))?;
        for entry in std::fs::read_dir(from.join(sub))? {
            let p = entry?.path();
            if let (true, Some(name)) = (p.is_file(), p.file_name()) {
                std::fs::copy(&p, to.join(sub).join(name))?;
            }
        }
    }
    Ok(())
}

/// A broker for a benchmark, on a free loopback port; killed when dropped.
pub struct LocalBroker {
    child: Child,
    pub port: u16,
    /// The configuration file of a mosquitto started here (for [`LocalBroker::restart`]).
    conf: Option<PathBuf>,
}

impl LocalBroker {
    /// mosquitto without persistence, its configuration in `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::mosquitto(dir, |port| local_broker_conf(port) + "persistence false\n", Stdio::null())
    }

    /// mosquitto on the configuration `conf` makes for its port (written to `dir`), its log to
    /// `log`.
    pub fn mosquitto(dir: &Path, conf: impl FnOnce(u16) -> String, log: Stdio) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf(port))?;
        let child = spawn_mosquitto(&path, port, log).context("mosquitto did not start")?;
        Ok(Self { child, port, conf: Some(path) })
    }

    /// rumqttd (the rumqtt project's broker, installed by `make setup` from crates.io) for
    /// `connections` clients, its configuration and log in `dir`: a second implementation, so
    /// that nothing depends on mosquitto's ways. MQTT 3.1.1 only. rumqttd sends a new
    /// subscription at most `max_outgoing_packet_count` retained messages and drops the rest, so
    /// it is set above two retained topics (`status`, `ota`) per client.
    pub fn rumqttd(dir: &Path, connections: usize) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.join("rumqttd.toml");
        std::fs::write(
            &conf,
            format!(
                "id = 0\n[router]\nid = 0\nmax_connections = {}\nmax_outgoing_packet_count = {}\n\
                 max_segment_size = 104857600\nmax_segment_count = 10\n[v4.1]\nname = \"v4-1\"\n\
                 listen = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 0\n[v4.1.connections]\n\
                 connection_timeout_ms = 60000\nmax_payload_size = 1000000\nmax_inflight_count = 100\n\
                 dynamic_filters = true\n",
                connections + 16,
                2 * connections + 64
            ),
        )?;
        let log = std::fs::File::create(dir.join("rumqttd.log"))?;
        let exe = rumqttd_exe().context("rumqttd is not installed: make setup installs it (cargo install rumqttd)")?;
        let mut child =
            Command::new(exe).arg("--quiet").arg("--config").arg(&conf).stdout(Stdio::null()).stderr(log).spawn()?;
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until || child.try_wait()?.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("rumqttd did not listen on {port} within 10 s (see {})", dir.join("rumqttd.log").display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self::adopt(child, port))
    }

    /// Another broker's process, already listening on `port`.
    pub fn adopt(child: Child, port: u16) -> Self {
        Self { child, port, conf: None }
    }

    /// Kills mosquitto and starts it again on the same port and configuration, its log to
    /// `log`: a broker restart, every client cut off at once.
    pub fn restart(&mut self, log: Stdio) -> anyhow::Result<()> {
        let conf = self.conf.clone().context("only a mosquitto started by LocalBroker::mosquitto restarts")?;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_mosquitto(&conf, self.port, log).context("mosquitto did not start again")?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rumqttd` on PATH or in cargo's bin directory.
pub fn rumqttd_exe() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(home.map(|h| h.join("bin"))).map(|d| d.join("rumqttd")).find(|p| p.is_file())
}

/// Where `vigil-rtsp-cam` is: next to the running executable or one directory up (cargo puts
/// test binaries in `target/<profile>/deps/`), or `$VIGIL_RTSP_CAM`.
pub fn rtsp_cam_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIGIL_RTSP_CAM") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join("vigil-rtsp-cam"), dir.join("../vigil-rtsp-cam")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("vigil-rtsp-cam not found next to {}; build it with `cargo build -p vigil-hil`", exe.display())
}

/// A running `vigil-rtsp-cam`. Dropping it kills the process.
pub struct RtspCam {
    child: Child,
    exe: PathBuf,
    args: Vec<String>,
    pub port: u16,
    /// One URL per mount, in the order asked for.
    pub urls: Vec<String>,
}

impl RtspCam {
    /// Starts the camera with `args` (see `vigil-rtsp-cam --help`) on a free port.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let exe = rtsp_cam_exe()?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::spawn(&exe, args, 0)
    }

    fn spawn(exe: &Path, args: Vec<String>, port: u16) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(&args)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mounts = args.iter().filter(|a| *a == "--mount").count().max(1);
        let mut urls = Vec::new();
        for line in BufReader::new(stdout).lines().take(mounts) {
            let line = line?;
            match line.strip_prefix("READY ") {
                Some(url) => urls.push(url.to_owned()),
                None => bail!("vigil-rtsp-cam said `{line}` instead of READY"),
            }
        }
        if urls.len() < mounts {
            let _ = child.kill();
            bail!("vigil-rtsp-cam exited before it was ready (port {port} in use?)");
        }
        let port = urls[0].rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok());
        let port = port.context("READY line without a port")?;
        Ok(Self { child, exe: exe.to_owned(), args, port, urls })
    }

    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: the server vanishes without closing anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same camera again on the same port (after [`Self::kill9`]). Retries for a
    /// moment in case the port is still being released.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match Self::spawn(&self.exe, self.args.clone(), self.port) {
                Ok(new) => {
                    *self = new;
                    return Ok(());
                }
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Sends `signal` (STOP, CONT, USR1) to the server.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid()) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for RtspCam {
    fn drop(&mut self) {
        self.signal(Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
