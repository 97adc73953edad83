//! A store that forwards to another REAPI CAS and Action Cache over gRPC
//! (bb-storage, bazel-remote, another Corral), so a farm can use storage
//! it already runs. Usually wrapped in a read-through local cache
//! (`read_through_blob_store`).
//!
//! What comes back is verified like everything else: a blob whose bytes do
//! not match its digest is reported missing (it cannot be removed from
//! the remote), never returned. Writes are spooled to an anonymous
//! temporary file, verified, and only then uploaded, so the remote never
//! receives a blob we would have refused.

use std::io::{Seek, SeekFrom, Write};

use corral_auth::channel::{Channel, Connector};
use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
use corral_proto::bytestream::{ReadRequest, WriteRequest};
use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::{
    ActionResult, FindMissingBlobsRequest, GetActionResultRequest, UpdateActionResultRequest,
};
use futures_util::StreamExt as _;
use prost::Message as _;
use tonic::Code;

use crate::action_cache::ActionCache;
use crate::blob_store::{BlobStore, BlobStream, Error, READ_CHUNK_BYTES};
use crate::blob_write::BlobWrite;
use crate::digest::{Digest, DigestFunction, Verifier};

/// Largest ByteStream message we accept from the remote.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

fn remote(operation: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Remote {
        operation,
        source: Box::new(status),
    }
}

fn spool(operation: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |err| Error::Remote {
        operation,
        source: Box::new(tonic::Status::internal(format!("local spool file: {err}"))),
    }
}

/// The CAS and AC of a remote REAPI server, for one instance name.
#[derive(Clone)]
pub struct RemoteBlobStore {
    channel: Channel,
    instance: String,
}

impl RemoteBlobStore {
    /// A store for `endpoint` (e.g. `https://storage:8980`, config key
    /// `backend.endpoint`) reached through `connector`; connects on first
    /// use and reconnects as needed.
    pub fn new(
        connector: &Connector,
        endpoint: &str,
        instance: &str,
    ) -> Result<Self, corral_auth::channel::Error> {
        let channel = connector.connect_lazy("backend.endpoint", endpoint)?;
        Ok(Self {
            channel,
            instance: instance.to_owned(),
        })
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
    }

    /// `{instance}/` or nothing, as resource names want it.
    fn prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    /// The digest-function segment; SHA-256, REAPI's default, has none so
    /// that servers predating the segment understand the name.
    fn function_segment(digest: &Digest) -> String {
        match digest.function() {
            DigestFunction::Sha256 => String::new(),
            other => format!("{}/", other.name()),
        }
    }

    fn read_name(&self, digest: &Digest) -> String {
        format!(
            "{}blobs/{}{}/{}",
            self.prefix(),
            Self::function_segment(digest),
            digest.hash_hex(),
            digest.size_bytes()
        )
    }

    fn upload_name(&self, digest: &Digest) -> Result<String, Error> {
        // A random UUID, as REAPI asks: the remote keys concurrent uploads
        // by it, and a pid or a clock repeats across hosts and containers.
        let uuid = corral_proto::ids::uuid_v4().map_err(Error::UploadName)?;
        Ok(format!(
            "{}uploads/{uuid}/blobs/{}{}/{}",
            self.prefix(),
            Self::function_segment(digest),
            digest.hash_hex(),
            digest.size_bytes()
        ))
    }

    /// A ranged read from the remote; `None` when it has no such blob.
    async fn remote_read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<tonic::Streaming<corral_proto::bytestream::ReadResponse>>, Error> {
        let request = ReadRequest {
            resource_name: self.read_name(digest),
            read_offset: i64::try_from(offset).unwrap_or(i64::MAX),
            read_limit: limit.map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
        };
        match self.bytestream().read(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(remote("reading a blob")(status)),
        }
    }
}

#[tonic::async_trait]
impl BlobStore for RemoteBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let mut missing = Vec::new();
        for function in DigestFunction::ALL {
            // The empty blob is always present (REAPI), so never asked for.
            let asked: Vec<_> = digests
                .iter()
                .filter(|d| d.function() == function && !d.is_empty_blob())
                .collect();
            if asked.is_empty() {
                continue;
            }
            let response = self
                .cas()
                .find_missing_blobs(FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: asked.iter().map(|d| d.to_proto()).collect(),
                    digest_function: function.to_proto() as i32,
                })
                .await
                .map_err(remote("finding missing blobs"))?
                .into_inner();
            for proto in &response.missing_blob_digests {
                if let Ok(digest) = Digest::from_proto(function, proto) {
                    missing.push(digest);
                }
            }
        }
        Ok(missing)
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if digest.is_empty_blob() {
            return Ok(Some(Vec::new()));
        }
        let Some(mut stream) = self.remote_read(digest, 0, None).await? else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(usize::try_from(digest.size_bytes()).unwrap_or(0));
        let mut verifier = Verifier::new(*digest);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk.data,
                Err(status) if status.code() == Code::NotFound => return Ok(None),
                Err(status) => return Err(remote("reading a blob")(status)),
            };
            // Wrong content from the remote is as good as missing.
            if verifier.update(&chunk).is_err() {
                return Ok(None);
            }
            data.extend_from_slice(&chunk);
        }
        Ok(verifier.finish().ok().map(|()| data))
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error> {
        // A whole read is verified before any of it is passed on; a ranged
        // read is the client's to check, as the trait allows.
        if offset == 0 && limit.is_none() {
            let Some(data) = self.get(digest).await? else {
                return Ok(None);
            };
            let chunks: Vec<Result<Vec<u8>, Error>> = data
                .chunks(READ_CHUNK_BYTES)
                .map(|c| Ok(c.to_vec()))
                .collect();
            return Ok(Some(Box::pin(futures_util::stream::iter(chunks))));
        }
        let Some(stream) = self.remote_read(digest, offset, limit).await? else {
            return Ok(None);
        };
        Ok(Some(Box::pin(stream.map(|chunk| {
            chunk.map(|c| c.data).map_err(remote("reading a blob"))
        }))))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        Ok(Box::new(RemoteWrite {
            store: self.clone(),
            verifier: Verifier::new(*digest),
            spool: tempfile::tempfile().map_err(spool("opening the spool file"))?,
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for RemoteBlobStore {
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error> {
        let request = GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            digest_function: action.function().to_proto() as i32,
            ..Default::default()
        };
        match self.ac().get_action_result(request).await {
            Ok(result) => Ok(Some(result.into_inner().encode_to_vec())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(remote("reading an action result")(status)),
        }
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        let result = ActionResult::decode(encoded.as_slice()).map_err(|e| Error::Remote {
            operation: "decoding an action result",
            source: Box::new(tonic::Status::invalid_argument(e.to_string())),
        })?;
        self.ac()
            .update_action_result(UpdateActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action.to_proto()),
                action_result: Some(result),
                digest_function: action.function().to_proto() as i32,
                ..Default::default()
            })
            .await
            .map_err(remote("storing an action result"))?;
        Ok(())
    }
}

/// A write spooled locally, verified, then uploaded on commit.
struct RemoteWrite {
    store: RemoteBlobStore,
    verifier: Verifier,
    spool: std::fs::File,
}

#[tonic::async_trait]
impl BlobWrite for RemoteWrite {
    fn digest(&self) -> &Digest {
        self.verifier.expected()
    }

    fn received(&self) -> u64 {
        self.verifier.received()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.verifier.update(data)?;
        self.spool
            .write_all(data)
            .map_err(spool("spooling an upload"))
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let RemoteWrite {
            store,
            verifier,
            spool: mut spool_file,
        } = *self;
        let digest = *verifier.expected();
        verifier.finish()?;
        if digest.is_empty_blob() || store.find_missing(&[digest]).await?.is_empty() {
            return Ok(());
        }
        spool_file
            .seek(SeekFrom::Start(0))
            .map_err(spool("rewinding the spool file"))?;
        // Stream the spool in chunks, read as the upload goes (through a
        // small channel), so a large output is never held in memory.
        let name = store.upload_name(&digest)?;
        let size = digest.size_bytes();
        let mut file = tokio::fs::File::from_std(spool_file);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
        let produce = async move {
            use tokio::io::AsyncReadExt as _;
            let mut offset = 0u64;
            loop {
                let mut chunk = vec![0u8; READ_CHUNK_BYTES];
                let n = file
                    .read(&mut chunk)
                    .await
                    .map_err(spool("reading the spool file"))?;
                chunk.truncate(n);
                let finish = offset + n as u64 >= size || n == 0;
                let request = WriteRequest {
                    resource_name: if offset == 0 {
                        name.clone()
                    } else {
                        String::new()
                    },
                    write_offset: i64::try_from(offset).unwrap_or(i64::MAX),
                    finish_write: finish,
                    data: chunk,
                };
                offset += n as u64;
                // A closed channel means the upload ended; it reports why.
                if tx.send(request).await.is_err() || finish {
                    return Ok::<(), Error>(());
                }
            }
        };
        let mut client = store.bytestream();
        let upload = client.write(tokio_stream::wrappers::ReceiverStream::new(rx));
        let (produced, uploaded) = tokio::join!(produce, upload);
        produced?;
        uploaded.map_err(remote("uploading a blob"))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::TryStreamExt as _;
    use tokio::net::TcpListener;

    use super::*;
    use crate::blob_store::conformance::blob;
    use crate::config::{Backend, Config};

    /// A Corral storage server (memory backend) on 127.0.0.1:0; stops
    /// when the returned guard is dropped.
    pub(crate) async fn server() -> (String, tokio::task::JoinSet<Result<(), crate::Error>>) {
        let cfg = Config {
            backend: Backend::Memory {
                max_size_bytes: 64 << 20,
            },
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut server = tokio::task::JoinSet::new();
        server.spawn(crate::run(cfg, listener, std::future::pending()));
        (url, server)
    }

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    #[tokio::test]
    async fn blobs_and_results_round_trip_through_a_remote_server() {
        let (url, _server) = server().await;
        let store = RemoteBlobStore::new(&Connector::plaintext(), &url, "main").unwrap();
        let small = blob(1, 1000);
        let large = blob(2, 300_000);
        let blake = DigestFunction::Blake3.digest_of(&small);
        for (digest, data) in [
            (sha(&small), &small),
            (sha(&large), &large),
            (blake, &small),
        ] {
            assert_eq!(store.find_missing(&[digest]).await.unwrap(), [digest]);
            store.put(&digest, data.clone()).await.unwrap();
            assert!(store.find_missing(&[digest]).await.unwrap().is_empty());
            assert_eq!(store.get(&digest).await.unwrap().as_ref(), Some(data));
        }
        let part: Vec<Vec<u8>> = store
            .read(&sha(&large), 1000, Some(5000))
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), large[1000..6000]);
        let empty = DigestFunction::Sha256.empty();
        assert!(store.find_missing(&[empty]).await.unwrap().is_empty());

        let result = ActionResult {
            exit_code: 3,
            ..Default::default()
        };
        let action = sha(b"action");
        assert_eq!(store.get_action_result(&action).await.unwrap(), None);
        store
            .put_action_result(&action, result.encode_to_vec())
            .await
            .unwrap();
        let back = store.get_action_result(&action).await.unwrap().unwrap();
        assert_eq!(ActionResult::decode(back.as_slice()).unwrap(), result);
    }

    #[tokio::test]
    async fn wrong_content_is_refused_before_reaching_the_remote() {
        let (url, _server) = server().await;
        let store = RemoteBlobStore::new(&Connector::plaintext(), &url, "").unwrap();
        let digest = sha(b"right");
        let mut write = store.begin_write(&digest).await.unwrap();
        write.write(b"wrong").await.unwrap();
        assert!(matches!(write.commit().await, Err(Error::Refused(_))));
        assert_eq!(store.find_missing(&[digest]).await.unwrap(), [digest]);
    }

    #[tokio::test]
    async fn an_unreachable_remote_is_unavailable_not_missing() {
        let store =
            RemoteBlobStore::new(&Connector::plaintext(), "http://127.0.0.1:1", "").unwrap();
        let err = store.get(&sha(b"x")).await.unwrap_err();
        assert_eq!(crate::status::store_code(&err), Code::Unavailable, "{err}");
    }
}
