//! Stopping daemons: Ctrl-C or SIGTERM ends the future every daemon's
//! `run` takes as its shutdown signal, and [`with_grace`] bounds how long
//! a server then waits for the calls it is serving. A worker (alone or in
//! `corral up`) drains first: [`drain_signals`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long calls in flight get to finish once a server is told to stop.
/// Some never would on their own: a client waiting on Execute for an
/// action nobody will run now. Past it they are cut, and their clients
/// retry elsewhere or later (Bazel does).
pub const GRACE: Duration = Duration::from_secs(5);

/// The stop signal handed to a server by [`with_grace`].
pub type Graceful = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `serve`, handing it a future that completes when `stop` does, so
/// that it stops taking calls; then gives the calls in flight [`GRACE`]
/// and drops the server, closing the connections still open.
pub async fn with_grace<Fut>(
    what: &'static str,
    stop: impl Future<Output = ()>,
    serve: impl FnOnce(Graceful) -> Fut,
) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (stopping, on_stop) = tokio::sync::watch::channel(false);
    let graceful: Graceful = Box::pin(async move {
        let mut on_stop = on_stop;
        let _ = on_stop.wait_for(|stopped| *stopped).await;
    });
    let serving = serve(graceful);
    tokio::pin!(serving, stop);
    tokio::select! {
        served = &mut serving => return served,
        () = &mut stop => {}
    }
    let _ = stopping.send(true);
    match tokio::time::timeout(GRACE, serving).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("{what}: calls still open after {GRACE:?}; closing them");
            Ok(())
        }
    }
}

/// Completes on the first Ctrl-C (SIGINT) or SIGTERM. `daemon` names what
/// is stopping, for the log.
pub async fn stop_signal(daemon: &'static str) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; only Ctrl-C stops the {daemon}");
            None
        }
    };
    let terminated = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(err) = result {
                tracing::warn!(error = %err, "cannot watch Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
        () = terminated => {}
    }
    tracing::info!("stopping the {daemon}");
}

/// The stop signals of a daemon that drains before it stops (a worker,
/// `corral up`): the first future completes on SIGTERM, which asks it to
/// take no new work and let what runs finish; the second on SIGINT
/// (Ctrl-C), or a second SIGTERM, which ask it to stop at once. Both
/// watch from this call on, so a signal between it and their first poll
/// counts. Must be called inside the runtime.
pub fn drain_signals(
    daemon: &'static str,
) -> (
    impl Future<Output = ()> + Send,
    impl Future<Output = ()> + Send,
) {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let watch = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch {name}; it does not stop the {daemon}");
            None
        }
    };
    async fn received(signal: &mut Option<Signal>) {
        match signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    // Each future has its own listeners: every signal reaches both.
    let mut term = watch(SignalKind::terminate(), "SIGTERM");
    let mut term_again = watch(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = watch(SignalKind::interrupt(), "SIGINT");
    let drain = async move {
        received(&mut term).await;
        tracing::info!("SIGTERM: stopping the {daemon} once its running actions finish");
    };
    let now = async move {
        let twice = async {
            received(&mut term_again).await;
            received(&mut term_again).await;
        };
        tokio::select! {
            () = twice => tracing::info!("second SIGTERM: stopping the {daemon} at once"),
            () = received(&mut interrupt) => tracing::info!("SIGINT: stopping the {daemon} at once"),
        }
    };
    (drain, now)
}

/// Completes when standard input reaches end of file (or fails): the
/// process holding its other end has closed it or died. Read on a plain
/// thread, which unlike a tokio blocking task does not hold the runtime
/// open at exit.
pub async fn stdin_closed() {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".to_owned())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
    match spawned {
        // The sender is dropped or fires: either way stdin is done.
        Ok(_) => {
            let _ = on_close.await;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch standard input");
            std::future::pending::<()>().await;
        }
    }
}

/// A multi-threaded tokio runtime for one daemon. Built by each daemon's
/// command, not in main: `corral sandbox` needs none.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
