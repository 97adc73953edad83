//! `ActionCache`: action digest → encoded `ActionResult`.
//!
//! The cache stores bytes, not messages: encoding and the completeness
//! check (serving an entry only while the blobs it names are in the CAS)
//! belong to the service, so every backend gets them for free.

use crate::blob_store::Error;
use crate::digest::Digest;

/// The Action Cache.
#[tonic::async_trait]
pub trait ActionCache: Send + Sync + 'static {
    /// The encoded `ActionResult` stored for `action`, if any.
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error>;

    /// Stores (or replaces) the encoded `ActionResult` for `action`.
    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error>;
}
