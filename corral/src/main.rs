//! `corral`: the one command people type.
//!
//! `corral up` runs a whole farm on this machine; the other subcommands run
//! one daemon each from its TOML file. This binary only parses flags, loads
//! configuration and calls the daemon crates.

#![forbid(unsafe_code)]

mod config;
mod drain;
mod observability;
mod runner;
mod sandbox;
mod scheduler;
mod secure;
mod shutdown;
mod storage;
mod up;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use observability::LogFormat;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CORRAL_GIT_COMMIT"),
    ")"
);

/// A sandboxed remote build-execution farm (REAPI v2).
#[derive(Debug, Parser)]
#[command(name = "corral", version = VERSION)]
struct Cli {
    /// Log line format; the filter comes from CORRAL_LOG (default `info`).
    #[arg(long, global = true, value_enum, env = observability::LOG_FORMAT_ENV, default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole farm on this machine: storage, scheduler, worker, runner.
    Up(up::UpArgs),
    /// Run the scheduler alone: REAPI Execution and the worker protocol.
    Scheduler(scheduler::SchedulerArgs),
    /// Run a worker alone.
    Worker(worker::WorkerArgs),
    /// Run a runner alone: the sandbox behind the runner protocol.
    Runner(runner::RunnerArgs),
    /// Run storage (CAS, Action Cache, ByteStream) alone.
    Storage(storage::StorageArgs),
    /// Drain workers: they finish what they run and take no new work.
    Drain(drain::DrainArgs),
    /// Sandbox tools: check policies.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon starts its logging itself (observability::start), once
    // its configuration says whether its spans are exported too.
    let daemon = matches!(
        cli.command,
        Command::Up(_)
            | Command::Scheduler(_)
            | Command::Worker(_)
            | Command::Runner(_)
            | Command::Storage(_)
    );
    if let Err(err) = observability::init(cli.log_format, daemon) {
        eprintln!("corral: {err:#}");
        return ExitCode::FAILURE;
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("corral: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(&args),
        Command::Scheduler(args) => scheduler::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Runner(args) => runner::run(args),
        Command::Storage(args) => storage::run(args),
        Command::Drain(args) => drain::run(args),
        Command::Sandbox(command) => sandbox::run(command),
    }
}
