//! Container images as action roots, without a container runtime.
//!
//! The worker asks the [`ImageStore`] for the image an action's
//! `container-image` platform property names; the store pulls it from a
//! registry (the OCI distribution API) or an OCI layout directory,
//! verifies every digest, unpacks the layers into a tree no entry of
//! which leaves it, and keeps it by digest, bounded in bytes. The runner
//! then binds the tree, read-only, as the action's root.
//!
//! Modules:
//! - [`reference`] — `docker://…` and `oci:…` values.
//! - [`digest`] — sha256 digests and hashing readers.
//! - [`manifest`] — indexes, manifests, configs; platform selection.
//! - [`credentials`] — logins from a Docker-style config.json.
//! - `source` — the registry client and the layout reader.
//! - [`unpack`] — layers into a tree: whiteouts, links, what is refused.
//! - [`store`] — the bounded cache, single-flight pulls, handles.
//! - [`config`] — the worker's `[images]` table.
//!
//! This crate must never depend on the sandbox or the worker
//! (tests/architecture.rs): it turns references into directories, and
//! that is all.

#![forbid(unsafe_code)]

pub mod config;
pub mod credentials;
pub mod digest;
mod error;
pub mod manifest;
pub mod reference;
mod source;
pub mod store;
pub mod unpack;

pub use config::Config;
pub use error::{Blame, Error};
pub use store::{Image, ImageStore, PullError};

#[cfg(test)]
mod tests {
    /// An error and its causes, joined, as a status message shows them.
    pub(crate) fn chain(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}
