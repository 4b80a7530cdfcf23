//! `vigil-ota`: the operator's tool for vigil's TUF repository, and a device-side `fetch` that
//! runs the same trust and transport as the service (docs/ota.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vigil_ota::repo::{self, Expiry, RoleKeyFiles};
use vigil_ota::target::{Compat, Device, Kind, TargetMeta};
use vigil_ota::time::{AssumeSynchronized, KernelClock, TimeSource};
use vigil_ota::transport::Timeouts;
use vigil_ota::{Updater, UpdaterConfig};

#[derive(Parser)]
#[command(name = "vigil-ota", version, about = "Signed updates for vigil: keys, repository, targets, fetch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Makes a new ed25519 key (PKCS#8 DER, mode 0600) and its public half (`OUT.pub.json`, what
    /// a model team hands the operator), and prints its key id.
    Keygen { out: PathBuf },
    /// Creates a repository: root version 1 signed by every root key, empty targets.
    Init {
        #[arg(long)]
        repo: PathBuf,
        #[command(flatten)]
        root: RootKeys,
        #[command(flatten)]
        roles: Roles,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Adds a model bundle or a vigil binary as a signed target.
    Add {
        #[arg(long)]
        repo: PathBuf,
        /// The file to add: a model bundle directory (packed into a tar archive here), a bundle
        /// archive, or the vigil executable.
        file: PathBuf,
        #[arg(long, value_enum)]
        kind: KindArg,
        /// The model's name, or `vigil` for the binary.
        #[arg(long)]
        name: String,
        /// Its version (semver: 1.4.0).
        #[arg(long)]
        version: semver::Version,
        /// The TUF target name; default `<kind>s/<name>-<version>`.
        #[arg(long)]
        target: Option<String>,
        #[arg(long = "board")]
        boards: Vec<String>,
        #[arg(long = "soc")]
        socs: Vec<String>,
        #[arg(long = "arch")]
        arch: Vec<String>,
        /// JetPack requirement, e.g. ">=6.0, <7".
        #[arg(long)]
        jetpack: Option<semver::VersionReq>,
        /// Backends the bundle supports (tensorrt, onnxruntime).
        #[arg(long = "backend")]
        backends: Vec<String>,
        #[arg(long)]
        min_vigil: Option<semver::Version>,
        /// Lets devices that run a newer version go back to this one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Sign into this delegated role (a model team's) with its --role-key keys instead of
        /// the top-level targets role.
        #[arg(long, requires = "role_keys", conflicts_with = "targets_key")]
        role: Option<String>,
        /// A key of the --role (repeat up to its threshold).
        #[arg(long = "role-key", requires = "role")]
        role_keys: Vec<PathBuf>,
        /// The top-level targets key (without --role).
        #[arg(long, required_unless_present = "role")]
        targets_key: Option<PathBuf>,
        #[command(flatten)]
        online: Online,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Delegates target paths to a role with its own keys (a model team's), or removes a delegation.
    Delegate {
        #[arg(long)]
        repo: PathBuf,
        /// The delegated role's name.
        #[arg(long)]
        role: String,
        /// A public key of the role (`.pub.json` from `vigil-ota keygen`; repeat).
        #[arg(long = "key", required_unless_present = "remove")]
        keys: Vec<PathBuf>,
        /// How many of its keys must sign the role's metadata.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
        /// A target path pattern the role may sign (`models/people-*`; `*` does not cross `/`; repeat).
        #[arg(long = "path", required_unless_present = "remove")]
        paths: Vec<String>,
        /// End the search with this role for the names its paths cover (no later role is asked).
        #[arg(long)]
        terminating: bool,
        /// Remove the delegation instead.
        #[arg(long, conflicts_with_all = ["keys", "paths", "terminating"])]
        remove: bool,
        /// The top-level targets key, which signs the delegation.
        #[arg(long)]
        targets_key: PathBuf,
        #[command(flatten)]
        online: Online,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Re-signs the timestamp (and with --snapshot-key the snapshot): run it daily.
    Refresh {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        timestamp_key: PathBuf,
        #[arg(long)]
        snapshot_key: Option<PathBuf>,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Writes root version N+1 with new keys, signed by the given current root keys and the new ones.
    Rotate {
        #[arg(long)]
        repo: PathBuf,
        /// Current root keys that sign the change (their threshold must be met).
        #[arg(long = "signing-key", required = true)]
        signing_keys: Vec<PathBuf>,
        /// The new root's keys.
        #[command(flatten)]
        root: RootKeys,
        #[command(flatten)]
        roles: Roles,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Adds one more root key's signature to the newest root.
    Sign {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Prints each role's version and expiry, and the targets.
    Status {
        #[arg(long)]
        repo: PathBuf,
    },
    /// On a device: refreshes the metadata, chooses a target and downloads it (resuming).
    Fetch(FetchArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Model,
    Binary,
}

/// A root's keys: the root keys and how many of them must sign a root.
#[derive(Args)]
struct RootKeys {
    /// A root key (repeat for several); keep them offline.
    #[arg(long = "root-key", required = true)]
    root_keys: Vec<PathBuf>,
    /// Root keys that must sign a new root.
    #[arg(long, default_value_t = 1)]
    threshold: u64,
}

#[derive(Args)]
struct Roles {
    #[arg(long)]
    targets_key: PathBuf,
    #[arg(long)]
    snapshot_key: PathBuf,
    #[arg(long)]
    timestamp_key: PathBuf,
}

/// The online keys that re-sign the snapshot and timestamp after a change.
#[derive(Args)]
struct Online {
    #[arg(long)]
    snapshot_key: PathBuf,
    #[arg(long)]
    timestamp_key: PathBuf,
}

impl From<&Online> for repo::OnlineKeys {
    fn from(o: &Online) -> Self {
        repo::OnlineKeys { snapshot: o.snapshot_key.clone(), timestamp: o.timestamp_key.clone() }
    }
}

impl From<&Roles> for RoleKeyFiles {
    fn from(r: &Roles) -> Self {
        RoleKeyFiles {
            targets: r.targets_key.clone(),
            snapshot: r.snapshot_key.clone(),
            timestamp: r.timestamp_key.clone(),
        }
    }
}

#[derive(Args)]
struct ExpiryArgs {
    /// Root metadata validity (humantime: 365d).
    #[arg(long, default_value = "365d")]
    root_expires: humantime::Duration,
    #[arg(long, default_value = "90d")]
    targets_expires: humantime::Duration,
    #[arg(long, default_value = "7d")]
    snapshot_expires: humantime::Duration,
    #[arg(long, default_value = "1d")]
    timestamp_expires: humantime::Duration,
    /// Delegated roles' metadata validity.
    #[arg(long, default_value = "90d")]
    delegated_expires: humantime::Duration,
}

impl From<&ExpiryArgs> for Expiry {
    fn from(e: &ExpiryArgs) -> Self {
        Expiry {
            root: e.root_expires.into(),
            targets: e.targets_expires.into(),
            snapshot: e.snapshot_expires.into(),
            timestamp: e.timestamp_expires.into(),
            delegated: e.delegated_expires.into(),
        }
    }
}

#[derive(Args)]
struct FetchArgs {
    /// `https://server/metadata/`
    #[arg(long)]
    metadata_url: url::Url,
    /// `https://server/targets/`
    #[arg(long)]
    targets_url: url::Url,
    /// The repository's root as shipped with the device.
    #[arg(long)]
    root: PathBuf,
    /// CA bundle of the update server.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The device's OTA state directory.
    #[arg(long)]
    state: PathBuf,
    /// The target's vigil name.
    #[arg(long)]
    name: String,
    #[arg(long)]
    version: Option<semver::Version>,
    /// Backends this device runs (for compatibility).
    #[arg(long = "backend", default_values = ["onnxruntime"])]
    backends: Vec<String>,
    /// Where to put the verified file.
    #[arg(long)]
    out: PathBuf,
    /// Record the target as installed (anti-rollback) once downloaded.
    #[arg(long)]
    accept: bool,
    /// Treat the clock as synchronized (a device with a trusted RTC; tests).
    #[arg(long)]
    assume_synchronized: bool,
    /// Give up on a transfer slower than this many bytes/s over --rate-window.
    #[arg(long, default_value_t = 1024)]
    min_rate: u64,
    #[arg(long, default_value = "60s")]
    rate_window: humantime::Duration,
    #[arg(long, default_value = "60s")]
    read_timeout: humantime::Duration,
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let id = repo::keygen(&out).await?;
            println!("{id}");
            eprintln!("public key: {}", repo::public_key_file(&out).display());
        }
        Command::Init { repo: dir, root, roles, expiry } => {
            repo::init(&dir, &root.root_keys, root.threshold, &(&roles).into(), &(&expiry).into()).await?;
            println!(
                "repository created at {}; ship {} with the devices",
                dir.display(),
                repo::metadata_dir(&dir).join("1.root.json").display()
            );
        }
        Command::Add {
            repo: dir,
            file,
            kind,
            name,
            version,
            target,
            boards,
            socs,
            arch,
            jetpack,
            backends,
            min_vigil,
            allow_downgrade,
            role,
            role_keys,
            targets_key,
            online,
            expiry,
        } => {
            let kind = match kind {
                KindArg::Model => Kind::Model,
                KindArg::Binary => Kind::Binary,
            };
            let target = target.unwrap_or_else(|| format!("{kind}s/{name}-{version}"));
            let meta = TargetMeta {
                kind,
                name,
                version,
                compat: Compat { boards, socs, arch, jetpack, backends, min_vigil, ..Compat::default() },
                allow_downgrade,
            };
            // The fields are checked as a device will read them.
            TargetMeta::from_custom(&meta.to_custom()).map_err(anyhow::Error::msg)?;
            // A bundle directory travels as a deterministic tar archive.
            let packed = if file.is_dir() {
                let tmp = tempfile::Builder::new().prefix(".bundle-").suffix(".tar").tempfile_in(&dir)?;
                vigil_ota::archive::pack_dir(&file, tmp.path())?;
                Some(tmp)
            } else {
                None
            };
            let file = packed.as_ref().map_or(file, |t| t.path().to_owned());
            let size = std::fs::metadata(&file)?.len();
            let pb = bar(size * 2, "hashing and copying");
            let signer = match (role, targets_key) {
                (Some(name), _) => repo::Signer::Role { name, keys: role_keys },
                (None, Some(targets)) => repo::Signer::TopLevel { targets },
                (None, None) => anyhow::bail!("give --targets-key, or --role with its --role-key"),
            };
            let (online, expiry) = ((&online).into(), (&expiry).into());
            let hash = repo::add_signed(&dir, &file, &target, &meta, &signer, &online, &expiry, |n| pb.inc(n)).await?;
            pb.finish_and_clear();
            println!("added {target} ({size} bytes, sha256 {hash})");
        }
        Command::Delegate {
            repo: dir,
            role,
            keys,
            threshold,
            paths,
            terminating,
            remove,
            targets_key,
            online,
            expiry,
        } => {
            let (online, expiry) = ((&online).into(), (&expiry).into());
            if remove {
                repo::undelegate(&dir, &role, &targets_key, &online, &expiry).await?;
                println!("removed the delegation to {role}; devices take nothing it signed from the next refresh");
            } else {
                let d = repo::Delegation { name: role.clone(), keys, threshold, paths, terminating };
                repo::delegate(&dir, &d, &targets_key, &online, &expiry).await?;
                println!(
                    "delegated {} to {role} ({threshold} of {} keys); its holders sign with \
                     `vigil-ota add --role {role} --role-key KEY`",
                    d.paths.join(", "),
                    d.keys.len()
                );
            }
        }
        Command::Refresh { repo: dir, timestamp_key, snapshot_key, expiry } => {
            let (ts, snap) = repo::refresh(&dir, &timestamp_key, snapshot_key.as_deref(), &(&expiry).into()).await?;
            match snap {
                Some(s) => println!("timestamp version {ts}, snapshot version {s}"),
                None => println!("timestamp version {ts}"),
            }
        }
        Command::Rotate { repo: dir, signing_keys, root, roles, expiry } => {
            let (roles, expiry) = ((&roles).into(), (&expiry).into());
            let r = repo::rotate(&dir, &signing_keys, &root.root_keys, root.threshold, &roles, &expiry).await?;
            if (r.old_signatures as u64) < r.old_threshold {
                println!(
                    "root version {} written with {} of the {} signatures of current root keys that devices require: \
                     have the other key holders run `vigil-ota sign` before publishing it",
                    r.version, r.old_signatures, r.old_threshold
                );
            } else {
                println!("root version {} written; devices take it at their next refresh", r.version);
            }
        }
        Command::Sign { repo: dir, key } => {
            let n = repo::sign_root(&dir, &key).await?;
            println!("the newest root now carries {n} signatures");
        }
        Command::Status { repo: dir } => print!("{}", repo::describe(&dir).await?),
        Command::Fetch(a) => fetch(a).await?,
    }
    Ok(())
}

async fn fetch(a: FetchArgs) -> anyhow::Result<()> {
    let time: Arc<dyn TimeSource> =
        if a.assume_synchronized { Arc::new(AssumeSynchronized) } else { Arc::new(KernelClock) };
    let config = UpdaterConfig {
        metadata_url: a.metadata_url,
        targets_url: a.targets_url,
        state_dir: a.state,
        shipped_root: a.root,
        ca: a.ca,
        client_cert: a.cert.zip(a.key),
        timeouts: Timeouts {
            min_rate: a.min_rate,
            rate_window: a.rate_window.into(),
            read: a.read_timeout.into(),
            ..Timeouts::default()
        },
        limits: vigil_ota::client::default_limits(),
    };
    let updater = Updater::new(config, time)?;
    let trusted = updater.refresh().await?;
    let device = Device::detect(a.backends);
    let offer = updater.choose(&trusted, &device, &a.name, a.version.as_ref())?;
    let progress = updater.progress();
    let pb = bar(offer.length, &offer.target);
    let ticker = {
        let (pb, progress) = (pb.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(progress.get().0);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let result = updater.download(&trusted, &offer, &a.out).await;
    ticker.abort();
    pb.finish_and_clear();
    result?;
    let resumed = progress.get().2;
    if a.accept {
        updater.accept(&offer)?;
    }
    println!(
        "{} {} ({} bytes{}) → {}",
        offer.meta.name,
        offer.meta.version,
        offer.length,
        if resumed > 0 { format!(", resumed at {resumed}") } else { String::new() },
        a.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VIGIL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-ota: {e:#}");
            // 75 (EX_TEMPFAIL): try again later (the clock, the network).
            match e.downcast_ref::<vigil_ota::OtaError>() {
                Some(o) if o.is_retryable() => ExitCode::from(75),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
