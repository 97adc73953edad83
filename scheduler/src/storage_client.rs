//! What the scheduler reads from storage: the Action and Command to check
//! before queueing, whether the input root exists, the Action Cache, and
//! storage's capabilities. The one thing it writes is its own size class
//! histories ([`crate::size_class_history`]): the worker stores results.
//!
//! Storage is reached through the shared CAS client (`corral-cas-client`),
//! or, when one process serves both (`corral up`), by calling storage's
//! service handlers directly: the same checks (digests, batch limits,
//! complete Action Cache entries) without encoding, a socket and a round
//! trip per call. Either way every blob read is verified by its digest.
//! Remote CAS reads of concurrent Executes share calls
//! ([`crate::joined_reads`]).

use std::sync::Arc;

use corral_auth::channel::Connector;
use corral_cas_client::CasClient;
use corral_proto::bytestream::byte_stream_server::ByteStream as _;
use corral_proto::bytestream::ReadRequest;
use corral_proto::reapi::action_cache_server::ActionCache as _;
use corral_proto::reapi::capabilities_server::Capabilities as _;
use corral_proto::reapi::content_addressable_storage_server::ContentAddressableStorage as _;
use corral_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, Digest, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, ServerCapabilities, UpdateActionResultRequest,
};
use corral_storage::ac_service::AcService;
use corral_storage::bytestream_service::ByteStreamService;
use corral_storage::capabilities_service::CapabilitiesService;
use corral_storage::cas_service::CasService;
use corral_storage::DigestFunction;
use tonic::{Code, Request, Status};

use crate::joined_reads::JoinedReads;
use crate::operation::Inline;

pub use corral_cas_client::Fetched;

/// A blob's chunks as [`StorageClient::read_chunks`] streams them.
pub type BlobChunks =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Vec<u8>, Status>> + Send>>;

/// A lazily connected client of a REAPI storage, or storage's own
/// handlers in this process.
#[derive(Clone)]
pub enum StorageClient {
    Remote(JoinedReads),
    InProcess {
        cas: Arc<CasService>,
        bytestream: Arc<ByteStreamService>,
        action_cache: Arc<AcService>,
        capabilities: Arc<CapabilitiesService>,
    },
}

/// The remote client for `instance` and the request's digest function.
fn remote(client: &CasClient, instance: &str, digest_function: i32) -> Result<CasClient, Status> {
    client
        .with_instance(instance)
        .with_digest_function(digest_function)
        .map_err(corral_cas_client::Error::into_status)
}

impl StorageClient {
    /// A client of `endpoint` (config key `storage`) through `connector`;
    /// connects on first use.
    pub fn new(connector: &Connector, endpoint: &str) -> Result<Self, corral_auth::channel::Error> {
        let channel = connector.connect_lazy("storage", endpoint)?;
        Ok(Self::Remote(JoinedReads::new(CasClient::from_channel(
            channel,
        ))))
    }

    /// Storage's handlers over `stores`, in this process. With
    /// `isolate_instances` they see, as over gRPC, only the blobs of the
    /// request's instance name: the Action and Command of one tenant are
    /// not another's to run.
    pub fn in_process(cfg: &corral_storage::Config, stores: &corral_storage::Stores) -> Self {
        Self::InProcess {
            cas: Arc::new(
                CasService::new(Arc::clone(&stores.blobs), cfg.max_batch_total_size_bytes)
                    .with_membership(stores.membership.clone()),
            ),
            bytestream: Arc::new(
                ByteStreamService::new(Arc::clone(&stores.blobs))
                    .with_membership(stores.membership.clone()),
            ),
            action_cache: Arc::new(
                AcService::new(Arc::clone(&stores.blobs), Arc::clone(&stores.action_cache))
                    .with_membership(stores.membership.clone()),
            ),
            capabilities: Arc::new(CapabilitiesService::new(
                cfg.max_batch_total_size_bytes,
                stores.max_size_bytes,
            )),
        }
    }

    /// Reads `digests` in one batch, each verified by its digest.
    pub async fn fetch(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Fetched, Status> {
        match self {
            Self::Remote(joined) => joined.fetch(instance, digest_function, digests).await,
            Self::InProcess { cas, .. } => {
                let function = DigestFunction::from_proto(digest_function)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let request = BatchReadBlobsRequest {
                    instance_name: instance.to_owned(),
                    digests: digests.to_vec(),
                    digest_function,
                    ..Default::default()
                };
                let response = cas.batch_read_blobs(Request::new(request)).await?;
                corral_cas_client::read_response(function, digests, response.into_inner())
                    .map_err(corral_cas_client::Error::into_status)
            }
        }
    }

    /// The whole of `digest` as a stream of chunks, for a reader that
    /// passes it on (a download) and cannot hold it. The chunks are
    /// checked as they pass: a blob that turns out not to match its
    /// digest ends with DATA_LOSS in place of its end.
    pub async fn read_chunks(
        &self,
        instance: &str,
        digest_function: i32,
        digest: &Digest,
    ) -> Result<BlobChunks, Status> {
        match self {
            Self::Remote(joined) => {
                let chunks = remote(joined.client(), instance, digest_function)?
                    .read_chunks(digest)
                    .await
                    .map_err(corral_cas_client::Error::into_status)?;
                Ok(Box::pin(chunks))
            }
            Self::InProcess { bytestream, .. } => {
                let function = DigestFunction::from_proto(digest_function)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let expected = corral_cas_client::digest::Digest::from_proto(function, digest)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let request = ReadRequest {
                    resource_name: corral_cas_client::resource::read_name(
                        instance,
                        function,
                        &digest.hash,
                        digest.size_bytes,
                    ),
                    read_offset: 0,
                    read_limit: 0,
                };
                let chunks = bytestream.read(Request::new(request)).await?.into_inner();
                let chunks = futures_util::StreamExt::map(chunks, |r| r.map(|r| r.data));
                Ok(Box::pin(corral_cas_client::verify_chunks(expected, chunks)))
            }
        }
    }

    /// Which of `digests` storage lacks.
    pub async fn find_missing(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Vec<Digest>, Status> {
        match self {
            Self::Remote(joined) => {
                joined
                    .find_missing(instance, digest_function, digests)
                    .await
            }
            Self::InProcess { cas, .. } => {
                let request = FindMissingBlobsRequest {
                    instance_name: instance.to_owned(),
                    blob_digests: digests.to_vec(),
                    digest_function,
                };
                let response = cas.find_missing_blobs(Request::new(request)).await?;
                Ok(response.into_inner().missing_blob_digests)
            }
        }
    }

    /// The cached result of `action`, if any (and complete, which the
    /// storage checks), with stdout and stderr inlined as `inline` asks.
    pub async fn cached_result(
        &self,
        instance: &str,
        digest_function: i32,
        action: &Digest,
        inline: Inline,
    ) -> Result<Option<ActionResult>, Status> {
        match self {
            Self::Remote(joined) => remote(joined.client(), instance, digest_function)?
                .get_action_result(action, inline.stdout, inline.stderr)
                .await
                .map_err(corral_cas_client::Error::into_status),
            Self::InProcess { action_cache, .. } => {
                let request = GetActionResultRequest {
                    instance_name: instance.to_owned(),
                    action_digest: Some(action.clone()),
                    digest_function,
                    inline_stdout: inline.stdout,
                    inline_stderr: inline.stderr,
                    ..Default::default()
                };
                match action_cache.get_action_result(Request::new(request)).await {
                    Ok(result) => Ok(Some(result.into_inner())),
                    Err(status) if status.code() == Code::NotFound => Ok(None),
                    Err(status) => Err(status),
                }
            }
        }
    }

    /// Stores `result` as the Action Cache entry of `key` in `instance`
    /// (SHA-256): for the scheduler's own entries only.
    pub async fn update_action_result(
        &self,
        instance: &str,
        key: &Digest,
        result: ActionResult,
    ) -> Result<(), Status> {
        match self {
            Self::Remote(joined) => joined
                .client()
                .with_instance(instance)
                .update_action_result(key, result)
                .await
                .map_err(corral_cas_client::Error::into_status),
            Self::InProcess { action_cache, .. } => {
                let request = UpdateActionResultRequest {
                    instance_name: instance.to_owned(),
                    action_digest: Some(key.clone()),
                    action_result: Some(result),
                    ..Default::default()
                };
                action_cache
                    .update_action_result(Request::new(request))
                    .await?;
                Ok(())
            }
        }
    }

    /// Storage's own capabilities, for the scheduler to add to.
    pub async fn capabilities(&self, instance: &str) -> Result<ServerCapabilities, Status> {
        match self {
            Self::Remote(joined) => joined
                .client()
                .with_instance(instance)
                .capabilities()
                .await
                .map_err(corral_cas_client::Error::into_status),
            Self::InProcess { capabilities, .. } => {
                let request = GetCapabilitiesRequest {
                    instance_name: instance.to_owned(),
                };
                let response = capabilities.get_capabilities(Request::new(request)).await?;
                Ok(response.into_inner())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_storage::config::Backend;

    use super::*;

    /// In process as over gRPC: with `isolate_instances`, the scheduler
    /// reads an instance name's blobs only, so tenant B cannot have tenant
    /// A's Action run by naming its digest.
    #[tokio::test]
    async fn in_process_reads_are_isolated_per_instance_name() {
        let cfg = corral_storage::Config {
            backend: Backend::Memory {
                max_size_bytes: 1 << 20,
            },
            isolate_instances: true,
            ..Default::default()
        };
        let stores = corral_storage::open(&cfg).await.unwrap();
        let action = DigestFunction::Sha256.digest_of(b"tenant a's action");
        stores
            .instance_blobs()
            .for_instance("team-a")
            .put(&action, b"tenant a's action".to_vec())
            .await
            .unwrap();
        let client = StorageClient::in_process(&cfg, &stores);
        let digests = [action.to_proto()];
        let a = client.fetch("team-a", 0, &digests).await.unwrap();
        assert_eq!(a.found.len(), 1);
        let b = client.fetch("team-b", 0, &digests).await.unwrap();
        assert!(b.found.is_empty());
        assert_eq!(b.missing, digests);
        assert_eq!(
            client.find_missing("team-b", 0, &digests).await.unwrap(),
            digests
        );
    }

    /// A blob larger than one gRPC message streams whole, in chunks, in
    /// process as over gRPC, and only to its own instance name.
    #[tokio::test]
    async fn in_process_chunked_reads_stream_a_large_blob_to_its_instance_name_only() {
        let cfg = corral_storage::Config {
            backend: Backend::Memory {
                max_size_bytes: 64 << 20,
            },
            isolate_instances: true,
            ..Default::default()
        };
        let stores = corral_storage::open(&cfg).await.unwrap();
        let blob: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
        let digest = DigestFunction::Sha256.digest_of(&blob);
        stores
            .instance_blobs()
            .for_instance("team-a")
            .put(&digest, blob.clone())
            .await
            .unwrap();
        let client = StorageClient::in_process(&cfg, &stores);
        let chunks: Vec<Vec<u8>> = futures_util::TryStreamExt::try_collect(
            client
                .read_chunks("team-a", 0, &digest.to_proto())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(chunks.len() > 1, "one chunk of {} bytes", blob.len());
        assert!(chunks.concat() == blob, "the chunks are not the blob");
        let other = client.read_chunks("team-b", 0, &digest.to_proto()).await;
        assert_eq!(other.err().map(|s| s.code()), Some(Code::NotFound));
    }
}
