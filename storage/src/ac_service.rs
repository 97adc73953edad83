//! The `ActionCache` service: GetActionResult and UpdateActionResult.
//!
//! An entry is served only while it is complete: every blob it names
//! (output files, output directory trees and every file in them, stdout
//! and stderr) is still in the CAS. A client given a hit whose outputs
//! were evicted would fail its build when fetching them; told NOT_FOUND,
//! it simply runs the action again.
//!
//! Each instance name has its own entries (see [`cache_key`]): a client
//! of one instance can neither read nor overwrite another's results. The
//! CAS they refer to is shared (see `cas_service`), unless
//! `isolate_instances` is set: then an entry is complete only if its
//! outputs were written under its own instance name, so a hit never hands
//! out another tenant's blobs.

use std::sync::Arc;

use corral_auth::{Authorizer, Permission};
use corral_proto::reapi::action_cache_server::ActionCache as ActionCacheRpc;
use corral_proto::reapi::{ActionResult, GetActionResultRequest, Tree, UpdateActionResultRequest};
use prost::Message as _;
use tonic::{Code, Request, Response, Status};

use crate::action_cache::ActionCache;
use crate::blob_store::{self, BlobStore};
use crate::digest::{Digest, DigestError, DigestFunction};
use crate::isolated_blob_store::InstanceBlobs;
use crate::membership::Membership;
use crate::status;

/// What an Action Cache request can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest")]
    Digest(#[from] DigestError),
    #[error("request has no action_result")]
    MissingResult,
    #[error("action {action} is not in the action cache")]
    NotCached { action: Digest },
    #[error("action {action} is cached but {missing} of its outputs are no longer in the CAS")]
    Incomplete { action: Digest, missing: usize },
    #[error("stored result of {action} does not decode")]
    DecodeResult {
        action: Digest,
        #[source]
        source: prost::DecodeError,
    },
    #[error("storage failed for action {action}")]
    Store {
        action: Digest,
        #[source]
        source: blob_store::Error,
    },
}

/// The gRPC status for an Action Cache error.
pub fn status(err: &Error) -> Status {
    let code = match err {
        Error::Digest(_) | Error::MissingResult => Code::InvalidArgument,
        // An entry we cannot decode is as good as absent.
        Error::NotCached { .. } | Error::Incomplete { .. } | Error::DecodeResult { .. } => {
            Code::NotFound
        }
        Error::Store { source, .. } => status::store_code(source),
    };
    Status::new(code, status::message(err))
}

/// The Action Cache service over a cache and the CAS it refers to.
pub struct AcService {
    blobs: InstanceBlobs,
    cache: Arc<dyn ActionCache>,
    authorizer: Authorizer,
}

impl AcService {
    pub fn new(blobs: Arc<dyn BlobStore>, cache: Arc<dyn ActionCache>) -> Self {
        Self {
            blobs: InstanceBlobs::shared(blobs),
            cache,
            authorizer: Authorizer::open(),
        }
    }

    /// Checks completeness against the blobs of the entry's own instance
    /// name if `membership` is set (`isolate_instances`).
    pub fn with_membership(mut self, membership: Option<Membership>) -> Self {
        self.blobs = self.blobs.with_membership(membership);
        self
    }

    /// Checks every call's caller against `authorizer` (open by default).
    /// With grants, only callers granted `ac-write` (workers) write entries:
    /// a client that may write results can poison what every other client
    /// of the instance name gets.
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = authorizer;
        self
    }

    #[tracing::instrument(skip_all, fields(instance = %req.instance_name))]
    async fn get(&self, req: GetActionResultRequest) -> Result<ActionResult, Error> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let store_err = |source| Error::Store { action, source };
        let encoded = self
            .cache
            .get_action_result(&cache_key(&req.instance_name, action))
            .await
            .map_err(store_err)?
            .ok_or(Error::NotCached { action })?;
        let mut result = ActionResult::decode(encoded.as_slice())
            .map_err(|source| Error::DecodeResult { action, source })?;
        let blobs = self.blobs.for_instance(&req.instance_name);
        Self::check_complete(&*blobs, action, &result).await?;
        if req.inline_stdout {
            result.stdout_raw =
                Self::inline(&*blobs, function, result.stdout_digest.as_ref(), action).await?;
        }
        if req.inline_stderr {
            result.stderr_raw =
                Self::inline(&*blobs, function, result.stderr_digest.as_ref(), action).await?;
        }
        Ok(result)
    }

    /// Fails with NOT_FOUND unless every blob `result` names is present.
    /// Trees are fetched to check the files inside them, as a client
    /// fetching the outputs would.
    async fn check_complete(
        blobs: &dyn BlobStore,
        action: Digest,
        result: &ActionResult,
    ) -> Result<(), Error> {
        let function = action.function();
        let store_err = |source| Error::Store { action, source };
        // A stored entry naming an invalid or undecodable blob cannot be
        // fetched whole either.
        let incomplete = |_| Error::Incomplete { action, missing: 1 };
        let mut needed = referenced(function, result).map_err(incomplete)?;
        for output in &result.output_directories {
            let Some(tree) = &output.tree_digest else {
                continue;
            };
            let tree = Digest::from_proto(function, tree).map_err(incomplete)?;
            let Some(data) = blobs.get(&tree).await.map_err(store_err)? else {
                return Err(Error::Incomplete { action, missing: 1 });
            };
            let tree = Tree::decode(data.as_slice())
                .map_err(|_| Error::Incomplete { action, missing: 1 })?;
            for directory in tree.root.iter().chain(&tree.children) {
                for file in &directory.files {
                    needed.push(
                        Digest::from_field(function, file.digest.as_ref(), "digest")
                            .map_err(incomplete)?,
                    );
                }
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let missing = blobs.find_missing(&needed).await.map_err(store_err)?;
        if !missing.is_empty() {
            return Err(Error::Incomplete {
                action,
                missing: missing.len(),
            });
        }
        Ok(())
    }

    async fn inline(
        blobs: &dyn BlobStore,
        function: DigestFunction,
        digest: Option<&corral_proto::reapi::Digest>,
        action: Digest,
    ) -> Result<Vec<u8>, Error> {
        let Some(digest) = digest else {
            return Ok(Vec::new());
        };
        let digest = Digest::from_proto(function, digest)?;
        if digest.size_bytes() > corral_proto::MAX_INLINE_BYTES {
            return Ok(Vec::new());
        }
        // Checked present just before; evicted since, it is left out and
        // the client falls back to the digest.
        Ok(blobs
            .get(&digest)
            .await
            .map_err(|source| Error::Store { action, source })?
            .unwrap_or_default())
    }

    #[tracing::instrument(skip_all, fields(instance = %req.instance_name))]
    async fn update(&self, req: UpdateActionResultRequest) -> Result<ActionResult, Error> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let result = req.action_result.ok_or(Error::MissingResult)?;
        // Refuse now what could never be served complete later.
        referenced(function, &result)?;
        self.cache
            .put_action_result(
                &cache_key(&req.instance_name, action),
                result.encode_to_vec(),
            )
            .await
            .map_err(|source| Error::Store { action, source })?;
        // Touch every blob the entry names after the entry itself (a hit
        // does the same through check_complete): the LRU then always
        // holds them as newer than the entry, so eviction removes the
        // entry before any blob it needs. A blob already missing leaves
        // the entry stored but unserved, which the client survives.
        let blobs = self.blobs.for_instance(&req.instance_name);
        match Self::check_complete(&*blobs, action, &result).await {
            Ok(()) | Err(Error::Incomplete { .. }) => {}
            Err(err) => return Err(err),
        }
        Ok(result)
    }
}

/// Where the Action Cache keeps `action`'s entry for `instance`: the
/// action digest itself for the empty instance name, else a digest of
/// both. Instances are tenants: a client of one can neither read nor
/// overwrite another's results, even for the same action. (The CAS stays
/// shared: a blob is its own name, and reading one needs its hash.)
pub fn cache_key(instance: &str, action: Digest) -> Digest {
    if instance.is_empty() {
        return action;
    }
    let mut hasher = action.function().hasher();
    // Unambiguous: the label and the instance name end in NUL, which no
    // instance name holds, and the rest has a fixed length.
    hasher.update(b"corral action cache\0");
    hasher.update(instance.as_bytes());
    hasher.update(b"\0");
    hasher.update(action.hash());
    hasher.update(&action.size_bytes().to_le_bytes());
    hasher.finish_with_size(action.size_bytes())
}

/// The digests an ActionResult names directly (trees are opened by the
/// caller).
fn referenced(function: DigestFunction, result: &ActionResult) -> Result<Vec<Digest>, DigestError> {
    let mut digests = Vec::new();
    for file in &result.output_files {
        digests.push(Digest::from_field(
            function,
            file.digest.as_ref(),
            "output_files.digest",
        )?);
    }
    for directory in &result.output_directories {
        digests.push(Digest::from_field(
            function,
            directory.tree_digest.as_ref(),
            "output_directories.tree_digest",
        )?);
        if let Some(root) = &directory.root_directory_digest {
            digests.push(Digest::from_proto(function, root)?);
        }
    }
    for digest in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        digests.push(Digest::from_proto(function, digest)?);
    }
    Ok(digests)
}

#[tonic::async_trait]
impl ActionCacheRpc for AcService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        self.authorizer.check_request(
            &request,
            Permission::AcRead,
            &request.get_ref().instance_name,
        )?;
        self.get(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        self.authorizer.check_request(
            &request,
            Permission::AcWrite,
            &request.get_ref().instance_name,
        )?;
        self.update(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::{Directory, FileNode, OutputDirectory, OutputFile};

    use super::*;
    use crate::memory_blob_store::MemoryBlobStore;

    fn service() -> (AcService, MemoryBlobStore) {
        let store = MemoryBlobStore::new(1 << 20);
        let shared = Arc::new(store.clone());
        (AcService::new(shared.clone(), shared), store)
    }

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    async fn update(
        ac: &AcService,
        action: Digest,
        result: ActionResult,
    ) -> Result<ActionResult, Status> {
        update_in(ac, "main", action, result).await
    }

    async fn update_in(
        ac: &AcService,
        instance: &str,
        action: Digest,
        result: ActionResult,
    ) -> Result<ActionResult, Status> {
        ac.update_action_result(Request::new(UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            ..Default::default()
        }))
        .await
        .map(Response::into_inner)
    }

    async fn get(
        ac: &AcService,
        action: Digest,
        inline_stdout: bool,
    ) -> Result<ActionResult, Status> {
        get_in(ac, "main", action, inline_stdout).await
    }

    async fn get_in(
        ac: &AcService,
        instance: &str,
        action: Digest,
        inline_stdout: bool,
    ) -> Result<ActionResult, Status> {
        ac.get_action_result(Request::new(GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_proto()),
            inline_stdout,
            ..Default::default()
        }))
        .await
        .map(Response::into_inner)
    }

    #[tokio::test]
    async fn each_instance_name_has_its_own_entries() {
        let (ac, _) = service();
        let action = sha(b"the same action everywhere");
        let result = |exit_code| ActionResult {
            exit_code,
            ..Default::default()
        };
        update_in(&ac, "tenant-a", action, result(1)).await.unwrap();
        // Another tenant's write of the same action does not replace it.
        update_in(&ac, "tenant-b", action, result(2)).await.unwrap();
        let exit = |instance| {
            let ac = &ac;
            async move {
                get_in(ac, instance, action, false)
                    .await
                    .map(|r| r.exit_code)
                    .map_err(|s| s.code())
            }
        };
        assert_eq!(exit("tenant-a").await, Ok(1));
        assert_eq!(exit("tenant-b").await, Ok(2));
        for other in ["", "tenant-c", "tenant-a/x", "tenant"] {
            assert_eq!(exit(other).await, Err(Code::NotFound), "{other:?}");
        }
        // The empty instance keys by the action digest alone, as before.
        assert_eq!(cache_key("", action), action);
        assert_ne!(cache_key("a", action), cache_key("b", action));
    }

    #[tokio::test]
    async fn eviction_removes_an_entry_before_the_blobs_it_needs() {
        const BOUND: u64 = 10_000;
        let store = MemoryBlobStore::new(BOUND);
        let shared = Arc::new(store.clone());
        let ac = AcService::new(shared.clone(), shared);
        let output = vec![7u8; 3000];
        store.put(&sha(&output), output.clone()).await.unwrap();
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(sha(&output).to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let entry_bytes = result.encoded_len() as u64;
        let action = sha(b"the action");
        update(&ac, action, result).await.unwrap();
        // Fill to one byte over the bound: exactly one eviction is needed,
        // and the entry (oldest now) must be what goes, not its output.
        let mut used = 3000 + entry_bytes;
        for (i, size) in [3000u64, 3000].into_iter().enumerate() {
            store
                .put(
                    &sha(&vec![i as u8; size as usize]),
                    vec![i as u8; size as usize],
                )
                .await
                .unwrap();
            used += size;
        }
        let last = vec![9u8; (BOUND - used + 1) as usize];
        store.put(&sha(&last), last.clone()).await.unwrap();
        assert!(
            store.get(&sha(&output)).await.unwrap().is_some(),
            "the output was evicted while its entry was still stored"
        );
        assert_eq!(
            get(&ac, action, false).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    /// A result naming an output file, a tree (with one file in it) and
    /// stdout, and the blobs it names.
    fn result_and_blobs() -> (ActionResult, Vec<Vec<u8>>) {
        let inner_file = b"inside the tree".to_vec();
        let tree = Tree {
            root: Some(Directory {
                files: vec![FileNode {
                    name: "f".into(),
                    digest: Some(sha(&inner_file).to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            children: vec![],
        }
        .encode_to_vec();
        let output = b"output file".to_vec();
        let stdout = b"stdout text".to_vec();
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(sha(&output).to_proto()),
                ..Default::default()
            }],
            output_directories: vec![OutputDirectory {
                path: "dir".into(),
                tree_digest: Some(sha(&tree).to_proto()),
                ..Default::default()
            }],
            stdout_digest: Some(sha(&stdout).to_proto()),
            exit_code: 3,
            ..Default::default()
        };
        (result, vec![inner_file, tree, output, stdout])
    }

    #[tokio::test]
    async fn complete_entry_is_served_with_stdout_inlined_on_request() {
        let (ac, store) = service();
        let (result, blobs) = result_and_blobs();
        for blob in &blobs {
            store.put(&sha(blob), blob.clone()).await.unwrap();
        }
        let action = sha(b"action");
        assert_eq!(update(&ac, action, result.clone()).await.unwrap(), result);
        assert_eq!(get(&ac, action, false).await.unwrap(), result);
        assert_eq!(
            get(&ac, action, true).await.unwrap().stdout_raw,
            b"stdout text"
        );
    }

    #[tokio::test]
    async fn entry_is_not_served_once_any_output_is_gone() {
        let (result, blobs) = result_and_blobs();
        // Leave out each blob in turn, including the file inside the tree.
        for left_out in 0..blobs.len() {
            let (ac, store) = service();
            for (i, blob) in blobs.iter().enumerate() {
                if i != left_out {
                    store.put(&sha(blob), blob.clone()).await.unwrap();
                }
            }
            let action = sha(b"action");
            update(&ac, action, result.clone()).await.unwrap();
            let err = get(&ac, action, false).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "blob {left_out}: {err:?}");
            assert!(
                err.message().contains("no longer in the CAS"),
                "{}",
                err.message()
            );
        }
    }

    #[tokio::test]
    async fn missing_entry_is_not_found() {
        let (ac, _) = service();
        assert_eq!(
            get(&ac, sha(b"never"), false).await.unwrap_err().code(),
            Code::NotFound
        );
    }

    #[tokio::test]
    async fn invalid_updates_are_refused() {
        let (ac, _) = service();
        let err = ac
            .update_action_result(Request::new(UpdateActionResultRequest {
                action_digest: Some(sha(b"a").to_proto()),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let err = ac
            .get_action_result(Request::new(GetActionResultRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("action_digest"), "{}", err.message());

        let bad_output = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = update(&ac, sha(b"a"), bad_output).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn blake3_actions_are_kept_apart_from_sha256_ones() {
        let (ac, _) = service();
        let action = sha(b"action");
        update(&ac, action, ActionResult::default()).await.unwrap();
        let err = ac
            .get_action_result(Request::new(GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                digest_function: DigestFunction::Blake3.to_proto() as i32,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}
