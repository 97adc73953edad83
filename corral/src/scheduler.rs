//! `corral scheduler`: REAPI Execution for clients and the worker
//! protocol for workers, alone, until Ctrl-C or SIGTERM.
//!
//! Flags override the file: `--listen` sets `listen`, `--storage` sets
//! `storage`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::{config, observability, shutdown};

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// scheduler.toml; defaults are used when omitted (see docs/config.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Storage endpoint, e.g. http://storage:8980 (overrides `storage`).
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
}

pub fn run(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: corral_scheduler::Config = config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(storage) = args.storage {
        cfg.storage = storage;
    }
    cfg.validate()?;
    shutdown::runtime()?.block_on(async {
        let _tracing = observability::start(cfg.tracing.as_ref(), "corral-scheduler")?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        shutdown::with_grace(
            "scheduler",
            shutdown::stop_signal("scheduler"),
            |graceful| async {
                corral_scheduler::run(cfg, listener, graceful)
                    .await
                    .context("running the scheduler")
            },
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
