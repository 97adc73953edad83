//! Storage: the Content Addressable Storage and the Action Cache.
//!
//! Backends (memory, local disk, a remote REAPI store) sit behind one
//! trait, and the REAPI services (`ContentAddressableStorage`,
//! `ByteStream`, `ActionCache`, `Capabilities`) are served over them.
//!
//! Modules:
//! - [`config`] — `storage.toml`.
//! - [`error`] — the crate's error type.
//! - [`digest`] — digests, digest functions, hashing and verification.
//! - [`blob_store`] — the CAS trait; [`blob_write`] — one write to it.
//! - [`action_cache`] — the Action Cache trait.
//! - [`lru_index`] — what a bounded store holds, in order of use.
//! - [`memory_blob_store`], [`disk_blob_store`] — the backends.
//!
//! Storage never trusts a digest it is given: every write is verified
//! against its content, and nothing half-written is ever visible.

#![forbid(unsafe_code)]

pub mod action_cache;
pub mod blob_store;
pub mod blob_write;
pub mod config;
pub mod digest;
pub mod disk_blob_store;
pub mod error;
pub mod lru_index;
pub mod memory_blob_store;

pub use action_cache::ActionCache;
pub use blob_store::BlobStore;
pub use blob_write::BlobWrite;
pub use config::Config;
pub use digest::{Digest, DigestFunction};
pub use disk_blob_store::DiskBlobStore;
pub use error::Error;
pub use memory_blob_store::MemoryBlobStore;
