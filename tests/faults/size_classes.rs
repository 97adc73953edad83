//! Size classes end to end, with the sandbox's real cgroup memory limit:
//! one worker with a small slot (size class 1, a runner whose policies
//! give actions 128 MiB) and a large one (class 4, a runner giving
//! 1 GiB), and a scheduler with `[size_classes]`. An action needing
//! 256 MiB is OOM-killed on the small slot, succeeds on the large one
//! within the client's one Execute, and the next identical action starts
//! on the large slot. docs/decisions/0014-size-classes.md.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use corral_e2e::processes::Processes;
use corral_e2e::reapi::{Client, NewAction};
use corral_e2e::{corral_binary, free_port};
use corral_proto::reapi::ExecuteResponse;

/// What the scheduler logs when it queues an action again for a larger
/// class.
const RETRY_LINE: &str = "queued again for a larger size class";

/// Daemons started by the test ([`Processes`]: stopped, SIGINT then
/// SIGKILL, when dropped), with their files in `dir`. Field order is drop
/// order: the daemons stop before their directory goes.
struct Daemons {
    processes: Processes,
    dir: tempfile::TempDir,
}

impl Daemons {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&mut self, name: &str, args: &[String]) {
        let mut command = Process::new(corral_binary());
        command.args(args);
        self.processes.start(name, command);
    }

    fn log(&self, name: &str) -> String {
        self.processes.log(name)
    }

    fn logs(&self) -> String {
        self.processes.logs()
    }

    /// Waits for `ready`, failing if `name` exits first or after 60 s.
    fn wait_until(&mut self, name: &str, ready: impl Fn() -> bool) {
        self.processes.wait_until(name, ready);
    }
}

/// The built-in default policy with `memory_max_bytes` set to `bytes`,
/// as `<dir>/default.toml`.
fn policy_with_memory(dir: &Path, bytes: u64) {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml");
    let text = std::fs::read_to_string(default).expect("read policies/default.toml");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("memory_max_bytes"))
        .expect("the default policy sets memory_max_bytes");
    let text = text.replace(line, &format!("memory_max_bytes = {bytes}"));
    std::fs::create_dir_all(dir).expect("create a policies directory");
    std::fs::write(dir.join("default.toml"), text).expect("write default.toml");
}

/// Storage, a scheduler with size classes, two runners and one worker
/// with a small and a large slot.
fn start() -> (Daemons, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = Daemons {
        processes: Processes::new(dir.path()),
        dir,
    };
    let (storage_port, scheduler_port) = (free_port(), free_port());
    let storage = format!("http://127.0.0.1:{storage_port}");
    let scheduler = format!("http://127.0.0.1:{scheduler_port}");
    let dir = d.dir.path().to_owned();
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        d.path("scheduler.toml"),
        "[size_classes]\nprobe_probability = 0.0\n",
    )
    .unwrap();
    let build = d.path("worker").join("build");
    for (name, memory, first_id) in [
        ("small", 128u64 << 20, 1_900_000_000u32),
        ("large", 1 << 30, 1_900_001_000),
    ] {
        policy_with_memory(&d.path(&format!("policies-{name}")), memory);
        let runner = format!(
            "listen_path = \"{}\"\nbuild_directory = \"{}\"\npolicies_directory = \"{}\"\n\n\
             [action_ids]\nfirst_uid = {first_id}\nfirst_gid = {first_id}\ncount = 16\n",
            p(&format!("runner-{name}.sock")),
            build.display(),
            p(&format!("policies-{name}")),
        );
        std::fs::write(d.path(&format!("runner-{name}.toml")), runner).unwrap();
    }
    let worker = format!(
        "scheduler = \"{scheduler}\"\nstorage = \"{storage}\"\ndirectory = \"{}\"\n\n\
         [[slots]]\nconcurrency = 1\nrunner = \"{}\"\nsize_class = 1\n\n\
         [[slots]]\nconcurrency = 1\nrunner = \"{}\"\nsize_class = 4\n",
        p("worker"),
        p("runner-small.sock"),
        p("runner-large.sock"),
    );
    std::fs::write(d.path("worker.toml"), worker).unwrap();

    d.start(
        "storage",
        &[
            "storage".into(),
            "--listen".into(),
            format!("127.0.0.1:{storage_port}"),
            "--dir".into(),
            p("storage"),
        ],
    );
    d.wait_until("storage", || {
        std::net::TcpStream::connect(("127.0.0.1", storage_port)).is_ok()
    });
    d.start(
        "scheduler",
        &[
            "scheduler".into(),
            "--config".into(),
            p("scheduler.toml"),
            "--listen".into(),
            format!("127.0.0.1:{scheduler_port}"),
            "--storage".into(),
            storage.clone(),
        ],
    );
    d.wait_until("scheduler", || {
        std::net::TcpStream::connect(("127.0.0.1", scheduler_port)).is_ok()
    });
    for name in ["small", "large"] {
        let runner = format!("runner-{name}");
        d.start(
            &runner,
            &[
                "runner".into(),
                "--config".into(),
                p(&format!("{runner}.toml")),
            ],
        );
        let socket = d.path(&format!("{runner}.sock"));
        d.wait_until(&runner, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }
    d.start(
        "worker",
        &["worker".into(), "--config".into(), p("worker.toml")],
    );
    let log = d.path("worker.err");
    d.wait_until("worker", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("worker running"))
    });
    (d, storage, scheduler)
}

/// The slot (`slot-N` of `<host>/slot-N`) that ran it: 0 is the small
/// slot group's, 1 the large one's.
fn slot(response: &ExecuteResponse) -> String {
    let worker = response
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default();
    worker.rsplit('/').next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_out_of_memory_on_the_small_slot_succeeds_on_the_large_one_and_starts_there_next()
{
    // The sandbox (cgroups, namespaces, ids) needs root.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the size class test as root"
        );
        eprintln!("skipped: the sandbox's memory limit needs root");
        return;
    }
    let (daemons, storage, scheduler) = start();
    let client = Client::new(&storage, &scheduler);
    let action = NewAction::new(&[
        "/usr/bin/python3",
        "-c",
        "b = bytearray(256 << 20); print('fits')",
    ]);
    let action = client.upload_action(&action).await;

    let first = client.run(&action).await;
    let logs = daemons.logs();
    assert_eq!(first.status.clone().unwrap_or_default().code, 0, "{logs}");
    assert_eq!(first.result.as_ref().unwrap().exit_code, 0, "{logs}");
    assert_eq!(slot(&first), "slot-1", "ran on the large slot\n{logs}");
    assert_eq!(
        daemons.log("scheduler").matches(RETRY_LINE).count(),
        1,
        "first on the small slot, OOM-killed, then queued again\n{logs}"
    );

    let second = client.run(&action).await;
    let logs = daemons.logs();
    assert_eq!(second.result.as_ref().unwrap().exit_code, 0, "{logs}");
    assert_eq!(slot(&second), "slot-1", "{logs}");
    assert_eq!(
        daemons.log("scheduler").matches(RETRY_LINE).count(),
        1,
        "the second run started on the large slot\n{logs}"
    );
}
