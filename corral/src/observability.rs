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
    let filter = filter(std::env::var(LOG_ENV).ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!(e).context("installing the log subscriber"))
}

/// The filter `CORRAL_LOG` names (`info` when unset or empty). A value
/// that does not parse is an error naming the variable: silently logging
/// at `info` would hide the debug lines the operator asked for.
fn filter(value: Option<&str>) -> anyhow::Result<EnvFilter> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(EnvFilter::new("info")),
        Some(directive) => EnvFilter::builder()
            .parse(directive)
            .with_context(|| format!("{LOG_ENV}={directive:?} is not a log filter (e.g. info, or corral_scheduler=debug,info)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_corral_log_is_an_error_naming_it() {
        assert!(filter(None).is_ok());
        assert!(filter(Some("")).is_ok());
        assert!(filter(Some("corral_scheduler=debug,info")).is_ok());
        let err = format!("{:#}", filter(Some("corral=loud")).unwrap_err());
        assert!(err.contains("CORRAL_LOG=\"corral=loud\""), "{err}");
    }
}
