//! What the suite runs vigil on: one [`Target`] interface, three kinds.
//!
//! - [`local::LocalTarget`]: the `vigil` binary on this machine under the test supervisor,
//!   which follows the shipped `vigil.service` (restart policy, `NOTIFY_SOCKET`, the watchdog);
//!   systemd cannot be PID 1 here.
//! - The same with the cross-built aarch64 binary run by `qemu-aarch64`
//!   ([`local::LocalTarget::qemu`]).
//! - [`ssh::SshTarget`]: a real board over SSH: the `.deb` installed, `systemctl`, the journal,
//!   power cuts through the lab's power commands, reconnecting after each boot.
//! - [`vm::VmTarget`]: a virtual board, Debian 12 under `qemu-system` with systemd as PID 1,
//!   talked to as a board over SSH; power is qemu killed and booted again.
//!
//! Scenarios only talk to this interface, so each runs unchanged on every kind; what a kind
//! cannot do is a [`Capability`] it lacks, and scenarios needing it are skipped there.

pub mod local;
mod netns;
pub mod ssh;
pub mod vm;

use anyhow::Result;

/// What a scenario may need beyond starting and stopping vigil.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// The power can be cut and restored (on virtual targets: `kill -9`, see [`Target::power_cut`]).
    PowerCut,
    /// The rig may fill vigil's data disk (a tmpfs on the local target; the real disk on a board).
    FillDisk,
    /// vigil on the target can receive the rig's RTSP camera (H.264 over RTSP). Without it the
    /// suite's configuration uses a synthetic `test://` camera on the target.
    RigCamera,
    /// The rig can take the target's network link down and up ([`Target::set_link`]).
    LinkDown,
    /// vigil runs as the installed package under a real systemd as PID 1, and the rig has a
    /// root shell on the target ([`Target::shell`]): a board, or the virtual one.
    Systemd,
    /// The rig can make vigil's data disk fail at the block layer (device-mapper in the guest:
    /// writes refused with EIO), and heal it: the virtual board.
    DiskFaults,
    /// The rig may set the target's clock (back to 2000, as an RTC without its battery) and
    /// serve it time over NTP: the virtual board.
    SetClock,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Self::PowerCut => "power-cut",
            Self::FillDisk => "fill-disk",
            Self::RigCamera => "rig-camera",
            Self::LinkDown => "link-down",
            Self::Systemd => "systemd",
            Self::DiskFaults => "disk-faults",
            Self::SetClock => "set-clock",
        }
    }
}

/// The service's main process, as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub fds: u64,
}

/// A boot after a power cut: the kernel's boot id, and the seconds from the cut until the
/// target answered and until vigil was active again.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Boot {
    pub id: String,
    pub to_shell_s: f64,
    pub to_active_s: f64,
}

/// Where a target's logs were when a scenario started; [`Target::logs_since`] reads from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMark(pub String);

/// One target vigil runs on.
pub trait Target {
    /// Kind and where, for the report: `local (target/debug/vigil)`, `ssh root@10.0.0.21`.
    fn describe(&self) -> String;
    /// `local`, `qemu` or `ssh`.
    fn kind(&self) -> &'static str;
    fn capabilities(&self) -> Vec<Capability>;
    /// How much slower than a board this target runs vigil (qemu emulates every instruction):
    /// the suite stretches its waits by it.
    fn slowness(&self) -> u32 {
        1
    }
    /// The CPU architecture vigil's binaries must be built for (`x86_64`, `aarch64`).
    fn arch(&mut self) -> Result<String>;
    /// The rig's address as the target reaches it: services the rig runs listen there.
    fn rig_address(&self) -> String;
    /// vigil's configuration file on the target.
    fn config_path(&self) -> String;
    /// Where vigil's data directory is on the target (written into the suite's configuration).
    fn data_dir(&self) -> String;
    /// The model bundle the suite's configuration uses, on the target.
    fn bundle_dir(&self) -> String;
    /// TOML lines for the `[inference]` table this target needs (its ONNX Runtime library).
    fn inference_toml(&self) -> String;

    /// Makes the target ready for the suite: vigil installed, its data directory empty, stale
    /// files of an earlier run gone.
    fn prepare(&mut self) -> Result<()>;
    /// Puts a file the configuration names (the update server's root and CA) on the target,
    /// readable by vigil; returns its path there.
    fn put_file(&mut self, name: &str, data: &[u8]) -> Result<String>;
    /// Replaces vigil's configuration file with `toml`.
    fn write_config(&mut self, toml: &str) -> Result<()>;
    /// Stops vigil and empties its data directory: the next start is a fresh device.
    fn reset(&mut self) -> Result<()>;
    /// Starts vigil (restarts it if running); returns once it reported READY.
    fn start(&mut self) -> Result<()>;
    /// Stops vigil as `systemctl stop` does.
    fn stop(&mut self) -> Result<()>;
    /// Whether vigil's service is active now.
    fn active(&mut self) -> Result<bool>;
    /// Starts of the service's main process since the last [`Target::start`], beyond the first.
    fn restarts(&mut self) -> Result<u64>;
    /// Cuts the power and restores it; returns once the target is back (vigil starting as it
    /// does at boot). Virtual targets kill the service's processes with `SIGKILL` and start
    /// them again: the process dies with whatever it had not written, but the host kernel's
    /// page cache survives, so data written and not yet fsynced is not lost as it is on a
    /// board (docs/hil.md).
    fn power_cut(&mut self) -> Result<()>;
    /// The boot that followed the last [`Target::power_cut`], where the target has boots.
    fn last_boot(&self) -> Option<Boot> {
        None
    }
    /// Runs `script` with `sh -c` as root on the target ([`Capability::Systemd`] targets) and
    /// returns its standard output; a non-zero exit is an error.
    fn shell(&mut self, _script: &str) -> Result<String> {
        anyhow::bail!("the {} target has no shell for the rig", self.kind())
    }
    /// The main process's resident memory and open descriptors; `None` when it is not running.
    fn stats(&mut self) -> Result<Option<ProcStats>>;
    fn log_mark(&mut self) -> Result<LogMark>;
    fn logs_since(&mut self, mark: &LogMark) -> Result<String>;
    /// Runs the target's `vigil` with `args` (a CLI command, e.g. `events list`) and returns
    /// its standard output.
    fn vigil_cli(&mut self, args: &[&str]) -> Result<String>;
    /// Takes the target's network link down (no carrier) or brings it back up.
    fn set_link(&mut self, _up: bool) -> Result<()> {
        anyhow::bail!("the {} target cannot take its link down", self.kind())
    }
    /// Keeps `cores` cores of the target busy with processes of the rig's (0: stops them), as
    /// another program on the device would.
    fn set_load(&mut self, cores: u32) -> Result<()>;
    /// The target's 1-minute load average and its number of cores.
    fn load(&mut self) -> Result<(f64, u32)>;
    /// Fills the data directory's filesystem until `leave` bytes are free.
    fn fill_disk(&mut self, leave: u64) -> Result<()>;
    /// Removes what [`Target::fill_disk`] wrote.
    fn unfill_disk(&mut self) -> Result<()>;
    /// The target's wall clock minus the rig's, in nanoseconds (latencies are measured across
    /// the two clocks).
    fn clock_offset_ns(&mut self) -> Result<i64>;
}

/// The shell loop [`Target::set_load`] runs on targets with a shell: it names itself so that it
/// can be found and stopped.
pub const LOAD_LOOP: &str = ": vigil-hil-load; while :; do :; done";

/// Parses `/proc/loadavg`'s first figure.
pub fn load_from_loadavg(text: &str) -> Result<f64> {
    let first = text.split_whitespace().next().unwrap_or_default();
    first.parse().map_err(|_| anyhow::anyhow!("/proc/loadavg says {text:?}"))
}

/// The file [`Target::fill_disk`] writes in the data directory.
pub const FILL_FILE: &str = ".vigil-hil-fill";

/// Parses `/proc/<pid>/status` for `VmRSS` (kB) into bytes.
pub fn rss_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tvigil\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(super::rss_from_status(status), Some(123456 * 1024));
        assert_eq!(super::rss_from_status("Name:\tvigil\n"), None);
    }

    #[test]
    fn the_load_is_read_from_proc_loadavg() {
        assert_eq!(super::load_from_loadavg("1.52 0.98 0.40 3/412 9876\n").unwrap(), 1.52);
        assert!(super::load_from_loadavg("").is_err());
    }
}
