//! deploy/config/*.toml: the daemons' own parsers, and docs/examples.

use std::collections::BTreeMap;

use super::*;

/// Keys whose value in deploy/config may differ from docs/examples: the
/// addresses, paths and sizes of a deployment. Every other key a deploy
/// config sets must be in the example with the same value.
const DEPLOYMENT_KEYS: &[(&str, &[&str])] = &[
    (
        "storage",
        &[
            "listen",
            "backend.dir",
            "backend.max_size_bytes",
            "metrics.listen",
        ],
    ),
    ("scheduler", &["listen", "storage", "metrics.listen"]),
    (
        "worker",
        &[
            "scheduler",
            "storage",
            "directory",
            "slots[0].runner",
            "metrics.listen",
        ],
    ),
    (
        "runner",
        &["listen_path", "build_directory", "metrics.listen"],
    ),
];

/// Parses `text` with `daemon`'s own config type (unknown keys refused)
/// and runs its validation.
fn parse_as_daemon(daemon: &str, text: &str) -> Result<(), String> {
    fn check<T: serde::de::DeserializeOwned>(
        text: &str,
        validate: impl Fn(&T) -> Result<(), String>,
    ) -> Result<(), String> {
        let cfg: T = toml::from_str(text).map_err(|e| e.to_string())?;
        validate(&cfg)
    }
    match daemon {
        "storage" => check(text, |c: &corral_storage::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        "scheduler" => check(text, |c: &corral_scheduler::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        "worker" => check(text, |c: &corral_worker::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        "runner" => check(text, |c: &corral_runner::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        other => panic!("no daemon {other}"),
    }
}

/// What in `deployed` differs from `example`, but for `allowed` keys.
fn drift(
    deployed: &BTreeMap<String, toml::Value>,
    example: &BTreeMap<String, toml::Value>,
    allowed: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in deployed {
        match example.get(key) {
            None => problems.push(format!("{key} is not in the example")),
            Some(shown) if shown != value && !allowed.contains(&key.as_str()) => {
                problems.push(format!("{key} = {value}, the example says {shown}"));
            }
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn deploy_configs_parse_with_the_daemons_and_match_the_examples() {
    for (daemon, allowed) in DEPLOYMENT_KEYS {
        let text = deploy_config(daemon);
        parse_as_daemon(daemon, &text)
            .unwrap_or_else(|e| panic!("deploy/config/{daemon}.toml: {e}"));
        let example = read(&repo().join(format!("docs/examples/{daemon}.toml")));
        let problems = drift(&parse_leaves(&text), &parse_leaves(&example), allowed);
        assert!(
            problems.is_empty(),
            "deploy/config/{daemon}.toml against docs/examples/{daemon}.toml:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn a_config_drifting_from_its_example_is_caught() {
    let example = parse_leaves("listen = \"a\"\nx = 1\n[t]\ny = 2\n");
    let allowed = ["listen"];
    let same = parse_leaves("listen = \"b\"\n[t]\ny = 2\n");
    assert!(drift(&same, &example, &allowed).is_empty());
    let changed = parse_leaves("listen = \"b\"\nx = 3\n[t]\nz = 2\n");
    assert_eq!(
        drift(&changed, &example, &allowed),
        ["t.z is not in the example", "x = 3, the example says 1"]
    );
    // The daemons' own parsers refuse a key none of them has.
    let err =
        parse_as_daemon("storage", "listen = \"0.0.0.0:1\"\nlisten_adress = \"x\"\n").unwrap_err();
    assert!(err.contains("listen_adress"), "{err}");
}
