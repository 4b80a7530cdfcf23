//! The SSH target's transport against a real OpenSSH server on this machine (a private sshd on
//! a free loopback port, key login as the current user): commands, files, the boot id, the
//! clock offset, and reconnecting to a board that dropped off. What needs systemd as PID 1
//! (`systemctl`, the journal, reboots and power cuts) runs on boards only (docs/hil.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_hil::lab::{LabTarget, SshSpec, VigilOptions};
use vigil_hil::target::ssh::SshTarget;
use vigil_hil::target::Target;

struct Sshd {
    child: Option<Child>,
    conf: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Self {
        assert!(Path::new("/usr/sbin/sshd").exists(), "openssh-server is installed (make setup)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (key, file) in [("host", "host_ed25519"), ("client", "client_ed25519")] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(d.join(file))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen");
        }
        std::fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys")).unwrap();
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = d.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_ed25519\nAuthorizedKeysFile {0}/authorized_keys\n\
                 PidFile {0}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                d.display()
            ),
        )
        .unwrap();
        let mut sshd = Self { child: None, conf, port, dir };
        sshd.spawn();
        sshd
    }

    fn spawn(&mut self) {
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&self.conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "sshd listens on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn target(&self, boot_timeout: Duration) -> SshTarget {
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        SshTarget::new(LabTarget {
            name: "sshd-here".into(),
            ssh: SshSpec {
                address: "127.0.0.1".into(),
                username: user.trim().into(),
                port: self.port,
                keyfile: Some(self.dir.path().join("client_ed25519")),
                connect_timeout: Duration::from_secs(20),
            },
            power: None,
            options: VigilOptions {
                rig_address: "127.0.0.1".into(),
                deb: None,
                config: "/etc/vigil/vigil.toml".into(),
                data_dir: "/var/lib/vigil".into(),
                boot_timeout,
            },
            ignored: Vec::new(),
        })
        .unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn commands_files_and_the_boot_id_go_over_ssh() {
    let sshd = Sshd::start();
    let mut t = sshd.target(Duration::from_secs(5));
    assert_eq!(t.run("echo \"it's $((6 * 7))\"").unwrap(), "it's 42\n");
    let e = t.run("echo no such relay >&2; exit 4").unwrap_err().to_string();
    assert!(e.contains("exit status: 4") && e.contains("no such relay"), "{e}");

    let path = sshd.dir.path().join("copied file.toml");
    let data = b"device_id = \"it's here\"\n\x00\xffbinary too";
    t.put(data, path.to_str().unwrap()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);

    let here = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(t.boot_id().unwrap(), here.trim());
    // The same machine: the offset is the clocks' (none) within the round trip.
    let offset = t.clock_offset_ns().unwrap();
    assert!(offset.abs() < 50_000_000, "offset {offset} ns between a machine and itself");
    assert_eq!(t.kind(), "ssh");
    assert!(t.describe().contains(&format!("127.0.0.1:{}", sshd.port)));
}

#[test]
fn a_board_that_dropped_off_is_reached_again_once_it_answers() {
    let mut sshd = Sshd::start();
    let t = sshd.target(Duration::from_secs(5));
    t.run("true").unwrap();
    sshd.kill();
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            sshd.spawn();
        });
        assert_eq!(t.run("echo back").unwrap(), "back\n");
    });
    assert!(started.elapsed() >= Duration::from_secs(3), "answered only once sshd was back");
}

#[test]
fn a_board_that_does_not_reboot_is_reported_at_the_boot_timeout() {
    let sshd = Sshd::start();
    let t = sshd.target(Duration::from_secs(3));
    let now = t.boot_id().unwrap();
    let started = Instant::now();
    let e = t.wait_new_boot(&now).unwrap_err().to_string();
    assert!(e.contains("did not come back with a new boot within 3s"), "{e}");
    assert!(started.elapsed() >= Duration::from_secs(3));
}
