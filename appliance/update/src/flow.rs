//! One update, step by step (see the crate's documentation), and the task that takes requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_config::{CanaryConfig, ClockTrust, Config, OtaConfig};
use vigil_infer::accept::{self, Limits};
use vigil_infer::{Bundle, Detector};
use vigil_ota::time::{AssumeSynchronized, KernelClock, TimeSource};
use vigil_ota::transport::Timeouts;
use vigil_ota::{Device, Kind, Offer, OtaError, Updater, UpdaterConfig};
use vigil_pipeline::canary::{self, Thresholds, Window};
use vigil_pipeline::scheduler::{measure, WarmCosts};
use vigil_pipeline::RuleSet;

use crate::journal::{Journal, Phase};
use crate::models;
use crate::requests::UpdateRequest;
use crate::start::StartAction;
use crate::{Host, Serving, Swap, Swapped};

/// Tries of a step that failed for a reason that may pass (network, clock), and the waits.
const TRIES: u32 = 5;
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long the scheduler's thread may take to put a model in place (it checks between rounds).
const SWAP_WAIT: Duration = Duration::from_secs(10);
const CANARY_TICK: Duration = Duration::from_secs(1);

/// Why an update stopped before its end: the phase it ends in and the reason, or (a periodic
/// check) nothing newer to install.
pub(crate) enum Stop {
    End(Phase, String),
    /// Rolled back by the canary, with its figures.
    RolledBack(String, serde_json::Value),
    NothingNew,
    /// vigil restarts (into a new binary, or back to the previous one); the update goes on, or
    /// is reported, from the next start.
    Restarting,
}

pub(crate) type Step<T> = Result<T, Stop>;

pub(crate) fn failed(reason: impl Into<String>) -> Stop {
    Stop::End(Phase::Failed, reason.into())
}

/// Takes update requests until `cancel`; first finishes what `resume` says the last run left.
pub async fn run(
    host: Arc<Host>,
    mut requests: tokio::sync::mpsc::Receiver<UpdateRequest>,
    resume: StartAction,
    cancel: CancellationToken,
) {
    let work = async {
        resume_update(&host, resume).await;
        let mut periodic = host.config.ota.as_ref().and_then(|o| o.check_every).map(tokio::time::interval);
        if let Some(i) = &mut periodic {
            i.tick().await;
        }
        // A fleet command that arrived while a periodic check ran, to run next.
        let mut next: Option<UpdateRequest> = None;
        loop {
            let (request, periodic) = match next.take() {
                Some(r) => {
                    host.set_busy(true);
                    (r, false)
                }
                None => tokio::select! {
                    r = requests.recv() => match r { Some(r) => (r, false), None => return },
                    _ = async { match &mut periodic { Some(i) => i.tick().await, None => std::future::pending().await } } => {
                        if host.set_busy(true) {
                            continue;
                        }
                        let serving = host.serving();
                        let canary = host.config.ota.as_ref().map(|o| o.canary.clone()).unwrap_or_default();
                        (UpdateRequest { request_id: "periodic".into(), name: serving.model.name, version: None, canary }, true)
                    }
                },
            };
            let mut journal =
                Journal::new(&request.request_id, &request.name, request.version.as_deref().unwrap_or_default());
            journal.canary = Some(serde_json::to_value(&request.canary).expect("canary settings serialise"));
            if !periodic {
                update(&host, journal, false).await;
                continue;
            }
            // A command takes precedence over a periodic check that is still looking or
            // downloading: the check is dropped (a download keeps its part file) and the command
            // runs. Past its download the check goes on to its outcome, and the command after it.
            host.preemptible.store(true, Ordering::SeqCst);
            let check = update(&host, journal, true);
            tokio::pin!(check);
            loop {
                tokio::select! {
                    () = &mut check => break,
                    r = requests.recv(), if next.is_none() => match r {
                        Some(r) if host.preemptible.load(Ordering::SeqCst) => {
                            tracing::info!(request_id = %r.request_id, "a fleet update takes the place of the periodic check");
                            next = Some(r);
                            break;
                        }
                        Some(r) => next = Some(r),
                        None => return,
                    },
                }
            }
            host.preemptible.store(false, Ordering::SeqCst);
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = work => {}
    }
}

/// Carries out what the journal found at start says.
async fn resume_update(host: &Host, action: StartAction) {
    match action {
        StartAction::Nothing => {}
        StartAction::Report(j) => host.publish_outcome(&j, None),
        StartAction::Continue(j) => {
            tracing::warn!(name = %j.name, version = %j.version, phase = ?j.phase, "resuming the model update vigil stopped in");
            host.set_busy(true);
            update(host, j, false).await;
        }
        StartAction::BinaryTrial(mut j) => {
            host.set_busy(true);
            let outcome = crate::binary::trial(host, &mut j).await;
            finish(host, &mut j, outcome).await;
        }
        StartAction::Canary(mut j) => {
            host.set_busy(true);
            tracing::warn!(name = %j.name, version = %j.version, restarts = j.canary_restarts, "watching the new model again from a fresh canary window");
            let outcome = restart_canary(host, &mut j).await;
            finish(host, &mut j, outcome).await;
        }
    }
}

/// Runs one update to its outcome, journalled and published at each step. A periodic check
/// (`periodic`) says nothing and keeps the last outcome's record until it finds a newer version.
async fn update(host: &Host, mut j: Journal, periodic: bool) {
    let dir = host.dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(error = %e, "cannot create {}; no update is possible", dir.display());
    }
    let outcome = steps(host, &mut j, periodic).await;
    finish(host, &mut j, outcome).await;
}

/// Records the outcome: journal, log, retained state; the next update may start.
async fn finish(host: &Host, j: &mut Journal, outcome: Step<Option<serde_json::Value>>) {
    let dir = host.dir();
    let (phase, reason, detail) = match outcome {
        // Still under way: vigil is stopping, and busy until it has.
        Err(Stop::Restarting) => return,
        Ok(detail) => (Phase::Successful, j.reason.clone().unwrap_or_default(), detail),
        Err(Stop::End(phase, reason)) => (phase, reason, None),
        Err(Stop::RolledBack(reason, figures)) => (Phase::RolledBack, reason, Some(figures)),
        Err(Stop::NothingNew) => {
            tracing::debug!(name = %j.name, "periodic check: nothing newer");
            host.set_busy(false);
            return;
        }
    };
    // Whatever the outcome, the archive is done with (the slot holds what it carried), and so is
    // all an earlier update left; a download that failed on the network is kept to resume.
    let (tidy_dir, keep_downloads) = (dir.clone(), phase == Phase::Failed && j.phase == Phase::Downloading);
    // Off the async workers: an archive can be gigabytes.
    let _ = tokio::task::spawn_blocking(move || crate::disk::tidy(&tidy_dir, keep_downloads)).await;
    // Reported once the broker has acknowledged the outcome (`publish_outcome`), not before.
    j.reported = false;
    if let Err(e) = j.end(&dir, phase, reason.clone()) {
        tracing::error!(error = %e, "cannot record the update's outcome");
    }
    match phase {
        Phase::Successful => {
            tracing::info!(name = %j.name, version = %j.version, kind = %j.kind, "update successful: {reason}")
        }
        _ => {
            tracing::error!(name = %j.name, version = %j.version, kind = %j.kind, state = ?phase, "update ended: {reason}")
        }
    }
    host.publish_outcome(j, detail);
    // Only now may the next update start: the tidy above must not remove what it writes.
    host.set_busy(false);
}

pub(crate) fn updater(config: &Config, ota: &OtaConfig) -> Result<Updater, OtaError> {
    let server = ota.server.trim_end_matches('/');
    let url = |part: &str| {
        format!("{server}/{part}/").parse().map_err(|e| OtaError::Config(format!("ota.server `{}`: {e}", ota.server)))
    };
    let time: Arc<dyn TimeSource> = match ota.clock {
        ClockTrust::Kernel => Arc::new(KernelClock),
        ClockTrust::Trusted => Arc::new(AssumeSynchronized),
    };
    let config = UpdaterConfig {
        metadata_url: url("metadata")?,
        targets_url: url("targets")?,
        state_dir: crate::ota_dir(&config.data_dir),
        shipped_root: ota.root.clone(),
        ca: ota.ca.clone(),
        client_cert: ota.cert.clone().zip(ota.key.clone()),
        timeouts: Timeouts::default(),
        limits: vigil_ota::client::default_limits(),
    };
    Updater::new(config, time)
}

/// Retries `attempt` while it fails for a reason that may pass, publishing why.
async fn retrying<T, F, Fut>(host: &Host, j: &Journal, what: &str, mut attempt: F) -> Step<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OtaError>>,
{
    let mut wait = RETRY_FIRST;
    for tried in 1..=TRIES {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && tried < TRIES => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "{what} failed; retrying");
                host.publish(j, Some(serde_json::json!({ "retrying": format!("{what}: {e}"), "try": tried })));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(failed(format!("{what}: {e}"))),
        }
    }
    unreachable!("the last try returns")
}

/// This device, for target compatibility.
fn device(serving: &Serving) -> Device {
    let mut backends = vec!["onnxruntime".to_owned()];
    if serving.model.backend != "onnxruntime" {
        backends.push(serving.model.backend.clone());
    }
    Device::detect(backends)
}

/// Moves `j` to `phase`: written to the journal before the step's work starts, then published.
pub(crate) fn enter(host: &Host, j: &mut Journal, phase: Phase) -> Step<()> {
    if phase != Phase::Downloading {
        // Past its download a periodic check is no longer given up for a fleet command.
        host.preemptible.store(false, Ordering::SeqCst);
    }
    j.enter(&host.dir(), phase).map_err(|e| failed(format!("cannot write the update journal: {e}")))?;
    host.publish(j, None);
    Ok(())
}

async fn steps(host: &Host, j: &mut Journal, periodic: bool) -> Step<Option<serde_json::Value>> {
    let dir = host.dir();
    let ota = host.config.ota.clone().ok_or_else(|| failed("the configuration has no [ota] section"))?;
    let save = |j: &Journal| j.save(&dir).map_err(|e| failed(format!("cannot write the update journal: {e}")));
    let serving = host.serving();
    let updater = updater(&host.config, &ota).map_err(|e| failed(e.to_string()))?;
    // Downloading: the signed metadata, the choice, the target (resumed where a part is kept).
    // A periodic check writes nothing until it has found a newer version.
    if periodic {
        j.phase = Phase::Downloading;
    } else {
        enter(host, j, Phase::Downloading)?;
    }
    let trusted = match retrying(host, j, "refreshing the signed metadata", || updater.refresh()).await {
        Err(Stop::End(_, why)) if periodic => {
            tracing::warn!("periodic update check: {why}");
            return Err(Stop::NothingNew);
        }
        other => other?,
    };
    let version = match j.version.as_str() {
        "" => None,
        v => Some(v.parse::<semver::Version>().map_err(|e| failed(format!("version `{v}`: {e}")))?),
    };
    let offer = match updater.choose(&trusted, &device(&serving), &j.name, version.as_ref()) {
        Ok(o) => o,
        Err(_) if periodic => return Err(Stop::NothingNew),
        Err(e) => return Err(failed(e.to_string())),
    };
    j.kind = offer.meta.kind;
    j.target = offer.target.clone();
    j.version = offer.meta.version.to_string();
    match offer.meta.kind {
        Kind::Binary if periodic => return Err(Stop::NothingNew),
        Kind::Binary => crate::binary::check_offer(host, &offer)?,
        Kind::Model => {
            let current = serving.model.version.parse::<semver::Version>().ok();
            if periodic && current.is_some_and(|c| offer.meta.version <= c) {
                return Err(Stop::NothingNew);
            }
            if serving.model.name == j.name && serving.model.version == j.version {
                return Err(Stop::End(Phase::Successful, format!("{} {} is already serving", j.name, j.version)));
            }
        }
    }
    save(j)?;
    host.publish(j, Some(serde_json::json!({ "bytes": 0, "total": offer.length })));
    let archive = crate::disk::archive_path(&dir, j);
    // Downloaded before a restart (killed while verifying or accepting): not fetched again.
    let (kept, path) = (offer.clone(), archive.clone());
    let downloaded = tokio::task::spawn_blocking(move || kept.is_in(&path)).await.unwrap_or(false);
    check_space(&host.config, &offer, downloaded)?;
    if downloaded {
        tracing::info!(target = %offer.target, "the target was downloaded before the restart; not fetched again");
    } else {
        download(host, j, &updater, &trusted, &offer, &archive).await?;
    }
    if offer.meta.kind == Kind::Binary {
        return crate::binary::install(host, j, &offer, &archive, trusted.targets_json()).await;
    }

    // Verifying: TUF checked the length and hash as it came; the archive is unpacked as hostile
    // into a new slot, and the bundle inside checked (manifest, model hash).
    enter(host, j, Phase::Verifying)?;
    let slot = models::models_dir(&host.config.data_dir).join(format!("{}-{}", j.name, j.version));
    let bundle = stage(&archive, &slot, &serving.dir).await?;
    let m = &bundle.manifest.model;
    if m.name != j.name || m.version != j.version {
        remove_slot(&slot, &serving.dir).await;
        return Err(failed(format!(
            "the bundle's manifest says {} {}, the signed target {} {}: re-pack it with the target's name and version",
            m.name, m.version, j.name, j.version
        )));
    }
    j.slot = Some(slot.clone());
    let settings = canary_settings(j);
    let expected = new_model_has_expected(&serving, &bundle, &settings);

    // Accepting: on this device's backend, off the scheduler's thread. A new model without its
    // exporter's detections is refused after it (whose reasons, such as rules that do not fit
    // its labels, come first).
    enter(host, j, Phase::Accepting)?;
    let accepted = accept_here(host.config.clone(), bundle, ota.accept_runs, ota.min_available_mb << 20).await;
    let (new, detail) = match accepted.and_then(|a| expected.map(|()| a).map_err(failed)) {
        Ok(a) => a,
        Err(stop) => {
            remove_slot(&slot, &serving.dir).await;
            return Err(stop);
        }
    };
    host.publish(j, Some(detail.clone()));

    // The canary compares with the previous model on the same cameras: it needs its figures.
    wait_for_baseline(host, j, &settings).await;

    // Activating: the hot swap, then the pointer.
    j.previous = Some(serving.dir.clone());
    enter(host, j, Phase::Activating)?;
    let previous = activate(host, j, new, &serving).await?;

    // Canary.
    let basis = basis(&previous.serving, &host.serving());
    let outcome = watch(host, j, &settings, basis).await;
    conclude(host, j, outcome, previous).await
}

/// A retrain is another version of the serving model: the same name and the same labels.
fn is_retrain(old: &Serving, name: &str, labels: &[String]) -> bool {
    old.model.name == name && old.labels == labels
}

/// Refuses a new model (not a retrain of `serving`) whose bundle carries no exporter's
/// detections while `settings` asks for them: nothing else on the device can tell its
/// conventions are right (decision 0015).
fn new_model_has_expected(serving: &Serving, bundle: &Bundle, settings: &CanaryConfig) -> Result<(), String> {
    let m = &bundle.manifest;
    if is_retrain(serving, &m.model.name, &m.postprocess.labels) || !settings.new_model_needs_expected {
        return Ok(());
    }
    match bundle.expected() {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "{} {} is a new model here, not another version of {} {} ({}): the canary cannot judge it by the model it \
             replaces, so its bundle must carry its exporter's detections on a reference picture, and it has none. \
             Re-pack it with `vigil model pack --expect DETECTIONS.json` (models/README.md), or push it with canary \
             {{\"new_model_needs_expected\": false}} to judge it by its errors, deadline misses and silence only",
            m.model.name,
            m.model.version,
            serving.model.name,
            serving.model.version,
            if m.model.name == serving.model.name { "other labels" } else { "another name" }
        )),
        Err(e) => Err(format!("its exporter's detections cannot be read: {e}")),
    }
}

/// What the canary judges `new` by, after `old`.
fn basis(old: &Serving, new: &Serving) -> canary::Basis {
    if is_retrain(old, &new.model.name, &new.labels) {
        return canary::Basis::Retrain;
    }
    // Its reference detections (checked at acceptance): what it promised on a frame.
    let promised = Bundle::load(&new.dir)
        .ok()
        .and_then(|b| vigil_infer::check::reference_detections(&b).ok())
        .map_or(0, |d| d.len());
    canary::Basis::NewModel { promised }
}

/// Refuses `offer` before anything is downloaded unless its archive (unless `downloaded`
/// already), its unpacked copy (a model's slot, a binary's staged copy: about the archive's
/// length) and the store's reserve (`store.min_free_mb`) fit in the free space of the data
/// directory's file system. Otherwise the download would take the space the event history needs,
/// and the store's disk guard would evict events to make room for it.
fn check_space(config: &Config, offer: &Offer, downloaded: bool) -> Step<()> {
    let dir = &config.data_dir;
    let free = rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .map_err(|e| failed(format!("cannot read the free space of {}: {e}", dir.display())))?;
    let (archive, unpacked, reserve) =
        (if downloaded { 0 } else { offer.length }, offer.length, config.store.min_free_mb << 20);
    let need = archive + unpacked + reserve;
    if free >= need {
        return Ok(());
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1 << 20));
    Err(failed(format!(
        "not enough free space for {} {} on {}: it needs {} (the archive {}, unpacked {}, store.min_free_mb {}) and {} \
         is free; free space there or lower store.min_free_mb, then send ota/apply again",
        offer.meta.name,
        offer.meta.version,
        dir.display(),
        mib(need),
        mib(archive),
        mib(unpacked),
        mib(reserve),
        mib(free)
    )))
}

/// The download, with progress published every second.
async fn download(
    host: &Host,
    j: &Journal,
    updater: &Updater,
    trusted: &vigil_ota::client::Trusted,
    offer: &Offer,
    archive: &Path,
) -> Step<()> {
    let progress = updater.progress();
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (bytes, total, resumed_at) = progress.get();
            host.publish(j, Some(serde_json::json!({ "bytes": bytes, "total": total, "resumed_at": resumed_at })));
        }
    };
    // The first try uses the metadata just refreshed; each retry refreshes it first, as a long
    // download can outlive the timestamp it started under. The target must still be signed as it
    // was (the same length and hash), or the update fails.
    let tries = std::sync::atomic::AtomicU32::new(0);
    let attempt = || {
        let tried = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            if tried == 0 {
                return updater.download(trusted, offer, archive).await;
            }
            let fresh = updater.refresh().await?;
            let same = updater.offers(&fresh).into_iter().any(|(_, o)| o.is_ok_and(|o| o == *offer));
            if !same {
                return Err(OtaError::NoSuchTarget(format!(
                    "{} with the length and hash it was signed with when the download began",
                    offer.target
                )));
            }
            updater.download(&fresh, offer, archive).await
        }
    };
    let fetch = retrying(host, j, "downloading the target", attempt);
    tokio::select! {
        r = fetch => r,
        _ = ticker => unreachable!("the ticker never ends"),
    }
}

/// Unpacks `archive` into `slot` (a leftover of an interrupted try is replaced) and loads it.
async fn stage(archive: &Path, slot: &Path, serving: &Path) -> Step<Bundle> {
    if slot == serving {
        return Err(failed(format!("{} is the serving model's own directory", slot.display())));
    }
    let (archive, slot) = (archive.to_owned(), slot.to_owned());
    tokio::task::spawn_blocking(move || {
        if slot.exists() {
            std::fs::remove_dir_all(&slot).map_err(|e| failed(format!("cannot replace {}: {e}", slot.display())))?;
        }
        vigil_ota::archive::unpack(&archive, &slot, Default::default()).map_err(|e| failed(e.to_string()))?;
        Bundle::load(&slot).map_err(|e| {
            let _ = std::fs::remove_dir_all(&slot);
            failed(format!("the bundle is not usable: {e}"))
        })
    })
    .await
    .map_err(|_| failed("unpacking panicked"))?
}

/// Removes a model slot (never the serving model's directory), off the async workers.
async fn remove_slot(slot: &Path, serving: &Path) {
    if slot != serving {
        let slot = slot.to_owned();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(slot)).await;
    }
}

/// A model accepted on this device, warmed, with its event state built.
struct Accepted {
    detector: Detector,
    costs: WarmCosts,
    rules: RuleSet,
    serving: Serving,
}

/// Acceptance (reference check, latency against every camera's budget, memory with both
/// models loaded), the rules against the new labels, and the cost measurement for the swap.
async fn accept_here(
    config: Arc<Config>,
    bundle: Bundle,
    runs: usize,
    min_available: u64,
) -> Step<(Accepted, serde_json::Value)> {
    tokio::task::spawn_blocking(move || {
        let new_budget = bundle.manifest.budget.latency;
        let (bundle, mut detector) = vigil_infer::load_detector_with(&config, bundle)
            .map_err(|e| failed(format!("the model does not load on this device: {e}")))?;
        let rules = RuleSet::compile(&config, detector.labels())
            .map_err(|e| failed(format!("the configuration's rules do not fit the new model's labels: {e:#}")))?;
        let budgets = config.cameras.iter().map(|c| (c.id.clone(), config.camera_budget(c, new_budget))).collect();
        let limits = Limits { budgets, runs, min_available };
        let a = accept::accept(&bundle, &mut detector, &limits, accept::time_inference, accept::memory_available)
            .map_err(|e| failed(format!("acceptance could not run: {e}")))?;
        let detail = serde_json::json!({
            "backend": a.check.backend,
            "max_abs_diff": a.check.max_abs_diff,
            "tolerance": a.check.tolerance,
            "latency_p50_ms": a.latency_p50.as_secs_f64() * 1e3,
            "latency_p95_ms": a.latency_p95.as_secs_f64() * 1e3,
            "available_mb": a.available_after.map(|b| b >> 20),
            "exporter_check": a.expected.as_ref().map(|e| serde_json::json!({
                "expected": e.expected, "got": e.got, "matched": e.matched, "min_iou": e.min_iou,
            })),
        });
        if !a.accepted() {
            return Err(failed(format!("acceptance failed: {}", a.problems.join("; "))));
        }
        if let Some(e) = &a.expected {
            tracing::info!(backend = %a.check.backend, "the exporter's detections agree: {}", e.summary());
        }
        let clock = vigil_core::clock::SystemClock;
        let costs = measure::<Never, _>(&mut detector, &clock).map_err(|e| failed(format!("warm-up failed: {e}")))?;
        let serving = Serving::of(&bundle, &detector);
        Ok((Accepted { detector, costs, rules, serving }, detail))
    })
    .await
    .map_err(|_| failed("acceptance panicked"))?
}

/// No frame: the cost measurement runs the engine on its idle input only.
enum Never {}

impl vigil_core::image::FrameImage for Never {
    fn image(&self) -> vigil_core::image::Image<'_> {
        match *self {}
    }
    fn size(&self) -> (u32, u32) {
        match *self {}
    }
}

/// Hands `new` to the scheduler's thread and waits for the old model back.
async fn swap_in(host: &Host, new: Accepted) -> Step<Swapped> {
    let Accepted { detector, costs, rules, serving } = new;
    let labels: Arc<[String]> = serving.labels.clone().into();
    let cameras = host
        .cameras
        .iter()
        .map(|c| rules.camera(&c.id, &host.config.device_id, &serving.model, labels.clone()))
        .collect();
    let (done, answered) = tokio::sync::oneshot::channel();
    // Acceptance judged the model against these budgets; it serves under them too.
    let budgets = host.config.cameras.iter().map(|c| host.config.camera_budget(c, serving.budget)).collect();
    let swap = Swap { detector, costs, cameras, budgets, done };
    host.swaps
        .try_send(swap)
        .map_err(|_| failed("the scheduler is not taking models (vigil is stopping?); nothing changed"))?;
    let swapped = tokio::time::timeout(SWAP_WAIT, answered)
        .await
        .map_err(|_| failed(format!("the scheduler did not take the new model within {} s", SWAP_WAIT.as_secs())))?
        .map_err(|_| failed("the scheduler stopped before taking the new model"))?;
    host.set_serving(serving.clone());
    Ok(swapped)
}

/// The previous model, kept warm for a rollback, and what it served as.
struct Previous {
    detector: Detector,
    serving: Serving,
}

async fn activate(host: &Host, j: &mut Journal, new: Accepted, serving: &Serving) -> Step<Previous> {
    let slot = new.serving.dir.clone();
    let swapped = swap_in(host, new).await?;
    let active = models::Active { slot: slot.clone(), previous: Some(serving.dir.clone()) };
    if let Err(e) = models::write_active(&host.config.data_dir, &active) {
        // Serving, but a restart would bring the old model back: put it back now.
        let reason = format!("cannot record the active model ({e}); the previous model was put back");
        let _ = roll_back_to(host, Previous { detector: swapped.old, serving: serving.clone() }).await;
        return Err(failed(reason));
    }
    let baseline = host.recorder().canary().map(|(b, _)| b).unwrap_or_default();
    j.baseline = Some(serde_json::to_value(&baseline).expect("windows serialise"));
    j.enter(&host.dir(), Phase::Canary).map_err(|e| failed(format!("cannot write the update journal: {e}")))?;
    host.publish(j, Some(serde_json::json!({ "frames_lost_at_swap": swapped.frames_lost })));
    tracing::info!(frames_lost = swapped.frames_lost, slot = %slot.display(), "new model serving; canary started");
    Ok(Previous { detector: swapped.old, serving: serving.clone() })
}

/// Waits (at most the canary's `max_wait`) until the serving model has served `min_frames`
/// frames since it started, so that the canary has a baseline to compare with.
async fn wait_for_baseline(host: &Host, j: &Journal, settings: &CanaryConfig) {
    host.recorder().resize(settings.min_frames);
    let give_up = tokio::time::Instant::now() + settings.max_wait;
    loop {
        let frames = host.recorder().recent().frames;
        if frames >= settings.min_frames {
            return;
        }
        if tokio::time::Instant::now() >= give_up {
            tracing::warn!(frames, "the previous model served few frames; the canary compares with what there is");
            return;
        }
        host.publish(j, Some(serde_json::json!({ "baseline_frames": frames, "of": settings.min_frames })));
        tokio::time::sleep(CANARY_TICK).await;
    }
}

fn canary_settings(j: &Journal) -> CanaryConfig {
    j.canary.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
}

/// The canary's verdict: Ok(figures) to keep the model, Err((reason, figures)) to roll back.
async fn watch(
    host: &Host,
    j: &Journal,
    settings: &CanaryConfig,
    basis: canary::Basis,
) -> Result<serde_json::Value, (String, serde_json::Value)> {
    let thresholds = Thresholds::from(settings);
    if let canary::Basis::NewModel { promised } = basis {
        tracing::info!(promised, "a new model, not a retrain: the canary judges its own figures");
    }
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(CANARY_TICK).await;
        let (baseline, candidate) = host.recorder().canary().unwrap_or_default();
        let figures = figures(&baseline, &candidate, settings, basis);
        match canary::judge(&baseline, &candidate, &thresholds, basis) {
            canary::Verdict::Pass => return Ok(figures),
            canary::Verdict::Fail(why) => return Err((format!("canary failed: {}", why.join("; ")), figures)),
            canary::Verdict::Wait if started.elapsed() >= settings.max_wait => {
                return Err((
                    format!(
                        "the canary saw {} of the {} frames it needs in {} s (are the cameras streaming?); \
                         the previous model was put back",
                        candidate.frames,
                        settings.min_frames,
                        settings.max_wait.as_secs()
                    ),
                    figures,
                ));
            }
            canary::Verdict::Wait => host.publish(j, Some(figures)),
        }
    }
}

fn figures(baseline: &Window, candidate: &Window, settings: &CanaryConfig, basis: canary::Basis) -> serde_json::Value {
    let side = |w: &Window| {
        serde_json::json!({
            "frames": w.frames,
            "deadline_misses": w.deadline_misses,
            "errors": w.errors,
            "detections_per_frame": w.detections_per_frame(),
        })
    };
    serde_json::json!({
        "canary": {
            "min_frames": settings.min_frames,
            "judged_as": match basis {
                canary::Basis::Retrain => "retrain",
                canary::Basis::NewModel { .. } => "new model",
            },
            "previous": side(baseline),
            "new": side(candidate),
            "score_psi": canary::psi(&baseline.scores, &candidate.scores),
        }
    })
}

/// Keeps the new model or puts the previous one back, by the canary's verdict.
async fn conclude(
    host: &Host,
    j: &mut Journal,
    outcome: Result<serde_json::Value, (String, serde_json::Value)>,
    previous: Previous,
) -> Step<Option<serde_json::Value>> {
    match outcome {
        Ok(figures) => {
            host.recorder().end_canary();
            // Anti-rollback rises only now: until the canary passed, the previous version is
            // where a rollback goes, and a rolled-back version never raised it.
            raise_minimum(host, j);
            j.reason = Some("the canary passed".to_owned());
            drop(previous);
            let data_dir = host.config.data_dir.clone();
            let _ = tokio::task::spawn_blocking(move || tidy_slots(&data_dir)).await;
            Ok(Some(figures))
        }
        Err((reason, figures)) => {
            let new_slot = j.slot.clone();
            roll_back_to(host, previous).await?;
            if let Some(slot) = new_slot {
                remove_slot(&slot, &host.serving().dir).await;
            }
            Err(Stop::RolledBack(reason, figures))
        }
    }
}

/// Records the version of `j` as the lowest this device accepts from now on for its name (a
/// signed downgrade sets it to itself). The update stands whatever happens: a failure is logged.
pub(crate) fn raise_minimum(host: &Host, j: &Journal) {
    let Some(ota) = &host.config.ota else { return };
    let recorded = j
        .version
        .parse::<semver::Version>()
        .map_err(|e| OtaError::Config(format!("the journal's version `{}`: {e}", j.version)))
        .and_then(|version| updater(&host.config, ota).and_then(|u| u.state().set_minimum(&j.name, &version)));
    if let Err(e) = recorded {
        tracing::error!(error = %e, name = %j.name, version = %j.version, "cannot record the new minimum version");
    }
}

/// Puts `previous` back in place of the serving model, and the pointer with it.
async fn roll_back_to(host: &Host, previous: Previous) -> Step<()> {
    let Previous { mut detector, serving } = previous;
    let costs = tokio::task::spawn_blocking(move || {
        let costs = measure::<Never, _>(&mut detector, &vigil_core::clock::SystemClock);
        (detector, costs)
    })
    .await
    .map_err(|_| failed("measuring the previous model panicked"))?;
    let (detector, costs) = costs;
    let costs = costs.map_err(|e| failed(format!("the previous model fails to run: {e}")))?;
    let rules = RuleSet::compile(&host.config, &serving.labels)
        .map_err(|e| failed(format!("the rules no longer fit the previous model: {e:#}")))?;
    let accepted = Accepted { detector, costs, rules, serving: serving.clone() };
    swap_in(host, accepted).await?;
    host.recorder().end_canary();
    models::write_active(&host.config.data_dir, &models::Active { slot: serving.dir.clone(), previous: None })
        .map_err(|e| failed(format!("the previous model serves again, but the pointer was not written: {e}")))?;
    tracing::warn!(model = %serving.model.name, version = %serving.model.version, "previous model serving again");
    Ok(())
}

/// The previous model of `j`, loaded and warmed (after a restart, for a rollback).
async fn load_previous(host: &Host, j: &Journal) -> Step<Previous> {
    let dir = j.previous.clone().ok_or_else(|| failed("the journal names no previous model to roll back to"))?;
    let config = host.config.clone();
    tokio::task::spawn_blocking(move || {
        let bundle = Bundle::load(&dir).map_err(|e| failed(format!("the previous model does not load: {e}")))?;
        let (bundle, detector) = vigil_infer::load_detector_with(&config, bundle)
            .map_err(|e| failed(format!("the previous model does not load: {e}")))?;
        Ok(Previous { serving: Serving::of(&bundle, &detector), detector })
    })
    .await
    .map_err(|_| failed("loading the previous model panicked"))?
}

/// After a restart in the canary: load the previous model (kept warm for a rollback), judge
/// the new one from a fresh window against the baseline kept in the journal.
async fn restart_canary(host: &Host, j: &mut Journal) -> Step<Option<serde_json::Value>> {
    let previous = load_previous(host, j).await?;
    let baseline: Window = j.baseline.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    host.recorder().start_canary(baseline);
    // Best effort: the journal already says the canary runs (or, killed while activating, the
    // pointer does; the next start finds the same).
    let _ = j.enter(&host.dir(), Phase::Canary);
    host.publish(j, None);
    let settings = canary_settings(j);
    let basis = basis(&previous.serving, &host.serving());
    let outcome = watch(host, j, &settings, basis).await;
    conclude(host, j, outcome, previous).await
}

/// Removes model slots that are neither active nor the rollback target.
fn tidy_slots(data_dir: &Path) {
    let keep: Vec<PathBuf> =
        models::read_active(data_dir).map(|a| [Some(a.slot), a.previous]).into_iter().flatten().flatten().collect();
    let Ok(entries) = std::fs::read_dir(models::models_dir(data_dir)) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() && !keep.contains(&path) {
            tracing::info!(slot = %path.display(), "removing a model slot no longer needed");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A removal the updater makes (here a model slot of 20 000 files) runs beside the runtime's
    /// other tasks, not in their way: on a one-thread runtime a ticker keeps ticking while it runs.
    /// Judged relative to the removal's own time, so that a busy machine slows both alike.
    #[tokio::test(flavor = "current_thread")]
    async fn removing_a_slot_leaves_the_async_runtime_free() {
        let d = tempfile::tempdir().unwrap();
        let slot = d.path().join("models/big-1.0.0");
        for i in 0..200 {
            let sub = slot.join(format!("{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            for j in 0..100 {
                std::fs::write(sub.join(format!("{j}")), b"x").unwrap();
            }
        }
        let gaps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let ticker = tokio::spawn({
            let (gaps, stop) = (gaps.clone(), stop.clone());
            async move {
                let mut last = std::time::Instant::now();
                while !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    gaps.lock().unwrap().push(last.elapsed());
                    last = std::time::Instant::now();
                }
            }
        });
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        remove_slot(&slot, &d.path().join("models/serving")).await;
        let took = started.elapsed();
        stop.cancel();
        ticker.await.unwrap();
        assert!(!slot.exists(), "removed");
        let worst = gaps.lock().unwrap().iter().copied().max().unwrap_or_default();
        assert!(worst < took / 2, "the runtime stalled {worst:?} of a {took:?} removal");
    }
}
