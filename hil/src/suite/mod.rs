//! The acceptance suite: the same scenarios on every target, each naming the capabilities it
//! needs (skipped, with the reason, where the target lacks one), each leaving figures, pictures'
//! data and, when it failed, the target's logs in the report.

mod clock;
mod disk;
mod ota;
mod scenarios;
mod systemd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use vigil_core::event::{Event, Phase};

use crate::rig::Rig;
use crate::target::{Boot, Capability, Target};

pub use scenarios::all;

/// What the suite is asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The soak's length (a minute in CI; hours in a lab).
    pub soak: Duration,
    /// Only the scenarios named here (all when empty).
    pub only: Vec<String>,
    /// Scenarios left out of this run, each with why: reported skipped with that reason.
    pub skip: Vec<(String, String)>,
    /// A newer vigil for the target and its version: the good binary of the binary updates.
    pub next_vigil: Option<(std::path::PathBuf, String)>,
    /// A newer revision of the target's vigil package (the package's upgrade scenario).
    pub upgrade_deb: Option<std::path::PathBuf>,
}

/// A scenario's way to say it cannot run here (and why): reported skipped, not failed.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// One scenario of the suite.
pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    pub needs: &'static [Capability],
    pub run: fn(&mut Ctx) -> Result<()>,
}

/// A histogram of samples (latencies), with its summary.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub name: String,
    pub unit: String,
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    /// (lower edge, upper edge, samples) per bin.
    pub bins: Vec<(f64, f64, usize)>,
}

impl Histogram {
    /// Samples binned in `bins` equal bins from 0 to the largest.
    pub fn of(name: &str, unit: &str, samples: &[f64], bins: usize) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * p).round() as usize] };
        let max = v.last().copied().unwrap_or(0.0);
        let width = if max > 0.0 { max / bins as f64 } else { 1.0 };
        let mut counts = vec![0usize; bins.max(1)];
        for s in &v {
            let i = ((s / width) as usize).min(counts.len() - 1);
            counts[i] += 1;
        }
        let bins = counts.into_iter().enumerate().map(|(i, c)| (i as f64 * width, (i + 1) as f64 * width, c)).collect();
        Self { name: name.into(), unit: unit.into(), count: v.len(), p50: q(0.5), p95: q(0.95), max, bins }
    }
}

/// Values over time (seconds since the scenario started).
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub unit: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

/// What one scenario left.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub summary: String,
    pub status: Status,
    /// Why it failed or was skipped.
    pub message: Option<String>,
    pub seconds: f64,
    pub figures: BTreeMap<String, f64>,
    pub histograms: Vec<Histogram>,
    pub series: Vec<Series>,
    /// The target's log over the scenario, when it failed.
    pub log: Option<String>,
    /// Checks the scenario could not apply on this target, and why (never passed silently).
    pub not_checked: BTreeMap<String, String>,
    /// The target's boots after the scenario's power cuts (targets that boot: a board, the vm).
    pub boots: Vec<Boot>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub target: String,
    pub kind: String,
    /// What `vigil --version` says on the target.
    pub vigil_version: String,
    pub started_at: String,
    pub seconds: f64,
    pub scenarios: Vec<ScenarioReport>,
}

impl SuiteReport {
    pub fn count(&self, status: Status) -> usize {
        self.scenarios.iter().filter(|s| s.status == status).count()
    }
}

/// A scenario's view of the target and the rig, and the figures it records.
pub struct Ctx<'a> {
    pub target: &'a mut dyn Target,
    pub rig: &'a mut Rig,
    pub settings: &'a Settings,
    pub figures: BTreeMap<String, f64>,
    pub histograms: Vec<Histogram>,
    pub series: Vec<Series>,
    pub not_checked: BTreeMap<String, String>,
    pub boots: Vec<Boot>,
    /// The target's clock minus the rig's, measured when the device was started (over SSH each
    /// measurement is a few round trips: too slow to repeat in every wait).
    pub clock_offset_ns: i64,
    /// `ota.clock` in the suite's configuration: `trusted` (a rig's network has no NTP), or
    /// `kernel` for a scenario that serves time itself.
    pub ota_clock: &'static str,
    started: Instant,
}

impl Ctx<'_> {
    pub fn figure(&mut self, name: &str, value: f64) {
        self.figures.insert(name.to_owned(), value);
    }

    /// Records that `check` was not applied on this target, and `why`: the report shows it as
    /// not checked rather than passed.
    pub fn not_checked(&mut self, check: &str, why: String) {
        self.not_checked.insert(check.to_owned(), why);
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The suite's configuration for this target: the rig's camera and broker (through the
    /// fault proxy), metrics every 2 s, keepalive 5 s (so half-open links are found quickly).
    /// A target that cannot receive the rig's camera gets a synthetic one of its own, with a
    /// budget and a rule that let an emulated target make events at all (as `.ci/qemu-smoke.sh`).
    pub fn config(&self, ota_root: &str, ota_ca: &str, ota_extra: &str) -> String {
        let camera = if self.target.capabilities().contains(&Capability::RigCamera) {
            format!("[[camera]]\nid = \"cam\"\nuri = \"{}?transport=tcp\"\n", self.rig.camera_url())
        } else {
            "[[rule]]\nname = \"any\"\nmin_frames = 1\n[[camera]]\nid = \"cam\"\nuri = \"test://ball\"\nlatency_budget_ms = 60000\n"
                .to_owned()
        };
        // Updates from the rig's server; the clock taken as right (a rig's network has no NTP,
        // but where a scenario serves it: `ota_clock`); the canary judges a loop of the clip
        // (15 fps × 12 s), and waits for it as long as the target's speed needs (emulated, 180
        // frames take over a minute).
        let ota = format!(
            "[ota]\nserver = \"{}\"\nroot = \"{ota_root}\"\nca = \"{ota_ca}\"\nclock = \"{}\"\n\
             binary_health_window_s = {}\n{ota_extra}[ota.canary]\nmin_frames = 180\nmax_wait_s = {}\n",
            self.rig.updates.url(),
            self.ota_clock,
            5 * self.target.slowness(),
            60 * self.target.slowness()
        );
        // The store keeps 32 MiB free: the local target's data directory is a 256 MiB tmpfs, where
        // the default reserve (256 MiB) would leave no room for an update beside it (updates are
        // refused unless archive, unpacked copy and reserve fit) and evict events at once.
        format!(
            "device_id = \"{dev}\"\ndata_dir = \"{data}\"\n\
             [mqtt]\nurl = \"{url}\"\nkeep_alive_s = 5\nmetrics_interval_s = 2\n\
             [store]\nmin_free_mb = 32\n\
             [model]\nbundle = \"{bundle}\"\n[inference]\n{inference}{ota}{camera}",
            dev = self.rig.device_id,
            data = self.target.data_dir(),
            url = self.rig.broker_url(),
            bundle = self.target.bundle_dir(),
            inference = self.target.inference_toml(),
        )
    }

    /// Cuts the target's power and restores it ([`Target::power_cut`]); the clocks are compared
    /// again, as a board's may be set anew at boot.
    pub fn power_cut(&mut self) -> Result<()> {
        self.target.power_cut()?;
        self.boots.extend(self.target.last_boot());
        self.clock_offset_ns = self.target.clock_offset_ns()?;
        Ok(())
    }

    /// `d` stretched by the target's slowness.
    pub fn patience(&self, d: Duration) -> Duration {
        d * self.target.slowness()
    }

    /// A new device: vigil stopped, its data gone, the suite's configuration, started.
    pub fn fresh_device(&mut self) -> Result<()> {
        self.fresh_device_with("")
    }

    /// [`Ctx::fresh_device`] with `ota_extra` (`key = value` lines) in the `[ota]` table.
    pub fn fresh_device_with(&mut self, ota_extra: &str) -> Result<()> {
        self.target.reset()?;
        let root = std::fs::read(self.rig.updates.root_json())?;
        let ca = std::fs::read(&self.rig.updates.server.ca)?;
        let root = self.target.put_file("ota-root.json", &root)?;
        let ca = self.target.put_file("update-ca.pem", &ca)?;
        let config = self.config(&root, &ca, ota_extra);
        self.target.write_config(&config)?;
        self.rig.monitor.clear();
        self.target.start()?;
        self.clock_offset_ns = self.target.clock_offset_ns()?;
        Ok(())
    }

    /// Waits up to `within` for `cond`; an error naming `what` if it never holds.
    pub fn wait(
        &mut self,
        within: Duration,
        what: &str,
        mut cond: impl FnMut(&mut Self) -> Result<bool>,
    ) -> Result<f64> {
        let within = self.patience(within);
        let start = Instant::now();
        loop {
            if cond(self)? {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() >= within {
                bail!("{what}: not within {}s", within.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Event messages received, with the rig's receipt time.
    pub fn events(&self) -> Result<Vec<(Event, i64)>> {
        self.rig
            .monitor
            .on("events")
            .into_iter()
            .map(|m| Ok((serde_json::from_slice(&m.payload).context("an event message is not an event")?, m.at_ns)))
            .collect()
    }

    /// Events started (`new` messages) captured after `since_ns` (the rig's clock).
    pub fn new_events_since(&mut self, since_ns: i64) -> Result<usize> {
        let offset = self.clock_offset_ns;
        Ok(self
            .events()?
            .iter()
            .filter(|(e, _)| e.phase == Phase::New && e.best.captured_at_ns as i64 - offset > since_ns)
            .count())
    }

    /// The latest `metrics` message.
    pub fn metrics(&self) -> Option<serde_json::Value> {
        self.rig.monitor.on("metrics").last().and_then(|m| serde_json::from_slice(&m.payload).ok())
    }

    /// Frames lost so far for any reason, per the latest metrics: overwritten while waiting,
    /// stale, late, failed (what vigil counts as lost at a model swap).
    pub fn frames_lost(&self) -> Result<u64> {
        let m = self.metrics().context("no metrics message from the device")?;
        let cams = m["cameras"].as_array().context("metrics without cameras")?;
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        Ok(cams
            .iter()
            .map(|c| {
                let (cap, inf) = (&c["capture"], &c["inference"]);
                n(&cap["dropped_overwritten"])
                    + n(&inf["dropped_stale"])
                    + n(&inf["deadline_misses"])
                    + n(&inf["dropped_error"])
            })
            .sum())
    }

    /// Frames that finished past their budget, per the latest metrics (0 is the promise).
    pub fn late_frames(&self) -> Result<u64> {
        self.inference_total(&["deadline_misses"])
    }

    /// The sum over cameras of the inference counters `counters` in the latest metrics.
    fn inference_total(&self, counters: &[&str]) -> Result<u64> {
        let m = self.metrics().context("no metrics message from the device")?;
        let cams = m["cameras"].as_array().context("metrics without cameras")?;
        Ok(cams.iter().flat_map(|c| counters.iter().map(|k| c["inference"][*k].as_u64().unwrap_or(0))).sum())
    }

    /// Frames the scheduler took a decision on, per the latest metrics: processed, dropped as
    /// stale, failed, or late.
    pub fn frames_judged(&self) -> Result<u64> {
        self.inference_total(&["processed", "dropped_stale", "dropped_error", "deadline_misses"])
    }

    /// The late-frame check, judged by the target's load (recorded with it). With a core to
    /// spare (1-minute load average below the core count): 0 late frames. On a busier target
    /// (another program took the cores, as on a loaded CI machine): under 0.1 % of the frames,
    /// and "0 late frames" is reported not checked, with the load.
    pub fn check_late_frames(&mut self) -> Result<u64> {
        let late = self.late_frames()?;
        let judged = self.frames_judged()?;
        let (load, cores) = self.target.load()?;
        self.figure("late_frames", late as f64);
        self.figure("frames_judged", judged as f64);
        self.figure("load_average_1m", load);
        self.figure("cores", f64::from(cores));
        if load < f64::from(cores) {
            ensure!(
                late == 0,
                "{late} frames finished past their budget on a target with a core to spare (load {load:.2} on {cores} cores)"
            );
        } else {
            self.not_checked(
                "0 late frames",
                format!(
                    "the target was busy (load {load:.2} on {cores} cores): held to under 0.1 % of the frames instead"
                ),
            );
            ensure!(late * 1000 < judged, "{late} of {judged} frames finished past their budget: 0.1 % or more");
        }
        Ok(late)
    }

    /// The camera's state in the latest retained status (`streaming`, `stalled`, …).
    pub fn camera_state(&self) -> Option<String> {
        let status: serde_json::Value = serde_json::from_slice(&self.rig.monitor.on("status").last()?.payload).ok()?;
        status["cameras"][0]["state"].as_str().map(str::to_owned)
    }

    /// Stops vigil cleanly and waits for its `offline` status: everything it sent before has
    /// reached the rig by then (it is sent last, on the same connection).
    pub fn stop_and_drain(&mut self) -> Result<()> {
        self.target.stop()?;
        self.wait(Duration::from_secs(30), "vigil's `offline` status after a clean stop", |c| {
            Ok(c.rig.monitor.on("status").last().is_some_and(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).is_ok_and(|s| s["state"] == "offline")
            }))
        })
        .map(drop)
    }

    /// [`Ctx::stop_and_drain`], then [`Ctx::check_no_event_lost`]: how most scenarios end.
    pub fn stop_and_check_nothing_lost(&mut self) -> Result<()> {
        self.stop_and_drain()?;
        self.check_no_event_lost().map(drop)
    }

    /// Every event in the device's store reached the broker as its stored revision; returns
    /// the events stored. Called with vigil stopped (the store is read by the CLI).
    pub fn check_no_event_lost(&mut self) -> Result<Vec<Event>> {
        let config = self.target.config_path();
        let out = self.target.vigil_cli(&["events", "list", "--json", "--config", &config])?;
        let stored: Vec<Event> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("`vigil events list --json` printed {l:?}")))
            .collect::<Result<_>>()?;
        let mut received: BTreeMap<String, u32> = BTreeMap::new();
        for (e, _) in self.events()? {
            let r = received.entry(e.id.clone()).or_default();
            *r = (*r).max(e.revision);
        }
        let lost: Vec<String> = stored
            .iter()
            .filter(|e| received.get(&e.id).is_none_or(|r| *r < e.revision))
            .map(|e| format!("{} (revision {}, {:?})", e.id, e.revision, e.phase))
            .collect();
        self.figure("events_stored", stored.len() as f64);
        self.figure("events_lost", lost.len() as f64);
        if self.rig.monitor.dropped() > 0 {
            bail!(
                "the rig's monitor dropped {} messages (its cap): the count is not trustworthy",
                self.rig.monitor.dropped()
            );
        }
        if !lost.is_empty() {
            bail!(
                "{} of {} stored events never reached the broker as stored: {}",
                lost.len(),
                stored.len(),
                lost.join(", ")
            );
        }
        Ok(stored)
    }
}

/// An error naming what in `names` is not a scenario, and the scenarios there are.
pub fn check_names(names: &[String]) -> Result<()> {
    let unknown: Vec<&String> = names.iter().filter(|n| !all().iter().any(|s| s.name == n.as_str())).collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = all().iter().map(|s| s.name).collect();
        bail!("no scenario named {unknown:?}; the suite has: {}", names.join(", "));
    }
    Ok(())
}

/// Runs the suite's scenarios on `target` with `rig`; `on_done` sees each result as it comes.
pub fn run(
    target: &mut dyn Target,
    rig: &mut Rig,
    settings: &Settings,
    mut on_done: impl FnMut(&ScenarioReport),
) -> Result<SuiteReport> {
    check_names(&settings.only)?;
    check_names(&settings.skip.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>())?;
    let started = Instant::now();
    let started_at = vigil_core::event::rfc3339(crate::rig::now_ns() as u64);
    target.prepare()?;
    let vigil_version = target.vigil_cli(&["--version"])?.trim().to_owned();
    let capabilities = target.capabilities();
    let mut reports = Vec::new();
    for scenario in all().iter().filter(|s| settings.only.is_empty() || settings.only.iter().any(|n| n == s.name)) {
        let missing: Vec<&str> =
            scenario.needs.iter().filter(|c| !capabilities.contains(c)).map(|c| c.name()).collect();
        let left_out = settings.skip.iter().find(|(name, _)| name == scenario.name);
        let report = if missing.is_empty() && left_out.is_none() {
            run_one(scenario, target, rig, settings)
        } else {
            let message = match left_out {
                Some((_, why)) => format!("left out of this run (--skip): {why}"),
                None => format!("the {} target cannot: {}", target.kind(), missing.join(", ")),
            };
            ScenarioReport {
                name: scenario.name.into(),
                summary: scenario.summary.into(),
                status: Status::Skipped,
                message: Some(message),
                seconds: 0.0,
                figures: BTreeMap::new(),
                histograms: Vec::new(),
                series: Vec::new(),
                log: None,
                not_checked: BTreeMap::new(),
                boots: Vec::new(),
            }
        };
        on_done(&report);
        reports.push(report);
    }
    let _ = target.stop();
    Ok(SuiteReport {
        target: target.describe(),
        kind: target.kind().into(),
        vigil_version,
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        scenarios: reports,
    })
}

fn run_one(scenario: &Scenario, target: &mut dyn Target, rig: &mut Rig, settings: &Settings) -> ScenarioReport {
    let mark = target.log_mark();
    let mut ctx = Ctx {
        target,
        rig,
        settings,
        figures: BTreeMap::new(),
        histograms: Vec::new(),
        series: Vec::new(),
        not_checked: BTreeMap::new(),
        boots: Vec::new(),
        clock_offset_ns: 0,
        ota_clock: "trusted",
        started: Instant::now(),
    };
    let outcome = (scenario.run)(&mut ctx);
    let seconds = ctx.elapsed_s();
    let Ctx { target, rig, figures, histograms, series, not_checked, boots, .. } = ctx;
    // Whatever the scenario left broken is put right for the next one.
    let restored = rig.restore();
    let _ = target.set_link(true);
    let _ = target.unfill_disk();
    let _ = target.set_load(0);
    // A rig that cannot be put right fails this scenario, with why.
    let outcome = outcome.and_then(|()| restored.context("the rig could not be put right after the scenario"));
    let (status, message, log) = match outcome {
        Ok(()) => (Status::Passed, None, None),
        Err(e) if e.downcast_ref::<Skip>().is_some() => (Status::Skipped, Some(e.to_string()), None),
        Err(e) => {
            let log = match &mark {
                Ok(m) => {
                    target.logs_since(m).unwrap_or_else(|e| format!("(the target's log could not be read: {e:#})"))
                }
                Err(e) => format!("(no log mark: {e:#})"),
            };
            (Status::Failed, Some(format!("{e:#}")), Some(log))
        }
    };
    ScenarioReport {
        name: scenario.name.into(),
        summary: scenario.summary.into(),
        status,
        message,
        seconds,
        figures,
        histograms,
        series,
        log,
        not_checked,
        boots,
    }
}
