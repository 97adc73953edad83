//! REAPI `Capabilities` for a farm: storage's cache capabilities plus
//! what this scheduler executes.
//!
//! A server routes each gRPC service to one handler, so where storage is
//! served on the scheduler's port (`corral up`) this one replaces
//! storage's, and must repeat its cache capabilities.

use corral_proto::reapi::capabilities_server::Capabilities;
use corral_proto::reapi::digest_function::Value as DigestFunction;
use corral_proto::reapi::priority_capabilities::PriorityRange;
use corral_proto::reapi::{
    CacheCapabilities, ExecutionCapabilities, GetCapabilitiesRequest, PriorityCapabilities,
    ServerCapabilities,
};
use corral_proto::semver::SemVer;
use tonic::{Request, Response, Status};

use crate::storage_client::StorageClient;

/// The `ExecutionPolicy.priority` values the scheduler distinguishes;
/// others are clamped into this range. Lower runs first.
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Where the cache half of the answer comes from.
#[derive(Clone)]
pub enum CacheCapabilitiesSource {
    /// Given by the daemon that serves storage next to the scheduler.
    Fixed(CacheCapabilities),
    /// Asked of the storage endpoint, on every call (it is cheap, and
    /// storage may be reconfigured behind us).
    Storage(StorageClient),
}

/// The Capabilities service.
pub struct CapabilitiesService {
    cache: CacheCapabilitiesSource,
}

impl CapabilitiesService {
    pub fn new(cache: CacheCapabilitiesSource) -> Self {
        Self { cache }
    }
}

/// The digest functions actions may be hashed with. Storage verifies
/// BLAKE3 too, but workers lay out and hash only SHA-256 trees, so only
/// SHA-256 is offered for execution: a client must not learn otherwise
/// from GetCapabilities and have its actions fail on a worker.
pub const EXECUTION_DIGEST_FUNCTIONS: [DigestFunction; 1] = [DigestFunction::Sha256];

/// What this scheduler executes: any action hashed with
/// [`EXECUTION_DIGEST_FUNCTIONS`], at priorities [`PRIORITIES`].
pub fn execution_capabilities() -> ExecutionCapabilities {
    ExecutionCapabilities {
        digest_function: DigestFunction::Sha256 as i32,
        exec_enabled: true,
        execution_priority_capabilities: Some(PriorityCapabilities {
            priorities: vec![PriorityRange {
                min_priority: *PRIORITIES.start(),
                max_priority: *PRIORITIES.end(),
            }],
        }),
        supported_node_properties: Vec::new(),
        digest_functions: EXECUTION_DIGEST_FUNCTIONS
            .iter()
            .map(|f| *f as i32)
            .collect(),
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    #[tracing::instrument(skip_all, fields(instance = %request.get_ref().instance_name))]
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let version = |minor| SemVer {
            major: 2,
            minor,
            patch: 0,
            prerelease: String::new(),
        };
        let mut answer = match &self.cache {
            CacheCapabilitiesSource::Fixed(cache) => ServerCapabilities {
                cache_capabilities: Some(cache.clone()),
                low_api_version: Some(version(0)),
                high_api_version: Some(version(3)),
                ..Default::default()
            },
            CacheCapabilitiesSource::Storage(storage) => {
                storage
                    .capabilities(&request.get_ref().instance_name)
                    .await?
            }
        };
        answer.execution_capabilities = Some(execution_capabilities());
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cache_capabilities_are_passed_through_and_execution_added() {
        let cache = CacheCapabilities {
            max_batch_total_size_bytes: 4 << 20,
            ..Default::default()
        };
        let service = CapabilitiesService::new(CacheCapabilitiesSource::Fixed(cache.clone()));
        let answer = service
            .get_capabilities(Request::new(GetCapabilitiesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.cache_capabilities, Some(cache));
        let exec = answer.execution_capabilities.unwrap();
        assert!(exec.exec_enabled);
        assert_eq!(exec.digest_function, DigestFunction::Sha256 as i32);
        // Only what workers execute: storage's BLAKE3 is not offered.
        assert_eq!(exec.digest_functions, vec![DigestFunction::Sha256 as i32]);
        let range = exec.execution_priority_capabilities.unwrap().priorities[0];
        assert!(range.min_priority < 0 && range.max_priority > 0);
        assert_eq!(answer.high_api_version.unwrap().minor, 3);
    }
}
