//! The `Capabilities` service: what this storage supports, truthfully.
//!
//! Only cache capabilities: execution capabilities are the scheduler's
//! to add when it mounts these services next to its own.

use corral_proto::reapi::capabilities_server::Capabilities;
use corral_proto::reapi::compressor::Value as CompressorValue;
use corral_proto::reapi::symlink_absolute_path_strategy::Value as SymlinkStrategy;
use corral_proto::reapi::{
    ActionCacheUpdateCapabilities, CacheCapabilities, GetCapabilitiesRequest, ServerCapabilities,
};
use corral_proto::semver::SemVer;
use tonic::{Request, Response, Status};

use crate::digest::DigestFunction;

/// What GetCapabilities reports.
pub struct CapabilitiesService {
    max_batch_total_size_bytes: u64,
    max_cas_blob_size_bytes: u64,
}

impl CapabilitiesService {
    pub fn new(max_batch_total_size_bytes: u64, max_cas_blob_size_bytes: u64) -> Self {
        Self {
            max_batch_total_size_bytes,
            max_cas_blob_size_bytes,
        }
    }

    pub fn capabilities(&self) -> ServerCapabilities {
        let version = |minor| SemVer {
            major: 2,
            minor,
            patch: 0,
            prerelease: String::new(),
        };
        // ByteStream serves compressed-blobs/zstd; batch requests are
        // identity only.
        let compressors = vec![
            CompressorValue::Identity as i32,
            CompressorValue::Zstd as i32,
        ];
        let batch_compressors = vec![CompressorValue::Identity as i32];
        ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: DigestFunction::ALL
                    .iter()
                    .map(|f| f.to_proto() as i32)
                    .collect(),
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                cache_priority_capabilities: None,
                max_batch_total_size_bytes: clamp(self.max_batch_total_size_bytes),
                // Storage does not look inside stored results, so it
                // refuses no symlink target.
                symlink_absolute_path_strategy: SymlinkStrategy::Allowed as i32,
                supported_compressors: compressors,
                supported_batch_update_compressors: batch_compressors,
                // A blob larger than the store's bound could never be kept.
                max_cas_blob_size_bytes: clamp(self.max_cas_blob_size_bytes),
                split_blob_support: false,
                splice_blob_support: false,
                fast_cdc_2020_params: None,
                rep_max_cdc_params: None,
            }),
            execution_capabilities: None,
            deprecated_api_version: None,
            low_api_version: Some(version(0)),
            high_api_version: Some(version(3)),
        }
    }
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let _span = tracing::debug_span!(
            "get_capabilities",
            instance = %request.get_ref().instance_name
        )
        .entered();
        Ok(Response::new(self.capabilities()))
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::digest_function::Value as ProtoFunction;

    use super::*;

    #[tokio::test]
    async fn capabilities_are_the_truth() {
        let service = CapabilitiesService::new(4 << 20, 10 << 30);
        let caps = service
            .get_capabilities(Request::new(GetCapabilitiesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let cache = caps.cache_capabilities.unwrap();
        assert_eq!(
            cache.digest_functions,
            [ProtoFunction::Sha256 as i32, ProtoFunction::Blake3 as i32]
        );
        assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
        assert_eq!(cache.max_cas_blob_size_bytes, 10 << 30);
        assert_eq!(
            cache.supported_compressors,
            [
                CompressorValue::Identity as i32,
                CompressorValue::Zstd as i32
            ]
        );
        assert_eq!(
            cache.supported_batch_update_compressors,
            [CompressorValue::Identity as i32]
        );
        assert!(
            cache
                .action_cache_update_capabilities
                .unwrap()
                .update_enabled
        );
        assert!(caps.execution_capabilities.is_none());
        let low = caps.low_api_version.unwrap();
        let high = caps.high_api_version.unwrap();
        assert_eq!((low.major, low.minor, high.major, high.minor), (2, 0, 2, 3));
    }
}
