//! A virtual board: Debian 12 under `qemu-system`, systemd 252 as PID 1, the vigil `.deb`
//! installed with apt, reached over SSH like a board in the lab ([`SshTarget`] does the talking).
//! What a board has and the other virtual targets lack:
//!
//! - **power:** off is `SIGKILL` of qemu, so the guest's page cache is lost as on a board; on is
//!   booting the same disks again. Each boot's id and its time back to an active vigil are kept
//!   for the report ([`Target::last_boot`]).
//! - **a data disk of its own** (`/var/lib/vigil`, a 256 MiB virtual disk): a full disk is a
//!   small disk.
//! - **a network that reaches only the rig:** qemu runs inside a network namespace made for the
//!   run, joined to the rig by a veth pair, with user networking; the namespace has no other
//!   route, so neither has the guest. SSH comes in on the namespace's end of the pair.
//!
//! The image is built by `hil/vm/build-image.sh` from Debian packages (cached under
//! `target/hil-vm/<arch>`, rebuilt when the script changes). KVM is used where `/dev/kvm` boots
//! a guest; where it does not (a paravirtual KVM that hangs after the kernel is decompressed),
//! the boot is given up after [`KVM_PROBE`] and done under TCG.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::netns::Netns;
use super::ssh::SshTarget;
use super::{Boot, Capability, LogMark, ProcStats, Target};
use crate::lab::{LabTarget, SshSpec, VigilOptions};

/// How long a KVM boot may take to print the kernel's banner before KVM is taken as unusable.
const KVM_PROBE: Duration = Duration::from_secs(20);
/// Power on to SSH answering, under TCG on 2 cores (measured: 25 s; a busy machine doubles it).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The data disk's size: room for the suite's events and an update beside the 32 MiB reserve.
const DATA_DISK_MB: u64 = 256;
const GUEST_MEMORY_MB: u64 = 2048;

/// The guest's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "amd64" | "x86_64" => Ok(Self::Amd64),
            "arm64" | "aarch64" => Ok(Self::Arm64),
            _ => bail!("--vm takes amd64 or arm64, not `{s}`"),
        }
    }

    /// Debian's name for it.
    pub fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    fn host_matches(self) -> bool {
        matches!((self, std::env::consts::ARCH), (Self::Amd64, "x86_64") | (Self::Arm64, "aarch64"))
    }
}

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if it boots a guest here, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => bail!("--vm-accel takes auto, kvm or tcg, not `{s}`"),
        }
    }
}

/// What the virtual board is made of.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub arch: Arch,
    /// The source checkout: the image script and its cache (`target/hil-vm/<arch>`).
    pub repo: PathBuf,
    /// The vigil `.deb` installed with apt before the suite.
    pub deb: PathBuf,
    pub accel: Accel,
    /// The guest's real-time clock at power on (`-rtc base=`, e.g. `2000-01-01`); `None`: now.
    pub rtc_base: Option<String>,
}

pub struct VmTarget {
    opts: VmOptions,
    /// The image's directory: root.img, vmlinuz, initrd.img, id_ed25519.
    image: PathBuf,
    /// The run's disks (an overlay on the image, the data disk), consoles and qemu's monitor:
    /// `target/hil-vm/<arch>-run`, emptied at the start of a run and kept after it.
    dir: PathBuf,
    netns: Netns,
    ssh: SshTarget,
    qemu: Option<Child>,
    /// KVM or TCG, once a boot has decided.
    accel: Option<&'static str>,
    boots: u32,
    boot_id: Option<String>,
    last_boot: Option<Boot>,
}

impl VmTarget {
    /// Builds (or reuses) the image, makes the run's disks and the network namespace, and boots.
    pub fn new(opts: VmOptions) -> Result<Self> {
        if opts.arch == Arch::Arm64 && std::env::var_os("VIGIL_VM_ARM64").is_none() {
            // Not yet run: the only arm64 package is JetPack's, whose NVIDIA dependencies a
            // Debian guest cannot install, and the image needs qemu-user-static's binfmt.
            bail!(
                "the arm64 virtual board has not been brought up yet (docs/hil.md): it needs a generic arm64 .deb; \
                 set VIGIL_VM_ARM64=1 to try it anyway"
            );
        }
        if !opts.deb.is_file() {
            bail!("{} does not exist: build the .deb first (make deb, or .ci/check-deb.sh)", opts.deb.display());
        }
        let qemu = qemu_binary(opts.arch);
        if Command::new(qemu).arg("--version").output().is_err() {
            bail!("{qemu} is missing: apt-get install {}", qemu_package(opts.arch));
        }
        let image = opts.repo.join("target/hil-vm").join(opts.arch.debian());
        let script = opts.repo.join("hil/vm/build-image.sh");
        let started = Instant::now();
        let built = Command::new(&script)
            .arg(opts.arch.debian())
            .arg(&image)
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !built.status.success() {
            bail!(
                "{} {} failed ({}):\n{}",
                script.display(),
                opts.arch.debian(),
                built.status,
                String::from_utf8_lossy(&built.stderr)
            );
        }
        eprintln!("vigil-hil: vm image {} ready in {:.0} s", image.display(), started.elapsed().as_secs_f64());
        let dir = opts.repo.join("target/hil-vm").join(format!("{}-run", opts.arch.debian()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let overlay = dir.join("root.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image.join("root.img"))
            .arg(&overlay))?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-L", "vigil-data"])
            .arg(dir.join("data.img"))
            .arg(format!("{DATA_DISK_MB}M")))?;
        let netns =
            Netns::create().context("the vm target runs qemu in a network namespace of its own (root, iproute2)")?;
        let lab = LabTarget {
            name: format!("vm-{}", opts.arch.debian()),
            ssh: SshSpec {
                address: netns.ns_ip.clone(),
                username: "root".into(),
                port: 22,
                keyfile: Some(image.join("id_ed25519")),
                connect_timeout: Duration::from_secs(20),
            },
            power: None,
            options: VigilOptions {
                rig_address: netns.host_ip.clone(),
                deb: Some(opts.deb.clone()),
                config: "/etc/vigil/vigil.toml".into(),
                data_dir: "/var/lib/vigil".into(),
                boot_timeout: BOOT_TIMEOUT,
            },
            ignored: Vec::new(),
        };
        let ssh = SshTarget::new(lab)?;
        let mut vm =
            Self { opts, image, dir, netns, ssh, qemu: None, accel: None, boots: 0, boot_id: None, last_boot: None };
        vm.power_on()?;
        Ok(vm)
    }

    /// The guest's serial console of boot `n` (1 is the first).
    fn console(&self, n: u32) -> PathBuf {
        self.dir.join(format!("console-{n}.log"))
    }

    fn spawn(&mut self, accel: &str) -> Result<Child> {
        let n = self.boots;
        let ns_ip = &self.netns.ns_ip;
        let (append, machine): (&str, &[&str]) = match self.opts.arch {
            Arch::Amd64 => ("root=/dev/vda rw console=ttyS0 panic=-1", &["-machine", "q35"]),
            Arch::Arm64 => ("root=/dev/vda rw console=ttyAMA0 panic=-1", &["-machine", "virt"]),
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns.name, qemu_binary(self.opts.arch)])
            .args(machine)
            .args(["-accel", if accel == "kvm" { "kvm" } else { "tcg,thread=multi" }])
            .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
            .args(["-smp", "2", "-m", &GUEST_MEMORY_MB.to_string()])
            .arg("-kernel")
            .arg(self.image.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.image.join("initrd.img"))
            .args(["-append", append])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", self.dir.join("root.qcow2").display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", self.dir.join("data.img").display()))
            .args(["-netdev", &format!("user,id=n0,hostfwd=tcp:{ns_ip}:22-:22")])
            .args(["-device", "virtio-net-pci,netdev=n0", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", self.console(n).display()))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", self.dir.join("monitor.sock").display()));
        if let Some(base) = &self.opts.rtc_base {
            cmd.args(["-rtc", &format!("base={base},clock=host")]);
        }
        let log = std::fs::File::create(self.dir.join(format!("qemu-{n}-{accel}.log")))?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.spawn().context("cannot start qemu")
    }

    /// Boots the guest and waits for SSH to answer with a new boot id; returns the seconds it
    /// took.
    fn power_on(&mut self) -> Result<f64> {
        self.boots += 1;
        let started = Instant::now();
        let accel = match (self.accel, self.opts.accel) {
            (Some(a), _) => a,
            (None, Accel::Tcg) => "tcg",
            (None, Accel::Kvm) => "kvm",
            (None, Accel::Auto) if self.opts.arch.host_matches() && kvm_openable() => "kvm",
            (None, Accel::Auto) => "tcg",
        };
        let mut child = self.spawn(accel)?;
        if accel == "kvm" && self.accel.is_none() {
            if self.kernel_started(&mut child)? {
                self.accel = Some("kvm");
            } else if self.opts.accel == Accel::Kvm {
                let _ = child.kill();
                bail!(
                    "the guest did not start under KVM within {} s (see {})",
                    KVM_PROBE.as_secs(),
                    self.console(self.boots).display()
                );
            } else {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("vigil-hil: KVM does not boot a guest here (see qemu-1-kvm.log): TCG");
                self.accel = Some("tcg");
                child = self.spawn("tcg")?;
            }
        }
        self.accel.get_or_insert(if accel == "kvm" { "kvm" } else { "tcg" });
        self.qemu = Some(child);
        let old = self.boot_id.clone().unwrap_or_default();
        let id = self.ssh.wait_new_boot(&old).map_err(|e| {
            let tail = console_tail(&self.console(self.boots));
            e.context(format!("the guest's console ended with:\n{tail}"))
        })?;
        self.boot_id = Some(id);
        Ok(started.elapsed().as_secs_f64())
    }

    /// Whether the kernel printed its banner within [`KVM_PROBE`].
    fn kernel_started(&self, child: &mut Child) -> Result<bool> {
        let until = Instant::now() + KVM_PROBE;
        while Instant::now() < until {
            if std::fs::read_to_string(self.console(self.boots)).is_ok_and(|c| c.contains("Linux version")) {
                return Ok(true);
            }
            if let Some(status) = child.try_wait()? {
                // A KVM that cannot run this guest may also abort qemu at once.
                eprintln!("vigil-hil: qemu with KVM exited at once ({status})");
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(false)
    }

    fn power_off(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
    }
}

impl Drop for VmTarget {
    fn drop(&mut self) {
        self.power_off();
    }
}

fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

fn qemu_package(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86",
        Arch::Arm64 => "qemu-system-arm",
    }
}

fn kvm_openable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The last lines of a console log.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Target for VmTarget {
    fn describe(&self) -> String {
        format!(
            "vm {} (Debian 12, systemd as PID 1, qemu {}{})",
            self.opts.arch.debian(),
            self.accel.unwrap_or("?"),
            self.opts.rtc_base.as_ref().map(|b| format!(", RTC from {b}")).unwrap_or_default()
        )
    }

    fn kind(&self) -> &'static str {
        "vm"
    }

    fn capabilities(&self) -> Vec<Capability> {
        let mut c = vec![
            Capability::PowerCut,
            Capability::FillDisk,
            Capability::LinkDown,
            Capability::Systemd,
            Capability::DiskFaults,
            Capability::SetClock,
        ];
        // Under TCG the guest decodes the rig's H.264 at 2 of its 15 fps and its model's cost
        // exceeds the clip's budget: every frame is dropped. It gets a synthetic camera instead.
        if self.accel == Some("kvm") {
            c.push(Capability::RigCamera);
        }
        c
    }

    fn slowness(&self) -> u32 {
        // TCG translates every instruction: about 3× slower than the host for vigil's work here.
        if self.accel == Some("kvm") {
            1
        } else {
            3
        }
    }

    fn arch(&mut self) -> Result<String> {
        self.ssh.arch()
    }

    fn rig_address(&self) -> String {
        self.ssh.rig_address()
    }

    fn config_path(&self) -> String {
        self.ssh.config_path()
    }

    fn data_dir(&self) -> String {
        self.ssh.data_dir()
    }

    fn bundle_dir(&self) -> String {
        self.ssh.bundle_dir()
    }

    fn inference_toml(&self) -> String {
        self.ssh.inference_toml()
    }

    fn prepare(&mut self) -> Result<()> {
        self.ssh.prepare()
    }

    fn put_file(&mut self, name: &str, data: &[u8]) -> Result<String> {
        self.ssh.put_file(name, data)
    }

    fn write_config(&mut self, toml: &str) -> Result<()> {
        self.ssh.write_config(toml)
    }

    fn reset(&mut self) -> Result<()> {
        self.ssh.reset()
    }

    fn start(&mut self) -> Result<()> {
        self.ssh.start()
    }

    fn stop(&mut self) -> Result<()> {
        self.ssh.stop()
    }

    fn active(&mut self) -> Result<bool> {
        self.ssh.active()
    }

    fn restarts(&mut self) -> Result<u64> {
        self.ssh.restarts()
    }

    fn power_cut(&mut self) -> Result<()> {
        let cut = Instant::now();
        self.power_off();
        let to_ssh = self.power_on()?;
        self.ssh.after_boot()?;
        self.last_boot = Some(Boot {
            id: self.boot_id.clone().unwrap_or_default(),
            to_shell_s: to_ssh,
            to_active_s: cut.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    fn last_boot(&self) -> Option<Boot> {
        self.last_boot.clone()
    }

    fn stats(&mut self) -> Result<Option<ProcStats>> {
        self.ssh.stats()
    }

    fn log_mark(&mut self) -> Result<LogMark> {
        self.ssh.log_mark()
    }

    fn logs_since(&mut self, mark: &LogMark) -> Result<String> {
        self.ssh.logs_since(mark)
    }

    fn vigil_cli(&mut self, args: &[&str]) -> Result<String> {
        self.ssh.vigil_cli(args)
    }

    fn shell(&mut self, script: &str) -> Result<String> {
        self.ssh.shell(script)
    }

    fn set_link(&mut self, up: bool) -> Result<()> {
        self.netns.set_link(up)
    }

    fn set_load(&mut self, cores: u32) -> Result<()> {
        self.ssh.set_load(cores)
    }

    fn load(&mut self) -> Result<(f64, u32)> {
        self.ssh.load()
    }

    fn fill_disk(&mut self, leave: u64) -> Result<()> {
        self.ssh.fill_disk(leave)
    }

    fn unfill_disk(&mut self) -> Result<()> {
        self.ssh.unfill_disk()
    }

    fn clock_offset_ns(&mut self) -> Result<i64> {
        self.ssh.clock_offset_ns()
    }
}
