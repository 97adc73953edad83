//! The grants file: which callers may do what, on which instance names,
//! with which sandbox policies. One TOML file serves every daemon of a
//! farm, so a tenant's rights are written down once.
//!
//! ```toml
//! [[grant]]
//! who = ["claim:groups=team-a", "cert:cn=team-a-ci"]
//! instance_names = ["team-a", "team-a/*"]
//! permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]
//! sandbox_policies = ["default", "hermetic"]
//! ```
//!
//! Nothing is allowed that no grant allows. A grant applies to a caller
//! when any of its `who` entries matches:
//! - `anonymous`: a caller that showed no credential;
//! - `authenticated`: any caller with a verified certificate or token;
//! - `cert:subject=CN=…,O=…`, `cert:cn=NAME`, `cert:san=NAME`: a verified
//!   client certificate's subject, common name, or one of its alternative
//!   names;
//! - `claim:NAME=VALUE`: a verified token whose claim NAME is VALUE, or is
//!   a list that holds VALUE (`claim:sub=ci-bot`, `claim:groups=team-a`).
//!
//! An instance name pattern is exact (`team-a`; `""` is the empty
//! instance name), or a prefix when it ends in `*` (`team-a/*`, or `*`
//! for every name).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::caller::{Caller, Credential};
use crate::permission::{Permission, UnknownPermission};

/// The parsed grants file.
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq)]
struct Grant {
    who: Vec<Who>,
    instance_names: Vec<InstancePattern>,
    permissions: BTreeSet<Permission>,
    sandbox_policies: Vec<String>,
}

/// One `who` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Anonymous,
    Authenticated,
    CertificateSubject(String),
    CertificateCommonName(String),
    CertificateAlternativeName(String),
    Claim { name: String, value: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum InstancePattern {
    Exact(String),
    Prefix(String),
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    #[serde(default)]
    grant: Vec<GrantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    who: Vec<String>,
    instance_names: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    /// `corral-policy` values the callers may request; `*` for any.
    #[serde(default)]
    sandbox_policies: Vec<String>,
}

/// Why a grants file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("failed to read the grants file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse the grants file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("grant {index}: {who:?} is not a caller pattern (anonymous, authenticated, cert:subject=…, cert:cn=…, cert:san=…, claim:NAME=VALUE)")]
    Who { index: usize, who: String },
    #[error("grant {index}: `who` is empty, so it would apply to nobody")]
    NoWho { index: usize },
    #[error("grant {index}: `instance_names` is empty, so it would allow nothing")]
    NoInstanceNames { index: usize },
    #[error("grant {index}")]
    Permission {
        index: usize,
        #[source]
        source: UnknownPermission,
    },
}

impl Grants {
    /// Reads and checks the grants file at `path`.
    pub fn load(path: &Path) -> Result<Grants, GrantsError> {
        let text = std::fs::read_to_string(path).map_err(|source| GrantsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Grants::parse(&text).map_err(|e| match e {
            GrantsError::Parse { source, .. } => GrantsError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses grants from TOML text.
    pub fn parse(text: &str) -> Result<Grants, GrantsError> {
        let file: GrantsFile = toml::from_str(text).map_err(|source| GrantsError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        let grants = file
            .grant
            .into_iter()
            .enumerate()
            .map(|(index, entry)| Grant::from_entry(index, entry))
            .collect::<Result<_, _>>()?;
        Ok(Grants { grants })
    }

    /// Whether some grant gives `caller` the `permission` on `instance_name`.
    pub fn allows(&self, caller: &Caller, permission: Permission, instance_name: &str) -> bool {
        self.applying_to(caller).any(|g| {
            g.permissions.contains(&permission)
                && g.instance_names.iter().any(|p| p.matches(instance_name))
        })
    }

    /// Whether some grant gives `caller` the `permission` on every instance
    /// name that starts with `prefix` (a drain of `prefix`'s workers).
    pub fn allows_prefix(&self, caller: &Caller, permission: Permission, prefix: &str) -> bool {
        self.applying_to(caller).any(|g| {
            g.permissions.contains(&permission)
                && g.instance_names.iter().any(|p| p.covers_prefix(prefix))
        })
    }

    /// Whether some grant lets `caller` ask for the sandbox policy `policy`
    /// on `instance_name`.
    pub fn allows_sandbox_policy(
        &self,
        caller: &Caller,
        instance_name: &str,
        policy: &str,
    ) -> bool {
        self.applying_to(caller).any(|g| {
            g.instance_names.iter().any(|p| p.matches(instance_name))
                && g.sandbox_policies.iter().any(|p| p == "*" || p == policy)
        })
    }

    fn applying_to<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants
            .iter()
            .filter(move |g| g.who.iter().any(|w| w.matches(caller)))
    }
}

impl Grant {
    fn from_entry(index: usize, entry: GrantEntry) -> Result<Grant, GrantsError> {
        if entry.who.is_empty() {
            return Err(GrantsError::NoWho { index });
        }
        if entry.instance_names.is_empty() {
            return Err(GrantsError::NoInstanceNames { index });
        }
        let who = entry
            .who
            .iter()
            .map(|w| {
                Who::parse(w).ok_or_else(|| GrantsError::Who {
                    index,
                    who: w.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let permissions = entry
            .permissions
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|source| GrantsError::Permission { index, source })
            })
            .collect::<Result<_, _>>()?;
        let instance_names = entry
            .instance_names
            .into_iter()
            .map(InstancePattern::parse)
            .collect();
        Ok(Grant {
            who,
            instance_names,
            permissions,
            sandbox_policies: entry.sandbox_policies,
        })
    }
}

impl Who {
    fn parse(text: &str) -> Option<Who> {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        match text {
            "anonymous" => return Some(Who::Anonymous),
            "authenticated" => return Some(Who::Authenticated),
            _ => {}
        }
        if let Some(rest) = text.strip_prefix("cert:subject=") {
            return nonempty(rest).map(Who::CertificateSubject);
        }
        if let Some(rest) = text.strip_prefix("cert:cn=") {
            return nonempty(rest).map(Who::CertificateCommonName);
        }
        if let Some(rest) = text.strip_prefix("cert:san=") {
            return nonempty(rest).map(Who::CertificateAlternativeName);
        }
        let (name, value) = text.strip_prefix("claim:")?.split_once('=')?;
        Some(Who::Claim {
            name: nonempty(name)?,
            value: nonempty(value)?,
        })
    }

    fn matches(&self, caller: &Caller) -> bool {
        match (self, caller.credential()) {
            (Who::Anonymous, Credential::Anonymous) => true,
            (Who::Authenticated, c) => !matches!(c, Credential::Anonymous),
            (Who::CertificateSubject(s), Credential::Certificate(c)) => &c.subject == s,
            (Who::CertificateCommonName(n), Credential::Certificate(c)) => {
                c.common_name.as_ref() == Some(n)
            }
            (Who::CertificateAlternativeName(n), Credential::Certificate(c)) => {
                c.alternative_names.contains(n)
            }
            (Who::Claim { name, value }, Credential::Token(t)) => match t.claims.get(name) {
                Some(serde_json::Value::String(s)) => s == value,
                Some(serde_json::Value::Array(items)) => {
                    items.iter().any(|i| i.as_str() == Some(value.as_str()))
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl InstancePattern {
    fn parse(text: String) -> InstancePattern {
        match text.strip_suffix('*') {
            Some(prefix) => InstancePattern::Prefix(prefix.to_owned()),
            None => InstancePattern::Exact(text),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            InstancePattern::Exact(exact) => exact == name,
            InstancePattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }

    /// Whether every name starting with `prefix` matches.
    fn covers_prefix(&self, prefix: &str) -> bool {
        match self {
            InstancePattern::Exact(_) => false,
            InstancePattern::Prefix(p) => prefix.starts_with(p.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::{CertificateIdentity, TokenIdentity};

    const FILE: &str = r#"
        [[grant]]
        who = ["claim:groups=team-a", "cert:cn=team-a-ci"]
        instance_names = ["team-a", "team-a/*"]
        permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]
        sandbox_policies = ["default", "hermetic"]

        [[grant]]
        who = ["cert:san=worker-1.farm"]
        instance_names = ["*"]
        permissions = ["worker", "cas-read", "cas-write", "ac-write"]

        [[grant]]
        who = ["anonymous"]
        instance_names = ["public"]
        permissions = ["ac-read"]
    "#;

    fn token(claims: serde_json::Value) -> Caller {
        let claims = claims.as_object().cloned().unwrap_or_default();
        Caller::from_token(TokenIdentity {
            subject: claims
                .get("sub")
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            issuer: "idp".to_owned(),
            claims,
        })
    }

    fn cert(cn: &str, sans: &[&str]) -> Caller {
        Caller::from_certificate(CertificateIdentity {
            subject: format!("CN={cn}"),
            common_name: Some(cn.to_owned()),
            alternative_names: sans.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    #[test]
    fn a_tenant_gets_what_its_grant_names_on_its_instance_names_only() {
        let grants = Grants::parse(FILE).unwrap();
        let alice = token(serde_json::json!({"sub": "alice", "groups": ["team-b", "team-a"]}));
        assert!(grants.allows(&alice, Permission::Execute, "team-a"));
        assert!(grants.allows(&alice, Permission::Execute, "team-a/linux"));
        assert!(!grants.allows(&alice, Permission::Execute, "team-ab"));
        assert!(!grants.allows(&alice, Permission::Execute, "team-b"));
        assert!(!grants.allows(&alice, Permission::AcWrite, "team-a"));
        assert!(grants.allows_sandbox_policy(&alice, "team-a", "hermetic"));
        assert!(!grants.allows_sandbox_policy(&alice, "team-a", "network"));
        let ci = cert("team-a-ci", &[]);
        assert!(grants.allows(&ci, Permission::CasWrite, "team-a"));
        let bob = token(serde_json::json!({"sub": "bob", "groups": "team-c"}));
        assert!(!grants.allows(&bob, Permission::CasRead, "team-a"));
    }

    #[test]
    fn workers_and_anonymous_callers_match_their_own_patterns() {
        let grants = Grants::parse(FILE).unwrap();
        let worker = cert("w1", &["worker-1.farm"]);
        assert!(grants.allows(&worker, Permission::Worker, "anything"));
        assert!(grants.allows_prefix(&worker, Permission::Worker, ""));
        assert!(!grants.allows(&worker, Permission::Execute, "team-a"));
        let nobody = Caller::anonymous();
        assert!(grants.allows(&nobody, Permission::AcRead, "public"));
        assert!(!grants.allows(&nobody, Permission::AcRead, "team-a"));
        // A token claiming the worker's name is not the worker's certificate.
        let forger = token(serde_json::json!({"sub": "worker-1.farm"}));
        assert!(!grants.allows(&forger, Permission::Worker, "team-a"));
    }

    #[test]
    fn admin_over_a_prefix_needs_a_pattern_covering_every_name_under_it() {
        let grants = Grants::parse(
            r#"
            [[grant]]
            who = ["claim:sub=ops"]
            instance_names = ["team-a/*", "team-b"]
            permissions = ["admin"]
            "#,
        )
        .unwrap();
        let ops = token(serde_json::json!({"sub": "ops"}));
        assert!(grants.allows_prefix(&ops, Permission::Admin, "team-a/x"));
        assert!(!grants.allows_prefix(&ops, Permission::Admin, "team-b"));
        assert!(!grants.allows_prefix(&ops, Permission::Admin, ""));
    }

    #[test]
    fn mistakes_in_the_file_name_the_grant_and_what_is_wrong() {
        for (text, wanted) in [
            (
                "[[grant]]\nwho=[\"root\"]\ninstance_names=[\"\"]",
                "\"root\" is not a caller pattern",
            ),
            (
                "[[grant]]\nwho=[\"anonymous\"]\ninstance_names=[\"\"]\npermissions=[\"write\"]",
                "grant 0",
            ),
            ("[[grant]]\nwho=[]\ninstance_names=[\"\"]", "`who` is empty"),
            (
                "[[grant]]\nwho=[\"anonymous\"]\ninstance_names=[]",
                "`instance_names` is empty",
            ),
            (
                "[[grant]]\nwho=[\"claim:=x\"]\ninstance_names=[\"\"]",
                "not a caller pattern",
            ),
            (
                "[[grant]]\nwho=[\"anonymous\"]\ninstance_names=[\"\"]\nextra=1",
                "parse",
            ),
        ] {
            let err = Grants::parse(text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
        let err = Grants::parse(
            "[[grant]]\nwho=[\"anonymous\"]\ninstance_names=[\"\"]\npermissions=[\"write\"]",
        )
        .unwrap_err();
        let source = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(source.contains("\"write\" is not a permission"), "{source}");
    }
}
