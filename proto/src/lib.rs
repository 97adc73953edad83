//! The protocols Corral speaks, as Rust types and tonic services.
//!
//! - [`reapi`], [`bytestream`], [`longrunning`], [`rpc`], [`protobuf`]: the
//!   Remote Execution API v2 and the Google APIs it uses, re-exported from
//!   the `bazel-remote-apis` crate so every crate of ours names them one way.
//! - [`runner`] — worker → runner (`buildbarn.runner`, Buildbarn's shape).
//! - [`remoteworker`] — worker → scheduler (`buildbarn.remoteworker`).
//! - [`resourceusage`] — usage reports for `ExecutedActionMetadata`.
//! - [`buildqueuestate`] — inspecting and administering the scheduler's
//!   queues, operations and workers (`buildbarn.buildqueuestate`), and
//!   [`invocation_ids`] the invocation ids Corral puts in its answers.
//! - [`any`] — packing our messages into `google.protobuf.Any`.
//! - [`error_details`] — `google.rpc.PreconditionFailure`, and
//!   [`precondition`] the FAILED_PRECONDITION status REAPI clients expect
//!   for missing blobs.
//! - [`time`] — the one set of conversions between std time and
//!   `Timestamp`/`Duration`; [`ids`] — the one unique-name generator.
//!
//! Our `.proto` files are in `proto/protos/buildbarn/` and use Buildbarn's
//! package, message names and field numbers, so Corral's daemons can be
//! mixed with Buildbarn's. This crate depends on nothing else of ours and
//! holds no behaviour beyond encoding, time conversions and names.

#![forbid(unsafe_code)]

pub mod any;
pub mod ids;
pub mod precondition;
pub mod status;
pub mod time;

pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
pub use bazel_remote_apis::build::bazel::semver;
pub use bazel_remote_apis::google::bytestream;
pub use bazel_remote_apis::google::longrunning;
pub use bazel_remote_apis::google::protobuf;
pub use bazel_remote_apis::google::rpc;

/// The largest stdout or stderr the farm inlines into an `ActionResult`
/// (`stdout_raw`, `stderr_raw`) when a client asks for it; larger ones are
/// left to their digest. Both at this size keep a response well under
/// gRPC's default 4 MiB message limit.
pub const MAX_INLINE_BYTES: u64 = 1 << 20;

/// `buildbarn.runner`: the protocol between a worker and its runner.
pub mod runner {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("buildbarn.runner");
}

/// `buildbarn.remoteworker`: the protocol between workers and the scheduler.
pub mod remoteworker {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("buildbarn.remoteworker");
}

/// A worker's report that it finished `action_digest` with `response`:
/// `executing` at stage `completed`, as Buildbarn's workers report a result
/// and bb_scheduler expects one.
pub fn completed(
    action_digest: reapi::Digest,
    response: reapi::ExecuteResponse,
) -> remoteworker::current_state::WorkerState {
    use remoteworker::current_state::{executing::ExecutionState, Executing, WorkerState};
    WorkerState::Executing(Executing {
        action_digest: Some(action_digest),
        execution_state: Some(ExecutionState::Completed(response)),
        ..Default::default()
    })
}

/// `buildbarn.resourceusage`: resource usage reports.
pub mod resourceusage {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("buildbarn.resourceusage");
}

/// `buildbarn.buildqueuestate`: inspecting and administering the
/// scheduler (operations, queues, workers, drains).
pub mod buildqueuestate {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("buildbarn.buildqueuestate");
}

/// `corral.buildqueuestate`: the invocation id naming an instance name in
/// [`buildqueuestate`] answers.
pub mod invocation_ids {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("corral.buildqueuestate");
}

/// `google.rpc.PreconditionFailure` (the crate above generates only
/// `google.rpc.Status`).
pub mod error_details {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("google.rpc");
}
