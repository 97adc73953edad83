//! The scheduler daemon: REAPI `Execution`, `google.longrunning.Operations`
//! and `Capabilities` for clients, the worker protocol
//! (`buildbarn.remoteworker.OperationQueue`) for workers.
//!
//! It checks the Action Cache, queues actions per instance name and
//! platform, merges identical in-flight actions, and hands them to workers
//! that synchronize with it.
//!
//! Every service asks the scheduler's [`corral_auth::Authorizer`] before
//! it acts ([`access`] holds the rules beyond a single grant); the
//! default one allows everything.
//!
//! Modules:
//! - [`access`] — who may watch or cancel an operation, and permissions
//!   over a worker's instance name prefix.
//! - [`action`] — checking an Action and Command before queueing.
//! - [`assignment`] — queued actions to workers; silent workers' actions
//!   queued again; completions only from the assigned worker; platforms
//!   no worker offers.
//! - [`build_queue_state_service`] — Buildbarn's BuildQueueState: the
//!   operator's view of operations, queues, invocations and workers, and
//!   its levers (kill, drain); [`queue_state`] — the scheduler's state in
//!   Buildbarn's model, per caller; [`drain`] — what a drain matches.
//! - [`capabilities_service`] — REAPI `Capabilities`: storage's plus ours.
//! - [`config`] — `scheduler.toml`; [`timing`] — every interval in one value.
//! - [`dispatch`] — which queue a worker takes from: tenants in weighted
//!   turns, each worker platform's served queues indexed.
//! - [`execution_service`] — REAPI `Execute` and `WaitExecution`.
//! - [`metrics`] — Prometheus metrics and their HTTP page.
//! - [`operation`] — operations, their watchers, in-flight deduplication.
//! - [`operation_ids`] — the trait naming operations;
//!   [`random_operation_ids`] — its production implementation.
//! - [`operation_queue_service`] — `Synchronize` for workers.
//! - [`operations_service`] — `google.longrunning.Operations`.
//! - [`platform_matching`] — exact, subset and minimum platform properties.
//! - [`queue`] — per-platform queues: priority, fairness, FIFO.
//! - [`size_class`] — which size class an action runs on first, learned
//!   from its past runs; [`size_class_history`] — that history in the
//!   Action Cache.
//! - [`storage_client`] — what the scheduler reads from storage;
//!   [`joined_reads`] — remote reads of concurrent Executes in shared calls.
//! - [`sweeper`] — what happens as time passes.
//! - [`task`] — the one way to start a background task.
//! - [`web`] — the web UI on the HTTP port: queues, workers, operations,
//!   actions (one file per page).
//! - [`error`] — the crate's error type.
//!
//! The scheduler never runs anything itself, and writes to storage only
//! its size class histories: workers store results.

#![forbid(unsafe_code)]

mod access;
mod action;
mod adoption;
pub mod assignment;
mod build_queue_state_service;
mod capabilities_service;
pub mod config;
pub mod dispatch;
mod drain;
mod error;
mod execution_service;
mod joined_reads;
pub mod metrics;
pub mod operation;
mod operation_ids;
pub mod operation_queue_service;
mod operations_service;
pub mod platform_matching;
pub mod queue;
mod queue_state;
mod random_operation_ids;
pub mod size_class;
pub mod size_class_history;
// Public for the size class tests, which read histories from storage.
pub mod storage_client;
mod sweeper;
mod task;
mod timing;
mod web;

pub use capabilities_service::CacheCapabilitiesSource;
pub use config::Config;
pub use error::Error;
pub use operation_ids::OperationIds;
pub use timing::Timing;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_auth::channel::Connector;
use corral_auth::Authorizer;
use corral_auth::{Auth, AuthenticationLayer};
use corral_proto::buildqueuestate::build_queue_state_server::BuildQueueStateServer;
use corral_proto::longrunning::operations_server::OperationsServer;
use corral_proto::reapi::capabilities_server::CapabilitiesServer;
use corral_proto::reapi::execution_server::ExecutionServer;
use corral_proto::reapi::CacheCapabilities;
use corral_proto::remoteworker::operation_queue_server::OperationQueueServer;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::adoption::Adoptions;
use crate::assignment::Assignments;
use crate::operation::Operations;
use crate::storage_client::StorageClient;
use crate::task::AbortOnDrop;

/// A scheduler's state and its background sweep, ready to be served alone
/// ([`Scheduler::serve`], [`run`]) or next to storage on one port
/// ([`Scheduler::routes`]).
pub struct Scheduler {
    cfg: Config,
    timing: Timing,
    storage: StorageClient,
    cache_capabilities: CacheCapabilitiesSource,
    /// Where actions start, learned from their runs; `None`: off.
    size_classes: Option<Arc<size_class::SizeClasses>>,
    ids: Arc<dyn OperationIds>,
    assignments: Arc<Assignments>,
    operations: Arc<Mutex<Operations>>,
    /// Runs workers report that a scheduler before a restart handed out.
    adoptions: Arc<Adoptions>,
    authorizer: Authorizer,
    /// Establishes each caller when the scheduler serves alone ([`serve`]).
    authentication: AuthenticationLayer,
    sweeper: Arc<AbortOnDrop>,
}

/// How to build a [`Scheduler`] other than from its config alone.
pub struct Builder {
    cfg: Config,
    timing: Timing,
    ids: Arc<dyn OperationIds>,
    cache_capabilities: Option<CacheCapabilities>,
    storage: Option<StorageClient>,
    authorizer: Option<Authorizer>,
}

impl Builder {
    /// Reads storage in this process instead of over gRPC from
    /// `cfg.storage`: for a daemon serving storage too (`corral up`).
    pub fn storage_in_process(
        mut self,
        cfg: &corral_storage::Config,
        stores: &corral_storage::Stores,
    ) -> Self {
        self.storage = Some(StorageClient::in_process(cfg, stores));
        self
    }

    /// Other intervals than `cfg`'s (tests shorten them).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Another source of operation names (tests predict them).
    pub fn ids(mut self, ids: Arc<dyn OperationIds>) -> Self {
        self.ids = ids;
        self
    }

    /// Who may do what, asked by every service before it acts, instead
    /// of what `cfg.auth` says (without `[auth]` every caller may do
    /// everything). For a daemon that serves the scheduler next to its
    /// own authentication (`corral up`), and tests.
    pub fn authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// The cache capabilities to report, for a daemon serving storage on
    /// the scheduler's port. Without this the scheduler asks `storage`,
    /// which on a shared port would be the scheduler itself, forever.
    pub fn cache_capabilities(mut self, cache: CacheCapabilities) -> Self {
        self.cache_capabilities = Some(cache);
        self
    }

    /// Checks the configuration and starts the background sweep. Must run
    /// inside a tokio runtime; connects to storage only on first use.
    pub fn build(self) -> Result<Scheduler, Error> {
        self.cfg.validate()?;
        tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        let storage = match self.storage {
            Some(storage) => storage,
            None => {
                let connector =
                    Connector::new(self.cfg.client_tls.as_ref()).map_err(Error::Client)?;
                StorageClient::new(&connector, &self.cfg.storage).map_err(Error::Client)?
            }
        };
        let cache_capabilities = match self.cache_capabilities {
            Some(cache) => CacheCapabilitiesSource::Fixed(cache),
            None => CacheCapabilitiesSource::Storage(storage.clone()),
        };
        let auth = Auth::from_config(self.cfg.auth.as_ref()).map_err(Error::Auth)?;
        let size_classes = self.cfg.size_classes.clone().map(|cfg| {
            let store = size_class_history::HistoryStore::new(
                storage.clone(),
                cfg.history_instance_name.clone(),
            );
            size_class::SizeClasses::new(cfg, size_class::os_random(), Some(store))
        });
        let mut assignments = Assignments::new(&self.timing, self.cfg.max_retries).with_rules(
            platform_matching::PlatformMatcher::new(self.cfg.platform_matching.clone()),
            self.cfg.fairness.clone(),
        );
        if let Some(sizes) = &size_classes {
            assignments = assignments.with_size_classes(Arc::clone(sizes));
        }
        let assignments = Arc::new(assignments);
        let operations = Arc::new(Mutex::new(Operations::default()));
        let adoptions = Arc::new(Adoptions::new(
            self.timing.sync_interval,
            self.timing.worker_timeout,
        ));
        let sweeper = Arc::new(task::spawn(sweeper::sweep_forever(
            Arc::clone(&assignments),
            Arc::clone(&operations),
            Arc::clone(&adoptions),
            self.timing.clone(),
        )));
        Ok(Scheduler {
            cfg: self.cfg,
            timing: self.timing,
            storage,
            cache_capabilities,
            size_classes,
            ids: self.ids,
            assignments,
            operations,
            adoptions,
            authorizer: self.authorizer.unwrap_or(auth.authorizer),
            authentication: AuthenticationLayer::new(auth.authenticator),
            sweeper,
        })
    }
}

impl Scheduler {
    /// A scheduler as `cfg` describes it. Must run inside a tokio runtime.
    pub fn new(cfg: Config) -> Result<Self, Error> {
        Self::builder(cfg).build()
    }

    /// A scheduler with more than `cfg` set.
    pub fn builder(cfg: Config) -> Builder {
        Builder {
            timing: Timing::from_config(&cfg),
            cfg,
            ids: Arc::new(random_operation_ids::RandomOperationIds::new()),
            cache_capabilities: None,
            storage: None,
            authorizer: None,
        }
    }

    /// Execution, Operations, Capabilities, OperationQueue and
    /// BuildQueueState, for a tonic server. They share this scheduler's state and keep its background
    /// sweep alive, so the `Scheduler` itself may be dropped.
    pub fn routes(&self) -> Routes {
        self.add_routes(Routes::default())
    }

    /// `routes` with the scheduler's services added, for a daemon that
    /// serves more on the same port: `corral up` passes
    /// `corral_storage::routes_without_capabilities(..)`.
    pub fn add_routes(&self, routes: Routes) -> Routes {
        let mut execution = execution_service::ExecutionService::new(
            self.storage.clone(),
            Arc::clone(&self.assignments),
            Arc::clone(&self.operations),
            Arc::clone(&self.ids),
            Duration::from_secs(self.cfg.default_timeout_s),
            Duration::from_secs(self.cfg.max_timeout_s),
            self.authorizer.clone(),
        )
        .with_sweeper(Arc::clone(&self.sweeper));
        if let Some(sizes) = &self.size_classes {
            execution = execution.with_size_classes(Arc::clone(sizes));
        }
        let operations = operations_service::OperationsService::new(
            Arc::clone(&self.operations),
            Arc::clone(&self.assignments),
            self.authorizer.clone(),
        );
        let queue = operation_queue_service::OperationQueueService::new(
            Arc::clone(&self.assignments),
            self.timing.long_poll,
            self.authorizer.clone(),
        )
        .with_adoption(operation_queue_service::Adopter {
            adoptions: Arc::clone(&self.adoptions),
            operations: Arc::clone(&self.operations),
            ids: Arc::clone(&self.ids),
        })
        .with_sweeper(Arc::clone(&self.sweeper));
        let capabilities =
            capabilities_service::CapabilitiesService::new(self.cache_capabilities.clone());
        let admin = build_queue_state_service::BuildQueueStateService::new(
            Arc::clone(&self.assignments),
            Arc::clone(&self.operations),
            self.timing.clone(),
            self.authorizer.clone(),
        );
        routes
            .add_service(ExecutionServer::new(execution))
            .add_service(OperationsServer::new(operations))
            .add_service(OperationQueueServer::new(queue))
            .add_service(CapabilitiesServer::new(capabilities))
            .add_service(BuildQueueStateServer::new(admin))
    }

    /// The Prometheus page as a function to call when scraped, for a
    /// daemon that serves it (`corral_metrics::serve`), alone or with
    /// other pages.
    pub fn metrics_page(&self) -> impl Fn() -> String + Clone + Send + Sync + 'static {
        let assignments = Arc::clone(&self.assignments);
        let operations = Arc::clone(&self.operations);
        move || assignments.metrics().render(&assignments, &operations)
    }

    /// What `/readyz` checks for the scheduler: that storage answers (a
    /// GetCapabilities, cheap on any storage).
    pub fn readiness_checks(&self) -> Vec<(&'static str, corral_metrics::Check)> {
        let storage = self.storage.clone();
        let storage = corral_metrics::check(move || {
            let storage = storage.clone();
            async move {
                storage
                    .capabilities("")
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
            }
        });
        vec![("storage", storage)]
    }

    /// The web UI's routes ([`web`]), to serve on the HTTP port.
    pub fn web_routes(&self) -> corral_metrics::axum::Router {
        web::routes(web::Web {
            queue_state: build_queue_state_service::BuildQueueStateService::new(
                Arc::clone(&self.assignments),
                Arc::clone(&self.operations),
                self.timing.clone(),
                self.authorizer.clone(),
            ),
            operations: Arc::clone(&self.operations),
            storage: self.storage.clone(),
            authorizer: self.authorizer.clone(),
        })
    }

    /// The scheduler's HTTP port: `/metrics`, `/healthz`, `/readyz` and
    /// the web UI.
    pub fn http_routes(&self) -> corral_metrics::axum::Router {
        corral_metrics::http::router(self.metrics_page(), self.readiness_checks())
            .merge(self.web_routes())
    }

    /// Serves the scheduler alone on `listener` until `shutdown`, and its
    /// HTTP port (metrics, health) when `[metrics]` is configured.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let addr = listener.local_addr().map_err(Error::ListenerAddress)?;
        let tls = self
            .cfg
            .tls
            .as_ref()
            .map(|tls| tls.load("tls"))
            .transpose()
            .map_err(Error::Tls)?;
        let metrics_tls = match self.cfg.metrics_tls() {
            Some((tls, key)) => Some(tls.load(key).map_err(Error::Tls)?),
            None => None,
        };
        let metrics = match &self.cfg.metrics {
            Some(m) => {
                let bound =
                    TcpListener::bind(m.listen)
                        .await
                        .map_err(|source| Error::BindMetrics {
                            addr: m.listen,
                            source,
                        })?;
                tracing::info!(addr = %m.listen, tls = metrics_tls.is_some(), "scheduler metrics serving");
                Some(match &metrics_tls {
                    Some(tls) => corral_metrics::Listener::tls(bound, tls.rustls()),
                    None => corral_metrics::Listener::plaintext(bound),
                })
            }
            None => None,
        };
        tracing::info!(%addr, storage = %self.cfg.storage, tls = tls.is_some(), "scheduler serving");
        let grpc = corral_auth::tls::server(tonic::transport::Server::builder(), tls.as_ref())
            .map_err(|source| Error::Serve { addr, source })?
            .layer(self.authentication.clone())
            .add_routes(self.routes())
            .serve_with_incoming_shutdown(corral_storage::no_delay(listener), shutdown);
        let served = corral_metrics::serving_while(metrics, self.http_routes(), grpc).await;
        served.map_err(|source| Error::Serve { addr, source })?;
        tracing::info!(%addr, "scheduler stopped");
        Ok(())
    }
}

/// Serves the scheduler alone on `listener` until `shutdown`. `cfg.listen`
/// is not used: the caller binds, so tests can pass `127.0.0.1:0`.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    Scheduler::new(cfg)?.serve(listener, shutdown).await
}
