//! `storage.toml`: the storage daemon's configuration.
//!
//! `Config::default()` is exactly what `corral up` runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use corral_auth::tls::{ClientTls, ServerTls};
use serde::Deserialize;

use crate::error::Error;

/// The storage daemon's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the REAPI storage services listen on. Default
    /// `127.0.0.1:8980`.
    pub listen: SocketAddr,
    /// Where blobs are kept.
    pub backend: Backend,
    /// Largest total size of a BatchUpdateBlobs or BatchReadBlobs request,
    /// in bytes, advertised in GetCapabilities. Default 4 MiB, gRPC's
    /// default message size.
    pub max_batch_total_size_bytes: u64,
    /// TLS on the listening port (`[tls]`): certificate, key, and an
    /// optional client CA for mTLS. Default: none, plaintext.
    pub tls: Option<ServerTls>,
    /// TLS for the connections storage makes (`[client_tls]`): those of
    /// the remote backend. Default: none, plaintext; `backend.endpoint`
    /// must then be `http://`, and with it `https://`.
    pub client_tls: Option<ClientTls>,
    /// Who may call, and what each caller may do (`[auth]`, see
    /// docs/config.md). Unset: every caller is anonymous and may do
    /// everything, as a farm for one team on a trusted network.
    pub auth: Option<corral_auth::AuthConfig>,
    /// Each instance name sees only the CAS blobs written under it
    /// (FindMissingBlobs, batch and ByteStream reads, GetTree and the
    /// Action Cache's completeness check). Content is still stored once;
    /// an index of (instance name, digest) pairs sits beside it, kept in
    /// `<dir>/membership.log` by the disk backend. Default false: the CAS
    /// is shared, so a tenant who learns a digest can read that blob from
    /// any instance name it may read (docs/decisions/0010). Set it when
    /// tenants must not read each other's blobs; the cost is that a blob
    /// uploaded under one instance name must be uploaded again under
    /// another. Memory and disk backends only.
    pub isolate_instances: bool,
}

/// Where blobs are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Backend {
    /// In memory, lost on restart. For tests and throwaway farms.
    Memory {
        /// Largest total size of the blobs held, in bytes; least recently
        /// used blobs are evicted past it.
        max_size_bytes: u64,
    },
    /// Files in a directory: the default.
    Disk {
        /// The directory. Default `corral-data/storage`.
        dir: PathBuf,
        /// Largest total size of the blobs held, in bytes. Default 10 GiB.
        /// An upper bound, not a reservation: if the disk fills first, the
        /// least recently used blobs are evicted to make room (and a
        /// warning logged; set this below what the disk holds).
        max_size_bytes: u64,
        /// fsync every blob before it becomes visible. Default false: a
        /// crash may lose recent blobs (clients re-upload what is missing),
        /// but can never expose a corrupt one, since reads verify.
        fsync: bool,
    },
    /// Another REAPI storage (bb-storage, bazel-remote, a Corral storage
    /// cluster), with an optional local disk cache in front.
    Remote {
        /// Its endpoint, e.g. `http://storage.internal:8980`.
        endpoint: String,
        /// Instance name used on it. Default empty.
        #[serde(default)]
        instance_name: String,
        /// A local disk cache that reads fill and writes go through.
        /// Unset: every read goes to the remote.
        #[serde(default)]
        cache: Option<LocalCache>,
    },
}

/// The local disk cache in front of a remote backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCache {
    /// The directory.
    pub dir: PathBuf,
    /// Largest total size kept, in bytes.
    pub max_size_bytes: u64,
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Disk {
            dir: PathBuf::from("corral-data/storage"),
            max_size_bytes: 10 << 30,
            fsync: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8980)),
            backend: Backend::default(),
            max_batch_total_size_bytes: 4 << 20,
            tls: None,
            client_tls: None,
            auth: None,
            isolate_instances: false,
        }
    }
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let max_size = match &self.backend {
            Backend::Memory { max_size_bytes } | Backend::Disk { max_size_bytes, .. } => {
                *max_size_bytes
            }
            Backend::Remote {
                endpoint, cache, ..
            } => {
                corral_auth::channel::check_endpoint(
                    "backend.endpoint",
                    endpoint,
                    self.client_tls.is_some(),
                )
                .map_err(Error::Client)?;
                cache.as_ref().map_or(u64::MAX, |c| c.max_size_bytes)
            }
        };
        if self.isolate_instances && matches!(self.backend, Backend::Remote { .. }) {
            return Err(Error::InvalidConfig {
                field: "isolate_instances",
                reason: "needs a memory or disk backend: a remote store is shared by \
                         whatever else uses it, so isolation belongs there"
                    .to_owned(),
            });
        }
        if max_size == 0 {
            return Err(Error::InvalidConfig {
                field: "backend.max_size_bytes",
                reason: "must be greater than zero".to_owned(),
            });
        }
        if let Some(tls) = &self.tls {
            tls.validate("tls").map_err(Error::Tls)?;
        }
        if let Some(client_tls) = &self.client_tls {
            client_tls.validate().map_err(Error::Tls)?;
        }
        if self.max_batch_total_size_bytes < 1024 {
            return Err(Error::InvalidConfig {
                field: "max_batch_total_size_bytes",
                reason: "must be at least 1024".to_owned(),
            });
        }
        Ok(())
    }
}
