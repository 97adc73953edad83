//! Storage: the Content Addressable Storage and the Action Cache.
//!
//! Backends (memory, local disk, another REAPI store over gRPC, and a
//! local store in front of a remote one) sit behind the [`BlobStore`] and
//! [`ActionCache`] traits, and the REAPI services
//! (`ContentAddressableStorage`, `ByteStream`, `ActionCache`,
//! `Capabilities`) are served over them, all on one port. [`run`] serves
//! them alone; [`routes`] hands them to a daemon that serves more (the
//! scheduler mounts them next to Execution).
//!
//! Modules:
//! - [`config`] — `storage.toml`.
//! - `error` — the crate's error type.
//! - [`digest`] — digests, digest functions, hashing and verification.
//! - `blob_store` — the CAS trait; `blob_write` — one write to it.
//! - `action_cache` — the Action Cache trait.
//! - `lru_index` — what a bounded store holds, in order of use (the
//!   shared `corral_lru::Lru`, keyed by table and digest).
//! - `memory_blob_store`, `disk_blob_store` — the local backends;
//!   `remote_blob_store` — another REAPI storage over gRPC;
//!   `read_through_blob_store` — a local store in front of a remote one
//!   (the read-through tier, `[backend.cache]`).
//! - `membership`, `isolated_blob_store` — which instance names see
//! - `object_tier` — an object store (S3, a directory) behind the local
//!   store, as the durable copy (`[object_store]`).
//!   which blobs, under `isolate_instances`.
//! - [`cas_service`], [`ac_service`], [`bytestream_service`],
//!   [`capabilities_service`] — the gRPC services, one per module, each
//!   with its errors and their status codes.
//! - [`resource_name`] — ByteStream resource names; `zstd_codec` —
//!   `compressed-blobs/zstd/` reads and writes.
//! - [`status`] — what the services share in building statuses.
//! - [`metrics`] — the Prometheus page (`[metrics]`): calls, bytes,
//!   hits and misses, evictions.
//!
//! Storage never trusts a digest it is given: every write is verified
//! against its content, and nothing half-written is ever visible.
//! Instance names have their own Action Cache entries; the CAS is shared
//! by all of them unless `isolate_instances` is set, when each sees only
//! the blobs written under it (docs/decisions/0010-cas-across-instance-names.md).

#![forbid(unsafe_code)]

pub mod ac_service;
mod action_cache;
mod blob_store;
mod blob_write;
pub mod bytestream_service;
pub mod capabilities_service;
pub mod cas_service;
pub mod config;
pub mod digest;
mod disk_blob_store;
mod error;
mod isolated_blob_store;
mod lru_index;
mod membership;
mod memory_blob_store;
pub mod metrics;
mod object_store_builder;
mod object_tier;
mod read_through_blob_store;
mod remote_blob_store;
pub mod resource_name;
pub mod status;
mod zstd_codec;

use std::future::Future;
use std::sync::Arc;

use corral_auth::channel::Connector;
use corral_auth::{Auth, AuthenticationLayer, Authorizer};
use corral_proto::bytestream::byte_stream_server::ByteStreamServer;
use corral_proto::reapi::action_cache_server::ActionCacheServer;
use corral_proto::reapi::capabilities_server::CapabilitiesServer;
use corral_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

pub use action_cache::ActionCache;
pub use blob_store::{BlobStore, Error as BlobStoreError};
pub use blob_write::BlobWrite;
pub use config::Config;
pub use digest::{Digest, DigestFunction};
pub use disk_blob_store::DiskBlobStore;
pub use error::Error;
pub use memory_blob_store::MemoryBlobStore;

/// Largest ByteStream message accepted. Clients send chunks of 16 KiB to
/// 1 MiB; tonic's default of 4 MiB would refuse a client tuned higher.
const MAX_BYTESTREAM_MESSAGE_BYTES: usize = 16 << 20;

/// HTTP/2 flow-control windows. The 64 KiB default caps a single stream at
/// one window per round trip, far below disk speed even on loopback.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// The membership index of a disk store with `isolate_instances`, in its
/// directory (beside `cas/`, `ac/` and `tmp/`, which the store scans).
pub const MEMBERSHIP_LOG: &str = "membership.log";

/// The CAS and the Action Cache a configuration asks for.
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionCache>,
    /// The bound on stored bytes, advertised as the largest blob.
    pub max_size_bytes: u64,
    /// Which instance names see which blobs, with `isolate_instances`;
    /// `None`: every instance name sees every blob.
    pub membership: Option<membership::Membership>,
}

impl Stores {
    /// The CAS as the services must read it on behalf of instance names:
    /// every reader goes through this, or isolation has a hole.
    pub fn instance_blobs(&self) -> isolated_blob_store::InstanceBlobs {
        isolated_blob_store::InstanceBlobs::shared(Arc::clone(&self.blobs))
            .with_membership(self.membership.clone())
    }
}

/// Opens the configured backend (for disk: creates the directory and
/// rebuilds the index).
pub async fn open(cfg: &Config) -> Result<Stores, Error> {
    if let Some(object_store) = &cfg.object_store {
        return open_object_tier(cfg, object_store).await;
    }
    match &cfg.backend {
        config::Backend::Memory { max_size_bytes } => {
            Ok(LocalBackend::memory(cfg, *max_size_bytes).into_stores())
        }
        config::Backend::Disk {
            dir,
            max_size_bytes,
            fsync,
        } => Ok(LocalBackend::disk(cfg, dir, *max_size_bytes, *fsync)
            .await?
            .into_stores()),
        config::Backend::Remote {
            endpoint,
            instance_name,
            cache,
        } => {
            let connector = Connector::new(cfg.client_tls.as_ref()).map_err(Error::Client)?;
            let remote = Arc::new(
                remote_blob_store::RemoteBlobStore::new(&connector, endpoint, instance_name)
                    .map_err(Error::Client)?,
            );
            let Some(cache) = cache else {
                return Ok(Stores {
                    blobs: remote.clone(),
                    action_cache: remote,
                    max_size_bytes: u64::MAX,
                    membership: None,
                });
            };
            let local = Arc::new(
                DiskBlobStore::open(cache.dir.clone(), cache.max_size_bytes, false).await?,
            );
            let front = Arc::new(read_through_blob_store::ReadThroughBlobStore::new(
                local, remote,
            ));
            Ok(Stores {
                blobs: front.clone(),
                action_cache: front,
                max_size_bytes: cache.max_size_bytes,
                membership: None,
            })
        }
    }
}

/// The backend as a cache in front of the object store of
/// `[object_store]`, which holds the durable copy.
async fn open_object_tier(
    cfg: &Config,
    object_store: &config::ObjectStoreConfig,
) -> Result<Stores, Error> {
    let local = match &cfg.backend {
        config::Backend::Memory { max_size_bytes } => LocalBackend::memory(cfg, *max_size_bytes),
        config::Backend::Disk {
            dir,
            max_size_bytes,
            fsync,
        } => LocalBackend::disk(cfg, dir, *max_size_bytes, *fsync).await?,
        config::Backend::Remote { .. } => {
            return Err(Error::InvalidConfig {
                field: "object_store",
                reason: "needs a memory or disk backend in front of it".to_owned(),
            })
        }
    };
    let tier = Arc::new(
        object_tier::ObjectTier::open(local.store, object_store).map_err(Error::OpenObjectStore)?,
    );
    // Membership stays with the disk (or memory) tier and follows what it
    // holds: a blob it evicts, or a tier wiped, is hidden from its
    // instance names until they write it again (one more upload), never
    // shown to one that did not (docs/decisions/0015-object-store-tier.md).
    Ok(Stores {
        blobs: tier.clone(),
        action_cache: tier,
        max_size_bytes: local.max_size_bytes,
        membership: local.membership,
    })
}

/// A memory or disk backend, opened.
struct LocalBackend {
    store: Arc<dyn read_through_blob_store::Store>,
    max_size_bytes: u64,
    /// Under `isolate_instances`: which instance names hold which of its
    /// blobs, forgetting those it no longer holds.
    membership: Option<membership::Membership>,
}

impl LocalBackend {
    fn memory(cfg: &Config, max_size_bytes: u64) -> Self {
        let store = Arc::new(MemoryBlobStore::new(max_size_bytes));
        let membership = cfg.isolate_instances.then(|| {
            let store = Arc::clone(&store);
            membership::Membership::in_memory(Arc::new(move |d| store.holds(d)))
        });
        Self {
            store,
            max_size_bytes,
            membership,
        }
    }

    async fn disk(
        cfg: &Config,
        dir: &std::path::Path,
        max_size_bytes: u64,
        fsync: bool,
    ) -> Result<Self, Error> {
        let store = Arc::new(DiskBlobStore::open(dir.to_owned(), max_size_bytes, fsync).await?);
        let membership = if cfg.isolate_instances {
            let holder = Arc::clone(&store);
            Some(
                membership::Membership::open_log(
                    dir.join(MEMBERSHIP_LOG),
                    fsync,
                    Arc::new(move |d| holder.holds(d)),
                )
                .await
                .map_err(Error::OpenMembership)?,
            )
        } else {
            None
        };
        Ok(Self {
            store,
            max_size_bytes,
            membership,
        })
    }

    /// The backend alone, serving both the CAS and the Action Cache.
    fn into_stores(self) -> Stores {
        Stores {
            blobs: self.store.clone(),
            action_cache: self.store,
            max_size_bytes: self.max_size_bytes,
            membership: self.membership,
        }
    }
}

/// The four storage services over `stores`, ready to be served alone or
/// added to another daemon's server.
pub fn routes(cfg: &Config, stores: &Stores, authorizer: &Authorizer) -> Routes {
    let capabilities = CapabilitiesServer::new(capabilities_service::CapabilitiesService::new(
        cfg.max_batch_total_size_bytes,
        stores.max_size_bytes,
    ));
    routes_without_capabilities(cfg, stores, authorizer).add_service(capabilities)
}

/// CAS, Action Cache and ByteStream without `Capabilities`, for a daemon
/// that serves its own Capabilities next to them: a server can route
/// each service to one handler only, and the scheduler's must add
/// execution capabilities to storage's.
///
/// Every call is checked against `authorizer`; the callers come from the
/// authentication layer the server runs ([`corral_auth::AuthenticationLayer`]).
pub fn routes_without_capabilities(
    cfg: &Config,
    stores: &Stores,
    authorizer: &Authorizer,
) -> Routes {
    let max_batch = usize::try_from(cfg.max_batch_total_size_bytes).unwrap_or(usize::MAX);
    // A batch a little over the limit must reach our check and get
    // INVALID_ARGUMENT naming the limit, not tonic's bare
    // RESOURCE_EXHAUSTED, so decoding allows twice the limit plus room
    // for the framing of many small blobs.
    let max_cas_message = max_batch.saturating_mul(2).saturating_add(1 << 20);
    let cas = ContentAddressableStorageServer::new(
        cas_service::CasService::new(Arc::clone(&stores.blobs), cfg.max_batch_total_size_bytes)
            .with_authorizer(authorizer.clone())
            .with_membership(stores.membership.clone()),
    )
    .max_decoding_message_size(max_cas_message)
    .max_encoding_message_size(max_cas_message);
    let ac = ActionCacheServer::new(
        ac_service::AcService::new(Arc::clone(&stores.blobs), Arc::clone(&stores.action_cache))
            .with_authorizer(authorizer.clone())
            .with_membership(stores.membership.clone()),
    );
    let bytestream = ByteStreamServer::new(
        bytestream_service::ByteStreamService::new(Arc::clone(&stores.blobs))
            .with_authorizer(authorizer.clone())
            .with_membership(stores.membership.clone()),
    )
    .max_decoding_message_size(MAX_BYTESTREAM_MESSAGE_BYTES);
    Routes::new(cas).add_service(ac).add_service(bytestream)
}

/// Serves storage on `listener` until `shutdown` completes. `cfg.listen`
/// is not used: the caller binds, so tests can pass `127.0.0.1:0`.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    cfg.validate()?;
    let tls = cfg
        .tls
        .as_ref()
        .map(|tls| tls.load("tls"))
        .transpose()
        .map_err(Error::Tls)?;
    let auth = Auth::from_config(cfg.auth.as_ref()).map_err(Error::Auth)?;
    let metrics = metrics::Metrics::default();
    let stores = Arc::new(metrics.meter(open(&cfg).await?));
    let addr = listener.local_addr().map_err(Error::ListenerAddress)?;
    let http = metrics_listener(&cfg).await?;
    tracing::info!(%addr, tls = tls.is_some(), "storage serving");
    let grpc = corral_auth::tls::server(server(), tls.as_ref())
        .map_err(|source| Error::Serve { addr, source })?
        .layer(metrics.layer())
        .layer(AuthenticationLayer::new(auth.authenticator))
        .add_routes(routes(&cfg, &stores, &auth.authorizer))
        .serve_with_incoming_shutdown(no_delay(listener), shutdown);
    let page = {
        let stores = Arc::clone(&stores);
        move || metrics.render(&stores)
    };
    // Storage depends on nothing it could check: ready while it serves.
    let http_routes = corral_metrics::http::router(page, Vec::new());
    corral_metrics::serving_while(http, http_routes, grpc)
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    tracing::info!(%addr, "storage stopped");
    Ok(())
}

/// The HTTP port of `[metrics]`, bound, when configured.
async fn metrics_listener(cfg: &Config) -> Result<Option<corral_metrics::Listener>, Error> {
    let Some(m) = &cfg.metrics else {
        return Ok(None);
    };
    let tls = match cfg.metrics_tls() {
        Some((tls, key)) => Some(tls.load(key).map_err(Error::Tls)?),
        None => None,
    };
    let bound = TcpListener::bind(m.listen)
        .await
        .map_err(|source| Error::BindMetrics {
            addr: m.listen,
            source,
        })?;
    tracing::info!(addr = %m.listen, tls = tls.is_some(), "storage metrics serving");
    Ok(Some(match &tls {
        Some(tls) => corral_metrics::Listener::tls(bound, tls.rustls()),
        None => corral_metrics::Listener::plaintext(bound),
    }))
}

/// A gRPC server tuned for blob traffic: flow-control windows large
/// enough that one stream can fill a fast link. For daemons serving
/// storage's routes with others on one port.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}

/// The listener's connections with Nagle's algorithm off. The server
/// builder's `tcp_nodelay` applies only to listeners it binds itself; with
/// Nagle on, the second message of a streamed response waits for the
/// peer's delayed ACK (40 ms on Linux).
pub fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
    use corral_proto::bytestream::{ReadRequest, WriteRequest};
    use corral_proto::reapi::action_cache_client::ActionCacheClient;
    use corral_proto::reapi::capabilities_client::CapabilitiesClient;
    use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use corral_proto::reapi::{
        batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
        FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, OutputFile,
        UpdateActionResultRequest,
    };
    use futures_util::{stream, TryStreamExt as _};

    use super::*;
    use crate::blob_store::conformance::blob;
    use crate::digest::DigestFunction;

    #[tokio::test]
    async fn a_remote_backend_with_a_cache_reaches_the_remote() {
        let (url, _server) = crate::remote_blob_store::tests::server().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            backend: config::Backend::Remote {
                endpoint: url.clone(),
                instance_name: String::new(),
                cache: Some(config::LocalCache {
                    dir: dir.path().join("cache"),
                    max_size_bytes: 1 << 20,
                }),
            },
            ..Config::default()
        };
        cfg.validate().unwrap();
        let stores = open(&cfg).await.unwrap();
        let data = blob(7, 2000);
        let digest = DigestFunction::Sha256.digest_of(&data);
        stores.blobs.put(&digest, data.clone()).await.unwrap();
        let remote = crate::remote_blob_store::RemoteBlobStore::new(
            &corral_auth::channel::Connector::plaintext(),
            &url,
            "",
        )
        .unwrap();
        assert_eq!(remote.get(&digest).await.unwrap(), Some(data));
        assert!(dir.path().join("cache").exists());

        let bad = Config {
            backend: config::Backend::Remote {
                endpoint: "storage:8980".into(),
                instance_name: String::new(),
                cache: None,
            },
            ..Config::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("backend.endpoint"));
    }

    /// Storage served by [`run`] on a loopback port, and a channel to it.
    pub(crate) struct Served {
        pub channel: tonic::transport::Channel,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinSet<Result<(), Error>>,
    }

    impl Served {
        pub(crate) async fn start(cfg: Config) -> Served {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let mut server = tokio::task::JoinSet::new();
            server.spawn(run(cfg, listener, async {
                let _ = stopped.await;
            }));
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            Served {
                channel,
                stop,
                server,
            }
        }

        /// Stops the server and checks it ran without error.
        pub(crate) async fn stop(mut self) {
            self.stop.send(()).unwrap();
            self.server.join_next().await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn served_over_tcp_the_generated_clients_work() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            backend: config::Backend::Disk {
                dir: dir.path().join("storage"),
                max_size_bytes: 64 << 20,
                fsync: false,
            },
            ..Config::default()
        };
        let served = Served::start(cfg).await;
        let channel = served.channel.clone();
        let caps = CapabilitiesClient::new(channel.clone())
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            caps.cache_capabilities.unwrap().max_batch_total_size_bytes,
            4 << 20
        );

        // ByteStream: 1 MiB in 64 KiB chunks, then read back.
        let data = blob(9, 1 << 20);
        let d = DigestFunction::Sha256.digest_of(&data);
        let name = format!("main/uploads/0/blobs/{}/{}", d.hash_hex(), d.size_bytes());
        let requests: Vec<WriteRequest> = data
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, chunk)| WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i * (64 << 10)) as i64,
                finish_write: (i + 1) * (64 << 10) >= data.len(),
                data: chunk.to_vec(),
            })
            .collect();
        let mut bytestream = ByteStreamClient::new(channel.clone());
        let written = bytestream.write(stream::iter(requests)).await.unwrap();
        assert_eq!(written.into_inner().committed_size, 1 << 20);
        let read: Vec<_> = bytestream
            .read(ReadRequest {
                resource_name: format!("main/blobs/{}/{}", d.hash_hex(), d.size_bytes()),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            read.into_iter().flat_map(|r| r.data).collect::<Vec<_>>(),
            data
        );

        // CAS batches and FindMissingBlobs.
        let mut cas = ContentAddressableStorageClient::new(channel.clone());
        let small = b"small".to_vec();
        let ds = DigestFunction::Sha256.digest_of(&small);
        let updated = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(ds.to_proto()),
                    data: small.clone(),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.responses[0].status.as_ref().unwrap().code, 0);
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![
                    d.to_proto(),
                    ds.to_proto(),
                    DigestFunction::Sha256.digest_of(b"no").to_proto(),
                ],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(missing.missing_blob_digests.len(), 1);
        let batch = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![ds.to_proto()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.responses[0].data, small);

        // Action Cache: an entry whose output is present is served.
        let mut ac = ActionCacheClient::new(channel);
        let action = DigestFunction::Sha256.digest_of(b"action");
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(d.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        ac.update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        let got = ac
            .get_action_result(GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, result);

        served.stop().await;
    }

    /// Storage over TLS with `tls` on 127.0.0.1:0 (memory backend); its
    /// `https://` URL.
    async fn serve_tls(
        tls: corral_auth::tls::ServerTls,
        server: &mut tokio::task::JoinSet<Result<(), Error>>,
    ) -> String {
        let cfg = Config {
            backend: config::Backend::Memory {
                max_size_bytes: 1 << 20,
            },
            tls: Some(tls),
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        server.spawn(run(cfg, listener, std::future::pending()));
        url
    }

    fn server_tls(
        files: &corral_auth::certs::Files,
        client_certificate: Option<corral_auth::tls::ClientCertificate>,
    ) -> corral_auth::tls::ServerTls {
        corral_auth::tls::ServerTls {
            certificate: files.server_certificate.clone(),
            private_key: files.server_key.clone(),
            client_ca: client_certificate.map(|_| files.ca.clone()),
            client_certificate,
        }
    }

    /// A client trusting `ca`, showing `identity` (certificate, key).
    fn client_tls(ca: &std::path::Path, identity: Option<&corral_auth::certs::Files>) -> Connector {
        Connector::new(Some(&corral_auth::tls::ClientTls {
            ca: ca.to_owned(),
            certificate: identity.map(|f| f.client_certificate.clone()),
            private_key: identity.map(|f| f.client_key.clone()),
            token_file: None,
        }))
        .unwrap()
    }

    /// Asserts `status` is a failed connection (not a refusal by a
    /// service), its causes mentioning `why`.
    fn refused(status: &tonic::Status, why: &str) {
        let text = format!("{status:?}");
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable
            ),
            "{text}"
        );
        assert!(text.contains(why), "{text}");
    }

    /// GetCapabilities through `connector`: the status if refused.
    async fn capabilities(connector: &Connector, url: &str) -> Result<(), tonic::Status> {
        let channel = connector.connect_lazy("storage", url).unwrap();
        CapabilitiesClient::new(channel)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn served_over_tls_a_client_over_tls_works_and_plaintext_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files = corral_auth::certs::TestPki::new()
            .write(dir.path())
            .unwrap();
        let mut server = tokio::task::JoinSet::new();
        let url = serve_tls(server_tls(&files, None), &mut server).await;
        capabilities(&client_tls(&files.ca, None), &url)
            .await
            .unwrap();

        // Plaintext HTTP/2 to the TLS port: the server reads garbage as a
        // ClientHello and hangs up.
        let plain = url.replace("https://", "http://");
        let status = capabilities(&Connector::plaintext(), &plain)
            .await
            .unwrap_err();
        refused(&status, "");

        // A client trusting another CA refuses the server's certificate.
        let other_dir = tempfile::tempdir().unwrap();
        let other = corral_auth::certs::TestPki::named("another CA")
            .write(other_dir.path())
            .unwrap();
        let status = capabilities(&client_tls(&other.ca, None), &url)
            .await
            .unwrap_err();
        refused(&status, "UnknownIssuer");
    }

    #[tokio::test]
    async fn with_a_required_client_certificate_only_clients_of_the_ca_get_in() {
        use corral_auth::tls::ClientCertificate;
        let dir = tempfile::tempdir().unwrap();
        let files = corral_auth::certs::TestPki::new()
            .write(dir.path())
            .unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = corral_auth::certs::TestPki::named("another CA")
            .write(other_dir.path())
            .unwrap();
        let mut server = tokio::task::JoinSet::new();
        let url = serve_tls(
            server_tls(&files, Some(ClientCertificate::Required)),
            &mut server,
        )
        .await;
        capabilities(&client_tls(&files.ca, Some(&files)), &url)
            .await
            .unwrap();
        for (client, alert) in [
            (client_tls(&files.ca, None), "CertificateRequired"),
            (client_tls(&files.ca, Some(&other)), "UnknownCA"),
        ] {
            let status = capabilities(&client, &url).await.unwrap_err();
            refused(&status, alert);
        }

        // "optional": a client without a certificate gets in (to show a
        // token instead); one with a certificate of another CA does not.
        let url = serve_tls(
            server_tls(&files, Some(ClientCertificate::Optional)),
            &mut server,
        )
        .await;
        capabilities(&client_tls(&files.ca, None), &url)
            .await
            .unwrap();
        capabilities(&client_tls(&files.ca, Some(&files)), &url)
            .await
            .unwrap();
        let status = capabilities(&client_tls(&files.ca, Some(&other)), &url)
            .await
            .unwrap_err();
        refused(&status, "UnknownCA");
    }

    #[tokio::test]
    async fn a_remote_backend_over_tls_sends_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let files = corral_auth::certs::TestPki::new()
            .write(dir.path())
            .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        // The remote: TLS, and an interceptor that wants the token.
        let remote_cfg = Config {
            backend: config::Backend::Memory {
                max_size_bytes: 1 << 20,
            },
            ..Config::default()
        };
        let stores = open(&remote_cfg).await.unwrap();
        let tls = server_tls(&files, None).load("tls").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let wants_token =
            |request: tonic::Request<()>| match request.metadata().get("authorization") {
                Some(value) if value == "Bearer s3cret" => Ok(request),
                _ => Err(tonic::Status::unauthenticated("no token")),
            };
        let served = corral_auth::tls::server(server(), Some(&tls))
            .unwrap()
            .layer(tonic::service::InterceptorLayer::new(wants_token))
            .add_routes(routes(&remote_cfg, &stores, &Authorizer::open()))
            .serve_with_incoming(no_delay(listener));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(served);

        let front = |token_file: Option<std::path::PathBuf>| Config {
            backend: config::Backend::Remote {
                endpoint: url.clone(),
                instance_name: String::new(),
                cache: None,
            },
            client_tls: Some(corral_auth::tls::ClientTls {
                ca: files.ca.clone(),
                certificate: None,
                private_key: None,
                token_file,
            }),
            ..Config::default()
        };
        let data = blob(3, 100);
        let digest = DigestFunction::Sha256.digest_of(&data);
        let with_token = front(Some(token.clone()));
        with_token.validate().unwrap();
        let stores = open(&with_token).await.unwrap();
        stores.blobs.put(&digest, data.clone()).await.unwrap();
        assert_eq!(stores.blobs.get(&digest).await.unwrap(), Some(data));

        let without = open(&front(None)).await.unwrap();
        let err = without.blobs.get(&digest).await.unwrap_err();
        assert_eq!(
            crate::status::store_code(&err),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_remote_endpoint_must_agree_with_client_tls_naming_the_key() {
        let remote = |endpoint: &str, client_tls: bool| Config {
            backend: config::Backend::Remote {
                endpoint: endpoint.to_owned(),
                instance_name: String::new(),
                cache: None,
            },
            client_tls: client_tls.then(|| corral_auth::tls::ClientTls {
                ca: "ca.crt".into(),
                certificate: None,
                private_key: None,
                token_file: None,
            }),
            ..Config::default()
        };
        let text = remote("https://s:1", false)
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(text, "backend.endpoint: https://s:1 needs [client_tls]");
        let text = remote("http://s:1", true)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("backend.endpoint: http://s:1 is plaintext"),
            "{text}"
        );
        remote("https://s:1", true).validate().unwrap();
    }

    #[tokio::test]
    async fn a_certificate_not_matching_its_key_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let files = corral_auth::certs::TestPki::new()
            .write(dir.path())
            .unwrap();
        let mut tls = server_tls(&files, None);
        tls.private_key = files.client_key.clone();
        let cfg = Config {
            tls: Some(tls),
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = run(cfg, listener, std::future::pending())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("tls.private_key"), "{text}");
        assert!(text.contains("does not match"), "{text}");
    }

    #[tokio::test]
    async fn invalid_config_is_refused_before_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = Config {
            max_batch_total_size_bytes: 1,
            ..Config::default()
        };
        let err = run(cfg, listener, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    }
}

#[cfg(test)]
mod tenant_tests {
    //! Storage served with `[auth]`: each caller reaches only what its
    //! grants allow, over a real connection through the layer.

    use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
    use corral_proto::bytestream::{ReadRequest, WriteRequest};
    use corral_proto::reapi::action_cache_client::ActionCacheClient;
    use corral_proto::reapi::capabilities_client::CapabilitiesClient;
    use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use corral_proto::reapi::{
        batch_update_blobs_request, ActionResult, BatchUpdateBlobsRequest, GetActionResultRequest,
        GetCapabilitiesRequest, UpdateActionResultRequest,
    };
    use futures_util::stream;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::Channel;
    use tonic::Code;

    use super::tests::Served;
    use super::*;
    use crate::digest::DigestFunction;

    const SECRET: &str = "a secret of at least thirty-two bytes";

    fn token(sub: &str, groups: &[&str], exp_from_now: i64) -> String {
        let now = corral_proto::time::unix_now() as i64;
        let claims = serde_json::json!({
            "sub": sub, "groups": groups, "iss": "test-idp", "aud": "corral",
            "exp": now + exp_from_now,
        });
        corral_auth::token::sign_hs256(SECRET.as_bytes(), &claims).unwrap()
    }

    type Authed = InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >;

    fn with_token(channel: &Channel, token: Option<String>) -> Authed {
        let header: Option<tonic::metadata::MetadataValue<_>> =
            token.map(|t| format!("Bearer {t}").parse().unwrap());
        InterceptedService::new(
            channel.clone(),
            Box::new(move |mut req: tonic::Request<()>| {
                if let Some(h) = &header {
                    req.metadata_mut().insert("authorization", h.clone());
                }
                Ok(req)
            }),
        )
    }

    fn put(instance: &str, data: &[u8]) -> BatchUpdateBlobsRequest {
        BatchUpdateBlobsRequest {
            instance_name: instance.into(),
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(DigestFunction::Sha256.digest_of(data).to_proto()),
                data: data.to_vec(),
                compressor: 0,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn each_caller_reaches_only_what_its_grants_allow() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let grants = dir.path().join("grants.toml");
        std::fs::write(
            &grants,
            r#"
            [[grant]]
            who = ["claim:groups=team-a"]
            instance_names = ["team-a"]
            permissions = ["cas-read", "cas-write", "ac-read"]

            [[grant]]
            who = ["claim:sub=worker-1"]
            instance_names = ["*"]
            permissions = ["cas-read", "cas-write", "ac-write"]
            "#,
        )
        .unwrap();
        let cfg: Config = toml::from_str(&format!(
            r#"
            [backend]
            kind = "memory"
            max_size_bytes = 1048576

            [auth]
            grants = "{}"
            [auth.tokens]
            hs256_secret_file = "{}"
            issuers = ["test-idp"]
            audiences = ["corral"]
            "#,
            grants.display(),
            secret.display()
        ))
        .unwrap();
        let served = Served::start(cfg).await;
        let channel = served.channel.clone();
        let alice = Some(token("alice", &["team-a"], 600));
        let worker = Some(token("worker-1", &[], 600));

        // No credential, an expired one, one signed with another key.
        let refused = CapabilitiesClient::new(with_token(&channel, None))
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("bearer token"), "{refused:?}");
        let refused = CapabilitiesClient::new(with_token(
            &channel,
            Some(token("alice", &["team-a"], -600)),
        ))
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("expired"), "{refused:?}");

        // A tenant writes its own instance name's CAS, not another's.
        let mut cas = ContentAddressableStorageClient::new(with_token(&channel, alice.clone()));
        cas.batch_update_blobs(put("team-a", b"out")).await.unwrap();
        let refused = cas
            .batch_update_blobs(put("team-b", b"x"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "token:alice lacks cas-write on instance name \"team-b\""
        );
        let data = b"streamed".to_vec();
        let d = DigestFunction::Sha256.digest_of(&data);
        let write = |instance: &str| {
            stream::iter(vec![WriteRequest {
                resource_name: format!(
                    "{instance}/uploads/1/blobs/{}/{}",
                    d.hash_hex(),
                    d.size_bytes()
                ),
                write_offset: 0,
                finish_write: true,
                data: data.clone(),
            }])
        };
        let mut bytestream = ByteStreamClient::new(with_token(&channel, alice.clone()));
        let refused = bytestream.write(write("team-b")).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(refused.message().contains("cas-write"), "{refused:?}");
        bytestream.write(write("team-a")).await.unwrap();
        let refused = bytestream
            .read(ReadRequest {
                resource_name: format!("team-b/blobs/{}/{}", d.hash_hex(), d.size_bytes()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);

        // Only the worker writes the Action Cache; the tenant reads it.
        let action = DigestFunction::Sha256.digest_of(b"action");
        let entry = UpdateActionResultRequest {
            instance_name: "team-a".into(),
            action_digest: Some(action.to_proto()),
            action_result: Some(ActionResult {
                exit_code: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let refused = ActionCacheClient::new(with_token(&channel, alice.clone()))
            .update_action_result(entry.clone())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "token:alice lacks ac-write on instance name \"team-a\""
        );
        ActionCacheClient::new(with_token(&channel, worker))
            .update_action_result(entry)
            .await
            .unwrap();
        let got = ActionCacheClient::new(with_token(&channel, alice))
            .get_action_result(GetActionResultRequest {
                instance_name: "team-a".into(),
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.exit_code, 3);

        served.stop().await;
    }
}

/// Storage on a full disk, served over TCP.
#[cfg(test)]
mod full_disk_tests {
    use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
    use corral_proto::bytestream::WriteRequest;
    use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use corral_proto::reapi::{
        batch_update_blobs_request, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    };
    use futures_util::stream;
    use tonic::Code;

    use super::tests::Served;
    use super::*;
    use crate::blob_store::conformance::blob;
    use crate::digest::DigestFunction;

    #[tokio::test]
    async fn a_full_disk_answers_resource_exhausted_per_blob_and_per_write_until_space_returns() {
        use corral_testkit::Tmpfs;
        let Some(disk) = Tmpfs::mount("a_full_disk_answers_resource_exhausted", "8m") else {
            return;
        };
        let dir = disk.path().join("storage");
        let cfg = Config {
            backend: config::Backend::Disk {
                dir: dir.clone(),
                max_size_bytes: 1 << 30,
                fsync: false,
            },
            ..Config::default()
        };
        let served = Served::start(cfg).await;
        let channel = served.channel.clone();
        let mut cas = ContentAddressableStorageClient::new(channel.clone());
        let mut bytestream = ByteStreamClient::new(channel);
        // Something else on the disk leaves it about 1 MiB.
        let filler = disk.path().join("filler");
        std::fs::write(&filler, vec![0; 7 << 20]).unwrap();

        let batched = blob(1, 2 << 20);
        let b = DigestFunction::Sha256.digest_of(&batched);
        let batch = BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(b.to_proto()),
                data: batched,
                compressor: 0,
            }],
            ..Default::default()
        };
        let streamed = blob(2, 2 << 20);
        let s = DigestFunction::Sha256.digest_of(&streamed);
        let name = format!("uploads/0/blobs/{}/{}", s.hash_hex(), s.size_bytes());
        let writes = || {
            let requests: Vec<WriteRequest> = streamed
                .chunks(64 << 10)
                .enumerate()
                .map(|(i, chunk)| WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: (i * (64 << 10)) as i64,
                    finish_write: (i + 1) * (64 << 10) >= streamed.len(),
                    data: chunk.to_vec(),
                })
                .collect();
            stream::iter(requests)
        };
        let full = format!("the disk of storage directory {} is full", dir.display());

        let updated = cas
            .batch_update_blobs(batch.clone())
            .await
            .unwrap()
            .into_inner();
        let per_blob = updated.responses[0].status.clone().unwrap();
        assert_eq!(per_blob.code, Code::ResourceExhausted as i32);
        assert!(per_blob.message.contains(&full), "{}", per_blob.message);
        let refused = bytestream.write(writes()).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
        assert!(refused.message().contains(&full), "{}", refused.message());
        let missing = |cas: &mut ContentAddressableStorageClient<_>| {
            let request = FindMissingBlobsRequest {
                blob_digests: vec![b.to_proto(), s.to_proto()],
                ..Default::default()
            };
            let mut cas = cas.clone();
            async move {
                cas.find_missing_blobs(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .missing_blob_digests
                    .len()
            }
        };
        assert_eq!(missing(&mut cas).await, 2, "no partial blob is visible");
        assert_eq!(
            std::fs::read_dir(dir.join("tmp")).unwrap().count(),
            0,
            "no partial upload is left"
        );

        // Space returns: the same requests succeed.
        corral_testkit::remove_freeing_space(&filler);
        let updated = cas.batch_update_blobs(batch).await.unwrap().into_inner();
        assert_eq!(updated.responses[0].status.as_ref().unwrap().code, 0);
        let written = bytestream.write(writes()).await.unwrap().into_inner();
        assert_eq!(written.committed_size, 2 << 20);
        assert_eq!(missing(&mut cas).await, 0);

        served.stop().await;
    }
}
