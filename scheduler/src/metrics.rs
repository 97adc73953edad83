//! Prometheus metrics: queue length per platform, operations by stage,
//! workers by state, queue wait and execution time histograms, results
//! by status. Gauges are read from the state when scraped; histograms and
//! counters are recorded as things happen.
//!
//! Served as text on `GET /metrics` by `corral_metrics::serve`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use corral_metrics::{code_name, header, label, Declared, Histogram};

use crate::assignment::Assignments;
use crate::operation::{Operations, Progress};

#[derive(Debug, Default)]
struct Recorded {
    queue_wait: Histogram,
    execution: Histogram,
    /// (status code name, from the cache) → operations completed.
    results: BTreeMap<(&'static str, bool), u64>,
}

/// What is recorded as it happens.
#[derive(Debug, Default)]
pub struct Metrics {
    recorded: Mutex<Recorded>,
}

/// Everything [`Metrics::render`] writes, with its help text: the list a
/// test checks every metric against, so none is declared and never set.
pub const DECLARED: [Declared; 6] = [
    (
        "corral_scheduler_queued_actions",
        "gauge",
        "Actions waiting for a worker, per instance name and platform.",
    ),
    (
        "corral_scheduler_operations",
        "gauge",
        "Operations the scheduler holds, by stage.",
    ),
    (
        "corral_scheduler_workers",
        "gauge",
        "Workers seen recently, by state.",
    ),
    (
        "corral_scheduler_queue_wait_seconds",
        "histogram",
        "Time from queued to handed to a worker.",
    ),
    (
        "corral_scheduler_execution_seconds",
        "histogram",
        "Time from handed to a worker to its result.",
    ),
    (
        "corral_scheduler_results_total",
        "counter",
        "Operations completed, by status code and whether from the Action Cache.",
    ),
];

impl Metrics {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // Counters only ever add: a panic mid-update loses one sample.
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.recorded().queue_wait.observe(waited);
    }

    pub fn execution(&self, took: Duration) {
        self.recorded().execution.observe(took);
    }

    /// An operation completed with `code`; `cached` for Action Cache hits.
    pub fn result(&self, code: tonic::Code, cached: bool) {
        let name = code_name(code as i32);
        *self.recorded().results.entry((name, cached)).or_default() += 1;
    }

    /// The Prometheus text page.
    pub fn render(&self, assignments: &Assignments, operations: &Mutex<Operations>) -> String {
        let mut out = String::new();
        let header = |out: &mut String, index: usize| header(out, DECLARED[index]);
        let snapshot = assignments.snapshot();
        let name = header(&mut out, 0);
        for ((instance, platform), len) in &snapshot.queued {
            let _ = writeln!(
                out,
                "{name}{{instance=\"{}\",platform=\"{}\"}} {len}",
                label(instance),
                label(&platform.to_string())
            );
        }
        let name = header(&mut out, 1);
        let mut stages = [("queued", 0usize), ("executing", 0), ("completed", 0)];
        for op in operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list()
        {
            let at = match op.current() {
                Progress::Queued => 0,
                Progress::Executing => 1,
                Progress::Completed(_) => 2,
            };
            stages[at].1 += 1;
        }
        for (stage, n) in stages {
            let _ = writeln!(out, "{name}{{stage=\"{stage}\"}} {n}");
        }
        let name = header(&mut out, 2);
        for (state, n) in [
            ("idle", snapshot.idle_workers),
            ("executing", snapshot.executing_workers),
            ("draining", snapshot.draining_workers),
        ] {
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
        }
        let recorded = self.recorded();
        let name = header(&mut out, 3);
        recorded.queue_wait.render(&mut out, name);
        let name = header(&mut out, 4);
        recorded.execution.render(&mut out, name);
        let name = header(&mut out, 5);
        for ((code, cached), n) in &recorded.results {
            let _ = writeln!(out, "{name}{{code=\"{code}\",cached=\"{cached}\"}} {n}");
        }
        out
    }
}
