//! `MemoryBlobStore`: blobs and Action Cache entries in memory, bounded by
//! their total size, least recently used evicted first. Lost on restart;
//! for tests and throwaway farms.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream;

use crate::action_cache::ActionCache;
use crate::blob_store::{BlobStore, BlobStream, Error, READ_CHUNK_BYTES};
use crate::blob_write::BlobWrite;
use crate::digest::{Digest, Verifier};
use crate::lru_index::{Key, LruIndex};

/// Blobs in memory. Cloning shares the same store.
#[derive(Clone)]
pub struct MemoryBlobStore {
    index: Arc<Mutex<LruIndex<Key, Arc<[u8]>>>>,
}

impl MemoryBlobStore {
    pub fn new(max_size_bytes: u64) -> Self {
        Self {
            index: Arc::new(Mutex::new(LruIndex::new(max_size_bytes))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruIndex<Key, Arc<[u8]>>> {
        // A panic while holding the lock leaves at worst a stale LRU order;
        // the map itself is updated in single calls.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self, key: &Key) -> Option<Arc<[u8]>> {
        if key.digest.is_empty_blob() {
            return Some(Arc::from(Vec::new()));
        }
        self.lock().get(key).cloned()
    }

    fn insert(&self, key: Key, data: Arc<[u8]>) -> Result<(), Error> {
        let mut index = self.lock();
        let size = data.len() as u64;
        if size > index.max_bytes() {
            return Err(Error::TooLarge {
                digest: key.digest,
                max_size_bytes: index.max_bytes(),
            });
        }
        // Evicted blobs are freed when the last reader drops its Arc.
        index.insert(key, data, size);
        Ok(())
    }

    /// Whether `digest` is stored, without marking it used: for the
    /// membership index, which must not reorder eviction.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.lock().contains(&Key::cas(*digest))
    }

    /// Total bytes held, for tests and metrics.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes()
    }
}

#[tonic::async_trait]
impl BlobStore for MemoryBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let mut index = self.lock();
        Ok(digests
            .iter()
            .filter(|d| !d.is_empty_blob() && !index.touch(&Key::cas(**d)))
            .copied()
            .collect())
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lookup(&Key::cas(*digest)).map(|data| data.to_vec()))
    }

    /// Under one hold of the lock, rather than one per blob.
    async fn get_many(&self, digests: &[Digest]) -> Vec<Result<Option<Vec<u8>>, Error>> {
        let mut index = self.lock();
        digests
            .iter()
            .map(|digest| {
                if digest.is_empty_blob() {
                    return Ok(Some(Vec::new()));
                }
                Ok(index.get(&Key::cas(*digest)).map(|data| data.to_vec()))
            })
            .collect()
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error> {
        let Some(data) = self.lookup(&Key::cas(*digest)) else {
            return Ok(None);
        };
        let len = data.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = match limit {
            Some(limit) => start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)),
            None => len,
        }
        .min(len);
        // Lazily copied chunk by chunk, so a slow reader of a large blob
        // holds one chunk more than the store, not a second copy.
        let chunks = (start..end)
            .step_by(READ_CHUNK_BYTES)
            .map(move |at| Ok(data[at..(at + READ_CHUNK_BYTES).min(end)].to_vec()));
        Ok(Some(Box::pin(stream::iter(chunks))))
    }

    fn evictions(&self) -> u64 {
        self.lock().evictions()
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        let max_size_bytes = self.lock().max_bytes();
        if digest.size_bytes() > max_size_bytes {
            return Err(Error::TooLarge {
                digest: *digest,
                max_size_bytes,
            });
        }
        Ok(Box::new(MemoryBlobWrite {
            store: self.clone(),
            verifier: Verifier::new(*digest),
            // Capacity grows with what arrives, never from the claimed
            // size: a client could claim gigabytes and send nothing.
            data: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for MemoryBlobStore {
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().get(&Key::ac(*action)).map(|data| data.to_vec()))
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        self.insert(Key::ac(*action), Arc::from(encoded))
    }
}

struct MemoryBlobWrite {
    store: MemoryBlobStore,
    verifier: Verifier,
    data: Vec<u8>,
}

#[tonic::async_trait]
impl BlobWrite for MemoryBlobWrite {
    fn digest(&self) -> &Digest {
        self.verifier.expected()
    }

    fn received(&self) -> u64 {
        self.verifier.received()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.verifier.update(data)?;
        self.data.extend_from_slice(data);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let digest = *self.verifier.expected();
        self.verifier.finish()?;
        self.store.insert(Key::cas(digest), Arc::from(self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_store::conformance;

    struct Memory;

    impl conformance::Harness for Memory {
        type Store = MemoryBlobStore;
        async fn make(&mut self, max_size_bytes: u64) -> MemoryBlobStore {
            MemoryBlobStore::new(max_size_bytes)
        }
    }

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::run(Memory).await;
    }

    #[tokio::test]
    async fn evicted_and_replaced_blobs_are_counted_once() {
        let store = MemoryBlobStore::new(1000);
        let data = conformance::blob(1, 600);
        let d = crate::DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        store.put(&d, data).await.unwrap();
        assert_eq!(store.total_bytes(), 600);
        let other = conformance::blob(2, 600);
        let od = crate::DigestFunction::Sha256.digest_of(&other);
        store.put(&od, other).await.unwrap();
        assert_eq!(store.total_bytes(), 600);
    }
}
