//! Registry credentials from a Docker-style `config.json`
//! (`{"auths": {"host": {"auth": base64("user:password")}}}`), the file
//! `docker login`, `podman login` and `skopeo login` write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// Why the credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("failed to read registry credentials {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse registry credentials {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("registry credentials {path}: the auth of {host} is not base64 of user:password")]
    Auth { path: PathBuf, host: String },
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// A user name and password for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// Never printed: the password stays out of logs.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Logins by registry host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Login>,
}

impl Credentials {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = std::fs::read(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &[u8], path: &Path) -> Result<Credentials, CredentialsError> {
        let file: File =
            serde_json::from_slice(text).map_err(|source| CredentialsError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = normalise_host(&key);
            let login = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let bad = || CredentialsError::Auth {
                        path: path.to_owned(),
                        host: host.clone(),
                    };
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad())?;
                    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
                    Login {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    }
                }
                (_, Some(username), Some(password)) => Login { username, password },
                // Entries for credential helpers: not supported, skipped.
                _ => continue,
            };
            by_host.insert(host, login);
        }
        Ok(Credentials { by_host })
    }

    /// The login for `host` (`host[:port]`), if the file has one.
    pub fn login(&self, host: &str) -> Option<&Login> {
        self.by_host.get(&normalise_host(host))
    }
}

/// `https://index.docker.io/v1/` and `docker.io` mean Docker Hub's
/// registry; a scheme and path around a host are dropped.
fn normalise_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "docker.io" => crate::reference::DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_read_by_host_in_every_form_docker_writes() {
        let text = br#"{"auths": {
            "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "helper.example": {}
        }}"#;
        let creds = Credentials::parse(text, Path::new("config.json")).unwrap();
        let local = creds.login("127.0.0.1:5000").unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(
            creds.login(crate::reference::DOCKER_HUB).unwrap().username,
            "hub"
        );
        assert!(creds.login("helper.example").is_none());
        assert!(!format!("{local:?}").contains("pa:ss"));
        let bad = Credentials::parse(br#"{"auths": {"h": {"auth": "!!"}}}"#, Path::new("c"));
        assert!(matches!(bad, Err(CredentialsError::Auth { .. })));
    }
}
