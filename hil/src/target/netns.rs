//! A network namespace for the local target, joined to the rig by a veth pair: vigil's only
//! network is that link, so the rig can take it down (no carrier) and bring it back, which the
//! fault proxy cannot do. Made with iproute2 where the machine allows it (root, namespaces
//! permitted); otherwise the local target runs without one and link-down scenarios are skipped.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Netns {
    pub name: String,
    host_if: String,
    /// The rig's end of the link: what vigil in the namespace reaches the rig at.
    pub host_ip: String,
    /// The namespace's end of the link: what the rig reaches the namespace at.
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    /// A namespace named after this process, with a /30 link to the rig.
    pub fn create() -> Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let (name, host_if, ns_if) = (format!("vigil-hil-{pid}"), link_name(pid, 'r'), link_name(pid, 't'));
        let net = format!("10.213.{}", (pid % 100_000 % 64) * 4);
        let (host_ip, ns_ip) = (format!("{net}.1"), format!("{net}.2"));
        ip(&["netns", "add", &name])?;
        let made = Self { name, host_if, host_ip, ns_ip: ns_ip.clone() };
        let n = made.name.as_str();
        ip(&["link", "add", &made.host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", n])?;
        ip(&["addr", "add", &format!("{}/30", made.host_ip), "dev", &made.host_if])?;
        ip(&["link", "set", &made.host_if, "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if])?;
        ip(&["-n", n, "link", "set", &ns_if, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(made)
    }

    /// The link up or down (down: no carrier on vigil's side; connections stay open and
    /// silent until TCP or vigil's keepalive gives up).
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }
}

/// The name of process `pid`'s end of the pair (`r`: the rig's, `t`: the target's); interface
/// names have at most 15 bytes.
fn link_name(pid: u32, end: char) -> String {
    format!("vh{}{end}", pid % 100_000)
}

/// Namespaces (and their links) left by a rig that was killed: its process is gone. Their link
/// may hold the address a new one wants.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("vigil-hil-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &link_name(pid, 'r')]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the rig's.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
