//! Tenants taking turns for workers, their caps, and platforms matched
//! per property: on `Assignments` directly (paused time), then through
//! the gRPC services.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_proto::reapi::execution_client::ExecutionClient;
use corral_proto::reapi::{Action, Digest, ExecuteRequest, ExecuteResponse};
use corral_scheduler::assignment::{Assignments, Queued, WorkerId};
use corral_scheduler::config::{FairnessConfig, InstanceFairness};
use corral_scheduler::operation::{Operation, Progress};
use corral_scheduler::platform_matching::{Matching, PlatformMatcher};
use corral_scheduler::queue::PlatformKey;
use corral_scheduler::Timing;

use super::{farm_configured, response, rest};

fn worker(n: u32) -> WorkerId {
    WorkerId::from([("slot".to_owned(), n.to_string())])
}

fn linux() -> PlatformKey {
    PlatformKey::new([("OSFamily".to_owned(), "linux".to_owned())])
}

fn assignments() -> Assignments {
    let timing = Timing {
        sync_interval: Duration::from_secs(10),
        long_poll: Duration::from_secs(30),
        worker_timeout: Duration::from_secs(60),
        platform_grace: Duration::from_secs(60),
        unwatched_grace: Duration::from_secs(60),
        keep_completed: Duration::from_secs(60),
        sweep_every: Duration::from_secs(1),
    };
    Assignments::new(&timing, 1)
}

fn failure(operation: &Operation) -> corral_proto::rpc::Status {
    let progress = operation.watch().borrow().clone();
    let Progress::Completed(response) = progress else {
        panic!("not completed: {progress:?}");
    };
    response.status.unwrap()
}

/// Action `n` of `instance`, for tests with thousands.
fn numbered(n: u32, instance: &str, platform: &PlatformKey) -> Queued {
    let digest = Digest {
        hash: format!("{n:064x}"),
        size_bytes: 1,
    };
    Queued {
        operation: Arc::new(Operation::new(
            format!("operations/{instance}/{n}"),
            instance.to_owned(),
            digest.clone(),
            1,
        )),
        action_digest: digest,
        action: Action::default(),
        digest_function: 1,
        instance_name: instance.to_owned(),
        platform: platform.clone(),
        queued_at: std::time::SystemTime::UNIX_EPOCH,
        waiting_since: tokio::time::Instant::now(),
        retries: 0,
        size_class: Default::default(),
    }
}

/// One worker runs every queued action to the end, one at a time;
/// the instance names in the order it got them.
fn run_all(a: &Assignments) -> Vec<String> {
    let mut order = Vec::new();
    while let Some(got) = a.try_assign(&worker(1), "", &linux()) {
        a.complete(
            &worker(1),
            &got.queued.action_digest,
            ExecuteResponse::default(),
        )
        .unwrap();
        order.push(got.queued.instance_name);
    }
    order
}

fn weighted(instance: &str, fairness: InstanceFairness) -> FairnessConfig {
    FairnessConfig {
        instances: [(instance.to_owned(), fairness)].into(),
        ..FairnessConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn two_tenants_of_a_thousand_actions_take_turns_for_one_worker() {
    let a = assignments();
    // All of a's backlog arrives before any of b's.
    for n in 0..1000 {
        a.enqueue(numbered(n, "tenant-a", &linux()), 0, "");
    }
    for n in 0..1000 {
        a.enqueue(numbered(n, "tenant-b", &linux()), 0, "");
    }
    let order = run_all(&a);
    assert_eq!(order.len(), 2000);
    for (i, pair) in order.chunks(2).enumerate() {
        assert_eq!(pair, ["tenant-a", "tenant-b"], "turn {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_tenant_of_weight_two_gets_two_turns_for_one() {
    let a = assignments().with_rules(
        PlatformMatcher::default(),
        weighted(
            "tenant-a",
            InstanceFairness {
                weight: Some(2),
                ..InstanceFairness::default()
            },
        ),
    );
    for n in 0..1000 {
        a.enqueue(numbered(n, "tenant-b", &linux()), 0, "");
        a.enqueue(numbered(n, "tenant-a", &linux()), 0, "");
    }
    let order = run_all(&a);
    assert_eq!(order.len(), 2000);
    // Two of a's for each of b's until a's thousand are done, at
    // 1,500; then b's last 500.
    for k in 1..=500 {
        let a_turns = order[..3 * k].iter().filter(|i| *i == "tenant-a").count();
        assert_eq!(a_turns, 2 * k, "after {} actions", 3 * k);
    }
    assert!(order[1500..].iter().all(|i| i == "tenant-b"));
}

#[tokio::test(start_paused = true)]
async fn priorities_order_a_tenants_actions_but_not_its_turns() {
    let a = assignments();
    a.enqueue(numbered(1, "a", &linux()), 0, "");
    a.enqueue(numbered(2, "a", &linux()), -100, "");
    a.enqueue(numbered(3, "b", &linux()), 5, "");
    a.enqueue(numbered(4, "b", &linux()), 0, "");
    let digests: Vec<(String, String)> = std::iter::from_fn(|| {
        let got = a.try_assign(&worker(1), "", &linux())?;
        a.complete(
            &worker(1),
            &got.queued.action_digest,
            ExecuteResponse::default(),
        )
        .unwrap();
        Some((got.queued.instance_name, got.queued.action_digest.hash))
    })
    .collect();
    let n = |i: u32| format!("{i:064x}");
    assert_eq!(
        digests,
        [
            ("a".into(), n(2)),
            ("b".into(), n(4)),
            ("a".into(), n(1)),
            ("b".into(), n(3))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn past_its_queued_cap_a_tenant_is_refused_naming_the_cap() {
    let a = assignments().with_rules(
        PlatformMatcher::default(),
        FairnessConfig {
            max_queued: Some(2),
            ..weighted(
                "big",
                InstanceFairness {
                    max_queued: Some(3),
                    ..InstanceFairness::default()
                },
            )
        },
    );
    for n in 0..2 {
        a.enqueue_within_cap(numbered(n, "small", &linux()), 0, "")
            .unwrap();
    }
    let refused = a
        .enqueue_within_cap(numbered(2, "small", &linux()), 0, "")
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "instance name \"small\" has 2 operations queued, its cap (fairness max_queued); \
         retry later"
    );
    for n in 0..3 {
        a.enqueue_within_cap(numbered(n, "big", &linux()), 0, "")
            .unwrap();
    }
    assert!(a
        .enqueue_within_cap(numbered(3, "big", &linux()), 0, "")
        .is_err());
    // A running action is not queued: room again.
    let got = a.try_assign(&worker(1), "", &linux()).unwrap();
    assert_eq!(a.load(&got.queued.instance_name).1, 1);
    a.enqueue_within_cap(numbered(9, &got.queued.instance_name, &linux()), 0, "")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_tenant_at_its_running_cap_waits_while_another_runs() {
    let a = assignments().with_rules(
        PlatformMatcher::default(),
        weighted(
            "capped",
            InstanceFairness {
                max_executing: Some(1),
                ..InstanceFairness::default()
            },
        ),
    );
    for n in 0..3 {
        a.enqueue(numbered(n, "capped", &linux()), 0, "");
    }
    a.enqueue(numbered(10, "other", &linux()), 0, "");
    let first = a.try_assign(&worker(1), "", &linux()).unwrap();
    assert_eq!(first.queued.instance_name, "capped");
    let second = a.try_assign(&worker(2), "", &linux()).unwrap();
    assert_eq!(second.queued.instance_name, "other");
    assert!(
        a.try_assign(&worker(3), "", &linux()).is_none(),
        "capped has one running, its cap"
    );
    assert_eq!(a.load("capped"), (2, 1));
    // Lost workers count too: given back, the turn is free again.
    assert!(a.release(&worker(1)));
    let third = a.try_assign(&worker(3), "", &linux()).unwrap();
    assert_eq!(third.queued.action_digest, first.queued.action_digest);
    a.complete(
        &worker(3),
        &third.queued.action_digest,
        ExecuteResponse::default(),
    )
    .unwrap();
    assert_eq!(
        a.try_assign(&worker(3), "", &linux())
            .unwrap()
            .queued
            .instance_name,
        "capped"
    );
}

fn sized(properties: &[(&str, &str)]) -> PlatformKey {
    PlatformKey::new(
        properties
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    )
}

fn matching() -> PlatformMatcher {
    PlatformMatcher::new(BTreeMap::from([
        ("cores".to_owned(), Matching::Minimum),
        ("cpu-feature".to_owned(), Matching::Subset),
    ]))
}

#[tokio::test(start_paused = true)]
async fn workers_take_actions_their_platform_satisfies_per_property() {
    let a = assignments().with_rules(matching(), FairnessConfig::default());
    let small = sized(&[("OSFamily", "linux"), ("cores", "4")]);
    let big = sized(&[
        ("OSFamily", "linux"),
        ("cores", "16"),
        ("cpu-feature", "avx2"),
        ("cpu-feature", "avx512f"),
    ]);
    a.saw_worker(&worker(1), "", &small);
    a.enqueue(
        numbered(1, "", &sized(&[("OSFamily", "linux"), ("cores", "8")])),
        0,
        "",
    );
    a.enqueue(
        numbered(2, "", &sized(&[("OSFamily", "linux"), ("cores", "2")])),
        0,
        "",
    );
    a.enqueue(
        numbered(
            3,
            "",
            &sized(&[("OSFamily", "linux"), ("cpu-feature", "avx512f")]),
        ),
        0,
        "",
    );
    let got = a.try_assign(&worker(1), "", &small).unwrap();
    assert_eq!(got.queued.action_digest.hash, format!("{:064x}", 2));
    assert!(a.try_assign(&worker(2), "", &small).is_none());
    // A worker class seen after the actions were queued finds them.
    let one = a.try_assign(&worker(3), "", &big).unwrap();
    let two = a.try_assign(&worker(4), "", &big).unwrap();
    let mut hashes = [one.queued.action_digest.hash, two.queued.action_digest.hash];
    hashes.sort();
    assert_eq!(hashes, [format!("{:064x}", 1), format!("{:064x}", 3)]);
    assert_eq!(a.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_action_no_worker_is_big_enough_for_fails_naming_the_property_and_offers() {
    let a = assignments().with_rules(matching(), FairnessConfig::default());
    let grace = Duration::from_secs(60);
    let wants = numbered(1, "", &sized(&[("OSFamily", "linux"), ("cores", "32")]));
    let operation = Arc::clone(&wants.operation);
    a.enqueue(wants, 0, "");
    a.saw_worker(
        &worker(1),
        "",
        &sized(&[("OSFamily", "linux"), ("cores", "8")]),
    );
    a.saw_worker(
        &worker(2),
        "",
        &sized(&[("OSFamily", "linux"), ("cores", "16")]),
    );
    assert_eq!(a.fail_unserved(grace), 0);
    tokio::time::advance(grace).await;
    a.saw_worker(
        &worker(1),
        "",
        &sized(&[("OSFamily", "linux"), ("cores", "8")]),
    );
    a.saw_worker(
        &worker(2),
        "",
        &sized(&[("OSFamily", "linux"), ("cores", "16")]),
    );
    assert_eq!(a.fail_unserved(grace), 1);
    assert_eq!(
        failure(&operation).message,
        "no worker offers platform {OSFamily=linux, cores=32} for instance \"\" (waited 60s): \
         property cores (minimum) asks 32, workers offer 16, 8; \
         workers offer: {OSFamily=linux, cores=16}; {OSFamily=linux, cores=8}"
    );
}

#[tokio::test]
async fn over_grpc_a_bigger_worker_takes_an_action_and_a_tenant_past_its_cap_is_refused() {
    let farm = farm_configured(|cfg| {
        cfg.platform_matching = BTreeMap::from([("cores".to_owned(), Matching::Minimum)]);
        cfg.fairness.max_queued = Some(1);
    })
    .await;
    let four = farm
        .action(&["make", "-j4"], &[("OSFamily", "linux"), ("cores", "4")])
        .await;
    let mut stream = farm.execute(&four, 0).await;
    // An identical Execute joins the queued operation: the cap counts
    // operations, not clients.
    let mut joined = farm.execute(&four, 0).await;
    let other = farm
        .action(&["make", "-j2"], &[("OSFamily", "linux"), ("cores", "2")])
        .await;
    let refused = ExecutionClient::new(farm.scheduler.clone())
        .execute(ExecuteRequest {
            action_digest: Some(other.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "instance name \"\" has 1 operations queued, its cap (fairness max_queued); retry later"
    );
    // A worker with 8 cores takes the 4-core action.
    let mut big = farm.worker("1", &[("OSFamily", "linux"), ("cores", "8")]);
    let exec = big.take().await.expect("8 cores satisfy 4");
    assert_eq!(exec.action_digest.as_ref(), Some(&four));
    big.complete(&four, 3).await;
    for stream in [&mut stream, &mut joined] {
        let ops = rest(stream).await;
        assert_eq!(response(ops.last().unwrap()).result.unwrap().exit_code, 3);
    }
    // Room again, and a minimum that is no number is the action's fault.
    let _queued = farm.execute(&other, 0).await;
    let bad = farm
        .action(&["x"], &[("OSFamily", "linux"), ("cores", "lots")])
        .await;
    let invalid = ExecutionClient::new(farm.scheduler.clone())
        .execute(ExecuteRequest {
            action_digest: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().contains("cores"), "{}", invalid.message());
}

/// One step of [`any_sequence_keeps_the_index_in_step_with_the_queues`].
#[derive(Debug, Clone)]
enum Step {
    /// Queue an action of tenant `.0` asking platform `.1`.
    Enqueue(usize, usize),
    /// Worker `.0` (idle) asks for work.
    Assign(usize),
    /// Worker `.0` completes what it runs.
    Complete(usize),
    /// Worker `.0` says it is idle mid-action.
    Release(usize),
    /// The `.0`th operation still alive is cancelled.
    Cancel(usize),
}

const TENANTS: [&str; 3] = ["a", "b", "c/x"];

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0..TENANTS.len(), 0..4usize).prop_map(|(t, p)| Step::Enqueue(t, p)),
        3 => (0..3usize).prop_map(Step::Assign),
        2 => (0..3usize).prop_map(Step::Complete),
        1 => (0..3usize).prop_map(Step::Release),
        1 => (0..8usize).prop_map(Step::Cancel),
    ]
}

fn action_platform(p: usize) -> PlatformKey {
    let os = if p == 3 { "macos" } else { "linux" };
    let mut properties = vec![("OSFamily".to_owned(), os.to_owned())];
    match p {
        1 => properties.push(("cores".to_owned(), "4".to_owned())),
        2 => properties.push(("cores".to_owned(), "16".to_owned())),
        _ => {}
    }
    PlatformKey::new(properties)
}

/// Worker 0 offers linux, worker 1 linux with 8 cores (prefix "c"),
/// worker 2 macos.
fn worker_platform(w: usize) -> (&'static str, PlatformKey) {
    match w {
        0 => ("", action_platform(0)),
        1 => (
            "c",
            PlatformKey::new([
                ("OSFamily".to_owned(), "linux".to_owned()),
                ("cores".to_owned(), "8".to_owned()),
            ]),
        ),
        _ => ("", action_platform(3)),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    /// Against a model that scans everything: the index hands a worker an
    /// action exactly when one it may run is queued, and counts each
    /// tenant's queued and running actions as they are.
    #[test]
    fn any_sequence_keeps_the_index_in_step_with_the_queues(
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let matcher = PlatformMatcher::new(BTreeMap::from([("cores".to_owned(), Matching::Minimum)]));
            let fairness = weighted("a", InstanceFairness { max_executing: Some(1), ..InstanceFairness::default() });
            let a = Assignments::new(&Timing::from_config(&corral_scheduler::Config::default()), 1000)
                .with_rules(matcher.clone(), fairness);
            // The model: queued (tenant, platform, operation); what each
            // worker runs.
            let mut queued: Vec<(usize, usize, Arc<Operation>)> = Vec::new();
            let mut running: [Option<(usize, usize, Arc<Operation>)>; 3] = [None, None, None];
            let mut n = 0;
            for step in steps {
                match step {
                    Step::Enqueue(t, p) => {
                        n += 1;
                        let q = numbered(n, TENANTS[t], &action_platform(p));
                        queued.push((t, p, Arc::clone(&q.operation)));
                        a.enqueue(q, 0, "");
                    }
                    Step::Assign(w) if running[w].is_none() => {
                        let (prefix, offers) = worker_platform(w);
                        let runs_a = running.iter().flatten().filter(|r| r.0 == 0).count();
                        let could = queued.iter().any(|(t, p, _)| {
                            (*t != 0 || runs_a == 0)
                                && dispatch_prefix_matches(prefix, TENANTS[*t])
                                && matcher.satisfies(&offers, &action_platform(*p))
                        });
                        let got = a.try_assign(&worker(w as u32), prefix, &offers);
                        assert_eq!(got.is_some(), could, "worker {w}, queued {queued:?}");
                        if let Some(got) = got {
                            let at = queued
                                .iter()
                                .position(|(_, _, op)| Arc::ptr_eq(op, &got.queued.operation))
                                .expect("a queued operation");
                            running[w] = Some(queued.remove(at));
                        }
                    }
                    Step::Assign(_) => {}
                    Step::Complete(w) => {
                        if let Some((_, _, op)) = running[w].take() {
                            let digest = op.action_digest().clone();
                            a.complete(&worker(w as u32), &digest, ExecuteResponse::default()).unwrap();
                        }
                    }
                    Step::Release(w) => {
                        let had = running[w].take();
                        assert_eq!(a.release(&worker(w as u32)), had.is_some());
                        queued.extend(had);
                    }
                    Step::Cancel(i) => {
                        let alive: Vec<Arc<Operation>> = queued
                            .iter()
                            .map(|q| Arc::clone(&q.2))
                            .chain(running.iter().flatten().map(|r| Arc::clone(&r.2)))
                            .collect();
                        if let Some(op) = alive.get(i) {
                            assert!(a.cancel(op, "test"));
                            queued.retain(|q| !Arc::ptr_eq(&q.2, op));
                            for r in &mut running {
                                if r.as_ref().is_some_and(|r| Arc::ptr_eq(&r.2, op)) {
                                    *r = None;
                                }
                            }
                        }
                    }
                }
                assert_eq!(a.queued(), queued.len());
                for (t, tenant) in TENANTS.iter().enumerate() {
                    let q = queued.iter().filter(|q| q.0 == t).count();
                    let r = running.iter().flatten().filter(|r| r.0 == t).count();
                    assert_eq!(a.load(tenant), (q, r), "tenant {tenant}");
                }
            }
        });
    }
}

fn dispatch_prefix_matches(prefix: &str, instance: &str) -> bool {
    corral_scheduler::dispatch::instance_matches(prefix, instance)
}
