//! The `[images]` table of worker.toml: where images come from and how
//! much of them a worker keeps.

use std::path::PathBuf;

use serde::Deserialize;

/// Running actions in container images (`container-image` platform
/// property).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run actions that name a `container-image`. The worker then offers
    /// `container-image=*` to the scheduler, which sends it actions naming
    /// any image (and, as before, actions naming none). Default true; set
    /// it false for a worker behind a scheduler that matches every
    /// property exactly (bb_scheduler), or that must not reach registries.
    pub enabled: bool,
    /// Most bytes of unpacked images kept, least recently used evicted
    /// first, never one an action is running in. Counted as the files'
    /// sizes plus 512 bytes per entry. An image larger than this alone
    /// fails its actions with FAILED_PRECONDITION. Default 20 GiB.
    pub max_bytes: u64,
    /// A Docker-style `config.json` (`docker login`'s): registry logins
    /// (`auths.<host>.auth`, or an `identitytoken`) and credential
    /// helpers (`credHelpers.<host>`, `credsStore`), run as
    /// `docker-credential-<name> get` from the worker's PATH. Default:
    /// none, anonymous pulls.
    pub credentials_file: Option<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP instead of
    /// HTTPS. Loopback ones (127.0.0.0/8, ::1, localhost) always are.
    /// Default: none.
    pub plain_http_registries: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 20 << 30,
            credentials_file: None,
            plain_http_registries: Vec::new(),
        }
    }
}
