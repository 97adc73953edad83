//! Why an image could not be pulled, and whose fault that is.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::ReferenceError;
use crate::unpack::UnpackError;

/// Whom a failed pull blames: what the action's answer should say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The `container-image` value itself is malformed.
    Reference,
    /// The image is missing, unreadable with our credentials, corrupt,
    /// escaping its root or too large: retrying the action cannot help.
    Image,
    /// The registry could not be reached or failed (5xx): may pass.
    Transient,
    /// This worker failed (its disk, its client).
    Worker,
}

/// One failed step of a pull.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container-image")]
    Reference(#[from] ReferenceError),
    #[error("not found: {what} (missing image or unknown tag)")]
    NotFound { what: String },
    #[error("digest mismatch on {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{digest:?} is not a sha256 digest")]
    BadDigest { digest: String },
    #[error("{what} is {bytes} bytes, more than the {max_bytes} allowed")]
    TooLarge {
        what: String,
        bytes: u64,
        max_bytes: u64,
    },
    #[error("failed to parse {what}")]
    Document {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported image: {reason}")]
    Unsupported { reason: String },
    #[error("failed to unpack layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("registry refused {url} ({status}): {hint}")]
    Denied {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("credential helper {helper} for registry {registry}: {reason}")]
    CredentialHelper {
        helper: String,
        registry: String,
        reason: String,
    },
    #[error("registry answered {status} for {url}")]
    Status { url: String, status: u16 },
    #[error("failed to reach {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to build the registry client")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whose fault it is.
    pub fn blame(&self) -> Blame {
        match self {
            Error::Reference(_) => Blame::Reference,
            Error::Unreachable { .. } => Blame::Transient,
            Error::Status { status, .. } if *status >= 500 || *status == 429 => Blame::Transient,
            Error::Unpack {
                source: UnpackError::Read(_) | UnpackError::Write { .. },
                ..
            }
            | Error::Io { .. }
            | Error::Client { .. } => Blame::Worker,
            _ => Blame::Image,
        }
    }

    /// A registry's 404 said in terms of what was looked up.
    pub(crate) fn not_found_as(self, what: String) -> Error {
        match self {
            Error::NotFound { .. } => Error::NotFound { what },
            other => other,
        }
    }
}
