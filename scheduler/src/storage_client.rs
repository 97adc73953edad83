//! What the scheduler reads from storage: the Action and Command to check
//! before queueing, whether the input root exists, the Action Cache, and
//! storage's capabilities. The one thing it writes is its own size class
//! histories ([`crate::size_class_history`]): the worker stores results.
//!
//! Storage is reached over gRPC, or, when one process serves both (`corral
//! up`), by calling storage's service handlers directly: the same checks
//! (digests, batch limits, complete Action Cache entries) without
//! encoding, a socket and a round trip per call.

use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::capabilities_client::CapabilitiesClient;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, Digest, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, ServerCapabilities, UpdateActionResultRequest,
};
use std::sync::Arc;

use corral_auth::channel::{Channel, Connector};
use corral_proto::reapi::action_cache_server::ActionCache as _;
use corral_proto::reapi::capabilities_server::Capabilities as _;
use corral_proto::reapi::content_addressable_storage_server::ContentAddressableStorage as _;
use corral_storage::ac_service::AcService;
use corral_storage::capabilities_service::CapabilitiesService;
use corral_storage::cas_service::CasService;
use tonic::{Code, Request, Status};

use crate::operation::Inline;

/// Largest message accepted from storage (a batch of Action + Command).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A lazily connected client of a REAPI storage, or storage's own
/// handlers in this process.
#[derive(Clone)]
pub enum StorageClient {
    Remote(Channel),
    InProcess {
        cas: Arc<CasService>,
        action_cache: Arc<AcService>,
        capabilities: Arc<CapabilitiesService>,
    },
}

/// Blobs read, and those storage did not have.
pub struct Fetched {
    pub found: Vec<(Digest, Vec<u8>)>,
    pub missing: Vec<Digest>,
}

impl StorageClient {
    /// A client of `endpoint` (config key `storage`) through `connector`;
    /// connects on first use.
    pub fn new(connector: &Connector, endpoint: &str) -> Result<Self, corral_auth::channel::Error> {
        Ok(Self::Remote(connector.connect_lazy("storage", endpoint)?))
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

    /// Reads `digests` in one batch.
    pub async fn fetch(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Fetched, Status> {
        let request = BatchReadBlobsRequest {
            instance_name: instance.to_owned(),
            digests: digests.to_vec(),
            digest_function,
            ..Default::default()
        };
        let response = match self {
            Self::Remote(channel) => {
                ContentAddressableStorageClient::new(channel.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .batch_read_blobs(request)
                    .await?
            }
            Self::InProcess { cas, .. } => cas.batch_read_blobs(Request::new(request)).await?,
        }
        .into_inner();
        let mut fetched = Fetched {
            found: Vec::new(),
            missing: Vec::new(),
        };
        for blob in response.responses {
            let digest = blob.digest.unwrap_or_default();
            match blob.status.map_or(0, |s| s.code) {
                0 => fetched.found.push((digest, blob.data)),
                code if code == Code::NotFound as i32 => fetched.missing.push(digest),
                code => {
                    return Err(Status::new(
                        Code::from(code),
                        format!(
                            "reading {}/{} from storage failed",
                            digest.hash, digest.size_bytes
                        ),
                    ))
                }
            }
        }
        Ok(fetched)
    }

    /// Which of `digests` storage lacks.
    pub async fn find_missing(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Vec<Digest>, Status> {
        let request = FindMissingBlobsRequest {
            instance_name: instance.to_owned(),
            blob_digests: digests.to_vec(),
            digest_function,
        };
        let response = match self {
            Self::Remote(channel) => {
                ContentAddressableStorageClient::new(channel.clone())
                    .find_missing_blobs(request)
                    .await?
            }
            Self::InProcess { cas, .. } => cas.find_missing_blobs(Request::new(request)).await?,
        };
        Ok(response.into_inner().missing_blob_digests)
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
        let request = GetActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(action.clone()),
            digest_function,
            inline_stdout: inline.stdout,
            inline_stderr: inline.stderr,
            ..Default::default()
        };
        let response = match self {
            Self::Remote(channel) => {
                ActionCacheClient::new(channel.clone())
                    .get_action_result(request)
                    .await
            }
            Self::InProcess { action_cache, .. } => {
                action_cache.get_action_result(Request::new(request)).await
            }
        };
        match response {
            Ok(result) => Ok(Some(result.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
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
        let request = UpdateActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(key.clone()),
            action_result: Some(result),
            ..Default::default()
        };
        match self {
            Self::Remote(channel) => {
                ActionCacheClient::new(channel.clone())
                    .update_action_result(request)
                    .await?;
            }
            Self::InProcess { action_cache, .. } => {
                action_cache
                    .update_action_result(Request::new(request))
                    .await?;
            }
        }
        Ok(())
    }

    /// Storage's own capabilities, for the scheduler to add to.
    pub async fn capabilities(&self, instance: &str) -> Result<ServerCapabilities, Status> {
        let request = GetCapabilitiesRequest {
            instance_name: instance.to_owned(),
        };
        let response = match self {
            Self::Remote(channel) => {
                CapabilitiesClient::new(channel.clone())
                    .get_capabilities(request)
                    .await?
            }
            Self::InProcess { capabilities, .. } => {
                capabilities.get_capabilities(Request::new(request)).await?
            }
        };
        Ok(response.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use corral_storage::config::Backend;
    use corral_storage::DigestFunction;

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
}
