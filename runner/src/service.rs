//! The `buildbarn.runner.Runner` service over the sandbox.

use corral_proto::status::error_chain;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_proto::any::Packable;
use corral_proto::protobuf::Empty;
use corral_proto::resourceusage::PosixResourceUsage;
use corral_proto::runner::runner_server::Runner;
use corral_proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use corral_proto::time::duration;
use corral_sandbox::command::stays_inside;
use corral_sandbox::{Cancellation, Command, Mapping, Outcome, Sandbox, Stage};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument, warn, Instrument};

use crate::action_ids::ActionIds;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::policies::Policies;
use crate::server_logs;

/// How long a successful readiness probe is trusted. Workers ask often;
/// a probe runs a whole sandbox.
const READINESS_TTL: Duration = Duration::from_secs(10);

/// The runner service: paths are resolved under `build_directory`.
pub struct RunnerService {
    build_directory: PathBuf,
    policies: Policies,
    mapping: Arc<Mapping>,
    ids: Arc<ActionIds>,
    last_ready: Mutex<Option<Instant>>,
    metrics: Metrics,
}

impl RunnerService {
    /// Runs requests under `build_directory` with `policies`, each as ids
    /// leased from `ids`, mapped the way `mapping` says.
    pub fn new(
        build_directory: PathBuf,
        policies: Policies,
        mapping: Mapping,
        ids: ActionIds,
    ) -> RunnerService {
        RunnerService {
            build_directory,
            policies,
            mapping: Arc::new(mapping),
            ids: Arc::new(ids),
            last_ready: Mutex::new(None),
            metrics: Metrics::default(),
        }
    }

    /// Records every run's outcome in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> RunnerService {
        self.metrics = metrics;
        self
    }

    /// `relative` under the build directory, refusing absolute paths and
    /// `..` so a request can never name a host path outside it, and a
    /// path naming the build directory itself (empty, `.`): as an input
    /// root it would hand every action's files to this one.
    fn resolve(&self, field: &'static str, relative: &str) -> Result<PathBuf, Error> {
        let path = Path::new(relative);
        let bad = |reason| Error::BadPath {
            field,
            path: relative.to_owned(),
            reason,
        };
        if relative.contains('\0') {
            return Err(bad("contains a NUL"));
        }
        if !stays_inside(path) {
            return Err(Error::PathEscapes {
                field,
                path: relative.to_owned(),
            });
        }
        if !path.components().any(|c| matches!(c, Component::Normal(_))) {
            return Err(bad(
                "names the build directory itself, not a path inside it",
            ));
        }
        Ok(self.build_directory.join(relative))
    }

    /// The sandbox and the command `req` asks for, checked as far as can
    /// be before anything is leased, handed over or run: a request the
    /// sandbox would refuse is refused here, as the caller's fault. Not
    /// whether the input root exists: a missing one is the farm's fault
    /// (the worker's and the runner's build directories differ), not the
    /// action's.
    fn checked(
        &self,
        req: &RunRequest,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Sandbox>, Command, Option<PathBuf>), Error> {
        let sandbox = self.policies.get(&req.corral_policy)?;
        let command = self.command(req, timeout)?;
        command
            .validate_fields()
            .map_err(|e| Error::Run(corral_sandbox::Error::Command(e)))?;
        let image = self.image_root(&req.corral_image_root_directory)?;
        Ok((sandbox, command, image))
    }

    /// The unpacked image the worker names, if any: a directory under the
    /// build directory (the worker's image store lives there), never a
    /// symlink out of it.
    fn image_root(&self, relative: &str) -> Result<Option<PathBuf>, Error> {
        if relative.is_empty() {
            return Ok(None);
        }
        let path = self.resolve("corral_image_root_directory", relative)?;
        match std::fs::symlink_metadata(&path) {
            // The sandbox takes the image's entries while it still has
            // the runner's privilege (MountPlan::take_image): the
            // directories above may be closed to the action's id.
            Ok(meta) if meta.is_dir() => Ok(Some(path)),
            Ok(_) => Err(Error::NoImageRoot {
                path,
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            }),
            Err(source) => Err(Error::NoImageRoot { path, source }),
        }
    }

    fn command(&self, req: &RunRequest, timeout: Option<Duration>) -> Result<Command, Error> {
        let working_dir = req.working_directory.as_str();
        if working_dir.contains('\0') {
            return Err(Error::BadPath {
                field: "working_directory",
                path: working_dir.to_owned(),
                reason: "contains a NUL",
            });
        }
        if !stays_inside(Path::new(working_dir)) {
            return Err(Error::PathEscapes {
                field: "working_directory",
                path: working_dir.to_owned(),
            });
        }
        Ok(Command {
            argv: req.arguments.iter().map(Into::into).collect(),
            env: req
                .environment_variables
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            input_root: self.resolve("input_root_directory", &req.input_root_directory)?,
            working_dir: working_dir.into(),
            stdout: self.resolve("stdout_path", &req.stdout_path)?,
            stderr: self.resolve("stderr_path", &req.stderr_path)?,
            timeout,
        })
    }
}

/// The gRPC status for a runner error, chosen where the error starts.
pub fn status(err: &Error) -> Status {
    use corral_sandbox::Error as Sandbox;
    let message = error_chain(err);
    match err {
        Error::PathEscapes { .. } | Error::BadPath { .. } | Error::UnknownPolicy { .. } => {
            Status::invalid_argument(message)
        }
        Error::TimedOut { .. } => Status::deadline_exceeded(message),
        Error::NoFreeIds { .. } => Status::unavailable(message),
        Error::DiskExceeded { .. } => Status::resource_exhausted(message),
        Error::Cancelled => Status::cancelled(message),
        Error::Run(Sandbox::Command(_)) => Status::invalid_argument(message),
        // The program is missing or not executable: the action's fault.
        Error::Run(Sandbox::Setup {
            stage: Stage::Exec, ..
        }) => Status::invalid_argument(message),
        Error::Run(Sandbox::LandlockRequired) => Status::failed_precondition(message),
        // The worker removed or never made the tree it named.
        Error::NoImageRoot { .. } => Status::failed_precondition(message),
        _ => Status::internal(message),
    }
}

/// Parses a `grpc-timeout` header value ("30S", "100m", ...).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Cancels its run when dropped.
struct CancelOnDrop(Cancellation);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The earlier of the action's own timeout and the call's deadline.
fn effective_timeout(req: &Request<RunRequest>) -> Option<Duration> {
    let own = req
        .get_ref()
        .corral_timeout
        .as_ref()
        .map(corral_proto::time::std_duration);
    let deadline = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout);
    match (own, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The outcome in Buildbarn's resource usage shape.
fn posix_usage(outcome: &Outcome) -> PosixResourceUsage {
    let u = &outcome.usage;
    PosixResourceUsage {
        user_time: Some(duration(u.user_time)),
        system_time: Some(duration(u.system_time)),
        maximum_resident_set_size: u.memory_peak_bytes as i64,
        page_reclaims: u.page_reclaims,
        page_faults: u.page_faults,
        swaps: 0,
        block_input_operations: u.block_input_operations,
        block_output_operations: u.block_output_operations,
        messages_sent: 0,
        messages_received: 0,
        signals_received: 0,
        voluntary_context_switches: u.voluntary_context_switches,
        involuntary_context_switches: u.involuntary_context_switches,
        termination_signal: outcome.signal_name().unwrap_or_default().to_owned(),
        corral_oom_killed: outcome.oom_killed,
    }
}

#[tonic::async_trait]
impl Runner for RunnerService {
    #[instrument(skip_all)]
    async fn check_readiness(
        &self,
        request: Request<CheckReadinessRequest>,
    ) -> Result<Response<Empty>, Status> {
        let path = &request.get_ref().path;
        if !path.is_empty() {
            let full = self.resolve("path", path).map_err(|e| status(&e))?;
            if !full.exists() {
                return Err(Status::failed_precondition(format!(
                    "{} does not exist in the runner's build directory {}",
                    path,
                    self.build_directory.display()
                )));
            }
        }
        let fresh = self
            .last_ready
            .lock()
            .map_err(|_| Status::internal("readiness state poisoned"))?
            .is_some_and(|at| at.elapsed() < READINESS_TTL);
        if !fresh {
            let sandbox = self.policies.default_sandbox();
            let probe = tokio::task::spawn_blocking(move || probe_sandbox(&sandbox))
                .await
                .map_err(|_| Status::internal("readiness probe panicked"))?;
            probe.map_err(|e| {
                Status::unavailable(format!("the sandbox cannot run here: {}", error_chain(&e)))
            })?;
            *self
                .last_ready
                .lock()
                .map_err(|_| Status::internal("readiness state poisoned"))? = Some(Instant::now());
        }
        Ok(Response::new(Empty {}))
    }

    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        let span = tracing::info_span!(
            "run",
            program = request.get_ref().arguments.first().map(String::as_str).unwrap_or_default(),
            policy = %request.get_ref().corral_policy,
        );
        // In the worker's trace when it sent one (gRPC metadata).
        corral_trace::continue_from_metadata(&span, request.metadata());
        self.run_in_span(request).instrument(span).await
    }
}

impl RunnerService {
    async fn run_in_span(
        &self,
        request: Request<RunRequest>,
    ) -> Result<Response<RunResponse>, Status> {
        let timeout = effective_timeout(&request);
        let req = request.into_inner();
        let (sandbox, command, image) = self.checked(&req, timeout).map_err(|e| status(&e))?;
        // Where the run's report goes; a request without one (none of
        // Buildbarn's or ours) gets none.
        let logs = (!req.server_logs_directory.is_empty())
            .then(|| self.resolve("server_logs_directory", &req.server_logs_directory))
            .transpose()
            .map_err(|e| status(&e))?;
        let policy_name = self.policies.name_of(&req.corral_policy).to_owned();
        let report_sandbox = Arc::clone(&sandbox);
        // The worker gave up on the action (cancelled, or gone) when this
        // call's future is dropped: the guard then kills the command.
        let cancel = Cancellation::new().map_err(|source| {
            status(&Error::Run(corral_sandbox::Error::Spawn {
                step: "create the run's cancellation",
                source,
            }))
        })?;
        let _kill_when_abandoned = CancelOnDrop(cancel.clone());
        let lease = self.ids.lease().map_err(|e| status(&e))?;
        let mapping = Arc::clone(&self.mapping);
        // The sandbox spawns and waits in one call: its span has the
        // moment the command was spawned as an event, and the spawn time.
        let sandbox_span = tracing::debug_span!(
            target: corral_trace::SPANS, "sandbox",
            spawn_ms = tracing::field::Empty,
            exit_code = tracing::field::Empty,
        );
        let started = std::time::SystemTime::now();
        let outcome = tokio::task::spawn_blocking(move || {
            // The directories become the run's (never world-writable), so
            // it can write outputs anywhere in its input root; files keep
            // their owner and mode: hardlinked inputs stay read-only.
            mapping
                .hand_over(&command.input_root, lease.ids)
                .map_err(Error::Ids)?;
            let ran = sandbox.run_in_image(&command, Some(&cancel), lease.ids, image.as_deref());
            // Whatever the outcome, the worker must be able to read and
            // remove what the action left.
            let reclaimed = mapping.reclaim(&command.input_root, lease.ids);
            // The ids go back only now: the run's processes are gone.
            drop(lease);
            let outcome = ran.map_err(Error::Run)?;
            reclaimed.map_err(Error::Ids)?;
            Ok(outcome)
        })
        .instrument(sandbox_span.clone())
        .await
        .map_err(|_| status(&Error::Cancelled))?
        .map_err(|e| status(&e))?;
        if let Some(spawn) = outcome.spawn_time {
            sandbox_span.record("spawn_ms", spawn.as_secs_f64() * 1000.0);
            corral_trace::event_at(&sandbox_span, "spawned", started + spawn);
        }
        sandbox_span.record("exit_code", outcome.exit_code());
        drop(sandbox_span);
        debug!(exit = ?outcome.exit, timed_out = outcome.timed_out, oom = outcome.oom_killed, disk_bound = ?outcome.disk_bound, "action ended");
        self.metrics.ran(&outcome);
        if let Some(logs) = logs {
            let report = server_logs::Report {
                policy_name: &policy_name,
                policy: report_sandbox.policy(),
                timeout,
                outcome: &outcome,
            };
            // The action's result stands without it.
            if let Err(err) = report.write(&logs) {
                warn!(dir = %logs.display(), error = %err, "could not write the run's report");
            }
        }
        if outcome.timed_out {
            let seconds = timeout.unwrap_or_default().as_secs_f64();
            return Err(status(&Error::TimedOut { seconds }));
        }
        if let Some(excess) = outcome.disk_excess.clone() {
            return Err(status(&Error::DiskExceeded { excess }));
        }
        Ok(Response::new(RunResponse {
            exit_code: i64::from(outcome.exit_code()),
            resource_usage: vec![posix_usage(&outcome).pack()],
        }))
    }
}

/// Runs `true` in a scratch input root: proves namespaces, mounts,
/// cgroups, landlock and seccomp all work on this host.
///
/// The runner is root: everything it makes on the host goes in a fresh
/// private directory (0700, a random name made with `mkdir`, which never
/// follows a symlink), so nothing planted at a guessable path in a shared
/// /tmp can redirect its writes.
fn probe_sandbox(sandbox: &corral_sandbox::Sandbox) -> Result<(), corral_sandbox::Error> {
    let spawn = |step, source| corral_sandbox::Error::Spawn { step, source };
    let scratch = tempfile::Builder::new()
        .prefix("corral-readiness-")
        .tempdir()
        .map_err(|e| spawn("create the readiness probe's private directory", e))?;
    // The action's uid needs only to enter its root, not to write it.
    let input_root = scratch.path().join("root");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&input_root)
        .map_err(|e| spawn("create the readiness probe's input root", e))?;
    for name in ["stdout", "stderr"] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(scratch.path().join(name))
            .map_err(|e| spawn("create the readiness probe's output files", e))?;
    }
    let command = Command {
        argv: vec!["true".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        input_root,
        working_dir: PathBuf::new(),
        stdout: scratch.path().join("stdout"),
        stderr: scratch.path().join("stderr"),
        timeout: Some(Duration::from_secs(30)),
    };
    match sandbox.run(&command) {
        Ok(outcome) if outcome.exit_code() == 0 => Ok(()),
        Ok(_) => Err(corral_sandbox::Error::Lost),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "service_crafted.rs"]
mod crafted;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("S"), None);
        assert_eq!(grpc_timeout("10x"), None);
        assert_eq!(grpc_timeout(""), None);
    }

    #[test]
    fn escaping_paths_are_invalid_arguments() {
        let policies = Policies::load(None, "default").unwrap();
        let mapping = Mapping::detect();
        let ids = ActionIds::new(&mapping, crate::config::ActionIdsConfig::default().range());
        let service = RunnerService::new(PathBuf::from("/build"), policies, mapping, ids);
        for bad in ["/etc", "../x", "a/../../b"] {
            let err = service.resolve("stdout_path", bad).unwrap_err();
            assert_eq!(status(&err).code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert_eq!(
            service.resolve("stdout_path", "1/stdout").unwrap(),
            PathBuf::from("/build/1/stdout")
        );
    }

    #[test]
    fn an_image_root_outside_the_build_directory_or_missing_is_refused() {
        let build = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::create_dir_all(build.path().join("images/ab/rootfs")).unwrap();
        // Closed to the actions' ids, as a 0700 data directory is: no
        // longer refused (the sandbox takes the image with the runner's
        // privilege; sandbox/tests/it/images.rs runs one from there).
        std::fs::set_permissions(build.path(), mode(0o700)).unwrap();
        std::fs::write(build.path().join("images/file"), "").unwrap();
        let policies = Policies::load(None, "default").unwrap();
        let mapping = Mapping::detect();
        let ids = ActionIds::new(&mapping, crate::config::ActionIdsConfig::default().range());
        let service = RunnerService::new(build.path().to_owned(), policies, mapping, ids);
        assert_eq!(service.image_root("").unwrap(), None);
        assert_eq!(
            service.image_root("images/ab/rootfs").unwrap(),
            Some(build.path().join("images/ab/rootfs"))
        );
        for (bad, code) in [
            ("../images/ab/rootfs", tonic::Code::InvalidArgument),
            ("/usr", tonic::Code::InvalidArgument),
            ("images/missing", tonic::Code::FailedPrecondition),
            ("images/file", tonic::Code::FailedPrecondition),
        ] {
            let err = service.image_root(bad).unwrap_err();
            assert_eq!(status(&err).code(), code, "{bad}: {err}");
        }
    }

    /// Found by service_crafted.rs: "" and "." resolved to the build
    /// directory itself, which `run` then handed over to the action's
    /// ids as its input root; a NUL failed later, as INTERNAL.
    #[test]
    fn the_build_directory_itself_and_nul_bytes_are_invalid_arguments() {
        let policies = Policies::load(None, "default").unwrap();
        let mapping = Mapping::detect();
        let ids = ActionIds::new(&mapping, crate::config::ActionIdsConfig::default().range());
        let service = RunnerService::new(PathBuf::from("/build"), policies, mapping, ids);
        for (bad, reason) in [
            ("", "names the build directory itself"),
            (".", "names the build directory itself"),
            ("./.", "names the build directory itself"),
            ("1/ro\0ot", "contains a NUL"),
        ] {
            let err = service.resolve("input_root_directory", bad).unwrap_err();
            let status = status(&err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(
                status.message().starts_with("input_root_directory")
                    && status.message().contains(reason),
                "{}",
                status.message()
            );
        }
        assert_eq!(
            service.resolve("input_root_directory", "./1/root").unwrap(),
            PathBuf::from("/build/./1/root")
        );
    }
}
