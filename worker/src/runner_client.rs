//! The runner, reached over its Unix socket (`buildbarn.runner.Runner`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_proto::runner::runner_client::RunnerClient as Generated;
use corral_proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for a readiness answer: the runner's own probe (a
/// sandbox running `true`) is bounded by 30 s.
const READINESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait between two attempts to reach a runner at start-up.
const START_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the worker cannot work with its runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to name the marker the runner is asked to find")]
    MarkerName(#[source] corral_proto::ids::RandomnessError),
    #[error("failed to write {path}, the marker the runner is asked to find")]
    WriteMarker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The runner resolves the paths of every run request under its own
    /// build directory: when that is not the worker's, every action fails.
    #[error(
        "the runner at {socket} does not share the worker's build directory {worker}: {runner} \
         (the runner's build directory must be the worker's `directory`/build)"
    )]
    BuildDirectoryMismatch {
        socket: PathBuf,
        worker: PathBuf,
        /// The runner's answer, which names its build directory.
        runner: String,
    },
}

/// A client of one runner. Connects lazily and reconnects by itself, so a
/// runner that restarts costs only the calls made while it was down.
#[derive(Clone)]
pub struct RunnerClient {
    client: Generated<Channel>,
    socket: PathBuf,
}

impl RunnerClient {
    pub fn new(socket: &Path) -> RunnerClient {
        let path = socket.to_owned();
        // The URI is required by tonic but unused: the connector below
        // decides where bytes go.
        let channel = Endpoint::from_static("http://runner").connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }),
        );
        RunnerClient {
            client: Generated::new(channel),
            socket: socket.to_owned(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the runner can run actions now.
    pub async fn check_readiness(&self) -> Result<(), tonic::Status> {
        self.check_path(String::new()).await
    }

    async fn check_path(&self, path: String) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let check = client.check_readiness(CheckReadinessRequest { path });
        // A runner that accepts but never answers is not ready either; a
        // slot waiting on it forever would never give back its action.
        match tokio::time::timeout(READINESS_TIMEOUT, check).await {
            Ok(answer) => answer.map(|_| ()),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "the runner did not answer its readiness check within {READINESS_TIMEOUT:?}"
            ))),
        }
    }

    /// Checks that the runner resolves paths under `build_dir`, the
    /// worker's build directory: writes a marker file there and asks the
    /// runner whether it sees it (`CheckReadinessRequest.path`). Waits,
    /// logging why, while the runner cannot be reached or its sandbox is
    /// not ready yet: runner and worker may start in any order.
    pub async fn check_build_directory(&self, build_dir: &Path) -> Result<(), Error> {
        // Unique per check (a random UUID: a pid repeats across
        // containers), so that two workers sharing a directory by mistake
        // cannot answer for each other.
        let name = format!(
            "corral-build-directory-check-{}",
            corral_proto::ids::uuid_v4().map_err(Error::MarkerName)?
        );
        let marker = build_dir.join(&name);
        std::fs::write(&marker, b"").map_err(|source| Error::WriteMarker {
            path: marker.clone(),
            source,
        })?;
        let mut backoff = Duration::from_millis(100);
        let checked = loop {
            match self.check_path(name.clone()).await {
                Ok(()) => break Ok(()),
                // The path is not there: FAILED_PRECONDITION from our
                // runner, NOT_FOUND from a stock bb_runner.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::NotFound
                    ) =>
                {
                    break Err(Error::BuildDirectoryMismatch {
                        socket: self.socket.clone(),
                        worker: build_dir.to_owned(),
                        runner: status.message().to_owned(),
                    })
                }
                Err(status) => {
                    tracing::warn!(
                        socket = %self.socket.display(),
                        code = ?status.code(),
                        message = status.message(),
                        "waiting for the runner to check the build directory"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(START_BACKOFF_MAX);
                }
            }
        };
        // Removed whatever the answer; a marker left behind is emptied
        // with the build directory at the next start.
        let _ = std::fs::remove_file(&marker);
        checked
    }

    /// Runs one command; the runner's errors come back as its status.
    pub async fn run(&self, request: RunRequest) -> Result<RunResponse, tonic::Status> {
        // The runner's spans join the current span's trace.
        let mut request = tonic::Request::new(request);
        corral_trace::inject_metadata(&tracing::Span::current(), request.metadata_mut());
        self.client
            .clone()
            .run(request)
            .await
            .map(tonic::Response::into_inner)
    }
}
