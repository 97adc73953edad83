//! The runner, reached over its Unix socket (`buildbarn.runner.Runner`).

use std::path::{Path, PathBuf};

use corral_proto::runner::runner_client::RunnerClient as Generated;
use corral_proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

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
        self.client
            .clone()
            .check_readiness(CheckReadinessRequest {
                path: String::new(),
            })
            .await
            .map(|_| ())
    }

    /// Runs one command; the runner's errors come back as its status.
    pub async fn run(&self, request: RunRequest) -> Result<RunResponse, tonic::Status> {
        self.client
            .clone()
            .run(request)
            .await
            .map(tonic::Response::into_inner)
    }
}
