//! Directory messages already read, decoded and checked, by digest: an
//! input root, or a subtree of one, seen before is laid out without
//! reading its Directories from the CAS again.
//!
//! Only the tree is kept here. Its files stay in the file cache, which
//! may have evicted some since; those are fetched again as usual. A
//! digest names its contents, so an entry never goes stale.
//!
//! Bounded by an estimate of the memory its entries take; the least
//! recently used go first.

use std::sync::{Arc, Mutex};

use corral_proto::reapi::Digest;

use crate::input_root::CheckedDirectory;

/// The cache. One per worker, shared by its slots.
#[derive(Debug)]
pub struct DirectoryCache {
    max_size: u64,
    /// Directories by digest with their estimated size, in order of use.
    state: Mutex<corral_lru::Lru<Digest, Arc<CheckedDirectory>>>,
}

impl DirectoryCache {
    /// An empty cache holding about `max_size_bytes` of directories.
    pub fn new(max_size_bytes: u64) -> DirectoryCache {
        DirectoryCache {
            max_size: max_size_bytes,
            state: Mutex::new(corral_lru::Lru::new(max_size_bytes)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, corral_lru::Lru<Digest, Arc<CheckedDirectory>>> {
        // A panic while holding the lock leaves a consistent map behind:
        // every update below completes before the next can fail.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached directory of each digest, if any, marking them used.
    /// One lock for all: a level of a tree is looked up at once.
    pub fn get_all<'a>(
        &self,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Vec<Option<Arc<CheckedDirectory>>> {
        let mut state = self.lock();
        digests
            .into_iter()
            .map(|digest| state.get(digest).map(Arc::clone))
            .collect()
    }

    /// Keeps `directory` as the contents of `digest`, evicting the least
    /// recently used entries that no longer fit. A directory larger than
    /// the whole cache is not kept.
    pub fn insert(&self, digest: Digest, directory: Arc<CheckedDirectory>) {
        let size = directory.memory_bytes() as u64;
        if size > self.max_size {
            return;
        }
        let mut state = self.lock();
        if state.contains(&digest) {
            // Another slot read it meanwhile: same digest, same contents.
            return;
        }
        // What no longer fits is only memory: dropping it is the cleanup.
        drop(state.insert(digest, directory, size));
    }

    /// Directories held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas_client::digest_of;
    use crate::input_root::CheckedFile;

    fn directory(files: usize) -> Arc<CheckedDirectory> {
        Arc::new(CheckedDirectory {
            files: (0..files)
                .map(|i| CheckedFile {
                    name: format!("f{i}"),
                    digest: digest_of(&[i as u8]),
                    executable: false,
                })
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn least_recently_used_directories_go_first() {
        let one = directory(1).memory_bytes() as u64;
        let cache = DirectoryCache::new(2 * one);
        let [a, b, c] = [b"a", b"b", b"c"].map(|x| digest_of(x));
        cache.insert(a.clone(), directory(1));
        cache.insert(b.clone(), directory(1));
        // a is used again: b is now the oldest.
        assert!(cache.get_all([&a])[0].is_some());
        cache.insert(c.clone(), directory(1));
        let found = cache.get_all([&a, &b, &c]);
        assert!(found[0].is_some());
        assert!(found[1].is_none(), "b was evicted");
        assert!(found[2].is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_directory_larger_than_the_cache_is_not_kept() {
        let small = directory(1).memory_bytes() as u64;
        let cache = DirectoryCache::new(small);
        let a = digest_of(b"a");
        cache.insert(a.clone(), directory(1));
        cache.insert(digest_of(b"big"), directory(100));
        assert!(cache.get_all([&a])[0].is_some(), "a stays");
        assert_eq!(cache.len(), 1);
    }
}
