//! The scheduler with grants: each tenant boundary walked over gRPC,
//! asserting the exact status code. The caller of each call comes from
//! its `x-test-sub` header (a token with that `sub`), put in place by a
//! test interceptor where the authentication layer would be.

use corral_auth::caller::TokenIdentity;
use corral_auth::{Authorizer, Caller, Grants};
use corral_proto::buildqueuestate::build_queue_state_client::BuildQueueStateClient;
use corral_proto::buildqueuestate::{
    AddOrRemoveDrainRequest, ListDrainsRequest, PlatformQueueName, SizeClassQueueName,
    TerminateWorkersRequest,
};
use corral_proto::longrunning::{GetOperationRequest, ListOperationsRequest, WaitOperationRequest};
use tonic::{Code, Request, Status};

use super::*;

/// The header naming the test's caller.
pub const CALLER_HEADER: &str = "x-test-sub";

/// Stands in for the authentication layer: the caller is a token whose
/// `sub` is the `x-test-sub` header; anonymous without one.
pub fn as_test_caller(mut request: Request<()>) -> Result<Request<()>, Status> {
    let sub = request
        .metadata()
        .get(CALLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(sub) = sub {
        let claims = serde_json::json!({ "sub": sub });
        request
            .extensions_mut()
            .insert(Caller::from_token(TokenIdentity {
                subject: Some(sub),
                issuer: "test".to_owned(),
                claims: claims.as_object().cloned().unwrap_or_default(),
            }));
    }
    Ok(request)
}

/// Two tenants (alice on team-a, bob on team-b), carol with nothing but
/// execute on team-a, team-a's operator, the farm's admin, two workers.
const GRANTS: &str = r#"
[[grant]]
who = ["claim:sub=alice"]
instance_names = ["team-a", "team-a/*"]
permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]
sandbox_policies = ["default"]

[[grant]]
who = ["claim:sub=bob"]
instance_names = ["team-b"]
permissions = ["execute", "ac-read", "operations-own"]
sandbox_policies = ["*"]

[[grant]]
who = ["claim:sub=carol"]
instance_names = ["team-a"]
permissions = ["execute"]

[[grant]]
who = ["claim:sub=a-ops"]
instance_names = ["team-a", "team-a/*"]
permissions = ["operations-all", "admin"]

[[grant]]
who = ["claim:sub=root"]
instance_names = ["*"]
permissions = ["admin"]

[[grant]]
who = ["claim:sub=worker-1", "claim:sub=worker-2"]
instance_names = ["*"]
permissions = ["worker"]
"#;

async fn tenant_farm() -> Farm {
    farm_with_authorizer(Authorizer::with_grants(Grants::parse(GRANTS).unwrap())).await
}

/// `message` sent as `sub` (anonymous for "").
fn as_<T>(sub: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if !sub.is_empty() {
        request
            .metadata_mut()
            .insert(CALLER_HEADER, sub.parse().unwrap());
    }
    request
}

async fn execute_as(
    farm: &Farm,
    sub: &str,
    instance: &str,
    digest: &Digest,
) -> Result<Streaming<Operation>, Status> {
    let request = ExecuteRequest {
        instance_name: instance.to_owned(),
        action_digest: Some(digest.clone()),
        ..Default::default()
    };
    Ok(ExecutionClient::new(farm.scheduler.clone())
        .execute(as_(sub, request))
        .await?
        .into_inner())
}

/// Executes and returns the operation's name with the stream.
async fn started(
    farm: &Farm,
    sub: &str,
    instance: &str,
    digest: &Digest,
) -> (String, Streaming<Operation>) {
    let mut stream = execute_as(farm, sub, instance, digest).await.unwrap();
    let name = stream.next().await.unwrap().unwrap().name;
    (name, stream)
}

fn worker_as(farm: &Farm, slot: &str, platform: &[(&str, &str)], sub: &str) -> FakeWorker {
    let mut worker = farm.worker(slot, platform);
    worker.identity = Some(sub.to_owned());
    worker
}

#[track_caller]
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn a_tenant_may_not_execute_on_another_tenants_instance_name() {
    let farm = tenant_farm().await;
    let digest = farm.action(&["cc"], LINUX).await;
    assert_denied(
        execute_as(&farm, "alice", "team-b", &digest).await,
        "token:alice lacks execute on instance name \"team-b\"",
    );
    assert_denied(
        execute_as(&farm, "", "team-a", &digest).await,
        "anonymous lacks execute on instance name \"team-a\"",
    );
    // Refused before anything is read: an action that is not even in the
    // CAS gets the same answer, not FAILED_PRECONDITION.
    assert_denied(
        execute_as(&farm, "alice", "team-b", &digest_of(b"never uploaded")).await,
        "token:alice lacks execute on instance name \"team-b\"",
    );
    let mut worker = worker_as(&farm, "1", LINUX, "worker-1");
    assert!(worker.take().await.is_none(), "a refused action was queued");

    let (name, mut stream) = started(&farm, "alice", "team-a", &digest).await;
    let id = name.strip_prefix("operations/").unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "4", "UUID version 4: {id}");
    assert_eq!(worker.work_once(0).await, digest);
    assert!(rest(&mut stream).await.last().unwrap().done);
}

#[tokio::test]
async fn a_sandbox_policy_not_granted_is_refused_before_it_is_queued() {
    let farm = tenant_farm().await;
    let network_platform = &[("OSFamily", "linux"), ("corral-policy", "network")];
    let default_platform = &[("OSFamily", "linux"), ("corral-policy", "default")];
    let network = farm.action(&["curl", "metadata"], network_platform).await;
    assert_denied(
        execute_as(&farm, "alice", "team-a", &network).await,
        "token:alice may not use sandbox policy \"network\" (corral-policy) on instance name \"team-a\"",
    );
    let mut network_worker = worker_as(&farm, "net", network_platform, "worker-1");
    assert!(
        network_worker.take().await.is_none(),
        "the refused action reached a worker"
    );
    // Bob may ask for any policy, on his own instance name only.
    let (_, mut bobs) = started(&farm, "bob", "team-b", &network).await;
    assert_eq!(network_worker.work_once(0).await, network);
    assert!(rest(&mut bobs).await.last().unwrap().done);

    // A granted policy runs.
    let default = farm.action(&["cc"], default_platform).await;
    let (_, mut stream) = started(&farm, "alice", "team-a", &default).await;
    let mut default_worker = worker_as(&farm, "def", default_platform, "worker-2");
    assert_eq!(default_worker.work_once(0).await, default);
    assert!(rest(&mut stream).await.last().unwrap().done);

    // No policy asked for: execute alone is enough (the worker's default
    // policy applies); asking for one needs its grant.
    assert_denied(
        execute_as(&farm, "carol", "team-a", &default).await,
        "token:carol may not use sandbox policy \"default\" (corral-policy) on instance name \"team-a\"",
    );
    let plain = farm.action(&["ld"], LINUX).await;
    let (_, mut carols) = started(&farm, "carol", "team-a", &plain).await;
    let mut worker = worker_as(&farm, "1", LINUX, "worker-1");
    assert_eq!(worker.work_once(0).await, plain);
    assert!(rest(&mut carols).await.last().unwrap().done);
}

#[tokio::test]
async fn a_policy_hidden_in_the_commands_platform_is_refused_too() {
    // The scheduler queues on the Action's platform; a worker finding no
    // policy there reads the Command's (older clients put it only
    // there). A policy smuggled into the Command must be granted too.
    let farm = tenant_farm().await;
    #[allow(deprecated)] // Command.platform: what Bazel 4 still sends.
    let command = Command {
        arguments: vec!["curl".into(), "metadata".into()],
        platform: Some(to_platform(&[("corral-policy", "network")])),
        ..Default::default()
    }
    .encode_to_vec();
    let action = Action {
        command_digest: Some(digest_of(&command)),
        input_root_digest: Some(digest_of(b"")),
        platform: Some(to_platform(LINUX)),
        ..Default::default()
    }
    .encode_to_vec();
    farm.upload(&[action.clone(), command]).await;
    let digest = digest_of(&action);
    assert_denied(
        execute_as(&farm, "alice", "team-a", &digest).await,
        "token:alice may not use sandbox policy \"network\" (corral-policy) on instance name \"team-a\"",
    );
    let mut worker = worker_as(&farm, "1", LINUX, "worker-1");
    assert!(
        worker.take().await.is_none(),
        "the smuggled policy was queued"
    );
}

#[tokio::test]
async fn a_caller_without_ac_read_is_never_answered_from_the_action_cache() {
    let farm = tenant_farm().await;
    let digest = farm.action(&["cached"], LINUX).await;
    farm.cache_empty_result_in("team-a", &digest).await;
    let mut alices = execute_as(&farm, "alice", "team-a", &digest).await.unwrap();
    let ops = rest(&mut alices).await;
    assert!(response(ops.last().unwrap()).cached_result);

    // Carol holds execute but not ac-read: her action runs.
    let mut carols = execute_as(&farm, "carol", "team-a", &digest).await.unwrap();
    let mut worker = worker_as(&farm, "1", LINUX, "worker-1");
    let exec = worker.take().await.expect("the action was not run");
    worker.complete(&exec.action_digest.unwrap(), 5).await;
    let last = response(rest(&mut carols).await.last().unwrap());
    assert!(!last.cached_result);
    assert_eq!(last.result.unwrap().exit_code, 5);
}

#[tokio::test]
async fn a_tenant_may_not_read_wait_on_or_cancel_another_tenants_operation() {
    let farm = tenant_farm().await;
    let mut ops = OperationsClient::new(farm.scheduler.clone());
    let mut execution = ExecutionClient::new(farm.scheduler.clone());
    let (alices, _alice_stream) =
        started(&farm, "alice", "team-a", &farm.action(&["a"], LINUX).await).await;
    let (bobs, _bob_stream) =
        started(&farm, "bob", "team-b", &farm.action(&["b"], LINUX).await).await;
    let refusal = "token:bob lacks operations-all on instance name \"team-a\"";
    let get = |name: &str| GetOperationRequest {
        name: name.to_owned(),
    };
    assert_denied(ops.get_operation(as_("bob", get(&alices))).await, refusal);
    let wait = WaitOperationRequest {
        name: alices.clone(),
        timeout: Some(corral_proto::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
    };
    assert_denied(ops.wait_operation(as_("bob", wait)).await, refusal);
    let wait_execution = WaitExecutionRequest {
        name: alices.clone(),
    };
    assert_denied(
        execution
            .wait_execution(as_("bob", wait_execution.clone()))
            .await,
        refusal,
    );
    let cancel = |name: &str| CancelOperationRequest {
        name: name.to_owned(),
    };
    assert_denied(
        ops.cancel_operation(as_("bob", cancel(&alices))).await,
        refusal,
    );
    assert_denied(
        ops.get_operation(as_("", get(&alices))).await,
        "anonymous lacks operations-all on instance name \"team-a\"",
    );
    // Untouched: still queued, and its owner reaches it.
    let own = ops
        .get_operation(as_("alice", get(&alices)))
        .await
        .unwrap()
        .into_inner();
    assert!(!own.done, "bob's cancel went through");
    execution
        .wait_execution(as_("alice", wait_execution))
        .await
        .unwrap();
    ops.get_operation(as_("bob", get(&bobs))).await.unwrap();
    ops.cancel_operation(as_("alice", cancel(&alices)))
        .await
        .unwrap();
    let own = ops
        .get_operation(as_("alice", get(&alices)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response(&own).status.unwrap().code, Code::Cancelled as i32);
}

async fn listed(farm: &Farm, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = OperationsClient::new(farm.scheduler.clone())
        .list_operations(as_(sub, ListOperationsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .operations
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn list_shows_own_operations_and_operations_all_shows_its_instance_names() {
    let farm = tenant_farm().await;
    let (alices, _a) = started(&farm, "alice", "team-a", &farm.action(&["a"], LINUX).await).await;
    let (bobs, _b) = started(&farm, "bob", "team-b", &farm.action(&["b"], LINUX).await).await;
    let (carols, _c) = started(&farm, "carol", "team-a", &farm.action(&["c"], LINUX).await).await;
    assert_eq!(listed(&farm, "alice").await, [alices.as_str()]);
    assert_eq!(listed(&farm, "bob").await, [bobs.as_str()]);
    // Execute alone lets a caller see its own operations (Bazel's
    // WaitExecution after a dropped stream), not others'.
    assert_eq!(listed(&farm, "carol").await, [carols.as_str()]);
    assert!(listed(&farm, "").await.is_empty());
    let mut team_a = vec![alices.clone(), carols.clone()];
    team_a.sort();
    assert_eq!(listed(&farm, "a-ops").await, team_a);

    let mut ops = OperationsClient::new(farm.scheduler.clone());
    let get = |name: &str| GetOperationRequest {
        name: name.to_owned(),
    };
    ops.get_operation(as_("a-ops", get(&alices))).await.unwrap();
    assert_denied(
        ops.get_operation(as_("a-ops", get(&bobs))).await,
        "token:a-ops lacks operations-all on instance name \"team-b\"",
    );
    // Carol watches her own operation but may not cancel it: that takes
    // operations-own.
    ExecutionClient::new(farm.scheduler.clone())
        .wait_execution(as_(
            "carol",
            WaitExecutionRequest {
                name: carols.clone(),
            },
        ))
        .await
        .unwrap();
    let cancel = |name: &str| CancelOperationRequest {
        name: name.to_owned(),
    };
    assert_denied(
        ops.cancel_operation(as_("carol", cancel(&carols))).await,
        "token:carol lacks operations-own on instance name \"team-a\"",
    );
    ops.cancel_operation(as_("a-ops", cancel(&carols)))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_caller_sharing_an_operation_owns_it_and_only_operations_all_cancels_it() {
    let farm = tenant_farm().await;
    let digest = farm.action(&["shared"], LINUX).await;
    let (first, _a) = started(&farm, "alice", "team-a", &digest).await;
    let (second, _c) = started(&farm, "carol", "team-a", &digest).await;
    assert_eq!(first, second, "identical actions in flight share one");
    assert_eq!(listed(&farm, "alice").await, [first.as_str()]);
    assert_eq!(listed(&farm, "carol").await, [first.as_str()]);
    let mut ops = OperationsClient::new(farm.scheduler.clone());
    let cancel = CancelOperationRequest {
        name: first.clone(),
    };
    let refused = ops
        .cancel_operation(as_("alice", cancel.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        format!(
            "token:alice shares {first} with other callers; cancelling it for them too needs operations-all on instance name \"team-a\""
        )
    );
    ops.cancel_operation(as_("a-ops", cancel)).await.unwrap();
}

fn queue(prefix: &str) -> Option<SizeClassQueueName> {
    Some(SizeClassQueueName {
        platform_queue_name: Some(PlatformQueueName {
            instance_name_prefix: prefix.to_owned(),
            platform: Some(to_platform(LINUX)),
        }),
        size_class: 0,
    })
}

#[tokio::test]
async fn drains_and_terminations_need_admin_over_every_worker_they_reach() {
    let farm = tenant_farm().await;
    let mut admin = BuildQueueStateClient::new(farm.scheduler.clone());
    let pattern = BTreeMap::from([("slot".to_owned(), "1".to_owned())]);
    let drain = |prefix: Option<&str>| AddOrRemoveDrainRequest {
        size_class_queue_name: prefix.and_then(queue),
        worker_id_pattern: pattern.clone(),
    };
    assert_denied(
        admin.add_drain(as_("alice", drain(Some("team-a")))).await,
        "token:alice lacks admin on instance name \"team-a\"",
    );
    // Team-a's operator drains team-a's workers, and those of a prefix
    // under it, but not the whole farm or another tenant's.
    admin
        .add_drain(as_("a-ops", drain(Some("team-a"))))
        .await
        .unwrap();
    admin
        .add_drain(as_("a-ops", drain(Some("team-a/linux"))))
        .await
        .unwrap();
    let whole_farm = "token:a-ops lacks admin on every instance name starting with \"\"";
    assert_denied(admin.add_drain(as_("a-ops", drain(None))).await, whole_farm);
    assert_denied(
        admin.add_drain(as_("a-ops", drain(Some("")))).await,
        whole_farm,
    );
    assert_denied(
        admin.add_drain(as_("a-ops", drain(Some("team-b")))).await,
        "token:a-ops lacks admin on instance name \"team-b\"",
    );
    let terminate = TerminateWorkersRequest {
        worker_id_pattern: pattern.clone(),
    };
    assert_denied(
        admin
            .terminate_workers(as_("a-ops", terminate.clone()))
            .await,
        whole_farm,
    );
    assert_denied(
        admin.terminate_workers(as_("", terminate.clone())).await,
        "anonymous lacks admin on every instance name starting with \"\"",
    );
    let list = |prefix: Option<&str>| ListDrainsRequest {
        size_class_queue_name: prefix.and_then(queue),
    };
    assert_denied(
        admin.list_drains(as_("alice", list(Some("team-a")))).await,
        "token:alice lacks admin on instance name \"team-a\"",
    );
    let team_a = admin
        .list_drains(as_("a-ops", list(Some("team-a"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team_a.drains.len(), 1);
    assert_denied(
        admin.list_drains(as_("a-ops", list(None))).await,
        whole_farm,
    );
    assert_denied(
        admin
            .remove_drain(as_("alice", drain(Some("team-a"))))
            .await,
        "token:alice lacks admin on instance name \"team-a\"",
    );
    admin
        .remove_drain(as_("a-ops", drain(Some("team-a"))))
        .await
        .unwrap();

    // The farm's admin reaches every worker: no worker runs anything, so
    // TerminateWorkers returns at once.
    admin
        .terminate_workers(as_("root", terminate))
        .await
        .unwrap();
    let all = admin
        .list_drains(as_("root", list(None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.drains.len(), 2, "team-a/linux's and the termination's");
    admin.remove_drain(as_("root", drain(None))).await.unwrap();
}

#[tokio::test]
async fn a_forged_worker_cannot_complete_another_workers_action() {
    let farm = tenant_farm().await;
    let digest = farm.action(&["build"], LINUX).await;
    let (name, mut stream) = started(&farm, "alice", "team-a", &digest).await;
    let mut real = worker_as(&farm, "1", LINUX, "worker-1");
    let exec = real.take().await.unwrap();
    assert_eq!(exec.action_digest.as_ref(), Some(&digest));

    // Another authenticated worker, naming the same worker id.
    let mut forger = worker_as(&farm, "1", LINUX, "worker-2");
    let forged = corral_proto::completed(
        digest.clone(),
        ExecuteResponse {
            result: Some(ActionResult {
                exit_code: 66,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let refusal = "token:worker-2 may not synchronize as this worker id: another identity does";
    assert_denied(forger.try_sync(forged, true).await, refusal);
    // Nor may it say the worker went idle, which would take the action
    // from it.
    assert_denied(
        forger
            .try_sync(current_state::WorkerState::Idle(Empty {}), true)
            .await,
        refusal,
    );
    // Callers without the worker permission are refused outright.
    let mut tenant = worker_as(&farm, "9", LINUX, "alice");
    assert_denied(
        tenant
            .try_sync(current_state::WorkerState::Idle(Empty {}), true)
            .await,
        "token:alice lacks worker on every instance name starting with \"\"",
    );
    let mut anonymous = farm.worker("9", LINUX);
    assert_denied(
        anonymous
            .try_sync(current_state::WorkerState::Idle(Empty {}), true)
            .await,
        "anonymous lacks worker on every instance name starting with \"\"",
    );
    let still = OperationsClient::new(farm.scheduler.clone())
        .get_operation(as_("alice", GetOperationRequest { name }))
        .await
        .unwrap()
        .into_inner();
    assert!(!still.done, "the forged completion was accepted");

    // The worker the action was assigned to completes it.
    real.running(&digest).await;
    real.complete(&digest, 0).await;
    let last = response(rest(&mut stream).await.last().unwrap());
    assert_eq!(last.result.unwrap().exit_code, 0);
    assert_eq!(last.message, "ran on slot 1");
}

#[tokio::test]
async fn a_tenant_sees_only_its_instance_names_in_build_queue_state() {
    use super::build_queue_state::{
        admin, execute_in, final_status, instance_id, invocation, kill_by_name, names,
        patient_timing, queue,
    };
    use corral_proto::buildqueuestate::{
        kill_operations_request, list_invocation_children_request, list_workers_request,
        GetOperationRequest as StateGetOperation, KillOperationsRequest,
        ListInvocationChildrenRequest, ListOperationsRequest as StateListOperations,
        ListWorkersRequest,
    };
    let farm = farm_built(
        patient_timing(),
        Some(Authorizer::with_grants(Grants::parse(GRANTS).unwrap())),
        |_| (),
    )
    .await;
    let mut state = admin(&farm);
    // One shared worker for every tenant (prefix ""); it runs bob's action.
    let mut worker = worker_as(&farm, "1", LINUX, "worker-1");
    assert!(worker.take().await.is_none());
    let bobs_digest = farm.action(&["b"], LINUX).await;
    let (bobs, _b) = execute_in(&farm, "bob", "team-b", &bobs_digest, 0, "bob-build", "").await;
    assert_eq!(
        worker.take().await.unwrap().action_digest,
        Some(bobs_digest)
    );
    let alices_digest = farm.action(&["a"], LINUX).await;
    let (alices, mut alice_stream) = execute_in(
        &farm,
        "alice",
        "team-a",
        &alices_digest,
        0,
        "alice-build",
        "",
    )
    .await;

    let list = |sub: &str| {
        let mut state = admin(&farm);
        let sub = sub.to_owned();
        async move {
            state
                .list_operations(as_(
                    &sub,
                    StateListOperations {
                        page_size: 100,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .operations
                .into_iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
        }
    };
    // Team A's operator sees team A, the farm's admin everyone, and a
    // tenant without operations-all or admin nothing (its own operations
    // are in google.longrunning's ListOperations).
    assert_eq!(list("a-ops").await, [alices.as_str()]);
    let mut both = vec![alices.clone(), bobs.clone()];
    both.sort();
    assert_eq!(list("root").await, both);
    assert!(list("alice").await.is_empty());
    assert!(list("").await.is_empty());

    // The shared queue, as team A's operator sees it: its operations only.
    let queues = state
        .list_platform_queues(as_("a-ops", Empty {}))
        .await
        .unwrap()
        .into_inner()
        .platform_queues;
    assert_eq!(queues.len(), 1);
    let root = queues[0].size_class_queues[0].root_invocation.unwrap();
    assert_eq!(root.queued_operations_count.unwrap().indirect, 1);
    assert_eq!(
        root.executing_workers_count, 0,
        "bob's execution is not counted"
    );
    assert_eq!(root.children_count, 1);
    let children = |sub: &str, ids| {
        let mut state = admin(&farm);
        let sub = sub.to_owned();
        async move {
            state
                .list_invocation_children(as_(
                    &sub,
                    ListInvocationChildrenRequest {
                        invocation_name: Some(invocation(queue("", LINUX), ids)),
                        filter: list_invocation_children_request::Filter::All as i32,
                    },
                ))
                .await
        }
    };
    let top = children("a-ops", vec![])
        .await
        .unwrap()
        .into_inner()
        .children;
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].id, Some(instance_id("team-a")));
    let hidden = children("a-ops", vec![instance_id("team-b")])
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    let everyone = children("root", vec![])
        .await
        .unwrap()
        .into_inner()
        .children;
    assert_eq!(everyone.len(), 2);
    let none = state
        .list_platform_queues(as_("alice", Empty {}))
        .await
        .unwrap()
        .into_inner();
    assert!(none.platform_queues.is_empty());

    // The shared worker is listed, without what it runs for team B.
    let workers = state
        .list_workers(as_(
            "a-ops",
            ListWorkersRequest {
                filter: Some(list_workers_request::Filter {
                    r#type: Some(list_workers_request::filter::Type::All(queue("", LINUX))),
                }),
                page_size: 10,
                start_after: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(workers.len(), 1);
    assert!(workers[0].current_operation.is_none(), "{workers:?}");
    assert!(workers[0].timeout.is_some(), "it is executing");
    let root_view = state
        .list_workers(as_(
            "root",
            ListWorkersRequest {
                filter: Some(list_workers_request::Filter {
                    r#type: Some(list_workers_request::filter::Type::All(queue("", LINUX))),
                }),
                page_size: 10,
                start_after: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(
        root_view[0]
            .current_operation
            .as_ref()
            .map(|o| o.name.as_str()),
        Some(bobs.as_str())
    );

    let executing = |sub: &str| {
        let mut state = admin(&farm);
        let sub = sub.to_owned();
        async move {
            let filter =
                list_workers_request::filter::Type::Executing(invocation(queue("", LINUX), vec![]));
            state
                .list_workers(as_(
                    &sub,
                    ListWorkersRequest {
                        filter: Some(list_workers_request::Filter {
                            r#type: Some(filter),
                        }),
                        page_size: 10,
                        start_after: None,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .workers
                .len()
        }
    };
    assert_eq!(executing("a-ops").await, 0, "it runs team B's action");
    assert_eq!(executing("root").await, 1);

    // Reading another tenant's operation is refused naming what it lacks.
    let get = |name: &str| StateGetOperation {
        operation_name: name.to_owned(),
    };
    assert_denied(
        state.get_operation(as_("a-ops", get(&bobs))).await,
        "token:a-ops lacks operations-all on instance name \"team-b\"",
    );
    let got = state
        .get_operation(as_("a-ops", get(&alices)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&[got.operation.unwrap()]), [alices.as_str()]);

    // Killing: not another tenant's operation, nor a whole queue without
    // admin on every name it serves; one's own with operations-own.
    assert_denied(
        state
            .kill_operations(as_("bob", kill_by_name(&alices, Code::Aborted, "no")))
            .await,
        "token:bob lacks operations-all on instance name \"team-a\"",
    );
    let whole_queue = KillOperationsRequest {
        filter: Some(kill_operations_request::Filter {
            r#type: Some(
                kill_operations_request::filter::Type::SizeClassQueueWithoutWorkers(queue(
                    "", LINUX,
                )),
            ),
        }),
        status: kill_by_name("", Code::Aborted, "no").status,
    };
    assert_denied(
        state.kill_operations(as_("a-ops", whole_queue)).await,
        "token:a-ops lacks admin on every instance name starting with \"\"",
    );
    state
        .kill_operations(as_(
            "alice",
            kill_by_name(&alices, Code::Cancelled, "not needed after all"),
        ))
        .await
        .unwrap();
    let got = final_status(&mut alice_stream).await;
    assert_eq!(got.code, Code::Cancelled as i32);
    assert_eq!(got.message, "not needed after all");
    assert!(
        list("a-ops").await.contains(&alices),
        "completed, still known"
    );
}
