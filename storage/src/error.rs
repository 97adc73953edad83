//! Storage's errors.

use std::net::SocketAddr;

use crate::disk_blob_store::DiskError;

/// Everything that can go wrong starting or running storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("failed to open the disk store")]
    OpenDisk(#[from] DiskError),
    #[error("failed to open the membership index of isolate_instances")]
    OpenMembership(#[source] crate::membership::MembershipError),
    /// A client endpoint or `[client_tls]`; the message names the key.
    #[error(transparent)]
    Client(corral_auth::channel::Error),
    /// `[tls]` or `[client_tls]`; the message names the key and file.
    #[error(transparent)]
    Tls(corral_auth::tls::Error),
    #[error("failed to set up the object store of [object_store]")]
    OpenObjectStore(#[source] crate::blob_store::Error),
    #[error("failed to set up authentication")]
    Auth(#[source] corral_auth::config::AuthConfigError),
    #[error("failed to listen for metrics on {addr}")]
    BindMetrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the listener's address")]
    ListenerAddress(#[source] std::io::Error),
    #[error("serving on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}
