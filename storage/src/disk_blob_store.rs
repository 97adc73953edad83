//! `DiskBlobStore`: the default backend, a directory of content-addressed
//! files.
//!
//! ```text
//! <dir>/cas/<function>/<first 2 hex>/<hash>         a blob; its length is its size
//! <dir>/ac/<function>/<first 2 hex>/<hash>-<size>   an encoded ActionResult
//! <dir>/tmp/                                        writes in progress
//! ```
//!
//! A write goes to a fresh file in `tmp/` (same file system, so the final
//! rename is atomic), is checked against its digest, and only then renamed
//! into place: a reader sees a whole, verified blob or nothing. A whole
//! blob held in memory (a batch entry, an Action Cache entry) is checked
//! first, then written to an anonymous file (`O_TMPFILE` in `tmp/`) and
//! linked into place: the file has no name until it is whole, so a crash
//! leaves nothing, and the link saves the rename across directories. An
//! entry that must replace a file goes through a name in `tmp/` and a
//! rename. File systems without `O_TMPFILE` (or no `/proc`) get the named
//! path; the layout on disk is the same either way.
//!
//! Batches are read and written a few blocking tasks per batch (one per
//! core at most), each entry hashed on the task that handles it. The index
//! of what is held, and in which order it was used, lives in memory; it is
//! rebuilt at startup from a directory scan that reads names and metadata
//! but never contents, so startup costs one `stat` per blob. The initial
//! order is by modification time, the best record of use that survives a
//! restart.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use futures_util::stream;
use tempfile::TempPath;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::action_cache::ActionCache;
use crate::blob_store::{BlobStore, BlobStream, Error, READ_CHUNK_BYTES};
use crate::blob_write::BlobWrite;
use crate::digest::{Digest, DigestFunction, Verifier};
use crate::lru_index::{Key, LruIndex, Namespace};

/// Buffer between the network and the temporary file: 64 KiB messages
/// become 1 MiB writes, sixteen times fewer trips to the blocking pool.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Same for reads.
const READ_BUFFER_BYTES: usize = 1 << 20;
/// Fewest blobs of a batch worth a blocking task of their own: below it,
/// the trip to another thread costs more than the parallelism gains.
const BLOBS_PER_LANE_MIN: usize = 16;
/// What a write that finds the disk full frees beyond its own size, so
/// the next few writes do not each find it full again.
const ROOM_SLACK_BYTES: u64 = 1 << 20;

/// A failed file-system step of the disk store.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("failed to create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to clear leftover uploads in {path}")]
    ClearTemp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to scan {path}")]
    Scan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to create a temporary file in {dir}")]
    CreateTemp {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to sync {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to rename {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to link a new file in as {to}")]
    Link {
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a blocking file operation in {dir} did not finish")]
    Join {
        dir: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A blocking task doing part of a batch did not finish; each of its
    /// blobs fails with the same cause.
    #[error("a blocking task of a batch in {dir} did not finish")]
    JoinBatch {
        dir: PathBuf,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
    /// A write step found no space left (ENOSPC) or its quota used up
    /// (EDQUOT): said first, since it is what the operator acts on.
    #[error("the disk of storage directory {dir} is full")]
    Full {
        dir: PathBuf,
        #[source]
        source: Box<DiskError>,
    },
}

impl DiskError {
    /// Whether the disk is full, which clients can act on (RESOURCE_EXHAUSTED)
    /// unlike other I/O failures.
    pub fn is_storage_full(&self) -> bool {
        let io = match self {
            DiskError::Full { .. } => return true,
            DiskError::Join { .. } | DiskError::JoinBatch { .. } => return false,
            DiskError::CreateDir { source, .. }
            | DiskError::ClearTemp { source, .. }
            | DiskError::Scan { source, .. }
            | DiskError::CreateTemp { source, .. }
            | DiskError::Write { source, .. }
            | DiskError::Sync { source, .. }
            | DiskError::Rename { source, .. }
            | DiskError::Link { source, .. }
            | DiskError::Open { source, .. }
            | DiskError::Read { source, .. } => source,
        };
        matches!(
            io.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }

    /// This error, said to be a full disk of `dir` if it is one.
    fn naming_full(self, dir: &Path) -> DiskError {
        if self.is_storage_full() && !matches!(self, DiskError::Full { .. }) {
            DiskError::Full {
                dir: dir.to_owned(),
                source: Box::new(self),
            }
        } else {
            self
        }
    }
}

/// Blobs in files under one directory. Cloning shares the same store.
#[derive(Clone)]
pub struct DiskBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tmp_dir: PathBuf,
    fsync: bool,
    /// Whether whole writes go to anonymous files (`O_TMPFILE`) linked
    /// into place: the file system supports it and `/proc` is mounted.
    anonymous_temps: bool,
    /// Names for anonymous files staged in `tmp/` before a rename that
    /// replaces an existing entry; unique within this run, and `tmp/` is
    /// emptied at open.
    next_staged: AtomicU64,
    index: Mutex<LruIndex<Key, ()>>,
}

impl DiskBlobStore {
    /// Opens (creating if needed) the store in `dir` and rebuilds its index.
    pub async fn open(dir: PathBuf, max_size_bytes: u64, fsync: bool) -> Result<Self, DiskError> {
        Self::open_with(dir, max_size_bytes, fsync, true).await
    }

    /// [`open`](Self::open), with anonymous temporary files only if
    /// `anonymous` (and the file system allows them): tests run the named
    /// path too.
    async fn open_with(
        dir: PathBuf,
        max_size_bytes: u64,
        fsync: bool,
        anonymous: bool,
    ) -> Result<Self, DiskError> {
        let join_dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            Self::open_blocking(dir, max_size_bytes, fsync, anonymous)
        })
        .await
        .map_err(|source| DiskError::Join {
            dir: join_dir,
            source,
        })?
    }

    fn open_blocking(
        dir: PathBuf,
        max_size_bytes: u64,
        fsync: bool,
        anonymous: bool,
    ) -> Result<Self, DiskError> {
        let tmp_dir = dir.join("tmp");
        // Uploads in progress when the process stopped cannot be resumed:
        // their clients are gone with the connection.
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(|source| DiskError::ClearTemp {
                path: tmp_dir.clone(),
                source,
            })?;
        }
        create_dir(&tmp_dir)?;
        let anonymous_temps = match anonymous_temps_work(&tmp_dir) {
            Ok(()) => anonymous,
            Err(error) => {
                tracing::info!(dir = %tmp_dir.display(), %error, "no anonymous temporary files here (O_TMPFILE and /proc): writes use named ones");
                false
            }
        };
        let inner = Inner {
            dir,
            tmp_dir,
            fsync,
            anonymous_temps,
            next_staged: AtomicU64::new(0),
            index: Mutex::new(LruIndex::new(max_size_bytes)),
        };
        let mut found = Vec::new();
        for namespace in [Namespace::Cas, Namespace::Ac] {
            for function in DigestFunction::ALL {
                for prefix in 0..=255u8 {
                    let shard = inner.shard_dir(namespace, function, &hex::encode([prefix]));
                    create_dir(&shard)?;
                    scan_shard(&shard, namespace, function, &mut found)?;
                }
            }
        }
        found.sort_by_key(|(modified, _, _)| *modified);
        let mut evicted = Vec::new();
        {
            let mut index = inner.lock();
            for (_, key, size) in found {
                evicted.extend(index.insert(key, (), size));
            }
            tracing::info!(
                dir = %inner.dir.display(),
                entries = index.len(),
                bytes = index.total_bytes(),
                "disk store opened"
            );
        }
        // The bound may have shrunk since the last run.
        for (key, ()) in evicted {
            inner.remove_file(&key);
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Total bytes held, as the index counts them.
    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().total_bytes()
    }

    /// Whether `digest` is stored, as the index counts it, without marking
    /// it used: for the membership index, which must not reorder eviction.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.inner.lock().contains(&Key::cas(*digest))
    }

    /// Where the file for a CAS blob lives; for tests that corrupt one.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.path(&Key::cas(*digest))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, DiskError> + Send + 'static,
    ) -> Result<T, DiskError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|source| DiskError::Join {
                dir: self.inner.dir.clone(),
                source,
            })?
    }

    fn check_fits(&self, digest: &Digest) -> Result<(), Error> {
        self.inner.check_fits(digest)
    }
}

impl DiskBlobStore {
    /// Runs `f` over `items` on the blocking pool, split into contiguous
    /// runs, one task per core at most (without fsync): a batch pays a
    /// few trips to the pool rather than one per blob, and its hashing
    /// uses every core.
    /// Results come back in the order of `items`.
    async fn in_lanes<I, T>(
        &self,
        items: Vec<I>,
        f: fn(&Inner, I) -> Result<T, Error>,
    ) -> Vec<Result<T, Error>>
    where
        I: Send + 'static,
        T: Send + 'static,
    {
        // With fsync on, each entry waits on the disk twice: many lanes
        // keep the disk's queue full, as one task per blob did before.
        let most = if self.inner.fsync {
            crate::blob_store::BATCH_CONCURRENCY
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        };
        let lanes = most.min(items.len().div_ceil(BLOBS_PER_LANE_MIN)).max(1);
        let per_lane = items.len().div_ceil(lanes).max(1);
        let mut items = items.into_iter();
        let mut tasks = Vec::with_capacity(lanes);
        loop {
            let run: Vec<I> = items.by_ref().take(per_lane).collect();
            if run.is_empty() {
                break;
            }
            let inner = Arc::clone(&self.inner);
            let len = run.len();
            let task = tokio::task::spawn_blocking(move || {
                run.into_iter()
                    .map(|item| f(&inner, item))
                    .collect::<Vec<_>>()
            });
            tasks.push((len, task));
        }
        let mut results = Vec::new();
        for (len, task) in tasks {
            match task.await {
                Ok(done) => results.extend(done),
                // A task that panicked fails each of its entries; the
                // other lanes' results stand.
                Err(err) => {
                    let source = Arc::new(err);
                    results.extend((0..len).map(|_| {
                        Err(DiskError::JoinBatch {
                            dir: self.inner.dir.clone(),
                            source: Arc::clone(&source),
                        }
                        .into())
                    }));
                }
            }
        }
        results
    }
}

/// A new anonymous file in `dir` (`O_TMPFILE`): it has no name until
/// [`link_anonymous`] gives it one, and a crash before that leaves
/// nothing behind. Mode 0600, as tempfile's named files.
fn new_anonymous(dir: &Path) -> io::Result<fs::File> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )?;
    Ok(fs::File::from(fd))
}

/// Gives the anonymous `file` the name `to`, which must not exist. Through
/// `/proc/self/fd`: linking the descriptor itself (`AT_EMPTY_PATH`) needs
/// CAP_DAC_READ_SEARCH.
fn link_anonymous(file: &fs::File, to: &Path) -> io::Result<()> {
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

/// Whether anonymous files can be made and linked in `tmp_dir`: tried
/// once at open, with a name no write uses.
fn anonymous_temps_work(tmp_dir: &Path) -> io::Result<()> {
    let probe = tmp_dir.join("probe");
    let file = new_anonymous(tmp_dir)?;
    link_anonymous(&file, &probe)?;
    fs::remove_file(&probe)
}

/// The first `size` bytes of the file at `path`, or `None` if it is
/// shorter. Open, one read, close: the size is known from the digest, so
/// neither a `stat` nor a read that finds the end is needed (`fs::read`
/// makes both), about a quarter less time for a small blob on tmpfs. A
/// longer file is not noticed here; the caller verifies what it returns
/// against the digest, so the bytes served are the blob either way.
fn read_sized(path: &Path, size: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut file = fs::File::open(path)?;
    let len = usize::try_from(size).map_err(io::Error::other)?;
    let mut data = vec![0; len];
    match file.read_exact(&mut data) {
        Ok(()) => Ok(Some(data)),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

fn create_dir(path: &Path) -> Result<(), DiskError> {
    fs::create_dir_all(path).map_err(|source| DiskError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// Adds to `found` every entry of one shard directory, from names and
/// metadata alone.
fn scan_shard(
    shard: &Path,
    namespace: Namespace,
    function: DigestFunction,
    found: &mut Vec<(SystemTime, Key, u64)>,
) -> Result<(), DiskError> {
    let scan_err = |source| DiskError::Scan {
        path: shard.to_owned(),
        source,
    };
    for entry in fs::read_dir(shard).map_err(scan_err)? {
        let entry = entry.map_err(scan_err)?;
        let metadata = match entry.metadata() {
            Ok(m) => m,
            // Removed between listing and stat: nothing to index.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(scan_err(err)),
        };
        let len = metadata.len();
        let name = entry.file_name();
        let digest = name.to_str().and_then(|name| match namespace {
            Namespace::Cas => Digest::parse(function, name, len as i64).ok(),
            Namespace::Ac => {
                let (hash, size) = name.split_once('-')?;
                Digest::parse(function, hash, size.parse().ok()?).ok()
            }
        });
        let Some(digest) = digest else {
            tracing::warn!(path = %entry.path().display(), "ignoring a file that names no digest");
            continue;
        };
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((modified, Key { namespace, digest }, len));
    }
    Ok(())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, LruIndex<Key, ()>> {
        // A panic while holding the lock leaves at worst a stale LRU order.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard_dir(&self, namespace: Namespace, function: DigestFunction, prefix: &str) -> PathBuf {
        let top = match namespace {
            Namespace::Cas => "cas",
            Namespace::Ac => "ac",
        };
        self.dir.join(top).join(function.name()).join(prefix)
    }

    fn path(&self, key: &Key) -> PathBuf {
        let hash = key.digest.hash_hex();
        let shard = self.shard_dir(key.namespace, key.digest.function(), &hash[..2]);
        match key.namespace {
            Namespace::Cas => shard.join(hash),
            Namespace::Ac => shard.join(format!("{hash}-{}", key.digest.size_bytes())),
        }
    }

    /// Makes a checked temporary file the entry for `key`, then evicts past
    /// the bound. Under the index lock, so that an eviction's unlink can
    /// never remove a file a concurrent write has just renamed into place.
    fn install(&self, key: Key, temp: TempPath, size: u64) -> Result<(), DiskError> {
        let to = self.path(&key);
        let index = self.lock();
        temp.persist(&to).map_err(|err| DiskError::Rename {
            from: err.path.to_path_buf(),
            to: to.clone(),
            source: err.error,
        })?;
        self.counted_in_place(index, key, &to, size)
    }

    /// The tail both ways of putting a file in place share, once the file
    /// is at `to`: counts it (evicting past the bound) under the index
    /// lock, then, with fsync on, syncs its directory. Counted as soon as
    /// the file is in place, even if the sync fails: a file held but not
    /// counted would be bytes the bound never sees. The lock is let go
    /// before the sync: it orders the index against unlinks, not against
    /// the disk, and other writes need not wait on this one's journal.
    fn counted_in_place(
        &self,
        mut index: MutexGuard<'_, LruIndex<Key, ()>>,
        key: Key,
        to: &Path,
        size: u64,
    ) -> Result<(), DiskError> {
        for (evicted, ()) in index.insert(key, (), size) {
            self.remove_file(&evicted);
        }
        drop(index);
        if self.fsync {
            // The rename or link is durable only once its directory is.
            if let Some(parent) = to.parent() {
                fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| DiskError::Sync {
                        path: parent.to_owned(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Evicts least recently used entries until at least `bytes` (plus
    /// [`ROOM_SLACK_BYTES`]) are freed, for a write that found the disk
    /// full before the store reached its bound: the disk is shared, or
    /// smaller than `max_size_bytes`. Returns whether anything was
    /// evicted, i.e. whether trying again can help.
    fn make_room(&self, bytes: u64) -> bool {
        let wanted = bytes.saturating_add(ROOM_SLACK_BYTES);
        let mut index = self.lock();
        let mut freed = 0;
        let mut evicted = 0;
        while freed < wanted {
            let Some((key, (), size)) = index.pop_oldest() else {
                break;
            };
            self.remove_file(&key);
            freed += size;
            evicted += 1;
        }
        if evicted == 0 {
            tracing::warn!(dir = %self.dir.display(), "the disk is full and the store holds nothing to evict");
            return false;
        }
        tracing::warn!(
            dir = %self.dir.display(),
            evicted,
            freed_bytes = freed,
            held_bytes = index.total_bytes(),
            max_size_bytes = index.max_bytes(),
            "the disk filled before the store reached max_size_bytes; evicted to make room"
        );
        true
    }

    /// `err`, named a full disk if it is one, after making room for
    /// `bytes` so that the client's retry can fit.
    fn fail_write(&self, err: DiskError, bytes: u64) -> DiskError {
        if err.is_storage_full() {
            self.make_room(bytes);
        }
        err.naming_full(&self.dir)
    }

    /// Removes an entry's file. A failure is only logged: the entry is
    /// already out of the index, so the file is unreachable, and the next
    /// startup scan counts it again.
    fn remove_file(&self, key: &Key) {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "failed to remove"),
        }
    }

    /// Drops an entry whose file turned out missing.
    fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Drops an entry whose file does not match its digest, and the file.
    fn remove_corrupt(&self, key: &Key) {
        let mut index = self.lock();
        index.remove(key);
        tracing::warn!(digest = %key.digest, "removing a blob found corrupt on disk");
        self.remove_file(key);
    }

    fn check_fits(&self, digest: &Digest) -> Result<(), Error> {
        let max_size_bytes = self.lock().max_bytes();
        if digest.size_bytes() > max_size_bytes {
            return Err(Error::TooLarge {
                digest: *digest,
                max_size_bytes,
            });
        }
        Ok(())
    }

    /// A whole blob the index holds, read and checked against its digest;
    /// `None` if its file is gone or corrupt (then removed). Blocking.
    fn read_whole(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if digest.is_empty_blob() {
            return Ok(Some(Vec::new()));
        }
        let key = Key::cas(*digest);
        let path = self.path(&key);
        let data = match read_sized(&path, digest.size_bytes()) {
            Ok(Some(data)) => data,
            Ok(None) => {
                // Shorter than its digest says: not the blob any more.
                self.remove_corrupt(&key);
                return Ok(None);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.forget(&key);
                return Ok(None);
            }
            Err(source) => return Err(DiskError::Read { path, source }.into()),
        };
        let mut verifier = Verifier::new(*digest);
        if verifier
            .update(&data)
            .and_then(|()| verifier.finish())
            .is_err()
        {
            self.remove_corrupt(&key);
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Writes a whole entry held in memory and installs it, in one trip
    /// to the blocking pool: the fast path for small blobs and AC entries.
    /// On a full disk it makes room and tries once more: the write is in
    /// memory, so the client need not send it again.
    fn write_whole(&self, key: Key, data: &[u8]) -> Result<(), DiskError> {
        match self.try_write_whole(key, data) {
            Err(err) if err.is_storage_full() && self.make_room(data.len() as u64) => self
                .try_write_whole(key, data)
                .map_err(|err| err.naming_full(&self.dir)),
            other => other.map_err(|err| err.naming_full(&self.dir)),
        }
    }

    /// One attempt of [`write_whole`](Self::write_whole); the temporary
    /// file goes with a failure.
    fn try_write_whole(&self, key: Key, data: &[u8]) -> Result<(), DiskError> {
        if self.anonymous_temps {
            return self.try_write_anonymous(key, data);
        }
        let (mut file, temp) = self.new_temp()?;
        file.write_all(data).map_err(|source| DiskError::Write {
            path: temp.to_path_buf(),
            source,
        })?;
        if self.fsync {
            file.sync_all().map_err(|source| DiskError::Sync {
                path: temp.to_path_buf(),
                source,
            })?;
        }
        drop(file);
        self.install(key, temp, data.len() as u64)
    }

    /// [`try_write_whole`](Self::try_write_whole) through an anonymous
    /// file: one creation and one link, where a named temporary file costs
    /// a creation and a rename across directories. Nothing to clean up on
    /// failure: an anonymous file goes with its descriptor.
    fn try_write_anonymous(&self, key: Key, data: &[u8]) -> Result<(), DiskError> {
        let mut file = new_anonymous(&self.tmp_dir).map_err(|source| DiskError::CreateTemp {
            dir: self.tmp_dir.clone(),
            source,
        })?;
        file.write_all(data).map_err(|source| DiskError::Write {
            path: self.tmp_dir.clone(),
            source,
        })?;
        if self.fsync {
            file.sync_all().map_err(|source| DiskError::Sync {
                path: self.tmp_dir.clone(),
                source,
            })?;
        }
        self.install_anonymous(key, &file, data.len() as u64)
    }

    /// Links a checked anonymous file in as the entry for `key`, then
    /// evicts past the bound; under the index lock, as [`install`](Self::install).
    fn install_anonymous(&self, key: Key, file: &fs::File, size: u64) -> Result<(), DiskError> {
        let to = self.path(&key);
        let mut index = self.lock();
        match link_anonymous(file, &to) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if key.namespace == Namespace::Cas && index.touch(&key) {
                    // Another write of the same blob got there first: the
                    // same bytes, checked against the same digest.
                    return Ok(());
                }
                // An Action Cache entry being replaced, or a file the
                // index does not count (its removal failed): replaced at
                // once by a rename, so a reader sees the old or the new.
                let n = self.next_staged.fetch_add(1, Ordering::Relaxed);
                let staged = self.tmp_dir.join(format!("staged-{n}"));
                link_anonymous(file, &staged).map_err(|source| DiskError::Link {
                    to: staged.clone(),
                    source,
                })?;
                if let Err(source) = fs::rename(&staged, &to) {
                    let _ = fs::remove_file(&staged);
                    return Err(DiskError::Rename {
                        from: staged,
                        to,
                        source,
                    });
                }
            }
            Err(source) => return Err(DiskError::Link { to, source }),
        }
        self.counted_in_place(index, key, &to, size)
    }

    fn new_temp(&self) -> Result<(fs::File, TempPath), DiskError> {
        let file = tempfile::Builder::new()
            .prefix("write-")
            .tempfile_in(&self.tmp_dir)
            .map_err(|source| DiskError::CreateTemp {
                dir: self.tmp_dir.clone(),
                source,
            })?;
        Ok(file.into_parts())
    }
}

#[tonic::async_trait]
impl BlobStore for DiskBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let mut index = self.inner.lock();
        Ok(digests
            .iter()
            .filter(|d| !d.is_empty_blob() && !index.touch(&Key::cas(**d)))
            .copied()
            .collect())
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if digest.is_empty_blob() {
            return Ok(Some(Vec::new()));
        }
        if !self.inner.lock().touch(&Key::cas(*digest)) {
            return Ok(None);
        }
        // Read and hashed in one trip to the blocking pool: hashing would
        // hold up a runtime thread.
        let digest = *digest;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_whole(&digest))
            .await
            .map_err(|source| DiskError::Join {
                dir: self.inner.dir.clone(),
                source,
            })?
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error> {
        if digest.is_empty_blob() {
            return Ok(Some(Box::pin(stream::empty())));
        }
        let key = Key::cas(*digest);
        if !self.inner.lock().touch(&key) {
            return Ok(None);
        }
        let path = self.inner.path(&key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.inner.forget(&key);
                return Ok(None);
            }
            Err(source) => return Err(DiskError::Open { path, source }.into()),
        };
        let len = file
            .metadata()
            .await
            .map_err(|source| DiskError::Read {
                path: path.clone(),
                source,
            })?
            .len();
        if len != digest.size_bytes() {
            self.inner.remove_corrupt(&key);
            return Ok(None);
        }
        let start = offset.min(len);
        let end = limit.map_or(len, |limit| start.saturating_add(limit).min(len));
        if start > 0 {
            file.seek(io::SeekFrom::Start(start))
                .await
                .map_err(|source| DiskError::Read {
                    path: path.clone(),
                    source,
                })?;
        }
        let state = ReadState {
            file: tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, file),
            pos: start,
            end,
            verifier: (start == 0 && end == len).then(|| Verifier::new(*digest)),
            inner: Arc::clone(&self.inner),
            key,
            path,
        };
        Ok(Some(Box::pin(stream::unfold(state, ReadState::next))))
    }

    async fn put(&self, digest: &Digest, data: Vec<u8>) -> Result<(), Error> {
        self.check_fits(digest)?;
        let digest = *digest;
        let inner = Arc::clone(&self.inner);
        // Hashing a batch's blobs would hold up the runtime's threads, so
        // it goes to the blocking pool with the write.
        tokio::task::spawn_blocking(move || {
            let mut verifier = Verifier::new(digest);
            verifier.update(&data)?;
            verifier.finish()?;
            inner.write_whole(Key::cas(digest), &data)?;
            Ok(())
        })
        .await
        .map_err(|source| DiskError::Join {
            dir: self.inner.dir.clone(),
            source,
        })?
    }

    async fn put_many(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), Error>> {
        self.in_lanes(blobs, |inner, (digest, data)| {
            inner.check_fits(&digest)?;
            let mut verifier = Verifier::new(digest);
            verifier.update(&data)?;
            verifier.finish()?;
            inner.write_whole(Key::cas(digest), &data)?;
            Ok(())
        })
        .await
    }

    async fn get_many(&self, digests: &[Digest]) -> Vec<Result<Option<Vec<u8>>, Error>> {
        // Marked used under one hold of the lock; what is held is read
        // and checked on the blocking pool, a few tasks for the batch.
        let held: Vec<(Digest, bool)> = {
            let mut index = self.inner.lock();
            digests
                .iter()
                .map(|d| (*d, d.is_empty_blob() || index.touch(&Key::cas(*d))))
                .collect()
        };
        self.in_lanes(held, |inner, (digest, held)| {
            if !held {
                return Ok(None);
            }
            inner.read_whole(&digest)
        })
        .await
    }

    fn evictions(&self) -> u64 {
        self.inner.lock().evictions()
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        self.check_fits(digest)?;
        let (file, temp) = self.blocking(|inner| inner.new_temp()).await?;
        Ok(Box::new(DiskBlobWrite {
            inner: Arc::clone(&self.inner),
            verifier: Verifier::new(*digest),
            file: tokio::io::BufWriter::with_capacity(
                WRITE_BUFFER_BYTES,
                tokio::fs::File::from_std(file),
            ),
            temp,
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for DiskBlobStore {
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error> {
        let key = Key::ac(*action);
        if !self.inner.lock().touch(&key) {
            return Ok(None);
        }
        let path = self.inner.path(&key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Some(data)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.inner.forget(&key);
                Ok(None)
            }
            Err(source) => Err(DiskError::Read { path, source }.into()),
        }
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        let key = Key::ac(*action);
        let max_size_bytes = self.inner.lock().max_bytes();
        if encoded.len() as u64 > max_size_bytes {
            return Err(Error::TooLarge {
                digest: *action,
                max_size_bytes,
            });
        }
        self.blocking(move |inner| inner.write_whole(key, &encoded))
            .await?;
        Ok(())
    }
}

struct ReadState {
    file: tokio::io::BufReader<tokio::fs::File>,
    pos: u64,
    end: u64,
    /// Set when the read covers the whole blob, so it can be checked.
    verifier: Option<Verifier>,
    inner: Arc<Inner>,
    key: Key,
    path: PathBuf,
}

impl ReadState {
    async fn next(mut self) -> Option<(Result<Vec<u8>, Error>, Self)> {
        if self.pos >= self.end {
            return None;
        }
        let n = (self.end - self.pos).min(READ_CHUNK_BYTES as u64) as usize;
        let mut chunk = vec![0; n];
        if let Err(source) = self.file.read_exact(&mut chunk).await {
            self.pos = self.end;
            let err = if source.kind() == io::ErrorKind::UnexpectedEof {
                // The file shrank under us: it is not the blob any more.
                self.inner.remove_corrupt(&self.key);
                Error::Corrupt {
                    digest: self.key.digest,
                }
            } else {
                DiskError::Read {
                    path: self.path.clone(),
                    source,
                }
                .into()
            };
            return Some((Err(err), self));
        }
        self.pos += n as u64;
        if let Some(verifier) = self.verifier.as_mut() {
            let fed = verifier.update(&chunk);
            // The last chunk is only released once the whole blob checks.
            if fed.is_err() || self.pos == self.end {
                let whole = self.verifier.take().map_or(Ok(()), Verifier::finish);
                if fed.is_err() || whole.is_err() {
                    self.pos = self.end;
                    self.inner.remove_corrupt(&self.key);
                    let err = Error::Corrupt {
                        digest: self.key.digest,
                    };
                    return Some((Err(err), self));
                }
            }
        }
        Some((Ok(chunk), self))
    }
}

struct DiskBlobWrite {
    inner: Arc<Inner>,
    verifier: Verifier,
    file: tokio::io::BufWriter<tokio::fs::File>,
    /// Deleted on drop, so an abandoned or refused write leaves nothing.
    temp: TempPath,
}

#[tonic::async_trait]
impl BlobWrite for DiskBlobWrite {
    fn digest(&self) -> &Digest {
        self.verifier.expected()
    }

    fn received(&self) -> u64 {
        self.verifier.received()
    }

    // A write streamed in cannot be tried again here (its bytes are gone
    // by then): on a full disk it fails, and makes room for the client's
    // retry. The service drops the failed write, and its temporary file
    // with it.
    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.verifier.update(data)?;
        if let Err(source) = self.file.write_all(data).await {
            let err = DiskError::Write {
                path: self.temp.to_path_buf(),
                source,
            };
            let size = self.verifier.expected().size_bytes();
            return Err(self.fail_in_blocking(err, size).await.into());
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), Error> {
        let path = self.temp.to_path_buf();
        let size = self.verifier.expected().size_bytes();
        if let Err(source) = self.file.flush().await {
            let err = DiskError::Write { path, source };
            return Err(self.fail_in_blocking(err, size).await.into());
        }
        if self.inner.fsync {
            if let Err(source) = self.file.get_mut().sync_all().await {
                let err = DiskError::Sync { path, source };
                return Err(self.fail_in_blocking(err, size).await.into());
            }
        }
        let DiskBlobWrite {
            inner,
            verifier,
            file,
            temp,
        } = *self;
        drop(file);
        let digest = *verifier.expected();
        verifier.finish()?;
        let dir = inner.dir.clone();
        tokio::task::spawn_blocking(move || {
            let size = digest.size_bytes();
            inner
                .install(Key::cas(digest), temp, size)
                .map_err(|err| inner.fail_write(err, size))
        })
        .await
        .map_err(|source| DiskError::Join { dir, source })??;
        Ok(())
    }
}

impl DiskBlobWrite {
    /// [`Inner::fail_write`] on the blocking pool: eviction unlinks files.
    async fn fail_in_blocking(&self, err: DiskError, bytes: u64) -> DiskError {
        if !err.is_storage_full() {
            return err;
        }
        let inner = Arc::clone(&self.inner);
        let dir = inner.dir.clone();
        tokio::task::spawn_blocking(move || inner.fail_write(err, bytes))
            .await
            .unwrap_or_else(|source| DiskError::Join { dir, source })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::StreamExt as _;

    use super::*;
    use crate::blob_store::conformance;

    struct Disk {
        root: tempfile::TempDir,
        made: usize,
        anonymous: bool,
    }

    impl conformance::Harness for Disk {
        type Store = DiskBlobStore;
        async fn make(&mut self, max_size_bytes: u64) -> DiskBlobStore {
            self.made += 1;
            let dir = self.root.path().join(self.made.to_string());
            let store = DiskBlobStore::open_with(dir, max_size_bytes, false, self.anonymous)
                .await
                .unwrap();
            if self.anonymous && std::env::var_os("CI").is_some() {
                assert!(
                    store.inner.anonymous_temps,
                    "O_TMPFILE is expected under CI"
                );
            }
            store
        }
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn leftovers(dir: &Path) -> usize {
        fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn disk_store_conforms() {
        conformance::run(Disk {
            root: temp_dir(),
            made: 0,
            anonymous: true,
        })
        .await;
    }

    #[tokio::test]
    async fn disk_store_with_named_temporary_files_conforms() {
        conformance::run(Disk {
            root: temp_dir(),
            made: 0,
            anonymous: false,
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_leaves_no_temporary_file_and_survives_a_restart() {
        let root = temp_dir();
        let dir = root.path().join("store");
        let blobs: Vec<Vec<u8>> = (0..64).map(|i| conformance::blob(i, 4096)).collect();
        let digests: Vec<Digest> = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        for anonymous in [true, false] {
            let store = DiskBlobStore::open_with(dir.clone(), 1 << 20, true, anonymous)
                .await
                .unwrap();
            let batch = digests.iter().copied().zip(blobs.iter().cloned()).collect();
            assert!(store.put_many(batch).await.iter().all(Result::is_ok));
            assert_eq!(leftovers(&dir), 0, "anonymous: {anonymous}");
            assert_eq!(store.total_bytes(), 64 * 4096);
            assert_eq!(store.total_bytes(), bytes_held(&dir));
            drop(store);
            let store = DiskBlobStore::open(dir.clone(), 1 << 20, false)
                .await
                .unwrap();
            let found = store.get_many(&digests).await;
            for (found, blob) in found.into_iter().zip(&blobs) {
                assert_eq!(found.unwrap().as_ref(), Some(blob));
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[tokio::test]
    async fn a_file_the_index_does_not_count_is_replaced_by_a_write() {
        for anonymous in [true, false] {
            let root = temp_dir();
            let store = DiskBlobStore::open_with(root.path().join("s"), 1 << 20, false, anonymous)
                .await
                .unwrap();
            let data = conformance::blob(1, 1000);
            let d = DigestFunction::Sha256.digest_of(&data);
            // Left by a removal that failed, say: not counted, not the blob.
            fs::write(store.blob_path(&d), b"stale").unwrap();
            store.put(&d, data.clone()).await.unwrap();
            assert_eq!(fs::read(store.blob_path(&d)).unwrap(), data);
            assert_eq!(store.get(&d).await.unwrap(), Some(data));
            assert_eq!(store.total_bytes(), 1000);
        }
    }

    #[tokio::test]
    async fn a_corrupt_blob_in_a_batch_read_is_missing_and_removed() {
        let root = temp_dir();
        let store = DiskBlobStore::open(root.path().join("s"), 1 << 20, false)
            .await
            .unwrap();
        let blobs: Vec<Vec<u8>> = (0..40).map(|i| conformance::blob(i, 1000)).collect();
        let digests: Vec<Digest> = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        let batch = digests.iter().copied().zip(blobs.iter().cloned()).collect();
        assert!(store.put_many(batch).await.iter().all(Result::is_ok));
        let mut bad = blobs[25].clone();
        bad[10] ^= 1;
        fs::write(store.blob_path(&digests[25]), &bad).unwrap();
        fs::remove_file(store.blob_path(&digests[3])).unwrap();
        let found = store.get_many(&digests).await;
        for (i, found) in found.into_iter().enumerate() {
            let expected = (i != 3 && i != 25).then(|| blobs[i].clone());
            assert_eq!(found.unwrap(), expected, "entry {i}");
        }
        assert!(!store.blob_path(&digests[25]).exists());
        assert_eq!(
            store.find_missing(&digests).await.unwrap(),
            [digests[3], digests[25]]
        );
        assert_eq!(store.total_bytes(), 38 * 1000);
    }

    #[tokio::test]
    async fn fsync_store_conforms() {
        let root = temp_dir();
        let store = DiskBlobStore::open(root.path().join("s"), 1 << 20, true)
            .await
            .unwrap();
        let data = conformance::blob(1, 70_000);
        let d = DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        assert_eq!(store.get(&d).await.unwrap(), Some(data));
    }

    #[tokio::test]
    async fn blobs_and_action_results_survive_a_restart() {
        let root = temp_dir();
        let dir = root.path().join("store");
        let data = conformance::blob(1, 100_000);
        let d = DigestFunction::Blake3.digest_of(&data);
        let action = DigestFunction::Sha256.digest_of(b"action");
        {
            let store = DiskBlobStore::open(dir.clone(), 1 << 20, false)
                .await
                .unwrap();
            store.put(&d, data.clone()).await.unwrap();
            store
                .put_action_result(&action, b"result".to_vec())
                .await
                .unwrap();
            // An upload cut off by the stop.
            let mut write = store
                .begin_write(&DigestFunction::Sha256.digest_of(b"xy"))
                .await
                .unwrap();
            write.write(b"x").await.unwrap();
            std::mem::forget(write);
        }
        let store = DiskBlobStore::open(dir.clone(), 1 << 20, false)
            .await
            .unwrap();
        assert!(store.find_missing(&[d]).await.unwrap().is_empty());
        assert_eq!(store.get(&d).await.unwrap(), Some(data));
        assert_eq!(
            store.get_action_result(&action).await.unwrap(),
            Some(b"result".to_vec())
        );
        assert_eq!(store.total_bytes(), 100_000 + 6);
        assert_eq!(leftovers(&dir), 0, "uploads cut off by a stop are cleared");
    }

    #[tokio::test]
    async fn reopening_with_a_smaller_bound_evicts_the_oldest() {
        let root = temp_dir();
        let dir = root.path().join("store");
        let blobs: Vec<Vec<u8>> = (0..4).map(|i| conformance::blob(i, 1000)).collect();
        let digests: Vec<Digest> = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        {
            let store = DiskBlobStore::open(dir.clone(), 1 << 20, false)
                .await
                .unwrap();
            for (d, b) in digests.iter().zip(&blobs) {
                store.put(d, b.clone()).await.unwrap();
                // Distinct modification times give the scan an order.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let store = DiskBlobStore::open(dir, 2500, false).await.unwrap();
        assert_eq!(store.find_missing(&digests).await.unwrap(), digests[..2]);
        assert!(!store.blob_path(&digests[0]).exists());
        assert_eq!(store.total_bytes(), 2000);
    }

    #[tokio::test]
    async fn refused_write_leaves_no_file() {
        let root = temp_dir();
        let dir = root.path().join("store");
        let store = DiskBlobStore::open(dir.clone(), 1 << 20, false)
            .await
            .unwrap();
        let d = DigestFunction::Sha256.digest_of(b"hello");
        store.put(&d, b"jello".to_vec()).await.unwrap_err();
        drop(store.begin_write(&d).await.unwrap());
        assert_eq!(leftovers(&dir), 0);
        assert!(!store.blob_path(&d).exists());
    }

    #[tokio::test]
    async fn corrupt_blob_is_missing_and_removed() {
        let root = temp_dir();
        let store = DiskBlobStore::open(root.path().join("s"), 1 << 20, false)
            .await
            .unwrap();
        let data = conformance::blob(1, 1000);
        let d = DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        let mut bad = data.clone();
        bad[10] ^= 1;
        fs::write(store.blob_path(&d), &bad).unwrap();
        assert_eq!(store.get(&d).await.unwrap(), None);
        assert!(!store.blob_path(&d).exists());
        assert_eq!(store.find_missing(&[d]).await.unwrap(), [d]);
        assert_eq!(store.total_bytes(), 0);
    }

    #[tokio::test]
    async fn a_blob_file_cut_short_is_missing_and_removed_and_a_longer_one_serves_the_blob() {
        let root = temp_dir();
        let store = DiskBlobStore::open(root.path().join("s"), 1 << 20, false)
            .await
            .unwrap();
        let data = conformance::blob(1, 1000);
        let d = DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        // Extra bytes at the end: the blob is its first 1,000 bytes,
        // verified, whatever follows them.
        let mut longer = data.clone();
        longer.extend_from_slice(b"tail");
        fs::write(store.blob_path(&d), &longer).unwrap();
        assert_eq!(store.get(&d).await.unwrap(), Some(data.clone()));
        assert_eq!(
            store.get_many(&[d]).await.pop().unwrap().unwrap(),
            Some(data.clone())
        );
        fs::write(store.blob_path(&d), &data[..999]).unwrap();
        assert_eq!(store.get_many(&[d]).await.pop().unwrap().unwrap(), None);
        assert!(!store.blob_path(&d).exists());
        assert_eq!(store.find_missing(&[d]).await.unwrap(), [d]);
        assert_eq!(store.total_bytes(), 0);
    }

    #[tokio::test]
    async fn corrupt_blob_read_as_a_stream_ends_in_an_error_and_is_removed() {
        let root = temp_dir();
        let store = DiskBlobStore::open(root.path().join("s"), 1 << 20, false)
            .await
            .unwrap();
        let data = conformance::blob(1, 3 * READ_CHUNK_BYTES);
        let d = DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        let mut bad = data.clone();
        bad[10] ^= 1;
        fs::write(store.blob_path(&d), &bad).unwrap();
        let stream = store.read(&d, 0, None).await.unwrap().unwrap();
        let chunks: Vec<Result<Vec<u8>, Error>> = stream.collect::<Vec<_>>().await;
        let received: usize = chunks
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(Vec::len)
            .sum();
        assert!(received < data.len(), "the whole corrupt blob was served");
        assert!(matches!(chunks.last(), Some(Err(Error::Corrupt { .. }))));
        assert!(!store.blob_path(&d).exists());

        // A file of the wrong length is caught before streaming.
        store.put(&d, data.clone()).await.unwrap();
        fs::write(store.blob_path(&d), &data[1..]).unwrap();
        assert!(store.read(&d, 0, None).await.unwrap().is_none());
    }

    /// Streams `data` into `store` in 64 KiB writes, as ByteStream does.
    async fn stream(store: &DiskBlobStore, d: &Digest, data: &[u8]) -> Result<(), Error> {
        let mut write = store.begin_write(d).await?;
        for chunk in data.chunks(64 << 10) {
            write.write(chunk).await?;
        }
        write.commit().await
    }

    /// Bytes of the files under `dir`'s `cas/` and `ac/`: what the index
    /// must count.
    fn bytes_held(dir: &Path) -> u64 {
        fn walk(path: &Path) -> u64 {
            let meta = fs::symlink_metadata(path).unwrap();
            if meta.is_dir() {
                fs::read_dir(path)
                    .unwrap()
                    .map(|e| walk(&e.unwrap().path()))
                    .sum()
            } else {
                meta.len()
            }
        }
        walk(&dir.join("cas")) + walk(&dir.join("ac"))
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_as_resource_exhausted_leaving_nothing_until_space_returns()
    {
        let Some(fs_) = corral_testkit::Tmpfs::mount("a_full_disk_refuses_writes", "8m") else {
            return;
        };
        let dir = fs_.path().join("store");
        let store = DiskBlobStore::open(dir.clone(), 1 << 30, true)
            .await
            .unwrap();
        // Something else on the disk leaves it about 1 MiB.
        let filler = fs_.path().join("filler");
        fs::write(&filler, vec![0; 7 << 20]).unwrap();
        let data = conformance::blob(1, 2 << 20);
        let d = DigestFunction::Sha256.digest_of(&data);

        let whole = store.put(&d, data.clone()).await.unwrap_err();
        let streamed = stream(&store, &d, &data).await.unwrap_err();
        let action = DigestFunction::Sha256.digest_of(b"action");
        let result = store
            .put_action_result(&action, data.clone())
            .await
            .unwrap_err();
        for err in [&whole, &streamed, &result] {
            assert_eq!(
                crate::status::store_code(err),
                tonic::Code::ResourceExhausted,
                "{err}"
            );
            let message = crate::status::message(err);
            assert!(
                message.contains(&format!(
                    "the disk of storage directory {} is full",
                    dir.display()
                )),
                "{message}"
            );
        }
        assert_eq!(leftovers(&dir), 0, "no partial upload is left");
        assert!(!store.blob_path(&d).exists());
        assert_eq!(store.find_missing(&[d]).await.unwrap(), [d]);
        assert_eq!(store.get_action_result(&action).await.unwrap(), None);
        assert_eq!(store.total_bytes(), 0, "no phantom bytes");

        // Space returns: the same writes succeed.
        corral_testkit::remove_freeing_space(&filler);
        store.put(&d, data.clone()).await.unwrap();
        let other = conformance::blob(2, 2 << 20);
        let o = DigestFunction::Sha256.digest_of(&other);
        stream(&store, &o, &other).await.unwrap();
        store
            .put_action_result(&action, b"result".to_vec())
            .await
            .unwrap();
        assert_eq!(store.get(&d).await.unwrap(), Some(data));
        assert_eq!(store.get(&o).await.unwrap(), Some(other));
        assert_eq!(store.total_bytes(), (4 << 20) + 6);
        assert_eq!(store.total_bytes(), bytes_held(&dir));
    }

    #[tokio::test]
    async fn a_disk_smaller_than_the_bound_evicts_to_make_room() {
        let Some(fs_) = corral_testkit::Tmpfs::mount("a_disk_smaller_than_the_bound", "8m") else {
            return;
        };
        let dir = fs_.path().join("store");
        let store = DiskBlobStore::open(dir.clone(), 1 << 30, false)
            .await
            .unwrap();
        let blobs: Vec<Vec<u8>> = (0..12).map(|i| conformance::blob(i, 1 << 20)).collect();
        let digests: Vec<Digest> = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        // Whole writes make room and go on: 12 MiB through an 8 MiB disk.
        for (d, b) in digests.iter().zip(&blobs).take(8) {
            store.put(d, b.clone()).await.unwrap();
        }
        // Streamed writes fail once, having made room, then fit.
        for (d, b) in digests.iter().zip(&blobs).skip(8) {
            if let Err(err) = stream(&store, d, b).await {
                assert_eq!(
                    crate::status::store_code(&err),
                    tonic::Code::ResourceExhausted
                );
                stream(&store, d, b).await.unwrap();
            }
        }
        let missing = store.find_missing(&digests).await.unwrap();
        assert!(missing.contains(&digests[0]), "the oldest went first");
        assert!(!missing.contains(&digests[11]));
        assert_eq!(store.total_bytes(), bytes_held(&dir), "no phantom bytes");
        assert!(store.total_bytes() <= 8 << 20);
        assert_eq!(leftovers(&dir), 0);
    }

    #[tokio::test]
    async fn blob_deleted_behind_the_stores_back_is_missing() {
        let root = temp_dir();
        let store = DiskBlobStore::open(root.path().join("s"), 1 << 20, false)
            .await
            .unwrap();
        let data = conformance::blob(1, 1000);
        let d = DigestFunction::Sha256.digest_of(&data);
        store.put(&d, data).await.unwrap();
        fs::remove_file(store.blob_path(&d)).unwrap();
        assert!(store.read(&d, 0, None).await.unwrap().is_none());
        assert_eq!(store.find_missing(&[d]).await.unwrap(), [d]);
    }
}
