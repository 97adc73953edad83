//! Whether a worker's platform satisfies an action's, property by
//! property (`[platform_matching]` in scheduler.toml).
//!
//! Every property name is matched `exact` unless configured otherwise, as
//! Buildbarn does: the worker offers exactly the values the action asks
//! for, and an action that leaves the name out matches only a worker that
//! leaves it out too. REAPI allows a name to repeat, and a platform is
//! compared as a set of (name, value) pairs, so "the values of a name" is
//! a set:
//! - `exact`: the worker's values of the name equal the action's;
//! - `subset`: every value the action asks for is among the worker's (a
//!   worker offers a list by repeating the name, `cpu-feature=avx2`,
//!   `cpu-feature=sse4_2`); an action that leaves the name out matches;
//! - `minimum`: numeric; the worker's value is at least the action's (the
//!   largest of each side's values counts when a name repeats); an action
//!   that leaves the name out matches, a worker that leaves it out (or
//!   offers no number) matches no action that asks;
//! - `any`: a worker offering the name at all (with any value) matches
//!   every value an action asks for, and actions that leave it out; a
//!   worker leaving it out matches only actions that leave it out too.
//!
//! `container-image` is matched `any` unless configured otherwise: a
//! worker that runs images pulls whichever one the action names, so one
//! pool serves every image (issue 19).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::queue::PlatformKey;

/// How the values of one property name are matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Matching {
    /// The worker's values equal the action's.
    #[default]
    Exact,
    /// The action's values are among the worker's.
    Subset,
    /// Numbers: the worker's value is at least the action's.
    Minimum,
    /// The worker offers the name: any value the action asks for.
    Any,
}

/// The platform property naming an action's container image.
pub const CONTAINER_IMAGE: &str = "container-image";

impl std::fmt::Display for Matching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exact => "exact",
            Self::Subset => "subset",
            Self::Minimum => "minimum",
            Self::Any => "any",
        })
    }
}

/// An action's platform that no worker could ever satisfy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("platform property {name} is matched as minimum, so its value must be a non-negative number, not {value:?}")]
    NotANumber { name: String, value: String },
}

/// Why one worker's platform does not satisfy an action's: the first
/// property (by name) that fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub name: String,
    pub matching: Matching,
    /// What the action asks for, sorted.
    pub wanted: Vec<String>,
    /// What the worker offers, sorted (empty: nothing).
    pub offered: Vec<String>,
}

/// The configured rule of each property name; every other name is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformMatcher {
    rules: BTreeMap<String, Matching>,
}

/// Nothing configured: every name exact but `container-image`.
impl Default for PlatformMatcher {
    fn default() -> Self {
        Self::new(BTreeMap::new())
    }
}

/// A value of a `minimum` property, when it is one.
fn number(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
}

/// The values of `name` in `platform` (sorted: the key is).
fn values<'a>(platform: &'a PlatformKey, name: &str) -> Vec<&'a str> {
    platform
        .properties()
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn largest(values: &[&str]) -> Option<f64> {
    values.iter().filter_map(|v| number(v)).reduce(f64::max)
}

impl PlatformMatcher {
    /// The configured rules; `container-image` is `any` unless they say
    /// otherwise.
    pub fn new(mut rules: BTreeMap<String, Matching>) -> Self {
        rules
            .entry(CONTAINER_IMAGE.to_owned())
            .or_insert(Matching::Any);
        Self { rules }
    }

    /// The rule for `name`.
    pub fn rule(&self, name: &str) -> Matching {
        self.rules.get(name).copied().unwrap_or_default()
    }

    /// Refuses an action's platform no worker could satisfy however it
    /// is configured: a `minimum` property that is not a number.
    pub fn check_action(&self, action: &PlatformKey) -> Result<(), PlatformError> {
        for (name, value) in action.properties() {
            if self.rule(name) == Matching::Minimum && number(value).is_none() {
                return Err(PlatformError::NotANumber {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether a worker offering `worker` may run an action asking for
    /// `action`.
    pub fn satisfies(&self, worker: &PlatformKey, action: &PlatformKey) -> bool {
        // The common case, and the only one when nothing is configured.
        if worker == action {
            return true;
        }
        self.mismatch(worker, action).is_none()
    }

    /// The first property name (sorted) on which `worker` fails
    /// `action`, if any.
    pub fn mismatch(&self, worker: &PlatformKey, action: &PlatformKey) -> Option<Mismatch> {
        let mut names: Vec<&str> = worker
            .properties()
            .iter()
            .chain(action.properties())
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().find_map(|name| {
            let matching = self.rule(name);
            let offered = values(worker, name);
            let wanted = values(action, name);
            let ok = match matching {
                Matching::Exact => offered == wanted,
                Matching::Subset => wanted.iter().all(|w| offered.contains(w)),
                Matching::Minimum => match largest(&wanted) {
                    None => wanted.is_empty(),
                    Some(want) => largest(&offered).is_some_and(|have| have >= want),
                },
                Matching::Any => wanted.is_empty() || !offered.is_empty(),
            };
            (!ok).then(|| Mismatch {
                name: name.to_owned(),
                matching,
                wanted: wanted.into_iter().map(str::to_owned).collect(),
                offered: offered.into_iter().map(str::to_owned).collect(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(properties: &[(&str, &str)]) -> PlatformKey {
        PlatformKey::new(
            properties
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        )
    }

    fn matcher() -> PlatformMatcher {
        PlatformMatcher::new(BTreeMap::from([
            ("cores".to_owned(), Matching::Minimum),
            ("memory-gib".to_owned(), Matching::Minimum),
            ("cpu-feature".to_owned(), Matching::Subset),
        ]))
    }

    #[test]
    fn unconfigured_properties_match_exactly_as_buildbarn_does() {
        let m = PlatformMatcher::default();
        let linux = key(&[("OSFamily", "linux")]);
        assert!(m.satisfies(&linux, &linux));
        assert!(!m.satisfies(&linux, &key(&[("OSFamily", "macos")])));
        // A property the action leaves out, the worker must leave out too.
        assert!(!m.satisfies(&key(&[("OSFamily", "linux"), ("gpu", "1")]), &linux));
        assert!(!m.satisfies(&linux, &key(&[("OSFamily", "linux"), ("gpu", "1")])));
        assert!(!m.satisfies(&linux, &key(&[])));
        // Repeated names compare as sets.
        let two = key(&[("tag", "a"), ("tag", "b")]);
        assert!(m.satisfies(&two, &key(&[("tag", "b"), ("tag", "a")])));
        assert!(!m.satisfies(&two, &key(&[("tag", "a")])));
    }

    #[test]
    fn a_worker_running_images_matches_every_container_image_and_none() {
        // Whatever else is configured, container-image is `any`.
        for m in [PlatformMatcher::default(), matcher()] {
            let images = key(&[("OSFamily", "linux"), ("container-image", "*")]);
            let plain = key(&[("OSFamily", "linux")]);
            for wanted in [
                "docker://127.0.0.1:5000/corral/busybox:1",
                "docker://gcr.io/p/i@sha256:00",
                "oci:/srv/images/x",
            ] {
                let action = key(&[("OSFamily", "linux"), ("container-image", wanted)]);
                assert!(m.satisfies(&images, &action), "{wanted}");
                // A worker that runs no images gets no action naming one.
                let mismatch = m.mismatch(&plain, &action).unwrap();
                assert_eq!(
                    (mismatch.name.as_str(), mismatch.matching),
                    ("container-image", Matching::Any)
                );
            }
            // Actions without an image still go to it.
            assert!(m.satisfies(&images, &plain));
            // Other properties still decide.
            let macos = key(&[("OSFamily", "macos"), ("container-image", "docker://h/i")]);
            assert!(!m.satisfies(&images, &macos));
        }
        // Configured otherwise, it is matched as configured.
        let exact = PlatformMatcher::new(BTreeMap::from([(
            "container-image".to_owned(),
            Matching::Exact,
        )]));
        let images = key(&[("container-image", "*")]);
        assert!(!exact.satisfies(&images, &key(&[("container-image", "docker://h/i")])));
    }

    #[test]
    fn a_subset_property_matches_any_of_the_values_a_worker_offers() {
        let m = matcher();
        let worker = key(&[
            ("OSFamily", "linux"),
            ("cpu-feature", "avx2"),
            ("cpu-feature", "sse4_2"),
        ]);
        let asks = |features: &[&str]| {
            let mut p = vec![("OSFamily", "linux")];
            p.extend(features.iter().map(|f| ("cpu-feature", *f)));
            key(&p)
        };
        assert!(m.satisfies(&worker, &asks(&[])));
        assert!(m.satisfies(&worker, &asks(&["avx2"])));
        assert!(m.satisfies(&worker, &asks(&["sse4_2", "avx2"])));
        let miss = m.mismatch(&worker, &asks(&["avx2", "avx512f"])).unwrap();
        assert_eq!(miss.name, "cpu-feature");
        assert_eq!(miss.matching, Matching::Subset);
        assert_eq!(miss.wanted, ["avx2", "avx512f"]);
        assert_eq!(miss.offered, ["avx2", "sse4_2"]);
        // The exact properties still have their say.
        let mac = key(&[("OSFamily", "macos"), ("cpu-feature", "avx2")]);
        assert_eq!(m.mismatch(&mac, &asks(&["avx2"])).unwrap().name, "OSFamily");
    }

    #[test]
    fn a_minimum_property_needs_at_least_the_actions_number() {
        let m = matcher();
        let worker = key(&[("cores", "8"), ("memory-gib", "15.5")]);
        assert!(m.satisfies(&worker, &key(&[])));
        assert!(m.satisfies(&worker, &key(&[("cores", "8")])));
        assert!(m.satisfies(&worker, &key(&[("cores", "2"), ("memory-gib", "15.5")])));
        assert!(m.satisfies(&worker, &key(&[("memory-gib", "0.5")])));
        let miss = m.mismatch(&worker, &key(&[("cores", "16")])).unwrap();
        assert_eq!(
            (miss.name.as_str(), miss.matching, miss.offered),
            ("cores", Matching::Minimum, vec!["8".to_owned()])
        );
        // A worker offering no number offers nothing.
        assert!(!m.satisfies(&key(&[]), &key(&[("cores", "1")])));
        assert!(!m.satisfies(&key(&[("cores", "many")]), &key(&[("cores", "1")])));
        // Numbers, not strings: "10" is more than "9".
        assert!(m.satisfies(&key(&[("cores", "10")]), &key(&[("cores", "9")])));
    }

    #[test]
    fn an_action_asking_a_minimum_that_is_no_number_is_refused() {
        let m = matcher();
        assert_eq!(m.check_action(&key(&[("cores", "4"), ("x", "y")])), Ok(()));
        assert_eq!(
            m.check_action(&key(&[("cores", "four")]))
                .unwrap_err()
                .to_string(),
            "platform property cores is matched as minimum, so its value must be a \
             non-negative number, not \"four\""
        );
        assert!(m.check_action(&key(&[("memory-gib", "-1")])).is_err());
        assert!(m.check_action(&key(&[("memory-gib", "NaN")])).is_err());
    }
}
