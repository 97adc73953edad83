//! A farm across hosts, in one test: storage, the scheduler and three
//! workers (each with its runner) on test hosts of their own — network
//! namespaces with their own addresses on a bridge, and their own host
//! names ([`corral_e2e::network`]) — speaking mTLS to each other with
//! certificates for those addresses, and a grants file that binds each
//! worker to its certificate. Debian's Bazel, on a sixth host, builds
//! tests/bazel through them; one worker is killed with SIGKILL while it
//! runs the slow genrule, which runs again on another host, and the build
//! ends green. The workers' metrics pages show the actions spread over
//! them. Last, an action tries to open storage's address, which its
//! worker's host reaches, and cannot.
//!
//! Needs root (namespaces, the sandbox), `ip`, util-linux, `curl` and
//! Bazel with libnetty-tcnative-jni (scripts/test.sh installs them);
//! without them it says why it skips, except under CI.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_auth::certs::{write_private, Authority};
use corral_e2e::network::{self, Host, Network};
use corral_e2e::processes::Processes;
use corral_e2e::{bazel, corral_binary};

const STORAGE_PORT: u16 = 8980;
const SCHEDULER_PORT: u16 = 8981;
/// Where each daemon that has one serves its metrics page.
const METRICS_PORT: u16 = 9090;

const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

/// What the slow genrule's shell has on its command line
/// (tests/bazel/faults/BUILD).
const SLOW_MARKER: &str = "corral-faults-slow-genrule";

/// The farm: certificates, configuration files and logs in `dir`, every
/// daemon on its host. Field order is drop order: the processes stop
/// before their namespaces go.
struct HostsFarm {
    processes: Processes,
    network: Network,
    dir: tempfile::TempDir,
}

impl HostsFarm {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn host(&self, name: &str) -> &Host {
        self.network.host(name)
    }

    fn url(&self, host: &str, port: u16) -> String {
        format!("https://{}", self.host(host).at(port))
    }

    /// A CA, a server certificate for each serving host (its address and
    /// name), a client certificate for each caller, and the grants.
    fn write_pki(&self) {
        let ca = Authority::new("corral hosts test CA").unwrap();
        write_private(&self.path("ca.crt"), ca.certificate_pem()).unwrap();
        let write = |name: &str, issued: corral_auth::certs::Issued| {
            write_private(&self.path(&format!("{name}.crt")), &issued.certificate_pem).unwrap();
            write_private(&self.path(&format!("{name}.key")), &issued.key_pem).unwrap();
        };
        for host in ["storage", "scheduler"].iter().chain(&WORKERS) {
            let address = self.host(host).address.to_string();
            write(
                &format!("{host}-server"),
                ca.server(&[&address, host]).unwrap(),
            );
        }
        for caller in ["bazel", "scheduler"].iter().chain(&WORKERS) {
            write(&format!("{caller}-client"), ca.client(caller).unwrap());
        }
        let grants = r#"
[[grant]]
who = ["cert:cn=bazel"]
instance_names = [""]
permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]

# Each worker by its own certificate.
[[grant]]
who = ["cert:cn=worker-1", "cert:cn=worker-2", "cert:cn=worker-3"]
instance_names = ["*"]
permissions = ["worker", "cas-read", "cas-write", "ac-read", "ac-write"]

[[grant]]
who = ["cert:cn=scheduler"]
instance_names = ["*"]
permissions = ["cas-read", "ac-read"]
"#;
        write_private(&self.path("grants.toml"), grants).unwrap();
    }

    /// `[tls]` of a server on `host`, client certificates required.
    fn server_tls(&self, host: &str) -> String {
        format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nclient_ca = \"{}\"\n\
             client_certificate = \"required\"\n\n[auth]\ngrants = \"{}\"\n",
            self.path(&format!("{host}-server.crt")).display(),
            self.path(&format!("{host}-server.key")).display(),
            self.path("ca.crt").display(),
            self.path("grants.toml").display(),
        )
    }

    /// `[client_tls]` of `caller`.
    fn client_tls(&self, caller: &str) -> String {
        format!(
            "[client_tls]\nca = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            self.path("ca.crt").display(),
            self.path(&format!("{caller}-client.crt")).display(),
            self.path(&format!("{caller}-client.key")).display(),
        )
    }

    fn write_configs(&self) {
        let storage = self.host("storage");
        let text = format!(
            "listen = \"{}\"\n\n[backend]\nkind = \"disk\"\ndir = \"{}\"\nmax_size_bytes = 1073741824\nfsync = false\n\n{}",
            storage.at(STORAGE_PORT),
            self.path("storage").display(),
            self.server_tls("storage"),
        );
        std::fs::write(self.path("storage.toml"), text).unwrap();

        let scheduler = self.host("scheduler");
        // A killed worker is declared gone 5 s after its last report is
        // due (every 10 s while it executes).
        let text = format!(
            "listen = \"{}\"\nstorage = \"{}\"\nworker_timeout_s = 5\n\n[metrics]\nlisten = \"{}\"\n\n{}\n{}",
            scheduler.at(SCHEDULER_PORT),
            self.url("storage", STORAGE_PORT),
            scheduler.at(METRICS_PORT),
            self.server_tls("scheduler"),
            self.client_tls("scheduler"),
        );
        std::fs::write(self.path("scheduler.toml"), text).unwrap();

        for (i, name) in WORKERS.iter().enumerate() {
            let directory = self.path(name);
            let socket = self.path(&format!("{name}.sock"));
            // Each runner its own host ids, as on machines of their own.
            let first_id = 1_900_000_000 + 1000 * i;
            let runner = format!(
                "listen_path = \"{}\"\nbuild_directory = \"{}\"\n\n\
                 [action_ids]\nfirst_uid = {first_id}\nfirst_gid = {first_id}\ncount = 16\n",
                socket.display(),
                directory.join("build").display(),
            );
            std::fs::write(self.path(&format!("{name}-runner.toml")), runner).unwrap();
            let worker = format!(
                "scheduler = \"{}\"\nstorage = \"{}\"\ndirectory = \"{}\"\n\n\
                 [[slots]]\nconcurrency = 1\nrunner = \"{}\"\n\n{}\n\
                 [metrics]\nlisten = \"{}\"\n[metrics.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                self.url("scheduler", SCHEDULER_PORT),
                self.url("storage", STORAGE_PORT),
                directory.display(),
                socket.display(),
                self.client_tls(name),
                self.host(name).at(METRICS_PORT),
                self.path(&format!("{name}-server.crt")).display(),
                self.path(&format!("{name}-server.key")).display(),
            );
            std::fs::write(self.path(&format!("{name}.toml")), worker).unwrap();
        }
    }

    /// Starts `corral ARGS` as `name` on `host`; returns its pid.
    fn start(&mut self, name: &str, host: &str, args: &[&str]) -> u32 {
        let mut command = self.network.host(host).command(corral_binary());
        command.args(args);
        self.processes.start(name, command)
    }

    fn start_listening(&mut self, name: &str, config: &str, port: u16) {
        let config = self.path(config).display().to_string();
        let pid = self.start(name, name, &[name, "--config", &config]);
        self.processes
            .wait_until(name, || network::listens(pid, port));
    }

    /// Every daemon, each ready before the next starts.
    fn start_all() -> HostsFarm {
        let hosts: Vec<&str> = ["storage", "scheduler"]
            .iter()
            .chain(&WORKERS)
            .chain(&["client"])
            .copied()
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut farm = HostsFarm {
            processes: Processes::new(dir.path()),
            network: Network::new(&hosts),
            dir,
        };
        farm.write_pki();
        farm.write_configs();
        farm.start_listening("storage", "storage.toml", STORAGE_PORT);
        farm.start_listening("scheduler", "scheduler.toml", SCHEDULER_PORT);
        for name in WORKERS {
            let runner = format!("{name}-runner");
            let config = farm.path(&format!("{runner}.toml")).display().to_string();
            farm.start(&runner, name, &["runner", "--config", &config]);
            let socket = farm.path(&format!("{name}.sock"));
            farm.processes.wait_until(&runner, || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            });
            let config = farm.path(&format!("{name}.toml")).display().to_string();
            farm.start(name, name, &["worker", "--config", &config]);
        }
        for name in WORKERS {
            let log = farm.path(&format!("{name}.err"));
            farm.processes.wait_until(name, || {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("worker running"))
            });
        }
        farm
    }

    /// `GET https://ADDRESS:METRICS_PORT/metrics` on `host`, from the
    /// client host, showing Bazel's client certificate.
    fn metrics(&self, host: &str) -> String {
        let out = self
            .host("client")
            .command("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .arg("--cacert")
            .arg(self.path("ca.crt"))
            .arg("--cert")
            .arg(self.path("bazel-client.crt"))
            .arg("--key")
            .arg(self.path("bazel-client.key"))
            .arg(format!("{}/metrics", self.url(host, METRICS_PORT)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the metrics page of {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The runner (by name) whose process `pid` descends from, if any.
    fn runner_of(&self, pid: u32) -> Option<&'static str> {
        let mut pid = pid;
        // A chain of parents ends at pid 1 (or 0); bounded regardless.
        for _ in 0..64 {
            if let Some(worker) = WORKERS
                .iter()
                .find(|w| self.processes.pid(&format!("{w}-runner")) == Some(pid))
            {
                return Some(worker);
            }
            pid = parent(pid)?;
        }
        None
    }

    /// The workers whose runners run the slow genrule now.
    fn running_the_slow_genrule(&self) -> BTreeSet<&'static str> {
        processes_with(SLOW_MARKER)
            .into_iter()
            .filter_map(|pid| self.runner_of(pid))
            .collect()
    }
}

/// The parent of process `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    corral_e2e::processes::running()
        .into_iter()
        .filter(|p| p.command_line().contains(marker))
        .map(|p| p.pid)
        .collect()
}

/// The sum of the samples of `metric` on a Prometheus page.
fn sum_of(page: &str, metric: &str) -> f64 {
    page.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Bazel in a scratch copy of tests/bazel with its own output root, on
/// the client host.
struct Bazel {
    workspace: tempfile::TempDir,
    output_root: tempfile::TempDir,
}

impl Bazel {
    fn scratch() -> Bazel {
        Bazel {
            workspace: bazel::scratch_workspace(),
            output_root: tempfile::tempdir().unwrap(),
        }
    }

    /// `bazel build ARGS` executing remotely on `farm` only, over mTLS
    /// with the client's certificate.
    fn build(&self, farm: &HostsFarm, args: &[&str]) -> Command {
        let file = |name: &str| farm.path(name).display().to_string();
        let mut command = farm.host("client").command("bazel");
        command
            .arg("--batch")
            .arg(format!(
                "--output_user_root={}",
                self.output_root.path().display()
            ))
            .arg(bazel::tls_startup_option(self.output_root.path()))
            .arg("build")
            .arg(format!(
                "--remote_executor=grpcs://{}",
                farm.host("scheduler").at(SCHEDULER_PORT)
            ))
            .arg(format!(
                "--remote_cache=grpcs://{}",
                farm.host("storage").at(STORAGE_PORT)
            ))
            .arg(format!("--tls_certificate={}", file("ca.crt")))
            .arg(format!(
                "--tls_client_certificate={}",
                file("bazel-client.crt")
            ))
            .arg(format!("--tls_client_key={}", file("bazel-client.key")))
            .args([
                "--spawn_strategy=remote",
                "--remote_local_fallback=false",
                // The system bazelrc turns on --sandbox_debug; offline,
                // any download must fail at once instead of hanging.
                "--nosandbox_debug",
                "--experimental_repository_disable_download",
            ])
            .args(args)
            .current_dir(self.workspace.path());
        command
    }
}

#[test]
fn a_farm_across_hosts_over_tls_builds_green_when_a_worker_is_killed_mid_build() {
    let test = "a_farm_across_hosts_over_tls_builds_green_when_a_worker_is_killed_mid_build";
    if !corral_testkit::privileged(test) || !bazel::available(test) {
        return;
    }
    let missing = network::missing_tools(&["curl"]);
    if !missing.is_empty() {
        corral_testkit::skip(test, &format!("missing {}", missing.join(", ")));
        return;
    }
    let started = Instant::now();
    let mut farm = HostsFarm::start_all();
    let ready = started.elapsed();

    let bazel = Bazel::scratch();
    let build = bazel.build(
        &farm,
        &[
            // More than the workers' three slots: all of them get work.
            "--jobs=8",
            "//...",
            "//faults:slow",
        ],
    );
    // Among the farm's processes: stopped with them if the test fails.
    farm.processes.start("bazel", build);

    // The slow genrule runs on some worker's host: kill that worker one
    // second in, and watch where the genrule runs until Bazel ends.
    let deadline = Instant::now() + Duration::from_secs(300);
    let victim = loop {
        if let Some(worker) = farm.running_the_slow_genrule().into_iter().next() {
            break worker;
        }
        assert!(
            farm.processes.exited("bazel").is_none(),
            "Bazel ended before the slow genrule ran\n{}",
            farm.processes.logs()
        );
        assert!(
            Instant::now() < deadline,
            "the slow genrule never ran\n{}",
            farm.processes.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(1));
    farm.processes.kill(victim);
    let killed_at = Instant::now();
    let mut ran_on = BTreeSet::from([victim]);
    let status = loop {
        if let Some(status) = farm.processes.exited("bazel") {
            break status;
        }
        ran_on.extend(farm.running_the_slow_genrule());
        assert!(
            killed_at.elapsed() < Duration::from_secs(300),
            "Bazel did not finish\n{}",
            farm.processes.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = farm.processes.output("bazel");
    assert!(
        status.success(),
        "the build failed after {victim} was killed\n{}",
        farm.processes.logs()
    );
    assert!(
        ran_on.len() >= 2,
        "the slow genrule ran only on {ran_on:?}\n{}",
        farm.processes.logs()
    );
    assert!(
        farm.processes
            .log("scheduler")
            .contains("workers stopped synchronizing; their actions were queued again"),
        "{}",
        farm.processes.logs()
    );
    assert!(
        bazel::processes(&output, "remote") >= 7,
        "every action ran on the farm\n{output}"
    );
    let slow = read(&bazel.workspace.path().join("bazel-bin/faults/slow.txt"));
    assert_eq!(slow, "slow\n");
    let hello = Command::new(bazel.workspace.path().join("bazel-bin/hello"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout).trim(),
        "hello corral",
        "the binary linked on the farm runs here"
    );

    // The survivors' pages: the actions spread over the hosts.
    let mut executed = Vec::new();
    for worker in WORKERS.iter().filter(|w| **w != victim) {
        let page = farm.metrics(worker);
        executed.push((*worker, sum_of(&page, "corral_worker_actions_total")));
    }
    assert!(
        executed.iter().all(|(_, n)| *n >= 1.0),
        "each surviving worker executed actions: {executed:?}"
    );
    // Every action Bazel ran remotely was the scheduler's to complete,
    // the retried one once (the killed worker completed nothing of it).
    // The killed worker still counts among the scheduler's workers until
    // it has been silent longer than an idle worker's long poll.
    let scheduler = farm.metrics("scheduler");
    let remote = bazel::processes(&output, "remote");
    assert_eq!(
        sum_of(&scheduler, "corral_scheduler_results_total"),
        remote as f64,
        "{output}\n{scheduler}"
    );
    let by_survivors: f64 = executed.iter().map(|(_, n)| n).sum();
    assert!(
        by_survivors <= remote as f64,
        "{executed:?}, {remote} remote"
    );
    // An action cannot reach storage, which its worker's host reaches:
    // it has a network namespace of its own, with no route.
    let address = format!("--define=FARM_ADDRESS={}", farm.host("storage").address);
    let port = format!("--define=FARM_PORT={STORAGE_PORT}");
    let probe = bazel
        .build(&farm, &[&address, &port, "//probes:reach_address"])
        .output()
        .unwrap();
    let probe_output = corral_e2e::output_text(&probe);
    assert!(
        !probe.status.success(),
        "an action reached storage's host\n{probe_output}"
    );
    assert!(
        probe_output.contains("Network is unreachable"),
        "the connection failed for another reason than the sandbox\n{probe_output}"
    );

    eprintln!(
        "{test}: farm ready in {:.1} s, build and checks in {:.1} s; \
         slow genrule on {ran_on:?}, {victim} killed; actions per surviving worker {executed:?}",
        ready.as_secs_f64(),
        (started.elapsed() - ready).as_secs_f64(),
    );
}
