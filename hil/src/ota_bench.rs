//! `vigil-ota-bench`, in two parts, each against `sha256sum` reading the same archive in the same
//! run (over loopback the network is not the limit, so the ratio is vigil's own cost per byte):
//!
//! 1. The library: a model update from command to staged slot (TUF refresh, download over HTTPS,
//!    length and hash verified, the archive unpacked into a new slot, synced).
//! 2. The running service (the release `vigil` binary, one camera looping the shapes clip, a
//!    local mosquitto): `ota/apply` of the shipped model padded to the same size → staged,
//!    accepted, serving, with the frames lost at the swap; then a model that detects less (its
//!    score threshold raised), from its activation to its rollback by the canary, against the
//!    canary's window (the frames it must see at the camera's rate).

use std::path::Path;

#[path = "ota_bench/service.rs"]
mod service;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use vigil_ota::repo::{self, Expiry, RoleKeyFiles};
use vigil_ota::target::{Compat, Device, Kind, TargetMeta};
use vigil_ota::time::AssumeSynchronized;
use vigil_ota::transport::Timeouts;
use vigil_ota::{Updater, UpdaterConfig};
use vigil_testkit::https::Server;

#[derive(Parser)]
#[command(about = "OTA of a model bundle against sha256sum of the same archive")]
struct Args {
    /// Size of the bundle's model file, in MiB.
    #[arg(long, default_value_t = 50)]
    mb: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip part 2 (the running service).
    #[arg(long)]
    library_only: bool,
}

/// `len` bytes that do not compress (a model's weights do not).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let repo = rt.block_on(library(&args, dir.path()))?;
    if !args.library_only {
        // The HTTPS server goes on serving from the runtime's workers.
        service::run(&args, dir.path(), &repo, &rt)?;
    }
    Ok(())
}

/// The signed repository and its server, for part 2.
struct Repo {
    server: Server,
    roles: RoleKeyFiles,
}

async fn library(args: &Args, d: &Path) -> anyhow::Result<Repo> {
    for sub in ["pki", "bundle"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let expiry = Expiry::default();
    let roles = repo::init_with_new_keys(&d.join("repo"), &d.join("keys"), &expiry).await?;
    std::fs::write(d.join("bundle/manifest.toml"), "schema = 1\n")?;
    std::fs::write(d.join("bundle/model.onnx"), noise(args.mb << 20))?;
    let archive = d.join("bundle.tar");
    vigil_ota::archive::pack_dir(&d.join("bundle"), &archive)?;
    let meta = TargetMeta {
        kind: Kind::Model,
        name: "bench".into(),
        version: "1.0.0".parse()?,
        compat: Compat::default(),
        allow_downgrade: false,
    };
    repo::add(&d.join("repo"), &archive, "models/bench-1.0.0", &meta, &roles, &expiry, |_| {}).await?;
    let server = Server::start(d.join("repo"), &d.join("pki")).await;
    let size = std::fs::metadata(&archive)?.len();
    println!("bundle archive: {:.1} MiB; loopback HTTPS; {} runs", size as f64 / (1 << 20) as f64, args.runs);
    let (mut ota, mut sha) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let state = d.join(format!("device-{run}"));
        std::fs::create_dir_all(&state)?;
        let config = UpdaterConfig {
            metadata_url: server.url("metadata").parse()?,
            targets_url: server.url("targets").parse()?,
            state_dir: state.join("ota"),
            shipped_root: d.join("repo/metadata/1.root.json"),
            ca: server.ca.clone(),
            client_cert: None,
            timeouts: Timeouts::default(),
            limits: vigil_ota::client::default_limits(),
        };
        let device = Device {
            boards: vec!["generic".into()],
            soc: None,
            arch: std::env::consts::ARCH.into(),
            jetpack: None,
            backends: vec!["onnxruntime".into()],
            vigil: env!("CARGO_PKG_VERSION").parse()?,
        };
        let t0 = Instant::now();
        let updater = Updater::new(config, Arc::new(AssumeSynchronized))?;
        let trusted = updater.refresh().await?;
        let offer = updater.choose(&trusted, &device, "bench", None)?;
        let staged = state.join("bench.tar");
        updater.download(&trusted, &offer, &staged).await?;
        vigil_ota::archive::unpack(&staged, &state.join("slot"), Default::default())?;
        let took = t0.elapsed();
        let baseline = sha256sum(&staged)?;
        println!(
            "run {run}: command → staged slot {:.3} s, sha256sum {:.3} s, ratio {:.2}",
            took.as_secs_f64(),
            baseline.as_secs_f64(),
            took.as_secs_f64() / baseline.as_secs_f64()
        );
        ota.push(took.as_secs_f64());
        sha.push(baseline.as_secs_f64());
    }
    let (o, s) = (vigil_testkit::median(&mut ota), vigil_testkit::median(&mut sha));
    println!("median: command → staged slot {o:.3} s, sha256sum {s:.3} s, ratio {:.2}", o / s);
    Ok(Repo { server, roles })
}

/// How long `sha256sum` takes to read `file` once.
fn sha256sum(file: &Path) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new("sha256sum").arg(file).output().context("sha256sum (coreutils) runs")?;
    anyhow::ensure!(out.status.success(), "sha256sum failed");
    Ok(t0.elapsed())
}
