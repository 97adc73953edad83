//! Loading a daemon's TOML configuration file.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads `path` as a `T`, or returns `T::default()` (what `corral up`
/// runs) when no file is given.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

/// The test of a daemon's `--metrics ADDR` flag, the same for each
/// daemon over its own config type `C`: `apply` applies the daemon's
/// flags to a config, with `--metrics` given (`Some`) or not; `table`
/// reads the config's `[metrics]` as its `listen` and `tls`.
#[cfg(test)]
pub(crate) fn assert_the_metrics_flag_sets_listen_and_keeps_the_files_tls<C>(
    apply: impl Fn(Option<std::net::SocketAddr>, &mut C),
    table: impl Fn(&C) -> Option<(std::net::SocketAddr, Option<corral_auth::tls::ServerTls>)>,
) where
    C: DeserializeOwned + Default,
{
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9981));
    // No [metrics] in the file: the flag turns the port on, plain HTTP.
    let mut cfg = C::default();
    assert_eq!(table(&cfg), None, "no [metrics] by default");
    apply(Some(addr), &mut cfg);
    assert_eq!(table(&cfg), Some((addr, None)));
    // A file with [metrics] and [metrics.tls]: only listen changes.
    let mut cfg: C = toml::from_str(
        "[metrics]\nlisten = \"0.0.0.0:1\"\n[metrics.tls]\n\
         certificate = \"/c.crt\"\nprivate_key = \"/c.key\"\n",
    )
    .expect("a [metrics] table with TLS parses");
    let tls = table(&cfg).and_then(|(_, tls)| tls);
    assert!(tls.is_some(), "the file's [metrics.tls] is read");
    apply(Some(addr), &mut cfg);
    assert_eq!(table(&cfg), Some((addr, tls)));
    // Without the flag the file's [metrics] stays as it is.
    let mut cfg = C::default();
    apply(None, &mut cfg);
    assert_eq!(table(&cfg), None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
    }

    #[test]
    fn no_file_means_defaults() {
        let cfg: corral_scheduler::Config = load(None).unwrap();
        assert_eq!(cfg, corral_scheduler::Config::default());
    }

    #[test]
    fn every_example_config_parses_and_validates() {
        let dir = examples();
        let path = |name: &str| dir.join(name);
        let runner = load::<corral_runner::Config>(Some(&path("runner.toml"))).unwrap();
        runner.validate().unwrap();
        assert!(runner.metrics.is_some(), "runner.toml shows [metrics]");
        let storage = load::<corral_storage::Config>(Some(&path("storage.toml"))).unwrap();
        storage.validate().unwrap();
        assert!(storage.metrics.is_some(), "storage.toml shows [metrics]");
        load::<corral_worker::Config>(Some(&path("worker.toml")))
            .unwrap()
            .validate()
            .unwrap();
        load::<corral_scheduler::Config>(Some(&path("scheduler.toml")))
            .unwrap()
            .validate()
            .unwrap();
        // Storage with an object-store tier behind its disk.
        let storage =
            load::<corral_storage::Config>(Some(&path("storage-object-store.toml"))).unwrap();
        storage.validate().unwrap();
        assert!(storage.object_store.is_some());
        // A farm across machines over TLS: every table present.
        let storage = load::<corral_storage::Config>(Some(&path("storage-tls.toml"))).unwrap();
        storage.validate().unwrap();
        assert!(storage.tls.is_some() && storage.client_tls.is_some());
        assert!(storage.auth.as_ref().is_some_and(|a| a.tokens.is_some()));
        let scheduler =
            load::<corral_scheduler::Config>(Some(&path("scheduler-tls.toml"))).unwrap();
        scheduler.validate().unwrap();
        assert!(scheduler.auth.is_some());
        assert_eq!(scheduler.fairness.of("ci"), (2, Some(50_000), Some(64)));
        assert_eq!(
            scheduler.platform_matching.get("cores"),
            Some(&corral_scheduler::platform_matching::Matching::Minimum)
        );
        assert_eq!(
            scheduler.metrics_tls().map(|(_, key)| key),
            Some("metrics.tls")
        );
        let worker = load::<corral_worker::Config>(Some(&path("worker-tls.toml"))).unwrap();
        worker.validate().unwrap();
        assert!(worker.client_tls.is_some_and(|t| t.token_file.is_some()));
        // The grants file of a shared farm (docs/shared-farm.md).
        let grants = std::fs::read_to_string(path("grants.toml")).unwrap();
        corral_auth::Grants::parse(&grants).unwrap();
        // Every file in the folder is covered above.
        let count = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "toml")
            })
            .count();
        assert_eq!(
            count,
            9,
            "a new example in {} needs a line here",
            dir.display()
        );
    }

    #[test]
    fn every_daemons_example_shows_a_valid_tracing_table() {
        let dir = examples();
        let path = |name: &str| dir.join(name);
        let tables = [
            load::<corral_runner::Config>(Some(&path("runner.toml")))
                .unwrap()
                .tracing,
            load::<corral_storage::Config>(Some(&path("storage.toml")))
                .unwrap()
                .tracing,
            load::<corral_worker::Config>(Some(&path("worker.toml")))
                .unwrap()
                .tracing,
            load::<corral_scheduler::Config>(Some(&path("scheduler.toml")))
                .unwrap()
                .tracing,
        ];
        for table in tables {
            let table = table.expect("each daemon's example shows [tracing]");
            table.validate("tracing").unwrap();
        }
    }

    fn parse<T: DeserializeOwned>(text: &str) -> T {
        toml::from_str(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"))
    }

    // One test per daemon: every key docs/config.md gives a default for
    // takes it when left out of a file, or of a table that is there.
    // The values are docs/config.md's, written out: not `Default`, which
    // would agree with itself. Storage's are in storage/src/config.rs.

    #[test]
    fn runner_keys_left_out_take_the_defaults_docs_config_md_gives() {
        let ids = corral_runner::config::ActionIdsConfig {
            first_uid: 1_900_000_000,
            first_gid: 1_900_000_000,
            count: 256,
        };
        let cfg: corral_runner::Config = parse("");
        assert_eq!(cfg.listen_path, Path::new("corral-data/runner.sock"));
        assert_eq!(cfg.build_directory, Path::new("corral-data/worker/build"));
        assert_eq!(cfg.policies_directory, None);
        assert_eq!(cfg.default_policy, "default");
        assert_eq!(cfg.action_ids, ids);
        assert_eq!((cfg.metrics, cfg.tracing), (None, None));
        let cfg: corral_runner::Config = parse("[action_ids]\n");
        assert_eq!(cfg.action_ids, ids);
    }

    #[test]
    fn worker_keys_left_out_take_the_defaults_docs_config_md_gives() {
        let slot = corral_worker::config::SlotGroup {
            concurrency: 0,
            runner: "corral-data/runner.sock".into(),
            platform: Default::default(),
            platform_lists: Default::default(),
            size_class: 0,
        };
        let limits = corral_worker::config::Limits {
            output_max_bytes: 17_179_869_184,
            output_max_files: 1_000_000,
        };
        // `images` is corral-image's type, which this crate does not name.
        let images = |cfg: &corral_worker::Config| {
            let i = &cfg.images;
            assert!(i.enabled);
            assert_eq!(i.max_bytes, 21_474_836_480);
            assert_eq!(i.credentials_file, None);
            assert!(i.plain_http_registries.is_empty());
        };
        let cfg: corral_worker::Config = parse("");
        assert_eq!(cfg.scheduler, "http://127.0.0.1:8980");
        assert_eq!(cfg.storage, "http://127.0.0.1:8980");
        assert_eq!(cfg.directory, Path::new("corral-data/worker"));
        assert_eq!(cfg.cache_max_size_bytes, 10_737_418_240);
        assert_eq!(cfg.directory_cache_max_size_bytes, 67_108_864);
        assert_eq!(cfg.input_root_max_entries, 1_000_000);
        assert_eq!(cfg.instance_name_prefix, "");
        assert_eq!(cfg.stop_grace_s, 60);
        assert_eq!(cfg.slots, std::slice::from_ref(&slot));
        assert_eq!(cfg.limits, limits);
        images(&cfg);
        assert_eq!((cfg.metrics, cfg.client_tls), (None, None));
        // Each table there, with nothing (or only what is required) in it.
        let cfg: corral_worker::Config = parse(
            "[[slots]]\n[limits]\n[images]\n[metrics]\nlisten = \"127.0.0.1:9984\"\n\
             [client_tls]\nca = \"ca.crt\"\n",
        );
        assert_eq!(cfg.slots, [slot]);
        assert_eq!(cfg.limits, limits);
        images(&cfg);
        assert_eq!(cfg.metrics.and_then(|m| m.tls), None);
        let client_tls = cfg.client_tls.unwrap();
        assert_eq!(
            (
                client_tls.certificate,
                client_tls.private_key,
                client_tls.token_file
            ),
            (None, None, None)
        );
    }

    #[test]
    fn scheduler_keys_left_out_take_the_defaults_docs_config_md_gives() {
        use corral_scheduler::config::{SizeClassKey, SizeClassesConfig};
        let cfg: corral_scheduler::Config = parse("");
        assert_eq!(cfg.listen, "127.0.0.1:8980".parse().unwrap());
        assert_eq!(cfg.storage, "http://127.0.0.1:8980");
        assert_eq!(cfg.default_timeout_s, 900);
        assert_eq!(cfg.max_timeout_s, 3600);
        assert_eq!(cfg.worker_timeout_s, 60);
        assert_eq!(cfg.max_retries, 3);
        assert_eq!(cfg.platform_grace_s, 60);
        assert_eq!(cfg.unwatched_grace_s, 60);
        assert!(cfg.platform_matching.is_empty(), "every property exact");
        assert_eq!(cfg.fairness.of("any"), (1, None, None));
        assert_eq!((cfg.size_classes, cfg.metrics), (None, None));
        assert_eq!((cfg.tls, cfg.client_tls, cfg.auth), (None, None, None));
        // Each table there, with nothing (or only what is required) in it.
        let cfg: corral_scheduler::Config = parse(
            "[size_classes]\n[fairness]\n[fairness.instances.\"ci\"]\n\
             [metrics]\nlisten = \"127.0.0.1:9981\"\n\
             [tls]\ncertificate = \"s.crt\"\nprivate_key = \"s.key\"\n\
             [auth]\n[auth.tokens]\nissuers = [\"i\"]\naudiences = [\"a\"]\n",
        );
        assert_eq!(
            cfg.size_classes,
            Some(SizeClassesConfig {
                key: SizeClassKey::Command,
                key_platform_property: None,
                history_instance_name: "size-class-history".to_owned(),
                history_size: 8,
                probe_probability: 0.05,
                max_slowdown: 2.0,
            })
        );
        assert_eq!(cfg.fairness.of("ci"), (1, None, None));
        assert_eq!(cfg.metrics.and_then(|m| m.tls), None);
        let tls = cfg.tls.unwrap();
        assert_eq!((tls.client_ca, tls.client_certificate), (None, None));
        let auth = cfg.auth.unwrap();
        assert!(!auth.allow_anonymous);
        assert!(auth.client_certificates);
        assert_eq!(auth.grants, None);
        let tokens = auth.tokens.unwrap();
        assert_eq!(tokens.jwks_file, None);
        assert!(tokens.public_key_files.is_empty());
        assert_eq!(tokens.hs256_secret_file, None);
        assert_eq!(tokens.leeway_s, 30);
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("corral-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nlisten_adress = \"x\"\n").unwrap();
        let err = load::<corral_scheduler::Config>(Some(&file)).unwrap_err();
        assert!(format!("{err:#}").contains("bad.toml"), "{err:#}");
        assert!(format!("{err:#}").contains("listen_adress"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
