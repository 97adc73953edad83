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

/// A multi-threaded tokio runtime for one daemon. Built by each daemon's
/// command, not in main: `corral sandbox` needs none.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
