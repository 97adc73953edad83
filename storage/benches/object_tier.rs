//! The object-store tier against the disk store alone, in the same run, on
//! the same disk:
//! - write and read of one 64 MiB blob in 1 MiB chunks: the disk store;
//!   the tier (write-through, then a read the disk tier serves); a read
//!   through a wiped disk tier (the object store streams it in); and
//!   object_store's own put and get of the same bytes to the same server;
//! - FindMissingBlobs of 1,000 digests only the object store holds: cold
//!   (one HEAD each) and warm (remembered).
//!
//! The object store is s3s-fs on loopback when scripts/test.sh installed
//! it (target/test-tools/bin/s3s-fs, or CORRAL_TEST_S3S_FS), else a local
//! directory (`file://`). `cargo bench -p corral-storage --bench object_tier`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_storage::config::{Backend, ObjectStoreConfig};
use corral_storage::{BlobStore, Config, Digest, DigestFunction, DiskBlobStore};
use futures_util::TryStreamExt as _;

const BIG_BYTES: usize = 64 << 20;
const CHUNK_BYTES: usize = 1 << 20;
const SMALL_COUNT: usize = 1000;
const BUCKET: &str = "bench";

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: cheap and not compressible.
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

fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

async fn write(store: &dyn BlobStore, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut write = store.begin_write(&sha(bytes)).await.expect("begin write");
    for chunk in bytes.chunks(CHUNK_BYTES) {
        write.write(chunk).await.expect("write");
    }
    write.commit().await.expect("commit");
    start.elapsed()
}

async fn read(store: &dyn BlobStore, digest: &Digest) -> Duration {
    let start = Instant::now();
    let stream = store
        .read(digest, 0, None)
        .await
        .expect("read")
        .expect("present");
    let total = stream
        .try_fold(0usize, |n, chunk| async move { Ok(n + chunk.len()) })
        .await
        .expect("stream");
    assert_eq!(total as u64, digest.size_bytes());
    start.elapsed()
}

/// s3s-fs on a loopback port, if installed.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(root: &Path) -> Option<Server> {
    let binary = std::env::var_os("CORRAL_TEST_S3S_FS")
        .map(PathBuf::from)
        .or_else(|| {
            let installed =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/bin/s3s-fs");
            installed.exists().then_some(installed)
        })?;
    std::fs::create_dir_all(root.join(BUCKET)).expect("bucket");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "bench-secret"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    // Owned before waiting, so the process is reaped whatever happens.
    let server = Server { child, port };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("s3s-fs did not listen");
}

fn tier_config(dir: &Path, server: Option<&Server>, objects: &Path) -> Config {
    let object_store = match server {
        Some(server) => {
            let credentials = dir.with_extension("credentials.toml");
            std::fs::write(
                &credentials,
                "access_key_id = \"bench\"\nsecret_access_key = \"bench-secret\"\n",
            )
            .expect("credentials");
            ObjectStoreConfig {
                url: format!("s3://{BUCKET}/farm"),
                endpoint: Some(format!("http://127.0.0.1:{}", server.port)),
                credentials_file: Some(credentials),
                allow_http: true,
                ..ObjectStoreConfig::default()
            }
        }
        None => ObjectStoreConfig {
            url: format!("file://{}", objects.display()),
            ..ObjectStoreConfig::default()
        },
    };
    Config {
        backend: Backend::Disk {
            dir: dir.to_owned(),
            max_size_bytes: 4 << 30,
            fsync: false,
        },
        object_store: Some(object_store),
        ..Config::default()
    }
}

#[tokio::main]
async fn main() {
    let base = std::env::var_os("CORRAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tmp = tempfile::tempdir_in(base).expect("bench dir");
    let objects = tmp.path().join("objects");
    let server = start_server(&objects);
    println!(
        "object store: {}",
        if server.is_some() {
            "s3s-fs on loopback"
        } else {
            "a local directory (no s3s-fs installed)"
        }
    );
    let big = data(BIG_BYTES, 7);
    let d = sha(&big);

    let disk = DiskBlobStore::open(tmp.path().join("disk-alone"), 4 << 30, false)
        .await
        .expect("disk store");
    let disk_write = write(&disk, &big).await;
    let disk_read = read(&disk, &d).await;

    let cfg = tier_config(&tmp.path().join("tier"), server.as_ref(), &objects);
    let tier = corral_storage::open(&cfg).await.expect("tier");
    let tier_write = write(&*tier.blobs, &big).await;
    let tier_read = read(&*tier.blobs, &d).await;
    drop(tier);
    let cold = tier_config(&tmp.path().join("tier-wiped"), server.as_ref(), &objects);
    let cold_tier = corral_storage::open(&cold).await.expect("tier");
    let cold_read = read(&*cold_tier.blobs, &d).await;

    // object_store alone, same server, same bytes, under another key.
    let (store, prefix) = cfg
        .object_store
        .as_ref()
        .expect("object store")
        .build()
        .expect("object store");
    let key = prefix.child("direct");
    let start = Instant::now();
    let mut upload =
        object_store::buffered::BufWriter::with_capacity(Arc::clone(&store), key.clone(), 8 << 20);
    for chunk in big.chunks(CHUNK_BYTES) {
        upload
            .put(bytes::Bytes::copy_from_slice(chunk))
            .await
            .expect("put");
    }
    tokio::io::AsyncWriteExt::shutdown(&mut upload)
        .await
        .expect("complete");
    let direct_write = start.elapsed();
    let direct_read = direct_get(&*store, &key).await;

    for (what, took) in [
        ("write: disk store alone", disk_write),
        ("write: tier (disk + object store)", tier_write),
        ("write: object_store put alone", direct_write),
        ("read: disk store alone", disk_read),
        ("read: tier, disk hit", tier_read),
        ("read: tier, wiped disk (object store -> disk)", cold_read),
        ("read: object_store get alone", direct_read),
    ] {
        println!(
            "{what:<48} {:>8.1} MiB/s  ({} MiB in {:?})",
            mib_per_s(BIG_BYTES, took),
            BIG_BYTES >> 20,
            took
        );
    }
    println!(
        "tier / disk alone: write {:.2}x, read (disk hit) {:.2}x; tier cold read / object_store get {:.2}x",
        disk_write.as_secs_f64() / tier_write.as_secs_f64(),
        disk_read.as_secs_f64() / tier_read.as_secs_f64(),
        direct_read.as_secs_f64() / cold_read.as_secs_f64(),
    );

    // FindMissingBlobs of digests only the object store holds.
    let smalls: Vec<Vec<u8>> = (0..SMALL_COUNT)
        .map(|i| data(4096, 100 + i as u64))
        .collect();
    {
        let writer = corral_storage::open(&tier_config(
            &tmp.path().join("writer"),
            server.as_ref(),
            &objects,
        ))
        .await
        .expect("tier");
        for small in &smalls {
            writer
                .blobs
                .put(&sha(small), small.clone())
                .await
                .expect("put");
        }
    }
    let digests: Vec<Digest> = smalls.iter().map(|s| sha(s)).collect();
    let start = Instant::now();
    assert!(cold_tier
        .blobs
        .find_missing(&digests)
        .await
        .expect("find")
        .is_empty());
    let cold_find = start.elapsed();
    let start = Instant::now();
    assert!(cold_tier
        .blobs
        .find_missing(&digests)
        .await
        .expect("find")
        .is_empty());
    let warm_find = start.elapsed();
    let start = Instant::now();
    assert_eq!(
        disk.find_missing(&digests).await.expect("find").len(),
        SMALL_COUNT
    );
    let disk_find = start.elapsed();
    println!(
        "FindMissingBlobs of {SMALL_COUNT} digests in the object store only: cold {cold_find:?} \
         (one HEAD each, 32 at a time), warm {warm_find:?} (remembered); disk store alone {disk_find:?}"
    );

    // The same through ByteStream and FindMissingBlobs over loopback gRPC,
    // as clients see the tier: a storage server in front of the same
    // bucket, and another with an empty disk tier.
    let mut servers = tokio::task::JoinSet::new();
    let served = serve(
        &mut servers,
        tier_config(&tmp.path().join("served"), server.as_ref(), &objects),
    )
    .await;
    let fresh = data(BIG_BYTES, 8);
    let fresh_digest = sha(&fresh).to_proto();
    let start = Instant::now();
    served
        .write_stream(&fresh_digest, corral_cas_client::Blob::from(fresh))
        .await
        .expect("ByteStream write");
    let grpc_write = start.elapsed();
    let grpc_read = read_into_file(&served, &fresh_digest, tmp.path()).await;
    // The cold read against object_store's own get taken just before it,
    // in rounds (each through a new, empty disk tier): on a busy machine
    // the two figures are only comparable when measured together.
    let (mut cold_reads, mut gets) = (Vec::new(), Vec::new());
    let mut wiped = None;
    for round in 0..COLD_ROUNDS {
        gets.push(direct_get(&*store, &key).await);
        let client = serve(
            &mut servers,
            tier_config(
                &tmp.path().join(format!("served-wiped-{round}")),
                server.as_ref(),
                &objects,
            ),
        )
        .await;
        cold_reads.push(read_into_file(&client, &fresh_digest, tmp.path()).await);
        wiped = Some(client);
    }
    let wiped = wiped.expect("one round at least");
    let ratios: Vec<f64> = gets
        .iter()
        .zip(&cold_reads)
        .map(|(get, cold)| get.as_secs_f64() / cold.as_secs_f64())
        .collect();
    let grpc_cold_read = median(cold_reads);
    let get_beside = median(gets);
    let protos: Vec<_> = digests.iter().map(Digest::to_proto).collect();
    let start = Instant::now();
    assert!(wiped.find_missing(&protos).await.expect("find").is_empty());
    let grpc_cold_find = start.elapsed();
    for (what, took, baseline) in [
        (
            "ByteStream write through the tier",
            grpc_write,
            direct_write,
        ),
        ("ByteStream read, disk hit", grpc_read, direct_read),
    ] {
        println!(
            "{what:<48} {:>8.1} MiB/s  ({:.2}x object_store alone)",
            mib_per_s(BIG_BYTES, took),
            baseline.as_secs_f64() / took.as_secs_f64()
        );
    }
    let mut ratios = ratios;
    ratios.sort_by(f64::total_cmp);
    println!(
        "{:<48} {:>8.1} MiB/s  (get beside it {:.1} MiB/s; median of {COLD_ROUNDS}; \
         ratios to the get just before: {})",
        "ByteStream read, wiped disk",
        mib_per_s(BIG_BYTES, grpc_cold_read),
        mib_per_s(BIG_BYTES, get_beside),
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!(
        "FindMissingBlobs over gRPC of {SMALL_COUNT} digests in the object store only: cold {grpc_cold_find:?}"
    );
}

/// Cold ByteStream reads, each next to an object_store get.
const COLD_ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// object_store's own get of `key`, the whole body streamed.
async fn direct_get(
    store: &dyn object_store::ObjectStore,
    key: &object_store::path::Path,
) -> Duration {
    let start = Instant::now();
    let got = store.get(key).await.expect("get").into_stream();
    let total = got
        .try_fold(0usize, |n, b| async move { Ok(n + b.len()) })
        .await
        .expect("get body");
    assert_eq!(total, BIG_BYTES);
    start.elapsed()
}

/// Storage serving `cfg` on a loopback port, as a task of `servers`,
/// and a client of it.
async fn serve(
    servers: &mut tokio::task::JoinSet<()>,
    cfg: Config,
) -> corral_cas_client::CasClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    servers.spawn(async move {
        corral_storage::run(cfg, listener, std::future::pending())
            .await
            .expect("storage serves");
    });
    corral_cas_client::CasClient::new(&url).expect("client")
}

/// Reads `digest` through ByteStream into a file under `dir`, verified.
async fn read_into_file(
    client: &corral_cas_client::CasClient,
    digest: &corral_proto::reapi::Digest,
    dir: &Path,
) -> Duration {
    let path = dir.join(format!("download-{}", digest.hash));
    let mut file = tokio::fs::File::create(&path).await.expect("create");
    let start = Instant::now();
    client
        .read_into(digest, &mut file)
        .await
        .expect("ByteStream read");
    let took = start.elapsed();
    std::fs::remove_file(&path).expect("remove the download");
    took
}
