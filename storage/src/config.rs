//! `storage.toml`: the storage daemon's configuration.
//!
//! `Config::default()` is exactly what `corral up` runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use corral_auth::tls::{ClientTls, ServerTls};
use serde::Deserialize;

use crate::error::Error;

/// The storage daemon's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the REAPI storage services listen on. Default
    /// `127.0.0.1:8980`.
    pub listen: SocketAddr,
    /// Where blobs are kept.
    pub backend: Backend,
    /// Largest total size of a BatchUpdateBlobs or BatchReadBlobs request,
    /// in bytes, advertised in GetCapabilities. Default 4 MiB, gRPC's
    /// default message size.
    pub max_batch_total_size_bytes: u64,
    /// TLS on the listening port (`[tls]`): certificate, key, and an
    /// optional client CA for mTLS. Default: none, plaintext.
    pub tls: Option<ServerTls>,
    /// TLS for the connections storage makes (`[client_tls]`): those of
    /// the remote backend. Default: none, plaintext; `backend.endpoint`
    /// must then be `http://`, and with it `https://`.
    pub client_tls: Option<ClientTls>,
    /// Who may call, and what each caller may do (`[auth]`, see
    /// docs/config.md). Unset: every caller is anonymous and may do
    /// everything, as a farm for one team on a trusted network.
    pub auth: Option<corral_auth::AuthConfig>,
    /// Each instance name sees only the CAS blobs written under it
    /// (FindMissingBlobs, batch and ByteStream reads, GetTree and the
    /// Action Cache's completeness check). Content is still stored once;
    /// an index of (instance name, digest) pairs sits beside it, kept in
    /// `<dir>/membership.log` by the disk backend. Default false: the CAS
    /// is shared, so a tenant who learns a digest can read that blob from
    /// any instance name it may read (docs/decisions/0010). Set it when
    /// tenants must not read each other's blobs; the cost is that a blob
    /// uploaded under one instance name must be uploaded again under
    /// another. Memory and disk backends only, with or without an object
    /// store behind them (membership then follows the disk tier: a blob
    /// it evicts is hidden from its instance names until written again).
    pub isolate_instances: bool,
    /// An object store behind the backend (`[object_store]`), holding the
    /// durable copy of every blob and Action Cache entry; the backend
    /// (disk or memory) becomes a cache in front of it. Unset: no object
    /// store. See [`ObjectStoreConfig`] and docs/decisions/0015.
    pub object_store: Option<ObjectStoreConfig>,
    /// Prometheus metrics over HTTP (`GET /metrics`, `/healthz`,
    /// `/readyz`) on their own port. Default: off; add a `[metrics]`
    /// table to serve them. `corral up` ignores it: its one page has
    /// storage's metrics.
    pub metrics: Option<MetricsConfig>,
    /// OpenTelemetry traces over OTLP/gRPC (`[tracing]`, the table every
    /// daemon shares: `endpoint`, `sample_ratio`; docs/config.md): spans of
    /// its calls, each a trace of its own. Default: off, nothing
    /// exported and no connection made.
    pub tracing: Option<corral_trace::TracingConfig>,
}

/// Where blobs are kept: a `[backend]` table whose `kind` names the
/// variant (`memory`, `disk`, `remote`; default `disk`), with that
/// variant's keys. A key left out takes its default, as documented on
/// each field; only a remote's `endpoint` is required.
/// Deserialized by hand ([`BackendVisitor`]): serde's internally tagged
/// enums buffer the table first, and their errors then name neither the
/// key nor its line ("invalid type: integer `0`, expected path string").
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// In memory, lost on restart. For tests and throwaway farms.
    Memory {
        /// Largest total size of the blobs held, in bytes; least recently
        /// used blobs are evicted past it. Default 10 GiB.
        max_size_bytes: u64,
    },
    /// Files in a directory: the default.
    Disk {
        /// The directory. Default `corral-data/storage`.
        dir: PathBuf,
        /// Largest total size of the blobs held, in bytes. Default 10 GiB.
        /// An upper bound, not a reservation: if the disk fills first, the
        /// least recently used blobs are evicted to make room (and a
        /// warning logged; set this below what the disk holds).
        max_size_bytes: u64,
        /// fsync every blob before it becomes visible. Default false: a
        /// crash may lose recent blobs (clients re-upload what is missing),
        /// but can never expose a corrupt one, since reads verify.
        fsync: bool,
    },
    /// Another REAPI storage (bb-storage, bazel-remote, a Corral storage
    /// cluster), with an optional local disk cache in front.
    Remote {
        /// Its endpoint, e.g. `http://storage.internal:8980`. Required.
        endpoint: String,
        /// Instance name used on it. Default empty.
        instance_name: String,
        /// A local disk cache that reads fill and writes go through.
        /// Unset: every read goes to the remote.
        cache: Option<LocalCache>,
    },
}

/// `backend.max_size_bytes` when left out: 10 GiB.
const DEFAULT_MAX_SIZE_BYTES: u64 = 10 << 30;

/// `backend.dir` when left out.
const DEFAULT_DIR: &str = "corral-data/storage";

/// The backend kinds, as `kind` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BackendKind {
    Memory,
    Disk,
    Remote,
}

impl BackendKind {
    /// The keys a `[backend]` of this kind may have, `kind` included.
    fn keys(self) -> &'static [&'static str] {
        match self {
            BackendKind::Memory => &["kind", "max_size_bytes"],
            BackendKind::Disk => &["kind", "dir", "max_size_bytes", "fsync"],
            BackendKind::Remote => &["kind", "endpoint", "instance_name", "cache"],
        }
    }
}

/// Every key of any kind of `[backend]`.
const BACKEND_KEYS: &[&str] = &[
    "kind",
    "dir",
    "max_size_bytes",
    "fsync",
    "endpoint",
    "instance_name",
    "cache",
];

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BackendVisitor)
    }
}

/// Reads each key of `[backend]` as it comes, so an error is reported at
/// its value, then checks the keys against the kind.
struct BackendVisitor;

impl<'de> serde::de::Visitor<'de> for BackendVisitor {
    type Value = Backend;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a [backend] table with kind = \"memory\", \"disk\" or \"remote\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Backend, A::Error> {
        use serde::de::Error as _;
        let mut kind = None;
        let mut dir = None;
        let mut max_size_bytes = None;
        let mut fsync = None;
        let mut endpoint = None;
        let mut instance_name = None;
        let mut cache = None;
        let mut seen = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => kind = Some(map.next_value::<BackendKind>()?),
                "dir" => dir = Some(map.next_value::<PathBuf>()?),
                "max_size_bytes" => max_size_bytes = Some(map.next_value::<u64>()?),
                "fsync" => fsync = Some(map.next_value::<bool>()?),
                "endpoint" => endpoint = Some(map.next_value::<String>()?),
                "instance_name" => instance_name = Some(map.next_value::<String>()?),
                "cache" => cache = Some(map.next_value::<LocalCache>()?),
                other => return Err(A::Error::unknown_field(other, BACKEND_KEYS)),
            }
            seen.push(key);
        }
        let kind = kind.unwrap_or(BackendKind::Disk);
        if let Some(key) = seen.iter().find(|key| !kind.keys().contains(&key.as_str())) {
            return Err(A::Error::unknown_field(key, kind.keys()));
        }
        Ok(match kind {
            BackendKind::Memory => Backend::Memory {
                max_size_bytes: max_size_bytes.unwrap_or(DEFAULT_MAX_SIZE_BYTES),
            },
            BackendKind::Disk => Backend::Disk {
                dir: dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
                max_size_bytes: max_size_bytes.unwrap_or(DEFAULT_MAX_SIZE_BYTES),
                fsync: fsync.unwrap_or(false),
            },
            BackendKind::Remote => Backend::Remote {
                endpoint: endpoint.ok_or_else(|| A::Error::missing_field("endpoint"))?,
                instance_name: instance_name.unwrap_or_default(),
                cache,
            },
        })
    }
}

/// The local disk cache in front of a remote backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCache {
    /// The directory.
    pub dir: PathBuf,
    /// Largest total size kept, in bytes.
    pub max_size_bytes: u64,
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Disk {
            dir: PathBuf::from(DEFAULT_DIR),
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            fsync: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8980)),
            backend: Backend::default(),
            max_batch_total_size_bytes: 4 << 20,
            tls: None,
            client_tls: None,
            auth: None,
            isolate_instances: false,
            object_store: None,
            metrics: None,
            tracing: None,
        }
    }
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let max_size = match &self.backend {
            Backend::Memory { max_size_bytes } | Backend::Disk { max_size_bytes, .. } => {
                *max_size_bytes
            }
            Backend::Remote {
                endpoint, cache, ..
            } => {
                corral_auth::channel::check_endpoint(
                    "backend.endpoint",
                    endpoint,
                    self.client_tls.is_some(),
                )
                .map_err(Error::Client)?;
                cache.as_ref().map_or(u64::MAX, |c| c.max_size_bytes)
            }
        };
        if self.isolate_instances && matches!(self.backend, Backend::Remote { .. }) {
            return Err(Error::InvalidConfig {
                field: "isolate_instances",
                reason: "needs a memory or disk backend: a remote store is shared by \
                         whatever else uses it, so isolation belongs there"
                    .to_owned(),
            });
        }
        if let Some(object_store) = &self.object_store {
            object_store.validate(self)?;
        }
        if max_size == 0 {
            return Err(Error::InvalidConfig {
                field: "backend.max_size_bytes",
                reason: "must be greater than zero".to_owned(),
            });
        }
        if let Some(tls) = &self.tls {
            tls.validate("tls").map_err(Error::Tls)?;
        }
        if let Some(client_tls) = &self.client_tls {
            client_tls.validate().map_err(Error::Tls)?;
        }
        if self.max_batch_total_size_bytes < 1024 {
            return Err(Error::InvalidConfig {
                field: "max_batch_total_size_bytes",
                reason: "must be at least 1024".to_owned(),
            });
        }
        Ok(())
    }
}

/// `[object_store]`: where the object-store tier keeps its durable copy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// Where objects go: the bucket (or container) and key prefix.
    /// `s3://bucket/prefix` (S3 or an S3-compatible server),
    /// `gs://bucket/prefix` (Google Cloud Storage), `az://container/prefix`
    /// (Azure Blob Storage), or a local directory, `file:///abs/dir`.
    /// Required.
    pub url: String,
    /// The service's endpoint, for S3-compatible servers (e.g.
    /// `http://127.0.0.1:3900`, requests use path-style addressing) and
    /// Azure emulators or sovereign clouds (e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`). Default: none, the
    /// provider's public endpoint. Not for `gs://`: a GCS emulator is named
    /// by `gcs_base_url` in the service account file.
    pub endpoint: Option<String>,
    /// The S3 region. Default `us-east-1`; S3-compatible servers name
    /// their own (Garage: `garage`). Only for `s3://`.
    pub region: String,
    /// Credentials, by provider. `s3://`: a TOML file with
    /// `access_key_id`, `secret_access_key` and an optional
    /// `session_token`. `az://`: a TOML file with `account` and
    /// `access_key`. `gs://`: a service account key (JSON), as Google's
    /// tools write it. Default: none, credentials come from the
    /// environment as each provider's tools read them (`AWS_*` or an
    /// instance role; `AZURE_STORAGE_ACCOUNT_NAME` and
    /// `AZURE_STORAGE_ACCOUNT_KEY` or a managed identity;
    /// `GOOGLE_APPLICATION_CREDENTIALS` or the metadata server).
    pub credentials_file: Option<PathBuf>,
    /// Allow `http://` endpoints. Default false; set it only for a server
    /// on loopback or a trusted network (tests).
    pub allow_http: bool,
    /// Size of each part of a multipart upload, in bytes, and the size
    /// from which a blob is uploaded in parts rather than in one PUT.
    /// Default 8 MiB; at least 5 MiB (S3's smallest part). An upload holds
    /// at most three parts in memory.
    pub part_size_bytes: u64,
    /// How many digests found in the object store FindMissingBlobs
    /// remembers, so it need not ask again. Default 1,000,000 (about
    /// 100 MiB of memory).
    pub known_digests_max_entries: u64,
    /// How long a digest found in the object store is believed present
    /// without asking again, in seconds. Default 300. Lower it if a
    /// lifecycle rule deletes objects from the bucket.
    pub known_digests_ttl_s: u64,
    /// Time limit of one request to the object store, in seconds.
    /// Default 30.
    pub request_timeout_s: u64,
    /// How often a failed request is retried. Default 3.
    pub max_retries: usize,
    /// How long a request is retried before its failure is reported
    /// (UNAVAILABLE to the client), in seconds. Default 30.
    pub retry_timeout_s: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            credentials_file: None,
            allow_http: false,
            part_size_bytes: 8 << 20,
            known_digests_max_entries: 1_000_000,
            known_digests_ttl_s: 300,
            request_timeout_s: 30,
            max_retries: 3,
            retry_timeout_s: 30,
        }
    }
}

impl ObjectStoreConfig {
    fn validate(&self, cfg: &Config) -> Result<(), Error> {
        self.parse_url()?;
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if matches!(cfg.backend, Backend::Remote { .. }) {
            return invalid(
                "object_store",
                "needs a memory or disk backend in front of it, not a remote one",
            );
        }
        if self.part_size_bytes < 5 << 20 {
            return invalid("object_store.part_size_bytes", "must be at least 5 MiB");
        }
        if let Some(endpoint) = &self.endpoint {
            if self.url.starts_with("gs://") {
                return invalid(
                    "object_store.endpoint",
                    "is not used for gs://: name a GCS emulator with gcs_base_url in the service account file",
                );
            }
            if endpoint.starts_with("http://") && !self.allow_http {
                return invalid(
                    "object_store.endpoint",
                    "is http:// but object_store.allow_http is false",
                );
            }
        }
        Ok(())
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server for `GET /metrics`, e.g.
    /// `127.0.0.1:9982`. Required in the table.
    pub listen: SocketAddr,
    /// HTTPS for the page (`[metrics.tls]`). Default: storage's `[tls]`,
    /// so that TLS on storage covers its metrics too; without either,
    /// plain HTTP.
    #[serde(default)]
    pub tls: Option<ServerTls>,
}

impl Config {
    /// The TLS of the metrics page and the key it comes from:
    /// `[metrics.tls]`, else `[tls]`.
    pub fn metrics_tls(&self) -> Option<(&ServerTls, &'static str)> {
        let metrics = self.metrics.as_ref()?;
        match (&metrics.tls, &self.tls) {
            (Some(tls), _) => Some((tls, "metrics.tls")),
            (None, Some(tls)) => Some((tls, "tls")),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_of_backend_parses() {
        let memory = parse("[backend]\nkind = \"memory\"\nmax_size_bytes = 5\n").unwrap();
        assert_eq!(memory.backend, Backend::Memory { max_size_bytes: 5 });
        let disk =
            parse("[backend]\nkind = \"disk\"\ndir = \"d\"\nmax_size_bytes = 5\nfsync = true\n")
                .unwrap();
        assert_eq!(
            disk.backend,
            Backend::Disk {
                dir: "d".into(),
                max_size_bytes: 5,
                fsync: true
            }
        );
        let remote = parse(
            "[backend]\nendpoint = \"http://s:1\"\nkind = \"remote\"\n\
             [backend.cache]\ndir = \"c\"\nmax_size_bytes = 7\n",
        )
        .unwrap();
        assert_eq!(
            remote.backend,
            Backend::Remote {
                endpoint: "http://s:1".into(),
                instance_name: String::new(),
                cache: Some(LocalCache {
                    dir: "c".into(),
                    max_size_bytes: 7
                }),
            }
        );
        assert_eq!(parse("").unwrap().backend, Backend::default());
    }

    #[test]
    fn the_object_store_example_parses_and_validates() {
        let cfg = parse(include_str!(
            "../../docs/examples/storage-object-store.toml"
        ))
        .unwrap();
        cfg.validate().unwrap();
        let object_store = cfg.object_store.as_ref().unwrap();
        assert_eq!(object_store.url, "s3://corral-cas/farm-a");
        assert_eq!(object_store.region, "garage");
        let bad = |edit: &dyn Fn(&mut ObjectStoreConfig)| {
            let mut cfg = cfg.clone();
            edit(cfg.object_store.as_mut().unwrap());
            cfg.validate().unwrap_err().to_string()
        };
        assert!(bad(&|c| c.url = "s3:/x".into()).contains("object_store.url"));
        assert!(bad(&|c| c.url = "file://rel".into()).contains("object_store.url"));
        assert!(bad(&|c| c.allow_http = false).contains("allow_http"));
        assert!(bad(&|c| c.part_size_bytes = 1 << 20).contains("part_size_bytes"));
        let mut isolated = cfg.clone();
        isolated.isolate_instances = true;
        assert!(isolated.validate().is_ok(), "isolation works over the tier");
        assert!(parse("[object_store]\nurl = \"s3://b\"\nbucket = \"x\"\n")
            .unwrap_err()
            .contains("bucket"));
    }

    /// docs/config.md's defaults, for every key it gives one: each holds
    /// when its key is left out of a table that is there.
    #[test]
    fn every_key_left_out_takes_the_default_docs_config_md_gives() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8980".parse().unwrap());
        assert_eq!(cfg.max_batch_total_size_bytes, 4_194_304);
        assert!(!cfg.isolate_instances);
        assert_eq!(
            (&cfg.tls, &cfg.client_tls, &cfg.auth),
            (&None, &None, &None)
        );
        assert_eq!((&cfg.object_store, &cfg.metrics), (&None, &None));
        assert_eq!(cfg.tracing, None);
        let disk = Backend::Disk {
            dir: "corral-data/storage".into(),
            max_size_bytes: 10_737_418_240,
            fsync: false,
        };
        assert_eq!(cfg.backend, disk);
        assert_eq!(parse("[backend]\n").unwrap().backend, disk);
        assert_eq!(
            parse("[backend]\nkind = \"memory\"\n").unwrap().backend,
            Backend::Memory {
                max_size_bytes: 10_737_418_240
            }
        );
        assert_eq!(
            parse("[backend]\nkind = \"remote\"\nendpoint = \"http://s:1\"\n")
                .unwrap()
                .backend,
            Backend::Remote {
                endpoint: "http://s:1".into(),
                instance_name: String::new(),
                cache: None,
            }
        );
        let object_store = parse("[object_store]\nurl = \"s3://b\"\n")
            .unwrap()
            .object_store
            .unwrap();
        assert_eq!(
            object_store,
            ObjectStoreConfig {
                url: "s3://b".into(),
                endpoint: None,
                region: "us-east-1".into(),
                credentials_file: None,
                allow_http: false,
                part_size_bytes: 8_388_608,
                known_digests_max_entries: 1_000_000,
                known_digests_ttl_s: 300,
                request_timeout_s: 30,
                max_retries: 3,
                retry_timeout_s: 30,
            }
        );
        let metrics = parse("[metrics]\nlisten = \"127.0.0.1:9982\"\n")
            .unwrap()
            .metrics
            .unwrap();
        assert_eq!(metrics.tls, None, "[metrics.tls] defaults to [tls]");
        let auth = parse("[auth]\n").unwrap().auth.unwrap();
        assert!(!auth.allow_anonymous);
        assert!(auth.client_certificates);
        assert_eq!((auth.grants, auth.tokens), (None, None));
        let tracing = parse("[tracing]\nendpoint = \"http://c:4317\"\n")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(tracing.sample_ratio, 1.0);
    }

    /// A disk backend named by its directory alone: the rest as
    /// docs/config.md documents (disk, 10 GiB, no fsync).
    #[test]
    fn a_backend_table_with_only_dir_parses_to_the_documented_defaults() {
        let cfg = parse("[backend]\ndir = \"/var/lib/corral/storage\"\n").unwrap();
        assert_eq!(
            cfg.backend,
            Backend::Disk {
                dir: "/var/lib/corral/storage".into(),
                max_size_bytes: 10_737_418_240,
                fsync: false,
            }
        );
        cfg.validate().unwrap();
    }

    /// Found by tests/crafted.rs: with serde's internally tagged enum,
    /// `dir = 0` was refused as "invalid type: integer `0`, expected path
    /// string" at `[backend]`, naming neither the key nor its line.
    #[test]
    fn a_bad_backend_key_is_named_with_its_line() {
        let disk = "[backend]\nkind = \"disk\"\nmax_size_bytes = 5\nfsync = true\n";
        for (text, named) in [
            (format!("{disk}dir = 0\n"), "dir = 0"),
            (
                format!("{disk}dir = \"d\"\nendpoint = \"x\"\n"),
                "`endpoint`",
            ),
            (format!("{disk}dir = \"d\"\nfsynk = 1\n"), "`fsynk`"),
            ("[backend]\nkind = \"remote\"\n".to_owned(), "`endpoint`"),
            ("[backend]\nkind = \"tape\"\n".to_owned(), "`tape`"),
            ("[backend]\nkind = 5\n".to_owned(), "kind = 5"),
            ("backend = 5\n".to_owned(), "backend = 5"),
            (
                "[backend]\nkind = \"memory\"\nmax_size_bytes = \"5\"\n".to_owned(),
                "max_size_bytes = \"5\"",
            ),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(named), "{named:?} not in {err}");
        }
    }
}
