//! `corral worker`: the worker daemon alone. SIGTERM drains it: no new
//! action, the running ones get `stop_grace_s` to finish and be reported,
//! then it exits; a second SIGTERM, SIGINT (Ctrl-C) or the end of the
//! grace kills what still runs and gives it back to the scheduler.
//!
//! Each slot group's runner must already serve its socket, with
//! `build_directory` set to `<directory>/build` of this worker: run
//! requests name paths relative to it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::{config, observability, shutdown};

/// Runs the worker from `config` (worker.toml; defaults when `None`).
pub fn run(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg: corral_worker::Config = config::load(config)?;
    cfg.validate()?;
    // Inside the runtime: the worker's lazy channels to storage and the
    // scheduler need its reactor from the moment they are made.
    let runtime = shutdown::runtime()?;
    let (worker, _tracing) = {
        let _entered = runtime.enter();
        let tracing = observability::start(cfg.tracing.as_ref(), "corral-worker")?;
        let worker = corral_worker::Worker::new(cfg).context("preparing the worker")?;
        (worker, tracing)
    };
    protect_the_cache(&worker);
    runtime
        .block_on(async {
            let (stop, stop_now) = shutdown::drain_signals("worker");
            worker.run(stop, stop_now).await
        })
        .context("running the worker")?;
    Ok(ExitCode::SUCCESS)
}

/// Without root and without subordinate ids, this host's runner runs
/// actions as the worker's own uid, which owns the file cache: the worker
/// then lays inputs out as copies (docs/decisions/0009).
pub fn protect_the_cache(worker: &corral_worker::Worker) {
    if let corral_sandbox::Mapping::Own { why, .. } = corral_sandbox::Mapping::detect() {
        worker.copy_inputs(&why);
    }
}
