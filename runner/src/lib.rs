//! The runner daemon: the one privileged process of a worker machine.
//!
//! It serves the runner protocol (`buildbarn.runner.Runner`) on a Unix
//! socket and runs each `RunRequest` in the sandbox, under the policy the
//! request names (`corral_policy`, an extension field; the default for a
//! stock bb_worker). A bb_worker can use it in place of bb_runner.
//!
//! Modules:
//! - [`config`] — `runner.toml`.
//! - `policies` — one prepared sandbox per policy.
//! - `action_ids` — host ids leased to runs, one per concurrent run.
//! - `service` — the gRPC service: paths, timeouts, outcomes.
//! - `server_logs` — each run's report, for the client's server logs.
//! - [`metrics`] — spawn latency, kills, landlock levels (`[metrics]`).
//! - `error` — the crate's error type.
//!
//! The runner never talks to storage or the scheduler. Each run blocks a
//! thread of tokio's blocking pool while it supervises the sandbox; the
//! sandbox forks with glibc's fork, which is safe from this multithreaded
//! daemon, and creates its namespaces in the single-threaded child.

#![forbid(unsafe_code)]

mod action_ids;
pub mod config;
mod error;
pub mod metrics;
mod policies;
mod server_logs;
mod service;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;

use corral_proto::runner::runner_server::RunnerServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

pub use config::Config;
pub use error::Error;
pub use policies::Policies;
pub use service::RunnerService;

/// Serves the runner on `cfg.listen_path` until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    cfg.validate()?;
    let policies = Policies::load(cfg.policies_directory.as_deref(), &cfg.default_policy)?;
    for warning in policies.warnings() {
        warn!("{warning}");
    }
    std::fs::create_dir_all(&cfg.build_directory).map_err(|source| Error::Prepare {
        path: cfg.build_directory.clone(),
        source,
    })?;
    let build_directory = cfg
        .build_directory
        .canonicalize()
        .map_err(|source| Error::Prepare {
            path: cfg.build_directory.clone(),
            source,
        })?;
    match corral_sandbox::disk::Enforcement::of(&build_directory) {
        Ok(enforcement) => info!("{enforcement}"),
        Err(e) => warn!(
            "cannot tell the file system of {}: {e}",
            build_directory.display()
        ),
    }
    let listener = bind(&cfg.listen_path)?;
    info!(
        socket = %cfg.listen_path.display(),
        build_directory = %build_directory.display(),
        policies = %policies.names().join(","),
        "runner ready"
    );
    let mapping = policies.default_sandbox().mapping().clone();
    let ids = action_ids::ActionIds::new(&mapping, cfg.action_ids.range());
    let metrics = metrics::Metrics::default();
    let http = match &cfg.metrics {
        Some(m) => {
            let bound = tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(|source| Error::BindMetrics {
                    addr: m.listen,
                    source,
                })?;
            info!(addr = %m.listen, "runner metrics serving");
            Some(corral_metrics::Listener::plaintext(bound))
        }
        None => None,
    };
    let service =
        RunnerService::new(build_directory, policies, mapping, ids).with_metrics(metrics.clone());
    let grpc = tonic::transport::Server::builder()
        .add_service(RunnerServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    // The runner's readiness is the worker's to check (its Ready call):
    // the port reports only that the process serves.
    let routes = corral_metrics::http::router(move || metrics.render(), Vec::new());
    let result = corral_metrics::serving_while(http, routes, grpc)
        .await
        .map_err(Error::Serve);
    let _ = std::fs::remove_file(&cfg.listen_path);
    result
}

/// Binds the Unix socket, replacing a stale one, with mode 0660.
fn bind(path: &std::path::Path) -> Result<UnixListener, Error> {
    let listen = |source| Error::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(listen)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen)?;
    Ok(listener)
}
