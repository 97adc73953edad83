//! Wire compatibility with Buildbarn's protocols.
//!
//! Two kinds of test: every message with every field set survives an
//! encode/decode round trip, and a golden table pins the field number and
//! wire type of every field that compatibility with bb_worker,
//! bb_scheduler and bb_runner depends on. If a golden line fails, the
//! change broke the wire: put the field back and use a new number.

use std::collections::BTreeMap;

use corral_proto::protobuf::{Any, Duration, Empty, Timestamp};
use corral_proto::reapi::{self, digest_function};
use corral_proto::remoteworker::{
    current_state, desired_state, CurrentState, DesiredState, SynchronizeRequest,
    SynchronizeResponse,
};
use corral_proto::resourceusage::{
    monetary_resource_usage, FilePoolResourceUsage, InputRootResourceUsage, MonetaryResourceUsage,
    PosixResourceUsage,
};
use corral_proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = msg.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(&back, msg);
    // Deterministic: encoding the decoded message gives the same bytes.
    assert_eq!(back.encode_to_vec(), bytes);
}

fn digest() -> reapi::Digest {
    reapi::Digest {
        hash: "ab".repeat(32),
        size_bytes: 42,
    }
}

fn platform() -> reapi::Platform {
    reapi::Platform {
        properties: vec![reapi::platform::Property {
            name: "OSFamily".into(),
            value: "linux".into(),
        }],
    }
}

fn any() -> Any {
    Any {
        type_url: "type.googleapis.com/x.Y".into(),
        value: vec![1, 2, 3],
    }
}

// ---- round trips, every field set ----

#[test]
fn runner_messages_round_trip_with_every_field_set() {
    round_trip(&CheckReadinessRequest {
        path: "build/ready".into(),
    });
    round_trip(&RunRequest {
        arguments: vec!["/bin/sh".into(), "-c".into(), "true".into()],
        environment_variables: BTreeMap::from([("PATH".into(), "/bin".into())]),
        working_directory: "pkg".into(),
        stdout_path: "a/stdout".into(),
        stderr_path: "a/stderr".into(),
        input_root_directory: "a/root".into(),
        temporary_directory: "a/tmp".into(),
        server_logs_directory: "a/logs".into(),
        corral_policy: "hermetic".into(),
        corral_timeout: Some(Duration {
            seconds: 30,
            nanos: 0,
        }),
        corral_image_root_directory: "images/0a/rootfs".into(),
    });
    round_trip(&RunResponse {
        exit_code: -3,
        resource_usage: vec![any()],
    });
}

#[test]
fn worker_messages_round_trip_with_every_field_set() {
    let stages = [
        current_state::executing::ExecutionState::Started(Empty {}),
        current_state::executing::ExecutionState::FetchingInputs(Empty {}),
        current_state::executing::ExecutionState::Running(Empty {}),
        current_state::executing::ExecutionState::UploadingOutputs(Empty {}),
    ];
    for stage in stages {
        round_trip(&SynchronizeRequest {
            worker_id: BTreeMap::from([("host".into(), "w1".into()), ("slot".into(), "3".into())]),
            instance_name_prefix: "main".into(),
            platform: Some(platform()),
            current_state: Some(CurrentState {
                worker_state: Some(current_state::WorkerState::Executing(
                    current_state::Executing {
                        action_digest: Some(digest()),
                        execution_state: Some(stage),
                        corral_instance_name_suffix: "tenant-a".into(),
                        corral_digest_function: 1,
                    },
                )),
            }),
            size_class: 2,
            prefer_being_idle: true,
        });
    }
    round_trip(&CurrentState {
        worker_state: Some(current_state::WorkerState::Idle(Empty {})),
    });
    round_trip(&CurrentState {
        worker_state: Some(corral_proto::completed(
            digest(),
            reapi::ExecuteResponse {
                result: Some(reapi::ActionResult {
                    exit_code: 1,
                    ..Default::default()
                }),
                cached_result: false,
                message: "done".into(),
                ..Default::default()
            },
        )),
    });
    round_trip(&SynchronizeResponse {
        next_synchronization_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 7,
        }),
        desired_state: Some(DesiredState {
            worker_state: Some(desired_state::WorkerState::Executing(
                desired_state::Executing {
                    action_digest: Some(digest()),
                    action: Some(reapi::Action {
                        command_digest: Some(digest()),
                        input_root_digest: Some(digest()),
                        timeout: Some(Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                        do_not_cache: true,
                        ..Default::default()
                    }),
                    queued_timestamp: Some(Timestamp {
                        seconds: 5,
                        nanos: 6,
                    }),
                    w3c_trace_context: BTreeMap::from([("traceparent".into(), "00-x".into())]),
                    auxiliary_metadata: vec![any()],
                    instance_name_suffix: "suffix".into(),
                    digest_function: digest_function::Value::Blake3 as i32,
                    corral_inline_stdout: true,
                    corral_inline_stderr: true,
                },
            )),
        }),
    });
    round_trip(&DesiredState {
        worker_state: Some(desired_state::WorkerState::Idle(Empty {})),
    });
}

#[test]
fn resource_usage_messages_round_trip_with_every_field_set() {
    round_trip(&PosixResourceUsage {
        user_time: Some(Duration {
            seconds: 1,
            nanos: 2,
        }),
        system_time: Some(Duration {
            seconds: 3,
            nanos: 4,
        }),
        maximum_resident_set_size: 5,
        page_reclaims: 7,
        page_faults: 8,
        swaps: 9,
        block_input_operations: 10,
        block_output_operations: 11,
        messages_sent: 12,
        messages_received: 13,
        signals_received: 14,
        voluntary_context_switches: 15,
        involuntary_context_switches: 16,
        termination_signal: "SEGV".into(),
        corral_oom_killed: true,
    });
    round_trip(&FilePoolResourceUsage {
        files_created: 1,
        files_count_peak: 2,
        files_size_bytes_peak: 3,
        reads_count: 4,
        reads_size_bytes: 5,
        writes_count: 6,
        writes_size_bytes: 7,
        truncates_count: 8,
    });
    round_trip(&MonetaryResourceUsage {
        expenses: BTreeMap::from([(
            "cpu".into(),
            monetary_resource_usage::Expense {
                currency: "EUR".into(),
                cost: 0.25,
            },
        )]),
    });
    round_trip(&InputRootResourceUsage {
        directories_resolved: 1,
        directories_read: 2,
        files_read: 3,
    });
}

// ---- golden field numbers ----

/// Field number and wire type of the first key in `bytes`.
fn first_key(bytes: &[u8]) -> (u64, u8) {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value >> 3, (value & 7) as u8);
        }
    }
    panic!("no complete key in {bytes:?}");
}

/// A field's name, how to set it, and its pinned number.
type Setter<M> = (&'static str, fn(&mut M), u64);

const VARINT: u8 = 0;
const LEN: u8 = 2;

/// Encodes `msg`, which must have exactly one field set, and checks the
/// field's number and wire type.
fn pin<M: Message>(what: &str, msg: M, number: u64, wire: u8) {
    let bytes = msg.encode_to_vec();
    assert_eq!(
        first_key(&bytes),
        (number, wire),
        "{what} moved on the wire"
    );
}

fn s() -> String {
    "x".into()
}

#[test]
fn runner_field_numbers_match_buildbarn() {
    pin(
        "CheckReadinessRequest.path",
        CheckReadinessRequest { path: s() },
        1,
        LEN,
    );
    let r = RunRequest::default;
    pin(
        "arguments",
        RunRequest {
            arguments: vec![s()],
            ..r()
        },
        1,
        LEN,
    );
    pin(
        "environment_variables",
        RunRequest {
            environment_variables: BTreeMap::from([(s(), s())]),
            ..r()
        },
        2,
        LEN,
    );
    pin(
        "working_directory",
        RunRequest {
            working_directory: s(),
            ..r()
        },
        3,
        LEN,
    );
    pin(
        "stdout_path",
        RunRequest {
            stdout_path: s(),
            ..r()
        },
        4,
        LEN,
    );
    pin(
        "stderr_path",
        RunRequest {
            stderr_path: s(),
            ..r()
        },
        5,
        LEN,
    );
    pin(
        "input_root_directory",
        RunRequest {
            input_root_directory: s(),
            ..r()
        },
        6,
        LEN,
    );
    pin(
        "temporary_directory",
        RunRequest {
            temporary_directory: s(),
            ..r()
        },
        7,
        LEN,
    );
    pin(
        "server_logs_directory",
        RunRequest {
            server_logs_directory: s(),
            ..r()
        },
        8,
        LEN,
    );
    // Corral's extensions: new numbers only.
    pin(
        "corral_policy",
        RunRequest {
            corral_policy: s(),
            ..r()
        },
        1000,
        LEN,
    );
    pin(
        "corral_timeout",
        RunRequest {
            corral_timeout: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..r()
        },
        1001,
        LEN,
    );
    pin(
        "corral_image_root_directory",
        RunRequest {
            corral_image_root_directory: s(),
            ..r()
        },
        1002,
        LEN,
    );
    pin(
        "exit_code",
        RunResponse {
            exit_code: 1,
            ..Default::default()
        },
        1,
        VARINT,
    );
    pin(
        "resource_usage",
        RunResponse {
            resource_usage: vec![any()],
            ..Default::default()
        },
        2,
        LEN,
    );
}

#[test]
fn runner_service_paths_match_buildbarn() {
    // tonic derives the HTTP/2 path from package, service and method.
    let generated = include_str!(concat!(env!("OUT_DIR"), "/buildbarn.runner.rs"));
    assert!(generated.contains("/buildbarn.runner.Runner/Run"));
    assert!(generated.contains("/buildbarn.runner.Runner/CheckReadiness"));
    let generated = include_str!(concat!(env!("OUT_DIR"), "/buildbarn.remoteworker.rs"));
    assert!(generated.contains("/buildbarn.remoteworker.OperationQueue/Synchronize"));
}

#[test]
fn worker_field_numbers_match_buildbarn() {
    let q = SynchronizeRequest::default;
    pin(
        "worker_id",
        SynchronizeRequest {
            worker_id: BTreeMap::from([(s(), s())]),
            ..q()
        },
        1,
        LEN,
    );
    pin(
        "instance_name_prefix",
        SynchronizeRequest {
            instance_name_prefix: s(),
            ..q()
        },
        2,
        LEN,
    );
    pin(
        "platform",
        SynchronizeRequest {
            platform: Some(platform()),
            ..q()
        },
        3,
        LEN,
    );
    pin(
        "current_state",
        SynchronizeRequest {
            current_state: Some(CurrentState::default()),
            ..q()
        },
        4,
        LEN,
    );
    pin(
        "size_class",
        SynchronizeRequest {
            size_class: 1,
            ..q()
        },
        5,
        VARINT,
    );
    pin(
        "prefer_being_idle",
        SynchronizeRequest {
            prefer_being_idle: true,
            ..q()
        },
        6,
        VARINT,
    );

    use current_state::WorkerState as Cs;
    let cs = |w| CurrentState {
        worker_state: Some(w),
    };
    pin("CurrentState.idle", cs(Cs::Idle(Empty {})), 1, LEN);
    pin(
        "CurrentState.executing",
        cs(Cs::Executing(Default::default())),
        2,
        LEN,
    );

    use current_state::executing::ExecutionState as St;
    let ex = |st| current_state::Executing {
        action_digest: None,
        execution_state: Some(st),
        ..Default::default()
    };
    pin(
        "Executing.action_digest",
        current_state::Executing {
            action_digest: Some(digest()),
            execution_state: None,
            ..Default::default()
        },
        1,
        LEN,
    );
    pin("started", ex(St::Started(Empty {})), 2, LEN);
    pin("fetching_inputs", ex(St::FetchingInputs(Empty {})), 3, LEN);
    pin("running", ex(St::Running(Empty {})), 4, LEN);
    pin(
        "uploading_outputs",
        ex(St::UploadingOutputs(Empty {})),
        5,
        LEN,
    );
    // How Buildbarn's workers report a result.
    pin("completed", ex(St::Completed(Default::default())), 6, LEN);
    // Corral's extensions: what a restarted scheduler adopts a run by.
    pin(
        "Executing.corral_instance_name_suffix",
        current_state::Executing {
            corral_instance_name_suffix: "a".into(),
            ..Default::default()
        },
        1000,
        LEN,
    );
    pin(
        "Executing.corral_digest_function",
        current_state::Executing {
            corral_digest_function: 1,
            ..Default::default()
        },
        1001,
        VARINT,
    );

    let t = Timestamp {
        seconds: 1,
        nanos: 0,
    };
    pin(
        "next_synchronization_at",
        SynchronizeResponse {
            next_synchronization_at: Some(t),
            desired_state: None,
        },
        1,
        LEN,
    );
    pin(
        "desired_state",
        SynchronizeResponse {
            next_synchronization_at: None,
            desired_state: Some(DesiredState::default()),
        },
        2,
        LEN,
    );

    use desired_state::WorkerState as Ds;
    let ds = |w| DesiredState {
        worker_state: Some(w),
    };
    pin("DesiredState.idle", ds(Ds::Idle(Empty {})), 1, LEN);
    pin(
        "DesiredState.executing",
        ds(Ds::Executing(Default::default())),
        2,
        LEN,
    );

    let e = desired_state::Executing::default;
    pin(
        "action_digest",
        desired_state::Executing {
            action_digest: Some(digest()),
            ..e()
        },
        1,
        LEN,
    );
    pin(
        "action",
        desired_state::Executing {
            action: Some(Default::default()),
            ..e()
        },
        2,
        LEN,
    );
    pin(
        "queued_timestamp",
        desired_state::Executing {
            queued_timestamp: Some(t),
            ..e()
        },
        4,
        LEN,
    );
    pin(
        "w3c_trace_context",
        desired_state::Executing {
            w3c_trace_context: BTreeMap::from([(s(), s())]),
            ..e()
        },
        8,
        LEN,
    );
    pin(
        "auxiliary_metadata",
        desired_state::Executing {
            auxiliary_metadata: vec![any()],
            ..e()
        },
        6,
        LEN,
    );
    pin(
        "instance_name_suffix",
        desired_state::Executing {
            instance_name_suffix: s(),
            ..e()
        },
        7,
        LEN,
    );
    pin(
        "digest_function",
        desired_state::Executing {
            digest_function: digest_function::Value::Sha256 as i32,
            ..e()
        },
        9,
        VARINT,
    );
    // Corral's extensions: new numbers only.
    pin(
        "corral_inline_stdout",
        desired_state::Executing {
            corral_inline_stdout: true,
            ..e()
        },
        1000,
        VARINT,
    );
    pin(
        "corral_inline_stderr",
        desired_state::Executing {
            corral_inline_stderr: true,
            ..e()
        },
        1001,
        VARINT,
    );
}

#[test]
fn resource_usage_field_numbers_match_buildbarn() {
    let d = Duration {
        seconds: 1,
        nanos: 0,
    };
    let p = PosixResourceUsage::default;
    pin(
        "user_time",
        PosixResourceUsage {
            user_time: Some(d),
            ..p()
        },
        1,
        LEN,
    );
    pin(
        "system_time",
        PosixResourceUsage {
            system_time: Some(d),
            ..p()
        },
        2,
        LEN,
    );
    let ints: [Setter<PosixResourceUsage>; 12] = [
        (
            "maximum_resident_set_size",
            |m| m.maximum_resident_set_size = 1,
            3,
        ),
        ("page_reclaims", |m| m.page_reclaims = 1, 7),
        ("page_faults", |m| m.page_faults = 1, 8),
        ("swaps", |m| m.swaps = 1, 9),
        (
            "block_input_operations",
            |m| m.block_input_operations = 1,
            10,
        ),
        (
            "block_output_operations",
            |m| m.block_output_operations = 1,
            11,
        ),
        ("messages_sent", |m| m.messages_sent = 1, 12),
        ("messages_received", |m| m.messages_received = 1, 13),
        ("signals_received", |m| m.signals_received = 1, 14),
        (
            "voluntary_context_switches",
            |m| m.voluntary_context_switches = 1,
            15,
        ),
        (
            "involuntary_context_switches",
            |m| m.involuntary_context_switches = 1,
            16,
        ),
        (
            "termination_signal",
            |m| m.termination_signal = "KILL".into(),
            17,
        ),
    ];
    for (name, set, number) in ints {
        let mut m = p();
        set(&mut m);
        let wire = if name == "termination_signal" {
            LEN
        } else {
            VARINT
        };
        pin(name, m, number, wire);
    }
    // Our extension, beyond Buildbarn's numbers.
    pin(
        "corral_oom_killed",
        PosixResourceUsage {
            corral_oom_killed: true,
            ..p()
        },
        1000,
        VARINT,
    );

    let f: [Setter<FilePoolResourceUsage>; 8] = [
        ("files_created", |m| m.files_created = 1, 1),
        ("files_count_peak", |m| m.files_count_peak = 1, 2),
        ("files_size_bytes_peak", |m| m.files_size_bytes_peak = 1, 3),
        ("reads_count", |m| m.reads_count = 1, 4),
        ("reads_size_bytes", |m| m.reads_size_bytes = 1, 5),
        ("writes_count", |m| m.writes_count = 1, 6),
        ("writes_size_bytes", |m| m.writes_size_bytes = 1, 7),
        ("truncates_count", |m| m.truncates_count = 1, 8),
    ];
    for (name, set, number) in f {
        let mut m = FilePoolResourceUsage::default();
        set(&mut m);
        pin(name, m, number, VARINT);
    }

    let i = InputRootResourceUsage::default;
    pin(
        "directories_resolved",
        InputRootResourceUsage {
            directories_resolved: 1,
            ..i()
        },
        1,
        VARINT,
    );
    pin(
        "directories_read",
        InputRootResourceUsage {
            directories_read: 1,
            ..i()
        },
        2,
        VARINT,
    );
    pin(
        "files_read",
        InputRootResourceUsage {
            files_read: 1,
            ..i()
        },
        3,
        VARINT,
    );
    pin(
        "expenses",
        MonetaryResourceUsage {
            expenses: BTreeMap::from([(s(), Default::default())]),
        },
        1,
        LEN,
    );
    pin(
        "Expense.currency",
        monetary_resource_usage::Expense {
            currency: s(),
            cost: 0.0,
        },
        1,
        LEN,
    );
    pin(
        "Expense.cost",
        monetary_resource_usage::Expense {
            currency: String::new(),
            cost: 1.0,
        },
        2,
        1,
    );
}

#[test]
fn golden_bytes_of_a_run_request() {
    // The exact bytes bb_worker would send for this request (fields in
    // number order, no map so the order is fixed).
    let req = RunRequest {
        arguments: vec!["a".into()],
        working_directory: "w".into(),
        input_root_directory: "r".into(),
        ..Default::default()
    };
    assert_eq!(
        req.encode_to_vec(),
        [0x0a, 1, b'a', 0x1a, 1, b'w', 0x32, 1, b'r']
    );
}

#[test]
fn build_queue_state_field_numbers_and_paths_match_buildbarn() {
    use corral_proto::buildqueuestate::{
        AddOrRemoveDrainRequest, DrainState, ListDrainsRequest, ListDrainsResponse,
        PlatformQueueName, SizeClassQueueName, TerminateWorkersRequest,
    };
    let pattern = || BTreeMap::from([(s(), s())]);
    let queue = || SizeClassQueueName {
        size_class: 1,
        ..Default::default()
    };
    pin(
        "PlatformQueueName.instance_name_prefix",
        PlatformQueueName {
            instance_name_prefix: s(),
            ..Default::default()
        },
        1,
        LEN,
    );
    pin(
        "PlatformQueueName.platform",
        PlatformQueueName {
            platform: Some(platform()),
            ..Default::default()
        },
        2,
        LEN,
    );
    pin(
        "SizeClassQueueName.platform_queue_name",
        SizeClassQueueName {
            platform_queue_name: Some(PlatformQueueName::default()),
            ..Default::default()
        },
        1,
        LEN,
    );
    pin("SizeClassQueueName.size_class", queue(), 2, VARINT);
    pin(
        "DrainState.worker_id_pattern",
        DrainState {
            worker_id_pattern: pattern(),
            ..Default::default()
        },
        1,
        LEN,
    );
    pin(
        "DrainState.created_timestamp",
        DrainState {
            created_timestamp: Some(Default::default()),
            ..Default::default()
        },
        2,
        LEN,
    );
    pin(
        "TerminateWorkersRequest.worker_id_pattern",
        TerminateWorkersRequest {
            worker_id_pattern: pattern(),
        },
        1,
        LEN,
    );
    pin(
        "ListDrainsRequest.size_class_queue_name",
        ListDrainsRequest {
            size_class_queue_name: Some(queue()),
        },
        1,
        LEN,
    );
    pin(
        "ListDrainsResponse.drains",
        ListDrainsResponse {
            drains: vec![DrainState::default()],
        },
        1,
        LEN,
    );
    pin(
        "AddOrRemoveDrainRequest.size_class_queue_name",
        AddOrRemoveDrainRequest {
            size_class_queue_name: Some(queue()),
            ..Default::default()
        },
        1,
        LEN,
    );
    pin(
        "AddOrRemoveDrainRequest.worker_id_pattern",
        AddOrRemoveDrainRequest {
            worker_id_pattern: pattern(),
            ..Default::default()
        },
        2,
        LEN,
    );
    let generated = include_str!(concat!(env!("OUT_DIR"), "/buildbarn.buildqueuestate.rs"));
    for method in [
        "GetOperation",
        "ListOperations",
        "KillOperations",
        "ListPlatformQueues",
        "ListInvocationChildren",
        "ListQueuedOperations",
        "ListWorkers",
        "TerminateWorkers",
        "ListDrains",
        "AddDrain",
        "RemoveDrain",
    ] {
        assert!(
            generated.contains(&format!(
                "/buildbarn.buildqueuestate.BuildQueueState/{method}"
            )),
            "{method}"
        );
    }
}
