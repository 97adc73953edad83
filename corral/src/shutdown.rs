//! Stopping daemons: Ctrl-C or SIGTERM ends the future every daemon's
//! `run` takes as its shutdown signal.

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
