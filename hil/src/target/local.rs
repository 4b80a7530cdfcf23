//! vigil on this machine: the host build, or the aarch64 build under `qemu-aarch64`, each
//! under the test supervisor following the shipped `vigil.service`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vigil_testkit::supervisor::{Record, Supervisor, Unit};

use super::netns::Netns;
use super::{rss_from_status, Capability, LogMark, ProcStats, Target, FILL_FILE};

/// The size of the tmpfs the data directory is mounted on, when the machine lets the rig mount
/// one: room for the suite's events and a full disk the rig can make without touching the
/// machine's own.
const DATA_TMPFS_MB: u64 = 256;

pub struct LocalTarget {
    kind: &'static str,
    /// What `/usr/bin/vigil` is for this target: the binary, or a wrapper running it in qemu.
    program: PathBuf,
    /// The binary itself, for the report.
    binary: PathBuf,
    repo: PathBuf,
    dir: tempfile::TempDir,
    ort_library: Option<PathBuf>,
    /// Supervising the service since the last start (a new one each start).
    sup: Option<Supervisor>,
    tmpfs: bool,
    /// Times for the unit (the shipped ones are for boards; the suite wants faster turns).
    restart_sec: Duration,
    timeout_start: Duration,
    /// The host target's own network namespace, where the machine allows one.
    netns: Option<Netns>,
    /// The busy loops of [`Target::set_load`].
    load: Vec<std::process::Child>,
}

impl LocalTarget {
    /// The host build at `binary`; `repo` is the source checkout (its model bundle is used).
    pub fn host(binary: &Path, repo: &Path) -> Result<Self> {
        if !binary.is_file() {
            bail!("{} does not exist: build it (cargo build -p vigil)", binary.display());
        }
        let ort = vigil_infer::find_ort_library(None).context("the local target needs ONNX Runtime")?;
        // The search may answer relative to this directory; the configuration lives elsewhere.
        let ort = ort.canonicalize().with_context(|| format!("{}", ort.display()))?;
        // READY comes within a second here: a start timeout of 30 s (120 s shipped) keeps a
        // binary that hangs before READY from holding the suite for 6 minutes.
        let mut t = Self::new("local", binary, binary.to_owned(), repo, Some(ort), Duration::from_secs(30))?;
        match Netns::create() {
            Ok(ns) => {
                // vigil's every process (the guard, the service, a restarted slot binary) in
                // the namespace: the wrapper is what the unit runs as /usr/bin/vigil.
                let run = format!("ip netns exec {} {}", ns.name, binary.display());
                t.program = wrapper(&t.dir.path().join("vigil-netns"), &run)?;
                t.netns = Some(ns);
            }
            Err(e) => eprintln!("vigil-hil: no network namespace for the local target ({e:#}): link-down is skipped"),
        }
        Ok(t)
    }

    /// The cross-built aarch64 `binary` under `qemu-aarch64`, with the prefix and ONNX Runtime
    /// library `make cross-setup` makes in `target/cross/`. qemu is slow: READY may take long.
    pub fn qemu(binary: &Path, repo: &Path) -> Result<Self> {
        if !binary.is_file() {
            bail!("{} does not exist: build it (make aarch64)", binary.display());
        }
        let cross = repo.join("target/cross");
        let prefix = cross.join("qemu-root");
        if !prefix.join("proc/cpuinfo").is_file() {
            bail!("no qemu prefix in {}: run `make cross-setup`", prefix.display());
        }
        let ort = std::fs::read_dir(cross.join("ort"))
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
            .context("no aarch64 ONNX Runtime in target/cross/ort: run `make cross-setup`")?;
        let mut t = Self::new("qemu", binary, binary.to_owned(), repo, Some(ort), Duration::from_secs(600))?;
        // GStreamer's registry scan forks a helper, which qemu-user cannot run for it.
        let run = format!("env GST_REGISTRY_FORK=no qemu-aarch64 -L {} {}", prefix.display(), binary.display());
        t.program = wrapper(&t.dir.path().join("vigil-qemu"), &run)?;
        Ok(t)
    }

    fn new(
        kind: &'static str,
        program: &Path,
        binary: PathBuf,
        repo: &Path,
        ort_library: Option<PathBuf>,
        timeout_start: Duration,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vigil-hil-").tempdir()?;
        Ok(Self {
            kind,
            program: program.to_owned(),
            binary,
            repo: repo.to_owned(),
            dir,
            ort_library,
            sup: None,
            tmpfs: false,
            restart_sec: Duration::from_millis(500),
            timeout_start,
            netns: None,
            load: Vec::new(),
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("vigil.toml")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("vigil.log")
    }

    fn unit(&self) -> Result<Unit> {
        let file = self.repo.join("appliance/vigil/package/vigil.service");
        let (program, config) = (self.program.to_str().context("path")?, self.config());
        let config = config.to_str().context("path")?;
        let mut unit =
            Unit::from_file(&file, &[("/usr/bin/vigil", program), ("/etc/vigil/vigil.toml", config)], &self.log())?;
        unit.env.push(("VIGIL_LOG".into(), "info,ort=warn".into()));
        if let Some(ort) = &self.ort_library {
            unit.env.push(("ORT_DYLIB_PATH".into(), ort.into()));
        }
        unit.restart_sec = self.restart_sec;
        unit.timeout_start = self.timeout_start;
        if self.kind == "qemu" {
            // Emulated, a scheduler turn can take longer than a board's watchdog allows.
            unit.watchdog = unit.watchdog.map(|w| w * 4);
        }
        Ok(unit)
    }

    fn spawns(sup: &Supervisor) -> usize {
        sup.records().iter().filter(|r| matches!(r, Record::Spawned { .. })).count()
    }

    /// Mounts a tmpfs on the data directory if this machine allows it (root, mount permitted).
    fn mount_tmpfs(&mut self) -> bool {
        let data = self.data();
        let _ = std::fs::create_dir_all(&data);
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DATA_TMPFS_MB}m"), "vigil-hil"])
            .arg(&data)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// An executable at `path` that runs `command` with its own arguments (`exec`, so the PID is
/// the service's): what the unit runs as `/usr/bin/vigil`.
fn wrapper(path: &Path, command: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\nexec {command} \"$@\"\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path.to_owned())
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        if let Some(sup) = self.sup.take() {
            sup.stop();
        }
        if self.tmpfs {
            let _ = Command::new("umount").arg(self.data()).status();
        }
    }
}

impl Target for LocalTarget {
    fn describe(&self) -> String {
        let data = if self.tmpfs { format!("data on a {DATA_TMPFS_MB} MiB tmpfs") } else { "data on disk".into() };
        let net = self.netns.as_ref().map_or(String::new(), |ns| format!("; network namespace {}", ns.name));
        format!("{} ({}; {data}{net})", self.kind, self.binary.display())
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn capabilities(&self) -> Vec<Capability> {
        let mut c = vec![Capability::PowerCut];
        // The cross prefix carries GStreamer's base plugins only (no rtspsrc, no H.264 decoder).
        if self.kind != "qemu" {
            c.push(Capability::RigCamera);
        }
        if self.tmpfs {
            c.push(Capability::FillDisk);
        }
        if self.netns.is_some() {
            c.push(Capability::LinkDown);
        }
        c
    }

    fn set_link(&mut self, up: bool) -> Result<()> {
        self.netns.as_ref().context("the local target has no network namespace")?.set_link(up)
    }

    fn slowness(&self) -> u32 {
        if self.kind == "qemu" {
            5
        } else {
            1
        }
    }

    fn arch(&mut self) -> Result<String> {
        Ok(if self.kind == "qemu" { "aarch64" } else { std::env::consts::ARCH }.to_owned())
    }

    fn rig_address(&self) -> String {
        self.netns.as_ref().map_or_else(|| "127.0.0.1".into(), |ns| ns.host_ip.clone())
    }

    fn config_path(&self) -> String {
        self.config().display().to_string()
    }

    fn data_dir(&self) -> String {
        self.data().display().to_string()
    }

    fn bundle_dir(&self) -> String {
        self.repo.join("models/bundles/shapes-v1").display().to_string()
    }

    fn inference_toml(&self) -> String {
        let ort = self.ort_library.as_ref().map(|p| format!("ort_library = \"{}\"\n", p.display()));
        format!("backend = \"onnxruntime\"\n{}", ort.unwrap_or_default())
    }

    fn prepare(&mut self) -> Result<()> {
        self.tmpfs = self.mount_tmpfs();
        std::fs::create_dir_all(self.data())?;
        Ok(())
    }

    fn put_file(&mut self, name: &str, data: &[u8]) -> Result<String> {
        let dir = self.dir.path().join("files");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), data)?;
        Ok(dir.join(name).display().to_string())
    }

    fn write_config(&mut self, toml: &str) -> Result<()> {
        let tmp = self.config().with_extension("toml.new");
        std::fs::write(&tmp, toml)?;
        std::fs::rename(&tmp, self.config())?;
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.stop()?;
        for entry in std::fs::read_dir(self.data())? {
            let p = entry?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        self.stop()?;
        let sup = Supervisor::start(self.unit()?, self.dir.path())?;
        let within = self.timeout_start + Duration::from_secs(10);
        // As `systemctl restart` does: the start job ends at READY, or fails when the process
        // ends first (systemd then starts it again on its own; the unit has no start limit).
        let ready = sup.wait_for(within, |r| {
            matches!(r, Record::Ready | Record::StartLimitHit | Record::Exited { .. } | Record::StartTimeout)
        });
        let records = sup.records();
        self.sup = Some(sup);
        if !ready || !records.contains(&Record::Ready) {
            bail!("vigil did not report READY within {}s: {records:?}", within.as_secs());
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(sup) = self.sup.take() {
            sup.stop();
        }
        Ok(())
    }

    fn active(&mut self) -> Result<bool> {
        let Some(sup) = &self.sup else { return Ok(false) };
        // Active as systemd says it: running, and READY since the last spawn.
        let records = sup.records();
        let last_spawn = records.iter().rposition(|r| matches!(r, Record::Spawned { .. }));
        let ready = last_spawn.is_some_and(|i| records[i..].contains(&Record::Ready));
        Ok(sup.pid().is_some() && ready)
    }

    fn restarts(&mut self) -> Result<u64> {
        let Some(sup) = &self.sup else { return Ok(0) };
        Ok(Self::spawns(sup).saturating_sub(1) as u64)
    }

    fn power_cut(&mut self) -> Result<()> {
        if let Some(sup) = self.sup.take() {
            sup.power_cut();
        }
        // Power back: the board boots and systemd starts the unit.
        self.start()
    }

    fn stats(&mut self) -> Result<Option<ProcStats>> {
        let Some(pid) = self.sup.as_ref().and_then(|s| s.pid()) else { return Ok(None) };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Ok(None) };
        let rss_bytes = rss_from_status(&status).context("no VmRSS in /proc/PID/status")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
        Ok(Some(ProcStats { rss_bytes, fds }))
    }

    fn log_mark(&mut self) -> Result<LogMark> {
        let len = std::fs::metadata(self.log()).map(|m| m.len()).unwrap_or(0);
        Ok(LogMark(len.to_string()))
    }

    fn logs_since(&mut self, mark: &LogMark) -> Result<String> {
        let from: u64 = mark.0.parse().context("not a local log mark")?;
        let Ok(mut f) = std::fs::File::open(self.log()) else { return Ok(String::new()) };
        f.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vigil_cli(&mut self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(args).env("VIGIL_LOG", "warn");
        if let Some(ort) = &self.ort_library {
            cmd.env("ORT_DYLIB_PATH", ort);
        }
        let out = cmd.output().with_context(|| format!("cannot run {}", self.program.display()))?;
        if !out.status.success() {
            bail!("vigil {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        String::from_utf8(out.stdout).context("vigil printed something other than UTF-8")
    }

    fn fill_disk(&mut self, leave: u64) -> Result<()> {
        if !self.tmpfs {
            bail!("the data directory is not on the rig's tmpfs: filling it would fill this machine's disk");
        }
        let stat = rustix::fs::statvfs(self.data())?;
        let free = stat.f_bavail * stat.f_frsize;
        let len = free.saturating_sub(leave);
        let f = std::fs::File::create(self.data().join(FILL_FILE))?;
        // tmpfs has no fallocate of unwritten extents that counts as used: write the bytes.
        let mut w = std::io::BufWriter::new(f);
        let block = vec![0xA5u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &block[..n])?;
            left -= n as u64;
        }
        std::io::Write::flush(&mut w)?;
        Ok(())
    }

    fn unfill_disk(&mut self) -> Result<()> {
        match std::fs::remove_file(self.data().join(FILL_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn clock_offset_ns(&mut self) -> Result<i64> {
        Ok(0)
    }

    fn set_load(&mut self, cores: u32) -> Result<()> {
        for mut busy in self.load.drain(..) {
            let _ = busy.kill();
            let _ = busy.wait();
        }
        for _ in 0..cores {
            self.load.push(Command::new("sh").args(["-c", super::LOAD_LOOP]).spawn().context("cannot start sh")?);
        }
        Ok(())
    }

    fn load(&mut self) -> Result<(f64, u32)> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Ok((super::load_from_loadavg(&std::fs::read_to_string("/proc/loadavg")?)?, cores))
    }
}
