//! The object-store tier: a local store (the disk) in front of an object
//! store (S3 or an S3-compatible server, or a local directory), which
//! holds the durable copy of every blob and Action Cache entry.
//!
//! - Writes go to both, streamed: each chunk is hashed, appended to the
//!   local write and to the upload (one PUT for a small blob, a multipart
//!   upload for one of `part_size_bytes` or more). A write is acknowledged
//!   only once the content matched its digest, the object store completed
//!   the upload and the local copy was committed (or refused: too large,
//!   disk full; it is only a cache).
//! - Reads are served locally. A whole read that misses streams the
//!   object to the client and into the local store at once, each chunk
//!   verified on the way; the last chunk is withheld until the whole
//!   object matched its digest and the local copy was committed, so a
//!   client never receives all of a corrupt blob (the read ends with
//!   [`Error::Corrupt`]) and the local store never keeps a partial or
//!   wrong one (its write is dropped, which leaves nothing). A ranged read
//!   that misses fills the local store first and serves the range from
//!   it. What the local store cannot keep is streamed from the object
//!   store alone, verified as [`BlobStore::read`] promises. Nothing is
//!   ever held whole in memory except by [`BlobStore::get`], whose
//!   callers asked for that.
//! - FindMissingBlobs asks the object store (HEAD, concurrently) only for
//!   digests the local store lacks, and remembers which it found there
//!   (bounded, each for a TTL). Absences are not remembered: another
//!   storage node writing to the same bucket could not invalidate them.
//! - An object whose content does not match its key's digest is refused:
//!   logged as an error, deleted (so clients upload it again) and
//!   reported as [`Error::Corrupt`], never served.
//!
//! Keys: `<prefix>/cas/<function>/<hash>-<size>` and
//! `<prefix>/ac/<function>/<hash>-<size>`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

use crate::action_cache::ActionCache;
use crate::blob_store::{BlobStore, BlobStream, Error, READ_CHUNK_BYTES};
use crate::blob_write::BlobWrite;
use crate::config::ObjectStoreConfig;
use crate::digest::{Digest, Verifier};
use crate::lru_index::LruIndex;
use crate::read_through_blob_store::Store;

/// HEAD requests in flight at once for one FindMissingBlobs.
const FIND_MISSING_CONCURRENCY: usize = 32;

/// Parts of one multipart upload in flight at once. With the part size,
/// this bounds what one upload holds in memory.
const UPLOAD_CONCURRENCY: usize = 2;

/// The object store's side of the tier, shared with the streams it hands out.
struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Digests found in the object store, with when that was learned.
    known: Mutex<LruIndex<Digest, Instant>>,
    known_ttl: Duration,
    part_size_bytes: usize,
}

/// `local` in front of an object store.
#[derive(Clone)]
pub struct ObjectTier {
    local: Arc<dyn Store>,
    remote: Arc<Remote>,
}

/// What filling the local store from the object store did.
enum Fill {
    /// The local store now holds the blob.
    Local,
    /// The object store has no such blob.
    Missing,
    /// The local store would not keep it (too large, disk full).
    NotCached,
}

impl ObjectTier {
    /// The tier over an object store built from `cfg`.
    pub fn open(local: Arc<dyn Store>, cfg: &ObjectStoreConfig) -> Result<Self, Error> {
        let (store, prefix) = cfg.build().map_err(|source| Error::ObjectStore {
            operation: "configure",
            key: cfg.url.clone(),
            source: Box::new(source),
        })?;
        Ok(Self::new(local, store, prefix, cfg))
    }

    /// The tier over `store`, keys under `prefix`.
    pub fn new(
        local: Arc<dyn Store>,
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        cfg: &ObjectStoreConfig,
    ) -> Self {
        Self {
            local,
            remote: Arc::new(Remote {
                store,
                prefix,
                known: Mutex::new(LruIndex::new(cfg.known_digests_max_entries.max(1))),
                known_ttl: Duration::from_secs(cfg.known_digests_ttl_s),
                part_size_bytes: usize::try_from(cfg.part_size_bytes).unwrap_or(usize::MAX),
            }),
        }
    }

    /// Streams the object into the local store, verifying it.
    async fn fill(&self, digest: &Digest) -> Result<Fill, Error> {
        let mut local = match self.local.begin_write(digest).await {
            Ok(write) => write,
            Err(err) => return not_cached(err).map(|()| Fill::NotCached),
        };
        let key = self.remote.cas_key(digest);
        let mut body = match self.remote.store.get(&key).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                self.remote.forget(digest);
                return Ok(Fill::Missing);
            }
            Err(source) => return Err(self.remote.error("get", &key, source)),
        };
        let mut verifier = Verifier::new(*digest);
        let mut cached = true;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| self.remote.error("get", &key, source))?;
            if verifier.update(&chunk).is_err() {
                return Err(self.remote.corrupt(digest).await);
            }
            if cached {
                if let Err(err) = local.write(&chunk).await {
                    not_cached(err)?;
                    cached = false;
                }
            }
        }
        if verifier.finish().is_err() {
            return Err(self.remote.corrupt(digest).await);
        }
        self.remote.remember(digest);
        if !cached {
            return Ok(Fill::NotCached);
        }
        match local.commit().await {
            Ok(()) => Ok(Fill::Local),
            Err(err) => not_cached(err).map(|()| Fill::NotCached),
        }
    }
}

/// A local store's refusal to keep a blob: too large for its bound, or its
/// disk full. The object store has the blob, so it is served from there.
fn not_cached(err: Error) -> Result<(), Error> {
    match err {
        Error::TooLarge { .. } => Ok(()),
        Error::Disk(disk) if disk.is_storage_full() => {
            tracing::warn!(error = %crate::status::message(&disk), "not caching a blob read from the object store");
            Ok(())
        }
        err => Err(err),
    }
}

impl Remote {
    fn key(&self, table: &str, digest: &Digest) -> Path {
        let name = format!("{}-{}", digest.hash_hex(), digest.size_bytes());
        let mut parts: Vec<object_store::path::PathPart<'_>> = self.prefix.parts().collect();
        parts.push(table.into());
        parts.push(digest.function().name().into());
        parts.push(name.into());
        Path::from_iter(parts)
    }

    fn cas_key(&self, digest: &Digest) -> Path {
        self.key("cas", digest)
    }

    fn ac_key(&self, digest: &Digest) -> Path {
        self.key("ac", digest)
    }

    fn error(&self, operation: &'static str, key: &Path, source: object_store::Error) -> Error {
        Error::ObjectStore {
            operation,
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// Whether `digest` was found in the object store within the TTL.
    fn known(&self, digest: &Digest, now: Instant) -> bool {
        let mut known = self.known.lock().expect("known digests lock poisoned");
        match known.get(digest) {
            Some(learned) if now.duration_since(*learned) < self.known_ttl => true,
            Some(_) => {
                known.remove(digest);
                false
            }
            None => false,
        }
    }

    fn remember(&self, digest: &Digest) {
        let mut known = self.known.lock().expect("known digests lock poisoned");
        known.insert(*digest, Instant::now(), 1);
    }

    fn forget(&self, digest: &Digest) {
        let mut known = self.known.lock().expect("known digests lock poisoned");
        known.remove(digest);
    }

    /// Refuses a corrupt object: reports it, deletes it so that clients
    /// are told it is missing and upload it again, and returns the error
    /// the read ends with.
    async fn corrupt(&self, digest: &Digest) -> Error {
        let key = self.cas_key(digest);
        tracing::error!(digest = %digest, key = %key, "object store holds a corrupt blob: refused and deleted");
        self.forget(digest);
        if let Err(err) = self.store.delete(&key).await {
            tracing::warn!(key = %key, error = %crate::status::message(&err), "could not delete a corrupt object");
        }
        Error::Corrupt { digest: *digest }
    }

    /// Bytes `offset..offset + limit` of the object, in chunks of at most
    /// [`READ_CHUNK_BYTES`]; a whole read is verified as it streams, its
    /// last chunk withheld until the digest matched. A whole read also
    /// writes each verified chunk to `local`, if given, and commits it
    /// before the last chunk is released; a partial read ignores `local`.
    async fn read(
        self: &Arc<Self>,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
        local: Option<Box<dyn BlobWrite>>,
    ) -> Result<Option<BlobStream>, Error> {
        let size = digest.size_bytes();
        let offset = offset.min(size);
        let end = limit.map_or(size, |limit| offset.saturating_add(limit).min(size));
        let whole = offset == 0 && end == size;
        if offset == end && !whole {
            return Ok(Some(Box::pin(stream::empty())));
        }
        let key = self.cas_key(digest);
        let options = GetOptions {
            range: (!whole).then_some(GetRange::Bounded(offset..end)),
            ..GetOptions::default()
        };
        let body = match self.store.get_opts(&key, options).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                self.forget(digest);
                return Ok(None);
            }
            Err(source) => return Err(self.error("get", &key, source)),
        };
        let state = ReadState {
            remote: Arc::clone(self),
            digest: *digest,
            key,
            body,
            pending: Bytes::new(),
            ended: false,
            verifier: whole.then(|| Verifier::new(*digest)),
            held: None,
            local: local.filter(|_| whole),
        };
        Ok(Some(Box::pin(stream::try_unfold(state, ReadState::next))))
    }
}

/// A read from the object store, re-chunked and, when whole, verified.
struct ReadState {
    remote: Arc<Remote>,
    digest: Digest,
    key: Path,
    body: BoxStream<'static, object_store::Result<Bytes>>,
    pending: Bytes,
    ended: bool,
    verifier: Option<Verifier>,
    /// The chunk withheld until the next one (or the end) shows the blob
    /// is still what its digest says.
    held: Option<Vec<u8>>,
    /// The local store's copy being written as the object streams past:
    /// dropped, so abandoned, if the object turns out corrupt or the
    /// client goes away.
    local: Option<Box<dyn BlobWrite>>,
}

impl ReadState {
    async fn next(mut self) -> Result<Option<(Vec<u8>, Self)>, Error> {
        loop {
            if !self.pending.is_empty() {
                let take = self.pending.len().min(READ_CHUNK_BYTES);
                let chunk = self.pending.split_to(take).to_vec();
                let Some(verifier) = &mut self.verifier else {
                    return Ok(Some((chunk, self)));
                };
                if verifier.update(&chunk).is_err() {
                    self.local = None;
                    return Err(self.remote.corrupt(&self.digest).await);
                }
                if let Some(local) = &mut self.local {
                    if let Err(err) = local.write(&chunk).await {
                        self.stop_caching(err);
                    }
                }
                if let Some(previous) = self.held.replace(chunk) {
                    return Ok(Some((previous, self)));
                }
                continue;
            }
            if !self.ended {
                match self.body.next().await {
                    Some(Ok(bytes)) => self.pending = bytes,
                    Some(Err(source)) => return Err(self.remote.error("get", &self.key, source)),
                    None => self.ended = true,
                }
                continue;
            }
            if let Some(verifier) = self.verifier.take() {
                if verifier.finish().is_err() {
                    self.local = None;
                    return Err(self.remote.corrupt(&self.digest).await);
                }
                self.remote.remember(&self.digest);
            }
            if let Some(local) = self.local.take() {
                if let Err(err) = local.commit().await {
                    self.stop_caching(err);
                }
            }
            return Ok(self.held.take().map(|chunk| (chunk, self)));
        }
    }

    /// The local copy failed: the read goes on from the object store,
    /// whose bytes are being verified, and the blob is simply not cached.
    /// Logged here, since the client's read succeeds.
    fn stop_caching(&mut self, err: Error) {
        self.local = None;
        if let Err(err) = not_cached(err) {
            tracing::warn!(digest = %self.digest, error = %crate::status::message(&err), "not caching a blob read from the object store");
        }
    }
}

#[tonic::async_trait]
impl BlobStore for ObjectTier {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let not_local = self.local.find_missing(digests).await?;
        let now = Instant::now();
        let unknown: Vec<Digest> = not_local
            .iter()
            .filter(|d| !self.remote.known(d, now))
            .copied()
            .collect();
        let remote = &self.remote;
        let found: Vec<(Digest, bool)> = stream::iter(unknown)
            .map(|digest| async move {
                let key = remote.cas_key(&digest);
                match remote.store.head(&key).await {
                    Ok(_) => {
                        remote.remember(&digest);
                        Ok((digest, true))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok((digest, false)),
                    Err(source) => Err(remote.error("head", &key, source)),
                }
            })
            .buffered(FIND_MISSING_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(digest, present)| (!present).then_some(digest))
            .collect())
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if let Some(data) = self.local.get(digest).await? {
            return Ok(Some(data));
        }
        match self.fill(digest).await? {
            Fill::Missing => Ok(None),
            Fill::Local => self.local.get(digest).await,
            Fill::NotCached => {
                let Some(stream) = self.remote.read(digest, 0, None, None).await? else {
                    return Ok(None);
                };
                let chunks: Vec<Vec<u8>> = stream.try_collect().await?;
                Ok(Some(chunks.concat()))
            }
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error> {
        if let Some(stream) = self.local.read(digest, offset, limit).await? {
            return Ok(Some(stream));
        }
        if offset == 0 && limit.is_none_or(|limit| limit >= digest.size_bytes()) {
            // Streamed to the client as the local copy fills, rather than
            // filled first and then served: the client's bytes and the
            // disk's overlap (ReadState withholds the last chunk until
            // both the digest and the local commit are through).
            let local = match self.local.begin_write(digest).await {
                Ok(write) => Some(write),
                Err(err) => {
                    not_cached(err)?;
                    None
                }
            };
            return self.remote.read(digest, 0, None, local).await;
        }
        match self.fill(digest).await? {
            Fill::Missing => Ok(None),
            Fill::Local => match self.local.read(digest, offset, limit).await? {
                Some(stream) => Ok(Some(stream)),
                // Evicted at once by a concurrent write: straight from the
                // object store.
                None => self.remote.read(digest, offset, limit, None).await,
            },
            Fill::NotCached => self.remote.read(digest, offset, limit, None).await,
        }
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        if digest.is_empty_blob() {
            // Always present; nothing to make durable.
            return self.local.begin_write(digest).await;
        }
        let local = match self.local.begin_write(digest).await {
            Ok(write) => Some(write),
            Err(err) => {
                not_cached(err)?;
                None
            }
        };
        let key = self.remote.cas_key(digest);
        let upload = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(&self.remote.store),
            key.clone(),
            self.remote.part_size_bytes,
        )
        .with_max_concurrency(UPLOAD_CONCURRENCY);
        Ok(Box::new(TierWrite {
            remote: Arc::clone(&self.remote),
            key,
            verifier: Verifier::new(*digest),
            local,
            upload,
            failed: false,
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for ObjectTier {
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if let Some(encoded) = self.local.get_action_result(action).await? {
            return Ok(Some(encoded));
        }
        let key = self.remote.ac_key(action);
        let encoded = match self.remote.store.get(&key).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|source| self.remote.error("get", &key, source))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(self.remote.error("get", &key, source)),
        };
        let encoded = encoded.to_vec();
        self.local
            .put_action_result(action, encoded.clone())
            .await
            .or_else(not_cached)?;
        Ok(Some(encoded))
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        let key = self.remote.ac_key(action);
        self.remote
            .store
            .put(&key, PutPayload::from(encoded.clone()))
            .await
            .map_err(|source| self.remote.error("put", &key, source))?;
        self.local
            .put_action_result(action, encoded)
            .await
            .or_else(not_cached)
    }
}

/// One blob streamed to the local store and the object store at once.
struct TierWrite {
    remote: Arc<Remote>,
    key: Path,
    verifier: Verifier,
    local: Option<Box<dyn BlobWrite>>,
    upload: object_store::buffered::BufWriter,
    /// An upload request failed: the writer's state is then unknown (a
    /// failed start of a multipart upload leaves it without its key), so
    /// nothing more goes through it.
    failed: bool,
}

impl TierWrite {
    fn failed_before(&self) -> Error {
        Error::ObjectStoreUpload {
            key: self.key.to_string(),
            source: std::io::Error::other("an earlier part of this upload failed"),
        }
    }
}

#[tonic::async_trait]
impl BlobWrite for TierWrite {
    fn digest(&self) -> &Digest {
        self.verifier.expected()
    }

    fn received(&self) -> u64 {
        self.verifier.received()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.failed {
            return Err(self.failed_before());
        }
        self.verifier.update(data)?;
        if let Some(local) = &mut self.local {
            if let Err(err) = local.write(data).await {
                not_cached(err)?;
                self.local = None;
            }
        }
        let put = self.upload.put(Bytes::copy_from_slice(data)).await;
        put.map_err(|source| {
            self.failed = true;
            self.remote.error("upload", &self.key, source)
        })
    }

    async fn commit(mut self: Box<Self>) -> Result<(), Error> {
        if self.failed {
            return Err(self.failed_before());
        }
        let digest = *self.verifier.expected();
        // Verified before the upload completes: the object becomes visible
        // at completion, and must never hold what its key does not promise.
        let verified = std::mem::replace(&mut self.verifier, Verifier::new(digest)).finish();
        if let Err(err) = verified {
            // Best effort: a multipart upload left behind is invisible, and
            // a lifecycle rule on the bucket removes it.
            let _ = self.upload.abort().await;
            return Err(err.into());
        }
        self.upload
            .shutdown()
            .await
            .map_err(|source| Error::ObjectStoreUpload {
                key: self.key.to_string(),
                source,
            })?;
        self.remote.remember(&digest);
        if let Some(local) = self.local {
            local.commit().await.or_else(not_cached)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;
    use crate::blob_store::conformance::blob;
    use crate::digest::DigestFunction;
    use crate::memory_blob_store::MemoryBlobStore;

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    fn cfg() -> ObjectStoreConfig {
        ObjectStoreConfig {
            part_size_bytes: 5 << 20,
            ..ObjectStoreConfig::default()
        }
    }

    fn tier(store: &Arc<InMemory>, cfg: &ObjectStoreConfig) -> (ObjectTier, MemoryBlobStore) {
        let local = MemoryBlobStore::new(64 << 20);
        let object_store: Arc<dyn ObjectStore> = store.clone();
        let tier = ObjectTier::new(
            Arc::new(local.clone()),
            object_store,
            Path::from("farm"),
            cfg,
        );
        (tier, local)
    }

    #[tokio::test]
    async fn a_fresh_local_tier_is_filled_from_the_object_store() {
        let store = Arc::new(InMemory::new());
        let (first, _) = tier(&store, &cfg());
        let data = blob(1, 3 * READ_CHUNK_BYTES + 5);
        let d = sha(&data);
        first.put(&d, data.clone()).await.unwrap();
        let action = sha(b"action");
        first.put_action_result(&action, vec![1, 2]).await.unwrap();

        // A new local tier, empty: the object store answers.
        let (second, local) = tier(&store, &cfg());
        assert!(second.find_missing(&[d]).await.unwrap().is_empty());
        assert_eq!(local.get(&d).await.unwrap(), None, "find does not fill");
        assert_eq!(
            crate::blob_store::conformance::read_all(&second, &d, 10, Some(100)).await,
            data[10..110]
        );
        assert_eq!(
            local.get(&d).await.unwrap(),
            Some(data.clone()),
            "read fills"
        );
        // A whole read streams the object as it fills the local store.
        let (third, local) = tier(&store, &cfg());
        assert_eq!(
            crate::blob_store::conformance::read_all(&third, &d, 0, None).await,
            data
        );
        assert_eq!(
            local.get(&d).await.unwrap(),
            Some(data.clone()),
            "a whole read fills"
        );
        assert_eq!(
            second.get_action_result(&action).await.unwrap(),
            Some(vec![1, 2])
        );
        let nowhere = sha(b"nowhere");
        assert_eq!(second.find_missing(&[nowhere]).await.unwrap(), [nowhere]);
        assert!(second.read(&nowhere, 0, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_large_blob_goes_up_in_parts_and_streams_back_verified() {
        let store = Arc::new(InMemory::new());
        let (tier, _) = tier(&store, &cfg());
        let data = blob(2, 12 << 20);
        let d = sha(&data);
        let mut write = tier.begin_write(&d).await.unwrap();
        for chunk in data.chunks(1 << 20) {
            write.write(chunk).await.unwrap();
        }
        write.commit().await.unwrap();
        let key = tier.remote.cas_key(&d);
        let object = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(object.len(), data.len());
        // Served from the object store alone, as when the disk cannot keep it.
        assert_eq!(read_all_remote(&tier, &d).await, data);
    }

    async fn read_all_remote(tier: &ObjectTier, d: &Digest) -> Vec<u8> {
        let stream = tier.remote.read(d, 0, None, None).await.unwrap().unwrap();
        let chunks: Vec<Vec<u8>> = stream.try_collect().await.unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn content_not_matching_its_digest_never_reaches_the_object_store() {
        let store = Arc::new(InMemory::new());
        let (tier, _) = tier(&store, &cfg());
        let claimed = sha(b"hello");
        let err = tier.put(&claimed, b"jello".to_vec()).await.unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err:?}");
        let key = tier.remote.cas_key(&claimed);
        assert!(matches!(
            store.head(&key).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert_eq!(tier.find_missing(&[claimed]).await.unwrap(), [claimed]);
    }

    #[tokio::test]
    async fn a_corrupt_object_is_refused_deleted_and_reported_missing() {
        let store = Arc::new(InMemory::new());
        let (writer, _) = tier(&store, &cfg());
        let data = blob(3, 2 * READ_CHUNK_BYTES + 7);
        let d = sha(&data);
        writer.put(&d, data.clone()).await.unwrap();
        let key = writer.remote.cas_key(&d);
        let mut bad = data.clone();
        bad[100] ^= 1;
        store.put(&key, PutPayload::from(bad)).await.unwrap();

        // A whole read streams while it fills the local store: the stream
        // ends in an error before its last chunk, nothing is cached.
        let (reader, local) = tier(&store, &cfg());
        let stream = reader.read(&d, 0, None).await.unwrap().unwrap();
        let got: Vec<Result<Vec<u8>, Error>> = stream.collect().await;
        let served: usize = got
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(Vec::len)
            .sum();
        assert!(served < data.len(), "the whole corrupt blob was served");
        assert!(matches!(got.last(), Some(Err(Error::Corrupt { .. }))));
        assert_eq!(local.get(&d).await.unwrap(), None, "not cached");
        assert_eq!(reader.find_missing(&[d]).await.unwrap(), [d], "deleted");

        // A ranged read fills first: refused before its first byte.
        store
            .put(&key, PutPayload::from(vec![1; data.len()]))
            .await
            .unwrap();
        let err = reader.read(&d, 10, Some(100)).await.err().expect("refused");
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert_eq!(local.get(&d).await.unwrap(), None, "not cached");

        // Corrupt again, read straight from the object store: the stream
        // ends in an error before its last chunk.
        store
            .put(&key, PutPayload::from(vec![0; data.len()]))
            .await
            .unwrap();
        let stream = reader
            .remote
            .read(&d, 0, None, None)
            .await
            .unwrap()
            .unwrap();
        let got: Vec<Result<Vec<u8>, Error>> = stream.collect().await;
        let served: usize = got
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(Vec::len)
            .sum();
        assert!(served < data.len());
        assert!(matches!(got.last(), Some(Err(Error::Corrupt { .. }))));
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_object_store_holds_is_remembered_for_the_ttl_only() {
        let store = Arc::new(InMemory::new());
        let cfg = ObjectStoreConfig {
            known_digests_ttl_s: 60,
            ..cfg()
        };
        let (writer, _) = tier(&store, &cfg);
        let data = blob(4, 1000);
        let d = sha(&data);
        writer.put(&d, data).await.unwrap();
        let (reader, _) = tier(&store, &cfg);
        assert!(reader.find_missing(&[d]).await.unwrap().is_empty());
        // Gone behind the tier's back (a lifecycle rule): still believed
        // present until the TTL runs out.
        store.delete(&writer.remote.cas_key(&d)).await.unwrap();
        assert!(reader.find_missing(&[d]).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(reader.find_missing(&[d]).await.unwrap(), [d]);
    }

    #[test]
    fn the_known_digests_are_bounded() {
        let store = Arc::new(InMemory::new());
        let cfg = ObjectStoreConfig {
            known_digests_max_entries: 2,
            ..cfg()
        };
        let (tier, _) = tier(&store, &cfg);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..5u8 {
                tier.remote.remember(&sha(&[i]));
            }
        });
        assert_eq!(tier.remote.known.lock().unwrap().len(), 2);
    }
}
