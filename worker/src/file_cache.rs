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
//! build directory: its links keep the inode alive. Unpinned entries are
//! kept in eviction order, so each eviction costs O(log n) under the
//! lock, however large the cache.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use corral_proto::reapi::Digest;
use tokio::task::JoinSet;

use crate::cas_client::{self, CasClient};
use crate::confirmed::Confirmed;

/// Bytes of small files read in one round before they are written: what
/// a download holds in memory, twice (one round read while the last is
/// written). Small rounds overlap reading and writing best: a cold layout
/// of 10,000 files took 3.6x `cp -al` with 4 MiB, 4.1-4.4x with 8, 12
/// or 64 MiB (benches/materialize.rs, tmpfs).
const ROUND_BYTES: i64 = 4 << 20;
/// Blocking tasks writing one round of small files. Two: a creation
/// takes the directory's lock only to add the name, so writing files
/// proceeds on both cores.
const WRITERS: usize = 2;
/// Large files streamed from the CAS at once.
const PARALLEL_STREAMS: usize = 4;

/// `keys` in runs of at most [`ROUND_BYTES`] (or one key, if larger).
fn rounds(keys: Vec<Key>) -> Vec<Vec<Key>> {
    let mut rounds = Vec::new();
    let mut round = Vec::new();
    let mut bytes = 0;
    for key in keys {
        if !round.is_empty() && bytes + key.size > ROUND_BYTES {
            rounds.push(std::mem::take(&mut round));
            bytes = 0;
        }
        bytes += key.size;
        round.push(key);
    }
    if !round.is_empty() {
        rounds.push(round);
    }
    rounds
}

/// A temporary file in the cache directory, removed if the download
/// writing it is dropped midway.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

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
    #[error("a task writing cache files failed")]
    WriteTask(#[source] tokio::task::JoinError),
    /// Writing a cache file found no space left (ENOSPC) or the quota
    /// used up (EDQUOT), even after evicting what could be: said first,
    /// since it is what the operator acts on.
    #[error("the disk of the file cache {dir} is full")]
    Full {
        dir: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

/// Whether `err` says the disk is full (ENOSPC) or a quota is used up
/// (EDQUOT).
pub fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl Error {
    /// Whether writing a cache file failed because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Full { .. } => true,
            Error::Write { source, .. } | Error::Fetch(cas_client::Error::WriteFile { source }) => {
                is_disk_full(source)
            }
            _ => false,
        }
    }
}

/// What a cache write that finds the disk full frees beyond its own
/// size, so the next few writes do not each find it full again.
const ROOM_SLACK_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    hash: String,
    size: i64,
    executable: bool,
}

impl Key {
    fn new(digest: &Digest, executable: bool) -> Key {
        Key {
            hash: digest.hash.clone(),
            size: digest.size_bytes,
            executable,
        }
    }

    fn file_name(&self) -> String {
        file_name(&self.hash, self.size, self.executable)
    }

    fn digest(&self) -> Digest {
        Digest {
            hash: self.hash.clone(),
            size_bytes: self.size,
        }
    }

    /// Read-only: an action can never change what the next one sees.
    fn mode(&self) -> u32 {
        if self.executable {
            0o555
        } else {
            0o444
        }
    }
}

fn file_name(hash: &str, size: i64, executable: bool) -> String {
    let kind = if executable { 'x' } else { 'r' };
    format!("{hash}-{size}-{kind}")
}

/// Sizes of the cached files by key, in order of last use; an entry is
/// pinned while an input root is linked from it, and not evicted then.
type State = corral_lru::Lru<Key, ()>;

/// The cache. One per worker, shared by its slots.
#[derive(Debug)]
pub struct FileCache {
    dir: PathBuf,
    max_size: u64,
    state: Mutex<State>,
    downloads: AtomicU64,
    next_temp: AtomicU64,
    /// Whether small files are written as anonymous files (`O_TMPFILE`)
    /// linked into place: see [`FileCache::insert_anonymous`].
    anonymous_temps: bool,
    /// Whether files are first tried at their cache name itself: see
    /// [`FileCache::insert_in_place`]. Always, but for tests of the
    /// other ways.
    in_place: bool,
    /// Which instance names storage showed the cached blobs to.
    confirmed: Confirmed,
    /// Every input laid out as a copy: see [`FileCache::copy_inputs`].
    copy_always: AtomicBool,
    /// Inputs copied because their cache file had all the links its file
    /// system allows.
    copies_at_link_limit: AtomicU64,
    /// Inputs copied because every input is.
    copies_unprotected: AtomicU64,
}

/// Why an input was laid out as a copy rather than a hardlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// The cache file has as many links as its file system allows
    /// (EMLINK: 65,000 on ext4, 65,535 on XFS v4).
    LinkLimit,
    /// The actions run as the worker's own uid, which owns the cache: a
    /// hardlinked input could be chmodded and rewritten.
    Unprotected,
}

impl CopyReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CopyReason::LinkLimit => "link_limit",
            CopyReason::Unprotected => "unprotected",
        }
    }
}

/// Files kept in the cache while an input root links them: not evicted
/// until this is dropped. Dropping it (also when the action is abandoned
/// midway) releases them and evicts what no longer fits.
#[derive(Debug)]
pub struct Pins {
    cache: Arc<FileCache>,
    keys: Vec<Key>,
}

impl Pins {
    fn new(cache: &Arc<FileCache>) -> Pins {
        Pins {
            cache: Arc::clone(cache),
            keys: Vec::new(),
        }
    }

    /// Takes over the pins of `other`.
    fn absorb(&mut self, mut other: Pins) {
        self.keys.append(&mut other.keys);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let evicted = {
            let mut state = self.cache.lock();
            for key in &self.keys {
                state.unpin(key);
            }
            self.cache.evict_locked(&mut state)
        };
        if evicted.is_empty() {
            return;
        }
        // Pins drop in async code (the end of a layout), and unlinking a
        // large file frees its blocks, which takes a while: a blocking
        // thread does it, nobody waits for it.
        crate::clean_up_detached(move || remove_evicted(evicted));
    }
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
        let anonymous_temps = match anonymous_temps_work(&dir) {
            Ok(()) => true,
            Err(error) => {
                tracing::info!(dir = %dir.display(), %error, "no anonymous temporary files here (O_TMPFILE and /proc): cache files are written under temporary names");
                false
            }
        };
        Ok(FileCache {
            dir,
            anonymous_temps,
            in_place: true,
            max_size,
            state: Mutex::new(State::new(max_size)),
            downloads: AtomicU64::new(0),
            next_temp: AtomicU64::new(0),
            confirmed: Confirmed::default(),
            copy_always: AtomicBool::new(false),
            copies_at_link_limit: AtomicU64::new(0),
            copies_unprotected: AtomicU64::new(0),
        })
    }

    /// Lays every input out as a copy from now on: for a worker whose
    /// actions run as its own uid (no root, no subordinate ids), which
    /// owns the cache files and so could chmod and rewrite a hardlinked
    /// one, changing what every later action gets. Copies are reflinks
    /// where the file system has them (`copy_file_range` clones on btrfs
    /// and XFS), full copies elsewhere.
    pub fn copy_inputs(&self) {
        self.copy_always.store(true, Ordering::Relaxed);
    }

    /// Inputs laid out as copies since the cache opened, for `reason`.
    pub fn copies(&self, reason: CopyReason) -> u64 {
        match reason {
            CopyReason::LinkLimit => &self.copies_at_link_limit,
            CopyReason::Unprotected => &self.copies_unprotected,
        }
        .load(Ordering::Relaxed)
    }

    /// Puts the cache file of `digest` (pinned) at `to`: a hardlink, or a
    /// copy when inputs are copied or the file has all the links its file
    /// system allows (a popular input in many input roots at once).
    /// Blocking.
    pub fn place(&self, digest: &Digest, executable: bool, to: &Path) -> std::io::Result<()> {
        self.place_with(digest, executable, to, |from, to| {
            std::fs::hard_link(from, to)
        })
    }

    /// [`place`](Self::place) with `link` for the hardlink, so a test can
    /// make it fail.
    fn place_with(
        &self,
        digest: &Digest,
        executable: bool,
        to: &Path,
        link: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let from = self.path(digest, executable);
        let reason = if self.copy_always.load(Ordering::Relaxed) {
            CopyReason::Unprotected
        } else {
            match link(&from, to) {
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) => CopyReason::LinkLimit,
                other => return other,
            }
        };
        match copy_read_only(&from, to) {
            // A copy takes space a link does not: on a full disk, room is
            // made from unpinned files, as for a download.
            Err(e) if is_disk_full(&e) => {
                let size = u64::try_from(digest.size_bytes).unwrap_or(0);
                if !self.make_room(size) {
                    return Err(e);
                }
                copy_read_only(&from, to)?;
            }
            other => other?,
        }
        match reason {
            CopyReason::LinkLimit => &self.copies_at_link_limit,
            CopyReason::Unprotected => &self.copies_unprotected,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes and files in the cache now.
    pub fn usage(&self) -> (u64, usize) {
        let state = self.lock();
        (state.total_bytes(), state.len())
    }

    /// Which instance names storage showed which cached blobs to: for the
    /// directory cache too, which is keyed by digest alike.
    pub fn confirmed(&self) -> &Confirmed {
        &self.confirmed
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

    /// The cache file holding `digest` with that executable bit, to link
    /// from while it is pinned.
    pub fn path(&self, digest: &Digest, executable: bool) -> PathBuf {
        self.dir
            .join(file_name(&digest.hash, digest.size_bytes, executable))
    }

    /// Pins every file of `files` (digest, executable bit), downloading
    /// the ones the cache lacks, in batches. Each is at its
    /// [`path`](Self::path) until the returned pins are dropped.
    pub async fn pin_all(
        self: &Arc<Self>,
        cas: &CasClient,
        files: &[(&Digest, bool)],
    ) -> Result<Pins, Error> {
        let mut pins = Pins::new(self);
        let mut missing = Vec::new();
        {
            let mut seen = HashSet::with_capacity(files.len());
            let mut state = self.lock();
            for &(digest, executable) in files {
                // A file at many places of a root is pinned once.
                if !seen.insert((digest.hash.as_str(), digest.size_bytes, executable)) {
                    continue;
                }
                let key = Key::new(digest, executable);
                if state.pin(&key) {
                    pins.keys.push(key);
                } else {
                    missing.push(key);
                }
            }
        }
        // A hit counts only if storage would serve the blob under this
        // instance name (crate::confirmed); the pins taken so far drop
        // with the error.
        let hits: Vec<Digest> = pins.keys.iter().map(Key::digest).collect();
        self.confirmed.check(cas, &hits).await?;
        if !missing.is_empty() {
            let fetched: Vec<Digest> = missing.iter().map(Key::digest).collect();
            pins.absorb(self.fetch(cas, missing).await?);
            self.confirmed.confirm(cas.instance(), &fetched);
        }
        Ok(pins)
    }

    /// Downloads `missing` into the cache, pinned, holding little in
    /// memory whatever the input root's size: small files in rounds of
    /// [`ROUND_BYTES`], each written on blocking threads while the next
    /// is read; large ones streamed from ByteStream straight into their
    /// files, [`PARALLEL_STREAMS`] at a time. [`WRITERS`] writer threads
    /// per round: with named temporary files, creates and renames in one
    /// directory serialized on its lock and more writers were no faster;
    /// anonymous files take it only to link (benches/materialize.rs).
    async fn fetch(self: &Arc<Self>, cas: &CasClient, missing: Vec<Key>) -> Result<Pins, Error> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let (large, small): (Vec<Key>, Vec<Key>) = missing
            .into_iter()
            .partition(|k| k.size > cas_client::BATCH_BLOB_MAX_BYTES);
        let streamed = futures_util::stream::iter(large)
            .map(|key| self.stream_in(cas, key))
            .buffer_unordered(PARALLEL_STREAMS)
            .try_fold(Pins::new(self), |mut pins, more| async move {
                pins.absorb(more);
                Ok(pins)
            });
        let (batched, streamed) =
            futures_util::future::try_join(self.fetch_small(cas, small), streamed).await?;
        let mut pins = batched;
        pins.absorb(streamed);
        Ok(pins)
    }

    /// Small files, a round at a time: the next round is read while the
    /// last one is written.
    async fn fetch_small(self: &Arc<Self>, cas: &CasClient, keys: Vec<Key>) -> Result<Pins, Error> {
        let mut pins = Pins::new(self);
        let mut writer = JoinSet::new();
        for round in rounds(keys) {
            let digests: Vec<Digest> = round.iter().map(Key::digest).collect();
            let blobs = cas.read_many(&digests).await?;
            // Joined before the next write, and before returning, so
            // nothing is still writing; if this future is dropped first,
            // the writer's pins drop with its result.
            while let Some(joined) = writer.join_next().await {
                pins.absorb(joined.map_err(Error::WriteTask)??);
            }
            let blobs = Arc::new(blobs);
            let per_writer = round.len().div_ceil(WRITERS).max(1);
            let mut round = round.into_iter();
            loop {
                let keys: Vec<Key> = round.by_ref().take(per_writer).collect();
                if keys.is_empty() {
                    break;
                }
                let (cache, blobs) = (Arc::clone(self), Arc::clone(&blobs));
                writer.spawn_blocking(move || cache.write_all(&blobs, keys));
            }
        }
        while let Some(joined) = writer.join_next().await {
            pins.absorb(joined.map_err(Error::WriteTask)??);
        }
        Ok(pins)
    }

    /// Streams one large file from the CAS into a temporary file, then
    /// into the cache, pinned once. On a full disk it makes room and
    /// streams once more.
    async fn stream_in(self: &Arc<Self>, cas: &CasClient, key: Key) -> Result<Pins, Error> {
        match self.stream_in_once(cas, key.clone()).await {
            Err(err) if err.is_disk_full() => {
                let cache = Arc::clone(self);
                let bytes = u64::try_from(key.size).unwrap_or(0);
                let made = tokio::task::spawn_blocking(move || cache.make_room(bytes))
                    .await
                    .map_err(Error::WriteTask)?;
                if !made {
                    return Err(self.full(err));
                }
                self.stream_in_once(cas, key)
                    .await
                    .map_err(|err| self.full(err))
            }
            other => other,
        }
    }

    /// One attempt of [`stream_in`](Self::stream_in); its temporary file
    /// goes with a failure.
    async fn stream_in_once(self: &Arc<Self>, cas: &CasClient, key: Key) -> Result<Pins, Error> {
        let temp = TempFile(self.temp_path("tmp"));
        let write = |source| Error::Write {
            path: temp.0.clone(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(key.mode())
            .open(&temp.0)
            .await
            .map_err(write)?;
        cas.read_into(&key.digest(), &mut file).await?;
        // The explicit chmod makes the mode independent of the umask.
        file.set_permissions(std::fs::Permissions::from_mode(key.mode()))
            .await
            .map_err(write)?;
        drop(file);
        let cache = Arc::clone(self);
        // The pin travels in the task's result: if this future is dropped
        // while the task runs, the result, and so the pin, drops with it.
        let commit = tokio::task::spawn_blocking(move || {
            cache.commit(&key, &temp.0, Ok(()))?;
            let mut pins = Pins::new(&cache);
            pins.keys.push(key);
            Ok(pins)
        });
        commit.await.map_err(Error::WriteTask)?
    }

    /// Writes `keys` from `blobs` into the cache; blocking.
    fn write_all(
        self: &Arc<Self>,
        blobs: &HashMap<String, Vec<u8>>,
        keys: Vec<Key>,
    ) -> Result<Pins, Error> {
        let mut pins = Pins::new(self);
        for key in keys {
            let Some(data) = blobs.get(&key.hash) else {
                return Err(Error::Fetch(cas_client::Error::Missing {
                    digest: key.digest(),
                }));
            };
            self.insert(&key, data)?;
            pins.keys.push(key);
        }
        Ok(pins)
    }

    /// Writes one file into the cache, at its cache name or (if that is
    /// taken) through a temporary file; its entry is recorded only once it
    /// is whole, so a half-written file is never linked. The entry is
    /// pinned once. On a full disk it makes room and tries once more.
    /// Blocking.
    fn insert(&self, key: &Key, data: &[u8]) -> Result<(), Error> {
        match self.insert_once(key, data) {
            Err(err) if err.is_disk_full() && self.make_room(data.len() as u64) => {
                self.insert_once(key, data).map_err(|err| self.full(err))
            }
            other => other.map_err(|err| self.full(err)),
        }
    }

    /// `err`, said to be a full disk of the cache if it is one.
    fn full(&self, err: Error) -> Error {
        if err.is_disk_full() && !matches!(err, Error::Full { .. }) {
            Error::Full {
                dir: self.dir.clone(),
                source: Box::new(err),
            }
        } else {
            err
        }
    }

    /// Evicts least recently used unpinned entries until at least `bytes`
    /// (plus [`ROOM_SLACK_BYTES`]) are freed, for a write that found the
    /// disk full before the cache reached its bound: the disk is shared
    /// (build directories, other daemons) or smaller than the bound.
    /// Pinned entries stay: input roots link them now. Returns whether
    /// anything was evicted, i.e. whether trying again can help. Blocking:
    /// the files are removed before it returns, so the space is free.
    fn make_room(&self, bytes: u64) -> bool {
        let wanted = bytes.saturating_add(ROOM_SLACK_BYTES);
        let (evicted, held) = {
            let mut state = self.lock();
            let before = state.total_bytes();
            let evicted =
                self.evict_while(&mut state, |state| before - state.total_bytes() < wanted);
            (evicted, state.total_bytes())
        };
        if evicted.is_empty() {
            tracing::warn!(
                dir = %self.dir.display(),
                "the file cache's disk is full and no unpinned file is left to evict"
            );
            return false;
        }
        remove_evicted(evicted);
        tracing::warn!(
            dir = %self.dir.display(),
            held_bytes = held,
            max_size_bytes = self.max_size,
            "the file cache's disk filled before the cache reached its bound; evicted unpinned files to make room"
        );
        true
    }

    /// One attempt of [`insert`](Self::insert).
    fn insert_once(&self, key: &Key, data: &[u8]) -> Result<(), Error> {
        if self.in_place && self.insert_in_place(key, data)? {
            return Ok(());
        }
        if self.anonymous_temps {
            return self.insert_anonymous(key, data);
        }
        let temp = self.temp_path("tmp");
        let mode = key.mode();
        let written = (|| {
            // Created read-only: the open descriptor may still write. The
            // explicit chmod makes the mode independent of the umask.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp)?;
            file.write_all(data)?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
        })();
        self.commit(key, &temp, written)
    }

    /// [`insert_once`](Self::insert_once) at the cache name itself: one
    /// creation, no temporary file and no link or rename (a cold input
    /// root writes thousands of cache files; an anonymous file and its
    /// link cost 1.4-1.7x a creation in place on tmpfs,
    /// docs/benchmarks.md). The name holds a partial file while it is
    /// written, which is safe here: nothing links from a cache name
    /// before its entry is recorded, which happens once the file is
    /// whole; eviction renames only recorded entries; and the cache is
    /// emptied at every start, so a crash mid-write leaves nothing the
    /// next run reads. Returns false, having done nothing, if the name is
    /// taken (another slot writing or holding the file, or a file no
    /// entry counts): the caller's other ways sort those out.
    fn insert_in_place(&self, key: &Key, data: &[u8]) -> Result<bool, Error> {
        let path = self.dir.join(key.file_name());
        let write = |source| Error::Write {
            path: path.clone(),
            source,
        };
        let mode = key.mode();
        // Created read-only: the open descriptor may still write.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => return Err(write(source)),
        };
        // The explicit chmod makes the mode independent of the umask.
        let written = file
            .write_all(data)
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)));
        drop(file);
        let size = u64::try_from(key.size).unwrap_or(0);
        let mut state = self.lock();
        if let Err(source) = written {
            // Removed under the lock, and only if no entry counts the
            // name: another slot may have renamed its whole copy over
            // this partial one meanwhile (`insert_anonymous`, `commit`).
            if !state.contains(key) {
                let _ = std::fs::remove_file(&path);
            }
            return Err(write(source));
        }
        self.downloads.fetch_add(1, Ordering::Relaxed);
        if state.pin(key) {
            // Another slot's whole copy replaced this one meanwhile: the
            // same bytes, recorded by that slot.
            return Ok(true);
        }
        state.insert_pinned(key.clone(), (), size);
        Ok(true)
    }

    /// [`insert_once`](Self::insert_once) through an anonymous file
    /// (`O_TMPFILE`): written and given its mode with no name, then linked
    /// to its cache name. One creation and one link where a named
    /// temporary file costs a creation and a rename, and nothing to remove
    /// on failure: an anonymous file goes with its descriptor.
    fn insert_anonymous(&self, key: &Key, data: &[u8]) -> Result<(), Error> {
        let path = self.dir.join(key.file_name());
        let write = |source| Error::Write {
            path: path.clone(),
            source,
        };
        let mode = key.mode();
        let mut file = new_anonymous(&self.dir).map_err(write)?;
        file.write_all(data).map_err(write)?;
        // Read-only once written; the descriptor still writes. The
        // explicit chmod makes the mode independent of the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(write)?;
        let size = u64::try_from(key.size).unwrap_or(0);
        // Linked under the lock, as `commit` renames under it.
        let mut state = self.lock();
        match link_anonymous(&file, &path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                self.downloads.fetch_add(1, Ordering::Relaxed);
                if state.pin(key) {
                    // Another slot fetched it meanwhile: the same bytes.
                    return Ok(());
                }
                // A file at the cache name that no entry counts: replaced
                // at once by a rename, as `commit` does.
                let staged = self.temp_path("tmp");
                link_anonymous(&file, &staged).map_err(write)?;
                if let Err(source) = std::fs::rename(&staged, &path) {
                    let _ = std::fs::remove_file(&staged);
                    return Err(write(source));
                }
                state.insert_pinned(key.clone(), (), size);
                return Ok(());
            }
            Err(source) => return Err(write(source)),
        }
        self.downloads.fetch_add(1, Ordering::Relaxed);
        if state.pin(key) {
            // Its entry outlived a file removed behind the cache's back.
            return Ok(());
        }
        state.insert_pinned(key.clone(), (), size);
        Ok(())
    }

    /// Moves the file written at `temp` with its final mode (if `written`
    /// says it was) to its cache name and records the entry, pinned once; removes `temp` on
    /// failure. Blocking.
    fn commit(&self, key: &Key, temp: &Path, written: std::io::Result<()>) -> Result<(), Error> {
        let path = self.dir.join(key.file_name());
        let size = u64::try_from(key.size).unwrap_or(0);
        let mut state = self.lock();
        // Renamed under the lock: eviction moves files away from their
        // cache names under it too, so it cannot take this new file
        // between the rename and the entry being recorded (when another
        // slot fetched the same file and its entry is being evicted).
        if let Err(source) = written.and_then(|()| std::fs::rename(temp, &path)) {
            // Nothing else knows the temporary name.
            let _ = std::fs::remove_file(temp);
            return Err(Error::Write { path, source });
        }
        self.downloads.fetch_add(1, Ordering::Relaxed);
        if state.pin(key) {
            // Another slot fetched it meanwhile; the rename replaced its
            // file with identical bytes, and its links keep the old inode.
            return Ok(());
        }
        state.insert_pinned(key.clone(), (), size);
        Ok(())
    }

    /// A name in the cache directory no other file has: the counter is
    /// the cache's own, and the directory is emptied when it opens.
    fn temp_path(&self, prefix: &str) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{prefix}-{n}"))
    }

    /// Removes least recently used, unpinned entries until the cache fits.
    #[cfg(test)]
    fn evict(&self) {
        let evicted = self.evict_locked(&mut self.lock());
        remove_evicted(evicted);
    }

    /// Takes least recently used, unpinned entries out of `state` until
    /// the cache fits, and moves their files to unique names; returns
    /// those, to be removed once the lock is released. The move happens
    /// under the lock: `insert` renames a new file to its cache name under
    /// it, so a file removed later by its cache name could be one a slot
    /// fetched again meanwhile, and linked from while pinned. A rename in
    /// one directory is a metadata update; the unlink, which frees the
    /// file's blocks, is what waits for the lock to be released.
    fn evict_locked(&self, state: &mut State) -> Vec<PathBuf> {
        self.evict_while(state, |state| state.total_bytes() > self.max_size)
    }

    /// Takes least recently used, unpinned entries out of `state` while
    /// `more` says so, as [`evict_locked`](Self::evict_locked) does.
    fn evict_while(&self, state: &mut State, mut more: impl FnMut(&State) -> bool) -> Vec<PathBuf> {
        let mut evicted = Vec::new();
        while more(state) {
            let Some((key, (), _)) = state.pop_oldest() else {
                break;
            };
            let path = self.dir.join(key.file_name());
            let doomed = self.temp_path("evicted");
            match std::fs::rename(&path, &doomed) {
                Ok(()) => evicted.push(doomed),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "evicting a cache file failed");
                }
            }
        }
        evicted
    }

    /// Entries pinned now: linked from by an input root being laid out.
    pub fn pinned(&self) -> usize {
        self.lock().pinned()
    }

    /// The directory holding the cache files.
    pub fn directory(&self) -> &Path {
        &self.dir
    }
}

/// A new anonymous file in `dir` (`O_TMPFILE`), open for writing: it has
/// no name until [`link_anonymous`] gives it one. Created read-only; the
/// descriptor writes anyway.
fn new_anonymous(dir: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::RUSR,
    )?;
    Ok(std::fs::File::from(fd))
}

/// Gives the anonymous `file` the name `to`, which must not exist. Through
/// `/proc/self/fd`: linking the descriptor itself (`AT_EMPTY_PATH`) needs
/// CAP_DAC_READ_SEARCH.
fn link_anonymous(file: &std::fs::File, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        from.as_str(),
        rustix::fs::CWD,
        to,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )?;
    Ok(())
}

/// Whether anonymous files can be made and linked in `dir` (the file
/// system has `O_TMPFILE`, `/proc` is mounted): tried once at open, with
/// a name no entry or temporary file uses.
fn anonymous_temps_work(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join("probe");
    let file = new_anonymous(dir)?;
    link_anonymous(&file, &probe)?;
    std::fs::remove_file(&probe)
}

/// Copies `from` to the new file `to` with `from`'s mode (0444 or 0555),
/// removing a partial copy on failure. `std::fs::copy` uses
/// `copy_file_range`, which clones (reflinks) where the file system can.
fn copy_read_only(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to).map(drop).inspect_err(|_| {
        let _ = std::fs::remove_file(to);
    })
}

/// Removes the files [`FileCache::evict_locked`] moved away; no lock
/// held.
fn remove_evicted(evicted: Vec<PathBuf>) {
    for path in evicted {
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "removing an evicted cache file failed");
        }
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
    fn small_files_are_fetched_in_rounds_of_bounded_bytes() {
        let sized = |size| Key { size, ..key(0) };
        let quarter = ROUND_BYTES / 4;
        let keys = vec![
            sized(quarter),
            sized(quarter),
            sized(quarter),
            sized(quarter),
            sized(1),
            sized(ROUND_BYTES * 2),
            sized(1),
        ];
        let sizes: Vec<Vec<i64>> = rounds(keys)
            .into_iter()
            .map(|r| r.iter().map(|k| k.size).collect())
            .collect();
        assert_eq!(
            sizes,
            [vec![quarter; 4], vec![1], vec![ROUND_BYTES * 2], vec![1]]
        );
        assert!(rounds(Vec::new()).is_empty());
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
            // 0 stays pinned: 1 is the oldest evictable one.
            state.unpin(&key(1));
            state.unpin(&key(2));
        }
        cache.evict();
        let state = cache.lock();
        assert!(state.contains(&key(0)));
        assert!(!state.contains(&key(1)));
        assert!(state.contains(&key(2)));
        assert_eq!(state.total_bytes(), 20);
        assert!(!cache.directory().join(key(1).file_name()).exists());
    }

    /// Files in the cache directory, by name, sorted.
    fn files_in(cache: &FileCache) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(cache.directory())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn names(keys: &[u8]) -> Vec<String> {
        let mut names: Vec<String> = keys.iter().map(|&n| key(n).file_name()).collect();
        names.sort();
        names
    }

    #[test]
    fn eviction_takes_the_least_recently_used_and_passes_pinned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(FileCache::open(dir.path().join("cache"), 30).unwrap());
        // Used in the order 0..6; 1 and 4 stay pinned, then 0 is used
        // again: 2, 3, 5, 0 from least to most recently used.
        for n in 0..6 {
            cache.insert(&key(n), &[n; 10]).unwrap();
        }
        {
            let mut state = cache.lock();
            for n in [0, 2, 3, 5] {
                state.unpin(&key(n));
            }
            assert!(state.pin(&key(0)));
        }
        assert_eq!(cache.pinned(), 3);
        // Releasing 0 evicts down to 30 bytes: three of the four
        // unpinned entries, least recently used first.
        drop(Pins {
            cache: Arc::clone(&cache),
            keys: vec![key(0)],
        });
        assert_eq!(
            files_in(&cache),
            names(&[0, 1, 4]),
            "moved-away files removed"
        );
        assert_eq!(cache.lock().total_bytes(), 30);
        assert_eq!(cache.pinned(), 2);

        // A new entry past the bound: the least recently used of the
        // others goes, 1, pinned until now though used before 0 and 4.
        cache.insert(&key(6), &[6; 10]).unwrap();
        drop(Pins {
            cache: Arc::clone(&cache),
            keys: vec![key(1), key(4), key(6)],
        });
        assert_eq!(files_in(&cache), names(&[0, 4, 6]));
        assert_eq!(cache.pinned(), 0);

        // Every entry unpinned again, in eviction order: by last use,
        // not by release.
        let state = cache.lock();
        let order: Vec<&Key> = state.eviction_order().collect();
        assert_eq!(order, [&key(4), &key(0), &key(6)]);
        assert_eq!(state.len(), 3);
    }

    #[test]
    fn a_file_fetched_again_while_its_evicted_copy_awaits_removal_stays() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path().join("cache"), 10).unwrap();
        cache.insert(&key(0), &[0; 10]).unwrap();
        cache.lock().unpin(&key(0));
        cache.insert(&key(1), &[1; 10]).unwrap();
        // 0 is evicted; its file is removed only after the lock is let go.
        let evicted = cache.evict_locked(&mut cache.lock());
        assert_eq!(evicted.len(), 1);
        assert!(!cache.lock().contains(&key(0)));
        // Meanwhile another slot fetches 0 again, and pins it.
        cache.insert(&key(0), &[0; 10]).unwrap();
        remove_evicted(evicted);
        let path = cache.directory().join(key(0).file_name());
        assert_eq!(std::fs::read(&path).unwrap(), [0; 10], "the new file stays");
        assert_eq!(files_in(&cache), names(&[0, 1]));
        assert_eq!(cache.pinned(), 2);
    }

    /// Every way of writing a cache file: at its name (the default), and
    /// where that name is taken, anonymous (where the file system has
    /// O_TMPFILE) or under a temporary name; each alone.
    fn caches(dir: &Path, max_size: u64) -> Vec<FileCache> {
        let in_place = FileCache::open(dir.join("in-place"), max_size).unwrap();
        let mut anonymous = FileCache::open(dir.join("anonymous"), max_size).unwrap();
        if std::env::var_os("CI").is_some() {
            assert!(anonymous.anonymous_temps, "O_TMPFILE is expected under CI");
        }
        anonymous.in_place = false;
        let mut named = FileCache::open(dir.join("named"), max_size).unwrap();
        named.anonymous_temps = false;
        named.in_place = false;
        vec![in_place, anonymous, named]
    }

    #[test]
    fn a_written_file_is_whole_read_only_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        for cache in caches(dir.path(), 1 << 20) {
            let exe = Key {
                executable: true,
                ..key(1)
            };
            cache.insert(&key(0), &[7; 10]).unwrap();
            cache.insert(&exe, &[8; 10]).unwrap();
            // Another slot wrote the same file meanwhile: same bytes, one
            // entry, pinned twice.
            cache.insert(&key(0), &[7; 10]).unwrap();
            let path = cache.directory().join(key(0).file_name());
            assert_eq!(std::fs::read(&path).unwrap(), [7; 10]);
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o444);
            assert_eq!(mode(&cache.directory().join(exe.file_name())), 0o555);
            let mut expected = vec![key(0).file_name(), exe.file_name()];
            expected.sort();
            assert_eq!(files_in(&cache), expected, "no temporary file is left");
            assert_eq!(cache.usage(), (20, 2));
            assert_eq!(cache.downloads(), 3);
        }
    }

    #[test]
    fn a_file_at_a_cache_name_no_entry_counts_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        for cache in caches(dir.path(), 1 << 20) {
            let path = cache.directory().join(key(0).file_name());
            std::fs::write(&path, b"stale file").unwrap();
            cache.insert(&key(0), &[0; 10]).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), [0; 10]);
            assert_eq!(files_in(&cache), names(&[0]));
            assert_eq!(cache.pinned(), 1);
        }
    }

    #[test]
    fn a_file_at_its_link_limit_is_copied_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path().join("cache"), 1 << 20).unwrap();
        cache.insert(&key(3), &[3; 10]).unwrap();
        let digest = key(3).digest();
        let at_limit = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(libc::EMLINK));
        let to = dir.path().join("copied");
        cache.place_with(&digest, false, &to, at_limit).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), [3; 10]);
        let (original, copy) = (
            std::fs::metadata(cache.path(&digest, false)).unwrap(),
            std::fs::metadata(&to).unwrap(),
        );
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(copy.ino(), original.ino(), "a copy, not a link");
        assert_eq!(copy.mode() & 0o777, 0o444, "read-only like the cache file");
        assert_eq!(original.nlink(), 1);
        assert_eq!(cache.copies(CopyReason::LinkLimit), 1);
        assert_eq!(cache.copies(CopyReason::Unprotected), 0);

        // Any other failure is the caller's to report.
        let denied = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(libc::EACCES));
        let err = cache
            .place_with(&digest, false, &dir.path().join("x"), denied)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        assert_eq!(cache.copies(CopyReason::LinkLimit), 1);

        // Otherwise a hardlink.
        let linked = dir.path().join("linked");
        cache.place(&digest, false, &linked).unwrap();
        assert_eq!(std::fs::metadata(&linked).unwrap().ino(), original.ino());

        // Copies for every input once the cache is unprotected.
        cache.copy_inputs();
        let copied = dir.path().join("unprotected");
        cache.place(&digest, false, &copied).unwrap();
        assert_ne!(std::fs::metadata(&copied).unwrap().ino(), original.ino());
        assert_eq!(cache.copies(CopyReason::Unprotected), 1);
    }

    #[test]
    fn laying_out_past_ext4s_link_limit_copies_instead_of_failing() {
        use std::os::unix::fs::MetadataExt as _;
        if !corral_testkit::is_root() {
            corral_testkit::skip(
                "laying_out_past_ext4s_link_limit_copies_instead_of_failing",
                "needs root to mount an ext4 image",
            );
            return;
        }
        // ext4 allows 65,000 links to a file: the cache's own name and
        // 64,999 more.
        let dir = tempfile::tempdir().unwrap();
        let (image, mnt) = (dir.path().join("ext4.img"), dir.path().join("mnt"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let status = std::process::Command::new(program)
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "{program} {args:?}");
        };
        run("mkfs.ext4", &["-q".as_ref(), image.as_os_str()]);
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mnt.as_os_str(),
            ],
        );
        let _mounted = corral_testkit::Mounted(mnt.clone());
        let cache = FileCache::open(mnt.join("cache"), 1 << 20).unwrap();
        cache.insert(&key(7), &[7; 10]).unwrap();
        let inputs = mnt.join("inputs");
        std::fs::create_dir(&inputs).unwrap();
        let digest = key(7).digest();
        for n in 0..65_010 {
            cache
                .place(&digest, false, &inputs.join(n.to_string()))
                .unwrap();
        }
        assert_eq!(cache.copies(CopyReason::LinkLimit), 11);
        let last = std::fs::metadata(inputs.join("65009")).unwrap();
        assert_eq!(last.nlink(), 1, "a copy");
        assert_eq!(std::fs::read(inputs.join("65009")).unwrap(), [7; 10]);
        assert_eq!(
            std::fs::metadata(cache.path(&digest, false))
                .unwrap()
                .nlink(),
            65_000
        );
    }

    fn mib_key(n: u8, mib: i64) -> Key {
        Key {
            hash: format!("{n:064}"),
            size: mib << 20,
            executable: false,
        }
    }

    #[test]
    fn a_full_cache_disk_fails_naming_the_cache_leaves_no_partial_file_and_recovers() {
        let Some(dir) = corral_testkit::Tmpfs::mount("a_full_cache_disk_fails", "8m") else {
            return;
        };
        let cache = FileCache::open(dir.path().join("cache"), 1 << 30).unwrap();
        // Something else on the disk (a build directory) leaves it 1 MiB.
        let filler = dir.path().join("filler");
        std::fs::write(&filler, vec![0; 7 << 20]).unwrap();
        // Held open meanwhile, as a child another test thread forks holds
        // every descriptor of this process until its exec: removing the
        // filler must free its space anyway (this once failed under load).
        let _held = std::fs::File::open(&filler).unwrap();
        let big = mib_key(1, 2);
        let err = cache.insert(&big, &[1; 2 << 20]).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(
            err.to_string().contains(&format!(
                "the disk of the file cache {} is full",
                cache.directory().display()
            )),
            "{err}"
        );
        assert!(files_in(&cache).is_empty(), "no partial cache file is left");
        assert_eq!(cache.usage(), (0, 0));

        // Space returns: the same file goes in.
        corral_testkit::remove_freeing_space(&filler);
        cache.insert(&big, &[1; 2 << 20]).unwrap();
        assert_eq!(
            std::fs::read(cache.path(&big.digest(), false)).unwrap(),
            [1; 2 << 20]
        );
        assert_eq!(cache.usage(), (2 << 20, 1));
    }

    #[test]
    fn a_copied_input_on_a_full_disk_makes_room_from_unpinned_files() {
        let Some(dir) = corral_testkit::Tmpfs::mount("a_copied_input_on_a_full_disk", "8m") else {
            return;
        };
        let cache = FileCache::open(dir.path().join("cache"), 1 << 30).unwrap();
        cache.copy_inputs();
        // 2 MiB to copy, pinned; 5 MiB of unpinned files fill the rest.
        let input = mib_key(0, 2);
        cache.insert(&input, &[0; 2 << 20]).unwrap();
        for n in 1..6 {
            cache.insert(&mib_key(n, 1), &[n; 1 << 20]).unwrap();
            cache.lock().unpin(&mib_key(n, 1));
        }
        let to = dir.path().join("copied");
        cache.place(&input.digest(), false, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), [0; 2 << 20]);
        assert!(cache.lock().contains(&input), "pinned files stay");
        assert!(cache.usage().0 < 7 << 20, "unpinned files made room");
    }

    #[test]
    fn a_cache_disk_smaller_than_the_bound_evicts_unpinned_files_to_make_room() {
        let Some(dir) = corral_testkit::Tmpfs::mount("a_cache_disk_smaller_than_the_bound", "8m")
        else {
            return;
        };
        let cache = FileCache::open(dir.path().join("cache"), 1 << 30).unwrap();
        // 0 stays pinned, as if linked into a running action's input root.
        cache.insert(&mib_key(0, 1), &[0; 1 << 20]).unwrap();
        for n in 1..12 {
            cache.insert(&mib_key(n, 1), &[n; 1 << 20]).unwrap();
            cache.lock().unpin(&mib_key(n, 1));
        }
        let held: u64 = files_in(&cache)
            .iter()
            .map(|name| {
                std::fs::metadata(cache.directory().join(name))
                    .unwrap()
                    .len()
            })
            .sum();
        let (bytes, files) = cache.usage();
        assert_eq!(bytes, held, "the cache counts what it holds");
        assert_eq!(files, files_in(&cache).len(), "no temporary file is left");
        assert!(bytes <= 8 << 20);
        let state = cache.lock();
        assert!(state.contains(&mib_key(0, 1)), "pinned files stay");
        assert!(state.contains(&mib_key(11, 1)));
        assert!(!state.contains(&mib_key(1, 1)), "the oldest went first");
    }

    #[test]
    fn executables_and_plain_files_are_separate_entries() {
        let mut x = key(1);
        x.executable = true;
        assert_ne!(key(1).file_name(), x.file_name());
    }
}
