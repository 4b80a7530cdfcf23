//! Updates of vigil's own binary (docs/ota.md, "Updating vigil itself"). After the download,
//! which is the models' (TUF, resumable):
//!
//! 1. verifying: the binary is staged into the free slot ([`crate::slots`]) and must say it is
//!    the signed version (`--version`);
//! 2. accepting: it must accept this device's configuration (`check-config`);
//! 3. activating: the slots switch to it, on trial, and vigil exits for its supervisor to start
//!    it (through the launcher);
//! 4. canary, in the new binary: once it has run a health window with every camera streaming
//!    and the broker connected it marks itself good; otherwise it puts the previous binary back
//!    and exits. A binary that crashes, hangs or stops its watchdog first is reverted by the guard.
//!
//! Whichever vigil runs after a revert reports `rolled_back` on the retained `ota` topic.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use semver::Version;
use vigil_ota::Offer;

use crate::flow::{enter, failed, Step, Stop};
use crate::journal::{Journal, Phase};
use crate::slots::{self, Installed, Slot, Slots};
use crate::start::StartAction;
use crate::Host;

/// How long the new binary gets to answer `--version` and `check-config`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// The running vigil's version.
fn running() -> Version {
    vigil_core::build::version().parse().expect("vigil's version is semver (checked at build time)")
}

/// Refuses an offer of vigil's binary that is no update, before anything is downloaded.
pub(crate) fn check_offer(host: &Host, offer: &Offer) -> Step<()> {
    let (new, now) = (&offer.meta.version, running());
    if *new == now {
        return Err(Stop::End(Phase::Successful, format!("vigil {now} is already running")));
    }
    if *new < now && !offer.meta.allow_downgrade {
        return Err(failed(format!(
            "vigil {new} is older than the running {now}; a downgrade must be signed with allow_downgrade"
        )));
    }
    if host.config_path.is_none() {
        return Err(failed(
            "vigil runs the embedded demo configuration; binary updates need `vigil run --config FILE`",
        ));
    }
    let slots = Slots::load(&host.config.data_dir).map_err(|e| failed(e.to_string()))?;
    if let (Some(active), Some(_)) = (&slots.active, &slots.trial) {
        return Err(failed(format!(
            "vigil {} has not marked itself good yet; send ota/apply again once its update has an outcome",
            active.version
        )));
    }
    Ok(())
}

/// Stages, checks and switches to the binary at `archive`, then has vigil restart into it.
pub(crate) async fn install(
    host: &Host,
    j: &mut Journal,
    offer: &Offer,
    archive: &Path,
    signed_targets: Vec<u8>,
) -> Step<Option<serde_json::Value>> {
    let data_dir = host.config.data_dir.clone();
    let config_path = host.config_path.clone().expect("check_offer saw a configuration file");
    let version = offer.meta.version.clone();

    enter(host, j, Phase::Verifying)?;
    let slot = Slots::load(&data_dir)
        .map_err(|e| failed(e.to_string()))?
        .free()
        .ok_or_else(|| failed("a vigil binary is on trial; send ota/apply again once its update has an outcome"))?;
    let (from, dir) = (archive.to_owned(), data_dir.clone());
    // The binary and the signed metadata the launcher will check it against (docs/ota.md).
    let path = tokio::task::spawn_blocking(move || {
        let path = slots::stage(&from, &dir, slot)?;
        let voucher = slots::voucher(&dir, slot);
        vigil_core::fsutil::write_durably(&voucher, &signed_targets)
            .map_err(vigil_ota::OtaError::io("cannot write", voucher))?;
        Ok::<_, vigil_ota::OtaError>(path)
    })
    .await
    .map_err(|_| failed("staging panicked"))?
    .map_err(|e| failed(e.to_string()))?;
    j.slot = Some(path.clone());
    j.save(&host.dir()).map_err(|e| failed(format!("cannot write the update journal: {e}")))?;
    let unstage = |stop: Stop| {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(slots::voucher(&data_dir, slot));
        stop
    };
    let said = run_check(&path, &["--version".as_ref()]).await.map_err(unstage)?;
    if said.trim() != format!("vigil {version}") {
        return Err(unstage(failed(format!(
            "the binary says `{}` to --version; the signed target is vigil {version}: re-sign the right file",
            said.trim()
        ))));
    }

    enter(host, j, Phase::Accepting)?;
    run_check(&path, &["check-config".as_ref(), config_path.as_os_str()]).await.map_err(|e| {
        unstage(match e {
            Stop::End(phase, why) => {
                Stop::End(phase, format!("vigil {version} refuses this device's configuration: {why}"))
            }
            other => other,
        })
    })?;

    j.previous = std::env::current_exe().ok();
    enter(host, j, Phase::Activating)?;
    slots::switch(&data_dir, Installed::new(slot, version.clone(), Some(offer.sha256.clone())))
        .map_err(|e| unstage(failed(format!("cannot switch slots: {e}"))))?;
    tracing::warn!(version = %version, slot = slot.name(), "switched to the new vigil; restarting into it");
    host.restart.cancel();
    Err(Stop::Restarting)
}

/// Runs `binary args…` and returns its stdout; it must exit 0 within [`CHECK_TIMEOUT`]. Its
/// output is read while it runs (a full pipe cannot stall it), and it is killed at the deadline.
async fn run_check(binary: &Path, args: &[&std::ffi::OsStr]) -> Step<String> {
    run_check_within(binary, args, CHECK_TIMEOUT).await
}

async fn run_check_within(binary: &Path, args: &[&std::ffi::OsStr], timeout: Duration) -> Step<String> {
    let mut command = Command::new(binary);
    command.args(args).env_remove(slots::ENV_SLOT).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what =
        format!("{} {}", binary.display(), args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let child = command
        .spawn()
        .map_err(|e| failed(format!("cannot run `{what}`: {e} (is it built for {}?)", std::env::consts::ARCH)))?;
    let pid = child.id();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(out))) => out,
        Ok(Ok(Err(e))) => return Err(failed(format!("`{what}`: {e}"))),
        Ok(Err(_)) => return Err(failed(format!("`{what}`: its waiter ended"))),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            return Err(failed(format!("`{what}` did not finish within {}s", timeout.as_secs())));
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(failed(format!("`{what}` failed ({}): {}", out.status, stderr.trim())))
    }
}

/// What a starting vigil does about a binary update (`j`) the last run left unfinished. Runs
/// before the model loads, in whichever binary the launcher chose (`running`: the slot it runs
/// from, if any).
pub(crate) fn on_start(data_dir: &Path, ota_dir: &Path, mut j: Journal, running_slot: Option<Slot>) -> StartAction {
    let end = |j: &mut Journal, phase: Phase, reason: String| {
        j.reported = false;
        if let Err(e) = j.end(ota_dir, phase, reason) {
            tracing::error!(error = %e, "cannot record the update's outcome");
        }
    };
    match j.phase {
        Phase::Successful | Phase::Failed | Phase::RolledBack if j.reported => return StartAction::Nothing,
        Phase::Successful | Phase::Failed | Phase::RolledBack => return StartAction::Report(j),
        // Safe to repeat: the download resumes, the slot is staged again.
        Phase::Downloading | Phase::Verifying | Phase::Accepting => return StartAction::Continue(j),
        Phase::Activating | Phase::Canary => {}
    }
    let Ok(version) = j.version.parse::<Version>() else {
        let reason = format!("the journal's version `{}` is not a version", j.version);
        end(&mut j, Phase::Failed, reason);
        return StartAction::Report(j);
    };
    let state = match Slots::load(data_dir) {
        Ok(s) => s,
        Err(e) => {
            end(&mut j, Phase::Failed, e.to_string());
            return StartAction::Report(j);
        }
    };
    if let Some(r) = state.reverted.as_ref().filter(|r| r.version == version) {
        let reason = r.reason.clone();
        let _ = slots::take_reverted(data_dir);
        tracing::error!(version = %version, "{reason}: the previous vigil runs again");
        end(&mut j, Phase::RolledBack, reason);
        return StartAction::Report(j);
    }
    match (&state.active, &state.trial) {
        (Some(a), Some(_)) if a.version == version && running_slot == Some(a.slot) => StartAction::BinaryTrial(j),
        (Some(a), Some(_)) if a.version == version => {
            // Switched, but the launcher ran something else: it said why (an installed package
            // as new or newer, a binary it could not verify or run).
            let cause = slots::launch_note().unwrap_or("the launcher did not run it");
            let why = format!("vigil {} runs instead of the update: {cause}", running());
            let _ = slots::revert(data_dir, why.clone());
            let _ = slots::take_reverted(data_dir);
            end(&mut j, Phase::Failed, why);
            StartAction::Report(j)
        }
        (Some(a), None) if a.version == version => {
            end(&mut j, Phase::Successful, format!("vigil {version} marked itself good"));
            StartAction::Report(j)
        }
        _ => {
            // Stopped before the switch: the staged binary is not needed.
            if let Some(path) = j.slot.as_ref().filter(|p| !is_active(&state, data_dir, p)) {
                let _ = std::fs::remove_file(path);
            }
            end(
                &mut j,
                Phase::Failed,
                format!("vigil stopped before switching to {version}; vigil {} kept running", running()),
            );
            StartAction::Report(j)
        }
    }
}

fn is_active(state: &Slots, data_dir: &Path, path: &Path) -> bool {
    state.active.as_ref().is_some_and(|a| slots::binary(data_dir, a.slot) == *path)
}

/// In the new binary: its health window, then good (kept) or reverted (restart into the
/// previous binary, which reports it).
pub(crate) async fn trial(host: &Host, j: &mut Journal) -> Step<Option<serde_json::Value>> {
    let window = host.config.ota.as_ref().map_or(Duration::from_secs(60), |o| o.binary_health_window);
    let data_dir = host.config.data_dir.clone();
    let _ = j.enter(&host.dir(), Phase::Canary);
    host.publish(j, Some(serde_json::json!({ "health_window_s": window.as_secs() })));
    tracing::info!(version = %j.version, window_s = window.as_secs(), "new vigil on trial: watching its health");
    let never = tokio_util::sync::CancellationToken::new();
    let health = || vigil_fleet::config_change::health_problems((host.connected)(), &host.cameras);
    match vigil_fleet::config_change::probation(window, &never, health).await {
        // Stopped first: the next start goes on with the trial (the guard counts it).
        None => Err(Stop::Restarting),
        Some(vigil_fleet::config_change::Verdict::Healthy) => {
            slots::mark_good(&data_dir).map_err(|e| failed(format!("cannot mark the new vigil good: {e}")))?;
            // Anti-rollback: a repository offering an older vigil from now on is refused.
            crate::flow::raise_minimum(host, j);
            j.reason =
                Some(format!("vigil {} marked itself good after a {}s health window", j.version, window.as_secs()));
            let previous = j.previous.as_ref().map(|p| p.display().to_string());
            Ok(Some(serde_json::json!({ "health_window_s": window.as_secs(), "previous_binary": previous })))
        }
        Some(vigil_fleet::config_change::Verdict::Unhealthy(problems)) => {
            let reason =
                format!("vigil {} was unhealthy after its {}s health window: {problems}", j.version, window.as_secs());
            tracing::error!("{reason}; putting the previous vigil back");
            slots::revert(&data_dir, reason).map_err(|e| failed(format!("cannot put the previous vigil back: {e}")))?;
            host.restart.cancel();
            Err(Stop::Restarting)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A data directory with slot a on trial as 0.3.0 (b kept), and its journal in `activating`.
    fn switched() -> (tempfile::TempDir, PathBuf, Journal) {
        let d = tempfile::tempdir().unwrap();
        let ota = crate::ota_dir(d.path());
        std::fs::create_dir_all(&ota).unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, b"#!/bin/sh\n").unwrap();
        for slot in [Slot::A, Slot::B] {
            slots::stage(&src, d.path(), slot).unwrap();
        }
        Slots { active: Some(Installed::new(Slot::B, "0.2.0".parse().unwrap(), None)), ..Default::default() }
            .save(d.path())
            .unwrap();
        slots::switch(d.path(), Installed::new(Slot::A, "0.3.0".parse().unwrap(), None)).unwrap();
        let j = Journal {
            kind: vigil_ota::Kind::Binary,
            phase: Phase::Activating,
            slot: Some(slots::binary(d.path(), Slot::A)),
            ..Journal::new("r1", "vigil", "0.3.0")
        };
        (d, ota, j)
    }

    fn outcome(action: StartAction) -> (Phase, String) {
        let StartAction::Report(j) = action else { panic!("a report: {action:?}") };
        (j.phase, j.reason.unwrap_or_default())
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("check.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn reason(step: Step<String>) -> String {
        match step {
            Err(Stop::End(Phase::Failed, why)) => why,
            Err(_) => panic!("another stop"),
            Ok(out) => panic!("succeeded: {out}"),
        }
    }

    #[tokio::test]
    async fn a_check_reads_all_its_output_and_a_hung_or_failing_one_is_stopped_with_why() {
        let d = tempfile::tempdir().unwrap();
        // 1 MiB of output: more than a pipe holds, so a check that only waited would stall.
        let big = script(d.path(), "head -c 1048576 /dev/zero | tr '\\0' x; echo");
        let out =
            run_check_within(&big, &[], Duration::from_secs(20)).await.unwrap_or_else(|_| panic!("the big output"));
        assert_eq!(out.trim().len(), 1 << 20);
        let hung = script(d.path(), "exec sleep 30");
        let started = std::time::Instant::now();
        let why = reason(run_check_within(&hung, &[], Duration::from_secs(1)).await);
        assert!(why.contains("did not finish within 1s"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(10), "killed at the deadline");
        let refuses = script(d.path(), "echo 'camera.uri: bad' >&2; exit 2");
        let why = reason(run_check_within(&refuses, &["check-config".as_ref()], Duration::from_secs(20)).await);
        assert!(why.contains("failed (exit status: 2): camera.uri: bad"), "{why}");
        let why = reason(run_check_within(&d.path().join("missing"), &[], Duration::from_secs(1)).await);
        assert!(why.contains("cannot run") && why.contains("is it built for"), "{why}");
    }

    #[test]
    fn the_new_binary_goes_on_trial_only_when_it_is_the_one_running() {
        let (d, ota, j) = switched();
        assert!(matches!(on_start(d.path(), &ota, j.clone(), Some(Slot::A)), StartAction::BinaryTrial(_)));
        // The launcher ran the package instead (apt installed one as new): the update gave way.
        let (phase, reason) = outcome(on_start(d.path(), &ota, j, None));
        assert_eq!(phase, Phase::Failed);
        assert!(reason.contains("runs instead of the update"), "{reason}");
        let state = Slots::load(d.path()).unwrap();
        assert_eq!((state.active.map(|a| a.slot), state.trial, state.reverted), (Some(Slot::B), None, None));
    }

    #[test]
    fn a_revert_by_the_guard_is_reported_once_as_rolled_back() {
        let (d, ota, j) = switched();
        for _ in 0..=slots::MAX_STARTS {
            slots::guard(d.path(), &"0.1.0".parse().unwrap(), None).unwrap();
        }
        let (phase, reason) = outcome(on_start(d.path(), &ota, j, Some(Slot::B)));
        assert_eq!(phase, Phase::RolledBack);
        assert!(reason.contains("did not mark itself good within 3 starts"), "{reason}");
        assert_eq!(Slots::load(d.path()).unwrap().reverted, None, "taken once reported");
        let mut saved = Journal::load(&ota).unwrap().unwrap();
        assert!(!saved.reported);
        saved.reported = true;
        assert!(matches!(on_start(d.path(), &ota, saved, Some(Slot::B)), StartAction::Nothing));
    }

    #[test]
    fn killed_after_marking_good_is_successful_and_before_the_switch_is_abandoned() {
        let (d, ota, j) = switched();
        slots::mark_good(d.path()).unwrap();
        let (phase, reason) = outcome(on_start(d.path(), &ota, j.clone(), Some(Slot::A)));
        assert_eq!((phase, reason.as_str()), (Phase::Successful, "vigil 0.3.0 marked itself good"));

        let (d, ota, j) = switched();
        // The switch never happened: slot b still runs 0.2.0 and a holds the staged 0.3.0.
        Slots { active: Some(Installed::new(Slot::B, "0.2.0".parse().unwrap(), None)), ..Default::default() }
            .save(d.path())
            .unwrap();
        let (phase, reason) = outcome(on_start(d.path(), &ota, j, Some(Slot::B)));
        assert_eq!(phase, Phase::Failed);
        assert!(reason.contains("stopped before switching to 0.3.0"), "{reason}");
        assert!(!slots::binary(d.path(), Slot::A).exists(), "the staged binary is removed");
        for phase in [Phase::Downloading, Phase::Verifying, Phase::Accepting] {
            let j = Journal { kind: vigil_ota::Kind::Binary, phase, ..Journal::new("r2", "vigil", "0.4.0") };
            assert!(matches!(on_start(d.path(), &ota, j, None), StartAction::Continue(_)), "{phase:?} is repeated");
        }
    }
}
