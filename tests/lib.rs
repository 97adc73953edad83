//! End-to-end tests of whole farms, driven by real clients, and the check
//! that crate dependencies point the way the design says. The tests are
//! the `[[test]]` targets beside this file; this library holds what they
//! share: starting `corral up` on a free port and stopping it cleanly,
//! Bazel's workspace and TLS set-up ([`bazel`]), test hosts on a
//! bridge of network namespaces ([`network`]), daemons started one by
//! one with their logs ([`processes`]), and a small REAPI client
//! ([`reapi`]).

#![forbid(unsafe_code)]

#[path = "lib/bazel.rs"]
pub mod bazel;
#[path = "lib/network.rs"]
pub mod network;
#[path = "lib/processes.rs"]
pub mod processes;
#[path = "lib/reapi.rs"]
pub mod reapi;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `corral` binary `cargo test --workspace` built next to the test.
pub fn corral_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/corral
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("corral"))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p corral` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// What a finished command printed: its stdout, then its stderr.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The variable naming the Python of the venv scripts/test.sh makes
/// (tests/python/requirements.txt: grpcio, grpcio-tools,
/// kubernetes-validate, PyYAML).
const PYTHON_VARIABLE: &str = "CORRAL_TEST_PYTHON";

/// The test venv's Python; `None` (the skip said why, for `test`) when
/// [`PYTHON_VARIABLE`] is not set.
pub fn test_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os(PYTHON_VARIABLE).map(PathBuf::from);
    if python.is_none() {
        corral_testkit::skip(
            test,
            &format!("{PYTHON_VARIABLE} is not set (scripts/test.sh makes the venv and sets it)"),
        );
    }
    python
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The Prometheus page served over plain HTTP on loopback `port`
/// (`GET /metrics`), body only.
pub fn metrics_page(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics page");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: farm\r\n\r\n")
        .expect("ask for the metrics page");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the metrics page");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

/// What `corral up` prints once it serves and can run actions.
const READY_LINE: &str = "corral up: ready";

/// A `corral up` process, stopped with SIGINT when dropped.
pub struct Farm {
    child: Child,
    pub port: u16,
    /// Where `corral up --metrics` serves its page.
    pub metrics_port: u16,
    pub data_dir: tempfile::TempDir,
    log: PathBuf,
    /// Started with `--secure`: TLS, and a certificate or token required.
    secure: bool,
}

impl Farm {
    /// Starts `corral up` on a free port with a fresh data directory and
    /// waits until it is ready.
    pub fn start() -> Farm {
        Self::start_as(None, None, &[])
    }

    /// Like [`start`](Self::start), with another `corral` binary than the
    /// one built next to the test (a bench's baseline build).
    pub fn start_binary(binary: &Path) -> Farm {
        Self::start_in(binary.to_owned(), None, false, None, &[])
    }

    /// Like [`start`](Self::start), run by the unprivileged user `nobody`
    /// (the caller must be root to switch to it).
    pub fn start_unprivileged() -> Farm {
        Self::start_as(None, Some(NOBODY), &[])
    }

    /// `corral up --secure`; with `grants`, that grants file instead of the
    /// one it makes. Its files are at [`secure_file`](Self::secure_file).
    pub fn start_secure(grants: Option<&str>) -> Farm {
        let data_dir = tempfile::tempdir().expect("temp dir");
        if let Some(grants) = grants {
            let secure = data_dir.path().join("data/secure");
            std::fs::create_dir_all(&secure).expect("create the secure dir");
            std::fs::write(secure.join("grants.toml"), grants).expect("write grants");
        }
        Self::start_as(Some(data_dir), None, &[])
    }

    /// A file `corral up --secure` made: `ca.crt`, `client.crt`, `token`, ….
    pub fn secure_file(&self, name: &str) -> PathBuf {
        self.data_dir.path().join("data/secure").join(name)
    }

    /// Like [`start`](Self::start), with `args` added to `corral up`'s.
    pub fn start_with_args(args: &[&str]) -> Farm {
        Self::start_as(None, None, args)
    }

    fn start_as(secure: Option<tempfile::TempDir>, user: Option<u32>, args: &[&str]) -> Farm {
        let is_secure = secure.is_some();
        Self::start_in(corral_binary(), secure, is_secure, user, args)
    }

    /// Stops `corral up` (SIGINT) and starts it again, on new ports, with
    /// the same data directory: what a restart of the machine's service
    /// keeps (storage, the worker's image store) is there.
    pub fn restart(mut self) -> Farm {
        processes::interrupt(&mut self.child);
        let placeholder = tempfile::tempdir().expect("temp dir");
        let data_dir = std::mem::replace(&mut self.data_dir, placeholder);
        Self::start_in(corral_binary(), Some(data_dir), self.secure, None, &[])
    }

    fn start_in(
        mut binary: PathBuf,
        data_dir: Option<tempfile::TempDir>,
        is_secure: bool,
        user: Option<u32>,
        args: &[&str],
    ) -> Farm {
        let port = free_port();
        let metrics_port = free_port();
        let data_dir = data_dir.unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        // Closed to other users, like /root or `mktemp -d`: the farm must
        // work from there (the sandbox's id cannot search it).
        std::fs::set_permissions(
            data_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod the farm's temp dir");
        if let Some(id) = user {
            std::os::unix::fs::chown(data_dir.path(), Some(id), Some(id))
                .expect("chown the farm's temp dir");
            // The build tree may not be reachable by that user.
            let own = data_dir.path().join("corral");
            std::fs::copy(&binary, &own).expect("copy corral");
            std::os::unix::fs::chown(&own, Some(id), Some(id)).expect("chown corral");
            binary = own;
        }
        let log = data_dir.path().join("corral-up.log");
        let mut command = Command::new(binary);
        if let Some(id) = user {
            std::os::unix::process::CommandExt::uid(&mut command, id);
            std::os::unix::process::CommandExt::gid(&mut command, id);
        }
        let child = command
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .args(is_secure.then_some("--secure"))
            .args(args)
            .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("log file"))
            .spawn()
            .expect("start corral up");
        let farm = Farm {
            child,
            port,
            metrics_port,
            data_dir,
            log,
            secure: is_secure,
        };
        // Ready means every part runs, the runner included: it prints
        // its ready line last.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !farm.logs().contains(READY_LINE) {
            assert!(
                Instant::now() < deadline,
                "corral up did not get ready\n{}",
                farm.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "corral up said ready but does not listen\n{}",
            farm.logs()
        );
        farm
    }

    /// The process id of `corral up` (its runner and the sandboxes are
    /// under it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The REAPI endpoint, as Bazel flags want it.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.secure { "grpcs" } else { "grpc" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The farm's Prometheus page (`GET /metrics`), body only.
    pub fn metrics(&self) -> String {
        metrics_page(self.metrics_port)
    }

    /// What `corral up` printed so far.
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- corral up stdout\n{}--- corral up stderr\n{}",
            read(&self.log),
            read(&self.log.with_extension("err"))
        )
    }

    /// Processes still running whose command line names this farm's data
    /// directory (its runner, or sandboxes), other than `corral up`.
    pub fn leftover_processes(&self) -> Vec<String> {
        let data = self.data_dir.path().to_string_lossy().into_owned();
        processes::running()
            .into_iter()
            .filter(|p| p.pid != self.child.id())
            .map(|p| p.command_line())
            .filter(|line| line.contains(&data))
            .collect()
    }

    /// Sends `signal` (`TERM`, `INT`, …) to `corral up`.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -s {signal} corral up");
    }

    /// Waits up to `within` for `corral up` to exit; `None`: it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT (SIGKILL past 20 s) and waits for the exit; returns
    /// the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        processes::interrupt(&mut self.child).expect("reap corral up")
    }

    /// Stops the farm ([`stop`](Self::stop)) and asserts it exited 0,
    /// leaving no process of its own behind.
    pub fn assert_stops_cleanly(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "corral up did not exit cleanly ({status})\n{}",
            self.logs()
        );
        let leftovers = self.leftover_processes();
        assert!(
            leftovers.is_empty(),
            "processes outlived corral up: {leftovers:?}"
        );
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        processes::interrupt(&mut self.child);
    }
}

/// One daemon of a [`SplitFarm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Storage,
    Scheduler,
    Runner,
    Worker,
}

impl Daemon {
    /// Every daemon, in the order they start.
    pub const ALL: [Daemon; 4] = [
        Daemon::Storage,
        Daemon::Scheduler,
        Daemon::Runner,
        Daemon::Worker,
    ];

    /// Its `corral` subcommand, and the name of its log files.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Storage => "storage",
            Daemon::Scheduler => "scheduler",
            Daemon::Runner => "runner",
            Daemon::Worker => "worker",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the worker logs once its slots synchronize.
const WORKER_READY_LINE: &str = "worker running";

/// A farm of separate processes — `corral storage`, `corral scheduler`,
/// `corral runner` and `corral worker` — on free ports, with their
/// configuration files and data in one temp directory, so each can be
/// killed and restarted alone while the others keep their state (storage
/// its disk). Every daemon is stopped with SIGINT when dropped.
pub struct SplitFarm {
    pub dir: tempfile::TempDir,
    pub storage_port: u16,
    pub scheduler_port: u16,
    children: [Option<Child>; 4],
}

impl SplitFarm {
    /// Starts the four daemons, each ready before the next starts. The
    /// worker has one slot.
    pub fn start() -> SplitFarm {
        // A killed worker that is not restarted is declared gone one
        // report interval (10 s) plus 5 s after its last report.
        Self::start_with("worker_timeout_s = 5\n", "")
    }

    /// Like [`start`](Self::start), with `scheduler_toml` as the whole of
    /// scheduler.toml and `worker_keys` (top-level keys, one per line)
    /// added to worker.toml.
    pub fn start_with(scheduler_toml: &str, worker_keys: &str) -> SplitFarm {
        Self::start_with_files(scheduler_toml, worker_keys, &[])
    }

    /// Like [`start_with`](Self::start_with), with `storage.toml` and
    /// `runner.toml` too (`(name, text)`; their flags still set the
    /// ports and directories).
    pub fn start_with_files(
        scheduler_toml: &str,
        worker_keys: &str,
        files: &[(&str, &str)],
    ) -> SplitFarm {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write a daemon's config");
        }
        let mut farm = SplitFarm {
            dir,
            storage_port: free_port(),
            scheduler_port: free_port(),
            children: [None, None, None, None],
        };
        farm.write_configs(scheduler_toml, worker_keys);
        for daemon in Daemon::ALL {
            farm.restart(daemon);
        }
        farm
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The runner's socket.
    pub fn runner_socket(&self) -> PathBuf {
        self.path("runner.sock")
    }

    /// The worker's `directory`; its runner's `--build-dir` is
    /// `<directory>/build`.
    pub fn worker_directory(&self) -> PathBuf {
        self.path("worker")
    }

    fn write_configs(&self, scheduler_toml: &str, worker_keys: &str) {
        std::fs::write(self.path("scheduler.toml"), scheduler_toml).expect("write scheduler.toml");
        let worker = format!(
            "scheduler = \"{}\"\nstorage = \"{}\"\ndirectory = \"{}\"\n{worker_keys}\n\
             [[slots]]\nconcurrency = 1\nrunner = \"{}\"\n",
            self.scheduler_url(),
            self.storage_url(),
            self.worker_directory().display(),
            self.runner_socket().display(),
        );
        std::fs::write(self.path("worker.toml"), worker).expect("write worker.toml");
    }

    /// Storage's endpoint (CAS, Action Cache, ByteStream).
    pub fn storage_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.storage_port)
    }

    /// The scheduler's endpoint (Execution, Operations).
    pub fn scheduler_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.scheduler_port)
    }

    fn log(&self, daemon: Daemon, stream: &str) -> PathBuf {
        self.path(&format!("{}.{stream}", daemon.name()))
    }

    fn args(&self, daemon: Daemon) -> Vec<String> {
        let path = |name: &str| self.path(name).display().to_string();
        let listen = |port: u16| format!("127.0.0.1:{port}");
        let mut args = vec![daemon.name().to_owned()];
        let own = self.path(&format!("{}.toml", daemon.name()));
        if matches!(daemon, Daemon::Storage | Daemon::Runner) && own.exists() {
            args.extend(["--config".to_owned(), own.display().to_string()]);
        }
        match daemon {
            Daemon::Storage => args.extend([
                "--listen".to_owned(),
                listen(self.storage_port),
                "--dir".to_owned(),
                path("storage"),
            ]),
            Daemon::Scheduler => args.extend([
                "--config".to_owned(),
                path("scheduler.toml"),
                "--listen".to_owned(),
                listen(self.scheduler_port),
                "--storage".to_owned(),
                self.storage_url(),
            ]),
            Daemon::Runner => args.extend([
                "--socket".to_owned(),
                self.runner_socket().display().to_string(),
                "--build-dir".to_owned(),
                self.worker_directory().join("build").display().to_string(),
            ]),
            Daemon::Worker => args.extend(["--config".to_owned(), path("worker.toml")]),
        }
        args
    }

    /// Starts `daemon` (again, if it ran) and waits until it serves.
    pub fn restart(&mut self, daemon: Daemon) {
        assert!(
            self.children[daemon.index()].is_none(),
            "{} still runs: kill it first",
            daemon.name()
        );
        // Appended to across restarts: the logs tell the whole story.
        let append = |stream: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log(daemon, stream))
                .expect("open a daemon's log")
        };
        let start_of_log = std::fs::metadata(self.log(daemon, "err")).map_or(0, |m| m.len());
        let child = Command::new(corral_binary())
            .args(self.args(daemon))
            .stdin(Stdio::null())
            .stdout(append("out"))
            .stderr(append("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("start corral {}: {e}", daemon.name()));
        self.children[daemon.index()] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.serves(daemon, start_of_log) {
            if let Some(child) = self.children[daemon.index()].as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "corral {} exited ({status}) before serving\n{}",
                        daemon.name(),
                        self.logs()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "corral {} did not get ready\n{}",
                daemon.name(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn serves(&self, daemon: Daemon, start_of_log: u64) -> bool {
        match daemon {
            Daemon::Storage => {
                std::net::TcpStream::connect(("127.0.0.1", self.storage_port)).is_ok()
            }
            Daemon::Scheduler => {
                std::net::TcpStream::connect(("127.0.0.1", self.scheduler_port)).is_ok()
            }
            Daemon::Runner => std::os::unix::net::UnixStream::connect(self.runner_socket()).is_ok(),
            Daemon::Worker => {
                // Only what this start wrote (logs go to stderr).
                let log = std::fs::read(self.log(daemon, "err")).unwrap_or_default();
                let new = log.get(start_of_log as usize..).unwrap_or_default();
                String::from_utf8_lossy(new).contains(WORKER_READY_LINE)
            }
        }
    }

    /// SIGKILL: `daemon` dies at once, mid-call, without cleaning up.
    pub fn kill(&mut self, daemon: Daemon) {
        let mut child = self.children[daemon.index()]
            .take()
            .unwrap_or_else(|| panic!("{} is not running", daemon.name()));
        child.kill().expect("SIGKILL a daemon");
        child.wait().expect("reap a daemon");
    }

    /// Sends `signal` (`TERM`, `INT`, …) to `daemon`, which keeps running
    /// as far as the harness knows: [`wait_exit`](Self::wait_exit) reaps it.
    pub fn signal(&self, daemon: Daemon, signal: &str) {
        let child = self.children[daemon.index()]
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", daemon.name()));
        let sent = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -s {signal} {}", daemon.name());
    }

    /// Waits up to `within` for `daemon` to exit; then it counts as not
    /// running (it may be restarted) and its exit status is returned.
    /// `None`: it still runs.
    pub fn wait_exit(
        &mut self,
        daemon: Daemon,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let slot = &mut self.children[daemon.index()];
        let child = slot
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", daemon.name()));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                *slot = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What `daemon` logged so far (its standard error), across restarts.
    pub fn log_of(&self, daemon: Daemon) -> String {
        std::fs::read_to_string(self.log(daemon, "err")).unwrap_or_default()
    }

    /// Every daemon's output so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for daemon in Daemon::ALL {
            for stream in ["out", "err"] {
                let log = std::fs::read_to_string(self.log(daemon, stream)).unwrap_or_default();
                text.push_str(&format!("--- corral {} std{stream}\n{log}", daemon.name()));
            }
        }
        text
    }
}

impl Drop for SplitFarm {
    fn drop(&mut self) {
        // The reverse of the start order: the worker first, storage last.
        for child in self.children.iter_mut().rev().flatten() {
            processes::interrupt(child);
        }
    }
}
