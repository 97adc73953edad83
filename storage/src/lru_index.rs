//! What a bounded store holds, in order of last use: the one LRU of ours
//! (`corral_lru::Lru`, also under the worker's caches), keyed here.
//!
//! Both backends keep one: the memory store keeps the blobs in it, the
//! disk store only their sizes (the files are the data). Neither pins.

pub use corral_lru::Lru as LruIndex;

use crate::digest::Digest;

/// Which of the two tables a key belongs to. CAS blobs and Action Cache
/// entries share one size bound, so they share one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Cas,
    Ac,
}

/// A key of a store's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: Namespace,
    pub digest: Digest,
}

impl Key {
    pub fn cas(digest: Digest) -> Self {
        Self {
            namespace: Namespace::Cas,
            digest,
        }
    }

    pub fn ac(digest: Digest) -> Self {
        Self {
            namespace: Namespace::Ac,
            digest,
        }
    }
}
