//! Digests and their verifier live in the CAS client crate, so storage and
//! every client check blobs with the same code.

pub use corral_cas_client::digest::*;
