//! Unpacking layers into a root tree, the way an image's layers stack.
//!
//! Layers come from registries: their paths and links are input, never
//! trusted. Every entry lands inside the tree or the layer is refused:
//! - paths with `..` components are refused (`Escape`);
//! - a parent directory that is a symlink (an earlier layer's) is
//!   followed inside the tree, as the action would see it, never on the
//!   host: absolute targets restart at the tree's root, `..` stops there;
//! - hardlink targets must name an existing non-directory of the tree by
//!   a relative path without `..`; an absolute one is refused;
//! - symlinks are kept as they are: they resolve inside the sandbox's
//!   root, where the tree is mounted;
//! - device nodes and FIFOs are dropped; extended attributes (file
//!   capabilities among them) are not read; owners are not applied (the
//!   tree belongs to the unpacking user, whom the sandbox does not map);
//!   setuid and setgid bits are kept but mean nothing on the nosuid mount;
//! - whiteouts (`.wh.name`) remove what lower layers put there, opaque
//!   markers (`.wh..wh..opq`) empty their directory of lower layers'
//!   entries.
//!
//! The tree is written by this code alone (a fresh private directory),
//! so checking a path and then using it does not race with anyone.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::{Digest, HashingReader};
use crate::manifest::Compression;

/// Symlinks followed while resolving one parent path, as the kernel's
/// limit (ELOOP).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} escapes the image root ({reason})")]
    Escape { path: String, reason: &'static str },
    #[error("the image unpacks to more than the cache's {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    #[error("layer's uncompressed digest is {actual}, the config says {expected}")]
    DiffIdMismatch { expected: String, actual: Digest },
    #[error("layer entry {path:?}: {reason}")]
    Malformed { path: String, reason: &'static str },
    #[error("failed to read the layer")]
    Read(#[source] io::Error),
    #[error("failed to write {path} in the image tree")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bytes and entries written so far, against the cache's bound.
#[derive(Debug)]
pub struct Budget {
    pub written_bytes: u64,
    pub max_bytes: u64,
}

impl Budget {
    fn charge(&mut self, bytes: u64) -> Result<(), UnpackError> {
        // Each entry costs at least a block's worth of metadata: a layer of
        // millions of empty files is not free.
        self.written_bytes = self.written_bytes.saturating_add(bytes.max(512));
        if self.written_bytes > self.max_bytes {
            return Err(UnpackError::TooLarge {
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// A tree being built, layer after layer.
pub struct Tree {
    root: PathBuf,
    /// Directory modes applied at the end: until then every directory is
    /// writable by us, so a read-only directory of one layer does not
    /// stop the next from adding to it.
    dir_modes: HashMap<PathBuf, u32>,
}

impl Tree {
    /// Starts a tree at `root` (an empty directory).
    pub fn new(root: PathBuf) -> Tree {
        Tree {
            root,
            dir_modes: HashMap::new(),
        }
    }

    /// Unpacks one layer, read from `blob` with `compression`, verifying
    /// its uncompressed digest against `diff_id` when the config gives
    /// one.
    pub fn unpack(
        &mut self,
        blob: impl Read,
        compression: Compression,
        diff_id: Option<&str>,
        budget: &mut Budget,
    ) -> Result<(), UnpackError> {
        let tar: Box<dyn Read> = match compression {
            Compression::None => Box::new(blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(blob).map_err(UnpackError::Read)?)
            }
        };
        let mut hashing = HashingReader::new(tar);
        {
            let mut archive = tar::Archive::new(&mut hashing);
            let mut layer = Layer {
                tree: self,
                created: HashSet::new(),
            };
            for entry in archive.entries().map_err(UnpackError::Read)? {
                let entry = entry.map_err(UnpackError::Read)?;
                layer.entry(entry, budget)?;
            }
        }
        let actual = hashing.finish().map_err(UnpackError::Read)?;
        if let Some(expected) = diff_id {
            if actual.to_string() != expected {
                return Err(UnpackError::DiffIdMismatch {
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Applies the directory modes held back while unpacking.
    pub fn finish(self) -> Result<(), UnpackError> {
        for (path, mode) in self.dir_modes {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                        .map_err(|source| UnpackError::Write { path, source })?;
                }
                _ => {}
            }
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755)).map_err(|source| {
            UnpackError::Write {
                path: self.root.clone(),
                source,
            }
        })
    }
}

/// One layer's pass over the tree.
struct Layer<'t> {
    tree: &'t mut Tree,
    /// Paths this layer made: an opaque marker removes everything else.
    created: HashSet<PathBuf>,
}

/// The normal components of an entry path; `..` is refused.
fn components(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Escape {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    reason: "a `..` component",
                })
            }
            name => out.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    Ok(out)
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Removes whatever is at `path` (not following a symlink there).
fn remove(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(write_error(path)),
        Ok(_) => fs::remove_file(path).map_err(write_error(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_error(path)(e)),
    }
}

impl Layer<'_> {
    /// The directory `parts` names inside the tree, following symlinks
    /// inside the tree and making missing directories.
    fn resolve_dir(&mut self, parts: &[OsString], raw: &[u8]) -> Result<PathBuf, UnpackError> {
        let escape = |reason| UnpackError::Escape {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason,
        };
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: std::collections::VecDeque<OsString> = parts.iter().cloned().collect();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    // At the root, `..` is the root, as in the sandbox.
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let mut path = self.tree.root.clone();
            path.extend(&resolved);
            path.push(&part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(escape("too many symlinks in its parent path"));
                    }
                    let target = fs::read_link(&path).map_err(write_error(&path))?;
                    let target = target.as_os_str().as_bytes();
                    if target.starts_with(b"/") {
                        resolved.clear();
                    }
                    for (i, piece) in target.split(|&b| b == b'/').enumerate() {
                        pending.insert(i, OsStr::from_bytes(piece).to_owned());
                    }
                }
                Ok(meta) if meta.is_dir() => resolved.push(part),
                Ok(_) => {
                    return Err(UnpackError::Malformed {
                        path: String::from_utf8_lossy(raw).into_owned(),
                        reason: "a parent is not a directory",
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(write_error(&path))?;
                    self.created.insert(path);
                    resolved.push(part);
                }
                Err(e) => return Err(write_error(&path)(e)),
            }
        }
        let mut path = self.tree.root.clone();
        path.extend(&resolved);
        Ok(path)
    }

    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        budget: &mut Budget,
    ) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let mut parts = components(&raw)?;
        let Some(name) = parts.pop() else {
            // The root itself: its mode is ours (0755).
            return Ok(());
        };
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(UnpackError::Read)? & 0o7777;
        budget.charge(entry.size())?;

        let parent = self.resolve_dir(&parts, &raw)?;
        let name_bytes = name.as_bytes();
        if name_bytes == b".wh..wh..opq" {
            return self.opaque(&parent);
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            return remove(&parent.join(OsStr::from_bytes(hidden)));
        }
        let path = parent.join(&name);
        use tar::EntryType;
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {}
                    _ => {
                        remove(&path)?;
                        fs::DirBuilder::new()
                            .mode(0o755)
                            .create(&path)
                            .map_err(write_error(&path))?;
                    }
                }
                self.tree.dir_modes.insert(path.clone(), mode);
            }
            EntryType::Regular | EntryType::Continuous => {
                remove(&path)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(write_error(&path))?;
                io::copy(&mut entry, &mut file).map_err(UnpackError::Read)?;
                // setuid/setgid kept: the tree is mounted nosuid.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(write_error(&path))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
                    // Tools compare mtimes (Python's bytecode caches); a
                    // file system that refuses is no reason to fail.
                    let _ = file.set_modified(when);
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(UnpackError::Malformed {
                        path: String::from_utf8_lossy(&raw).into_owned(),
                        reason: "a symlink without a target",
                    })?
                    .into_owned();
                remove(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(write_error(&path))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(UnpackError::Malformed {
                        path: String::from_utf8_lossy(&raw).into_owned(),
                        reason: "a hardlink without a target",
                    })?
                    .into_owned();
                let source = self.hardlink_source(&target)?;
                remove(&path)?;
                // link(2) never follows a symlink at the source: a
                // hardlink to a symlink is a second name of the symlink.
                fs::hard_link(&source, &path).map_err(write_error(&path))?;
            }
            // Devices and FIFOs: an action has no use for them, and a
            // device node is a way to the host's hardware.
            EntryType::Char | EntryType::Block | EntryType::Fifo => return Ok(()),
            // Headers tar reads itself (long names, pax), and kinds no
            // image needs.
            _ => return Ok(()),
        }
        self.created.insert(path);
        Ok(())
    }

    /// The existing tree file a hardlink's target names.
    fn hardlink_source(&mut self, target: &[u8]) -> Result<PathBuf, UnpackError> {
        let escape = |reason| UnpackError::Escape {
            path: String::from_utf8_lossy(target).into_owned(),
            reason,
        };
        if target.starts_with(b"/") {
            return Err(escape("an absolute hardlink target"));
        }
        let mut parts = components(target)?;
        let name = parts.pop().ok_or(escape("an empty hardlink target"))?;
        let parent = self.resolve_dir(&parts, target)?;
        let source = parent.join(name);
        match fs::symlink_metadata(&source) {
            Ok(meta) if !meta.is_dir() => Ok(source),
            Ok(_) => Err(UnpackError::Malformed {
                path: String::from_utf8_lossy(target).into_owned(),
                reason: "a hardlink to a directory",
            }),
            Err(_) => Err(UnpackError::Malformed {
                path: String::from_utf8_lossy(target).into_owned(),
                reason: "a hardlink to a file the layers do not hold",
            }),
        }
    }

    /// Removes every entry of `dir` that this layer did not make.
    fn opaque(&mut self, dir: &Path) -> Result<(), UnpackError> {
        for child in fs::read_dir(dir).map_err(write_error(dir))? {
            let child = child.map_err(write_error(dir))?.path();
            if !self.created.contains(&child) {
                remove(&child)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar layer of (path, kind, data or link target, mode).
    pub(crate) fn layer(entries: &[(&str, tar::EntryType, &str, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, mode) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            header.set_mtime(1_000_000);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_size(0);
                    // Raw bytes, so crafted targets (absolute, `..`) pass.
                    header.as_old_mut().linkname[..data.len()].copy_from_slice(data.as_bytes());
                    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    header.set_cksum();
                    builder.append(&header, io::empty()).unwrap();
                }
                _ => {
                    header.set_size(data.len() as u64);
                    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    header.set_cksum();
                    builder.append(&header, data.as_bytes()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn unpack_all(
        layers: &[Vec<u8>],
        max_bytes: u64,
    ) -> (tempfile::TempDir, Result<(), UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let mut tree = Tree::new(root);
        let mut budget = Budget {
            written_bytes: 0,
            max_bytes,
        };
        for l in layers {
            let result = tree.unpack(&l[..], Compression::None, None, &mut budget);
            if result.is_err() {
                return (dir, result);
            }
        }
        (dir, tree.finish())
    }

    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_directories() {
        let lower = layer(&[
            ("etc/", Directory, "", 0o755),
            ("etc/keep", Regular, "keep", 0o644),
            ("etc/gone", Regular, "gone", 0o644),
            ("opt/old/", Directory, "", 0o755),
            ("opt/old/a", Regular, "a", 0o644),
            ("opt/old/sub/b", Regular, "b", 0o644),
        ]);
        let upper = layer(&[
            ("etc/.wh.gone", Regular, "", 0o644),
            ("opt/old/", Directory, "", 0o755),
            ("opt/old/new", Regular, "new", 0o644),
            ("opt/old/.wh..wh..opq", Regular, "", 0o644),
        ]);
        let (dir, result) = unpack_all(&[lower, upper], 1 << 30);
        result.unwrap();
        let root = dir.path().join("rootfs");
        assert_eq!(fs::read_to_string(root.join("etc/keep")).unwrap(), "keep");
        assert!(!root.join("etc/gone").exists());
        let mut old: Vec<_> = fs::read_dir(root.join("opt/old"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        old.sort();
        assert_eq!(old, ["new"]);
    }

    #[test]
    fn a_parent_symlink_is_followed_inside_the_tree_never_on_the_host() {
        // An earlier layer points `etc` at the host's /etc, then a later
        // entry writes through it: it lands in the tree's own /etc.
        let host = tempfile::tempdir().unwrap();
        let target = host.path().to_str().unwrap().to_owned();
        let first = layer(&[
            ("escape", Symlink, &target, 0o777),
            ("up", Symlink, "../../..", 0o777),
        ]);
        let second = layer(&[
            ("escape/planted", Regular, "x", 0o644),
            ("up/planted2", Regular, "y", 0o644),
        ]);
        let (dir, result) = unpack_all(&[first, second], 1 << 30);
        result.unwrap();
        assert!(!host.path().join("planted").exists());
        assert!(!dir.path().join("planted2").exists());
        let root = dir.path().join("rootfs");
        assert_eq!(
            fs::read_to_string(root.join(target.trim_start_matches('/')).join("planted")).unwrap(),
            "x"
        );
        assert_eq!(fs::read_to_string(root.join("planted2")).unwrap(), "y");
        // The symlinks themselves are kept as written.
        assert_eq!(
            fs::read_link(root.join("escape")).unwrap(),
            Path::new(&target)
        );
    }

    #[test]
    fn dot_dot_paths_and_absolute_or_escaping_hardlinks_are_refused() {
        for (entries, want) in [
            (vec![("../outside", Regular, "x", 0o644)], "`..` component"),
            (
                vec![("a/../../outside", Regular, "x", 0o644)],
                "`..` component",
            ),
            (
                vec![("passwd", Link, "/etc/passwd", 0o644)],
                "absolute hardlink",
            ),
            (
                vec![("passwd", Link, "../../etc/passwd", 0o644)],
                "`..` component",
            ),
        ] {
            let (_dir, result) = unpack_all(&[layer(&entries)], 1 << 30);
            let err = result.unwrap_err();
            assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
        // A hardlink to a file the tree lacks (the host has /etc/passwd).
        let (_dir, result) = unpack_all(&[layer(&[("p", Link, "etc/passwd", 0o644)])], 1 << 30);
        assert!(result.unwrap_err().to_string().contains("do not hold"));
    }

    #[test]
    fn hardlinks_inside_the_tree_are_kept_and_devices_dropped() {
        let l = layer(&[
            ("bin/busybox", Regular, "elf", 0o4755),
            ("bin/sh", Link, "bin/busybox", 0o755),
            ("dev/sda", Block, "", 0o660),
            ("dev/mem", Char, "", 0o640),
            ("fifo", Fifo, "", 0o644),
        ]);
        let (dir, result) = unpack_all(&[l], 1 << 30);
        result.unwrap();
        let root = dir.path().join("rootfs");
        use std::os::unix::fs::MetadataExt;
        let a = fs::metadata(root.join("bin/busybox")).unwrap();
        let b = fs::metadata(root.join("bin/sh")).unwrap();
        assert_eq!(a.ino(), b.ino());
        // setuid kept: harmless on the nosuid mount, and what the probe tries.
        assert_eq!(a.mode() & 0o7777, 0o4755);
        assert!(!root.join("dev/sda").exists());
        assert!(!root.join("dev/mem").exists());
        assert!(!root.join("fifo").exists());
    }

    #[test]
    fn an_image_larger_than_the_bound_is_refused() {
        let big = "x".repeat(10_000);
        let l = layer(&[("big", Regular, &big, 0o644)]);
        let (_dir, result) = unpack_all(&[l], 4096);
        assert!(matches!(
            result,
            Err(UnpackError::TooLarge { max_bytes: 4096 })
        ));
    }

    #[test]
    fn a_layer_whose_content_differs_from_its_diff_id_is_refused() {
        let l = layer(&[("a", Regular, "a", 0o644)]);
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(dir.path().to_owned());
        let mut budget = Budget {
            written_bytes: 0,
            max_bytes: 1 << 20,
        };
        let wrong = Digest::of(b"other").to_string();
        let err = tree
            .unpack(&l[..], Compression::None, Some(&wrong), &mut budget)
            .unwrap_err();
        assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
        let right = Digest::of(&l).to_string();
        let again = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(again.path().to_owned());
        tree.unpack(&l[..], Compression::None, Some(&right), &mut budget)
            .unwrap();
    }

    mod crafted {
        use proptest::prelude::*;

        use super::*;

        /// Path pieces a hostile layer would use: names, `..`, `.`,
        /// whiteouts, and (for link targets) the absolute path of a
        /// directory beside the tree.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "a",
                "b",
                "etc",
                "..",
                ".",
                ".wh.a",
                ".wh..wh..opq",
                "OUT",
            ])
        }

        fn path() -> impl Strategy<Value = Vec<&'static str>> {
            prop::collection::vec(piece(), 1..4)
        }

        fn kind() -> impl Strategy<Value = tar::EntryType> {
            prop::sample::select(vec![
                tar::EntryType::Regular,
                tar::EntryType::Directory,
                tar::EntryType::Symlink,
                tar::EntryType::Link,
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
            /// Whatever two crafted layers hold, unpacking them writes
            /// nothing outside the tree (an `outside` directory beside it,
            /// which symlinks and hardlinks name absolutely and by `..`,
            /// stays empty), and never panics.
            #[test]
            fn nothing_lands_outside_the_tree(
                layers in prop::collection::vec(
                    prop::collection::vec((path(), kind(), path(), any::<bool>()), 1..10),
                    1..3,
                )
            ) {
                let dir = tempfile::tempdir().unwrap();
                let outside = dir.path().join("outside");
                fs::create_dir(&outside).unwrap();
                let root = dir.path().join("rootfs");
                fs::create_dir(&root).unwrap();
                let out = outside.to_str().unwrap().to_owned();
                let render = |parts: &[&str], absolute: bool| {
                    let joined = parts
                        .iter()
                        .map(|p| if *p == "OUT" { out.as_str() } else { p })
                        .collect::<Vec<_>>()
                        .join("/");
                    if absolute { format!("/{joined}") } else { joined }
                };
                let mut tree = Tree::new(root.clone());
                let mut budget = Budget { written_bytes: 0, max_bytes: 1 << 20 };
                for entries in &layers {
                    let rendered: Vec<(String, tar::EntryType, String)> = entries
                        .iter()
                        .map(|(p, k, t, abs)| (render(p, false), *k, render(t, *abs)))
                        .filter(|(p, _, t)| p.len() < 100 && t.len() < 100)
                        .collect();
                    let spec: Vec<(&str, tar::EntryType, &str, u32)> = rendered
                        .iter()
                        .map(|(p, k, t)| {
                            let data = if matches!(k, tar::EntryType::Regular) { "x" } else { t };
                            (p.as_str(), *k, data, 0o755)
                        })
                        .collect();
                    let bytes = layer(&spec);
                    // Refusals are fine; escapes and panics are not.
                    let _ = tree.unpack(&bytes[..], Compression::None, None, &mut budget);
                }
                let leaked: Vec<_> = fs::read_dir(&outside).unwrap().collect();
                prop_assert!(leaked.is_empty(), "written outside: {:?}", leaked);
                let beside: Vec<_> = fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                prop_assert_eq!(beside.len(), 2, "{:?}", beside);
            }
        }
    }

    #[test]
    fn gzip_and_zstd_layers_unpack() {
        let l = layer(&[("f", Regular, "data", 0o644)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &l).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&l[..], 1).unwrap();
        for (blob, c) in [(gz, Compression::Gzip), (zst, Compression::Zstd)] {
            let dir = tempfile::tempdir().unwrap();
            let mut tree = Tree::new(dir.path().to_owned());
            let mut budget = Budget {
                written_bytes: 0,
                max_bytes: 1 << 20,
            };
            tree.unpack(&blob[..], c, Some(&Digest::of(&l).to_string()), &mut budget)
                .unwrap();
            assert_eq!(fs::read_to_string(dir.path().join("f")).unwrap(), "data");
        }
    }
}
