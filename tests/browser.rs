//! The web UI in a real browser: `corral up` runs a build (one action
//! finished, one executing, one queued for a platform no worker offers),
//! then headless Chromium (Debian's `chromium`) opens each page and the
//! test asserts on the DOM it rendered (`--dump-dom`); it also writes a
//! screenshot of each page to `target/tmp/web-ui-*.png`.
//!
//! Needs `chromium` (scripts/test.sh installs it); without it the test
//! says why and passes, under CI it fails.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_e2e::reapi::{Client, NewAction};
use corral_e2e::Farm;
use corral_proto::longrunning::Operation;
use corral_proto::reapi::Digest;

const CHROMIUM: &str = "/usr/bin/chromium";

/// One page load, start-up included; a hang must not eat CI's time.
const PAGE_LIMIT: Duration = Duration::from_secs(60);

/// Uploads `arguments` as an action (PATH set) for `platform` (none when
/// empty) and starts executing it: its digest, the stream, and the
/// operation's name.
async fn start(
    client: &Client,
    arguments: &[&str],
    platform: &[(&str, &str)],
) -> (Digest, tonic::Streaming<Operation>, String) {
    let action = platform
        .iter()
        .fold(NewAction::new(arguments), |a, (name, value)| {
            a.property(name, value)
        })
        .env("PATH", "/usr/bin:/bin");
    let digest = client.upload_action(&action).await;
    let mut stream = client.start(&digest).await;
    let first = stream.message().await.unwrap().unwrap();
    (digest, stream, first.name)
}

/// Chromium renders `url`: the DOM it built, and a screenshot at `png`.
fn render(url: &str, png: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let started = Instant::now();
        let output = Command::new(CHROMIUM)
            // Root in a container: Chromium's own sandbox needs user
            // namespaces it may not get; the page is our own.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(["--window-size=1280,900", "--timeout=10000"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            started.elapsed() < PAGE_LIMIT,
            "chromium took {:?}",
            started.elapsed()
        );
        assert!(
            output.status.success(),
            "chromium failed on {url}: {output:?}"
        );
        eprintln!("chromium rendered {url} in {:?}", started.elapsed());
        String::from_utf8(output.stdout).unwrap()
    };
    run(&[format!("--screenshot={}", png.display())]);
    assert!(png.exists(), "no screenshot at {}", png.display());
    run(&["--dump-dom".to_owned()])
}

fn screenshot(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-ui-{name}.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_shows_queues_workers_operations_and_actions_in_a_browser() {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {CHROMIUM} (scripts/test.sh installs Debian's chromium)"
        );
        eprintln!(
            "skipped: {CHROMIUM} is missing (apt-get install --no-install-recommends chromium)"
        );
        return;
    }
    let farm = Farm::start();
    let client = Client::of(&farm);
    let (finished, mut stream, finished_name) = start(
        &client,
        &["/bin/sh", "-c", "echo built; true '<i>x</i>'"],
        &[],
    )
    .await;
    while stream.message().await.unwrap().is_some() {}
    let (_, _executing_stream, executing_name) =
        start(&client, &["/bin/sh", "-c", "sleep 30"], &[]).await;
    let (_, _queued_stream, queued_name) =
        start(&client, &["sw_vers"], &[("OSFamily", "macos")]).await;
    // The worker takes the executing action within its next poll.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let base = format!("http://127.0.0.1:{}", farm.metrics_port);
    let home = tokio::task::block_in_place(|| render(&format!("{base}/"), &screenshot("home")));
    assert!(home.contains("<h2>Queues</h2>"), "{home}");
    assert!(home.contains("OSFamily=macos"), "{home}");
    assert!(home.contains(&queued_name), "{home}");
    assert!(home.contains(&finished_name), "{home}");
    assert!(home.contains("completed, exit code 0"), "{home}");
    // The worker's row names what it executes.
    let workers = home.split("<h2>Workers</h2>").nth(1).unwrap();
    let workers = workers.split("<h2>").next().unwrap();
    assert!(workers.contains("slot=0"), "{home}");
    assert!(workers.contains(&executing_name), "{home}");

    let operation = tokio::task::block_in_place(|| {
        render(
            &format!("{base}/operation/{finished_name}"),
            &screenshot("operation"),
        )
    });
    assert!(
        operation.contains("<th>exit code</th><td>0</td>"),
        "{operation}"
    );
    assert!(operation.contains("built\n"), "{operation}");
    assert!(operation.contains("sandbox.txt"), "{operation}");

    let action = tokio::task::block_in_place(|| {
        render(
            &format!("{base}/action/{}-{}", finished.hash, finished.size_bytes),
            &screenshot("action"),
        )
    });
    // The command line as text, its markup escaped in the DOM.
    assert!(
        action.contains("/bin/sh -c 'echo built; true '\\''&lt;i&gt;x&lt;/i&gt;'\\'''"),
        "{action}"
    );
    assert!(!action.contains("<i>x</i>"), "{action}");
    assert!(action.contains("PATH"), "{action}");
}
