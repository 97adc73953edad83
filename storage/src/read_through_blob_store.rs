//! A local store in front of a remote one: reads are served locally when
//! possible and filled from the remote otherwise (read-through); writes go
//! to both, the remote first, so the remote (shared by the farm) never
//! lacks what a local copy claims. The Action Cache is the remote's: its
//! entries change, and a stale local copy could hide a newer result.

use std::sync::Arc;

use crate::action_cache::ActionCache;
use crate::blob_store::{BlobStore, BlobStream, Error};
use crate::blob_write::BlobWrite;
use crate::digest::Digest;

/// Anything that is both a CAS and an Action Cache.
pub trait Store: BlobStore + ActionCache {}
impl<T: BlobStore + ActionCache> Store for T {}

/// `local` caching `remote`.
pub struct ReadThroughBlobStore {
    local: Arc<dyn BlobStore>,
    remote: Arc<dyn Store>,
}

impl ReadThroughBlobStore {
    pub fn new(local: Arc<dyn BlobStore>, remote: Arc<dyn Store>) -> Self {
        Self { local, remote }
    }

    /// Fetches `digest` from the remote into the local store. `false` when
    /// the remote has no (valid) copy either.
    async fn fill(&self, digest: &Digest) -> Result<bool, Error> {
        let Some(data) = self.remote.get(digest).await? else {
            return Ok(false);
        };
        self.local.put(digest, data).await.or_else(not_cached)?;
        Ok(true)
    }
}

/// A local store's refusal to cache a blob read from the remote: too large
/// for its bound, or its disk full (with nothing left to evict). The blob
/// is still served, just not cached: the remote has it.
fn not_cached(err: Error) -> Result<(), Error> {
    match err {
        Error::TooLarge { .. } => Ok(()),
        Error::Disk(disk) if disk.is_storage_full() => {
            tracing::warn!(error = %crate::status::message(&disk), "not caching a blob read from the remote");
            Ok(())
        }
        err => Err(err),
    }
}

#[tonic::async_trait]
impl BlobStore for ReadThroughBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let not_local = self.local.find_missing(digests).await?;
        if not_local.is_empty() {
            return Ok(not_local);
        }
        self.remote.find_missing(&not_local).await
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if let Some(data) = self.local.get(digest).await? {
            return Ok(Some(data));
        }
        let Some(data) = self.remote.get(digest).await? else {
            return Ok(None);
        };
        self.local
            .put(digest, data.clone())
            .await
            .or_else(not_cached)?;
        Ok(Some(data))
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
        if !self.fill(digest).await? {
            return Ok(None);
        }
        match self.local.read(digest, offset, limit).await? {
            Some(stream) => Ok(Some(stream)),
            // Not kept locally (too large): straight from the remote.
            None => self.remote.read(digest, offset, limit).await,
        }
    }

    /// The local tier's: the remote evicts on its own.
    fn evictions(&self) -> u64 {
        self.local.evictions()
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        Ok(Box::new(WriteBoth {
            remote: self.remote.begin_write(digest).await?,
            local: self.local.begin_write(digest).await.ok(),
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for ReadThroughBlobStore {
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error> {
        self.remote.get_action_result(action).await
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        self.remote.put_action_result(action, encoded).await
    }
}

/// A write to the remote and, when the local store takes it, locally too.
struct WriteBoth {
    remote: Box<dyn BlobWrite>,
    local: Option<Box<dyn BlobWrite>>,
}

#[tonic::async_trait]
impl BlobWrite for WriteBoth {
    fn digest(&self) -> &Digest {
        self.remote.digest()
    }

    fn received(&self) -> u64 {
        self.remote.received()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.remote.write(data).await?;
        if let Some(local) = &mut self.local {
            if local.write(data).await.is_err() {
                // The local copy is only a cache: drop it, keep going.
                self.local = None;
            }
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        self.remote.commit().await?;
        if let Some(local) = self.local {
            // Verified by the remote commit already; a local failure only
            // costs a later re-fetch.
            let _ = local.commit().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob_store::conformance::blob;
    use crate::digest::DigestFunction;
    use crate::memory_blob_store::MemoryBlobStore;
    use crate::remote_blob_store::tests::server;
    use crate::remote_blob_store::RemoteBlobStore;

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    #[tokio::test]
    async fn reads_fill_the_local_cache_and_writes_reach_both() {
        let (url, _server) = server().await;
        let remote =
            RemoteBlobStore::new(&corral_auth::channel::Connector::plaintext(), &url, "").unwrap();
        let local = MemoryBlobStore::new(1 << 20);
        let store = ReadThroughBlobStore::new(Arc::new(local.clone()), Arc::new(remote.clone()));

        // Only on the remote: found, then fetched once into the local cache.
        let remote_only = blob(3, 5000);
        remote
            .put(&sha(&remote_only), remote_only.clone())
            .await
            .unwrap();
        assert!(store
            .find_missing(&[sha(&remote_only)])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(local.get(&sha(&remote_only)).await.unwrap(), None);
        assert_eq!(
            store.get(&sha(&remote_only)).await.unwrap(),
            Some(remote_only.clone())
        );
        assert_eq!(
            local.get(&sha(&remote_only)).await.unwrap(),
            Some(remote_only)
        );

        // Written through the front: in both.
        let written = blob(4, 7000);
        store.put(&sha(&written), written.clone()).await.unwrap();
        assert_eq!(
            local.get(&sha(&written)).await.unwrap(),
            Some(written.clone())
        );
        assert_eq!(remote.get(&sha(&written)).await.unwrap(), Some(written));

        // Nowhere: missing.
        let nowhere = sha(b"nowhere");
        assert_eq!(store.find_missing(&[nowhere]).await.unwrap(), [nowhere]);
        assert!(store.read(&nowhere, 0, None).await.unwrap().is_none());

        // The Action Cache is the remote's.
        let action = sha(b"action");
        store.put_action_result(&action, vec![8, 1]).await.unwrap();
        assert!(remote.get_action_result(&action).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_full_local_disk_still_serves_what_the_remote_holds() {
        use crate::disk_blob_store::DiskBlobStore;
        use corral_testkit::Tmpfs;
        let Some(disk) = Tmpfs::mount("a_full_local_disk_still_serves", "8m") else {
            return;
        };
        let local = DiskBlobStore::open(disk.path().join("cache"), 1 << 30, false)
            .await
            .unwrap();
        let remote = MemoryBlobStore::new(64 << 20);
        let store = ReadThroughBlobStore::new(Arc::new(local.clone()), Arc::new(remote.clone()));
        std::fs::write(disk.path().join("filler"), vec![0; 7 << 20]).unwrap();
        let data = blob(5, 2 << 20);
        let d = sha(&data);
        remote.put(&d, data.clone()).await.unwrap();
        assert_eq!(store.get(&d).await.unwrap(), Some(data.clone()));
        let stream = store.read(&d, 0, None).await.unwrap().unwrap();
        let chunks: Vec<Vec<u8>> = futures_util::TryStreamExt::try_collect(stream)
            .await
            .unwrap();
        assert_eq!(chunks.concat(), data);
        assert_eq!(local.total_bytes(), 0, "not cached");
    }
}
