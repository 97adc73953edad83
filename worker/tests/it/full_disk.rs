//! The worker's cache disk full: the layout fails with a status a client
//! retries, naming the cache, leaves no partial file, and the next layout
//! succeeds once space returns.

use std::sync::Arc;

use corral_proto::reapi::{Directory, FileNode};
use corral_testkit::Tmpfs;
use corral_worker::cas_client::CasClient;
use corral_worker::directory_cache::DirectoryCache;
use corral_worker::executor;
use corral_worker::file_cache::FileCache;
use corral_worker::input_root::materialize;
use tokio::task::JoinSet;
use tonic::Code;

use super::{code, privileged, put, put_message, shell, start_storage, Farm, MAX_ENTRIES};

#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_disk_fails_the_layout_as_unavailable_and_the_next_one_succeeds() {
    let Some(disk) = Tmpfs::mount("a_full_cache_disk_fails_the_layout", "8m") else {
        return;
    };
    let mut servers = JoinSet::new();
    let cas = CasClient::new(&start_storage(&mut servers).await).unwrap();
    // One file streamed (past the batch limit), one batched.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let small = vec![7; 512 << 10];
    let mut files = Vec::new();
    for (name, data) in [("big", &big), ("small", &small)] {
        files.push(FileNode {
            name: name.into(),
            digest: Some(put(&cas, data).await),
            ..Default::default()
        });
    }
    let root = put_message(
        &cas,
        &Directory {
            files,
            ..Default::default()
        },
    )
    .await;
    // Input roots are hardlinks into the cache: the same file system.
    let cache_dir = disk.path().join("cache");
    let cache = Arc::new(FileCache::open(cache_dir.clone(), 1 << 30).unwrap());
    let directories = DirectoryCache::new(1 << 20);
    // Something else on the disk leaves it 2 MiB.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0; 6 << 20]).unwrap();

    let first = disk.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let err = materialize(&cas, &cache, &directories, &root, &first, MAX_ENTRIES)
        .await
        .unwrap_err();
    let status = executor::status(&executor::Error::InputRoot(err));
    assert_eq!(status.code, Code::Unavailable as i32, "{}", status.message);
    let said = format!("the disk of the file cache {} is full", cache_dir.display());
    assert!(status.message.contains(&said), "{}", status.message);
    let names: Vec<String> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("tmp-")),
        "no partial cache file: {names:?}"
    );
    let held: u64 = names
        .iter()
        .map(|n| std::fs::metadata(cache_dir.join(n)).unwrap().len())
        .sum();
    assert_eq!(
        cache.usage(),
        (held, names.len()),
        "the cache counts what it holds"
    );
    assert_eq!(cache.pinned(), 0);

    // Space returns: the next layout of the same root succeeds.
    corral_testkit::remove_freeing_space(&filler);
    let second = disk.path().join("second");
    std::fs::create_dir(&second).unwrap();
    materialize(&cas, &cache, &directories, &root, &second, MAX_ENTRIES)
        .await
        .unwrap();
    assert_eq!(std::fs::read(second.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(second.join("small")).unwrap(), small);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_on_a_full_cache_disk_fails_unavailable_and_runs_once_space_returns() {
    if !privileged("an_action_on_a_full_cache_disk_fails_unavailable") {
        return;
    }
    let farm = Farm::start().await;
    // The worker's directory becomes a 16 MiB tmpfs, with its cache and
    // build directories made again on it: both are reached by path.
    let worker = farm.dir.path().join("worker");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&worker)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs on {}", worker.display());
    let _unmount = Unmount(worker.clone());
    std::fs::create_dir(worker.join("cache")).unwrap();
    std::fs::create_dir(worker.join("build")).unwrap();

    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let file = FileNode {
        name: "big".into(),
        digest: Some(put(&farm.cas, &big).await),
        ..Default::default()
    };
    let root = farm
        .put_message(&Directory {
            files: vec![file],
            ..Default::default()
        })
        .await;
    let job = farm.job(shell("wc -c < big"), root, None).await;
    // Something else on the disk leaves it 2 MiB.
    let filler = worker.join("filler");
    std::fs::write(&filler, vec![0; 14 << 20]).unwrap();

    let refused = farm.execute(&job).await;
    assert_eq!(
        code(&refused),
        Code::Unavailable as i32,
        "{:?}",
        refused.status
    );
    let said = format!(
        "the disk of the file cache {} is full",
        worker.join("cache").display()
    );
    let message = &refused.status.as_ref().unwrap().message;
    assert!(message.contains(&said), "{message}");
    assert!(farm.build_is_empty(), "the build directory is cleaned up");

    corral_testkit::remove_freeing_space(&filler);
    let ran = farm.execute(&job).await;
    assert_eq!(code(&ran), 0, "{:?}", ran.status);
    let result = ran.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(farm.read(&result.stdout_digest).await, b"3145728\n");
}

/// Unmounts a file system when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        // Lazily: a descriptor a child of another test thread briefly holds
        // (inherited until its exec) must not leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
