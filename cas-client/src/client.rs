//! A REAPI storage as its clients use it: reads and writes blobs by
//! digest, every byte read verified by its digest, and the Action Cache.
//!
//! Small blobs travel in batches (one round trip for many files); large
//! ones through ByteStream, since a gRPC message is capped at 4 MiB.
//! Uploads read files as they go: an action's outputs are never held in
//! memory whole, only a batch or a chunk at a time.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use corral_auth::channel::{Channel, Connector};
use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
use corral_proto::bytestream::{ReadRequest, WriteRequest};
use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::capabilities_client::CapabilitiesClient;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchReadBlobsResponse,
    BatchUpdateBlobsRequest, Digest, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, ServerCapabilities, UpdateActionResultRequest,
};
use tokio::io::AsyncReadExt as _;

use crate::digest::{DigestError, DigestFunction};
use crate::resource;

/// Blobs up to this size are read and written in batches; larger ones
/// through ByteStream. Lower when storage's batch limit is.
pub const BATCH_BLOB_MAX_BYTES: i64 = 1 << 20;
/// Total payload of one batch request: under gRPC's 4 MiB default with
/// room for the framing. Lower when storage says its limit is.
const BATCH_TOTAL_MAX_BYTES: i64 = 3 << 20;
/// Batch reads and ByteStream reads in flight at once, per call: enough
/// to hide round trips without flooding storage.
const PARALLEL_READS: usize = 4;
/// ByteStream.Write chunk size.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// Digests per FindMissingBlobs request: about 1 MiB of request, well
/// under gRPC's 4 MiB cap.
const FIND_MISSING_CHUNK: usize = 8 << 10;
/// Blobs in memory adding up to at most this are uploaded without a
/// FindMissingBlobs first ([`CasClient::upload`]).
const WRITE_WITHOUT_ASKING_BYTES: i64 = 16 << 10;
/// Largest message accepted from storage: a batch of blobs, or a
/// ByteStream chunk from a server with larger ones than ours.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What went wrong talking to storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage endpoint or `[client_tls]`; the message names the key.
    #[error(transparent)]
    Endpoint(corral_auth::channel::Error),
    #[error("blob {}/{} is missing from the CAS", .digest.hash, .digest.size_bytes)]
    Missing { digest: Digest },
    #[error("blob {}/{} read back with different contents (got {got})", .digest.hash, .digest.size_bytes)]
    Corrupt { digest: Digest, got: String },
    #[error("failed to read blobs from the CAS")]
    Read(#[source] tonic::Status),
    #[error("digest function {value} is not one the CAS client knows")]
    DigestFunction {
        value: i32,
        #[source]
        source: DigestError,
    },
    #[error("not a digest the CAS client can check")]
    Digest(#[source] DigestError),
    #[error("failed to name an upload to the CAS")]
    UploadName(#[source] corral_proto::ids::RandomnessError),
    #[error("failed to ask the CAS which blobs are missing")]
    FindMissing(#[source] tonic::Status),
    #[error("failed to write blobs to the CAS")]
    Write(#[source] tonic::Status),
    #[error("failed to write a blob read from the CAS to disk")]
    WriteFile {
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path} to upload it")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the action result of {}/{}", .digest.hash, .digest.size_bytes)]
    GetActionResult {
        digest: Digest,
        #[source]
        source: tonic::Status,
    },
    #[error("failed to ask storage for its capabilities")]
    Capabilities(#[source] tonic::Status),
    #[error("failed to write the action result of {}/{}", .digest.hash, .digest.size_bytes)]
    UpdateActionResult {
        digest: Digest,
        #[source]
        source: tonic::Status,
    },
}

impl Error {
    /// The gRPC status to pass on: the server's own where there was one,
    /// DATA_LOSS for a corrupt blob, NOT_FOUND for a missing one.
    pub fn into_status(self) -> tonic::Status {
        match self {
            Error::Read(status)
            | Error::FindMissing(status)
            | Error::Write(status)
            | Error::Capabilities(status)
            | Error::GetActionResult { source: status, .. }
            | Error::UpdateActionResult { source: status, .. } => status,
            Error::Missing { .. } => tonic::Status::not_found(self.to_string()),
            Error::Corrupt { .. } => tonic::Status::data_loss(self.to_string()),
            Error::DigestFunction { .. } => tonic::Status::invalid_argument(self.to_string()),
            Error::Digest(ref source) => {
                tonic::Status::invalid_argument(format!("{self}: {source}"))
            }
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// The SHA-256 digest of `data`.
pub fn digest_of(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data).to_proto()
}

/// Blobs read in one batch, and those storage did not have.
#[derive(Debug, Default)]
pub struct Fetched {
    pub found: Vec<(Digest, Vec<u8>)>,
    pub missing: Vec<Digest>,
}

/// A blob to upload: bytes in memory, or a file holding them, read only
/// when (and if) the CAS lacks it.
#[derive(Debug)]
pub enum Blob {
    Bytes(Vec<u8>),
    File(PathBuf),
    /// An open file (an anonymous spool), read from its current position.
    Open(std::fs::File),
}

impl From<Vec<u8>> for Blob {
    fn from(data: Vec<u8>) -> Blob {
        Blob::Bytes(data)
    }
}

impl Blob {
    /// The digest of `file` (opened at `path`), read in chunks so a large
    /// file is never in memory whole; blocking. The blob refers to the
    /// file, which must not change until it is uploaded.
    pub fn hash_file(mut file: std::fs::File, path: PathBuf) -> std::io::Result<(Digest, Blob)> {
        let mut hasher = DigestFunction::Sha256.hasher();
        let mut buf = vec![0; 64 << 10];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hasher.finish_with_size(size).to_proto(), Blob::File(path)))
    }

    /// All of it, in memory: for blobs that go in a batch.
    async fn into_bytes(self) -> Result<Vec<u8>, Error> {
        match self {
            Blob::Bytes(data) => Ok(data),
            Blob::File(path) => tokio::fs::read(&path)
                .await
                .map_err(|source| Error::ReadFile { path, source }),
            Blob::Open(file) => {
                let mut data = Vec::new();
                tokio::fs::File::from_std(file)
                    .read_to_end(&mut data)
                    .await
                    .map_err(|source| Error::ReadFile {
                        path: PathBuf::from("(spool)"),
                        source,
                    })?;
                Ok(data)
            }
        }
    }
}

/// Reads a blob a chunk at a time, never past its digest's size.
enum Chunks {
    Bytes {
        data: Vec<u8>,
        at: usize,
    },
    File {
        file: tokio::fs::File,
        path: PathBuf,
    },
}

impl Chunks {
    async fn open(blob: Blob) -> Result<Chunks, Error> {
        Ok(match blob {
            Blob::Bytes(data) => Chunks::Bytes { data, at: 0 },
            Blob::File(path) => match tokio::fs::File::open(&path).await {
                Ok(file) => Chunks::File { file, path },
                Err(source) => return Err(Error::ReadFile { path, source }),
            },
            Blob::Open(file) => Chunks::File {
                file: tokio::fs::File::from_std(file),
                path: PathBuf::from("(spool)"),
            },
        })
    }

    /// The error for a blob that ended at `offset`, before `total`.
    fn short(&self, offset: u64, total: u64) -> Error {
        let message = format!("it ended at byte {offset} of {total}");
        match self {
            Chunks::File { path, .. } => Error::ReadFile {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message),
            },
            Chunks::Bytes { .. } => Error::Write(tonic::Status::internal(format!(
                "a blob shorter than its digest: {message}"
            ))),
        }
    }

    /// Up to `max` bytes; fewer only at the end.
    async fn next(&mut self, max: usize) -> Result<Vec<u8>, Error> {
        match self {
            Chunks::Bytes { data, at } => {
                let end = (*at + max).min(data.len());
                let chunk = data[*at..end].to_vec();
                *at = end;
                Ok(chunk)
            }
            Chunks::File { file, path } => {
                let mut chunk = Vec::with_capacity(max);
                file.take(max as u64)
                    .read_to_end(&mut chunk)
                    .await
                    .map_err(|source| Error::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                Ok(chunk)
            }
        }
    }
}

/// Storage for one instance name and digest function. Cheap to clone: the
/// channel is shared.
#[derive(Clone)]
pub struct CasClient {
    channel: Channel,
    instance: String,
    /// Hashes reads and names resources.
    function: DigestFunction,
    /// What requests carry as `digest_function`: as the caller gave it
    /// (0, unset, means SHA-256).
    digest_function: i32,
    /// Blobs read from the CAS since start (tests check cache hits).
    reads: std::sync::Arc<AtomicU64>,
    /// Storage's batch limits, asked once (Capabilities) and shared by
    /// every clone.
    limits: Arc<tokio::sync::OnceCell<BatchLimits>>,
}

/// How large batches may be, from storage's `max_batch_total_size_bytes`
/// (REAPI: the total of the blobs' sizes in one batch call; 0 is no
/// limit) and our own, whichever is lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Blobs larger than this go through ByteStream.
    pub blob_max_bytes: i64,
    /// The sizes of the blobs of one batch add up to at most this.
    pub total_max_bytes: i64,
}

impl BatchLimits {
    /// Ours, lowered to what storage announces.
    pub fn from_server(max_batch_total_size_bytes: i64) -> Self {
        let total = match max_batch_total_size_bytes {
            n if n > 0 => n.min(BATCH_TOTAL_MAX_BYTES),
            _ => BATCH_TOTAL_MAX_BYTES,
        };
        BatchLimits {
            blob_max_bytes: BATCH_BLOB_MAX_BYTES.min(total),
            total_max_bytes: total,
        }
    }
}

impl CasClient {
    /// A plaintext client for `endpoint` (an `http://` one).
    pub fn new(endpoint: &str) -> Result<CasClient, Error> {
        Self::connect(&Connector::plaintext(), endpoint)
    }

    /// A client for `endpoint` (config key `storage`) through `connector`;
    /// connects lazily, so a storage that starts after the worker is fine.
    pub fn connect(connector: &Connector, endpoint: &str) -> Result<CasClient, Error> {
        let channel = connector
            .connect_lazy("storage", endpoint)
            .map_err(Error::Endpoint)?;
        Ok(Self::from_channel(channel))
    }

    /// A client over `channel`, for the empty instance name and SHA-256.
    pub fn from_channel(channel: Channel) -> CasClient {
        CasClient {
            channel,
            instance: String::new(),
            function: DigestFunction::Sha256,
            digest_function: 0,
            reads: Default::default(),
            limits: Default::default(),
        }
    }

    /// Storage's batch limits, asked once per client (and its clones).
    /// Storage that cannot say (no Capabilities, or the caller may not
    /// ask) gets ours, remembered; storage that does not answer gets ours
    /// for this call and is asked again next time.
    pub async fn batch_limits(&self) -> BatchLimits {
        let asked = self
            .limits
            .get_or_try_init(|| async {
                match self.capabilities().await {
                    Ok(caps) => Ok(BatchLimits::from_server(
                        caps.cache_capabilities
                            .map_or(0, |c| c.max_batch_total_size_bytes),
                    )),
                    Err(Error::Capabilities(status))
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        Err(())
                    }
                    Err(_) => Ok(BatchLimits::from_server(0)),
                }
            })
            .await;
        asked.copied().unwrap_or(BatchLimits::from_server(0))
    }

    /// The same storage under the digest function a request named
    /// (REAPI's `digest_function` field; 0 is SHA-256).
    pub fn with_digest_function(&self, value: i32) -> Result<CasClient, Error> {
        let function = DigestFunction::from_proto(value)
            .map_err(|source| Error::DigestFunction { value, source })?;
        Ok(CasClient {
            function,
            digest_function: value,
            ..self.clone()
        })
    }

    /// The same storage under `function`.
    pub fn with_function(&self, function: DigestFunction) -> CasClient {
        CasClient {
            function,
            digest_function: function.to_proto() as i32,
            ..self.clone()
        }
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The same storage under another instance name.
    pub fn with_instance(&self, instance: &str) -> CasClient {
        CasClient {
            instance: instance.to_owned(),
            ..self.clone()
        }
    }

    /// The instance name this client reads and writes under.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The digests among `digests` the CAS lacks under this instance name.
    /// Asks [`FIND_MISSING_CHUNK`] digests at a time.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_CHUNK) {
            missing.extend(
                self.cas()
                    .find_missing_blobs(FindMissingBlobsRequest {
                        instance_name: self.instance.clone(),
                        blob_digests: chunk.to_vec(),
                        digest_function: self.digest_function,
                    })
                    .await
                    .map_err(Error::FindMissing)?
                    .into_inner()
                    .missing_blob_digests,
            );
        }
        Ok(missing)
    }

    /// How many blobs were read since start.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Reads one blob.
    pub async fn read(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let mut all = self.read_many(std::slice::from_ref(digest)).await?;
        all.remove(&digest.hash).ok_or_else(|| Error::Missing {
            digest: digest.clone(),
        })
    }

    /// Reads `digests`, keyed by hash. Fails on the first missing or
    /// corrupt blob. Batches and streams go out [`PARALLEL_READS`] at a
    /// time.
    pub async fn read_many(&self, digests: &[Digest]) -> Result<HashMap<String, Vec<u8>>, Error> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let mut out = HashMap::new();
        let mut seen = HashSet::new();
        let mut batches: Vec<Vec<Digest>> = Vec::new();
        let mut streams: Vec<Digest> = Vec::new();
        let mut batch: Vec<Digest> = Vec::new();
        let mut batch_bytes = 0;
        let limits = self.batch_limits().await;
        for digest in digests {
            if !seen.insert(digest.hash.clone()) {
                continue;
            }
            if digest.size_bytes == 0 {
                out.insert(digest.hash.clone(), self.verify(digest, Vec::new())?);
                continue;
            }
            if digest.size_bytes > limits.blob_max_bytes {
                streams.push(digest.clone());
                continue;
            }
            if batch_bytes + digest.size_bytes > limits.total_max_bytes {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += digest.size_bytes;
            batch.push(digest.clone());
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        let batched = futures_util::stream::iter(batches)
            .map(|batch| self.read_batch(batch))
            .buffer_unordered(PARALLEL_READS)
            .try_collect::<Vec<_>>();
        let streamed = futures_util::stream::iter(streams)
            .map(|digest| async move {
                let data = self.read_stream(&digest).await?;
                Ok::<_, Error>((digest.hash, data))
            })
            .buffer_unordered(PARALLEL_READS)
            .try_collect::<Vec<_>>();
        let (batched, streamed) = futures_util::future::try_join(batched, streamed).await?;
        for found in batched {
            out.extend(found);
        }
        out.extend(streamed);
        Ok(out)
    }

    async fn read_batch(&self, digests: Vec<Digest>) -> Result<HashMap<String, Vec<u8>>, Error> {
        let fetched = self.fetch(&digests).await?;
        if let Some(digest) = fetched.missing.into_iter().next() {
            return Err(Error::Missing { digest });
        }
        Ok(fetched
            .found
            .into_iter()
            .map(|(digest, data)| (digest.hash, data))
            .collect())
    }

    /// Reads `digests` in one BatchReadBlobs, each verified; those storage
    /// lacks (or left out of its answer) are listed, not an error. The
    /// caller keeps the batch under storage's limit.
    pub async fn fetch(&self, digests: &[Digest]) -> Result<Fetched, Error> {
        let response = self
            .cas()
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: digests.to_vec(),
                digest_function: self.digest_function,
                ..Default::default()
            })
            .await
            .map_err(Error::Read)?
            .into_inner();
        let fetched = read_response(self.function, digests, response)?;
        self.reads
            .fetch_add(fetched.found.len() as u64, Ordering::Relaxed);
        Ok(fetched)
    }

    async fn read_stream(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let mut stream = self.open_read(digest).await?;
        let mut data = Vec::with_capacity(usize::try_from(digest.size_bytes).unwrap_or(0));
        while let Some(chunk) = stream.next(digest).await? {
            data.extend_from_slice(&chunk);
            if data.len() as i64 > digest.size_bytes {
                break;
            }
        }
        let data = self.verify(digest, data)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// A ByteStream read of the whole of `digest`.
    async fn open_read(&self, digest: &Digest) -> Result<ReadStream, Error> {
        self.open_range(digest, 0, 0).await
    }

    /// A ByteStream read of `limit` bytes (0: all) of `digest` from
    /// `offset`.
    async fn open_range(
        &self,
        digest: &Digest,
        offset: i64,
        limit: i64,
    ) -> Result<ReadStream, Error> {
        let resource_name = resource::read_name(
            &self.instance,
            self.function,
            &digest.hash,
            digest.size_bytes,
        );
        let stream = ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .read(ReadRequest {
                resource_name,
                read_offset: offset,
                read_limit: limit,
            })
            .await
            .map_err(|status| read_error(digest, status))?
            .into_inner();
        Ok(ReadStream(stream))
    }

    /// Part of `digest` as chunks, unverified (a part cannot be checked
    /// against the whole's digest; the caller asked for it knowing so).
    pub async fn read_range(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, Error>> + Send + 'static, Error>
    {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = limit.map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let stream = self.open_range(digest, offset, limit).await?;
        let digest = digest.clone();
        Ok(futures_util::stream::unfold(Some(stream), move |stream| {
            let digest = digest.clone();
            async move {
                let mut stream = stream?;
                match stream.next(&digest).await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(stream))),
                    Ok(None) => None,
                    Err(error) => Some((Err(error), None)),
                }
            }
        }))
    }

    /// The whole of `digest` as chunks through ByteStream, passed on as
    /// they arrive and checked at the end (see [`crate::verify_chunks`]):
    /// for a reader that streams the blob on and cannot hold it.
    pub async fn read_chunks(
        &self,
        digest: &Digest,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Vec<u8>, tonic::Status>> + Send + 'static,
        Error,
    > {
        let expected =
            crate::digest::Digest::from_proto(self.function, digest).map_err(Error::Digest)?;
        let stream = self.open_read(digest).await?.0;
        let chunks = futures_util::StreamExt::map(stream, |chunk| chunk.map(|c| c.data));
        Ok(crate::verify_chunks(expected, chunks))
    }

    /// Streams one blob into `file` through ByteStream, hashing as it
    /// goes: a large file never sits in memory. Fails, with the file
    /// holding junk the caller removes, if the bytes do not match the
    /// digest.
    pub async fn read_into(
        &self,
        digest: &Digest,
        file: &mut tokio::fs::File,
    ) -> Result<(), Error> {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = self.open_read(digest).await?;
        let mut hasher = self.function.hasher();
        let mut size = 0i64;
        let local = |source| Error::WriteFile { source };
        while let Some(chunk) = stream.next(digest).await? {
            size += chunk.len() as i64;
            if size > digest.size_bytes {
                break;
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        let got = hasher
            .finish_with_size(u64::try_from(size).unwrap_or(0))
            .to_proto();
        if got.hash != digest.hash || size != digest.size_bytes {
            return Err(Error::Corrupt {
                digest: digest.clone(),
                got: format!("{}/{size}", got.hash),
            });
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `blobs` that the CAS does not already hold. Files are read
    /// as they are sent: at most a batch, or a chunk, is in memory.
    pub async fn upload(&self, blobs: Vec<(Digest, impl Into<Blob>)>) -> Result<(), Error> {
        if blobs.is_empty() {
            return Ok(());
        }
        let mut unique = HashMap::new();
        for (digest, data) in blobs {
            unique
                .entry(digest.hash.clone())
                .or_insert_with(|| (digest, data.into()));
        }
        // A few small blobs in memory (an action's stdout, stderr and the
        // runner's report) are written without asking first: one call in
        // place of two, and storage keeps one copy either way. Files are
        // read only if the CAS lacks them, so they are always asked for.
        let in_memory: i64 = unique
            .values()
            .map(|(d, blob)| match blob {
                Blob::Bytes(_) => d.size_bytes.max(0),
                Blob::File(_) | Blob::Open(_) => i64::MAX,
            })
            .fold(0, i64::saturating_add);
        let missing: Option<HashSet<String>> = if in_memory <= WRITE_WITHOUT_ASKING_BYTES {
            None
        } else {
            let asked: Vec<Digest> = unique.values().map(|(d, _)| d.clone()).collect();
            Some(
                self.find_missing(&asked)
                    .await?
                    .into_iter()
                    .map(|d| d.hash)
                    .collect(),
            )
        };
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let limits = self.batch_limits().await;
        for (hash, (digest, data)) in unique {
            if missing.as_ref().is_some_and(|m| !m.contains(&hash)) {
                continue;
            }
            if digest.size_bytes > limits.blob_max_bytes {
                self.write_stream(&digest, data).await?;
                continue;
            }
            if batch_bytes + digest.size_bytes > limits.total_max_bytes {
                self.write_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += digest.size_bytes;
            let data = data.into_bytes().await?;
            batch.push(batch_update_blobs_request::Request {
                digest: Some(digest),
                data,
                ..Default::default()
            });
        }
        if !batch.is_empty() {
            self.write_batch(batch).await?;
        }
        Ok(())
    }

    async fn write_batch(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<(), Error> {
        let response = self
            .cas()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: self.digest_function,
            })
            .await
            .map_err(Error::Write)?
            .into_inner();
        for r in response.responses {
            if let Some(status) = r.status.filter(|s| s.code != 0) {
                return Err(Error::Write(tonic::Status::new(
                    tonic::Code::from_i32(status.code),
                    status.message,
                )));
            }
        }
        Ok(())
    }

    /// Writes one blob through ByteStream, read a chunk at a time, whether
    /// or not the CAS has it.
    pub async fn write_stream(&self, digest: &Digest, blob: Blob) -> Result<(), Error> {
        let mut bytestream = ByteStreamClient::new(self.channel.clone());
        // A random UUID, as REAPI asks: storage keys concurrent uploads by
        // it, and a pid repeats across containers.
        let upload_id = corral_proto::ids::uuid_v4().map_err(Error::UploadName)?;
        let resource_name = resource::upload_name(
            &self.instance,
            &upload_id,
            self.function,
            &digest.hash,
            digest.size_bytes,
        );
        let total = u64::try_from(digest.size_bytes).unwrap_or(0);
        let chunks = Chunks::open(blob).await?;
        // A read error cannot travel in the request stream: it ends the
        // stream short (storage then refuses the write) and is kept here
        // to be reported instead of storage's complaint.
        let failed: Arc<Mutex<Option<Error>>> = Arc::default();
        let read_failed = Arc::clone(&failed);
        let requests = futures_util::stream::unfold((chunks, 0u64), move |(mut chunks, offset)| {
            let resource_name = resource_name.clone();
            let failed = Arc::clone(&read_failed);
            async move {
                if offset >= total {
                    return None;
                }
                let want = (total - offset).min(WRITE_CHUNK_BYTES as u64) as usize;
                let data = match chunks.next(want).await {
                    Ok(data) if !data.is_empty() => data,
                    Ok(_) => {
                        *failed.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(chunks.short(offset, total));
                        return None;
                    }
                    Err(error) => {
                        *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                        return None;
                    }
                };
                let end = offset + data.len() as u64;
                let request = WriteRequest {
                    resource_name: if offset == 0 {
                        resource_name
                    } else {
                        String::new()
                    },
                    write_offset: offset as i64,
                    finish_write: end == total,
                    data,
                };
                Some((request, (chunks, end)))
            }
        });
        let written = bytestream.write(requests).await;
        if let Some(error) = failed.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(error);
        }
        written.map_err(Error::Write)?;
        Ok(())
    }

    /// Stores `result` as the Action Cache entry of `action_digest`.
    pub async fn update_action_result(
        &self,
        action_digest: &Digest,
        result: ActionResult,
    ) -> Result<(), Error> {
        let mut ac = ActionCacheClient::new(self.channel.clone());
        ac.update_action_result(UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action_digest.clone()),
            action_result: Some(result),
            digest_function: self.digest_function,
            ..Default::default()
        })
        .await
        .map_err(|source| Error::UpdateActionResult {
            digest: action_digest.clone(),
            source,
        })?;
        Ok(())
    }
}

impl CasClient {
    /// The Action Cache entry of `action_digest`, `None` if there is none,
    /// with stdout and stderr inlined as asked.
    pub async fn get_action_result(
        &self,
        action_digest: &Digest,
        inline_stdout: bool,
        inline_stderr: bool,
    ) -> Result<Option<ActionResult>, Error> {
        let response = ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .get_action_result(GetActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action_digest.clone()),
                digest_function: self.digest_function,
                inline_stdout,
                inline_stderr,
                ..Default::default()
            })
            .await;
        match response {
            Ok(result) => Ok(Some(result.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(source) => Err(Error::GetActionResult {
                digest: action_digest.clone(),
                source,
            }),
        }
    }

    /// Storage's capabilities under this instance name.
    pub async fn capabilities(&self) -> Result<ServerCapabilities, Error> {
        Ok(CapabilitiesClient::new(self.channel.clone())
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: self.instance.clone(),
            })
            .await
            .map_err(Error::Capabilities)?
            .into_inner())
    }

    /// `data` if it hashes to `digest` under this client's function.
    fn verify(&self, digest: &Digest, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        verify(self.function, digest, data)
    }
}

/// A ByteStream read in progress.
struct ReadStream(tonic::Streaming<corral_proto::bytestream::ReadResponse>);

impl ReadStream {
    /// The next chunk of `digest`, `None` at the end.
    async fn next(&mut self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        let chunk = self
            .0
            .message()
            .await
            .map_err(|status| read_error(digest, status))?;
        Ok(chunk.map(|c| c.data))
    }
}

/// NOT_FOUND is a missing blob, the one error a client acts on.
fn read_error(digest: &Digest, status: tonic::Status) -> Error {
    if status.code() == tonic::Code::NotFound {
        Error::Missing {
            digest: digest.clone(),
        }
    } else {
        Error::Read(status)
    }
}

/// The blobs of a BatchReadBlobs `response` to a request for `digests`,
/// each verified under `function`: what a remote storage answers, or
/// storage's own handler called in the same process.
pub fn read_response(
    function: DigestFunction,
    digests: &[Digest],
    response: BatchReadBlobsResponse,
) -> Result<Fetched, Error> {
    let mut fetched = Fetched::default();
    let mut answered = HashSet::new();
    for r in response.responses {
        let Some(digest) = r.digest else { continue };
        answered.insert(digest.hash.clone());
        let code = r.status.map(|s| s.code).unwrap_or(0);
        if code == tonic::Code::NotFound as i32 {
            fetched.missing.push(digest);
            continue;
        }
        if code != 0 {
            return Err(Error::Read(tonic::Status::new(
                tonic::Code::from_i32(code),
                format!("reading {}/{}", digest.hash, digest.size_bytes),
            )));
        }
        let data = verify(function, &digest, r.data)?;
        fetched.found.push((digest, data));
    }
    // A server that leaves a digest out has not given it to us.
    for digest in digests {
        if !answered.contains(&digest.hash) {
            fetched.missing.push(digest.clone());
        }
    }
    Ok(fetched)
}

/// `data` if it hashes to `digest` under `function`.
fn verify(function: DigestFunction, digest: &Digest, data: Vec<u8>) -> Result<Vec<u8>, Error> {
    let got = function.digest_of(&data).to_proto();
    if got.hash != digest.hash || got.size_bytes != digest.size_bytes {
        return Err(Error::Corrupt {
            digest: digest.clone(),
            got: format!("{}/{}", got.hash, got.size_bytes),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::reapi::batch_read_blobs_response;

    fn answer(
        digest: &Digest,
        data: &[u8],
        code: tonic::Code,
    ) -> batch_read_blobs_response::Response {
        batch_read_blobs_response::Response {
            digest: Some(digest.clone()),
            data: data.to_vec(),
            status: Some(corral_proto::rpc::Status {
                code: code as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What a batch answer holds is checked blob by blob: right bytes are
    /// found, NOT_FOUND and left-out digests are missing, and wrong bytes
    /// fail naming the digest.
    #[test]
    fn batch_answers_are_verified() {
        let sha = DigestFunction::Sha256;
        let (good, gone, skipped) = (digest_of(b"good"), digest_of(b"gone"), digest_of(b"skip"));
        let response = BatchReadBlobsResponse {
            responses: vec![
                answer(&good, b"good", tonic::Code::Ok),
                answer(&gone, b"", tonic::Code::NotFound),
            ],
        };
        let asked = [good.clone(), gone.clone(), skipped.clone()];
        let fetched = read_response(sha, &asked, response).unwrap();
        assert_eq!(fetched.found, [(good.clone(), b"good".to_vec())]);
        assert_eq!(fetched.missing, [gone, skipped]);

        let response = BatchReadBlobsResponse {
            responses: vec![answer(&good, b"evil", tonic::Code::Ok)],
        };
        let err = read_response(sha, std::slice::from_ref(&good), response).unwrap_err();
        assert!(matches!(&err, Error::Corrupt { digest, .. } if *digest == good));
        assert!(err.to_string().contains(&good.hash), "{err}");
        assert_eq!(err.into_status().code(), tonic::Code::DataLoss);
    }

    #[test]
    fn verify_refuses_other_contents() {
        let sha = DigestFunction::Sha256;
        let d = digest_of(b"hello");
        assert!(verify(sha, &d, b"hello".to_vec()).is_ok());
        let err = verify(sha, &d, b"hellO".to_vec()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }));
        assert!(err.to_string().contains(&d.hash), "{err}");
        // The same bytes under another function are another blob.
        let blake = DigestFunction::Blake3.digest_of(b"hello").to_proto();
        assert!(verify(DigestFunction::Blake3, &blake, b"hello".to_vec()).is_ok());
        assert!(verify(sha, &blake, b"hello".to_vec()).is_err());
    }
}
