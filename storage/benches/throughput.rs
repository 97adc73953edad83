//! Storage throughput on loopback, each figure next to its baseline
//! measured in the same run:
//! - ByteStream Write and Read of one 256 MiB blob vs a `dd`-like write
//!   and read of the same bytes to a file in the same directory;
//! - BatchUpdateBlobs and BatchReadBlobs of 10,000 4 KiB blobs vs writing
//!   and reading them as 10,000 plain files;
//! - FindMissingBlobs of 10,000 digests (target: under 20 ms);
//! - the batches and FindMissingBlobs again on a store with
//!   `isolate_instances`, against the same without it, taken in turn
//!   (best of 2 writes, 5 reads and lookups).
//!
//! `cargo bench -p corral-storage --bench throughput` (set
//! CORRAL_BENCH_DIR to measure another file system; default: the system
//! temporary directory; CORRAL_BENCH_ONLY=batches to measure only the
//! small-blob batches and their plain-file baseline, for profiles and
//! repeated runs).

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
    // Odd and distinct for every seed (`seed | 1` made seeds 2k and
    // 2k + 1 the same blob: half the "10,000 blobs" were duplicates).
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
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
    if std::env::var("CORRAL_BENCH_ONLY").is_ok_and(|only| only == "batches") {
        return batches_only(dir).await;
    }
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

    let readers = concurrent_readers(&server, &channel).await;

    let digests: Vec<Digest> = small
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    // Batches of 10,000 x 4 KiB; FindMissingBlobs of 10,000 digests,
    // half present: best of 5.
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let batch_update_shared = batch_update(&mut cas, "", &small, &digests).await;
    let batch_read_shared = batch_read(&mut cas, "", &digests).await;
    let query = find_missing_query(&digests);
    let mut find_missing_shared = Duration::MAX;
    for _ in 0..5 {
        let took = find_missing(&mut cas, "", &query, SMALL_COUNT / 2).await;
        find_missing_shared = find_missing_shared.min(took);
    }

    server.stop().await;

    // The same with and without isolate_instances, on two fresh stores
    // served side by side, each measurement taken on both in turn so that
    // load on the machine falls on both alike; best of the runs.
    let plain = Server::start(dir.join("plain"), false).await;
    let isolated = Server::start(dir.join("isolated"), true).await;
    let mut cas = ContentAddressableStorageClient::new(plain.channel.clone());
    let mut iso = ContentAddressableStorageClient::new(isolated.channel.clone());
    let small2: Vec<Vec<u8>> = (0..SMALL_COUNT)
        .map(|i| data(SMALL_BYTES, (SMALL_COUNT + i) as u64 + 2))
        .collect();
    let digests2: Vec<Digest> = small2
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    // Order: shared, isolated, isolated, shared, so that neither always
    // follows the other's writes still being flushed.
    let mut update = [Duration::MAX; 2];
    update[0] = batch_update(&mut cas, "", &small, &digests).await;
    update[1] = batch_update(&mut iso, "team-a", &small, &digests).await;
    update[1] = update[1].min(batch_update(&mut iso, "team-a", &small2, &digests2).await);
    update[0] = update[0].min(batch_update(&mut cas, "", &small2, &digests2).await);
    let mut read = [Duration::MAX; 2];
    let mut found = [Duration::MAX; 3];
    for _ in 0..5 {
        read[0] = read[0].min(batch_read(&mut cas, "", &digests).await);
        read[1] = read[1].min(batch_read(&mut iso, "team-a", &digests).await);
        found[0] = found[0].min(find_missing(&mut cas, "", &query, SMALL_COUNT / 2).await);
        found[1] = found[1].min(find_missing(&mut iso, "team-a", &query, SMALL_COUNT / 2).await);
        // Another tenant asking: every digest missing, the store not asked.
        found[2] = found[2].min(find_missing(&mut iso, "team-b", &query, SMALL_COUNT).await);
    }
    isolated.stop().await;
    plain.stop().await;

    println!(
        "{READERS} concurrent ByteStream readers of one {} KiB blob: {:.1} MiB/s together in {:.1} ms; \
         a read p50 {:.1} ms, p99 {:.1} ms; {} errors",
        SHARED_BLOB_BYTES >> 10,
        mib_per_s(READERS * SHARED_BLOB_BYTES, readers.total),
        readers.total.as_secs_f64() * 1e3,
        readers.p50.as_secs_f64() * 1e3,
        readers.p99.as_secs_f64() * 1e3,
        readers.errors,
    );
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
        batch_update_shared,
        raw_small_write,
    );
    row(
        "BatchReadBlobs 10,000 x 4 KiB",
        small_total,
        batch_read_shared,
        raw_small_read,
    );
    println!(
        "{:<38} {:>8.2} ms (best of 5; target < 20 ms)",
        "FindMissingBlobs 10,000 digests",
        find_missing_shared.as_secs_f64() * 1e3
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
        update[1],
        update[0],
    );
    isolated_row("isolated BatchReadBlobs 10,000 x 4 KiB", read[1], read[0]);
    isolated_row("isolated FindMissingBlobs 10,000", found[1], found[0]);
    isolated_row("isolated FindMissing, other tenant", found[2], found[0]);
}

/// The small-blob batches alone, next to their plain-file baseline
/// measured just before them.
async fn batches_only(dir: &Path) {
    let small: Vec<Vec<u8>> = (0..SMALL_COUNT)
        .map(|i| data(SMALL_BYTES, i as u64 + 2))
        .collect();
    let digests: Vec<Digest> = small
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    let (raw_write, raw_read) = raw_small_files(dir, &small);
    let server = Server::start(dir.join("storage"), false).await;
    let mut cas = ContentAddressableStorageClient::new(server.channel.clone());
    let update = batch_update(&mut cas, "", &small, &digests).await;
    let read = batch_read(&mut cas, "", &digests).await;
    server.stop().await;
    let small_total = SMALL_COUNT * SMALL_BYTES;
    for (what, took, raw) in [
        ("BatchUpdateBlobs 10,000 x 4 KiB", update, raw_write),
        ("BatchReadBlobs 10,000 x 4 KiB", read, raw_read),
    ] {
        println!(
            "{what:<38} {:>8.1} MiB/s  {:>8.1} ms   raw {:>8.1} MiB/s  ratio {:>5.2}",
            mib_per_s(small_total, took),
            took.as_secs_f64() * 1e3,
            mib_per_s(small_total, raw),
            raw.as_secs_f64() / took.as_secs_f64(),
        );
    }
}

/// Clients reading one blob at once, and its size.
const READERS: usize = 1_000;
const SHARED_BLOB_BYTES: usize = 1 << 20;

/// How `READERS` concurrent reads of one blob went.
struct Readers {
    total: Duration,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// `READERS` ByteStream reads of one blob at once, over 16 connections
/// (a server takes up to 200 streams on each, as Bazel's would).
async fn concurrent_readers(server: &Server, channel: &tonic::transport::Channel) -> Readers {
    let blob = data(SHARED_BLOB_BYTES, 99);
    let digest = DigestFunction::Sha256.digest_of(&blob);
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    batch_update(&mut cas, "", &[blob], std::slice::from_ref(&digest)).await;
    let mut channels = Vec::new();
    for _ in 0..16 {
        channels.push(
            tonic::transport::Endpoint::from_shared(server.url.clone())
                .expect("url")
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(16 << 20)
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect"),
        );
    }
    let name = format!("blobs/{}/{}", digest.hash_hex(), SHARED_BLOB_BYTES);
    let start = Instant::now();
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..READERS {
        let mut client = ByteStreamClient::new(channels[i % channels.len()].clone());
        let name = name.clone();
        reads.spawn(async move {
            let began = Instant::now();
            let mut stream = client
                .read(ReadRequest {
                    resource_name: name,
                    read_offset: 0,
                    read_limit: 0,
                })
                .await?
                .into_inner();
            let mut received = 0;
            while let Some(response) = stream.next().await {
                received += response?.data.len();
            }
            if received != SHARED_BLOB_BYTES {
                return Err(tonic::Status::data_loss(format!("{received} bytes")));
            }
            Ok(began.elapsed())
        });
    }
    let mut times = Vec::new();
    let mut errors = 0;
    while let Some(done) = reads.join_next().await {
        match done.expect("reader task") {
            Ok(took) => times.push(took),
            Err(_) => errors += 1,
        }
    }
    let total = start.elapsed();
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Readers {
        total,
        p50: at(0.5),
        p99: at(0.99),
        errors,
    }
}

/// A storage server on a disk store in a directory, and a client channel
/// to it.
struct Server {
    channel: tonic::transport::Channel,
    url: String,
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
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        Self {
            channel,
            url,
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

/// 10,000 x 4 KiB written under `instance` in batches of 1,000.
async fn batch_update(
    cas: &mut ContentAddressableStorageClient<tonic::transport::Channel>,
    instance: &str,
    small: &[Vec<u8>],
    digests: &[Digest],
) -> Duration {
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
    start.elapsed()
}

/// The same read back under `instance`.
async fn batch_read(
    cas: &mut ContentAddressableStorageClient<tonic::transport::Channel>,
    instance: &str,
    digests: &[Digest],
) -> Duration {
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
    start.elapsed()
}

/// 10,000 digests: the first half of `digests` and as many never stored.
fn find_missing_query(digests: &[Digest]) -> Vec<corral_proto::reapi::Digest> {
    digests
        .iter()
        .take(SMALL_COUNT / 2)
        .copied()
        .chain((0..SMALL_COUNT / 2).map(|i| DigestFunction::Sha256.digest_of(&i.to_le_bytes())))
        .map(|d| d.to_proto())
        .collect()
}

/// One FindMissingBlobs of `query` under `instance`.
async fn find_missing(
    cas: &mut ContentAddressableStorageClient<tonic::transport::Channel>,
    instance: &str,
    query: &[corral_proto::reapi::Digest],
    expect_missing: usize,
) -> Duration {
    let start = Instant::now();
    let resp = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: instance.to_owned(),
            blob_digests: query.to_vec(),
            ..Default::default()
        })
        .await
        .expect("find missing")
        .into_inner();
    let took = start.elapsed();
    assert_eq!(resp.missing_blob_digests.len(), expect_missing);
    took
}
