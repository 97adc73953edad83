//! `corral up`: a whole farm on one machine, nothing to configure.
//!
//! One process serves storage and the scheduler on one port and runs the
//! worker's slots; the runner is a child process. It has to be: the
//! worker writes executables into its file cache while the runner forks
//! sandboxes, and a fork in the worker's process would inherit those
//! files open for writing, making their exec fail with ETXTBSY. The child
//! sits in its own process group (Ctrl-C in a terminal reaches only this
//! process, which stops the parts in order) and stops when its standard
//! input closes, so it never outlives this process, even a killed one.
//! SIGTERM stops the worker first, letting its running actions finish
//! and be reported (its `stop_grace_s`), then storage, the scheduler and
//! the runner; Ctrl-C or a second SIGTERM stops everything at once, the
//! running actions killed.
//! When it dies, it is started again with backoff (`supervise_runner`):
//! the worker gives back the actions it was running and the scheduler
//! queues them again, so clients see only the delay.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use corral_storage::config::Backend;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::secure::{self, SecureFiles};
use crate::{observability, shutdown};

/// How long the runner has to start serving, and to stop.
const RUNNER_START: Duration = Duration::from_secs(20);
const RUNNER_STOP: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address clients and the farm's own worker connect to (REAPI:
    /// Execution, CAS, Action Cache, ByteStream, Capabilities, Operations).
    #[arg(long, default_value = "127.0.0.1:8980")]
    pub listen: SocketAddr,
    /// Where storage, the worker's cache and build directories and the
    /// runner's socket live.
    #[arg(long, default_value = "./corral-data")]
    pub data_dir: PathBuf,
    /// Build slots (actions run at once); default one per core.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Bound on stored blobs and results, least recently used evicted past
    /// it: a byte count or a number with KiB, MiB, GiB or TiB, as
    /// `corral storage --max-size` takes it.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = crate::storage::parse_size)]
    pub max_size: u64,
    /// Serve the web UI (`/`), Prometheus metrics (`/metrics`) and
    /// health (`/healthz`, `/readyz`) on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// TLS and authentication: make (or reuse) a local CA, certificates,
    /// a token and a grants file under `<data dir>/secure/`, and accept
    /// only a client that shows that certificate or that token.
    #[arg(long)]
    pub secure: bool,
    /// Serve plaintext without authentication on an address other hosts
    /// can reach. Anyone who reaches it may then run anything it allows.
    #[arg(long, conflicts_with = "secure")]
    pub insecure: bool,
    /// Export every part's spans (one trace per action, from Execute to
    /// the runner) over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317: `[tracing] endpoint` of each daemon.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Every daemon's configuration, derived from the flags.
struct Farm {
    /// `--secure`'s files; `None`: plaintext, no authentication.
    secure: Option<SecureFiles>,
    /// The one port's storage and scheduler; its `auth` is the port's.
    storage: corral_storage::Config,
    scheduler: corral_scheduler::Config,
    worker: corral_worker::Config,
    runner_socket: PathBuf,
    build_directory: PathBuf,
    slots: usize,
}

impl Farm {
    fn new(args: &UpArgs, data_dir: &Path) -> anyhow::Result<Farm> {
        let slots = match args.workers {
            Some(0) => bail!("--workers must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let secure = args
            .secure
            .then(|| secure::prepare(data_dir, args.listen))
            .transpose()?;
        // The farm's own clients of its port: loopback when it listens on
        // every address.
        let scheme = if secure.is_some() { "https" } else { "http" };
        let local = format!("{scheme}://{}", reachable(args.listen));
        let runner_socket = data_dir.join("runner.sock");
        let worker_directory = data_dir.join("worker");
        let storage = corral_storage::Config {
            listen: args.listen,
            backend: Backend::Disk {
                dir: data_dir.join("storage"),
                max_size_bytes: args.max_size,
                fsync: false,
            },
            auth: secure.as_ref().map(secure::auth_config),
            ..corral_storage::Config::default()
        };
        let scheduler = corral_scheduler::Config {
            listen: args.listen,
            storage: local.clone(),
            metrics: args
                .metrics
                .map(|listen| corral_scheduler::config::MetricsConfig { listen, tls: None }),
            tls: secure.as_ref().map(secure::server_tls),
            // Storage is read in process; this only keeps `storage` and
            // its TLS in agreement.
            client_tls: secure.as_ref().map(secure::worker_tls),
            ..corral_scheduler::Config::default()
        };
        let worker = corral_worker::Config {
            scheduler: local.clone(),
            storage: local,
            directory: worker_directory.clone(),
            slots: vec![corral_worker::config::SlotGroup {
                concurrency: slots,
                runner: runner_socket.clone(),
                platform: BTreeMap::new(),
                platform_lists: BTreeMap::new(),
                size_class: 0,
            }],
            client_tls: secure.as_ref().map(secure::worker_tls),
            ..corral_worker::Config::default()
        };
        let tracing = args
            .otlp_endpoint
            .as_ref()
            .map(corral_trace::TracingConfig::new);
        if let Some(tracing) = &tracing {
            tracing.validate("tracing").context("--otlp-endpoint")?;
        }
        let storage = corral_storage::Config {
            tracing: tracing.clone(),
            ..storage
        };
        let scheduler = corral_scheduler::Config {
            tracing: tracing.clone(),
            ..scheduler
        };
        let worker = corral_worker::Config { tracing, ..worker };
        storage.validate()?;
        scheduler.validate()?;
        worker.validate()?;
        Ok(Farm {
            secure,
            build_directory: worker_directory.join("build"),
            storage,
            scheduler,
            worker,
            runner_socket,
            slots,
        })
    }
}

/// Where a client on this machine reaches `listen`.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

pub fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() && !args.secure && !args.insecure {
        bail!(
            "--listen {} can be reached from other hosts, and without --secure the farm serves \
             plaintext with no authentication: anyone who reaches it could run actions and read \
             or overwrite its cache. Add --secure (TLS, and a client certificate or token made \
             under the data directory), or --insecure to serve it open anyway",
            args.listen
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // Absolute, because the runner child and the printed paths use it.
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let farm = Farm::new(args, &data_dir)?;
    shutdown::runtime()?.block_on(serve(farm, args.listen, &data_dir))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(farm: Farm, listen: SocketAddr, data_dir: &Path) -> anyhow::Result<()> {
    // One process, one exporter: the scheduler's, worker's and storage's
    // `[tracing]` are the same table here.
    let _tracing = observability::start(farm.scheduler.tracing.as_ref(), "corral-up")?;
    let otlp_endpoint = farm.scheduler.tracing.as_ref().map(|t| t.endpoint.clone());
    // One port serves storage and the scheduler: the scheduler's `[tls]`
    // covers both (plaintext unless a caller sets it).
    let tls = farm
        .scheduler
        .tls
        .as_ref()
        .map(|tls| tls.load("tls"))
        .transpose()?;
    let metrics_tls = farm
        .scheduler
        .metrics_tls()
        .map(|(tls, key)| tls.load(key))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let (stop, stopped) = watch::channel(false);
    let signal = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.changed().await;
        }
    };
    // The runner first, before any thread of the worker writes a file.
    // With a metrics port, the runner child serves its page on a loopback
    // port of its own, and the farm's page appends it.
    let runner_metrics = match &farm.scheduler.metrics {
        Some(_) => Some(loopback_port().context("choosing the runner's metrics port")?),
        None => None,
    };
    let runner = start_runner(
        &farm.runner_socket,
        &farm.build_directory,
        runner_metrics,
        otlp_endpoint.as_deref(),
    )
    .await?;
    // Storage's calls, bytes and lookups, on the farm's one page.
    let storage_metrics = corral_storage::metrics::Metrics::default();
    let stores = std::sync::Arc::new(
        storage_metrics.meter(
            corral_storage::open(&farm.storage)
                .await
                .context("opening storage")?,
        ),
    );
    // The scheduler reads storage in this process: no loopback round
    // trips before an action is queued.
    let auth = corral_auth::Auth::from_config(farm.storage.auth.as_ref())
        .context("setting up authentication")?;
    let scheduler = corral_scheduler::Scheduler::builder(farm.scheduler.clone())
        .storage_in_process(&farm.storage, &stores)
        .authorizer(auth.authorizer.clone())
        .build()
        .context("starting the scheduler")?;
    let routes = scheduler.add_routes(corral_storage::routes_without_capabilities(
        &farm.storage,
        &stores,
        &auth.authorizer,
    ));
    let authentication = corral_auth::AuthenticationLayer::new(auth.authenticator);
    let storage_layer = storage_metrics.layer();

    // Each part is a task; the first to stop (an error) stops them all,
    // as a signal does (the worker first, below), and the first error is
    // what `up` reports.
    let mut parts: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let server_stop = signal();
    parts.spawn(async move {
        shutdown::with_grace("storage and scheduler", server_stop, |graceful| async {
            corral_auth::tls::server(corral_storage::server(), tls.as_ref())
                .context("setting up TLS")?
                .layer(storage_layer)
                .layer(authentication)
                .add_routes(routes)
                .serve_with_incoming_shutdown(corral_storage::no_delay(listener), graceful)
                .await
                .context("serving storage and the scheduler")
        })
        .await
    });
    let worker = corral_worker::Worker::new(farm.worker.clone()).context("preparing the worker")?;
    crate::worker::protect_the_cache(&worker);
    if let Some(metrics) = &farm.scheduler.metrics {
        let bound = tokio::net::TcpListener::bind(metrics.listen)
            .await
            .with_context(|| format!("listening for metrics on {}", metrics.listen))?;
        let metrics_stop = signal();
        // One page for the whole farm: the scheduler's, the worker's,
        // then storage's; ready when storage, the runner and the scheduler
        // all are; the scheduler's web UI beside them.
        let scheduler_page = scheduler.metrics_page();
        let worker_page = worker.metrics_page();
        let stores = std::sync::Arc::clone(&stores);
        let page = move || {
            let page = scheduler_page() + &worker_page.render() + &storage_metrics.render(&stores);
            async move {
                match runner_metrics {
                    Some(addr) => page + &runner_page(addr).await,
                    None => page,
                }
            }
        };
        let mut checks = scheduler.readiness_checks();
        checks.extend(worker.readiness_checks());
        let routes = corral_metrics::http::router_async(page, checks).merge(scheduler.web_routes());
        let bound = match &metrics_tls {
            Some(tls) => corral_metrics::Listener::tls(bound, tls.rustls()),
            None => corral_metrics::Listener::plaintext(bound),
        };
        parts.spawn(async move {
            corral_metrics::serve(bound, routes, metrics_stop).await;
            Ok(())
        });
    }
    // The worker stops first, and apart: told to drain (SIGTERM) it
    // finishes what it runs and reports it while storage, the scheduler
    // and the runner still serve it; told to stop now (SIGINT, a second
    // SIGTERM, another part failing) it kills what runs and gives it
    // back. The rest stops once the worker has.
    let (drain_tx, drain_rx) = watch::channel(false);
    let (now_tx, now_rx) = watch::channel(false);
    let when = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|told| *told).await;
        }
    };
    let (worker_drain, worker_now) = (when(&drain_rx), when(&now_rx));
    let mut worker_part: JoinSet<anyhow::Result<()>> = JoinSet::new();
    worker_part.spawn(async move {
        worker
            .run(worker_drain, worker_now)
            .await
            .context("running the worker")
    });
    let runner_stop = signal();
    parts.spawn(supervise_runner(
        runner,
        farm.runner_socket.clone(),
        farm.build_directory.clone(),
        runner_metrics,
        otlp_endpoint,
        runner_stop,
    ));

    let (drain, drain_now) = shutdown::drain_signals("farm");
    tokio::pin!(drain, drain_now);
    print_welcome(&farm, listen, data_dir);
    let mut result = Ok(());
    let keep = |done: anyhow::Result<()>, result: &mut anyhow::Result<()>| {
        if result.is_ok() {
            *result = done;
        }
    };
    let mut told_now = false;
    tokio::select! {
        () = &mut drain => {
            tracing::info!("draining the worker; storage and the scheduler stop after it");
            let _ = drain_tx.send(true);
        }
        () = &mut drain_now => told_now = true,
        Some(done) = parts.join_next() => {
            keep(flatten(done), &mut result);
            told_now = true;
        }
        Some(done) = worker_part.join_next() => keep(flatten(done), &mut result),
    }
    if told_now {
        let _ = now_tx.send(true);
    }
    // Until the worker has stopped: a second signal, or a part failing
    // meanwhile, stops it at once.
    loop {
        tokio::select! {
            done = worker_part.join_next() => match done {
                Some(done) => keep(flatten(done), &mut result),
                None => break,
            },
            () = &mut drain_now, if !told_now => {
                told_now = true;
                let _ = now_tx.send(true);
            }
            Some(done) = parts.join_next(), if !told_now => {
                keep(flatten(done), &mut result);
                told_now = true;
                let _ = now_tx.send(true);
            }
        }
    }
    tracing::info!("the worker stopped; stopping storage, the scheduler and the runner");
    let _ = stop.send(true);
    while let Some(done) = parts.join_next().await {
        keep(flatten(done), &mut result);
    }
    eprintln!("corral up: stopped");
    result
}

/// Starts `corral runner` as a child and waits until it serves its socket.
/// A free port on 127.0.0.1, for the runner child's metrics: bound and
/// released, so another process could take it first (the runner then
/// fails to start and says so).
fn loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// How long the farm's page waits for the runner's.
const RUNNER_PAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// The runner child's Prometheus page at `addr`, or nothing (logged) when
/// it does not answer in time: the rest of the farm's page still serves.
async fn runner_page(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: runner\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(RUNNER_PAGE_TIMEOUT, fetch).await {
        Ok(Ok(response)) if response.starts_with("HTTP/1.1 200") => response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default(),
        outcome => {
            tracing::warn!(%addr, ?outcome, "the runner's metrics page did not answer");
            String::new()
        }
    }
}

async fn start_runner(
    socket: &Path,
    build_directory: &Path,
    metrics: Option<SocketAddr>,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding the corral binary")?;
    let mut command = Command::new(exe);
    command
        .arg("runner")
        .arg("--socket")
        .arg(socket)
        .arg("--build-dir")
        .arg(build_directory);
    if let Some(metrics) = metrics {
        command.arg("--metrics").arg(metrics.to_string());
    }
    if let Some(endpoint) = otlp_endpoint {
        command.arg("--otlp-endpoint").arg(endpoint);
    }
    let mut child = command
        .arg("--stop-on-stdin-close")
        .stdin(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting the runner")?;
    let deadline = tokio::time::Instant::now() + RUNNER_START;
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait().context("watching the runner")? {
            bail!("the runner exited before serving ({status}); its log is above");
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the runner did not serve {} within {RUNNER_START:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// First wait before restarting a runner that died, doubled after each
/// death in a row, up to the second.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// This many deaths within this window stop the farm: a runner that
/// cannot stay up is not fixed by restarting it forever.
const RESTARTS_MAX: usize = 5;
const RESTARTS_WINDOW: Duration = Duration::from_secs(60);

/// The runner's deaths within the last [`RESTARTS_WINDOW`], and how long
/// to wait before the next start.
struct Deaths {
    at: std::collections::VecDeque<tokio::time::Instant>,
    backoff: Duration,
}

impl Deaths {
    fn new() -> Deaths {
        Deaths {
            at: std::collections::VecDeque::new(),
            backoff: RESTART_BACKOFF_MIN,
        }
    }

    /// Records a death at `now`; returns how many fell within the window.
    fn record(&mut self, now: tokio::time::Instant) -> usize {
        while self
            .at
            .front()
            .is_some_and(|&t| now.duration_since(t) > RESTARTS_WINDOW)
        {
            self.at.pop_front();
        }
        // A runner that stayed up a whole window starts the backoff over.
        if self.at.is_empty() {
            self.backoff = RESTART_BACKOFF_MIN;
        }
        self.at.push_back(now);
        self.at.len()
    }

    /// The wait before the next start; doubles the one after it.
    fn next_wait(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RESTART_BACKOFF_MAX);
        wait
    }
}

/// Watches the runner until `stop`, restarting it with backoff when it
/// dies (the worker gives back the actions it was running, and its slots
/// wait for the new one); [`RESTARTS_MAX`] deaths within
/// [`RESTARTS_WINDOW`] stop the farm. At `stop`, closes its standard
/// input (its signal to stop) and waits for it; kills it if it does not
/// stop.
async fn supervise_runner(
    mut runner: Child,
    socket: PathBuf,
    build_directory: PathBuf,
    metrics: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    let mut deaths = Deaths::new();
    // Held, never written: the runner stops when it closes.
    let mut stdin = runner.stdin.take();
    loop {
        let status = tokio::select! {
            status = runner.wait() => status.context("watching the runner")?,
            () = &mut stop => break,
        };
        let died = deaths.record(tokio::time::Instant::now());
        if died >= RESTARTS_MAX {
            bail!(
                "the runner died {died} times within {}s (last: {status}); stopping the farm: \
                 no action can run without it, and restarting it does not keep it up. Its log \
                 is above",
                RESTARTS_WINDOW.as_secs()
            );
        }
        // A runner that fails to start counts as one more death.
        loop {
            let wait = deaths.next_wait();
            tracing::warn!(
                %status,
                restart_in = ?wait,
                deaths = died,
                "the runner stopped; restarting it (the actions it ran are queued again); \
                 {RESTARTS_MAX} deaths within {}s stop the farm",
                RESTARTS_WINDOW.as_secs()
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return Ok(()),
            }
            // This fork happens while worker threads may hold files open
            // for writing (the reason the runner is a child): the child
            // holds them only until its exec (they are close-on-exec),
            // and no sandbox execs anything meanwhile: its runner is dead.
            let started = tokio::select! {
                started = start_runner(&socket, &build_directory, metrics, otlp_endpoint.as_deref()) => started,
                () = &mut stop => return Ok(()),
            };
            match started {
                Ok(mut child) => {
                    stdin = child.stdin.take();
                    runner = child;
                    tracing::info!(pid = runner.id(), "the runner restarted");
                    break;
                }
                Err(error) => {
                    let died = deaths.record(tokio::time::Instant::now());
                    if died >= RESTARTS_MAX {
                        return Err(error.context(format!(
                            "the runner died or failed to start {died} times within {}s; \
                             stopping the farm",
                            RESTARTS_WINDOW.as_secs()
                        )));
                    }
                    tracing::warn!(error = format!("{error:#}"), "restarting the runner failed");
                }
            }
        }
    }
    drop(stdin);
    match tokio::time::timeout(RUNNER_STOP, runner.wait()).await {
        Ok(status) => {
            let status = status.context("waiting for the runner")?;
            if !status.success() {
                bail!("the runner stopped with {status}");
            }
            Ok(())
        }
        Err(_) => {
            let _ = runner.kill().await;
            bail!("the runner did not stop within {RUNNER_STOP:?}; killed it")
        }
    }
}

fn print_welcome(farm: &Farm, listen: SocketAddr, data_dir: &Path) {
    let scheme = if farm.secure.is_some() {
        "grpcs"
    } else {
        "grpc"
    };
    let url = format!("{scheme}://{}", reachable(listen));
    eprintln!(
        "corral up: serving on {listen}, data in {}",
        data_dir.display()
    );
    eprintln!("  storage: CAS, Action Cache, ByteStream, Capabilities");
    eprintln!("  scheduler: Execution, Operations, worker protocol");
    eprintln!(
        "  worker: {} slot(s), runner at {}",
        farm.slots,
        farm.runner_socket.display()
    );
    if let Some(metrics) = &farm.scheduler.metrics {
        let http = if farm.secure.is_some() {
            "https"
        } else {
            "http"
        };
        eprintln!(
            "  web UI: {http}://{addr}/ (metrics at /metrics, health at /healthz and /readyz)",
            addr = metrics.listen
        );
    }
    match &farm.secure {
        None => {
            eprintln!(
                "  security: plaintext, no authentication: anyone who can reach {listen} may use \
                 this farm (--secure requires a certificate or token)"
            );
            eprintln!("Build with it:");
            eprintln!("  bazel build --remote_executor={url} --spawn_strategy=remote //...");
            eprintln!("or use it as a remote cache only:");
            eprintln!("  bazel build --remote_cache={url} //...");
        }
        Some(files) => {
            let ca = files.ca_certificate();
            eprintln!(
                "  security: TLS; clients show {} or the token in {}; grants in {}",
                files.client_certificate().display(),
                files.token().display(),
                files.grants().display()
            );
            eprintln!("Build with it, showing the client certificate:");
            eprintln!(
                "  bazel build --remote_executor={url} --tls_certificate={} \\\n      \
                 --tls_client_certificate={} --tls_client_key={} --spawn_strategy=remote //...",
                ca.display(),
                files.client_certificate().display(),
                files.client_key().display()
            );
            eprintln!("or the token:");
            eprintln!(
                "  bazel build --remote_executor={url} --tls_certificate={} \\\n      \
                 --remote_header=\"Authorization=Bearer $(cat {})\" --spawn_strategy=remote //...",
                ca.display(),
                files.token().display()
            );
        }
    }
    eprintln!(
        "corral up: ready (SIGTERM lets running actions finish, then stops the farm; Ctrl-C \
         stops it at once)"
    );
}

/// A part's task result, a panic counted as an error.
fn flatten(done: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    done.context("a part of the farm panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_deaths_count_within_the_window_and_the_backoff_grows_then_starts_over() {
        let start = tokio::time::Instant::now();
        let mut deaths = Deaths::new();
        let waits: Vec<Duration> = (0..6).map(|_| deaths.next_wait()).collect();
        assert_eq!(waits[0], RESTART_BACKOFF_MIN);
        assert_eq!(waits[1], RESTART_BACKOFF_MIN * 2);
        assert_eq!(waits[5], RESTART_BACKOFF_MAX);
        for n in 1..=RESTARTS_MAX {
            let at = start + Duration::from_secs(n as u64);
            assert_eq!(deaths.record(at), n);
        }
        // A death long after the others counts alone and waits little.
        let later = start + RESTARTS_WINDOW * 3;
        assert_eq!(deaths.record(later), 1);
        assert_eq!(deaths.next_wait(), RESTART_BACKOFF_MIN);
    }
}
