//! `corral worker`: the worker daemon alone. SIGTERM drains it: no new
//! action, the running ones get `stop_grace_s` to finish and be reported,
//! then it exits; a second SIGTERM, SIGINT (Ctrl-C) or the end of the
//! grace kills what still runs and gives it back to the scheduler.
//!
//! Flags override the file: `--metrics` sets `[metrics] listen`.
//!
//! Each slot group's runner must already serve its socket, with
//! `build_directory` set to `<directory>/build` of this worker: run
//! requests name paths relative to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use corral_worker::config::MetricsConfig;

use crate::{config, observability, shutdown};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// worker.toml; defaults are used when omitted (see docs/config.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve `GET /metrics`, `/healthz` and `/readyz` on this address
    /// (overrides `[metrics] listen`; a `[metrics.tls]` in the file stays).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// Runs the worker from its flags and file (worker.toml; defaults when
/// none is given).
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: corral_worker::Config = config::load(args.config.as_deref())?;
    apply(&args, &mut cfg);
    cfg.validate()?;
    // Inside the runtime: the worker's lazy channels to storage and the
    // scheduler need its reactor from the moment they are made.
    let runtime = shutdown::runtime()?;
    let (worker, _tracing) = {
        let _entered = runtime.enter();
        let tracing = observability::start(cfg.tracing.as_ref(), "corral-worker")?;
        let worker = corral_worker::Worker::new(cfg).context("preparing the worker")?;
        (worker, tracing)
    };
    protect_the_cache(&worker);
    runtime
        .block_on(async {
            let (stop, stop_now) = shutdown::drain_signals("worker");
            worker.run(stop, stop_now).await
        })
        .context("running the worker")?;
    Ok(ExitCode::SUCCESS)
}

/// Flags override the file.
fn apply(args: &WorkerArgs, cfg: &mut corral_worker::Config) {
    if let Some(listen) = args.metrics {
        cfg.metrics = Some(match cfg.metrics.take() {
            Some(metrics) => MetricsConfig { listen, ..metrics },
            None => MetricsConfig { listen, tls: None },
        });
    }
}

/// Without root and without subordinate ids, this host's runner runs
/// actions as the worker's own uid, which owns the file cache: the worker
/// then lays inputs out as copies (docs/decisions/0009).
pub fn protect_the_cache(worker: &corral_worker::Worker) {
    if let corral_sandbox::Mapping::Own { why, .. } = corral_sandbox::Mapping::detect() {
        worker.copy_inputs(&why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_flag_sets_the_listen_address_and_keeps_the_files_tls() {
        config::assert_the_metrics_flag_sets_listen_and_keeps_the_files_tls(
            |metrics, cfg: &mut corral_worker::Config| {
                apply(
                    &WorkerArgs {
                        config: None,
                        metrics,
                    },
                    cfg,
                );
            },
            |cfg| cfg.metrics.as_ref().map(|m| (m.listen, m.tls.clone())),
        );
    }
}
