//! Content-addressed files on local disk, hardlinked into input roots.
//!
//! `<directory>/cache/<hash>-<size>-{r,x}`: one entry per digest and
//! executable bit, because a hardlink shares the inode and so the mode:
//! an executable and a plain copy of the same bytes are two files. Files
//! are owned by the worker and read-only (0444, or 0555), so an action,
//! running as another uid, can never change what the next action sees.
//!
//! Bounded by size; the least recently used entries are removed first,
//! except those being linked right now. Removing an entry never breaks a
//! build directory: its links keep the inode alive.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use corral_proto::reapi::Digest;

use crate::cas_client::{self, CasClient};

/// What went wrong in the file cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to prepare the file cache {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to fetch files for the cache")]
    Fetch(#[from] cas_client::Error),
    #[error("failed to write cache file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to link {from} to {to}")]
    Link {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    hash: String,
    size: i64,
    executable: bool,
}

impl Key {
    fn file_name(&self) -> String {
        let kind = if self.executable { 'x' } else { 'r' };
        format!("{}-{}-{kind}", self.hash, self.size)
    }
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: u64,
    /// Links being made from it now; such entries are not evicted.
    pins: u32,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    total: u64,
    clock: u64,
}

/// A file wanted in an input root.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub digest: Digest,
    pub executable: bool,
    /// Where the link goes.
    pub path: PathBuf,
}

/// The cache. One per worker, shared by its slots.
#[derive(Debug)]
pub struct FileCache {
    dir: PathBuf,
    max_size: u64,
    state: Mutex<State>,
    downloads: AtomicU64,
    next_temp: AtomicU64,
}

impl FileCache {
    /// Starts an empty cache in `dir`, removing what a previous run left:
    /// its bookkeeping is in memory only.
    pub fn open(dir: PathBuf, max_size: u64) -> Result<FileCache, Error> {
        let prepare = |source| Error::Prepare {
            path: dir.clone(),
            source,
        };
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(prepare(e)),
            _ => {}
        }
        std::fs::create_dir_all(&dir).map_err(prepare)?;
        Ok(FileCache {
            dir,
            max_size,
            state: Mutex::default(),
            downloads: AtomicU64::new(0),
            next_temp: AtomicU64::new(0),
        })
    }

    /// Files downloaded into the cache since it opened.
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind;
        // they stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hardlinks every wanted file into place, downloading the ones the
    /// cache lacks (in batches).
    pub async fn link_all(&self, cas: &CasClient, wanted: &[Wanted]) -> Result<(), Error> {
        let keys: Vec<Key> = wanted
            .iter()
            .map(|w| Key {
                hash: w.digest.hash.clone(),
                size: w.digest.size_bytes,
                executable: w.executable,
            })
            .collect();
        let mut missing = Vec::new();
        {
            let mut state = self.lock();
            for (key, w) in keys.iter().zip(wanted) {
                state.clock += 1;
                let now = state.clock;
                match state.entries.get_mut(key) {
                    Some(entry) => {
                        entry.pins += 1;
                        entry.last_used = now;
                    }
                    None => {
                        if !missing.iter().any(|(k, _): &(Key, Digest)| k == key) {
                            missing.push((key.clone(), w.digest.clone()));
                        }
                    }
                }
            }
        }
        let result = self.fill_and_link(cas, &keys, wanted, &missing).await;
        {
            let mut state = self.lock();
            for key in &keys {
                if let Some(entry) = state.entries.get_mut(key) {
                    entry.pins = entry.pins.saturating_sub(1);
                }
            }
        }
        self.evict();
        result
    }

    async fn fill_and_link(
        &self,
        cas: &CasClient,
        keys: &[Key],
        wanted: &[Wanted],
        missing: &[(Key, Digest)],
    ) -> Result<(), Error> {
        if !missing.is_empty() {
            let digests: Vec<Digest> = missing.iter().map(|(_, d)| d.clone()).collect();
            let blobs = cas.read_many(&digests).await?;
            for (key, digest) in missing {
                let Some(data) = blobs.get(&digest.hash) else {
                    return Err(Error::Fetch(cas_client::Error::Missing {
                        digest: digest.clone(),
                    }));
                };
                self.insert(key, data)?;
            }
        }
        for (key, w) in keys.iter().zip(wanted) {
            let from = self.dir.join(key.file_name());
            std::fs::hard_link(&from, &w.path).map_err(|source| Error::Link {
                from,
                to: w.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Writes one file into the cache under a temporary name, then renames
    /// it in, so a half-written file is never linked.
    fn insert(&self, key: &Key, data: &[u8]) -> Result<(), Error> {
        let path = self.dir.join(key.file_name());
        let temp = self.dir.join(format!(
            "tmp-{}",
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let write = |source| Error::Write {
            path: path.clone(),
            source,
        };
        std::fs::write(&temp, data).map_err(write)?;
        let mode = if key.executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).map_err(write)?;
        std::fs::rename(&temp, &path).map_err(write)?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if state.entries.contains_key(key) {
            // Another slot fetched it meanwhile; the rename replaced its
            // file with identical bytes.
            if let Some(e) = state.entries.get_mut(key) {
                e.pins += 1;
            }
            return Ok(());
        }
        state.total += data.len() as u64;
        state.entries.insert(
            key.clone(),
            Entry {
                size: data.len() as u64,
                last_used: now,
                pins: 1,
            },
        );
        Ok(())
    }

    /// Removes least recently used, unpinned entries until the cache fits.
    fn evict(&self) {
        let mut state = self.lock();
        while state.total > self.max_size {
            let Some(key) = state
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(entry) = state.entries.remove(&key) {
                state.total -= entry.size;
            }
            let path = self.dir.join(key.file_name());
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "evicting a cache file failed");
            }
        }
    }

    /// The directory holding the cache files.
    pub fn directory(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key {
            hash: format!("{n:064}"),
            size: 10,
            executable: false,
        }
    }

    #[test]
    fn least_recently_used_unpinned_entries_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path().join("cache"), 25).unwrap();
        for n in 0..3 {
            cache.insert(&key(n), &[n; 10]).unwrap();
        }
        {
            let mut state = cache.lock();
            for e in state.entries.values_mut() {
                e.pins = 0;
            }
            // 0 is pinned: 1 is the oldest evictable one.
            state.entries.get_mut(&key(0)).unwrap().pins = 1;
        }
        cache.evict();
        let state = cache.lock();
        assert!(state.entries.contains_key(&key(0)));
        assert!(!state.entries.contains_key(&key(1)));
        assert!(state.entries.contains_key(&key(2)));
        assert_eq!(state.total, 20);
        assert!(!cache.directory().join(key(1).file_name()).exists());
    }

    #[test]
    fn executables_and_plain_files_are_separate_entries() {
        let mut x = key(1);
        x.executable = true;
        assert_ne!(key(1).file_name(), x.file_name());
    }
}
