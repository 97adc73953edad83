//! Runs one action: lays out its input root, asks the runner to run the
//! command, uploads the outputs, and answers with an `ExecuteResponse`.
//!
//! Failures are results: whatever goes wrong becomes the response's
//! status, so the scheduler can hand the client a precise answer instead
//! of losing the action. The build directory is removed in every case,
//! including when the slot abandons the action midway.

use corral_proto::status::error_chain;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corral_proto::protobuf::{Any, Timestamp};
use corral_proto::reapi::{
    digest_function, Action, ActionResult, Command, Digest, ExecuteResponse,
    ExecutedActionMetadata, LogFile, Platform,
};
use corral_proto::rpc;
use corral_proto::runner::RunRequest;
use corral_proto::time::now;
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::cas_client::{self, CasClient};
use crate::directory_cache::DirectoryCache;
use crate::file_cache::FileCache;
use crate::input_root;
use crate::metrics::Metrics;
use crate::outputs;
use crate::runner_client::RunnerClient;

/// The platform property naming the sandbox policy.
pub const POLICY_PROPERTY: &str = "corral-policy";

/// The platform property naming the action's container image, as Bazel's
/// remote execution properties name it.
pub const IMAGE_PROPERTY: &str = "container-image";

/// The value a worker that runs images offers for [`IMAGE_PROPERTY`]; the
/// scheduler matches the name by presence, so any value would do.
pub const ANY_IMAGE: &str = "*";

/// The server log naming the image an action ran in and its digest.
pub const IMAGE_LOG: &str = "container-image.txt";

/// Where an action is, reported to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Started,
    FetchingInputs,
    Running,
    UploadingOutputs,
}

/// What went wrong running an action; each becomes the response status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the action has no {field}")]
    Malformed { field: &'static str },
    #[error("digest function {0} is not supported (only SHA-256)")]
    DigestFunction(i32),
    #[error("failed to fetch the command")]
    FetchCommand(#[source] cas_client::Error),
    #[error("the command is not a valid Command message")]
    DecodeCommand(#[source] prost::DecodeError),
    #[error("failed to prepare the build directory {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to lay out the input root")]
    InputRoot(#[source] input_root::Error),
    #[error("failed to prepare or collect the outputs")]
    Outputs(#[source] outputs::Error),
    #[error("{}", runner_message(.0))]
    Runner(tonic::Status),
    /// The runner could not be reached or went away mid-run: the farm's
    /// failure, not the action's (see [`RunnerLost`]).
    #[error("the runner failed, not the action: {}", .0.message())]
    RunnerLost(tonic::Status),
    #[error("the action names container-image {image}, and this worker runs no images ([images] enabled = false)")]
    ImagesOff { image: String },
    #[error("failed to pull the action's image")]
    Image(#[source] corral_image::PullError),
    #[error("failed to upload the outputs")]
    Upload(#[source] cas_client::Error),
    #[error("a task of the worker failed")]
    Task(#[source] tokio::task::JoinError),
}

/// An action that ended without a result of its own: the runner was
/// unreachable, or died or restarted while the action ran. The slot gives
/// the action back to the scheduler, which runs it again (counting
/// against `max_retries`); the client never sees this.
#[derive(Debug, thiserror::Error)]
#[error("the runner failed, not the action: {}", .0.message())]
pub struct RunnerLost(pub tonic::Status);

/// Whether a runner's answer means the runner, not the action, failed:
/// UNAVAILABLE (no connection, or the runner has no free ids) and UNKNOWN
/// (what the client library makes of a connection that broke mid-call;
/// the runner itself never answers UNKNOWN). INTERNAL stays the action's
/// result: it is a sandbox failure the runner saw, which may well repeat.
pub fn runner_lost(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown
    )
}

/// One action handed out by the scheduler.
#[derive(Debug, Clone)]
pub struct Job {
    pub action_digest: Digest,
    pub action: Action,
    /// The full instance name: the worker's prefix and the action's suffix.
    pub instance_name: String,
    pub queued: Option<Timestamp>,
    pub digest_function: i32,
    /// A client asked for stdout (stderr) inline in the result.
    pub inline_stdout: bool,
    pub inline_stderr: bool,
    /// The scheduler's W3C trace context (`w3c_trace_context`): this
    /// run's spans join the action's trace. Empty: a trace of its own.
    pub trace_context: std::collections::BTreeMap<String, String>,
}

/// Runs actions for one slot.
pub struct Executor {
    /// `ExecutedActionMetadata.worker`.
    worker_name: String,
    /// `<directory>/build`; the runner resolves paths under it too.
    build_dir: PathBuf,
    /// Prefix of build directory names, unique among the worker's slots.
    slot: String,
    shared: Shared,
    runner: RunnerClient,
    next_id: AtomicU64,
}

/// What every slot of a worker shares.
#[derive(Clone)]
pub struct Shared {
    /// Unpacked container images; `None` when `[images]` is off.
    pub images: Option<corral_image::ImageStore>,
    pub cas: CasClient,
    pub cache: Arc<FileCache>,
    pub directories: Arc<DirectoryCache>,
    /// `input_root_max_entries`: most entries an input root expands to.
    pub input_root_max_entries: u64,
    /// The `[limits]` table: what an action's outputs may take.
    pub output_limits: crate::config::Limits,
    pub metrics: Arc<Metrics>,
}

/// The build directory of one action, removed on every path: by
/// [`remove`](Self::remove) when the action ends, and when dropped if the
/// slot abandons the action midway. remove_dir_all does not follow
/// symlinks, so links the action made are removed, not their targets.
struct BuildDirectory(PathBuf);

impl BuildDirectory {
    /// Removes it on a blocking thread (a large tree is many thousands of
    /// unlinks) and waits, so the next action starts on a clean disk.
    async fn remove(mut self) {
        let path = std::mem::take(&mut self.0);
        if let Err(error) = tokio::task::spawn_blocking(move || remove_tree(&path)).await {
            warn!(%error, "removing the build directory failed");
        }
    }
}

impl Drop for BuildDirectory {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        // Abandoned: nobody waits for the removal, so it need not block
        // the thread dropping the action.
        let path = std::mem::take(&mut self.0);
        crate::clean_up_detached(move || remove_tree(&path));
    }
}

fn remove_tree(path: &Path) {
    if let Err(error) = std::fs::remove_dir_all(path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), %error, "removing the build directory failed");
        }
    }
}

impl Executor {
    pub fn new(
        worker_name: String,
        build_dir: PathBuf,
        slot: String,
        shared: Shared,
        runner: RunnerClient,
    ) -> Executor {
        Executor {
            worker_name,
            build_dir,
            slot,
            shared,
            runner,
            next_id: AtomicU64::new(0),
        }
    }

    /// Runs `job`, reporting progress on `stage`. Every failure of the
    /// action is in the response; the error is only for [`RunnerLost`].
    pub async fn execute(
        &self,
        job: &Job,
        stage: &watch::Sender<Stage>,
    ) -> Result<ExecuteResponse, RunnerLost> {
        let span = tracing::info_span!(
            "execute",
            action = %format!("{}/{}", job.action_digest.hash, job.action_digest.size_bytes),
            instance = %job.instance_name,
        );
        corral_trace::continue_from(&span, &job.trace_context);
        self.execute_in_span(job, stage).instrument(span).await
    }

    async fn execute_in_span(
        &self,
        job: &Job,
        stage: &watch::Sender<Stage>,
    ) -> Result<ExecuteResponse, RunnerLost> {
        let _busy = self.shared.metrics.executing();
        let cas = self.shared.cas.with_instance(&job.instance_name);
        let mut meta = ExecutedActionMetadata {
            worker: self.worker_name.clone(),
            queued_timestamp: job.queued,
            worker_start_timestamp: Some(now()),
            ..Default::default()
        };
        let mut result = ActionResult::default();
        let mut server_logs = HashMap::new();
        let id = format!(
            "{}-{}",
            self.slot,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let outcome = {
            let dir = BuildDirectory(self.build_dir.join(&id));
            let outcome = self
                .steps(
                    job,
                    &cas,
                    &id,
                    &dir.0,
                    &mut result,
                    &mut server_logs,
                    &mut meta,
                    stage,
                )
                .await;
            dir.remove().await;
            outcome
        };
        let outcome = match outcome {
            Err(Error::RunnerLost(status)) => {
                warn!(
                    code = ?status.code(),
                    message = status.message(),
                    "the runner failed while the action ran; giving the action back"
                );
                return Err(RunnerLost(status));
            }
            outcome => outcome,
        };
        meta.worker_completed_timestamp = Some(now());
        let status = match &outcome {
            Ok(()) => None,
            Err(err) => {
                warn!(error = %error_chain(err), "action failed");
                Some(status(err))
            }
        };
        self.shared
            .metrics
            .finished(status.as_ref().map_or(0, |s| s.code), &meta);
        result.execution_metadata = Some(meta);
        if outcome.is_ok() && result.exit_code == 0 && !job.action.do_not_cache {
            // The client already gets the result from the response; a
            // failed cache write only costs a future cache miss.
            // Inlined output is for this response's clients; the cache
            // entry names it by digest, and storage inlines it for a later
            // client who asks.
            let entry = ActionResult {
                stdout_raw: Vec::new(),
                stderr_raw: Vec::new(),
                ..result.clone()
            };
            if let Err(err) = cas.update_action_result(&job.action_digest, entry).await {
                warn!(error = %error_chain(&err), "writing the action cache entry failed");
            }
        }
        info!(
            exit_code = result.exit_code,
            code = status.as_ref().map_or(0, |s| s.code),
            "action done"
        );
        Ok(ExecuteResponse {
            result: Some(result),
            status,
            server_logs,
            ..Default::default()
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn steps(
        &self,
        job: &Job,
        cas: &CasClient,
        id: &str,
        dir: &Path,
        result: &mut ActionResult,
        server_logs: &mut HashMap<String, LogFile>,
        meta: &mut ExecutedActionMetadata,
        stage: &watch::Sender<Stage>,
    ) -> Result<(), Error> {
        let action = &job.action;
        if job.digest_function != digest_function::Value::Unknown as i32
            && job.digest_function != digest_function::Value::Sha256 as i32
        {
            return Err(Error::DigestFunction(job.digest_function));
        }
        stage.send_replace(Stage::FetchingInputs);
        // Its child `layout` is the input root's layout (input_root.rs).
        let fetch_span = tracing::debug_span!(target: corral_trace::SPANS, "fetch_inputs");
        meta.input_fetch_start_timestamp = Some(now());
        let command_digest = action.command_digest.as_ref().ok_or(Error::Malformed {
            field: "command_digest",
        })?;
        let input_root_digest = action.input_root_digest.as_ref().ok_or(Error::Malformed {
            field: "input_root_digest",
        })?;
        let command = cas
            .read(command_digest)
            .instrument(fetch_span.clone())
            .await
            .map_err(Error::FetchCommand)?;
        let command = Command::decode(command.as_slice()).map_err(Error::DecodeCommand)?;
        let root = dir.join("root");
        for (sub, mode) in [("root", 0o755), ("tmp", 0o777), ("logs", 0o755)] {
            let path = dir.join(sub);
            let prepare = |source| Error::Prepare {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(&path).map_err(prepare)?;
            // tmp is written by the action's unprivileged uid.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(prepare)?;
        }
        // The image is pulled while the input root is laid out.
        let image = async {
            let Some(value) = property(action, &command, IMAGE_PROPERTY) else {
                return Ok(None);
            };
            let store = self
                .shared
                .images
                .as_ref()
                .ok_or_else(|| Error::ImagesOff {
                    image: value.clone(),
                })?;
            store.get(&value).await.map(Some).map_err(Error::Image)
        };
        let inputs = async {
            input_root::materialize(
                cas,
                &self.shared.cache,
                &self.shared.directories,
                input_root_digest,
                &root,
                self.shared.input_root_max_entries,
            )
            .instrument(fetch_span)
            .await
            .map_err(Error::InputRoot)
        };
        // Held until the run ends: an image in use is never evicted.
        let (image, ()) = tokio::try_join!(image, inputs)?;
        outputs::prepare(&root, &command).map_err(Error::Outputs)?;
        let image_root = match &image {
            Some(image) => {
                record_image(&dir.join("logs"), image);
                image
                    .root()
                    .strip_prefix(&self.build_dir)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }
            None => String::new(),
        };
        meta.input_fetch_completed_timestamp = Some(now());

        stage.send_replace(Stage::Running);
        let request = RunRequest {
            arguments: command.arguments.clone(),
            environment_variables: command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            working_directory: command.working_directory.clone(),
            stdout_path: format!("{id}/stdout"),
            stderr_path: format!("{id}/stderr"),
            input_root_directory: format!("{id}/root"),
            temporary_directory: format!("{id}/tmp"),
            server_logs_directory: format!("{id}/logs"),
            corral_policy: property(action, &command, POLICY_PROPERTY).unwrap_or_default(),
            corral_timeout: action.timeout,
            corral_image_root_directory: image_root,
        };
        meta.execution_start_timestamp = Some(now());
        let ran = match self
            .runner
            .run(request)
            .instrument(tracing::debug_span!(target: corral_trace::SPANS, "run"))
            .await
        {
            Err(status) if runner_lost(&status) => return Err(Error::RunnerLost(status)),
            ran => ran,
        };
        meta.execution_completed_timestamp = Some(now());

        stage.send_replace(Stage::UploadingOutputs);
        let upload_span = tracing::debug_span!(target: corral_trace::SPANS, "upload_outputs");
        meta.output_upload_start_timestamp = Some(now());
        let collect_outputs = match &ran {
            Ok(response) => {
                // The runner protocol carries an int64 (Buildbarn's);
                // REAPI's ActionResult an int32. No real exit code is
                // outside it; a runner that says so is clamped.
                result.exit_code =
                    i32::try_from(response.exit_code).unwrap_or(if response.exit_code < 0 {
                        i32::MIN
                    } else {
                        i32::MAX
                    });
                meta.auxiliary_metadata = response.resource_usage.clone();
                true
            }
            Err(_) => false,
        };
        // Walking and hashing outputs is thousands of syscalls and reads
        // of any size: a blocking thread's work.
        let gather = {
            let (dir, root, command) = (dir.to_owned(), root.clone(), command.clone());
            let inline = [job.inline_stdout, job.inline_stderr];
            let limits = self.shared.output_limits;
            let mut result = std::mem::take(result);
            move || {
                let limits = collect_outputs.then_some(limits);
                let mut gathered = gather(&dir, &root, &command, inline, limits, &mut result);
                let logs = read_server_logs(&dir.join("logs"), &mut gathered.0);
                (result, gathered, logs)
            }
        };
        let (gathered_result, gathered, logs) = tokio::task::spawn_blocking(gather)
            .instrument(upload_span.clone())
            .await
            .map_err(Error::Task)?;
        *result = gathered_result;
        *server_logs = logs;
        let (blobs, collected) = gathered;
        let uploaded = cas
            .upload(blobs)
            .instrument(upload_span)
            .await
            .map_err(Error::Upload);
        meta.output_upload_completed_timestamp = Some(now());
        ran.map_err(Error::Runner)?;
        collected.map_err(Error::Outputs)?;
        uploaded
    }
}

/// Reads the run's stdout and stderr into `result` (they are uploaded
/// whenever the runner made them, even if it failed), and its declared
/// outputs, held to `limits`, if given; returns the blobs to
/// upload and whether collecting the outputs worked. Blocking.
fn gather(
    dir: &Path,
    root: &Path,
    command: &Command,
    inline: [bool; 2],
    limits: Option<crate::config::Limits>,
    result: &mut ActionResult,
) -> (outputs::Blobs, Result<(), outputs::Error>) {
    let mut blobs = outputs::Blobs::new();
    let logs = [
        ("stdout", &mut result.stdout_digest, &mut result.stdout_raw),
        ("stderr", &mut result.stderr_digest, &mut result.stderr_raw),
    ];
    for ((name, digest_field, raw_field), inline) in logs.into_iter().zip(inline) {
        match outputs::log(&dir.join(name), inline) {
            Ok(Some((digest, blob, raw))) => {
                *digest_field = Some(digest.clone());
                *raw_field = raw;
                blobs.push((digest, blob));
            }
            Ok(None) => {}
            // The result goes on without it; the status says what failed.
            Err(error) => return (blobs, Err(error)),
        }
    }
    let collected = match limits {
        Some(limits) => {
            outputs::collect(root, command, &limits, result).map(|outputs| blobs.extend(outputs))
        }
        None => Ok(()),
    };
    (blobs, collected)
}

/// The most server log files taken from one run, and the largest: the
/// runner writes one small report; anything else there is not ours to
/// ship in bulk.
const SERVER_LOGS_MAX_FILES: usize = 16;
const SERVER_LOG_MAX_BYTES: u64 = 1 << 20;

/// The files the runner left in the run's server logs directory, as
/// `ExecuteResponse.server_logs` (name → digest), their blobs added to
/// `blobs`. A log that cannot be read is left out (and logged): the
/// action's result stands without it. Blocking.
fn read_server_logs(dir: &Path, blobs: &mut outputs::Blobs) -> HashMap<String, LogFile> {
    let mut logs = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return logs,
        Err(err) => {
            warn!(dir = %dir.display(), error = %err, "server logs unreadable");
            return logs;
        }
    };
    for entry in entries.flatten().take(SERVER_LOGS_MAX_FILES) {
        let (path, name) = (entry.path(), entry.file_name());
        let Some(name) = name.to_str() else { continue };
        match entry.metadata() {
            Ok(meta) if meta.is_file() && meta.len() <= SERVER_LOG_MAX_BYTES => {}
            _ => {
                warn!(path = %path.display(), "server log left out: not a regular file of at most 1 MiB");
                continue;
            }
        }
        match outputs::log(&path, false) {
            Ok(Some((digest, blob, _))) => {
                logs.insert(
                    name.to_owned(),
                    LogFile {
                        digest: Some(digest.clone()),
                        human_readable: name.ends_with(".txt"),
                    },
                );
                blobs.push((digest, blob));
            }
            Ok(None) => {}
            Err(err) => warn!(path = %path.display(), error = %err, "server log unreadable"),
        }
    }
    logs
}

/// The platform property `name` of the action, else of the command
/// (older clients put the platform only there).
fn property(action: &Action, command: &Command, name: &str) -> Option<String> {
    #[allow(deprecated)] // Command.platform: still sent by Bazel 4.
    let platforms: [Option<&Platform>; 2] = [action.platform.as_ref(), command.platform.as_ref()];
    platforms
        .into_iter()
        .flatten()
        .flat_map(|p| &p.properties)
        .find(|p| p.name == name)
        .map(|p| p.value.clone())
}

/// Leaves the image's name and the digest it resolved to in the run's
/// server logs (`container-image.txt`): which image ran is part of the
/// action's record, and a tag may point elsewhere tomorrow. Best effort:
/// the action stands without it.
fn record_image(logs: &Path, image: &corral_image::Image) {
    let text = format!(
        "container-image: {}\ndigest: {}\npulled: {}\n",
        image.reference,
        image.digest,
        if image.pulled { "yes" } else { "no, cached" }
    );
    if let Err(error) = std::fs::write(logs.join(IMAGE_LOG), text) {
        warn!(%error, "could not record the action's image");
    }
    tracing::debug!(image = %image.reference, digest = %image.digest, pulled = image.pulled, "image ready");
}

/// What the client reads when the runner answers with an error. A
/// timeout or a bad command is the action's own outcome, which the
/// runner's message says in full; anything else is the runner failing.
fn runner_message(status: &tonic::Status) -> String {
    use tonic::Code;
    match status.code() {
        Code::DeadlineExceeded
        | Code::InvalidArgument
        | Code::Cancelled
        | Code::ResourceExhausted => status.message().to_owned(),
        _ => format!("the runner failed: {}", status.message()),
    }
}

/// Whether a storage call in `err`'s causes failed because storage could
/// not be reached.
fn storage_unreachable(err: &Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return status.code() == tonic::Code::Unavailable;
        }
        source = cause.source();
    }
    false
}

/// The response status for a failed action, chosen where the error starts.
pub fn status(err: &Error) -> rpc::Status {
    use tonic::Code;
    let message = error_chain(err);
    let missing = match err {
        Error::FetchCommand(cas_client::Error::Missing { digest }) => Some(digest),
        Error::InputRoot(e) => e.missing_digest(),
        _ => None,
    };
    if let Some(digest) = missing {
        // One encoding of this status for the whole farm: proto's.
        let status =
            corral_proto::precondition::missing_blobs(&message, std::slice::from_ref(digest));
        if let Ok(decoded) = rpc::Status::decode(status.details()) {
            return decoded;
        }
    }
    let code = match err {
        // Storage went away mid-action: the farm's failure, not the
        // action's. UNAVAILABLE is what clients retry (Bazel executes
        // again), by when storage is back.
        Error::FetchCommand(_) | Error::InputRoot(_) | Error::Upload(_)
            if storage_unreachable(err) =>
        {
            Code::Unavailable
        }
        // The worker's own disk (its file cache, a build directory) is
        // full: the farm's transient state, not the action's fault.
        // UNAVAILABLE, REAPI's "transient condition, the client should
        // retry": Bazel retries it, and the cache has evicted what it
        // could, so the retry finds room. RESOURCE_EXHAUSTED stays the
        // action's own (its outputs past a limit), where retrying the same
        // action on any worker cannot help.
        Error::Prepare { source, .. }
        | Error::Outputs(outputs::Error::Prepare { source, .. })
            if crate::file_cache::is_disk_full(source) =>
        {
            Code::Unavailable
        }
        Error::InputRoot(e) if e.is_disk_full() => Code::Unavailable,
        // Storage's own verdict on the outputs (a full disk there is
        // RESOURCE_EXHAUSTED), passed on.
        Error::Upload(cas_client::Error::Write(status))
            if status.code() == Code::ResourceExhausted =>
        {
            Code::ResourceExhausted
        }
        Error::Malformed { .. } | Error::DigestFunction(_) | Error::DecodeCommand(_) => {
            Code::InvalidArgument
        }
        Error::InputRoot(
            input_root::Error::InvalidName { .. }
            | input_root::Error::DuplicateName { .. }
            | input_root::Error::InvalidSymlinkTarget { .. }
            | input_root::Error::DecodeDirectory { .. }
            | input_root::Error::NoDigest { .. }
            // The action's own tree: retrying it cannot help.
            | input_root::Error::TooManyEntries { .. }
            | input_root::Error::PathTooLong { .. }
            | input_root::Error::PathsTooLarge,
        ) => Code::InvalidArgument,
        Error::Outputs(outputs::Error::Refused { .. }) => Code::InvalidArgument,
        Error::ImagesOff { .. } => Code::FailedPrecondition,
        Error::Image(e) => match e.error.blame() {
            corral_image::Blame::Reference => Code::InvalidArgument,
            corral_image::Blame::Image => Code::FailedPrecondition,
            // The registry may be back for the retry.
            corral_image::Blame::Transient => Code::Unavailable,
            corral_image::Blame::Worker => Code::Internal,
        },
        Error::Outputs(outputs::Error::OverLimit { .. }) => Code::ResourceExhausted,
        Error::Runner(status) => match status.code() {
            Code::Ok | Code::Unknown => Code::Internal,
            code => code,
        },
        _ => Code::Internal,
    };
    rpc::Status {
        code: code as i32,
        message,
        details: Vec::<Any>::new(),
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::platform::Property;

    use super::*;
    use crate::cas_client::digest_of;

    #[test]
    fn the_action_platform_names_the_policy_first() {
        let platform = |v: &str| Platform {
            properties: vec![Property {
                name: POLICY_PROPERTY.into(),
                value: v.into(),
            }],
        };
        let mut action = Action::default();
        #[allow(deprecated)]
        let command = Command {
            platform: Some(platform("cmd")),
            ..Default::default()
        };
        assert_eq!(property(&action, &command, POLICY_PROPERTY).unwrap(), "cmd");
        action.platform = Some(platform("act"));
        assert_eq!(property(&action, &command, POLICY_PROPERTY).unwrap(), "act");
    }

    #[test]
    fn storage_out_of_reach_is_unavailable_and_a_refusal_is_not() {
        let upload = |status| Error::Upload(cas_client::Error::Write(status));
        let code = |err: &Error| status(err).code;
        let unavailable = upload(tonic::Status::unavailable("connection refused"));
        assert_eq!(code(&unavailable), tonic::Code::Unavailable as i32);
        let refused = upload(tonic::Status::permission_denied("no cas-write"));
        assert_eq!(code(&refused), tonic::Code::Internal as i32);
        let fetch = Error::FetchCommand(cas_client::Error::Read(tonic::Status::unavailable("")));
        assert_eq!(code(&fetch), tonic::Code::Unavailable as i32);
    }

    #[test]
    fn a_full_worker_disk_is_unavailable_and_a_full_storage_disk_resource_exhausted() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let cache_full =
            Error::InputRoot(input_root::Error::Files(crate::file_cache::Error::Full {
                dir: "/w/cache".into(),
                source: Box::new(crate::file_cache::Error::Write {
                    path: "/w/cache/tmp-1".into(),
                    source: enospc(),
                }),
            }));
        let full = status(&cache_full);
        assert_eq!(full.code, tonic::Code::Unavailable as i32);
        assert!(
            full.message
                .contains("the disk of the file cache /w/cache is full"),
            "{}",
            full.message
        );
        for own in [
            Error::InputRoot(input_root::Error::Create {
                path: "/w/build/s0-0/root/d".into(),
                source: enospc(),
            }),
            Error::Prepare {
                path: "/w/build/s0-0".into(),
                source: std::io::Error::from_raw_os_error(libc::EDQUOT),
            },
            Error::Outputs(outputs::Error::Prepare {
                path: "out/x".into(),
                source: enospc(),
            }),
        ] {
            assert_eq!(status(&own).code, tonic::Code::Unavailable as i32, "{own}");
        }
        let storage_full = Error::Upload(cas_client::Error::Write(
            tonic::Status::resource_exhausted("the disk of storage directory /s is full"),
        ));
        assert_eq!(
            status(&storage_full).code,
            tonic::Code::ResourceExhausted as i32
        );
        // Any other failure of the worker's is still INTERNAL.
        let denied = Error::Prepare {
            path: "/w/build/s0-0".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(status(&denied).code, tonic::Code::Internal as i32);
    }

    #[test]
    fn a_missing_input_is_a_precondition_failure_naming_it() {
        let digest = digest_of(b"x");
        let status = status(&Error::FetchCommand(cas_client::Error::Missing {
            digest: digest.clone(),
        }));
        assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
        assert_eq!(status.details.len(), 1);
        assert_eq!(
            status.details[0].type_url,
            corral_proto::precondition::PRECONDITION_FAILURE_TYPE_URL
        );
    }
}
