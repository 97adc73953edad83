//! What the scheduler reads from storage, over gRPC: the Action and
//! Command to check before queueing, whether the input root exists, the
//! Action Cache, and storage's capabilities. It never writes: the worker
//! stores results.

use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::capabilities_client::CapabilitiesClient;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, Digest, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, ServerCapabilities,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Largest message accepted from storage (a batch of Action + Command).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A lazily connected client of a REAPI storage.
#[derive(Clone)]
pub struct StorageClient {
    channel: Channel,
}

/// Blobs read, and those storage did not have.
pub struct Fetched {
    pub found: Vec<(Digest, Vec<u8>)>,
    pub missing: Vec<Digest>,
}

impl StorageClient {
    /// A client of `endpoint`; connects on first use.
    pub fn new(endpoint: &str) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            channel: Endpoint::from_shared(endpoint.to_owned())?.connect_lazy(),
        })
    }

    /// Reads `digests` in one batch.
    pub async fn fetch(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Fetched, Status> {
        let response = ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: instance.to_owned(),
                digests: digests.to_vec(),
                digest_function,
                ..Default::default()
            })
            .await?
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
        Ok(ContentAddressableStorageClient::new(self.channel.clone())
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: instance.to_owned(),
                blob_digests: digests.to_vec(),
                digest_function,
            })
            .await?
            .into_inner()
            .missing_blob_digests)
    }

    /// The cached result of `action`, if any (and complete, which the
    /// storage checks).
    pub async fn cached_result(
        &self,
        instance: &str,
        digest_function: i32,
        action: &Digest,
    ) -> Result<Option<ActionResult>, Status> {
        let request = GetActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(action.clone()),
            digest_function,
            ..Default::default()
        };
        match ActionCacheClient::new(self.channel.clone())
            .get_action_result(request)
            .await
        {
            Ok(result) => Ok(Some(result.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Storage's own capabilities, for the scheduler to add to.
    pub async fn capabilities(&self, instance: &str) -> Result<ServerCapabilities, Status> {
        Ok(CapabilitiesClient::new(self.channel.clone())
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: instance.to_owned(),
            })
            .await?
            .into_inner())
    }
}
