//! Power control through commands the lab configures (labgrid's `ExternalPowerDriver`): a USB
//! relay's tool, a PDU's CLI, `labgrid-client power on`, … each run by `sh -c` on the rig.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long one power command may take before the rig gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct PowerCommands {
    pub on: String,
    pub off: String,
    /// Used for a cycle when set; otherwise a cycle is `off`, `delay`, `on`.
    pub cycle: Option<String>,
    /// Off time in a cycle made of `off` and `on`, so that the board's rails drain.
    pub delay: Duration,
}

impl PowerCommands {
    pub fn on(&self) -> Result<()> {
        run("cmd_on", &self.on)
    }

    pub fn off(&self) -> Result<()> {
        run("cmd_off", &self.off)
    }

    /// Off and on again: the board loses power (a cut, not a reboot).
    pub fn cycle(&self) -> Result<()> {
        if let Some(cycle) = &self.cycle {
            return run("cmd_cycle", cycle);
        }
        self.off()?;
        std::thread::sleep(self.delay);
        self.on()
    }
}

/// Runs `command` with `sh -c`; an error carries its exit status and what it printed. Its output
/// goes to a temporary file, not a pipe: a tool that leaves a child running in the background
/// (a relay daemon, `… &`) would keep a pipe open, and reading it to its end would never return.
fn run(what: &str, command: &str) -> Result<()> {
    let output = tempfile::tempfile().with_context(|| format!("power {what}: cannot create a temporary file"))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output.try_clone()?)
        .spawn()
        .with_context(|| format!("power {what} `{command}`: cannot start sh"))?;
    let until = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("power {what} `{command}` did not finish in {}s; check the relay or PDU", COMMAND_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let mut said = String::new();
        let mut output = output;
        use std::io::Seek;
        output.rewind()?;
        let _ = output.take(4096).read_to_string(&mut said);
        bail!("power {what} `{command}` failed ({status}): {}", said.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(dir: &std::path::Path, cycle: Option<&str>) -> PowerCommands {
        let log = dir.join("log");
        PowerCommands {
            on: format!("echo on >> {}", log.display()),
            off: format!("echo off >> {}", log.display()),
            cycle: cycle.map(|c| format!("echo {c} >> {}", log.display())),
            delay: Duration::from_millis(10),
        }
    }

    #[test]
    fn a_cycle_is_off_then_on_unless_the_lab_has_a_cycle_command() {
        let dir = tempfile::tempdir().unwrap();
        commands(dir.path(), None).cycle().unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("log")).unwrap(), "off\non\n");
        let dir = tempfile::tempdir().unwrap();
        commands(dir.path(), Some("cycle")).cycle().unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("log")).unwrap(), "cycle\n");
    }

    #[test]
    fn a_failing_command_is_an_error_with_what_it_said() {
        let p = PowerCommands {
            on: "echo relay not found >&2; exit 3".into(),
            off: "true".into(),
            cycle: None,
            delay: Duration::ZERO,
        };
        let e = p.cycle().unwrap_err().to_string();
        assert!(e.contains("cmd_on") && e.contains("exit status: 3") && e.contains("relay not found"), "{e}");
    }

    #[test]
    fn a_command_that_leaves_a_child_in_the_background_does_not_hang_the_rig() {
        // The background child keeps the command's stdout and stderr open for 30 s.
        let p = PowerCommands {
            on: "echo relay on; sleep 30 &".into(),
            off: "true".into(),
            cycle: None,
            delay: Duration::ZERO,
        };
        let started = Instant::now();
        p.on().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "returned when sh did: {:?}", started.elapsed());
    }
}
