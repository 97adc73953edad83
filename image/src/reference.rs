//! `container-image` values: where an image comes from and which one.
//!
//! Two forms, as Bazel's remote execution properties and air-gapped farms
//! write them:
//! - `docker://host[:port]/repository[:tag|@sha256:hex]`, a registry
//!   speaking the OCI distribution API (Docker Hub names without a host,
//!   `docker://debian:12`, mean `registry-1.docker.io/library/debian`);
//! - `oci:/absolute/path[:tag|@sha256:hex]`, an OCI image layout
//!   directory on the worker.
//!
//! Without a tag or digest the tag is `latest`; with both, the digest
//! wins (the tag is only a name for it).

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

/// The registry Docker Hub names (no host) resolve to.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// One parsed `container-image` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub source: Source,
    pub version: Version,
}

/// Where the image's manifests and blobs are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A distribution API registry: `host[:port]` and a repository.
    Registry { host: String, repository: String },
    /// An OCI image layout directory.
    Layout { path: PathBuf },
}

/// Which image of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A tag, resolved to a digest once per pull.
    Tag(String),
    /// A manifest (or index) digest: nothing to resolve.
    Digest(Digest),
}

/// Why a `container-image` value cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("{value:?} is neither docker://host/repository nor oci:/path")]
    Scheme { value: String },
    #[error("{value:?} has no repository")]
    NoRepository { value: String },
    #[error("{value:?} has an invalid repository {repository:?}: lowercase letters, digits and . _ - between slashes")]
    Repository { value: String, repository: String },
    #[error(
        "{value:?} has an invalid tag {tag:?}: up to 128 letters, digits and . _ - (not first)"
    )]
    Tag { value: String, tag: String },
    #[error(
        "{value:?} has an invalid digest: only sha256 with 64 lowercase hex digits is supported"
    )]
    Digest { value: String },
    #[error("{value:?} names a layout path that is not absolute, has `..`, or a colon in its last component")]
    LayoutPath { value: String },
}

impl Reference {
    /// Parses a `container-image` value.
    pub fn parse(value: &str) -> Result<Reference, ReferenceError> {
        if let Some(rest) = value.strip_prefix("docker://") {
            parse_registry(value, rest)
        } else if let Some(rest) = value.strip_prefix("oci:") {
            parse_layout(value, rest)
        } else {
            Err(ReferenceError::Scheme {
                value: value.to_owned(),
            })
        }
    }
}

/// Splits `name[:tag][@digest]` where a tag's colon comes after the last
/// slash (a `host:port` colon does not).
fn split_version(value: &str, rest: &str) -> Result<(String, Version), ReferenceError> {
    let (name, digest) = match rest.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (rest, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(tag) = tag {
        if !valid_tag(tag) {
            return Err(ReferenceError::Tag {
                value: value.to_owned(),
                tag: tag.to_owned(),
            });
        }
    }
    let version = match (digest, tag) {
        (Some(digest), _) => {
            Version::Digest(Digest::parse(digest).ok_or_else(|| ReferenceError::Digest {
                value: value.to_owned(),
            })?)
        }
        (None, Some(tag)) => Version::Tag(tag.to_owned()),
        (None, None) => Version::Tag("latest".to_owned()),
    };
    Ok((name.to_owned(), version))
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_repository(repository: &str) -> bool {
    repository.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
    })
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

fn parse_registry(value: &str, rest: &str) -> Result<Reference, ReferenceError> {
    let (name, version) = split_version(value, rest)?;
    // A first component with a dot, a colon, or `localhost` is a host;
    // anything else is a Docker Hub repository.
    let (host, repository) = match name.split_once('/') {
        Some((first, repository))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), repository.to_owned())
        }
        Some(_) => (DOCKER_HUB.to_owned(), name.clone()),
        None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
    };
    if repository.is_empty() {
        return Err(ReferenceError::NoRepository {
            value: value.to_owned(),
        });
    }
    if !valid_host(&host) || !valid_repository(&repository) {
        return Err(ReferenceError::Repository {
            value: value.to_owned(),
            repository,
        });
    }
    Ok(Reference {
        source: Source::Registry { host, repository },
        version,
    })
}

fn parse_layout(value: &str, rest: &str) -> Result<Reference, ReferenceError> {
    let (path, version) = split_version(value, rest)?;
    let path = PathBuf::from(path);
    // A colon left in the last component would read as a tag when the
    // value is printed and parsed again (found by the property test).
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir))
        && !path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().contains(&b':'));
    if !clean {
        return Err(ReferenceError::LayoutPath {
            value: value.to_owned(),
        });
    }
    Ok(Reference {
        source: Source::Layout { path },
        version,
    })
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Registry { host, repository } => write!(f, "docker://{host}/{repository}")?,
            Source::Layout { path } => write!(f, "oci:{}", path.display())?,
        }
        match &self.version {
            Version::Tag(tag) => write!(f, ":{tag}"),
            Version::Digest(digest) => write!(f, "@{digest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn registry(host: &str, repository: &str, version: Version) -> Reference {
        Reference {
            source: Source::Registry {
                host: host.to_owned(),
                repository: repository.to_owned(),
            },
            version,
        }
    }

    #[test]
    fn registry_references_parse_with_ports_tags_and_digests() {
        let tag = |t: &str| Version::Tag(t.to_owned());
        let digest = Version::Digest(Digest::parse(&format!("sha256:{HEX}")).unwrap());
        for (value, want) in [
            (
                "docker://127.0.0.1:5000/corral/busybox:1",
                registry("127.0.0.1:5000", "corral/busybox", tag("1")),
            ),
            (
                "docker://127.0.0.1:5000/corral/busybox",
                registry("127.0.0.1:5000", "corral/busybox", tag("latest")),
            ),
            (
                &format!("docker://gcr.io/p/img:v1@sha256:{HEX}"),
                registry("gcr.io", "p/img", digest.clone()),
            ),
            (
                "docker://debian:12",
                registry(DOCKER_HUB, "library/debian", tag("12")),
            ),
            (
                "docker://localhost/x",
                registry("localhost", "x", tag("latest")),
            ),
        ] {
            assert_eq!(Reference::parse(value).unwrap(), want, "{value}");
        }
        assert_eq!(
            Reference::parse("docker://127.0.0.1:5000/a/b:t")
                .unwrap()
                .to_string(),
            "docker://127.0.0.1:5000/a/b:t"
        );
    }

    #[test]
    fn layout_references_parse() {
        let r = Reference::parse("oci:/srv/images/busybox:v2").unwrap();
        assert_eq!(
            r.source,
            Source::Layout {
                path: "/srv/images/busybox".into()
            }
        );
        assert_eq!(r.version, Version::Tag("v2".to_owned()));
        let r = Reference::parse("oci:/srv/img").unwrap();
        assert_eq!(r.version, Version::Tag("latest".to_owned()));
    }

    proptest::proptest! {
        /// Any text: parsed or refused, never a panic; what parses prints
        /// back as a value that parses to the same reference.
        #[test]
        fn any_value_parses_or_is_refused_and_round_trips(
            value in "(docker://|oci:/)?[a-zA-Z0-9:@/._-]{0,40}(@sha256:[0-9a-f]{64})?"
        ) {
            if let Ok(reference) = Reference::parse(&value) {
                let again = Reference::parse(&reference.to_string());
                proptest::prop_assert_eq!(again, Ok(reference));
            }
        }
    }

    #[test]
    fn bad_references_are_refused_naming_what_is_wrong() {
        for (value, want) in [
            ("ubuntu:22.04", "neither"),
            ("docker://Gcr.io/UPPER:1", "invalid repository"),
            ("docker://host.io/a/../b", "invalid repository"),
            ("docker://host.io/a:bad!tag", "invalid tag"),
            ("docker://host.io/a@sha256:abc", "invalid digest"),
            ("docker://host.io/a@md5:0123", "invalid digest"),
            ("oci:relative/path", "not absolute"),
            ("oci:/a/../b", "has `..`"),
            ("oci:/a::t", "a colon"),
        ] {
            let err = Reference::parse(value).unwrap_err().to_string();
            assert!(err.contains(want), "{value}: {err}");
        }
    }
}
