//! `BlobStore`: the Content Addressable Storage behind the services.
//!
//! A store is keyed by [`Digest`], which carries its digest function, so
//! SHA-256 and BLAKE3 blobs live side by side. Every implementation must
//! keep three promises the services rely on:
//! - nothing is visible until its content was checked against its digest
//!   (hash and size), and a refused write leaves nothing behind;
//! - content found not to match its digest is never returned whole: it is
//!   reported missing and removed;
//! - the empty blob is always present, stored or not (REAPI requires it).

use std::pin::Pin;

use futures_util::{stream, Stream, StreamExt as _};

use crate::blob_write::BlobWrite;
use crate::digest::{Digest, VerifyError};
use crate::disk_blob_store::DiskError;
use crate::membership::MembershipError;

/// Size of the chunks a streamed read yields. 64 KiB keeps each ByteStream
/// message small enough to pipeline well and large enough that per-message
/// overhead stays a few percent.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A blob's bytes, in order, in chunks of at most [`READ_CHUNK_BYTES`].
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Error>> + Send>>;

/// What can go wrong in a store, whatever the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {digest} is larger than the store's bound of {max_size_bytes} bytes")]
    TooLarge { digest: Digest, max_size_bytes: u64 },
    // Boxed: two digests would make every store result 100 bytes larger.
    #[error("refused content for a blob")]
    Refused(#[source] Box<VerifyError>),
    #[error("blob {digest} was found corrupt in storage and removed")]
    Corrupt { digest: Digest },
    #[error("disk store failed")]
    Disk(#[from] DiskError),
    #[error("recording which instance names hold a blob failed")]
    Membership(#[from] MembershipError),
    // Boxed: object_store's errors are large.
    #[error("object store failed during {operation} of {key}")]
    ObjectStore {
        operation: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("object store failed to complete the upload of {key}")]
    ObjectStoreUpload {
        key: String,
        #[source]
        source: std::io::Error,
    },
    // Boxed: a Status is large and remote failures are rare.
    #[error("remote storage failed during {operation}")]
    Remote {
        operation: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
}

impl From<VerifyError> for Error {
    fn from(err: VerifyError) -> Self {
        Error::Refused(Box::new(err))
    }
}

/// The Content Addressable Storage.
#[tonic::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The digests among `digests` that are not stored. Asking refreshes
    /// the ones that are, as REAPI expects: a client that was just told a
    /// blob is present will reference it soon.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error>;

    /// The whole blob, verified, or `None` if it is missing (or was found
    /// corrupt and removed).
    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error>;

    /// Bytes `offset..offset + limit` of the blob (to its end when `limit`
    /// is `None`), streamed, or `None` if it is missing. A read of the
    /// whole blob is verified as it streams: on a mismatch, the last chunk
    /// is withheld and the stream ends with [`Error::Corrupt`], so a client
    /// never receives all of a corrupt blob. Partial reads are not
    /// verified; clients check what they reassemble.
    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error>;

    /// Starts writing a blob; see [`BlobWrite`].
    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error>;

    /// How many blobs and Action Cache entries this store has evicted as
    /// least recently used since it opened, for metrics; 0 for a store
    /// that does not evict (a remote one evicts on its own).
    fn evictions(&self) -> u64 {
        0
    }

    /// Writes a whole blob held in memory.
    async fn put(&self, digest: &Digest, data: Vec<u8>) -> Result<(), Error> {
        let mut write = self.begin_write(digest).await?;
        write.write(&data).await?;
        write.commit().await
    }

    /// Writes many whole blobs (a BatchUpdateBlobs): one result per blob,
    /// in order, each as [`put`](Self::put) would give it. Backends whose
    /// per-blob cost is a trip to another thread override it to pay that
    /// trip once per batch.
    async fn put_many(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), Error>> {
        stream::iter(blobs)
            .map(|(digest, data)| async move { self.put(&digest, data).await })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }

    /// Many whole blobs (a BatchReadBlobs): one result per digest, in
    /// order, each as [`get`](Self::get) would give it.
    async fn get_many(&self, digests: &[Digest]) -> Vec<Result<Option<Vec<u8>>, Error>> {
        stream::iter(digests.iter().copied())
            .map(|digest| async move { self.get(&digest).await })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }
}

/// Blobs of a batch handled at once by the default
/// [`BlobStore::put_many`] and [`BlobStore::get_many`]: enough to keep a
/// remote store's connection or a blocking pool busy, few enough that one
/// batch cannot starve others.
pub const BATCH_CONCURRENCY: usize = 32;

/// The behaviour every backend must show, as one suite each backend's
/// tests run against itself.
#[cfg(test)]
pub(crate) mod conformance {
    use futures_util::TryStreamExt as _;

    use super::*;
    use crate::action_cache::ActionCache;
    use crate::digest::DigestFunction;

    /// Makes fresh, empty stores of a backend.
    pub(crate) trait Harness {
        type Store: BlobStore + ActionCache + Clone;
        async fn make(&mut self, max_size_bytes: u64) -> Self::Store;
    }

    const MIB: u64 = 1 << 20;

    /// Deterministic, incompressible-enough bytes.
    pub(crate) fn blob(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    pub(crate) async fn run<H: Harness>(mut harness: H) {
        for function in DigestFunction::ALL {
            put_then_get_and_find(harness.make(MIB).await, function).await;
        }
        wrong_hash_is_refused_and_leaves_nothing(harness.make(MIB).await).await;
        wrong_size_is_refused(harness.make(MIB).await).await;
        empty_blob_is_always_present(harness.make(MIB).await).await;
        ranged_reads_return_the_right_bytes(harness.make(MIB).await).await;
        abandoned_write_leaves_nothing(harness.make(MIB).await).await;
        too_large_blob_is_refused(harness.make(MIB).await).await;
        action_cache_entries_replace(harness.make(MIB).await).await;
        concurrent_writers_of_one_blob_agree(harness.make(16 * MIB).await).await;
        least_recently_used_blob_is_evicted(harness.make(MIB).await).await;
        batches_answer_each_blob_in_order(harness.make(MIB).await).await;
    }

    pub(crate) async fn read_all<S: BlobStore + ?Sized>(
        store: &S,
        d: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Vec<u8> {
        let stream = store
            .read(d, offset, limit)
            .await
            .unwrap()
            .expect("blob present");
        let chunks: Vec<Vec<u8>> = stream.try_collect().await.unwrap();
        assert!(chunks.iter().all(|c| c.len() <= READ_CHUNK_BYTES));
        chunks.concat()
    }

    async fn put_then_get_and_find<S: BlobStore>(store: S, function: DigestFunction) {
        let data = blob(1, 1000);
        let d = function.digest_of(&data);
        let other = function.digest_of(b"other");
        assert_eq!(store.find_missing(&[d, other]).await.unwrap(), [d, other]);
        assert_eq!(store.get(&d).await.unwrap(), None);
        assert!(store.read(&d, 0, None).await.unwrap().is_none());
        store.put(&d, data.clone()).await.unwrap();
        assert_eq!(store.find_missing(&[d, other]).await.unwrap(), [other]);
        assert_eq!(store.get(&d).await.unwrap(), Some(data.clone()));
        assert_eq!(read_all(&store, &d, 0, None).await, data);
        // Writing it again is harmless.
        store.put(&d, data.clone()).await.unwrap();
        assert_eq!(store.get(&d).await.unwrap(), Some(data));
    }

    /// `put_many` and `get_many` give each entry what `put` and `get`
    /// would, in order, whichever lane of the batch it fell in.
    async fn batches_answer_each_blob_in_order<S: BlobStore>(store: S) {
        let blobs: Vec<Vec<u8>> = (0..100).map(|i| blob(i, 100 + usize::from(i))).collect();
        let mut digests: Vec<Digest> = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        let mut batch: Vec<(Digest, Vec<u8>)> =
            digests.iter().copied().zip(blobs.iter().cloned()).collect();
        // Refused entries in the middle: wrong bytes, and too large.
        batch[37].1[0] ^= 1;
        let large = Digest::new(DigestFunction::Sha256, [9; 32], 2 * MIB);
        batch[70] = (large, Vec::new());
        digests[70] = large;
        let results = store.put_many(batch).await;
        assert_eq!(results.len(), 100);
        for (i, result) in results.iter().enumerate() {
            match i {
                37 => assert!(matches!(result, Err(Error::Refused(_))), "{result:?}"),
                70 => assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}"),
                _ => assert!(result.is_ok(), "entry {i}: {result:?}"),
            }
        }
        assert_eq!(
            store.find_missing(&digests).await.unwrap(),
            [digests[37], digests[70]]
        );
        let mut asked = digests.clone();
        asked.push(DigestFunction::Sha256.empty());
        let found = store.get_many(&asked).await;
        assert_eq!(found.len(), 101);
        for (i, found) in found.into_iter().enumerate() {
            let found = found.unwrap();
            match i {
                37 | 70 => assert_eq!(found, None, "entry {i}"),
                100 => assert_eq!(found, Some(Vec::new())),
                _ => assert_eq!(found.as_ref(), Some(&blobs[i]), "entry {i}"),
            }
        }
        assert!(store.put_many(Vec::new()).await.is_empty());
        assert!(store.get_many(&[]).await.is_empty());
    }

    async fn wrong_hash_is_refused_and_leaves_nothing<S: BlobStore>(store: S) {
        let claimed = DigestFunction::Sha256.digest_of(b"hello");
        let err = store.put(&claimed, b"jello".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused(e) if matches!(**e, VerifyError::HashMismatch { .. })),
            "{err:?}"
        );
        assert_eq!(store.find_missing(&[claimed]).await.unwrap(), [claimed]);
        assert_eq!(store.get(&claimed).await.unwrap(), None);
    }

    async fn wrong_size_is_refused<S: BlobStore>(store: S) {
        let d = DigestFunction::Sha256.digest_of(b"hello");
        let err = store.put(&d, b"hello!".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused(e) if matches!(**e, VerifyError::TooLong { .. })),
            "{err:?}"
        );
        let err = store.put(&d, b"hell".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused(e) if matches!(**e, VerifyError::TooShort { .. })),
            "{err:?}"
        );
        assert_eq!(store.find_missing(&[d]).await.unwrap(), [d]);
    }

    async fn empty_blob_is_always_present<S: BlobStore>(store: S) {
        for function in DigestFunction::ALL {
            let empty = function.empty();
            assert!(store.find_missing(&[empty]).await.unwrap().is_empty());
            assert_eq!(store.get(&empty).await.unwrap(), Some(Vec::new()));
            assert!(read_all(&store, &empty, 0, None).await.is_empty());
        }
        // A zero size with any other hash is not the empty blob.
        let fake = Digest::new(DigestFunction::Sha256, [7; 32], 0);
        assert_eq!(store.find_missing(&[fake]).await.unwrap(), [fake]);
    }

    async fn ranged_reads_return_the_right_bytes<S: BlobStore>(store: S) {
        let data = blob(2, 3 * READ_CHUNK_BYTES + 123);
        let d = DigestFunction::Blake3.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        assert_eq!(read_all(&store, &d, 0, None).await, data);
        assert_eq!(read_all(&store, &d, 100, None).await, data[100..]);
        assert_eq!(
            read_all(&store, &d, 100, Some(70_000)).await,
            data[100..70_100]
        );
        assert_eq!(read_all(&store, &d, 0, Some(5)).await, data[..5]);
        let len = data.len() as u64;
        assert!(read_all(&store, &d, len, None).await.is_empty());
        assert_eq!(
            read_all(&store, &d, len - 1, Some(10)).await,
            data[data.len() - 1..]
        );
    }

    async fn abandoned_write_leaves_nothing<S: BlobStore>(store: S) {
        let data = blob(3, 5000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let mut write = store.begin_write(&d).await.unwrap();
        write.write(&data[..2000]).await.unwrap();
        assert_eq!(write.received(), 2000);
        assert_eq!(*write.digest(), d);
        drop(write);
        assert_eq!(store.find_missing(&[d]).await.unwrap(), [d]);
    }

    async fn too_large_blob_is_refused<S: BlobStore>(store: S) {
        let d = Digest::new(DigestFunction::Sha256, [1; 32], 2 * MIB);
        let err = store.begin_write(&d).await.err().expect("refused");
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    }

    async fn action_cache_entries_replace<S: ActionCache>(store: S) {
        let action = DigestFunction::Sha256.digest_of(b"action");
        assert_eq!(store.get_action_result(&action).await.unwrap(), None);
        store
            .put_action_result(&action, b"first".to_vec())
            .await
            .unwrap();
        store
            .put_action_result(&action, b"second".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.get_action_result(&action).await.unwrap(),
            Some(b"second".to_vec())
        );
        // The same digest under another function is another action.
        let blake = Digest::new(DigestFunction::Blake3, *action.hash(), action.size_bytes());
        assert_eq!(store.get_action_result(&blake).await.unwrap(), None);
    }

    async fn concurrent_writers_of_one_blob_agree<S: BlobStore + Clone>(store: S) {
        let data = blob(4, 300_000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let store = store.clone();
            let data = data.clone();
            writers.spawn(async move {
                let mut write = store.begin_write(&d).await?;
                for chunk in data.chunks(10_000) {
                    write.write(chunk).await?;
                    tokio::task::yield_now().await;
                }
                write.commit().await
            });
        }
        while let Some(result) = writers.join_next().await {
            result.unwrap().unwrap();
        }
        assert_eq!(store.get(&d).await.unwrap(), Some(data));
        assert!(store.find_missing(&[d]).await.unwrap().is_empty());
    }

    async fn least_recently_used_blob_is_evicted<S: BlobStore + ActionCache>(store: S) {
        let (a, b, c) = (blob(5, 400_000), blob(6, 400_000), blob(7, 400_000));
        let f = DigestFunction::Sha256;
        let (da, db, dc) = (f.digest_of(&a), f.digest_of(&b), f.digest_of(&c));
        store.put(&da, a).await.unwrap();
        store.put(&db, b).await.unwrap();
        // Using `a` makes `b` the least recently used.
        assert!(store.find_missing(&[da]).await.unwrap().is_empty());
        store.put(&dc, c).await.unwrap();
        assert_eq!(store.find_missing(&[da, db, dc]).await.unwrap(), [db]);
        assert_eq!(store.get(&db).await.unwrap(), None);
    }
}
