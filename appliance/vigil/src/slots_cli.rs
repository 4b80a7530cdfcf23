//! The launcher and `vigil slots …`: vigil's own binary in its A/B slots (`vigil_update::slots`,
//! docs/ota.md). Both run in the packaged binary, before anything of a new one runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use semver::Version;
use vigil_config::{Config, LaunchPaths};
use vigil_update::slots::{self, Guarded, Launch, Slots};

#[derive(Subcommand)]
pub enum SlotsCommand {
    /// Before each start (vigil.service's ExecStartPre=): count the starts of a binary that has
    /// not marked itself good and, once it has used them, put the previous one back. Exits 0
    /// even when it cannot read its state (the packaged vigil then runs).
    Guard(Where),
    /// Which binary runs, which is kept to go back to, and the trial.
    Status(Where),
}

#[derive(clap::Args)]
pub struct Where {
    /// The configuration `vigil run` uses (its `data_dir` holds the slots).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override data_dir, as `vigil run --data-dir` does.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn package() -> Version {
    vigil_core::build::version().parse().expect("vigil's version is semver (checked at build time)")
}

/// What `vigil run` would use of its configuration, read leniently (see
/// `Config::launch_paths_of`); `over`: `--data-dir`.
pub fn paths(config: Option<&Path>, over: Option<&Path>) -> Result<LaunchPaths, String> {
    let system = Path::new(vigil_config::SYSTEM_CONFIG);
    let file = config.or(system.exists().then_some(system));
    let mut paths = match file {
        Some(path) => Config::launch_paths_of(path).map_err(|e| e.to_string())?,
        None if over.is_some() => LaunchPaths { data_dir: PathBuf::new(), ota_root: None },
        None => return Err("no configuration file".to_owned()),
    };
    if let Some(d) = over {
        paths.data_dir = d.to_owned();
    }
    Ok(paths)
}

/// Runs the active slot's binary in place of this one when it is newer, counted (on trial) and
/// signed for this device (`fexecve` of the file that was checked: same process, same
/// arguments, so systemd's main PID and notify socket carry over). Returns when the packaged
/// binary should run, or when this already is the slot's binary; the reason is logged and kept
/// for the update's report.
pub fn launch(paths: &LaunchPaths) {
    if slots::running_slot().is_some() {
        return;
    }
    let package = package();
    let invocation = slots::invocation();
    let (installed, path) = match slots::launch(&paths.data_dir, &package, invocation.as_deref()) {
        Launch::Package(None) => return,
        Launch::Package(Some(why)) => return package_runs(&package, why),
        Launch::Slot(installed, path) => (installed, path),
        Launch::Previous(installed, path, why) => {
            tracing::warn!("{why}; running vigil {}, kept to go back to", installed.version);
            slots::note_launch(why);
            (installed, path)
        }
    };
    let file = match slots::open_signed(&installed, &path, &paths.data_dir, paths.ota_root.as_deref()) {
        Ok(f) => f,
        Err(why) => return package_runs(&package, why),
    };
    tracing::info!(version = %installed.version, slot = installed.slot.name(), "running vigil from its slot");
    let args: Vec<_> = std::env::args_os().collect();
    let error = slots::exec(file, &args, &[(slots::ENV_SLOT, installed.slot.name())]);
    package_runs(&package, slots::cannot_run(&path, &error));
}

/// The packaged binary runs at this start, for `why` (logged, and kept for the update's report).
fn package_runs(package: &Version, why: String) {
    tracing::error!("{why}; running the packaged vigil {package}");
    slots::note_launch(why);
}

pub fn run(command: &SlotsCommand) -> ExitCode {
    match command {
        SlotsCommand::Guard(at) => {
            let dir = match paths(at.config.as_deref(), at.data_dir.as_deref()) {
                Ok(p) => p.data_dir,
                Err(e) => {
                    eprintln!("vigil slots guard: {e}; nothing to guard");
                    return ExitCode::SUCCESS;
                }
            };
            match slots::guard(&dir, &package(), slots::invocation().as_deref()) {
                Ok(Guarded::Nothing) => {}
                Ok(Guarded::Counted { version, starts }) => {
                    eprintln!("vigil {version} on trial: start {starts} of {}", slots::MAX_STARTS)
                }
                Ok(Guarded::Reverted(r)) => eprintln!("{}; the previous vigil runs from this start", r.reason),
                // The launcher then counts the start itself, and runs no binary on trial
                // unless it can.
                Err(e) => eprintln!(
                    "vigil slots guard: cannot count this start: {e}; a binary on trial runs only on a counted start"
                ),
            }
            ExitCode::SUCCESS
        }
        SlotsCommand::Status(at) => {
            let dir = match paths(at.config.as_deref(), at.data_dir.as_deref()) {
                Ok(p) => p.data_dir,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match Slots::load(&dir) {
                Ok(state) => {
                    let runs = match state.choose(&dir, &package()) {
                        Launch::Package(why) => format!(
                            "the packaged vigil {}{}",
                            package(),
                            why.map(|w| format!(" ({w})")).unwrap_or_default()
                        ),
                        Launch::Slot(i, path) => format!("vigil {} from {}", i.version, path.display()),
                        Launch::Previous(i, path, why) => {
                            format!("vigil {} from {} ({why})", i.version, path.display())
                        }
                    };
                    println!("runs: {runs}");
                    println!("{}", serde_json::to_string_pretty(&state).expect("slot state serialises"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
