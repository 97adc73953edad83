//! Input root materialization, next to `cp -al` of the same tree measured
//! in the same run: 10,000 small files (1% executable) in 1,000
//! directories, laid out
//! - cold: empty file cache, every Directory and file read from an
//!   in-process storage (memory backend, over loopback gRPC);
//! - warm: the same root again, files and Directories cached;
//! - the same root with files cached but not its Directories (what
//!   laying out a new root of known files costs).
//!
//! Two more figures bound the cold one from below: reading every blob
//! from the storage, and writing the files as plain files in one
//! directory (`contents` is not timed: it only formats a few bytes).
//!
//! `cargo bench -p corral-worker --bench materialize` (CORRAL_BENCH_DIR
//! to measure another file system; default: the system temporary
//! directory. CORRAL_BENCH_RUNS: runs of each kind, default 9).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::reapi::{Digest, Directory, DirectoryNode, FileNode};
use corral_worker::cas_client::{digest_of, CasClient};
use corral_worker::directory_cache::DirectoryCache;
use corral_worker::file_cache::FileCache;
use corral_worker::input_root;
use prost::Message;

/// Directories right under the root; each holds [`SUBDIRS`] more.
const TOP: usize = 10;
const SUBDIRS: usize = 99;
/// Files in every directory but the root: 10 × 10 + 990 × 10 = 10,000.
const FILES_PER_DIR: usize = 10;

/// The tree's blobs, ready to upload, and its root digest.
struct Tree {
    blobs: Vec<(Digest, Vec<u8>)>,
    root: Digest,
    files: usize,
    directories: usize,
}

fn contents(n: usize) -> Vec<u8> {
    // Sizes from 64 B to ~4 KiB, each file distinct, like sources.
    let len = 64 + (n * 37) % 4000;
    let mut data = format!("file {n}\n").into_bytes();
    data.resize(len, b'a' + (n % 26) as u8);
    data
}

fn directory(
    files: &mut usize,
    blobs: &mut Vec<(Digest, Vec<u8>)>,
    subdirs: Vec<DirectoryNode>,
) -> Directory {
    let mut dir = Directory {
        directories: subdirs,
        ..Default::default()
    };
    for i in 0..FILES_PER_DIR {
        let data = contents(*files);
        let digest = digest_of(&data);
        dir.files.push(FileNode {
            name: format!("file{i}.c"),
            digest: Some(digest.clone()),
            is_executable: (*files).is_multiple_of(100),
            ..Default::default()
        });
        blobs.push((digest, data));
        *files += 1;
    }
    dir
}

fn put(blobs: &mut Vec<(Digest, Vec<u8>)>, dir: &Directory) -> Digest {
    let data = dir.encode_to_vec();
    let digest = digest_of(&data);
    blobs.push((digest.clone(), data));
    digest
}

fn tree() -> Tree {
    let mut blobs = Vec::new();
    let mut files = 0;
    let mut directories = 0;
    let mut top = Vec::new();
    for t in 0..TOP {
        let mut subs = Vec::new();
        for s in 0..SUBDIRS {
            let leaf = directory(&mut files, &mut blobs, Vec::new());
            subs.push(DirectoryNode {
                name: format!("sub{s}"),
                digest: Some(put(&mut blobs, &leaf)),
            });
            directories += 1;
        }
        let dir = directory(&mut files, &mut blobs, subs);
        top.push(DirectoryNode {
            name: format!("top{t}"),
            digest: Some(put(&mut blobs, &dir)),
        });
        directories += 1;
    }
    let root = Directory {
        directories: top,
        ..Default::default()
    };
    let root = put(&mut blobs, &root);
    Tree {
        blobs,
        root,
        files,
        directories,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let base = std::env::var_os("CORRAL_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let runs: usize = std::env::var("CORRAL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let dir = tempfile::tempdir_in(base).expect("bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(dir.path(), runs));
}

/// A fresh, empty destination; removing the previous one is not timed.
fn fresh(path: &Path) -> PathBuf {
    if path.exists() {
        std::fs::remove_dir_all(path).expect("remove destination");
    }
    path.to_owned()
}

/// Lays out `root` at a fresh `dest`; returns how long it took.
async fn time(
    cas: &CasClient,
    files: &Arc<FileCache>,
    directories: &DirectoryCache,
    root: &Digest,
    dest: &Path,
) -> Duration {
    let dest = fresh(dest);
    std::fs::create_dir(&dest).expect("destination");
    let start = Instant::now();
    let max_entries = corral_worker::Config::default().input_root_max_entries;
    input_root::materialize(cas, files, directories, root, &dest, max_entries)
        .await
        .expect("materialize");
    start.elapsed()
}

async fn bench(dir: &Path, runs: usize) {
    let tree = tree();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let cfg = corral_storage::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 1 << 30,
        },
        ..Default::default()
    };
    let mut server = tokio::task::JoinSet::new();
    server.spawn(corral_storage::run(cfg, listener, std::future::pending()));
    let cas = CasClient::new(&url).expect("client");
    cas.upload(tree.blobs.clone())
        .await
        .expect("upload the tree");

    let digests: Vec<Digest> = tree.blobs.iter().map(|(d, _)| d.clone()).collect();
    let (mut cold, mut warm, mut reread, mut cp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fetch, mut writes) = (Vec::new(), Vec::new());
    let dest = dir.join("root");
    let copy = dir.join("copy");
    // Kinds interleaved, so a slow moment of the machine hits them all.
    for _ in 0..runs {
        let files = Arc::new(FileCache::open(dir.join("cache"), 1 << 30).expect("cache"));
        let directories = DirectoryCache::new(64 << 20);
        let reads = cas.reads();
        cold.push(time(&cas, &files, &directories, &tree.root, &dest).await);
        assert_eq!(
            cas.reads() - reads,
            (tree.files + tree.directories + 1) as u64,
            "cold reads every blob"
        );

        let reads = cas.reads();
        warm.push(time(&cas, &files, &directories, &tree.root, &dest).await);
        assert_eq!(cas.reads(), reads, "warm reads nothing");

        // The tree again with the file cache warm but not the directory
        // cache: what laying out an unseen root of known files costs.
        reread.push(
            time(
                &cas,
                &files,
                &DirectoryCache::new(64 << 20),
                &tree.root,
                &dest,
            )
            .await,
        );

        // The baseline: the tree just laid out, hardlinked by cp.
        let c = fresh(&copy);
        let start = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-al")
            .arg(&dest)
            .arg(&c)
            .status()
            .expect("cp");
        cp.push(start.elapsed());
        assert!(status.success());

        // What cold costs at least: every blob read from storage, and
        // every file created on this file system.
        let start = Instant::now();
        cas.read_many(&digests).await.expect("read the blobs");
        fetch.push(start.elapsed());
        let plain = fresh(&dir.join("plain"));
        std::fs::create_dir(&plain).expect("plain");
        let start = Instant::now();
        for n in 0..tree.files {
            std::fs::write(plain.join(n.to_string()), contents(n)).expect("write a plain file");
        }
        writes.push(start.elapsed());
    }
    let cp = median(cp);
    println!(
        "input root: {} files in {} directories; median of {runs} runs each",
        tree.files, tree.directories
    );
    let row = |what: &str, took: Duration| {
        println!(
            "{what:<44} {:8.1} ms {:6.2}x cp -al",
            ms(took),
            took.as_secs_f64() / cp.as_secs_f64()
        );
    };
    row("cp -al (baseline)", cp);
    row("warm (target <= 1.5x)", median(warm));
    row("files cached, Directories read", median(reread));
    row("cold", median(cold));
    row("  reading every blob from storage alone", median(fetch));
    row("  writing the files as plain files alone", median(writes));
}
