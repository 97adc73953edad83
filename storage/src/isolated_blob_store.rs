//! `IsolatedBlobStore`: the shared CAS as one instance name sees it under
//! `isolate_instances`, and [`InstanceBlobs`], which hands each request the
//! store its instance name may see.
//!
//! A blob not written under the instance name is missing here, exactly as
//! if it were not stored (FindMissingBlobs reports it, reads give
//! NOT_FOUND): a different answer would be an oracle telling a tenant that
//! some other tenant holds a digest. Asking about a non-member never
//! reaches the store, so it does not refresh the other tenant's blob in
//! the eviction order either.
//!
//! Writes go to the shared store, which verifies them, and only once the
//! store has committed the whole verified content is the instance name
//! recorded as a member. The data is stored once whoever writes it.

use std::sync::Arc;

use crate::blob_store::{BlobStore, BlobStream, Error};
use crate::blob_write::BlobWrite;
use crate::digest::Digest;
use crate::membership::Membership;

/// The CAS the services read and write on behalf of instance names:
/// shared by all (the default), or isolated per instance name.
#[derive(Clone)]
pub struct InstanceBlobs {
    shared: Arc<dyn BlobStore>,
    membership: Option<Membership>,
}

impl InstanceBlobs {
    /// Every instance name sees every blob.
    pub fn shared(shared: Arc<dyn BlobStore>) -> Self {
        Self {
            shared,
            membership: None,
        }
    }

    /// Each instance name sees the blobs written under it, if `membership`
    /// is set; every blob otherwise.
    pub fn with_membership(mut self, membership: Option<Membership>) -> Self {
        self.membership = membership;
        self
    }

    /// The store `instance` may see.
    pub fn for_instance(&self, instance: &str) -> Arc<dyn BlobStore> {
        match &self.membership {
            None => Arc::clone(&self.shared),
            Some(membership) => Arc::new(IsolatedBlobStore::new(
                Arc::clone(&self.shared),
                membership.clone(),
                instance,
            )),
        }
    }
}

/// The shared store restricted to the blobs written under one instance name.
pub struct IsolatedBlobStore {
    shared: Arc<dyn BlobStore>,
    membership: Membership,
    instance: Arc<str>,
}

impl IsolatedBlobStore {
    pub fn new(shared: Arc<dyn BlobStore>, membership: Membership, instance: &str) -> Self {
        Self {
            shared,
            membership,
            instance: Arc::from(instance),
        }
    }

    fn member(&self, digest: &Digest) -> bool {
        self.membership.contains(&self.instance, digest)
    }
}

#[tonic::async_trait]
impl BlobStore for IsolatedBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let members = self.membership.members(&self.instance, digests);
        let asked: Vec<Digest> = digests
            .iter()
            .zip(&members)
            .filter(|(_, member)| **member)
            .map(|(d, _)| *d)
            .collect();
        // Members may have been evicted since they were written.
        let gone: std::collections::HashSet<Digest> = self
            .shared
            .find_missing(&asked)
            .await?
            .into_iter()
            .collect();
        Ok(digests
            .iter()
            .zip(&members)
            .filter(|(d, member)| !**member || gone.contains(d))
            .map(|(d, _)| *d)
            .collect())
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if !self.member(digest) {
            return Ok(None);
        }
        self.shared.get(digest).await
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error> {
        if !self.member(digest) {
            return Ok(None);
        }
        self.shared.read(digest, offset, limit).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        Ok(Box::new(IsolatedBlobWrite {
            write: self.shared.begin_write(digest).await?,
            membership: self.membership.clone(),
            instance: Arc::clone(&self.instance),
        }))
    }

    async fn put(&self, digest: &Digest, data: Vec<u8>) -> Result<(), Error> {
        // The store verifies `data` against `digest` before it commits.
        self.shared.put(digest, data).await?;
        self.membership.record(&self.instance, digest).await?;
        Ok(())
    }

    async fn put_many(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), Error>> {
        let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let mut results = self.shared.put_many(blobs).await;
        // Only what the store took (verified) makes this name a member.
        for (result, digest) in results.iter_mut().zip(&digests) {
            if result.is_ok() {
                if let Err(err) = self.membership.record(&self.instance, digest).await {
                    *result = Err(err.into());
                }
            }
        }
        results
    }

    async fn get_many(&self, digests: &[Digest]) -> Vec<Result<Option<Vec<u8>>, Error>> {
        let members = self.membership.members(&self.instance, digests);
        let asked: Vec<Digest> = digests
            .iter()
            .zip(&members)
            .filter(|(_, member)| **member)
            .map(|(d, _)| *d)
            .collect();
        let mut found = self.shared.get_many(&asked).await.into_iter();
        members
            .iter()
            .map(|member| match member {
                true => found.next().unwrap_or(Ok(None)),
                false => Ok(None),
            })
            .collect()
    }
}

/// A write that makes its instance name a member once it commits.
struct IsolatedBlobWrite {
    write: Box<dyn BlobWrite>,
    membership: Membership,
    instance: Arc<str>,
}

#[tonic::async_trait]
impl BlobWrite for IsolatedBlobWrite {
    fn digest(&self) -> &Digest {
        self.write.digest()
    }

    fn received(&self) -> u64 {
        self.write.received()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write.write(data).await
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let digest = *self.write.digest();
        // Checks size and hash: a short or wrong upload fails here and
        // records nothing.
        self.write.commit().await?;
        self.membership.record(&self.instance, &digest).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::memory_blob_store::MemoryBlobStore;

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    fn isolated(store: &MemoryBlobStore) -> InstanceBlobs {
        let holder = store.clone();
        InstanceBlobs::shared(Arc::new(store.clone())).with_membership(Some(Membership::in_memory(
            Arc::new(move |d| holder.holds(d)),
        )))
    }

    #[tokio::test]
    async fn a_blob_is_seen_only_under_the_instance_names_that_wrote_it() {
        let store = MemoryBlobStore::new(1 << 20);
        let blobs = isolated(&store);
        let (a, b) = (blobs.for_instance("a"), blobs.for_instance("b"));
        let d = sha(b"secret");
        a.put(&d, b"secret".to_vec()).await.unwrap();
        assert!(a.find_missing(&[d]).await.unwrap().is_empty());
        assert_eq!(b.find_missing(&[d]).await.unwrap(), [d]);
        assert_eq!(b.get(&d).await.unwrap(), None);
        assert!(b.read(&d, 0, None).await.unwrap().is_none());
        // Order is kept, and the empty blob is present for everyone.
        let empty = DigestFunction::Sha256.empty();
        let other = sha(b"other");
        assert_eq!(
            b.find_missing(&[other, d, empty]).await.unwrap(),
            [other, d]
        );
    }

    #[tokio::test]
    async fn only_a_verified_write_makes_a_member() {
        let store = MemoryBlobStore::new(1 << 20);
        let blobs = isolated(&store);
        let d = sha(b"secret");
        blobs
            .for_instance("a")
            .put(&d, b"secret".to_vec())
            .await
            .unwrap();
        let b = blobs.for_instance("b");
        // Short, then wrong content.
        let mut write = b.begin_write(&d).await.unwrap();
        write.write(b"sec").await.unwrap();
        assert!(write.commit().await.is_err());
        assert!(b.put(&d, b"s3cret".to_vec()).await.is_err());
        assert_eq!(b.find_missing(&[d]).await.unwrap(), [d]);
        // The whole content.
        let mut write = b.begin_write(&d).await.unwrap();
        write.write(b"secret").await.unwrap();
        write.commit().await.unwrap();
        assert_eq!(b.get(&d).await.unwrap(), Some(b"secret".to_vec()));
        assert_eq!(store.total_bytes(), 6);
    }

    #[tokio::test]
    async fn an_evicted_member_is_missing() {
        let store = MemoryBlobStore::new(10);
        let blobs = isolated(&store);
        let a = blobs.for_instance("a");
        let (x, y) = (sha(b"xxxxxxxx"), sha(b"yyyyyyyy"));
        a.put(&x, b"xxxxxxxx".to_vec()).await.unwrap();
        a.put(&y, b"yyyyyyyy".to_vec()).await.unwrap();
        assert_eq!(a.find_missing(&[x, y]).await.unwrap(), [x]);
    }
}

/// The services with `isolate_instances`: what tenant B can learn of the
/// blobs tenant A wrote, by every route a client has.
#[cfg(test)]
mod service_tests {
    use corral_auth::Caller;
    use corral_proto::bytestream::byte_stream_server::ByteStream as _;
    use corral_proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
    use corral_proto::reapi::action_cache_server::ActionCache as _;
    use corral_proto::reapi::content_addressable_storage_server::ContentAddressableStorage as _;
    use corral_proto::reapi::{
        batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
        Directory, DirectoryNode, FindMissingBlobsRequest, GetActionResultRequest, GetTreeRequest,
        OutputFile, UpdateActionResultRequest,
    };
    use futures_util::{stream, TryStreamExt as _};
    use prost::Message as _;
    use tonic::{Code, Request, Status};

    use crate::ac_service::AcService;
    use crate::bytestream_service::{self, ByteStreamService};
    use crate::cas_service::CasService;
    use crate::config::{Backend, Config};
    use crate::digest::{Digest, DigestFunction};
    use crate::Stores;

    struct Services {
        stores: Stores,
        cas: CasService,
        ac: AcService,
        bytestream: ByteStreamService,
    }

    fn config(backend: Backend, isolate_instances: bool) -> Config {
        Config {
            backend,
            isolate_instances,
            ..Config::default()
        }
    }

    fn memory() -> Backend {
        Backend::Memory {
            max_size_bytes: 16 << 20,
        }
    }

    fn disk(dir: &std::path::Path) -> Backend {
        Backend::Disk {
            dir: dir.to_owned(),
            max_size_bytes: 16 << 20,
            fsync: false,
        }
    }

    /// The services as `routes` wires them.
    async fn services(cfg: &Config) -> Services {
        cfg.validate().unwrap();
        let stores = crate::open(cfg).await.unwrap();
        let cas = CasService::new(stores.blobs.clone(), cfg.max_batch_total_size_bytes)
            .with_membership(stores.membership.clone());
        let ac = AcService::new(stores.blobs.clone(), stores.action_cache.clone())
            .with_membership(stores.membership.clone());
        let bytestream =
            ByteStreamService::new(stores.blobs.clone()).with_membership(stores.membership.clone());
        Services {
            stores,
            cas,
            ac,
            bytestream,
        }
    }

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    impl Services {
        async fn put(&self, instance: &str, data: &[u8]) -> Digest {
            let d = sha(data);
            let resp = self
                .cas
                .batch_update_blobs(Request::new(BatchUpdateBlobsRequest {
                    instance_name: instance.into(),
                    requests: vec![batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data: data.to_vec(),
                        compressor: 0,
                    }],
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
            d
        }

        async fn missing(&self, instance: &str, digests: &[Digest]) -> Vec<Digest> {
            self.cas
                .find_missing_blobs(Request::new(FindMissingBlobsRequest {
                    instance_name: instance.into(),
                    blob_digests: digests.iter().map(Digest::to_proto).collect(),
                    digest_function: 0,
                }))
                .await
                .unwrap()
                .into_inner()
                .missing_blob_digests
                .iter()
                .map(|d| Digest::from_proto(DigestFunction::Sha256, d).unwrap())
                .collect()
        }

        /// The batch read's status for one blob, with its message.
        async fn batch_read(&self, instance: &str, d: &Digest) -> (Code, String, Vec<u8>) {
            let resp = self
                .cas
                .batch_read_blobs(Request::new(BatchReadBlobsRequest {
                    instance_name: instance.into(),
                    digests: vec![d.to_proto()],
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            let r = &resp.responses[0];
            let status = r.status.as_ref().unwrap();
            (
                Code::from(status.code),
                status.message.clone(),
                r.data.clone(),
            )
        }

        async fn stream_read(&self, instance: &str, d: &Digest) -> Result<Vec<u8>, Status> {
            let chunks: Vec<_> = self
                .bytestream
                .read(Request::new(ReadRequest {
                    resource_name: format!("{instance}/blobs/{}/{}", d.hash_hex(), d.size_bytes()),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .try_collect()
                .await?;
            Ok(chunks.into_iter().flat_map(|c| c.data).collect())
        }

        async fn tree(&self, instance: &str, root: &Digest) -> Result<Vec<Directory>, Status> {
            let pages: Vec<_> = self
                .cas
                .get_tree(Request::new(GetTreeRequest {
                    instance_name: instance.into(),
                    root_digest: Some(root.to_proto()),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .try_collect()
                .await?;
            Ok(pages.into_iter().flat_map(|p| p.directories).collect())
        }

        /// A ByteStream write of `data` claimed as `d`, sent in one
        /// message, finished or not.
        async fn stream_write(
            &self,
            instance: &str,
            d: &Digest,
            data: &[u8],
            finish: bool,
        ) -> Result<i64, bytestream_service::Error> {
            let request = WriteRequest {
                resource_name: upload_name(instance, d),
                write_offset: 0,
                finish_write: finish,
                data: data.to_vec(),
            };
            self.bytestream
                .write_blob(&Caller::anonymous(), stream::iter([Ok(request)]))
                .await
                .map(|r| r.committed_size)
        }
    }

    fn upload_name(instance: &str, d: &Digest) -> String {
        format!(
            "{instance}/uploads/7/blobs/{}/{}",
            d.hash_hex(),
            d.size_bytes()
        )
    }

    #[tokio::test]
    async fn tenant_b_cannot_find_or_read_tenant_as_blob_by_digest() {
        let s = services(&config(memory(), true)).await;
        let secret = s.put("team-a", b"api_key = 1234").await;
        let absent = sha(b"never stored");
        assert!(s.missing("team-a", &[secret]).await.is_empty());
        assert_eq!(
            s.missing("team-b", &[secret, absent]).await,
            [secret, absent]
        );
        assert_eq!(s.missing("", &[secret]).await, [secret]);

        // Batch read: the same answer as for a blob nobody stored.
        let (code, message, data) = s.batch_read("team-b", &secret).await;
        assert_eq!(code, Code::NotFound);
        assert!(data.is_empty());
        let (absent_code, absent_message, _) = s.batch_read("team-b", &absent).await;
        assert_eq!(absent_code, code);
        let name = |d: &Digest| format!("{}/{}", d.hash_hex(), d.size_bytes());
        assert_eq!(
            absent_message.replace(&name(&absent), "D"),
            message.replace(&name(&secret), "D")
        );
        assert_eq!(s.batch_read("team-a", &secret).await.2, b"api_key = 1234");

        // ByteStream read.
        let err = s.stream_read("team-b", &secret).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            s.stream_read("team-a", &secret).await.unwrap(),
            b"api_key = 1234"
        );

        // GetTree: neither the root nor a subdirectory of another tenant.
        // Not empty: the empty blob is everyone's.
        let child = Directory {
            files: vec![corral_proto::reapi::FileNode {
                name: "secret.txt".into(),
                digest: Some(secret.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let child = s.put("team-a", &child).await;
        let root = Directory {
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: Some(child.to_proto()),
            }],
            ..Default::default()
        };
        let root = s.put("team-a", &root.encode_to_vec()).await;
        assert_eq!(s.tree("team-a", &root).await.unwrap().len(), 2);
        let err = s.tree("team-b", &root).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        // B writes the root only: A's subdirectory stays out of B's tree.
        let root_bytes = s.stores.blobs.get(&root).await.unwrap().unwrap();
        s.put("team-b", &root_bytes).await;
        assert_eq!(s.tree("team-b", &root).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn claiming_a_digest_by_bytestream_grants_nothing_but_the_content_does() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(&config(disk(dir.path()), true)).await;
        let data = crate::blob_store::conformance::blob(3, 200_000);
        let d = s.put("team-a", &data).await;

        // Not present for B: a write does not end at once, it waits for
        // the content (here the stream ends first).
        let err = s
            .stream_write("team-b", &d, &data[..1000], false)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                bytestream_service::Error::Unfinished {
                    committed: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        let status = s
            .bytestream
            .query_write_status(Request::new(QueryWriteStatusRequest {
                resource_name: upload_name("team-b", &d),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(!status.complete);
        assert_eq!(status.committed_size, 1000);
        // Short content, declared finished.
        let err = s
            .stream_write("team-b", &d, &data[..1000], true)
            .await
            .unwrap_err();
        assert_eq!(
            bytestream_service::status(&err).code(),
            Code::InvalidArgument
        );
        // Wrong content of the right size.
        let mut wrong = data.clone();
        wrong[7] ^= 1;
        let err = s
            .stream_write("team-b", &d, &wrong, true)
            .await
            .unwrap_err();
        assert_eq!(
            bytestream_service::status(&err).code(),
            Code::InvalidArgument
        );
        assert_eq!(s.missing("team-b", &[d]).await, [d]);
        assert!(s.stream_read("team-b", &d).await.is_err());

        // The whole content: B is a member, and the blob is stored once.
        assert_eq!(
            s.stream_write("team-b", &d, &data, true).await.unwrap(),
            data.len() as i64
        );
        assert!(s.missing("team-b", &[d]).await.is_empty());
        assert_eq!(s.stream_read("team-b", &d).await.unwrap(), data);
        // Now present for B: a second write ends at once.
        assert_eq!(
            s.stream_write("team-b", &d, &data[..10], false)
                .await
                .unwrap(),
            data.len() as i64
        );
        let files = walk_files(&dir.path().join("cas"));
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(
            std::fs::metadata(&files[0]).unwrap().len(),
            data.len() as u64
        );
    }

    fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk_files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_compressed_write_of_a_blob_b_lacks_is_not_cut_short() {
        let s = services(&config(memory(), true)).await;
        let data = vec![b'z'; 10_000];
        let d = s.put("team-a", &data).await;
        let compressed = zstd::encode_all(&data[..], 3).unwrap();
        let request = WriteRequest {
            resource_name: format!(
                "team-b/uploads/8/compressed-blobs/zstd/{}/{}",
                d.hash_hex(),
                d.size_bytes()
            ),
            write_offset: 0,
            finish_write: true,
            data: compressed.clone(),
        };
        let committed = s
            .bytestream
            .write_blob(&Caller::anonymous(), stream::iter([Ok(request.clone())]))
            .await
            .unwrap()
            .committed_size;
        // The whole compressed stream was taken, not -1 ("already there").
        assert_eq!(committed, compressed.len() as i64);
        assert!(s.missing("team-b", &[d]).await.is_empty());
    }

    #[tokio::test]
    async fn membership_survives_reopening_a_disk_store() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(disk(dir.path()), true);
        let d = services(&cfg).await.put("team-a", b"kept").await;
        let s = services(&cfg).await;
        assert!(s.missing("team-a", &[d]).await.is_empty());
        assert_eq!(s.missing("team-b", &[d]).await, [d]);
        assert!(dir.path().join(crate::MEMBERSHIP_LOG).exists());
    }

    #[tokio::test]
    async fn an_action_cache_entry_under_b_naming_only_as_blobs_is_not_served() {
        let s = services(&config(memory(), true)).await;
        let out = s.put("team-a", b"output of a").await;
        let action = sha(b"action");
        let entry = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(out.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let get = |instance: &str| GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        };
        for instance in ["team-a", "team-b"] {
            s.ac.update_action_result(Request::new(UpdateActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(action.to_proto()),
                action_result: Some(entry.clone()),
                ..Default::default()
            }))
            .await
            .unwrap();
        }
        s.ac.get_action_result(Request::new(get("team-a")))
            .await
            .unwrap();
        let err =
            s.ac.get_action_result(Request::new(get("team-b")))
                .await
                .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        // Once B holds the output itself, B's entry is complete.
        s.put("team-b", b"output of a").await;
        s.ac.get_action_result(Request::new(get("team-b")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn without_isolation_every_instance_name_sees_every_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(&config(disk(dir.path()), false)).await;
        assert!(s.stores.membership.is_none());
        let d = s.put("team-a", b"shared").await;
        assert!(s.missing("team-b", &[d]).await.is_empty());
        assert_eq!(s.stream_read("team-b", &d).await.unwrap(), b"shared");
        assert!(!dir.path().join(crate::MEMBERSHIP_LOG).exists());
    }

    #[tokio::test]
    async fn isolation_needs_a_local_backend() {
        let cfg = config(
            Backend::Remote {
                endpoint: "http://storage:8980".into(),
                instance_name: String::new(),
                cache: None,
            },
            true,
        );
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("isolate_instances"), "{err}");
    }

    #[tokio::test]
    async fn served_over_tcp_the_option_applies() {
        let cfg = config(memory(), true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::task::JoinSet::new();
        server.spawn(crate::run(cfg, listener, async {
            let _ = stopped.await;
        }));
        let mut cas =
            corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::connect(url)
                .await
                .unwrap();
        let d = sha(b"over tcp");
        cas.batch_update_blobs(BatchUpdateBlobsRequest {
            instance_name: "team-a".into(),
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: b"over tcp".to_vec(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let missing = |instance: &str| FindMissingBlobsRequest {
            instance_name: instance.into(),
            blob_digests: vec![d.to_proto()],
            digest_function: 0,
        };
        let a = cas.find_missing_blobs(missing("team-a")).await.unwrap();
        assert!(a.into_inner().missing_blob_digests.is_empty());
        let b = cas.find_missing_blobs(missing("team-b")).await.unwrap();
        assert_eq!(b.into_inner().missing_blob_digests, [d.to_proto()]);
        stop.send(()).unwrap();
        server.join_next().await.unwrap().unwrap().unwrap();
    }
}
