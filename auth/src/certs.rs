//! Certificates made here rather than by an operator: a certificate
//! authority, server certificates for addresses and host names, client
//! certificates. For `corral up --secure`, which makes a local CA for one
//! machine, and for tests. A farm shared by tenants uses its own PKI.
//!
//! Keys are ECDSA P-256 (rcgen's default, with ring). Certificates are
//! valid from 1975 to 4096: a local CA is trusted by being the one in the
//! file, not by its dates, and clocks of test machines vary.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// What went wrong making a certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to make the certificate of {name:?}")]
    Make {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("failed to write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub certificate_pem: String,
    /// Secret: write it 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued")
    }
}

/// A certificate authority that signs server and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

fn make(name: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Make {
        name: name.to_owned(),
        source,
    }
}

/// Parameters of a certificate whose subject is CN=`name`.
fn params(name: &str, alt_names: &[&str]) -> Result<CertificateParams, Error> {
    let alt: Vec<String> = alt_names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(alt).map_err(make(name))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(params)
}

fn authority_params(name: &str) -> Result<CertificateParams, Error> {
    let mut params = params(name, &[])?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl Authority {
    /// A new CA with subject CN=`name` and a fresh key.
    pub fn new(name: &str) -> Result<Authority, Error> {
        let params = authority_params(name)?;
        let key = KeyPair::generate().map_err(make(name))?;
        let certificate_pem = params.self_signed(&key).map_err(make(name))?.pem();
        Ok(Authority {
            issuer: Issuer::new(params, key),
            certificate_pem,
        })
    }

    /// The CA made earlier by [`new`](Self::new) with this `name`, from
    /// its certificate and key: what a second start of `corral up
    /// --secure` signs with.
    pub fn from_pem(name: &str, certificate_pem: &str, key_pem: &str) -> Result<Authority, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(make(name))?;
        Ok(Authority {
            issuer: Issuer::new(authority_params(name)?, key),
            certificate_pem: certificate_pem.to_owned(),
        })
    }

    /// The CA's certificate: what clients and servers trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA's private key. Secret: write it 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate valid for `names`: IP addresses (an IP SAN,
    /// e.g. `127.0.0.1`) or DNS names (e.g. the host name). Its subject
    /// is CN=the first name.
    pub fn server(&self, names: &[&str]) -> Result<Issued, Error> {
        let name = names.first().copied().unwrap_or("server");
        let mut params = params(name, names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(name, params)
    }

    /// A client certificate with subject CN=`name`: the identity a server
    /// with this CA as `client_ca` sees.
    pub fn client(&self, name: &str) -> Result<Issued, Error> {
        let mut params = params(name, &[])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(name, params)
    }

    fn sign(&self, name: &str, params: CertificateParams) -> Result<Issued, Error> {
        let key = KeyPair::generate().map_err(make(name))?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(make(name))?;
        Ok(Issued {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `contents` to `path`, readable by its owner only, whole or not
/// at all: written to a temporary name beside it (made new, never through
/// a symlink), synced, then renamed over `path`. A crash never leaves half
/// a key, and a link planted at the temporary name is not followed.
pub fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        write(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let mut temporary = path.to_owned();
    temporary.set_file_name(format!(".{}.new", name.to_string_lossy()));
    // Left by a crash mid-write: it is ours to replace.
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(write)?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write)?;
    std::fs::rename(&temporary, path).map_err(write)
}

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a
/// client certificate (CN=`client`): what a test of TLS needs.
#[derive(Debug)]
pub struct TestPki {
    pub ca: Authority,
    pub server: Issued,
    pub client: Issued,
}

/// Where [`TestPki::write`] put each file.
#[derive(Debug, Clone)]
pub struct Files {
    pub ca: PathBuf,
    pub server_certificate: PathBuf,
    pub server_key: PathBuf,
    pub client_certificate: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A fresh set. Panics only if ring cannot make a key, which no test
    /// can work around.
    pub fn new() -> TestPki {
        Self::named("corral test CA")
    }

    /// A fresh set whose CA is CN=`ca_name`: two sets with different
    /// names are two unrelated PKIs.
    pub fn named(ca_name: &str) -> TestPki {
        let made = (|| {
            let ca = Authority::new(ca_name)?;
            let server = ca.server(&["localhost", "127.0.0.1"])?;
            let client = ca.client("client")?;
            Ok::<_, Error>(TestPki { ca, server, client })
        })();
        made.expect("making test certificates")
    }

    /// Writes `ca.crt`, `server.crt`, `server.key`, `client.crt` and
    /// `client.key` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Files, Error> {
        let files = Files {
            ca: dir.join("ca.crt"),
            server_certificate: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_certificate: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        write_private(&files.ca, self.ca.certificate_pem())?;
        write_private(&files.server_certificate, &self.server.certificate_pem)?;
        write_private(&files.server_key, &self.server.key_pem)?;
        write_private(&files.client_certificate, &self.client.certificate_pem)?;
        write_private(&files.client_key, &self.client.key_pem)?;
        Ok(files)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn a_reloaded_authority_signs_what_the_old_certificate_verifies() {
        let ca = Authority::new("corral local CA").unwrap();
        let again =
            Authority::from_pem("corral local CA", ca.certificate_pem(), &ca.key_pem()).unwrap();
        let server = again.server(&["127.0.0.1"]).unwrap();
        // The reissued certificate verifies against the original CA
        // certificate, for its IP address.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            rustls_pki_types::CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes())
                .unwrap();
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        let leaf =
            rustls_pki_types::CertificateDer::from_pem_slice(server.certificate_pem.as_bytes())
                .unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let now = rustls_pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], now)
            .unwrap();
        let other = rustls_pki_types::ServerName::try_from("example.com").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &other, &[], now)
            .is_err());
    }

    #[test]
    fn keys_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let files = TestPki::new().write(dir.path()).unwrap();
        let mode = std::fs::metadata(&files.client_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
