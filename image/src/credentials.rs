//! Registry credentials from a Docker-style `config.json`, the file
//! `docker login`, `podman login` and `skopeo login` write: logins kept
//! in it (`{"auths": {"host": {"auth": base64("user:password")}}}`, or an
//! `identitytoken`), and credential helpers (`credHelpers` per registry,
//! `credsStore` for every other), programs `docker-credential-<name>`
//! on the worker's PATH that answer `get` with the registry's login.
//!
//! Docker's precedence, followed here: a registry's `credHelpers` entry
//! wins over `credsStore`, which wins over `auths` (a store set makes
//! Docker ignore the file's logins). A helper that answers "credentials
//! not found" means an anonymous pull, as with Docker; a helper missing,
//! failing, answering garbage or slower than [`HELPER_TIMEOUT`] fails the
//! pull, naming the helper and the registry.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::error::Error;

/// How long a credential helper may take to answer `get`.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a helper's answer is reused for its registry: a pull asks
/// for a login on each token request (and each Basic challenge), and a
/// process per request would cost more than the request.
const HELPER_CACHE: Duration = Duration::from_secs(300);

/// What a helper prints (with a failure status) for a registry it has
/// no login for (docker-credential-helpers' `ErrCredentialsNotFound`).
const NOT_FOUND: &str = "credentials not found in native keychain";

/// The user name a helper answers with when its secret is an identity
/// token (a refresh token for the registry's token server).
const TOKEN_USERNAME: &str = "<token>";

/// The address Docker keys Docker Hub's logins by, and hands helpers.
const DOCKER_HUB_ADDRESS: &str = "https://index.docker.io/v1/";

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
    #[error("registry credentials {path}: {helper:?} is not a credential helper name")]
    HelperName { path: PathBuf, helper: String },
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// A helper's answer to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// What proves who we are to one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Login {
    /// A user name and password: Basic on the registry, or on its token
    /// server's GET.
    Password { username: String, password: String },
    /// An identity token (Docker's `identitytoken`, or a helper's answer
    /// with user `<token>`): an OAuth2 refresh token, sent to the token
    /// server's POST (`grant_type=refresh_token`). Registries with Basic
    /// authentication only cannot take it.
    IdentityToken(String),
}

/// Never printed: the secret stays out of logs.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Login::IdentityToken(_) => f.write_str("IdentityToken(..)"),
        }
    }
}

/// Logins by registry host, and the helpers that hold the others.
#[derive(Debug, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Login>,
    /// `credHelpers`: helper names by registry host.
    helpers: BTreeMap<String, String>,
    /// `credsStore`: the helper for every registry not in `helpers`.
    store: Option<String>,
    /// The PATH helpers are looked up in; the worker's own when `None`.
    search_path: Option<OsString>,
    timeout: Option<Duration>,
    /// Helpers' answers by registry host, with when they were given.
    answers: Mutex<HashMap<String, (Instant, Option<Login>)>>,
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
            let login = match (
                entry.identitytoken,
                entry.auth,
                entry.username,
                entry.password,
            ) {
                (Some(token), ..) if !token.is_empty() => Login::IdentityToken(token),
                (_, Some(auth), _, _) if !auth.is_empty() => {
                    let bad = || CredentialsError::Auth {
                        path: path.to_owned(),
                        host: host.clone(),
                    };
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad())?;
                    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
                    Login::Password {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    }
                }
                (_, _, Some(username), Some(password)) => Login::Password { username, password },
                // An entry a helper holds the login of (Docker leaves
                // `{}` there): nothing to read.
                _ => continue,
            };
            by_host.insert(host, login);
        }
        // The name becomes part of a program name looked up on PATH.
        let check = |helper: String| {
            let fine = !helper.is_empty()
                && helper
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if fine {
                Ok(helper)
            } else {
                Err(CredentialsError::HelperName {
                    path: path.to_owned(),
                    helper,
                })
            }
        };
        let mut helpers = BTreeMap::new();
        for (key, helper) in file.cred_helpers {
            helpers.insert(normalise_host(&key), check(helper)?);
        }
        let store = file
            .creds_store
            .filter(|s| !s.is_empty())
            .map(check)
            .transpose()?;
        Ok(Credentials {
            by_host,
            helpers,
            store,
            ..Credentials::default()
        })
    }

    /// Parses a config.json's text.
    #[cfg(test)]
    pub(crate) fn parse_for_tests(text: &[u8]) -> Result<Credentials, CredentialsError> {
        Self::parse(text, Path::new("config.json"))
    }

    /// Helpers are looked up in `path` (a PATH value) rather than the
    /// worker's PATH, and given `timeout` rather than [`HELPER_TIMEOUT`].
    #[cfg(test)]
    pub(crate) fn with_helpers_from(mut self, path: OsString, timeout: Duration) -> Self {
        self.search_path = Some(path);
        self.timeout = Some(timeout);
        self
    }

    /// The helper that holds `host`'s login, if one does.
    fn helper(&self, host: &str) -> Option<&str> {
        self.helpers
            .get(&normalise_host(host))
            .or(self.store.as_ref())
            .map(String::as_str)
    }

    /// The login for `host` (`host[:port]`): its helper's answer if a
    /// helper holds it (see the module's precedence), else the file's;
    /// `None`: pull anonymously.
    pub async fn login(&self, host: &str) -> Result<Option<Login>, Error> {
        let Some(helper) = self.helper(host) else {
            return Ok(self.by_host.get(&normalise_host(host)).cloned());
        };
        let key = normalise_host(host);
        if let Ok(answers) = self.answers.lock() {
            if let Some((at, login)) = answers.get(&key) {
                if at.elapsed() < HELPER_CACHE {
                    return Ok(login.clone());
                }
            }
        }
        let login = self.ask(helper, &key).await?;
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(key, (Instant::now(), login.clone()));
        }
        Ok(login)
    }

    /// Runs `docker-credential-<helper> get` with the registry's address
    /// on stdin, as Docker does.
    async fn ask(&self, helper: &str, host: &str) -> Result<Option<Login>, Error> {
        let program = format!("docker-credential-{helper}");
        let fail = |reason: String| Error::CredentialHelper {
            helper: program.clone(),
            registry: host.to_owned(),
            reason,
        };
        let mut command = tokio::process::Command::new(&program);
        command
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Killed if it outlives its timeout (the future is dropped).
            .kill_on_drop(true);
        if let Some(path) = &self.search_path {
            command.env("PATH", path);
        }
        let mut child = command.spawn().map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "not found on the worker's PATH".to_owned()
            } else {
                format!("could not be started: {e}")
            })
        })?;
        let address = if host == crate::reference::DOCKER_HUB {
            DOCKER_HUB_ADDRESS
        } else {
            host
        };
        let timeout = self.timeout.unwrap_or(HELPER_TIMEOUT);
        let answer = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A helper that exits without reading is judged by its
                // answer, not by this write.
                let _ = stdin.write_all(address.as_bytes()).await;
            }
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| fail(format!("did not answer within {} s", timeout.as_secs_f64())))?
            .map_err(|e| fail(format!("failed: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            if stdout.trim() == NOT_FOUND {
                return Ok(None);
            }
            let said = [
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim(),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
            return Err(fail(format!("exited with {}: {said}", output.status)));
        }
        let answer: HelperAnswer = serde_json::from_slice(&output.stdout).map_err(|e| {
            fail(format!(
                "answered what is not {{\"Username\", \"Secret\"}} JSON: {e}"
            ))
        })?;
        Ok(Some(if answer.username == TOKEN_USERNAME {
            Login::IdentityToken(answer.secret)
        } else {
            Login::Password {
                username: answer.username,
                password: answer.secret,
            }
        }))
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
    use std::os::unix::fs::PermissionsExt;

    fn password(login: &Login) -> (&str, &str) {
        match login {
            Login::Password { username, password } => (username, password),
            Login::IdentityToken(_) => panic!("a password login"),
        }
    }

    #[tokio::test]
    async fn logins_are_read_by_host_in_every_form_docker_writes() {
        let text = br#"{"auths": {
            "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "tokens.example": {"auth": "", "identitytoken": "refresh"},
            "helper.example": {}
        }}"#;
        let creds = Credentials::parse(text, Path::new("config.json")).unwrap();
        let local = creds.login("127.0.0.1:5000").await.unwrap().unwrap();
        assert_eq!(password(&local), ("user", "pa:ss"));
        let hub = creds.login(crate::reference::DOCKER_HUB).await.unwrap();
        assert_eq!(password(&hub.unwrap()).0, "hub");
        assert_eq!(
            creds.login("tokens.example").await.unwrap(),
            Some(Login::IdentityToken("refresh".into()))
        );
        assert!(creds.login("helper.example").await.unwrap().is_none());
        assert!(!format!("{local:?}").contains("pa:ss"));
        let bad = Credentials::parse(br#"{"auths": {"h": {"auth": "!!"}}}"#, Path::new("c"));
        assert!(matches!(bad, Err(CredentialsError::Auth { .. })));
        let bad = Credentials::parse(br#"{"credsStore": "../x"}"#, Path::new("c"));
        assert!(matches!(bad, Err(CredentialsError::HelperName { .. })));
    }

    /// Fake helpers in a directory of their own: each logs the address it
    /// was given (to `<dir>/<name>.asked`) and answers as `script` says.
    struct Helpers {
        dir: tempfile::TempDir,
    }

    impl Helpers {
        fn new() -> Helpers {
            Helpers {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn add(&self, name: &str, script: &str) {
            let path = self.dir.path().join(format!("docker-credential-{name}"));
            let asked = self.dir.path().join(format!("{name}.asked"));
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\n[ \"$1\" = get ] || exit 3\ncat >> {}\necho >> {}\n{script}\n",
                    asked.display(),
                    asked.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn asked(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.asked")))
                .unwrap_or_default()
        }

        fn credentials(&self, config: &str) -> Credentials {
            // The helpers' own PATH: theirs first, then the shell's tools.
            let path = format!("{}:/usr/bin:/bin", self.dir.path().display());
            Credentials::parse(config.as_bytes(), Path::new("config.json"))
                .unwrap()
                .with_helpers_from(path.into(), Duration::from_secs(2))
        }
    }

    #[tokio::test]
    async fn cred_helpers_win_over_creds_store_which_wins_over_auths() {
        let helpers = Helpers::new();
        helpers.add(
            "per",
            r#"echo '{"Username": "per-user", "Secret": "per-pw"}'"#,
        );
        helpers.add(
            "store",
            r#"echo '{"Username": "<token>", "Secret": "refresh-1"}'"#,
        );
        let creds = helpers.credentials(
            r#"{"auths": {"a.example": {"auth": "ZmlsZTpwdw=="}},
                "credsStore": "store",
                "credHelpers": {"b.example:5000": "per", "docker.io": "per"}}"#,
        );
        let b = creds.login("b.example:5000").await.unwrap().unwrap();
        assert_eq!(password(&b), ("per-user", "per-pw"));
        // a.example has a login in the file, but a store is set: Docker
        // asks the store.
        assert_eq!(
            creds.login("a.example").await.unwrap(),
            Some(Login::IdentityToken("refresh-1".into()))
        );
        creds.login(crate::reference::DOCKER_HUB).await.unwrap();
        // The address on stdin: the host, and Docker Hub's as Docker says it.
        assert_eq!(
            helpers.asked("per"),
            "b.example:5000\nhttps://index.docker.io/v1/\n"
        );
        assert_eq!(helpers.asked("store"), "a.example\n");
        // Asked once per registry while the answer is fresh.
        creds.login("b.example:5000").await.unwrap();
        assert_eq!(helpers.asked("per").lines().count(), 2);
        // Without a store, the file's login.
        let creds = helpers.credentials(
            r#"{"auths": {"a.example": {"auth": "ZmlsZTpwdw=="}}, "credHelpers": {"b.example": "per"}}"#,
        );
        let a = creds.login("a.example").await.unwrap().unwrap();
        assert_eq!(password(&a), ("file", "pw"));
    }

    #[tokio::test]
    async fn a_helper_missing_failing_garbled_or_slow_fails_naming_it_and_the_registry() {
        let helpers = Helpers::new();
        helpers.add("none", &format!("echo '{NOT_FOUND}'; exit 1"));
        helpers.add("broken", "echo 'keychain locked' >&2; exit 1");
        helpers.add("garbled", "echo 'user:pw'");
        helpers.add("slow", "exec sleep 10");
        let creds = helpers.credentials(
            r#"{"credHelpers": {"none.example": "none", "broken.example": "broken",
                "garbled.example": "garbled", "slow.example": "slow",
                "missing.example": "missing"}}"#,
        );
        // "Not found" is an anonymous pull, as with Docker.
        assert_eq!(creds.login("none.example").await.unwrap(), None);
        for (host, reason) in [
            ("broken.example", "keychain locked"),
            ("garbled.example", "JSON"),
            ("slow.example", "did not answer within 2 s"),
            ("missing.example", "not found on the worker's PATH"),
        ] {
            let started = Instant::now();
            let err = creds.login(host).await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(5), "{host}");
            let text = err.to_string();
            let helper = host.trim_end_matches(".example");
            assert!(
                text.contains(&format!("docker-credential-{helper}"))
                    && text.contains(host)
                    && text.contains(reason),
                "{text}"
            );
            assert_eq!(err.blame(), crate::Blame::Image, "FAILED_PRECONDITION");
        }
    }
}
