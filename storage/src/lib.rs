//! Storage: the Content Addressable Storage and the Action Cache.
//!
//! Backends (memory, local disk, a remote REAPI store) sit behind one
//! trait, and the REAPI services (`ContentAddressableStorage`,
//! `ByteStream`, `ActionCache`, `Capabilities`) are served over them.
//!
//! Modules:
//! - [`config`] — `storage.toml`.
//! - [`error`] — the crate's error type.
//!
//! Storage never trusts a digest it is given: every write is verified
//! against its content, and nothing half-written is ever visible.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;

pub use config::Config;
pub use error::Error;
