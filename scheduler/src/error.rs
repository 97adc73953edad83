//! The scheduler's errors.

use std::net::SocketAddr;

/// Everything that can go wrong in the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// The storage endpoint or `[client_tls]`; the message names the key.
    #[error(transparent)]
    Client(corral_auth::channel::Error),
    /// `[tls]`, `[metrics.tls]` or `[client_tls]`; the message names the
    /// key and file.
    #[error(transparent)]
    Tls(corral_auth::tls::Error),
    #[error("failed to set up authentication")]
    Auth(#[source] corral_auth::config::AuthConfigError),
    #[error("the scheduler must be built inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("failed to read the listener's address")]
    ListenerAddress(#[source] std::io::Error),
    #[error("failed to listen for metrics on {addr}")]
    BindMetrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}
