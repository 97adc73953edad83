//! The worker's view of storage is the shared CAS client
//! (`corral-cas-client`): batched and streamed reads and writes, every
//! byte verified by its digest.

pub use corral_cas_client::{digest_of, Blob, CasClient, Error, BATCH_BLOB_MAX_BYTES};
