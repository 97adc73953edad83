//! Collects an action's outputs after the run, relative to its working
//! directory, and prepares their parent directories before it.
//!
//! The action wrote these files as another uid and may have planted
//! symlinks anywhere, while the worker reads as root. So nothing here ever
//! follows a symlink: every intermediate path component must be a real
//! directory, files are opened with O_NOFOLLOW, and a symlink output is
//! reported as a symlink, refused if its target leaves the input root.
//!
//! Files are hashed here and read again only if the CAS lacks them, as
//! they are uploaded: outputs of any size never sit in memory. Before any
//! is hashed, the outputs are measured against the worker's `[limits]`:
//! apparent sizes (a sparse file or a hardlink to an input costs nothing
//! on disk, yet would be hashed and uploaded whole) and the number of
//! entries. Blocking: call from a blocking thread.

// The pre-2.1 fields (`output_files`, `output_directories`, and the
// `output_*_symlinks` results) are deprecated in REAPI, but Bazel 4.2.3
// still sends and expects them.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use corral_proto::reapi::{
    ActionResult, Command, Digest, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use prost::Message;

use crate::cas_client::{digest_of, Blob};
use crate::config::Limits;

/// What went wrong with the outputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("output {path:?} is not allowed: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("failed to create the parent directories of output {path:?}")]
    Prepare {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read output {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the outputs have more than {max} {what} (limits.{key} of the worker); none was uploaded"
    )]
    OverLimit {
        key: &'static str,
        what: &'static str,
        max: u64,
    },
}

/// Blobs to upload, with their digests.
pub type Blobs = Vec<(Digest, Blob)>;

/// The relative path `rel` as components, if it stays where it is put:
/// not absolute, no `..`, no `.` except alone.
fn components(rel: &str) -> Result<Vec<&str>, Error> {
    let refuse = |reason| Error::Refused {
        path: rel.to_owned(),
        reason,
    };
    if rel.starts_with('/') {
        return Err(refuse("absolute"));
    }
    let mut out = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(refuse("escapes the working directory")),
            p if p.contains('\0') => return Err(refuse("contains a NUL")),
            p => out.push(p),
        }
    }
    Ok(out)
}

/// The working directory `wd` (relative to the input root `root`).
fn working_components(wd: &str) -> Result<Vec<&str>, Error> {
    components(wd)
}

/// Whether `path` is a real directory (not a symlink to one).
fn is_real_dir(path: &Path) -> std::io::Result<bool> {
    Ok(std::fs::symlink_metadata(path)?.file_type().is_dir())
}

/// Creates the working directory and the parents of every declared output,
/// one component at a time so a symlink from the input root is never
/// followed out of it.
pub fn prepare(root: &Path, command: &Command) -> Result<(), Error> {
    let wd = working_components(&command.working_directory)?;
    let declared = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories);
    let mut parents: Vec<(String, Vec<&str>)> =
        vec![(command.working_directory.clone(), wd.clone())];
    for path in declared {
        let mut parts = components(path)?;
        parts.pop();
        let mut full = wd.clone();
        full.extend(parts);
        parents.push((path.clone(), full));
    }
    for (name, parts) in parents {
        let mut dir = root.to_owned();
        for part in parts {
            dir.push(part);
            let prepare = |source| Error::Prepare {
                path: name.clone(),
                source,
            };
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(Error::Refused {
                        path: name.clone(),
                        reason: "a parent is not a directory",
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir).map_err(prepare)?;
                }
                Err(e) => return Err(prepare(e)),
            }
        }
    }
    Ok(())
}

/// Where an output is, once every parent is known to be a real directory;
/// `None` if the output (or a parent) does not exist.
fn locate(root: &Path, wd: &[&str], rel: &str) -> Result<Option<(PathBuf, Vec<String>)>, Error> {
    let mut parts: Vec<String> = wd.iter().map(|s| (*s).to_owned()).collect();
    parts.extend(components(rel)?.into_iter().map(str::to_owned));
    let mut path = root.to_owned();
    let count = parts.len();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        if i + 1 == count {
            break;
        }
        match is_real_dir(&path) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Refused {
                    path: rel.to_owned(),
                    reason: "a parent is a symlink or a file",
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path, source }),
        }
    }
    Ok(Some((path, parts)))
}

/// Whether a symlink at `at` (components from the input root, the link's
/// own name last) pointing to `target` stays inside the input root.
fn target_stays_inside(at: &[String], target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = at.len().saturating_sub(1);
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

fn read_link(path: &Path, at: &[String], rel: &str) -> Result<String, Error> {
    let target = std::fs::read_link(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let target = target.to_str().ok_or_else(|| Error::Refused {
        path: rel.to_owned(),
        reason: "symlink target is not UTF-8",
    })?;
    if !target_stays_inside(at, target) {
        return Err(Error::Refused {
            path: rel.to_owned(),
            reason: "symlink points outside the input root",
        });
    }
    Ok(target.to_owned())
}

/// Hashes a regular file, opened without following a symlink; its
/// digest, the blob to upload, and its executable bit.
fn hash_file(path: &Path) -> Result<(Digest, Blob, bool), Error> {
    let fail = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // NONBLOCK: a FIFO swapped in must not hang the worker.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.file_type().is_file() {
        return Err(fail(std::io::Error::other("not a regular file")));
    }
    let (digest, blob) = Blob::hash_file(file, path.to_owned()).map_err(fail)?;
    Ok((digest, blob, meta.permissions().mode() & 0o111 != 0))
}

/// The action's stdout or stderr, written by the runner at `path`: its
/// digest, the blob to upload, and its bytes to inline if `inline` and
/// at most [`corral_proto::MAX_INLINE_BYTES`] (else empty). `None` if the
/// runner never created it (it failed before starting the command).
pub fn log(path: &Path, inline: bool) -> Result<Option<(Digest, Blob, Vec<u8>)>, Error> {
    let size = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if inline && size <= corral_proto::MAX_INLINE_BYTES {
        let data = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        return Ok(Some((digest_of(&data), Blob::Bytes(data.clone()), data)));
    }
    let (digest, blob, _) = hash_file(path)?;
    Ok(Some((digest, blob, Vec::new())))
}

/// Walks the output directory at `path` into Directory messages: returns
/// the directory, and adds its descendants to `children`.
fn walk(
    path: &Path,
    at: &[String],
    rel: &str,
    children: &mut BTreeMap<String, Directory>,
    blobs: &mut Blobs,
) -> Result<Directory, Error> {
    let fail = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut entries: Vec<(String, std::fs::FileType)> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| Error::Refused {
                path: rel.to_owned(),
                reason: "contains a name that is not UTF-8",
            })?;
        entries.push((name, entry.file_type().map_err(fail)?));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dir = Directory::default();
    for (name, kind) in entries {
        let child = path.join(&name);
        let mut child_at = at.to_vec();
        child_at.push(name.clone());
        if kind.is_symlink() {
            let target = read_link(&child, &child_at, rel)?;
            dir.symlinks.push(SymlinkNode {
                name,
                target,
                ..Default::default()
            });
        } else if kind.is_dir() {
            let sub = walk(&child, &child_at, rel, children, blobs)?;
            let data = sub.encode_to_vec();
            let digest = digest_of(&data);
            children.insert(digest.hash.clone(), sub);
            blobs.push((digest.clone(), data.into()));
            dir.directories.push(DirectoryNode {
                name,
                digest: Some(digest),
            });
        } else if kind.is_file() {
            let (digest, blob, is_executable) = hash_file(&child)?;
            blobs.push((digest.clone(), blob));
            dir.files.push(FileNode {
                name,
                digest: Some(digest),
                is_executable,
                ..Default::default()
            });
        } else {
            return Err(Error::Refused {
                path: rel.to_owned(),
                reason: "contains a socket, FIFO or device",
            });
        }
    }
    Ok(dir)
}

/// Which result field a symlink output goes to.
#[derive(Clone, Copy)]
enum Declared {
    /// REAPI 2.1 `output_paths`: any kind.
    Path,
    /// `output_files`: a file, or a symlink in `output_file_symlinks`.
    File,
    /// `output_directories`: a directory, or `output_directory_symlinks`.
    Directory,
}

/// The declared outputs and which field each goes to: REAPI 2.1's
/// `output_paths` if set, else the older pair.
fn declared(command: &Command) -> Vec<(&String, Declared)> {
    if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .map(|p| (p, Declared::File))
            .chain(
                command
                    .output_directories
                    .iter()
                    .map(|p| (p, Declared::Directory)),
            )
            .collect()
    } else {
        command
            .output_paths
            .iter()
            .map(|p| (p, Declared::Path))
            .collect()
    }
}

/// What the outputs found so far take, against the limits.
struct Measure<'a> {
    limits: &'a Limits,
    bytes: u64,
    files: u64,
}

impl Measure<'_> {
    /// Counts one entry of `bytes` apparent bytes; an error once past a
    /// limit.
    fn add(&mut self, bytes: u64) -> Result<(), Error> {
        self.bytes = self.bytes.saturating_add(bytes);
        self.files += 1;
        if self.bytes > self.limits.output_max_bytes {
            return Err(Error::OverLimit {
                key: "output_max_bytes",
                what: "bytes",
                max: self.limits.output_max_bytes,
            });
        }
        if self.files > self.limits.output_max_files {
            return Err(Error::OverLimit {
                key: "output_max_files",
                what: "files, directories and symlinks",
                max: self.limits.output_max_files,
            });
        }
        Ok(())
    }

    /// Counts the tree under the real directory `path`, never following a
    /// symlink; stops at the first limit passed.
    fn directory(&mut self, path: &Path) -> Result<(), Error> {
        let fail = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        for entry in std::fs::read_dir(path).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            // DirEntry::metadata does not follow a symlink.
            let meta = entry.metadata().map_err(fail)?;
            self.add(if meta.is_file() { meta.len() } else { 0 })?;
            if meta.is_dir() {
                self.directory(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Measures the declared outputs under `root` against `limits`, by their
/// apparent sizes and number, before anything is hashed.
fn measure(root: &Path, wd: &[&str], command: &Command, limits: &Limits) -> Result<(), Error> {
    let mut measure = Measure {
        limits,
        bytes: 0,
        files: 0,
    };
    for (rel, _) in declared(command) {
        let Some((path, _)) = locate(root, wd, rel)? else {
            continue;
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Read { path, source }),
        };
        measure.add(if meta.is_file() { meta.len() } else { 0 })?;
        if meta.is_dir() {
            measure.directory(&path)?;
        }
    }
    Ok(())
}

/// Collects the declared outputs under `root` into `result`, returning
/// the blobs to upload; past `limits`, an error before anything is
/// hashed. Outputs that do not exist are left out.
pub fn collect(
    root: &Path,
    command: &Command,
    limits: &Limits,
    result: &mut ActionResult,
) -> Result<Blobs, Error> {
    let wd = working_components(&command.working_directory)?;
    measure(root, &wd, command, limits)?;
    let mut blobs = Blobs::new();
    for (rel, how) in declared(command) {
        let Some((path, at)) = locate(root, &wd, rel)? else {
            continue;
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Read { path, source }),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let symlink = OutputSymlink {
                path: rel.clone(),
                target: read_link(&path, &at, rel)?,
                ..Default::default()
            };
            match how {
                Declared::Path => result.output_symlinks.push(symlink),
                Declared::File => result.output_file_symlinks.push(symlink),
                Declared::Directory => result.output_directory_symlinks.push(symlink),
            }
        } else if kind.is_file() {
            if let Declared::Directory = how {
                return Err(Error::Refused {
                    path: rel.clone(),
                    reason: "declared a directory, but is a file",
                });
            }
            let (digest, blob, is_executable) = hash_file(&path)?;
            blobs.push((digest.clone(), blob));
            result.output_files.push(OutputFile {
                path: rel.clone(),
                digest: Some(digest),
                is_executable,
                ..Default::default()
            });
        } else if kind.is_dir() {
            if let Declared::File = how {
                return Err(Error::Refused {
                    path: rel.clone(),
                    reason: "declared a file, but is a directory",
                });
            }
            let mut children = BTreeMap::new();
            let root_dir = walk(&path, &at, rel, &mut children, &mut blobs)?;
            let root_data = root_dir.encode_to_vec();
            let root_digest = digest_of(&root_data);
            blobs.push((root_digest.clone(), root_data.into()));
            let tree = Tree {
                root: Some(root_dir),
                children: children.into_values().collect(),
            };
            let tree_data = tree.encode_to_vec();
            let tree_digest = digest_of(&tree_data);
            blobs.push((tree_digest.clone(), tree_data.into()));
            result.output_directories.push(OutputDirectory {
                path: rel.clone(),
                tree_digest: Some(tree_digest),
                root_directory_digest: Some(root_digest),
                ..Default::default()
            });
        } else {
            return Err(Error::Refused {
                path: rel.clone(),
                reason: "is a socket, FIFO or device",
            });
        }
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn symlink_targets_must_stay_in_the_root() {
        assert!(target_stays_inside(&at(&["a", "link"]), "../b"));
        assert!(target_stays_inside(&at(&["link"]), "b/c"));
        assert!(!target_stays_inside(&at(&["link"]), "../b"));
        assert!(!target_stays_inside(&at(&["a", "link"]), "../../b"));
        assert!(!target_stays_inside(&at(&["link"]), "/etc/passwd"));
    }

    #[test]
    fn output_paths_may_not_escape() {
        assert_eq!(components("a/./b").unwrap(), ["a", "b"]);
        assert!(components("../a").is_err());
        assert!(components("/a").is_err());
    }

    #[test]
    fn a_symlinked_parent_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        let command = Command {
            output_files: vec!["out/passwd".to_owned()],
            ..Default::default()
        };
        let mut result = ActionResult::default();
        let err = collect(&root, &command, &Limits::default(), &mut result).unwrap_err();
        assert!(err.to_string().contains("out/passwd"), "{err}");
        assert!(prepare(&root, &command).is_err());
    }

    #[test]
    fn outputs_past_the_limits_are_refused_before_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("many")).unwrap();
        // 8 GiB that take no disk: hashing it would take many seconds.
        let sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(8 << 30).unwrap();
        for i in 0..20 {
            std::fs::write(root.join("many").join(format!("f{i}")), b"x").unwrap();
        }
        let limits = Limits {
            output_max_bytes: 1 << 30,
            output_max_files: 10,
        };
        let only = |path: &str| Command {
            output_paths: vec![path.to_owned()],
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let mut result = ActionResult::default();
        let err = collect(&root, &only("sparse"), &limits, &mut result).unwrap_err();
        assert!(
            matches!(err, Error::OverLimit { key: "output_max_bytes", max, .. } if max == 1 << 30),
            "{err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "hashed"
        );
        let err = collect(&root, &only("many"), &limits, &mut result).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OverLimit {
                    key: "output_max_files",
                    max: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(result, ActionResult::default(), "nothing reported");
        let roomy = Limits {
            output_max_bytes: 8 << 30,
            output_max_files: 21,
        };
        let blobs = collect(&root, &only("many"), &roomy, &mut result).unwrap();
        assert!(!blobs.is_empty());
    }
}
