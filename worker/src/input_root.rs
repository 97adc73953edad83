//! Lays out an action's input root from its Directory tree.
//!
//! The tree is read level by level (one batch read per level), every name
//! is checked before it is used as a path component, directories are
//! created, symlinks written as given (never followed: only their own
//! inode is created), and all files are hardlinked from the file cache
//! in one pass so missing ones are fetched together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use corral_proto::reapi::{Digest, Directory};
use prost::Message;

use crate::cas_client::{self, CasClient};
use crate::file_cache::{self, FileCache, Wanted};

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
    #[error("a node of {path} has no digest")]
    NoDigest { path: PathBuf },
    #[error("failed to create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to link the input files")]
    Files(#[source] file_cache::Error),
}

impl Error {
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
    } else {
        return Ok(name);
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Materializes the tree of `root` into the existing directory `dest`.
pub async fn materialize(
    cas: &CasClient,
    cache: &FileCache,
    root: &Digest,
    dest: &Path,
) -> Result<(), Error> {
    let mut level: Vec<(PathBuf, Digest)> = vec![(dest.to_owned(), root.clone())];
    let mut files = Vec::new();
    while !level.is_empty() {
        let digests: Vec<Digest> = level.iter().map(|(_, d)| d.clone()).collect();
        let blobs: HashMap<String, Vec<u8>> = cas
            .read_many(&digests)
            .await
            .map_err(Error::FetchDirectory)?;
        let mut next = Vec::new();
        for (path, digest) in level {
            let data = blobs.get(&digest.hash).map(Vec::as_slice).unwrap_or(&[]);
            let dir = Directory::decode(data).map_err(|source| Error::DecodeDirectory {
                digest: digest.clone(),
                source,
            })?;
            for node in dir.directories {
                let child = path.join(checked_name(&node.name)?);
                std::fs::create_dir(&child).map_err(|source| Error::Create {
                    path: child.clone(),
                    source,
                })?;
                let digest = node.digest.ok_or_else(|| Error::NoDigest {
                    path: child.clone(),
                })?;
                next.push((child, digest));
            }
            for node in dir.symlinks {
                let link = path.join(checked_name(&node.name)?);
                // The target is the action's business: it is resolved
                // inside the sandbox, and the worker never opens it.
                std::os::unix::fs::symlink(&node.target, &link).map_err(|source| {
                    Error::Create {
                        path: link.clone(),
                        source,
                    }
                })?;
            }
            for node in dir.files {
                let file = path.join(checked_name(&node.name)?);
                let digest = node
                    .digest
                    .ok_or_else(|| Error::NoDigest { path: file.clone() })?;
                files.push(Wanted {
                    digest,
                    executable: node.is_executable,
                    path: file,
                });
            }
        }
        level = next;
    }
    cache.link_all(cas, &files).await.map_err(Error::Files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        assert!(checked_name("a.txt").is_ok());
        assert!(checked_name("..a").is_ok());
        for bad in ["", ".", "..", "a/b", "/", "a\0"] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
    }
}
