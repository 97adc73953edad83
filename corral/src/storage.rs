//! `corral storage`: the CAS, Action Cache, ByteStream and Capabilities
//! services alone, until Ctrl-C or SIGTERM.
//!
//! Flags override the file: `--listen` sets `listen`, `--dir` selects the
//! disk backend in that directory, `--max-size` sets the backend's bound,
//! `--metrics` sets `[metrics] listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use corral_storage::config::{Backend, LocalCache, MetricsConfig};

use crate::{config, observability, shutdown};

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// storage.toml; defaults are used when omitted (see docs/config.md).
    /// The flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on, e.g. 0.0.0.0:8980 (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Keep blobs in files under DIR: selects the disk backend and
    /// overrides `backend.dir`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Bound on stored bytes, least recently used evicted past it: a byte
    /// count or a number with KiB, MiB, GiB or TiB, e.g. 10GiB (overrides
    /// `backend.max_size_bytes`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Serve `GET /metrics`, `/healthz` and `/readyz` on this address
    /// (overrides `[metrics] listen`; a `[metrics.tls]` in the file stays).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

pub fn run(args: StorageArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: corral_storage::Config = config::load(args.config.as_deref())?;
    apply(&args, &mut cfg);
    cfg.validate()?;
    shutdown::runtime()?.block_on(async {
        let _tracing = observability::start(cfg.tracing.as_ref(), "corral-storage")?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        shutdown::with_grace(
            "storage",
            shutdown::stop_signal("storage"),
            |graceful| async {
                corral_storage::run(cfg, listener, graceful)
                    .await
                    .context("running storage")
            },
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Flags override the file.
fn apply(args: &StorageArgs, cfg: &mut corral_storage::Config) {
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(dir) = &args.dir {
        cfg.backend = match &cfg.backend {
            Backend::Disk {
                max_size_bytes,
                fsync,
                ..
            } => Backend::Disk {
                dir: dir.clone(),
                max_size_bytes: *max_size_bytes,
                fsync: *fsync,
            },
            Backend::Memory { max_size_bytes } => Backend::Disk {
                dir: dir.clone(),
                max_size_bytes: *max_size_bytes,
                fsync: false,
            },
            // With a remote backend, DIR is the local cache in front of it.
            Backend::Remote {
                endpoint,
                instance_name,
                cache,
            } => Backend::Remote {
                endpoint: endpoint.clone(),
                instance_name: instance_name.clone(),
                cache: Some(LocalCache {
                    dir: dir.clone(),
                    max_size_bytes: cache.as_ref().map_or(10 << 30, |c| c.max_size_bytes),
                }),
            },
        };
    }
    if let Some(listen) = args.metrics {
        cfg.metrics = Some(with_listen(cfg.metrics.take(), listen));
    }
    if let Some(size) = args.max_size {
        match &mut cfg.backend {
            Backend::Memory { max_size_bytes } | Backend::Disk { max_size_bytes, .. } => {
                *max_size_bytes = size;
            }
            // The remote's size is its own; the bound is the local cache's.
            Backend::Remote { cache, .. } => {
                if let Some(cache) = cache {
                    cache.max_size_bytes = size;
                }
            }
        }
    }
}

/// `[metrics]` with `listen` from a flag, keeping the file's TLS.
fn with_listen(metrics: Option<MetricsConfig>, listen: SocketAddr) -> MetricsConfig {
    match metrics {
        Some(metrics) => MetricsConfig { listen, ..metrics },
        None => MetricsConfig { listen, tls: None },
    }
}

/// Parses `10GiB`, `512MiB`, `4KiB`, `1TiB` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 5] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    let (number, multiplier) = UNITS
        .iter()
        .find_map(|(unit, m)| text.strip_suffix(unit).map(|n| (n, *m)))
        .unwrap_or((text, 1));
    let invalid = || format!("{text:?} is not a size such as 10GiB, 512MiB or 1048576");
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("123B"), Ok(123));
        for bad in [
            "",
            "GiB",
            "10 GiB",
            "10GB",
            "-1",
            "1.5GiB",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    fn args(dir: Option<&str>, max_size: Option<u64>) -> StorageArgs {
        StorageArgs {
            config: None,
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 9000))),
            dir: dir.map(PathBuf::from),
            max_size,
            metrics: None,
        }
    }

    #[test]
    fn flags_override_the_file() {
        let mut cfg = corral_storage::Config {
            backend: Backend::Memory {
                max_size_bytes: 100,
            },
            ..Default::default()
        };
        apply(&args(None, Some(5000)), &mut cfg);
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(
            cfg.backend,
            Backend::Memory {
                max_size_bytes: 5000
            }
        );
        apply(&args(Some("/data"), None), &mut cfg);
        assert_eq!(
            cfg.backend,
            Backend::Disk {
                dir: PathBuf::from("/data"),
                max_size_bytes: 5000,
                fsync: false
            }
        );
    }

    #[test]
    fn the_metrics_flag_sets_the_listen_address_and_keeps_the_files_tls() {
        config::assert_the_metrics_flag_sets_listen_and_keeps_the_files_tls(
            |metrics, cfg: &mut corral_storage::Config| {
                apply(
                    &StorageArgs {
                        metrics,
                        ..args(None, None)
                    },
                    cfg,
                );
            },
            |cfg| cfg.metrics.as_ref().map(|m| (m.listen, m.tls.clone())),
        );
    }
}
