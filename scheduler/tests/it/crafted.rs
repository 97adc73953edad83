//! Crafted input: the worker protocol as a broken or hostile worker may
//! speak it. Sequences of `SynchronizeRequest`s with arbitrary worker
//! ids, instance name prefixes, platforms and current states (executing
//! or completed actions the worker was never given, digests of any
//! shape, `ExecuteResponse`s with any status) are sent straight to the
//! service with `Request::new`. Each call answers or is refused with a
//! status that says why; none panics, and no action is completed but by
//! the worker it was given to, reporting its digest, or by the scheduler
//! giving up on an action its workers lost too often.
//!
//! CI runs [`CASES`] cases per property; `PROPTEST_CASES=100000 cargo test
//! -p corral-scheduler --test it crafted` runs a longer search
//! (docs/spec.md, "Crafted input").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corral_auth::Authorizer;
use corral_proto::protobuf::Empty;
use corral_proto::reapi::{platform, Action, ActionResult, Digest, ExecuteResponse, Platform};
use corral_proto::remoteworker::operation_queue_server::OperationQueue as _;
use corral_proto::remoteworker::{current_state, desired_state, CurrentState, SynchronizeRequest};
use corral_proto::rpc;
use corral_scheduler::assignment::{Assignments, Queued};
use corral_scheduler::operation::{Operation, Progress};
use corral_scheduler::operation_queue_service::OperationQueueService;
use corral_scheduler::queue::PlatformKey;
use corral_scheduler::{Config, Timing};
use proptest::prelude::*;
use tonic::{Code, Request};

/// Cases per property in CI, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        // A failure is kept as a named regression test, not a seed file.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// The actions queued before the workers speak: digests 1, 2 and 3.
const QUEUED: u8 = 3;

fn good_digest(n: u8) -> Digest {
    Digest {
        hash: format!("{n:02x}").repeat(32),
        size_bytes: 1,
    }
}

fn digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        3 => (1..=QUEUED).prop_map(good_digest),
        1 => (".{0,70}", any::<i64>()).prop_map(|(hash, size_bytes)| Digest { hash, size_bytes }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["", "main", "main/a", "other", "slot", "1", "2"])
            .prop_map(str::to_owned),
        1 => ".{0,40}",
    ]
}

fn worker_id() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        4 => (0u8..3).prop_map(|n| BTreeMap::from([("slot".to_owned(), n.to_string())])),
        1 => prop::collection::btree_map(text(), text(), 0..3),
    ]
}

fn execute_response() -> impl Strategy<Value = ExecuteResponse> {
    (
        prop::option::of((any::<i32>(), ".{0,20}")),
        prop::option::of(any::<i32>()),
        any::<bool>(),
        ".{0,20}",
    )
        .prop_map(
            |(status, exit_code, cached_result, message)| ExecuteResponse {
                status: status.map(|(code, message)| rpc::Status {
                    code,
                    message,
                    details: Vec::new(),
                }),
                result: exit_code.map(|exit_code| ActionResult {
                    exit_code,
                    ..Default::default()
                }),
                cached_result,
                message,
                ..Default::default()
            },
        )
}

fn worker_state() -> impl Strategy<Value = Option<current_state::WorkerState>> {
    use current_state::executing::ExecutionState;
    let stage = prop_oneof![
        Just(None),
        Just(Some(ExecutionState::Started(Empty {}))),
        Just(Some(ExecutionState::FetchingInputs(Empty {}))),
        Just(Some(ExecutionState::Running(Empty {}))),
        Just(Some(ExecutionState::UploadingOutputs(Empty {}))),
    ];
    prop_oneof![
        1 => Just(None),
        3 => Just(Some(current_state::WorkerState::Idle(Empty {}))),
        2 => (prop::option::of(digest()), stage).prop_map(|(action_digest, execution_state)| {
            Some(current_state::WorkerState::Executing(current_state::Executing {
                action_digest,
                execution_state,
                ..Default::default()
            }))
        }),
        3 => (prop::option::of(digest()), prop::option::weighted(0.9, execute_response()))
            .prop_map(|(action_digest, execute_response)| {
                Some(current_state::WorkerState::Executing(current_state::Executing {
                    action_digest,
                    execution_state: execute_response
                        .map(current_state::executing::ExecutionState::Completed),
                    ..Default::default()
                }))
            }),
    ]
}

fn request() -> impl Strategy<Value = SynchronizeRequest> {
    let platform = prop_oneof![
        3 => Just(Some(vec![("OSFamily".to_owned(), "linux".to_owned())])),
        1 => Just(None),
        1 => prop::option::of(prop::collection::vec((text(), text()), 0..4)),
    ];
    (
        worker_id(),
        prop_oneof![4 => Just("main".to_owned()), 1 => text()],
        platform,
        prop::option::weighted(0.95, worker_state()),
        any::<u32>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(worker_id, instance_name_prefix, platform, state, size_class, prefer_being_idle)| {
                SynchronizeRequest {
                    worker_id,
                    instance_name_prefix,
                    platform: platform.map(|properties| Platform {
                        properties: properties
                            .into_iter()
                            .map(|(name, value)| platform::Property { name, value })
                            .collect(),
                    }),
                    current_state: state.map(|worker_state| CurrentState { worker_state }),
                    size_class,
                    prefer_being_idle,
                }
            },
        )
}

fn enqueue(assignments: &Assignments, n: u8) -> Arc<Operation> {
    let operation = Arc::new(Operation::new(
        format!("operations/{n}"),
        "main".into(),
        good_digest(n),
        1,
    ));
    assignments.enqueue(
        Queued {
            operation: Arc::clone(&operation),
            action_digest: good_digest(n),
            action: Action::default(),
            digest_function: 1,
            instance_name: "main".into(),
            platform: PlatformKey::new([("OSFamily".into(), "linux".into())]),
            queued_at: SystemTime::UNIX_EPOCH,
            waiting_since: tokio::time::Instant::now(),
            retries: 0,
            size_class: Default::default(),
        },
        0,
        "",
    );
    operation
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_synchronize_sequence_is_answered_or_refused_with_a_reason(
        requests in prop::collection::vec(request(), 1..12),
    ) {
        // Paused time: a held (long-polled) call ends at once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let timing = Timing::from_config(&Config::default());
            let assignments = Arc::new(Assignments::new(&timing, 2));
            let service = OperationQueueService::new(
                Arc::clone(&assignments),
                Duration::from_secs(30),
                Authorizer::open(),
            );
            let operations: Vec<_> = (1..=QUEUED).map(|n| enqueue(&assignments, n)).collect();
            // Which worker each action was last given to.
            let mut given: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            // Actions a worker reported complete while it held them.
            let mut completed_by_holder = Vec::new();
            for req in requests {
                let worker = req.worker_id.clone();
                if let Some(current_state::WorkerState::Executing(done)) =
                    req.current_state.as_ref().and_then(|s| s.worker_state.as_ref())
                {
                    let completed = matches!(
                        done.execution_state,
                        Some(current_state::executing::ExecutionState::Completed(_))
                    );
                    if let (Some(digest), true) = (&done.action_digest, completed) {
                        if given.get(&digest.hash) == Some(&worker) {
                            completed_by_holder.push(digest.hash.clone());
                        }
                    }
                }
                match service.synchronize(Request::new(req)).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        prop_assert!(response.next_synchronization_at.is_some());
                        if let Some(desired_state::WorkerState::Executing(exec)) =
                            response.desired_state.and_then(|d| d.worker_state)
                        {
                            let digest = exec.action_digest.expect("an assignment names its action");
                            prop_assert!(
                                (1..=QUEUED).any(|n| good_digest(n) == digest),
                                "gave out {:?}", digest
                            );
                            given.insert(digest.hash, worker);
                        }
                    }
                    Err(status) => {
                        prop_assert!(
                            matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied),
                            "{:?}", status
                        );
                        prop_assert!(!status.message().is_empty());
                    }
                }
            }
            for (n, operation) in (1..=QUEUED).zip(operations) {
                let progress = operation.watch().borrow().clone();
                if let Progress::Completed(response) = progress {
                    // Or the scheduler gave up on it: lost by its workers
                    // more than max_retries times.
                    let gave_up = response.status.as_ref().is_some_and(|s| {
                        s.code == Code::Unavailable as i32 && s.message.contains("giving up")
                    });
                    let hash = &good_digest(n).hash;
                    prop_assert!(
                        gave_up || completed_by_holder.contains(hash),
                        "{} completed though its worker never reported it: {:?}", hash, response
                    );
                }
            }
            let _ = assignments.snapshot();
            Ok(())
        })?;
    }
}
