//! Test hosts on one machine: each a network namespace with its own
//! address on a bridge, and its own host name, so daemons started "on"
//! different hosts reach each other only over that bridge, as across
//! machines. The bridge lives in a namespace of its own (the switch): the
//! host's own network namespace is not touched, and no packet leaves the
//! machine.
//!
//! Needs root, `ip` (iproute2) and util-linux's `nsenter`, `unshare` and
//! `setpriv`. Everything made is removed on drop, also when the test
//! panics: [`Network`] deletes its namespaces, and
//! [`Processes`](crate::processes::Processes) stops the processes first
//! (field order in the caller decides: processes before the network). A test killed outright (SIGKILL) takes its processes
//! with it (their death signal) but leaves its namespaces; the next
//! [`Network::new`] deletes them. Names carry the test's pid, so
//! concurrent tests never share one.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The subnet of every test network: each lives in namespaces of its
/// own, so concurrent tests may all use it.
const SUBNET: [u8; 3] = [10, 88, 0];

/// How the namespaces' names start, before the test process's pid.
const PREFIX: &str = "corral-t";

/// Tells networks of one test process apart.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Programs a [`Network`] runs; a test without them should skip.
pub const TOOLS: [&str; 4] = ["ip", "nsenter", "unshare", "setpriv"];

/// Which of [`TOOLS`] (and `extra`) are not installed.
pub fn missing_tools(extra: &[&str]) -> Vec<String> {
    TOOLS
        .iter()
        .chain(extra)
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|tool| (*tool).to_owned())
        .collect()
}

/// One test host: a network namespace with one interface (`eth0`) on the
/// bridge, and `lo`.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its host name, also the last part of its namespace's name.
    pub name: String,
    pub address: Ipv4Addr,
    netns: String,
}

impl Host {
    /// A command that runs `program` on this host: in its network
    /// namespace, in a UTS namespace of its own whose host name is the
    /// host's (a worker names itself by it), and killed (SIGKILL) if the
    /// thread that spawned it dies without stopping it. Spawn it from the
    /// test's own thread: that signal follows the spawning thread, not
    /// the process.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "--",
                "unshare",
                "--uts",
                "--",
                "setpriv",
                "--pdeathsig",
                "KILL",
            ])
            .args(["--", "sh", "-c", r#"hostname "$0" && exec "$@""#])
            .arg(&self.name)
            .arg(program);
        command
    }

    /// `address:port`.
    pub fn at(&self, port: u16) -> String {
        format!("{}:{port}", self.address)
    }
}

/// Network namespaces on one bridge, deleted when dropped.
#[derive(Debug)]
pub struct Network {
    /// Prefix of every namespace's name: unique per process and network.
    prefix: String,
    /// The switch's namespace, once made.
    switch: Option<String>,
    hosts: Vec<Host>,
}

impl Network {
    /// The switch and one host per name, addressed 10.88.0.1, .2, … in
    /// order, every interface up.
    pub fn new(names: &[&str]) -> Network {
        remove_abandoned();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut network = Network {
            prefix,
            switch: None,
            hosts: Vec::new(),
        };
        let switch = format!("{}-switch", network.prefix);
        ip(&["netns", "add", &switch]);
        network.switch = Some(switch.clone());
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{}-{name}", network.prefix);
            let index = u8::try_from(i + 1).expect("at most 254 hosts");
            let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index);
            ip(&["netns", "add", &netns]);
            network.hosts.push(Host {
                name: (*name).to_owned(),
                address,
                netns: netns.clone(),
            });
            // Both ends made inside the namespaces: the names are the
            // namespaces' own, so concurrent tests cannot collide.
            let port = format!("port{index}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        network
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name:?}"))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A namespace goes when its last process and its name do; its
        // end of each veth pair with it, which takes the other end too.
        let names = self.hosts.iter().map(|h| h.netns.clone());
        for netns in names.chain(self.switch.take()) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &netns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes the namespaces of networks whose test process was killed
/// outright (SIGKILL runs no drop; its processes died with it, by their
/// death signal): those whose pid is gone and none of whose namespaces
/// holds a process. A network of a live test always holds one, or its
/// test's pid is alive, so it is left alone.
fn remove_abandoned() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let mut networks: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        if let (Some(pid), Some(n), Some(_)) = (parts.next(), parts.next(), parts.next()) {
            networks
                .entry(format!("{pid}-{n}"))
                .or_default()
                .push(name.clone());
        }
    }
    for (network, namespaces) in networks {
        let pid = network.split('-').next().unwrap_or_default();
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let holds_a_process = namespaces.iter().any(|netns| {
            Command::new("ip")
                .args(["netns", "pids", netns])
                .output()
                .map_or(true, |out| !out.stdout.is_empty())
        });
        if !holds_a_process {
            for netns in namespaces {
                let _ = Command::new("ip")
                    .args(["netns", "delete", &netns])
                    .status();
            }
        }
    }
}

/// Runs `ip ARGS`, panicking with its message when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the process `pid` has a TCP socket listening on `port` in its
/// network namespace (`/proc/PID/net/tcp` lists that namespace's).
pub fn listens(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let local = fields.next().unwrap_or_default();
        let state = fields.nth(1).unwrap_or_default();
        // 0A: TCP_LISTEN.
        local.ends_with(&port) && state == "0A"
    })
}
