//! Where manifests and blobs are read: a registry over the OCI
//! distribution API (`GET /v2/<repo>/manifests/<ref>`, `GET
//! /v2/<repo>/blobs/<digest>`, with the Bearer token flow), or an OCI
//! image layout directory. Every byte is hashed as it arrives and
//! compared with the digest that named it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::credentials::{Credentials, Login};
use crate::digest::{Digest, Hasher};
use crate::error::Error;
use crate::manifest::{self, ACCEPT, DOCUMENT_MAX_BYTES};
use crate::reference::{Reference, Source as Origin, Version};

/// The layout's name annotation for a tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Registry access shared by every pull: one HTTP client (connection
/// reuse), the logins, and the tokens registries handed out.
pub struct Registries {
    http: reqwest::Client,
    credentials: Credentials,
    plain_http: Vec<String>,
    /// Bearer tokens by `host/repository`.
    tokens: Mutex<HashMap<String, String>>,
}

/// Whether `host` (`name[:port]`) is this machine: nothing sent there
/// leaves it, so it is reached over plain HTTP, as Docker does.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A Bearer challenge's parameters.
#[derive(Debug, Default, PartialEq)]
struct Challenge {
    scheme: String,
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (values may hold
/// commas inside their quotes).
fn parse_challenge(header: &str) -> Challenge {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut challenge = Challenge {
        scheme: scheme.to_ascii_lowercase(),
        ..Challenge::default()
    };
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        match key.as_str() {
            "realm" => challenge.realm = value.to_owned(),
            "service" => challenge.service = Some(value.to_owned()),
            "scope" => challenge.scope = Some(value.to_owned()),
            _ => {}
        }
        rest = after.trim_start_matches(',').trim();
    }
    challenge
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

impl Registries {
    pub fn new(credentials: Credentials, plain_http: Vec<String>) -> Result<Registries, Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|source| Error::Client { source })?;
        Ok(Registries {
            http,
            credentials,
            plain_http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, host: &str) -> String {
        let plain = is_loopback(host) || self.plain_http.iter().any(|h| h == host);
        format!("{}://{host}", if plain { "http" } else { "https" })
    }

    /// GET `/v2/<repository>/<path>`, answering one authentication
    /// challenge (Bearer token or Basic) if the registry asks.
    async fn get(
        &self,
        host: &str,
        repository: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}/v2/{repository}/{path}", self.base(host));
        let key = format!("{host}/{repository}");
        let token = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let request = |auth: Auth<'_>| {
            let mut request = self.http.get(&url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            match auth {
                Auth::None => request,
                Auth::Bearer(token) => request.bearer_auth(token),
                Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            }
        };
        let unreachable = |source| Error::Unreachable {
            url: url.clone(),
            source,
        };
        let first = match &token {
            Some(token) => Auth::Bearer(token),
            None => Auth::None,
        };
        let response = request(first).send().await.map_err(unreachable)?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return checked(response, &url);
        }
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge)
            .unwrap_or_default();
        // Asked only now: a credential helper runs a process.
        let retried = match challenge.scheme.as_str() {
            "bearer" if !challenge.realm.is_empty() => {
                let login = self.credentials.login(host).await?;
                let scope = challenge
                    .scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{repository}:pull"));
                let token = self.token(&challenge, &scope, login.as_ref()).await?;
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(key, token.clone());
                }
                request(Auth::Bearer(&token)).send().await
            }
            "basic" => match self.credentials.login(host).await? {
                Some(Login::Password { username, password }) => {
                    request(Auth::Basic {
                        username: &username,
                        password: &password,
                    })
                    .send()
                    .await
                }
                Some(Login::IdentityToken(_)) => {
                    return Err(Error::Denied {
                        url,
                        status: 401,
                        hint: "the registry wants Basic authentication, and the login for it is \
                               an identity token, which only a token server takes",
                    })
                }
                None => {
                    return Err(Error::Denied {
                        url,
                        status: 401,
                        hint: "the registry wants a login and the credentials have none for it",
                    })
                }
            },
            _ => return checked(response, &url),
        };
        checked(retried.map_err(unreachable)?, &url)
    }

    /// A token from the challenge's realm for `scope`.
    async fn token(
        &self,
        challenge: &Challenge,
        scope: &str,
        login: Option<&Login>,
    ) -> Result<String, Error> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = &challenge.service {
            query.push(("service", service));
        }
        let request = match login {
            // OAuth2's refresh-token grant, as Docker sends an identity
            // token (the distribution spec's token server POST).
            Some(Login::IdentityToken(refresh)) => {
                let mut form = query;
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "corral"),
                ]);
                self.http.post(&challenge.realm).form(&form)
            }
            Some(Login::Password { username, password }) => self
                .http
                .get(&challenge.realm)
                .query(&query)
                .basic_auth(username, Some(password)),
            None => self.http.get(&challenge.realm).query(&query),
        };
        let url = challenge.realm.clone();
        let response = request.send().await.map_err(|source| Error::Unreachable {
            url: url.clone(),
            source,
        })?;
        let body = read_limited(checked(response, &url)?, &url, DOCUMENT_MAX_BYTES).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|source| Error::Document {
                what: "token response".to_owned(),
                source,
            })?;
        parsed
            .token
            .or(parsed.access_token)
            .ok_or_else(|| Error::Denied {
                url,
                status: 200,
                hint: "the token endpoint answered without a token",
            })
    }
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic {
        username: &'a str,
        password: &'a str,
    },
}

/// A response with a success status, or the error its status means.
fn checked(response: reqwest::Response, url: &str) -> Result<reqwest::Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    Err(match status.as_u16() {
        404 => Error::NotFound {
            what: url.to_owned(),
        },
        401 | 403 => Error::Denied {
            url: url.to_owned(),
            status: status.as_u16(),
            hint: "no access with the configured credentials",
        },
        code => Error::Status {
            url: url.to_owned(),
            status: code,
        },
    })
}

/// The body, refusing more than `max` bytes.
async fn read_limited(
    mut response: reqwest::Response,
    url: &str,
    max: u64,
) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| Error::Unreachable {
            url: url.to_owned(),
            source,
        })?
    {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(Error::TooLarge {
                what: url.to_owned(),
                bytes: body.len() as u64 + chunk.len() as u64,
                max_bytes: max,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One image's origin, ready to read from.
pub struct Source<'r> {
    pub registries: &'r Registries,
    pub reference: &'r Reference,
}

impl Source<'_> {
    /// The document the reference names (tag resolved, once), with its
    /// digest: verified against the reference's own when it has one.
    pub async fn resolve(&self) -> Result<(Digest, Vec<u8>), Error> {
        match (&self.reference.source, &self.reference.version) {
            (_, Version::Digest(digest)) => {
                let body = self.document(digest).await?;
                Ok((digest.clone(), body))
            }
            (Origin::Registry { host, repository }, Version::Tag(tag)) => {
                let response = self
                    .registries
                    .get(host, repository, &format!("manifests/{tag}"), Some(ACCEPT))
                    .await
                    .map_err(|e| e.not_found_as(format!("tag {tag}")))?;
                let url = format!("{host}/{repository}:{tag}");
                let body = read_limited(response, &url, DOCUMENT_MAX_BYTES).await?;
                Ok((Digest::of(&body), body))
            }
            (Origin::Layout { path }, Version::Tag(tag)) => {
                let index_path = path.join("index.json");
                let text = read_file(&index_path, DOCUMENT_MAX_BYTES).await?;
                let index: manifest::Document =
                    serde_json::from_slice(&text).map_err(|source| Error::Document {
                        what: index_path.display().to_string(),
                        source,
                    })?;
                let manifests = index.manifests.unwrap_or_default();
                let found = manifests
                    .iter()
                    .find(|m| m.annotations.get(REF_NAME) == Some(tag))
                    .or_else(|| (tag == "latest" && manifests.len() == 1).then(|| &manifests[0]))
                    .ok_or_else(|| Error::NotFound {
                        what: format!("tag {tag} in {}", index_path.display()),
                    })?;
                let digest = manifest::digest_of(found).ok_or_else(|| Error::BadDigest {
                    digest: found.digest.clone(),
                })?;
                let body = self.document(&digest).await?;
                Ok((digest, body))
            }
        }
    }

    /// A manifest or index by digest, verified.
    pub async fn document(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        self.small(digest, "manifests", Some(ACCEPT)).await
    }

    /// An image config by digest, verified: a blob.
    pub async fn config(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        self.small(digest, "blobs", None).await
    }

    /// A document of at most [`DOCUMENT_MAX_BYTES`] from `endpoint`.
    async fn small(
        &self,
        digest: &Digest,
        endpoint: &str,
        accept: Option<&str>,
    ) -> Result<Vec<u8>, Error> {
        let body = match &self.reference.source {
            Origin::Registry { host, repository } => {
                let response = self
                    .registries
                    .get(host, repository, &format!("{endpoint}/{digest}"), accept)
                    .await
                    .map_err(|e| e.not_found_as(digest.to_string()))?;
                read_limited(response, &digest.to_string(), DOCUMENT_MAX_BYTES).await?
            }
            Origin::Layout { path } => {
                read_file(&blob_path(path, digest), DOCUMENT_MAX_BYTES).await?
            }
        };
        let actual = Digest::of(&body);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: "manifest or config".to_owned(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(body)
    }

    /// Copies the blob `digest` of `size` bytes into `file`, hashing as
    /// it goes; fails on a different digest or size.
    pub async fn blob(
        &self,
        digest: &Digest,
        size: u64,
        file: &mut tokio::fs::File,
    ) -> Result<(), Error> {
        let mut hasher = Hasher::default();
        let mut written = 0u64;
        let write_error = |source| Error::Io {
            step: "write a downloaded layer",
            path: PathBuf::new(),
            source,
        };
        let mut take = |chunk: &[u8]| -> Result<(), Error> {
            written += chunk.len() as u64;
            if written > size {
                return Err(Error::DigestMismatch {
                    what: format!("layer of {size} bytes (more arrived)"),
                    expected: digest.clone(),
                    actual: Digest::of(b""),
                });
            }
            hasher.update(chunk);
            Ok(())
        };
        match &self.reference.source {
            Origin::Registry { host, repository } => {
                let url = format!("{host}/{repository}@{digest}");
                let mut response = self
                    .registries
                    .get(host, repository, &format!("blobs/{digest}"), None)
                    .await
                    .map_err(|e| e.not_found_as(format!("layer {digest}")))?;
                while let Some(chunk) =
                    response
                        .chunk()
                        .await
                        .map_err(|source| Error::Unreachable {
                            url: url.clone(),
                            source,
                        })?
                {
                    take(&chunk)?;
                    file.write_all(&chunk).await.map_err(write_error)?;
                }
            }
            Origin::Layout { path } => {
                use tokio::io::AsyncReadExt;
                let path = blob_path(path, digest);
                let mut source = tokio::fs::File::open(&path).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::NotFound {
                            what: format!("layer {}", path.display()),
                        }
                    } else {
                        Error::Io {
                            step: "open a layout blob",
                            path: path.clone(),
                            source: e,
                        }
                    }
                })?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = source.read(&mut buf).await.map_err(|e| Error::Io {
                        step: "read a layout blob",
                        path: path.clone(),
                        source: e,
                    })?;
                    if n == 0 {
                        break;
                    }
                    take(&buf[..n])?;
                    file.write_all(&buf[..n]).await.map_err(write_error)?;
                }
            }
        }
        file.flush().await.map_err(write_error)?;
        let actual = hasher.finish();
        if &actual != digest || written != size {
            return Err(Error::DigestMismatch {
                what: format!("layer ({written} of {size} bytes)"),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs/sha256").join(digest.hex())
}

async fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                what: path.display().to_string(),
            }
        } else {
            Error::Io {
                step: "read an OCI layout file",
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    if meta.len() > max {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            bytes: meta.len(),
            max_bytes: max,
        });
    }
    tokio::fs::read(path).await.map_err(|source| Error::Io {
        step: "read an OCI layout file",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bearer_challenges_parse_with_commas_inside_quotes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(parse_challenge(r#"Basic realm="r""#).scheme, "basic");
    }

    #[test]
    fn only_loopback_registries_are_plain_http_by_default() {
        for host in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry.example", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    /// One request from `stream`: its head (lower-cased) and body.
    async fn read_request(stream: &mut tokio::net::TcpStream) -> (String, String) {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early");
            bytes.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = bytes[end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the body ended early");
            body.extend_from_slice(&chunk[..n]);
        }
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    /// A registry whose manifests need a Bearer token from its token
    /// server (`/token` at the same address), which grants one only for
    /// the refresh token `refresh-1` (POST, `grant_type=refresh_token`).
    /// Every request it saw, head and body, is logged. It serves until the
    /// returned set is dropped.
    async fn token_registry(
        manifest: &'static [u8],
    ) -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinSet<()>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, realm) = (Arc::clone(&seen), format!("http://{host}/token"));
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (head, body) = read_request(&mut stream).await;
                log.lock().unwrap().push(format!("{head}\n\n{body}"));
                let (status, extra, content): (&str, String, &[u8]) =
                    if head.starts_with("post /token") {
                        if body.contains("grant_type=refresh_token")
                            && body.contains("refresh_token=refresh-1")
                        {
                            ("200 OK", String::new(), br#"{"access_token": "access-1"}"#)
                        } else {
                            ("401 Unauthorized", String::new(), b"")
                        }
                    } else if head.contains("authorization: bearer access-1") {
                        ("200 OK", String::new(), manifest)
                    } else {
                        (
                            "401 Unauthorized",
                            format!(
                                "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"test\",\
                             scope=\"repository:corral/x:pull\"\r\n"
                            ),
                            b"",
                        )
                    };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    content.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(content).await;
            }
        });
        (host, seen, server)
    }

    /// An identity token (from `auths.<host>.identitytoken`, or a helper
    /// answering user `<token>`) is used as Docker uses it: as the
    /// refresh token of an OAuth2 POST to the token server, whose access
    /// token then opens the registry.
    #[tokio::test]
    async fn an_identity_token_is_exchanged_at_the_token_server_as_a_refresh_token() {
        const MANIFEST: &[u8] = br#"{"schemaVersion": 2}"#;
        let (host, seen, _server) = token_registry(MANIFEST).await;
        let config = format!(r#"{{"auths": {{"{host}": {{"identitytoken": "refresh-1"}}}}}}"#);
        let credentials =
            Credentials::parse_for_tests(config.as_bytes()).expect("the credentials parse");
        let registries = Registries::new(credentials, Vec::new()).unwrap();
        let reference = Reference::parse(&format!("docker://{host}/corral/x:1")).unwrap();
        let source = Source {
            registries: &registries,
            reference: &reference,
        };
        let (digest, body) = source.resolve().await.unwrap();
        assert_eq!((digest, body.as_slice()), (Digest::of(MANIFEST), MANIFEST));
        let seen = seen.lock().unwrap().clone();
        let token = seen
            .iter()
            .find(|r| r.starts_with("post /token"))
            .expect("a POST to the token server");
        for field in [
            "grant_type=refresh_token",
            "refresh_token=refresh-1",
            "service=test",
            "scope=repository%3Acorral%2Fx%3Apull",
        ] {
            assert!(token.contains(field), "{field}: {token}");
        }
        // The refresh token went to the token server only.
        assert!(
            seen.iter()
                .filter(|r| !r.starts_with("post /token"))
                .all(|r| !r.contains("refresh-1")),
            "{seen:?}"
        );

        // Without a login the token server refuses: the pull is denied.
        let registries = Registries::new(Credentials::default(), Vec::new()).unwrap();
        let source = Source {
            registries: &registries,
            reference: &reference,
        };
        let err = source.resolve().await.unwrap_err();
        assert!(matches!(err, Error::Denied { .. }), "{err:?}");
    }
}
