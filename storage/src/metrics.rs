//! Storage's Prometheus metrics: calls by method and status code and
//! their latency, bytes read and written, Action Cache hits and misses,
//! FindMissingBlobs' present and missing digests, and evictions.
//!
//! Recorded at two places, so the services and backends stay as they
//! are: [`MetricsLayer`] wraps the gRPC server and sees every call (its
//! method, its final status from the trailers, its duration until the
//! last byte of the response), and [`Metrics::meter`] wraps the
//! [`Stores`] the services read (bytes, lookups, evictions).
//! Served on `[metrics] listen` by `corral storage`, and on `corral up`'s
//! one page.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use corral_metrics::prometheus_client::metrics::counter::Counter;
use corral_metrics::prometheus_client::registry::Registry;
use corral_metrics::{code_name, labels, observe, register, Counters, Declared, Histograms};
use futures_util::StreamExt as _;
use tonic::codegen::http;

use crate::blob_store::{BlobStore, BlobStream, Error};
use crate::{ActionCache, BlobWrite, Digest, Stores};

/// Everything [`Metrics::render`] writes, with its help text: the names
/// operators' dashboards use, pinned by a test, and the list a test
/// checks every metric against, so none is declared and never set.
pub const DECLARED: [Declared; 7] = [
    (
        "corral_storage_requests_total",
        "counter",
        "Calls to storage's services, by method and status code.",
    ),
    (
        "corral_storage_request_seconds",
        "histogram",
        "Time from a call's request to the end of its response, by method.",
    ),
    (
        "corral_storage_read_bytes_total",
        "counter",
        "Bytes of blobs and Action Cache entries read from the store.",
    ),
    (
        "corral_storage_written_bytes_total",
        "counter",
        "Bytes of blobs and Action Cache entries written to the store.",
    ),
    (
        "corral_storage_action_cache_lookups_total",
        "counter",
        "Action Cache lookups, by result (hit, miss).",
    ),
    (
        "corral_storage_find_missing_digests_total",
        "counter",
        "Digests asked about in FindMissingBlobs, by result (present, missing).",
    ),
    (
        "corral_storage_evictions_total",
        "counter",
        "Blobs and Action Cache entries evicted as least recently used.",
    ),
];

/// The gRPC services whose calls are storage's: on `corral up`'s port
/// the scheduler's share the server.
const SERVICES: [&str; 4] = [
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/",
    "/build.bazel.remote.execution.v2.ActionCache/",
    "/build.bazel.remote.execution.v2.Capabilities/",
    "/google.bytestream.ByteStream/",
];

#[derive(Debug)]
struct Inner {
    /// By `method` and `code`.
    requests: Counters,
    /// By `method`.
    latency: Histograms,
    read_bytes: Counter,
    written_bytes: Counter,
    /// By `result`: hit, miss.
    lookups: Counters,
    /// By `result`: present, missing.
    find_missing: Counters,
}

/// Storage's metrics; cheap to clone, shared by the layer, the metered
/// stores and the page.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Metrics {
        let lookups = Counters::default();
        let find_missing = Counters::default();
        // Every result has its series from the start, at zero, so a rate
        // of hits over lookups has both sides.
        for result in ["hit", "miss"] {
            let _ = lookups.get_or_create(&labels([("result", result)]));
        }
        for result in ["present", "missing"] {
            let _ = find_missing.get_or_create(&labels([("result", result)]));
        }
        Metrics(Arc::new(Inner {
            requests: Counters::default(),
            latency: corral_metrics::fast_histograms(),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            lookups,
            find_missing,
        }))
    }
}

impl Metrics {
    /// `stores` with their reads, writes and lookups counted here.
    pub fn meter(&self, stores: Stores) -> Stores {
        Stores {
            blobs: Arc::new(MeteredBlobs {
                inner: stores.blobs,
                metrics: self.clone(),
            }),
            action_cache: Arc::new(MeteredActionCache {
                inner: stores.action_cache,
                metrics: self.clone(),
            }),
            ..stores
        }
    }

    /// The layer for the gRPC server that counts and times storage's
    /// calls: `Server::builder().layer(metrics.layer())`.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer(self.clone())
    }

    /// The Prometheus text page; evictions are read from `stores` now.
    pub fn render(&self, stores: &Stores) -> String {
        let inner = &self.0;
        let mut registry = Registry::default();
        let r = &mut registry;
        register(r, DECLARED[0], inner.requests.clone());
        register(r, DECLARED[1], inner.latency.clone());
        register(r, DECLARED[2], inner.read_bytes.clone());
        register(r, DECLARED[3], inner.written_bytes.clone());
        register(r, DECLARED[4], inner.lookups.clone());
        register(r, DECLARED[5], inner.find_missing.clone());
        let evictions = Counter::<u64>::default();
        evictions.inc_by(stores.blobs.evictions());
        register(r, DECLARED[6], evictions);
        corral_metrics::encode(&registry)
    }

    /// A call to `method` ended with `code` after `took`.
    fn call(&self, method: &str, code: i32, took: Duration) {
        let inner = &self.0;
        let key = labels([("method", method), ("code", code_name(code))]);
        inner.requests.get_or_create(&key).inc();
        observe(
            &inner.latency.get_or_create(&labels([("method", method)])),
            took,
        );
    }

    fn read(&self, bytes: usize) {
        self.0.read_bytes.inc_by(bytes as u64);
    }
}

/// The CAS, counting what it reads and writes and what FindMissingBlobs
/// finds.
struct MeteredBlobs {
    inner: Arc<dyn BlobStore>,
    metrics: Metrics,
}

#[tonic::async_trait]
impl BlobStore for MeteredBlobs {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let missing = self.inner.find_missing(digests).await?;
        let present = digests.len().saturating_sub(missing.len());
        let counters = &self.metrics.0.find_missing;
        let count = |result, n: usize| {
            counters
                .get_or_create(&labels([("result", result)]))
                .inc_by(n as u64)
        };
        count("present", present);
        count("missing", missing.len());
        Ok(missing)
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        let blob = self.inner.get(digest).await?;
        if let Some(blob) = &blob {
            self.metrics.read(blob.len());
        }
        Ok(blob)
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobStream>, Error> {
        let Some(stream) = self.inner.read(digest, offset, limit).await? else {
            return Ok(None);
        };
        let metrics = self.metrics.clone();
        let counted = stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                metrics.read(chunk.len());
            }
        });
        Ok(Some(Box::pin(counted)))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWrite>, Error> {
        let inner = self.inner.begin_write(digest).await?;
        Ok(Box::new(MeteredWrite {
            inner,
            metrics: self.metrics.clone(),
        }))
    }

    // Forwarded, not left to the defaults: those would write through
    // `begin_write` blob by blob and lose the backend's fast paths.
    async fn put(&self, digest: &Digest, data: Vec<u8>) -> Result<(), Error> {
        let bytes = data.len() as u64;
        self.inner.put(digest, data).await?;
        self.metrics.0.written_bytes.inc_by(bytes);
        Ok(())
    }

    async fn put_many(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Vec<Result<(), Error>> {
        let sizes: Vec<u64> = blobs.iter().map(|(_, data)| data.len() as u64).collect();
        let results = self.inner.put_many(blobs).await;
        let written = results
            .iter()
            .zip(sizes)
            .filter(|(result, _)| result.is_ok())
            .map(|(_, size)| size)
            .sum();
        self.metrics.0.written_bytes.inc_by(written);
        results
    }

    async fn get_many(&self, digests: &[Digest]) -> Vec<Result<Option<Vec<u8>>, Error>> {
        let results = self.inner.get_many(digests).await;
        let read = results
            .iter()
            .filter_map(|result| result.as_ref().ok().and_then(Option::as_ref))
            .map(Vec::len)
            .sum();
        self.metrics.read(read);
        results
    }

    fn evictions(&self) -> u64 {
        self.inner.evictions()
    }
}

/// One write, counted when it commits: bytes of an abandoned or refused
/// write were never stored.
struct MeteredWrite {
    inner: Box<dyn BlobWrite>,
    metrics: Metrics,
}

#[tonic::async_trait]
impl BlobWrite for MeteredWrite {
    fn digest(&self) -> &Digest {
        self.inner.digest()
    }

    fn received(&self) -> u64 {
        self.inner.received()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.inner.write(data).await
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let bytes = self.inner.received();
        self.inner.commit().await?;
        self.metrics.0.written_bytes.inc_by(bytes);
        Ok(())
    }
}

/// The Action Cache, counting hits and misses and bytes.
struct MeteredActionCache {
    inner: Arc<dyn ActionCache>,
    metrics: Metrics,
}

#[tonic::async_trait]
impl ActionCache for MeteredActionCache {
    async fn get_action_result(&self, action: &Digest) -> Result<Option<Vec<u8>>, Error> {
        let entry = self.inner.get_action_result(action).await?;
        let result = if entry.is_some() { "hit" } else { "miss" };
        self.metrics
            .0
            .lookups
            .get_or_create(&labels([("result", result)]))
            .inc();
        if let Some(entry) = &entry {
            self.metrics.read(entry.len());
        }
        Ok(entry)
    }

    async fn put_action_result(&self, action: &Digest, encoded: Vec<u8>) -> Result<(), Error> {
        let bytes = encoded.len() as u64;
        self.inner.put_action_result(action, encoded).await?;
        self.metrics.0.written_bytes.inc_by(bytes);
        Ok(())
    }
}

/// The tower layer that counts and times storage's calls.
#[derive(Debug, Clone)]
pub struct MetricsLayer(Metrics);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A gRPC service whose storage calls are counted and timed.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Metrics,
}

/// A call being timed: what its end records.
struct Call {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
}

impl Call {
    fn end(self, code: i32) {
        self.metrics.call(self.method, code, self.started.elapsed());
    }
}

/// The methods of storage's services, as their `method` label says them.
/// A name a client makes up is `other`: the label's values stay this
/// few, whatever paths clients send.
const METHODS: [&str; 12] = [
    "FindMissingBlobs",
    "BatchUpdateBlobs",
    "BatchReadBlobs",
    "GetTree",
    "SplitBlob",
    "SpliceBlob",
    "GetActionResult",
    "UpdateActionResult",
    "GetCapabilities",
    "Read",
    "Write",
    "QueryWriteStatus",
];

/// The method of a call to one of storage's services: the last part of
/// the path (`FindMissingBlobs`), `other` for a method storage does not
/// have, else (another daemon's service) `None`.
fn storage_method(path: &str) -> Option<&'static str> {
    let method = SERVICES
        .iter()
        .find_map(|service| path.strip_prefix(service))?;
    Some(
        METHODS
            .iter()
            .find(|known| **known == method)
            .copied()
            .unwrap_or("other"),
    )
}

/// The gRPC status code in `headers` (a response's or its trailers'),
/// if one is there.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<S, B, R> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: tonic::codegen::Body + Unpin,
{
    type Response = http::Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = storage_method(request.uri().path()).map(|method| Call {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let call = match (call, grpc_status(response.headers())) {
                // Trailers-only: the status is in the headers, the call
                // is over.
                (Some(call), Some(code)) => {
                    call.end(code);
                    None
                }
                (call, _) => call,
            };
            Ok(response.map(|body| MeteredBody { body, call }))
        })
    }
}

/// A response body that records its call when its trailers arrive, or
/// as UNKNOWN when it ends without them (the stream broke).
pub struct MeteredBody<B> {
    body: B,
    call: Option<Call>,
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its trailers: the client went away mid-call.
        if let Some(call) = self.call.take() {
            call.end(tonic::Code::Cancelled as i32);
        }
    }
}

impl<B: tonic::codegen::Body + Unpin> tonic::codegen::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let end = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or(tonic::Code::Unknown as i32)),
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Some(tonic::Code::Unknown as i32),
            Poll::Pending => None,
        };
        if let Some(code) = end {
            if let Some(call) = self.call.take() {
                call.end(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators' dashboards and alerts use these names: a change here is
    /// a change for every farm that scrapes storage.
    #[test]
    fn the_storage_metric_names_are_pinned() {
        let names: Vec<&str> = DECLARED.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(
            names,
            [
                "corral_storage_requests_total",
                "corral_storage_request_seconds",
                "corral_storage_read_bytes_total",
                "corral_storage_written_bytes_total",
                "corral_storage_action_cache_lookups_total",
                "corral_storage_find_missing_digests_total",
                "corral_storage_evictions_total",
            ]
        );
    }

    /// GETs `path` on `addr` over plain HTTP/1.1; the body.
    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response.split_once("\r\n\r\n").unwrap().1.to_owned()
    }

    #[tokio::test]
    async fn calls_bytes_hits_and_evictions_are_served_on_the_metrics_port() {
        use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
        use corral_proto::bytestream::ReadRequest;
        use corral_proto::reapi::action_cache_client::ActionCacheClient;
        use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
        use corral_proto::reapi::{
            batch_update_blobs_request, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
            GetActionResultRequest,
        };
        use futures_util::TryStreamExt as _;

        use crate::config::{self, Config, MetricsConfig};
        use crate::DigestFunction;

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_addr = port.local_addr().unwrap();
        drop(port);
        // 100 bytes hold one 60-byte blob: the second evicts the first.
        let cfg = Config {
            backend: config::Backend::Memory {
                max_size_bytes: 100,
            },
            metrics: Some(MetricsConfig {
                listen: metrics_addr,
                tls: None,
            }),
            ..Config::default()
        };
        let served = crate::tests::Served::start(cfg).await;
        let mut cas = ContentAddressableStorageClient::new(served.channel.clone());
        let blobs = [vec![1u8; 60], vec![2u8; 60]];
        let digests = blobs.clone().map(|b| DigestFunction::Sha256.digest_of(&b));
        for (blob, digest) in blobs.iter().zip(&digests) {
            cas.batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(digest.to_proto()),
                    data: blob.clone(),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: digests.iter().map(Digest::to_proto).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            missing.missing_blob_digests.len(),
            1,
            "the first was evicted"
        );
        let read: Vec<_> = ByteStreamClient::new(served.channel.clone())
            .read(ReadRequest {
                resource_name: format!(
                    "blobs/{}/{}",
                    digests[1].hash_hex(),
                    digests[1].size_bytes()
                ),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
        let miss = ActionCacheClient::new(served.channel.clone())
            .get_action_result(GetActionResultRequest {
                action_digest: Some(digests[0].to_proto()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(miss.code(), tonic::Code::NotFound);

        let page = http_get(metrics_addr, "/metrics").await;
        served.stop().await;
        assert_eq!(
            corral_metrics::check_page(&page, &DECLARED),
            Ok(()),
            "{page}"
        );
        for expected in [
            "corral_storage_requests_total{method=\"BatchUpdateBlobs\",code=\"OK\"} 2",
            "corral_storage_requests_total{method=\"FindMissingBlobs\",code=\"OK\"} 1",
            "corral_storage_requests_total{method=\"Read\",code=\"OK\"} 1",
            "corral_storage_requests_total{method=\"GetActionResult\",code=\"NOT_FOUND\"} 1",
            "corral_storage_request_seconds_count{method=\"BatchUpdateBlobs\"} 2",
            "corral_storage_written_bytes_total 120",
            "corral_storage_read_bytes_total 60",
            "corral_storage_action_cache_lookups_total{result=\"miss\"} 1",
            "corral_storage_action_cache_lookups_total{result=\"hit\"} 0",
            "corral_storage_find_missing_digests_total{result=\"present\"} 1",
            "corral_storage_find_missing_digests_total{result=\"missing\"} 1",
            "corral_storage_evictions_total 1",
        ] {
            assert!(
                page.lines().any(|l| l == expected),
                "{expected} not in\n{page}"
            );
        }
    }

    #[test]
    fn only_storage_services_are_methods() {
        assert_eq!(
            storage_method(
                "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
            ),
            Some("FindMissingBlobs")
        );
        assert_eq!(
            storage_method("/google.bytestream.ByteStream/Read"),
            Some("Read")
        );
        assert_eq!(
            storage_method("/build.bazel.remote.execution.v2.Execution/Execute"),
            None
        );
        // Made-up methods share one label value: a client cannot grow
        // the page (and the scheduler's memory) with random paths.
        assert_eq!(
            storage_method("/google.bytestream.ByteStream/"),
            Some("other")
        );
        assert_eq!(
            storage_method("/google.bytestream.ByteStream/Read/x"),
            Some("other")
        );
        assert_eq!(
            storage_method("/build.bazel.remote.execution.v2.ActionCache/a1b2c3"),
            Some("other")
        );
    }
}
