//! TLS from configuration: the `[tls]` table of a daemon that serves, the
//! `[client_tls]` table of a daemon that connects to others, and the
//! rustls material both turn into.
//!
//! Everything is read and checked when a daemon starts, not on the first
//! connection: a missing file, a PEM block that does not parse or a
//! certificate that does not match its key stops the daemon with an error
//! naming the config key and the file. Validation without reading files
//! ([`ServerTls::validate`], [`ClientTls::validate`]) is what a config
//! check can do; [`ServerTls::load`] and [`ClientTls::load`] are what
//! start-up does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a client has to finish the TLS handshake: one that stalls
/// holds a task and a socket until then.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong reading or checking TLS material. `key` is the config
/// key that named the file, e.g. `tls.certificate`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key}: failed to read {}", .path.display())]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {} holds no valid PEM {what}", .path.display())]
    Pem {
        key: String,
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Option<rustls_pki_types::pem::Error>,
    },
    #[error("{key}: {} is not a usable certificate", .path.display())]
    BadCertificate {
        key: String,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{table}.private_key ({}) does not match {table}.certificate ({})", .key_path.display(), .certificate_path.display())]
    KeyMismatch {
        table: String,
        key_path: PathBuf,
        certificate_path: PathBuf,
    },
    #[error("{key}: {} cannot verify client certificates", .path.display())]
    ClientCa {
        key: String,
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("{table}: {reason}")]
    Invalid { table: String, reason: &'static str },
    #[error("{key}: the token in {} is empty or not printable ASCII", .path.display())]
    BadToken { key: String, path: PathBuf },
}

/// Whether a client must show a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificate {
    /// A client without a valid certificate fails the handshake.
    Required,
    /// A client may come without one (and then must authenticate
    /// otherwise, e.g. with a bearer token); one that shows a certificate
    /// not signed by `client_ca` still fails the handshake.
    Optional,
}

/// The `[tls]` table of a serving daemon (and `[metrics.tls]`): TLS on
/// its port, and mTLS when `client_ca` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain, a PEM file: its own certificate
    /// first, then any intermediates. Required in the table.
    pub certificate: PathBuf,
    /// The private key of `certificate`, a PEM file (PKCS#8, PKCS#1 or
    /// SEC1). Required in the table.
    pub private_key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. Default: none,
    /// and clients are not asked for a certificate. Set, it turns on mTLS.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` (the default) refuses a client
    /// without a certificate at the handshake; `"optional"` lets it in to
    /// authenticate otherwise (a bearer token). Not allowed without
    /// `client_ca`.
    #[serde(default)]
    pub client_certificate: Option<ClientCertificate>,
}

/// The `[client_tls]` table of a daemon that connects to others: TLS on
/// every connection it makes, an optional client certificate, and an
/// optional bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificates (PEM) that sign the servers' certificates. Only
    /// these are trusted: the system's roots are not. Required in the table.
    pub ca: PathBuf,
    /// A client certificate chain (PEM) to show servers that ask for one
    /// (mTLS). Default: none. Needs `private_key`.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The private key of `certificate` (PEM). Needs `certificate`.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// A file holding a bearer token, sent as `authorization: Bearer
    /// <token>` on every call to other daemons. Read once at start-up;
    /// surrounding whitespace is ignored. Default: none. It lives in this
    /// table so that a token never travels over plaintext.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A `[tls]` table read and checked: what a gRPC server and the metrics
/// page serve with.
#[derive(Clone)]
pub struct ServerTlsMaterial {
    tonic: ServerTlsConfig,
    rustls: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("ServerTlsMaterial")
    }
}

/// A `[client_tls]` table read and checked: what every client channel of
/// a daemon connects with.
#[derive(Clone)]
pub struct ClientTlsMaterial {
    pub(crate) tonic: ClientTlsConfig,
    pub(crate) token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for ClientTlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the token.
        f.debug_struct("ClientTlsMaterial")
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// Reads `path`, named by config key `key`.
fn read(key: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Every CERTIFICATE block of `pem`, at least one.
fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let invalid = |source| Error::Pem {
        key: key.to_owned(),
        path: path.to_owned(),
        what: "CERTIFICATE",
        source,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(Some(e)))?;
    if certs.is_empty() {
        return Err(invalid(None));
    }
    Ok(certs)
}

/// The private key in `pem`.
fn private_key(key: &str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| Error::Pem {
        key: key.to_owned(),
        path: path.to_owned(),
        what: "PRIVATE KEY",
        source: Some(source),
    })
}

/// A root store of every certificate in `pem`.
fn roots(key: &str, path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(key, path, pem)? {
        roots.add(cert).map_err(|source| Error::BadCertificate {
            key: key.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key read from PEM files, checked to match
/// by rustls.
struct Pair {
    certificate_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pair {
    fn read(table: &str, certificate: &Path, key: &Path) -> Result<Pair, Error> {
        let certificate_key = format!("{table}.certificate");
        let key_key = format!("{table}.private_key");
        let certificate_pem = read(&certificate_key, certificate)?;
        let key_pem = read(&key_key, key)?;
        let chain = certificates(&certificate_key, certificate, &certificate_pem)?;
        let private = private_key(&key_key, key, &key_pem)?;
        // rustls compares the key's public half with the certificate's
        // when it builds a config: build one to find out.
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|source| match source {
                rustls::Error::InconsistentKeys(_) => Error::KeyMismatch {
                    table: table.to_owned(),
                    key_path: key.to_owned(),
                    certificate_path: certificate.to_owned(),
                },
                source => Error::BadCertificate {
                    key: key_key,
                    path: key.to_owned(),
                    source,
                },
            })?;
        Ok(Pair {
            certificate_pem,
            key_pem,
            chain,
            key: private,
        })
    }
}

impl ServerTls {
    /// Checks what serde cannot, without reading files. `table` is where
    /// the table sits in the config (`tls`, `metrics.tls`), for messages.
    pub fn validate(&self, table: &str) -> Result<(), Error> {
        if self.client_certificate.is_some() && self.client_ca.is_none() {
            return Err(Error::Invalid {
                table: table.to_owned(),
                reason: "client_certificate needs client_ca: without it no client \
                         certificate can be verified",
            });
        }
        Ok(())
    }

    /// Whether a client may connect without a certificate.
    fn client_certificate_optional(&self) -> bool {
        self.client_certificate == Some(ClientCertificate::Optional)
    }

    /// Reads and checks the files: every PEM parses, the key matches the
    /// certificate, the client CA is a usable root. `table` names the
    /// table in errors.
    pub fn load(&self, table: &str) -> Result<ServerTlsMaterial, Error> {
        self.validate(table)?;
        let pair = Pair::read(table, &self.certificate, &self.private_key)?;
        let client_ca = match &self.client_ca {
            Some(path) => {
                let key = format!("{table}.client_ca");
                let pem = read(&key, path)?;
                let store = roots(&key, path, &pem)?;
                Some((pem, store, key, path))
            }
            None => None,
        };
        // The process's crypto provider, as tonic's own configs use: ring,
        // the only one compiled in (tonic's `tls-ring`; no aws-lc).
        let builder = rustls::ServerConfig::builder();
        let builder = match &client_ca {
            None => builder.with_no_client_auth(),
            Some((_, store, key, path)) => {
                let verifier = WebPkiClientVerifier::builder(store.clone());
                let verifier = if self.client_certificate_optional() {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|source| Error::ClientCa {
                    key: key.clone(),
                    path: path.to_path_buf(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut rustls = builder
            .with_single_cert(pair.chain, pair.key)
            .map_err(|source| Error::BadCertificate {
                key: format!("{table}.certificate"),
                path: self.certificate.clone(),
                source,
            })?;
        // The metrics page speaks HTTP/1.1 only.
        rustls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut tonic = ServerTlsConfig::new()
            .identity(Identity::from_pem(pair.certificate_pem, pair.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((pem, ..)) = client_ca {
            tonic = tonic
                .client_ca_root(Certificate::from_pem(pem))
                .client_auth_optional(self.client_certificate_optional());
        }
        Ok(ServerTlsMaterial {
            tonic,
            rustls: Arc::new(rustls),
        })
    }
}

impl ServerTlsMaterial {
    /// For a tonic server: `Server::builder().tls_config(m.tonic())`.
    pub fn tonic(&self) -> ServerTlsConfig {
        self.tonic.clone()
    }

    /// For an HTTP/1.1 server (the metrics page), e.g. through
    /// `tokio_rustls::TlsAcceptor::from`.
    pub fn rustls(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.rustls)
    }

    /// `server` serving TLS with this material.
    pub fn serve_with(
        &self,
        server: tonic::transport::Server,
    ) -> Result<tonic::transport::Server, tonic::transport::Error> {
        server.tls_config(self.tonic())
    }
}

/// `server` with TLS when `tls` is given, else as it is (plaintext).
pub fn server(
    server: tonic::transport::Server,
    tls: Option<&ServerTlsMaterial>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    match tls {
        Some(tls) => tls.serve_with(server),
        None => Ok(server),
    }
}

impl ClientTls {
    /// Checks what serde cannot, without reading files.
    pub fn validate(&self) -> Result<(), Error> {
        if self.certificate.is_some() != self.private_key.is_some() {
            return Err(Error::Invalid {
                table: "client_tls".to_owned(),
                reason: "certificate and private_key go together",
            });
        }
        Ok(())
    }

    /// Reads and checks the files: the CA parses, a client certificate
    /// matches its key, the token is a valid header value.
    pub fn load(&self) -> Result<ClientTlsMaterial, Error> {
        const TABLE: &str = "client_tls";
        self.validate()?;
        let ca_key = format!("{TABLE}.ca");
        let ca = read(&ca_key, &self.ca)?;
        // Parsed here so that a bad CA file fails start-up, not each call.
        roots(&ca_key, &self.ca, &ca)?;
        let mut tonic = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(certificate), Some(key)) = (&self.certificate, &self.private_key) {
            let pair = Pair::read(TABLE, certificate, key)?;
            tonic = tonic.identity(Identity::from_pem(pair.certificate_pem, pair.key_pem));
        }
        let token = match &self.token_file {
            Some(path) => Some(read_token(&format!("{TABLE}.token_file"), path)?),
            None => None,
        };
        Ok(ClientTlsMaterial { tonic, token })
    }
}

/// The `authorization` value for the token in `path`.
fn read_token(key: &str, path: &Path) -> Result<MetadataValue<Ascii>, Error> {
    let bad = || Error::BadToken {
        key: key.to_owned(),
        path: path.to_owned(),
    };
    let bytes = read(key, path)?;
    let token = std::str::from_utf8(&bytes).map_err(|_| bad())?.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| bad())?;
    // Kept out of HTTP/2 header compression tables.
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_tls(files: &crate::certs::Files) -> ServerTls {
        ServerTls {
            certificate: files.server_certificate.clone(),
            private_key: files.server_key.clone(),
            client_ca: Some(files.ca.clone()),
            client_certificate: None,
        }
    }

    #[test]
    fn a_generated_set_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::certs::TestPki::new().write(dir.path()).unwrap();
        server_tls(&files).load("tls").unwrap();
        ClientTls {
            ca: files.ca.clone(),
            certificate: Some(files.client_certificate.clone()),
            private_key: Some(files.client_key.clone()),
            token_file: None,
        }
        .load()
        .unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::certs::TestPki::new().write(dir.path()).unwrap();
        let mut cfg = server_tls(&files);
        cfg.private_key = files.client_key.clone();
        let err = cfg.load("tls").unwrap_err();
        assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("tls.private_key"), "{text}");
        assert!(text.contains("tls.certificate"), "{text}");
        assert!(text.contains("client.key"), "{text}");
    }

    #[test]
    fn unreadable_and_invalid_pem_name_the_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::certs::TestPki::new().write(dir.path()).unwrap();
        let mut cfg = server_tls(&files);
        cfg.client_ca = Some(dir.path().join("missing.pem"));
        let text = cfg.load("metrics.tls").unwrap_err().to_string();
        assert!(text.contains("metrics.tls.client_ca"), "{text}");
        assert!(text.contains("missing.pem"), "{text}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let mut cfg = server_tls(&files);
        cfg.certificate = garbage.clone();
        let err = cfg.load("tls").unwrap_err();
        assert!(matches!(err, Error::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains("tls.certificate"), "{err}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let mut cfg = server_tls(&files);
        cfg.private_key = garbage.clone();
        let text = cfg.load("tls").unwrap_err().to_string();
        assert!(text.contains("tls.private_key"), "{text}");

        let client = ClientTls {
            ca: garbage,
            certificate: None,
            private_key: None,
            token_file: None,
        };
        let text = client.load().unwrap_err().to_string();
        assert!(text.contains("client_tls.ca"), "{text}");
    }

    #[test]
    fn client_certificate_needs_a_client_ca() {
        let cfg = ServerTls {
            certificate: "a".into(),
            private_key: "b".into(),
            client_ca: None,
            client_certificate: Some(ClientCertificate::Optional),
        };
        let text = cfg.validate("tls").unwrap_err().to_string();
        assert!(
            text.contains("client_certificate needs client_ca"),
            "{text}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cfg = ClientTls {
            ca: "ca".into(),
            certificate: Some("c".into()),
            private_key: None,
            token_file: None,
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn the_token_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def.ghi\n").unwrap();
        let value = read_token("client_tls.token_file", &path).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer abc.def.ghi");
        std::fs::write(&path, " \n").unwrap();
        let text = read_token("client_tls.token_file", &path)
            .unwrap_err()
            .to_string();
        assert!(text.contains("client_tls.token_file"), "{text}");
    }
}
