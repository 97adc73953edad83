//! `corral up`: a whole farm on one machine, nothing to configure.
//!
//! Today that is storage (a complete remote cache) and the runner; the
//! scheduler and worker are listed as missing until they exist, so the
//! command never pretends to run actions it cannot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use corral_storage::config::Backend;

use crate::shutdown;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address clients connect to (REAPI: CAS, Action Cache, ByteStream,
    /// Capabilities; Execution once the scheduler exists).
    #[arg(long, default_value = "127.0.0.1:8980")]
    pub listen: SocketAddr,
    /// Where storage, the runner's socket and the worker's build
    /// directories live.
    #[arg(long, default_value = "./corral-data")]
    pub data_dir: PathBuf,
    /// Build slots; default one per core.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Parts of a farm `corral up` does not run yet, and why, with their issue.
const MISSING: &[(&str, &str, u32)] = &[
    (
        "scheduler (Execution, worker protocol)",
        "runs alone with `corral scheduler`; joins `corral up` with the worker",
        5,
    ),
    ("worker", "not implemented yet", 6),
];

pub fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let slots = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let storage = corral_storage::Config {
        listen: args.listen,
        backend: Backend::Disk {
            dir: args.data_dir.join("storage"),
            max_size_bytes: 10 << 30,
            fsync: false,
        },
        ..corral_storage::Config::default()
    };
    let runner = corral_runner::Config {
        listen_path: args.data_dir.join("runner.sock"),
        build_directory: args.data_dir.join("worker/build"),
        ..corral_runner::Config::default()
    };
    storage.validate()?;
    runner.validate()?;

    shutdown::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.changed().await;
            }
        };
        eprintln!(
            "corral up: serving on {} with data in {}",
            args.listen,
            args.data_dir.display()
        );
        eprintln!("  storage: ready (CAS, Action Cache, ByteStream, Capabilities)");
        eprintln!(
            "  runner: ready at {} ({slots} slot(s) once the worker exists)",
            runner.listen_path.display()
        );
        for (part, status, issue) in MISSING {
            eprintln!("  {part}: {status} (issue #{issue})");
        }
        eprintln!("Use it as a remote cache now:");
        eprintln!("  bazel build --remote_cache=grpc://{} //...", args.listen);
        eprintln!("Remote execution (--remote_executor) needs the scheduler and worker.");
        // Each daemon is a task; the first to stop (an error, or Ctrl-C)
        // stops them all, and the first error is what `up` reports.
        let mut daemons = tokio::task::JoinSet::new();
        let storage_stop = signal();
        daemons.spawn(async move {
            corral_storage::run(storage, listener, storage_stop)
                .await
                .context("running storage")
        });
        let runner_stop = signal();
        daemons.spawn(async move {
            corral_runner::run(runner, runner_stop)
                .await
                .context("running the runner")
        });
        let mut result = Ok(());
        tokio::select! {
            () = shutdown::stop_signal("farm") => {}
            Some(done) = daemons.join_next() => result = flatten(done),
        }
        let _ = stop.send(true);
        while let Some(done) = daemons.join_next().await {
            if result.is_ok() {
                result = flatten(done);
            }
        }
        result
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon task's result, a panic counted as an error.
fn flatten(done: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    done.context("a daemon task panicked")?
}
