//! The `ByteStream` service: streamed reads and resumable writes of CAS
//! blobs, named as `resource_name` describes.
//!
//! A write whose stream breaks before `finish_write` is parked under its
//! resource name, so the client can ask QueryWriteStatus how far it got
//! and resume from there. Parked writes are bounded in number; the oldest
//! is dropped (and its temporary data deleted) first.
//!
//! `compressed-blobs/zstd/` resources are served too: reads compress the
//! blob as it streams (offsets and limits count compressed bytes), writes
//! decompress as they arrive and are verified against the uncompressed
//! digest. A broken compressed write is not parked: its committed size in
//! compressed bytes cannot be recovered from the uncompressed data kept,
//! so the client starts it again.
//!
//! Instance names decide who may read and write, and, with
//! `isolate_instances`, which blobs are there: a blob not written under
//! the instance name is missing, so a write of it is received and
//! verified in full rather than ending at once (see `cas_service`).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use corral_auth::{Authorizer, Caller, Permission};
use corral_proto::bytestream::byte_stream_server::ByteStream;
use corral_proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use futures_util::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::blob_store::{self, BlobStore};
use crate::blob_write::BlobWrite;
use crate::digest::Digest;
use crate::isolated_blob_store::InstanceBlobs;
use crate::membership::Membership;
use crate::resource_name::{self, Compressor, ResourceNameError};
use crate::status;
use crate::zstd_codec::{self, Compressor as ZstdCompressor, Decompressor};

/// Broken uploads kept for resumption. Each holds at most an open
/// temporary file (disk) or its bytes so far (memory).
const MAX_PARKED_UPLOADS: usize = 256;

/// What a ByteStream request can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid resource name")]
    ResourceName(#[from] ResourceNameError),
    #[error("zstd failed on blob {digest}")]
    Zstd {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("the zstd upload of {resource:?} is refused")]
    BadZstd {
        resource: String,
        #[source]
        source: zstd_codec::DecompressError,
    },
    #[error("read_offset {offset} is outside blob {digest}")]
    OffsetOutOfRange { digest: Digest, offset: i64 },
    #[error("read_limit {limit} is negative")]
    NegativeLimit { limit: i64 },
    #[error("blob {digest} is not in the CAS")]
    NotFound { digest: Digest },
    #[error("write stream carried no request")]
    EmptyWrite,
    #[error("write to {expected:?} continued with resource name {got:?}")]
    ResourceChanged { expected: String, got: String },
    #[error("write_offset {got} of {resource:?} does not follow the {committed} bytes committed")]
    WriteOffset {
        resource: String,
        committed: u64,
        got: i64,
    },
    #[error("write stream of {resource:?} ended after {committed} bytes without finish_write")]
    Unfinished { resource: String, committed: u64 },
    #[error("no upload {resource:?} is in progress or complete")]
    UnknownUpload { resource: String },
    #[error("write stream of {resource:?} broke")]
    Client {
        resource: String,
        #[source]
        source: Status,
    },
    #[error("storing or fetching {digest} failed")]
    Store {
        digest: Digest,
        #[source]
        source: blob_store::Error,
    },
    /// A read found the blob corrupt after part of it was sent: the
    /// client holds bytes it must throw away (DATA_LOSS), where a blob
    /// found corrupt before the first byte is simply not there.
    #[error("blob {digest} turned out corrupt while it was being read")]
    CorruptWhileReading {
        digest: Digest,
        #[source]
        source: blob_store::Error,
    },
    #[error("{resource:?} is refused")]
    Denied {
        resource: String,
        #[source]
        source: Status,
    },
}

/// The gRPC status for a ByteStream error.
pub fn status(err: &Error) -> Status {
    let code = match err {
        Error::ResourceName(_)
        | Error::NegativeLimit { .. }
        | Error::EmptyWrite
        | Error::ResourceChanged { .. }
        | Error::WriteOffset { .. }
        | Error::Unfinished { .. } => Code::InvalidArgument,
        Error::BadZstd { .. } => Code::InvalidArgument,
        Error::Zstd { .. } => Code::Internal,
        // ByteStream's own rule for offsets past the end.
        Error::OffsetOutOfRange { .. } => Code::OutOfRange,
        Error::NotFound { .. } | Error::UnknownUpload { .. } => Code::NotFound,
        Error::Client { source, .. } | Error::Denied { source, .. } => source.code(),
        Error::Store { source, .. } => status::store_code(source),
        Error::CorruptWhileReading { .. } => Code::DataLoss,
    };
    Status::new(code, status::message(err))
}

/// The status a read's stream ends with when the store fails after the
/// stream began.
fn read_failed(digest: Digest, source: blob_store::Error) -> Status {
    match source {
        source @ blob_store::Error::Corrupt { .. } => {
            status(&Error::CorruptWhileReading { digest, source })
        }
        source => status(&Error::Store { digest, source }),
    }
}

/// Checks that a request continues the write of `name` at `committed`
/// bytes: same resource (or none named), offset where the last one ended.
fn continues(name: &str, request: &WriteRequest, committed: u64) -> Result<(), Error> {
    if !request.resource_name.is_empty() && request.resource_name != name {
        return Err(Error::ResourceChanged {
            expected: name.to_owned(),
            got: request.resource_name.clone(),
        });
    }
    if u64::try_from(request.write_offset).ok() != Some(committed) {
        return Err(Error::WriteOffset {
            resource: name.to_owned(),
            committed,
            got: request.write_offset,
        });
    }
    Ok(())
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

/// Writes whose streams broke, by resource name, oldest first.
#[derive(Default)]
struct Parked {
    writes: HashMap<String, Box<dyn BlobWrite>>,
    order: VecDeque<String>,
}

impl Parked {
    fn take(&mut self, resource: &str) -> Option<Box<dyn BlobWrite>> {
        let write = self.writes.remove(resource)?;
        self.order.retain(|r| r != resource);
        Some(write)
    }

    fn park(&mut self, resource: String, write: Box<dyn BlobWrite>) {
        if self.writes.len() >= MAX_PARKED_UPLOADS {
            if let Some(oldest) = self.order.pop_front() {
                self.writes.remove(&oldest);
            }
        }
        self.order.push_back(resource.clone());
        self.writes.insert(resource, write);
    }

    fn received(&self, resource: &str) -> Option<u64> {
        self.writes.get(resource).map(|w| w.received())
    }
}

/// The ByteStream service over one store.
pub struct ByteStreamService {
    blobs: InstanceBlobs,
    parked: Mutex<Parked>,
    authorizer: Authorizer,
}

impl ByteStreamService {
    pub fn new(blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            blobs: InstanceBlobs::shared(blobs),
            parked: Mutex::new(Parked::default()),
            authorizer: Authorizer::open(),
        }
    }

    /// Isolates instance names from each other's blobs if `membership` is
    /// set (`isolate_instances`). Parked writes are keyed by resource
    /// name, which holds the instance name, so they stay apart too.
    pub fn with_membership(mut self, membership: Option<Membership>) -> Self {
        self.blobs = self.blobs.with_membership(membership);
        self
    }

    /// Checks every call's caller against `authorizer` (open by default).
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Refuses `caller` unless it holds `permission` on the instance name
    /// of `resource`.
    fn authorize(
        &self,
        caller: &Caller,
        permission: Permission,
        resource: &str,
        instance_name: &str,
    ) -> Result<(), Error> {
        self.authorizer
            .check(caller, permission, instance_name)
            .map_err(|source| Error::Denied {
                resource: resource.to_owned(),
                source,
            })
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        // Every change to `Parked` is a single map and queue update.
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn is_present(blobs: &dyn BlobStore, digest: &Digest) -> Result<bool, Error> {
        let missing = blobs
            .find_missing(std::slice::from_ref(digest))
            .await
            .map_err(|source| Error::Store {
                digest: *digest,
                source,
            })?;
        Ok(missing.is_empty())
    }

    #[tracing::instrument(skip_all, fields(resource = %req.resource_name))]
    async fn read_blob(&self, caller: &Caller, req: ReadRequest) -> Result<ReadStream, Error> {
        let resource = resource_name::parse_read(&req.resource_name)?;
        self.authorize(
            caller,
            Permission::CasRead,
            &req.resource_name,
            &resource.instance_name,
        )?;
        let blobs = self.blobs.for_instance(&resource.instance_name);
        if resource.compressor == Compressor::Zstd {
            return Self::read_compressed(&*blobs, resource.digest, &req).await;
        }
        let digest = resource.digest;
        let offset = u64::try_from(req.read_offset)
            .ok()
            .filter(|&o| o <= digest.size_bytes())
            .ok_or(Error::OffsetOutOfRange {
                digest,
                offset: req.read_offset,
            })?;
        let limit = match req.read_limit {
            0 => None,
            limit => Some(u64::try_from(limit).map_err(|_| Error::NegativeLimit { limit })?),
        };
        let chunks = blobs
            .read(&digest, offset, limit)
            .await
            .map_err(|source| Error::Store { digest, source })?
            .ok_or(Error::NotFound { digest })?;
        Ok(Box::pin(chunks.map(move |chunk| match chunk {
            Ok(data) => Ok(ReadResponse { data }),
            Err(source) => Err(read_failed(digest, source)),
        })))
    }

    /// A zstd read: the whole blob compressed as it streams, then cut to
    /// the requested range of compressed bytes.
    async fn read_compressed(
        blobs: &dyn BlobStore,
        digest: Digest,
        req: &ReadRequest,
    ) -> Result<ReadStream, Error> {
        let offset = u64::try_from(req.read_offset).map_err(|_| Error::OffsetOutOfRange {
            digest,
            offset: req.read_offset,
        })?;
        let limit = match req.read_limit {
            0 => u64::MAX,
            limit => u64::try_from(limit).map_err(|_| Error::NegativeLimit { limit })?,
        };
        let chunks = blobs
            .read(&digest, 0, None)
            .await
            .map_err(|source| Error::Store { digest, source })?
            .ok_or(Error::NotFound { digest })?;
        let compressor = ZstdCompressor::new().map_err(|source| Error::Zstd { digest, source })?;
        // State: the blob's chunks, and the compressor until the frame ends.
        let compressed = futures_util::stream::unfold(
            (chunks, Some(compressor)),
            move |(mut chunks, compressor)| async move {
                let mut compressor = compressor?;
                let item = match chunks.next().await {
                    Some(Ok(data)) => compressor.push(&data),
                    Some(Err(source)) => {
                        return Some((Err(read_failed(digest, source)), (chunks, None)))
                    }
                    None => {
                        let last = compressor
                            .finish()
                            .map_err(|source| status(&Error::Zstd { digest, source }));
                        return Some((last, (chunks, None)));
                    }
                };
                let item = item.map_err(|source| status(&Error::Zstd { digest, source }));
                Some((item, (chunks, Some(compressor))))
            },
        );
        // Cut to [offset, offset + limit) of the compressed bytes.
        let end = offset.saturating_add(limit);
        let ranged = compressed
            .scan(0u64, move |position, item| {
                let out = item.map(|data| {
                    let start = *position;
                    *position += data.len() as u64;
                    let from = offset.saturating_sub(start).min(data.len() as u64) as usize;
                    let to = end.saturating_sub(start).min(data.len() as u64) as usize;
                    data[from..to.max(from)].to_vec()
                });
                std::future::ready(Some(out))
            })
            .filter(|item| std::future::ready(!matches!(item, Ok(data) if data.is_empty())))
            .map(|item| item.map(|data| ReadResponse { data }));
        Ok(Box::pin(ranged))
    }

    /// A zstd write: decompressed as it arrives, verified against the
    /// uncompressed digest, committed on `finish_write`. Offsets count
    /// compressed bytes.
    async fn write_compressed<S>(
        blobs: &dyn BlobStore,
        name: String,
        digest: Digest,
        first: WriteRequest,
        mut requests: S,
    ) -> Result<WriteResponse, Error>
    where
        S: Stream<Item = Result<WriteRequest, Status>> + Unpin + Send,
    {
        // REAPI: a compressed upload of a blob already present ends at once
        // with committed_size -1.
        if Self::is_present(blobs, &digest).await? {
            return Ok(WriteResponse { committed_size: -1 });
        }
        let declared = digest.size_bytes();
        let mut decompressor =
            Decompressor::new(declared).map_err(|source| Error::Zstd { digest, source })?;
        let mut write = blobs
            .begin_write(&digest)
            .await
            .map_err(|source| Error::Store { digest, source })?;
        let mut received: u64 = 0;
        let mut request = first;
        loop {
            continues(&name, &request, received)?;
            received += request.data.len() as u64;
            let plain = decompressor
                .push(&request.data, declared)
                .map_err(|source| Error::BadZstd {
                    resource: name.clone(),
                    source,
                })?;
            write
                .write(&plain)
                .await
                .map_err(|source| Error::Store { digest, source })?;
            if request.finish_write {
                decompressor.finish().map_err(|source| Error::BadZstd {
                    resource: name.clone(),
                    source,
                })?;
                write
                    .commit()
                    .await
                    .map_err(|source| Error::Store { digest, source })?;
                return Ok(WriteResponse {
                    committed_size: i64::try_from(received).unwrap_or(i64::MAX),
                });
            }
            request = match requests.next().await {
                Some(Ok(next)) => next,
                Some(Err(source)) => {
                    return Err(Error::Client {
                        resource: name,
                        source,
                    })
                }
                None => {
                    return Err(Error::Unfinished {
                        resource: name,
                        committed: received,
                    })
                }
            };
        }
    }

    /// Runs one Write call. Generic over the request stream so tests can
    /// drive it without a transport.
    #[tracing::instrument(skip_all, fields(resource = tracing::field::Empty))]
    pub async fn write_blob<S>(
        &self,
        caller: &Caller,
        mut requests: S,
    ) -> Result<WriteResponse, Error>
    where
        S: Stream<Item = Result<WriteRequest, Status>> + Unpin + Send,
    {
        let first = match requests.next().await {
            None => return Err(Error::EmptyWrite),
            Some(Err(source)) => {
                return Err(Error::Client {
                    resource: String::new(),
                    source,
                })
            }
            Some(Ok(first)) => first,
        };
        let name = first.resource_name.clone();
        tracing::Span::current().record("resource", name.as_str());
        let resource = resource_name::parse_write(&name)?;
        self.authorize(caller, Permission::CasWrite, &name, &resource.instance_name)?;
        let blobs = self.blobs.for_instance(&resource.instance_name);
        if resource.compressor == Compressor::Zstd {
            return Self::write_compressed(&*blobs, name, resource.digest, first, requests).await;
        }
        let digest = resource.digest;
        let complete = WriteResponse {
            committed_size: i64::try_from(digest.size_bytes()).unwrap_or(i64::MAX),
        };
        // REAPI lets a write of a blob already present end at once. Under
        // isolate_instances "present" means written under this instance
        // name: anyone else must send the whole content, so claiming a
        // digest grants nothing.
        if Self::is_present(&*blobs, &digest).await? {
            return Ok(complete);
        }
        let parked = self.parked().take(&name);
        let mut write = match parked {
            // A client restarting from zero gets a fresh write.
            Some(write) if first.write_offset != 0 => write,
            _ => blobs
                .begin_write(&digest)
                .await
                .map_err(|source| Error::Store { digest, source })?,
        };
        let mut request = first;
        loop {
            if let Err(err) = continues(&name, &request, write.received()) {
                // The bytes committed so far are still good.
                if matches!(err, Error::WriteOffset { .. }) {
                    self.parked().park(name, write);
                }
                return Err(err);
            }
            write
                .write(&request.data)
                .await
                .map_err(|source| Error::Store { digest, source })?;
            if request.finish_write {
                write
                    .commit()
                    .await
                    .map_err(|source| Error::Store { digest, source })?;
                return Ok(complete);
            }
            request = match requests.next().await {
                Some(Ok(next)) => next,
                Some(Err(source)) => {
                    let committed = write.received();
                    self.parked().park(name.clone(), write);
                    tracing::debug!(committed, "write stream broke; parked for resumption");
                    return Err(Error::Client {
                        resource: name,
                        source,
                    });
                }
                None => {
                    let committed = write.received();
                    self.parked().park(name.clone(), write);
                    return Err(Error::Unfinished {
                        resource: name,
                        committed,
                    });
                }
            };
        }
    }

    #[tracing::instrument(skip_all, fields(resource = %req.resource_name))]
    async fn query_write(
        &self,
        caller: &Caller,
        req: QueryWriteStatusRequest,
    ) -> Result<QueryWriteStatusResponse, Error> {
        let resource = resource_name::parse_write(&req.resource_name)?;
        self.authorize(
            caller,
            Permission::CasWrite,
            &req.resource_name,
            &resource.instance_name,
        )?;
        let digest = resource.digest;
        let blobs = self.blobs.for_instance(&resource.instance_name);
        if Self::is_present(&*blobs, &digest).await? {
            return Ok(QueryWriteStatusResponse {
                committed_size: i64::try_from(digest.size_bytes()).unwrap_or(i64::MAX),
                complete: true,
            });
        }
        let received = self
            .parked()
            .received(&req.resource_name)
            .ok_or(Error::UnknownUpload {
                resource: req.resource_name,
            })?;
        Ok(QueryWriteStatusResponse {
            committed_size: i64::try_from(received).unwrap_or(i64::MAX),
            complete: false,
        })
    }
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let caller = Caller::of(&request);
        self.read_blob(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = Caller::of(&request);
        self.write_blob(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let caller = Caller::of(&request);
        self.query_write(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{stream, TryStreamExt as _};

    use super::*;
    use crate::blob_store::conformance::blob;
    use crate::digest::DigestFunction;
    use crate::memory_blob_store::MemoryBlobStore;

    fn service() -> (ByteStreamService, MemoryBlobStore) {
        let store = MemoryBlobStore::new(16 << 20);
        (ByteStreamService::new(Arc::new(store.clone())), store)
    }

    fn upload_name(digest: &Digest, id: &str) -> String {
        match digest.function() {
            DigestFunction::Sha256 => format!(
                "inst/uploads/{id}/blobs/{}/{}",
                digest.hash_hex(),
                digest.size_bytes()
            ),
            DigestFunction::Blake3 => format!(
                "inst/uploads/{id}/blobs/blake3/{}/{}",
                digest.hash_hex(),
                digest.size_bytes()
            ),
        }
    }

    fn read_name(digest: &Digest) -> String {
        format!("inst/blobs/{}/{}", digest.hash_hex(), digest.size_bytes())
    }

    /// Write requests carrying `data[from..to]` in `chunk`-byte pieces.
    fn requests(
        name: &str,
        data: &[u8],
        from: usize,
        to: usize,
        chunk: usize,
        finish: bool,
    ) -> Vec<Result<WriteRequest, Status>> {
        let mut out: Vec<_> = (from..to)
            .step_by(chunk)
            .map(|at| {
                Ok(WriteRequest {
                    // Only the first request must name the resource.
                    resource_name: if at == from {
                        name.to_owned()
                    } else {
                        String::new()
                    },
                    write_offset: at as i64,
                    finish_write: false,
                    data: data[at..(at + chunk).min(to)].to_vec(),
                })
            })
            .collect();
        if let Some(Ok(last)) = out.last_mut() {
            last.finish_write = finish;
        }
        out
    }

    async fn read(
        bs: &ByteStreamService,
        name: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<u8>, Status> {
        let chunks: Vec<ReadResponse> = bs
            .read(Request::new(ReadRequest {
                resource_name: name.to_owned(),
                read_offset: offset,
                read_limit: limit,
            }))
            .await?
            .into_inner()
            .try_collect()
            .await?;
        Ok(chunks.into_iter().flat_map(|c| c.data).collect())
    }

    async fn query(bs: &ByteStreamService, name: &str) -> Result<QueryWriteStatusResponse, Status> {
        bs.query_write_status(Request::new(QueryWriteStatusRequest {
            resource_name: name.to_owned(),
        }))
        .await
        .map(Response::into_inner)
    }

    #[tokio::test]
    async fn written_blob_reads_back_whole_and_in_ranges() {
        let (bs, _) = service();
        let data = blob(1, 300_000);
        for function in DigestFunction::ALL {
            let d = function.digest_of(&data);
            let name = upload_name(&d, "u1");
            let resp = bs
                .write_blob(
                    &Caller::anonymous(),
                    stream::iter(requests(&name, &data, 0, data.len(), 50_000, true)),
                )
                .await
                .unwrap();
            assert_eq!(resp.committed_size, data.len() as i64);
            let read_name = match function {
                DigestFunction::Sha256 => read_name(&d),
                DigestFunction::Blake3 => {
                    format!("inst/blobs/blake3/{}/{}", d.hash_hex(), d.size_bytes())
                }
            };
            assert_eq!(read(&bs, &read_name, 0, 0).await.unwrap(), data);
            assert_eq!(
                read(&bs, &read_name, 1000, 10).await.unwrap(),
                data[1000..1010]
            );
            assert!(read(&bs, &read_name, data.len() as i64, 0)
                .await
                .unwrap()
                .is_empty());
        }
    }

    #[tokio::test]
    async fn write_of_wrong_content_is_refused_and_leaves_nothing() {
        let (bs, store) = service();
        let data = blob(2, 1000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let mut wrong = data.clone();
        wrong[0] ^= 1;
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(
                    &upload_name(&d, "u"),
                    &wrong,
                    0,
                    wrong.len(),
                    300,
                    true,
                )),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        let longer = [data.as_slice(), b"!"].concat();
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(
                    &upload_name(&d, "u"),
                    &longer,
                    0,
                    longer.len(),
                    300,
                    true,
                )),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        assert!(store.find_missing(&[d]).await.unwrap() == [d]);
        assert_eq!(
            query(&bs, &upload_name(&d, "u")).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    #[tokio::test]
    async fn broken_upload_resumes_from_its_committed_size() {
        let (bs, _) = service();
        let data = blob(3, 10_000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let name = upload_name(&d, "resume-me");
        // The stream ends (or breaks) after 4000 bytes.
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&name, &data, 0, 4000, 1000, false)),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        let mut broken = requests(&name, &data, 4000, 6000, 1000, false);
        broken.push(Err(Status::cancelled("client went away")));
        let status_now = query(&bs, &name).await.unwrap();
        assert_eq!(
            (status_now.committed_size, status_now.complete),
            (4000, false)
        );
        let err = bs
            .write_blob(&Caller::anonymous(), stream::iter(broken))
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::Cancelled);
        assert_eq!(query(&bs, &name).await.unwrap().committed_size, 6000);

        // A write at the wrong offset is refused and keeps what was there.
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&name, &data, 5000, data.len(), 1000, true)),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        assert!(
            status(&err).message().contains("6000"),
            "{}",
            status(&err).message()
        );

        let resp = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&name, &data, 6000, data.len(), 1000, true)),
            )
            .await
            .unwrap();
        assert_eq!(resp.committed_size, 10_000);
        let done = query(&bs, &name).await.unwrap();
        assert_eq!((done.committed_size, done.complete), (10_000, true));
        assert_eq!(read(&bs, &read_name(&d), 0, 0).await.unwrap(), data);
    }

    #[tokio::test]
    async fn write_of_a_present_blob_completes_at_once() {
        let (bs, store) = service();
        let data = blob(4, 5000);
        let d = DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        // Only the first 1000 bytes are ever sent.
        let resp = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&upload_name(&d, "u"), &data, 0, 1000, 1000, false)),
            )
            .await
            .unwrap();
        assert_eq!(resp.committed_size, 5000);
    }

    #[tokio::test]
    async fn read_errors() {
        let (bs, store) = service();
        let data = blob(5, 100);
        let d = DigestFunction::Sha256.digest_of(&data);
        assert_eq!(
            read(&bs, &read_name(&d), 0, 0).await.unwrap_err().code(),
            Code::NotFound
        );
        store.put(&d, data).await.unwrap();
        assert_eq!(
            read(&bs, &read_name(&d), 101, 0).await.unwrap_err().code(),
            Code::OutOfRange
        );
        assert_eq!(
            read(&bs, &read_name(&d), -1, 0).await.unwrap_err().code(),
            Code::OutOfRange
        );
        assert_eq!(
            read(&bs, &read_name(&d), 0, -1).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let err = read(&bs, "inst/blobs/xyz/1", 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("\"xyz\""), "{}", err.message());
        let missing = blob(6, 100);
        let m = DigestFunction::Sha256.digest_of(&missing);
        let zstd = format!("inst/compressed-blobs/zstd/{}/100", m.hash_hex());
        assert_eq!(
            read(&bs, &zstd, 0, 0).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    fn zstd_read_name(digest: &Digest) -> String {
        format!(
            "inst/compressed-blobs/zstd/{}/{}",
            digest.hash_hex(),
            digest.size_bytes()
        )
    }

    fn zstd_upload_name(digest: &Digest, id: &str) -> String {
        format!(
            "inst/uploads/{id}/compressed-blobs/zstd/{}/{}",
            digest.hash_hex(),
            digest.size_bytes()
        )
    }

    fn compressible(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 7) as u8 + b'a').collect()
    }

    #[tokio::test]
    async fn zstd_uploads_are_stored_uncompressed_and_read_back_both_ways() {
        let (bs, store) = service();
        let data = compressible(300_000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let packed = zstd::stream::encode_all(data.as_slice(), 3).unwrap();
        let name = zstd_upload_name(&d, "z1");
        let response = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&name, &packed, 0, packed.len(), 1000, true)),
            )
            .await
            .unwrap();
        assert_eq!(response.committed_size, packed.len() as i64);
        assert_eq!(store.get(&d).await.unwrap(), Some(data.clone()));

        // Identity read of what came in compressed, and a compressed read
        // that decodes to the blob.
        assert_eq!(read(&bs, &read_name(&d), 0, 0).await.unwrap(), data);
        let compressed = read(&bs, &zstd_read_name(&d), 0, 0).await.unwrap();
        assert!(compressed.len() < data.len() / 10);
        assert_eq!(
            zstd::stream::decode_all(compressed.as_slice()).unwrap(),
            data
        );

        // Offsets and limits count compressed bytes.
        let part = read(&bs, &zstd_read_name(&d), 5, 10).await.unwrap();
        assert_eq!(part, compressed[5..15]);

        // A second compressed upload of a present blob ends at once with -1.
        let again = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(
                    &zstd_upload_name(&d, "z2"),
                    &packed,
                    0,
                    10,
                    10,
                    false,
                )),
            )
            .await
            .unwrap();
        assert_eq!(again.committed_size, -1);
    }

    #[tokio::test]
    async fn bad_zstd_uploads_are_refused_and_leave_nothing() {
        let (bs, store) = service();
        let data = compressible(50_000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let packed = zstd::stream::encode_all(data.as_slice(), 3).unwrap();

        // Truncated frame.
        let name = zstd_upload_name(&d, "t");
        let half = packed.len() / 2;
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&name, &packed, 0, half, 1000, true)),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument, "{err}");

        // A bomb: tiny upload claiming a small size, expanding far past it.
        let zeros = vec![0u8; 16 << 20];
        let bomb = zstd::stream::encode_all(zeros.as_slice(), 3).unwrap();
        let small = DigestFunction::Sha256.digest_of(b"small");
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(
                    &zstd_upload_name(&small, "b"),
                    &bomb,
                    0,
                    bomb.len(),
                    bomb.len(),
                    true,
                )),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument, "{err}");
        assert!(status(&err).message().contains("declared size"), "{err}");

        // Content that decompresses to something else than the digest.
        let other = zstd::stream::encode_all(&b"other content"[..], 3).unwrap();
        let wrong = DigestFunction::Sha256.digest_of(b"other contenT");
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(
                    &zstd_upload_name(&wrong, "w"),
                    &other,
                    0,
                    other.len(),
                    other.len(),
                    true,
                )),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument, "{err}");
        assert_eq!(store.get(&d).await.unwrap(), None);
        assert_eq!(store.get(&small).await.unwrap(), None);
        assert_eq!(store.get(&wrong).await.unwrap(), None);
    }

    #[tokio::test]
    async fn write_errors() {
        let (bs, _) = service();
        let data = blob(6, 100);
        let d = DigestFunction::Sha256.digest_of(&data);
        let err = bs
            .write_blob(&Caller::anonymous(), stream::iter(Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&read_name(&d), &data, 0, 100, 100, true)),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        assert!(status(&err).message().contains("uploads"));
        let mut changed = requests(&upload_name(&d, "a"), &data, 0, 100, 50, true);
        if let Some(Ok(second)) = changed.get_mut(1) {
            second.resource_name = upload_name(&d, "b");
        }
        let err = bs
            .write_blob(&Caller::anonymous(), stream::iter(changed))
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        // Starting mid-blob with nothing committed.
        let err = bs
            .write_blob(
                &Caller::anonymous(),
                stream::iter(requests(&upload_name(&d, "c"), &data, 50, 100, 50, true)),
            )
            .await
            .unwrap_err();
        assert_eq!(status(&err).code(), Code::InvalidArgument);
        assert_eq!(
            query(&bs, "nonsense").await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn parked_uploads_are_bounded() {
        let store = MemoryBlobStore::new(1 << 20);
        let mut parked = Parked::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for i in 0..MAX_PARKED_UPLOADS + 5 {
            let d = DigestFunction::Sha256.digest_of(&[i as u8]);
            let write = rt.block_on(store.begin_write(&d)).unwrap();
            parked.park(format!("u{i}"), write);
        }
        assert_eq!(parked.writes.len(), MAX_PARKED_UPLOADS);
        assert!(parked.received("u0").is_none());
        assert!(parked
            .received(&format!("u{}", MAX_PARKED_UPLOADS + 4))
            .is_some());
    }
}
