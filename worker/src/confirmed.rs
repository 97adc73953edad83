//! `Confirmed`: which blobs storage has shown to which instance names.
//!
//! The file and directory caches are keyed by digest alone, so that a file
//! used by many actions is downloaded once. With storage's
//! `isolate_instances` (docs/decisions/0010-cas-across-instance-names.md)
//! that would be a hole: tenant B's action naming a digest only tenant A
//! holds would be laid out from what A's action left in the cache, without
//! storage ever being asked under B. So a cache hit counts only for an
//! instance name storage has shown the blob to: by serving it under that
//! name, or by FindMissingBlobs under that name saying it is present.
//! Without isolation storage shows every blob to every name, and the check
//! costs one FindMissingBlobs per instance name and blob the first time
//! only.
//!
//! Pairs are kept as 64-bit keyed hashes (random key per process, so
//! nobody can aim for a collision), at most [`MAX_PAIRS`]; past that the
//! set starts over, which costs only asking again.

use std::collections::HashSet;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _, RandomState};
use std::sync::Mutex;

use corral_proto::reapi::Digest;

use crate::cas_client::{self, CasClient};

/// Pairs remembered: 8 MiB of keys at most, before the table's overhead.
pub const MAX_PAIRS: usize = 1 << 20;

/// (instance name, digest) pairs storage has confirmed.
#[derive(Debug, Default)]
pub struct Confirmed {
    keys: RandomState,
    pairs: Mutex<HashSet<u64>>,
}

impl Confirmed {
    fn key(&self, instance: &str, digest: &Digest) -> u64 {
        let mut hasher = self.keys.build_hasher();
        instance.hash(&mut hasher);
        digest.hash.hash(&mut hasher);
        digest.size_bytes.hash(&mut hasher);
        hasher.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // A set of numbers: a panic cannot leave it inconsistent.
        self.pairs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that storage showed `digests` under `instance`.
    pub fn confirm<'a>(&self, instance: &str, digests: impl IntoIterator<Item = &'a Digest>) {
        let keys: Vec<u64> = digests.into_iter().map(|d| self.key(instance, d)).collect();
        let mut pairs = self.lock();
        if pairs.len() + keys.len() > MAX_PAIRS {
            pairs.clear();
        }
        pairs.extend(keys);
    }

    /// Checks that storage holds every one of `digests` (cache hits) for
    /// `cas`'s instance name, asking it about those not confirmed yet.
    /// Fails with [`cas_client::Error::Missing`] naming the first it lacks,
    /// as a download of it would.
    pub async fn check<'a>(
        &self,
        cas: &CasClient,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<(), cas_client::Error> {
        let instance = cas.instance();
        let unconfirmed: Vec<Digest> = {
            let pairs = self.lock();
            digests
                .into_iter()
                .filter(|d| d.size_bytes != 0 && !pairs.contains(&self.key(instance, d)))
                .cloned()
                .collect()
        };
        if unconfirmed.is_empty() {
            return Ok(());
        }
        if let Some(digest) = cas.find_missing(&unconfirmed).await?.into_iter().next() {
            return Err(cas_client::Error::Missing { digest });
        }
        self.confirm(instance, &unconfirmed);
        Ok(())
    }
}
