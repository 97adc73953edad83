//! Storage throughput on loopback, each figure next to its baseline
//! measured in the same run:
//! - ByteStream Write and Read of one 256 MiB blob vs a `dd`-like write
//!   and read of the same bytes to a file in the same directory;
//! - BatchUpdateBlobs and BatchReadBlobs of 10,000 4 KiB blobs vs writing
//!   and reading them as 10,000 plain files;
//! - FindMissingBlobs of 10,000 digests (target: under 20 ms);
//! - the batches and FindMissingBlobs again on a store with
//!   `isolate_instances`, against the figures without it.
//!
//! `cargo bench -p corral-storage --bench throughput` (set
//! CORRAL_BENCH_DIR to measure another file system; default: the system
//! temporary directory).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
use corral_proto::bytestream::{ReadRequest, WriteRequest};
use corral_proto::reapi::batch_update_blobs_request;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
};
use corral_storage::config::Backend;
use corral_storage::{Config, Digest, DigestFunction};
use futures_util::{stream, StreamExt as _};

const BIG_BYTES: usize = 256 << 20;
const CHUNK_BYTES: usize = 64 << 10;
const SMALL_COUNT: usize = 10_000;
const SMALL_BYTES: usize = 4 << 10;
const PER_BATCH: usize = 1000;

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: cheap and not compressible, unlike a repeated pattern.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn raw_write_read(dir: &Path, bytes: &[u8]) -> (Duration, Duration) {
    let path = dir.join("raw.bin");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path).expect("create raw file");
    for chunk in bytes.chunks(1 << 20) {
        file.write_all(chunk).expect("write raw file");
    }
    drop(file);
    let write = start.elapsed();
    let start = Instant::now();
    let mut back = Vec::with_capacity(bytes.len());
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut back))
        .expect("read raw file");
    let read = start.elapsed();
    assert_eq!(back.len(), bytes.len());
    std::fs::remove_file(&path).expect("remove raw file");
    (write, read)
}

fn raw_small_files(dir: &Path, blobs: &[Vec<u8>]) -> (Duration, Duration) {
    let dir = dir.join("raw-small");
    std::fs::create_dir_all(&dir).expect("create raw-small");
    let start = Instant::now();
    for (i, blob) in blobs.iter().enumerate() {
        std::fs::write(dir.join(i.to_string()), blob).expect("write small file");
    }
    let write = start.elapsed();
    let start = Instant::now();
    for i in 0..blobs.len() {
        std::fs::read(dir.join(i.to_string())).expect("read small file");
    }
    let read = start.elapsed();
    std::fs::remove_dir_all(&dir).expect("remove raw-small");
    (write, read)
}

fn main() {
    let base = std::env::var_os("CORRAL_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(dir.path()));
}

async fn bench(dir: &Path) {
    let big = data(BIG_BYTES, 1);
    let (raw_write, raw_read) = raw_write_read(dir, &big);
    let small: Vec<Vec<u8>> = (0..SMALL_COUNT)
        .map(|i| data(SMALL_BYTES, i as u64 + 2))
        .collect();
    let (raw_small_write, raw_small_read) = raw_small_files(dir, &small);

    let server = Server::start(dir.join("storage"), false).await;
    let channel = server.channel.clone();

    // ByteStream, 256 MiB.
    let digest = DigestFunction::Sha256.digest_of(&big);
    let name = format!("b/uploads/1/blobs/{}/{}", digest.hash_hex(), BIG_BYTES);
    let mut bytestream = ByteStreamClient::new(channel.clone()).max_decoding_message_size(16 << 20);
    // Built before the clock starts: the client's copying is not the
    // server's cost.
    let requests: Vec<WriteRequest> = big
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, chunk)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * CHUNK_BYTES) as i64,
            finish_write: (i + 1) * CHUNK_BYTES >= BIG_BYTES,
            data: chunk.to_vec(),
        })
        .collect();
    let start = Instant::now();
    bytestream
        .write(stream::iter(requests))
        .await
        .expect("bytestream write");
    let bs_write = start.elapsed();
    let start = Instant::now();
    let mut responses = bytestream
        .read(ReadRequest {
            resource_name: format!("b/blobs/{}/{}", digest.hash_hex(), BIG_BYTES),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .expect("bytestream read")
        .into_inner();
    let mut received = 0;
    while let Some(response) = responses.next().await {
        received += response.expect("read chunk").data.len();
    }
    let bs_read = start.elapsed();
    assert_eq!(received, BIG_BYTES);

    let digests: Vec<Digest> = small
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    let shared = small_blobs(&channel, "", &small, &digests).await;
    server.stop().await;
    // The same on a fresh store isolating instance names: each blob is
    // written under the instance name, then read and found under it.
    let server = Server::start(dir.join("isolated"), true).await;
    let isolated = small_blobs(&server.channel, "team-a", &small, &digests).await;
    server.stop().await;

    let row = |what: &str, bytes: usize, took: Duration, raw: Duration| {
        println!(
            "{what:<38} {:>8.1} MiB/s  {:>8.1} ms   raw {:>8.1} MiB/s  ratio {:>5.2}",
            mib_per_s(bytes, took),
            took.as_secs_f64() * 1e3,
            mib_per_s(bytes, raw),
            raw.as_secs_f64() / took.as_secs_f64(),
        );
    };
    let small_total = SMALL_COUNT * SMALL_BYTES;
    row("ByteStream Write 256 MiB", BIG_BYTES, bs_write, raw_write);
    row("ByteStream Read 256 MiB", BIG_BYTES, bs_read, raw_read);
    row(
        "BatchUpdateBlobs 10,000 x 4 KiB",
        small_total,
        shared.update,
        raw_small_write,
    );
    row(
        "BatchReadBlobs 10,000 x 4 KiB",
        small_total,
        shared.read,
        raw_small_read,
    );
    println!(
        "{:<38} {:>8.2} ms (best of 5; target < 20 ms)",
        "FindMissingBlobs 10,000 digests",
        shared.find_missing.as_secs_f64() * 1e3
    );
    // Ratio: time with isolation over time without (1.00 = no cost).
    let isolated_row = |what: &str, took: Duration, without: Duration| {
        println!(
            "{what:<38} {:>8.2} ms   without {:>8.2} ms  cost ratio {:>5.2}",
            took.as_secs_f64() * 1e3,
            without.as_secs_f64() * 1e3,
            took.as_secs_f64() / without.as_secs_f64(),
        );
    };
    isolated_row(
        "isolated BatchUpdateBlobs 10,000 x 4 KiB",
        isolated.update,
        shared.update,
    );
    isolated_row(
        "isolated BatchReadBlobs 10,000 x 4 KiB",
        isolated.read,
        shared.read,
    );
    isolated_row(
        "isolated FindMissingBlobs 10,000",
        isolated.find_missing,
        shared.find_missing,
    );
}

/// A storage server on a disk store in `dir`, and a client channel to it.
struct Server {
    channel: tonic::transport::Channel,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinSet<Result<(), corral_storage::Error>>,
}

impl Server {
    async fn start(dir: std::path::PathBuf, isolate_instances: bool) -> Self {
        let cfg = Config {
            backend: Backend::Disk {
                dir,
                max_size_bytes: 2 << 30,
                fsync: false,
            },
            isolate_instances,
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut task = tokio::task::JoinSet::new();
        task.spawn(corral_storage::run(cfg, listener, async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        Self {
            channel,
            stop,
            task,
        }
    }

    async fn stop(mut self) {
        self.stop.send(()).expect("stop server");
        self.task
            .join_next()
            .await
            .expect("server task")
            .expect("server joined")
            .expect("server ran");
    }
}

/// How long the small-blob calls took.
struct SmallBlobs {
    update: Duration,
    read: Duration,
    find_missing: Duration,
}

/// Batches of 10,000 x 4 KiB written and read under `instance`, then
/// FindMissingBlobs of 10,000 digests, half present: best of 5.
async fn small_blobs(
    channel: &tonic::transport::Channel,
    instance: &str,
    small: &[Vec<u8>],
    digests: &[Digest],
) -> SmallBlobs {
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let start = Instant::now();
    for (blobs, digests) in small.chunks(PER_BATCH).zip(digests.chunks(PER_BATCH)) {
        let requests = blobs
            .iter()
            .zip(digests)
            .map(|(b, d)| batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: b.clone(),
                compressor: 0,
            })
            .collect();
        let resp = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: instance.to_owned(),
                requests,
                ..Default::default()
            })
            .await
            .expect("batch update")
            .into_inner();
        assert!(resp
            .responses
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)));
    }
    let batch_update = start.elapsed();
    let start = Instant::now();
    for digests in digests.chunks(PER_BATCH) {
        let resp = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: instance.to_owned(),
                digests: digests.iter().map(Digest::to_proto).collect(),
                ..Default::default()
            })
            .await
            .expect("batch read")
            .into_inner();
        assert!(resp.responses.iter().all(|r| r.data.len() == SMALL_BYTES));
    }
    let batch_read = start.elapsed();

    // FindMissingBlobs of 10,000 digests, half present: best of 5.
    let query: Vec<_> = digests
        .iter()
        .take(SMALL_COUNT / 2)
        .copied()
        .chain((0..SMALL_COUNT / 2).map(|i| DigestFunction::Sha256.digest_of(&i.to_le_bytes())))
        .map(|d| d.to_proto())
        .collect();
    let mut find_missing = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let resp = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: instance.to_owned(),
                blob_digests: query.clone(),
                ..Default::default()
            })
            .await
            .expect("find missing")
            .into_inner();
        find_missing = find_missing.min(start.elapsed());
        assert_eq!(resp.missing_blob_digests.len(), SMALL_COUNT / 2);
    }

    SmallBlobs {
        update: batch_update,
        read: batch_read,
        find_missing,
    }
}
