//! BuildQueueState over gRPC, as bb_scheduler's tools call it: every
//! listing call with its pagination, GetOperation, and KillOperations
//! ending the waiting client's Execute stream with the status given.

use corral_proto::buildqueuestate::build_queue_state_client::BuildQueueStateClient;
use corral_proto::buildqueuestate::{
    kill_operations_request, list_invocation_children_request, list_operations_request,
    list_queued_operations_request, list_workers_request, operation_state, GetOperationRequest,
    InvocationName, KillOperationsRequest, ListInvocationChildrenRequest, ListOperationsRequest,
    ListQueuedOperationsRequest, ListWorkersRequest, OperationState, PlatformQueueName,
    SizeClassQueueName,
};
use corral_proto::invocation_ids::InstanceName;
use corral_proto::protobuf::Any;
use corral_proto::reapi::RequestMetadata;
use corral_proto::rpc;
use tonic::Code;

use super::*;

/// Long enough that an executing worker need not report during a test.
pub fn patient_timing() -> Timing {
    Timing {
        sync_interval: Duration::from_secs(30),
        ..timing()
    }
}

pub fn admin(farm: &Farm) -> BuildQueueStateClient<Channel> {
    BuildQueueStateClient::new(farm.scheduler.clone())
}

/// Executes `digest` on `instance` at `priority` as part of tool
/// invocation `invocation`, for target `target`, sent as `sub` (anonymous
/// for ""); returns the operation's name and the stream.
pub async fn execute_in(
    farm: &Farm,
    sub: &str,
    instance: &str,
    digest: &Digest,
    priority: i32,
    invocation: &str,
    target: &str,
) -> (String, Streaming<Operation>) {
    let mut request = tonic::Request::new(ExecuteRequest {
        instance_name: instance.to_owned(),
        action_digest: Some(digest.clone()),
        execution_policy: Some(ExecutionPolicy { priority }),
        ..Default::default()
    });
    let metadata = RequestMetadata {
        tool_invocation_id: invocation.to_owned(),
        target_id: target.to_owned(),
        ..Default::default()
    };
    request.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
    );
    if !sub.is_empty() {
        request
            .metadata_mut()
            .insert(authz::CALLER_HEADER, sub.parse().unwrap());
    }
    let mut stream = ExecutionClient::new(farm.scheduler.clone())
        .execute(request)
        .await
        .unwrap()
        .into_inner();
    let name = stream.next().await.unwrap().unwrap().name;
    (name, stream)
}

pub fn queue(prefix: &str, platform: &[(&str, &str)]) -> SizeClassQueueName {
    SizeClassQueueName {
        platform_queue_name: Some(PlatformQueueName {
            instance_name_prefix: prefix.to_owned(),
            platform: Some(to_platform(platform)),
        }),
        size_class: 0,
    }
}

pub fn instance_id(name: &str) -> Any {
    Any {
        type_url: "type.googleapis.com/corral.buildqueuestate.InstanceName".to_owned(),
        value: InstanceName {
            instance_name: name.to_owned(),
        }
        .encode_to_vec(),
    }
}

pub fn tool_id(id: &str) -> Any {
    Any {
        type_url: "type.googleapis.com/build.bazel.remote.execution.v2.RequestMetadata".to_owned(),
        value: RequestMetadata {
            tool_invocation_id: id.to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

pub fn invocation(queue: SizeClassQueueName, ids: Vec<Any>) -> InvocationName {
    InvocationName {
        size_class_queue_name: Some(queue),
        ids,
    }
}

pub fn names(operations: &[OperationState]) -> Vec<&str> {
    operations.iter().map(|o| o.name.as_str()).collect()
}

fn status(code: Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

pub fn kill_by_name(name: &str, code: Code, message: &str) -> KillOperationsRequest {
    KillOperationsRequest {
        filter: Some(kill_operations_request::Filter {
            r#type: Some(kill_operations_request::filter::Type::OperationName(
                name.to_owned(),
            )),
        }),
        status: Some(status(code, message)),
    }
}

/// The status the last message of `stream` carries.
pub async fn final_status(stream: &mut Streaming<Operation>) -> rpc::Status {
    let ops = rest(stream).await;
    let last = ops.last().expect("the stream ended without a message");
    assert!(last.done);
    response(last).status.expect("no status")
}

#[tokio::test]
async fn build_queue_state_lists_queues_invocations_operations_and_workers_in_pages() {
    let farm = farm_with(patient_timing()).await;
    let mut admin = admin(&farm);
    // A worker announces ("", linux): the platform queue exists, idle.
    let mut worker = farm.worker("w1", LINUX);
    assert!(worker.take().await.is_none());
    let queues = admin
        .list_platform_queues(Empty {})
        .await
        .unwrap()
        .into_inner()
        .platform_queues;
    assert_eq!(queues.len(), 1);
    let linux = &queues[0].size_class_queues[0];
    assert_eq!(linux.workers_count, 1);
    assert_eq!(
        linux.root_invocation.as_ref().unwrap().idle_workers_count,
        1
    );
    assert!(linux.timeout.is_none(), "a served queue has no timeout");

    let a1 = farm.action(&["a", "1"], LINUX).await;
    let a2 = farm.action(&["a", "2"], LINUX).await;
    let b1 = farm.action(&["b", "1"], LINUX).await;
    let (first, _s1) = execute_in(&farm, "", "", &a1, 0, "inv-a", "//a:1").await;
    let (second, _s2) = execute_in(&farm, "", "", &a2, 0, "inv-a", "//a:2").await;
    let (urgent, _s3) = execute_in(&farm, "", "", &b1, -3, "inv-b", "//b:1").await;
    // An action no worker takes sits in a queue of its own, with a
    // timeout: when it fails for want of a worker.
    let mac = farm.action(&["mac"], MACOS).await;
    let (mac_name, _s4) = execute_in(&farm, "", "", &mac, 0, "inv-m", "//m").await;
    tokio::time::sleep(Duration::from_millis(200)).await; // a sweep

    let queues = admin
        .list_platform_queues(Empty {})
        .await
        .unwrap()
        .into_inner()
        .platform_queues;
    assert_eq!(queues.len(), 2, "{queues:#?}");
    let linux_queue = queues
        .iter()
        .find(|q| q.name.as_ref().unwrap().platform == Some(to_platform(LINUX)))
        .unwrap();
    let root = linux_queue.size_class_queues[0].root_invocation.unwrap();
    let queued = root.queued_operations_count.unwrap();
    assert_eq!((queued.direct, queued.indirect), (0, 3));
    assert_eq!(root.children_count, 1, "one instance name");
    assert_eq!(root.queued_children_count, 1);
    let mac_queue = queues
        .iter()
        .find(|q| q.name.as_ref().unwrap().platform == Some(to_platform(MACOS)))
        .unwrap();
    assert_eq!(mac_queue.size_class_queues[0].workers_count, 0);
    assert!(mac_queue.size_class_queues[0].timeout.is_some());

    // Invocations: the instance name, then the tool invocations.
    let children = |ids: Vec<Any>, filter: list_invocation_children_request::Filter| {
        ListInvocationChildrenRequest {
            invocation_name: Some(invocation(queue("", LINUX), ids)),
            filter: filter as i32,
        }
    };
    use list_invocation_children_request::Filter;
    let top = admin
        .list_invocation_children(children(vec![], Filter::All))
        .await
        .unwrap()
        .into_inner()
        .children;
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].id, Some(instance_id("")));
    let tools = admin
        .list_invocation_children(children(vec![instance_id("")], Filter::Active))
        .await
        .unwrap()
        .into_inner()
        .children;
    let ids: Vec<_> = tools.iter().map(|c| c.id.clone().unwrap()).collect();
    assert_eq!(ids, [tool_id("inv-a"), tool_id("inv-b")], "by id");
    let inv_a = tools[0].state.unwrap();
    assert_eq!(inv_a.queued_operations_count.unwrap().direct, 2);
    let preferred = admin
        .list_invocation_children(children(vec![instance_id("")], Filter::Queued))
        .await
        .unwrap()
        .into_inner()
        .children;
    assert_eq!(
        preferred[0].id,
        Some(tool_id("inv-b")),
        "the invocation whose next action runs first (priority -3)"
    );
    let missing = admin
        .list_invocation_children(children(
            vec![instance_id(""), tool_id("no-such")],
            Filter::All,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Queued operations of one invocation, one page at a time.
    let inv_a_name = invocation(queue("", LINUX), vec![instance_id(""), tool_id("inv-a")]);
    let page = |start_after| ListQueuedOperationsRequest {
        invocation_name: Some(inv_a_name.clone()),
        page_size: 1,
        start_after,
    };
    let one = admin
        .list_queued_operations(page(None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&one.queued_operations), [first.as_str()]);
    let info = one.pagination_info.unwrap();
    assert_eq!((info.start_index, info.total_entries), (0, 2));
    let last = &one.queued_operations[0];
    assert_eq!(last.target_id, "//a:1");
    let two = admin
        .list_queued_operations(page(Some(list_queued_operations_request::StartAfter {
            priority: last.priority,
            expected_duration: None,
            queued_timestamp: last.queued_timestamp,
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&two.queued_operations), [second.as_str()]);
    assert_eq!(two.pagination_info.unwrap().start_index, 1);

    // The worker takes the most urgent action: it is executing on it.
    let exec = worker.take().await.unwrap();
    assert_eq!(exec.action_digest.as_ref(), Some(&b1));
    let got = admin
        .get_operation(GetOperationRequest {
            operation_name: urgent.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(got.name, urgent);
    assert!(matches!(
        got.stage,
        Some(operation_state::Stage::Executing(_))
    ));
    assert_eq!(got.priority, -3);
    assert_eq!(got.target_id, "//b:1");
    assert_eq!(got.action_digest.as_ref(), Some(&b1));
    assert!(got.queued_timestamp.is_some());
    assert!(got.timeout.is_none(), "its client follows it");
    assert_eq!(
        got.invocation_name,
        Some(invocation(
            queue("", LINUX),
            vec![instance_id(""), tool_id("inv-b")]
        ))
    );
    let unknown = admin
        .get_operation(GetOperationRequest {
            operation_name: "operations/none".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Workers: all of the queue, those executing for an invocation.
    let workers = |filter| ListWorkersRequest {
        filter: Some(list_workers_request::Filter {
            r#type: Some(filter),
        }),
        page_size: 10,
        start_after: None,
    };
    use list_workers_request::filter::Type;
    let all = admin
        .list_workers(workers(Type::All(queue("", LINUX))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.workers.len(), 1);
    let w1 = &all.workers[0];
    assert_eq!(
        w1.id,
        BTreeMap::from([("slot".to_owned(), "w1".to_owned())])
    );
    assert_eq!(w1.current_operation.as_ref().unwrap().name, urgent);
    assert!(w1.timeout.is_some(), "executing: it must report by then");
    assert!(!w1.drained);
    let executing_b = admin
        .list_workers(workers(Type::Executing(invocation(
            queue("", LINUX),
            vec![instance_id(""), tool_id("inv-b")],
        ))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(executing_b.workers.len(), 1);
    let idle = admin
        .list_workers(workers(Type::IdleSynchronizing(invocation(
            queue("", LINUX),
            vec![],
        ))))
        .await
        .unwrap()
        .into_inner();
    assert!(idle.workers.is_empty());
    let after_w1 = admin
        .list_workers(ListWorkersRequest {
            start_after: Some(list_workers_request::StartAfter {
                worker_id: w1.id.clone(),
            }),
            ..workers(Type::All(queue("", LINUX)))
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after_w1.workers.is_empty());
    assert_eq!(after_w1.pagination_info.unwrap().start_index, 1);

    // Every operation by name, a page at a time, and filtered.
    let list = |page_size, start_after: Option<&str>| ListOperationsRequest {
        page_size,
        start_after: start_after.map(|name| list_operations_request::StartAfter {
            operation_name: name.to_owned(),
        }),
        ..Default::default()
    };
    let mut every = [first.clone(), second.clone(), urgent.clone(), mac_name];
    every.sort();
    let page1 = admin
        .list_operations(list(3, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&page1.operations), every[..3]);
    let info = page1.pagination_info.unwrap();
    assert_eq!((info.start_index, info.total_entries), (0, 4));
    let page2 = admin
        .list_operations(list(3, Some(&every[2])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&page2.operations), every[3..]);
    assert_eq!(page2.pagination_info.unwrap().start_index, 3);
    let executing = admin
        .list_operations(ListOperationsRequest {
            filter_stage: execution_stage::Value::Executing as i32,
            ..list(10, None)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&executing.operations), [urgent.as_str()]);
    let of_inv_a = admin
        .list_operations(ListOperationsRequest {
            filter_invocation_id: Some(tool_id("inv-a")),
            ..list(10, None)
        })
        .await
        .unwrap()
        .into_inner();
    let mut inv_a_names = vec![first.as_str(), second.as_str()];
    inv_a_names.sort();
    assert_eq!(names(&of_inv_a.operations), inv_a_names);
}

#[tokio::test]
async fn kill_operations_ends_the_waiting_clients_execute_with_the_status_given() {
    let farm = farm_with(patient_timing()).await;
    let mut admin = admin(&farm);
    let mut worker = farm.worker("w1", LINUX);
    assert!(worker.take().await.is_none());

    // Queued: the client's stream ends with the status.
    let queued = farm.action(&["queued"], LINUX).await;
    let running = farm.action(&["running"], LINUX).await;
    let (queued_name, mut queued_stream) = execute_in(&farm, "", "", &queued, 5, "i", "").await;
    let (running_name, mut running_stream) = execute_in(&farm, "", "", &running, 0, "i", "").await;
    admin
        .kill_operations(kill_by_name(
            &queued_name,
            Code::ResourceExhausted,
            "over the team's quota",
        ))
        .await
        .unwrap();
    let got = final_status(&mut queued_stream).await;
    assert_eq!(got.code, Code::ResourceExhausted as i32);
    assert_eq!(got.message, "over the team's quota");

    // Executing: the stream ends, and the worker is told to stop.
    let exec = worker.take().await.unwrap();
    assert_eq!(exec.action_digest.as_ref(), Some(&running));
    admin
        .kill_operations(kill_by_name(&running_name, Code::Aborted, "killed by ops"))
        .await
        .unwrap();
    let got = final_status(&mut running_stream).await;
    assert_eq!(got.code, Code::Aborted as i32);
    let told = worker.running(&running).await;
    assert!(
        matches!(
            told.desired_state.and_then(|d| d.worker_state),
            Some(desired_state::WorkerState::Idle(_))
        ),
        "the worker was not told to drop the killed action"
    );

    // A kill needs an error status and a filter; unknown names are not found.
    let ok = admin
        .kill_operations(kill_by_name(&running_name, Code::Ok, ""))
        .await
        .unwrap_err();
    assert_eq!(ok.code(), Code::InvalidArgument, "{ok:?}");
    let none = admin
        .kill_operations(kill_by_name("operations/none", Code::Aborted, ""))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    let no_filter = admin
        .kill_operations(KillOperationsRequest {
            filter: None,
            status: Some(status(Code::Aborted, "")),
        })
        .await
        .unwrap_err();
    assert_eq!(no_filter.code(), Code::InvalidArgument);

    // A queue without workers: its queued operations end; a queue with
    // workers is refused.
    let by_queue = |q: SizeClassQueueName| KillOperationsRequest {
        filter: Some(kill_operations_request::Filter {
            r#type: Some(kill_operations_request::filter::Type::SizeClassQueueWithoutWorkers(q)),
        }),
        status: Some(status(
            Code::FailedPrecondition,
            "no macOS workers can be made",
        )),
    };
    let served = admin
        .kill_operations(by_queue(queue("", LINUX)))
        .await
        .unwrap_err();
    assert_eq!(served.code(), Code::FailedPrecondition, "{served:?}");
    let mac = farm.action(&["mac"], MACOS).await;
    let (_, mut mac_stream) = execute_in(&farm, "", "", &mac, 0, "i", "").await;
    // With no worker announcing "lab", its operations sit under their own
    // instance names; a kill of the "lab" queue reaches them, no others.
    let (lab_name, mut lab_stream) = execute_in(&farm, "", "lab/ios", &mac, 0, "i", "").await;
    admin
        .kill_operations(by_queue(queue("lab", MACOS)))
        .await
        .unwrap();
    let got = final_status(&mut lab_stream).await;
    assert_eq!(got.code, Code::FailedPrecondition as i32);
    let other = admin
        .get_operation(GetOperationRequest {
            operation_name: lab_name,
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(other.instance_name_suffix, "", "its queue is its own name");
    let untouched = admin
        .list_operations(ListOperationsRequest {
            page_size: 10,
            filter_stage: execution_stage::Value::Queued as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        untouched.operations.len(),
        1,
        "the macOS action of \"\" waits on"
    );
    admin
        .kill_operations(by_queue(queue("", MACOS)))
        .await
        .unwrap();
    let got = final_status(&mut mac_stream).await;
    assert_eq!(got.code, Code::FailedPrecondition as i32);
    assert_eq!(got.message, "no macOS workers can be made");
    let gone = admin
        .kill_operations(by_queue(queue("nobody", MACOS)))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}
