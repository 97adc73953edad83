//! Logging: the only place a tracing subscriber is set up.
//!
//! `CORRAL_LOG` takes an env-filter directive (default `info`);
//! `--log-format` (or `CORRAL_LOG_FORMAT`) chooses text or JSON lines.

use anyhow::Context;
use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Env var holding the log filter, e.g. `corral_scheduler=debug,info`.
pub const LOG_ENV: &str = "CORRAL_LOG";
/// Env var holding the log format, `text` or `json`.
pub const LOG_FORMAT_ENV: &str = "CORRAL_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env(LOG_ENV)
        .or_else(|_| EnvFilter::try_new("info"))
        .with_context(|| format!("parsing {LOG_ENV}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!(e).context("installing the log subscriber"))
}
