//! `BlobWrite`: one blob being written to a [`BlobStore`](crate::BlobStore).

use crate::blob_store::Error;
use crate::digest::Digest;

/// A blob being written: bytes go in with `write`, and only `commit`
/// makes them visible, after checking them against the digest. Dropping a
/// write without committing it discards what it received, so an aborted
/// upload leaves nothing behind.
#[tonic::async_trait]
pub trait BlobWrite: Send {
    /// The digest being written.
    fn digest(&self) -> &Digest;

    /// How many bytes `write` has accepted so far: where a resumed upload
    /// continues from.
    fn received(&self) -> u64;

    /// Appends bytes. Refuses, without storing them, bytes past the
    /// digest's size.
    async fn write(&mut self, data: &[u8]) -> Result<(), Error>;

    /// Checks size and hash, then makes the blob visible.
    async fn commit(self: Box<Self>) -> Result<(), Error>;
}
