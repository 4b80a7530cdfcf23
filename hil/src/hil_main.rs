//! `vigil-hil`: the acceptance suite on one target, with its report (docs/hil.md).
//!
//! Exit status: 0 when every scenario that ran passed (skipped ones are listed), 1 when one
//! failed, 2 for bad input (a lab file, a missing binary, an unknown scenario).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use vigil_hil::lab::Lab;
use vigil_hil::rig::Rig;
use vigil_hil::suite::{self, Settings, Status};
use vigil_hil::target::local::LocalTarget;
use vigil_hil::target::ssh::SshTarget;
use vigil_hil::target::vm::{Accel, Arch, VmOptions, VmTarget};
use vigil_hil::target::Target;

#[derive(Parser)]
#[command(version, about = "vigil's hardware-in-the-loop acceptance suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the suite on one target and write its report.
    Run(Box<RunArgs>),
    /// List the scenarios and what each needs.
    List,
}

#[derive(Args)]
struct RunArgs {
    /// A vigil binary on this machine, under the supervisor that follows vigil.service.
    #[arg(long, group = "target_kind")]
    local: Option<PathBuf>,
    /// The cross-built aarch64 vigil, run by qemu-aarch64 (make aarch64, make cross-setup).
    #[arg(long, group = "target_kind")]
    qemu: Option<PathBuf>,
    /// A labgrid environment file describing the lab's boards.
    #[arg(long, group = "target_kind")]
    lab: Option<PathBuf>,
    /// A virtual board: Debian 12 under qemu-system with systemd as PID 1, `amd64` (the
    /// default) or `arm64`, its image built from Debian's packages into target/hil-vm/ (needs
    /// root, mmdebstrap and qemu-system; docs/hil.md).
    #[arg(long, group = "target_kind", num_args = 0..=1, default_missing_value = "amd64", value_name = "ARCH")]
    vm: Option<String>,
    /// The vigil .deb the virtual board installs with apt (needed with --vm).
    #[arg(long, requires = "vm")]
    deb: Option<PathBuf>,
    /// How qemu runs the virtual board: `auto` (KVM where it boots a guest, else TCG), `kvm`, `tcg`.
    #[arg(long, requires = "vm", default_value = "auto")]
    vm_accel: String,
    /// The virtual board's real-time clock at power on (`2000-01-01`: a board without its RTC
    /// battery); the guest has no time sync.
    #[arg(long, requires = "vm")]
    vm_rtc: Option<String>,
    /// A newer revision of the target's vigil package, for the package's upgrade scenario
    /// (skipped without it).
    #[arg(long)]
    upgrade_deb: Option<PathBuf>,
    /// The board of --lab to run on (needed when it has several).
    #[arg(long, requires = "lab")]
    target: Option<String>,
    /// Only this scenario (repeatable).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Leave out a scenario, saying why: `NAME=REASON` (repeatable). It is reported skipped
    /// with the reason.
    #[arg(long = "skip", value_parser = parse_skip)]
    skip: Vec<(String, String)>,
    /// The soak's length in seconds.
    #[arg(long, default_value_t = 60)]
    soak_s: u64,
    /// The source checkout (the unit file, the model bundle and the clip are read from it).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The clip the rig's camera serves; its ground truth is `<clip stem>.gt.json` beside it.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// A vigil for the target newer than its own (the good binary of the binary updates; those
    /// scenarios are skipped without it).
    #[arg(long)]
    next_vigil: Option<PathBuf>,
    /// --next-vigil's version, where the rig cannot run it to ask (another architecture).
    #[arg(long, requires = "next_vigil")]
    next_vigil_version: Option<String>,
    /// Where report.json, junit.xml and report.html go.
    #[arg(long, default_value = "target/hil-report")]
    out: PathBuf,
}

/// `NAME=REASON` for --skip.
fn parse_skip(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, why)) if !name.is_empty() && !why.trim().is_empty() => Ok((name.to_owned(), why.trim().to_owned())),
        _ => Err(format!("`{s}`: give NAME=REASON, the reason saying why the scenario is left out")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            for s in suite::all() {
                let needs: Vec<&str> = s.needs.iter().map(|c| c.name()).collect();
                let needs = if needs.is_empty() { "any target".to_owned() } else { needs.join(", ") };
                println!("{:<21} [{needs}] {}", s.name, s.summary);
            }
            Ok(true)
        }
        Command::Run(args) => run(*args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vigil-hil: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> Result<bool> {
    // Before anything starts.
    suite::check_names(&args.scenarios)?;
    suite::check_names(&args.skip.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>())?;
    let repo = args.repo.canonicalize().with_context(|| format!("--repo {}", args.repo.display()))?;
    let upgrade_deb = args.upgrade_deb.as_ref().map(|p| p.canonicalize().context("--upgrade-deb")).transpose()?;
    let mut target: Box<dyn Target> = match (&args.local, &args.qemu, &args.lab) {
        (Some(bin), ..) => Box::new(LocalTarget::host(&bin.canonicalize().context("--local")?, &repo)?),
        (_, Some(bin), _) => Box::new(LocalTarget::qemu(&bin.canonicalize().context("--qemu")?, &repo)?),
        _ if args.vm.is_some() => {
            let deb = args.deb.as_ref().context("--vm needs --deb: the vigil package the virtual board installs")?;
            Box::new(VmTarget::new(VmOptions {
                arch: Arch::parse(args.vm.as_deref().unwrap_or("amd64"))?,
                repo: repo.clone(),
                deb: deb.canonicalize().with_context(|| format!("--deb {}", deb.display()))?,
                accel: Accel::parse(&args.vm_accel)?,
                rtc_base: args.vm_rtc.clone(),
            })?)
        }
        (.., Some(lab)) => {
            let lab = Lab::load(lab)?;
            let t = lab.target(args.target.as_deref())?.clone();
            if !t.ignored.is_empty() {
                eprintln!("vigil-hil: {}: not used by the rig: {}", t.name, t.ignored.join(", "));
            }
            Box::new(SshTarget::new(t)?)
        }
        _ => anyhow::bail!("name a target: --local BINARY, --qemu BINARY, --vm [ARCH] or --lab FILE"),
    };
    let clip = args.clip.clone().unwrap_or_else(|| repo.join("models/clips/shapes-eval.mp4"));
    let device = format!("hil-{}", target.kind());
    let bundle = repo.join("models/bundles/shapes-v1");
    let mut rig = Rig::start(&target.rig_address(), &device, &clip, &bundle)?;
    let next_vigil = match (&args.next_vigil, &args.next_vigil_version) {
        (Some(p), Some(v)) => Some((p.canonicalize().context("--next-vigil")?, v.clone())),
        (Some(p), None) => {
            let out = std::process::Command::new(p).arg("--version").output();
            let out = out
                .with_context(|| format!("cannot run {} to ask its version: give --next-vigil-version", p.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v = text
                .trim()
                .strip_prefix("vigil ")
                .with_context(|| format!("{} --version said {text:?}", p.display()))?;
            Some((p.canonicalize().context("--next-vigil")?, v.to_owned()))
        }
        _ => None,
    };
    let settings = Settings {
        soak: Duration::from_secs(args.soak_s),
        only: args.scenarios.clone(),
        skip: args.skip.clone(),
        next_vigil,
        upgrade_deb,
    };
    eprintln!(
        "vigil-hil: {} target; the rig's camera {}, broker {}",
        target.kind(),
        rig.camera_url(),
        rig.broker_url()
    );
    let report = suite::run(target.as_mut(), &mut rig, &settings, |s| {
        let what = s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        eprintln!("vigil-hil: {:<21} {:?} in {:.0} s{what}", s.name, s.status, s.seconds);
    })?;
    vigil_hil::report::write_all(&report, &args.out)?;
    eprintln!(
        "vigil-hil: {}: {} passed, {} failed, {} skipped; report in {}/report.html",
        report.target,
        report.count(Status::Passed),
        report.count(Status::Failed),
        report.count(Status::Skipped),
        args.out.display()
    );
    Ok(report.count(Status::Failed) == 0)
}
