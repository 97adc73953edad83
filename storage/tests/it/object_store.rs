//! The object-store tier against a real S3-compatible server started by
//! the tests: s3s-fs (crates.io, objects as files on disk, multipart
//! uploads and ranged GETs), installed by scripts/test.sh under
//! target/test-tools/. Garage, which the issue names, takes too long to
//! build for CI (docs/decisions/0015-object-store-tier.md).
//!
//! Without the server the tests print one line and pass; under CI (env CI
//! set) they fail instead.

#![allow(clippy::unwrap_used)] // test helpers: a failed step stops the test

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use corral_proto::bytestream::byte_stream_server::ByteStream as _;
use corral_proto::bytestream::{ReadRequest, ReadResponse};
use corral_proto::reapi::action_cache_server::ActionCache as _;
use corral_proto::reapi::{ActionResult, GetActionResultRequest, OutputFile};
use corral_storage::ac_service::AcService;
use corral_storage::bytestream_service::ByteStreamService;
use corral_storage::config::{Backend, ObjectStoreConfig};
use corral_storage::BlobStoreError as Error;
use corral_storage::{Config, Digest, DigestFunction};
use futures_util::{StreamExt as _, TryStreamExt as _};
use tonic::Code;

const BUCKET: &str = "corral-test";
const ACCESS_KEY: &str = "corral-test-key";
const SECRET_KEY: &str = "corral-test-secret";
pub(crate) const MIB: usize = 1 << 20;

/// The s3s-fs binary: `CORRAL_TEST_S3S_FS`, or where scripts/test.sh
/// installs it.
fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CORRAL_TEST_S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/bin/s3s-fs");
    installed.exists().then_some(installed)
}

/// The server, or `None` after printing why the test skips.
fn server_or_skip(test: &str) -> Option<S3Server> {
    let Some(binary) = server_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: no s3s-fs under CI: scripts/test.sh installs it in target/test-tools"
        );
        println!("{test}: skipped: no s3s-fs (scripts/test.sh installs it in target/test-tools)");
        return None;
    };
    Some(S3Server::start(binary))
}

/// One s3s-fs process over a temporary directory, on a loopback port.
struct S3Server {
    binary: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    fn start(binary: PathBuf) -> Self {
        let root = tempfile::tempdir().unwrap();
        // A bucket is a directory of the root.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            binary,
            root,
            port,
            child: None,
        };
        server.resume();
        server
    }

    /// Starts the process (again) on the same port and directory.
    fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("s3s-fs did not listen on port {} within 5 s", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Storage's configuration: a disk tier in `disk` in front of this
    /// server, with credentials from a file.
    fn storage_config(&self, disk: &Path) -> Config {
        let credentials = disk.with_extension("credentials.toml");
        std::fs::write(
            &credentials,
            format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
        )
        .unwrap();
        tiered_config(
            disk,
            format!("s3://{BUCKET}/farm"),
            format!("http://127.0.0.1:{}", self.port),
            credentials,
        )
    }

    /// The file s3s-fs keeps a CAS object in.
    fn object_file(&self, digest: &Digest) -> PathBuf {
        self.root.path().join(BUCKET).join(format!(
            "farm/cas/{}/{}-{}",
            digest.function().name(),
            digest.hash_hex(),
            digest.size_bytes()
        ))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Storage with a disk tier in `disk` in front of the object store at
/// `url` and `endpoint` (plain HTTP on loopback), with short retries and
/// 5 MiB parts, so the tests' 12 MiB blobs go up in parts.
pub(crate) fn tiered_config(
    disk: &Path,
    url: String,
    endpoint: String,
    credentials: PathBuf,
) -> Config {
    Config {
        backend: Backend::Disk {
            dir: disk.to_owned(),
            max_size_bytes: 256 << 20,
            fsync: false,
        },
        object_store: Some(ObjectStoreConfig {
            url,
            endpoint: Some(endpoint),
            credentials_file: Some(credentials),
            allow_http: true,
            part_size_bytes: 5 << 20,
            // Generous: a 12 MiB GET on a loaded 2-core machine took over 5 s.
            request_timeout_s: 30,
            max_retries: 1,
            retry_timeout_s: 2,
            ..ObjectStoreConfig::default()
        }),
        ..Config::default()
    }
}

pub(crate) fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

pub(crate) fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

pub(crate) async fn read_all(
    stores: &corral_storage::Stores,
    d: &Digest,
    offset: u64,
    limit: Option<u64>,
) -> Result<Vec<u8>, Error> {
    let stream = stores.blobs.read(d, offset, limit).await?.expect("present");
    let chunks: Vec<Vec<u8>> = stream.try_collect().await?;
    Ok(chunks.concat())
}

/// Writes `data` in 1 MiB chunks, as ByteStream does.
pub(crate) async fn write(stores: &corral_storage::Stores, data: &[u8]) -> Result<(), Error> {
    let mut write = stores.blobs.begin_write(&sha(data)).await?;
    for chunk in data.chunks(MIB) {
        write.write(chunk).await?;
    }
    write.commit().await
}

#[tokio::test]
async fn a_wiped_disk_tier_is_served_from_the_object_store() {
    let Some(server) = server_or_skip("a_wiped_disk_tier_is_served_from_the_object_store") else {
        return;
    };
    let large = wiped_disk_tier_is_served_from(|disk| server.storage_config(disk)).await;
    // Stored whole, though uploaded in parts.
    assert!(
        std::fs::metadata(server.object_file(&sha(&large)))
            .unwrap()
            .len()
            == large.len() as u64
    );
}

/// A farm writes blobs and an Action Cache entry through a disk tier in
/// front of the object store `config` names; the disk tier is wiped; a
/// new one in front of the same bucket serves them all, the Action Cache
/// entry complete, ranged reads included. Returns the large blob.
pub(crate) async fn wiped_disk_tier_is_served_from(config: impl Fn(&Path) -> Config) -> Vec<u8> {
    let disks = tempfile::tempdir().unwrap();
    let first_disk = disks.path().join("first");
    // Small (one PUT) and large (a multipart upload in three parts).
    let small = blob(1, 1000);
    let large = blob(2, 12 * MIB + 7);
    let output = blob(3, 5000);
    let action = sha(b"an action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out".into(),
            digest: Some(sha(&output).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    {
        let cfg = config(&first_disk);
        cfg.validate().unwrap();
        let stores = corral_storage::open(&cfg).await.unwrap();
        for data in [&small, &large, &output] {
            write(&stores, data).await.unwrap();
        }
        stores
            .action_cache
            .put_action_result(&action, prost::Message::encode_to_vec(&result))
            .await
            .unwrap();
    }
    std::fs::remove_dir_all(&first_disk).unwrap();

    // The disk tier wiped: a new one, empty, in front of the same bucket.
    let second_disk = disks.path().join("second");
    let stores = corral_storage::open(&config(&second_disk)).await.unwrap();
    let digests = [sha(&small), sha(&large), sha(&output)];
    assert!(stores
        .blobs
        .find_missing(&digests)
        .await
        .unwrap()
        .is_empty());
    // The Action Cache entry is complete though its output is only in the
    // object store.
    let ac = AcService::new(Arc::clone(&stores.blobs), Arc::clone(&stores.action_cache));
    let served = ac
        .get_action_result(tonic::Request::new(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served, result);
    // A ranged read of the large blob fills the disk tier with all of it.
    let range = read_all(&stores, &sha(&large), 6 * MIB as u64, Some(100))
        .await
        .unwrap();
    assert_eq!(range, large[6 * MIB..6 * MIB + 100]);
    let cached = second_disk.join("cas");
    assert!(cached.exists(), "the read filled the disk tier");
    assert_eq!(
        read_all(&stores, &sha(&large), 0, None).await.unwrap(),
        large
    );
    assert_eq!(stores.blobs.get(&sha(&small)).await.unwrap(), Some(small));

    // A disk tier too small to keep the large blob: ranged GETs serve
    // parts of it, and a whole read streams verified from the bucket.
    let mut cfg = config(&disks.path().join("small"));
    cfg.backend = Backend::Disk {
        dir: disks.path().join("small"),
        max_size_bytes: MIB as u64,
        fsync: false,
    };
    let stores = corral_storage::open(&cfg).await.unwrap();
    let range = read_all(&stores, &sha(&large), 11 * MIB as u64, None)
        .await
        .unwrap();
    assert_eq!(range, large[11 * MIB..]);
    assert_eq!(
        read_all(&stores, &sha(&large), 0, None).await.unwrap(),
        large
    );
    large
}

#[tokio::test]
async fn a_stopped_object_store_is_unavailable_and_loses_nothing() {
    let Some(mut server) =
        server_or_skip("a_stopped_object_store_is_unavailable_and_loses_nothing")
    else {
        return;
    };
    let disks = tempfile::tempdir().unwrap();
    let stores = corral_storage::open(&server.storage_config(&disks.path().join("a")))
        .await
        .unwrap();
    let before = blob(4, 3 * MIB);
    write(&stores, &before).await.unwrap();

    // Stopped mid-way: between the chunks of an upload.
    let during = blob(5, 7 * MIB);
    let mut upload = stores.blobs.begin_write(&sha(&during)).await.unwrap();
    upload.write(&during[..6 * MIB]).await.unwrap();
    server.stop();
    let err = match upload.write(&during[6 * MIB..]).await {
        Ok(()) => upload.commit().await.unwrap_err(),
        Err(err) => {
            // Nothing more goes through an upload that failed, even once
            // the server is back.
            server.resume();
            let again = upload.commit().await.unwrap_err();
            assert_eq!(
                corral_storage::status::store_code(&again),
                Code::Unavailable
            );
            server.stop();
            err
        }
    };
    assert_eq!(
        corral_storage::status::store_code(&err),
        Code::Unavailable,
        "{err:?}"
    );
    // Nothing unknown to the disk tier can be answered either.
    let err = stores
        .blobs
        .find_missing(&[sha(b"never written")])
        .await
        .unwrap_err();
    assert_eq!(corral_storage::status::store_code(&err), Code::Unavailable);
    // The write that failed was not acknowledged, and is not claimed.
    server.resume();
    assert_eq!(
        stores.blobs.find_missing(&[sha(&during)]).await.unwrap(),
        [sha(&during)]
    );

    // What was acknowledged survives, even with the disk tier gone.
    drop(stores);
    let stores = corral_storage::open(&server.storage_config(&disks.path().join("b")))
        .await
        .unwrap();
    assert_eq!(
        read_all(&stores, &sha(&before), 0, None).await.unwrap(),
        before
    );
    // The client's retry of the failed write succeeds.
    write(&stores, &during).await.unwrap();
    assert_eq!(stores.blobs.get(&sha(&during)).await.unwrap(), Some(during));
}

#[tokio::test]
async fn a_corrupted_object_is_refused_and_reported() {
    let Some(server) = server_or_skip("a_corrupted_object_is_refused_and_reported") else {
        return;
    };
    let disks = tempfile::tempdir().unwrap();
    let data = blob(6, 300_000);
    let d = sha(&data);
    {
        let stores = corral_storage::open(&server.storage_config(&disks.path().join("a")))
            .await
            .unwrap();
        write(&stores, &data).await.unwrap();
    }
    // One bit flipped at rest in the object store.
    let file = server.object_file(&d);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();

    let disk = disks.path().join("b");
    let stores = corral_storage::open(&server.storage_config(&disk))
        .await
        .unwrap();
    // A ByteStream read streams the object while it fills the disk tier:
    // it ends with DATA_LOSS before its last bytes, and the disk tier
    // keeps nothing, neither the blob nor a partial file.
    let service = ByteStreamService::new(Arc::clone(&stores.blobs));
    let responses = service
        .read(tonic::Request::new(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash_hex(), d.size_bytes()),
            read_offset: 0,
            read_limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<Result<ReadResponse, tonic::Status>> = responses.collect().await;
    let served: usize = got
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.data.len())
        .sum();
    assert!(served < data.len(), "the whole corrupt blob was served");
    let end = got.last().unwrap().as_ref().unwrap_err();
    assert_eq!(end.code(), Code::DataLoss, "{end:?}");
    assert!(end.message().contains("corrupt"), "{end:?}");
    assert_eq!(
        files_under(&disk.join("cas")),
        0,
        "no blob in the disk tier"
    );
    assert_eq!(files_under(&disk.join("tmp")), 0, "no partial file either");
    assert_eq!(stores.blobs.get(&d).await.unwrap(), None, "not served");
    // Reported missing, so the client uploads it again, and then it is
    // served.
    assert_eq!(stores.blobs.find_missing(&[d]).await.unwrap(), [d]);
    assert!(!file.exists(), "the corrupt object was deleted");
    write(&stores, &data).await.unwrap();
    assert_eq!(read_all(&stores, &d, 0, None).await.unwrap(), data);

    // Corrupt again at rest, read by a storage node whose disk tier is
    // empty: the store's own read ends with the same error, and the
    // object is deleted.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    let stores = corral_storage::open(&server.storage_config(&disks.path().join("c")))
        .await
        .unwrap();
    let err = read_all(&stores, &d, 0, None).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(!file.exists(), "the corrupt object was deleted");
}

/// Regular files under `dir`, at any depth.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                files_under(&entry.path())
            } else {
                1
            }
        })
        .sum()
}

/// The Garage binary: `CORRAL_TEST_GARAGE`, or target/test-tools/bin/garage
/// (scripts/test.sh installs it there only with CORRAL_TEST_WITH_GARAGE=1:
/// its build takes most of CI's budget, docs/decisions/0015).
fn garage_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CORRAL_TEST_GARAGE") {
        return Some(PathBuf::from(path));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/bin/garage");
    installed.exists().then_some(installed)
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three Garage nodes on loopback, replication factor 3, one bucket and
/// one key, made through Garage's own CLI.
struct Garage {
    binary: PathBuf,
    dir: tempfile::TempDir,
    s3_ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    key_id: String,
    secret: String,
}

impl Garage {
    fn start(binary: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
        let mut s3_ports = Vec::new();
        let mut nodes = Vec::new();
        for node in 0..3 {
            let (s3, rpc) = (free_port(), free_port());
            let root = dir.path().join(format!("n{node}"));
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(
                root.join("garage.toml"),
                format!(
                    "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\n\
                     db_engine = \"sqlite\"\nreplication_factor = 3\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"garage\"\n\
                     api_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage\"\n",
                    root = root.display()
                ),
            )
            .unwrap();
            s3_ports.push(s3);
            nodes.push(None);
        }
        let mut garage = Self {
            binary,
            dir,
            s3_ports,
            nodes,
            key_id: String::new(),
            secret: String::new(),
        };
        for node in 0..3 {
            garage.resume(node);
        }
        let ids: Vec<String> = (0..3)
            .map(|node| garage.cli(node, &["node", "id", "-q"]).trim().to_owned())
            .collect();
        for id in &ids[1..] {
            garage.cli(0, &["node", "connect", id]);
        }
        for id in &ids {
            let short = &id[..16];
            garage.cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage.cli(0, &["layout", "apply", "--version", "1"]);
        garage.cli(0, &["bucket", "create", BUCKET]);
        let key = garage.cli(0, &["key", "create", "corral-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        garage.key_id = field("Key ID:");
        garage.secret = field("Secret key:");
        garage.cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                BUCKET,
                "--key",
                "corral-test",
            ],
        );
        garage
    }

    fn config(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("n{node}/garage.toml"))
    }

    fn cli(&self, node: usize, args: &[&str]) -> String {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config(node))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "garage {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn resume(&mut self, node: usize) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config(node))
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.nodes[node] = Some(child);
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.s3_ports[node])).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("garage node {node} did not listen within 10 s");
    }

    fn stop(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Storage in front of node `node`'s S3 endpoint.
    fn storage_config(&self, disk: &Path, node: usize) -> Config {
        Config {
            backend: Backend::Disk {
                dir: disk.to_owned(),
                max_size_bytes: 256 << 20,
                fsync: false,
            },
            object_store: Some(ObjectStoreConfig {
                url: format!("s3://{BUCKET}/farm"),
                endpoint: Some(format!("http://127.0.0.1:{}", self.s3_ports[node])),
                region: "garage".to_owned(),
                credentials_file: Some(self.credentials()),
                allow_http: true,
                part_size_bytes: 5 << 20,
                request_timeout_s: 10,
                max_retries: 2,
                retry_timeout_s: 10,
                ..ObjectStoreConfig::default()
            }),
            ..Config::default()
        }
    }

    fn credentials(&self) -> PathBuf {
        let path = self.dir.path().join("credentials.toml");
        std::fs::write(
            &path,
            format!(
                "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                self.key_id, self.secret
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for node in 0..3 {
            self.stop(node);
        }
    }
}

#[tokio::test]
async fn garage_with_one_node_of_three_stopped_loses_nothing() {
    let test = "garage_with_one_node_of_three_stopped_loses_nothing";
    let Some(binary) = garage_binary() else {
        assert!(
            std::env::var_os("CI").is_none()
                || std::env::var_os("CORRAL_TEST_WITH_GARAGE").is_none(),
            "{test}: CORRAL_TEST_WITH_GARAGE is set but no garage is installed"
        );
        println!(
            "{test}: skipped: no garage (CORRAL_TEST_WITH_GARAGE=1 scripts/test.sh installs it)"
        );
        return;
    };
    let mut garage = Garage::start(binary);
    let disks = tempfile::tempdir().unwrap();
    let stores = corral_storage::open(&garage.storage_config(&disks.path().join("a"), 0))
        .await
        .unwrap();
    let before = [blob(7, 2000), blob(8, 12 * MIB + 3)];
    for data in &before {
        write(&stores, data).await.unwrap();
    }
    // One node of three stopped in the middle of the build.
    garage.stop(2);
    let after = [blob(9, 3000), blob(10, 6 * MIB)];
    for data in &after {
        write(&stores, data).await.unwrap();
    }
    drop(stores);

    // Every blob, written before or after, read back through an empty
    // disk tier while the node is still down.
    let stores = corral_storage::open(&garage.storage_config(&disks.path().join("b"), 1))
        .await
        .unwrap();
    for data in before.iter().chain(&after) {
        assert!(stores
            .blobs
            .find_missing(&[sha(data)])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(&read_all(&stores, &sha(data), 0, None).await.unwrap(), data);
    }
}

/// `isolate_instances` over the tier: one instance name's blob is missing
/// to another, though the bucket holds it; a wiped disk tier hides it from
/// its own instance name too (the record of who wrote it went with the
/// disk) until written again, never showing it to anyone else.
#[tokio::test]
async fn isolated_instance_names_stay_apart_over_the_object_store() {
    let Some(server) = server_or_skip("isolated_instance_names_stay_apart_over_the_object_store")
    else {
        return;
    };
    let disks = tempfile::tempdir().unwrap();
    let isolated = |disk: &Path| {
        let mut cfg = server.storage_config(disk);
        cfg.isolate_instances = true;
        cfg.validate().unwrap();
        cfg
    };
    let data = blob(11, 4000);
    let d = sha(&data);
    {
        let stores = corral_storage::open(&isolated(&disks.path().join("a")))
            .await
            .unwrap();
        let blobs = stores.instance_blobs();
        let mut write = blobs.for_instance("team-a").begin_write(&d).await.unwrap();
        write.write(&data).await.unwrap();
        write.commit().await.unwrap();
        assert!(blobs
            .for_instance("team-a")
            .find_missing(&[d])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            blobs
                .for_instance("team-b")
                .find_missing(&[d])
                .await
                .unwrap(),
            [d]
        );
        assert_eq!(blobs.for_instance("team-b").get(&d).await.unwrap(), None);
    }
    assert!(server.object_file(&d).exists(), "the bucket holds it");

    // The disk tier wiped: nobody sees the blob until it is written again.
    let stores = corral_storage::open(&isolated(&disks.path().join("b")))
        .await
        .unwrap();
    let blobs = stores.instance_blobs();
    for team in ["team-a", "team-b"] {
        assert_eq!(
            blobs.for_instance(team).find_missing(&[d]).await.unwrap(),
            [d],
            "{team}"
        );
    }
    let mut write = blobs.for_instance("team-a").begin_write(&d).await.unwrap();
    write.write(&data).await.unwrap();
    write.commit().await.unwrap();
    assert_eq!(
        blobs.for_instance("team-a").get(&d).await.unwrap(),
        Some(data)
    );
    assert_eq!(blobs.for_instance("team-b").get(&d).await.unwrap(), None);
}
