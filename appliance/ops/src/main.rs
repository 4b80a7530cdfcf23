//! `vigil-ops`: the operator's tools, in their own binary and package so that none of them ships
//! on a device. Errors become messages and exit codes here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vigil-ops",
    version,
    about = "The operator's side of a vigil fleet: devices over MQTT, rollouts, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The fleet over MQTT: list devices, show one, send commands, watch events and metrics,
    /// roll updates out in waves (`fleet ota push`).
    Fleet(vigil_ops::fleet::FleetArgs),
    /// A simulated fleet on a broker, for rehearsing a rollout and for `fleet-bench`.
    FleetSim(vigil_ops::sim::SimArgs),
    /// Rollouts, `fleet list` and `fleet watch +` against simulated fleets of growing size:
    /// rates, bytes written, memory, and how the cost per device scales.
    FleetBench(vigil_ops::fleet_bench::FleetBenchArgs),
    /// vigil's capture and inference throughput and footprint on this machine, against
    /// baselines run side by side.
    Bench(vigil_ops::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fleet(args) => vigil_ops::fleet::run(&args),
        Command::FleetSim(args) => vigil_ops::sim::run(&args),
        Command::FleetBench(args) => vigil_ops::fleet_bench::run(&args),
        Command::Bench(args) => vigil_ops::bench::run(&args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
