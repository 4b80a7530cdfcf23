//! A real board over SSH: the OpenSSH client on the rig, `systemctl` and the journal on the
//! board. Every command retries its connection until the board answers or the boot timeout
//! passes, so the suite rides through reboots and power cuts.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::{Capability, LogMark, ProcStats, Target, FILL_FILE};
use crate::lab::LabTarget;

/// ssh's exit status when the connection itself failed (as opposed to the remote command).
const SSH_CONNECTION_FAILED: i32 = 255;
const SERVICE: &str = "vigil";
/// Where the rig copies a `.deb` to install it.
const DEB_ON_BOARD: &str = "/tmp/vigil-hil.deb";

pub struct SshTarget {
    lab: LabTarget,
    /// The rig's own known_hosts for this run: a reflashed board has a new host key.
    known_hosts: tempfile::NamedTempFile,
    /// When the current `start` began, for the restart count (the journal's view).
    restarts_before: u64,
}

impl SshTarget {
    pub fn new(lab: LabTarget) -> Result<Self> {
        Ok(Self { lab, known_hosts: tempfile::NamedTempFile::new()?, restarts_before: 0 })
    }

    fn ssh(&self) -> Command {
        let s = &self.lab.ssh;
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.path().display()))
            .arg("-o")
            .arg(format!("ConnectTimeout={}", s.connect_timeout.as_secs().max(1)))
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-p", &s.port.to_string()]);
        if let Some(key) = &s.keyfile {
            cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
        }
        cmd.arg(format!("{}@{}", s.username, s.address)).arg("--");
        cmd
    }

    /// Runs `script` with `sh -c` on the board, retrying the connection (not the command) until
    /// `within`; `stdin` is fed to it.
    fn run_within(&self, script: &str, stdin: Option<&[u8]>, within: Duration) -> Result<Output> {
        let until = Instant::now() + within;
        loop {
            let mut cmd = self.ssh();
            // ssh joins its arguments into one line for the login shell: quote the script as
            // one argument of sh -c.
            cmd.args(["sh", "-c", &shell_quote(script)]).stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().context("cannot run ssh (install openssh-client)")?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A write error shows as the command's failure below.
                let _ = pipe.write_all(data);
            }
            let out = child.wait_with_output()?;
            if out.status.code() != Some(SSH_CONNECTION_FAILED) {
                return Ok(out);
            }
            if Instant::now() >= until {
                bail!(
                    "cannot reach {}@{}:{} over SSH: {}",
                    self.lab.ssh.username,
                    self.lab.ssh.address,
                    self.lab.ssh.port,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Runs `script`; a non-zero exit is an error with what it printed.
    pub fn run(&self, script: &str) -> Result<String> {
        self.run_input(script, None)
    }

    fn run_input(&self, script: &str, stdin: Option<&[u8]>) -> Result<String> {
        let out = self.run_within(script, stdin, self.lab.ssh.connect_timeout)?;
        if !out.status.success() {
            // What it printed last, on either stream (a command run with 2>&1 has no stderr).
            let printed = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let lines: Vec<&str> = printed.lines().filter(|l| !l.trim().is_empty()).collect();
            bail!(
                "on {}: `{script}` failed ({}): {}",
                self.lab.name,
                out.status,
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        String::from_utf8(out.stdout).context("the board printed something other than UTF-8")
    }

    /// Copies `data` to `path` on the board (written beside it, then renamed).
    pub fn put(&self, data: &[u8], path: &str) -> Result<()> {
        let q = shell_quote(path);
        self.run_input(&format!("cat > {q}.hil-new && mv {q}.hil-new {q}"), Some(data)).map(drop)
    }

    /// The kernel's id of the current boot: a new one means the board rebooted.
    pub fn boot_id(&self) -> Result<String> {
        Ok(self.run("cat /proc/sys/kernel/random/boot_id")?.trim().to_owned())
    }

    /// Waits until the board answers with a boot id other than `old`.
    pub fn wait_new_boot(&self, old: &str) -> Result<String> {
        let until = Instant::now() + self.lab.options.boot_timeout;
        loop {
            if let Ok(out) = self.run_within("cat /proc/sys/kernel/random/boot_id", None, Duration::from_secs(5)) {
                let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if out.status.success() && !id.is_empty() && id != old {
                    return Ok(id);
                }
            }
            if Instant::now() >= until {
                bail!(
                    "{} did not come back with a new boot within {}s",
                    self.lab.name,
                    self.lab.options.boot_timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Reboots the board and waits for it to come back with vigil active.
    pub fn reboot(&self) -> Result<()> {
        let old = self.boot_id()?;
        // The connection may drop before ssh hears back: only the new boot id counts.
        let _ = self.run_within("systemctl reboot", None, Duration::from_secs(10));
        self.wait_new_boot(&old)?;
        self.wait_active()
    }

    fn systemctl(&self, verb: &str) -> Result<String> {
        self.run(&format!("systemctl {verb} {SERVICE}"))
    }

    fn n_restarts(&self) -> Result<u64> {
        let v = self.systemctl("show -p NRestarts --value")?;
        v.trim().parse().with_context(|| format!("NRestarts = {v:?}"))
    }

    /// After a boot: waits for vigil to be active, and counts its restarts from there.
    pub fn after_boot(&mut self) -> Result<()> {
        self.wait_active()?;
        self.restarts_before = self.n_restarts()?;
        Ok(())
    }

    /// Waits for the unit to be active after a boot (it is enabled, so systemd starts it).
    fn wait_active(&self) -> Result<()> {
        let until = Instant::now() + self.lab.options.boot_timeout;
        while Instant::now() < until {
            let out = self.run_within(&format!("systemctl is-active {SERVICE}"), None, self.lab.ssh.connect_timeout)?;
            if String::from_utf8_lossy(&out.stdout).trim() == "active" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!("vigil did not become active after the boot; see `journalctl -u vigil -b` on {}", self.lab.name)
    }
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Target for SshTarget {
    fn describe(&self) -> String {
        let s = &self.lab.ssh;
        format!("ssh {}@{}:{} ({})", s.username, s.address, s.port, self.lab.name)
    }

    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn capabilities(&self) -> Vec<Capability> {
        let mut c = vec![Capability::FillDisk, Capability::RigCamera, Capability::Systemd];
        if self.lab.power.is_some() {
            c.push(Capability::PowerCut);
        }
        c
    }

    fn arch(&mut self) -> Result<String> {
        Ok(self.run("uname -m")?.trim().to_owned())
    }

    fn rig_address(&self) -> String {
        self.lab.options.rig_address.clone()
    }

    fn config_path(&self) -> String {
        self.lab.options.config.clone()
    }

    fn data_dir(&self) -> String {
        self.lab.options.data_dir.clone()
    }

    fn bundle_dir(&self) -> String {
        "/usr/share/vigil/models/shapes-v1".into()
    }

    fn inference_toml(&self) -> String {
        // The .deb's defaults: TensorRT where the board has it, else ONNX Runtime.
        "backend = \"auto\"\n".into()
    }

    fn prepare(&mut self) -> Result<()> {
        if let Some(deb) = &self.lab.options.deb {
            let bytes = std::fs::read(deb).with_context(|| format!("cannot read {}", deb.display()))?;
            self.put(&bytes, DEB_ON_BOARD)?;
            self.run(&format!("apt-get install -y --allow-downgrades {DEB_ON_BOARD} && rm -f {DEB_ON_BOARD}"))?;
        }
        self.run(
            "command -v vigil >/dev/null || { echo 'vigil is not installed: set options.vigil_deb' >&2; exit 1; }",
        )?;
        // Started at boot, as a deployed device: power cuts need it.
        self.systemctl("enable")?;
        let data = shell_quote(&self.data_dir());
        self.run(&format!("rm -f {data}/{FILL_FILE}"))?;
        Ok(())
    }

    fn put_file(&mut self, name: &str, data: &[u8]) -> Result<String> {
        // Beside the configuration, where vigil.service's sandbox lets it read.
        let config = std::path::Path::new(&self.lab.options.config);
        let dir = config.parent().map_or("/etc/vigil".into(), |d| d.display().to_string());
        let path = format!("{dir}/hil-{name}");
        self.run(&format!("mkdir -p {}", shell_quote(&dir)))?;
        self.put(data, &path)?;
        self.run(&format!("chmod 0644 {}", shell_quote(&path)))?;
        Ok(path)
    }

    fn write_config(&mut self, toml: &str) -> Result<()> {
        let path = self.lab.options.config.clone();
        self.put(toml.as_bytes(), &path)?;
        self.run(&format!("chown root:vigil {0} && chmod 0640 {0}", shell_quote(&path)))?;
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.systemctl("stop")?;
        // A fresh device has no failed state and no start count: the shipped unit has no start
        // limit, but a board's drop-in may set one, and scenarios run back to back would then
        // share it (reset-failed resets the count).
        self.systemctl("reset-failed")?;
        let data = shell_quote(&self.data_dir());
        // On a first run the unit has not made it yet (StateDirectory=): nothing to empty.
        self.run(&format!("[ ! -d {data} ] || find {data} -mindepth 1 -delete"))?;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        // Type=notify: `restart` returns once vigil said READY, or fails.
        self.systemctl("restart").context("vigil did not start; see `journalctl -u vigil` on the board")?;
        self.restarts_before = self.n_restarts()?;
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        self.systemctl("stop").map(drop)
    }

    fn active(&mut self) -> Result<bool> {
        let out = self.run_within(&format!("systemctl is-active {SERVICE}"), None, self.lab.ssh.connect_timeout)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "active")
    }

    fn restarts(&mut self) -> Result<u64> {
        Ok(self.n_restarts()?.saturating_sub(self.restarts_before))
    }

    fn power_cut(&mut self) -> Result<()> {
        let power = self.lab.power.clone().context("no ExternalPowerDriver for this target")?;
        let old = self.boot_id()?;
        power.cycle()?;
        self.wait_new_boot(&old)?;
        self.after_boot()
    }

    fn shell(&mut self, script: &str) -> Result<String> {
        self.run(script)
    }

    fn stats(&mut self) -> Result<Option<ProcStats>> {
        let out = self.run(&format!(
            "pid=$(systemctl show -p MainPID --value {SERVICE}); [ \"$pid\" -gt 0 ] || exit 0; \
             awk '/^VmRSS:/{{print $2}}' /proc/$pid/status; ls /proc/$pid/fd | wc -l"
        ))?;
        let mut lines = out.lines().map(str::trim);
        let (Some(rss_kb), Some(fds)) = (lines.next(), lines.next()) else { return Ok(None) };
        let rss_kb: u64 = rss_kb.parse().with_context(|| format!("VmRSS {rss_kb:?}"))?;
        Ok(Some(ProcStats { rss_bytes: rss_kb * 1024, fds: fds.parse().with_context(|| format!("fds {fds:?}"))? }))
    }

    fn log_mark(&mut self) -> Result<LogMark> {
        // The board's own clock: the journal's --since reads it.
        Ok(LogMark(self.run("date +%s")?.trim().to_owned()))
    }

    fn logs_since(&mut self, mark: &LogMark) -> Result<String> {
        self.run(&format!("journalctl -u {SERVICE} --since @{} --no-pager -o short-iso", mark.0))
    }

    fn vigil_cli(&mut self, args: &[&str]) -> Result<String> {
        let words: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        self.run(&format!("VIGIL_LOG=warn vigil {}", words.join(" ")))
    }

    fn set_load(&mut self, cores: u32) -> Result<()> {
        let lp = shell_quote(super::LOAD_LOOP);
        self.run(&format!(
            "pkill -f 'vigil-hil-load' || true; for _ in $(seq 1 {cores}); do nohup sh -c {lp} >/dev/null 2>&1 & done"
        ))
        .map(drop)
    }

    fn load(&mut self) -> Result<(f64, u32)> {
        let out = self.run("cat /proc/loadavg; nproc")?;
        let mut lines = out.lines();
        let load = super::load_from_loadavg(lines.next().unwrap_or_default())?;
        let cores = lines.next().unwrap_or_default().trim().parse().with_context(|| format!("nproc said {out:?}"))?;
        Ok((load, cores))
    }

    fn fill_disk(&mut self, leave: u64) -> Result<()> {
        let data = shell_quote(&self.data_dir());
        self.run(&format!(
            "avail=$(df --output=avail -B1 {data} | tail -1); n=$((avail - {leave})); [ $n -gt 0 ] || exit 0; \
             fallocate -l $n {data}/{FILL_FILE}"
        ))
        .map(drop)
    }

    fn unfill_disk(&mut self) -> Result<()> {
        self.run(&format!("rm -f {}/{FILL_FILE}", shell_quote(&self.data_dir()))).map(drop)
    }

    fn clock_offset_ns(&mut self) -> Result<i64> {
        // One session, asked 5 times once it is up (a new connection's handshake would make the
        // trip lopsided): the board's clock read halfway through each round trip, the shortest
        // trip's reading kept (its error is at most half of it).
        use std::io::{BufRead, BufReader};
        let now = || SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        let mut child = self
            .ssh()
            .args(["sh", "-c", &shell_quote("while read -r _; do date +%s%N; done")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run ssh")?;
        let (Some(mut input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("ssh without pipes")
        };
        let mut lines = BufReader::new(output).lines();
        let mut ask = || -> Result<(i64, i64)> {
            let before = now();
            input.write_all(b"\n")?;
            input.flush()?;
            let line = lines.next().context("the board's clock did not answer")??;
            let after = now();
            let remote: i64 = line.trim().parse().with_context(|| format!("date +%s%N said {line:?}"))?;
            Ok((after - before, remote - (before + (after - before) / 2)))
        };
        // The first answer also waits for the login: not a sample.
        let first = ask();
        let samples: Result<Vec<(i64, i64)>> = (0..5).map(|_| ask()).collect();
        let _ = child.kill();
        let _ = child.wait();
        first?;
        Ok(samples?.into_iter().min_by_key(|(trip, _)| *trip).map_or(0, |(_, offset)| offset))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(super::shell_quote("a b"), "'a b'");
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
    }
}
