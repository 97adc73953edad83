//! Building gRPC statuses at the service edge.
//!
//! Each service module decides the code for its own errors in its
//! `status` function; this module holds what they share: the message
//! (an error and its causes, since a client sees nothing else), the code
//! for store failures, and the `google.rpc.Status` form that batch
//! responses carry per blob.

use std::error::Error as StdError;

use corral_proto::rpc;
use tonic::Code;

use crate::blob_store;

/// How refusals quote client input (a resource name, a hash): cut past
/// [`ECHO_MAX_BYTES`], so the status reaches the client.
pub use corral_auth::quote::{excerpt, ECHO_MAX_BYTES};

/// An error and its causes, joined the way anyhow's `{:#}` does.
pub fn message(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// The code for a store failure, decided where the failure starts: bad
/// content is the client's (INVALID_ARGUMENT), a blob found corrupt is
/// simply not there (NOT_FOUND), a full disk is RESOURCE_EXHAUSTED (the
/// client may retry later), a remote store's code is passed on, anything
/// else is ours (INTERNAL).
pub fn store_code(err: &blob_store::Error) -> Code {
    match err {
        blob_store::Error::TooLarge { .. } | blob_store::Error::Refused(_) => Code::InvalidArgument,
        blob_store::Error::Corrupt { .. } => Code::NotFound,
        blob_store::Error::Disk(disk) if disk.is_storage_full() => Code::ResourceExhausted,
        blob_store::Error::Disk(_) | blob_store::Error::Membership(_) => Code::Internal,
        // The object store down or refusing: the durable copy is out of
        // reach, so nothing is acknowledged and the client retries.
        blob_store::Error::ObjectStore { .. } | blob_store::Error::ObjectStoreUpload { .. } => {
            Code::Unavailable
        }
        // The remote store's own verdict, passed on: UNAVAILABLE when it is
        // down, so clients retry.
        blob_store::Error::Remote { source, .. } => source.code(),
    }
}

/// `google.rpc.Status` for one blob of a batch.
pub fn rpc(code: Code, message: String) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message,
        details: Vec::new(),
    }
}

pub fn rpc_ok() -> rpc::Status {
    rpc(Code::Ok, String::new())
}
