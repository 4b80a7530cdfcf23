//! The updater's place in the service: the channels between it, the scheduler's thread,
//! the fleet commands and the uplink (see `vigil_update`).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use vigil_config::Config;
use vigil_core::stats::CameraStats;
use vigil_pipeline::canary::Recorder;
use vigil_update::requests::{self, UpdateRequest};
use vigil_update::{Host, Serving, StartAction, Swap};
use vigil_uplink::{SharedStatus, StatusModel};

/// Requests waiting for the updater: one (a second is refused while one runs).
const REQUESTS: usize = 1;

pub struct Updates {
    /// The updater itself, to be spawned once the scheduler runs.
    pub task: Task,
    /// For the scheduler's thread.
    pub swaps: std::sync::mpsc::Receiver<Swap>,
    pub canary: Arc<Mutex<Recorder>>,
    /// For the uplink: the retained `ota` states, each to reach the broker.
    pub state: Arc<vigil_uplink::retained::RetainedLog>,
    /// For the fleet commands.
    pub fleet: requests::Updates,
}

impl Updates {
    pub fn new(
        config: &Config,
        serving: Serving,
        cameras: Vec<Arc<CameraStats>>,
        status: SharedStatus,
        config_path: Option<std::path::PathBuf>,
        restart: CancellationToken,
    ) -> Self {
        let (swap_tx, swaps) = std::sync::mpsc::sync_channel(1);
        let (tx, requests) = tokio::sync::mpsc::channel(REQUESTS);
        let state = Arc::new(vigil_uplink::retained::RetainedLog::new());
        let window =
            config.ota.as_ref().map_or(vigil_config::CanaryConfig::default().min_frames, |o| o.canary.min_frames);
        let canary = Arc::new(Mutex::new(Recorder::new(window)));
        let busy = Arc::new(AtomicBool::new(false));
        let preemptible = Arc::new(AtomicBool::new(false));
        let host = Arc::new(Host {
            config: Arc::new(config.clone()),
            swaps: swap_tx,
            canary: canary.clone(),
            cameras,
            state: Box::new({
                let log = state.clone();
                move |key, payload, acked| log.push(key, payload, acked)
            }),
            busy: busy.clone(),
            preemptible: preemptible.clone(),
            serving: Mutex::new(serving),
            config_path,
            restart,
            connected: Box::new({
                let status = status.clone();
                move || status.has_connected()
            }),
            on_model: Box::new(move |m| {
                let model = StatusModel::from(m);
                status.update(|s| {
                    s.model = Some(model);
                    true
                });
            }),
        });
        Self { task: Task { host, requests }, swaps, canary, state, fleet: requests::Updates { tx, busy, preemptible } }
    }
}

pub struct Task {
    host: Arc<Host>,
    requests: tokio::sync::mpsc::Receiver<UpdateRequest>,
}

impl Task {
    /// Runs the updater until `cancel`; `resume` is what the last run left (see
    /// `vigil_update::before_model_loads`).
    pub fn spawn(self, resume: StartAction, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(vigil_update::run(self.host, self.requests, resume, cancel))
    }
}
