//! Generates Rust code for our own protocols at build time.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so building needs no
//! system package. Every type our protos import from REAPI or from
//! google.protobuf is mapped onto the `bazel-remote-apis` crate, so the
//! generated code and the REAPI services share one set of types.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "protos/buildbarn/runner.proto",
    "protos/buildbarn/remoteworker.proto",
    "protos/buildbarn/resourceusage.proto",
    "protos/buildbarn/buildqueuestate.proto",
    "protos/corral/buildqueuestate.proto",
    "protos/google/rpc/precondition_failure.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // The vendored protoc, named in prost's config: no PROTOC in the
    // environment (setting it is unsafe, and denied outside the sandbox's
    // sys module).
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!(
        "cargo:rerun-if-changed=protos/build/bazel/remote/execution/v2/remote_execution.proto"
    );
    println!("cargo:rerun-if-changed=protos/google/rpc/status.proto");

    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let includes = [PathBuf::from("protos"), well_known];
    // compile_well_known_types drops the default mapping of google.protobuf
    // onto prost-types, so ours (the types bazel-remote-apis generated) wins.
    // The descriptors of what we compiled, for the test that checks every
    // buildbarn.* message and field against Buildbarn's wire shape.
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        // prost derives Copy for a oneof whose message types it cannot see
        // into (ours come from bazel-remote-apis), and ExecuteResponse is
        // not Copy: naming the field as boxed keeps the derive off (prost
        // boxes no oneof member, so its type stays as it is).
        .boxed(".buildbarn.remoteworker.CurrentState.Executing.completed")
        .boxed(".buildbarn.buildqueuestate.OperationState.completed")
        .compile_well_known_types(true)
        // Ordered maps: encoding is deterministic, so equal messages give
        // equal bytes (golden tests, and digests of what we store).
        .btree_map(".")
        .extern_path(".google.protobuf", "::bazel_remote_apis::google::protobuf")
        // Only Status: PreconditionFailure, in the same package, is ours.
        .extern_path(
            ".google.rpc.Status",
            "::bazel_remote_apis::google::rpc::Status",
        )
        .extern_path(
            ".build.bazel.remote.execution.v2",
            "::bazel_remote_apis::build::bazel::remote::execution::v2",
        )
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
