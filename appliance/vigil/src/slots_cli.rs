//! The launcher and `vigil slots …`: vigil's own binary in its A/B slots (`vigil_update::slots`,
//! docs/ota.md). Both run in the packaged binary, before anything of a new one runs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use semver::Version;
use vigil_config::Config;
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

/// The data directory `vigil run` would use, read leniently (see `Config::data_dir_of`).
fn data_dir(config: Option<&Path>, over: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(d) = over {
        return Ok(d.to_owned());
    }
    let system = Path::new(vigil_config::SYSTEM_CONFIG);
    let path = config.or(system.exists().then_some(system)).ok_or("no configuration file".to_owned())?;
    Config::data_dir_of(path).map_err(|e| e.to_string())
}

/// Runs the active slot's binary in place of this one when it is newer (`exec`: same process,
/// same arguments, so systemd's main PID and notify socket carry over). Returns when the
/// packaged binary should run, or when this already is the slot's binary.
pub fn launch(config: Option<&Path>, data_dir_over: Option<&Path>) {
    if slots::running_slot().is_some() {
        return;
    }
    let Ok(data_dir) = data_dir(config, data_dir_over) else { return };
    let state = match Slots::load(&data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    match state.choose(&data_dir, &package()) {
        Launch::Package(None) => {}
        Launch::Package(Some(why)) => tracing::warn!("running the packaged vigil {}: {why}", package()),
        Launch::Slot(installed, path) => {
            if let Err(why) = slots::verify(&installed, &path) {
                tracing::error!("{why}; running the packaged vigil {} (a new update replaces the slot)", package());
                return;
            }
            tracing::info!(version = %installed.version, slot = installed.slot.name(), "running vigil from its slot");
            let error = std::process::Command::new(&path)
                .args(std::env::args_os().skip(1))
                .env(slots::ENV_SLOT, installed.slot.name())
                .exec();
            tracing::error!("cannot run {}: {error}; running the packaged vigil {}", path.display(), package());
        }
    }
}

pub fn run(command: &SlotsCommand) -> ExitCode {
    match command {
        SlotsCommand::Guard(at) => {
            let dir = match data_dir(at.config.as_deref(), at.data_dir.as_deref()) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("vigil slots guard: {e}; nothing to guard");
                    return ExitCode::SUCCESS;
                }
            };
            match slots::guard(&dir, &package()) {
                Ok(Guarded::Nothing) => {}
                Ok(Guarded::Counted { version, starts }) => {
                    eprintln!("vigil {version} on trial: start {starts} of {}", slots::MAX_STARTS)
                }
                Ok(Guarded::Reverted(r)) => eprintln!("{}; the previous vigil runs from this start", r.reason),
                Err(e) => eprintln!("vigil slots guard: {e}"),
            }
            ExitCode::SUCCESS
        }
        SlotsCommand::Status(at) => {
            let dir = match data_dir(at.config.as_deref(), at.data_dir.as_deref()) {
                Ok(d) => d,
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
