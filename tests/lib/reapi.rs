//! The tests' one REAPI client: digests, actions with an empty input root,
//! CAS uploads and reads, Execute and the wait for its response. It is
//! written against the protocol alone (not `corral-cas-client`), so a
//! farm's answers are checked by code the farm does not share.

use corral_proto::longrunning::{operation, Operation};
use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::command::EnvironmentVariable;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::execution_client::ExecutionClient;
use corral_proto::reapi::platform::Property;
use corral_proto::reapi::{
    batch_update_blobs_request, execution_stage, Action, ActionResult, BatchReadBlobsRequest,
    BatchUpdateBlobsRequest, Command, Digest, Directory, ExecuteOperationMetadata, ExecuteRequest,
    ExecuteResponse, GetActionResultRequest, Platform, WaitExecutionRequest,
};
use prost::Message;
use sha2::Digest as _;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::{Farm, SplitFarm};

/// The SHA-256 digest of `data`.
pub fn digest(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(sha2::Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// An action to upload: a command with an empty input root, its result
/// never cached unless [`cacheable`](Self::cacheable).
#[derive(Debug, Clone)]
pub struct NewAction {
    command: Command,
    action: Action,
}

impl NewAction {
    /// Runs `arguments` (no environment).
    pub fn new(arguments: &[&str]) -> NewAction {
        NewAction {
            command: Command {
                arguments: arguments.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            },
            action: Action {
                do_not_cache: true,
                ..Default::default()
            },
        }
    }

    /// Runs `script` with `/bin/sh -c`.
    pub fn sh(script: &str) -> NewAction {
        NewAction::new(&["/bin/sh", "-c", script])
    }

    /// Sets the environment variable `name` to `value`.
    pub fn env(mut self, name: &str, value: &str) -> NewAction {
        self.command
            .environment_variables
            .push(EnvironmentVariable {
                name: name.to_owned(),
                value: value.to_owned(),
            });
        self
    }

    /// Adds the platform property `name` = `value`.
    pub fn property(mut self, name: &str, value: &str) -> NewAction {
        self.action
            .platform
            .get_or_insert_with(Platform::default)
            .properties
            .push(Property {
                name: name.to_owned(),
                value: value.to_owned(),
            });
        self
    }

    /// Lets the farm cache the result (`do_not_cache` false).
    pub fn cacheable(mut self) -> NewAction {
        self.action.do_not_cache = false;
        self
    }

    /// The encoded Command, input root and Action, in that order.
    fn blobs(&self) -> [Vec<u8>; 3] {
        let command = self.command.encode_to_vec();
        let root = Directory::default().encode_to_vec();
        let action = Action {
            command_digest: Some(digest(&command)),
            input_root_digest: Some(digest(&root)),
            ..self.action.clone()
        }
        .encode_to_vec();
        [command, root, action]
    }
}

/// A REAPI client: CAS and Action Cache at storage, Execution at the
/// scheduler (one endpoint for `corral up`). Its channels connect on
/// first use and again after a server restarts.
#[derive(Debug, Clone)]
pub struct Client {
    storage: Channel,
    scheduler: Channel,
}

impl Client {
    /// A client of storage at `storage_url` and the scheduler at
    /// `scheduler_url` (`http://…`). Needs a tokio runtime.
    pub fn new(storage_url: &str, scheduler_url: &str) -> Client {
        let lazy = |url: &str| {
            Channel::from_shared(url.to_owned())
                .unwrap_or_else(|e| panic!("bad endpoint {url}: {e}"))
                .connect_lazy()
        };
        Client {
            storage: lazy(storage_url),
            scheduler: lazy(scheduler_url),
        }
    }

    /// A client of `corral up`.
    pub fn of(farm: &Farm) -> Client {
        let url = format!("http://127.0.0.1:{}", farm.port);
        Client::new(&url, &url)
    }

    /// A client of a farm of separate daemons.
    pub fn of_split(farm: &SplitFarm) -> Client {
        Client::new(&farm.storage_url(), &farm.scheduler_url())
    }

    /// Uploads `blobs` in one BatchUpdateBlobs; panics unless storage
    /// took each.
    pub async fn upload(&self, blobs: &[&[u8]]) {
        let requests = blobs
            .iter()
            .map(|data| batch_update_blobs_request::Request {
                digest: Some(digest(data)),
                data: data.to_vec(),
                ..Default::default()
            })
            .collect();
        let responses = ContentAddressableStorageClient::new(self.storage.clone())
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("BatchUpdateBlobs failed: {status:?}"))
            .into_inner()
            .responses;
        for response in responses {
            let code = response.status.map_or(0, |s| s.code);
            assert_eq!(code, 0, "uploading {:?}", response.digest);
        }
    }

    /// Uploads `action`'s blobs; returns the Action's digest.
    pub async fn upload_action(&self, action: &NewAction) -> Digest {
        let [command, root, action] = action.blobs();
        self.upload(&[&command, &root, &action]).await;
        digest(&action)
    }

    /// The blob `digest`, read with BatchReadBlobs.
    pub async fn read(&self, digest: &Digest) -> Vec<u8> {
        let mut response = ContentAddressableStorageClient::new(self.storage.clone())
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![digest.clone()],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("BatchReadBlobs failed: {status:?}"))
            .into_inner();
        let blob = response.responses.pop().expect("a response per digest");
        let code = blob.status.map_or(0, |s| s.code);
        assert_eq!(code, 0, "reading {digest:?}");
        blob.data
    }

    /// What the action of `response` printed on stdout: inline, from the
    /// CAS, or nothing.
    pub async fn stdout(&self, response: &ExecuteResponse) -> String {
        let Some(result) = &response.result else {
            return String::new();
        };
        let bytes = match &result.stdout_digest {
            Some(d) if result.stdout_raw.is_empty() => self.read(d).await,
            _ => result.stdout_raw.clone(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The Action Cache entry of `action`, if storage has one.
    pub async fn cached(&self, action: &Digest) -> Option<ActionResult> {
        ActionCacheClient::new(self.storage.clone())
            .get_action_result(GetActionResultRequest {
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// Execute, as asked: the operation's stream, or why the call failed.
    pub async fn execute(
        &self,
        request: impl tonic::IntoRequest<ExecuteRequest>,
    ) -> Result<Streaming<Operation>, Status> {
        ExecutionClient::new(self.scheduler.clone())
            .execute(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// WaitExecution of the operation `name`.
    pub async fn wait_execution(&self, name: &str) -> Result<Streaming<Operation>, Status> {
        ExecutionClient::new(self.scheduler.clone())
            .wait_execution(WaitExecutionRequest {
                name: name.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Starts executing `action`, the Action Cache not consulted; panics
    /// if the call fails.
    pub async fn start(&self, action: &Digest) -> Streaming<Operation> {
        self.execute(ExecuteRequest {
            action_digest: Some(action.clone()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("Execute failed: {status:?}"))
    }

    /// Executes `action` ([`start`](Self::start)) and waits for its
    /// response.
    pub async fn run(&self, action: &Digest) -> ExecuteResponse {
        until_done(&mut self.start(action).await).await
    }
}

/// The stage `operation`'s metadata reports.
pub fn stage(operation: &Operation) -> Option<execution_stage::Value> {
    let meta = ExecuteOperationMetadata::decode(operation.metadata.as_ref()?.value.as_slice());
    execution_stage::Value::try_from(meta.ok()?.stage).ok()
}

/// The response `operation` carries once done; `None` before. Panics on
/// an operation that failed, or is done without a response.
pub fn response(operation: &Operation) -> Option<ExecuteResponse> {
    match &operation.result {
        Some(operation::Result::Response(any)) => Some(
            ExecuteResponse::decode(any.value.as_slice())
                .unwrap_or_else(|e| panic!("an ExecuteResponse that does not decode: {e}")),
        ),
        Some(operation::Result::Error(status)) => panic!("the operation failed: {status:?}"),
        None if operation.done => panic!("a done operation without a response: {operation:?}"),
        None => None,
    }
}

/// Reads `stream` until its operation is done; its response. Panics if
/// the stream fails or ends first.
pub async fn until_done(stream: &mut Streaming<Operation>) -> ExecuteResponse {
    loop {
        let operation = stream
            .message()
            .await
            .unwrap_or_else(|status| panic!("the Execute stream failed: {status:?}"))
            .expect("the stream goes on until the action is done");
        if let Some(response) = response(&operation) {
            return response;
        }
    }
}
