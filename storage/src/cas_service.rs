//! The `ContentAddressableStorage` service: FindMissingBlobs,
//! BatchUpdateBlobs, BatchReadBlobs and GetTree over a [`BlobStore`].
//!
//! By default every instance name sees the same blobs: a blob is named by
//! its hash, so reading one needs the hash, and writing one cannot change
//! what another tenant reads. Whoever learns (or guesses) a digest can
//! read the blob, though; with `isolate_instances` each instance name sees
//! only the blobs written under it (`isolated_blob_store`, and
//! docs/decisions/0010-cas-across-instance-names.md). What tenants never
//! share, the Action Cache, is kept per instance (`ac_service`).

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use corral_auth::{Authorizer, Permission};
use corral_proto::reapi::compressor::Value as CompressorValue;
use corral_proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use corral_proto::reapi::{
    batch_read_blobs_response, batch_update_blobs_response, BatchReadBlobsRequest,
    BatchReadBlobsResponse, BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, Directory,
    FindMissingBlobsRequest, FindMissingBlobsResponse, GetChunkMappingRequest,
    GetChunkMappingResponse, GetTreeRequest, GetTreeResponse, RegisterChunkMappingRequest,
    RegisterChunkMappingResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest,
    SplitBlobResponse,
};
use futures_util::{stream, Stream};
use prost::Message as _;
use tonic::{Code, Request, Response, Status};

use crate::blob_store::{self, BlobStore};
use crate::digest::{Digest, DigestError, DigestFunction};
use crate::isolated_blob_store::InstanceBlobs;
use crate::membership::Membership;
use crate::status;

/// Directories per GetTree page when the client asks for none.
const DEFAULT_TREE_PAGE_SIZE: usize = 1000;

/// What a CAS request can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest")]
    Digest(#[from] DigestError),
    #[error("batch of {total_bytes} bytes exceeds max_batch_total_size_bytes ({limit_bytes}); use ByteStream")]
    BatchTooLarge { total_bytes: u64, limit_bytes: u64 },
    #[error("compressor {compressor} is not supported in batches (supported: IDENTITY)")]
    UnsupportedCompressor { compressor: i32 },
    #[error("page token {token:?} is not one this server issued")]
    PageToken { token: String },
    #[error("tree root {digest} is not in the CAS")]
    TreeRootMissing { digest: Digest },
    #[error("directory {digest} does not decode as a Directory")]
    DecodeDirectory {
        digest: Digest,
        #[source]
        source: prost::DecodeError,
    },
    #[error("directory {digest} names an invalid child")]
    DirectoryChild {
        digest: Digest,
        #[source]
        source: DigestError,
    },
    #[error("storing or fetching {digest} failed")]
    Store {
        digest: Digest,
        #[source]
        source: blob_store::Error,
    },
    #[error("storage failed")]
    StoreBatch(#[source] blob_store::Error),
    /// A store answered a batch with fewer results than blobs: a bug in
    /// the backend, reported per missing entry rather than as a panic.
    #[error("storage answered fewer entries of a batch than it was given")]
    StoreBatchShort,
    #[error("{method} is not supported by this server")]
    Unimplemented { method: &'static str },
}

/// The gRPC status for a CAS error.
pub fn status(err: &Error) -> Status {
    let code = match err {
        Error::Digest(_)
        | Error::BatchTooLarge { .. }
        | Error::UnsupportedCompressor { .. }
        | Error::PageToken { .. }
        | Error::DecodeDirectory { .. }
        | Error::DirectoryChild { .. } => Code::InvalidArgument,
        Error::TreeRootMissing { .. } => Code::NotFound,
        Error::Store { source, .. } | Error::StoreBatch(source) => status::store_code(source),
        Error::Unimplemented { .. } => Code::Unimplemented,
        Error::StoreBatchShort => Code::Internal,
    };
    Status::new(code, status::message(err))
}

/// The CAS service over one store.
pub struct CasService {
    blobs: InstanceBlobs,
    max_batch_total_size_bytes: u64,
    authorizer: Authorizer,
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;
type ChunkMappingStream =
    Pin<Box<dyn Stream<Item = Result<GetChunkMappingResponse, Status>> + Send>>;

impl CasService {
    pub fn new(blobs: Arc<dyn BlobStore>, max_batch_total_size_bytes: u64) -> Self {
        Self {
            blobs: InstanceBlobs::shared(blobs),
            max_batch_total_size_bytes,
            authorizer: Authorizer::open(),
        }
    }

    /// Isolates instance names from each other's blobs if `membership` is
    /// set (`isolate_instances`).
    pub fn with_membership(mut self, membership: Option<Membership>) -> Self {
        self.blobs = self.blobs.with_membership(membership);
        self
    }

    /// Checks every call's caller against `authorizer` (open by default).
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = authorizer;
        self
    }

    fn check_batch(&self, total_bytes: u64) -> Result<(), Error> {
        if total_bytes > self.max_batch_total_size_bytes {
            return Err(Error::BatchTooLarge {
                total_bytes,
                limit_bytes: self.max_batch_total_size_bytes,
            });
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(instance = %req.instance_name, count = req.blob_digests.len()))]
    async fn find_missing(
        &self,
        req: FindMissingBlobsRequest,
    ) -> Result<FindMissingBlobsResponse, Error> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = req
            .blob_digests
            .iter()
            .map(|d| Digest::from_proto(function, d))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self
            .blobs
            .for_instance(&req.instance_name)
            .find_missing(&digests)
            .await
            .map_err(Error::StoreBatch)?;
        Ok(FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        })
    }

    #[tracing::instrument(skip_all, fields(instance = %req.instance_name, count = req.requests.len()))]
    async fn batch_update(
        &self,
        req: BatchUpdateBlobsRequest,
    ) -> Result<BatchUpdateBlobsResponse, Error> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        self.check_batch(req.requests.iter().map(|r| r.data.len() as u64).sum())?;
        let blobs = self.blobs.for_instance(&req.instance_name);
        // Entries refused before the store keep their error; the rest go
        // to the store as one batch, so a backend pays its per-call cost
        // (a trip to the blocking pool) once, not per blob.
        let mut results = Vec::with_capacity(req.requests.len());
        let mut protos = Vec::with_capacity(req.requests.len());
        let mut valid = Vec::with_capacity(req.requests.len());
        for r in req.requests {
            let checked = Digest::from_field(function, r.digest.as_ref(), "digest")
                .map_err(Error::from)
                .and_then(|digest| {
                    if r.compressor != CompressorValue::Identity as i32 {
                        return Err(Error::UnsupportedCompressor {
                            compressor: r.compressor,
                        });
                    }
                    Ok(digest)
                });
            match checked {
                Ok(digest) => {
                    results.push(None);
                    valid.push((digest, r.data));
                }
                Err(err) => results.push(Some(Err(err))),
            }
            protos.push(r.digest);
        }
        let digests: Vec<Digest> = valid.iter().map(|(d, _)| *d).collect();
        let mut stored = blobs.put_many(valid).await.into_iter().zip(digests);
        let responses = results
            .into_iter()
            .zip(protos)
            .map(|(result, digest)| {
                let result = result.unwrap_or_else(|| match stored.next() {
                    Some((result, d)) => {
                        result.map_err(|source| Error::Store { digest: d, source })
                    }
                    None => Err(Error::StoreBatchShort),
                });
                batch_update_blobs_response::Response {
                    digest,
                    status: Some(match result {
                        Ok(()) => status::rpc_ok(),
                        Err(err) => to_rpc(&err),
                    }),
                }
            })
            .collect();
        Ok(BatchUpdateBlobsResponse { responses })
    }

    #[tracing::instrument(skip_all, fields(instance = %req.instance_name, count = req.digests.len()))]
    async fn batch_read(
        &self,
        req: BatchReadBlobsRequest,
    ) -> Result<BatchReadBlobsResponse, Error> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        // Sizes as claimed; a negative one fails its own entry below.
        self.check_batch(
            req.digests
                .iter()
                .map(|d| u64::try_from(d.size_bytes).unwrap_or(0))
                .sum(),
        )?;
        let blobs = self.blobs.for_instance(&req.instance_name);
        let parsed: Vec<Result<Digest, Error>> = req
            .digests
            .iter()
            .map(|proto| Digest::from_proto(function, proto).map_err(Error::from))
            .collect();
        let valid: Vec<Digest> = parsed
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .copied()
            .collect();
        let mut found = blobs.get_many(&valid).await.into_iter().zip(valid);
        let responses = req
            .digests
            .into_iter()
            .zip(parsed)
            .map(|(proto, parsed)| {
                let result = parsed.and_then(|_| match found.next() {
                    Some((result, digest)) => {
                        result.map_err(|source| Error::Store { digest, source })
                    }
                    None => Err(Error::StoreBatchShort),
                });
                let (data, status) = match result {
                    Ok(Some(data)) => (data, status::rpc_ok()),
                    Ok(None) => (
                        Vec::new(),
                        status::rpc(
                            Code::NotFound,
                            format!("blob {}/{} is not in the CAS", proto.hash, proto.size_bytes),
                        ),
                    ),
                    Err(err) => (Vec::new(), to_rpc(&err)),
                };
                batch_read_blobs_response::Response {
                    digest: Some(proto),
                    data,
                    compressor: CompressorValue::Identity as i32,
                    status: Some(status),
                }
            })
            .collect();
        Ok(BatchReadBlobsResponse { responses })
    }

    /// Checks the request and the root, then streams pages. The page
    /// token is the number of directories already returned, in the
    /// deterministic breadth-first order below: stateless on the server,
    /// and valid as long as the tree's blobs are.
    #[tracing::instrument(skip_all, fields(instance = %req.instance_name))]
    async fn tree(&self, req: GetTreeRequest) -> Result<TreeStream, Error> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let root = Digest::from_field(function, req.root_digest.as_ref(), "root_digest")?;
        let skip = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse::<usize>()
                .map_err(|_| Error::PageToken {
                    token: req.page_token.clone(),
                })?
        };
        let page_size = usize::try_from(req.page_size)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_TREE_PAGE_SIZE);
        // Under isolate_instances, directories the instance name did not
        // write are missing, the root included.
        let blobs = self.blobs.for_instance(&req.instance_name);
        if blobs
            .find_missing(&[root])
            .await
            .map_err(Error::StoreBatch)?
            == [root]
        {
            return Err(Error::TreeRootMissing { digest: root });
        }
        let walk = TreeWalk {
            blobs,
            queue: VecDeque::from([root]),
            seen: HashSet::from([root]),
            visited: 0,
            skip,
            page_size,
            done: false,
        };
        Ok(Box::pin(stream::unfold(walk, TreeWalk::next_page)))
    }
}

/// A breadth-first walk of a tree, a page at a time. Directories are
/// returned once however often they appear; missing ones are left out
/// with their subtrees, as REAPI says ("the portion present").
struct TreeWalk {
    blobs: Arc<dyn BlobStore>,
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
    /// Directories walked so far, returned or skipped.
    visited: usize,
    skip: usize,
    page_size: usize,
    done: bool,
}

impl TreeWalk {
    async fn next_page(mut self) -> Option<(Result<GetTreeResponse, Status>, Self)> {
        if self.done {
            return None;
        }
        match self.fill_page().await {
            Ok(directories) => {
                let next_page_token = if self.queue.is_empty() {
                    self.done = true;
                    String::new()
                } else {
                    self.visited.to_string()
                };
                Some((
                    Ok(GetTreeResponse {
                        directories,
                        next_page_token,
                    }),
                    self,
                ))
            }
            Err(err) => {
                self.done = true;
                Some((Err(status(&err)), self))
            }
        }
    }

    async fn fill_page(&mut self) -> Result<Vec<Directory>, Error> {
        let mut page = Vec::new();
        while page.len() < self.page_size {
            let Some(digest) = self.queue.pop_front() else {
                break;
            };
            let Some(data) = self
                .blobs
                .get(&digest)
                .await
                .map_err(|source| Error::Store { digest, source })?
            else {
                continue;
            };
            let directory = Directory::decode(data.as_slice())
                .map_err(|source| Error::DecodeDirectory { digest, source })?;
            for child in &directory.directories {
                let child = Digest::from_field(digest.function(), child.digest.as_ref(), "digest")
                    .map_err(|source| Error::DirectoryChild { digest, source })?;
                if self.seen.insert(child) {
                    self.queue.push_back(child);
                }
            }
            self.visited += 1;
            if self.visited > self.skip {
                page.push(directory);
            }
        }
        Ok(page)
    }
}

fn to_rpc(err: &Error) -> corral_proto::rpc::Status {
    let s = status(err);
    status::rpc(s.code(), s.message().to_owned())
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        self.authorizer.check_request(
            &request,
            Permission::CasRead,
            &request.get_ref().instance_name,
        )?;
        self.find_missing(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        self.authorizer.check_request(
            &request,
            Permission::CasWrite,
            &request.get_ref().instance_name,
        )?;
        self.batch_update(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        self.authorizer.check_request(
            &request,
            Permission::CasRead,
            &request.get_ref().instance_name,
        )?;
        self.batch_read(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<TreeStream>, Status> {
        self.authorizer.check_request(
            &request,
            Permission::CasRead,
            &request.get_ref().instance_name,
        )?;
        self.tree(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    // Chunking (split/splice) is optional in REAPI and not advertised in
    // GetCapabilities (split_blob_support and splice_blob_support are false).
    async fn split_blob(
        &self,
        _: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        Err(status(&Error::Unimplemented {
            method: "SplitBlob",
        }))
    }

    type GetChunkMappingStream = ChunkMappingStream;

    async fn get_chunk_mapping(
        &self,
        _: Request<GetChunkMappingRequest>,
    ) -> Result<Response<ChunkMappingStream>, Status> {
        Err(status(&Error::Unimplemented {
            method: "GetChunkMapping",
        }))
    }

    async fn splice_blob(
        &self,
        _: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(status(&Error::Unimplemented {
            method: "SpliceBlob",
        }))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<RegisterChunkMappingRequest>>,
    ) -> Result<Response<RegisterChunkMappingResponse>, Status> {
        Err(status(&Error::Unimplemented {
            method: "RegisterChunkMapping",
        }))
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::batch_update_blobs_request;
    use corral_proto::reapi::{Digest as ProtoDigest, DirectoryNode, FileNode};
    use futures_util::TryStreamExt as _;

    use super::*;
    use crate::memory_blob_store::MemoryBlobStore;

    const LIMIT: u64 = 4096;

    fn service() -> (CasService, MemoryBlobStore) {
        let store = MemoryBlobStore::new(1 << 20);
        (CasService::new(Arc::new(store.clone()), LIMIT), store)
    }

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    fn update(digest: ProtoDigest, data: &[u8]) -> batch_update_blobs_request::Request {
        batch_update_blobs_request::Request {
            digest: Some(digest),
            data: data.to_vec(),
            compressor: 0,
        }
    }

    fn codes<'a>(
        statuses: impl Iterator<Item = &'a Option<corral_proto::rpc::Status>>,
    ) -> Vec<Code> {
        statuses
            .map(|s| Code::from(s.as_ref().expect("status set").code))
            .collect()
    }

    #[tokio::test]
    async fn find_missing_reports_absent_blobs_and_refuses_bad_digests() {
        let (cas, store) = service();
        store.put(&sha(b"here"), b"here".to_vec()).await.unwrap();
        let resp = cas
            .find_missing_blobs(Request::new(FindMissingBlobsRequest {
                instance_name: "any/instance".into(),
                blob_digests: vec![sha(b"here").to_proto(), sha(b"gone").to_proto()],
                digest_function: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.missing_blob_digests, [sha(b"gone").to_proto()]);

        let bad = ProtoDigest {
            hash: "ABC".into(),
            size_bytes: 1,
        };
        let err = cas
            .find_missing_blobs(Request::new(FindMissingBlobsRequest {
                blob_digests: vec![bad],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("\"ABC\""), "{}", err.message());

        let err = cas
            .find_missing_blobs(Request::new(FindMissingBlobsRequest {
                digest_function: 2, // SHA1
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn batch_update_reports_each_blob() {
        let (cas, store) = service();
        let negative = ProtoDigest {
            hash: sha(b"x").hash_hex(),
            size_bytes: -1,
        };
        let resp = cas
            .batch_update_blobs(Request::new(BatchUpdateBlobsRequest {
                instance_name: String::new(),
                requests: vec![
                    update(sha(b"good").to_proto(), b"good"),
                    update(sha(b"good").to_proto(), b"evil"),
                    update(negative, b"x"),
                    batch_update_blobs_request::Request {
                        compressor: CompressorValue::Zstd as i32,
                        ..update(sha(b"z").to_proto(), b"z")
                    },
                ],
                digest_function: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            codes(resp.responses.iter().map(|r| &r.status)),
            [
                Code::Ok,
                Code::InvalidArgument,
                Code::InvalidArgument,
                Code::InvalidArgument
            ]
        );
        assert_eq!(resp.responses[1].digest, Some(sha(b"good").to_proto()));
        assert_eq!(
            store.get(&sha(b"good")).await.unwrap(),
            Some(b"good".to_vec())
        );
        assert_eq!(store.get(&sha(b"z")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn batches_over_the_limit_are_refused_whole() {
        let (cas, _) = service();
        let big = vec![7u8; LIMIT as usize + 1];
        let err = cas
            .batch_update_blobs(Request::new(BatchUpdateBlobsRequest {
                requests: vec![update(sha(&big).to_proto(), &big)],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("max_batch_total_size_bytes"));

        let err = cas
            .batch_read_blobs(Request::new(BatchReadBlobsRequest {
                digests: vec![sha(&big).to_proto()],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn batch_read_reports_each_blob() {
        let (cas, store) = service();
        let blake = DigestFunction::Blake3.digest_of(b"b3");
        store.put(&blake, b"b3".to_vec()).await.unwrap();
        let bad = ProtoDigest {
            hash: "zz".into(),
            size_bytes: 2,
        };
        let resp = cas
            .batch_read_blobs(Request::new(BatchReadBlobsRequest {
                instance_name: String::new(),
                digests: vec![
                    blake.to_proto(),
                    DigestFunction::Blake3.digest_of(b"no").to_proto(),
                    bad,
                ],
                acceptable_compressors: vec![],
                digest_function: DigestFunction::Blake3.to_proto() as i32,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            codes(resp.responses.iter().map(|r| &r.status)),
            [Code::Ok, Code::NotFound, Code::InvalidArgument]
        );
        assert_eq!(resp.responses[0].data, b"b3");
    }

    /// root → {a, b}, a → {c}, b → {c}: four distinct directories.
    async fn store_tree(store: &MemoryBlobStore) -> Digest {
        async fn put_dir(
            store: &MemoryBlobStore,
            name: &str,
            children: &[(&str, Digest)],
        ) -> Digest {
            let dir = Directory {
                files: vec![FileNode {
                    name: format!("{name}.txt"),
                    digest: Some(sha(name.as_bytes()).to_proto()),
                    ..Default::default()
                }],
                directories: children
                    .iter()
                    .map(|(n, d)| DirectoryNode {
                        name: (*n).to_owned(),
                        digest: Some(d.to_proto()),
                    })
                    .collect(),
                ..Default::default()
            };
            let data = dir.encode_to_vec();
            let digest = sha(&data);
            store.put(&digest, data).await.unwrap();
            digest
        }
        let c = put_dir(store, "c", &[]).await;
        let a = put_dir(store, "a", &[("c", c)]).await;
        let b = put_dir(store, "b", &[("c", c)]).await;
        put_dir(store, "root", &[("a", a), ("b", b)]).await
    }

    async fn tree_pages(
        cas: &CasService,
        root: Digest,
        page_size: i32,
        token: &str,
    ) -> Result<Vec<GetTreeResponse>, Status> {
        let stream = cas
            .get_tree(Request::new(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                page_size,
                page_token: token.to_owned(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        stream.try_collect().await
    }

    fn names(pages: &[GetTreeResponse]) -> Vec<String> {
        pages
            .iter()
            .flat_map(|p| &p.directories)
            .map(|d| d.files[0].name.clone())
            .collect()
    }

    #[tokio::test]
    async fn get_tree_pages_breadth_first_and_resumes_from_a_token() {
        let (cas, store) = service();
        let root = store_tree(&store).await;
        let pages = tree_pages(&cas, root, 0, "").await.unwrap();
        assert_eq!(names(&pages), ["root.txt", "a.txt", "b.txt", "c.txt"]);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].next_page_token, "");

        let pages = tree_pages(&cas, root, 3, "").await.unwrap();
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].next_page_token, "3");
        let resumed = tree_pages(&cas, root, 3, &pages[0].next_page_token)
            .await
            .unwrap();
        assert_eq!(names(&resumed), ["c.txt"]);
    }

    #[tokio::test]
    async fn get_tree_errors() {
        let (cas, store) = service();
        let err = tree_pages(&cas, sha(b"nothing"), 0, "").await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let root = store_tree(&store).await;
        let err = tree_pages(&cas, root, 0, "not-a-token").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // A blob that is not a Directory.
        store
            .put(&sha(b"\xff\xff"), b"\xff\xff".to_vec())
            .await
            .unwrap();
        let err = tree_pages(&cas, sha(b"\xff\xff"), 0, "").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn chunking_is_unimplemented() {
        let (cas, _) = service();
        let err = cas
            .split_blob(Request::new(SplitBlobRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
    }
}
