//! ByteStream resource names, as REAPI defines them:
//!
//! ```text
//! read:  {instance_name}/blobs/{digest_function/}{hash}/{size}{/optional metadata}
//!        {instance_name}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}
//! write: {instance_name}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/optional metadata}
//!        {instance_name}/uploads/{uuid}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}
//! ```
//!
//! The instance name may itself contain slashes but no reserved segment,
//! so the first `blobs`, `compressed-blobs` or `uploads` segment ends it.
//! The digest function segment is omitted for SHA-256 (inferred from the
//! 64-character hash) and required for BLAKE3, whose hashes have the same
//! length.

use crate::digest::{Digest, DigestError, DigestFunction, HASH_BYTES};
use crate::status::excerpt;

/// How a resource's bytes are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Identity,
    Zstd,
}

/// A parsed read resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResource {
    pub instance_name: String,
    pub compressor: Compressor,
    pub digest: Digest,
}

/// A parsed write resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResource {
    pub instance_name: String,
    pub upload_id: String,
    pub compressor: Compressor,
    pub digest: Digest,
}

/// A resource name that does not follow REAPI's grammar. Always the
/// client's fault: INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceNameError {
    #[error("resource name {name:?} has no `blobs/` or `compressed-blobs/` segment")]
    NoBlobs { name: String },
    #[error("resource name {name:?} has no `uploads/{{uuid}}/` segment")]
    NoUploads { name: String },
    #[error("resource name {name:?} has an empty upload id")]
    EmptyUploadId { name: String },
    #[error("resource name {name:?} names compressor {compressor:?} (supported: identity, zstd)")]
    UnknownCompressor { name: String, compressor: String },
    #[error("resource name {name:?} ends before its {missing}")]
    Truncated { name: String, missing: &'static str },
    #[error("resource name {name:?} has an invalid digest")]
    Digest {
        name: String,
        #[source]
        source: DigestError,
    },
}

pub fn parse_read(name: &str) -> Result<ReadResource, ResourceNameError> {
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments
        .iter()
        .position(|s| matches!(*s, "blobs" | "compressed-blobs"))
        .ok_or_else(|| ResourceNameError::NoBlobs {
            name: excerpt(name),
        })?;
    let (compressor, digest) = parse_blob(name, &segments[at..])?;
    Ok(ReadResource {
        instance_name: segments[..at].join("/"),
        compressor,
        digest,
    })
}

pub fn parse_write(name: &str) -> Result<WriteResource, ResourceNameError> {
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments
        .iter()
        .position(|s| *s == "uploads")
        .ok_or_else(|| ResourceNameError::NoUploads {
            name: excerpt(name),
        })?;
    let upload_id = *segments
        .get(at + 1)
        .ok_or_else(|| ResourceNameError::Truncated {
            name: excerpt(name),
            missing: "upload id",
        })?;
    if upload_id.is_empty() {
        return Err(ResourceNameError::EmptyUploadId {
            name: excerpt(name),
        });
    }
    let rest = &segments[at + 2..];
    if !matches!(rest.first(), Some(&"blobs" | &"compressed-blobs")) {
        return Err(ResourceNameError::NoBlobs {
            name: excerpt(name),
        });
    }
    let (compressor, digest) = parse_blob(name, rest)?;
    Ok(WriteResource {
        instance_name: segments[..at].join("/"),
        upload_id: upload_id.to_owned(),
        compressor,
        digest,
    })
}

/// Parses from the `blobs` or `compressed-blobs` segment on. Segments
/// after the size are optional metadata, which REAPI lets servers ignore.
fn parse_blob(name: &str, segments: &[&str]) -> Result<(Compressor, Digest), ResourceNameError> {
    let truncated = |missing| ResourceNameError::Truncated {
        name: excerpt(name),
        missing,
    };
    let (compressor, mut rest) = match segments {
        ["blobs", rest @ ..] => (Compressor::Identity, rest),
        ["compressed-blobs", compressor, rest @ ..] => {
            let compressor = match *compressor {
                "identity" => Compressor::Identity,
                "zstd" => Compressor::Zstd,
                other => {
                    return Err(ResourceNameError::UnknownCompressor {
                        name: excerpt(name),
                        compressor: excerpt(other),
                    })
                }
            };
            (compressor, rest)
        }
        ["compressed-blobs"] => return Err(truncated("compressor")),
        _ => {
            return Err(ResourceNameError::NoBlobs {
                name: excerpt(name),
            })
        }
    };
    let digest_err = |source| ResourceNameError::Digest {
        name: excerpt(name),
        source,
    };
    let first = rest.first().ok_or_else(|| truncated("hash"))?;
    // A function name is never 64 characters long, a hash always is.
    let function = if first.len() == HASH_BYTES * 2 {
        DigestFunction::Sha256
    } else {
        rest = &rest[1..];
        DigestFunction::from_name(first).map_err(digest_err)?
    };
    let hash = rest.first().ok_or_else(|| truncated("hash"))?;
    let size = rest.get(1).ok_or_else(|| truncated("size"))?;
    // Digits only: `str::parse` would also take a leading `+`. Digits
    // that do not fit are a number all the same, and the client is told so.
    let size_bytes = if !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) {
        size.parse::<i64>().map_err(|_| {
            digest_err(DigestError::SizeTooLarge {
                hash: excerpt(hash),
                size: excerpt(size),
            })
        })?
    } else {
        return Err(digest_err(DigestError::SizeNotNumber {
            hash: excerpt(hash),
            size: excerpt(size),
        }));
    };
    let digest = Digest::parse(function, hash, size_bytes).map_err(digest_err)?;
    Ok((compressor, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn read_names_with_and_without_instance_and_function() {
        let r = parse_read(&format!("blobs/{H}/0")).unwrap();
        assert_eq!(r.instance_name, "");
        assert_eq!(r.digest.function(), DigestFunction::Sha256);
        assert_eq!(r.compressor, Compressor::Identity);

        let r = parse_read(&format!("team/a/blobs/blake3/{H}/12/extra/metadata")).unwrap();
        assert_eq!(r.instance_name, "team/a");
        assert_eq!(r.digest.function(), DigestFunction::Blake3);
        assert_eq!(r.digest.size_bytes(), 12);

        let r = parse_read(&format!("i/compressed-blobs/zstd/sha256/{H}/5")).unwrap();
        assert_eq!(r.compressor, Compressor::Zstd);
        assert_eq!(r.digest.function(), DigestFunction::Sha256);
    }

    #[test]
    fn write_names_carry_the_upload_id() {
        let w = parse_write(&format!("main/uploads/1234-abcd/blobs/{H}/7")).unwrap();
        assert_eq!(w.instance_name, "main");
        assert_eq!(w.upload_id, "1234-abcd");
        assert_eq!(w.digest.size_bytes(), 7);
        let w = parse_write(&format!("uploads/u/compressed-blobs/zstd/blake3/{H}/7")).unwrap();
        assert_eq!(w.compressor, Compressor::Zstd);
        assert_eq!(w.digest.function(), DigestFunction::Blake3);
    }

    #[test]
    fn malformed_names_say_why() {
        let cases = [
            (parse_read("instance/nothing").unwrap_err(), "no `blobs/`"),
            (
                parse_read(&format!("blobs/{H}")).unwrap_err(),
                "before its size",
            ),
            (
                parse_read(&format!("blobs/{H}/-1")).unwrap_err(),
                "invalid digest",
            ),
            (
                parse_read(&format!("blobs/{H}/+1")).unwrap_err(),
                "invalid digest",
            ),
            (
                parse_read(&format!("blobs/sha1/{H}/1")).unwrap_err(),
                "invalid digest",
            ),
            (parse_read("blobs/abc/1").unwrap_err(), "invalid digest"),
            (
                parse_read(&format!("compressed-blobs/lz4/{H}/1")).unwrap_err(),
                "compressor \"lz4\"",
            ),
            (
                parse_write(&format!("blobs/{H}/1")).unwrap_err(),
                "no `uploads/",
            ),
            (
                parse_write(&format!("uploads//blobs/{H}/1")).unwrap_err(),
                "empty upload id",
            ),
            (
                parse_write(&format!("uploads/u/{H}/1")).unwrap_err(),
                "no `blobs/`",
            ),
            (parse_write("uploads").unwrap_err(), "upload id"),
            (
                parse_read(&format!("blobs/{H}/9223372036854775808")).unwrap_err(),
                "larger than any blob can be",
            ),
        ];
        for (err, expected) in cases {
            let text = crate::status::message(&err);
            assert!(
                text.contains(expected),
                "{text:?} should contain {expected:?}"
            );
        }
    }
}
