//! Crafted input: every file an operator writes. The shipped examples
//! (docs/examples/*.toml, policies/*.toml) are mutated the ways a hand
//! edit goes wrong: a key removed, renamed or added, a value of another
//! type or out of range; and TOML-ish text is made from the files' own
//! words. Each daemon's config, each sandbox policy and the grants file
//! either parse (and then `validate` answers without panicking) or are
//! refused with an error that names the key at fault. Bearer tokens,
//! arbitrary or signed with arbitrary claims, verify or are refused,
//! never panic, and none is accepted that it should not be.
//!
//! CI runs [`CASES`] cases per property; `PROPTEST_CASES=100000 cargo test
//! -p corral-e2e --test crafted` runs a longer search (docs/spec.md,
//! "Crafted input").

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Cases per property in CI, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;

fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        // A failure is kept as a named regression test, not a seed file.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> Table {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An error and its causes, as a daemon prints them.
use corral_proto::status::error_chain as chain;

/// One step into a document: a key of a table or an element of an array.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    At(usize),
}

/// Every path in `value`, tables and arrays included.
fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Table(table) => {
            for (key, value) in table {
                prefix.push(Step::Key(key.clone()));
                out.push(prefix.clone());
                paths(value, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                prefix.push(Step::At(i));
                out.push(prefix.clone());
                paths(value, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// The value a path leads to.
fn at<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(value, |value, step| match (step, value) {
            (Step::Key(key), Value::Table(table)) => table.get_mut(key),
            (Step::At(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        })
}

/// The last key on a path: what an error about it should name.
fn leaf(path: &[Step]) -> Option<&str> {
    path.iter().rev().find_map(|step| match step {
        Step::Key(key) => Some(key.as_str()),
        Step::At(_) => None,
    })
}

/// A hand edit gone wrong.
#[derive(Debug, Clone)]
enum Edit {
    Remove(Index),
    Replace(Index, Value),
    /// A key no schema has, in the table at the index (or the top).
    Add(Index, String, Value),
    /// A key spelled wrong.
    Rename(Index, String),
}

fn value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0i64, -1, 1, 1023, 1024, i64::MAX, i64::MIN])
            .prop_map(Value::Integer),
        any::<bool>().prop_map(Value::Boolean),
        any::<f64>().prop_map(Value::Float),
        prop::sample::select(vec![
            "",
            "relative/path",
            "/",
            "/nonexistent/x",
            "http://127.0.0.1:1",
            "https://h:1",
            "127.0.0.1:0",
            "[::1]:99999",
            "default",
            "anonymous",
            "claim:=",
            "cert:cn=",
            "execute",
            "*",
            "disk",
            "memory",
            "remote",
            "text",
            "json",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        ".{0,12}".prop_map(Value::String),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..2)
                .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        (any::<Index>(), "zz_[a-z]{1,6}", value()).prop_map(|(i, k, v)| Edit::Add(i, k, v)),
        (any::<Index>(), "[a-z_]{1,3}").prop_map(|(i, s)| Edit::Rename(i, s)),
    ]
}

/// Keys within `value`: an error about a new table may name one of them.
fn keys_in(value: &Value, out: &mut Vec<String>) {
    let mut all = Vec::new();
    paths(value, &mut Vec::new(), &mut all);
    out.extend(all.iter().filter_map(|p| leaf(p)).map(str::to_owned));
}

/// Applies `edit` to `doc`; returns the keys an error about it may name
/// (the key touched, the keys in a value put there, a key's old and new
/// spelling), or `None` if it touched nothing.
fn apply(doc: &mut Value, edit: &Edit) -> Option<Vec<String>> {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let pick = |index: &Index| (!all.is_empty()).then(|| all[index.index(all.len())].clone());
    match edit {
        Edit::Remove(index) => {
            let path = pick(index)?;
            let (last, parent) = path.split_last()?;
            match (last, at(doc, parent)?) {
                (Step::Key(key), Value::Table(table)) => {
                    table.remove(key);
                }
                (Step::At(i), Value::Array(items)) => {
                    items.remove(*i);
                }
                _ => return None,
            }
            Some(vec![leaf(&path)?.to_owned()])
        }
        Edit::Replace(index, value) => {
            let path = pick(index)?;
            *at(doc, &path)? = value.clone();
            let mut names = vec![leaf(&path)?.to_owned()];
            keys_in(value, &mut names);
            Some(names)
        }
        Edit::Add(index, key, value) => {
            // Into the picked table, else the top one.
            let path = pick(index).unwrap_or_default();
            let table = match at(doc, &path) {
                Some(Value::Table(table)) => table,
                _ => doc.as_table_mut()?,
            };
            table.insert(key.clone(), value.clone());
            let mut names = vec![key.clone()];
            keys_in(value, &mut names);
            Some(names)
        }
        Edit::Rename(index, suffix) => {
            let path = pick(index)?;
            let (Step::Key(key), parent) = path.split_last()? else {
                return None;
            };
            let Some(Value::Table(table)) = at(doc, parent) else {
                return None;
            };
            let value = table.remove(key)?;
            let renamed = format!("{key}{suffix}");
            table.insert(renamed.clone(), value);
            Some(vec![key.clone(), renamed])
        }
    }
}

/// A shipped file with one to three edits, as text; and, for one edit,
/// the keys an error about it may name.
fn edited(file: &'static str) -> impl Strategy<Value = (String, Option<Vec<String>>)> {
    let base = Value::Table(read(file));
    prop::collection::vec(edit(), 1..4).prop_map(move |edits| {
        let mut doc = base.clone();
        let touched: Vec<Option<Vec<String>>> = edits.iter().map(|e| apply(&mut doc, e)).collect();
        let text = toml::to_string(doc.as_table().expect("a table")).unwrap_or_default();
        let key = match touched.as_slice() {
            [one] => one.clone(),
            _ => None,
        };
        (text, key)
    })
}

/// TOML-ish lines made of a file's own words: tables, keys and values in
/// any order, some of them broken.
fn tomlish(file: &'static str) -> impl Strategy<Value = String> {
    let mut words = Vec::new();
    let mut all = Vec::new();
    paths(&Value::Table(read(file)), &mut Vec::new(), &mut all);
    for path in &all {
        if let Some(key) = leaf(path) {
            words.push(key.to_owned());
        }
    }
    words.sort();
    words.dedup();
    let key = prop::sample::select(words);
    let line = prop_oneof![
        (key.clone(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        key.clone().prop_map(|k| format!("[{k}]")),
        key.clone().prop_map(|k| format!("[[{k}]]")),
        (key.clone(), key).prop_map(|(a, b)| format!("[{a}.{b}]")),
        ".{0,20}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

/// Parses `text` as a daemon does (corral/src/config.rs): a refusal names
/// the key edited; what parses is validated without a panic.
fn check_config<T: DeserializeOwned>(
    text: &str,
    keys: Option<&[String]>,
    validate: impl Fn(&T) -> Option<String>,
) -> Result<(), TestCaseError> {
    match toml::from_str::<T>(text) {
        Ok(cfg) => {
            if let Some(message) = validate(&cfg) {
                prop_assert!(!message.is_empty());
            }
        }
        Err(err) => {
            let message = err.to_string();
            prop_assert!(!message.is_empty());
            assert_names(&message, keys, text)?;
        }
    }
    Ok(())
}

/// Whether `message` names one of `keys`, when an edit touched any.
fn assert_names(message: &str, keys: Option<&[String]>, text: &str) -> Result<(), TestCaseError> {
    if let Some(keys) = keys {
        prop_assert!(
            keys.iter()
                .any(|key| message.contains(&format!("`{key}`")) || message.contains(key.as_str())),
            "none of {keys:?} named in {message}\n{text}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn a_storage_config_parses_or_names_the_key((text, key) in edited("docs/examples/storage.toml")) {
        check_config::<corral_storage::Config>(&text, key.as_deref(), |c| c.validate().err().map(|e| chain(&e)))?;
    }

    #[test]
    fn a_scheduler_config_parses_or_names_the_key((text, key) in edited("docs/examples/scheduler-tls.toml")) {
        check_config::<corral_scheduler::Config>(&text, key.as_deref(), |c| c.validate().err().map(|e| chain(&e)))?;
    }

    #[test]
    fn a_worker_config_parses_or_names_the_key((text, key) in edited("docs/examples/worker-tls.toml")) {
        check_config::<corral_worker::Config>(&text, key.as_deref(), |c| c.validate().err().map(|e| chain(&e)))?;
    }

    #[test]
    fn a_runner_config_parses_or_names_the_key((text, key) in edited("docs/examples/runner.toml")) {
        check_config::<corral_runner::config::Config>(&text, key.as_deref(), |c| c.validate().err().map(|e| chain(&e)))?;
    }

    #[test]
    fn tomlish_text_never_panics_a_config_parser(
        storage in tomlish("docs/examples/storage-tls.toml"),
        scheduler in tomlish("docs/examples/scheduler-tls.toml"),
        worker in tomlish("docs/examples/worker-tls.toml"),
        runner in tomlish("docs/examples/runner.toml"),
    ) {
        check_config::<corral_storage::Config>(&storage, None, |c| c.validate().err().map(|e| chain(&e)))?;
        check_config::<corral_scheduler::Config>(&scheduler, None, |c| c.validate().err().map(|e| chain(&e)))?;
        check_config::<corral_worker::Config>(&worker, None, |c| c.validate().err().map(|e| chain(&e)))?;
        check_config::<corral_runner::config::Config>(&runner, None, |c| c.validate().err().map(|e| chain(&e)))?;
    }

    #[test]
    fn a_policy_parses_or_names_the_key(
        (text, key) in prop_oneof![
            edited("policies/default.toml"),
            edited("policies/hermetic.toml"),
            edited("policies/network.toml"),
        ],
    ) {
        match corral_sandbox::Policy::parse(&text, Path::new("edited.toml")) {
            Ok(_) => {}
            Err(err) => {
                let message = chain(&err);
                prop_assert!(message.contains("edited.toml"), "{}", message);
                // A value refused after parsing names its field in full.
                assert_names(&message, key.as_deref(), &text)?;
            }
        }
    }

    #[test]
    fn tomlish_text_is_a_policy_or_refused(text in tomlish("policies/default.toml")) {
        if let Err(err) = corral_sandbox::Policy::parse(&text, Path::new("edited.toml")) {
            prop_assert!(chain(&err).contains("edited.toml"));
        }
    }

    #[test]
    fn a_grants_file_parses_or_names_the_key((text, key) in edited("docs/examples/grants.toml")) {
        match corral_auth::Grants::parse(&text) {
            Ok(_) => {}
            Err(err) => {
                let message = chain(&err);
                // A value refused after parsing names its grant.
                if !message.starts_with("grant ") {
                    assert_names(&message, key.as_deref(), &text)?;
                }
            }
        }
    }

    #[test]
    fn tomlish_text_is_a_grants_file_or_refused(text in tomlish("docs/examples/grants.toml")) {
        if let Err(err) = corral_auth::Grants::parse(&text) {
            prop_assert!(!chain(&err).is_empty());
        }
    }
}

proptest! {
    // Each case builds a sandbox: seccomp filters, a mount plan, a cgroup
    // probe.
    #![proptest_config(config(CASES / 8))]

    #[test]
    fn a_policy_that_parses_builds_a_sandbox_or_says_why(
        (text, _key) in prop_oneof![edited("policies/default.toml"), edited("policies/network.toml")],
    ) {
        if let Ok(policy) = corral_sandbox::Policy::parse(&text, Path::new("edited.toml")) {
            if let Err(err) = corral_sandbox::Sandbox::new(policy) {
                prop_assert!(!chain(&err).is_empty());
            }
        }
    }
}

/// The HS256 secret tokens are signed with below.
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn verifier() -> (tempfile::TempDir, corral_auth::token::TokenVerifier) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = corral_auth::token::TokenConfig {
        jwks_file: None,
        public_key_files: Vec::new(),
        hs256_secret_file: Some(secret),
        issuers: vec!["corral".to_owned()],
        audiences: vec!["farm".to_owned()],
        leeway_s: 30,
    };
    let verifier = corral_auth::token::TokenVerifier::new(&cfg).unwrap();
    (dir, verifier)
}

fn claim() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!("corral")),
        Just(json!("farm")),
        Just(json!(["farm", "other"])),
        Just(json!(4_102_444_800u64)), // 2100
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!(null)),
        Just(json!({})),
        ".{0,8}".prop_map(|s| json!(s)),
    ]
}

/// The right claims, each sometimes changed or left out.
fn claims() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    use serde_json::json;
    let one = |name: &'static str, good: serde_json::Value| {
        prop_oneof![
            3 => Just(Some(good)),
            1 => Just(None),
            1 => claim().prop_map(Some),
        ]
        .prop_map(move |v| v.map(|v| (name.to_owned(), v)))
    };
    (
        one("iss", json!("corral")),
        one("aud", json!("farm")),
        one("exp", json!(4_102_444_800u64)),
        one("nbf", json!(0)),
        one("sub", json!("ci")),
        one("groups", json!(["team-a"])),
    )
        .prop_map(|(a, b, c, d, e, f)| [a, b, c, d, e, f].into_iter().flatten().collect())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn any_string_as_a_bearer_token_is_refused(
        token in prop_oneof![
            ".{0,200}",
            "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}",
            "eyJ[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_.-]{0,80}",
        ],
    ) {
        let (_dir, verifier) = verifier();
        let refused = verifier.verify(&token);
        prop_assert!(refused.is_err(), "accepted {token:?}");
        prop_assert!(!refused.unwrap_err().to_string().is_empty());
    }

    #[test]
    fn a_signed_token_is_accepted_only_with_the_right_claims(
        claims in claims(),
        tamper in prop::option::weighted(0.2, (any::<Index>(), any::<char>())),
    ) {
        let (_dir, verifier) = verifier();
        let mut token = corral_auth::token::sign_hs256(SECRET, &serde_json::Value::Object(claims.clone())).unwrap();
        let mut tampered = false;
        if let Some((index, c)) = tamper {
            let i = index.index(token.len());
            if token.is_char_boundary(i) && !token[i..].starts_with(c) {
                let rest = token[i..].chars().skip(1).collect::<String>();
                token = format!("{}{c}{rest}", &token[..i]);
                tampered = true;
            }
        }
        match verifier.verify(&token) {
            Ok(identity) => {
                // What was accepted is what was signed, however the token
                // was changed (base64url spells a last character's unused
                // bits many ways).
                prop_assert_eq!(&identity.claims, &claims, "tampered: {}", tampered);
                prop_assert_eq!(claims.get("iss"), Some(&serde_json::json!("corral")));
                let aud = claims.get("aud");
                prop_assert!(
                    aud == Some(&serde_json::json!("farm"))
                        || aud == Some(&serde_json::json!(["farm", "other"])),
                    "aud {:?}", aud
                );
                prop_assert!(claims.get("exp").and_then(|e| e.as_u64()).is_some_and(|e| e > 1_700_000_000));
                prop_assert_eq!(identity.issuer, "corral");
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }
}
