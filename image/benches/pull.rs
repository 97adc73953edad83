//! What an image costs the worker: a cold pull and unpack of the test
//! image (busybox-static, two gzip layers) from Debian's docker-registry
//! on loopback and from an OCI layout directory, each into a fresh store;
//! a get of an image the store holds (what every later action pays); and
//! the rescan a worker's start makes of a store left with 10, 100 and
//! 1,000 complete images.
//!
//! `cargo bench -p corral-image --bench pull [-- N]` (needs busybox-static;
//! the registry rows need docker-registry). Prints medians and p95.

use std::time::{Duration, Instant};

use corral_image::store::SIZE_RECORD;
use corral_image::{Config, ImageStore};
use corral_testkit::images::{busybox_tree, oci_layout, push_layout, Registry, REGISTRY};

fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5).as_secs_f64() * 1e3, at(0.95).as_secs_f64() * 1e3)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let scratch = tempfile::tempdir().expect("temp dir");
    let tree = scratch.path().join("tree");
    if busybox_tree(&tree).is_none() {
        eprintln!("pull bench: busybox-static is not installed");
        return;
    }
    let layout = scratch.path().join("layout");
    oci_layout(&tree, &layout, "1");
    let blobs: u64 = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").metadata().expect("size").len())
        .sum();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = std::path::Path::new(REGISTRY).exists().then(|| {
        let registry = Registry::start();
        push_layout(registry.addr, &layout, "corral/busybox", "1");
        registry
    });
    let mut sources = vec![("OCI layout", format!("oci:{}:1", layout.display()))];
    match &registry {
        Some(r) => sources.push((
            "docker-registry on loopback",
            format!("docker://{}/corral/busybox:1", r.addr),
        )),
        None => eprintln!("docker-registry not installed: registry rows skipped"),
    }
    println!("test image: {blobs} bytes of blobs in the layout; {n} runs each");
    println!("{:<52} {:>10} {:>10}", "what", "median ms", "p95 ms");
    for (label, value) in &sources {
        let cold: Vec<Duration> = (0..n)
            .map(|i| {
                let dir = scratch.path().join(format!("store-{label}-{i}"));
                let store = ImageStore::open(dir, &Config::default()).expect("store");
                let start = Instant::now();
                let image = runtime.block_on(store.get(value)).expect("pull");
                let took = start.elapsed();
                assert!(image.pulled);
                took
            })
            .collect();
        let (median, p95) = stats(cold);
        println!(
            "{:<52} {median:>10.1} {p95:>10.1}",
            format!("cold pull + unpack, {label}")
        );
    }
    for (label, value) in &sources {
        let store = ImageStore::open(
            scratch.path().join(format!("warm-{label}")),
            &Config::default(),
        )
        .expect("store");
        drop(runtime.block_on(store.get(value)).expect("pull"));
        let warm: Vec<Duration> = (0..n * 10)
            .map(|_| {
                let start = Instant::now();
                let image = runtime.block_on(store.get(value)).expect("get");
                let took = start.elapsed();
                assert!(!image.pulled);
                took
            })
            .collect();
        let (median, p95) = stats(warm);
        println!(
            "{:<52} {median:>10.3} {p95:>10.3}",
            format!("cached get (tag resolved), {label}")
        );
    }
    for count in [10, 100, 1000] {
        let dir = scratch.path().join(format!("rescan-{count}"));
        for i in 0..count {
            let entry = dir.join(corral_image::digest::Digest::of(format!("{i}").as_bytes()).hex());
            std::fs::create_dir_all(entry.join("rootfs/usr/bin")).expect("entry");
            std::fs::write(entry.join(SIZE_RECORD), "1000000").expect("size record");
        }
        let config = Config {
            max_bytes: u64::MAX,
            ..Config::default()
        };
        let start = Instant::now();
        let store = ImageStore::open(dir, &config).expect("rescan");
        let took = start.elapsed();
        drop(store);
        println!(
            "{:<52} {:>10.2} {:>10}",
            format!("rescan at start, {count} images kept"),
            took.as_secs_f64() * 1e3,
            "-"
        );
    }
}
