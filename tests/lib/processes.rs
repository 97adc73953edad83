//! Processes a test starts, each logging to files of its own in one
//! directory, stopped when dropped: also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Processes started by a test, each with its logs in a directory;
/// stopped with SIGINT (then SIGKILL past 20 s), last started first,
/// when dropped.
#[derive(Debug)]
pub struct Processes {
    dir: PathBuf,
    running: Vec<(String, Child)>,
    /// Every name started, in order, for the logs.
    names: Vec<String>,
}

impl Processes {
    /// Logs go to `<dir>/<name>.out` and `<dir>/<name>.err`.
    pub fn new(dir: &Path) -> Processes {
        Processes {
            dir: dir.to_owned(),
            running: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Spawns `command` as `name`; returns its pid.
    pub fn start(&mut self, name: &str, mut command: Command) -> u32 {
        let log = |stream: &str| {
            std::fs::File::create(self.dir.join(format!("{name}.{stream}"))).expect("create a log")
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let pid = child.id();
        self.running.push((name.to_owned(), child));
        self.names.push(name.to_owned());
        pid
    }

    /// The pid of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child.id())
    }

    /// Waits up to 60 s for `ready`, failing with every log if `name`
    /// exits first or the time runs out.
    pub fn wait_until(&mut self, name: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            let exited = self
                .running
                .iter_mut()
                .find(|(n, _)| n == name)
                .and_then(|(_, child)| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{name} exited ({status}) before it was ready\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not get ready\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `name`'s exit status once it has exited (it then no longer
    /// runs); `None` while it runs.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let at = self
            .running
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = self.running[at].1.try_wait().ok().flatten()?;
        self.running.remove(at);
        Some(status)
    }

    /// What `name` wrote to standard output and standard error.
    pub fn output(&self, name: &str) -> String {
        let read = |stream: &str| {
            std::fs::read_to_string(self.dir.join(format!("{name}.{stream}"))).unwrap_or_default()
        };
        format!("{}{}", read("out"), read("err"))
    }

    /// SIGKILL to `name`, reaped.
    pub fn kill(&mut self, name: &str) {
        let at = self
            .running
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let (_, mut child) = self.running.remove(at);
        child.kill().expect("SIGKILL a process");
        child.wait().expect("reap a process");
    }

    /// What `name` wrote to standard error.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.err"))).unwrap_or_default()
    }

    /// Every process's output so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in &self.names {
            for stream in ["out", "err"] {
                let path = self.dir.join(format!("{name}.{stream}"));
                let log = std::fs::read_to_string(path).unwrap_or_default();
                text.push_str(&format!("--- {name} std{stream}\n{log}"));
            }
        }
        text
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in self.running.iter_mut().rev() {
            interrupt(child);
        }
    }
}

/// A process running on this host, as /proc shows it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pid: u32,
    /// Its command line's arguments (none for a kernel thread).
    pub args: Vec<String>,
}

impl Seen {
    /// Its arguments joined by spaces.
    pub fn command_line(&self) -> String {
        self.args.join(" ")
    }
}

/// Every process running now; one that exits while /proc is read is
/// left out. The host sees the sandboxes' processes too.
pub fn running() -> Vec<Seen> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args = cmdline
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            Some(Seen { pid, args })
        })
        .collect()
}

/// Stops `child` as a service manager would: SIGINT, then SIGKILL if it
/// has not exited within 20 s. Its exit status; `None` if it could not
/// be reaped.
pub fn interrupt(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
