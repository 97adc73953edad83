//! `corral worker`: the worker daemon alone, until Ctrl-C or SIGTERM.
//!
//! Each slot group's runner must already serve its socket, with
//! `build_directory` set to `<directory>/build` of this worker: run
//! requests name paths relative to it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::{config, shutdown};

/// Runs the worker from `config` (worker.toml; defaults when `None`).
pub fn run(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg: corral_worker::Config = config::load(config)?;
    cfg.validate()?;
    shutdown::runtime()?
        .block_on(corral_worker::run(cfg, shutdown::stop_signal("worker")))
        .context("running the worker")?;
    Ok(ExitCode::SUCCESS)
}
