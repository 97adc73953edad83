//! The one CAS client of Corral: the worker, the scheduler and storage's
//! remote backend all reach a REAPI CAS through it.
//!
//! - [`digest`] — digests, their functions (SHA-256, BLAKE3), and the
//!   [`digest::Verifier`] storage also checks uploads with.
//! - [`resource`] — ByteStream resource names.
//! - [`CasClient`] — batched reads and writes for small blobs, ByteStream
//!   for large ones, chunked so nothing large is held whole, and every
//!   blob read checked against its digest.
//! - [`verify_chunks`] — a blob streamed on as it arrives, checked whole
//!   at its end, for readers that cannot hold it.

#![forbid(unsafe_code)]

mod client;
pub mod digest;
pub mod resource;
mod verified_stream;

pub use client::{
    digest_of, read_response, BatchLimits, Blob, CasClient, Error, Fetched, BATCH_BLOB_MAX_BYTES,
};
pub use verified_stream::verify_chunks;
