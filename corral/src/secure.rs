//! `corral up --secure`: the files of a farm that only their holder can
//! use, made on first start under `<data dir>/secure/` and reused after.
//!
//! - `ca.crt`, `ca.key`: a local certificate authority, made here.
//! - `server.crt`, `server.key`: the farm's certificate, valid for
//!   127.0.0.1, ::1, `localhost`, this host's name and the listen address.
//!   Made again (by the same CA) when the listen address is not among
//!   its names.
//! - `client.crt`, `client.key`: the client certificate Bazel shows
//!   (`--tls_client_certificate`, `--tls_client_key`).
//! - `worker.crt`, `worker.key`: what the farm's own worker shows.
//! - `token.key`: the HS256 secret tokens are signed with; `token`: a
//!   bearer token for the client (`--remote_header=Authorization=Bearer …`),
//!   made again when it has less than a day left.
//! - `grants.toml`: what the client (by either credential) and the worker
//!   may do. Made once; edit it to add tenants, and restart.
//!
//! Every file is created 0600 in a 0700 directory, written whole to a
//! temporary name and renamed, so a crash never leaves half a key.

use std::io::Read as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use corral_auth::certs::{write_private, Authority, Issued};
use corral_proto::time::unix_now;

/// The token's issuer and audience: the farm checks both.
pub const TOKEN_ISSUER: &str = "corral-up";
pub const TOKEN_AUDIENCE: &str = "corral";
/// Who the client certificate and the token name.
pub const CLIENT_NAME: &str = "corral-up-client";
/// Who the worker's certificate names.
pub const WORKER_NAME: &str = "corral-up-worker";

/// How long a token made here is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// A token with less left than this is made again at start.
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The paths of a secure farm's files.
#[derive(Debug, Clone)]
pub struct SecureFiles {
    pub dir: PathBuf,
}

impl SecureFiles {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn ca_certificate(&self) -> PathBuf {
        self.path("ca.crt")
    }
    pub fn server_certificate(&self) -> PathBuf {
        self.path("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }
    pub fn client_certificate(&self) -> PathBuf {
        self.path("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }
    pub fn worker_certificate(&self) -> PathBuf {
        self.path("worker.crt")
    }
    pub fn worker_key(&self) -> PathBuf {
        self.path("worker.key")
    }
    pub fn token_key(&self) -> PathBuf {
        self.path("token.key")
    }
    pub fn token(&self) -> PathBuf {
        self.path("token")
    }
    pub fn grants(&self) -> PathBuf {
        self.path("grants.toml")
    }
}

/// Makes what is missing under `data_dir/secure` and returns the paths.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<SecureFiles> {
    let files = SecureFiles {
        dir: data_dir.join("secure"),
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&files.dir)
        .with_context(|| format!("creating {}", files.dir.display()))?;
    // An existing directory keeps its mode: close it anyway.
    std::fs::set_permissions(&files.dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("closing {} to other users", files.dir.display()))?;

    let ca = certificate_authority(&files)?;
    let names = server_names(listen);
    if !covers(&files.server_certificate(), &names) || !files.server_key().exists() {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        write_issued(
            &ca.server(&names)?,
            &files.server_certificate(),
            &files.server_key(),
        )?;
    }
    for (name, cert, key) in [
        (CLIENT_NAME, files.client_certificate(), files.client_key()),
        (WORKER_NAME, files.worker_certificate(), files.worker_key()),
    ] {
        if !(cert.exists() && key.exists()) {
            write_issued(&ca.client(name)?, &cert, &key)?;
        }
    }
    if !files.token_key().exists() {
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .context("reading /dev/urandom for the token secret")?;
        write_private(&files.token_key(), &hex(&secret))?;
    }
    if !token_is_fresh(&files)? {
        let secret = std::fs::read(files.token_key())
            .with_context(|| format!("reading {}", files.token_key().display()))?;
        let now = unix_now();
        let claims = serde_json::json!({
            "sub": CLIENT_NAME,
            "iss": TOKEN_ISSUER,
            "aud": TOKEN_AUDIENCE,
            "iat": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
        });
        let token = corral_auth::token::sign_hs256(secret.trim_ascii(), &claims)?;
        write_private(&files.token(), &format!("{token}\n"))?;
    }
    if !files.grants().exists() {
        write_private(&files.grants(), &default_grants())?;
    }
    Ok(files)
}

/// The grants a new secure farm starts with.
fn default_grants() -> String {
    format!(
        r#"# Who may use this farm (made by `corral up --secure`; see
# docs/shared-farm.md). Edit and restart to add tenants.

# The client: by its certificate (client.crt) or its token (token).
[[grant]]
who = ["cert:cn={CLIENT_NAME}", "claim:sub={CLIENT_NAME}"]
instance_names = [""]
permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]
sandbox_policies = ["default", "hermetic"]

# The farm's own worker (worker.crt).
[[grant]]
who = ["cert:cn={WORKER_NAME}"]
instance_names = ["*"]
permissions = ["worker", "cas-read", "cas-write", "ac-read", "ac-write"]
"#
    )
}

/// The name of the CA made here; [`Authority::from_pem`] needs it again.
const CA_NAME: &str = "corral up local CA";

/// The CA, loaded or made.
fn certificate_authority(files: &SecureFiles) -> anyhow::Result<Authority> {
    let (cert_path, key_path) = (files.ca_certificate(), files.path("ca.key"));
    if cert_path.exists() && key_path.exists() {
        return Authority::from_pem(CA_NAME, &read_text(&cert_path)?, &read_text(&key_path)?)
            .with_context(|| format!("reading the CA in {}", files.dir.display()));
    }
    let ca = Authority::new(CA_NAME)?;
    write_private(&key_path, &ca.key_pem())?;
    write_private(&cert_path, ca.certificate_pem())?;
    Ok(ca)
}

/// Writes a certificate and its key.
fn write_issued(issued: &Issued, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    write_private(key_path, &issued.key_pem)?;
    Ok(write_private(cert_path, &issued.certificate_pem)?)
}

/// The names the server certificate must hold for `listen`, as
/// certificates print them.
fn server_names(listen: SocketAddr) -> Vec<String> {
    // The first name is the certificate's subject.
    let mut names = vec![
        Ipv4Addr::LOCALHOST.to_string(),
        Ipv6Addr::LOCALHOST.to_string(),
        "localhost".to_owned(),
        host_name(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// Whether the certificate at `path` names every one of `names`.
fn covers(path: &Path, names: &[String]) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|pem| corral_auth::certificate::identity_from_pem(&pem).ok())
        .is_some_and(|id| names.iter().all(|n| id.alternative_names.contains(n)))
}

fn token_is_fresh(files: &SecureFiles) -> anyhow::Result<bool> {
    let Ok(token) = std::fs::read_to_string(files.token()) else {
        return Ok(false);
    };
    let verifier = corral_auth::token::TokenVerifier::new(&token_config(files))?;
    Ok(verifier.verify(token.trim()).is_ok_and(|id| {
        id.claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|exp| exp > unix_now() + TOKEN_RENEW_BEFORE.as_secs())
    }))
}

/// `[tls]` of the farm's one port: the server certificate, and client
/// certificates from the local CA accepted but not required (a client may
/// show the token instead).
pub fn server_tls(files: &SecureFiles) -> corral_auth::tls::ServerTls {
    corral_auth::tls::ServerTls {
        certificate: files.server_certificate(),
        private_key: files.server_key(),
        client_ca: Some(files.ca_certificate()),
        client_certificate: Some(corral_auth::tls::ClientCertificate::Optional),
    }
}

/// `[auth]` of the farm's one port: a certificate from the local CA or a
/// token signed with `token.key`, nothing else; what each may do is in
/// `grants.toml`.
pub fn auth_config(files: &SecureFiles) -> corral_auth::AuthConfig {
    corral_auth::AuthConfig {
        allow_anonymous: false,
        client_certificates: true,
        tokens: Some(token_config(files)),
        grants: Some(files.grants()),
    }
}

/// `[client_tls]` of the farm's own worker: it trusts the local CA and
/// shows `worker.crt`.
pub fn worker_tls(files: &SecureFiles) -> corral_auth::tls::ClientTls {
    corral_auth::tls::ClientTls {
        ca: files.ca_certificate(),
        certificate: Some(files.worker_certificate()),
        private_key: Some(files.worker_key()),
        token_file: None,
    }
}

/// How the farm checks tokens made here.
pub fn token_config(files: &SecureFiles) -> corral_auth::token::TokenConfig {
    corral_auth::token::TokenConfig {
        jwks_file: None,
        public_key_files: Vec::new(),
        hs256_secret_file: Some(files.token_key()),
        issuers: vec![TOKEN_ISSUER.to_owned()],
        audiences: vec![TOKEN_AUDIENCE.to_owned()],
        leeway_s: 30,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn a_first_start_makes_private_files_and_a_second_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:8980".parse().unwrap();
        let files = prepare(dir.path(), listen).unwrap();
        assert_eq!(std::fs::metadata(&files.dir).unwrap().mode() & 0o777, 0o700);
        let names = [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "client.crt",
            "client.key",
            "worker.crt",
            "worker.key",
            "token.key",
            "token",
            "grants.toml",
        ];
        let before: Vec<Vec<u8>> = names
            .iter()
            .map(|n| {
                let path = files.path(n);
                assert_eq!(
                    std::fs::metadata(&path).unwrap().mode() & 0o777,
                    0o600,
                    "{n}"
                );
                std::fs::read(path).unwrap()
            })
            .collect();
        // The server's certificate names the loopback address and the host.
        let server = corral_auth::certificate::identity_from_pem(
            &std::fs::read(files.server_certificate()).unwrap(),
        )
        .unwrap();
        assert!(server.alternative_names.contains(&"127.0.0.1".to_owned()));
        assert!(server.alternative_names.contains(&host_name()));
        let client = corral_auth::certificate::identity_from_pem(
            &std::fs::read(files.client_certificate()).unwrap(),
        )
        .unwrap();
        assert_eq!(client.common_name.as_deref(), Some(CLIENT_NAME));
        // The token verifies with the farm's own check, and names the client.
        let verifier = corral_auth::token::TokenVerifier::new(&token_config(&files)).unwrap();
        let token = std::fs::read_to_string(files.token()).unwrap();
        let id = verifier.verify(token.trim()).unwrap();
        assert_eq!(id.subject.as_deref(), Some(CLIENT_NAME));
        // The grants file parses.
        corral_auth::Grants::load(&files.grants()).unwrap();

        let again = prepare(dir.path(), listen).unwrap();
        for (n, old) in names.iter().zip(&before) {
            assert_eq!(&std::fs::read(again.path(n)).unwrap(), old, "{n} changed");
        }

        // Another listen address: a new server certificate from the same CA.
        let other: SocketAddr = "127.0.0.2:8980".parse().unwrap();
        let moved = prepare(dir.path(), other).unwrap();
        assert_ne!(
            std::fs::read(moved.server_certificate()).unwrap(),
            before[2]
        );
        assert_eq!(std::fs::read(moved.ca_certificate()).unwrap(), before[0]);
        assert!(covers(&moved.server_certificate(), &server_names(other)));
    }
}
