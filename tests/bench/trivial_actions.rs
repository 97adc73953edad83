//! Fresh trivial actions (`/bin/true`, a unique salt each, so none is an
//! Action Cache hit) through `corral up`, from Rust REAPI clients on the
//! same machine: latency (p50, p95) at one client and throughput at 32,
//! and the CPU the farm spends per action (corral up, its runner and the
//! sandboxed processes, from /proc). Baseline in the same run: plain
//! fork+exec of `/bin/true` from this process.
//!
//! ```sh
//! cargo build --release -p corral
//! cargo bench -p corral-e2e --bench trivial_actions
//! ```
//!
//! CORRAL_BENCH_OPS scales the number of actions per level (default 1).
//! CORRAL_BENCH_BASELINE names another `corral` binary (a release build of
//! an older commit): the same levels run against it in the same run,
//! interleaved round by round (CORRAL_BENCH_ROUNDS, default 3), and the
//! ratios new/baseline are printed per level.
//! Run it as root on a quiet machine: the clients share its cores.

#![allow(clippy::unwrap_used)] // a bench: a failed step stops it loudly

use std::time::{Duration, Instant};

use corral_e2e::Farm;
use corral_proto::longrunning::operation;
use corral_proto::reapi::command::EnvironmentVariable;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::execution_client::ExecutionClient;
use corral_proto::reapi::{
    batch_update_blobs_request, Action, BatchUpdateBlobsRequest, Command, Digest, Directory,
    ExecuteRequest, ExecuteResponse,
};
use prost::Message;
use sha2::Digest as _;
use tonic::transport::Channel;

fn digest(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(sha2::Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// The Command and input root every action shares (uploaded once, as a
/// build's would be), and the Action each op makes fresh with its salt.
struct Template {
    command: Digest,
    root: Digest,
}

async fn upload(channel: &Channel, blobs: Vec<Vec<u8>>) {
    let response = ContentAddressableStorageClient::new(channel.clone())
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: blobs
                .into_iter()
                .map(|data| batch_update_blobs_request::Request {
                    digest: Some(digest(&data)),
                    data,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in response.responses {
        assert_eq!(r.status.map_or(0, |s| s.code), 0, "upload refused");
    }
}

async fn template(channel: &Channel) -> Template {
    let command = Command {
        arguments: vec!["/bin/true".into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let template = Template {
        command: digest(&command),
        root: digest(&root),
    };
    upload(channel, vec![command, root]).await;
    template
}

/// One op as a build client does it: upload the Action, Execute, wait
/// for the result. Returns its latency.
async fn one_action(channel: &Channel, template: &Template, salt: Vec<u8>) -> Duration {
    let start = Instant::now();
    let action = Action {
        command_digest: Some(template.command.clone()),
        input_root_digest: Some(template.root.clone()),
        salt,
        ..Default::default()
    }
    .encode_to_vec();
    let action_digest = digest(&action);
    upload(channel, vec![action]).await;
    let mut stream = ExecutionClient::new(channel.clone())
        .execute(ExecuteRequest {
            action_digest: Some(action_digest),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(op) = stream.message().await.unwrap() {
        if !op.done {
            continue;
        }
        let Some(operation::Result::Response(any)) = op.result else {
            panic!("operation ended without a response: {op:?}");
        };
        let response = ExecuteResponse::decode(any.value.as_slice()).unwrap();
        assert_eq!(response.status.map_or(0, |s| s.code), 0, "action failed");
        assert!(!response.cached_result, "a fresh action was a cache hit");
        let exit = response.result.map(|r| r.exit_code);
        assert_eq!(exit, Some(0), "/bin/true did not exit 0");
        return start.elapsed();
    }
    panic!("the Execute stream ended before the operation did");
}

/// CPU time, in seconds, of `pid` and every live process under it, with
/// what their reaped children used. Clock ticks are USER_HZ, 100 on every
/// Linux architecture Corral runs on.
fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name's closing parenthesis: state, ppid, ….
        let Some((head, rest)) = text.rsplit_once(") ") else {
            continue;
        };
        let Some(own) = head
            .split_once(" (")
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        let ppid: u32 = fields[1].parse().unwrap_or(0);
        // utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 here.
        let ticks: u64 = fields[11..15]
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        stats.push((own, ppid, ticks));
    }
    let mut tree = vec![pid];
    let mut ticks = 0;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(own, ppid, t) in &stats {
            if own == parent {
                ticks += t;
            }
            if ppid == parent {
                tree.push(own);
            }
        }
        i += 1;
    }
    ticks as f64 / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Numbers each action's salt, across every level of the run.
static NEXT_SALT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A level's figures, summed over its rounds.
struct Level {
    clients: usize,
    ops: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    farm_cpu: f64,
}

impl Level {
    fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }

    fn p50(&self) -> Duration {
        percentile(&self.latencies, 0.5)
    }

    fn cpu_per_op_ms(&self) -> f64 {
        self.farm_cpu * 1000.0 / self.ops as f64
    }

    /// Another round of the same level added in.
    fn add(&mut self, other: Level) {
        self.ops += other.ops;
        self.wall += other.wall;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.farm_cpu += other.farm_cpu;
    }

    fn print(&self, farm: &str, baseline_p50: Duration) {
        let p50 = self.p50();
        println!(
            "{farm:>8} {:>7} {:>6} {:>9.1} {:>8.2} {:>8.2} {:>10.2} {:>10.1}",
            self.clients,
            self.ops,
            self.ops_per_second(),
            ms(p50),
            ms(percentile(&self.latencies, 0.95)),
            self.cpu_per_op_ms(),
            p50.as_secs_f64() / baseline_p50.as_secs_f64(),
        );
    }
}

async fn level(farm: &Farm, url: &str, clients: usize, ops: usize, run: u64) -> Level {
    let mut channels = Vec::new();
    for _ in 0..clients {
        channels.push(
            Channel::from_shared(url.to_owned())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let template = std::sync::Arc::new(template(&channels[0]).await);
    let per_client = ops.div_ceil(clients);
    let cpu_before = tree_cpu_seconds(farm.pid());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client, channel) in channels.into_iter().enumerate() {
        let template = std::sync::Arc::clone(&template);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for op in 0..per_client {
                // Unique across levels too: the warm-up's must not be hits.
                let n = NEXT_SALT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let salt = format!("{run}/{n}/{client}/{op}").into_bytes();
                latencies.push(one_action(&channel, &template, salt).await);
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap());
    }
    let wall = start.elapsed();
    let farm_cpu = tree_cpu_seconds(farm.pid()) - cpu_before;
    latencies.sort();
    Level {
        clients,
        ops: latencies.len(),
        wall,
        latencies,
        farm_cpu,
    }
}

/// Plain fork+exec of /bin/true, `ops` times one after another.
fn fork_exec(ops: usize) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = (0..ops)
        .map(|_| {
            let start = Instant::now();
            let status = std::process::Command::new("/bin/true").status().unwrap();
            assert!(status.success());
            start.elapsed()
        })
        .collect();
    latencies.sort();
    latencies
}

/// The load average over the last minute, for the record beside each
/// figure (the machine may be shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

#[tokio::main]
async fn main() {
    let scale: usize = std::env::var("CORRAL_BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // A release build of an older commit, run at the same levels in the
    // same run, interleaved round by round, so that both see the same load.
    let baseline_binary = std::env::var_os("CORRAL_BENCH_BASELINE").map(std::path::PathBuf::from);
    let rounds: usize = std::env::var("CORRAL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if baseline_binary.is_some() { 3 } else { 1 });
    let mut farms = vec![("new", Farm::start())];
    if let Some(binary) = &baseline_binary {
        farms.push(("baseline", Farm::start_binary(binary)));
    }
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let urls: Vec<String> = farms
        .iter()
        .map(|(_, farm)| format!("http://127.0.0.1:{}", farm.port))
        .collect();
    // Warm-up: connections, the runner's first spawn, page cache.
    for ((_, farm), url) in farms.iter().zip(&urls) {
        level(farm, url, 1, 20, run).await;
    }

    let baseline = fork_exec(300 * scale);
    let baseline_p50 = percentile(&baseline, 0.5);
    println!(
        "fork+exec /bin/true: p50 {:.2} ms, p95 {:.2} ms ({} runs); load average {}",
        ms(baseline_p50),
        ms(percentile(&baseline, 0.95)),
        baseline.len(),
        load_average()
    );
    if let Some(binary) = &baseline_binary {
        println!(
            "baseline: {}; {rounds} rounds, interleaved",
            binary.display()
        );
    }
    println!("    farm clients    ops     ops/s  p50(ms)  p95(ms) cpu/op(ms) p50/f+e");
    for (clients, ops) in [(1, 300 * scale), (32, 1000 * scale)] {
        let load_before = load_average();
        let mut levels: Vec<Option<Level>> = farms.iter().map(|_| None).collect();
        for round in 0..rounds {
            // Alternate which farm goes first.
            let mut order: Vec<usize> = (0..farms.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let measured = level(&farms[i].1, &urls[i], clients, ops, run).await;
                match &mut levels[i] {
                    Some(total) => total.add(measured),
                    slot => *slot = Some(measured),
                }
            }
        }
        let levels: Vec<Level> = levels.into_iter().map(Option::unwrap).collect();
        for ((name, _), level) in farms.iter().zip(&levels) {
            level.print(name, baseline_p50);
        }
        if let [new, old] = levels.as_slice() {
            println!(
                "   ratio {clients:>7}        {:>9.2} {:>8.2}          {:>10.2}  (new/baseline; load average {load_before} before, {} after)",
                new.ops_per_second() / old.ops_per_second(),
                new.p50().as_secs_f64() / old.p50().as_secs_f64(),
                new.cpu_per_op_ms() / old.cpu_per_op_ms(),
                load_average()
            );
        }
    }
}
