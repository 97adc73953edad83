//! `corral scheduler`: REAPI Execution for clients and the worker
//! protocol for workers, alone, until Ctrl-C or SIGTERM.
//!
//! Flags override the file: `--listen` sets `listen`, `--storage` sets
//! `storage`, `--metrics` sets `[metrics] listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use corral_scheduler::config::MetricsConfig;

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
    /// Serve the web UI, `GET /metrics`, `/healthz` and `/readyz` on this
    /// address (overrides `[metrics] listen`; a `[metrics.tls]` in the
    /// file stays).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

pub fn run(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: corral_scheduler::Config = config::load(args.config.as_deref())?;
    apply(&args, &mut cfg);
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

/// Flags override the file.
fn apply(args: &SchedulerArgs, cfg: &mut corral_scheduler::Config) {
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(storage) = &args.storage {
        cfg.storage = storage.clone();
    }
    if let Some(listen) = args.metrics {
        cfg.metrics = Some(match cfg.metrics.take() {
            Some(metrics) => MetricsConfig { listen, ..metrics },
            None => MetricsConfig { listen, tls: None },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_flag_sets_the_listen_address_and_keeps_the_files_tls() {
        config::assert_the_metrics_flag_sets_listen_and_keeps_the_files_tls(
            |metrics, cfg: &mut corral_scheduler::Config| {
                let args = SchedulerArgs {
                    config: None,
                    listen: None,
                    storage: None,
                    metrics,
                };
                apply(&args, cfg);
            },
            |cfg| cfg.metrics.as_ref().map(|m| (m.listen, m.tls.clone())),
        );
    }
}
