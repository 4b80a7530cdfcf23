//! Wires the service together and shuts it down in order, within a deadline.
//!
//! ```text
//! camera threads ──hub (1 slot/camera, newest wins)──▶ scheduler thread (detector, tracker, rules)
//! ──mpsc(64 batches, waits)──▶ store writer (snapshots, sled, flush) ──Notify──▶
//! uplink (outbox → MQTT, window max_inflight)
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::model::load_active_model;
use vigil_capture::{self as capture, CameraSpec, Platform};
use vigil_config::Config;
use vigil_core::clock::{Clock, SystemClock};
use vigil_core::event::{unix_ns, Event, ModelRef};
use vigil_core::hub::FrameHub;
use vigil_core::stats::CameraStats;
use vigil_core::topic;
use vigil_fleet::{commands, config_change, control};
use vigil_pipeline::queue::{event_queue, EventReceiver};
use vigil_pipeline::scheduler::{Scheduler, SchedulerStats, SnapshotRequests};
use vigil_pipeline::RuleSet;
use vigil_store::snapshot::{self, SaveOptions};
use vigil_store::{Retention, Store, StoreError};
use vigil_uplink::homeassistant::HaStates;
use vigil_uplink::{self as uplink, metrics, StatusModel, Uplink};

use crate::updates::Updates;
use crate::worker::Worker;

/// Batches of events between the scheduler and the store writer.
const EVENT_QUEUE: usize = 64;
/// Pictures (raw RGB) those batches may hold at once; past it `update` pictures are shed.
const EVENT_QUEUE_BYTES: usize = 64 << 20;
/// Whole-service shutdown deadline after the first signal.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// How long into a stop the store writer still encodes snapshots. A writer that has fallen
/// behind (a slow disk, a burst of events) could take longer than the deadline to encode what is
/// queued; past this point the rest is stored without new snapshots, so that every event is
/// stored and the uplink keeps its time to send them.
const SNAPSHOTS_AFTER_STOP: Duration = Duration::from_secs(1);
const STATS_EVERY: Duration = Duration::from_secs(10);
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
const STATUS_CHECK: Duration = Duration::from_secs(2);
const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// Commands waiting for the command worker.
const COMMAND_QUEUE: usize = 32;
/// Commands answered at once (each on a blocking thread).
const COMMANDS_AT_ONCE: usize = 4;

/// How the service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (a signal).
    Stopped,
    /// A fleet `restart` command: the caller exits with [`commands::RESTART_EXIT_CODE`].
    RestartRequested,
}

/// Runs the service until `shutdown` is cancelled (or a fleet command asks for a restart).
/// `config_path` is the file `config` came from (`None`: the embedded demo configuration); fleet
/// `config/set` rewrites it.
///
/// The stages, in the order they start (each a function below): the model, [`open_the_store`],
/// [`prepare_the_uplink`] (before any camera, so that a bad MQTT or TLS configuration stops vigil
/// at once), [`start_the_cameras`], [`start_the_scheduler`], [`start_the_store_writer`],
/// [`start_the_uplink`], the updater, [`start_the_fleet_commands`], [`start_the_housekeeping`],
/// then READY and the watchdog; [`Running::shut_down`] stops them in order.
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<Ended> {
    capture::init_gstreamer()?;
    // An update the last run left unfinished: a rollback puts the previous model back first.
    let update_start = vigil_update::before_model_loads(&config);
    // Under systemd the start deadline moves on while this runs (a TensorRT engine build).
    let (bundle, detector) = crate::systemd::extending_start(|| load_active_model(&config))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let labels: Arc<[String]> = detector.labels().into();
    let rules = RuleSet::compile(&config, &labels)?;
    // The service's clocks: the scheduler, expiry and retention's "now" all read this one.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = open_the_store(&config, &clock, &shutdown).await?;
    let change = config_change::on_start(&config);
    if change == config_change::Startup::RollBackNow {
        return Ok(Ended::RestartRequested);
    }
    let serving = vigil_update::Serving::of(&bundle, &detector);
    let model = serving.model.clone();
    tracing::info!(model = %model.name, version = %model.version, backend = %model.backend,
        events = store.store.event_count(), outbox = store.store.outbox_len(), "vigil starting");

    let uplink = prepare_the_uplink(&config, &model, &store.store)?;
    let cameras = start_the_cameras(&config, &bundle, &shutdown)?;
    let restart = CancellationToken::new();
    let updates = Updates::new(
        &config,
        serving,
        cameras.stats.clone(),
        uplink.status.clone(),
        config_path.clone(),
        restart.clone(),
    );
    let scheduler = start_the_scheduler(
        &config,
        (detector, labels, &rules),
        &cameras,
        &model,
        clock.clone(),
        (updates.swaps, updates.canary),
    )?;
    let writer = start_the_store_writer(&config, &store, scheduler.events, &uplink);
    let status_keeper = keep_the_status(&uplink.status, &cameras);
    let uplink_cancel = CancellationToken::new();
    let uplink_task = {
        let retained = uplink.uplink.with_retained(topic::ota(&config.device_id), updates.state);
        tokio::spawn(retained.run(uplink_cancel.clone()))
    };
    let updater = updates.task.spawn(update_start, cameras.cancel.clone());
    let fleet = Arc::new(commands::Fleet {
        config: Arc::new(config.clone()),
        started: std::time::Instant::now(),
        cameras: cameras.stats.clone(),
        inference: scheduler.stats.clone(),
        store: store.store.clone(),
        restart: restart.clone(),
        snapshots: scheduler.snapshots.clone(),
        config_path,
        labels: scheduler.labels.to_vec(),
        changing: Default::default(),
        updates: Some({
            let (handle, config) = (updates.fleet, Arc::new(config.clone()));
            Box::new(move |request_id: &str, args| handle.apply(&config, request_id, args))
        }),
    });
    let probation = crate::probation::config_change_reply(
        change,
        &config,
        &store.store,
        &uplink.wake,
        &uplink.status,
        &cameras.stats,
        &restart,
        &cameras.cancel,
    )
    .await;
    // It goes with the uplink, last, so that `events/tail` shows the shutdown's `end` messages.
    let control = uplink.control.map(|c| c.spawn(fleet.clone(), uplink.stored.clone(), uplink_cancel.clone()));
    let commander = start_the_fleet_commands(fleet, uplink.commands, &store.store, &uplink.wake, &cameras.cancel);
    let housekeeping =
        start_the_housekeeping(&config, &store, &cameras, &scheduler.stats, &uplink.wake, clock, &cameras.cancel);

    // Started: the store is open, the cameras and the scheduler run.
    let status_line = {
        let (stats, status) = (cameras.stats.clone(), uplink.status.clone());
        move || status_line(&stats, &status)
    };
    crate::systemd::ready(&status_line());
    let watchdog = start_the_watchdog(&cameras, &scheduler.stats, status_line);

    let ended = tokio::select! {
        _ = shutdown.cancelled() => Ended::Stopped,
        _ = restart.cancelled() => {
            tracing::warn!("restart requested over MQTT; stopping, to be started again by the supervisor");
            // Give the reply a moment to reach the broker before the uplink goes.
            tokio::time::sleep(Duration::from_millis(500)).await;
            shutdown.cancel();
            Ended::RestartRequested
        }
    };
    let running = Running {
        cameras,
        scheduler: scheduler.thread,
        sched_stats: scheduler.stats,
        writer,
        uplink: uplink_task,
        uplink_cancel,
        control,
        housekeeping,
        watchdog,
        aborted: [status_keeper, commander, updater].into_iter().chain(probation).collect(),
        store: store.store,
    };
    running.shut_down().await?;
    Ok(ended)
}

/// The store, opened (waiting for a `vigil events` command that holds it), with what an unclean
/// stop left open ended and the limits enforced; and what the writer and housekeeping need.
struct StoreStage {
    store: Store,
    events_topic: String,
    retention: Retention,
    min_free: u64,
}

async fn open_the_store(
    config: &Config,
    clock: &Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> anyhow::Result<StoreStage> {
    let store = open_store(&config.data_dir, shutdown).await?.with_outbox_limit(config.mqtt.outbox_max_messages);
    let events_topic = topic::events(&config.device_id);
    let retention = Retention::from_config(&config.store);
    let min_free = config.store.min_free_mb << 20;
    // Events an unclean stop left open are ended, then the limits enforced, on a blocking thread.
    let reopened = {
        let (store, topic, now) = (store.clone(), events_topic.clone(), unix_ns(clock.wall()));
        tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
            let reopened = store.close_open_events(&topic)?;
            store.make_room(min_free)?;
            store.enforce_retention(&retention, now)?;
            Ok(reopened)
        })
        .await??
    };
    if reopened > 0 {
        store.flush().await?;
        tracing::warn!(events = reopened, "events left open by an unclean stop were ended (reason `restart`)");
    }
    Ok(StoreStage { store, events_topic, retention, min_free })
}

/// The uplink set up (not yet running), with what it shares: the retained status, the wake-up
/// of the outbox, the fleet commands it receives, the local control socket.
struct UplinkStage {
    uplink: Uplink,
    wake: Arc<Notify>,
    status: uplink::SharedStatus,
    ha_states: HaStates,
    commands: mpsc::Receiver<(String, Vec<u8>)>,
    control: Option<control::Server>,
    stored: control::StoredEvents,
}

/// Before any camera starts, so that a bad MQTT or TLS configuration (a certificate issued to
/// another device would lose every message) stops vigil at once.
fn prepare_the_uplink(config: &Config, model: &ModelRef, store: &Store) -> anyhow::Result<UplinkStage> {
    let wake = Arc::new(Notify::new());
    let ha_states = HaStates::default();
    let status = uplink::SharedStatus::new(uplink::new_status(config, Some(StatusModel::from(model))));
    let (cmd_tx, commands) = mpsc::channel::<(String, Vec<u8>)>(COMMAND_QUEUE);
    // `vigil events …` reaches the running service here (the store is this process's alone).
    let control = control::Server::bind(&config.data_dir)
        .inspect_err(|e| {
            tracing::warn!(error = %e, "no local control socket: `vigil events` cannot read the store while vigil runs")
        })
        .ok();
    let (stored, _) = tokio::sync::broadcast::channel(control::TAIL_BURSTS);
    let mut uplink = Uplink::new(config, status.clone(), store.clone(), wake.clone())?.with_commands(cmd_tx);
    if config.mqtt.home_assistant {
        let cameras = config.cameras.iter().map(|c| c.id.clone()).collect();
        uplink = uplink.with_home_assistant(&config.mqtt.home_assistant_prefix, cameras, ha_states.clone());
    }
    Ok(UplinkStage { uplink, wake, status, ha_states, commands, control, stored })
}

/// The cameras: one capture thread each, into the latest-frame hub.
struct CameraStage {
    /// Each camera and its latency budget.
    specs: Vec<(CameraSpec, Duration)>,
    stats: Vec<Arc<CameraStats>>,
    hub: Arc<FrameHub<vigil_capture::Frame>>,
    /// Shared with systemd's watchdog, which checks that each thread still lives.
    threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    /// Capture and inference stop first, at the stop; everything that runs with them too.
    cancel: CancellationToken,
}

fn start_the_cameras(
    config: &Config,
    bundle: &vigil_infer::Bundle,
    shutdown: &CancellationToken,
) -> anyhow::Result<CameraStage> {
    let platform = Arc::new(Platform::detect());
    tracing::info!(platform = %platform.name, gstreamer = ?platform.gst, "capture platform");
    let specs: Vec<(CameraSpec, Duration)> = config
        .cameras
        .iter()
        .enumerate()
        .map(|(i, c)| (CameraSpec::from_config(config, i), config.camera_budget(c, bundle.manifest.budget.latency)))
        .collect();
    let stats: Vec<Arc<CameraStats>> = specs.iter().map(|(spec, _)| Arc::new(CameraStats::new(&spec.id))).collect();
    let hub = Arc::new(FrameHub::new(stats.clone()));
    let cancel = shutdown.child_token();
    let mut threads = Vec::new();
    for (i, (spec, _)) in specs.iter().enumerate() {
        tracing::info!(camera = %spec.id, uri = %config.cameras[i].uri.redacted(), "camera configured");
        threads.push(capture::spawn_camera(spec.clone(), platform.clone(), hub.clone(), cancel.clone())?);
    }
    Ok(CameraStage { specs, stats, hub, threads: Arc::new(std::sync::Mutex::new(threads)), cancel })
}

/// The scheduler's thread (the production worker: detector, tracker, rules) and what it shares.
struct SchedulerStage {
    thread: std::thread::JoinHandle<()>,
    stats: Arc<SchedulerStats>,
    snapshots: SnapshotRequests,
    /// Event batches for the store writer.
    events: EventReceiver,
    labels: Arc<[String]>,
}

/// The model's detector, its labels and the rules compiled for them.
type Model<'a> = (vigil_infer::Detector, Arc<[String]>, &'a RuleSet);
/// From the updater: models to swap in, and the canary's record of each frame.
type FromUpdater =
    (std::sync::mpsc::Receiver<vigil_update::Swap>, Arc<std::sync::Mutex<vigil_pipeline::canary::Recorder>>);

fn start_the_scheduler(
    config: &Config,
    (detector, labels, rules): Model<'_>,
    cameras: &CameraStage,
    model: &ModelRef,
    clock: Arc<dyn Clock>,
    (swaps, canary): FromUpdater,
) -> anyhow::Result<SchedulerStage> {
    let (events_tx, events) = event_queue(EVENT_QUEUE, EVENT_QUEUE_BYTES);
    let camera_ids: Vec<&str> = cameras.specs.iter().map(|c| &*c.0.id).collect();
    let stats = Arc::new(SchedulerStats::new(&camera_ids));
    let snapshots = SnapshotRequests::default();
    let mut scheduler =
        Scheduler::new(detector, cameras.specs.iter().map(|c| c.1).collect(), clock.clone(), stats.clone());
    // Before READY: the watchdog starts with READY and needs the scheduler's turns.
    crate::systemd::extending_start(|| crate::worker::warm_up(&mut scheduler));
    let worker = Worker {
        hub: cameras.hub.clone(),
        scheduler,
        cameras: camera_ids.iter().map(|id| rules.camera(id, &config.device_id, model, labels.clone())).collect(),
        stats: stats.clone(),
        events: events_tx,
        snapshots: snapshots.clone(),
        clock,
        swaps,
        canary,
    };
    let cancel = cameras.cancel.clone();
    let thread = std::thread::Builder::new().name("scheduler".into()).spawn(move || worker.run(&cancel))?;
    Ok(SchedulerStage { thread, stats, snapshots, events, labels })
}

/// The store writer: snapshots and events made durable, then the uplink woken.
struct WriterStage {
    task: tokio::task::JoinHandle<()>,
    /// Cancelled SNAPSHOTS_AFTER_STOP into a stop: the writer then stores what is still queued
    /// without encoding new snapshots.
    snapshot_cutoff: CancellationToken,
}

fn start_the_store_writer(
    config: &Config,
    store: &StoreStage,
    events: EventReceiver,
    uplink: &UplinkStage,
) -> WriterStage {
    let snapshot_cutoff = CancellationToken::new();
    let task = tokio::spawn(write_events(
        store.store.clone(),
        events,
        store.events_topic.clone(),
        SaveOptions {
            quality: config.events.snapshot_quality,
            workers: snapshot::default_workers(),
            cutoff: snapshot_cutoff.clone(),
        },
        store.min_free,
        Told {
            wake: uplink.wake.clone(),
            status: uplink.status.clone(),
            home_assistant: config.mqtt.home_assistant.then(|| uplink.ha_states.clone()),
            stored: uplink.stored.clone(),
        },
    ));
    WriterStage { task, snapshot_cutoff }
}

/// The retained status follows the cameras: republished when a camera changes state, and at
/// least every STATUS_REFRESH for the uptime.
fn keep_the_status(status: &uplink::SharedStatus, cameras: &CameraStage) -> tokio::task::JoinHandle<()> {
    let (status, stats) = (status.clone(), cameras.stats.clone());
    let started = std::time::Instant::now();
    let mut published = started;
    periodic(STATUS_CHECK, cameras.cancel.clone(), move || {
        status.update(|s| {
            let cameras: Vec<uplink::CameraStatus> =
                stats.iter().map(|c| uplink::CameraStatus { id: c.id.to_string(), state: c.state() }).collect();
            if cameras == s.cameras && published.elapsed() < STATUS_REFRESH {
                return false;
            }
            s.cameras = cameras;
            s.uptime_s = started.elapsed().as_secs();
            published = std::time::Instant::now();
            true
        });
        std::future::ready(())
    })
}

/// Fleet commands from the uplink, each answered on a blocking thread of its own, at most
/// COMMANDS_AT_ONCE at a time (queries read the store, a snapshot waits for a frame), so that
/// one slow command does not hold up the next; the reply goes through the outbox.
fn start_the_fleet_commands(
    fleet: Arc<commands::Fleet>,
    mut commands: mpsc::Receiver<(String, Vec<u8>)>,
    store: &Store,
    wake: &Arc<Notify>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (store, wake, cancel) = (store.clone(), wake.clone(), cancel.clone());
    let running = Arc::new(tokio::sync::Semaphore::new(COMMANDS_AT_ONCE));
    tokio::spawn(async move {
        loop {
            let (name, payload) = tokio::select! {
                _ = cancel.cancelled() => return,
                got = commands.recv() => match got { Some(c) => c, None => return },
            };
            let Ok(permit) = running.clone().acquire_owned().await else { return };
            let (f, store, wake) = (fleet.clone(), store.clone(), wake.clone());
            tokio::spawn(async move {
                let answered = tokio::task::spawn_blocking(move || f.answer(&name, &payload)).await;
                drop(permit);
                let (topic, reply) = match answered {
                    Ok(Some(reply)) => reply,
                    Ok(None) => return, // answered later (config/set)
                    Err(_) => {
                        tracing::error!("a fleet command panicked");
                        return;
                    }
                };
                queue_and_flush(&store, &wake, &topic, &reply, "command reply").await;
            });
        }
    })
}

/// The periodic work beside the pipeline: the stats log, retention, the free-space guard and the
/// `metrics` message.
struct Housekeeping {
    reporter: tokio::task::JoinHandle<()>,
    retainer: tokio::task::JoinHandle<()>,
    disk_guard: tokio::task::JoinHandle<()>,
    metrics: Option<tokio::task::JoinHandle<()>>,
}

fn start_the_housekeeping(
    config: &Config,
    store: &StoreStage,
    cameras: &CameraStage,
    sched: &Arc<SchedulerStats>,
    wake: &Arc<Notify>,
    clock: Arc<dyn Clock>,
    cancel: &CancellationToken,
) -> Housekeeping {
    let reporter = {
        let (stats, sched, store) = (cameras.stats.clone(), sched.clone(), store.store.clone());
        periodic(STATS_EVERY, cancel.clone(), move || {
            log_stats(&stats, &sched, &store);
            std::future::ready(())
        })
    };
    // Retention and the disk guard walk and delete sled records and files: blocking work, on
    // blocking threads, never on the two async workers the uplink and the commands share.
    let retainer = {
        let (store, retention) = (store.store.clone(), store.retention);
        periodic(RETENTION_EVERY, cancel.clone(), move || {
            let (store, now) = (store.clone(), unix_ns(clock.wall()));
            blocking("retention pass", move || store.enforce_retention(&retention, now).map(drop))
        })
    };
    let disk_guard = {
        let (store, min_free) = (store.store.clone(), store.min_free);
        periodic(DISK_CHECK_EVERY, cancel.clone(), move || {
            let store = store.clone();
            blocking("free-space guard", move || store.make_room(min_free).map(drop))
        })
    };
    let metrics = config.mqtt.metrics_every.map(|every| {
        let (stats, sched, store, wake) = (cameras.stats.clone(), sched.clone(), store.store.clone(), wake.clone());
        let device_id = config.device_id.clone();
        let topic = topic::metrics(&device_id);
        let started = std::time::Instant::now();
        periodic(every, cancel.clone(), move || {
            let m = metrics::Metrics::collect(&device_id, started, &stats, &sched, &store);
            let payload = serde_json::to_vec(&m).expect("metrics always serialise");
            let (store, wake, topic) = (store.clone(), wake.clone(), topic.clone());
            async move { queue_and_flush(&store, &wake, &topic, &payload, "metrics").await }
        })
    });
    Housekeeping { reporter, retainer, disk_guard, metrics }
}

/// systemd's watchdog, when the unit has one: pinged while the scheduler turns and every
/// camera thread lives.
fn start_the_watchdog(
    cameras: &CameraStage,
    sched: &Arc<SchedulerStats>,
    status_line: impl Fn() -> String + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    crate::systemd::watchdog_period().map(|period| {
        let sched = sched.clone();
        let (threads, stats) = (cameras.threads.clone(), cameras.stats.clone());
        // A file played once ends its thread (`finished`): that camera is done, not dead.
        let dead = move || {
            let threads = threads.lock().unwrap_or_else(|p| p.into_inner());
            threads
                .iter()
                .zip(&stats)
                .filter(|(t, s)| t.is_finished() && s.state() != vigil_core::stats::CameraState::Finished)
                .map(|(_, s)| s.id.to_string())
                .collect()
        };
        crate::systemd::spawn_watchdog(
            period,
            move || sched.turns.load(std::sync::atomic::Ordering::Relaxed),
            dead,
            status_line,
            cameras.cancel.clone(),
        )
    })
}

/// What runs, for the ordered shutdown.
struct Running {
    cameras: CameraStage,
    scheduler: std::thread::JoinHandle<()>,
    sched_stats: Arc<SchedulerStats>,
    writer: WriterStage,
    uplink: tokio::task::JoinHandle<()>,
    uplink_cancel: CancellationToken,
    control: Option<tokio::task::JoinHandle<()>>,
    housekeeping: Housekeeping,
    /// Stopped first: systemd is told STOPPING.
    watchdog: Option<tokio::task::JoinHandle<()>>,
    /// The status keeper, the fleet commands, the updater and the probation: aborted at the end.
    aborted: Vec<tokio::task::JoinHandle<()>>,
    store: Store,
}

impl Running {
    /// Capture and inference stop first; the writer drains what they made; the uplink goes
    /// last; the store is closed. Each within SHUTDOWN_DEADLINE of the start of the stop; what
    /// does not end by then is named in the error.
    async fn shut_down(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        crate::systemd::stopping();
        let Running {
            cameras,
            scheduler,
            sched_stats,
            writer,
            uplink,
            uplink_cancel,
            control,
            housekeeping,
            watchdog,
            aborted,
            store,
        } = self;
        if let Some(w) = watchdog {
            w.abort();
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
        let cutoff = writer.snapshot_cutoff;
        tokio::spawn(async move {
            tokio::time::sleep(SNAPSHOTS_AFTER_STOP).await;
            cutoff.cancel();
        });
        cameras.hub.close();
        let mut stuck: Vec<String> = Vec::new();
        let sched_join = tokio::task::spawn_blocking(move || scheduler.join());
        if tokio::time::timeout_at(deadline, sched_join).await.is_err() {
            stuck.push("scheduler".into());
        }
        if tokio::time::timeout_at(deadline, writer.task).await.is_err() {
            stuck.push("store writer".into());
        }
        uplink_cancel.cancel();
        if tokio::time::timeout_at(deadline, uplink).await.is_err() {
            stuck.push("uplink".into());
        }
        if let Some(c) = control {
            let _ = tokio::time::timeout_at(deadline, c).await;
        }
        housekeeping.reporter.abort();
        // These two end after their current pass (their blocking work cannot be aborted), before
        // the store is closed.
        for (name, task) in [("retention", housekeeping.retainer), ("free-space guard", housekeeping.disk_guard)] {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                stuck.push(name.into());
            }
        }
        for task in aborted {
            task.abort();
        }
        if let Some(m) = housekeeping.metrics {
            m.abort();
        }
        let threads = std::mem::take(&mut *cameras.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, t) in threads.into_iter().enumerate() {
            let join = tokio::task::spawn_blocking(move || t.join());
            if tokio::time::timeout_at(deadline, join).await.is_err() {
                stuck.push(format!("camera {}", cameras.specs[i].0.id));
            }
        }
        // With every writer stopped the store is closed cleanly (its counts written down, so the
        // next start need not count); with one still running, only flushed (the next start counts).
        let closed = if stuck.is_empty() { store.close().await } else { store.flush().await };
        if let Err(e) = closed {
            tracing::error!(error = %e, "final store flush failed");
        }
        log_stats(&cameras.stats, &sched_stats, &store);
        if stuck.is_empty() {
            tracing::info!("stopped cleanly");
            Ok(())
        } else {
            anyhow::bail!("shutdown deadline passed; still running: {}", stuck.join(", "))
        }
    }
}

/// `systemctl status`'s line: cameras streaming, the model serving, the broker.
fn status_line(cameras: &[Arc<CameraStats>], status: &uplink::SharedStatus) -> String {
    let streaming = cameras.iter().filter(|c| c.state() == vigil_core::stats::CameraState::Streaming).count();
    let now = status.get();
    let model = now.model.map_or("no model".to_owned(), |m| format!("model {} {} on {}", m.name, m.version, m.backend));
    let broker = if status.has_connected() { "broker reached" } else { "broker not reached yet" };
    let store = if now.store_error.is_some() { "; the store refuses writes: events lost" } else { "" };
    format!("{streaming}/{} cameras streaming; {model}; {broker}{store}", cameras.len())
}

/// Appends `events`; on a full disk makes room (the oldest events go) and tries once more.
fn append_making_room(store: &Store, events: &[Event], topic: &str, min_free: u64) -> Result<(), StoreError> {
    match store.append(events, topic) {
        Err(e) if e.is_disk_full() => {
            tracing::error!(error = %e, events = events.len(), "disk full: making room and retrying");
            let freed = match store.make_room(min_free.max(1))? {
                0 => store.evict_oldest(EMERGENCY_EVICTION)?,
                n => n,
            };
            tracing::warn!(freed, "room made for the newest events");
            store.append(events, topic)
        }
        other => other,
    }
}

/// Runs blocking store work on a blocking thread; logs its failure as `what`.
async fn blocking(what: &'static str, work: impl FnOnce() -> Result<(), StoreError> + Send + 'static) {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
        Err(e) => tracing::error!(error = %e, "{what} panicked"),
    }
}

/// Runs `tick` every `period` (the first time one period after the start) until `cancel`.
fn periodic<F, Fut>(period: Duration, cancel: CancellationToken, mut tick: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => tick().await,
            }
        }
    })
}

/// Queues one non-event message in the outbox, makes it durable and wakes the uplink.
pub(crate) async fn queue_and_flush(store: &Store, wake: &Notify, topic: &str, payload: &[u8], what: &str) {
    if let Err(e) = store.enqueue(topic, payload) {
        tracing::error!(error = %e, "cannot queue the {what}");
        return;
    }
    match store.flush().await {
        Ok(()) => wake.notify_one(),
        Err(e) => tracing::error!(error = %e, "cannot flush the store ({what})"),
    }
}

/// Whom the store writer tells what it stored, or that it could not.
struct Told {
    /// The uplink, after each durable burst.
    wake: Arc<Notify>,
    /// The retained status: `store_error` while the store refuses writes.
    status: uplink::SharedStatus,
    home_assistant: Option<HaStates>,
    /// `vigil events tail`.
    stored: control::StoredEvents,
}

/// Makes batches durable, then wakes the uplink: snapshots first (encoded, written and synced),
/// then the event messages (one sled flush). Drains what is already queued into one flush so that
/// durability costs one fsync per burst, not per event.
async fn write_events(
    store: Store,
    mut rx: EventReceiver,
    topic: String,
    snapshots: SaveOptions,
    min_free: u64,
    told: Told,
) {
    let Told { wake, status, home_assistant, stored } = told;
    while let Some(batch) = rx.recv().await {
        let mut burst = batch;
        while burst.len() < 1024 {
            match rx.try_recv() {
                Some(more) => burst.extend(more),
                None => break,
            }
        }
        // Snapshots and the sled transactions are blocking work: one blocking thread per burst.
        let (s, options, t) = (store.clone(), snapshots.clone(), topic.clone());
        let written = tokio::task::spawn_blocking(move || {
            let saved = snapshot::save(&s, burst, &options);
            let appended = append_making_room(&s, &saved.events, &t, min_free);
            (saved, appended)
        })
        .await;
        let Ok((saved, appended)) = written else {
            tracing::error!("the store writer panicked; events of this burst are lost");
            continue;
        };
        if saved.skipped > 0 {
            tracing::warn!(
                skipped = saved.skipped,
                after_s = SNAPSHOTS_AFTER_STOP.as_secs(),
                "stopping: events still queued are stored without new snapshots, to stop in time"
            );
        }
        let events = saved.events;
        if let Err(e) = appended {
            tracing::error!(error = %e, events = events.len(), "cannot store events; they are lost");
            status.set_store_error(Some(e.to_string()));
            continue;
        }
        if let Err(e) = store.flush().await {
            tracing::error!(error = %e, "cannot flush the store; events are not yet durable");
            status.set_store_error(Some(e.to_string()));
            continue;
        }
        status.set_store_error(None);
        wake.notify_one();
        if let Some(ha) = &home_assistant {
            ha.record(&events);
        }
        if stored.receiver_count() > 0 {
            let _ = stored.send(events.into()); // for `vigil events tail`
        }
    }
}

/// How long the service waits for a store another process holds (a `vigil events` command
/// reading a stopped service's store) before it gives up.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(30);

async fn open_store(data_dir: &std::path::Path, shutdown: &CancellationToken) -> anyhow::Result<Store> {
    let give_up = tokio::time::Instant::now() + STORE_LOCK_WAIT;
    let mut warned = false;
    loop {
        let dir = data_dir.to_owned();
        match tokio::task::spawn_blocking(move || Store::open(&dir)).await? {
            Err(StoreError::Locked(path)) if tokio::time::Instant::now() < give_up => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(store = %path.display(), wait_s = STORE_LOCK_WAIT.as_secs(),
                        "another process holds the store (a `vigil events` command?); waiting for it");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the store"),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            other => return Ok(other?),
        }
    }
}

/// Events deleted to make room when a write failed and the disk did not look full.
const EMERGENCY_EVICTION: usize = 100;

fn log_stats(cameras: &[Arc<CameraStats>], sched: &SchedulerStats, store: &Store) {
    use std::sync::atomic::Ordering::Relaxed;
    for c in cameras {
        let s = c.snapshot();
        tracing::info!(camera = %s.id, state = ?s.state, path = s.decode_path.as_deref().unwrap_or(""),
            fps_in = format_args!("{:.1}", s.fps_in), fps_out = format_args!("{:.1}", s.fps_out),
            frames_in = s.frames_in, missing = s.frames_missing, dropped_overwritten = s.dropped_overwritten,
            dropped_before_keyframe = s.dropped_before_keyframe, dropped_decode_error = s.dropped_decode_error,
            decode_errors = s.decode_errors, reconnects = s.reconnects, stalls = s.stalls,
            since_last_frame_ms = s.since_last_frame_ms.unwrap_or(0),
            last_error = s.last_error.as_deref().unwrap_or(""), "camera stats");
    }
    for c in &sched.cameras {
        let s = c.snapshot();
        tracing::info!(camera = %s.id, processed = s.processed, dropped_stale = s.dropped_stale,
            dropped_error = s.dropped_error, deadline_misses = s.deadline_misses,
            total_p50_ms = s.total.p50_ms, total_p95_ms = s.total.p95_ms, total_p99_ms = s.total.p99_ms,
            queue_p95_ms = s.queue.p95_ms, preprocess_p95_ms = s.preprocess.p95_ms,
            inference_p95_ms = s.inference.p95_ms, postprocess_p95_ms = s.postprocess.p95_ms, "inference stats");
    }
    tracing::info!(
        processed = sched.processed(),
        dropped_stale = sched.dropped_stale(),
        deadline_misses = sched.deadline_misses(),
        batches = sched.batches.load(Relaxed),
        events = sched.events.load(Relaxed),
        outbox = store.outbox_len(),
        outbox_evicted = store.outbox_evicted(),
        "inference totals"
    );
}
