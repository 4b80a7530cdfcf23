//! Updates on the device: of models, and of vigil's own binary (`binary`, `slots`). This crate
//! owns the update's state on disk and its bookkeeping for both: the API requests come in by
//! ([`requests`]), the journal and the recovery at start ([`journal`], `start`, `binary`), model
//! slots ([`models`]), binary slots ([`slots`]) and what stays in the updater's directory between
//! updates (`disk`). `vigil-ota` is the TUF client and transport underneath.
//!
//! Model updates: `ota/apply` → download (TUF, resumable) → verify and stage into a
//! new slot → acceptance on this device's backend → hot swap between two scheduler rounds →
//! canary against the previous model → kept, or rolled back to the previous model (kept warm
//! until the verdict). Each step is written to the journal (`crate::journal`) before it
//! starts and published on the retained `vigil/<id>/ota` topic, so that the fleet sees it and a
//! device killed at any step resumes, abandons or rolls back cleanly at its next start.
//!
//! The scheduler's thread owns the serving model; this crate never touches it. It hands a
//! warmed [`Swap`] to that thread, which puts it in place between two rounds and hands the old
//! model back ([`Swapped`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use vigil_config::Config;
use vigil_core::event::ModelRef;
use vigil_core::stats::CameraStats;
use vigil_infer::Detector;
use vigil_pipeline::canary::Recorder;
use vigil_pipeline::scheduler::WarmCosts;
use vigil_pipeline::CameraEvents;

use crate::journal::{Journal, Phase};

mod binary;
mod disk;
mod flow;
pub mod journal;
pub mod models;
pub mod requests;
pub mod slots;
mod start;

pub use flow::run;
pub use start::{before_model_loads, StartAction};

/// A warmed model for the scheduler's thread to put in place between two rounds.
pub struct Swap {
    pub detector: Detector,
    pub costs: WarmCosts,
    /// Each camera's event state under the new model (rules compiled against its labels).
    pub cameras: Vec<CameraEvents>,
    /// Each camera's budget under the new model (its own, else the new bundle's), in the
    /// scheduler's camera order.
    pub budgets: Vec<std::time::Duration>,
    /// Answered once the new model has served a round (or the scheduler stopped: dropped).
    pub done: tokio::sync::oneshot::Sender<Swapped>,
}

/// What the scheduler's thread hands back after a swap.
pub struct Swapped {
    /// The model that served before, still loaded and warm (the rollback target).
    pub old: Detector,
    /// Frames lost from the last round before the swap to the first round after it: newer
    /// frames overwriting waiting ones, frames dropped as stale, deadline misses, errors.
    pub frames_lost: u64,
}

/// The model serving now: what an update replaces and a rollback restores.
#[derive(Debug, Clone)]
pub struct Serving {
    pub model: ModelRef,
    /// Its bundle directory (a slot, or the configured bundle).
    pub dir: PathBuf,
    pub labels: Vec<String>,
    /// Its bundle's latency budget: a camera without a budget of its own gets this one.
    pub budget: std::time::Duration,
}

impl Serving {
    /// What `detector`, loaded from `bundle`, serves as.
    pub fn of(bundle: &vigil_infer::Bundle, detector: &Detector) -> Self {
        let m = &bundle.manifest.model;
        Self {
            model: ModelRef {
                name: m.name.clone(),
                version: m.version.clone(),
                backend: detector.backend_name().to_owned(),
            },
            dir: bundle.dir.clone(),
            labels: detector.labels().to_vec(),
            budget: bundle.manifest.budget.latency,
        }
    }
}

/// Where the updater's retained `ota` states go (see [`Host::state`]).
pub type StateSink = Box<dyn Fn(&str, Vec<u8>, Option<tokio::sync::oneshot::Sender<()>>) + Send + Sync>;

/// What the service lends the updater.
pub struct Host {
    pub config: Arc<Config>,
    /// To the scheduler's thread (capacity 1).
    pub swaps: std::sync::mpsc::SyncSender<Swap>,
    /// The scheduler's thread records every frame's outcome here.
    pub canary: Arc<Mutex<Recorder>>,
    pub cameras: Vec<Arc<CameraStats>>,
    /// Publishes a retained `ota` state: (what it is a state of, for coalescing progress; the
    /// JSON; told once the broker has it). Every state reaches the broker in order (the
    /// uplink's retained log).
    pub state: StateSink,
    /// Set while an update is under way (`ota/apply` refuses a second).
    pub busy: Arc<AtomicBool>,
    /// Set while the update under way is a periodic check that has not gone past its download:
    /// `ota/apply` is taken then, and the check gives way to it (docs/ota.md).
    pub preemptible: Arc<AtomicBool>,
    pub serving: Mutex<Serving>,
    /// Told when another model starts serving (the retained status names it).
    pub on_model: Box<dyn Fn(&ModelRef) + Send + Sync>,
    /// The configuration file vigil runs on (`None`: the embedded demo): a new binary must
    /// accept it.
    pub config_path: Option<PathBuf>,
    /// Cancelled to have vigil exit for its supervisor to start it again (into a new binary).
    pub restart: tokio_util::sync::CancellationToken,
    /// Whether the broker has accepted a connection since the start (a new binary's health).
    pub connected: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Host {
    /// The updater's own directory: the TUF state, downloads, the journal.
    pub fn dir(&self) -> PathBuf {
        ota_dir(&self.config.data_dir)
    }

    pub fn serving(&self) -> Serving {
        self.serving.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_serving(&self, s: Serving) {
        (self.on_model)(&s.model);
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.canary.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `journal` (and `extra` figures) on the retained topic.
    fn publish(&self, journal: &Journal, extra: Option<serde_json::Value>) {
        self.publish_with(journal, extra, None);
    }

    fn publish_with(
        &self,
        journal: &Journal,
        extra: Option<serde_json::Value>,
        acked: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let state = PublicState::of(journal, extra);
        let key = format!("{}:{:?}", journal.request_id, journal.phase);
        (self.state)(&key, serde_json::to_vec(&state).expect("the OTA state serialises"), acked);
    }

    /// Publishes the outcome in `journal` and records it reported once the broker has it: a
    /// vigil stopped before that reports it again at its next start.
    fn publish_outcome(&self, journal: &Journal, extra: Option<serde_json::Value>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.publish_with(journal, extra, Some(tx));
        let (dir, request, phase) = (self.dir(), journal.request_id.clone(), journal.phase);
        tokio::spawn(async move {
            if rx.await.is_ok() {
                let _ = tokio::task::spawn_blocking(move || mark_reported(&dir, &request, phase)).await;
            }
        });
    }

    /// Marks an update as under way (`true`) or over; returns whether one was under way.
    fn set_busy(&self, busy: bool) -> bool {
        self.busy.swap(busy, Ordering::SeqCst)
    }
}

/// The journal in `dir` records that the outcome `phase` of `request` reached the broker (unless a
/// newer update has replaced it meanwhile).
fn mark_reported(dir: &Path, request: &str, phase: crate::journal::Phase) {
    // The next update may have started meanwhile: its journal is left as it is.
    let marked = Journal::update(dir, |j| {
        let this = j.request_id == request && j.phase == phase && !j.reported;
        j.reported |= this;
        this
    });
    if let Err(e) = marked {
        tracing::warn!(error = %e, "cannot record that the update's outcome was reported");
    }
}

/// `<data_dir>/ota`.
pub fn ota_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ota")
}

/// The retained `vigil/<id>/ota` message.
#[derive(Debug, Serialize)]
pub struct PublicState<'a> {
    pub request_id: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub target: &'a str,
    pub state: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Progress and figures of the step (bytes downloaded, acceptance latency, canary windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    pub at: String,
}

impl<'a> PublicState<'a> {
    fn of(j: &'a Journal, detail: Option<serde_json::Value>) -> Self {
        Self {
            request_id: &j.request_id,
            name: &j.name,
            version: &j.version,
            target: &j.target,
            state: j.phase,
            reason: j.reason.as_deref(),
            detail,
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }
}
