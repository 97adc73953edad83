//! From `[object_store]` to a client of the store it names: S3 (and
//! S3-compatible servers), Google Cloud Storage, Azure Blob Storage, or a
//! local directory, each with the same timeouts and retries, and
//! credentials from `credentials_file` or the provider's usual
//! environment.

use std::path::Path as FilePath;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;

use crate::config::ObjectStoreConfig;
use crate::error::Error;

/// `credentials_file` for `s3://`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// `credentials_file` for `az://`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AzureCredentials {
    account: String,
    access_key: String,
}

/// Where `url` points.
pub(crate) enum ObjectStoreUrl<'a> {
    S3 { bucket: &'a str, prefix: &'a str },
    Gcs { bucket: &'a str, prefix: &'a str },
    Azure { container: &'a str, prefix: &'a str },
    Directory { dir: &'a str },
}

/// `bucket[/prefix]` after a scheme, if the bucket is named.
fn bucket_and_prefix(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, prefix))
}

/// Wraps a configuration failure as object_store reports its own.
fn config_error(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "config",
        source: Box::new(source),
    }
}

/// A TOML credentials file of `T`'s shape.
fn read_toml<T: serde::de::DeserializeOwned>(file: &FilePath) -> Result<T, object_store::Error> {
    let text = std::fs::read_to_string(file).map_err(config_error)?;
    toml::from_str(&text).map_err(config_error)
}

impl ObjectStoreConfig {
    pub(crate) fn parse_url(&self) -> Result<ObjectStoreUrl<'_>, Error> {
        let url = self.url.as_str();
        let parsed = if let Some(rest) = url.strip_prefix("s3://") {
            bucket_and_prefix(rest).map(|(bucket, prefix)| ObjectStoreUrl::S3 { bucket, prefix })
        } else if let Some(rest) = url.strip_prefix("gs://") {
            bucket_and_prefix(rest).map(|(bucket, prefix)| ObjectStoreUrl::Gcs { bucket, prefix })
        } else if let Some(rest) = url.strip_prefix("az://") {
            bucket_and_prefix(rest)
                .map(|(container, prefix)| ObjectStoreUrl::Azure { container, prefix })
        } else if let Some(dir) = url.strip_prefix("file://") {
            dir.starts_with('/')
                .then_some(ObjectStoreUrl::Directory { dir })
        } else {
            None
        };
        parsed.ok_or_else(|| Error::InvalidConfig {
            field: "object_store.url",
            reason: format!(
                "{url:?} is none of s3://bucket[/prefix], gs://bucket[/prefix], \
                 az://container[/prefix], file:///absolute/dir"
            ),
        })
    }

    /// Timeouts shared by every provider's client.
    fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_timeout(Duration::from_secs(self.request_timeout_s))
            .with_connect_timeout(Duration::from_secs(self.request_timeout_s.min(5)))
    }

    fn retry(&self) -> RetryConfig {
        RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: Duration::from_secs(self.retry_timeout_s),
            ..RetryConfig::default()
        }
    }

    /// The object store `url` names, and the key prefix inside it.
    pub fn build(&self) -> Result<(Arc<dyn ObjectStore>, Path), object_store::Error> {
        let url = self.parse_url().map_err(config_error)?;
        match url {
            ObjectStoreUrl::Directory { dir } => {
                std::fs::create_dir_all(dir).map_err(config_error)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
                Ok((Arc::new(store), Path::default()))
            }
            ObjectStoreUrl::S3 { bucket, prefix } => {
                Ok((Arc::new(self.s3(bucket)?), Path::from(prefix)))
            }
            ObjectStoreUrl::Gcs { bucket, prefix } => {
                Ok((Arc::new(self.gcs(bucket)?), Path::from(prefix)))
            }
            ObjectStoreUrl::Azure { container, prefix } => {
                Ok((Arc::new(self.azure(container)?), Path::from(prefix)))
            }
        }
    }

    fn s3(&self, bucket: &str) -> Result<object_store::aws::AmazonS3, object_store::Error> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_client_options(self.client_options())
            .with_retry(self.retry());
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(file) = &self.credentials_file {
            let credentials: S3Credentials = read_toml(file)?;
            builder = builder
                .with_access_key_id(credentials.access_key_id)
                .with_secret_access_key(credentials.secret_access_key);
            if let Some(token) = credentials.session_token {
                builder = builder.with_token(token);
            }
        }
        builder.build()
    }

    fn gcs(
        &self,
        bucket: &str,
    ) -> Result<object_store::gcp::GoogleCloudStorage, object_store::Error> {
        let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(self.client_options())
            .with_retry(self.retry());
        if let Some(file) = &self.credentials_file {
            builder = builder.with_service_account_path(file.to_string_lossy());
        }
        builder.build()
    }

    fn azure(
        &self,
        container: &str,
    ) -> Result<object_store::azure::MicrosoftAzure, object_store::Error> {
        let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_allow_http(self.allow_http)
            .with_client_options(self.client_options())
            .with_retry(self.retry());
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(file) = &self.credentials_file {
            let credentials: AzureCredentials = read_toml(file)?;
            builder = builder
                .with_account(credentials.account)
                .with_access_key(credentials.access_key);
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            url: url.to_owned(),
            ..ObjectStoreConfig::default()
        }
    }

    #[test]
    fn each_provider_has_its_scheme_and_a_bucket() {
        assert!(matches!(
            config("s3://b/p/q").parse_url(),
            Ok(ObjectStoreUrl::S3 {
                bucket: "b",
                prefix: "p/q"
            })
        ));
        assert!(matches!(
            config("gs://b").parse_url(),
            Ok(ObjectStoreUrl::Gcs {
                bucket: "b",
                prefix: ""
            })
        ));
        assert!(matches!(
            config("az://c/farm").parse_url(),
            Ok(ObjectStoreUrl::Azure {
                container: "c",
                prefix: "farm"
            })
        ));
        assert!(matches!(
            config("file:///srv/cas").parse_url(),
            Ok(ObjectStoreUrl::Directory { dir: "/srv/cas" })
        ));
        for bad in ["gs://", "az:///p", "file://relative", "http://b/p", "b/p"] {
            let err = config(bad).parse_url().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("gs://bucket")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn credentials_files_of_each_provider_configure_its_client() {
        let dir = tempfile::tempdir().unwrap();
        let azure = dir.path().join("azure.toml");
        std::fs::write(&azure, "account = \"farm\"\naccess_key = \"a2V5\"\n").unwrap();
        let cfg = ObjectStoreConfig {
            credentials_file: Some(azure.clone()),
            ..config("az://cas/farm")
        };
        assert!(cfg.build().is_ok());
        // A key of another provider's file is refused, naming the key.
        std::fs::write(&azure, "access_key_id = \"x\"\n").unwrap();
        let err = cfg.build().err().map(|e| format!("{e:?}"));
        assert!(
            err.as_deref().is_some_and(|e| e.contains("access_key_id")),
            "{err:?}"
        );
        // A service account key as Google's tools write it.
        let gcs = dir.path().join("key.json");
        std::fs::write(
            &gcs,
            r#"{"private_key": "k", "private_key_id": "i", "client_email": "farm@example.com",
                "gcs_base_url": "http://127.0.0.1:4443", "disable_oauth": true}"#,
        )
        .unwrap();
        let cfg = ObjectStoreConfig {
            credentials_file: Some(gcs),
            allow_http: true,
            ..config("gs://cas")
        };
        assert!(cfg.build().is_ok(), "{:?}", cfg.build().err());
    }
}
