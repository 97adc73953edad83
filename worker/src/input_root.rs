//! Lays out an action's input root from its Directory tree.
//!
//! Three steps:
//! 1. The tree is resolved level by level: Directories come from the
//!    [`DirectoryCache`], the others are read in one batch per level,
//!    decoded and checked once (every name one path component, every node
//!    with a digest), and cached. A Directory may be named many times, so
//!    a tree of a few small messages can expand to more entries than any
//!    worker's memory holds: the expansion is counted as it goes and
//!    refused past `input_root_max_entries`, or past a path longer than
//!    [`PATH_MAX_BYTES`].
//! 2. Every file is pinned in the file cache, the missing ones fetched
//!    together.
//! 3. The tree is written level by level by a few blocking tasks, so the
//!    thousands of syscalls never stall the runtime: each directory's
//!    subdirectories are created, its symlinks written as given (never
//!    followed: only their own inode is created), and its files hardlinked
//!    from the file cache (copied where a cache file has all the links its
//!    file system allows, or where the worker's actions run as its own
//!    uid: [`FileCache::place`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use corral_proto::reapi::{Digest, Directory};
use prost::Message;
use tokio::task::JoinSet;
use tracing::{debug, Instrument};

use crate::cas_client::{self, CasClient};
use crate::confirmed::Confirmed;
use crate::directory_cache::DirectoryCache;
use crate::file_cache::{self, FileCache};

/// Blocking tasks writing one level of a tree at once. Links and mkdirs
/// in different directories go in parallel in the kernel; a few tasks
/// use a small machine's cores without crowding a big one's.
const LAYOUT_TASKS: usize = 4;
/// Entries a task gets at least: below that, another thread costs more
/// than it saves.
const ENTRIES_PER_TASK_MIN: usize = 512;
/// Longest path of an entry, relative to the input root, in bytes:
/// Linux's PATH_MAX less its NUL. No syscall takes a longer path, so the
/// action could not name such an entry; refusing it also bounds the
/// tree's depth, and the path each of its directories holds.
pub const PATH_MAX_BYTES: usize = 4095;
/// The longest name of one entry (NAME_MAX).
const NAME_MAX_BYTES: usize = 255;
/// Most bytes of directory paths one input root may hold while it is
/// laid out. Within the entry limit and PATH_MAX, a chain 2,000 deep that
/// then fans out into a million directories would hold 4 GB of paths;
/// real trees hold a few MB (10,000 directories of 100-byte paths).
pub const PATH_BYTES_MAX: usize = 256 << 20;

/// What went wrong laying out an input root.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to fetch directories of the input root")]
    FetchDirectory(#[source] cas_client::Error),
    #[error("directory {}/{} is not a valid Directory message", .digest.hash, .digest.size_bytes)]
    DecodeDirectory {
        digest: Digest,
        #[source]
        source: prost::DecodeError,
    },
    #[error("invalid name {name:?} in the input root: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("a directory of the input root holds {name:?} twice")]
    DuplicateName { name: String },
    #[error("symlink {name:?} in the input root has a target that {reason}")]
    InvalidSymlinkTarget { name: String, reason: &'static str },
    #[error("a node of {path} has no digest")]
    NoDigest { path: PathBuf },
    #[error("the input root has more than {limit} entries (input_root_max_entries)")]
    TooManyEntries { limit: u64 },
    #[error(
        "an entry {depth} levels deep in the input root has a path of {length} bytes, \
         more than the {PATH_MAX_BYTES} a path may have (PATH_MAX)"
    )]
    PathTooLong { length: usize, depth: usize },
    #[error(
        "the input root's directories have paths of more than {} MiB together: \
         its tree is too deep and too wide at once",
        PATH_BYTES_MAX >> 20
    )]
    PathsTooLarge,
    #[error("failed to create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to fetch the input files")]
    Files(#[source] file_cache::Error),
    #[error("failed to link {from} to {to}")]
    Link {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a task writing the input root failed")]
    LayoutTask(#[source] tokio::task::JoinError),
}

impl Error {
    /// Whether a write of the worker's (a cache file, a directory or link
    /// of the input root) found its disk full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Files(err) => err.is_disk_full(),
            Error::Create { source, .. } | Error::Link { source, .. } => {
                file_cache::is_disk_full(source)
            }
            _ => false,
        }
    }

    /// The blob whose absence caused this error, if any.
    pub fn missing_digest(&self) -> Option<&Digest> {
        match self {
            Error::FetchDirectory(cas_client::Error::Missing { digest })
            | Error::Files(file_cache::Error::Fetch(cas_client::Error::Missing { digest })) => {
                Some(digest)
            }
            _ => None,
        }
    }
}

/// `name` if it is one path component that stays where it is put.
pub fn checked_name(name: &str) -> Result<&str, Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "a relative reference"
    } else if name.contains('/') {
        "contains a slash"
    } else if name.contains('\0') {
        "contains a NUL"
    } else if name.len() > NAME_MAX_BYTES {
        // No file system here can hold it: refused as the action's fault
        // now, not as the worker's when the link fails.
        "longer than 255 bytes (NAME_MAX)"
    } else {
        return Ok(name);
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// `target` if symlink(2) can create a link to it. Where it points is the
/// action's business (the sandbox resolves it), but a target the kernel
/// refuses would fail the layout as if the worker had failed.
fn checked_target(name: &str, target: &str) -> Result<(), Error> {
    let reason = if target.is_empty() {
        "is empty"
    } else if target.contains('\0') {
        "contains a NUL"
    } else if target.len() > PATH_MAX_BYTES {
        "is longer than 4095 bytes (PATH_MAX)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidSymlinkTarget {
        name: name.to_owned(),
        reason,
    })
}

/// A Directory message whose names and digests have been checked: safe
/// to lay out as is, as often as needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckedDirectory {
    pub directories: Vec<CheckedChild>,
    pub files: Vec<CheckedFile>,
    pub symlinks: Vec<CheckedSymlink>,
}

/// A subdirectory.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedChild {
    pub name: String,
    pub digest: Digest,
}

/// A file.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedFile {
    pub name: String,
    pub digest: Digest,
    pub executable: bool,
}

/// A symlink; its target is the action's business.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSymlink {
    pub name: String,
    pub target: String,
}

impl CheckedDirectory {
    /// Checks `dir`, met at `path` (named in errors): every name one
    /// component and used once, every node with a digest, every symlink
    /// one the kernel can create. What passes lays out without a syscall
    /// failing on the action's account.
    pub fn check(dir: Directory, path: &Path) -> Result<CheckedDirectory, Error> {
        let no_digest = || Error::NoDigest {
            path: path.to_owned(),
        };
        // A name used twice would fail the second create with EEXIST,
        // reported as the worker's failure; REAPI says names are unique.
        let mut names_seen =
            HashSet::with_capacity(dir.directories.len() + dir.files.len() + dir.symlinks.len());
        let names = dir
            .directories
            .iter()
            .map(|d| &d.name)
            .chain(dir.files.iter().map(|f| &f.name))
            .chain(dir.symlinks.iter().map(|s| &s.name));
        for name in names {
            if !names_seen.insert(name.as_str()) {
                return Err(Error::DuplicateName { name: name.clone() });
            }
        }
        let mut checked = CheckedDirectory {
            directories: Vec::with_capacity(dir.directories.len()),
            files: Vec::with_capacity(dir.files.len()),
            symlinks: Vec::with_capacity(dir.symlinks.len()),
        };
        for node in dir.directories {
            checked_name(&node.name)?;
            checked.directories.push(CheckedChild {
                digest: node.digest.ok_or_else(no_digest)?,
                name: node.name,
            });
        }
        for node in dir.files {
            checked_name(&node.name)?;
            checked.files.push(CheckedFile {
                digest: node.digest.ok_or_else(no_digest)?,
                name: node.name,
                executable: node.is_executable,
            });
        }
        for node in dir.symlinks {
            checked_name(&node.name)?;
            checked_target(&node.name, &node.target)?;
            checked.symlinks.push(CheckedSymlink {
                name: node.name,
                target: node.target,
            });
        }
        Ok(checked)
    }

    /// About the memory it takes, for the directory cache's bound.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        size_of::<Self>()
            + self
                .directories
                .iter()
                .map(|d| size_of::<CheckedChild>() + d.name.len() + d.digest.hash.len())
                .sum::<usize>()
            + self
                .files
                .iter()
                .map(|f| size_of::<CheckedFile>() + f.name.len() + f.digest.hash.len())
                .sum::<usize>()
            + self
                .symlinks
                .iter()
                .map(|s| size_of::<CheckedSymlink>() + s.name.len() + s.target.len())
                .sum::<usize>()
    }

    /// Entries it holds: the syscalls it costs to lay out.
    fn entries(&self) -> usize {
        self.directories.len() + self.files.len() + self.symlinks.len()
    }
}

/// One directory of the tree and where it goes.
struct Node {
    path: PathBuf,
    directory: Arc<CheckedDirectory>,
}

/// Materializes the tree of `root` into the existing directory `dest`,
/// refusing it, before anything is written, if it expands to more than
/// `max_entries` files, directories and symlinks (each occurrence counts).
pub async fn materialize(
    cas: &CasClient,
    files: &Arc<FileCache>,
    directories: &DirectoryCache,
    root: &Digest,
    dest: &Path,
    max_entries: u64,
) -> Result<(), Error> {
    let levels = resolve(cas, directories, files.confirmed(), root, dest, max_entries).await?;
    let wanted: Vec<(&Digest, bool)> = levels
        .iter()
        .flatten()
        .flat_map(|node| &node.directory.files)
        .map(|f| (&f.digest, f.executable))
        .collect();
    let downloads = files.downloads();
    let _pins = files.pin_all(cas, &wanted).await.map_err(Error::Files)?;
    debug!(
        files = wanted.len(),
        downloaded = files.downloads() - downloads,
        "input files pinned"
    );
    let gate = Arc::new(Gate::default());
    // Declared after the pins, so dropped before them: the blocking
    // tasks have stopped linking before the files may be evicted.
    let _stop = StopOnDrop(Arc::clone(&gate));
    async {
        for level in levels {
            write_level(files, &gate, level).await?;
        }
        Ok(())
    }
    .instrument(tracing::debug_span!(target: corral_trace::SPANS, "layout"))
    .await
}

/// A directory of the tree still to resolve.
struct Wanted {
    /// Where it goes.
    path: PathBuf,
    /// Its path relative to the input root, in bytes: 0 for the root.
    relative: usize,
    /// Levels below the root: 0 for the root.
    depth: usize,
    digest: Digest,
}

impl Wanted {
    /// Bytes of the path of `name` in this directory, relative to the
    /// root.
    fn length_of(&self, name: &str) -> usize {
        if self.relative == 0 {
            name.len()
        } else {
            self.relative + 1 + name.len()
        }
    }
}

/// The tree under `root` (laid out at `dest`), level by level, refused
/// past `max_entries` entries or a path longer than [`PATH_MAX_BYTES`].
/// Each directory's entries are counted, and their paths measured, as
/// soon as it is known, before its children are kept: the levels held
/// never grow past the limit, and no level past it is read.
async fn resolve(
    cas: &CasClient,
    cache: &DirectoryCache,
    confirmed: &Confirmed,
    root: &Digest,
    dest: &Path,
    max_entries: u64,
) -> Result<Vec<Vec<Node>>, Error> {
    let mut levels = Vec::new();
    let mut wanted = vec![Wanted {
        path: dest.to_owned(),
        relative: 0,
        depth: 0,
        digest: root.clone(),
    }];
    let mut entries = 0u64;
    let mut path_bytes = 0usize;
    let (mut cached, mut read) = (0usize, 0usize);
    while !wanted.is_empty() {
        let mut found = cache.get_all(wanted.iter().map(|w| &w.digest));
        let missing: Vec<Digest> = wanted
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(w, _)| w.digest.clone())
            .collect();
        cached += wanted.len() - missing.len();
        // A cached directory counts only if storage would serve it under
        // this instance name (crate::confirmed).
        confirmed
            .check(
                cas,
                wanted
                    .iter()
                    .zip(&found)
                    .filter(|(_, f)| f.is_some())
                    .map(|(w, _)| &w.digest),
            )
            .await
            .map_err(Error::FetchDirectory)?;
        if !missing.is_empty() {
            let blobs = cas
                .read_many(&missing)
                .await
                .map_err(Error::FetchDirectory)?;
            read += blobs.len();
            confirmed.confirm(cas.instance(), &missing);
            // One decode per digest, however often it occurs in the level.
            let mut decoded: HashMap<&str, Arc<CheckedDirectory>> = HashMap::new();
            for (Wanted { path, digest, .. }, slot) in wanted.iter().zip(found.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                if let Some(directory) = decoded.get(digest.hash.as_str()) {
                    *slot = Some(Arc::clone(directory));
                    continue;
                }
                let Some(data) = blobs.get(&digest.hash) else {
                    return Err(Error::FetchDirectory(cas_client::Error::Missing {
                        digest: digest.clone(),
                    }));
                };
                let message = Directory::decode(data.as_slice()).map_err(|source| {
                    Error::DecodeDirectory {
                        digest: digest.clone(),
                        source,
                    }
                })?;
                let directory = Arc::new(CheckedDirectory::check(message, path)?);
                cache.insert(digest.clone(), Arc::clone(&directory));
                decoded.insert(&digest.hash, Arc::clone(&directory));
                *slot = Some(directory);
            }
        }
        let mut level = Vec::with_capacity(wanted.len());
        let mut next = Vec::new();
        for (parent, directory) in wanted.into_iter().zip(found) {
            // Filled above, from the cache or the read.
            let Some(directory) = directory else {
                return Err(Error::FetchDirectory(cas_client::Error::Missing {
                    digest: parent.digest,
                }));
            };
            // Counted before its children are kept: what a few small
            // messages expand to is refused before it is held.
            entries = entries.saturating_add(directory.entries() as u64);
            if entries > max_entries {
                return Err(Error::TooManyEntries { limit: max_entries });
            }
            // Every entry's path, not only the subdirectories': linking a
            // file no syscall can name would fail later, looking like the
            // worker's fault.
            let names = directory.directories.iter().map(|d| &d.name);
            let names = names
                .chain(directory.files.iter().map(|f| &f.name))
                .chain(directory.symlinks.iter().map(|s| &s.name));
            if let Some(length) = names
                .map(|name| parent.length_of(name))
                .find(|&length| length > PATH_MAX_BYTES)
            {
                return Err(Error::PathTooLong {
                    length,
                    depth: parent.depth + 1,
                });
            }
            for child in &directory.directories {
                // Each directory holds its whole path until laid out.
                path_bytes += dest.as_os_str().len() + 1 + parent.length_of(&child.name);
                if path_bytes > PATH_BYTES_MAX {
                    return Err(Error::PathsTooLarge);
                }
                next.push(Wanted {
                    path: parent.path.join(&child.name),
                    relative: parent.length_of(&child.name),
                    depth: parent.depth + 1,
                    digest: child.digest.clone(),
                });
            }
            level.push(Node {
                path: parent.path,
                directory,
            });
        }
        levels.push(level);
        wanted = next;
    }
    debug!(cached, read, "input root resolved");
    Ok(levels)
}

/// Writes one level: each node's subdirectories, symlinks and files. The
/// nodes' own directories exist (the level above made them). Every task
/// is joined before this returns, also on failure.
async fn write_level(
    files: &Arc<FileCache>,
    gate: &Arc<Gate>,
    level: Vec<Node>,
) -> Result<(), Error> {
    let mut tasks = JoinSet::new();
    for chunk in split(level) {
        let files = Arc::clone(files);
        let gate = Arc::clone(gate);
        tasks.spawn_blocking(move || write_nodes(&files, &gate, &chunk));
    }
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error,
            Err(error) => Error::LayoutTask(error),
        };
        // The action fails: the other tasks stop at their next step.
        gate.stop();
        failed.get_or_insert(error);
    }
    failed.map_or(Ok(()), Err)
}

/// `level` cut into runs of nodes of about equal entries, one per task.
fn split(level: Vec<Node>) -> Vec<Vec<Node>> {
    let weight = |n: &Node| n.directory.entries() + 1;
    let total: usize = level.iter().map(weight).sum();
    let tasks = (total / ENTRIES_PER_TASK_MIN).clamp(1, LAYOUT_TASKS);
    let target = total.div_ceil(tasks);
    let mut chunks = Vec::with_capacity(tasks);
    let mut chunk = Vec::new();
    let mut size = 0;
    for node in level {
        size += weight(&node);
        chunk.push(node);
        if size >= target {
            chunks.push(std::mem::take(&mut chunk));
            size = 0;
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Lays out `nodes`; blocking. Stops, without error, once the gate is
/// stopped: the action is gone or failed elsewhere.
fn write_nodes(files: &FileCache, gate: &Gate, nodes: &[Node]) -> Result<(), Error> {
    let Some(_entered) = gate.enter() else {
        return Ok(());
    };
    for node in nodes {
        let dir = &node.directory;
        for child in &dir.directories {
            if gate.stopped() {
                return Ok(());
            }
            let path = node.path.join(&child.name);
            std::fs::create_dir(&path).map_err(|source| Error::Create { path, source })?;
        }
        for link in &dir.symlinks {
            if gate.stopped() {
                return Ok(());
            }
            // The target is resolved inside the sandbox; the worker never
            // opens it.
            let path = node.path.join(&link.name);
            std::os::unix::fs::symlink(&link.target, &path)
                .map_err(|source| Error::Create { path, source })?;
        }
        for file in &dir.files {
            if gate.stopped() {
                return Ok(());
            }
            let to = node.path.join(&file.name);
            files
                .place(&file.digest, file.executable, &to)
                .map_err(|source| Error::Link {
                    from: files.path(&file.digest, file.executable),
                    to,
                    source,
                })?;
        }
    }
    Ok(())
}

/// Stops the blocking tasks writing an input root, and lets the future
/// that started them wait until none is writing. Blocking tasks cannot be
/// aborted: without this, a task would go on linking into a build
/// directory the executor is removing because the action was abandoned,
/// and the removal would fail on the new entries.
#[derive(Debug, Default)]
struct Gate {
    /// Tasks inside; the flag below is only set while holding it, so no
    /// task enters after a stop has waited for the others.
    active: Mutex<usize>,
    left: Condvar,
    stopped: AtomicBool,
}

/// A task inside the gate; leaves it when dropped.
struct Entered<'a>(&'a Gate);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // Only a counter is behind the lock; it stays usable.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a task in, unless stopped.
    fn enter(&self) -> Option<Entered<'_>> {
        let mut active = self.lock();
        if self.stopped() {
            return None;
        }
        *active += 1;
        Some(Entered(self))
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        let _active = self.lock();
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Stops the gate and waits until no task is inside: at most one
    /// syscall each, since they check between syscalls.
    fn stop_and_wait(&self) {
        let mut active = self.lock();
        self.stopped.store(true, Ordering::Relaxed);
        while *active > 0 {
            active = self.left.wait(active).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut active = self.0.lock();
        *active -= 1;
        if *active == 0 {
            self.0.left.notify_all();
        }
    }
}

/// Stops the gate when the materializing future ends, finished or
/// dropped midway.
struct StopOnDrop(Arc<Gate>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_and_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas_client::digest_of;

    fn node(name: &str, files: usize) -> Node {
        Node {
            path: PathBuf::from(name),
            directory: Arc::new(CheckedDirectory {
                files: (0..files)
                    .map(|i| CheckedFile {
                        name: format!("f{i}"),
                        digest: digest_of(b"x"),
                        executable: false,
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_level_is_split_by_entries_between_a_few_tasks() {
        let small: Vec<Node> = (0..10).map(|i| node(&i.to_string(), 10)).collect();
        assert_eq!(split(small).len(), 1, "too little to share");

        let level: Vec<Node> = (0..1000).map(|i| node(&i.to_string(), 10)).collect();
        let chunks = split(level);
        assert_eq!(chunks.len(), LAYOUT_TASKS);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&n| n == 250), "{sizes:?}");
        let paths: Vec<PathBuf> = chunks.into_iter().flatten().map(|n| n.path).collect();
        let expected: Vec<PathBuf> = (0..1000).map(|i| PathBuf::from(i.to_string())).collect();
        assert_eq!(paths, expected, "every node once, in order");
    }

    #[test]
    fn stopping_the_gate_waits_for_the_tasks_inside() {
        let gate = Gate::default();
        let done = AtomicBool::new(false);
        let (inside, entered) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _entered = gate.enter().unwrap();
                inside.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
                done.store(true, Ordering::Relaxed);
            });
            entered.recv().unwrap();
            gate.stop_and_wait();
            assert!(done.load(Ordering::Relaxed), "waited for the task");
            assert!(gate.enter().is_none(), "no task enters once stopped");
        });
    }

    #[test]
    fn a_directory_is_checked_once_for_names_and_digests() {
        use corral_proto::reapi::{DirectoryNode, FileNode};
        let good = Directory {
            files: vec![FileNode {
                name: "a".into(),
                digest: Some(digest_of(b"a")),
                is_executable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let checked = CheckedDirectory::check(good, Path::new("/r")).unwrap();
        assert!(checked.files[0].executable);
        let escaping = Directory {
            directories: vec![DirectoryNode {
                name: "..".into(),
                digest: Some(digest_of(b"d")),
            }],
            ..Default::default()
        };
        assert!(matches!(
            CheckedDirectory::check(escaping, Path::new("/r")),
            Err(Error::InvalidName { .. })
        ));
        let no_digest = Directory {
            files: vec![FileNode {
                name: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            CheckedDirectory::check(no_digest, Path::new("/r")),
            Err(Error::NoDigest { .. })
        ));
    }

    /// A made-up digest: directories are put in the directory cache
    /// under it, as if read before, and so never read from the CAS.
    fn made_up(i: usize) -> Digest {
        digest_of(format!("directory {i}").as_bytes())
    }

    /// Resolves a chain of directories named `names`, each the only child
    /// of the one before, at `/r`.
    async fn resolve_chain(names: &[String]) -> Result<Vec<Vec<Node>>, Error> {
        resolve_chain_to(names, Arc::default(), 1_000).await
    }

    /// [`resolve_chain`] with `bottom` as the innermost directory, up to
    /// `max_entries`.
    async fn resolve_chain_to(
        names: &[String],
        bottom: Arc<CheckedDirectory>,
        max_entries: u64,
    ) -> Result<Vec<Vec<Node>>, Error> {
        let cache = DirectoryCache::new(1 << 30);
        cache.insert(made_up(usize::MAX), Arc::default());
        // Innermost first: directory i holds directory i - 1.
        cache.insert(made_up(0), bottom);
        for (i, name) in names.iter().rev().enumerate() {
            let directory = CheckedDirectory {
                directories: vec![CheckedChild {
                    name: name.clone(),
                    digest: made_up(i),
                }],
                ..Default::default()
            };
            cache.insert(made_up(i + 1), Arc::new(directory));
        }
        // No server: reading anything would fail the test, and so would
        // asking it about a cached directory not confirmed yet.
        let cas = CasClient::new("http://127.0.0.1:1").unwrap();
        let confirmed = Confirmed::default();
        let made: Vec<Digest> = (0..=names.len()).chain([usize::MAX]).map(made_up).collect();
        confirmed.confirm(cas.instance(), &made);
        let root = made_up(names.len());
        resolve(
            &cas,
            &cache,
            &confirmed,
            &root,
            Path::new("/r"),
            max_entries,
        )
        .await
    }

    /// A directory of `n` empty subdirectories.
    fn wide(n: usize) -> Arc<CheckedDirectory> {
        Arc::new(CheckedDirectory {
            directories: (0..n)
                .map(|i| CheckedChild {
                    name: format!("d{i}"),
                    digest: made_up(usize::MAX),
                })
                .collect(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_tree_deep_and_wide_at_once_is_refused_for_its_paths() {
        // 15 levels of 255-byte names, then 70,000 empty directories: far
        // under the entry limit, but 70,000 paths of about 3,850 bytes.
        let names = vec!["n".repeat(255); 15];
        let refused = resolve_chain_to(&names, wide(70_000), 1_000_000).await;
        assert!(
            matches!(refused, Err(Error::PathsTooLarge)),
            "{:?}",
            refused.map(|levels| levels.len())
        );
        // The same width near the root is fine.
        let levels = resolve_chain_to(&names[..1], wide(70_000), 1_000_000)
            .await
            .unwrap();
        assert_eq!(levels[2].len(), 70_000);
    }

    #[tokio::test]
    async fn a_path_of_path_max_bytes_is_kept_and_one_byte_more_refused() {
        // 16 names of 255 bytes and 15 slashes: 4,095 bytes.
        let mut names = vec!["n".repeat(255); 16];
        let levels = resolve_chain(&names).await.unwrap();
        assert_eq!(levels.len(), 17);
        let deepest = &levels[16][0].path;
        assert_eq!(deepest.as_os_str().len(), "/r/".len() + PATH_MAX_BYTES);

        names[15].push('n');
        let refused = resolve_chain(&names).await;
        assert!(
            matches!(
                refused,
                Err(Error::PathTooLong {
                    length: 4096,
                    depth: 16
                })
            ),
            "{:?}",
            refused.map(|levels| levels.len())
        );
        if let Err(error) = refused {
            assert_eq!(
                error.to_string(),
                "an entry 16 levels deep in the input root has a path of 4096 bytes, \
                 more than the 4095 a path may have (PATH_MAX)"
            );
        }
    }

    /// Found by tests/it/crafted.rs: these failed the layout with EEXIST,
    /// ENOENT or EINVAL, reported as the worker's failure (INTERNAL).
    #[test]
    fn a_name_used_twice_or_a_target_the_kernel_refuses_is_the_actions_fault() {
        use corral_proto::reapi::{DirectoryNode, FileNode, SymlinkNode};
        let twice = Directory {
            directories: vec![DirectoryNode {
                name: "a".into(),
                digest: Some(digest_of(b"d")),
            }],
            files: vec![FileNode {
                name: "a".into(),
                digest: Some(digest_of(b"a")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = CheckedDirectory::check(twice, Path::new("/r")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a directory of the input root holds \"a\" twice"
        );
        let link = |target: String| Directory {
            symlinks: vec![SymlinkNode {
                name: "l".into(),
                target,
                ..Default::default()
            }],
            ..Default::default()
        };
        for (target, reason) in [
            (String::new(), "is empty"),
            ("a\0b".to_owned(), "contains a NUL"),
            ("t".repeat(4096), "is longer than 4095 bytes (PATH_MAX)"),
        ] {
            let err = CheckedDirectory::check(link(target), Path::new("/r")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("symlink \"l\" in the input root has a target that {reason}")
            );
        }
        for target in ["t".repeat(4095), "/etc/passwd".into(), "../../x".into()] {
            assert!(CheckedDirectory::check(link(target), Path::new("/r")).is_ok());
        }
    }

    #[test]
    fn names_are_single_components() {
        assert!(checked_name("a.txt").is_ok());
        assert!(checked_name("..a").is_ok());
        assert!(checked_name(&"n".repeat(255)).is_ok());
        for bad in ["", ".", "..", "a/b", "/", "a\0", &"n".repeat(256)] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
    }
}
