//! The worker daemon: from a queued action to a stored result.
//!
//! Each build slot synchronizes with the scheduler (`buildbarn.remoteworker`),
//! lays out the action's input root as hardlinks into a local
//! content-addressed file cache, asks its runner to run the command
//! (`buildbarn.runner`, over a Unix socket), uploads the outputs and reports
//! the `ActionResult`.
//!
//! Modules:
//! - [`config`] — `worker.toml`.
//! - `error` — the crate's error type.
//! - [`cas_client`] — blobs and Action Cache entries, verified by digest.
//! - [`file_cache`] — content-addressed, read-only files to hardlink.
//! - [`directory_cache`] — Directory messages already read, by digest.
//! - `confirmed` — which cached blobs storage has shown to which
//!   instance names.
//! - [`input_root`] — lays out an action's input root.
//! - [`runner_client`] — the runner over its Unix socket.
//! - `outputs` — output parents before the run, outputs after it.
//! - [`executor`] — one action, from Action to ExecuteResponse.
//! - [`metrics`] — Prometheus metrics of the worker.
//! - `health` — what `/readyz` checks: runners and the scheduler.
//! - `slot` — one build slot synchronizing with the scheduler.
//!
//! [`Worker`] (or [`run`]) is the entry point: one slot per unit of
//! concurrency, all sharing the file and directory caches, the storage
//! connection and the metrics.
//!
//! The worker writes executables and never forks: a child forked while
//! another thread has an executable open for writing inherits that fd, and
//! exec of the file then fails with ETXTBSY. So running commands is the
//! runner's job, and this crate never links the sandbox
//! (tests/architecture.rs checks).

#![forbid(unsafe_code)]

pub mod cas_client;
pub mod config;
mod confirmed;
pub mod directory_cache;
mod error;
pub mod executor;
pub mod file_cache;
mod health;
pub mod input_root;
pub mod metrics;
mod outputs;
pub mod runner_client;
mod slot;

pub use config::Config;
pub use error::Error;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_auth::channel::Connector;
use corral_proto::reapi::{platform::Property, Platform};
use corral_proto::remoteworker::operation_queue_client::OperationQueueClient;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often a stopping worker logs the actions it still waits for.
const DRAIN_LOG_EVERY: Duration = Duration::from_secs(10);

/// Empties `dir` (what a previous run left is not ours to trust) and
/// creates it; the entry `keep`, if any, stays (the image store, which
/// checks its own entries when it opens).
fn fresh_directory(dir: &Path, keep: Option<&str>) -> Result<(), Error> {
    let prepare = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Prepare { path, source }
    };
    let Some(keep) = keep else {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(prepare(dir)(e)),
            _ => {}
        }
        return std::fs::create_dir_all(dir).map_err(prepare(dir));
    };
    std::fs::create_dir_all(dir).map_err(prepare(dir))?;
    for entry in std::fs::read_dir(dir).map_err(prepare(dir))? {
        let entry = entry.map_err(prepare(dir))?;
        let path = entry.path();
        // file_type does not follow a symlink: its target stays, and a
        // symlink named `keep` goes (the store is a directory of ours).
        let is_dir = entry.file_type().map_err(prepare(&path))?.is_dir();
        if is_dir && entry.file_name() == keep {
            continue;
        }
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(prepare(&path))?;
    }
    Ok(())
}

/// The image store's directory, under the build directory.
const IMAGES: &str = "images";

/// Runs `cleanup` (unlinks that may take a while) on a blocking thread
/// without waiting for it, or here when no runtime is running. For drop
/// guards: a drop cannot await, and runs on whatever thread dropped.
pub(crate) fn clean_up_detached(cleanup: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(cleanup)),
        Err(_) => cleanup(),
    }
}

/// This machine's name, for the worker id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// The slots of one slot group: its concurrency, one per core when 0.
fn concurrency(group: &config::SlotGroup) -> usize {
    if group.concurrency == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        group.concurrency
    }
}

/// A worker, prepared: directories emptied, caches open, metrics ready.
pub struct Worker {
    cfg: Config,
    /// Channels to the scheduler and storage, as `[client_tls]` says.
    connector: Connector,
    shared: executor::Shared,
    /// Whether the slots' last Synchronize was answered, for `/readyz`.
    contact: Arc<health::SchedulerContact>,
}

impl Worker {
    /// Checks `cfg`, empties the build directory (but for the image
    /// store, which keeps its complete images) and opens the caches.
    pub fn new(cfg: Config) -> Result<Worker, Error> {
        cfg.validate()?;
        let connector = Connector::new(cfg.client_tls.as_ref()).map_err(Error::Client)?;
        let images = cfg.images.enabled.then_some(IMAGES);
        fresh_directory(&cfg.directory.join("build"), images)?;
        let cache = Arc::new(file_cache::FileCache::open(
            cfg.directory.join("cache"),
            cfg.cache_max_size_bytes,
        )?);
        let slots = cfg.slots.iter().map(concurrency).sum();
        // Under the build directory: the runner resolves the image roots
        // the worker names there, as it does input roots.
        let images = images
            .map(|name| {
                corral_image::ImageStore::open(cfg.directory.join("build").join(name), &cfg.images)
            })
            .transpose()
            .map_err(Error::Images)?;
        let shared = executor::Shared {
            images,
            cas: cas_client::CasClient::connect(&connector, &cfg.storage)?,
            cache,
            directories: Arc::new(directory_cache::DirectoryCache::new(
                cfg.directory_cache_max_size_bytes,
            )),
            input_root_max_entries: cfg.input_root_max_entries,
            output_limits: cfg.limits,
            metrics: Arc::new(metrics::Metrics::new(slots)),
        };
        Ok(Worker {
            cfg,
            connector,
            contact: Arc::default(),
            shared,
        })
    }

    /// Lays every input out as a copy (a reflink where the file system has
    /// them) rather than a hardlink: for a host where the actions run as
    /// the worker's own uid (`why`), which owns the file cache, so an
    /// action could chmod a hardlinked input and rewrite what every later
    /// action gets.
    pub fn copy_inputs(&self, why: &str) {
        tracing::warn!(
            reason = why,
            "input files are laid out as copies, not hardlinks: the actions run as the \
             worker's own uid, which owns the file cache"
        );
        self.shared.cache.copy_inputs();
    }

    /// The worker's Prometheus page, to render when scraped.
    pub fn metrics_page(&self) -> metrics::Page {
        metrics::Page {
            metrics: Arc::clone(&self.shared.metrics),
            cache: Arc::clone(&self.shared.cache),
            images: self.shared.images.clone(),
        }
    }

    /// What `/readyz` checks for the worker: each runner answers its
    /// readiness check, and the scheduler answered the last Synchronize.
    pub fn readiness_checks(&self) -> Vec<(&'static str, corral_metrics::Check)> {
        let mut sockets: Vec<PathBuf> = self.cfg.slots.iter().map(|g| g.runner.clone()).collect();
        sockets.sort();
        sockets.dedup();
        let runners: Vec<runner_client::RunnerClient> = sockets
            .iter()
            .map(|socket| runner_client::RunnerClient::new(socket))
            .collect();
        let runner = corral_metrics::check(move || {
            let runners = runners.clone();
            async move {
                for runner in &runners {
                    runner.check_readiness().await.map_err(|status| {
                        format!(
                            "{}: {:?}: {}",
                            runner.socket().display(),
                            status.code(),
                            status.message()
                        )
                    })?;
                }
                Ok(())
            }
        });
        let contact = Arc::clone(&self.contact);
        let scheduler = corral_metrics::check(move || {
            let answer = contact.check();
            async move { answer }
        });
        vec![("runner", runner), ("scheduler", scheduler)]
    }

    /// The worker's HTTP port: `/metrics`, `/healthz`, `/readyz`.
    pub fn http_routes(&self) -> corral_metrics::axum::Router {
        let page = self.metrics_page();
        corral_metrics::http::router(move || page.render(), self.readiness_checks())
    }

    /// Runs the slots, and serves the HTTP port (metrics, health) when
    /// `[metrics]` is configured, until told to stop:
    /// - when `stop` completes, the slots take no new action; the running
    ///   ones get `stop_grace_s` to finish and be reported;
    /// - when `stop_now` completes, or the grace is over, the running
    ///   actions are killed (their runner calls cancelled) and given back
    ///   to the scheduler, which queues them again at once.
    ///
    /// Then it returns. Each step is logged.
    ///
    /// The runners named by the slot groups must use `<directory>/build`
    /// as their build directory: run requests name paths relative to it.
    /// Each is asked first (see
    /// [`RunnerClient::check_build_directory`](runner_client::RunnerClient::check_build_directory)):
    /// a runner resolving paths elsewhere stops the worker here.
    pub async fn run(
        self,
        stop: impl Future<Output = ()>,
        stop_now: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let metrics = match &self.cfg.metrics {
            Some(m) => {
                let tls = m
                    .tls
                    .as_ref()
                    .map(|tls| tls.load("metrics.tls"))
                    .transpose()
                    .map_err(Error::Tls)?;
                let bound = tokio::net::TcpListener::bind(m.listen)
                    .await
                    .map_err(|source| Error::BindMetrics {
                        addr: m.listen,
                        source,
                    })?;
                tracing::info!(addr = %m.listen, tls = tls.is_some(), "worker metrics serving");
                Some(match tls {
                    Some(tls) => corral_metrics::Listener::tls(bound, tls.rustls()),
                    None => corral_metrics::Listener::plaintext(bound),
                })
            }
            None => None,
        };
        let routes = self.http_routes();
        corral_metrics::serving_while(metrics, routes, self.run_slots(stop, stop_now)).await
    }

    async fn run_slots(
        self,
        stop: impl Future<Output = ()>,
        stop_now: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let cfg = &self.cfg;
        let build_dir = cfg.directory.join("build");
        let scheduler = self
            .connector
            .connect_lazy("scheduler", &cfg.scheduler)
            .map_err(Error::Client)?;
        tokio::pin!(stop, stop_now);
        // A runner resolving paths under another directory would fail
        // every action: refuse to start instead, naming both.
        let mut sockets: Vec<&Path> = cfg.slots.iter().map(|g| g.runner.as_path()).collect();
        sockets.sort();
        sockets.dedup();
        for socket in sockets {
            let runner = runner_client::RunnerClient::new(socket);
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = &mut stop_now => return Ok(()),
                checked = runner.check_build_directory(&build_dir) => checked?,
            }
        }
        let host = hostname();
        let (stopping, stop_rx) = watch::channel(slot::Stop::Running);
        let mut slots = JoinSet::new();
        let mut number = 0usize;
        for group in &cfg.slots {
            let mut offered = group.offered();
            if cfg.images.enabled {
                // Any image: the scheduler matches this name by presence.
                offered.push((
                    executor::IMAGE_PROPERTY.to_owned(),
                    executor::ANY_IMAGE.to_owned(),
                ));
                offered.sort();
                offered.dedup();
            }
            let platform = Platform {
                properties: offered
                    .into_iter()
                    .map(|(name, value)| Property { name, value })
                    .collect(),
            };
            let runner = runner_client::RunnerClient::new(&group.runner);
            for _ in 0..concurrency(group) {
                let mut worker_id = cfg.worker_id.clone();
                worker_id.insert("hostname".to_owned(), host.clone());
                worker_id.insert("slot".to_owned(), number.to_string());
                let executor = executor::Executor::new(
                    format!("{host}/slot-{number}"),
                    build_dir.clone(),
                    format!("s{number}"),
                    self.shared.clone(),
                    runner.clone(),
                );
                let slot = slot::Slot {
                    identity: slot::Identity {
                        worker_id,
                        instance_name_prefix: cfg.instance_name_prefix.clone(),
                        platform: platform.clone(),
                        size_class: group.size_class,
                    },
                    scheduler: OperationQueueClient::new(scheduler.clone()),
                    runner: runner.clone(),
                    executor,
                    stop: stop_rx.clone(),
                    contact: Arc::clone(&self.contact),
                };
                let span = tracing::info_span!("slot", slot = number);
                slots.spawn(tracing::Instrument::instrument(slot.run(), span));
                number += 1;
            }
        }
        tracing::info!(slots = number, scheduler = %cfg.scheduler, "worker running");
        let now = loop {
            tokio::select! {
                () = &mut stop => break false,
                () = &mut stop_now => break true,
                joined = slots.join_next() => match joined {
                    // Slots end only when told to stop; one that ended
                    // panicked.
                    Some(Err(error)) => tracing::error!(%error, "a slot stopped"),
                    Some(Ok(())) => {}
                    None => return Ok(()),
                },
            }
        };
        let metrics = &self.shared.metrics;
        let cause = if now {
            Some("asked to stop at once")
        } else {
            self.drain(&mut slots, &stopping, &mut stop_now).await
        };
        if let Some(cause) = cause {
            tracing::warn!(
                running = metrics.executing_now(),
                cause,
                "stopping now: killing the running actions and giving them back to the scheduler"
            );
            stopping.send_replace(slot::Stop::Now);
            // Each slot sends its last report within LAST_REPORT_MAX.
            let reported = async { while slots.join_next().await.is_some() {} };
            if tokio::time::timeout(slot::LAST_REPORT_MAX * 2, reported)
                .await
                .is_err()
            {
                tracing::warn!("slots still reporting; dropping them");
            }
            // Dropping a slot drops its action; the build directory is
            // removed as the executor's future drops.
            slots.shutdown().await;
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    /// Tells the slots to take no new work and waits up to `stop_grace_s`
    /// for the running actions to finish and be reported, logging what is
    /// left. Returns why it stopped waiting with actions still running,
    /// or `None` when every slot has finished.
    async fn drain(
        &self,
        slots: &mut JoinSet<()>,
        stopping: &watch::Sender<slot::Stop>,
        stop_now: impl Future<Output = ()>,
    ) -> Option<&'static str> {
        let metrics = &self.shared.metrics;
        let grace = Duration::from_secs(self.cfg.stop_grace_s);
        tracing::info!(
            running = metrics.executing_now(),
            grace_s = grace.as_secs(),
            "stopping: taking no new work; the running actions have the grace to finish \
             (SIGTERM again or SIGINT kills them at once)"
        );
        stopping.send_replace(slot::Stop::Drain);
        let deadline = tokio::time::Instant::now() + grace;
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + DRAIN_LOG_EVERY,
            DRAIN_LOG_EVERY,
        );
        tokio::pin!(stop_now);
        loop {
            tokio::select! {
                joined = slots.join_next() => match joined {
                    Some(Err(error)) => tracing::error!(%error, "a slot stopped"),
                    Some(Ok(())) => {}
                    None => {
                        tracing::info!("every action finished and was reported");
                        return None;
                    }
                },
                () = &mut stop_now => return Some("asked to stop at once"),
                () = tokio::time::sleep_until(deadline) => return Some("the grace is over"),
                _ = progress.tick() => tracing::info!(
                    running = metrics.executing_now(),
                    grace_left_s = deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs(),
                    "stopping: actions still running"
                ),
            }
        }
    }
}

/// Runs a worker from `cfg` until it is told to stop (see
/// [`Worker::run`]).
pub async fn run(
    cfg: Config,
    stop: impl Future<Output = ()>,
    stop_now: impl Future<Output = ()>,
) -> Result<(), Error> {
    Worker::new(cfg)?.run(stop, stop_now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_build_directory_keeps_only_the_image_store() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        std::fs::create_dir_all(build.join("images/ab/rootfs")).unwrap();
        std::fs::create_dir_all(build.join("7/root/sub")).unwrap();
        std::fs::write(build.join("7/stdout"), "left").unwrap();
        std::fs::write(build.join("stray"), "").unwrap();
        fresh_directory(&build, Some(IMAGES)).unwrap();
        let left: Vec<_> = std::fs::read_dir(&build)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["images"]);
        assert!(build.join("images/ab/rootfs").is_dir());

        // A symlink in the store's place goes, its target stays.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("file"), "").unwrap();
        std::fs::remove_dir_all(build.join("images")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, build.join("images")).unwrap();
        fresh_directory(&build, Some(IMAGES)).unwrap();
        assert!(std::fs::read_dir(&build).unwrap().next().is_none());
        assert!(elsewhere.join("file").exists());

        // Without images, everything goes.
        std::fs::create_dir_all(build.join("images/cd")).unwrap();
        fresh_directory(&build, None).unwrap();
        assert!(std::fs::read_dir(&build).unwrap().next().is_none());
    }
}
