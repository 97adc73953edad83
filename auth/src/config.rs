//! `[auth]`: how a serving daemon establishes who calls it, and where its
//! grants are. The same table in storage.toml and scheduler.toml.
//!
//! ```toml
//! [auth]
//! allow_anonymous = false
//! client_certificates = true
//! grants = "/etc/corral/grants.toml"
//!
//! [auth.tokens]
//! jwks_file = "/etc/corral/idp.jwks"
//! issuers = ["https://idp.example.com"]
//! audiences = ["corral"]
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::authentication::Authenticator;
use crate::authorizer::Authorizer;
use crate::grants::{Grants, GrantsError};
use crate::token::{TokenConfig, TokenConfigError, TokenVerifier};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a call that shows no credential proceeds, as the caller
    /// `anonymous` (the grants then say what it may do). A call with a bad
    /// credential is refused either way. Default false.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Whether a client certificate identifies its caller. TLS verifies it
    /// against `[tls] client_ca` first, so that must be set. Default true.
    #[serde(default = "default_client_certificates")]
    pub client_certificates: bool,
    /// Bearer tokens (JWT) accepted, and the keys that verify them.
    /// Without this table a bearer token is refused.
    #[serde(default)]
    pub tokens: Option<TokenConfig>,
    /// The grants file (who may do what on which instance names; see
    /// docs/shared-farm.md). Without it every authenticated caller may do
    /// everything.
    #[serde(default)]
    pub grants: Option<PathBuf>,
}

fn default_client_certificates() -> bool {
    true
}

/// Why `[auth]` was refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("[auth.tokens]")]
    Tokens(#[from] TokenConfigError),
    #[error("[auth] grants")]
    Grants(#[from] GrantsError),
}

/// Who calls, and what they may do, for one daemon.
#[derive(Debug)]
pub struct Auth {
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
}

impl Auth {
    /// What a daemon without `[auth]` does: everybody is anonymous and may
    /// do everything.
    pub fn open() -> Auth {
        Auth {
            authenticator: Authenticator::anonymous(),
            authorizer: Authorizer::open(),
        }
    }

    /// Reads the keys and grants `[auth]` names (or none, without it).
    pub fn from_config(cfg: Option<&AuthConfig>) -> Result<Auth, AuthConfigError> {
        let Some(cfg) = cfg else {
            return Ok(Auth::open());
        };
        let tokens = cfg.tokens.as_ref().map(TokenVerifier::new).transpose()?;
        let authorizer = match &cfg.grants {
            Some(path) => Authorizer::with_grants(Grants::load(path)?),
            None => Authorizer::open(),
        };
        Ok(Auth {
            authenticator: Authenticator::new(tokens, cfg.client_certificates, cfg.allow_anonymous),
            authorizer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_with_defaults_and_refuses_unknown_keys() {
        let cfg: AuthConfig = toml::from_str("grants = \"/g.toml\"").unwrap();
        assert!(!cfg.allow_anonymous);
        assert!(cfg.client_certificates);
        assert!(cfg.tokens.is_none());
        assert!(toml::from_str::<AuthConfig>("grant = \"/g.toml\"").is_err());
        let err = Auth::from_config(Some(&cfg)).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("/g.toml"), "{chain}");
        assert!(Auth::from_config(None).unwrap().authorizer.is_open());
    }
}
