//! The sandboxes a runner offers, one per policy, built at start-up so a
//! policy that cannot be applied on this host stops the runner before any
//! action runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use corral_sandbox::{policy, Policy, Sandbox};

use crate::error::Error;

/// Sandboxes by policy name.
#[derive(Debug, Clone)]
pub struct Policies {
    sandboxes: BTreeMap<String, Arc<Sandbox>>,
    default: String,
}

impl Policies {
    /// The built-in policies, plus `<name>.toml` files in `dir` (which
    /// override built-ins of the same name).
    pub fn load(dir: Option<&Path>, default: &str) -> Result<Policies, Error> {
        let mut policies: BTreeMap<String, Policy> = BTreeMap::new();
        for (name, _) in policy::BUILTIN {
            let parsed = Policy::builtin(name).expect("listed in BUILTIN")?;
            policies.insert((*name).to_owned(), parsed);
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|source| Error::ListPolicies {
                dir: dir.to_owned(),
                source,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|source| Error::ListPolicies {
                        dir: dir.to_owned(),
                        source,
                    })?
                    .path();
                let (Some(stem), Some("toml")) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) else {
                    continue;
                };
                policies.insert(stem.to_owned(), Policy::load(&path)?);
            }
        }
        if !policies.contains_key(default) {
            return Err(Error::NoDefaultPolicy {
                name: default.to_owned(),
            });
        }
        let mut sandboxes = BTreeMap::new();
        for (name, policy) in policies {
            let sandbox = Sandbox::new(policy).map_err(|source| Error::Sandbox {
                name: name.clone(),
                source,
            })?;
            sandboxes.insert(name, Arc::new(sandbox));
        }
        Ok(Policies {
            sandboxes,
            default: default.to_owned(),
        })
    }

    /// The name a request's policy goes by: `name`, or the default's for
    /// an empty name.
    pub fn name_of<'a>(&'a self, name: &'a str) -> &'a str {
        if name.is_empty() {
            &self.default
        } else {
            name
        }
    }

    /// The sandbox for `name`; the default for an empty name.
    pub fn get(&self, name: &str) -> Result<Arc<Sandbox>, Error> {
        let name = if name.is_empty() { &self.default } else { name };
        self.sandboxes
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownPolicy {
                name: name.to_owned(),
                known: self.names().join(", "),
            })
    }

    /// The default policy's sandbox.
    pub fn default_sandbox(&self) -> Arc<Sandbox> {
        self.sandboxes[&self.default].clone()
    }

    /// Policy names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.sandboxes.keys().cloned().collect()
    }

    /// Everything the host could not provide, once per distinct message.
    pub fn warnings(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .sandboxes
            .values()
            .flat_map(|s| s.warnings().iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}
