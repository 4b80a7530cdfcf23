//! The `vigil` command line. Errors are turned into messages and exit codes here, and only here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use vigil_config::{BackendKind, Config, ConfigError};

mod app;
mod events_cli;
mod model;
mod model_cli;
mod probation;
mod slots_cli;
mod systemd;
mod updates;
mod worker;

/// This build's version: the crate's, or `VIGIL_VERSION` at build time (build.rs checks it).
const VERSION: &str = env!("VIGIL_BUILD_VERSION");

/// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or input.
const EXIT_FAILURE: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser)]
#[command(name = "vigil", version = VERSION, about = "Edge video appliance: cameras → models → events → MQTT")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service on --config FILE, or on /etc/vigil/vigil.toml.
    Run {
        #[arg(long, short, conflicts_with = "demo")]
        config: Option<PathBuf>,
        /// Run the demo configuration of the source checkout in the current directory instead.
        #[arg(long)]
        demo: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run the demo: `vigil run --demo` (a synthetic camera, the CPU backend), in a source checkout.
    Demo {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Check a configuration file; print every problem and exit 2 if there is any.
    CheckConfig { file: PathBuf },
    /// Print an annotated example configuration (the demo's).
    DefaultConfig,
    /// Stored events: list, show, tail, export (from the running service, or its store when stopped).
    Events(events_cli::EventsArgs),
    /// Check a model bundle on a backend: reference input → output and detections compared
    /// with the bundle's references. Exit 0 if they match, 1 if not, 2 for a bad bundle/config.
    ModelCheck {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check this bundle instead of the config's.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// auto, tensorrt or onnxruntime (default: the config's inference.backend).
        #[arg(long)]
        backend: Option<BackendKind>,
    },
    /// Model bundles: `vigil model pack` turns an ONNX export into a checked bundle.
    #[command(subcommand)]
    Model(model_cli::ModelCommand),
    /// vigil's own binary in its A/B slots: `guard` (systemd's ExecStartPre) and `status`.
    #[command(subcommand)]
    Slots(slots_cli::SlotsCommand),
}

/// Settings a run takes from the command line over its configuration file.
#[derive(clap::Args)]
struct Overrides {
    /// Override mqtt.url.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// Override data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("VIGIL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: Option<&Path>, demo: bool) -> Result<Config, ConfigError> {
    if demo {
        let here = std::env::current_dir().map_err(|source| ConfigError::Read { path: ".".into(), source })?;
        return Config::demo(&here);
    }
    Config::load_or_system(path)
}

/// The operator's commands that `vigil` carried before they moved to `vigil-ops`.
const MOVED: [&str; 2] = ["fleet", "bench"];

fn main() -> ExitCode {
    vigil_core::build::set_version(VERSION);
    if let Some(moved) = std::env::args().nth(1).filter(|a| MOVED.contains(&a.as_str())) {
        eprintln!(
            "`vigil {moved}` moved to the operator's own binary: run `vigil-ops {moved} …` (package vigil-ops; \
             in a source checkout, target/*/vigil-ops). The device's binary carries no operator tools."
        );
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        },
        Command::DefaultConfig => {
            print!("{}", vigil_config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::Demo { overrides } => run(None, true, overrides),
        Command::Run { config, demo, overrides } => run(config, demo, overrides),
        Command::Events(args) => report(events_cli::run(&args)),
        Command::ModelCheck { config, bundle, backend } => model_check(config.as_deref(), bundle, backend),
        Command::Model(command) => report(model_cli::run(&command)),
        Command::Slots(command) => slots_cli::run(&command),
    }
}

/// `vigil run` (and `vigil demo`): the service until a signal, a restart command or a failure.
fn run(config: Option<PathBuf>, demo: bool, overrides: Overrides) -> ExitCode {
    // What the packaged binary reads of the configuration before anything else (leniently).
    let launch_paths =
        (!demo).then(|| slots_cli::paths(config.as_deref(), overrides.data_dir.as_deref()).ok()).flatten();
    // The packaged binary hands over to a newer one in an A/B slot (returns if it does not).
    if let Some(paths) = &launch_paths {
        slots_cli::launch(paths);
    }
    // The file given stays as the package or the operator wrote it; what config/set set is a
    // file of its own under the data directory, which runs instead while it exists.
    let marker_dir = config.as_ref().and(launch_paths.as_ref()).map(|p| p.data_dir.clone());
    let config = match (config, &marker_dir) {
        (Some(given), Some(dir)) => {
            let runs = vigil_fleet::config_change::effective(&given, dir);
            if runs != given {
                tracing::info!(
                    "running the configuration set over MQTT, {}, instead of {} (remove it to go back)",
                    runs.display(),
                    given.display()
                );
            }
            Some(runs)
        }
        (given, _) => given,
    };
    // A file written by config/set that cannot even load goes back at once.
    let refuse = |problems: String| {
        eprintln!("{problems}");
        let (Some(path), Some(dir)) = (&config, &marker_dir) else { return ExitCode::from(EXIT_BAD_INPUT) };
        let reason = format!("vigil cannot load it: {problems}");
        match vigil_fleet::config_change::roll_back_unloadable(path, dir, &reason) {
            Ok(true) => ExitCode::from(vigil_fleet::commands::RESTART_EXIT_CODE),
            Ok(false) => ExitCode::from(EXIT_BAD_INPUT),
            Err(e) => {
                eprintln!("error: the configuration change could not be rolled back: {e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        }
    };
    let mut cfg = match load_config(config.as_deref(), demo) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    if let Some(url) = overrides.mqtt_url {
        cfg.mqtt.url = url;
    }
    if let Some(dir) = &overrides.data_dir {
        cfg.data_dir = dir.clone();
    }
    // Loading validated the file; these are the overrides' problems, not the file's.
    let problems = cfg.validate();
    if !problems.is_empty() {
        problems.iter().for_each(|p| eprintln!("{p}"));
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let data_dir = cfg.data_dir.clone();
    match run_service(cfg, config) {
        Ok(app::Ended::Stopped) => ExitCode::SUCCESS,
        Ok(app::Ended::RestartRequested) => ExitCode::from(vigil_fleet::commands::RESTART_EXIT_CODE),
        // A configuration on probation that cannot even run goes back at once.
        Err(e) if vigil_fleet::config_change::on_probation(&data_dir) => {
            let reason = format!("vigil failed to start: {e:#}");
            eprintln!("error: {reason}");
            match vigil_fleet::config_change::roll_back(&data_dir, &reason) {
                Ok(()) => ExitCode::from(vigil_fleet::commands::RESTART_EXIT_CODE),
                Err(r) => report(Err(anyhow::anyhow!("{e:#}; and the configuration could not be rolled back: {r}"))),
            }
        }
        Err(e) => report(Err(e)),
    }
}

fn model_check(config: Option<&Path>, bundle: Option<PathBuf>, backend: Option<BackendKind>) -> ExitCode {
    // A bundle checked where no configuration exists (an ML engineer's machine) gets the defaults.
    let loaded = match (config, &bundle) {
        (None, Some(b)) if !Path::new(vigil_config::SYSTEM_CONFIG).exists() => Config::for_bundle(b),
        _ => load_config(config, false),
    };
    let mut cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if let Some(b) = bundle {
        cfg.model.bundle = b;
    }
    if let Some(b) = backend {
        cfg.inference.backend = b;
    }
    let (bundle, mut detector) = match vigil_infer::load_detector(&cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // Asked for one backend by name: the check is about that backend, so no fallback.
    let wanted = match backend {
        Some(BackendKind::Tensorrt) => Some("tensorrt"),
        Some(BackendKind::Onnxruntime) => Some("onnxruntime"),
        _ => None,
    };
    if let Some(w) = wanted.filter(|w| !detector.backend_name().starts_with(w)) {
        eprintln!("error: --backend {w} was asked for but is not available here (see the warning above)");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    match vigil_infer::check::check_model(&bundle, &mut detector) {
        Ok(c) => {
            let m = &bundle.manifest.model;
            println!(
                "{} {} on {}: max |output − reference| {:.4} (tolerance {}), {} detections",
                m.name, m.version, c.backend, c.max_abs_diff, c.tolerance, c.detections
            );
            c.problems.iter().for_each(|p| println!("  MISMATCH {p}"));
            if c.passed() {
                println!("ok");
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_service(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<app::Ended> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        app::run(cfg, config_path, shutdown).await
    })
}

/// First SIGTERM/SIGINT: orderly shutdown within the deadline. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop vigil with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received; stopping (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("second signal: exiting now");
    std::process::exit(130);
}
