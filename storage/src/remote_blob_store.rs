//! A store that forwards to another REAPI CAS and Action Cache over gRPC
//! (bb-storage, bazel-remote, another Corral), so a farm can use storage
//! it already runs. Usually wrapped in a read-through local cache
//! (`read_through_blob_store`). It speaks to the remote through the shared
//! CAS client (`corral-cas-client`), as the worker and scheduler do.
//!
//! What comes back is verified like everything else: a blob whose bytes do
//! not match its digest is reported missing (it cannot be removed from
//! the remote), never returned. Writes are spooled to an anonymous
//! temporary file, verified, and only then uploaded, so the remote never
//! receives a blob we would have refused.

use std::io::{Seek, SeekFrom, Write};

use corral_auth::channel::Connector;
use corral_cas_client::{Blob, CasClient};
use corral_proto::reapi::ActionResult;
use futures_util::StreamExt as _;
use prost::Message as _;

use crate::action_cache::ActionCache;
use crate::blob_store::{BlobStore, BlobStream, Error, READ_CHUNK_BYTES};
use crate::blob_write::BlobWrite;
use crate::digest::{Digest, DigestFunction, Verifier};

/// A failure of the remote during `operation`, with the status it gave.
fn remote(operation: &'static str) -> impl FnOnce(corral_cas_client::Error) -> Error {
    move |error| Error::Remote {
        operation,
        source: Box::new(error.into_status()),
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
    client: CasClient,
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
            client: CasClient::from_channel(channel).with_instance(instance),
        })
    }

    /// The client for blobs made by `digest`'s function.
    fn client(&self, digest: &Digest) -> CasClient {
        self.client.with_function(digest.function())
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
                .map(Digest::to_proto)
                .collect();
            if asked.is_empty() {
                continue;
            }
            let answer = self
                .client
                .with_function(function)
                .find_missing(&asked)
                .await
                .map_err(remote("finding missing blobs"))?;
            for proto in &answer {
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
        match self.client(digest).read(&digest.to_proto()).await {
            Ok(data) => Ok(Some(data)),
            // Wrong content from the remote is as good as missing.
            Err(
                corral_cas_client::Error::Missing { .. } | corral_cas_client::Error::Corrupt { .. },
            ) => Ok(None),
            Err(error) => Err(remote("reading a blob")(error)),
        }
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
        let stream = match self
            .client(digest)
            .read_range(&digest.to_proto(), offset, limit)
            .await
        {
            Ok(stream) => stream,
            Err(corral_cas_client::Error::Missing { .. }) => return Ok(None),
            Err(error) => return Err(remote("reading a blob")(error)),
        };
        Ok(Some(Box::pin(
            stream.map(|chunk| chunk.map_err(remote("reading a blob"))),
        )))
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
        let result = self
            .client(action)
            .get_action_result(&action.to_proto(), false, false)
            .await
            .map_err(remote("reading an action result"))?;
        Ok(result.map(|r| r.encode_to_vec()))
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        let result = ActionResult::decode(encoded.as_slice()).map_err(|e| Error::Remote {
            operation: "decoding an action result",
            source: Box::new(tonic::Status::invalid_argument(e.to_string())),
        })?;
        self.client(action)
            .update_action_result(&action.to_proto(), result)
            .await
            .map_err(remote("storing an action result"))
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
        // The client reads the spool a chunk at a time as the upload goes,
        // so a large output is never held in memory.
        store
            .client(&digest)
            .write_stream(&digest.to_proto(), Blob::Open(spool_file))
            .await
            .map_err(remote("uploading a blob"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::TryStreamExt as _;
    use tokio::net::TcpListener;
    use tonic::Code;

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
