//! The scheduler daemon: REAPI `Execution` and `Operations` for clients, the
//! worker protocol (`buildbarn.remoteworker.OperationQueue`) for workers.
//!
//! It checks the Action Cache, queues actions per instance name and
//! platform, merges identical in-flight actions, and hands them to workers
//! that synchronize with it.
//!
//! Modules:
//! - [`action`] — checking an Action and Command before queueing.
//! - [`assignment`] — queued actions to workers; silent workers' actions
//!   queued again; completions only from the assigned worker.
//! - [`config`] — `scheduler.toml`.
//! - [`execution_service`] — REAPI `Execute` and `WaitExecution`.
//! - [`storage_client`] — what the scheduler reads from storage.
//! - [`operation`] — operations, their watchers, in-flight deduplication.
//! - [`operation_queue_service`] — `Synchronize` for workers.
//! - [`queue`] — per-platform queues: priority, fairness, FIFO.
//! - [`error`] — the crate's error type.
//!
//! The scheduler never runs anything itself.

#![forbid(unsafe_code)]

pub mod action;
pub mod assignment;
pub mod config;
pub mod error;
pub mod execution_service;
pub mod operation;
pub mod operation_queue_service;
pub mod queue;
pub mod storage_client;

pub use config::Config;
pub use error::Error;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_proto::reapi::execution_server::ExecutionServer;
use corral_proto::remoteworker::operation_queue_server::OperationQueueServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

/// How often executing workers must report (Buildbarn uses about 10 s).
const SYNC_INTERVAL: Duration = Duration::from_secs(10);

/// How long an idle worker's Synchronize call is held waiting for work.
const LONG_POLL: Duration = Duration::from_secs(30);

/// The scheduler's services (Execution for clients, OperationQueue for
/// workers) over one shared state, ready to be served alone ([`run`]) or
/// next to storage on one port.
pub fn routes(cfg: &Config, storage_endpoint: &str) -> Result<Routes, Error> {
    cfg.validate()?;
    let storage = storage_client::StorageClient::new(storage_endpoint).map_err(|source| {
        Error::StorageEndpoint {
            endpoint: storage_endpoint.to_owned(),
            source,
        }
    })?;
    let assignments = Arc::new(assignment::Assignments::new(
        SYNC_INTERVAL,
        Duration::from_secs(cfg.worker_timeout_s),
        cfg.max_retries,
    ));
    let execution = execution_service::ExecutionService::new(
        storage,
        Arc::clone(&assignments),
        Arc::new(Mutex::new(operation::Operations::default())),
        Duration::from_secs(cfg.default_timeout_s),
        Duration::from_secs(cfg.max_timeout_s),
    );
    let queue = operation_queue_service::OperationQueueService::new(assignments, LONG_POLL);
    Ok(Routes::new(ExecutionServer::new(execution)).add_service(OperationQueueServer::new(queue)))
}

/// Serves the scheduler alone on `listener` until `shutdown`. Storage is
/// `cfg.storage`, or the same address when unset (as in `corral up`).
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(Error::ListenerAddress)?;
    let storage = cfg
        .storage
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let routes = routes(&cfg, &storage)?;
    tracing::info!(%addr, %storage, "scheduler serving");
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| Error::Serve { addr, source })
}
