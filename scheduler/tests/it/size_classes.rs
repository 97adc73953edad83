//! Size classes over gRPC: a small and a large fake worker, the
//! scheduler learning where an action fits, and its history surviving a
//! restart through storage.

use std::time::Instant;

use corral_proto::any::Packable as _;
use corral_proto::reapi::ExecutedActionMetadata;
use corral_proto::resourceusage::PosixResourceUsage;
use corral_scheduler::config::SizeClassesConfig;
use corral_scheduler::size_class::{self, SizeClasses};
use corral_scheduler::size_class_history::HistoryStore;
use corral_scheduler::storage_client::StorageClient;

use super::*;

const SMALL: u32 = 1;
const LARGE: u32 = 4;

/// Size classes on, never probing down: the test is deterministic.
fn size_classes() -> SizeClassesConfig {
    SizeClassesConfig {
        probe_probability: 0.0,
        ..SizeClassesConfig::default()
    }
}

/// Storage alone, kept across scheduler restarts.
struct Storage {
    url: String,
    _server: tokio::task::JoinSet<()>,
}

async fn storage() -> Storage {
    let mut server = tokio::task::JoinSet::new();
    let url = start_storage(&mut server, memory_storage()).await;
    Storage {
        url,
        _server: server,
    }
}

/// A scheduler with size classes on `storage`; dropping the farm stops it.
async fn farm_on(storage: &Storage) -> Farm {
    let mut servers = tokio::task::JoinSet::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = corral_scheduler::Config {
        storage: storage.url.clone(),
        max_retries: 1,
        size_classes: Some(size_classes()),
        ..corral_scheduler::Config::default()
    };
    let scheduler = Scheduler::builder(cfg).timing(timing()).build().unwrap();
    start_scheduler(&mut servers, listener, scheduler);
    // No web UI: a port nothing serves.
    let metrics = "127.0.0.1:9".parse().unwrap();
    Farm::of(servers, &url, &storage.url, metrics)
}

fn sized(farm: &Farm, slot: &str, class: u32) -> FakeWorker {
    let mut worker = farm.worker(slot, LINUX);
    worker.size_class = class;
    worker
}

/// Announces `worker` (idle, asking for no work).
async fn announce(worker: &mut FakeWorker) {
    worker
        .sync(current_state::WorkerState::Idle(Empty {}), true)
        .await;
}

/// What a Corral worker reports when the OOM killer ended the action:
/// exit 137, and the runner's resource usage saying so.
fn out_of_memory() -> ActionResult {
    ActionResult {
        exit_code: 137,
        execution_metadata: Some(ExecutedActionMetadata {
            auxiliary_metadata: vec![PosixResourceUsage {
                termination_signal: "KILL".into(),
                corral_oom_killed: true,
                ..Default::default()
            }
            .pack()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_action_out_of_memory_on_the_small_class_succeeds_on_the_large_and_starts_there_next() {
    let storage = storage().await;
    let farm = farm_on(&storage).await;
    let mut small = sized(&farm, "small", SMALL);
    let mut large = sized(&farm, "large", LARGE);
    announce(&mut small).await;
    announce(&mut large).await;
    let digest = farm.action(&["link", "huge.o"], LINUX).await;

    // New: it starts on the small class; the large worker does not take
    // it while a small one is there.
    let mut stream = farm.execute(&digest, 0).await;
    assert!(large.take().await.is_none(), "not for the large class yet");
    let exec = small.take().await.expect("the small worker gets it first");
    assert_eq!(exec.action_digest.as_ref(), Some(&digest));
    small.complete_with(&digest, out_of_memory()).await;
    // Queued again by the scheduler for the large class, without the
    // client doing anything: the small worker does not get it back.
    assert!(small.take().await.is_none());
    let exec = large.take().await.expect("the large worker gets the retry");
    assert_eq!(exec.action_digest.as_ref(), Some(&digest));
    large.complete(&digest, 0).await;
    let ops = rest(&mut stream).await;
    let done = response(ops.last().unwrap());
    assert_eq!(done.result.unwrap().exit_code, 0);
    assert_eq!(done.message, "ran on slot large");

    // The next identical action starts on the large class.
    let mut again = farm.execute(&digest, 0).await;
    assert!(
        small.take().await.is_none(),
        "remembered: not for the small class"
    );
    assert_eq!(large.work_once(0).await, digest);
    let ops = rest(&mut again).await;
    assert_eq!(response(ops.last().unwrap()).message, "ran on slot large");

    // What was learned is in storage: a restarted scheduler starts the
    // action on the large class too. The write is in the background:
    // wait until it landed.
    let sizes = size_classes();
    let store = HistoryStore::new(
        StorageClient::new(
            &corral_auth::channel::Connector::new(None).unwrap(),
            &storage.url,
        )
        .unwrap(),
        sizes.history_instance_name.clone(),
    );
    let command = Command {
        arguments: vec!["link".into(), "huge.o".into()],
        output_paths: vec!["out".into()],
        ..Default::default()
    };
    let platform =
        corral_scheduler::queue::PlatformKey::new([("OSFamily".to_owned(), "linux".to_owned())]);
    let key = size_class::key(&sizes, "", &Action::default(), &command, &platform);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let history = store.load(&key).await.unwrap();
        if history.classes.get(&LARGE).is_some_and(|o| o.len() == 2) {
            assert_eq!(
                history.classes[&SMALL].back(),
                Some(&size_class::Outcome::OutOfMemory)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history never stored: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(farm);
    let farm = farm_on(&storage).await;
    let mut small = sized(&farm, "small", SMALL);
    let mut large = sized(&farm, "large", LARGE);
    announce(&mut small).await;
    announce(&mut large).await;
    let mut after_restart = farm.execute(&digest, 0).await;
    assert!(small.take().await.is_none(), "the restart forgot nothing");
    assert_eq!(large.work_once(0).await, digest);
    rest(&mut after_restart).await;
}

#[tokio::test]
async fn a_timeout_on_the_largest_class_is_the_clients_answer() {
    let storage = storage().await;
    let farm = farm_on(&storage).await;
    let mut large = sized(&farm, "large", LARGE);
    announce(&mut large).await;
    let digest = farm.action(&["sleep", "forever"], LINUX).await;
    let mut stream = farm.execute(&digest, 0).await;
    let exec = large.take().await.unwrap();
    let timed_out = corral_proto::completed(
        exec.action_digest.unwrap(),
        ExecuteResponse {
            status: Some(corral_proto::rpc::Status {
                code: tonic::Code::DeadlineExceeded as i32,
                message: "timed out".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        },
    );
    large.sync(timed_out, true).await;
    // No larger class: the failure ends the operation.
    let ops = rest(&mut stream).await;
    assert_eq!(
        response(ops.last().unwrap()).status.unwrap().code,
        tonic::Code::DeadlineExceeded as i32
    );
}

/// The extra latency of size classes per Execute: reading a key's history
/// from storage over gRPC (a miss, as for a new action; later reads of
/// the key are from memory). Printed, not asserted.
#[tokio::test]
async fn history_lookup_latency_is_reported() {
    let storage = storage().await;
    let client = StorageClient::new(
        &corral_auth::channel::Connector::new(None).unwrap(),
        &storage.url,
    )
    .unwrap();
    let store = HistoryStore::new(client, "size-class-history".to_owned());
    let sizes = SizeClasses::new(size_classes(), size_class::os_random(), Some(store));
    let keys: Vec<Digest> = (0..200u32).map(|n| digest_of(&n.to_le_bytes())).collect();
    // One round trip to connect first.
    sizes.choose(digest_of(b"warm-up"), &[SMALL, LARGE]).await;
    let start = Instant::now();
    for key in &keys {
        assert_eq!(
            sizes.choose(key.clone(), &[SMALL, LARGE]).await.class,
            SMALL
        );
    }
    let miss = start.elapsed() / keys.len() as u32;
    let start = Instant::now();
    for key in &keys {
        sizes.choose(key.clone(), &[SMALL, LARGE]).await;
    }
    let hit = start.elapsed() / keys.len() as u32;
    println!(
        "size class history lookup per Execute: {miss:?} from storage (gRPC, memory backend), {hit:?} from memory ({} keys)",
        keys.len()
    );
}
