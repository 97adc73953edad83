//! The worker's view of storage: reads and writes blobs by digest, every
//! byte verified with SHA-256, and writes Action Cache entries.
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
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
    Digest, FindMissingBlobsRequest, UpdateActionResultRequest,
};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

/// Blobs up to this size are read and written in batches; larger ones
/// through ByteStream.
pub const BATCH_BLOB_MAX_BYTES: i64 = 1 << 20;
/// Total payload of one batch request: under gRPC's 4 MiB default with
/// room for the framing.
const BATCH_TOTAL_MAX_BYTES: i64 = 3 << 20;
/// Batch reads and ByteStream reads in flight at once, per call: enough
/// to hide round trips without flooding storage.
const PARALLEL_READS: usize = 4;
/// ByteStream.Write chunk size.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

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
    #[error("failed to write the action result of {}/{}", .digest.hash, .digest.size_bytes)]
    UpdateActionResult {
        digest: Digest,
        #[source]
        source: tonic::Status,
    },
}

/// The SHA-256 digest of `data`.
pub fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// A blob to upload: bytes in memory, or a file holding them, read only
/// when (and if) the CAS lacks it.
#[derive(Debug)]
pub enum Blob {
    Bytes(Vec<u8>),
    File(PathBuf),
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
        let mut hasher = Sha256::new();
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
        let digest = Digest {
            hash: hex::encode(hasher.finalize()),
            size_bytes: size as i64,
        };
        Ok((digest, Blob::File(path)))
    }

    /// All of it, in memory: for blobs that go in a batch.
    async fn into_bytes(self) -> Result<Vec<u8>, Error> {
        match self {
            Blob::Bytes(data) => Ok(data),
            Blob::File(path) => tokio::fs::read(&path)
                .await
                .map_err(|source| Error::ReadFile { path, source }),
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

/// Storage as the worker uses it, for one instance name. Cheap to clone:
/// the channel is shared.
#[derive(Clone)]
pub struct CasClient {
    channel: Channel,
    instance: String,
    /// Blobs read from the CAS since start (tests check cache hits).
    reads: std::sync::Arc<AtomicU64>,
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
        Ok(CasClient {
            channel,
            instance: String::new(),
            reads: Default::default(),
        })
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
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let mut cas = ContentAddressableStorageClient::new(self.channel.clone());
        Ok(cas
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: digests.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(Error::FindMissing)?
            .into_inner()
            .missing_blob_digests)
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
        for digest in digests {
            if !seen.insert(digest.hash.clone()) {
                continue;
            }
            if digest.size_bytes == 0 {
                out.insert(digest.hash.clone(), verify(digest, Vec::new())?);
                continue;
            }
            if digest.size_bytes > BATCH_BLOB_MAX_BYTES {
                streams.push(digest.clone());
                continue;
            }
            if batch_bytes + digest.size_bytes > BATCH_TOTAL_MAX_BYTES {
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
        let mut out = HashMap::new();
        let mut cas = ContentAddressableStorageClient::new(self.channel.clone());
        let response = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: digests.clone(),
                ..Default::default()
            })
            .await
            .map_err(Error::Read)?
            .into_inner();
        for r in response.responses {
            let Some(digest) = r.digest else { continue };
            let code = r.status.map(|s| s.code).unwrap_or(0);
            if code == tonic::Code::NotFound as i32 {
                return Err(Error::Missing { digest });
            }
            if code != 0 {
                return Err(Error::Read(tonic::Status::new(
                    tonic::Code::from_i32(code),
                    format!("reading {}/{}", digest.hash, digest.size_bytes),
                )));
            }
            let data = verify(&digest, r.data)?;
            self.reads.fetch_add(1, Ordering::Relaxed);
            out.insert(digest.hash, data);
        }
        // A server that leaves a digest out has not given it to us.
        for digest in digests {
            if !out.contains_key(&digest.hash) {
                return Err(Error::Missing { digest });
            }
        }
        Ok(out)
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
        let data = verify(digest, data)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// A ByteStream read of the whole of `digest`.
    async fn open_read(&self, digest: &Digest) -> Result<ReadStream, Error> {
        let resource_name = join_instance(
            &self.instance,
            &format!("blobs/{}/{}", digest.hash, digest.size_bytes),
        );
        let stream = ByteStreamClient::new(self.channel.clone())
            .read(ReadRequest {
                resource_name,
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .map_err(|status| read_error(digest, status))?
            .into_inner();
        Ok(ReadStream(stream))
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
        let mut hasher = Sha256::new();
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
        let got = hex::encode(hasher.finalize());
        if got != digest.hash || size != digest.size_bytes {
            return Err(Error::Corrupt {
                digest: digest.clone(),
                got: format!("{got}/{size}"),
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
        let asked: Vec<Digest> = unique.values().map(|(d, _)| d.clone()).collect();
        let missing: HashSet<String> = self
            .find_missing(&asked)
            .await?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for (hash, (digest, data)) in unique {
            if !missing.contains(&hash) {
                continue;
            }
            if digest.size_bytes > BATCH_BLOB_MAX_BYTES {
                self.write_stream(&digest, data).await?;
                continue;
            }
            if batch_bytes + digest.size_bytes > BATCH_TOTAL_MAX_BYTES {
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
        let mut cas = ContentAddressableStorageClient::new(self.channel.clone());
        let response = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                ..Default::default()
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

    async fn write_stream(&self, digest: &Digest, blob: Blob) -> Result<(), Error> {
        let mut bytestream = ByteStreamClient::new(self.channel.clone());
        // A random UUID, as REAPI asks: storage keys concurrent uploads by
        // it, and a pid repeats across containers.
        let upload_id = corral_proto::ids::uuid_v4().map_err(Error::UploadName)?;
        let resource_name = join_instance(
            &self.instance,
            &format!(
                "uploads/{upload_id}/blobs/{}/{}",
                digest.hash, digest.size_bytes
            ),
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

/// `{instance}/{rest}`, or `rest` for the empty instance name.
fn join_instance(instance: &str, rest: &str) -> String {
    if instance.is_empty() {
        rest.to_owned()
    } else {
        format!("{instance}/{rest}")
    }
}

/// `data` if it hashes to `digest`.
fn verify(digest: &Digest, data: Vec<u8>) -> Result<Vec<u8>, Error> {
    let got = digest_of(&data);
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

    #[test]
    fn verify_refuses_other_contents() {
        let d = digest_of(b"hello");
        assert!(verify(&d, b"hello".to_vec()).is_ok());
        assert!(matches!(
            verify(&d, b"hellO".to_vec()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn instance_names_prefix_resources() {
        assert_eq!(join_instance("", "blobs/a/1"), "blobs/a/1");
        assert_eq!(join_instance("x/y", "blobs/a/1"), "x/y/blobs/a/1");
    }
}
