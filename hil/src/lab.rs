//! The lab description: the subset of labgrid's environment YAML the rig reads, so that a lab
//! already on labgrid points `vigil-hil` at the files it has (docs/hil.md).
//!
//! Read, per target under `targets:`:
//! - `resources:` → `NetworkService` (`address`, `username`, `port`; `password` is refused:
//!   the rig logs in with a key),
//! - `drivers:` → `SSHDriver` (`keyfile`, `connection_timeout`) and `ExternalPowerDriver`
//!   (`cmd_on`, `cmd_off`, `cmd_cycle`, `delay`),
//! - `options:` → vigil's own keys, all prefixed `vigil_` ([`VigilOptions`]).
//!
//! Both of labgrid's spellings of `resources`/`drivers` are accepted: a mapping of class name
//! to arguments, or a list of one-key mappings. Other classes (serial consoles, USB ports, …)
//! are the lab's business: they are listed in [`LabTarget::ignored`] and the rig says so.
//! Not read: `!template` tags, `imports:`, `features:`, `tools:`, `images:`, labgrid's remote
//! places (`RemotePlace`: the rig needs the board's address itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_norway::Value;

use crate::power::PowerCommands;

/// One board of the lab.
#[derive(Debug, Clone, PartialEq)]
pub struct LabTarget {
    pub name: String,
    pub ssh: SshSpec,
    /// `None`: the lab cannot cut this board's power; scenarios that need it are skipped.
    pub power: Option<PowerCommands>,
    pub options: VigilOptions,
    /// Resource and driver classes present but not used by the rig.
    pub ignored: Vec<String>,
}

/// How the rig reaches a board (`NetworkService` + `SSHDriver`).
#[derive(Debug, Clone, PartialEq)]
pub struct SshSpec {
    pub address: String,
    pub username: String,
    pub port: u16,
    /// `None`: the ssh client's own keys and agent.
    pub keyfile: Option<PathBuf>,
    pub connect_timeout: Duration,
}

/// vigil's keys under a target's `options:`.
#[derive(Debug, Clone, PartialEq)]
pub struct VigilOptions {
    /// The rig's address as the board sees it: the broker, cameras and update server the rig
    /// runs are reached there. Required: the rig cannot guess which of its interfaces faces
    /// the board.
    pub rig_address: String,
    /// A `.deb` to install before the suite (`vigil_deb`); `None`: use what is installed.
    pub deb: Option<PathBuf>,
    /// The board's configuration file (`vigil_config`, default `/etc/vigil/vigil.toml`).
    pub config: String,
    /// The data directory the suite's configuration gives vigil (`vigil_data_dir`, default
    /// `/var/lib/vigil`).
    pub data_dir: String,
    /// How long a boot may take, power-on to SSH answering (`vigil_boot_timeout_s`, default 300).
    pub boot_timeout: Duration,
}

/// A lab description: its boards by name, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Lab {
    pub targets: Vec<LabTarget>,
}

impl Lab {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).with_context(|| format!("{}", path.display()))
    }

    /// Parses a lab description; relative paths in it are taken from `base` (as labgrid does).
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        let doc: Value = serde_norway::from_str(text).context("not YAML")?;
        let targets = doc.get("targets").context("no `targets:` (a labgrid environment file has one)")?;
        let Value::Mapping(targets) = targets else { bail!("`targets:` must be a mapping of target names") };
        let mut out = Vec::new();
        for (name, body) in targets {
            let name = name.as_str().context("a target name must be a string")?.to_owned();
            let target = LabTarget::parse(&name, body, base).with_context(|| format!("target `{name}`"))?;
            out.push(target);
        }
        if out.is_empty() {
            bail!("`targets:` is empty");
        }
        Ok(Self { targets: out })
    }

    /// The target named `name`, or the only one when `name` is `None`.
    pub fn target(&self, name: Option<&str>) -> Result<&LabTarget> {
        let names = || self.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => {
                self.targets.iter().find(|t| t.name == n).with_context(|| format!("no target `{n}`; have: {}", names()))
            }
            None if self.targets.len() == 1 => Ok(&self.targets[0]),
            None => bail!("the lab has several targets ({}): name one with --target", names()),
        }
    }
}

/// `resources:` or `drivers:` as (class, arguments) pairs, whichever spelling the file uses.
fn classes(v: Option<&Value>, what: &str) -> Result<Vec<(String, Value)>> {
    let entry = |k: &Value, v: &Value| -> Result<(String, Value)> {
        let class = k.as_str().with_context(|| format!("a {what} class name must be a string"))?;
        // `SSHDriver: {}` and a bare `SSHDriver:` (null) both mean "no arguments".
        let args = if v.is_null() { Value::Mapping(Default::default()) } else { v.clone() };
        Ok((class.to_owned(), args))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Mapping(m)) => m.iter().map(|(k, v)| entry(k, v)).collect(),
        Some(Value::Sequence(items)) => {
            let mut out = Vec::new();
            for item in items {
                let Value::Mapping(m) = item else { bail!("each item of `{what}:` must be `Class: {{…}}`") };
                if m.len() != 1 {
                    bail!("each item of `{what}:` must name one class");
                }
                let (k, v) = m.iter().next().expect("one entry");
                out.push(entry(k, v)?);
            }
            Ok(out)
        }
        Some(_) => bail!("`{what}:` must be a mapping or a list"),
    }
}

/// The arguments of one class, as strings by key (numbers and booleans spelt as YAML has them).
fn args(class: &str, v: &Value) -> Result<BTreeMap<String, String>> {
    let Value::Mapping(m) = v else { bail!("`{class}:` must be a mapping of arguments") };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let k = k.as_str().with_context(|| format!("{class}: argument names are strings"))?;
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => bail!("{class}.{k}: expected a string or a number"),
        };
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

fn seconds(class: &str, key: &str, v: &str) -> Result<Duration> {
    let s: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .with_context(|| format!("{class}.{key} = {v:?}: expected seconds (a number ≥ 0)"))?;
    Ok(Duration::from_secs_f64(s))
}

impl LabTarget {
    fn parse(name: &str, body: &Value, base: &Path) -> Result<Self> {
        let mut ignored = Vec::new();
        let mut network = None;
        for (class, v) in classes(body.get("resources"), "resources")? {
            match class.as_str() {
                "NetworkService" if network.is_none() => network = Some(args(&class, &v)?),
                _ => ignored.push(class),
            }
        }
        let (mut ssh_args, mut power_args) = (None, None);
        for (class, v) in classes(body.get("drivers"), "drivers")? {
            match class.as_str() {
                "SSHDriver" if ssh_args.is_none() => ssh_args = Some(args(&class, &v)?),
                "ExternalPowerDriver" if power_args.is_none() => power_args = Some(args(&class, &v)?),
                _ => ignored.push(class),
            }
        }
        let network = network.context("no `NetworkService` resource: the rig reaches boards over SSH")?;
        let address = network.get("address").context("NetworkService has no `address`")?.clone();
        let username = network.get("username").context("NetworkService has no `username`")?.clone();
        if network.contains_key("password") {
            bail!("NetworkService.password: the rig logs in with a key only (set SSHDriver.keyfile, or use the agent)");
        }
        let port = match network.get("port") {
            Some(p) => p.parse().ok().filter(|p| *p > 0).with_context(|| format!("NetworkService.port = {p:?}"))?,
            None => 22,
        };
        let ssh_args = ssh_args.context("no `SSHDriver`: the rig drives boards over SSH")?;
        let keyfile = ssh_args.get("keyfile").map(|k| resolve(base, k));
        let connect_timeout = match ssh_args.get("connection_timeout") {
            Some(v) => seconds("SSHDriver", "connection_timeout", v)?,
            None => Duration::from_secs(30),
        };
        let power = power_args.map(|a| power_commands(&a)).transpose()?;
        let options = VigilOptions::parse(body.get("options"), base)?;
        let ssh = SshSpec { address, username, port, keyfile, connect_timeout };
        Ok(Self { name: name.to_owned(), ssh, power, options, ignored })
    }
}

fn power_commands(a: &BTreeMap<String, String>) -> Result<PowerCommands> {
    let get = |k: &str| a.get(k).filter(|v| !v.trim().is_empty()).cloned();
    let (on, off) = (get("cmd_on"), get("cmd_off"));
    let (Some(on), Some(off)) = (on, off) else {
        bail!("ExternalPowerDriver needs both `cmd_on` and `cmd_off` (a power cut is off, then on)")
    };
    let delay = match a.get("delay") {
        Some(v) => seconds("ExternalPowerDriver", "delay", v)?,
        // labgrid's default.
        None => Duration::from_secs(2),
    };
    Ok(PowerCommands { on, off, cycle: get("cmd_cycle"), delay })
}

/// `~/` is the user's home, a relative path is the lab file's directory's.
fn resolve(base: &Path, p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => base.join(p),
    }
}

impl VigilOptions {
    fn parse(v: Option<&Value>, base: &Path) -> Result<Self> {
        let a = match v {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => args("options", v)?,
        };
        for k in a.keys().filter(|k| k.starts_with("vigil_")) {
            if !["vigil_rig_address", "vigil_deb", "vigil_config", "vigil_data_dir", "vigil_boot_timeout_s"]
                .contains(&k.as_str())
            {
                bail!("options.{k}: not a key the rig knows (docs/hil.md lists them)");
            }
        }
        let rig_address = a.get("vigil_rig_address").cloned().context(
            "options.vigil_rig_address is missing: the rig's address as this board sees it (its broker and cameras are there)",
        )?;
        let absolute = |k: &str, default: &str| -> Result<String> {
            let v = a.get(k).cloned().unwrap_or_else(|| default.to_owned());
            if !v.starts_with('/') {
                bail!("options.{k} = {v:?}: a path on the board must be absolute");
            }
            Ok(v)
        };
        Ok(Self {
            rig_address,
            deb: a.get("vigil_deb").map(|d| resolve(base, d)),
            config: absolute("vigil_config", "/etc/vigil/vigil.toml")?,
            data_dir: absolute("vigil_data_dir", "/var/lib/vigil")?,
            boot_timeout: match a.get("vigil_boot_timeout_s") {
                Some(v) => seconds("options", "vigil_boot_timeout_s", v)?,
                None => Duration::from_secs(300),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
targets:
  orin-1:
    resources:
      RemotePlace:
        name: orin-1
      NetworkService:
        address: 192.168.50.21
        username: root
    drivers:
      SerialDriver: {}
      SSHDriver:
        keyfile: keys/lab_ed25519
        connection_timeout: 12.5
      ExternalPowerDriver:
        cmd_on: usbrelay R1_1=1
        cmd_off: usbrelay R1_1=0
        delay: 5
    options:
      vigil_rig_address: 192.168.50.1
      vigil_deb: ../debs/vigil_0.1.1_arm64.deb
      crossbar_url: ws://ignored
  nano-2:
    resources:
      - NetworkService:
          address: nano-2.lab
          username: vigil
          port: 2222
    drivers:
      - SSHDriver:
    options:
      vigil_rig_address: 10.0.0.1
      vigil_data_dir: /data/vigil
"#;

    #[test]
    fn both_spellings_of_a_labgrid_environment_are_read() {
        let lab = Lab::parse(LAB, Path::new("/lab")).unwrap();
        let orin = lab.target(Some("orin-1")).unwrap();
        assert_eq!(orin.ssh.address, "192.168.50.21");
        assert_eq!(orin.ssh.port, 22);
        assert_eq!(orin.ssh.keyfile.as_deref(), Some(Path::new("/lab/keys/lab_ed25519")));
        assert_eq!(orin.ssh.connect_timeout, Duration::from_millis(12_500));
        let power = orin.power.as_ref().unwrap();
        assert_eq!(
            (power.on.as_str(), power.off.as_str(), power.cycle.as_deref()),
            ("usbrelay R1_1=1", "usbrelay R1_1=0", None)
        );
        assert_eq!(power.delay, Duration::from_secs(5));
        assert_eq!(orin.options.rig_address, "192.168.50.1");
        assert_eq!(orin.options.deb.as_deref(), Some(Path::new("/lab/../debs/vigil_0.1.1_arm64.deb")));
        assert_eq!(orin.options.config, "/etc/vigil/vigil.toml");
        assert_eq!(orin.ignored, ["RemotePlace", "SerialDriver"]);

        let nano = lab.target(Some("nano-2")).unwrap();
        assert_eq!((nano.ssh.username.as_str(), nano.ssh.port, nano.ssh.keyfile.as_ref()), ("vigil", 2222, None));
        assert_eq!(nano.power, None, "no power driver: power scenarios are skipped on it");
        assert_eq!(nano.options.data_dir, "/data/vigil");
        assert_eq!(nano.options.boot_timeout, Duration::from_secs(300));
    }

    #[test]
    fn choosing_a_target_names_the_ones_there_are() {
        let lab = Lab::parse(LAB, Path::new("/lab")).unwrap();
        let e = lab.target(None).unwrap_err().to_string();
        assert!(e.contains("orin-1, nano-2") && e.contains("--target"), "{e}");
        let e = lab.target(Some("xavier")).unwrap_err().to_string();
        assert!(e.contains("no target `xavier`"), "{e}");
    }

    #[test]
    fn what_the_rig_cannot_use_is_refused_with_what_to_do() {
        let cases = [
            ("targets: {}", "`targets:` is empty"),
            ("options: {}", "no `targets:`"),
            ("targets:\n  a:\n    drivers:\n      SSHDriver: {}\n", "no `NetworkService`"),
            (
                "targets:\n  a:\n    resources:\n      NetworkService: {address: x, username: u, password: p}\n    drivers: {SSHDriver: {}}\n    options: {vigil_rig_address: r}\n",
                "with a key only",
            ),
            (
                "targets:\n  a:\n    resources:\n      NetworkService: {address: x, username: u}\n    drivers: {SSHDriver: {}}\n",
                "vigil_rig_address is missing",
            ),
            (
                "targets:\n  a:\n    resources:\n      NetworkService: {address: x, username: u}\n    drivers: {SSHDriver: {}}\n    options: {vigil_rig_address: r, vigil_rig_adress: r}\n",
                "vigil_rig_adress: not a key",
            ),
            (
                "targets:\n  a:\n    resources:\n      NetworkService: {address: x, username: u}\n    drivers: {SSHDriver: {}, ExternalPowerDriver: {cmd_on: x}}\n    options: {vigil_rig_address: r}\n",
                "both `cmd_on` and `cmd_off`",
            ),
            (
                "targets:\n  a:\n    resources:\n      NetworkService: {address: x, username: u}\n    drivers: {SSHDriver: {}}\n    options: {vigil_rig_address: r, vigil_data_dir: data}\n",
                "must be absolute",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", Lab::parse(text, Path::new("/")).unwrap_err());
            assert!(e.contains(want), "{text}\n→ {e}\n(wanted `{want}`)");
        }
    }
}
