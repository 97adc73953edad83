//! The worker's errors.

use std::path::PathBuf;

/// Everything that can go wrong starting the worker. Actions never fail
/// the worker: their failures are their results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("failed to prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open the image store")]
    Images(#[source] corral_image::Error),
    #[error("failed to open the file cache")]
    FileCache(#[from] crate::file_cache::Error),
    #[error("failed to check the runner")]
    Runner(#[from] crate::runner_client::Error),
    #[error("failed to set up the storage client")]
    Storage(#[from] crate::cas_client::Error),
    #[error("failed to listen for metrics on {addr}")]
    BindMetrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// An endpoint or `[client_tls]`; the message names the key.
    #[error(transparent)]
    Client(corral_auth::channel::Error),
    /// `[client_tls]` or `[metrics.tls]`; the message names the key and
    /// file.
    #[error(transparent)]
    Tls(corral_auth::tls::Error),
}
