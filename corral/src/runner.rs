//! `corral runner`: the runner daemon alone, until Ctrl-C or SIGTERM.
//!
//! Flags override the file: `--socket` sets `listen_path`, `--build-dir`
//! sets `build_directory`, `--policy-dir` sets `policies_directory`,
//! `--metrics` sets `[metrics] listen`, `--otlp-endpoint` sets
//! `[tracing] endpoint`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::{config, observability, shutdown};

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// runner.toml; defaults are used when omitted (see docs/config.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket to serve on (overrides `listen_path`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The worker's build directory; request paths are relative to it
    /// (overrides `build_directory`).
    #[arg(long, value_name = "DIR")]
    build_dir: Option<PathBuf>,
    /// A directory of <name>.toml policies added to the built-in ones
    /// (overrides `policies_directory`).
    #[arg(long, value_name = "DIR")]
    policy_dir: Option<PathBuf>,
    /// Serve the runner's Prometheus page (`GET /metrics`, plain HTTP)
    /// on this address (overrides `[metrics] listen`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Export spans over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (overrides `[tracing] endpoint`).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Stop when standard input closes: `corral up` holds the other end,
    /// so the runner ends with it even if it is killed outright.
    #[arg(long, hide = true)]
    stop_on_stdin_close: bool,
}

pub fn run(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: corral_runner::Config = config::load(args.config.as_deref())?;
    if let Some(socket) = args.socket {
        cfg.listen_path = socket;
    }
    if let Some(dir) = args.build_dir {
        cfg.build_directory = dir;
    }
    if let Some(dir) = args.policy_dir {
        cfg.policies_directory = Some(dir);
    }
    if let Some(listen) = args.metrics {
        cfg.metrics = Some(corral_runner::config::MetricsConfig { listen });
    }
    if let Some(endpoint) = args.otlp_endpoint {
        let sample_ratio = cfg.tracing.map_or(1.0, |t| t.sample_ratio);
        cfg.tracing = Some(corral_trace::TracingConfig {
            endpoint,
            sample_ratio,
        });
    }
    cfg.validate()?;
    let stop_on_stdin_close = args.stop_on_stdin_close;
    shutdown::runtime()?.block_on(async move {
        let _tracing = observability::start(cfg.tracing.as_ref(), "corral-runner")?;
        let stop = async move {
            if stop_on_stdin_close {
                tokio::select! {
                    () = shutdown::stop_signal("runner") => {}
                    () = shutdown::stdin_closed() => {
                        tracing::info!("standard input closed: stopping the runner");
                    }
                }
            } else {
                shutdown::stop_signal("runner").await;
            }
        };
        // Past the grace, the calls still running are dropped, which
        // kills their actions.
        shutdown::with_grace("runner", stop, |graceful| async {
            corral_runner::run(cfg, graceful)
                .await
                .context("running the runner")
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
