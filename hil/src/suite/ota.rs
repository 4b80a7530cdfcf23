//! Over-the-air scenarios: models through the fleet command `ota/apply` from the rig's signed
//! repository, and power cuts in the middle of an update.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use vigil_core::event::Phase;

use super::Ctx;
use crate::rig::now_ns;

/// The device's OTA states so far (the retained `ota` topic), oldest first.
fn states(c: &Ctx) -> Vec<Value> {
    c.rig.monitor.on("ota").iter().filter_map(|m| serde_json::from_slice(&m.payload).ok()).collect()
}

/// States of `request_id` only.
pub(super) fn states_of(c: &Ctx, request_id: &str) -> Vec<Value> {
    states(c).into_iter().filter(|s| s["request_id"] == request_id).collect()
}

/// Asks the device to update `name` (`shapes`, the model, or `vigil`) to `version`; the
/// command must be accepted.
pub(super) fn apply(c: &mut Ctx, request_id: &str, name: &str, version: &str) -> Result<()> {
    let args = serde_json::json!({ "name": name, "version": version });
    let within = c.patience(Duration::from_secs(30));
    let reply = c.rig.command("ota/apply", request_id, args, within)?;
    ensure!(reply["ok"] == true, "ota/apply {name} {version} was refused: {reply}");
    Ok(())
}

/// Applies `name` `version` as `request_id` and cuts the power once the update is in `step`
/// (`downloading` is caught with part of the download on the disk: the server trickles it,
/// `trickle` bytes per pause, until the cut).
fn apply_and_cut_in(
    c: &mut Ctx,
    request_id: &str,
    name: &str,
    version: &str,
    step: &str,
    trickle: (usize, Duration),
) -> Result<()> {
    c.rig.updates.server.set(|b| b.trickle = (step == "downloading").then_some(trickle));
    apply(c, request_id, name, version)?;
    c.wait(Duration::from_secs(120), &format!("update {name} {version} reaching {step}"), |c| {
        Ok(states_of(c, request_id)
            .iter()
            .any(|s| s["state"] == step && (step != "downloading" || s["detail"]["bytes"].as_u64().unwrap_or(0) > 0)))
    })?;
    c.power_cut()?;
    c.rig.updates.server.set(|b| b.trickle = None);
    Ok(())
}

/// A fresh device serving, then model `version` (the shipped bundle, its manifest changed by
/// `edit`) applied as `request_id`; its outcome must be `want`. Returns the outcome.
fn model_update(
    c: &mut Ctx,
    request_id: &str,
    version: &str,
    edit: impl FnOnce(String) -> String,
    want: &str,
) -> Result<Value> {
    c.fresh_device()?;
    super::scenarios::wait_first_event(c)?;
    // Whether the target keeps up with its camera before the update (see model_good).
    c.wait(Duration::from_secs(10), "a metrics message", |c| Ok(c.metrics().is_some()))?;
    let lost = c.frames_lost()?;
    c.figure("frames_lost_before_update", lost as f64);
    publish(c, version, edit)?;
    apply(c, request_id, "shapes", version)?;
    let end = outcome(c, request_id, Duration::from_secs(240))?;
    ensure!(end["state"] == want, "the update ended {}, not {want}: {end}", end["state"]);
    Ok(end)
}

/// Events after now come from model `version`; then a clean stop and nothing lost.
fn finish_serving(c: &mut Ctx, version: &str) -> Result<()> {
    let serving = serving(c, now_ns())?;
    ensure!(serving == version, "events now come from model {serving}, not {version}");
    c.stop_and_check_nothing_lost()
}

/// Waits for the outcome of `request_id`: `successful`, `failed` or `rolled_back`.
fn outcome(c: &mut Ctx, request_id: &str, within: Duration) -> Result<Value> {
    let done = |s: &Value| ["successful", "failed", "rolled_back"].contains(&s["state"].as_str().unwrap_or(""));
    let t = c.wait(within, &format!("the outcome of update {request_id}"), |c| {
        Ok(states_of(c, request_id).iter().any(done))
    })?;
    c.figure("update_s", t);
    states_of(c, request_id).into_iter().find(done).context("an outcome")
}

/// Waits for a `new` event captured after `since_ns` and returns its model's version.
fn serving(c: &mut Ctx, since_ns: i64) -> Result<String> {
    let mut version = None;
    c.wait(Duration::from_secs(60), "events after the update", |c| {
        let offset = c.clock_offset_ns;
        version = c
            .events()?
            .into_iter()
            .find(|(e, _)| e.phase == Phase::New && e.best.captured_at_ns as i64 - offset > since_ns)
            .map(|(e, _)| e.model.version);
        Ok(version.is_some())
    })?;
    version.context("a version")
}

/// Publishes the shipped bundle as `version`, its manifest changed by `edit`.
pub(super) fn publish(c: &mut Ctx, version: &str, edit: impl FnOnce(String) -> String) -> Result<()> {
    let bundle = c.rig.bundle.clone();
    c.rig.updates.publish_model(&c.rig.rt, &bundle, version, edit)
}

pub fn model_good(c: &mut Ctx) -> Result<()> {
    model_update(c, "hil-good", "1.0.1", |m| m, "successful")?;
    let seen: Vec<String> =
        states_of(c, "hil-good").iter().filter_map(|s| s["state"].as_str().map(str::to_owned)).collect();
    for step in ["downloading", "verifying", "accepting", "activating", "canary", "successful"] {
        ensure!(seen.iter().any(|s| s == step), "the state {step} was never published: {seen:?}");
    }
    let lost = states_of(c, "hil-good").iter().find_map(|s| s["detail"]["frames_lost_at_swap"].as_u64());
    let lost = lost.context("no state carried frames_lost_at_swap")?;
    c.figure("frames_lost_at_swap", lost as f64);
    // vigil counts every frame lost between the swap and the next frame served. A target that
    // was already losing frames to its camera's pace (qemu: emulated inference) loses some in
    // that window too, swap or not: the promise is checked where the target keeps up.
    match c.figures.get("frames_lost_before_update") {
        Some(&0.0) => ensure!(lost == 0, "{lost} frames lost at the swap"),
        before => c.not_checked(
            "0 frames lost at the swap",
            format!(
                "the target was already losing frames to its camera's pace before the update ({} lost); {lost} lost at the swap",
                before.map_or("?".to_owned(), |b| format!("{b:.0}"))
            ),
        ),
    }
    finish_serving(c, "1.0.1")
}

/// A model too slow for the camera's budget: refused at acceptance, never activated.
pub fn model_refused(c: &mut Ctx) -> Result<()> {
    let end = model_update(c, "hil-slow", "1.2.0", |m| m.replace("latency_ms = 100", "latency_ms = 1"), "failed")?;
    let reason = end["reason"].as_str().unwrap_or("");
    ensure!(reason.contains("too slow"), "the reason does not say why: {reason:?}");
    let activated = states_of(c, "hil-slow").iter().any(|s| s["state"] == "activating" || s["state"] == "canary");
    ensure!(!activated, "the refused model was activated");
    finish_serving(c, "1.0.0")
}

/// A model that passes acceptance but detects far less in the field: the canary rolls it back.
pub fn model_canary_rollback(c: &mut Ctx) -> Result<()> {
    // The same weights, the score threshold raised: the reference detections (0.9974 or more)
    // still pass acceptance; most detections on the clip go.
    let quiet = |m: String| m.replace("score_threshold = 0.5", "score_threshold = 0.997");
    let end = model_update(c, "hil-quiet", "1.0.2", quiet, "rolled_back")?;
    let canary = &end["detail"]["canary"];
    let (new, old) =
        (canary["new"]["detections_per_frame"].as_f64(), canary["previous"]["detections_per_frame"].as_f64());
    let (Some(new), Some(old)) = (new, old) else { bail!("the outcome has no canary figures: {end}") };
    c.figure("canary_new_detections_per_frame", new);
    c.figure("canary_previous_detections_per_frame", old);
    finish_serving(c, "1.0.0")
}

/// The power cut in each step of a good update: the device comes back serving, the update
/// resumes and succeeds, and events come from the new model.
pub fn model_power_cut(c: &mut Ctx) -> Result<()> {
    // 400 timed acceptance runs: long enough to be caught accepting.
    c.fresh_device_with("accept_runs = 400\n")?;
    super::scenarios::wait_first_event(c)?;
    for (i, step) in ["downloading", "accepting", "canary"].into_iter().enumerate() {
        let version = format!("1.0.{}", 10 + i);
        let id = format!("hil-cut-{step}");
        publish(c, &version, |m| m)?;
        let cut = Instant::now();
        apply_and_cut_in(c, &id, "shapes", &version, step, (16 << 10, Duration::from_millis(100)))?;
        let end = outcome(c, &id, Duration::from_secs(240))?;
        c.figure(&format!("cut_in_{step}_to_outcome_s"), cut.elapsed().as_secs_f64());
        ensure!(end["state"] == "successful", "cut while {step}: the update ended {}: {end}", end["state"]);
        let serving = serving(c, now_ns())?;
        ensure!(serving == version, "cut while {step}: events come from model {serving}, not {version}");
    }
    c.stop_and_check_nothing_lost()
}

/// The version in the latest retained status: what the running binary says it is.
fn status_version(c: &Ctx) -> Option<String> {
    let m = c
        .rig
        .monitor
        .on("status")
        .into_iter()
        .rev()
        .find(|m| serde_json::from_slice::<Value>(&m.payload).is_ok_and(|s| s["state"] == "online"))?;
    serde_json::from_slice::<Value>(&m.payload).ok()?["version"].as_str().map(str::to_owned)
}

/// The version the target's packaged vigil reports.
fn package_version(c: &mut Ctx) -> Result<semver::Version> {
    let out = c.target.vigil_cli(&["--version"])?;
    let v = out.trim().strip_prefix("vigil ").with_context(|| format!("`vigil --version` said {out:?}"))?;
    v.parse().with_context(|| format!("`vigil --version` said {out:?}"))
}

/// Publishes an executable for the target that passes the staging checks as vigil `version`
/// (`--version`, `check-config`) and then does `run` instead of serving.
fn publish_fake_binary(c: &mut Ctx, version: &str, run: &str) -> Result<()> {
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  --version) echo \"vigil {version}\" ;;\n  check-config) exit 0 ;;\n  run) {run} ;;\n  *) exit 64 ;;\nesac\n"
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("vigil-{version}"));
    std::fs::write(&path, script)?;
    let arch = c.target.arch()?;
    c.rig.updates.publish_binary(&c.rig.rt, &path, version, &arch)
}

/// The newer vigil the suite was given for this target, published; its version.
fn publish_next(c: &mut Ctx) -> Result<String> {
    let Some((path, version)) = c.settings.next_vigil.clone() else {
        return Err(super::Skip("no newer vigil for this target was given (--next-vigil)".into()).into());
    };
    let arch = c.target.arch()?;
    c.rig.updates.publish_binary(&c.rig.rt, &path, &version, &arch)?;
    Ok(version)
}

/// A good binary over the air: the device restarts into it, it marks itself good, and it
/// serves.
pub fn binary_good(c: &mut Ctx) -> Result<()> {
    let version = publish_next(c)?;
    c.fresh_device()?;
    super::scenarios::wait_first_event(c)?;
    apply(c, "hil-bin", "vigil", &version)?;
    let end = outcome(c, "hil-bin", Duration::from_secs(240))?;
    ensure!(end["state"] == "successful", "the update ended {}: {end}", end["state"]);
    let running = status_version(c);
    ensure!(running.as_deref() == Some(version.as_str()), "the status says {running:?}, not {version}");
    let since = now_ns();
    c.wait(Duration::from_secs(60), "events from the new binary", |c| Ok(c.new_events_since(since)? > 0))?;
    c.stop_and_check_nothing_lost()
}

/// A new binary that does `run` instead of serving: the package's guard puts the previous one
/// back within its bound, and the device serves again.
fn binary_reverted(c: &mut Ctx, minor_patch: u64, run: &str) -> Result<()> {
    let package = package_version(c)?;
    let version = format!("{}.{}.{minor_patch}", package.major, package.minor + 1);
    publish_fake_binary(c, &version, run)?;
    c.fresh_device()?;
    super::scenarios::wait_first_event(c)?;
    let id = format!("hil-bad-{minor_patch}");
    apply(c, &id, "vigil", &version)?;
    // Three starts of the bad binary, each up to the unit's start timeout (120 s on a board).
    let end = outcome(c, &id, Duration::from_secs(480))?;
    ensure!(end["state"] == "rolled_back", "the update ended {}, not rolled_back: {end}", end["state"]);
    let reason = end["reason"].as_str().unwrap_or("");
    ensure!(reason.contains("did not mark itself good"), "the reason does not say why: {reason:?}");
    c.wait(Duration::from_secs(60), "the package's vigil serving again", |c| c.target.active())?;
    let running = status_version(c);
    ensure!(running.as_deref() == Some(package.to_string().as_str()), "the status says {running:?}, not {package}");
    let since = now_ns();
    c.wait(Duration::from_secs(60), "events after the revert", |c| Ok(c.new_events_since(since)? > 0))?;
    c.stop_and_check_nothing_lost()
}

pub fn binary_crash(c: &mut Ctx) -> Result<()> {
    // Killed by a signal, as a binary that faults before `main` would be.
    binary_reverted(c, 1, "kill -SEGV $$")
}

pub fn binary_hang(c: &mut Ctx) -> Result<()> {
    binary_reverted(c, 2, "exec sleep 600")
}

/// An end systemd counts as clean: the unit's `Restart=always` starts it again all the same, so
/// that the guard counts its starts.
pub fn binary_exit_0(c: &mut Ctx) -> Result<()> {
    binary_reverted(c, 3, "exit 0")
}

/// Another clean end for systemd (`SIGPIPE`, as when writing to a closed pipe).
pub fn binary_sigpipe(c: &mut Ctx) -> Result<()> {
    binary_reverted(c, 4, "kill -PIPE $$")
}

/// The power cut in each step of a good binary update: the device comes back running a good
/// binary (the new one once switched; the package's when cut before the switch).
pub fn binary_power_cut(c: &mut Ctx) -> Result<()> {
    let version = publish_next(c)?;
    let package = package_version(c)?.to_string();
    for step in ["downloading", "accepting", "activating", "canary"] {
        c.fresh_device()?;
        super::scenarios::wait_first_event(c)?;
        let id = format!("hil-bin-cut-{step}");
        apply_and_cut_in(c, &id, "vigil", &version, step, (256 << 10, Duration::from_millis(50)))?;
        let end = outcome(c, &id, Duration::from_secs(240))?;
        let want = match end["state"].as_str() {
            Some("successful") => version.clone(),
            // Cut between the journal's `activating` and the switch: the update is abandoned.
            Some("failed") if step == "activating" => package.clone(),
            _ => bail!("cut while {step}: the update ended {}: {end}", end["state"]),
        };
        c.figure(&format!("cut_in_{step}_ended_{}", end["state"].as_str().unwrap_or("?")), 1.0);
        c.wait(Duration::from_secs(60), &format!("cut while {step}: vigil {want} serving"), |c| {
            Ok(c.target.active()? && status_version(c).as_deref() == Some(want.as_str()))
        })?;
        let since = now_ns();
        c.wait(Duration::from_secs(60), &format!("cut while {step}: events after"), |c| {
            Ok(c.new_events_since(since)? > 0)
        })?;
        c.stop_and_check_nothing_lost()?;
    }
    Ok(())
}
