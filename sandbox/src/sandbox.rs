//! The caller's side of a run: prepare, fork, write the id maps, supervise
//! (stdout, stderr, timeout), collect the outcome, clean up.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::access_report::{Groups, UndeclaredInputs, Watch};
use crate::cancellation::Cancellation;
use crate::cgroup::{Cgroup, CgroupRoot, CgroupUsage};
use crate::child::{self, Fds, Plan};
use crate::command::Command;
use crate::disk::{self, DiskLimit, DiskWatch, Excess};
use crate::error::Error;
use crate::ids::{HostIds, Mapping};
use crate::landlock::Rules;
use crate::mounts::MountPlan;
use crate::outcome::{Exit, Outcome, Usage};
use crate::policy::Policy;
use crate::privileges::last_capability;
use crate::report::{LandlockState, Record, RecordReader, Stage};
use crate::seccomp::Filters;
use crate::sys::{self, Fork};
use crate::watchdog::{self, Watchdog};

/// How long setup may take before the caller gives up on it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// After killing a timed-out action, how long to wait for its pipes to
/// close before giving up on the rest of its output.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Distinguishes the cgroups of concurrent runs in one process.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// A sandbox for one policy: build once, run many commands.
#[derive(Debug)]
pub struct Sandbox {
    policy: Policy,
    filters: Filters,
    mounts: MountPlan,
    cgroups: Option<CgroupRoot>,
    mapping: Mapping,
    host: HostIds,
    last_capability: u32,
    /// The caller has CAP_SETGID: the action's supplementary groups are
    /// dropped.
    drop_groups: bool,
    /// Removes this process's action cgroups if it dies mid-run.
    _watchdog: Option<Watchdog>,
    /// fanotify groups for the undeclared-input report, between runs.
    watch_groups: Groups,
    warnings: Vec<String>,
}

impl Sandbox {
    /// Prepares everything that does not depend on the command: the
    /// seccomp filters, the mount plan, the cgroup layout. Fails if the
    /// policy cannot be applied on this host.
    pub fn new(policy: Policy) -> Result<Sandbox, Error> {
        Sandbox::prepare(policy, false)
    }

    /// Like [`new`](Self::new), for a caller that runs one command (the
    /// `corral sandbox run` CLI): as root the cgroup tree is not probed
    /// (the run's own group fails the same way, closed).
    pub fn for_one_run(policy: Policy) -> Result<Sandbox, Error> {
        Sandbox::prepare(policy, true)
    }

    fn prepare(policy: Policy, one_run: bool) -> Result<Sandbox, Error> {
        let (euid, egid) = sys::effective_ids();
        let filters = Filters::build(&policy.seccomp)?;
        let mounts = MountPlan::new(
            &policy.filesystem.read_only_paths,
            policy.filesystem.tmp_size_bytes,
            !policy.network.allow_host_network,
        )?;
        let mut warnings = Vec::new();
        // As root: "nobody" unless the caller gives ids per run, which owns
        // no files, so the action can neither write nor chmod the worker's
        // cached input files it can read.
        let mapping = Mapping::detect();
        let host = mapping.default_ids();
        warnings.extend(mapping.warning());
        // Detect, then prove a group can really be made here: a parent that
        // exists but is not writable (made by root, used without root)
        // would otherwise fail every action.
        let probed = CgroupRoot::detect().and_then(|root| match root {
            Some(root) if one_run && euid == 0 => Ok(Some(root)),
            Some(root) => {
                let probe = format!(
                    "probe-{}-{}",
                    std::process::id(),
                    RUNS.fetch_add(1, Ordering::Relaxed)
                );
                root.create(&probe, &policy.limits)?.remove()?;
                Ok(Some(root))
            }
            None => Ok(None),
        });
        let cgroups = match probed {
            Ok(Some(root)) => Some(root),
            Ok(None) => {
                warnings.push(
                    "no usable cgroup memory controller: no memory, pids or cpu limits, and \
                     processes that escape the pid namespace's teardown are not tracked"
                        .to_owned(),
                );
                None
            }
            // Without root, a cgroup tree that is not delegated to us is
            // expected; as root it means a broken host, so fail closed.
            Err(e) if euid != 0 => {
                warnings.push(format!("cgroups not writable ({e}): no resource limits"));
                None
            }
            Err(e) => return Err(e.into()),
        };
        let drop_groups = euid == 0;
        if !drop_groups {
            match sys::supplementary_groups() {
                Ok(groups) if groups.iter().any(|&g| g != egid) => warnings.push(format!(
                    "not running as root: the supplementary groups {groups:?} cannot be \
                     dropped, and actions keep their access to files of those groups"
                )),
                Ok(_) => {}
                Err(e) => warnings.push(format!(
                    "could not list the supplementary groups ({e}); actions keep any the \
                     caller has"
                )),
            }
        }
        let watchdog = match &cgroups {
            Some(root) => Some(Watchdog::start(root).map_err(|source| Error::Spawn {
                step: "start the cgroup watchdog",
                source,
            })?),
            None => None,
        };
        Ok(Sandbox {
            policy,
            filters,
            mounts,
            cgroups,
            mapping,
            host,
            last_capability: last_capability(),
            drop_groups,
            _watchdog: watchdog,
            watch_groups: Groups::default(),
            warnings,
        })
    }

    /// How this sandbox maps actions to host ids (root, subordinate ids,
    /// or the caller's own).
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Protections this host could not provide, in words for operators.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The policy this sandbox applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs `command` to completion in a fresh sandbox.
    pub fn run(&self, command: &Command) -> Result<Outcome, Error> {
        self.run_cancellable(command, None)
    }

    /// Like [`run`](Self::run); once `cancel` is cancelled (before or
    /// during the run) the command is killed and the result is
    /// [`Error::Cancelled`].
    pub fn run_cancellable(
        &self,
        command: &Command,
        cancel: Option<&Cancellation>,
    ) -> Result<Outcome, Error> {
        self.run_as(command, cancel, self.host)
    }

    /// Like [`run_cancellable`](Self::run_cancellable), as `host` (e.g.
    /// the ids a runner leased for this run, see [`Mapping::per_run_ids`]):
    /// no other run may use them at the same time, or the two share
    /// per-user kernel counters.
    pub fn run_as(
        &self,
        command: &Command,
        cancel: Option<&Cancellation>,
        host: HostIds,
    ) -> Result<Outcome, Error> {
        self.run_in_image(command, cancel, host, None)
    }

    /// Like [`run_as`](Self::run_as), with the unpacked container image
    /// at `image` (a host directory) as the root file system in place of
    /// the policy's read-only host paths; every other protection as the
    /// policy says. The tree is bound read-only, nosuid and nodev; its
    /// owner should be an id the sandbox does not map (its files then
    /// appear as nobody's, and no setuid bit takes effect).
    pub fn run_in_image(
        &self,
        command: &Command,
        cancel: Option<&Cancellation>,
        host: HostIds,
        image: Option<&Path>,
    ) -> Result<Outcome, Error> {
        if cancel.is_some_and(Cancellation::is_cancelled) {
            return Err(Error::Cancelled);
        }
        command.validate()?;
        let start = Instant::now();
        let workdir = &self.policy.filesystem.working_directory;
        let mut mounts = self.mounts.with_input_root(&command.input_root, workdir)?;
        if let Some(image) = image {
            mounts = mounts.with_image(image, workdir)?;
        }
        let landlock = Rules::new(mounts.read_only_targets(), workdir);
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| crate::command::CommandError::Nul { what: "a path" })
        };
        let mut plan = Plan {
            cgroup_tasks: Vec::new(),
            namespaces: self.namespace_flags(),
            creator: self.mapping.creator(host),
            caller: std::process::id() as libc::pid_t,
            drop_groups: self.drop_groups,
            uid: self.policy.identity.uid,
            gid: self.policy.identity.gid,
            mounts,
            landlock,
            require_landlock: self.policy.confinement.require_landlock,
            filters: &self.filters,
            limits: self.policy.limits,
            last_capability: self.last_capability,
            cwd: cstring(workdir.join(&command.working_dir).as_os_str().as_bytes())?,
            argv: command
                .argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            env: command
                .env
                .iter()
                .map(|(k, v)| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    cstring(&kv)
                })
                .collect::<Result<_, _>>()?,
            search_path: child::search_path(&command.env),
        };
        let stdout = create_output("stdout", &command.stdout)?;
        let stderr = create_output("stderr", &command.stderr)?;
        // Before the action starts: where the file system can bound the
        // input root's sum itself, it does so from the first write.
        let disk_bound =
            disk::bound_by_kernel(&command.input_root, self.policy.limits.disk_max_bytes);

        let cgroup = match &self.cgroups {
            Some(root) => {
                // The watchdog finds a dead caller's groups by this prefix.
                let name = format!(
                    "{}{}",
                    watchdog::group_prefix(std::process::id()),
                    RUNS.fetch_add(1, Ordering::Relaxed)
                );
                Some(root.create(&name, &self.policy.limits)?)
            }
            None => None,
        };
        if let Some(group) = &cgroup {
            plan.cgroup_tasks = group.self_join_files();
        }
        let joins_cgroup_itself = !plan.cgroup_tasks.is_empty();
        let cgroup = CgroupGuard(cgroup);

        let pipe = |step| sys::pipe().map_err(|source| Error::Spawn { step, source });
        // The undeclared-input report: a fanotify group now, marks once
        // init has built the mounts (it waits on the watch pipe for them).
        let mut watch = self
            .policy
            .report
            .undeclared_inputs
            .then(|| Watch::new(&self.watch_groups));
        let watch_pipe = match &watch {
            Some(w) if w.is_watching() => Some(pipe("create the watch pipe")?),
            _ => None,
        };
        let (report_r, report_w) = pipe("create the report pipe")?;
        let (go_r, go_w) = pipe("create the start pipe")?;
        let (out_r, out_w) = pipe("create the stdout pipe")?;
        let (err_r, err_w) = pipe("create the stderr pipe")?;
        let fds = Fds {
            report: report_w.as_fd(),
            go: go_r.as_fd(),
            stdout: out_w.as_fd(),
            stderr: err_w.as_fd(),
            watch: watch_pipe.as_ref().map(|(r, _)| r.as_fd()),
        };
        let pid = match sys::fork().map_err(|source| Error::Spawn {
            step: "fork the sandbox",
            source,
        })? {
            Fork::Child => child::setup(&plan, &fds),
            Fork::Parent(pid) => pid,
        };
        drop(plan);
        drop((report_w, go_r, out_w, err_w));
        let watch_w = watch_pipe.map(|(r, w)| {
            drop(r);
            w
        });

        let mut run = Supervision {
            pid,
            cgroup: &cgroup,
            joins_cgroup_itself,
            reader: RecordReader::default(),
            exit: None,
            failure: None,
            landlock: LandlockState::NotEnforced,
            start,
            spawned: None,
            init: None,
            mounted: false,
        };
        let result = run
            .release(&report_r, go_w, &self.mapping, host, &self.policy)
            .and_then(|()| match (watch.as_mut(), watch_w) {
                (Some(watch), Some(watch_w)) => {
                    run.let_init_go_watched(&report_r, watch_w, watch, workdir)
                }
                _ => Ok(()),
            })
            .and_then(|()| {
                let disk = DiskWatch::new(
                    command.input_root.clone(),
                    host.uid,
                    DiskLimit {
                        bytes: self.policy.limits.disk_max_bytes,
                        entries: self.policy.limits.disk_max_entries,
                    },
                    pid,
                    start,
                );
                run.supervise(
                    report_r,
                    [(out_r, stdout, "stdout"), (err_r, stderr, "stderr")],
                    cancel,
                    command,
                    self.policy.limits.output_max_bytes,
                    disk,
                    start,
                    watch.as_mut(),
                )
            });
        if result.is_err() {
            run.kill();
        }
        let (_, _, rusage) = sys::wait4(pid).map_err(|source| Error::Spawn {
            step: "wait for the sandbox",
            source,
        })?;
        let streams = result.map_err(|e| match e {
            Error::Setup { stage, source } => setup_error(stage, source, command, host.uid),
            other => other,
        })?;
        let cgroup_usage = match &cgroup.0 {
            Some(group) => Some(group.usage()?),
            None => None,
        };
        if streams.cancelled {
            return Err(Error::Cancelled);
        }
        if let Some((stage, errno)) = run.failure {
            return Err(setup_error(
                stage,
                std::io::Error::from_raw_os_error(errno),
                command,
                host.uid,
            ));
        }
        // Every process of the action is gone (init's exit waited for
        // them): every open is queued.
        let undeclared_inputs = watch.map_or(UndeclaredInputs::Off, |w| {
            w.finish(std::process::id() as i32, &self.watch_groups)
        });
        let exit = match (run.exit, streams.timed_out || streams.disk_excess.is_some()) {
            (Some(exit), _) => exit,
            (None, true) => Exit::Signaled(libc::SIGKILL),
            (None, false) => return Err(Error::Lost),
        };
        Ok(Outcome {
            exit,
            timed_out: streams.timed_out,
            oom_killed: cgroup_usage.is_some_and(|u| u.oom_killed),
            disk_exceeded: streams.disk_excess.is_some(),
            disk_excess: streams.disk_excess,
            disk_bound,
            usage: usage(start.elapsed(), cgroup_usage, &rusage),
            stdout_truncated: streams.truncated[0],
            stderr_truncated: streams.truncated[1],
            landlock: run.landlock,
            spawn_time: run.spawned,
            undeclared_inputs,
        })
    }

    fn namespace_flags(&self) -> libc::c_int {
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if !self.policy.network.allow_host_network {
            flags |= libc::CLONE_NEWNET;
        }
        flags
    }
}

/// The error for a failed setup stage. The sandbox's uid failing to
/// enter the input root is the caller's to fix, so it names the path, the
/// host uid and the fix.
fn setup_error(stage: Stage, source: std::io::Error, command: &Command, host_uid: u32) -> Error {
    match stage {
        Stage::OpenInputRoot | Stage::Chdir if source.raw_os_error() == Some(libc::EACCES) => {
            Error::InputRootAccess {
                path: if stage == Stage::Chdir {
                    command.input_root.join(&command.working_dir)
                } else {
                    command.input_root.clone()
                },
                uid: host_uid,
                source,
            }
        }
        _ => Error::Setup { stage, source },
    }
}

fn create_output(stream: &'static str, path: &Path) -> Result<File, Error> {
    File::create(path).map_err(|source| Error::OpenOutput {
        stream,
        path: path.to_owned(),
        source,
    })
}

/// Removes the action's cgroup whatever happens to the run.
struct CgroupGuard(Option<Cgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            // Nothing useful to do on failure here: the group is empty or
            // killed; a leftover directory is reported by the next prepare.
            let _ = group.remove();
        }
    }
}

/// What supervising the streams found.
struct Streams {
    timed_out: bool,
    cancelled: bool,
    disk_excess: Option<Excess>,
    truncated: [bool; 2],
}

/// State of one run while the caller supervises it.
struct Supervision<'a> {
    pid: libc::pid_t,
    cgroup: &'a CgroupGuard,
    /// The setup process joins the cgroup itself before it makes the
    /// namespaces (v1); otherwise the caller moves it.
    joins_cgroup_itself: bool,
    reader: RecordReader,
    exit: Option<Exit>,
    failure: Option<(Stage, i32)>,
    landlock: LandlockState,
    /// When setup started, and how long after it the command was about
    /// to exec (landlock, the last step, reported): for spawn latency.
    start: Instant,
    spawned: Option<Duration>,
    /// Init's pid in the caller's namespace, and whether it has built the
    /// mounts (both only when the opens are watched).
    init: Option<libc::pid_t>,
    mounted: bool,
}

impl Supervision<'_> {
    fn note(&mut self, record: Record) {
        match record {
            Record::Unshared => {}
            Record::Failed { stage, errno } => {
                self.failure.get_or_insert((stage, errno));
            }
            Record::Exited(code) => self.exit = Some(Exit::Exited(code)),
            Record::Signaled(signal) => self.exit = Some(Exit::Signaled(signal)),
            Record::Landlock(state) => {
                self.landlock = state;
                self.spawned = Some(self.start.elapsed());
            }
            Record::InitStarted(pid) => self.init = Some(pid),
            Record::Mounted => self.mounted = true,
        }
    }

    /// Kills everything the run started.
    fn kill(&self) {
        if let Some(group) = &self.cgroup.0 {
            let _ = group.kill_all();
        }
        // The setup process's death takes init with it (PDEATHSIG), and
        // init's death tears down the whole pid namespace.
        let _ = sys::kill(self.pid, libc::SIGKILL);
    }

    /// Waits for the namespaces, writes the id maps, joins the cgroup and
    /// lets the setup process go on.
    fn release(
        &mut self,
        report: &OwnedFd,
        go: OwnedFd,
        mapping: &Mapping,
        host: HostIds,
        policy: &Policy,
    ) -> Result<(), Error> {
        self.read_report_until(
            report,
            (
                "wait for the sandbox's namespaces",
                "create the sandbox's namespaces in time",
            ),
            |_, records| records.contains(&Record::Unshared),
        )?;
        let inside = HostIds {
            uid: policy.identity.uid,
            gid: policy.identity.gid,
        };
        mapping.write_maps(self.pid, inside, host)?;
        if let Some(group) = self.cgroup.0.as_ref().filter(|_| !self.joins_cgroup_itself) {
            group.add_process(self.pid)?;
        }
        sys::write_all(go.as_fd(), &[1]).map_err(|source| Error::Spawn {
            step: "start the sandbox",
            source,
        })
    }

    /// Reads init's report, noting each record, until `reached` says so
    /// (given the records of the last read), within [`SETUP_TIMEOUT`].
    /// False if the report closed first; init's failure as its error.
    /// `steps` name the wait and its deadline in errors.
    fn read_report_until(
        &mut self,
        report: &OwnedFd,
        steps: (&'static str, &'static str),
        reached: impl Fn(&Self, &[Record]) -> bool,
    ) -> Result<bool, Error> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = [libc::pollfd {
                fd: report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ready = sys::poll(&mut pfd, left.as_millis().min(i32::MAX as u128) as i32)
                .map_err(|source| Error::Spawn {
                    step: steps.0,
                    source,
                })?;
            if ready == 0 {
                return Err(Error::Spawn {
                    step: steps.1,
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            let n = sys::read(report.as_fd(), &mut buf).map_err(|source| Error::Spawn {
                step: "read the sandbox's report",
                source,
            })?;
            if n == 0 {
                return Ok(false);
            }
            let records = self.reader.push(&buf[..n]);
            for record in &records {
                self.note(*record);
            }
            if let Some((stage, errno)) = self.failure {
                return Err(Error::Setup {
                    stage,
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
            if reached(self, &records) {
                return Ok(true);
            }
        }
    }

    /// Waits for init to build the mounts, marks them for the report, and
    /// lets init fork the action. A failure to mark is the report's to
    /// tell, never the action's.
    fn let_init_go_watched(
        &mut self,
        report: &OwnedFd,
        go: OwnedFd,
        watch: &mut Watch,
        working_directory: &Path,
    ) -> Result<(), Error> {
        let mounted = self.read_report_until(
            report,
            (
                "wait for the sandbox's mounts",
                "build the sandbox's mounts in time",
            ),
            |sandbox, _| sandbox.mounted,
        )?;
        if !mounted {
            // Everything is gone; supervise finds out why.
            return Ok(());
        }
        watch.mark(self.init, working_directory);
        sys::write_all(go.as_fd(), &[1]).map_err(|source| Error::Spawn {
            step: "start the action",
            source,
        })
    }

    /// Copies stdout and stderr to their files (up to the cap), reads
    /// reports, and enforces the timeout and the disk limit, until every
    /// pipe is closed.
    #[allow(clippy::too_many_arguments)]
    fn supervise(
        &mut self,
        report: OwnedFd,
        outputs: [(OwnedFd, File, &'static str); 2],
        cancel: Option<&Cancellation>,
        command: &Command,
        cap: u64,
        mut disk: DiskWatch,
        start: Instant,
        mut watch: Option<&mut Watch>,
    ) -> Result<Streams, Error> {
        let caller = std::process::id() as libc::pid_t;
        let mut deadline = command.timeout.map(|t| start + t);
        let mut timed_out = false;
        let mut cancelled = false;
        let mut disk_excess = None;
        let mut report = Some(report);
        let mut outs: Vec<Option<(OwnedFd, File, &'static str)>> =
            outputs.into_iter().map(Some).collect();
        let mut written = [0u64; 2];
        let mut truncated = [false; 2];
        let mut buf = vec![0u8; 64 * 1024];
        while report.is_some() || outs.iter().any(Option::is_some) {
            let now = Instant::now();
            // Watched until the action is being killed for any reason.
            let watching_disk = !(timed_out || cancelled || disk_excess.is_some());
            if let Some(excess) = watching_disk.then(|| disk.over_limit(now)).flatten() {
                disk_excess = Some(excess);
                self.kill();
                deadline = Some(now + KILL_GRACE);
                continue;
            }
            if let Some(d) = deadline {
                if now >= d {
                    if timed_out || cancelled || disk_excess.is_some() {
                        // Killed, yet something still holds a pipe open:
                        // stop waiting rather than hang the caller.
                        break;
                    }
                    timed_out = true;
                    self.kill();
                    deadline = Some(now + KILL_GRACE);
                    continue;
                }
            }
            let wake = match deadline {
                Some(d) if watching_disk => Some(d.min(disk.due())),
                Some(d) => Some(d),
                None => watching_disk.then(|| disk.due()),
            };
            let wait_ms = wake.map_or(-1, |d| {
                d.saturating_duration_since(now)
                    .as_millis()
                    .clamp(1, i32::MAX as u128) as i32
            });
            // The cancellation is watched until it fires, then left out:
            // it stays readable.
            let watched_cancel = cancel.filter(|_| !cancelled).map(Cancellation::raw_fd);
            let mut pfds: Vec<libc::pollfd> = report
                .iter()
                .map(|fd| fd.as_raw_fd())
                .chain(outs.iter().flatten().map(|(fd, _, _)| fd.as_raw_fd()))
                .chain(watched_cancel)
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            sys::poll(&mut pfds, wait_ms).map_err(|source| Error::Spawn {
                step: "wait for the command",
                source,
            })?;
            // Whatever woke us, empty the report's queue (see
            // Watch::read_events); a read of an empty one is one call.
            if let Some(watch) = watch.as_mut() {
                watch.read_events(caller);
            }
            for pfd in pfds.iter().filter(|p| p.revents != 0) {
                if Some(pfd.fd) == watched_cancel {
                    cancelled = true;
                    self.kill();
                    // As after a timeout: stop waiting for pipes that
                    // something still holds open.
                    deadline = Some(Instant::now() + KILL_GRACE);
                    continue;
                }
                if report.as_ref().is_some_and(|r| r.as_raw_fd() == pfd.fd) {
                    let fd = report.as_ref().expect("checked above");
                    let n = sys::read(fd.as_fd(), &mut buf).map_err(|source| Error::Spawn {
                        step: "read the sandbox's report",
                        source,
                    })?;
                    if n == 0 {
                        report = None;
                    } else {
                        for record in self.reader.push(&buf[..n]) {
                            self.note(record);
                        }
                    }
                    continue;
                }
                for (i, slot) in outs.iter_mut().enumerate() {
                    let Some((fd, file, stream)) = slot else {
                        continue;
                    };
                    if fd.as_raw_fd() != pfd.fd {
                        continue;
                    }
                    let n = sys::read(fd.as_fd(), &mut buf).map_err(|source| Error::Spawn {
                        step: "read the command's output",
                        source,
                    })?;
                    if n == 0 {
                        *slot = None;
                        break;
                    }
                    let room = cap.saturating_sub(written[i]).min(n as u64) as usize;
                    if room < n {
                        truncated[i] = true;
                    }
                    if room > 0 {
                        file.write_all(&buf[..room])
                            .map_err(|source| Error::WriteOutput {
                                stream,
                                path: if i == 0 {
                                    command.stdout.clone()
                                } else {
                                    command.stderr.clone()
                                },
                                source,
                            })?;
                        written[i] += room as u64;
                    }
                    break;
                }
            }
        }
        Ok(Streams {
            timed_out,
            cancelled,
            disk_excess,
            truncated,
        })
    }
}

fn timeval(tv: &libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

fn usage(wall: Duration, cgroup: Option<CgroupUsage>, ru: &libc::rusage) -> Usage {
    let (user, system, peak) = match cgroup {
        Some(c) => (
            c.user_time,
            c.system_time,
            c.memory_peak_bytes
                .unwrap_or(ru.ru_maxrss.max(0) as u64 * 1024),
        ),
        None => (
            timeval(&ru.ru_utime),
            timeval(&ru.ru_stime),
            ru.ru_maxrss.max(0) as u64 * 1024,
        ),
    };
    Usage {
        wall_time: wall,
        user_time: user,
        system_time: system,
        memory_peak_bytes: peak,
        page_reclaims: ru.ru_minflt,
        page_faults: ru.ru_majflt,
        block_input_operations: ru.ru_inblock,
        block_output_operations: ru.ru_oublock,
        voluntary_context_switches: ru.ru_nvcsw,
        involuntary_context_switches: ru.ru_nivcsw,
        io_read_bytes: cgroup.and_then(|c| c.io_read_bytes),
        io_write_bytes: cgroup.and_then(|c| c.io_write_bytes),
    }
}
